//! The KUnit kernels of the test suite: x86_64 kernels built once from Debian's
//! `linux-source-6.1` with the kernel's own `tools/testing/kunit/kunit.py`, cached in the tools
//! cache under `kunit-6.1/`, found by the tests through `ORCH_KUNIT_KERNELS`.
//!
//! One source tree (`src/`), built incrementally:
//! - `a/`: the core, example and list suites plus what the runner needs (initramfs, devtmpfs,
//!   tmpfs, modules, the virtio console as a module) and one suite as a module
//!   ([`SUITE_MODULE`]): `bzImage`, `modules/lib/modules/<release>/` (as `make modules_install
//!   INSTALL_MOD_PATH=` makes it), `config`, `kunitconfig`, and what `kunit.py exec` made of it:
//!   `kunit-run.json` and the raw kernel log `kunit-run.log`;
//! - `b/`: the same with one example case edited to fail ([`FAILING_CASE`]), rebuilt
//!   incrementally in the same build directory (`build-ab/`); the source is restored afterwards;
//! - `c/`: kunit.py's plain x86_64 configuration (the four KUnit lines alone), in `build-c/`;
//! - `d/`: (c) with initramfs support alone (no devtmpfs, no tmpfs, no modules, no virtio: the
//!   agent makes its device nodes itself), rebuilt incrementally in `build-c/`.
//!
//! Each kernel's directory has its `bzImage`, `config` (the `.config`) and `kunitconfig`.
//!
//! `READY` (JSON: the cache key, the kernel release, each build's time in seconds) is written
//! last; the key is a digest of the kunitconfigs, the edit and the package version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::step;

/// Bumped when the way the kernels are built changes (the key then changes too).
const RECIPE: u32 = 1;

/// The Debian package holding the kernel source.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The source archive that package installs.
const SOURCE_ARCHIVE: &str = "/usr/src/linux-source-6.1.tar.xz";

/// What building needs besides the source: kunit.py (Python), the kernel's build tools, `depmod`
/// for `modules_install`, and `xz` for the archive.
const BUILD_PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "kmod",
    "xz-utils",
    "python3",
    "make",
    "gcc",
];

/// Kernel (a): the core, example and list suites, what the runner needs, and one suite as a
/// module. The x86_64 runner's machine is q35 with a virtio-serial PCI controller.
pub(crate) const KUNITCONFIG_A: &str = "\
CONFIG_KUNIT=y
CONFIG_KUNIT_TEST=y
CONFIG_KUNIT_EXAMPLE_TEST=y
CONFIG_LIST_KUNIT_TEST=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEVTMPFS=y
CONFIG_TMPFS=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_PCI=y
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO_PCI=m
CONFIG_VIRTIO_CONSOLE=m
CONFIG_PRINTK_TIME=y
CONFIG_BITFIELD_KUNIT=m
";

/// Kernel (c): kunit.py's plain configuration, none of the runner's options.
pub(crate) const KUNITCONFIG_C: &str = "\
CONFIG_KUNIT=y
CONFIG_KUNIT_TEST=y
CONFIG_KUNIT_EXAMPLE_TEST=y
CONFIG_LIST_KUNIT_TEST=y
";

/// Kernel (d): (c) with initramfs support, the least a kernel needs to run the agent.
pub(crate) const KUNITCONFIG_D: &str = "\
CONFIG_KUNIT=y
CONFIG_KUNIT_TEST=y
CONFIG_KUNIT_EXAMPLE_TEST=y
CONFIG_LIST_KUNIT_TEST=y
CONFIG_BLK_DEV_INITRD=y
";

/// The suite (a) builds as a module (`lib/bitfield_kunit.ko`, suite `bitfields`).
pub(crate) const SUITE_MODULE: &str = "bitfield_kunit";

/// The case (b) makes fail.
pub(crate) const FAILING_CASE: &str = "example.example_simple_test";

/// The one-line edit of kernel (b): the file, the line and what it becomes.
const EDIT_FILE: &str = "lib/kunit/kunit-example-test.c";
const EDIT_OLD: &str = "\tKUNIT_EXPECT_EQ(test, 1 + 1, 2);";
const EDIT_NEW: &str = "\tKUNIT_EXPECT_EQ(test, 1 + 1, 3);";

/// The text the cache key digests.
fn key_text(package_version: &str) -> String {
    format!(
        "qemu-orchestrator kunit kernels {RECIPE}\n{SOURCE_PACKAGE} {package_version}\n--- a\n{KUNITCONFIG_A}--- b\n{EDIT_FILE}\n{EDIT_OLD}\n{EDIT_NEW}\n--- c\n{KUNITCONFIG_C}--- d\n{KUNITCONFIG_D}"
    )
}

