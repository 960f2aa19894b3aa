//! `qorch store ls` and `qorch history` on a store of a million records, process start
//! included: the target is 50 ms each.

use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator_core::artifact_store::{
    ArtifactKind, ArtifactStore, Durability, NewArtifact, StoreOptions, TestOutcome,
};

/// The median wall time of `runs` executions of `qorch args`, after one to warm the caches.
fn median(args: &[&str], runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..=runs)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_qorch"))
                .args(args)
                .output()
                .unwrap();
            let elapsed = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            elapsed
        })
        .skip(1)
        .collect();
    times.sort();
    times[times.len() / 2]
}

#[test]
#[ignore = "a benchmark: builds a store of a million records (5 to 8 minutes on 2 cores): QORCH_BENCH=1 cargo nextest run -p qorch --test scale --run-ignored only --no-capture"]
fn store_ls_and_history_on_a_million_records() {
    if std::env::var_os("QORCH_BENCH").is_none() {
        eprintln!("QORCH_BENCH is not set: the million-record benchmark is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = ArtifactStore::open_with(
        &root,
        StoreOptions {
            durability: Durability::Relaxed,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // 1000 runs of 1000 tests: one result record each, as a run stores them.
    let started = Instant::now();
    for run in 0..1000 {
        let items: Vec<(NewArtifact, &[u8])> = (0..1000)
            .map(|t| {
                let a = NewArtifact::new(
                    format!("test-{t}"),
                    format!("run-{run:04}"),
                    ArtifactKind::Result,
                    "result.json",
                )
                .outcome(if (run + t) % 17 == 0 {
                    TestOutcome::Failed
                } else {
                    TestOutcome::Passed
                })
                .arch("aarch64")
                .meta("duration-ms", format!("{}", 1000 + (run * t) % 500))
                .meta("cpu-ms", format!("{}", 300 + (run + t) % 100))
                .meta("peak-rss-bytes", format!("{}", 50_000_000 + run * 1000))
                .meta("runner", "qemu")
                .meta("verdict", "passed");
                (a, &b"{}"[..])
            })
            .collect();
        store.add_many(items).unwrap();
    }
    drop(store);
    eprintln!(
        "a million records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let root = root.to_str().unwrap();
    let ls = median(
        &[
            "store", "--store", root, "ls", "--test", "test-500", "--limit", "100",
        ],
        5,
    );
    let history = median(
        &["history", "test-500", "--store", root, "--limit", "100"],
        5,
    );
    eprintln!(
        "store ls (100 of a test's records): {:.1} ms; history (100 results): {:.1} ms",
        ls.as_secs_f64() * 1000.0,
        history.as_secs_f64() * 1000.0
    );
    // Measured on 2 shared cores: 15 ms and 11 ms.
    assert!(ls < Duration::from_millis(50), "{ls:?}");
    assert!(history < Duration::from_millis(50), "{history:?}");
}
