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
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use orchestrator_core::Arch;

use crate::kernel::ElfHeader;
use crate::profile::find_program;
use serde::{Deserialize, Serialize};

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

/// Receives one-line progress messages from [`provision`] (for example to print them).
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

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
    /// Progress messages, one line each; `None` keeps quiet.
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

    /// Sends progress messages to `progress`.
    pub fn with_progress(mut self, progress: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    fn log(&self, message: &str) {
        if let Some(progress) = &self.progress {
            progress(message);
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
// Loading and verifying

/// Reads `<cache_dir>/manifest.json` and checks it: every image's kernel and busybox must match
/// their digests, and the `.deb` files and module directories must be present (with the
/// recorded sizes). This is fast (no network, well under a second for all architectures).
///
/// Fails with [`ProvisionError::NotProvisioned`] (naming `cargo xtask test`) when nothing is
/// provisioned; use [`Manifest::image`] to get one architecture's image.
pub fn load(cache_dir: &Path) -> Result<Manifest, ProvisionError> {
    let cache_dir = absolute(cache_dir)?;
    let _lock = lock_shared(&cache_dir)?;
    let manifest = match read_manifest(&cache_dir)? {
        Some(manifest) => manifest,
        None => {
            return Err(ProvisionError::NotProvisioned {
                cache_dir,
                reason: format!("there is no {MANIFEST_FILE}"),
            });
        }
    };
    if manifest.images.is_empty() {
        return Err(ProvisionError::NotProvisioned {
            cache_dir,
            reason: format!("{MANIFEST_FILE} lists no images"),
        });
    }
    for image in manifest.images.values() {
        verify_image(&cache_dir, image, false)?;
    }
    Ok(manifest)
}

/// Reads the manifest; `Ok(None)` when there is none. A manifest of another version is an error.
fn read_manifest(cache_dir: &Path) -> Result<Option<Manifest>, ProvisionError> {
    let path = cache_dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let mut manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| ProvisionError::Corrupt {
            path: path.clone(),
            reason: format!("it is not a valid manifest ({e})"),
        })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(ProvisionError::Corrupt {
            path,
            reason: format!(
                "it has format version {}, this program uses {MANIFEST_VERSION}",
                manifest.version
            ),
        });
    }
    manifest.cache_dir = cache_dir.to_owned();
    for image in manifest.images.values_mut() {
        image.map_paths(|p| cache_dir.join(p));
    }
    Ok(Some(manifest))
}

/// Writes the manifest atomically (temporary file, fsync, rename).
fn write_manifest(manifest: &Manifest) -> Result<(), ProvisionError> {
    let cache_dir = &manifest.cache_dir;
    let mut on_disk = manifest.clone();
    for image in on_disk.images.values_mut() {
        image.map_paths(|p| p.strip_prefix(cache_dir).unwrap_or(p).to_owned());
    }
    let mut json = serde_json::to_string_pretty(&on_disk).expect("a manifest serializes");
    json.push('\n');
    let path = cache_dir.join(MANIFEST_FILE);
    let tmp = cache_dir.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    file.write_all(json.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
    Ok(())
}

fn relative_key(cache_dir: &Path, path: &Path) -> String {
    path.strip_prefix(cache_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Checks an image against its recorded digests. `full` hashes every file; otherwise only the
/// kernel and busybox are hashed and the other files' sizes are compared.
fn verify_image(cache_dir: &Path, image: &GuestImage, full: bool) -> Result<(), ProvisionError> {
    let corrupt = |path: &Path, reason: String| ProvisionError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if !image.modules_dir.join("modules.order").is_file() {
        return Err(corrupt(
            &image.modules_dir,
            format!("the {} kernel modules are missing", image.arch),
        ));
    }
    let kernel = relative_key(cache_dir, &image.kernel);
    let busybox = relative_key(cache_dir, &image.busybox);
    for key in [&kernel, &busybox] {
        if !image.files.contains_key(key) {
            return Err(corrupt(
                &cache_dir.join(MANIFEST_FILE),
                format!("it records no digest for {key}"),
            ));
        }
    }
    for (key, digest) in &image.files {
        let path = cache_dir.join(key);
        let meta = fs::metadata(&path).map_err(|e| corrupt(&path, e.to_string()))?;
        if meta.len() != digest.size {
            return Err(corrupt(
                &path,
                format!("it has {} bytes, {} were recorded", meta.len(), digest.size),
            ));
        }
        if full || *key == kernel || *key == busybox {
            let actual = hash_file(&path)?;
            if actual != digest.blake3 {
                return Err(corrupt(
                    &path,
                    format!(
                        "its BLAKE3 digest is {actual}, {} was recorded",
                        digest.blake3
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String, ProvisionError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(io_err("reading", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn digest(path: &Path) -> Result<FileDigest, ProvisionError> {
    let size = fs::metadata(path).map_err(io_err("reading", path))?.len();
    Ok(FileDigest {
        size,
        blake3: hash_file(path)?,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, ProvisionError> {
    std::path::absolute(path).map_err(io_err("resolving", path))
}

// ---------------------------------------------------------------------------------------------
// Locking

fn lock_exclusive(cache_dir: &Path) -> Result<Flock<File>, ProvisionError> {
    let path = cache_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("creating the lock file", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err("locking", &path)(io::Error::from(errno)))
}

/// A shared lock, so that loading waits for a running [`provision`]. A cache without a lock
/// file (never provisioned, or read-only and copied from elsewhere) is read unlocked.
fn lock_shared(cache_dir: &Path) -> Result<Option<Flock<File>>, ProvisionError> {
    let path = cache_dir.join(LOCK_FILE);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    Flock::lock(file, FlockArg::LockShared)
        .map(Some)
        .map_err(|(_, errno)| io_err("locking", &path)(io::Error::from(errno)))
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
            opts.log(&format!("ignoring the existing manifest: {e}"));
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
                opts.log(&format!("{arch}: provisioning again (forced)"));
            } else {
                match verify_image(&cache_dir, image, true) {
                    Ok(()) => {
                        opts.log(&format!(
                            "{arch}: up to date ({} {})",
                            image.kernel_package, image.kernel_package_version
                        ));
                        continue;
                    }
                    Err(e) => opts.log(&format!("{arch}: provisioning again: {e}")),
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
    let log = |message: String| opts.log(&format!("{arch}: {message}"));
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
        let dropped: Vec<&str> = lines
            .iter()
            .filter(|l| !used.contains(l))
            .map(|l| l.suite.as_str())
            .collect();
        let note = format!(
            "could not fetch the package lists of {} ({}); went on without",
            dropped.join(" and "),
            first_error_line(&first),
        );
        log(note.clone());
        notes.push(note);
    }
    let apt_suites: Vec<String> = used.iter().map(|l| l.suite.clone()).collect();
    let update_done = Instant::now();

    let kernel_package = apt.kernel_package(spec.kernel_metapackage)?;
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
    for deb in [&kernel_deb, &busybox_deb] {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
            "the package may be damaged; run the provisioning again",
        )?;
    }
    let extract_done = Instant::now();
    remove_dir_if_exists(&apt.dir)?;

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
        log(format!(
            "{} {} (kernel {}, {}), busybox {}: apt-get update {:.1}s, download {:.1} MB \
             {:.1}s, unpack {:.1}s, total {:.1}s",
            image.kernel_package,
            image.kernel_package_version,
            image.kernel_version,
            image.debian_suite,
            image.busybox_version,
            (update_done - started).as_secs_f64(),
            download_size as f64 / 1e6,
            (download_done - update_done).as_secs_f64(),
            (extract_done - download_done).as_secs_f64(),
            started.elapsed().as_secs_f64(),
        ));
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

// ---------------------------------------------------------------------------------------------
// apt with a private configuration

/// `apt-get`/`apt-cache` confined to a directory: own lists, cache, sources and architecture.
struct Apt {
    dir: PathBuf,
    conf: PathBuf,
    sources: PathBuf,
    arch: Arch,
    debian_arch: &'static str,
}

impl Apt {
    fn create(dir: &Path, arch: Arch, debian_arch: &'static str) -> Result<Self, ProvisionError> {
        let d = dir.display();
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            create_dir(&dir.join(sub))?;
        }
        // Hooks are cleared: the system's update hooks are about the system's lists, not ours.
        // Preferences are emptied so that the host's pinning does not pick the guest's kernel.
        let conf_text = format!(
            "#clear APT::Update::Pre-Invoke;\n\
             #clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n\
             #clear APT::Architectures;\n\
             APT::Architecture \"{debian_arch}\";\n\
             APT::Architectures {{ \"{debian_arch}\"; }};\n\
             Dir::State \"{d}/state\";\n\
             Dir::State::Lists \"{d}/state/lists\";\n\
             Dir::State::status \"/dev/null\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Cache::Archives \"{d}/cache/archives\";\n\
             Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
             Dir::Etc::Preferences \"{d}/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
             Acquire::Languages \"none\";\n"
        );
        let conf = dir.join("apt.conf");
        fs::write(&conf, conf_text).map_err(io_err("writing", &conf))?;
        Ok(Self {
            dir: dir.to_owned(),
            conf,
            sources: dir.join("sources.list"),
            arch,
            debian_arch,
        })
    }

    fn write_sources(&self, lines: &[SourceLine]) -> Result<(), ProvisionError> {
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let signed_by = match &line.signed_by {
                None => String::new(),
                Some(SignedBy::Keyrings(keys)) => format!(" signed-by={}", keys.join(",")),
                Some(SignedBy::Inline(key)) => {
                    let path = self.dir.join(format!("key-{i}.asc"));
                    fs::write(&path, inline_key_text(key)).map_err(io_err("writing", &path))?;
                    format!(" signed-by={}", path.display())
                }
            };
            text.push_str(&format!(
                "deb [arch={} target=Packages{signed_by}] {} {} main\n",
                self.debian_arch, line.uri, line.suite
            ));
        }
        fs::write(&self.sources, text).map_err(io_err("writing", &self.sources))
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.arg("-c").arg(&self.conf).env("LC_ALL", "C");
        command
    }

    fn update(&self) -> Result<(), ProvisionError> {
        run(
            self.command("apt-get").args(["-q", "update"]),
            "check the network connection and the Debian entries in the apt sources; the \
             private apt configuration is in the staging directory until the next run",
        )
        .map(drop)
    }

    /// The versioned kernel package the metapackage depends on.
    fn kernel_package(&self, metapackage: &str) -> Result<String, ProvisionError> {
        let out = run(
            self.command("apt-cache").args(["depends", metapackage]),
            "the Debian release in the apt sources must ship this kernel package",
        )?;
        parse_kernel_dependency(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            ProvisionError::BadPackage {
                arch: self.arch,
                package: metapackage.to_owned(),
                reason: "it depends on no linux-image package".to_owned(),
            }
        })
    }

    fn download(&self, dest: &Path, packages: &[&str]) -> Result<(), ProvisionError> {
        run(
            self.command("apt-get")
                .args(["-q", "download"])
                .args(packages)
                .current_dir(dest),
            "check the network connection and the free space in the cache directory",
        )
        .map(drop)
    }
}

fn parse_kernel_dependency(depends_output: &str) -> Option<String> {
    depends_output
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix("|Depends:")
                .or_else(|| l.strip_prefix("Depends:"))
        })
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.ends_with("-dbg"))
        .map(str::to_owned)
}

/// A deb822 inline key (continuation lines, `.` for empty lines) as an armored key file.
fn inline_key_text(key: &str) -> String {
    let mut text: String = key
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .map(|l| if l == "." { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// Runs a command to completion; a failure carries its (bounded) error output and `fix`.
fn run(command: &mut Command, fix: &str) -> Result<Output, ProvisionError> {
    let shown = show_command(command);
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ProvisionError::ToolMissing {
                program: program.clone(),
                fix: "install it with the system's package manager".to_owned(),
            }
        } else {
            ProvisionError::Io {
                action: "running",
                path: PathBuf::from(&program),
                source: e,
            }
        }
    })?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let output = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(ProvisionError::CommandFailed {
        command: shown,
        status: out.status.to_string(),
        output: tail(output.trim_end(), MAX_OUTPUT),
        fix: fix.to_owned(),
    })
}

fn show_command(command: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            format!("'{}'", s.replace('\'', r"'\''"))
        } else {
            s.into_owned()
        }
    };
    let mut shown = quote(command.get_program());
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&quote(arg));
    }
    if let Some(dir) = command.get_current_dir() {
        shown = format!("cd {} && {shown}", quote(dir.as_os_str()));
    }
    shown
}

/// The last `max` bytes of `text` (at a character boundary), marked when cut.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[…]{}", &text[start..])
}

/// The suites named in the `Failed to fetch <uri>/dists/<suite>/...` lines of a failed
/// `apt-get update`.
fn failed_suites(error: &ProvisionError) -> BTreeSet<String> {
    let ProvisionError::CommandFailed { output, .. } = error else {
        return BTreeSet::new();
    };
    output
        .lines()
        .filter_map(|l| l.split_once("Failed to fetch "))
        .filter_map(|(_, rest)| rest.split_once("/dists/"))
        .filter_map(|(_, rest)| rest.split('/').next())
        .filter(|suite| !suite.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first `E:` line of a failed apt command, for notes.
fn first_error_line(error: &ProvisionError) -> String {
    let text = match error {
        ProvisionError::CommandFailed { output, .. } => output.clone(),
        other => other.to_string(),
    };
    text.lines()
        .find(|l| l.starts_with("E:"))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim_start_matches("E:")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// The system's apt sources

/// How a source's signatures are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SignedBy {
    /// Keyring files or key fingerprints.
    Keyrings(Vec<String>),
    /// An ASCII-armored key embedded in a deb822 `Signed-By` field.
    Inline(String),
}

impl SignedBy {
    fn parse(value: &str) -> Option<Self> {
        if value.contains("BEGIN PGP PUBLIC KEY BLOCK") {
            return Some(Self::Inline(value.to_owned()));
        }
        let keys: Vec<String> = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        (!keys.is_empty()).then_some(Self::Keyrings(keys))
    }
}

/// One `deb` source: a URI and a suite (a deb822 stanza yields one per URI and suite).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AptSource {
    uri: String,
    suite: String,
    components: Vec<String>,
    signed_by: Option<SignedBy>,
}

/// Parses the one-line format of `sources.list` (`deb [options] uri suite components...`).
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb") else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue; // deb-src, or garbage
        }
        let mut rest = rest.trim_start();
        let mut options = "";
        if let Some(after) = rest.strip_prefix('[') {
            let Some((inside, after)) = after.split_once(']') else {
                continue;
            };
            options = inside;
            rest = after;
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let signed_by = options
            .split_whitespace()
            .filter_map(|o| o.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("signed-by"))
            .and_then(|(_, v)| SignedBy::parse(v));
        sources.push(AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: words.map(str::to_owned).collect(),
            signed_by,
        });
    }
    sources
}

/// Parses the deb822 format of `*.sources` files.
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            stanza_sources(&std::mem::take(&mut fields), &mut sources);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    sources
}

fn stanza_sources(fields: &[(String, String)], sources: &mut Vec<AptSource>) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let words = |name: &str| get(name).unwrap_or_default().split_whitespace();
    if !words("types").any(|t| t == "deb") || get("enabled").is_some_and(|e| e.trim() == "no") {
        return;
    }
    let components: Vec<String> = words("components").map(str::to_owned).collect();
    let signed_by = get("signed-by").and_then(SignedBy::parse);
    for uri in words("uris") {
        for suite in words("suites") {
            sources.push(AptSource {
                uri: uri.to_owned(),
                suite: suite.to_owned(),
                components: components.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
}

/// Reads `<etc>/sources.list` and `<etc>/sources.list.d/*.{list,sources}` like apt does (other
/// file names are ignored). Returns the sources and the files read.
fn read_apt_sources(etc: &Path) -> Result<(Vec<AptSource>, Vec<PathBuf>), ProvisionError> {
    let mut files = Vec::new();
    let main = etc.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let parts = etc.join("sources.list.d");
    if parts.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(&parts)
            .map_err(io_err("reading", &parts))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                (name.ends_with(".list") || name.ends_with(".sources"))
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    && p.is_file()
            })
            .collect();
        names.sort();
        files.extend(names);
    }
    let mut sources = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).map_err(io_err("reading", file))?;
        if file.extension() == Some(OsStr::new("sources")) {
            sources.extend(parse_deb822_sources(&text));
        } else {
            sources.extend(parse_one_line_sources(&text));
        }
    }
    Ok((sources, files))
}

