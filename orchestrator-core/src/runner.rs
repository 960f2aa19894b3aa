//! The seam every runner implements: [`TestRunner`] and the [`ExecutionContext`] it is given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::case::TestCase;
use crate::result::TestResult;

/// Executes tests somewhere: host processes, QEMU guests, ...
///
/// `execute` reports what happened to the test in the returned [`TestResult`]: a failing test is
/// `Ok` with a failed outcome. `Err` means the runner itself could not do its job (an
/// infrastructure error); the orchestrator records it as
/// [`Outcome::InfraError`](crate::Outcome::InfraError) and may retry it.
///
/// Runners must honour the context: stop the test when its cancellation token fires or its
/// deadline passes, write only under its scratch directory, and report every host process they
/// start through [`ExecutionContext::process_started`].
#[async_trait]
pub trait TestRunner: Send + Sync {
    /// A short name (`process`, `qemu`) used in plans and reports.
    fn name(&self) -> &str;

    /// Whether this runner can execute `case` at all; `Err` (a [`ErrorKind::Configuration`]
    /// error, as a rule) explains why not and what to change. Called before anything runs, so a
    /// plan is rejected whole rather than run half-configured.
    fn check(&self, case: &TestCase) -> Result<(), RunnerError> {
        let _ = case;
        Ok(())
    }

    /// Sees the whole batch of tests this runner is given, once, before the first of them
    /// executes: where a runner plans what its tests can share (booted guests, snapshots).
    /// `Err` stops the run before anything executes.
    async fn plan(&self, batch: &[&TestCase]) -> Result<(), RunnerError> {
        let _ = batch;
        Ok(())
    }

    /// Runs one test.
    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError>;

    /// Releases what the runner holds (pooled machines, caches); called once after a run.
    async fn cleanup(&self) -> Result<(), RunnerError> {
        Ok(())
    }
}

#[async_trait]
impl<R: TestRunner + ?Sized> TestRunner for Arc<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn check(&self, case: &TestCase) -> Result<(), RunnerError> {
        (**self).check(case)
    }
    async fn plan(&self, batch: &[&TestCase]) -> Result<(), RunnerError> {
        (**self).plan(batch).await
    }
    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        (**self).execute(case, ctx).await
    }
    async fn cleanup(&self) -> Result<(), RunnerError> {
        (**self).cleanup().await
    }
}

#[async_trait]
impl<R: TestRunner + ?Sized> TestRunner for Box<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn check(&self, case: &TestCase) -> Result<(), RunnerError> {
        (**self).check(case)
    }
    async fn plan(&self, batch: &[&TestCase]) -> Result<(), RunnerError> {
        (**self).plan(batch).await
    }
    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        (**self).execute(case, ctx).await
    }
    async fn cleanup(&self) -> Result<(), RunnerError> {
        (**self).cleanup().await
    }
}

/// What kind of problem a [`RunnerError`] (or an [`Outcome::InfraError`](crate::Outcome::InfraError))
/// is: what the orchestrator's retry decision reads ([`ErrorKind::is_retryable`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host or the emulator failed (a process died or was killed, a resource ran out, a
    /// transfer broke): another attempt may succeed, so it is retried under `retries`.
    #[default]
    Infrastructure,
    /// The test or the runner is set up wrongly (a missing or foreign kernel, a bad profile, an
    /// accelerator forced where it cannot work): another attempt would fail the same way.
    Configuration,
    /// A defect in the runner itself (a task panicked).
    Internal,
}

impl ErrorKind {
    /// Whether another attempt may succeed: the one place the retry decision is made.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Infrastructure)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Infrastructure => "infrastructure",
            ErrorKind::Configuration => "configuration",
            ErrorKind::Internal => "internal",
        })
    }
}

