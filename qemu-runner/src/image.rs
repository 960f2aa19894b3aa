//! Guest images: the kernel and busybox for an architecture, and the initramfs built from them.
//!
//! The initramfs comes in two parts that the kernel unpacks one after the other (concatenated
//! compressed cpio archives are part of the initramfs format):
//! - the **base**: busybox, the agent as `/init`, device nodes, and the requested kernel modules
//!   with a generated `modules.dep`. It depends only on the image and the module list, so it is
//!   built once and cached by a BLAKE3 digest of its inputs;
//! - the **test part**: `/orch/*` (what to run, its environment, limits, modules to load) and the
//!   test's files under `/work`, a few kilobytes built for every test.

use std::io::Write;
use std::path::{Path, PathBuf};

use orchestrator_core::{Arch, TestCase};

use crate::agent;
use crate::initramfs::{Compression, InitramfsBuilder};
use crate::modules::ModuleIndex;

/// Why a guest's initramfs could not be built. Each message names what failed, the path, and
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, as words ("cannot read", "cannot create image cache", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Modules were asked for, but the kernel comes without a module tree.
    #[error(
        "kernel modules {} were asked for, but the {arch} kernel has no module tree: give the kernel's `modules-dir` (what `make modules_install INSTALL_MOD_PATH=DIR` made), use the provisioned kernel, or drop `modules`",
        modules.join(", ")
    )]
    NoModuleTree {
        /// The modules asked for.
        modules: Vec<String>,
        /// The kernel's architecture.
        arch: Arch,
    },
    /// Resolving or reading the kernel modules failed.
    #[error(transparent)]
    Modules(#[from] crate::modules::ModuleError),
    /// The test's root file system cannot be used.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// Writing an archive failed.
    #[error("cannot build the {what}: {source}")]
    Build {
        /// Which archive ("base initramfs", "test's initramfs part", ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: crate::initramfs::InitramfsError,
    },
    /// A test's environment variable cannot be set in the guest's shell.
    #[error(
        "environment variable name `{name}` of test `{test}` is not valid in a shell: use letters, digits and `_`"
    )]
    BadEnvName {
        /// The variable.
        name: String,
        /// The test.
        test: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + use<> {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// Bumped when the layout of the base archive changes, to invalidate cached ones.
const BASE_FORMAT: u32 = 1;

/// What a guest is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestParts {
    /// The architecture.
    pub arch: Arch,
    /// The kernel image.
    pub kernel: PathBuf,
    /// A static busybox for the architecture.
    pub busybox: PathBuf,
    /// The kernel's module tree (`lib/modules/<version>`), if modules are available.
    pub modules_dir: Option<PathBuf>,
    /// The kernel's release string (the `<version>` of the module tree).
    pub kernel_version: Option<String>,
}

/// Where a base archive is, and which modules the agent loads (relative paths, in order).
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// The compressed base archive.
    pub path: PathBuf,
    /// Module files to `insmod`, dependencies first, relative to `/lib/modules/<version>`.
    pub load_order: Vec<String>,
    /// Those of them the guest loads at boot, before its agent is ready (the artifact channel's
    /// modules and their dependencies), in the same order; the others load in the test phase.
    pub boot_order: Vec<String>,
}

impl BaseImage {
    /// The modules a test loads itself, in its phase: `load_order` without `boot_order`.
    pub fn test_order(&self) -> Vec<String> {
        self.load_order
            .iter()
            .filter(|m| !self.boot_order.contains(m))
            .cloned()
            .collect()
    }
}

/// Builds (or finds in `cache_dir`) the base archive for `parts` with `modules` loadable;
/// `boot` names those of them (with their dependencies) the guest loads at boot.
pub fn base_image(
    parts: &GuestParts,
    modules: &[String],
    boot: &[String],
    cache_dir: &Path,
) -> Result<BaseImage, ImageError> {
    base_image_indexed(parts, None, modules, boot, cache_dir)
}

