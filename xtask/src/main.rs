//! Project tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `cargo xtask test`: installs what the tests need (once; cached under `target/xtask` and
//!   the tools cache: Garage, the KUnit kernels of [`kunit`]), then runs formatting and lint
//!   checks and the whole test suite, heavy tests included.
//! - `cargo xtask demo`: provisions QEMU and the guest images if missing, runs the bundled
//!   four-architecture campaign through the `qorch` binary and writes its reports under
//!   `target/demo/runs` (`target/demo/latest` is the newest).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod kunit;
mod rootfs;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test [--no-lints] [-- <nextest args>]
        install test prerequisites, check formatting, clippy and docs, then run every test
        (heavy tests included); fails if anything fails
  kunit-kernels
        build the KUnit kernels the tests use if they are not cached (as `test` does), then
        print their directory
  test-rootfs
        make (once; cached) the Debian arm64 root file system of the rootfs tests and print the
        ORCH_TEST_ROOTFS and ORCH_TEST_ROOTFS_IMAGE settings that name it
  demo  install QEMU and the guest images if missing, then run the bundled four-architecture
        campaign (examples/plans/demo.toml) with `qorch run`: summary table, JUnit, JSON and
        HTML reports in target/demo/runs/<run id> (target/demo/latest links the newest),
        artifacts in target/demo/store (run it twice to see dedup)
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("failed to enter the workspace at {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("demo") => demo(&root, &args[1..]),
        Some("test-rootfs") => rootfs::print_test_rootfs(),
        Some("kunit-kernels") => {
            if let Some(a) = args.get(1) {
                bail!("unknown option `{a}` for `kunit-kernels`\n\n{USAGE}");
            }
            let dir = kunit::ensure_kunit_kernels(&tools_cache()?)?;
            println!("{}", dir.display());
            Ok(())
        }
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command, echoing it, and fails with its name if it fails.
fn step(name: &str, mut cmd: Command) -> Result<()> {
    eprintln!("xtask: == {name}: {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {name}: {cmd:?}"))?;
    eprintln!(
        "xtask: == {name}: {} in {:.1} s",
        if status.success() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    let started = Instant::now();
    let mut lints = true;
    let mut extra: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-lints" => lints = false,
            "--" => extra.extend(it.by_ref().cloned()),
            other => bail!("unknown option `{other}` for `test`\n\n{USAGE}"),
        }
    }

    // Prerequisites, installed once: Python's junitparser and kcidb-io (under target/xtask), GNU cpio,
    // Chromium (the HTML report's browser test), QEMU, the Debian guest images (in the image
    // cache), and the KUnit kernels (in the tools cache).
    let python = ensure_junitparser(root)?;
    ensure_apt_tool("cpio", "cpio")?;
    // qemu-runner's hostile-guest test watches the runner's file accesses with it.
    ensure_apt_tool("strace", "strace")?;
    // `readelf -n` reads the notes of ELF vmcores (qemu-runner/tests/vmcore.rs).
    ensure_apt_tool("readelf", "binutils")?;
    ensure_chromium()?;
    let garage = ensure_garage()?;
    provision_guests()?;
    // QEMU first: kunit.py runs each KUnit kernel once.
    let kunit_kernels = kunit::ensure_kunit_kernels(&tools_cache()?)?;
    // The Debian arm64 root file system of the rootfs tests (a directory and an ext4 image).
    let test_rootfs = rootfs::ensure_test_rootfs()?;

    if lints {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--check"]);
        step("rustfmt", fmt)?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        step("clippy", clippy)?;
        // An embedder may turn orchestrator-core's default features off: the library and every
        // test target must still build (tests that need a feature say so).
        let mut lean = cargo();
        lean.args([
            "clippy",
            "-p",
            "orchestrator-core",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        step("clippy, orchestrator-core without default features", lean)?;
        let mut doc = cargo();
        doc.args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings");
        step("rustdoc", doc)?;
    }

    let mut tests = if has_nextest() {
        let mut c = cargo();
        c.args([
            "nextest",
            "run",
            "--workspace",
            "--run-ignored",
            "all",
            "--no-fail-fast",
        ]);
        c
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test");
        let mut c = cargo();
        c.args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--",
            "--include-ignored",
        ]);
        c
    };
    tests
        .args(&extra)
        .env("JUNITPARSER_PYTHON", &python)
        .env("KCIDB_PYTHON", &python)
        .env("ORCH_GARAGE", &garage)
        .env("ORCH_TEST_ROOTFS", &test_rootfs.dir)
        .env("ORCH_TEST_ROOTFS_IMAGE", &test_rootfs.image)
        .env("ORCH_KUNIT_KERNELS", &kunit_kernels);
    step("tests (heavy tests included)", tests)?;

    let mut doctests = cargo();
    doctests.args(["test", "--workspace", "--doc"]);
    step("doctests", doctests)?;

    eprintln!(
        "xtask: all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs a Debian package if its command is missing.
fn ensure_apt_tool(command: &str, package: &str) -> Result<()> {
    let present = Command::new(command)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    let mut apt = Command::new("apt-get");
    apt.args(["install", "-y", "-q", "--no-install-recommends", package]);
    step(&format!("apt-get install {package}"), apt)
}

/// Debian's Chromium, which the HTML report test runs headless, unless a `chromium` (Debian) or
/// `chromium-browser` is already in PATH. Like QEMU's installation: `apt-get update` only when
/// the first attempt fails, then once more.
fn ensure_chromium() -> Result<()> {
    let present = ["chromium", "chromium-browser"].into_iter().any(|command| {
        Command::new(command)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if present {
        return Ok(());
    }
    let apt_get = |args: &[&str]| {
        let mut apt = Command::new("apt-get");
        apt.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        apt
    };
    let install = || apt_get(&["install", "-y", "-q", "--no-install-recommends", "chromium"]);
    if step("apt-get install chromium", install()).is_err() {
        step("apt-get update", apt_get(&["update", "-q"]))?;
        step("apt-get install chromium", install())?;
    }
    Ok(())
}

/// The Garage version the S3 tests run against.
const GARAGE_VERSION: &str = "2.5.0";

/// Garage, the S3-compatible object store the remote-store tests start on loopback: built once
/// with `cargo install` (about 11 minutes on 2 cores) into the tools cache
/// (`$ORCH_TOOLS_CACHE`, default `~/.cache/qemu-orchestrator/tools`), then reused. Returns the
/// binary, which the tests find through `ORCH_GARAGE`.
fn ensure_garage() -> Result<PathBuf> {
    let root = tools_cache()?;
    let bin = root.join("bin/garage");
    let version = Command::new(&bin).arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(GARAGE_VERSION)) {
        return Ok(bin);
    }
    let mut install = cargo();
    install
        .args(["install", "--locked", "--version", GARAGE_VERSION, "--root"])
        .arg(&root)
        .arg("garage");
    step("cargo install garage (once; cached)", install)?;
    Ok(bin)
}

/// The tools cache: `$ORCH_TOOLS_CACHE`, default `~/.cache/qemu-orchestrator/tools`.
fn tools_cache() -> Result<PathBuf> {
    Ok(match std::env::var_os("ORCH_TOOLS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set: set ORCH_TOOLS_CACHE")?;
            PathBuf::from(home).join(".cache/qemu-orchestrator/tools")
        }
    })
}

