//! Reports of a run: the versioned JSON [`RunReport`], JUnit XML and a human summary table.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::orchestrator::Interruption;
use crate::result::{TestResult, Verdict};

#[cfg(feature = "reports")]
mod html;
mod junit;
pub mod kcidb;
mod table;

#[cfg(feature = "reports")]
pub use html::html_report;
pub use junit::junit_report;
pub use kcidb::KcidbOptions;
pub use table::summary_table;

/// Version of the JSON report format; bumped whenever a field is added or changed.
///
/// 2: results gain `subtests`.
/// 3: a failed subtest fails its test: outcome kind `subtests-failed` (exit code 0, failed
/// subtests), and the summary's `subtests` counts. Reports of versions 1 and 2 still read; the
/// verdicts of their results follow the same rule ([`TestResult::verdict`]).
/// 4: subtests gain `suite` (the path of the suites they are nested in) and `duration`;
/// results gain `suites` (KUnit suites and parameterised cases with their own results).
/// 5: `resources` gain every figure the monitor measures (user and system CPU, syscall I/O,
/// `processes` with open files, `network` of the namespace, `host` load and pressure,
/// `unavailable`) and the per-process breakdown (`top_cpu`, `top_memory`).
pub const SCHEMA_VERSION: u32 = 5;

/// Everything about one run, in the order the tests were given. Serialised as the JSON report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunReport {
    /// [`SCHEMA_VERSION`] at the time of writing.
    pub schema_version: u32,
    /// Unique id of the run.
    pub run_id: String,
    /// The plan's name, if any.
    pub name: Option<String>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Why the run ended early, if it did.
    pub interrupted: Option<Interruption>,
    /// Counts per verdict.
    pub summary: Summary,
    /// One result per test, in the order the tests were given.
    pub results: Vec<TestResult>,
    /// The host that ran it.
    pub host: HostInfo,
    /// What went into the artifact store, when the run had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSummary>,
    /// Which shard of which campaign this run was, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::ShardInfo>,
}

/// The artifact store's part of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StorageSummary {
    /// The store's directory.
    pub root: std::path::PathBuf,
    /// Artifacts this run stored (console logs, collected files, metrics).
    pub artifacts_stored: u64,
    /// Their content size in bytes.
    pub bytes_stored: u64,
    /// Failures to store, each naming the test and the artifact. Nothing is silently lost: a
    /// test whose artifacts could not be stored says so here and in its environment record.
    pub errors: Vec<String>,
    /// What the retention policy did after the run, if there was one.
    #[cfg(feature = "store")]
    pub retention: Option<artifact_store::RetentionOutcome>,
    /// The whole store's statistics after the run (and retention).
    #[cfg(feature = "store")]
    pub stats: Option<artifact_store::Stats>,
}

/// Counts of results per verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of tests.
    pub total: usize,
    /// Passed as expected.
    pub passed: usize,
    /// Failed as expected (count as success).
    pub expected_failures: usize,
    /// Failed unexpectedly.
    pub failed: usize,
    /// Passed though expected to fail.
    pub unexpected_passes: usize,
    /// Infrastructure errors.
    pub errors: usize,
    /// Not run.
    pub skipped: usize,
    /// Stopped by cancellation.
    pub cancelled: usize,
    /// Attempts retried after infrastructure errors.
    pub retries: usize,
    /// The results' subtests (KTAP/TAP cases), by verdict (since version 3).
    #[serde(default)]
    pub subtests: SubtestSummary,
}

/// Counts of subtests per verdict ([`Subtest::verdict`](crate::Subtest::verdict)), the same
/// verdicts the JUnit cases of subtests have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtestSummary {
    /// Number of subtests.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// Failed: each fails its test.
    pub failed: usize,
    /// `TODO` or `XFAIL` cases, and failed cases of tests expected to fail.
    pub expected_failures: usize,
    /// Skipped.
    pub skipped: usize,
}

