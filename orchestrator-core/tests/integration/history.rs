//! Results and reports recorded in the store's catalog, and the history read back from them.

use std::time::Duration;

use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query, TestOutcome};
use orchestrator_core::{
    Expectation, REPORT_NAME, RESULT_NAME, RUN_RECORD_TEST_ID, RunConfig, RunReport, TestCase,
    TestResult,
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
    crate::monitored(
        RunConfig::new(scratch).with_name(Some("history".into())),
        store,
    )
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
    for (position, r) in report.results.iter().enumerate() {
        let rec = results
            .iter()
            .find(|x| x.test_id == r.test_id.as_str())
            .unwrap_or_else(|| panic!("no result record of {}: {results:#?}", r.test_id));
        assert_eq!(rec.name, RESULT_NAME);
        let m = &rec.metadata;
        assert_eq!(m["runner"], r.runner);
        assert_eq!(m["verdict"], r.verdict().name());
        assert_eq!(m["attempt"], "1");
        assert_eq!(m["position"], position.to_string());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_runs_loads_them_and_keeps_figures_of_evicted_results() {
    use orchestrator_core::history::{self, HistoryError};
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let first = run(&dir.path().join("scratch"), &store_dir, cases()).await;
    let second = run(&dir.path().join("scratch"), &store_dir, cases()).await;
    let store = ArtifactStore::open(&store_dir).unwrap();

    let runs = history::runs(&store).unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [second.run_id.as_str(), first.run_id.as_str()],
        "newest first"
    );
    let r = &runs[0];
    assert_eq!(r.name.as_deref(), Some("history"));
    assert_eq!(r.status.as_deref(), Some("failed"));
    assert_eq!(r.tests, 3);
    assert_eq!(r.counts["passed"], 1);
    assert_eq!(r.counts["failed"], 1);
    assert_eq!(r.counts["expected-failure"], 1);
    assert_eq!(r.started_at, second.started_at);
    assert_eq!(r.finished_at, Some(second.finished_at));

    assert_eq!(history::load_run(&store, &first.run_id).unwrap(), first);

    let h = history::test_history(&store, "busy", 10).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].run_id, second.run_id);
    assert_eq!(h[1].run_id, first.run_id);
    let busy = &first.results[0];
    assert_eq!(h[1].verdict, Some(orchestrator_core::Verdict::Passed));
    assert_eq!(h[1].outcome.as_deref(), Some("passed"));
    assert_eq!(
        h[1].duration,
        Some(Duration::from_millis(busy.duration().as_millis() as u64))
    );
    assert_eq!(
        h[1].peak_rss_bytes,
        Some(busy.resources.as_ref().unwrap().peak_rss_bytes)
    );
    assert!(h[1].cpu_seconds.unwrap() > 0.0);
    assert_eq!(history::test_history(&store, "busy", 1).unwrap().len(), 1);
    let text = history::render_history("busy", &h);
    assert!(
        text.contains(&first.run_id) && text.contains("PASS"),
        "{text}"
    );

    // Unknown ids name themselves and what is close.
    let e = history::test_history(&store, "bussy", 10).unwrap_err();
    assert!(matches!(e, HistoryError::UnknownTest { .. }), "{e}");
    assert!(
        e.to_string().contains("`bussy`") && e.to_string().contains("`busy`"),
        "{e}"
    );
    let e = history::load_run(&store, &first.run_id[..8])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&first.run_id), "{e}");
    let e = history::load_run(&store, "nothing-like-it")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nothing-like-it`") && e.contains("runs"), "{e}");

    // Evict the second run's report and the stored results of its `busy`: the run is put
    // together from its result records, `busy` from its record's metadata.
    let evict: Vec<(String, String)> = store
        .query(&Query::new().run(&second.run_id))
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.kind == ArtifactKind::Report
                || (r.kind == ArtifactKind::Result && r.test_id == "busy")
        })
        .map(|r| (r.id, "test eviction".to_owned()))
        .collect();
    assert_eq!(evict.len(), 2);
    store.evict(&evict).unwrap();
    let h = history::test_history(&store, "busy", 0).unwrap();
    assert!(h[0].evicted && h[0].peak_rss_bytes.is_some(), "{h:#?}");
    let loaded = history::load_run(&store, &second.run_id).unwrap();
    let ids: Vec<&str> = loaded.results.iter().map(|r| r.test_id.as_str()).collect();
    assert_eq!(ids, ["busy", "fails", "xfail"]);
    assert_eq!(loaded.summary, second.summary);
    let busy = &loaded.results[0];
    assert_eq!(busy.verdict(), orchestrator_core::Verdict::Passed);
    assert_eq!(
        busy.resources.as_ref().unwrap().peak_rss_bytes,
        second.results[0].resources.as_ref().unwrap().peak_rss_bytes
    );
    // The results read from their blobs link their artifacts to the records stored with them.
    let fails = &loaded.results[1];
    assert_eq!(fails.outcome, second.results[1].outcome);
    for (a, b) in fails.artifacts.iter().zip(&second.results[1].artifacts) {
        assert_eq!(a.stored, b.stored);
    }
    let runs = history::runs(&store).unwrap();
    assert_eq!(runs.len(), 2);
    let r = runs.iter().find(|r| r.run_id == second.run_id).unwrap();
    assert!(
        r.has_report,
        "the evicted report record still lists the run"
    );
}

/// A test that holds `mib` MiB and burns until its process has used `cpu_s` seconds of CPU,
/// user and system (measured by the process itself, so the amount does not depend on the
/// host's speed or load; the allocation's page faults count towards it), then idles 0.15 s so
/// that the monitor's last sample sees it all.
fn work(mib: u32, cpu_s: f64) -> Vec<TestCase> {
    vec![
        TestCase::script(
            "work",
            &format!(
                "perl -e 'sub cpu {{ my @t = times; $t[0] + $t[1] }} \
                 $m = \"x\" x ($ARGV[0] << 20); \
                 while (cpu() < $ARGV[1]) {{ my $x = 0; $x += $_ for 1 .. 20000 }} \
                 select(undef, undef, undef, 0.15); exit(length($m) == 0)' {mib} {cpu_s}"
            ),
        )
        .with_timeout(Duration::from_secs(300)),
    ]
}

/// The "done when": a test made to burn twice the CPU time and memory, 3 runs per
/// side, is a regression; 3 + 3 runs of the same work are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_flags_twice_the_cpu_and_memory_and_not_the_same_work() {
    use orchestrator_core::history;
    use orchestrator_core::perf_monitor::NoiseBand;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let scratch = dir.path().join("scratch");
    let mut ids = [Vec::new(), Vec::new(), Vec::new()];
    for (side, (mib, cpu)) in [(40, 0.2), (80, 0.4), (40, 0.2)].into_iter().enumerate() {
        for _ in 0..3 {
            let r = run(&scratch, &store_dir, work(mib, cpu)).await;
            assert!(r.is_success(), "{r:#?}");
            ids[side].push(r.run_id);
        }
    }
    let store = ArtifactStore::open(&store_dir).unwrap();
    let load = |ids: &[String]| -> Vec<RunReport> {
        ids.iter()
            .map(|id| history::load_run(&store, id).unwrap())
            .collect()
    };
    let (base, double, again) = (load(&ids[0]), load(&ids[1]), load(&ids[2]));
    // Wall time on a shared 2-core host moves by more than the default 0.1 s floor whatever
    // the test does; CPU time and memory are what this test judges.
    let band = NoiseBand {
        duration_s: 30.0,
        ..NoiseBand::default()
    };

    let c = history::compare(&base, &double, &band);
    let text = history::render_comparison(&c);
    assert!(c.is_regression(), "{text}");
    let regressed: Vec<&str> = c
        .resource_regressions()
        .map(|(_, m)| m.metric.as_str())
        .collect();
    assert_eq!(regressed, ["cpu_total_s", "peak_rss_bytes"], "{text}");
    assert!(c.outcome_changes.is_empty(), "{text}");
    assert!(
        text.contains(
            "Noise band: a change counts beyond 10% and at least 0.05 s CPU, 4.0 MiB memory"
        ),
        "{text}"
    );
    assert!(
        text.contains("work cpu: ") && text.contains("Result: REGRESSION"),
        "{text}"
    );
    eprintln!("{text}");

    let c = history::compare(&base, &again, &band);
    let text = history::render_comparison(&c);
    assert!(!c.is_regression(), "{text}");
    assert!(text.contains("Result: no regression"), "{text}");
    eprintln!("{text}");
}

/// A report and a store written by the previous version of the program (commit 0d87bc4, before
/// results were recorded; see tests/fixtures/previous-version/README.md): the store opens (its
/// catalog upgraded), its run is named as one to import, and once its report is imported,
/// history, compare and load_run work on it; importing again adds nothing.
#[test]
fn a_report_and_store_of_the_previous_version_open_in_history_once_imported() {
    use orchestrator_core::history::{self, HistoryError};
    use orchestrator_core::perf_monitor::NoiseBand;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-version");
    let old = RunReport::read_json(&fixture.join("report.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture.join("store"))
        .arg(&store_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let store = ArtifactStore::open(&store_dir).unwrap();

    // Before the import: the run's artifacts are there, its results are not.
    assert!(history::runs(&store).unwrap().is_empty());
    let e = history::load_run(&store, &old.run_id).unwrap_err();
    assert!(matches!(e, HistoryError::NoResults { .. }), "{e}");
    assert!(e.to_string().contains("import_report"), "{e}");
    let console = store
        .query(&Query::new().run(&old.run_id).test("passes"))
        .unwrap();
    assert!(!console.is_empty());

    let imported = history::import_report(&store, &old).unwrap();
    assert_eq!(imported.results_added, 3, "{imported:?}");
    assert!(imported.report_added, "{imported:?}");
    let again = history::import_report(&store, &old).unwrap();
    assert_eq!(again.results_added, 0, "{again:?}");
    assert!(!again.report_added, "{again:?}");
    assert_eq!(
        store
            .query(&Query::new().run(&old.run_id).kind(ArtifactKind::Result))
            .unwrap()
            .len(),
        3
    );

    let runs = history::runs(&store).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].run_id, old.run_id);
    assert_eq!(runs[0].name.as_deref(), Some("previous-version"));
    assert_eq!(runs[0].started_at, old.started_at);
    assert_eq!(runs[0].status.as_deref(), Some("failed"));
    assert_eq!(history::load_run(&store, &old.run_id).unwrap(), old);

    let ktap = history::test_history(&store, "ktap", 10).unwrap();
    assert_eq!(ktap.len(), 1);
    assert_eq!(ktap[0].run_id, old.run_id);
    assert_eq!(ktap[0].outcome.as_deref(), Some("subtests-failed"));
    assert_eq!(ktap[0].verdict, Some(orchestrator_core::Verdict::Failed));
    let passes = history::test_history(&store, "passes", 10).unwrap();
    assert_eq!(passes[0].verdict, Some(orchestrator_core::Verdict::Passed));
    assert_eq!(
        passes[0].peak_rss_bytes,
        Some(old.results[0].resources.as_ref().unwrap().peak_rss_bytes)
    );
    assert_eq!(passes[0].at, old.results[0].started_at);

    // A run of today compared with the old one: the same verdicts, and the old figures read.
    let c = history::compare(
        std::slice::from_ref(&old),
        std::slice::from_ref(&old),
        &NoiseBand::default(),
    );
    assert!(!c.is_regression(), "{c}");
    assert_eq!(
        c.resources.len(),
        1,
        "only `passes` passed on both sides: {c}"
    );
}
