use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator_core::{
    CancellationToken, ExecutionContext, Expectation, Interruption, Orchestrator,
    OrchestratorError, Outcome, ProcessRunner, RunConfig, RunEvent, RunnerError, TestCase,
    TestResult, TestRunner, Verdict,
};

fn config(dir: &tempfile::TempDir) -> RunConfig {
    RunConfig::new(dir.path())
}

#[tokio::test]
async fn eight_one_second_tests_with_parallelism_four_take_about_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<TestCase> = (0..8)
        .map(|i| TestCase::script(&format!("sleep-{i}"), "sleep 1"))
        .collect();
    let orch =
        Orchestrator::new(config(&dir).with_parallelism(4)).with_runner(ProcessRunner::default());
    let started = Instant::now();
    let report = orch.run(cases).await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "8 x 1 s tests, parallelism 4: {:.3} s",
        elapsed.as_secs_f64()
    );
    assert_eq!(report.summary.passed, 8);
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_secs(2),
        "parallelism exceeded: {elapsed:?}"
    );
}

#[tokio::test]
async fn expected_failures_count_as_passed_and_unexpected_passes_fail() {
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        TestCase::script("xfail", "exit 3").with_expect(Expectation::Fail),
        TestCase::script("xfail-timeout", "sleep 10")
            .with_expect(Expectation::Fail)
            .with_timeout(Duration::from_millis(200)),
    ];
    let orch = Orchestrator::new(config(&dir)).with_runner(ProcessRunner::default());
    let report = orch.run(cases).await.unwrap();
    assert!(
        report
            .results
            .iter()
            .all(|r| r.verdict() == Verdict::ExpectedFailure)
    );
    assert_eq!(report.summary.expected_failures, 2);
    assert!(report.is_success());

    let xpass = vec![TestCase::script("xpass", "true").with_expect(Expectation::Fail)];
    let report = orch.run(xpass).await.unwrap();
    assert_eq!(report.results[0].verdict(), Verdict::UnexpectedPass);
    assert!(!report.is_success());
}

/// A runner that fails with an infrastructure error a set number of times per test, then
/// reports a fixed outcome; it counts attempts.
#[derive(Debug, Default)]
struct Flaky {
    infra_failures: HashMap<String, u32>,
    outcomes: HashMap<String, Outcome>,
    attempts: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl TestRunner for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let id = case.id.to_string();
        let n = {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        assert_eq!(n, ctx.attempt(), "attempt numbers follow retries");
        if id == "misconfigured" {
            return Err(RunnerError::config("no kernel at /nowhere: set `kernel`"));
        }
        if n <= self.infra_failures.get(&id).copied().unwrap_or(0) {
            return Err(RunnerError::new(format!("emulator vanished (attempt {n})")));
        }
        let outcome = self.outcomes.get(&id).cloned().unwrap_or(Outcome::Passed);
        Ok(TestResult::new(case, "flaky", outcome))
    }
}

