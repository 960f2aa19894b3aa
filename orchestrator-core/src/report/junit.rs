//! JUnit XML through `quick-junit`.

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase as JunitCase, TestCaseStatus, TestRerun, TestSuite,
};

use super::RunReport;
use crate::result::{TestResult, Verdict};

/// Builds the JUnit document of a run: one `<testsuite>` per runner, one `<testcase>` per test
/// (classname = runner, name = test id), then one per case the test reported (see
/// `junit_subtest`), with a `suite` property on the test's own `<testcase>` for each suite the
/// cases are nested in (`example: ok, 7 cases, 0.123 s`). Expected failures are successes with an `expect`
/// property; unexpected passes are failures; infrastructure errors are `<error>`; skipped and
/// cancelled tests are `<skipped>`. Retried infrastructure errors appear as flaky or rerun
/// elements.
pub fn junit_report(report: &RunReport) -> Report {
    let mut junit = Report::new(report.name.clone().unwrap_or_else(|| "orchestrator".into()));
    junit.set_timestamp(report.started_at.fixed_offset());
    junit.set_time(
        (report.finished_at - report.started_at)
            .to_std()
            .unwrap_or_default(),
    );
    let mut runners: Vec<&str> = Vec::new();
    for r in &report.results {
        if !runners.contains(&r.runner.as_str()) {
            runners.push(&r.runner);
        }
    }
    for runner in runners {
        let mut suite = TestSuite::new(runner);
        suite.set_timestamp(report.started_at.fixed_offset());
        suite.add_property(Property::new("run-id", report.run_id.as_str()));
        if let Some(i) = report.interrupted {
            suite.add_property(Property::new(
                "interrupted",
                serde_json::to_value(i)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ));
        }
        for r in report.results.iter().filter(|r| r.runner == runner) {
            suite.add_test_case(junit_case(r));
            for sub in &r.subtests {
                suite.add_test_case(junit_subtest(r, sub));
            }
        }
        junit.add_test_suite(suite);
    }
    junit
}

/// A case the test reported itself, as `<test id>/<case path>` with the classname
/// `<runner>.<test id>`, followed by its suite path when it has one (`qemu.kunit.example`), its
/// time when the output's timestamps gave one, and its [verdict](crate::Subtest::verdict): a
/// failed case is a `<failure>` (and its test one too), unless the test is expected to fail;
/// `TODO`/`XFAIL` cases are successes with a `todo` property; skipped cases are `<skipped>`.
fn junit_subtest(r: &TestResult, sub: &crate::result::Subtest) -> JunitCase {
    use crate::result::SubtestStatus;
    let verdict = sub.verdict(r.expect);
    let status = match verdict {
        Verdict::Failed => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(sub.message.clone().unwrap_or_else(|| "failed".into()));
            s.set_type("subtest-failed");
            s
        }
        Verdict::Skipped => {
            let mut s = TestCaseStatus::skipped();
            if let Some(m) = &sub.message {
                s.set_message(m.as_str());
            }
            s
        }
        _ => TestCaseStatus::success(),
    };
    let mut case = JunitCase::new(format!("{}/{}", r.test_id, sub.name), status);
    let mut classname = format!("{}.{}", r.runner, r.test_id);
    for part in &sub.suite {
        classname.push('.');
        classname.push_str(part);
    }
    case.set_classname(classname);
    if let Some(time) = sub.duration {
        case.set_time(time);
    }
    case.add_property(Property::new("verdict", verdict.label()));
    if sub.status == SubtestStatus::Todo {
        case.add_property(Property::new(
            "todo",
            sub.message.clone().unwrap_or_default(),
        ));
    } else if sub.status == SubtestStatus::Failed && verdict == Verdict::ExpectedFailure {
        case.add_property(Property::new(
            "expected-failure",
            sub.message.clone().unwrap_or_else(|| "failed".into()),
        ));
    }
    case
}

fn junit_case(r: &TestResult) -> JunitCase {
    let verdict = r.verdict();
    let message = match (&r.message, &r.outcome) {
        // The message already says how many subtests failed, and which.
        (Some(m), crate::Outcome::SubtestsFailed { .. }) => m.clone(),
        (Some(m), _) => format!("{}: {m}", r.outcome),
        (None, _) => r.outcome.to_string(),
    };
    let reruns: Vec<TestRerun> = r
        .earlier_attempts
        .iter()
        .map(|a| {
            let mut rerun = TestRerun::new(NonSuccessKind::Error);
            rerun.set_message(match &a.message {
                Some(m) => format!("attempt {}: {}: {m}", a.attempt, a.outcome),
                None => format!("attempt {}: {}", a.attempt, a.outcome),
            });
            rerun
        })
        .collect();
    let status = match verdict {
        Verdict::Passed | Verdict::ExpectedFailure => TestCaseStatus::Success {
            flaky_runs: reruns.clone(),
        },
        Verdict::Failed | Verdict::UnexpectedPass | Verdict::Error => {
            let kind = if verdict == Verdict::Error {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            };
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(if verdict == Verdict::UnexpectedPass {
                "passed, but the test is expected to fail".to_owned()
            } else {
                message.clone()
            });
            s.set_type(r.outcome.label());
            let mut description = String::new();
            if let Some(console) = &r.console_excerpt {
                description.push_str("console:\n");
                description.push_str(console);
            }
            if !description.is_empty() {
                s.set_description(description);
            }
            s.add_reruns(reruns.clone());
            s
        }
        Verdict::Skipped | Verdict::Cancelled => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(message.clone());
            s.set_type(r.outcome.label());
            s
        }
    };
    let mut case = JunitCase::new(r.test_id.as_str(), status);
    case.set_classname(r.runner.as_str());
    case.set_timestamp(r.started_at.fixed_offset());
    case.set_time(r.duration());
    case.add_property(Property::new("verdict", verdict.label()));
    case.add_property(Property::new("outcome", r.outcome.to_string()));
    case.add_property(Property::new(
        "expect",
        match r.expect {
            crate::Expectation::Pass => "pass",
            crate::Expectation::Fail => "fail",
        },
    ));
    case.add_property(Property::new("attempts", r.attempt.to_string()));
    if r.name != r.test_id.as_str() {
        case.add_property(Property::new("name", r.name.as_str()));
    }
    for tag in &r.tags {
        case.add_property(Property::new("tag", tag.as_str()));
    }
    for s in &r.suites {
        use crate::result::SubtestStatus;
        let mut value = format!(
            "{}: {}, {} case{}",
            s.name,
            match s.status {
                SubtestStatus::Passed => "ok",
                SubtestStatus::Failed => "not ok",
                SubtestStatus::Skipped => "skip",
                SubtestStatus::Todo => "todo",
            },
            s.cases,
            if s.cases == 1 { "" } else { "s" }
        );
        if let Some(d) = s.duration {
            value.push_str(&format!(", {:.3} s", d.as_secs_f64()));
        }
        if let Some(m) = &s.message {
            value.push_str(": ");
            value.push_str(m);
        }
        case.add_property(Property::new("suite", value));
    }
    for a in &r.artifacts {
        case.add_property(Property::new("artifact", a.path.to_string_lossy()));
    }
    if !r.stdout.text.is_empty() {
        case.set_system_out(r.stdout.text.as_str());
    }
    if !r.stderr.text.is_empty() {
        case.set_system_err(r.stderr.text.as_str());
    }
    case
}
