//! The domain model and the composition layer for running kernel and board-support tests.
//!
//! - [`TestCase`] says what to run and what it needs; [`TestResult`] and [`Outcome`] say what
//!   happened, [`Verdict`] judges it against the test's [`Expectation`].
//! - [`TestRunner`] is the seam runners implement: [`ProcessRunner`] runs host processes here;
//!   the `qemu-runner` crate boots kernels.
//! - [`Orchestrator`] runs a list of cases against runners with bounded parallelism, a whole-run
//!   deadline, retries for infrastructure errors only and cancellation, streaming [`RunEvent`]s.
//! - [`ktap`] reads the KTAP/TAP a test prints into its [`Subtest`]s; a failed subtest fails
//!   its test ([`TestResult::judge_subtests`], applied to every result the orchestrator gets).
//! - [`plan`] reads TOML plan files; [`report`] writes JUnit XML, a versioned JSON report, a
//!   summary table and a self-contained HTML page.
//! - Composition: [`Orchestrator::with_monitor`] watches every execution's host processes
//!   ([`perf_monitor`]), [`Orchestrator::with_store`] keeps its artifacts in an
//!   [`artifact_store`], [`Orchestrator::with_retention`] prunes the store after the run.
//!
//! # Features
//!
//! All on by default; a crate that only implements [`TestRunner`] can turn them off
//! (`default-features = false`) and compile none of their dependencies:
//! - `store`: [`Orchestrator::with_store`] and `with_retention`, the plan's `[store]` table
//!   (artifact-store: SQLite, the S3 client stack);
//! - `monitor`: [`Orchestrator::with_monitor`], the plan's `[monitor]` table (perf-monitor);
//! - `reports`: the HTML report (`report::html_report`, plotters);
//! - `progress`: the progress display (`progress`, indicatif).
//!
//! A plan naming `[store]` or `[monitor]` without its feature is refused at that table.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use orchestrator_core::{Orchestrator, ProcessRunner, RunConfig, TestCase, Verdict};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scratch = tempfile::tempdir()?;
//! let orchestrator = Orchestrator::new(RunConfig::new(scratch.path()))
//!     .with_runner(ProcessRunner::default());
//! let cases = vec![
//!     TestCase::script("hello", "echo hello from a test").with_timeout(Duration::from_secs(10)),
//! ];
//! let report = orchestrator.run(cases).await?;
//! assert_eq!(report.results[0].verdict(), Verdict::Passed);
//! assert_eq!(report.results[0].stdout.text, "hello from a test\n");
//! # Ok(())
//! # }
//! ```
//!
//! Composed: each result gets its resource usage, and its files and metrics land in the store.
//!
//! ```
//! # #[cfg(all(feature = "store", feature = "monitor"))]
//! # mod composed {
//! use std::time::Duration;
//! use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query};
//! use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
//! use orchestrator_core::{Orchestrator, ProcessRunner, RunConfig, TestCase};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let report = Orchestrator::new(RunConfig::new(dir.path().join("scratch")))
//!     .with_runner(ProcessRunner::default())
//!     .with_monitor(Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(10))))
//!     .with_store(ArtifactStore::open(dir.path().join("store"))?)
//!     .run(vec![TestCase::script("log", "sleep 0.2; echo done > out.log").with_artifact("*.log")])
//!     .await?;
//! let result = &report.results[0];
//! assert!(result.resources.is_some());
//! let store = ArtifactStore::open(dir.path().join("store"))?;
//! let logs = store.query(&Query::new().test("log").kind(ArtifactKind::Log))?;
//! assert_eq!(store.get(&logs[0].id)?, b"done\n");
//! # Ok(())
//! # }
//! # }
//! # fn main() {
//! #     #[cfg(all(feature = "store", feature = "monitor"))]
//! #     composed::main().unwrap();
//! # }
//! ```
#![deny(missing_docs)]
// The documentation names the parts of every feature; without them some links have no target.
#![cfg_attr(
    not(all(feature = "store", feature = "monitor")),
    allow(rustdoc::broken_intra_doc_links)
)]

mod case;
mod compose;
#[cfg(feature = "store")]
pub mod history;
pub mod ktap;
mod orchestrator;
mod output;
pub mod plan;
mod process;
#[cfg(feature = "progress")]
pub mod progress;
pub mod report;
mod result;
mod runner;
mod serde_duration;
pub mod shard;

pub use case::{
    Arch, Command, DEFAULT_TIMEOUT, EmptyCommand, Expectation, FileSpec, InvalidTestId,
    Requirements, TestCase, TestId, UnknownArch,
};
pub use compose::METRICS_NAME;
pub use compose::{REPORT_NAME, RESULT_NAME, RUN_RECORD_TEST_ID};
#[cfg(feature = "store")]
pub use compose::{artifact_kind, store_outcome};
pub use orchestrator::{
    Interruption, Orchestrator, OrchestratorError, RunConfig, RunEvent, STORE_ERROR_KEY,
};
pub use output::BoundedCapture;
pub use process::{ProcessRunner, ProcessRunnerConfig};
pub use report::{RunReport, RunStatus};
pub use result::{
    ArtifactFile, AttemptRecord, CapturedOutput, CrashKind, Outcome, Phase, PhaseTiming,
    ResourceUsage, StoredArtifact, Subtest, SubtestStatus, SubtestSuite, TestResult, UsagePoint,
    Verdict,
};
pub use result::{HostLoad, NamespaceNetwork, ProcessCounts, ProcessUsage};
pub use runner::{
    DEFAULT_OUTPUT_LIMIT, ErrorKind, ExecutionContext, HostProcess, ProcessObserver, RunnerError,
    TestRunner,
};

pub use tokio_util::sync::CancellationToken;

/// The artifact store the orchestrator composes (re-exported for one dependency line).
#[cfg(feature = "store")]
pub use artifact_store;
/// The process monitor the orchestrator composes.
#[cfg(feature = "monitor")]
pub use perf_monitor;
