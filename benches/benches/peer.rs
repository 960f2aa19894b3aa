//! Side by side with a peer: the time to the result of `uname -r` on the provisioned x86_64
//! Debian kernel under TCG, for
//!
//! - virtme-ng 1.42 (`vng --run <vmlinuz> --disable-kvm --force-9p --verbose --exec 'uname -r'`:
//!   the host's root over 9p, the kernel's modules from the `lib/modules` beside the unpacked
//!   package), installed into a virtual environment of its own under the image cache's
//!   `tools/virtme-ng-1.42` (or `$ORCH_VNG`, a `vng` to use instead);
//! - the runner's own QEMU command line for the test, run without the runner (boots, runs the
//!   test, powers off);
//! - the runner, one boot for the test;
//! - the runner in snapshot-reset mode: after a first test that boots the guest and saves it,
//!   `ORCH_BENCH_TESTS` tests (default 10) each in a guest restored from that snapshot, timed
//!   one by one from the call to the verified result.
//!
//! Rounds (`ORCH_BENCH_RUNS`, default 3) alternate the four so they see the same machine load;
//! the table gives medians, ranges and ratios to virtme-ng. `ORCH_BENCH_LOG=1` logs the runner
//! (`qemu_runner=debug`) to stderr with timestamps. Skips, saying what to install, when
//! virtme-ng or a static busybox (which it puts in its initramfs) is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_core::{Arch, ExecutionContext, Outcome, Requirements, TestCase, TestRunner};
use qemu_runner::{QemuConfig, QemuRunner};

/// The virtme-ng release compared with.
const VNG_VERSION: &str = "1.42";

/// Lowest, median and highest.
fn spread(v: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn case(id: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    TestCase::script(id, "uname -r").with_requirements(req)
}

/// Runs `case` and checks that it printed exactly the kernel release.
async fn run_checked(runner: &QemuRunner, c: &TestCase, dir: &Path, release: &str) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let ctx = ExecutionContext::new(c, dir);
    let started = Instant::now();
    let r = runner.execute(c, &ctx).await.expect("runner works");
    let took = started.elapsed();
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    assert_eq!(r.stdout.text.trim_end(), release, "{r:#?}");
    took
}

/// A `vng` to run: `$ORCH_VNG`, or virtme-ng installed into its own virtual environment in
/// the image cache. `Err` says what is missing and how to fix it.
fn find_or_install_vng() -> Result<PathBuf, String> {
    if let Some(vng) = std::env::var_os("ORCH_VNG") {
        return Ok(PathBuf::from(vng));
    }
    let cache = qemu_runner::provision::default_cache_dir();
    let venv = cache
        .parent()
        .unwrap_or(&cache)
        .join("tools")
        .join(format!("virtme-ng-{VNG_VERSION}"));
    let vng = venv.join("bin/vng");
    let works = |vng: &Path| {
        Command::new(vng)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&vng) {
        return Ok(vng);
    }
    let fix = format!(
        "python3 -m venv {0} && {0}/bin/pip install virtme-ng=={VNG_VERSION} \
         (on Debian, `apt-get install python3-venv` first), or set ORCH_VNG to a vng {VNG_VERSION}",
        venv.display()
    );
    eprintln!(
        "peer: installing virtme-ng {VNG_VERSION} into {}",
        venv.display()
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return Err(format!("could not create a Python venv: {fix}"));
    }
    let installed = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("virtme-ng=={VNG_VERSION}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !installed || !works(&vng) {
        return Err(format!("pip could not install virtme-ng: {fix}"));
    }
    Ok(vng)
}

/// One `vng` run of `uname -r`; `Err` quotes the end of its output when it did not print the
/// release.
fn run_vng(vng: &Path, kernel: &Path, release: &str, cwd: &Path) -> Result<Duration, String> {
    // vng runs `virtme-run` and its other tools from `PATH`: its own directory first.
    let mut path = vng
        .parent()
        .map(Path::to_owned)
        .into_iter()
        .collect::<Vec<_>>();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(path).map_err(|e| format!("PATH: {e}"))?;
    let started = Instant::now();
    let out = Command::new(vng)
        .env("PATH", path)
        .arg("--run")
        .arg(kernel)
        .args([
            "--disable-kvm",
            "--force-9p",
            "--verbose",
            "--exec",
            "uname -r",
        ])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", vng.display()))?;
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With this modular kernel vng finds no virtio-serial port for the command's output: it
    // prints the output on its console and exits 255.
    if text.lines().any(|l| l.trim_end() == release) {
        return Ok(took);
    }
    let tail: Vec<&str> = text.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let mut why = format!(
        "vng ({}) did not print {release}: ...\n{}",
        out.status,
        tail.join("\n")
    );
    if text.contains("busybox") {
        why.push_str("\n(install a static busybox on the host: `apt-get install busybox-static`)");
    }
    Err(why)
}

