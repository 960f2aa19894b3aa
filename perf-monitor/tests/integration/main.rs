//! perf-monitor's integration tests: accuracy against known workloads run as child processes,
//! bad input, the guard's lifecycle, and serialisation round trips.

mod accuracy;
mod breakdown;
mod lifecycle;
mod roundtrip;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use perf_monitor::{Monitor, MonitorConfig, Recording};

/// The helper binary with known workloads.
pub(crate) fn workload(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_perf-workload"))
        .args(args)
        // Nothing to read; and a workload outliving its test must not hold the test's output.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn perf-workload")
}

/// A monitor at `ms` milliseconds.
pub(crate) fn monitor(ms: u64) -> Monitor {
    Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(ms)))
}

/// Watches `child` until it exits and returns the recording.
pub(crate) fn measure(child: Child, label: &str, ms: u64) -> Recording {
    let guard = monitor(ms).watch_child(child, label).expect("watch");
    assert!(
        guard.wait_exit(Duration::from_secs(60)),
        "{label} did not exit"
    );
    guard.finish().expect("finish")
}