/// The system's Debian archive entries: the release, and its -updates and -security suites.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DebianSources {
    base: AptSource,
    updates: Option<AptSource>,
    security: Option<AptSource>,
}

fn system_debian_sources(etc: &Path) -> Result<DebianSources, ProvisionError> {
    let (sources, files) = read_apt_sources(etc)?;
    let codename = host_codename();
    select_debian_sources(&sources, codename.as_deref()).map_err(|reason| {
        ProvisionError::NoDebianSource {
            searched: if files.is_empty() {
                format!("nothing in {}", etc.display())
            } else {
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            reason,
        }
    })
}

fn host_codename() -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
                .find(|v| !v.is_empty())
        })
}

fn select_debian_sources(
    sources: &[AptSource],
    codename: Option<&str>,
) -> Result<DebianSources, String> {
    let usable: Vec<&AptSource> = sources
        .iter()
        .filter(|s| {
            s.components.iter().any(|c| c == "main")
                && !s.uri.starts_with("cdrom:")
                && !s.suite.ends_with('/')
        })
        .collect();
    let base = codename
        .and_then(|c| usable.iter().find(|s| s.suite == c))
        .or_else(|| {
            usable
                .iter()
                .find(|s| SUITE_ALIASES.contains(&s.suite.as_str()))
        })
        .ok_or_else(|| match codename {
            Some(c) => format!("no `deb` entry has suite `{c}` (this system's release) and `main`"),
            None => "this system's release is unknown (no VERSION_CODENAME in /etc/os-release) \
                     and no `deb` entry has suite `stable` and `main`"
                .to_owned(),
        })?;
    let find = |suffixes: &[&str]| {
        suffixes.iter().find_map(|suffix| {
            let suite = format!("{}{suffix}", base.suite);
            usable
                .iter()
                .find(|s| s.suite == suite)
                .map(|s| (*s).clone())
        })
    };
    Ok(DebianSources {
        base: (*base).clone(),
        updates: find(&["-updates"]),
        security: find(&["-security", "/updates"]),
    })
}