fn cache_key(package_version: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key_text(package_version).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The kernels' directory (`<tools>/kunit-6.1`), built first if its `READY` does not match.
pub(crate) fn ensure_kunit_kernels(tools: &Path) -> Result<PathBuf> {
    let dir = tools.join("kunit-6.1");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = Lock::take(&dir.join(".lock"))?;
    let version = match package_version(SOURCE_PACKAGE) {
        Some(v) => v,
        None => {
            install_missing()?;
            package_version(SOURCE_PACKAGE)
                .with_context(|| format!("{SOURCE_PACKAGE} is still not installed"))?
        }
    };
    let key = cache_key(&version);
    if ready_key(&dir).as_deref() == Some(key.as_str())
        && ["a", "b", "c", "d"]
            .iter()
            .all(|k| dir.join(k).join("bzImage").is_file())
    {
        eprintln!("xtask: == KUnit kernels: cached in {}", dir.display());
        return Ok(dir);
    }
    eprintln!(
        "xtask: == KUnit kernels: building in {} (once; about 8 minutes on 2 idle cores)",
        dir.display()
    );
    let _ = std::fs::remove_file(dir.join("READY"));
    install_missing()?;
    build_all(&dir, &key, &version)?;
    Ok(dir)
}

/// The key in `dir/READY`, if it is there and readable.
fn ready_key(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("READY")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("key")?.as_str().map(str::to_owned)
}

/// An installed Debian package's version.
fn package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}\t${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = text.split_once('\t')?;
    (out.status.success() && status.ends_with("ok installed") && !version.is_empty())
        .then(|| version.to_owned())
}

