//! [`Orchestrator`]: runs cases against runners with bounded parallelism, a run deadline,
//! infrastructure retries and cancellation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[cfg(feature = "store")]
use artifact_store::{ArtifactStore, RetentionPolicy};
#[cfg(feature = "monitor")]
use perf_monitor::Monitor;

use crate::case::TestCase;
#[cfg(feature = "store")]
use crate::compose::store_execution;
#[cfg(feature = "monitor")]
use crate::compose::{ExecutionWatch, METRICS_NAME, add_metrics_file, usage_of};
use crate::plan::PlanSettings;
#[cfg(feature = "store")]
use crate::report::StorageSummary;
use crate::report::{HostInfo, RunReport, SCHEMA_VERSION, Summary};
use crate::result::{AttemptRecord, Outcome, TestResult};
use crate::runner::{DEFAULT_OUTPUT_LIMIT, ExecutionContext, ProcessObserver, TestRunner};

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
    /// Where each execution gets its private scratch directory
    /// (`<scratch_root>/<run id>/<test id>/attempt-<n>`).
    pub scratch_root: PathBuf,
    /// How many tests run at once (at least 1).
    pub parallelism: usize,
    /// Deadline of the whole run: tests still running are stopped, tests not started are
    /// skipped.
    pub run_timeout: Option<Duration>,
    /// How many times a test ending in an infrastructure error is retried. Real failures are
    /// never retried.
    pub infra_retries: u32,
    /// Per-stream output limit in bytes.
    pub output_limit: usize,
    /// The run's name, copied into the report.
    pub name: Option<String>,
    /// Which shard of which campaign this run is, copied into the report (see
    /// [`crate::shard`]).
    pub shard: Option<crate::shard::ShardInfo>,
}

impl RunConfig {
    /// Defaults: parallelism = the number of CPUs, no run deadline, no retries, 1 MiB of output
    /// per stream.
    pub fn new(scratch_root: impl Into<PathBuf>) -> Self {
        RunConfig {
            scratch_root: scratch_root.into(),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            run_timeout: None,
            infra_retries: 0,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            name: None,
            shard: None,
        }
    }

    /// Takes the settings a plan file gives (`[run]`), keeping defaults for what it leaves out.
    #[must_use]
    pub fn with_plan_settings(mut self, settings: &PlanSettings) -> Self {
        if let Some(p) = settings.parallelism {
            self.parallelism = p;
        }
        if settings.timeout.is_some() {
            self.run_timeout = settings.timeout;
        }
        self.infra_retries = settings.retries;
        if let Some(limit) = settings.output_limit {
            self.output_limit = limit;
        }
        self
    }

    /// Sets the parallelism.
    #[must_use]
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Sets the whole-run deadline.
    #[must_use]
    pub fn with_run_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.run_timeout = timeout;
        self
    }

    /// Sets the number of retries for infrastructure errors.
    #[must_use]
    pub fn with_infra_retries(mut self, retries: u32) -> Self {
        self.infra_retries = retries;
        self
    }

    /// Sets the per-stream output limit.
    #[must_use]
    pub fn with_output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Sets the run's name.
    #[must_use]
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// Marks the run as one shard of a campaign (from [`Partition::info`](crate::shard::Partition::info)).
    #[must_use]
    pub fn with_shard(mut self, shard: crate::shard::ShardInfo) -> Self {
        self.shard = Some(shard);
        self
    }
}

/// Something that happened during a run, streamed as it happens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RunEvent {
    /// The run started with this many tests.
    RunStarted {
        /// The run's id.
        run_id: String,
        /// Number of tests.
        total: usize,
    },
    /// An attempt of a test started.
    TestStarted {
        /// The test.
        test: TestCase,
        /// The attempt (1-based).
        attempt: u32,
    },
    /// An attempt ended in an infrastructure error and will be retried.
    TestRetrying {
        /// The failed attempt's result.
        result: Box<TestResult>,
    },
    /// A test has its final result.
    TestFinished {
        /// The result.
        result: Box<TestResult>,
    },
    /// The run is ending early; running tests are being stopped.
    Interrupted {
        /// Why.
        reason: Interruption,
    },
    /// A runner's cleanup after the run failed (the results stand).
    CleanupFailed {
        /// The runner's name.
        runner: String,
        /// What went wrong (the error and its causes).
        message: String,
    },
}