/// One line of the generated source list.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SourceLine {
    uri: String,
    suite: String,
    signed_by: Option<SignedBy>,
}

/// The Debian release to use for `arch` and the source lines for it: the system's release, or,
/// when that release has no kernels for `arch`, the first that has, from the same mirrors.
fn source_lines(
    debian: &DebianSources,
    arch: Arch,
    keyring_installed: bool,
) -> (String, Vec<SourceLine>) {
    let base = debian.base.suite.as_str();
    let release = if arch == Arch::Riscv64 && RELEASES_WITHOUT_RISCV64.contains(&base) {
        FIRST_RISCV64_RELEASE
    } else {
        base
    };
    let entries = [
        Some((&debian.base, String::new())),
        debian.updates.as_ref().map(|s| (s, "-updates".to_owned())),
        debian
            .security
            .as_ref()
            .map(|s| (s, "-security".to_owned())),
    ];
    let lines = entries
        .into_iter()
        .flatten()
        .map(|(source, suffix)| {
            if release == base {
                SourceLine {
                    uri: source.uri.clone(),
                    suite: source.suite.clone(),
                    signed_by: source.signed_by.clone(),
                }
            } else {
                // Another release: the system's own entries may be restricted to keys of its
                // release; the archive keyring package carries the next release's keys too.
                let signed_by = if keyring_installed {
                    Some(SignedBy::Keyrings(vec![DEBIAN_ARCHIVE_KEYRING.to_owned()]))
                } else {
                    source.signed_by.clone()
                };
                SourceLine {
                    uri: source.uri.clone(),
                    suite: format!("{release}{suffix}"),
                    signed_by,
                }
            }
        })
        .collect();
    (release.to_owned(), lines)
}

