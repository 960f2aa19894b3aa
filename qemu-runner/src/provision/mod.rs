//! Guest images built from stock Debian packages, and the QEMU binaries that boot them.
//!
//! [`provision`] fetches, for each requested [`Arch`], the Debian kernel package
//! (`linux-image-*`) and `busybox-static` with the system's own `apt-get`, unpacks them with
//! `dpkg-deb -x`, and records the result, with BLAKE3 digests, in `<cache>/manifest.json`.
//! [`load`] reads that manifest back and checks it quickly, without the network.
//!
//! No package mirror is named anywhere in this crate: the archive URIs come from the system's
//! apt configuration (`/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.list` /
//! `*.sources`). apt runs with a private configuration: its own package lists, cache, source list
//! and architecture, all inside the staging directory, so the system's apt configuration and
//! state are never modified and no foreign architecture has to be enabled with `dpkg`. Signature
//! checking stays on: every generated source keeps the `signed-by` of the system entry it came
//! from.
//!
//! Architectures whose kernels the host's Debian release does not ship (riscv64 before trixie)
//! are taken from the first release that has them, from the same mirror, verified with the
//! installed `debian-archive-keyring`.
//!
//! Cache layout:
//!
//! ```text
//! <cache>/manifest.json           what is provisioned (Manifest, paths relative to <cache>)
//! <cache>/.lock                   flock(2): exclusive while provisioning, shared while loading
//! <cache>/<arch>/debs/*.deb       the downloaded packages (kernel and busybox-static)
//! <cache>/<arch>/root/            `dpkg-deb -x` of both packages (boot/, lib/modules/ or
//!                                 usr/lib/modules/, bin/busybox or usr/bin/busybox)
//! <cache>/.staging-<arch>/        work in progress, renamed to <arch> once complete
//! ```
//!
//! An architecture enters the manifest only after its directory is complete and renamed into
//! place, so an interrupted run never leaves a half-provisioned architecture that [`load`]
//! accepts; the next [`provision`] removes the leftovers and starts that architecture again.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use orchestrator_core::Arch;

use crate::kernel::ElfHeader;
use crate::profile::find_program;

mod apt;
mod manifest;
mod qemu;
mod sources;

use apt::*;
pub use manifest::load;
use manifest::*;
pub use qemu::{ensure_qemu, ensure_qemu_with};
use serde::{Deserialize, Serialize};
use sources::*;

/// Version of the manifest format written by this crate; other versions are re-provisioned.
pub const MANIFEST_VERSION: u32 = 1;

/// Name of the manifest inside the cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Environment variable that overrides [`default_cache_dir`].
pub const CACHE_DIR_ENV: &str = "ORCH_IMAGE_CACHE";

/// The command that provisions the images, named in error messages.
pub const PROVISION_COMMAND: &str = "cargo xtask test";

/// The QEMU system emulators needed, with the Debian package that ships each.
pub const QEMU_BINARIES: [(&str, &str); 4] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("qemu-system-arm", "qemu-system-arm"),
    ("qemu-system-riscv64", "qemu-system-misc"),
];

const LOCK_FILE: &str = ".lock";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The keyring of the `debian-archive-keyring` package; it also holds the next release's keys.
const DEBIAN_ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Debian releases without riscv64 kernels, and the first release that has them.
const RELEASES_WITHOUT_RISCV64: &[&str] = &["buster", "bullseye", "bookworm"];
const FIRST_RISCV64_RELEASE: &str = "trixie";
/// Suite names accepted as "the main Debian suite" when none is named after the host's release.
const SUITE_ALIASES: &[&str] = &[
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
    "sid",
];
/// At most this much of a failed command's output is kept in an error.
const MAX_OUTPUT: usize = 4000;

/// Receives [`provision`]'s progress events (for example to draw them, or to print their
/// one-line `Display`).
pub type ProgressFn = Arc<dyn Fn(&ProvisionEvent) + Send + Sync>;

/// A step of provisioning one architecture ([`ProvisionEvent::Step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionStep {
    /// Fetching the package lists (`apt-get update`).
    UpdatingLists,
    /// Downloading the kernel and busybox packages (`apt-get download`).
    Downloading,
    /// Unpacking them (`dpkg-deb -x`).
    Unpacking,
    /// Checking what was unpacked, and the digests for the manifest.
    Verifying,
}