/// The run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// The configuration or the cases are invalid; nothing ran.
    #[error("invalid run: {}", problems.join("; "))]
    Invalid {
        /// Every problem found, each naming the test and the fix.
        problems: Vec<String>,
    },
    /// The scratch directory could not be prepared.
    #[error("failed to create scratch directory {}", path.display())]
    Scratch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A runner could not plan its batch ([`TestRunner::plan`](crate::TestRunner::plan)); nothing
    /// ran.
    #[error("the {runner} runner could not plan the run")]
    Plan {
        /// The runner's name.
        runner: String,
        /// Why.
        #[source]
        source: crate::runner::RunnerError,
    },
}

/// Runs cases against runners.
///
/// Each case goes to the runner it names (`TestCase::runner`) or to the default runner (the
/// first one added). All cases are checked before anything runs.
#[derive(Debug)]
pub struct Orchestrator {
    config: RunConfig,
    runners: Vec<Arc<dyn TestRunner>>,
    observer: Option<Arc<dyn ProcessObserver>>,
    #[cfg(feature = "store")]
    store: Option<Arc<ArtifactStore>>,
    #[cfg(feature = "monitor")]
    monitor: Option<Arc<Monitor>>,
    #[cfg(feature = "store")]
    retention: Option<Arc<dyn RetentionPolicy>>,
}

impl std::fmt::Debug for dyn TestRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestRunner({})", self.name())
    }
}

impl Orchestrator {
    /// An orchestrator with no runners yet.
    pub fn new(config: RunConfig) -> Self {
        Orchestrator {
            config,
            runners: Vec::new(),
            observer: None,
            #[cfg(feature = "store")]
            store: None,
            #[cfg(feature = "monitor")]
            monitor: None,
            #[cfg(feature = "store")]
            retention: None,
        }
    }

    /// Keeps every execution's artifacts (console log, collected files, metrics) in `store`,
    /// with catalog records carrying the test, run, kind, architecture and outcome; each
    /// result's [`ArtifactFile::stored`](crate::ArtifactFile::stored) links to its record.
    #[cfg(feature = "store")]
    #[must_use]
    pub fn with_store(self, store: ArtifactStore) -> Self {
        self.with_shared_store(Arc::new(store))
    }

    /// As [`with_store`](Self::with_store), with a store shared with other code.
    #[cfg(feature = "store")]
    #[must_use]
    pub fn with_shared_store(mut self, store: Arc<ArtifactStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Watches the host processes each execution reports (the QEMU process for the QEMU
    /// runner) with `monitor`: each result gets its [`ResourceUsage`](crate::ResourceUsage),
    /// and the full recording becomes its `metrics.jsonl` artifact.
    #[cfg(feature = "monitor")]
    #[must_use]
    pub fn with_monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(Arc::new(monitor));
        self
    }

    /// Applies `policy` to the store after each run (needs [`with_store`](Self::with_store)):
    /// artifacts it removes are marked evicted with the reason, and blobs no record needs are
    /// collected. What it did is in the report's [`StorageSummary`].
    #[cfg(feature = "store")]
    #[must_use]
    pub fn with_retention(mut self, policy: impl RetentionPolicy + 'static) -> Self {
        self.retention = Some(Arc::new(policy));
        self
    }

    /// The artifact store, if there is one.
    #[cfg(feature = "store")]
    pub fn store(&self) -> Option<&Arc<ArtifactStore>> {
        self.store.as_ref()
    }

    /// Adds a runner; the first one added is the default.
    #[must_use]
    pub fn with_runner(mut self, runner: impl TestRunner + 'static) -> Self {
        self.runners.push(Arc::new(runner));
        self
    }

    /// Adds a shared runner.
    #[must_use]
    pub fn with_shared_runner(mut self, runner: Arc<dyn TestRunner>) -> Self {
        self.runners.push(runner);
        self
    }

    /// Sets who is told about the host processes runners start.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn ProcessObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    fn runner_for(&self, case: &TestCase) -> Option<&Arc<dyn TestRunner>> {
        match &case.runner {
            Some(name) => self.runners.iter().find(|r| r.name() == name),
            None => self.runners.first(),
        }
    }

