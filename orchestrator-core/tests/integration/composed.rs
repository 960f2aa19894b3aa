//! The composed orchestrator with the host-process runner: every execution monitored, its
//! artifacts and metrics in the store, retention after the run.

use std::time::Duration;

use orchestrator_core::artifact_store::retention::KeepLastRuns;
use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query, TestOutcome};
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{
    Expectation, METRICS_NAME, Orchestrator, ProcessRunner, RunConfig, RunReport, TestCase,
};

fn cases() -> Vec<TestCase> {
    vec![
        TestCase::script(
            "busy",
            // Half a second of CPU and a file to collect.
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo done > out.log",
        )
        .with_artifact("*.log")
        .with_timeout(Duration::from_secs(60)),
        // Lives long enough to be sampled (the monitor sees a process from its first sample).
        TestCase::script("fails", "sleep 0.5; echo broken > why.txt; exit 3")
            .with_artifact("why.txt")
            .with_expect(Expectation::Fail),
    ]
}

async fn campaign(scratch: &std::path::Path, store: &std::path::Path) -> RunReport {
    crate::monitored(RunConfig::new(scratch), store)
        .with_retention(KeepLastRuns(1))
        .run(cases())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_link_stored_artifacts_and_metrics_and_retention_keeps_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let first = campaign(&dir.path().join("scratch"), &store_dir).await;
    let store = ArtifactStore::open(&store_dir).unwrap();

    for r in &first.results {
        // Monitored: a usage summary with a series, and the recording as an artifact.
        let usage = r.resources.as_ref().unwrap_or_else(|| panic!("{r:#?}"));
        assert!(usage.peak_rss_bytes > 0, "{usage:#?}");
        assert!(!usage.series.is_empty(), "{usage:#?}");
        let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert!(names.contains(&METRICS_NAME), "{names:?}");
        // Every artifact links to a record whose content is the file's.
        for a in &r.artifacts {
            let stored = a.stored.as_ref().unwrap_or_else(|| panic!("{a:#?}"));
            let rec = store.record_of(&stored.id).unwrap();
            assert_eq!(rec.digest.to_hex(), stored.digest);
            assert_eq!(rec.test_id, r.test_id.as_str());
            assert_eq!(rec.run_id, first.run_id);
            assert_eq!(
                store.get(&stored.id).unwrap(),
                std::fs::read(&a.path).unwrap()
            );
        }
    }
    let busy = &first.results[0];
    assert!(
        busy.resources.as_ref().unwrap().cpu_seconds > 0.05,
        "{busy:#?}"
    );

    // The catalog answers by test, kind and outcome.
    let failed = store
        .query(&Query::new().test("fails").outcome(TestOutcome::Failed))
        .unwrap();
    assert_eq!(
        failed.len(),
        3,
        "why.txt, the metrics and the result: {failed:#?}"
    );
    let metrics = store
        .query(&Query::new().run(&first.run_id).kind(ArtifactKind::Metrics))
        .unwrap();
    assert_eq!(metrics.len(), 2);
    let recording = String::from_utf8(store.get(&metrics[0].id).unwrap()).unwrap();
    orchestrator_core::perf_monitor::Recording::from_json_lines(&recording).unwrap();

    let storage = first.storage.as_ref().unwrap();
    assert_eq!(storage.artifacts_stored, 4, "{storage:#?}");
    assert!(storage.errors.is_empty(), "{storage:#?}");
    let table = orchestrator_core::report::summary_table(&first, false);
    assert!(table.contains("peak memory"), "{table}");
    assert!(table.contains("4 artifacts stored"), "{table}");

    // A second run: keep-last-1 evicts the first run's records and collects its blobs.
    let second = campaign(&dir.path().join("scratch"), &store_dir).await;
    let retention = second.storage.as_ref().unwrap().retention.as_ref().unwrap();
    assert!(retention.records_evicted >= 4, "{retention:#?}");
    for r in &first.results {
        for a in &r.artifacts {
            let id = &a.stored.as_ref().unwrap().id;
            let rec = store.record_of(id).unwrap();
            assert!(
                rec.evicted.is_some(),
                "first run's {} kept: {rec:#?}",
                a.name
            );
        }
    }
    for r in &second.results {
        for a in &r.artifacts {
            let id = &a.stored.as_ref().unwrap().id;
            store
                .get(id)
                .unwrap_or_else(|e| panic!("second run's {} lost: {e}", a.name));
        }
    }
    // The metrics recordings differ between runs, so the first run's are gone from disk.
    let old = &first.results[0]
        .artifacts
        .iter()
        .find(|a| a.name == METRICS_NAME)
        .unwrap()
        .stored
        .as_ref()
        .unwrap()
        .digest;
    let digest: orchestrator_core::artifact_store::Digest = old.parse().unwrap();
    assert!(!store.has_blob(&digest).unwrap());
}