impl SubtestSummary {
    /// `subtests: 39 passed, 1 failed, ...` (counts that are not zero), or `None` without
    /// subtests.
    pub fn describe(&self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let parts: Vec<String> = [
            (self.passed, "passed"),
            (self.failed, "failed"),
            (self.expected_failures, "failed as expected (todo, xfail)"),
            (self.skipped, "skipped"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        Some(format!(
            "{} subtest{}: {}",
            self.total,
            if self.total == 1 { "" } else { "s" },
            parts.join(", ")
        ))
    }
}

impl Summary {
    /// Counts the verdicts of `results`.
    pub fn of(results: &[TestResult]) -> Self {
        let mut s = Summary {
            total: results.len(),
            ..Summary::default()
        };
        for r in results {
            s.retries += r.earlier_attempts.len();
            for t in &r.subtests {
                s.subtests.total += 1;
                match t.verdict(r.expect) {
                    Verdict::Passed => s.subtests.passed += 1,
                    Verdict::Failed => s.subtests.failed += 1,
                    Verdict::ExpectedFailure => s.subtests.expected_failures += 1,
                    _ => s.subtests.skipped += 1,
                }
            }
            match r.verdict() {
                Verdict::Passed => s.passed += 1,
                Verdict::ExpectedFailure => s.expected_failures += 1,
                Verdict::Failed => s.failed += 1,
                Verdict::UnexpectedPass => s.unexpected_passes += 1,
                Verdict::Error => s.errors += 1,
                Verdict::Skipped => s.skipped += 1,
                Verdict::Cancelled => s.cancelled += 1,
            }
        }
        s
    }

    /// Whether every test succeeded (passed or failed as expected; nothing skipped for lack of
    /// time or cancelled).
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.unexpected_passes == 0 && self.errors == 0 && self.cancelled == 0
    }
}

/// The machine a run happened on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs available.
    pub cpus: usize,
}

impl HostInfo {
    /// Describes this machine.
    pub fn current() -> Self {
        HostInfo {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What a run comes to, for a program's exit code ([`RunStatus::exit_code`]): the order of the
/// variants is their precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The caller cancelled the run (exit code 130, as for SIGINT).
    Interrupted,
    /// A test failed or passed against its expectation; a boot failure of the kernel under
    /// test is a failure (exit code 1).
    Failed,
    /// No test failed, but one could not be judged: an infrastructure error (QEMU would not
    /// start, a host resource ran out), or tests left unrun when the run's deadline passed
    /// (exit code 125, what `git bisect run` takes as "cannot test this commit").
    Untestable,
    /// Every test passed, failed as expected or was skipped on purpose (exit code 0).
    Succeeded,
}

impl RunStatus {
    /// The status's name: `interrupted`, `failed`, `untestable` or `succeeded`.
    pub fn label(self) -> &'static str {
        match self {
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
            RunStatus::Untestable => "untestable",
            RunStatus::Succeeded => "succeeded",
        }
    }

    /// The exit code a program running a plan ends with: 0, 1, 125 or 130.
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Interrupted => 130,
            RunStatus::Failed => 1,
            RunStatus::Untestable => 125,
            RunStatus::Succeeded => 0,
        }
    }
}

impl RunReport {
    /// A report of `results` (in the order the tests were given) for run `run_id`: the summary
    /// counted from them, the current schema version, no name, interruption, storage or shard
    /// (set the public fields for those), `host` as given.
    pub fn new(
        run_id: impl Into<String>,
        results: Vec<TestResult>,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        host: HostInfo,
    ) -> Self {
        RunReport {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.into(),
            name: None,
            started_at,
            finished_at,
            interrupted: None,
            summary: Summary::of(&results),
            results,
            host,
            storage: None,
            shard: None,
        }
    }

    /// The result of test `id` (the whole id, `boot@aarch64` for a test fanned out per
    /// architecture), if the run has one.
    pub fn result(&self, id: &str) -> Option<&TestResult> {
        self.results.iter().find(|r| r.test_id.as_str() == id)
    }

    /// Whether the run succeeded as a whole.
    pub fn is_success(&self) -> bool {
        self.summary.is_success() && self.interrupted.is_none()
    }

    /// What the run comes to: interrupted, else failed when any test failed, else untestable
    /// when any test could not be judged, else succeeded.
    pub fn status(&self) -> RunStatus {
        let s = &self.summary;
        if self.interrupted == Some(Interruption::Cancelled) || s.cancelled > 0 {
            RunStatus::Interrupted
        } else if s.failed > 0 || s.unexpected_passes > 0 {
            RunStatus::Failed
        } else if s.errors > 0 || self.interrupted.is_some() {
            RunStatus::Untestable
        } else {
            RunStatus::Succeeded
        }
    }