    /// Checks the configuration and every case without running anything: duplicate ids,
    /// unknown runners, zero timeouts, cases a runner cannot execute.
    pub fn validate(&self, cases: &[TestCase]) -> Result<(), OrchestratorError> {
        let mut problems = Vec::new();
        if self.config.parallelism == 0 {
            problems.push("parallelism is 0: set it to at least 1".to_owned());
        }
        if self.runners.is_empty() {
            problems.push("no runner is configured: add one with `with_runner`".to_owned());
        }
        #[cfg(feature = "store")]
        if self.retention.is_some() && self.store.is_none() {
            problems.push(
                "a retention policy is set but no artifact store: add one with `with_store`"
                    .to_owned(),
            );
        }
        let mut seen = HashSet::new();
        for case in cases {
            if !seen.insert(&case.id) {
                problems.push(format!(
                    "test id `{}` is used more than once: ids must be unique",
                    case.id
                ));
            }
            if case.timeout.is_zero() {
                problems.push(format!(
                    "test `{}` has a zero timeout: give it a positive one",
                    case.id
                ));
            }
            match self.runner_for(case) {
                None => {
                    if let Some(name) = &case.runner {
                        let known: Vec<&str> = self.runners.iter().map(|r| r.name()).collect();
                        problems.push(format!(
                            "test `{}` asks for runner `{name}`, which is not configured (available: {})",
                            case.id,
                            known.join(", ")
                        ));
                    }
                }
                Some(runner) => {
                    if let Err(why) = runner.check(case) {
                        problems.push(format!(
                            "test `{}` cannot run on the {} runner: {why}",
                            case.id,
                            runner.name()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OrchestratorError::Invalid { problems })
        }
    }

    /// Runs `cases` to completion and returns the report.
    pub async fn run(&self, cases: Vec<TestCase>) -> Result<RunReport, OrchestratorError> {
        self.run_with(cases, CancellationToken::new(), |_| {}).await
    }

    /// Runs `cases`, calling `on_event` as things happen. Cancelling `cancel` stops running
    /// tests (each runner stops its processes), skips the rest and still returns the report.
    pub async fn run_with(
        &self,
        cases: Vec<TestCase>,
        cancel: CancellationToken,
        mut on_event: impl FnMut(&RunEvent),
    ) -> Result<RunReport, OrchestratorError> {
        self.validate(&cases)?;
        let run_id = format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        // What a front end sees as `RunEvent`s (retries, interruptions, a failed cleanup) is
        // logged at info at most: a binary logging warnings does not say it twice.
        let span = tracing::info_span!("run", id = %run_id, tests = cases.len());
        self.run_in_span(run_id, cases, cancel, &mut on_event)
            .instrument(span)
            .await
    }

    /// [`run_with`](Self::run_with) once the cases are valid, in the run's span.
    async fn run_in_span(
        &self,
        run_id: String,
        cases: Vec<TestCase>,
        cancel: CancellationToken,
        on_event: &mut impl FnMut(&RunEvent),
    ) -> Result<RunReport, OrchestratorError> {
        let started = Instant::now();
        tracing::info!(
            tests = cases.len(),
            parallelism = self.config.parallelism,
            "run started"
        );
        // Each runner sees its whole batch first.
        for runner in &self.runners {
            let batch: Vec<&TestCase> = cases
                .iter()
                .filter(|c| self.runner_for(c).is_some_and(|r| Arc::ptr_eq(r, runner)))
                .collect();
            if !batch.is_empty() {
                runner
                    .plan(&batch)
                    .await
                    .map_err(|source| OrchestratorError::Plan {
                        runner: runner.name().to_owned(),
                        source,
                    })?;
            }
        }
        let run_dir = self.config.scratch_root.join(&run_id);
        std::fs::create_dir_all(&run_dir).map_err(|source| OrchestratorError::Scratch {
            path: run_dir.clone(),
            source,
        })?;
        let started_at = Utc::now();
        let run_deadline = self.config.run_timeout.map(|t| Instant::now() + t);
        on_event(&RunEvent::RunStarted {
            run_id: run_id.clone(),
            total: cases.len(),
        });

        // The token handed to runners: fires on the caller's cancel and on the run deadline.
        let stop = cancel.child_token();
        let mut queue: VecDeque<(usize, u32)> = (0..cases.len()).map(|i| (i, 1)).collect();
        let mut results: BTreeMap<usize, TestResult> = BTreeMap::new();
        let mut earlier: HashMap<usize, Vec<AttemptRecord>> = HashMap::new();
        let mut tasks: JoinSet<(usize, u32, TestResult)> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, (usize, u32)> = HashMap::new();
        let mut interrupted: Option<Interruption> = None;
        let mut earlier_errors: Vec<String> = Vec::new();
        let parallelism = self.config.parallelism.max(1);

        let deadline_sleep = async {
            match run_deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_sleep);

        loop {
            while interrupted.is_none() && tasks.len() < parallelism {
                let Some((index, attempt)) = queue.pop_front() else {
                    break;
                };
                let case = cases[index].clone();
                let runner = Arc::clone(self.runner_for(&case).expect("validated"));
                let scratch = run_dir
                    .join(case.id.as_str())
                    .join(format!("attempt-{attempt}"));
                #[cfg(feature = "monitor")]
                let watch = self.monitor.as_ref().map(|m| {
                    Arc::new(ExecutionWatch::new(
                        Arc::clone(m),
                        format!("{}#{attempt}", case.id),
                        self.observer.clone(),
                    ))
                });
                #[cfg(feature = "monitor")]
                let observer = match &watch {
                    Some(w) => Some(Arc::clone(w) as Arc<dyn ProcessObserver>),
                    None => self.observer.clone(),
                };
                #[cfg(not(feature = "monitor"))]
                let observer = self.observer.clone();
                let ctx = ExecutionContext::new(&case, &scratch)
                    .with_run_id(&run_id)
                    .with_attempt(attempt)
                    .with_run_deadline(run_deadline)
                    .with_cancel(stop.child_token())
                    .with_output_limit(self.config.output_limit)
                    .with_observer(observer);
                on_event(&RunEvent::TestStarted {
                    test: case.clone(),
                    attempt,
                });
                #[cfg(feature = "store")]
                let store = self.store.clone();
                #[cfg(feature = "store")]
                let run = run_id.clone();
                let span = tracing::info_span!(
                    "test",
                    id = %case.id,
                    runner = %runner.name(),
                    arch = case.requirements.arch.map(tracing::field::display),
                    attempt,
                );
                let handle = tasks.spawn(
                    async move {
                        let mut result = execute_one(runner.as_ref(), &case, &ctx).await;
                        result.attempt = attempt;
                        #[cfg(feature = "monitor")]
                        if let Some(watch) = watch {
                            finish_watch(watch, &ctx, &mut result).await;
                        }
                        #[cfg(feature = "store")]
                        if let Some(store) = store {
                            store_result(store, run, case, index, &mut result).await;
                        }
                        (index, attempt, result)
                    }
                    .instrument(span),
                );
                in_flight.insert(handle.id(), (index, attempt));
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let (index, attempt, mut result) = match joined {
                        Some(Ok((id, value))) => {
                            in_flight.remove(&id);
                            value
                        }
                        Some(Err(e)) => {
                            let (index, attempt) = in_flight.remove(&e.id()).expect("known task");
                            let mut r = TestResult::new(&cases[index], runner_name(self, &cases[index]), Outcome::InfraError {
                                message: format!("the runner task failed: {e}"),
                                cause: crate::runner::ErrorKind::Internal,
                            });
                            r.attempt = attempt;
                            (index, attempt, r)
                        }
                        None => continue,
                    };
                    result.attempt = attempt;
                    let retry = result.outcome.is_retryable()
                        && attempt <= self.config.infra_retries
                        && interrupted.is_none();
                    if retry {
                        tracing::info!(
                            test = %result.test_id,
                            attempt,
                            outcome = %result.outcome.label(),
                            message = result.message.as_deref().unwrap_or_default(),
                            "infrastructure error: retrying the test"
                        );
                        if let Some(e) = result.environment.get(STORE_ERROR_KEY) {
                            earlier_errors.push(format!("test `{}` attempt {attempt}: {e}", result.test_id));
                        }
                        on_event(&RunEvent::TestRetrying { result: Box::new(result.clone()) });
                        earlier.entry(index).or_default().push(AttemptRecord {
                            attempt,
                            outcome: result.outcome.clone(),
                            message: result.message.clone(),
                        });
                        queue.push_front((index, attempt + 1));
                    } else {
                        tracing::debug!(
                            test = %result.test_id,
                            attempt,
                            outcome = %result.outcome.label(),
                            "test finished"
                        );
                        result.earlier_attempts = earlier.remove(&index).unwrap_or_default();
                        on_event(&RunEvent::TestFinished { result: Box::new(result.clone()) });
                        results.insert(index, result);
                    }
                }
                () = cancel.cancelled(), if interrupted.is_none() => {
                    tracing::info!("run cancelled: stopping running tests");
                    interrupted = Some(Interruption::Cancelled);
                    on_event(&RunEvent::Interrupted { reason: Interruption::Cancelled });
                }
                () = &mut deadline_sleep, if interrupted.is_none() => {
                    tracing::info!("the run's deadline passed: stopping running tests");
                    interrupted = Some(Interruption::DeadlineReached);
                    on_event(&RunEvent::Interrupted { reason: Interruption::DeadlineReached });
                    // Runners enforce the deadline themselves; this is the backstop for any
                    // that do not: cancel after a grace period.
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        stop.cancel();
                    });
                }
            }
        }

        // Whatever never started is skipped, saying why.
        for (index, _) in queue {
            let case = &cases[index];
            let reason = match interrupted {
                Some(Interruption::Cancelled) => "the run was cancelled before it started",
                _ => "the run's deadline passed before it started",
            };
            let mut r = TestResult::new(
                case,
                runner_name(self, case),
                Outcome::Skipped {
                    reason: reason.to_owned(),
                },
            );
            r.earlier_attempts = earlier.remove(&index).unwrap_or_default();
            on_event(&RunEvent::TestFinished {
                result: Box::new(r.clone()),
            });
            results.insert(index, r);
        }

        for runner in &self.runners {
            if let Err(e) = runner.cleanup().await {
                tracing::info!(runner = %runner.name(), error = %e.chain(), "runner cleanup failed");
                on_event(&RunEvent::CleanupFailed {
                    runner: runner.name().to_owned(),
                    message: e.chain(),
                });
            }
        }

        let results: Vec<TestResult> = results.into_values().collect();
        #[cfg(feature = "store")]
        let storage = match &self.store {
            Some(store) => Some(
                self.finish_storage(Arc::clone(store), &results, &earlier_errors)
                    .await,
            ),
            None => None,
        };
        // Without the store, no run has a storage summary.
        #[cfg(not(feature = "store"))]
        let storage = {
            let _ = earlier_errors;
            None
        };
        let summary = Summary::of(&results);
        tracing::info!(
            tests = results.len(),
            interrupted = ?interrupted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "run finished"
        );
        #[allow(unused_mut)]
        let mut report = RunReport {
            schema_version: SCHEMA_VERSION,
            run_id,
            name: self.config.name.clone(),
            started_at,
            finished_at: Utc::now(),
            interrupted,
            summary,
            results,
            host: HostInfo::current(),
            storage,
            shard: self.config.shard.clone(),
        };
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            store_report(Arc::clone(store), &mut report).await;
        }
        Ok(report)
    }

