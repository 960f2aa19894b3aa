//! Guest I/O and pool figures, per architecture, in one run: artifact transfer over virtio-serial
//! and over the serial console, and throughput of boot-bound tests with 1 and 2 VMs at once.

use std::time::{Duration, Instant};

use orchestrator_core::{Arch, Orchestrator, Outcome, Requirements, RunConfig, TestCase};
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

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("guest_io: run with `cargo bench -p benches --bench guest_io`");
        return;
    }
    let archs: Vec<Arch> = match std::env::var("ORCH_BENCH_ARCHS") {
        Ok(list) => list
            .split(',')
            .map(|a| a.trim().parse().expect("an architecture"))
            .collect(),
        Err(_) => Arch::ALL.to_vec(),
    };
    let tests = 6;
    println!(
        "| arch | virtio-serial, 16 MiB | serial console, 512 KiB | speed-up | 1 VM tests/s | 2 VMs tests/s | 2 VMs ÷ 1 VM |"
    );
    println!("|---|---|---|---|---|---|---|");
    for arch in archs {
        let virtio = transfer(arch, QemuConfig::new(), 16 << 20).await;
        let mut serial_cfg = QemuConfig::new();
        serial_cfg.virtio_artifacts = false;
        let serial = transfer(arch, serial_cfg, 512 << 10).await;
        let one = throughput(arch, 1, tests).await;
        let two = throughput(arch, 2, tests).await;
        println!(
            "| {arch} | {virtio:.1} MB/s | {serial:.3} MB/s | {:.0}× | {one:.3} | {two:.3} | {:.2} |",
            virtio / serial,
            two / one
        );
    }
}
