//! Integration tests of orchestrator-core: real host processes, real timeouts.

mod composed;
mod history;
mod kcidb;
mod minimal_runner;
mod orchestrator;
mod process_runner;
mod reports;
mod shard;

use std::path::Path;
use std::time::Duration;

use orchestrator_core::artifact_store::ArtifactStore;
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{Orchestrator, ProcessRunner, RunConfig};

/// An orchestrator of host processes with the store at `store` and every execution monitored
/// (a sample every 20 ms).
pub(crate) fn monitored(config: RunConfig, store: &Path) -> Orchestrator {
    Orchestrator::new(config)
        .with_runner(ProcessRunner::default())
        .with_store(ArtifactStore::open(store).unwrap())
        .with_monitor(Monitor::new(
            MonitorConfig::default().with_interval(Duration::from_millis(20)),
        ))
}

/// Whether a process is still running (absent or a zombie counts as gone).
pub(crate) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
    }
}

/// Reads a pid written by a test script.
pub(crate) fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("pid file {} missing: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}