    /// After a run: retention, then the store's statistics.
    #[cfg(feature = "store")]
    async fn finish_storage(
        &self,
        store: Arc<ArtifactStore>,
        results: &[TestResult],
        earlier_errors: &[String],
    ) -> StorageSummary {
        let mut summary = StorageSummary {
            root: store.root().to_owned(),
            errors: earlier_errors.to_vec(),
            ..StorageSummary::default()
        };
        for r in results {
            for a in &r.artifacts {
                if a.stored.is_some() {
                    summary.artifacts_stored += 1;
                    summary.bytes_stored += a.size;
                }
            }
            if let Some(e) = r.environment.get(STORE_ERROR_KEY) {
                summary.errors.push(format!("test `{}`: {e}", r.test_id));
            }
        }
        let policy = self.retention.clone();
        let (retention, stats) = tokio::task::spawn_blocking(move || {
            let retention = policy.map(|p| {
                store
                    .plan_retention(p.as_ref(), Utc::now())
                    .and_then(|plan| store.apply_retention(&plan))
            });
            (retention, store.stats())
        })
        .await
        .expect("the storage task does not panic");
        match retention {
            Some(Ok(r)) => summary.retention = Some(r),
            Some(Err(e)) => summary.errors.push(format!("retention failed: {e}")),
            None => {}
        }
        match stats {
            Ok(s) => summary.stats = Some(s),
            Err(e) => summary.errors.push(format!("store statistics failed: {e}")),
        }
        summary
    }
}

