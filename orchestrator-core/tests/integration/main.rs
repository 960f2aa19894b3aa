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
