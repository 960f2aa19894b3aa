//! The QEMU runner's time to a result for a trivial test, against a plain QEMU command line
//! booting the same kernel and initramfs to poweroff, alternated run by run so that both see
//! the same machine load. Prints a table of medians and the ratio runner / plain.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator_core::{Arch, ExecutionContext, Outcome, Requirements, TestCase, TestRunner};
use qemu_runner::{QemuConfig, QemuRunner};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run only
    // when benchmarking, as the boots take minutes.
    if !benches::under_cargo_bench("boot_overhead") {
        return;
    }
    let runs = benches::env_num("ORCH_BENCH_RUNS", 5);
    let archs = benches::archs(&Arch::ALL);
    let runner = QemuRunner::new(QemuConfig::new());
    let scratch = tempfile::tempdir().unwrap();
    println!("| arch | plain QEMU to poweroff (median) | runner to result (median) | ratio |");
    println!("|---|---|---|---|");
    for arch in archs {
        let mut req = Requirements::default();
        req.arch = Some(arch);
        let case = TestCase::script(&format!("trivial-{arch}"), "true").with_requirements(req);
        // Warm up: builds and caches the base initramfs, decides the accelerator.
        let warm = scratch.path().join(format!("{arch}-warm"));
        let ctx = ExecutionContext::new(&case, &warm);
        std::fs::create_dir_all(&warm).unwrap();
        let r = runner.execute(&case, &ctx).await.expect("runner works");
        assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");

        let plain_dir = scratch.path().join(format!("{arch}-plain"));
        let prepared = runner
            .prepare(&case, &plain_dir, false)
            .await
            .expect("prepare");
        let args = qemu_runner::vm::qemu_args(&prepared.spec);
        let (mut plain, mut ours) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let started = Instant::now();
            let status = Command::new(&prepared.qemu)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "plain QEMU failed: {status}");
            plain.push(started.elapsed());

            let dir = scratch.path().join(format!("{arch}-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let ctx = ExecutionContext::new(&case, &dir);
            let started = Instant::now();
            let r = runner.execute(&case, &ctx).await.expect("runner works");
            ours.push(started.elapsed());
            assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
        }
        let (p, o) = (median(&mut plain), median(&mut ours));
        println!(
            "| {arch} | {:.2} s | {:.2} s | {:.3} |",
            p.as_secs_f64(),
            o.as_secs_f64(),
            o.as_secs_f64() / p.as_secs_f64()
        );
    }
}
