//! x86_64 time to the result of a trivial test (`uname -r`) under the built-in profile against
//! the profile it replaced (`q35` booting the `bzImage` as it is, `quiet` only), on the same
//! kernel, alternated round by round so that both see the same machine load.
//!
//! With `--stress N` (or `ORCH_BENCH_STRESS=N`) instead: N boots in a row of the built-in
//! profile with a spinning process keeping another core busy, counting failures and hangs: a
//! boot without its result within 3× the median of the series' first 5 boots (made under the
//! same load). Each is let run to the runner's own boot deadline, to tell a stall from a slow
//! boot. Progress goes to stderr every 25 boots, so an interrupted series still tells.
//!
//! `cargo bench -p benches --bench x86_boot` (rounds: `ORCH_BENCH_RUNS`, default 5);
//! `cargo bench -p benches --bench x86_boot -- --stress 300`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_core::{Arch, ExecutionContext, Outcome, Requirements, TestCase, TestRunner};
use qemu_runner::{MachineProfile, QemuConfig, QemuRunner};

/// The x86_64 profile as it was before the PVH boot and its kernel arguments.
fn previous_profile() -> MachineProfile {
    let mut p = MachineProfile::builtin(Arch::X86_64);
    p.unpack_kernel = false;
    p.kernel_args = vec!["quiet".to_owned()];
    p
}

fn case() -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    TestCase::script("uname-r", "uname -r")
        .with_requirements(req)
        .with_timeout(Duration::from_secs(300))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One test on `runner`: its wall time to the result, and whether it passed with the release.
async fn once(
    runner: &QemuRunner,
    dir: &std::path::Path,
    release: Option<&str>,
) -> (Duration, Result<String, String>) {
    std::fs::create_dir_all(dir).unwrap();
    let case = case();
    let ctx = ExecutionContext::new(&case, dir);
    let started = Instant::now();
    let r = runner.execute(&case, &ctx).await;
    let took = started.elapsed();
    let verdict = match r {
        Ok(r) if r.outcome == Outcome::Passed => {
            let out = r.stdout.text.trim().to_owned();
            match release {
                Some(want) if want != out => Err(format!("printed `{out}`, expected `{want}`")),
                _ => Ok(out),
            }
        }
        Ok(r) => Err(format!(
            "{:?}: {}",
            r.outcome,
            r.message.as_deref().unwrap_or("no message")
        )),
        Err(e) => Err(e.to_string()),
    };
    (took, verdict)
}

/// A process spinning on a core until it is dropped (or this process is gone).
struct Spinner(Child);

impl Spinner {
    fn start() -> Self {
        let me = std::process::id();
        Spinner(
            Command::new("sh")
                .args(["-c", &format!("while kill -0 {me} 2>/dev/null; do :; done")])
                .stdin(Stdio::null())
                .spawn()
                .expect("sh runs"),
        )
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    if !benches::under_cargo_bench("x86_boot") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let runs = benches::env_num("ORCH_BENCH_RUNS", 5).max(3);
    let stress: usize = args
        .iter()
        .position(|a| a == "--stress")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var("ORCH_BENCH_STRESS").ok())
        .map(|s| s.parse().expect("--stress takes a number of boots"))
        .unwrap_or(0);
    let scratch = tempfile::tempdir().unwrap();
    if stress > 0 {
        stress_series(scratch.path(), stress).await;
    } else {
        compare(scratch.path(), runs).await;
    }
}