/// A runner could not do its job: never a failure of the code under test. Its [`ErrorKind`]
/// says whether another attempt may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunnerError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RunnerError {
    /// An infrastructure error with a message (a lowercase fragment naming the operation and
    /// the thing): a string, or a typed error's words.
    pub fn new(message: impl std::fmt::Display) -> Self {
        RunnerError {
            kind: ErrorKind::Infrastructure,
            message: message.to_string(),
            source: None,
        }
    }

    /// A configuration error: the message (a string, or a typed error's words) names the
    /// setting and the fix.
    pub fn config(message: impl std::fmt::Display) -> Self {
        RunnerError::new(message).with_kind(ErrorKind::Configuration)
    }

    /// An infrastructure error with a message and the underlying cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RunnerError {
            kind: ErrorKind::Infrastructure,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The same error with another kind.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// What kind of problem it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message and every cause, joined with `: `.
    pub fn chain(&self) -> String {
        let mut s = self.message.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

/// A host process a runner started for a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    /// Its process id.
    pub pid: u32,
    /// What it is (`test`, `qemu-system-aarch64`, ...).
    pub label: String,
    /// When it was reported.
    pub started_at: DateTime<Utc>,
}

/// Told about the host processes runners start, so that a monitor can watch them.
pub trait ProcessObserver: Send + Sync + fmt::Debug {
    /// A runner started `process` for `test`.
    fn process_started(&self, test: &TestCase, process: &HostProcess);
}

/// Everything a runner gets for one execution of one test.
#[derive(Debug)]
pub struct ExecutionContext {
    run_id: String,
    attempt: u32,
    run_deadline: Option<Instant>,
    cancel: CancellationToken,
    scratch_dir: PathBuf,
    output_limit: usize,
    test: TestCase,
    observer: Option<Arc<dyn ProcessObserver>>,
    processes: Mutex<Vec<HostProcess>>,
}

impl ExecutionContext {
    /// A context for one attempt of `test`. The orchestrator builds these; runner tests and
    /// custom drivers can too.
    pub fn new(test: &TestCase, scratch_dir: impl Into<PathBuf>) -> Self {
        ExecutionContext {
            run_id: "adhoc".to_owned(),
            attempt: 1,
            run_deadline: None,
            cancel: CancellationToken::new(),
            scratch_dir: scratch_dir.into(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            test: test.clone(),
            observer: None,
            processes: Mutex::new(Vec::new()),
        }
    }

    /// Sets the run id.
    #[must_use]
    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = run_id.into();
        self
    }

    /// Sets the attempt number (1-based).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the deadline of the whole run.
    #[must_use]
    pub fn with_run_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.run_deadline = deadline;
        self
    }

    /// Sets the cancellation token.
    #[must_use]
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Sets the per-stream output limit in bytes.
    #[must_use]
    pub fn with_output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Sets who is told about started processes.
    #[must_use]
    pub fn with_observer(mut self, observer: Option<Arc<dyn ProcessObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// The run this execution belongs to.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Which attempt this is (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the whole run must end, if it has a limit.
    pub fn run_deadline(&self) -> Option<Instant> {
        self.run_deadline
    }

    /// The deadline for something that may take `limit` from now, clamped to the run's
    /// deadline. Returns the instant and whether the run deadline is the tighter one.
    pub fn deadline_after(&self, limit: Duration) -> (Instant, bool) {
        let own = Instant::now() + limit;
        match self.run_deadline {
            Some(run) if run < own => (run, true),
            _ => (own, false),
        }
    }

    /// Fires when the run is cancelled; the runner must then stop the test and return.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// A directory private to this execution, created before `execute` is called.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }

    /// Where collected artifacts go: `<scratch>/artifacts`.
    pub fn artifact_dir(&self) -> PathBuf {
        self.scratch_dir.join("artifacts")
    }

    /// The most bytes of each output stream to keep.
    pub fn output_limit(&self) -> usize {
        self.output_limit
    }

    /// Records a host process started for this test and tells the observer.
    pub fn process_started(&self, pid: u32, label: impl Into<String>) {
        let process = HostProcess {
            pid,
            label: label.into(),
            started_at: Utc::now(),
        };
        if let Some(observer) = &self.observer {
            observer.process_started(&self.test, &process);
        }
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process);
    }

    /// The host processes reported so far.
    pub fn processes(&self) -> Vec<HostProcess> {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Default per-stream output limit: 1 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;