/// Installs the build packages that are not installed yet (`apt-get update` once if that
/// fails, then again).
fn install_missing() -> Result<()> {
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|p| package_version(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt_get = |args: &[&str]| {
        let mut apt = Command::new("apt-get");
        apt.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        apt
    };
    let install = || {
        let mut c = apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
        c.args(&missing);
        c
    };
    let name = format!("apt-get install {}", missing.join(" "));
    if step(&name, install()).is_err() {
        step("apt-get update", apt_get(&["update", "-q"]))?;
        step(&name, install())?;
    }
    Ok(())
}

/// Unpacks the source (once per package version) and builds, installs and runs (a), (b) and
/// (c), builds (d), then writes `READY`.
fn build_all(dir: &Path, key: &str, version: &str) -> Result<()> {
    let src = dir.join("src");
    let marker = src.join(".orch-unpacked");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(&format!("{version}\n")) {
        for d in ["src", "build-ab", "build-c"] {
            let p = dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        std::fs::create_dir_all(&src)?;
        let mut tar = Command::new("tar");
        tar.args(["-xf", SOURCE_ARCHIVE, "-C"])
            .arg(&src)
            .arg("--strip-components=1");
        step("unpack the kernel source", tar)?;
        std::fs::write(&marker, format!("{version}\n"))?;
    }
    // What the key digests, for whoever wonders why the kernels were rebuilt.
    std::fs::write(dir.join("key.txt"), key_text(version))?;
    let edited = Edit::new(&src);
    // A build stopped while (b) was being made left the edit: undone first.
    edited.restore_leftover()?;
    for k in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(dir.join(k))?;
    }
    let config_a = dir.join("a/kunitconfig");
    let config_c = dir.join("c/kunitconfig");
    let config_d = dir.join("d/kunitconfig");
    std::fs::write(&config_a, KUNITCONFIG_A)?;
    std::fs::write(&config_c, KUNITCONFIG_C)?;
    std::fs::write(&config_d, KUNITCONFIG_D)?;
    let build_ab = dir.join("build-ab");
    let build_c = dir.join("build-c");

    // (a), its modules, and kunit.py's own run of it.
    let time_a = build(dir, &src, "a", &build_ab, &config_a)?;
    let release = std::fs::read_to_string(build_ab.join("include/config/kernel.release"))
        .context("reading the kernel release")?
        .trim()
        .to_owned();
    let modules = dir.join("a/modules");
    if modules.exists() {
        std::fs::remove_dir_all(&modules)?;
    }
    let mut install = Command::new("nice");
    install
        .current_dir(&src)
        .args(["make", "-s", "ARCH=x86_64"])
        .arg(format!("O={}", build_ab.display()))
        .arg(format!("INSTALL_MOD_PATH={}", modules.display()))
        .arg("modules_install");
    step("KUnit kernel (a): modules_install", install)?;
    let module = modules
        .join("lib/modules")
        .join(&release)
        .join(format!("kernel/lib/{SUITE_MODULE}.ko"));
    if !module.is_file() {
        bail!(
            "kernel (a) has no {} after modules_install",
            module.display()
        );
    }
    run_kunit(dir, &src, "a", &build_ab, true)?;

    // (b): the edit, an incremental rebuild, the source restored whatever happens.
    let time_b = {
        let _restore = edited.apply()?;
        let t = build(dir, &src, "b", &build_ab, &config_a)?;
        run_kunit(dir, &src, "b", &build_ab, false)?;
        t
    };

    // (c): kunit.py's plain configuration, in a build directory of its own.
    let time_c = build(dir, &src, "c", &build_c, &config_c)?;
    run_kunit(dir, &src, "c", &build_c, true)?;
    // (d): (c) with initramfs support, incrementally in the same build directory.
    let time_d = build(dir, &src, "d", &build_c, &config_d)?;

    let secs = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    let ready = serde_json::json!({
        "key": key,
        "kernel": release,
        "linux-source": version,
        "build-seconds": {
            "a": secs(time_a),
            "b": secs(time_b),
            "c": secs(time_c),
            "d": secs(time_d),
        },
        "suite-module": SUITE_MODULE,
        "failing-case": FAILING_CASE,
    });
    let tmp = dir.join("READY.tmp");
    std::fs::write(&tmp, format!("{ready}\n"))?;
    std::fs::rename(&tmp, dir.join("READY"))?;
    eprintln!(
        "xtask: == KUnit kernels ready: builds took {:.1} s (a), {:.1} s (b, incremental), {:.1} s (c), {:.1} s (d, incremental)",
        time_a.as_secs_f64(),
        time_b.as_secs_f64(),
        time_c.as_secs_f64(),
        time_d.as_secs_f64()
    );
    Ok(())
}

/// `kunit.py build` of one kernel at low priority; copies its `bzImage` and `.config` to
/// `dir/<kernel>/`. Returns the build's time.
fn build(
    dir: &Path,
    src: &Path,
    kernel: &str,
    build_dir: &Path,
    kunitconfig: &Path,
) -> Result<Duration> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut c = Command::new("nice");
    c.current_dir(src)
        .args([
            "python3",
            "tools/testing/kunit/kunit.py",
            "build",
            "--arch=x86_64",
        ])
        .arg(format!("--build_dir={}", build_dir.display()))
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--kunitconfig={}", kunitconfig.display()));
    let started = Instant::now();
    step(&format!("KUnit kernel ({kernel}): kunit.py build"), c)?;
    let took = started.elapsed();
    eprintln!(
        "xtask:    KUnit kernel ({kernel}) built in {:.1} s",
        took.as_secs_f64()
    );
    let out = dir.join(kernel);
    std::fs::copy(build_dir.join("arch/x86/boot/bzImage"), out.join("bzImage"))
        .with_context(|| format!("copying kernel ({kernel})'s bzImage"))?;
    std::fs::copy(build_dir.join(".config"), out.join("config"))?;
    Ok(took)
}

/// `kunit.py exec` of the kernel in `build_dir`: its JSON result to `kunit-run.json`, the raw
/// kernel log to `kunit-run.log` and kunit.py's own output to `kunit-exec.txt`. `must_pass`:
/// a failed run is an error (not for (b), which fails on purpose).
fn run_kunit(
    dir: &Path,
    src: &Path,
    kernel: &str,
    build_dir: &Path,
    must_pass: bool,
) -> Result<()> {
    let out = dir.join(kernel);
    let json = out.join("kunit-run.json");
    let _ = std::fs::remove_file(&json);
    let text = std::fs::File::create(out.join("kunit-exec.txt"))?;
    let mut c = Command::new("python3");
    c.current_dir(src)
        .args(["tools/testing/kunit/kunit.py", "exec", "--arch=x86_64"])
        .arg(format!("--build_dir={}", build_dir.display()))
        .arg(format!("--json={}", json.display()))
        .stdout(text.try_clone()?)
        .stderr(text);
    let name = format!("KUnit kernel ({kernel}): kunit.py exec");
    if let Err(e) = step(&name, c)
        && must_pass
    {
        return Err(e);
    }
    std::fs::copy(build_dir.join("test.log"), out.join("kunit-run.log"))
        .with_context(|| format!("keeping kunit.py's log of kernel ({kernel})"))?;
    if !json.is_file() {
        bail!("kunit.py wrote no {}", json.display());
    }
    Ok(())
}

