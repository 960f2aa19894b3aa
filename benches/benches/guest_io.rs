//! Guest I/O and pool figures, per architecture, in one run: artifact transfer over virtio-serial
//! and over the serial console, the cost of a no-op test in a session, snapshot restore against
//! a fresh boot, and throughput of boot-bound tests with 1 and 2 VMs at once.

use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, ExecutionContext, Orchestrator, Outcome, Requirements, RunConfig, TestCase, TestRunner,
};
use qemu_runner::{QemuConfig, QemuRunner};

fn case(arch: Arch, id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    TestCase::script(&format!("{id}@{arch}"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(300))
}

async fn transfer(arch: Arch, config: QemuConfig, bytes: usize) -> f64 {
    let scratch = tempfile::tempdir().unwrap();
    let c = case(
        arch,
        "transfer",
        &format!("head -c {bytes} /dev/urandom > blob.bin"),
    )
    .with_artifact("blob.bin");
    let report = Orchestrator::new(RunConfig::new(scratch.path()))
        .with_runner(QemuRunner::new(config))
        .run(vec![c])
        .await
        .unwrap();
    let r = &report.results[0];
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    assert!(
        r.artifacts
            .iter()
            .any(|a| a.name == "files/blob.bin" && a.size == bytes as u64),
        "{r:#?}"
    );
    let secs: f64 = r.environment["transfer-seconds"].parse().unwrap();
    bytes as f64 / secs / 1e6
}

async fn throughput(arch: Arch, vms: usize, tests: usize) -> f64 {
    let scratch = tempfile::tempdir().unwrap();
    let cases: Vec<TestCase> = (0..tests)
        .map(|i| case(arch, &format!("t{i}"), "true"))
        .collect();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(vms))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let started = Instant::now();
    let report = orch.run(cases).await.unwrap();
    assert_eq!(report.summary.passed, tests);
    tests as f64 / started.elapsed().as_secs_f64()
}

/// Median time to a guest ready for a test: a fresh boot (QEMU start to the agent's `READY`)
/// and a restore from a snapshot (QEMU start to the restored guest running), alternated so
/// both see the same machine load.
async fn snapshot_vs_boot(arch: Arch, runs: usize) -> (Duration, Duration) {
    let scratch = tempfile::tempdir().unwrap();
    let fresh = QemuRunner::new(QemuConfig::new());
    let restoring = QemuRunner::new(QemuConfig::new().with_snapshot_reset(true));
    let (mut boots, mut restores) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        for (tag, runner, times) in [
            ("fresh", &fresh, &mut boots),
            ("restored", &restoring, &mut restores),
        ] {
            let c = case(arch, &format!("reset{i}"), "true");
            let dir = scratch.path().join(format!("{tag}-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let ctx = ExecutionContext::new(&c, &dir);
            let r = runner.execute(&c, &ctx).await.expect("runner works");
            assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
            let boot = r
                .phase(orchestrator_core::Phase::Boot)
                .expect("a boot phase")
                .duration();
            // The first restore also boots and saves the guest: not a restore.
            if i > 0 {
                times.push(boot);
            }
        }
    }
    restoring.cleanup().await.unwrap();
    boots.sort();
    restores.sort();
    (boots[boots.len() / 2], restores[restores.len() / 2])
}

/// Median wall time of a no-op test in a booted session guest, as the caller sees it (from
/// handing the test to the runner to its result), after one test that boots the guest.
async fn session_overhead(arch: Arch, tests: usize) -> Duration {
    let scratch = tempfile::tempdir().unwrap();
    let runner = QemuRunner::new(QemuConfig::new().with_session(true));
    let mut times = Vec::new();
    for i in 0..=tests {
        let c = case(arch, &format!("noop{i}"), "true");
        let dir = scratch.path().join(format!("t{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = ExecutionContext::new(&c, &dir);
        let started = Instant::now();
        let r = runner.execute(&c, &ctx).await.expect("runner works");
        let took = started.elapsed();
        assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
        if i > 0 {
            assert!(
                r.environment["session"].starts_with("guest 1,"),
                "every test runs in the first guest: {r:#?}"
            );
            times.push(took);
        }
    }
    runner.cleanup().await.unwrap();
    times.sort();
    times[times.len() / 2]
}

/// Rounds of the session and pool measurements.
const ROUNDS: usize = 3;

/// The lowest, median and highest of `v`.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    if !benches::under_cargo_bench("guest_io") {
        return;
    }
    let archs = benches::archs(&Arch::ALL);
    // `ORCH_BENCH_ONLY=session` (or a comma list of transfer, session, snapshot, pool) runs a
    // subset; the other columns print as "-".
    let only = std::env::var("ORCH_BENCH_ONLY").unwrap_or_default();
    let wants = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let tests = 8;
    println!(
        "| arch | virtio-serial, 16 MiB | serial console, 512 KiB | speed-up | session: no-op test (median) | boot (median) | snapshot restore (median) | restore ÷ boot | 1 VM tests/s | 2 VMs tests/s | 2 VMs ÷ 1 VM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for arch in archs {
        let mut row = vec![arch.to_string()];
        if wants("transfer") {
            let virtio = transfer(arch, QemuConfig::new(), 16 << 20).await;
            let mut serial_cfg = QemuConfig::new();
            serial_cfg.virtio_artifacts = false;
            let serial = transfer(arch, serial_cfg, 512 << 10).await;
            row.push(format!("{virtio:.1} MB/s"));
            row.push(format!("{serial:.3} MB/s"));
            row.push(format!("{:.0}×", virtio / serial));
        } else {
            row.extend(["-".into(), "-".into(), "-".into()]);
        }
        if wants("session") {
            // The machine is shared: the median of three sessions' medians, with their range.
            let mut t = Vec::new();
            for _ in 0..ROUNDS {
                t.push(session_overhead(arch, 21).await.as_secs_f64() * 1e3);
            }
            let (lo, mid, hi) = spread(&mut t);
            row.push(format!("{mid:.1} ms ({lo:.1}–{hi:.1})"));
        } else {
            row.push("-".into());
        }
        if wants("snapshot") {
            let (boot, restore) = snapshot_vs_boot(arch, 5).await;
            row.push(format!("{:.2} s", boot.as_secs_f64()));
            row.push(format!("{:.2} s", restore.as_secs_f64()));
            row.push(format!("{:.2}", restore.as_secs_f64() / boot.as_secs_f64()));
        } else {
            row.extend(["-".into(), "-".into(), "-".into()]);
        }
        if wants("pool") {
            // 1 VM and 2 VMs alternate, so that both see the same neighbours on this shared
            // machine; the ratio is the median of the rounds' ratios, with its range.
            let (mut ones, mut twos, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let one = throughput(arch, 1, tests).await;
                let two = throughput(arch, 2, tests).await;
                ones.push(one);
                twos.push(two);
                ratios.push(two / one);
            }
            let (lo, mid, hi) = spread(&mut ratios);
            row.push(format!("{:.3}", spread(&mut ones).1));
            row.push(format!("{:.3}", spread(&mut twos).1));
            row.push(format!("{mid:.2} ({lo:.2}–{hi:.2})"));
        } else {
            row.extend(["-".into(), "-".into(), "-".into()]);
        }
        println!("| {} |", row.join(" | "));
    }
}