/// The built-in profile against the previous one, alternating.
async fn compare(scratch: &Path, runs: usize) {
    let before = QemuRunner::new(QemuConfig::new().with_profile(previous_profile()));
    let now = QemuRunner::new(QemuConfig::new());
    // Warm up both: the base initramfs, the accelerator decision, the unpacked kernel.
    let (_, warm) = once(&before, &scratch.join("warm-before"), None).await;
    let release = warm.expect("the previous profile runs `uname -r`");
    let (_, warm) = once(&now, &scratch.join("warm-now"), Some(&release)).await;
    warm.expect("the built-in profile runs `uname -r`");

    let (mut t_before, mut t_now) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (t, r) = once(
            &before,
            &scratch.join(format!("before-{i}")),
            Some(&release),
        )
        .await;
        r.expect("previous profile");
        t_before.push(t);
        let (t, r) = once(&now, &scratch.join(format!("now-{i}")), Some(&release)).await;
        r.expect("built-in profile");
        t_now.push(t);
        eprintln!(
            "round {}: previous {}, built-in {}",
            i + 1,
            secs(t_before[i]),
            secs(t_now[i])
        );
    }
    let (mb, mn) = (median(&t_before), median(&t_now));
    let range = |v: &[Duration]| {
        format!(
            "{}–{}",
            secs(*v.iter().min().unwrap()),
            secs(*v.iter().max().unwrap())
        )
    };
    println!("x86_64 `uname -r` ({release}), time to result, {runs} alternating rounds:");
    println!("| profile | median | range |");
    println!("|---|---|---|");
    println!(
        "| previous: q35, bzImage decompressed in the guest, `quiet` | {} | {} |",
        secs(mb),
        range(&t_before)
    );
    println!(
        "| built-in: q35, vmlinux through PVH, `{}` | {} | {} |",
        MachineProfile::builtin(Arch::X86_64).kernel_args.join(" "),
        secs(mn),
        range(&t_now)
    );
    println!(
        "| ratio built-in / previous | {:.3} | |",
        mn.as_secs_f64() / mb.as_secs_f64()
    );
}

/// `count` boots of the built-in profile in a row beside a spinning process.
async fn stress_series(scratch: &Path, count: usize) {
    const CALIBRATION: usize = 5;
    let now = QemuRunner::new(QemuConfig::new());
    let (_, warm) = once(&now, &scratch.join("warm"), None).await;
    let release = warm.expect("the built-in profile runs `uname -r`");
    let _spinner = Spinner::start();
    let mut results: Vec<(Duration, Result<String, String>)> = Vec::new();
    let mut limit = None;
    let started = Instant::now();
    let classify = |t: Duration, limit: Duration| t > limit;
    for i in 0..count {
        let dir = scratch.join(format!("stress-{i}"));
        let (t, verdict) = once(&now, &dir, Some(&release)).await;
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = &verdict {
            eprintln!("boot {}: failed after {}: {e}", i + 1, secs(t));
        }
        if let Some(limit) = limit
            && classify(t, limit)
        {
            eprintln!(
                "boot {}: no result within {} ({})",
                i + 1,
                secs(limit),
                secs(t)
            );
        }
        results.push((t, verdict));
        if i + 1 == CALIBRATION.min(count) {
            let times: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
            let l = median(&times) * 3;
            eprintln!(
                "limit: 3 × the median of the first {} boots = {}",
                times.len(),
                secs(l)
            );
            limit = Some(l);
        }
        if (i + 1) % 25 == 0 {
            let l = limit.expect("set after the first boots");
            let times: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
            eprintln!(
                "stress: {} boots, {} hangs, {} failures, median {}, max {} ({:.0} s so far)",
                i + 1,
                times.iter().filter(|t| classify(**t, l)).count(),
                results.iter().filter(|(_, r)| r.is_err()).count(),
                secs(median(&times)),
                secs(*times.iter().max().unwrap()),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let limit = limit.expect("at least one boot");
    let times: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
    println!(
        "stress: {count} boots of the built-in profile in a row, another core kept busy by a spinning process:"
    );
    println!(
        "| boots | hangs (> {} to result) | failures | median | max |",
        secs(limit)
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {count} | {} | {} | {} | {} |",
        times.iter().filter(|t| classify(**t, limit)).count(),
        results.iter().filter(|(_, r)| r.is_err()).count(),
        secs(median(&times)),
        secs(*times.iter().max().unwrap())
    );
}
