//! `qorch store ls` and `qorch history` on a store of a million records, process start
//! included: the target is 50 ms each. Medians of 11 runs after one warm-up.
//!
//! `cargo bench -p qorch --bench scale` (builds the store first: about a minute on 2 cores).

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

fn main() {
    // `cargo bench` passes `--bench`; a filter that names something else runs nothing.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"scale".contains(&a))
    {
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
    // One blob for all (the figures are in the records' metadata, which is what `history`
    // reads); the records go in by 100 000 per catalog transaction.
    let started = Instant::now();
    let blob = store.put_blob(&b"{}"[..]).unwrap();
    for runs in (0..1000).collect::<Vec<_>>().chunks(100) {
        let items: Vec<NewArtifact> = runs
            .iter()
            .flat_map(|&run| (0..1000).map(move |t| (run, t)))
            .map(|(run, t)| {
                NewArtifact::new(
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
                .meta("verdict", "passed")
            })
            .collect();
        store.record_many(&blob, items).unwrap();
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
        11,
    );
    let history = median(
        &["history", "test-500", "--store", root, "--limit", "100"],
        11,
    );
    eprintln!(
        "store ls (100 of a test's records): {:.1} ms; history (100 results): {:.1} ms",
        ls.as_secs_f64() * 1000.0,
        history.as_secs_f64() * 1000.0
    );
    assert!(ls < Duration::from_millis(50), "{ls:?}");
    assert!(history < Duration::from_millis(50), "{history:?}");
}