/// The one-line edit of kernel (b), with the original kept beside it until it is restored.
#[derive(Debug)]
struct Edit {
    file: PathBuf,
    saved: PathBuf,
}

impl Edit {
    fn new(src: &Path) -> Edit {
        let file = src.join(EDIT_FILE);
        let saved = src.join(format!("{EDIT_FILE}.orch-orig"));
        Edit { file, saved }
    }

    /// Restores the original if an earlier build left the edit in place.
    fn restore_leftover(&self) -> Result<()> {
        if self.saved.exists() {
            self.restore()?;
        }
        Ok(())
    }

    /// Writes the original back (as new content: its time is now, so that make rebuilds it)
    /// and removes the saved copy.
    fn restore(&self) -> Result<()> {
        let original = std::fs::read(&self.saved)
            .with_context(|| format!("reading {}", self.saved.display()))?;
        std::fs::write(&self.file, original)
            .with_context(|| format!("restoring {}", self.file.display()))?;
        std::fs::remove_file(&self.saved)?;
        Ok(())
    }

    /// Applies the edit; the returned guard restores the file when dropped.
    fn apply(&self) -> Result<Restore<'_>> {
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let old = format!("{EDIT_OLD}\n");
        if text.matches(&old).count() != 1 {
            bail!(
                "{} does not hold the line `{}` exactly once: the edit of kernel (b) needs updating",
                self.file.display(),
                EDIT_OLD.trim()
            );
        }
        std::fs::write(&self.saved, &text)?;
        let guard = Restore(self);
        std::fs::write(&self.file, text.replacen(&old, &format!("{EDIT_NEW}\n"), 1))?;
        Ok(guard)
    }
}

/// Restores the edited file when dropped.
#[derive(Debug)]
struct Restore<'a>(&'a Edit);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.restore() {
            eprintln!("xtask: error: {e:#}");
        }
    }
}

/// A directory as a lock between two `cargo xtask test` runs sharing the cache: holds the
/// owner's pid; a lock whose owner is gone is taken over.
#[derive(Debug)]
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> Result<Lock> {
        let mut said = false;
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    std::fs::write(path.join("pid"), std::process::id().to_string())?;
                    return Ok(Lock(path.to_owned()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let alive = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if !alive {
                        // Its owner died (or is still writing its pid: then it waits for us).
                        std::thread::sleep(Duration::from_millis(200));
                        if std::fs::read_to_string(path.join("pid")).unwrap_or_default() == owner {
                            let _ = std::fs::remove_dir_all(path);
                        }
                        continue;
                    }
                    if !said {
                        eprintln!(
                            "xtask:    waiting for process {} building the KUnit kernels",
                            owner.trim()
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_the_package_and_the_edit_is_one_line() {
        assert_ne!(cache_key("6.1.172-1"), cache_key("6.1.170-3"));
        assert_eq!(cache_key("6.1.172-1").len(), 64);
        assert!(!EDIT_OLD.contains('\n') && !EDIT_NEW.contains('\n'));
        assert!(KUNITCONFIG_A.starts_with(KUNITCONFIG_C));
        assert_eq!(
            KUNITCONFIG_D,
            format!("{KUNITCONFIG_C}CONFIG_BLK_DEV_INITRD=y\n")
        );
        assert!(KUNITCONFIG_A.contains("CONFIG_BITFIELD_KUNIT=m\n"));
    }

    #[test]
    fn the_edit_is_restored_with_a_new_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(EDIT_FILE);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let original = format!("static void f(void)\n{{\n{EDIT_OLD}\n}}\n");
        std::fs::write(&file, &original).unwrap();
        let edit = Edit::new(dir.path());
        {
            let _guard = edit.apply().unwrap();
            let edited = std::fs::read_to_string(&file).unwrap();
            assert!(edited.contains(EDIT_NEW) && !edited.contains(EDIT_OLD));
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        assert!(!edit.saved.exists());
        // A leftover edit (the build was killed) is undone on the next run.
        std::mem::forget(edit.apply().unwrap());
        edit.restore_leftover().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        // A file without the line (another kernel version) is refused, unchanged.
        std::fs::write(&file, "nothing\n").unwrap();
        assert!(edit.apply().is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "nothing\n");
    }
}