/// What [`provision`] is doing, as it happens: the typed progress a command line draws (see
/// [`ProvisionOptions::with_progress`]). Each event is also a `tracing` event of this module;
/// its `Display` is a one-line message.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ProvisionEvent {
    /// The cache's manifest could not be read; every architecture is provisioned afresh.
    ManifestIgnored {
        /// Why it could not be read.
        reason: String,
    },
    /// The architecture's image is provisioned and verifies: nothing to do.
    UpToDate {
        /// The architecture.
        arch: Arch,
        /// Its kernel package.
        kernel_package: String,
        /// The package's version.
        kernel_package_version: String,
    },
    /// The architecture's image is provisioned again.
    Again {
        /// The architecture.
        arch: Arch,
        /// Why: what failed to verify; `None` when forced.
        reason: Option<String>,
    },
    /// An architecture's provisioning reached a step.
    Step {
        /// The architecture.
        arch: Arch,
        /// The step.
        step: ProvisionStep,
    },
    /// Optional suites (`-updates`, `-security`) whose package lists could not be fetched were
    /// left out.
    SuitesDropped {
        /// The architecture.
        arch: Arch,
        /// The suites left out.
        suites: Vec<String>,
        /// The first line of apt's error.
        error: String,
    },
    /// An architecture is provisioned.
    Done {
        /// The architecture.
        arch: Arch,
        /// The kernel package.
        kernel_package: String,
        /// Its version.
        kernel_package_version: String,
        /// The kernel release.
        kernel_version: String,
        /// The Debian release the packages come from.
        suite: String,
        /// The busybox-static version.
        busybox_version: String,
        /// How long `apt-get update` took.
        update: Duration,
        /// Bytes downloaded.
        download_bytes: u64,
        /// How long the download took.
        download: Duration,
        /// How long unpacking took.
        unpack: Duration,
        /// How long the architecture took in all.
        total: Duration,
    },
}

/// The manifest's note, and the event's message, when optional suites were left out.
fn suites_dropped(suites: &[String], error: &str) -> String {
    format!(
        "could not fetch the package lists of {} ({error}); went on without",
        suites.join(" and ")
    )
}

impl fmt::Display for ProvisionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionEvent::ManifestIgnored { reason } => {
                write!(f, "ignoring the existing manifest: {reason}")
            }
            ProvisionEvent::UpToDate {
                arch,
                kernel_package,
                kernel_package_version,
            } => write!(
                f,
                "{arch}: up to date ({kernel_package} {kernel_package_version})"
            ),
            ProvisionEvent::Again { arch, reason: None } => {
                write!(f, "{arch}: provisioning again (forced)")
            }
            ProvisionEvent::Again {
                arch,
                reason: Some(reason),
            } => write!(f, "{arch}: provisioning again: {reason}"),
            ProvisionEvent::Step { arch, step } => {
                let what = match step {
                    ProvisionStep::UpdatingLists => "fetching the package lists",
                    ProvisionStep::Downloading => "downloading the kernel and busybox",
                    ProvisionStep::Unpacking => "unpacking",
                    ProvisionStep::Verifying => "checking the unpacked files",
                };
                write!(f, "{arch}: {what}")
            }
            ProvisionEvent::SuitesDropped {
                arch,
                suites,
                error,
            } => write!(f, "{arch}: {}", suites_dropped(suites, error)),
            ProvisionEvent::Done {
                arch,
                kernel_package,
                kernel_package_version,
                kernel_version,
                suite,
                busybox_version,
                update,
                download_bytes,
                download,
                unpack,
                total,
            } => write!(
                f,
                "{arch}: {kernel_package} {kernel_package_version} (kernel {kernel_version}, \
                 {suite}), busybox {busybox_version}: apt-get update {:.1}s, download {:.1} MB \
                 {:.1}s, unpack {:.1}s, total {:.1}s",
                update.as_secs_f64(),
                *download_bytes as f64 / 1e6,
                download.as_secs_f64(),
                unpack.as_secs_f64(),
                total.as_secs_f64(),
            ),
        }
    }
}

/// What [`provision`] should do.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProvisionOptions {
    /// Where the images live; see [`default_cache_dir`].
    pub cache_dir: PathBuf,
    /// The architectures to provision (duplicates are ignored).
    pub archs: Vec<Arch>,
    /// Download and unpack again even when the cached images verify.
    pub force: bool,
    /// The apt configuration directory whose sources are used (`/etc/apt`).
    pub apt_etc_dir: PathBuf,
    /// Where progress events go; `None`: only to `tracing`.
    pub progress: Option<ProgressFn>,
}