    /// Writes the JSON report atomically (a temporary file renamed into place), so a reader
    /// never sees half a report.
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        write_atomic(path, &json)
    }

    /// The JUnit XML document.
    pub fn junit_xml(&self) -> Result<String, ReportError> {
        junit_report(self).to_string().map_err(ReportError::Junit)
    }

    /// Writes the JUnit XML atomically.
    pub fn write_junit(&self, path: &Path) -> Result<(), ReportError> {
        write_atomic(path, self.junit_xml()?.as_bytes())
    }

    /// Writes the self-contained HTML page ([`html_report`]) atomically.
    #[cfg(feature = "reports")]
    pub fn write_html(&self, path: &Path) -> std::io::Result<()> {
        html::write(self, path)
    }

    /// Reads a JSON report, refusing versions newer than this library knows.
    pub fn read_json(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ReportError::Json {
                path: path.to_owned(),
                source,
            })?;
        let version = value
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version == 0 || version > u64::from(SCHEMA_VERSION) {
            return Err(ReportError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        serde_json::from_value(value).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })
    }
}

/// Writing or reading a report failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The file could not be read or written.
    #[error("failed to access report file {}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON was malformed.
    #[error("report file {} is not a valid JSON report", path.display())]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON report has an unknown schema version.
    #[error("report file {} has schema version {found}; this build reads versions 1 to {SCHEMA_VERSION}: upgrade the tool", path.display())]
    Version {
        /// The file.
        path: std::path::PathBuf,
        /// The version found (0 when missing).
        found: u64,
    },
    /// JUnit serialisation failed.
    #[error("failed to render JUnit XML")]
    Junit(#[source] quick_junit::SerializeError),
    /// The KCIDB export's options are invalid (the message names the option and the fix).
    #[error("{0}")]
    Kcidb(String),
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Readable like any file the user writes (0666 less the umask), not a temp file's 0600.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Expectation, TestCase};
    use crate::result::{Outcome, SubtestStatus};
    use testkit::junit_case;

    /// KTAP with one failed case, and one case for each directive that does not fail a test
    /// (in the mixed case KTAP and TAP allow).
    const KTAP: &str = "KTAP version 1\n1..5\nok 1 alloc\n# Expected 1 == 2\nnot ok 2 free\n\
                        not ok 3 map # skip no MMU\nnot ok 4 unmap # ToDo not yet\n\
                        not ok 5 remap # xfail known bug\n";

    /// A result of a test that exited 0 and printed `ktap`, judged as the orchestrator does.
    fn result(id: &str, expect: Expectation, ktap: &str) -> TestResult {
        let case = TestCase::script(id, "true").with_expect(expect);
        let mut r = TestResult::new(&case, "process", Outcome::Passed);
        let (subtests, suites, summary) = crate::ktap::cases_of(ktap).expect("KTAP");
        r.subtests = subtests;
        r.suites = suites;
        r.message = Some(summary);
        r.judge_subtests();
        r
    }

    fn report(results: Vec<TestResult>) -> RunReport {
        let now = Utc::now();
        RunReport {
            schema_version: SCHEMA_VERSION,
            run_id: "run-1".into(),
            name: Some("ktap".into()),
            started_at: now,
            finished_at: now,
            interrupted: None,
            summary: Summary::of(&results),
            results,
            host: HostInfo::default(),
            storage: None,
            shard: None,
        }
    }

    /// The HTML row of the test at `index` (its `<tbody>`).
    #[cfg(feature = "reports")]
    fn html_row(html: &str, index: usize) -> &str {
        let start = html.find(&format!("id=\"test-{index}\"")).unwrap();
        let rest = &html[start..];
        &rest[..rest.find("</tbody>").unwrap()]
    }

    /// The exit status a plan runner ends with, in its precedence: interrupted, failed,
    /// untestable, succeeded.
    #[test]
    fn run_status_orders_interruption_failure_and_infrastructure_errors() {
        let test = |id: &str, outcome: Outcome| {
            TestResult::new(&TestCase::script(id, "true"), "process", outcome)
        };
        let infra = || {
            test(
                "qemu-did-not-start",
                Outcome::infra("QEMU exited as it started"),
            )
        };
        let failed = || {
            let outcome = Outcome::Failed {
                exit_code: Some(1),
                signal: None,
            };
            test("bad", outcome)
        };
        let passed = || test("good", Outcome::Passed);
        let status = |results: Vec<TestResult>, interrupted: Option<Interruption>| {
            let mut r = report(results);
            r.interrupted = interrupted;
            let status = r.status();
            (status, status.exit_code())
        };
        assert_eq!(status(vec![passed()], None), (RunStatus::Succeeded, 0));
        assert_eq!(status(vec![], None), (RunStatus::Succeeded, 0));
        assert_eq!(
            status(vec![passed(), infra()], None),
            (RunStatus::Untestable, 125)
        );
        assert_eq!(
            status(vec![infra(), failed(), passed()], None),
            (RunStatus::Failed, 1)
        );
        // A test that passed against `expect = "fail"` fails the run too.
        let mut xpass = passed();
        xpass.expect = Expectation::Fail;
        assert_eq!(status(vec![xpass, infra()], None), (RunStatus::Failed, 1));
        // Tests left unrun at the run's deadline were not judged.
        assert_eq!(
            status(vec![passed()], Some(Interruption::DeadlineReached)),
            (RunStatus::Untestable, 125)
        );
        assert_eq!(
            status(vec![failed()], Some(Interruption::Cancelled)),
            (RunStatus::Interrupted, 130)
        );
    }

    #[test]
    fn a_failed_subtest_fails_its_test_in_every_report() {
        let clean = "KTAP version 1\n1..3\nok 1 a\nnot ok 2 b # SKIP\nnot ok 3 c # TODO\n";
        let rep = report(vec![
            result("kunit", Expectation::Pass, KTAP),
            result("clean", Expectation::Pass, clean),
        ]);
        let kunit = &rep.results[0];
        let statuses: Vec<SubtestStatus> = kunit.subtests.iter().map(|t| t.status).collect();
        use SubtestStatus::*;
        assert_eq!(statuses, [Passed, Failed, Skipped, Todo, Todo]);
        assert_eq!(
            kunit.outcome,
            Outcome::SubtestsFailed {
                failed: 1,
                total: 5
            }
        );
        let message = kunit.message.as_deref().unwrap();
        assert!(
            message.contains("1 of 5 subtests failed: free"),
            "{message}"
        );
        assert_eq!(kunit.verdict(), Verdict::Failed);
        assert_eq!(rep.results[1].outcome, Outcome::Passed);
        assert_eq!(rep.results[1].verdict(), Verdict::Passed);

        // Exit code.
        assert!(!rep.is_success());

        // JSON: summary and result, and back.
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["schema_version"], 5);
        assert_eq!(json["summary"]["failed"], 1);
        assert_eq!(json["summary"]["passed"], 1);
        assert_eq!(
            json["summary"]["subtests"],
            serde_json::json!({"total": 8, "passed": 2, "failed": 1, "expected_failures": 3, "skipped": 2})
        );
        assert_eq!(
            json["results"][0]["outcome"],
            serde_json::json!({"kind": "subtests-failed", "failed": 1, "total": 5})
        );
        assert_eq!(json["results"][0]["subtests"][1]["status"], "failed");
        let back: RunReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, rep);

        // JUnit: the test and its failed case are failures, nothing else is.
        let xml = rep.junit_xml().unwrap();
        assert!(
            xml.contains(r#"tests="10" skipped="2" errors="0" failures="2""#),
            "{xml}"
        );
        let test = junit_case(&xml, "kunit");
        assert!(
            test.contains(
                r#"<failure message="KTAP: 1 passed, 1 failed, 1 skipped, 2 todo; 1 of 5 subtests failed: free""#
            )
                && test.contains(r#"type="subtests-failed""#),
            "{test}"
        );
        let free = junit_case(&xml, "kunit/free");
        assert!(
            free.contains(r#"<failure message="Expected 1 == 2""#),
            "{free}"
        );
        assert!(junit_case(&xml, "kunit/map").contains("<skipped message=\"no MMU\""));
        for ok in [
            "kunit/alloc",
            "kunit/unmap",
            "kunit/remap",
            "clean",
            "clean/c",
        ] {
            let case = junit_case(&xml, ok);
            assert!(
                !case.contains("<failure") && !case.contains("<skipped"),
                "{case}"
            );
        }
        assert!(junit_case(&xml, "kunit/remap").contains(r#"name="todo" value="known bug""#));

        #[cfg(feature = "reports")]
        {
            // HTML: the row says FAIL, the run FAILED, the case `not ok`.
            let html = html_report(&rep);
            let row = html_row(&html, 0);
            assert!(row.contains("class=\"v v-fail\">FAIL<"), "{row}");
            assert!(row.contains("1 of 5 subtests failed"), "{row}");
            assert!(row.contains("<b>not ok</b>"), "{row}");
            assert!(html_row(&html, 1).contains("class=\"v v-pass\">PASS<"));
            assert!(html.contains("status bad\">FAILED<"));
            assert!(html.contains("1 passed, 1 failed"));
        }

        // Summary table.
        let table = summary_table(&rep, false);
        let line = table.lines().find(|l| l.contains("kunit")).unwrap();
        assert!(
            line.contains("FAIL") && line.contains("1 of 5 subtests failed"),
            "{table}"
        );
        assert!(table.contains("2 tests in"), "{table}");
        assert!(table.contains("1 passed, 1 failed"), "{table}");
        assert!(table.contains("8 subtests: 2 passed, 1 failed"), "{table}");
    }

    #[test]
    fn a_test_expected_to_fail_may_fail_by_its_subtests() {
        let rep = report(vec![result("known", Expectation::Fail, KTAP)]);
        assert_eq!(rep.results[0].verdict(), Verdict::ExpectedFailure);
        assert!(rep.is_success());
        assert_eq!(rep.summary.expected_failures, 1);
        assert_eq!(rep.summary.subtests.failed, 0);
        assert_eq!(rep.summary.subtests.expected_failures, 3);
        let xml = rep.junit_xml().unwrap();
        assert!(xml.contains(r#"failures="0""#), "{xml}");
        let free = junit_case(&xml, "known/free");
        assert!(
            !free.contains("<failure") && free.contains(r#"name="verdict" value="XFAIL""#),
            "{free}"
        );
        #[cfg(feature = "reports")]
        {
            let html = html_report(&rep);
            assert!(html_row(&html, 0).contains("v-xfail"));
            assert!(html_row(&html, 0).contains("not ok (expected)"));
        }
        assert!(summary_table(&rep, false).contains("XFAIL"));
        // A test expected to fail that passes with every case passing is still a surprise.
        let passing = result("xpass", Expectation::Fail, "TAP version 13\n1..1\nok 1 a\n");
        assert_eq!(passing.verdict(), Verdict::UnexpectedPass);
    }

    #[test]
    fn reports_of_schema_2_read_and_their_failed_subtests_count() {
        // A result as a schema-2 writer left it: outcome `passed` beside a failed case.
        let case = TestCase::script("old", "true");
        let mut old = TestResult::new(&case, "qemu", Outcome::Passed);
        old.subtests = crate::ktap::subtests_of(KTAP).unwrap().0;
        let mut rep = report(vec![old]);
        rep.schema_version = 2;
        let mut json = serde_json::to_value(&rep).unwrap();
        json["summary"].as_object_mut().unwrap().remove("subtests");
        json["summary"]["failed"] = 0.into();
        json["summary"]["passed"] = 1.into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let back = RunReport::read_json(&path).unwrap();
        assert_eq!(back.schema_version, 2);
        assert_eq!(back.summary.subtests, SubtestSummary::default());
        assert_eq!(back.results[0].outcome, Outcome::Passed);
        assert_eq!(back.results[0].verdict(), Verdict::Failed);
        assert_eq!(Summary::of(&back.results).failed, 1);
    }

    #[test]
    fn resources_of_schema_4_read_without_the_later_figures() {
        // A monitored result as a schema-4 writer left it: the headline figures only.
        let case = TestCase::script("old", "true");
        let mut old = TestResult::new(&case, "process", Outcome::Passed);
        old.resources = Some(crate::ResourceUsage {
            cpu_seconds: 1.5,
            peak_rss_bytes: 1 << 20,
            bottleneck: "cpu".into(),
            ..Default::default()
        });
        let mut rep = report(vec![old]);
        rep.schema_version = 4;
        let mut json = serde_json::to_value(&rep).unwrap();
        let usage = json["results"][0]["resources"].as_object_mut().unwrap();
        for key in [
            "cpu_user_seconds",
            "cpu_system_seconds",
            "read_chars",
            "write_chars",
            "processes",
            "network",
            "host",
            "top_cpu",
            "top_memory",
            "unavailable",
        ] {
            assert!(usage.remove(key).is_some(), "{key} is written");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let back = RunReport::read_json(&path).unwrap();
        assert_eq!(back.schema_version, 4);
        assert_eq!(back.results[0].resources, rep.results[0].resources);
    }

    /// A kernel log's KTAP: two suites (one with a failed case and a parameterised case), an
    /// expected failure, skips, and a third suite cut short by a crash.
    const NESTED: &str = "\
[    0.310000] KTAP version 1
[    0.310100] 1..3
[    0.310200]     KTAP version 1
[    0.310300]     # Subtest: example
[    0.310400]     1..4
[    0.312400]     ok 1 example_simple_test
[    0.313000]     # example_failing_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:40
[    0.313001]     Expected 1 + 1 == 3, but
[    0.313400]     not ok 2 example_failing_test
[    0.313500]         KTAP version 1
[    0.313600]         # Subtest: example_params_test
[    0.314600]         ok 1 example value 1 # SKIP unsupported
[    0.315600]         ok 2 example value 2
[    0.315800]     ok 3 example_params_test
[    0.316800]     not ok 4 example_known_bug # XFAIL known
[    0.317000] not ok 1 example
[    0.317100]     KTAP version 1
[    0.317200]     # Subtest: list-kunit-test
[    0.317300]     1..1
[    0.319300]     ok 1 list_test_list_init
[    0.319400] ok 2 list-kunit-test
[    0.319500]     KTAP version 1
[    0.319600]     # Subtest: crashing
[    0.319700]     1..2
[    0.319800]     ok 1 first
[    0.320000] BUG: kernel NULL pointer dereference, address: 0000000000000000
";

    /// `name="value"` of the first element `tag` in `xml`, as a number.
    fn attr(xml: &str, tag: &str, name: &str) -> usize {
        let start = xml.find(&format!("<{tag} ")).unwrap();
        let element = &xml[start..start + xml[start..].find('>').unwrap()];
        let at = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        element[at..at + element[at..].find('"').unwrap()]
            .parse()
            .unwrap()
    }

    #[test]
    fn nested_ktap_counts_agree_in_every_report() {
        let kunit = result("kunit", Expectation::Pass, NESTED);
        let known = result("known", Expectation::Fail, NESTED);
        let clean = result(
            "clean",
            Expectation::Pass,
            "KTAP version 1\n1..2\nok 1 a\nok 2 b # SKIP no disk\n",
        );
        let rep = report(vec![kunit, known, clean]);

        // The cases, with their suite paths.
        let kunit = &rep.results[0];
        let names: Vec<(&str, &[String], SubtestStatus)> = kunit
            .subtests
            .iter()
            .map(|t| (t.case(), t.suite.as_slice(), t.status))
            .collect();
        let s = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        use SubtestStatus::*;
        assert_eq!(
            names,
            [
                ("example_simple_test", &s(&["example"])[..], Passed),
                ("example_failing_test", &s(&["example"])[..], Failed),
                (
                    "example value 1",
                    &s(&["example", "example_params_test"])[..],
                    Skipped
                ),
                (
                    "example value 2",
                    &s(&["example", "example_params_test"])[..],
                    Passed
                ),
                ("example_known_bug", &s(&["example"])[..], Todo),
                ("list_test_list_init", &s(&["list-kunit-test"])[..], Passed),
                // The suite the crash cut short: a failure, before its case.
                ("crashing", &s(&[])[..], Failed),
                ("first", &s(&["crashing"])[..], Passed),
            ]
        );
        assert_eq!(
            kunit.subtests[1].message.as_deref(),
            Some(
                "example_failing_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:40: \
                 Expected 1 + 1 == 3, but"
            )
        );
        assert_eq!(
            kunit.subtests[0].duration,
            Some(std::time::Duration::from_millis(2))
        );
        let suites: Vec<(&str, SubtestStatus, u32)> = kunit
            .suites
            .iter()
            .map(|s| (s.name.as_str(), s.status, s.cases))
            .collect();
        assert_eq!(
            suites,
            [
                ("example", Failed, 5),
                ("example.example_params_test", Passed, 2),
                ("list-kunit-test", Passed, 1),
                ("crashing", Failed, 1),
            ]
        );
        assert_eq!(
            kunit.outcome,
            Outcome::SubtestsFailed {
                failed: 2,
                total: 8
            }
        );
        assert_eq!(rep.results[1].verdict(), Verdict::ExpectedFailure);
        assert_eq!(rep.results[2].verdict(), Verdict::Passed);

        // JSON.
        let s = &rep.summary;
        assert_eq!(
            (s.total, s.passed, s.failed, s.expected_failures),
            (3, 1, 1, 1)
        );
        let sub = &s.subtests;
        assert_eq!(
            (
                sub.total,
                sub.passed,
                sub.failed,
                sub.expected_failures,
                sub.skipped
            ),
            (18, 9, 2, 4, 3)
        );
        assert!(!rep.is_success());
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(
            json["results"][0]["subtests"][2]["suite"],
            serde_json::json!(["example", "example_params_test"])
        );
        assert_eq!(json["results"][0]["subtests"][0]["duration"], 0.002);
        assert_eq!(json["results"][0]["suites"][0]["status"], "failed");
        let back: RunReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, rep);

        // JUnit: every test and every case once, with the same verdicts.
        let xml = rep.junit_xml().unwrap();
        assert_eq!(attr(&xml, "testsuites", "tests"), s.total + sub.total);
        assert_eq!(
            attr(&xml, "testsuites", "failures"),
            s.failed + s.unexpected_passes + sub.failed
        );
        assert_eq!(
            attr(&xml, "testsuites", "skipped"),
            s.skipped + s.cancelled + sub.skipped
        );
        assert_eq!(attr(&xml, "testsuites", "errors"), s.errors);
        assert_eq!(xml.matches("<testcase ").count(), s.total + sub.total);
        let param = junit_case(&xml, "kunit/example.example_params_test.example value 1");
        assert!(
            param.contains(r#"classname="process.kunit.example.example_params_test""#)
                && param.contains("<skipped"),
            "{param}"
        );
        let failing = junit_case(&xml, "kunit/example.example_failing_test");
        assert!(
            failing.contains(r#"classname="process.kunit.example""#)
                && failing.contains(r#"time="0.001""#)
                && failing.contains("<failure"),
            "{failing}"
        );
        assert!(
            junit_case(&xml, "kunit").contains(r#"name="suite" value="example: not ok, 5 cases"#),
            "{xml}"
        );

        #[cfg(feature = "reports")]
        {
            // HTML: the run's counts, and each test's by verdict.
            let html = html_report(&rep);
            assert!(html.contains(&sub.describe().unwrap()), "{html}");
            assert!(html.contains("1 passed, 1 failed"));
            assert!(
                html_row(&html, 0)
                    .contains("Subtests <small>(4 passed, 2 failed, 1 skipped, 1 todo)"),
                "{}",
                html_row(&html, 0)
            );
            assert!(html_row(&html, 0).contains("Suites <small>(4)"));
            // The test expected to fail: its failed cases are expected failures, as in JSON.
            assert!(
                html_row(&html, 1)
                    .contains("Subtests <small>(4 passed, 0 failed, 1 skipped, 3 todo)"),
                "{}",
                html_row(&html, 1)
            );
        }

        // The summary table.
        let table = summary_table(&rep, false);
        assert!(table.contains(&sub.describe().unwrap()), "{table}");
        assert!(table.contains("3 tests in"), "{table}");
    }
}
