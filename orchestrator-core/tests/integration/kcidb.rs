//! The KCIDB export of a real run: host tests, nested KTAP suites and every outcome kind,
//! checked here and validated by `kcidb-io` (Python) under `cargo xtask test`.

use std::collections::BTreeSet;
use std::time::Duration;

use orchestrator_core::report::kcidb::{KCIDB_MAJOR, KCIDB_MINOR, LOG_EXCERPT_MAX};
use orchestrator_core::report::{KcidbOptions, ReportError};
use orchestrator_core::{
    CrashKind, ErrorKind, Expectation, Orchestrator, Outcome, Phase, ProcessRunner, RunConfig,
    RunReport, RunnerError, TestCase, TestResult,
};

/// Nested KTAP like KUnit's: a suite with a parameterised case, and a failed case.
const NESTED_KTAP: &str = "KTAP version 1
1..2
    KTAP version 1
    # Subtest: mem
    1..2
    ok 1 alloc
        KTAP version 1
        # Subtest: params
        ok 1 value 1.5
        not ok 2 value 2 # SKIP no such value
    ok 2 params
ok 1 mem
    KTAP version 1
    # Subtest: io
    1..2
    ok 1 read
    not ok 2 write # TODO not yet
ok 2 io
";

async fn mixed_report(dir: &std::path::Path) -> RunReport {
    let script = format!("cat <<'EOF'\n{NESTED_KTAP}EOF");
    let cases = vec![
        TestCase::script("pass", "echo ok"),
        TestCase::script("fail:exit+code", "echo bad >&2; exit 2"),
        TestCase::script("xfail", "exit 1").with_expect(Expectation::Fail),
        TestCase::script("hang", "sleep 5").with_timeout(Duration::from_millis(200)),
        TestCase::script("kunit.nested", &script),
        TestCase::script("huge", "head -c 300000 /dev/zero | tr '\\0' x; exit 1"),
    ];
    let mut report = Orchestrator::new(RunConfig::new(dir).with_name(Some("kcidb".into())))
        .with_runner(ProcessRunner::default())
        .run(cases)
        .await
        .unwrap();
    // The outcomes host processes cannot have, as the QEMU runner and the orchestrator record
    // them: on a stock kernel and on a kernel of the user's.
    let base = report.results[0].clone();
    let with = |id: &str, outcome: Outcome, env: &[(&str, &str)]| -> TestResult {
        let case = TestCase::script(id, "true");
        let mut r = TestResult::new(&case, "qemu", outcome);
        r.started_at = base.started_at;
        r.finished_at = base.finished_at;
        r.environment = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        r
    };
    let stock = [
        ("arch", "aarch64"),
        ("machine", "virt"),
        ("accelerator", "tcg"),
        ("kernel", "/cache/aarch64/root/boot/vmlinuz-6.1.0-57-arm64"),
        ("kernel-package", "linux-image-6.1.0-57-arm64"),
        ("kernel-package-version", "6.1.192-3"),
        ("kernel-distribution", "debian bookworm"),
        ("kernel-release", "6.1.0-57-arm64"),
    ];
    let own = [
        ("arch", "x86_64"),
        ("kernel", "/home/me/linux/arch/x86/boot/bzImage"),
        ("kernel-blake3", &"ab".repeat(32)),
    ];
    report.results.extend([
        with(
            "panic@aarch64",
            Outcome::Crashed {
                crash: CrashKind::KernelPanic,
            },
            &stock,
        ),
        with(
            "boot-hang@aarch64",
            Outcome::TimedOut {
                phase: Phase::Boot,
                limit: Duration::from_secs(60),
            },
            &stock,
        ),
        with("qemu-died@x86_64", Outcome::infra("QEMU exited"), &own),
        with(
            "no-kernel@x86_64",
            Outcome::from_error(&RunnerError::config("no kernel at /k")),
            &own,
        ),
        with(
            "internal@x86_64",
            Outcome::InfraError {
                message: "a task panicked".into(),
                cause: ErrorKind::Internal,
            },
            &own,
        ),
        with("stopped@aarch64", Outcome::Cancelled, &stock),
        with(
            "late@aarch64",
            Outcome::Skipped {
                reason: "the run's deadline passed".into(),
            },
            &stock,
        ),
        with(
            "slow-setup@aarch64",
            Outcome::TimedOut {
                phase: Phase::Setup,
                limit: Duration::from_secs(1),
            },
            &stock,
        ),
    ]);
    report
}