#[tokio::test]
async fn only_infrastructure_errors_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let failed = Outcome::Failed {
        exit_code: Some(1),
        signal: None,
    };
    let timed_out = Outcome::TimedOut {
        phase: orchestrator_core::Phase::Test,
        limit: Duration::from_secs(1),
    };
    let runner = std::sync::Arc::new(Flaky {
        infra_failures: HashMap::from([("infra-twice".into(), 2), ("infra-always".into(), 99)]),
        outcomes: HashMap::from([
            ("real-failure".into(), failed.clone()),
            ("timeout".into(), timed_out.clone()),
        ]),
        ..Flaky::default()
    });
    let cases = vec![
        TestCase::script("infra-twice", "true"),
        TestCase::script("infra-always", "true"),
        TestCase::script("real-failure", "true"),
        TestCase::script("timeout", "true"),
        TestCase::script("clean", "true"),
        TestCase::script("misconfigured", "true"),
    ];
    let orch =
        Orchestrator::new(config(&dir).with_infra_retries(2)).with_shared_runner(runner.clone());
    let mut retry_events = 0;
    let report = orch
        .run_with(cases, CancellationToken::new(), |e| {
            if matches!(e, RunEvent::TestRetrying { .. }) {
                retry_events += 1;
            }
        })
        .await
        .unwrap();
    let attempts = runner.attempts.lock().unwrap().clone();
    assert_eq!(attempts["infra-twice"], 3);
    assert_eq!(
        attempts["infra-always"], 3,
        "1 try + 2 retries, then give up"
    );
    assert_eq!(attempts["real-failure"], 1);
    assert_eq!(attempts["timeout"], 1);
    assert_eq!(attempts["clean"], 1);
    assert_eq!(
        attempts["misconfigured"], 1,
        "a configuration error fails the same way every time"
    );
    assert_eq!(retry_events, 4);

    let by_id = |id: &str| report.result(id).unwrap();
    assert_eq!(by_id("infra-twice").verdict(), Verdict::Passed);
    assert_eq!(by_id("infra-twice").attempt, 3);
    assert_eq!(by_id("infra-twice").earlier_attempts.len(), 2);
    assert_eq!(by_id("infra-always").verdict(), Verdict::Error);
    assert!(
        matches!(&by_id("infra-always").outcome, Outcome::InfraError { message, .. } if message.contains("emulator vanished (attempt 3)"))
    );
    assert_eq!(
        by_id("misconfigured").outcome,
        Outcome::InfraError {
            message: "no kernel at /nowhere: set `kernel`".into(),
            cause: orchestrator_core::ErrorKind::Configuration,
        }
    );
    assert_eq!(by_id("real-failure").outcome, failed);
    assert_eq!(by_id("timeout").outcome, timed_out);
    assert_eq!(report.summary.retries, 4);
}

#[tokio::test]
async fn the_run_deadline_stops_running_tests_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<TestCase> = (0..3)
        .map(|i| TestCase::script(&format!("slow-{i}"), "sleep 10"))
        .collect();
    let orch = Orchestrator::new(
        config(&dir)
            .with_parallelism(1)
            .with_run_timeout(Some(Duration::from_millis(500))),
    )
    .with_runner(ProcessRunner::default());
    let started = Instant::now();
    let report = orch.run(cases).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.interrupted, Some(Interruption::DeadlineReached));
    assert!(matches!(
        report.results[0].outcome,
        Outcome::TimedOut { .. }
    ));
    assert!(
        report.results[0]
            .message
            .as_deref()
            .unwrap()
            .contains("run's deadline")
    );
    for r in &report.results[1..] {
        assert!(matches!(&r.outcome, Outcome::Skipped { reason } if reason.contains("deadline")));
    }
    assert!(!report.is_success());
}

#[tokio::test]
async fn cancellation_stops_running_tests_skips_the_rest_and_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<TestCase> = (0..4)
        .map(|i| TestCase::script(&format!("slow-{i}"), "sleep 10"))
        .collect();
    let orch =
        Orchestrator::new(config(&dir).with_parallelism(2)).with_runner(ProcessRunner::default());
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let report = orch.run_with(cases, cancel, |_| {}).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.interrupted, Some(Interruption::Cancelled));
    let verdicts: Vec<Verdict> = report.results.iter().map(|r| r.verdict()).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Cancelled,
            Verdict::Cancelled,
            Verdict::Skipped,
            Verdict::Skipped
        ]
    );
    assert_eq!(report.summary.cancelled, 2);
}

#[tokio::test]
async fn results_stream_as_tests_finish_and_the_report_keeps_plan_order() {
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        TestCase::script("slow", "sleep 0.6"),
        TestCase::script("fast", "true"),
    ];
    let orch =
        Orchestrator::new(config(&dir).with_parallelism(2)).with_runner(ProcessRunner::default());
    let mut finished = Vec::new();
    let report = orch
        .run_with(cases, CancellationToken::new(), |e| {
            if let RunEvent::TestFinished { result } = e {
                finished.push(result.test_id.to_string());
            }
        })
        .await
        .unwrap();
    assert_eq!(finished, ["fast", "slow"]);
    let order: Vec<&str> = report.results.iter().map(|r| r.test_id.as_str()).collect();
    assert_eq!(order, ["slow", "fast"]);
}

