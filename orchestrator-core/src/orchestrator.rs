//! Placeholder.
use std::path::PathBuf;
use std::time::Duration;
use serde::{Deserialize, Serialize};
/// Why a run ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Interruption {
    /// The caller cancelled the run (Ctrl-C).
    Cancelled,
    /// The whole-run deadline passed.
    DeadlineReached,
}
/// How a run is carried out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunConfig {
    /// Where each execution gets its private scratch directory.
    pub scratch_root: PathBuf,
    /// How many tests run at once.
    pub parallelism: usize,
    /// Deadline of the whole run.
    pub run_timeout: Option<Duration>,
    /// How many times a test ending in an infrastructure error is retried.
    pub infra_retries: u32,
    /// Per-stream output limit in bytes.
    pub output_limit: usize,
}
/// x
#[derive(Debug)]
pub struct Orchestrator;
/// x
#[derive(Debug)]
pub enum RunEvent {}
/// x
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct OrchestratorError;