/// Every test and subtest of the report, by (path, status), as the export should have them.
fn expected(report: &RunReport) -> Vec<(String, &'static str)> {
    let labels = [
        ("pass", "PASS"),
        ("fail.exit_code", "FAIL"),
        ("xfail", "FAIL"),
        ("hang", "FAIL"),
        ("kunit.nested", "PASS"),
        ("huge", "FAIL"),
        ("panic", "FAIL"),
        ("boot-hang", "FAIL"),
        ("qemu-died", "MISS"),
        ("no-kernel", "ERROR"),
        ("internal", "MISS"),
        ("stopped", "ERROR"),
        ("late", "SKIP"),
        ("slow-setup", "MISS"),
    ];
    assert_eq!(report.results.len(), labels.len());
    let mut want: Vec<(String, &str)> = labels.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect();
    // Suites (with their own results) and cases: child paths of the test.
    want.extend(
        [
            ("kunit.nested.mem", "PASS"),
            ("kunit.nested.mem.params", "PASS"),
            ("kunit.nested.io", "PASS"),
            ("kunit.nested.mem.alloc", "PASS"),
            ("kunit.nested.mem.params.value_1_5", "PASS"),
            ("kunit.nested.mem.params.value_2", "SKIP"),
            ("kunit.nested.io.read", "PASS"),
            ("kunit.nested.io.write", "DONE"),
        ]
        .map(|(p, s)| (p.to_owned(), s)),
    );
    want.sort();
    want
}