#[tokio::main]
async fn main() {
    if !benches::under_cargo_bench("peer") {
        return;
    }
    let rounds = benches::env_num("ORCH_BENCH_RUNS", 3);
    let tests = benches::env_num("ORCH_BENCH_TESTS", 10);
    if std::env::var_os("ORCH_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("qemu_runner=debug")
            .with_writer(std::io::stderr)
            .init();
    }
    let vng = match find_or_install_vng() {
        Ok(vng) => vng,
        Err(why) => {
            eprintln!("peer: skipped: {why}");
            return;
        }
    };
    let scratch = tempfile::tempdir().unwrap();
    let alone = QemuRunner::new(QemuConfig::new());

    // Warm up the runner (builds the initramfs, decides the accelerator) and learn the kernel.
    let warm = case("uname-warm");
    let dir = scratch.path().join("warm");
    std::fs::create_dir_all(&dir).unwrap();
    let r = alone
        .execute(&warm, &ExecutionContext::new(&warm, &dir))
        .await
        .expect("runner works");
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    let kernel = PathBuf::from(&r.environment["kernel"]);
    let release = r.stdout.text.trim_end().to_owned();
    assert_eq!(
        r.environment.get("kernel-release"),
        Some(&release),
        "uname -r in the guest names the kernel the runner booted"
    );

    // Warm up vng (it writes the modules' modules.dep once) and check it works here.
    let vng_dir = scratch.path().join("vng");
    std::fs::create_dir_all(&vng_dir).unwrap();
    if let Err(why) = run_vng(&vng, &kernel, &release, &vng_dir) {
        eprintln!("peer: skipped: {why}");
        return;
    }

    // The plain QEMU command line: the runner's, without the runner.
    let plain_dir = scratch.path().join("plain");
    let prepared = alone
        .prepare(&warm, &plain_dir, false)
        .await
        .expect("prepare");
    let plain_args = qemu_runner::vm::qemu_args(&prepared.spec);
    let plain_line = qemu_runner::command_line(&prepared.spec);

    // The snapshot: its first test boots the guest and saves it.
    let restoring = QemuRunner::new(QemuConfig::new().with_snapshot_reset(true));
    let first = run_checked(
        &restoring,
        &case("uname-first"),
        &scratch.path().join("first"),
        &release,
    )
    .await;

    let (mut t_vng, mut t_plain, mut t_alone, mut t_restored, mut t_loop) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        match run_vng(&vng, &kernel, &release, &vng_dir) {
            Ok(t) => t_vng.push(t),
            Err(why) => panic!("virtme-ng failed in round {round}: {why}"),
        }

        let started = Instant::now();
        let out = Command::new(&prepared.qemu)
            .args(&plain_args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        t_plain.push(started.elapsed());
        assert!(out.status.success(), "plain QEMU failed: {}", out.status);

        let c = case(&format!("uname-alone-{round}"));
        let d = scratch.path().join(format!("alone-{round}"));
        t_alone.push(run_checked(&alone, &c, &d, &release).await);

        let started = Instant::now();
        for i in 0..tests {
            let c = case(&format!("uname-restored-{round}-{i}"));
            let d = scratch.path().join(format!("restored-{round}-{i}"));
            t_restored.push(run_checked(&restoring, &c, &d, &release).await);
        }
        t_loop.push(started.elapsed() / tests as u32);
    }
    restoring.cleanup().await.unwrap();

    let (_, vng_median, _) = spread(&t_vng);
    println!(
        "`uname -r` on {} ({release}), x86_64 under TCG; {rounds} rounds, alternating; \
         {tests} restored tests a round",
        kernel.display()
    );
    println!();
    println!("| what | median | range | ÷ virtme-ng |");
    println!("|---|---|---|---|");
    let row = |what: &str, v: &[Duration]| {
        let (lo, med, hi) = spread(v);
        println!(
            "| {what} | {med:.3} s | {lo:.3}–{hi:.3} s | {:.3} |",
            med / vng_median
        );
    };
    row(&format!("virtme-ng {VNG_VERSION} (`vng --run`)"), &t_vng);
    row("plain QEMU command line", &t_plain);
    row("runner, one boot", &t_alone);
    row("runner, a test from a restored snapshot", &t_restored);
    row(
        "runner, restored tests back to back (wall ÷ tests)",
        &t_loop,
    );
    println!();
    println!(
        "first snapshot test (boot and save): {:.3} s",
        first.as_secs_f64()
    );
    println!("plain QEMU command line: {plain_line}");
}