/// The environment key under which a result says its artifacts could not be stored.
pub const STORE_ERROR_KEY: &str = "store-error";

/// Ends an execution's watch: its usage into the result, the recording as `metrics.jsonl`.
#[cfg(feature = "monitor")]
async fn finish_watch(watch: Arc<ExecutionWatch>, ctx: &ExecutionContext, result: &mut TestResult) {
    let dir = ctx.artifact_dir();
    let finished = tokio::task::spawn_blocking(move || watch.finish())
        .await
        .expect("finishing a watch does not panic");
    match finished {
        Some(Ok(recording)) => {
            result.resources = Some(usage_of(&recording));
            if let Err(e) = add_metrics_file(&dir, &recording, result) {
                result.environment.insert(
                    "monitor-error".into(),
                    format!("cannot write {}: {e}", dir.join(METRICS_NAME).display()),
                );
            }
        }
        Some(Err(e)) => {
            result.environment.insert("monitor-error".into(), e);
        }
        None => {}
    }
}

/// Puts an execution's artifacts into the store; a failure is recorded in the result.
#[cfg(feature = "store")]
async fn store_result(
    store: Arc<ArtifactStore>,
    run_id: String,
    case: TestCase,
    position: usize,
    result: &mut TestResult,
) {
    let mut r = std::mem::replace(result, TestResult::new(&case, "", Outcome::Passed));
    let (back, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = store_execution(&store, &run_id, &case, position, &mut r);
        (r, outcome)
    })
    .await
    .expect("the storing task does not panic");
    *result = back;
    if let Err(e) = outcome {
        result.environment.insert(STORE_ERROR_KEY.into(), e);
    }
}