// ---------------------------------------------------------------------------------------------
// QEMU

/// Makes sure the QEMU system emulators of [`QEMU_BINARIES`] are in PATH, installing the
/// missing Debian packages with `apt-get install --no-install-recommends --no-remove` (which
/// needs root; it never uninstalls anything, a conflict is an error). `apt-get update` runs only
/// when the first installation attempt fails (no or stale package lists), then the installation
/// is tried once more.
///
/// On Debian, riscv64 `-M virt` guests need no `-bios` argument: QEMU's default firmware,
/// OpenSBI `fw_dynamic`, comes with `qemu-system-data`
/// (`/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin`).
pub fn ensure_qemu() -> Result<(), ProvisionError> {
    ensure_qemu_with(false)
}

/// [`ensure_qemu`], optionally letting apt replace packages that conflict with Debian's QEMU
/// (for example a `qemu-utils` from backports, whose `qemu-img` is then reinstalled at Debian's
/// version). `cargo xtask test` allows it: it is the project's documented setup,
/// `apt-get install qemu-system-x86 qemu-system-arm qemu-system-misc`.
pub fn ensure_qemu_with(allow_removals: bool) -> Result<(), ProvisionError> {
    let had_qemu_img = find_program("qemu-img").is_some();
    let missing = || -> BTreeSet<&'static str> {
        QEMU_BINARIES
            .iter()
            .filter(|(binary, _)| find_program(binary).is_none())
            .map(|&(_, package)| package)
            .collect()
    };
    let packages = missing();
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.iter().copied().collect::<Vec<_>>().join(" ");
    if find_program("apt-get").is_none() {
        return Err(ProvisionError::ToolMissing {
            program: "qemu-system-*".to_owned(),
            fix: format!(
                "install QEMU ({}) with the system's package manager",
                QEMU_BINARIES.map(|(b, _)| b).join(", ")
            ),
        });
    }
    let fix = format!("run `sudo apt-get install {list}` (installing QEMU needs root)");
    let apt_get = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        command
    };
    // `--no-remove`: never uninstall anything (a conflicting QEMU from elsewhere, say) to make
    // room; fail and let the user decide instead.
    let mut install = apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
    if !allow_removals {
        install.arg("--no-remove");
    }
    install.args(&packages);
    let explain = |error: ProvisionError| match error {
        ProvisionError::CommandFailed {
            command,
            status,
            output,
            ..
        } if output.contains("remove is disabled") => ProvisionError::CommandFailed {
            command,
            status,
            output,
            fix: format!(
                "installing QEMU would remove installed packages (conflicts); resolve them and \
                 run `sudo apt-get install {list}`"
            ),
        },
        other => other,
    };
    if let Err(first) = run(&mut install, &fix) {
        let text = first.to_string();
        if text.contains("are you root")
            || text.contains("Permission denied")
            || text.contains("remove is disabled")
        {
            return Err(explain(first));
        }
        run(&mut apt_get(&["update", "-q"]), &fix)?;
        run(&mut install, &fix).map_err(explain)?;
    }
    if had_qemu_img && find_program("qemu-img").is_none() {
        // A conflicting qemu-utils was replaced: put Debian's back so qemu-img stays.
        run(
            &mut apt_get(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "qemu-utils",
            ]),
            &fix,
        )?;
    }
    let still = missing();
    if still.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::ToolMissing {
            program: QEMU_BINARIES
                .iter()
                .filter(|(_, p)| still.contains(p))
                .map(|(b, _)| *b)
                .collect::<Vec<_>>()
                .join(", "),
            fix: format!("`apt-get install {list}` succeeded but did not provide it"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str, suite: &str, signed_by: Option<&str>) -> AptSource {
        AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            components: vec!["main".to_owned()],
            signed_by: signed_by.map(|k| SignedBy::Keyrings(vec![k.to_owned()])),
        }
    }

    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    #[test]
    fn deb822_stanzas_with_comments_and_several_suites() {
        let text = "\
# a comment before everything
Types: deb
# a comment inside the stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 3);
        assert_eq!(
            sources[0],
            AptSource {
                uri: "http://mirror.invalid/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "contrib".into()],
                signed_by: Some(SignedBy::Keyrings(vec![KEYRING.into()])),
            }
        );
        assert_eq!(sources[1].suite, "bookworm-updates");
        assert_eq!(sources[2].uri, "http://mirror.invalid/debian-security");
        assert_eq!(sources[2].suite, "bookworm-security");
    }

    #[test]
    fn deb822_skips_disabled_and_source_only_stanzas_and_reads_inline_keys() {
        let text = "\
Types: deb-src
URIs: http://mirror.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://other.invalid/debian
Suites: bookworm
Components: main
Enabled: no

types: deb
uris: http://a.invalid/debian http://b.invalid/debian
suites: trixie
components: main
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UgrF6nP+Thhu8L
 -----END PGP PUBLIC KEY BLOCK-----
";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].uri, "http://a.invalid/debian");
        assert_eq!(sources[1].uri, "http://b.invalid/debian");
        let Some(SignedBy::Inline(key)) = &sources[0].signed_by else {
            panic!("expected an inline key, got {:?}", sources[0].signed_by);
        };
        assert_eq!(
            inline_key_text(key),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/\
             NZJPR8lsD9K7UgrF6nP+Thhu8L\n-----END PGP PUBLIC KEY BLOCK-----\n"
        );
    }

    #[test]
    fn one_line_format_with_options_and_comments() {
        let text = "\
# deb http://commented.invalid/debian bookworm main
deb http://mirror.invalid/debian bookworm main non-free-firmware # trailing comment
deb-src http://mirror.invalid/debian bookworm main
deb [ arch=amd64,arm64 signed-by=/etc/apt/keyrings/a.gpg ] http://mirror.invalid/debian-security bookworm-security main
deb [signed-by=/k1.gpg,/k2.gpg] https://third.invalid/apt stable-party main

   deb\thttp://tab.invalid/debian bookworm-updates main
debian-is-not-a-type http://x.invalid/ bookworm main
deb http://incomplete.invalid/
";
        let sources = parse_one_line_sources(text);
        assert_eq!(sources.len(), 4, "{sources:#?}");
        assert_eq!(
            sources[0],
            AptSource {
                uri: "http://mirror.invalid/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "non-free-firmware".into()],
                signed_by: None,
            }
        );
        assert_eq!(sources[1].suite, "bookworm-security");
        assert_eq!(
            sources[1].signed_by,
            Some(SignedBy::Keyrings(vec!["/etc/apt/keyrings/a.gpg".into()]))
        );
        assert_eq!(
            sources[2].signed_by,
            Some(SignedBy::Keyrings(vec!["/k1.gpg".into(), "/k2.gpg".into()]))
        );
        assert_eq!(sources[3].uri, "http://tab.invalid/debian");
        assert_eq!(sources[3].suite, "bookworm-updates");
    }

    #[test]
    fn reads_sources_like_apt_does() {
        let etc = tempfile::tempdir().unwrap();
        let d = etc.path().join("sources.list.d");
        fs::create_dir(&d).unwrap();
        fs::write(
            etc.path().join("sources.list"),
            "deb http://one.invalid/debian bookworm main\n",
        )
        .unwrap();
        fs::write(
            d.join("debian.sources"),
            "Types: deb\nURIs: http://two.invalid/debian\nSuites: bookworm-security\n\
             Components: main\n",
        )
        .unwrap();
        fs::write(
            d.join("old.list.disabled"),
            "deb http://no.invalid/ x main\n",
        )
        .unwrap();
        fs::write(d.join("bad name.list"), "deb http://no.invalid/ y main\n").unwrap();
        let (sources, files) = read_apt_sources(etc.path()).unwrap();
        assert_eq!(files.len(), 2);
        let uris: Vec<&str> = sources.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["http://one.invalid/debian", "http://two.invalid/debian"]
        );
    }

    #[test]
    fn selects_the_release_entries_and_ignores_others() {
        let sources = vec![
            source("https://third.invalid/node", "nodistro", None),
            source("http://m.invalid/debian", "bookworm-backports", None),
            source("http://m.invalid/debian", "bookworm", Some(KEYRING)),
            source("http://m.invalid/debian", "bookworm-updates", Some(KEYRING)),
            source(
                "http://s.invalid/debian-security",
                "bookworm-security",
                None,
            ),
        ];
        let debian = select_debian_sources(&sources, Some("bookworm")).unwrap();
        assert_eq!(debian.base.suite, "bookworm");
        assert_eq!(debian.updates.as_ref().unwrap().suite, "bookworm-updates");
        assert_eq!(
            debian.security.as_ref().unwrap().uri,
            "http://s.invalid/debian-security"
        );

        // Same release for the architectures bookworm has kernels for.
        let (suite, lines) = source_lines(&debian, Arch::Aarch64, true);
        assert_eq!(suite, "bookworm");
        let suites: Vec<&str> = lines.iter().map(|l| l.suite.as_str()).collect();
        assert_eq!(
            suites,
            ["bookworm", "bookworm-updates", "bookworm-security"]
        );
        assert_eq!(lines[2].signed_by, None);

        // riscv64 comes from trixie, same mirrors, the archive keyring.
        let (suite, lines) = source_lines(&debian, Arch::Riscv64, true);
        assert_eq!(suite, "trixie");
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.uri.as_str(), l.suite.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("http://m.invalid/debian", "trixie"),
                ("http://m.invalid/debian", "trixie-updates"),
                ("http://s.invalid/debian-security", "trixie-security"),
            ]
        );
        assert!(
            lines
                .iter()
                .all(|l| l.signed_by == Some(SignedBy::Keyrings(vec![KEYRING.into()])))
        );
    }

    #[test]
    fn falls_back_to_suite_aliases_and_reports_missing_sources() {
        let sources = vec![
            source("http://m.invalid/debian", "stable", None),
            source("http://m.invalid/debian", "stable-updates", None),
        ];
        let debian = select_debian_sources(&sources, Some("trixie")).unwrap();
        assert_eq!(debian.base.suite, "stable");
        assert_eq!(debian.security, None);
        let (suite, lines) = source_lines(&debian, Arch::Riscv64, true);
        assert_eq!(suite, "stable");
        assert_eq!(lines.len(), 2);

        let err = select_debian_sources(
            &[source("https://third.invalid/x", "nodistro", None)],
            Some("bookworm"),
        )
        .unwrap_err();
        assert!(err.contains("`bookworm`"), "{err}");
    }

    #[test]
    fn parses_the_kernel_dependency() {
        let out = "linux-image-arm64\n  Depends: linux-image-6.1.0-56-arm64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-arm64")
        );
        let out = "linux-image-amd64\n |Depends: linux-image-6.1.0-9-amd64-dbg\n  \
                   Depends: linux-image-6.1.0-9-amd64\n  Recommends: firmware\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-9-amd64")
        );
        assert_eq!(parse_kernel_dependency("x\n  Depends: <virtual>\n"), None);
    }

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
    fn manifest_round_trips_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let arch_dir = cache.join("armv7");
        let modules = arch_dir.join("root/lib/modules/6.1.0-1-armmp");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("modules.order"), "").unwrap();
        fs::create_dir_all(arch_dir.join("root/boot")).unwrap();
        fs::create_dir_all(arch_dir.join("root/bin")).unwrap();
        let kernel = arch_dir.join("root/boot/vmlinuz-6.1.0-1-armmp");
        let busybox = arch_dir.join("root/bin/busybox");
        fs::write(&kernel, b"kernel").unwrap();
        fs::write(&busybox, b"busybox").unwrap();
        let mut files = BTreeMap::new();
        for p in [&kernel, &busybox] {
            files.insert(relative_key(cache, p), digest(p).unwrap());
        }
        let image = GuestImage {
            arch: Arch::Armv7,
            debian_arch: "armhf".into(),
            debian_suite: "bookworm".into(),
            apt_suites: vec!["bookworm".into()],
            kernel_package: "linux-image-6.1.0-1-armmp".into(),
            kernel_package_version: "6.1.1-1".into(),
            kernel_version: "6.1.0-1-armmp".into(),
            kernel: kernel.clone(),
            kernel_config: arch_dir.join("root/boot/config-6.1.0-1-armmp"),
            root: arch_dir.join("root"),
            modules_dir: modules,
            busybox: busybox.clone(),
            busybox_version: "1:1.35.0-4".into(),
            files,
            notes: vec![],
        };
        let mut manifest = Manifest::empty(cache);
        manifest.images.insert(Arch::Armv7, image);
        write_manifest(&manifest).unwrap();

        let text = fs::read_to_string(cache.join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("\"armv7/root/boot/vmlinuz-6.1.0-1-armmp\""));
        assert!(!text.contains(&*cache.to_string_lossy()));

        let loaded = load(cache).unwrap();
        assert_eq!(loaded, manifest);
        assert_eq!(loaded.image(Arch::Armv7).unwrap().kernel, kernel);
        let err = loaded.image(Arch::Riscv64).unwrap_err().to_string();
        assert!(err.contains(PROVISION_COMMAND), "{err}");

        // A modified kernel is caught, and so is a missing manifest.
        fs::write(&kernel, b"kernel!").unwrap();
        let err = load(cache).unwrap_err();
        assert!(matches!(err, ProvisionError::Corrupt { .. }), "{err}");
        fs::write(&kernel, b"kernal").unwrap();
        assert!(load(cache).unwrap_err().to_string().contains("BLAKE3"));
        let empty = tempfile::tempdir().unwrap();
        let err = load(empty.path()).unwrap_err().to_string();
        assert!(err.contains(PROVISION_COMMAND), "{err}");
    }

    #[test]
    fn default_cache_dir_honours_the_environment_variable() {
        // Only the variable this crate owns is set, so concurrent tests are unaffected.
        if env::var_os(CACHE_DIR_ENV).is_none() {
            let dir = default_cache_dir();
            assert!(dir.ends_with("qemu-orchestrator/images"), "{dir:?}");
        }
    }

    #[test]
    fn finds_the_suites_that_failed_to_update() {
        let error = ProvisionError::CommandFailed {
            command: "apt-get update".into(),
            status: "exit status: 100".into(),
            output: "\
E: Failed to fetch http://m.invalid/debian-security/dists/bookworm-security/main/binary-armhf/Packages.xz  File has unexpected size (1 != 2). Mirror sync in progress? [IP: 192.0.2.1 80]
   Hashes of expected file:
W: Failed to fetch http://m.invalid/debian/dists/bookworm-updates/InRelease  Could not resolve host
E: Some index files failed to download. They have been ignored, or old ones used instead."
                .into(),
            fix: String::new(),
        };
        let failed: Vec<String> = failed_suites(&error).into_iter().collect();
        assert_eq!(failed, ["bookworm-security", "bookworm-updates"]);
        assert!(first_error_line(&error).starts_with("Failed to fetch http://m.invalid/"));
    }

    #[test]
    fn bounded_output_keeps_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("0123456789", 4), "[…]6789");
        assert_eq!(tail("ééé", 3), "[…]é");
    }
}