#[tokio::test]
async fn invalid_runs_are_rejected_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let cases = vec![
        TestCase::script("a", &format!("touch {}", marker.display())),
        TestCase::script("a", "true"),
        TestCase::script("b", "true").with_runner("qemu"),
        TestCase::script("c", "true").with_timeout(Duration::ZERO),
    ];
    let orch = Orchestrator::new(config(&dir)).with_runner(ProcessRunner::default());
    let err = orch.run(cases).await.unwrap_err();
    let OrchestratorError::Invalid { problems } = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("`a` is used more than once"));
    assert!(problems[1].contains("runner `qemu`, which is not configured (available: process)"));
    assert!(problems[2].contains("zero timeout"));
    assert!(!marker.exists());
}

/// Records the processes runners report.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(String, u32, String)>>);

impl orchestrator_core::ProcessObserver for Recorder {
    fn process_started(&self, test: &TestCase, process: &orchestrator_core::HostProcess) {
        self.0
            .lock()
            .unwrap()
            .push((test.id.to_string(), process.pid, process.label.clone()));
    }
}

#[tokio::test]
async fn observers_learn_every_test_process_and_boxed_runners_work() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = std::sync::Arc::new(Recorder::default());
    let boxed: Box<dyn TestRunner> = Box::new(ProcessRunner::default());
    let orch = Orchestrator::new(config(&dir))
        .with_runner(boxed)
        .with_observer(recorder.clone());
    let cases = vec![
        TestCase::script("one", "echo $$"),
        TestCase::script("two", "echo $$"),
    ];
    let report = orch.run(cases).await.unwrap();
    let mut seen = recorder.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen.len(), 2);
    for ((id, pid, label), result) in seen.iter().zip(&report.results) {
        assert_eq!(id, result.test_id.as_str());
        assert_eq!(label, "test");
        assert_eq!(
            result.stdout.text.trim(),
            pid.to_string(),
            "the reported pid is the test's"
        );
    }
}

/// A runner that records the batches it is shown and may refuse to plan.
#[derive(Debug)]
struct Planner {
    name: &'static str,
    refuse: bool,
    batches: Mutex<Vec<Vec<String>>>,
    executed: Mutex<Vec<String>>,
}

impl Planner {
    fn new(name: &'static str, refuse: bool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Planner {
            name,
            refuse,
            batches: Mutex::new(Vec::new()),
            executed: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl TestRunner for Planner {
    fn name(&self) -> &str {
        self.name
    }
    async fn plan(&self, batch: &[&TestCase]) -> Result<(), RunnerError> {
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|c| c.id.to_string()).collect());
        if self.refuse {
            return Err(RunnerError::config(
                "no guest image for riscv64: provision it",
            ));
        }
        Ok(())
    }
    async fn execute(
        &self,
        case: &TestCase,
        _ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        // Every execution comes after the plan of the whole batch.
        assert_eq!(self.batches.lock().unwrap().len(), 1);
        self.executed.lock().unwrap().push(case.id.to_string());
        Ok(TestResult::new(case, self.name, Outcome::Passed))
    }
}

#[tokio::test]
async fn each_runner_sees_its_whole_batch_once_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let first = Planner::new("first", false);
    let second = Planner::new("second", false);
    let idle = Planner::new("idle", false);
    let cases = vec![
        TestCase::script("a", "true"),
        TestCase::script("b", "true").with_runner("second"),
        TestCase::script("c", "true"),
    ];
    let orch = Orchestrator::new(config(&dir).with_parallelism(2))
        .with_shared_runner(first.clone())
        .with_shared_runner(second.clone())
        .with_shared_runner(idle.clone());
    let report = orch.run(cases).await.unwrap();
    assert_eq!(report.summary.passed, 3);
    assert_eq!(*first.batches.lock().unwrap(), vec![vec!["a", "c"]]);
    assert_eq!(*second.batches.lock().unwrap(), vec![vec!["b"]]);
    assert!(
        idle.batches.lock().unwrap().is_empty(),
        "a runner with no tests is not asked"
    );

    // A runner that cannot plan stops the run before anything executes.
    let refusing = Planner::new("refusing", true);
    let orch = Orchestrator::new(config(&dir)).with_shared_runner(refusing.clone());
    let err = orch
        .run(vec![TestCase::script("x", "true")])
        .await
        .unwrap_err();
    assert!(matches!(err, OrchestratorError::Plan { .. }), "{err}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("refusing runner could not plan") && chain.contains("provision it"),
        "{chain}"
    );
    assert!(refusing.executed.lock().unwrap().is_empty());
}
