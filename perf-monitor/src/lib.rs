//! Resource monitoring for test runs: what a test's process tree cost (CPU, memory, I/O) and
//! whether the host was the bottleneck, without the monitor distorting the result.
//!
//! Start a watch on a pid, a child you spawned, or the current process, and get a
//! `#[must_use]` [`Guard`]. A background thread samples procfs at a fixed interval (100 ms by
//! default) until the guard is finished or dropped; [`Guard::finish`] returns a [`Recording`]:
//! a [`Summary`] and the time series of [`Sample`]s.
//!
//! - **Tree tracking.** Descendants are found incrementally through
//!   `/proc/<pid>/task/<tid>/children`; a full `/proc` scan runs at most once per
//!   `rescan_interval`, and only when it is needed (process-group following, or a kernel without
//!   `children` files). PID reuse is detected by start time.
//! - **Nothing lost between samples.** A reaped child's CPU time, faults and I/O land in its
//!   parent's figures, which the sampler reads, so processes living shorter than the interval are
//!   counted without privileges, a subreaper or cgroup v2 (see the `sampler` accounting notes).
//! - **Exact totals.** [`Monitor::watch_child`] takes over a [`std::process::Child`], samples its
//!   zombie and reaps it with `wait4`, so the summary has exact CPU and `ru_maxrss` beside the
//!   sampled series, and their difference as [`SamplingError`]. For any pid, VmHWM gives an exact
//!   per-process peak RSS.
//! - **Unavailable, never zero.** A metric procfs would not give (another user's `io`, a kernel
//!   without `/proc/pressure`) is `None` and named in [`Summary::unavailable`].
//! - **Verdict.** [`verdict::judge`] names the bottleneck (CPU, memory, I/O, or a contended host:
//!   steal, load, pressure) with configurable [`Thresholds`], and scores the host's validity;
//!   [`verdict::compare`] flags regressions between two summaries beyond a [`NoiseBand`].
//! - **Per-process breakdown.** Each process of the tree keeps its own CPU time, peak RSS, name
//!   and command-line head; the summary lists the top ones by CPU and by peak memory
//!   ([`Summary::top_cpu`], [`Summary::top_memory`]), exited processes with their last figures,
//!   in memory bounded by the live tree plus a few entries.
//! - **Phases.** [`Guard::mark`] records named instants (`boot`, `run`) with the tree's CPU at
//!   that moment, so a test's cost can be split by phase.
//! - **Storage.** Recordings serialise with serde to compact JSON lines, optionally zstd
//!   compressed ([`Recording::to_zstd`]).
//!
//! Futures: a guard held across `.await` measures whatever else the runtime does meanwhile; wrap
//! the future with [`Monitor::instrument`] instead, which also measures the CPU spent inside its
//! polls. There is a process-wide [`Monitor::global`] for harnesses that want one, but any number
//! of independent [`Monitor`]s can coexist.
//!
//! # Examples
//!
//! ```
//! use std::process::Command;
//! use std::time::Duration;
//! use perf_monitor::{Monitor, MonitorConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(20)));
//! let child = Command::new("sh").args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"]).spawn()?;
//! let guard = monitor.watch_child(child, "busy-loop")?;
//! guard.wait_exit(Duration::from_secs(30));
//! let recording = guard.finish()?;
//! let summary = &recording.summary;
//! let exact = summary.exact.as_ref().expect("a child we reaped has exact totals");
//! assert_eq!(exact.exit_code, Some(0));
//! println!("{:.2} cpu-s, peak rss {} bytes, {:?}", summary.cpu.total_s,
//!          summary.memory.peak_bytes, summary.verdict.bottleneck);
//! let stored = recording.to_zstd(3)?;
//! assert_eq!(perf_monitor::Recording::from_zstd(&stored)?, recording);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod model;
mod monitor;
mod procread;
mod sampler;
pub mod verdict;

pub use model::{
    CodecError, CpuSummary, ExactTotals, HostSummary, IoSummary, Mark, MemorySummary,
    ProcessFigures, ProcessSummary, Recording, SCHEMA_VERSION, Sample, SamplingError, Summary,
};
pub use monitor::{Guard, Instrumented, Monitor, MonitorConfig, MonitorError, Probe};
pub use verdict::{Bottleneck, Comparison, NoiseBand, PerfVerdict, Thresholds, Verdict};