impl ProvisionOptions {
    /// Every architecture into `cache_dir`, from the sources in `/etc/apt`, quietly.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            archs: Arch::ALL.to_vec(),
            force: false,
            apt_etc_dir: PathBuf::from("/etc/apt"),
            progress: None,
        }
    }

    /// Restricts provisioning to `archs`.
    pub fn with_archs(mut self, archs: impl IntoIterator<Item = Arch>) -> Self {
        self.archs = archs.into_iter().collect();
        self
    }

    /// Sends progress events to `progress` (their `Display` is a one-line message).
    pub fn with_progress(
        mut self,
        progress: impl Fn(&ProvisionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Tells `tracing` and the progress callback.
    fn emit(&self, event: ProvisionEvent) {
        // The progress callback shows them: info at most, so that a command line that draws
        // them and logs warnings does not say it twice.
        match &event {
            ProvisionEvent::Step { .. } | ProvisionEvent::Again { .. } => {
                tracing::debug!("{event}");
            }
            _ => tracing::info!("{event}"),
        }
        if let Some(progress) = &self.progress {
            progress(&event);
        }
    }
}

impl Default for ProvisionOptions {
    /// Every architecture into [`default_cache_dir`].
    fn default() -> Self {
        Self::new(default_cache_dir())
    }
}

impl fmt::Debug for ProvisionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionOptions")
            .field("cache_dir", &self.cache_dir)
            .field("archs", &self.archs)
            .field("force", &self.force)
            .field("apt_etc_dir", &self.apt_etc_dir)
            .field("progress", &self.progress.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// Everything provisioned in a cache directory (`<cache>/manifest.json`).
///
/// In memory every path is absolute (under [`Manifest::cache_dir`]); on disk they are stored
/// relative to the cache directory, so the directory can be moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`MANIFEST_VERSION`].
    pub version: u32,
    /// The provisioned images.
    pub images: BTreeMap<Arch, GuestImage>,
    /// The directory the manifest was read from or written to (not serialized).
    #[serde(skip)]
    pub cache_dir: PathBuf,
}

impl Manifest {
    fn empty(cache_dir: &Path) -> Self {
        Self {
            version: MANIFEST_VERSION,
            images: BTreeMap::new(),
            cache_dir: cache_dir.to_owned(),
        }
    }

    /// The image for `arch`, or an error that says how to provision it.
    pub fn image(&self, arch: Arch) -> Result<&GuestImage, ProvisionError> {
        self.images
            .get(&arch)
            .ok_or_else(|| ProvisionError::NotProvisioned {
                cache_dir: self.cache_dir.clone(),
                reason: format!("there is no {arch} image"),
            })
    }
}

/// One architecture's guest image: a stock Debian kernel with its modules, and busybox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// The architecture.
    pub arch: Arch,
    /// Debian's name for it (`amd64`, `arm64`, `armhf`, `riscv64`).
    pub debian_arch: String,
    /// The Debian release the packages come from (for example `bookworm` or `trixie`).
    pub debian_suite: String,
    /// The apt suites that were searched (the release, and its `-updates` and `-security`
    /// suites when they were configured and reachable).
    pub apt_suites: Vec<String>,
    /// The versioned kernel package, for example `linux-image-6.1.0-56-arm64`.
    pub kernel_package: String,
    /// Its Debian version, for example `6.1.192-2`.
    pub kernel_package_version: String,
    /// The kernel release (`uname -r`), the name of the modules directory.
    pub kernel_version: String,
    /// The kernel image to pass to QEMU's `-kernel` (`boot/vmlinuz-*`, or `boot/vmlinux-*`
    /// on riscv64, which Debian ships as an uncompressed `Image` with an EFI stub).
    pub kernel: PathBuf,
    /// The kernel's build configuration (`boot/config-*`).
    pub kernel_config: PathBuf,
    /// The directory both packages were unpacked into.
    pub root: PathBuf,
    /// `lib/modules/<kernel_version>` (`usr/lib/modules/...` from trixie on). Modules are plain
    /// `.ko` files in bookworm and `.ko.xz` from trixie on; there is no `modules.dep` (Debian
    /// generates it at install time).
    pub modules_dir: PathBuf,
    /// The statically linked busybox binary.
    pub busybox: PathBuf,
    /// The busybox-static package version.
    pub busybox_version: String,
    /// Size and BLAKE3 digest of the kernel, busybox and the `.deb` files, keyed by their path
    /// relative to the cache directory.
    pub files: BTreeMap<String, FileDigest>,
    /// Anything worth knowing about how the image was obtained (for example a suite that could
    /// not be fetched).
    pub notes: Vec<String>,
}

