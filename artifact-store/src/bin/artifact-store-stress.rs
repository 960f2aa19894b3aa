//! Test helper for the crash-safety and concurrency tests of `artifact-store` (not a user tool).
//!
//! ```text
//! artifact-store-stress writer <store> <seed> <count> [gc-every]
//!     puts `count` artifacts with overlapping content, printing `OK <key> <id> <digest>` after
//!     each put returned; every `gc-every` puts it also runs a collection.
//! artifact-store-stress collector <store> <stop-file>
//!     applies retention (last 15 runs per test + last passing run) and collects, in a loop,
//!     until `stop-file` exists; prints `ROUNDS <n>`.
//! ```

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use artifact_store::retention::{KeepLastRuns, LastPassingRun, Policy};
use artifact_store::{ArtifactKind, ArtifactStore, GcOptions, NewArtifact, TestOutcome};

/// Deterministic content for `key` (the same generator is in the tests): empty, tiny, text that
/// compresses, and noise that does not.
fn content(key: u64) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match key % 6 {
        0 => Vec::new(),
        1 => vec![key as u8],
        2 | 3 => (0..(next() % 200_000) as usize)
            .map(|i| b"abcdefgh log line\n"[i % 18] ^ ((key as u8) & 1))
            .collect(),
        _ => (0..(next() % 300_000) as usize)
            .map(|_| next() as u8)
            .collect(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("artifact-store-stress: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: artifact-store-stress writer <store> <seed> <count> [gc-every] | collector <store> <stop-file>";
    match args.get(1).map(String::as_str) {
        Some("writer") if args.len() >= 5 => {
            let store = ArtifactStore::open(&args[2])?;
            let seed: u64 = args[3].parse()?;
            let count: u64 = args[4].parse()?;
            let gc_every: u64 = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(0);
            let mut out = std::io::stdout().lock();
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for i in 0..count {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (x >> 33) % 48;
                let outcome = if (x >> 20).is_multiple_of(3) {
                    TestOutcome::Failed
                } else {
                    TestOutcome::Passed
                };
                let a = NewArtifact::new(
                    format!("w{seed}-t{}", i % 4),
                    format!("w{seed}-r{}", i / 4),
                    ArtifactKind::Log,
                    format!("k{key}.log"),
                )
                .outcome(outcome)
                .meta("key", key.to_string());
                let r = store.add_bytes(a, &content(key))?;
                writeln!(out, "OK {key} {} {}", r.id, r.digest)?;
                out.flush()?;
                if gc_every > 0 && i % gc_every == gc_every - 1 {
                    store.gc(&GcOptions::default())?;
                }
            }
            Ok(())
        }
        Some("collector") if args.len() == 4 => {
            let store = ArtifactStore::open(&args[2])?;
            let stop = Path::new(&args[3]);
            let policy = Policy::new().with(KeepLastRuns(15)).with(LastPassingRun);
            let mut rounds = 0u64;
            while !stop.exists() {
                let plan = store.plan_retention(&policy, chrono::Utc::now())?;
                store.apply_retention(&plan)?;
                store.gc(&GcOptions::default())?;
                rounds += 1;
            }
            println!("ROUNDS {rounds}");
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