/// [`base_image`] with the module tree `parts.modules_dir` already indexed (`None`: it is
/// scanned here when modules are asked for).
///
/// The cached archive is keyed by the module files' paths, sizes and modification times too,
/// so a tree made again by `make modules_install` is not served from a stale archive.
pub fn base_image_indexed(
    parts: &GuestParts,
    index: Option<&ModuleIndex>,
    modules: &[String],
    boot: &[String],
    cache_dir: &Path,
) -> Result<BaseImage, ImageError> {
    let mut tree = None;
    let scanned;
    if !modules.is_empty() {
        let (Some(dir), Some(version)) = (&parts.modules_dir, &parts.kernel_version) else {
            return Err(ImageError::NoModuleTree {
                modules: modules.to_vec(),
                arch: parts.arch,
            });
        };
        let index = match index {
            Some(index) => index,
            None => {
                scanned = ModuleIndex::scan(dir).map_err(ImageError::from)?;
                &scanned
            }
        };
        let names: Vec<&str> = modules.iter().map(String::as_str).collect();
        let resolved = index.resolve(&names).map_err(ImageError::from)?;
        tree = Some((index, version, resolved));
    }
    let busybox_digest = digest_file(&parts.busybox)?;
    let mut sorted: Vec<&String> = modules.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("base-v{BASE_FORMAT}\n").as_bytes());
    hasher.update(agent::INIT_SCRIPT.as_bytes());
    hasher.update(busybox_digest.as_bytes());
    hasher.update(parts.arch.as_str().as_bytes());
    hasher.update(parts.kernel_version.as_deref().unwrap_or("").as_bytes());
    if let Some(dir) = &parts.modules_dir {
        hasher.update(dir.to_string_lossy().as_bytes());
    }
    for m in &sorted {
        hasher.update(b"\0");
        hasher.update(m.as_bytes());
    }
    for m in boot {
        hasher.update(b"\x01");
        hasher.update(m.as_bytes());
    }
    for m in tree.iter().flat_map(|(_, _, resolved)| resolved) {
        let meta = std::fs::metadata(&m.path).map_err(io_err("cannot read", &m.path))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        hasher.update(b"\x02");
        hasher.update(m.relative.to_string_lossy().as_bytes());
        hasher.update(&meta.len().to_le_bytes());
        hasher.update(&mtime.as_nanos().to_le_bytes());
    }
    let key = hasher.finalize().to_hex();
    let path = cache_dir.join(format!("base-{}-{}.cpio.gz", parts.arch, &key[..32]));
    let order_path = path.with_extension("order");
    let boot_path = path.with_extension("boot");

    if path.is_file() && order_path.is_file() && boot_path.is_file() {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|text| text.lines().map(str::to_owned).collect())
                .map_err(io_err("cannot read", p))
        };
        return Ok(BaseImage {
            path: path.clone(),
            load_order: read(&order_path)?,
            boot_order: read(&boot_path)?,
        });
    }

    let mut b = InitramfsBuilder::new();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "work",
        "orch",
        "lib/modules",
    ] {
        b.dir(d, 0o755);
    }
    b.char_device("dev/console", 0o600, 5, 1);
    b.char_device("dev/null", 0o666, 1, 3);
    b.file_from_path("bin/busybox", 0o755, &parts.busybox);
    b.symlink("bin/sh", "busybox");
    b.file_from_bytes("init", 0o755, agent::INIT_SCRIPT.as_bytes().to_vec());

    let mut load_order = Vec::new();
    let mut boot_order = Vec::new();
    if let Some((index, version, resolved)) = &tree {
        let root = format!("lib/modules/{version}");
        b.dir(&root, 0o755);
        let mut dep_lines = String::new();
        let rel_of = |name: &str| -> Option<String> {
            index
                .relative_path(name)
                .map(|p| strip_compression(&p.to_string_lossy()))
        };
        for m in resolved {
            let rel = strip_compression(&m.relative.to_string_lossy());
            // busybox `insmod` hands the bytes to `init_module`, which takes only plain ELF.
            let data = crate::modules::read_module(&m.path).map_err(ImageError::from)?;
            b.file_from_bytes(&format!("{root}/{rel}"), 0o644, data);
            // modules.dep lists every dependency, nearest first; modprobe loads them in reverse.
            let deps: Vec<String> = transitive_deps(resolved, &m.name)
                .into_iter()
                .filter_map(|d| rel_of(&d))
                .collect();
            dep_lines.push_str(&format!("{rel}: {}\n", deps.join(" ")));
            load_order.push(rel);
        }
        // The boot's modules and everything they need, in load order.
        let mut needed_at_boot: Vec<String> = Vec::new();
        for name in boot {
            needed_at_boot.push(name.replace('-', "_"));
            needed_at_boot.extend(transitive_deps(resolved, name));
        }
        for m in resolved {
            if needed_at_boot.contains(&m.name.replace('-', "_")) {
                boot_order.push(strip_compression(&m.relative.to_string_lossy()));
            }
        }
        b.file_from_bytes(
            &format!("{root}/modules.dep"),
            0o644,
            dep_lines.into_bytes(),
        );
    }

    std::fs::create_dir_all(cache_dir).map_err(io_err("cannot create image cache", cache_dir))?;
    let tmp = tempfile::NamedTempFile::new_in(cache_dir)
        .map_err(io_err("cannot create a file in", cache_dir))?;
    b.write_to(std::io::BufWriter::new(tmp.as_file()), Compression::Gzip)
        .map_err(|source| ImageError::Build {
            what: "base initramfs",
            source,
        })?;
    std::fs::write(&order_path, load_order.join("\n"))
        .map_err(io_err("cannot write", &order_path))?;
    std::fs::write(&boot_path, boot_order.join("\n"))
        .map_err(io_err("cannot write", &boot_path))?;
    tmp.persist(&path)
        .map_err(|e| io_err("cannot write", &path)(e.error))?;
    Ok(BaseImage {
        path,
        load_order,
        boot_order,
    })
}