/// Puts the run's report into the store (`report.json`, kind `report`, test id `@run`), after
/// retention so that it holds the storage summary; a failure is recorded in the returned
/// report's storage errors.
#[cfg(feature = "store")]
async fn store_report(store: Arc<ArtifactStore>, report: &mut RunReport) {
    let json = match serde_json::to_vec_pretty(&*report) {
        Ok(json) => json,
        Err(e) => {
            let msg = format!("cannot serialise the run's report: {e}");
            report
                .storage
                .get_or_insert_with(Default::default)
                .errors
                .push(msg);
            return;
        }
    };
    let artifact = crate::compose::report_artifact(report);
    let stored = tokio::task::spawn_blocking(move || store.add_bytes(artifact, &json))
        .await
        .expect("the storing task does not panic");
    if let Err(e) = stored {
        let msg = format!("cannot store the run's report: {e}");
        report
            .storage
            .get_or_insert_with(Default::default)
            .errors
            .push(msg);
    }
}

fn runner_name(orchestrator: &Orchestrator, case: &TestCase) -> String {
    orchestrator
        .runner_for(case)
        .map_or_else(|| "none".to_owned(), |r| r.name().to_owned())
}

async fn execute_one(
    runner: &dyn TestRunner,
    case: &TestCase,
    ctx: &ExecutionContext,
) -> TestResult {
    let started = Utc::now();
    tracing::debug!(scratch = %ctx.scratch_dir().display(), "test started");
    if let Err(e) = tokio::fs::create_dir_all(ctx.scratch_dir()).await {
        let mut r = TestResult::new(
            case,
            runner.name(),
            Outcome::infra(format!(
                "failed to create scratch directory {}: {e}",
                ctx.scratch_dir().display()
            )),
        );
        r.started_at = started;
        return r;
    }
    match runner.execute(case, ctx).await {
        Ok(mut r) => {
            // One rule for every runner: a failed subtest fails its test.
            r.judge_subtests();
            r
        }
        Err(e) => {
            tracing::debug!(kind = ?e.kind(), error = %e.chain(), "the runner returned an error");
            let mut r = TestResult::new(case, runner.name(), Outcome::from_error(&e));
            r.started_at = started;
            r.finished_at = Utc::now();
            r
        }
    }
}