impl GuestImage {
    fn map_paths(&mut self, f: impl Fn(&Path) -> PathBuf) {
        for path in [
            &mut self.kernel,
            &mut self.kernel_config,
            &mut self.root,
            &mut self.modules_dir,
            &mut self.busybox,
        ] {
            *path = f(path);
        }
    }
}

/// A file's size and BLAKE3 digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 digest, lowercase hex.
    pub blake3: String,
}

/// Why provisioning, loading or installing QEMU failed. Each message names what failed and how
/// to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The cache holds no image set, or not the one asked for.
    #[error(
        "guest images are not provisioned in {}: {reason}; run `{PROVISION_COMMAND}` (it \
         provisions them) or call `qemu_runner::provision::provision`",
        cache_dir.display()
    )]
    NotProvisioned {
        /// The cache directory.
        cache_dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The cache exists but does not match its manifest.
    #[error(
        "the guest image cache {} is damaged: {reason}; run `{PROVISION_COMMAND}` to \
         provision it again (delete the directory if that keeps failing)",
        path.display()
    )]
    Corrupt {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating`, `reading`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A program needed is not installed.
    #[error("`{program}` is not installed or not in PATH; {fix}")]
    ToolMissing {
        /// The program.
        program: String,
        /// How to install it.
        fix: String,
    },
    /// A command (`apt-get`, `apt-cache`, `dpkg-deb`) failed.
    #[error("`{command}` failed ({status}):\n{output}\n{fix}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its error output (or of its standard output when it wrote no errors).
        output: String,
        /// What to do about it.
        fix: String,
    },
    /// The apt configuration names no Debian archive to download from.
    #[error(
        "no Debian archive found in the apt sources ({searched}): {reason}; guest images are \
         downloaded from the Debian archive configured for this system, so add one (a `deb` \
         entry with the `main` component for this system's release)"
    )]
    NoDebianSource {
        /// The files that were read.
        searched: String,
        /// What was looked for.
        reason: String,
    },
    /// A downloaded package does not contain what it should.
    #[error(
        "{arch}: package {package} is not usable: {reason}; run `{PROVISION_COMMAND}` again, \
         and report a bug if it persists"
    )]
    BadPackage {
        /// The architecture being provisioned.
        arch: Arch,
        /// The package.
        package: String,
        /// What is wrong.
        reason: String,
    },
    /// No recipe for this architecture.
    #[error("there is no guest image recipe for architecture {0}")]
    UnsupportedArch(Arch),
    /// Several architectures failed.
    #[error("{} architectures failed to provision:\n{}", .0.len(), join_errors(.0))]
    Several(Vec<ProvisionError>),
}

fn join_errors(errors: &[ProvisionError]) -> String {
    errors
        .iter()
        .map(|e| format!("- {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProvisionError + use<> {
    let path = path.to_owned();
    move |source| ProvisionError::Io {
        action,
        path,
        source,
    }
}

/// The default cache directory: `$ORCH_IMAGE_CACHE`, else
/// `$XDG_CACHE_HOME/qemu-orchestrator/images`, else `~/.cache/qemu-orchestrator/images`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let sub = Path::new("qemu-orchestrator").join("images");
    if let Some(dir) = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return dir.join(sub);
    }
    if let Some(home) = env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return home.join(".cache").join(sub);
    }
    env::temp_dir().join(sub)
}

// ---------------------------------------------------------------------------------------------
// Provisioning

/// What each architecture needs from Debian.
#[derive(Clone, Copy, Debug)]
struct ArchSpec {
    debian_arch: &'static str,
    /// The kernel metapackage, which depends on the current versioned kernel package.
    kernel_metapackage: &'static str,
    elf_class_64: bool,
    elf_machine: u16,
}

fn arch_spec(arch: Arch) -> Result<ArchSpec, ProvisionError> {
    let (debian_arch, kernel_metapackage, elf_class_64, elf_machine) = match arch {
        Arch::X86_64 => ("amd64", "linux-image-amd64", true, 62),
        Arch::Aarch64 => ("arm64", "linux-image-arm64", true, 183),
        Arch::Armv7 => ("armhf", "linux-image-armmp", false, 40),
        Arch::Riscv64 => ("riscv64", "linux-image-riscv64", true, 243),
        _ => return Err(ProvisionError::UnsupportedArch(arch)),
    };
    Ok(ArchSpec {
        debian_arch,
        kernel_metapackage,
        elf_class_64,
        elf_machine,
    })
}

/// Makes sure the cache holds verified images for `opts.archs`, downloading what is missing or
/// damaged, and returns the manifest (which also lists images provisioned earlier for other
/// architectures).
///
/// When the manifest already lists every requested architecture and all their files match their
/// BLAKE3 digests this does nothing else: no network access, no apt. Otherwise the missing
/// architectures are fetched concurrently with `apt-get` (see the [module docs](self)); one
/// failing architecture does not stop the others, and the error lists every failure.
///
/// Needs `apt-get`, `apt-cache` and `dpkg-deb`, and network access to the Debian archive
/// configured for apt; it does not need root.
pub fn provision(opts: &ProvisionOptions) -> Result<Manifest, ProvisionError> {
    let cache_dir = absolute(&opts.cache_dir)?;
    if cache_dir.to_string_lossy().contains(['"', '\n']) {
        return Err(ProvisionError::Io {
            action: "using",
            path: cache_dir,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "apt cannot be configured for a path containing `\"` or a newline",
            ),
        });
    }
    fs::create_dir_all(&cache_dir).map_err(io_err("creating", &cache_dir))?;
    let _lock = lock_exclusive(&cache_dir)?;
    remove_leftovers(&cache_dir)?;

    let mut manifest = match read_manifest(&cache_dir) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => Manifest::empty(&cache_dir),
        Err(e) => {
            opts.emit(ProvisionEvent::ManifestIgnored {
                reason: e.to_string(),
            });
            Manifest::empty(&cache_dir)
        }
    };

    let mut todo = Vec::new();
    let mut seen = BTreeSet::new();
    for &arch in &opts.archs {
        if !seen.insert(arch) {
            continue;
        }
        arch_spec(arch)?;
        if let Some(image) = manifest.images.get(&arch) {
            if opts.force {
                opts.emit(ProvisionEvent::Again { arch, reason: None });
            } else {
                match verify_image(&cache_dir, image, true) {
                    Ok(()) => {
                        opts.emit(ProvisionEvent::UpToDate {
                            arch,
                            kernel_package: image.kernel_package.clone(),
                            kernel_package_version: image.kernel_package_version.clone(),
                        });
                        continue;
                    }
                    Err(e) => opts.emit(ProvisionEvent::Again {
                        arch,
                        reason: Some(e.to_string()),
                    }),
                }
            }
            manifest.images.remove(&arch);
        }
        todo.push(arch);
    }
    if todo.is_empty() {
        return Ok(manifest);
    }

    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if find_program(tool).is_none() {
            return Err(ProvisionError::ToolMissing {
                program: tool.to_owned(),
                fix: "guest images are downloaded with the Debian package tools; install `apt` \
                      and `dpkg` (a Debian-based host is required)"
                    .to_owned(),
            });
        }
    }
    let debian = system_debian_sources(&opts.apt_etc_dir)?;
    let keyring_installed = Path::new(DEBIAN_ARCHIVE_KEYRING).is_file();

    let shared = Mutex::new(manifest);
    let results: Vec<Result<(), ProvisionError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .iter()
            .map(|&arch| {
                let (debian, shared) = (&debian, &shared);
                let cache_dir = cache_dir.as_path();
                scope.spawn(move || {
                    provision_arch(opts, cache_dir, arch, debian, keyring_installed, shared)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let manifest = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut errors: Vec<ProvisionError> = results.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(manifest),
        1 => Err(errors.remove(0)),
        _ => Err(ProvisionError::Several(errors)),
    }
}

/// Removes staging and trash directories left by an interrupted run (the caller holds the lock).
fn remove_leftovers(cache_dir: &Path) -> Result<(), ProvisionError> {
    let entries = fs::read_dir(cache_dir).map_err(io_err("reading", cache_dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("reading", cache_dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX) {
            remove_dir_if_exists(&entry.path())?;
        }
    }
    let tmp = cache_dir.join(format!("{MANIFEST_FILE}.tmp"));
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(io_err("removing", &tmp))?;
    }
    Ok(())
}

fn remove_dir_if_exists(path: &Path) -> Result<(), ProvisionError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

fn create_dir(path: &Path) -> Result<(), ProvisionError> {
    fs::create_dir_all(path).map_err(io_err("creating", path))
}

fn provision_arch(
    opts: &ProvisionOptions,
    cache_dir: &Path,
    arch: Arch,
    debian: &DebianSources,
    keyring_installed: bool,
    manifest: &Mutex<Manifest>,
) -> Result<(), ProvisionError> {
    let spec = arch_spec(arch)?;
    let _span = tracing::info_span!("provision", %arch).entered();
    let step = |step: ProvisionStep| opts.emit(ProvisionEvent::Step { arch, step });
    let started = Instant::now();
    let staging = cache_dir.join(format!("{STAGING_PREFIX}{arch}"));
    remove_dir_if_exists(&staging)?;
    let debs = staging.join("debs");
    let root = staging.join("root");
    create_dir(&debs)?;
    create_dir(&root)?;
    let apt = Apt::create(&staging.join("apt"), arch, spec.debian_arch)?;

    // Package lists: the release with its -updates and -security suites; those of them that
    // cannot be fetched (a mirror in the middle of a sync, say) are left out with a note.
    let (suite, lines) = source_lines(debian, arch, keyring_installed);
    let mut notes = Vec::new();
    let mut used = lines.clone();
    step(ProvisionStep::UpdatingLists);
    apt.write_sources(&used)?;
    if let Err(first) = apt.update() {
        let failed = failed_suites(&first);
        if used.len() < 2 || failed.contains(&used[0].suite) {
            return Err(first);
        }
        // Drop the suites that failed (all optional ones when the output does not say).
        used.retain(|l| {
            l.suite == lines[0].suite || (!failed.is_empty() && !failed.contains(&l.suite))
        });
        apt.write_sources(&used)?;
        if apt.update().is_err() {
            used.truncate(1);
            apt.write_sources(&used)?;
            if apt.update().is_err() {
                return Err(first);
            }
        }
        let dropped: Vec<String> = lines
            .iter()
            .filter(|l| !used.contains(l))
            .map(|l| l.suite.clone())
            .collect();
        let error = first_error_line(&first);
        notes.push(suites_dropped(&dropped, &error));
        opts.emit(ProvisionEvent::SuitesDropped {
            arch,
            suites: dropped,
            error,
        });
    }
    let apt_suites: Vec<String> = used.iter().map(|l| l.suite.clone()).collect();
    let update_done = Instant::now();

    let kernel_package = apt.kernel_package(spec.kernel_metapackage)?;
    step(ProvisionStep::Downloading);
    apt.download(&debs, &[&kernel_package, BUSYBOX_PACKAGE])?;
    let download_done = Instant::now();

    // Identify the downloaded files by their control fields, not by their names.
    let mut found: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    let mut download_size = 0;
    for entry in fs::read_dir(&debs).map_err(io_err("reading", &debs))? {
        let path = entry.map_err(io_err("reading", &debs))?.path();
        if path.extension() != Some(OsStr::new("deb")) {
            continue;
        }
        download_size += fs::metadata(&path).map_err(io_err("reading", &path))?.len();
        let fields = deb_fields(&path)?;
        let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
        if field("Architecture") != spec.debian_arch {
            return Err(ProvisionError::BadPackage {
                arch,
                package: field("Package"),
                reason: format!(
                    "{} is for architecture `{}`, not `{}`",
                    path.display(),
                    field("Architecture"),
                    spec.debian_arch
                ),
            });
        }
        found.insert(field("Package"), (path, field("Version")));
    }
    let mut take = |package: &str| {
        found
            .remove(package)
            .ok_or_else(|| ProvisionError::BadPackage {
                arch,
                package: package.to_owned(),
                reason: format!("`apt-get download` did not save it in {}", debs.display()),
            })
    };
    let (kernel_deb, kernel_package_version) = take(&kernel_package)?;
    let (busybox_deb, busybox_version) = take(BUSYBOX_PACKAGE)?;
    step(ProvisionStep::Unpacking);
    for deb in [&kernel_deb, &busybox_deb] {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
            "the package may be damaged; run the provisioning again",
        )?;
    }
    let extract_done = Instant::now();
    remove_dir_if_exists(&apt.dir)?;
    step(ProvisionStep::Verifying);

    // Find the kernel, its modules and busybox in the unpacked tree.
    let bad = |package: &str, reason: String| ProvisionError::BadPackage {
        arch,
        package: package.to_owned(),
        reason,
    };
    let modules_base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_dir())
        .ok_or_else(|| bad(&kernel_package, "it has no lib/modules directory".into()))?;
    let kernel_version = single_subdir(&modules_base, &kernel_package)
        .ok_or_else(|| bad(&kernel_package, "it has no kernel modules directory".into()))?;
    let modules_dir = modules_base.join(&kernel_version);
    let kernel = ["vmlinuz", "vmlinux"]
        .iter()
        .map(|k| root.join("boot").join(format!("{k}-{kernel_version}")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            bad(
                &kernel_package,
                format!("it has no boot/vmlinuz-{kernel_version}"),
            )
        })?;
    let kernel_config = root.join("boot").join(format!("config-{kernel_version}"));
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| bad(BUSYBOX_PACKAGE, "it has no bin/busybox".into()))?;
    check_kernel_image(arch, &read_head(&kernel)?)
        .map_err(|reason| bad(&kernel_package, format!("{}: {reason}", kernel.display())))?;
    check_elf(spec, &read_head(&busybox)?)
        .map_err(|reason| bad(BUSYBOX_PACKAGE, format!("{}: {reason}", busybox.display())))?;

    // Digests, keyed by the final location.
    let final_dir = cache_dir.join(arch.as_str());
    let relocate = |p: &Path| final_dir.join(p.strip_prefix(&staging).unwrap_or(p));
    let mut files = BTreeMap::new();
    for path in [&kernel, &busybox, &kernel_deb, &busybox_deb] {
        files.insert(relative_key(cache_dir, &relocate(path)), digest(path)?);
    }
    let image = GuestImage {
        arch,
        debian_arch: spec.debian_arch.to_owned(),
        debian_suite: suite,
        apt_suites,
        kernel_package,
        kernel_package_version,
        kernel_version,
        kernel: relocate(&kernel),
        kernel_config: relocate(&kernel_config),
        root: relocate(&root),
        modules_dir: relocate(&modules_dir),
        busybox: relocate(&busybox),
        busybox_version,
        files,
        notes,
    };

    // Swap the directory in: first drop the old entry from the manifest, then replace the
    // directory, then record the new entry. An interruption anywhere leaves either no entry or
    // a complete one.
    let trash = cache_dir.join(format!("{TRASH_PREFIX}{arch}"));
    {
        let mut manifest = manifest.lock().unwrap_or_else(PoisonError::into_inner);
        manifest.images.remove(&arch);
        write_manifest(&manifest)?;
        if final_dir.exists() {
            fs::rename(&final_dir, &trash).map_err(io_err("moving aside", &final_dir))?;
        }
        fs::rename(&staging, &final_dir).map_err(io_err("renaming into place", &staging))?;
        opts.emit(ProvisionEvent::Done {
            arch,
            kernel_package: image.kernel_package.clone(),
            kernel_package_version: image.kernel_package_version.clone(),
            kernel_version: image.kernel_version.clone(),
            suite: image.debian_suite.clone(),
            busybox_version: image.busybox_version.clone(),
            update: update_done - started,
            download_bytes: download_size,
            download: download_done - update_done,
            unpack: extract_done - download_done,
            total: started.elapsed(),
        });
        manifest.images.insert(arch, image);
        write_manifest(&manifest)?;
    }
    remove_dir_if_exists(&trash)
}