fn exported(value: &serde_json::Value) -> Vec<(String, &'static str)> {
    let mut got: Vec<(String, &'static str)> = value["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let status = match t["status"].as_str().unwrap() {
                "PASS" => "PASS",
                "FAIL" => "FAIL",
                "ERROR" => "ERROR",
                "MISS" => "MISS",
                "DONE" => "DONE",
                "SKIP" => "SKIP",
                other => panic!("status {other}"),
            };
            (t["path"].as_str().unwrap().to_owned(), status)
        })
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn kcidb_export_has_every_test_subtest_and_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let report = mixed_report(dir.path()).await;
    let nested = &report.results[4];
    assert_eq!(nested.subtests.len(), 5, "{:?}", nested.subtests);
    assert_eq!(nested.suites.len(), 3, "{:?}", nested.suites);
    let v = report.kcidb(&KcidbOptions::default()).unwrap();
    assert_eq!(v["version"]["major"], KCIDB_MAJOR);
    assert_eq!(v["version"]["minor"], KCIDB_MINOR);
    assert_eq!(exported(&v), expected(&report));

    // Ids: unique, all of the origin; every test of a build, every build of a checkout.
    let ids = |list: &str| -> Vec<String> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (checkouts, builds, tests) = (ids("checkouts"), ids("builds"), ids("tests"));
    for id in checkouts.iter().chain(&builds).chain(&tests) {
        assert!(id.starts_with("qorch:"), "{id}");
    }
    assert_eq!(tests.iter().collect::<BTreeSet<_>>().len(), tests.len());
    // The host's kernel, the stock kernel (a build of its package version, from Debian's
    // source at that version) and the user's kernel (by its digest).
    let host = report.host.hostname.clone();
    assert!(
        builds.contains(&"qorch:linux-image-6.1.0-57-arm64_6.1.192-3".to_owned()),
        "{builds:?}"
    );
    assert!(
        checkouts.contains(&"qorch:debian-linux-6.1.192-3".to_owned()),
        "{checkouts:?}"
    );
    assert!(
        builds.contains(&format!("qorch:kernel-{}", "ab".repeat(32))),
        "{builds:?}"
    );
    assert_eq!(builds.len(), 3, "{builds:?}");
    assert!(
        builds.iter().any(|b| b.starts_with("qorch:host-")),
        "{host}: {builds:?}"
    );
    for t in v["tests"].as_array().unwrap() {
        assert!(builds.contains(&t["build_id"].as_str().unwrap().to_owned()));
    }
    for b in v["builds"].as_array().unwrap() {
        assert!(checkouts.contains(&b["checkout_id"].as_str().unwrap().to_owned()));
    }
    let stock = v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "qorch:linux-image-6.1.0-57-arm64_6.1.192-3")
        .unwrap();
    assert_eq!(stock["architecture"], "aarch64");
    assert_eq!(stock["misc"]["kernel_release"], "6.1.0-57-arm64");

    // The test of the failed host process: its stderr in the excerpt, times and environment.
    let fail = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "fail.exit_code")
        .unwrap();
    assert!(
        fail["log_excerpt"].as_str().unwrap().contains("bad"),
        "{fail}"
    );
    assert_eq!(fail["misc"]["verdict"], "FAIL");
    assert_eq!(fail["misc"]["test_id"], "fail:exit+code");
    assert!(fail["duration"].as_f64().unwrap() > 0.0);
    assert!(fail["start_time"].as_str().unwrap().starts_with("20"));
    assert_eq!(fail["environment"]["misc"]["runner"], "process");
    let xfail = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "xfail")
        .unwrap();
    assert_eq!(xfail["misc"]["verdict"], "XFAIL");
    // The excerpts stay within the schema's limit, and say what was cut.
    let huge = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "huge")
        .unwrap();
    let excerpt = huge["log_excerpt"].as_str().unwrap();
    assert!(
        excerpt.chars().count() <= LOG_EXCERPT_MAX,
        "{}",
        excerpt.len()
    );
    assert!(
        excerpt.contains("--- stdout (the last 4096 of 300000 characters) ---\n"),
        "{excerpt:.200}"
    );
    // A smaller limit cuts the excerpt itself, saying how much.
    let mut small = KcidbOptions::default();
    small.log_excerpt_limit = 1000;
    let v3 = report.kcidb(&small).unwrap();
    let huge = v3["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == "huge")
        .unwrap();
    let excerpt = huge["log_excerpt"].as_str().unwrap();
    assert!(excerpt.chars().count() <= 1000, "{}", excerpt.len());
    assert!(
        excerpt.starts_with("huge: failed with exit code 1\n"),
        "{excerpt}"
    );
    assert!(excerpt.contains(" characters cut ...]\n"), "{excerpt}");

    // Written atomically; a bad origin is refused, naming it.
    let path = dir.path().join("out/kcidb.json");
    report.write_kcidb(&path, &KcidbOptions::default()).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, v);
    let err = KcidbOptions::with_origin("My CI").unwrap_err();
    assert!(matches!(err, ReportError::Kcidb(_)));
    assert!(err.to_string().contains("`My CI`"), "{err}");
    let ci = KcidbOptions::with_origin("my_ci").unwrap();
    let v2 = report.kcidb(&ci).unwrap();
    assert!(v2["tests"][0]["id"].as_str().unwrap().starts_with("my_ci:"));
}

/// The same export, validated by `kcidb-io` (`schema.LATEST`, exactly), holds every test and
/// subtest.
#[tokio::test]
#[ignore = "needs Python's kcidb-io: run `cargo xtask test`, which installs it and sets KCIDB_PYTHON"]
async fn kcidb_export_validates_with_kcidb_io() {
    let python = std::env::var_os("KCIDB_PYTHON")
        .expect("KCIDB_PYTHON is not set: run this test through `cargo xtask test`");
    let dir = tempfile::tempdir().unwrap();
    let report = mixed_report(dir.path()).await;
    let path = dir.path().join("kcidb.json");
    report.write_kcidb(&path, &KcidbOptions::default()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate_kcidb.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcidb-io refused the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["latest"],
        serde_json::json!([KCIDB_MAJOR, KCIDB_MINOR])
    );
    assert_eq!(seen["version"], seen["latest"]);
    let mut got: Vec<(String, String)> = seen["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = expected(&report)
        .into_iter()
        .map(|(p, s)| (p, s.to_owned()))
        .collect();
    assert_eq!(got, want);
}