fn strip_compression(rel: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(stripped) = rel.strip_suffix(ext) {
            return stripped.to_owned();
        }
    }
    rel.to_owned()
}

/// Every module `name` needs, nearest first, among `resolved`.
fn transitive_deps(resolved: &[crate::modules::ResolvedModule], name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut queue: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    if let Some(m) = resolved.iter().find(|m| m.name == name) {
        queue.extend(m.depends.iter().cloned());
    }
    while let Some(d) = queue.pop_front() {
        if out.contains(&d) {
            continue;
        }
        if let Some(m) = resolved.iter().find(|m| m.name == d) {
            queue.extend(m.depends.iter().cloned());
            out.push(d);
        }
    }
    out
}

fn digest_file(path: &Path) -> Result<String, ImageError> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
    std::io::copy(&mut f, &mut hasher).map_err(io_err("cannot read", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Settings the agent reads for one test.
#[derive(Clone, Debug)]
pub struct TestPart<'a> {
    /// The test.
    pub case: &'a TestCase,
    /// Bytes of each stream the agent sends back.
    pub output_limit: u64,
    /// Module files the test loads in its phase, dependencies first.
    pub load_order: &'a [String],
    /// Module files the guest loads at boot, before the agent is ready.
    pub boot_order: &'a [String],
    /// The kernel release, for the module paths.
    pub kernel_version: Option<&'a str>,
    /// Largest artifact archive sent over the serial console when no virtio port is available.
    pub serial_artifact_limit: u64,
    /// Whether the agent waits for the host's `ACK` before powering off (a plain QEMU command
    /// line with nobody answering sets this to `false`).
    pub wait_for_ack: bool,
}

/// One of the agent's files: its name under `/orch`, its mode and its contents.
pub type AgentFile = (&'static str, u32, Vec<u8>);

/// The agent's files for one test under `/orch`: name, mode and contents. Optional files the
/// test does not use (`test.sh`, `trace`, `noack`) are left out.
pub fn test_files(part: &TestPart<'_>) -> Result<Vec<AgentFile>, ImageError> {
    let case = part.case;
    for key in case.env.keys() {
        if !agent::valid_env_name(key) {
            return Err(ImageError::BadEnvName {
                name: key.clone(),
                test: case.id.to_string(),
            });
        }
    }
    let rootfs = case
        .requirements
        .rootfs
        .as_deref()
        .map(crate::rootfs::Rootfs::check)
        .transpose()?;
    let run = match &rootfs {
        Some(_) => agent::run_script_in_root(&case.command),
        None => agent::run_script(&case.command),
    };
    let mut files = vec![("run.sh", 0o755, run.into_bytes())];
    if let orchestrator_core::Command::Script { body, .. } = &case.command {
        files.push(("test.sh", 0o755, body.clone().into_bytes()));
    }
    // The test's id has a file of its own: in a session only it changes from test to test.
    files.push(("id", 0o644, format!("{}\n", case.id).into_bytes()));
    let mut env = case.env.clone();
    env.insert("ORCH_WORK_DIR".into(), "/work".into());
    if let Some(rootfs) = &rootfs {
        // The root file system's own programs, unless the test says otherwise.
        env.entry("PATH".into())
            .or_insert_with(|| crate::rootfs::ROOT_PATH.into());
        files.push(("rootfs", 0o644, rootfs.agent_line().into_bytes()));
        files.push((
            "enter.sh",
            0o644,
            agent::ENTER_ROOT_SCRIPT.as_bytes().to_vec(),
        ));
    }
    files.push(("env", 0o644, agent::env_file(&env).into_bytes()));
    files.push((
        "limit",
        0o644,
        format!("{}\n", part.output_limit).into_bytes(),
    ));
    let paths = |order: &[String]| -> Vec<u8> {
        match part.kernel_version {
            Some(v) => order
                .iter()
                .map(|rel| format!("/lib/modules/{v}/{rel}"))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
            None => Vec::new(),
        }
    };
    files.push(("boot-modules", 0o644, paths(part.boot_order)));
    files.push(("modules", 0o644, paths(part.load_order)));
    let mut globs = String::new();
    for g in &case.artifacts {
        globs.push_str(g);
        globs.push('\n');
    }
    files.push(("artifacts", 0o644, globs.into_bytes()));
    if let Some(trace) = &case.trace {
        files.push(("trace", 0o644, format!("{trace}\n").into_bytes()));
    }
    files.push((
        "serial-artifact-limit",
        0o644,
        format!("{}\n", part.serial_artifact_limit).into_bytes(),
    ));
    if !part.wait_for_ack {
        files.push(("noack", 0o644, Vec::new()));
    }
    Ok(files)
}

/// Builds the per-test archive (gzip) in memory: it is a few kilobytes plus the test's files.
pub fn test_archive(part: &TestPart<'_>) -> Result<Vec<u8>, ImageError> {
    let mut b = InitramfsBuilder::new();
    b.dir("orch", 0o755);
    b.dir("work", 0o755);
    for (name, mode, data) in test_files(part)? {
        b.file_from_bytes(&format!("orch/{name}"), mode, data);
    }
    for file in &part.case.files {
        add_tree(
            &mut b,
            &file.source,
            &format!("work/{}", file.dest.to_string_lossy()),
        )?;
    }
    let mut out = Vec::new();
    b.write_to(&mut out, Compression::Gzip)
        .map_err(|source| ImageError::Build {
            what: "test's initramfs part",
            source,
        })?;
    Ok(out)
}

/// The `/orch` files a session guest's agent accepts as text (`TEXT`); the test's id goes in
/// the message's header, and the others (`modules`, `noack`) have no place in a session.
pub const TEXT_FILES: [&str; 7] = [
    "run.sh",
    "test.sh",
    "env",
    "limit",
    "artifacts",
    "trace",
    "serial-artifact-limit",
];

/// Longest line of a file sent as text to a session guest.
pub const TEXT_LINE_LIMIT: usize = 1024;

/// The `/orch` files of a test as text for a session guest, every one of [`TEXT_FILES`] (empty
/// when the test does not use it), or `None` when the test cannot go as text: it brings files
/// of its own, or a file holds anything but printable ASCII and tabs (the guest's terminal
/// would interpret control characters) or a line longer than [`TEXT_LINE_LIMIT`].
pub fn text_files(part: &TestPart<'_>) -> Result<Option<Vec<(&'static str, String)>>, ImageError> {
    if !part.case.files.is_empty() {
        return Ok(None);
    }
    let files = test_files(part)?;
    let mut out = Vec::new();
    for name in TEXT_FILES {
        let data = files
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, d)| d.as_slice())
            .unwrap_or_default();
        let printable = data
            .iter()
            .all(|&b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b));
        if !printable
            || data
                .split(|&b| b == b'\n')
                .any(|l| l.len() > TEXT_LINE_LIMIT)
        {
            return Ok(None);
        }
        out.push((name, String::from_utf8_lossy(data).into_owned()));
    }
    Ok(Some(out))
}