/// QEMU for the four architectures and the stock Debian kernels and busybox the boot tests use.
fn provision_guests() -> Result<()> {
    use qemu_runner::provision;
    let started = Instant::now();
    eprintln!("xtask: == QEMU: checking the four system emulators");
    provision::ensure_qemu_with(true).context("installing QEMU")?;
    let options =
        provision::ProvisionOptions::default().with_progress(|msg| eprintln!("xtask:    {msg}"));
    eprintln!("xtask: == guest images: {}", options.cache_dir.display());
    let manifest = provision::provision(&options).context("provisioning guest images")?;
    for image in manifest.images.values() {
        eprintln!(
            "xtask:    {}: {} ({}), busybox {}",
            image.arch, image.kernel_package, image.debian_suite, image.busybox_version
        );
    }
    eprintln!(
        "xtask: == QEMU and guest images ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python interpreter with `junitparser`, the independent JUnit parser the report tests use,
/// `kcidb-io`, the KernelCI schema's validator the KCIDB export's test uses, and
/// `prometheus-client`, whose parser reads qorch-api's metrics.
/// Lives in a virtual environment under `target/xtask/venv`, created once.
fn ensure_junitparser(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/xtask/venv");
    let python = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import junitparser, kcidb_io, prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let system_python = which_python().context(
        "python3 is needed for the JUnit cross-check and was not found: install it (`apt-get install python3 python3-venv`)",
    )?;
    if !python.exists() {
        let mut mk = Command::new(&system_python);
        mk.args(["-m", "venv"]).arg(&venv);
        if step("python venv", mk).is_err() {
            // Debian's python3 lacks venv until python3-venv is installed.
            let mut apt = Command::new("apt-get");
            apt.args(["install", "-y", "-q", "python3-venv"]);
            step("apt-get install python3-venv", apt)?;
            let mut mk = Command::new(&system_python);
            mk.args(["-m", "venv"]).arg(&venv);
            step("python venv", mk)?;
        }
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "junitparser==3.2.0",
        // The KernelCI schema's own validator, for the KCIDB export's test.
        "kcidb-io==141",
        // The Prometheus project's parser of the metrics text format (qorch-api's /metrics).
        "prometheus-client==0.26.0",
    ]);
    step("pip install junitparser kcidb-io prometheus-client", pip)?;
    if !ready(&python) {
        bail!(
            "junitparser, kcidb-io or prometheus-client is still not importable from {}",
            python.display()
        );
    }
    Ok(python)
}

fn which_python() -> Option<PathBuf> {
    ["python3", "python"].into_iter().find_map(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from(name))
    })
}

fn demo(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("unknown option `{a}` for `demo`\n\n{USAGE}");
    }
    // What is missing first: QEMU and the four default guest images (cached after the first
    // time).
    provision_guests()?;
    let out = root.join("target/demo");
    // Through the `qorch` binary, as a user runs it after `cargo install --path qorch`.
    let mut c = cargo();
    c.args(["run", "--quiet", "-p", "qorch", "--", "run"])
        .arg(root.join("examples/plans/demo.toml"))
        .arg("--out")
        .arg(&out);
    eprintln!("xtask: == demo campaign: {c:?}");
    // Replace this process so that Ctrl-C reaches the campaign alone, which then stops its
    // tests and still writes both reports.
    use std::os::unix::process::CommandExt;
    let err = c.exec();
    Err(err).context("failed to start the demo campaign")
}
