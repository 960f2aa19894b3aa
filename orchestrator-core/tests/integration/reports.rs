use std::time::Duration;

use orchestrator_core::report::{ReportError, summary_table};
use orchestrator_core::{Expectation, Orchestrator, ProcessRunner, RunConfig, RunReport, TestCase};

/// The process umask, from `/proc/self/status` (setting it to read it would race other tests).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

async fn sample_report(dir: &std::path::Path) -> RunReport {
    let cases = vec![
        TestCase::script("pass", "echo ok"),
        TestCase::script("fail", "echo bad >&2; exit 2"),
        TestCase::script("xfail", "exit 1").with_expect(Expectation::Fail),
        TestCase::script("hang", "sleep 5").with_timeout(Duration::from_millis(200)),
    ];
    Orchestrator::new(RunConfig::new(dir).with_name(Some("sample".into())))
        .with_runner(ProcessRunner::default())
        .run(cases)
        .await
        .unwrap()
}

#[tokio::test]
async fn json_report_round_trips_and_refuses_future_versions() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report(dir.path()).await;
    let path = dir.path().join("out/report.json");
    report.write_json(&path).unwrap();
    let back = RunReport::read_json(&path).unwrap();
    assert_eq!(back, report);
    // Readable by others like any file the user writes (not a temp file's 0600).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o044, 0o044 & !umask(), "mode {mode:o}");

    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(value["schema_version"], 5);
    assert_eq!(value["summary"]["failed"], 2);
    assert_eq!(value["results"][3]["outcome"]["kind"], "timed-out");
    value["schema_version"] = 99.into();
    std::fs::write(&path, value.to_string()).unwrap();
    let err = RunReport::read_json(&path).unwrap_err();
    assert!(matches!(err, ReportError::Version { found: 99, .. }));
    assert!(err.to_string().contains("upgrade"));
}

#[tokio::test]
async fn junit_and_table_describe_every_test() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report(dir.path()).await;
    let xml = report.junit_xml().unwrap();
    assert!(
        xml.contains(r#"<testsuite name="process" tests="4" skipped="0" errors="0" failures="2""#),
        "{xml}"
    );
    assert!(xml.contains(r#"<testcase name="xfail" classname="process""#));
    assert!(xml.contains("timed out in test after 200ms"));
    let table = summary_table(&report, false);
    for needle in [
        "pass",
        "XFAIL",
        "FAIL",
        "timed out in test",
        "4 tests in",
        "1 passed, 1 failed as expected, 2 failed",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
}

#[tokio::test]
async fn subtests_become_their_own_junit_cases() {
    use orchestrator_core::{Subtest, SubtestStatus};
    let dir = tempfile::tempdir().unwrap();
    let mut report = sample_report(dir.path()).await;
    report.results[0].subtests = vec![
        Subtest {
            name: "suite.ok_case".into(),
            status: SubtestStatus::Passed,
            message: None,
            suite: Vec::new(),
            duration: None,
        },
        Subtest {
            name: "suite.bad_case".into(),
            status: SubtestStatus::Failed,
            message: Some("Expected 1 + 1 == 3".into()),
            suite: Vec::new(),
            duration: None,
        },
    ];
    let xml = report.junit_xml().unwrap();
    assert!(
        xml.contains(r#"<testcase name="pass/suite.ok_case" classname="process.pass""#),
        "{xml}"
    );
    assert!(xml.contains(r#"message="Expected 1 + 1 == 3""#), "{xml}");
    let path = dir.path().join("r.json");
    report.write_json(&path).unwrap();
    assert_eq!(
        RunReport::read_json(&path).unwrap().results[0]
            .subtests
            .len(),
        2
    );
}

/// A host-process test that exits 0 but prints KTAP with a `not ok` case is failed by the
/// orchestrator, in every report; `not ok` cases with `SKIP`, `TODO` or `XFAIL` fail nothing.
#[tokio::test]
async fn a_host_test_printing_a_failed_ktap_case_fails() {
    use orchestrator_core::{Outcome, SubtestStatus, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        TestCase::script(
            "ktap-fails",
            "printf 'KTAP version 1\\n1..3\\nok 1 alloc\\n# Expected 1 == 2\\nnot ok 2 free\\nnot ok 3 map # SKIP no MMU\\n'",
        ),
        TestCase::script(
            "ktap-directives",
            "printf 'TAP version 13\\n1..3\\nok 1 a\\nnot ok 2 b # todo later\\nnot ok 3 c # XFAIL\\n'",
        ),
    ];
    let report = Orchestrator::new(RunConfig::new(dir.path()))
        .with_runner(ProcessRunner::default())
        .run(cases)
        .await
        .unwrap();
    let failing = &report.results[0];
    assert_eq!(
        failing.outcome,
        Outcome::SubtestsFailed {
            failed: 1,
            total: 3
        }
    );
    assert_eq!(failing.verdict(), Verdict::Failed);
    let statuses: Vec<_> = failing.subtests.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [
            SubtestStatus::Passed,
            SubtestStatus::Failed,
            SubtestStatus::Skipped
        ]
    );
    let message = failing.message.as_deref().unwrap();
    assert!(
        message.contains("KTAP: 1 passed, 1 failed, 1 skipped, 0 todo")
            && message.contains("1 of 3 subtests failed: free"),
        "{message}"
    );
    let fine = &report.results[1];
    assert_eq!(fine.outcome, Outcome::Passed, "{:?}", fine.message);
    assert_eq!(fine.subtests.len(), 3);
    assert_eq!((report.summary.failed, report.summary.passed), (1, 1));
    assert!(!report.is_success());

    let xml = report.junit_xml().unwrap();
    assert!(xml.contains(r#"failures="2""#), "{xml}");
    assert!(
        xml.contains(r#"<failure message="Expected 1 == 2""#),
        "{xml}"
    );
    let table = summary_table(&report, false);
    assert!(table.contains("1 of 3 subtests failed"), "{table}");
}