/// The `TEXT` message that sends the test `id` and `files` to a session guest: the header
/// (`TEXT <files> <bytes> <id>`), then per file its name, its number of lines and the lines.
/// The byte count is what the agent adds up as it writes (each line and its newline), so a
/// line lost on the way is noticed.
pub fn text_message(id: &str, files: &[(&str, &str)]) -> String {
    let mut body = String::new();
    let mut bytes = 0usize;
    for (name, text) in files {
        let lines: Vec<&str> = if text.is_empty() {
            Vec::new()
        } else {
            text.strip_suffix('\n')
                .unwrap_or(text)
                .split('\n')
                .collect()
        };
        body.push_str(&format!("{name} {}\n", lines.len()));
        for l in lines {
            body.push_str(l);
            body.push('\n');
            bytes += l.len() + 1;
        }
    }
    format!("TEXT {} {bytes} {id}\n{body}", files.len())
}

fn add_tree(b: &mut InitramfsBuilder, source: &Path, dest: &str) -> Result<(), ImageError> {
    let meta = std::fs::metadata(source).map_err(io_err("cannot read test file", source))?;
    if meta.is_dir() {
        b.dir(dest, 0o755);
        let mut entries: Vec<_> = std::fs::read_dir(source)
            .map_err(io_err("cannot read", source))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            add_tree(
                b,
                &e.path(),
                &format!("{dest}/{}", e.file_name().to_string_lossy()),
            )?;
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        b.file_from_path(dest, mode | 0o400, source);
    }
    Ok(())
}

