//! Results and reports recorded in the store's catalog, and the history read back from them.

use std::time::Duration;

use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query, TestOutcome};
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{
    Expectation, Orchestrator, ProcessRunner, REPORT_NAME, RESULT_NAME, RUN_RECORD_TEST_ID,
    RunConfig, RunReport, TestCase, TestResult,
};

fn cases() -> Vec<TestCase> {
    vec![
        TestCase::script(
            "busy",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo done > out.log",
        )
        .with_artifact("*.log")
        .with_timeout(Duration::from_secs(60)),
        TestCase::script("fails", "sleep 0.3; exit 3"),
        TestCase::script("xfail", "sleep 0.3; exit 1").with_expect(Expectation::Fail),
    ]
}

async fn run(
    scratch: &std::path::Path,
    store: &std::path::Path,
    cases: Vec<TestCase>,
) -> RunReport {
    Orchestrator::new(RunConfig::new(scratch).with_name(Some("history".into())))
        .with_runner(ProcessRunner::default())
        .with_store(ArtifactStore::open(store).unwrap())
        .with_monitor(Monitor::new(
            MonitorConfig::default().with_interval(Duration::from_millis(20)),
        ))
        .run(cases)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_and_the_report_are_records_with_their_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let report = run(&dir.path().join("scratch"), &store_dir, cases()).await;
    let store = ArtifactStore::open(&store_dir).unwrap();

    let results = store
        .query(&Query::new().run(&report.run_id).kind(ArtifactKind::Result))
        .unwrap();
    assert_eq!(results.len(), 3, "one result record per test: {results:#?}");
    for r in &report.results {
        let rec = results
            .iter()
            .find(|x| x.test_id == r.test_id.as_str())
            .unwrap_or_else(|| panic!("no result record of {}: {results:#?}", r.test_id));
        assert_eq!(rec.name, RESULT_NAME);
        let m = &rec.metadata;
        assert_eq!(m["runner"], r.runner);
        assert_eq!(m["verdict"], r.verdict().name());
        assert_eq!(m["attempt"], "1");
        assert_eq!(m["duration-ms"], r.duration().as_millis().to_string());
        let usage = r.resources.as_ref().unwrap();
        assert_eq!(
            m["cpu-ms"],
            ((usage.cpu_seconds * 1000.0).round() as u64).to_string()
        );
        assert_eq!(m["peak-rss-bytes"], usage.peak_rss_bytes.to_string());
        assert!(
            !m.contains_key("mode"),
            "the host runner has no modes: {m:?}"
        );
        // The blob is the result as JSON (without the links to the records stored with it).
        let stored: TestResult = serde_json::from_slice(&store.get(&rec.id).unwrap()).unwrap();
        assert_eq!(stored.test_id, r.test_id);
        assert_eq!(stored.outcome, r.outcome);
        assert_eq!(stored.resources, r.resources);
    }
    let outcome = |t: &str| results.iter().find(|x| x.test_id == t).unwrap().outcome;
    assert_eq!(outcome("busy"), Some(TestOutcome::Passed));
    assert_eq!(outcome("fails"), Some(TestOutcome::Failed));
    assert_eq!(outcome("xfail"), Some(TestOutcome::Failed));
    let verdict =
        |t: &str| results.iter().find(|x| x.test_id == t).unwrap().metadata["verdict"].clone();
    assert_eq!(verdict("fails"), "failed");
    assert_eq!(verdict("xfail"), "expected-failure");

    // The report: one record of the whole run, after retention and the statistics.
    let reports = store
        .query(&Query::new().run(&report.run_id).kind(ArtifactKind::Report))
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let rec = &reports[0];
    assert_eq!(rec.test_id, RUN_RECORD_TEST_ID);
    assert_eq!(rec.name, REPORT_NAME);
    assert_eq!(rec.metadata["name"], "history");
    assert_eq!(rec.metadata["status"], "failed");
    assert_eq!(rec.metadata["started-at"], report.started_at.to_rfc3339());
    assert_eq!(rec.metadata["finished-at"], report.finished_at.to_rfc3339());
    let stored: RunReport = serde_json::from_slice(&store.get(&rec.id).unwrap()).unwrap();
    assert_eq!(stored, report);
    assert!(stored.storage.as_ref().unwrap().stats.is_some());
}