/// The subdirectory of `dir`: the only one, or the one `package` is named after.
fn single_subdir(dir: &Path, package: &str) -> Option<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [only] => Some(only.clone()),
        _ => names.into_iter().find(|n| {
            package
                .strip_prefix("linux-image-")
                .is_some_and(|v| v.starts_with(n.as_str()))
        }),
    }
}

fn deb_fields(deb: &Path) -> Result<BTreeMap<String, String>, ProvisionError> {
    let out = run(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .args(["Package", "Version", "Architecture"]),
        "the downloaded package may be damaged; run the provisioning again",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn read_head(path: &Path) -> Result<Vec<u8>, ProvisionError> {
    let mut head = Vec::with_capacity(4096);
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(io_err("reading", path))?;
    Ok(head)
}

/// Checks that `head` (the start of a kernel file) is a kernel image QEMU boots on `arch`, by
/// the rules of [`crate::kernel`].
fn check_kernel_image(arch: Arch, head: &[u8]) -> Result<(), String> {
    match crate::kernel::identify_bytes(head) {
        Some(info) if info.arch == arch => Ok(()),
        _ => Err(format!("it is not a {arch} kernel image QEMU can boot")),
    }
}

fn check_elf(spec: ArchSpec, head: &[u8]) -> Result<(), String> {
    match crate::kernel::elf_header(head).filter(|h| h.little_endian) {
        Some(ElfHeader { is_64, machine, .. })
            if is_64 == spec.elf_class_64 && machine == spec.elf_machine =>
        {
            Ok(())
        }
        Some(ElfHeader { is_64, machine, .. }) => Err(format!(
            "it is an ELF file for machine {machine} ({}-bit), not {} ({}-bit)",
            if is_64 { 64 } else { 32 },
            spec.elf_machine,
            if spec.elf_class_64 { 64 } else { 32 },
        )),
        None => Err("it is not a little-endian ELF file".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kernel_and_elf_headers() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(check_kernel_image(Arch::X86_64, &bz).is_ok());
        assert!(check_kernel_image(Arch::Aarch64, &bz).is_err());

        let mut zimage = vec![0u8; 0x40];
        zimage[0x24..0x28].copy_from_slice(&[0x18, 0x28, 0x6f, 0x01]);
        assert!(check_kernel_image(Arch::Armv7, &zimage).is_ok());

        let mut riscv = vec![0u8; 0x40];
        riscv[0x30..0x38].copy_from_slice(b"RISCV\0\0\0");
        riscv[0x38..0x3c].copy_from_slice(b"RSC\x05");
        assert!(check_kernel_image(Arch::Riscv64, &riscv).is_ok());
        riscv[0x30] = 0;
        assert!(check_kernel_image(Arch::Riscv64, &riscv).is_err());

        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        elf[5] = 1;
        elf[6] = 1;
        elf[18..20].copy_from_slice(&40u16.to_le_bytes());
        assert!(check_elf(arch_spec(Arch::Armv7).unwrap(), &elf).is_ok());
        assert!(check_elf(arch_spec(Arch::Aarch64).unwrap(), &elf).is_err());
        assert!(check_elf(arch_spec(Arch::Aarch64).unwrap(), b"#!/bin/sh").is_err());
    }

    #[test]
    fn default_cache_dir_honours_the_environment_variable() {
        // Only the variable this crate owns is set, so concurrent tests are unaffected.
        if env::var_os(CACHE_DIR_ENV).is_none() {
            let dir = default_cache_dir();
            assert!(dir.ends_with("qemu-orchestrator/images"), "{dir:?}");
        }
    }

    /// A command line prints the events' one-line messages: what `provision` printed before it
    /// sent typed events.
    #[test]
    fn progress_events_read_as_one_line_messages() {
        let done = ProvisionEvent::Done {
            arch: Arch::Riscv64,
            kernel_package: "linux-image-6.12.118+deb13-riscv64".into(),
            kernel_package_version: "6.12.118-1".into(),
            kernel_version: "6.12.118+deb13-riscv64".into(),
            suite: "trixie".into(),
            busybox_version: "1:1.37.0-6".into(),
            update: Duration::from_millis(2500),
            download_bytes: 110_400_000,
            download: Duration::from_millis(7250),
            unpack: Duration::from_millis(1000),
            total: Duration::from_millis(11000),
        };
        assert_eq!(
            done.to_string(),
            "riscv64: linux-image-6.12.118+deb13-riscv64 6.12.118-1 (kernel 6.12.118+deb13-riscv64, \
             trixie), busybox 1:1.37.0-6: apt-get update 2.5s, download 110.4 MB 7.2s, unpack \
             1.0s, total 11.0s"
        );
        let dropped = ProvisionEvent::SuitesDropped {
            arch: Arch::Armv7,
            suites: vec!["bookworm-updates".into(), "bookworm-security".into()],
            error: "E: Failed to fetch".into(),
        };
        assert_eq!(
            dropped.to_string(),
            "armv7: could not fetch the package lists of bookworm-updates and bookworm-security \
             (E: Failed to fetch); went on without"
        );
        let up_to_date = ProvisionEvent::UpToDate {
            arch: Arch::X86_64,
            kernel_package: "linux-image-6.1.0-57-amd64".into(),
            kernel_package_version: "6.1.158-1".into(),
        };
        assert_eq!(
            up_to_date.to_string(),
            "x86_64: up to date (linux-image-6.1.0-57-amd64 6.1.158-1)"
        );
        let forced = ProvisionEvent::Again {
            arch: Arch::Aarch64,
            reason: None,
        };
        assert_eq!(forced.to_string(), "aarch64: provisioning again (forced)");
        let step = ProvisionEvent::Step {
            arch: Arch::Aarch64,
            step: ProvisionStep::Downloading,
        };
        assert_eq!(
            step.to_string(),
            "aarch64: downloading the kernel and busybox"
        );
    }
}