#[tokio::test]
async fn without_store_or_monitor_results_carry_neither() {
    let dir = tempfile::tempdir().unwrap();
    let report = Orchestrator::new(RunConfig::new(dir.path()))
        .with_runner(ProcessRunner::default())
        .run(cases())
        .await
        .unwrap();
    assert!(report.storage.is_none());
    for r in &report.results {
        assert!(r.resources.is_none());
        assert!(r.artifacts.iter().all(|a| a.stored.is_none()));
    }
}

#[test]
fn retention_without_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = Orchestrator::new(RunConfig::new(dir.path()))
        .with_runner(ProcessRunner::default())
        .with_retention(KeepLastRuns(1));
    let e = o.validate(&cases()).unwrap_err().to_string();
    assert!(e.contains("with_store"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_result_carries_every_figure_and_its_processes_by_pid() {
    // The test's shell prints its pid, burns CPU in a child shell (a fixed amount of work, so it
    // leads however loaded the host), then holds 32 MiB in awk (grown by doubling: little CPU)
    // for as long as a `sleep` it runs lasts (that child shares awk's pages until it execs).
    let burn = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    let script = format!(
        "echo \"pid $$\"; sh -c '{burn}'; \
         awk 'BEGIN {{ s = \"xxxxxxxxxxxxxxxx\"; for (i = 0; i < 21; i++) s = s s; \
         system(\"sleep 0.6\"); print length(s) }}'"
    );
    let dir = tempfile::tempdir().unwrap();
    let report = Orchestrator::new(RunConfig::new(dir.path().join("scratch")))
        .with_runner(ProcessRunner::default())
        .with_monitor(Monitor::new(
            MonitorConfig::default().with_interval(Duration::from_millis(20)),
        ))
        .run(vec![
            TestCase::script("figures", &script).with_timeout(Duration::from_secs(60)),
        ])
        .await
        .unwrap();
    let r = &report.results[0];
    assert!(r.verdict().is_success(), "{r:#?}");
    let pid: u32 = r
        .stdout
        .text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", r.stdout.text));
    let u = r.resources.as_ref().unwrap_or_else(|| panic!("{r:#?}"));

    // Every figure the monitor measures.
    let (user, system) = (u.cpu_user_seconds.unwrap(), u.cpu_system_seconds.unwrap());
    assert!((user + system - u.cpu_seconds).abs() < 1e-6, "{u:#?}");
    let p = u.processes.as_ref().unwrap();
    assert!(p.seen >= 3, "sh, the burner, awk: {u:#?}");
    assert!(p.peak_threads >= 1 && p.minor_faults > 0, "{u:#?}");
    assert!(p.peak_open_files.unwrap() >= 3, "{u:#?}");
    let net = u.network.as_ref().unwrap_or_else(|| panic!("{u:#?}"));
    assert_eq!(net.shared_with_orchestrator, Some(true), "{net:#?}");
    assert!(net.namespace.as_deref().unwrap().starts_with("net:["));
    assert_eq!(
        net.label(),
        "network (host namespace, not the test's alone)"
    );
    let host = u.host.as_ref().unwrap();
    assert!(host.cpus >= 1 && host.load1_peak.is_some(), "{host:#?}");
    assert!(host.validity_score.is_some());

    // The breakdown: the test's own shell by its pid, the burner first by CPU, awk by memory.
    let shell = u
        .top_cpu
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("the test's shell {pid} is not listed: {:#?}", u.top_cpu));
    assert_eq!(shell.name, "sh", "{shell:#?}");
    assert!(shell.children_cpu_seconds > 0.1, "{shell:#?}");
    let burner = &u.top_cpu[0];
    assert_eq!(burner.command, format!("sh -c {burn}"), "{:#?}", u.top_cpu);
    assert_eq!((burner.name.as_str(), burner.ppid), ("sh", pid));
    assert!(burner.exited && burner.cpu_seconds > 0.1, "{burner:#?}");
    let awk = &u.top_memory[0];
    assert_eq!(
        (awk.name.as_str(), awk.ppid),
        ("awk", pid),
        "{:#?}",
        u.top_memory
    );
    assert!(awk.peak_rss_bytes >= 32 << 20, "{awk:#?}");
    assert!(u.top_cpu.len() <= 5 && u.top_memory.len() <= 5);

    // The JSON report carries them too.
    let path = dir.path().join("report.json");
    report.write_json(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let usage = &json["results"][0]["resources"];
    assert_eq!(usage["top_memory"][0]["name"], "awk");
    assert!(
        usage["top_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid)
    );
    assert_eq!(usage["network"]["shared_with_orchestrator"], true);
    assert!(usage["processes"]["peak_open_files"].as_u64().unwrap() >= 3);
}