/// Writes the guest's initramfs: the base archive followed by the test part.
pub fn assemble(base: &Path, test: &[u8], out: &Path) -> Result<(), ImageError> {
    let mut f = std::fs::File::create(out).map_err(io_err("cannot create", out))?;
    let mut src = std::fs::File::open(base).map_err(io_err("cannot open", base))?;
    std::io::copy(&mut src, &mut f).map_err(io_err("cannot write", out))?;
    f.write_all(test).map_err(io_err("cannot write", out))?;
    Ok(())
}

/// The archive that turns a guest into a session: the agent waits for tests from the host
/// instead of running one from its initramfs. It carries the limits and the modules to load at
/// boot (shared by every test of the session).
pub fn session_archive(
    output_limit: u64,
    serial_artifact_limit: u64,
    load_order: &[String],
    kernel_version: Option<&str>,
) -> Result<Vec<u8>, ImageError> {
    let mut b = InitramfsBuilder::new();
    b.dir("orch", 0o755);
    b.file_from_bytes("orch/session", 0o644, Vec::new());
    b.file_from_bytes(
        "orch/limit",
        0o644,
        format!("{output_limit}\n").into_bytes(),
    );
    b.file_from_bytes(
        "orch/serial-artifact-limit",
        0o644,
        format!("{serial_artifact_limit}\n").into_bytes(),
    );
    let modules: Vec<String> = match kernel_version {
        Some(v) => load_order
            .iter()
            .map(|rel| format!("/lib/modules/{v}/{rel}"))
            .collect(),
        None => Vec::new(),
    };
    // A session's guest loads every module at boot: its tests share them.
    b.file_from_bytes("orch/boot-modules", 0o644, modules.join("\n").into_bytes());
    let mut out = Vec::new();
    b.write_to(&mut out, Compression::Gzip)
        .map_err(|source| ImageError::Build {
            what: "session's initramfs part",
            source,
        })?;
    Ok(out)
}
