//! KTAP / TAP parsing: real-format samples in `tests/ktap-samples/`, and fuzzing.

use std::path::Path;

use proptest::prelude::*;
use qemu_runner::ktap::{self, Directive, KtapReport, KtapResult, KtapTest, KtapVersion};

fn sample(name: &str) -> KtapReport {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ktap-samples")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    ktap::parse(&text)
}

/// `(passed, failed, skipped, todo, missing)`.
fn counts(report: &KtapReport) -> (u64, u64, u64, u64, u64) {
    let c = report.counts();
    (c.passed, c.failed, c.skipped, c.todo, c.missing)
}

fn paths(report: &KtapReport) -> Vec<String> {
    report.flatten().into_iter().map(|(path, _)| path).collect()
}

fn find<'a>(report: &'a KtapReport, path: &str) -> &'a KtapTest {
    fn walk<'a>(prefix: &str, tests: &'a [KtapTest], path: &str) -> Option<&'a KtapTest> {
        for t in tests {
            let here = if prefix.is_empty() {
                t.display_name()
            } else {
                format!("{prefix}.{}", t.display_name())
            };
            if here == path {
                return Some(t);
            }
            if let Some(found) = walk(&here, &t.subtests, path) {
                return Some(found);
            }
        }
        None
    }
    walk("", &report.tests, path).unwrap_or_else(|| panic!("no test {path} in {report:#?}"))
}

struct Expected {
    file: &'static str,
    version: Option<KtapVersion>,
    counts: (u64, u64, u64, u64, u64),
    top_level: usize,
    complete: bool,
}

const TABLE: &[Expected] = &[
    Expected {
        file: "kunit-6.1-x86_64-dmesg.log",
        version: Some(KtapVersion::Ktap(1)),
        counts: (79, 0, 2, 0, 0),
        top_level: 9,
        complete: true,
    },
    Expected {
        file: "kunit-6.1-x86_64-failing-dmesg.log",
        version: Some(KtapVersion::Ktap(1)),
        counts: (78, 1, 2, 0, 0),
        top_level: 9,
        complete: true,
    },
    Expected {
        file: "kselftest-tap13.log",
        version: Some(KtapVersion::Tap(13)),
        counts: (4, 1, 1, 2, 0),
        top_level: 5,
        complete: true,
    },
    Expected {
        file: "ktap-v1-nested.ktap",
        version: Some(KtapVersion::Ktap(1)),
        counts: (3, 1, 2, 0, 0),
        top_level: 1,
        complete: true,
    },
    Expected {
        file: "kunit-crash.log",
        version: Some(KtapVersion::Ktap(1)),
        counts: (2, 1, 0, 0, 3),
        top_level: 1,
        complete: false,
    },
    Expected {
        file: "interleaved.log",
        version: Some(KtapVersion::Ktap(1)),
        counts: (4, 1, 0, 0, 0),
        top_level: 2,
        complete: true,
    },
    Expected {
        file: "tap14-plan-at-end.tap",
        version: Some(KtapVersion::Tap(14)),
        counts: (2, 1, 1, 1, 0),
        top_level: 4,
        complete: true,
    },
    Expected {
        file: "tap13-no-plan.tap",
        version: Some(KtapVersion::Tap(13)),
        counts: (2, 1, 0, 0, 0),
        top_level: 3,
        complete: false,
    },
    Expected {
        file: "kunit-old-tap14.log",
        version: Some(KtapVersion::Tap(14)),
        counts: (3, 0, 0, 0, 0),
        top_level: 1,
        complete: true,
    },
    Expected {
        file: "bail-out.tap",
        version: Some(KtapVersion::Tap(13)),
        counts: (1, 0, 0, 0, 2),
        top_level: 1,
        complete: false,
    },
    Expected {
        file: "prefixed.log",
        version: Some(KtapVersion::Ktap(1)),
        counts: (1, 0, 1, 0, 0),
        top_level: 1,
        complete: true,
    },
];

#[test]
fn ktap_sample_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ktap-samples");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The samples' README says where they come from.
        .filter(|name| name != "README.md")
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = TABLE.iter().map(|e| e.file.to_owned()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table, "every sample is in the table");

    for expected in TABLE {
        let report = sample(expected.file);
        let file = expected.file;
        assert_eq!(report.version, expected.version, "{file}");
        assert_eq!(counts(&report), expected.counts, "{file}: {report:#?}");
        assert_eq!(report.tests.len(), expected.top_level, "{file}");
        assert_eq!(
            report.complete, expected.complete,
            "{file}: {:?}",
            report.problems
        );
        if expected.complete {
            assert!(report.problems.is_empty(), "{file}: {:?}", report.problems);
        } else {
            assert!(!report.problems.is_empty(), "{file}");
        }
        // The JSON form round-trips.
        let json = serde_json::to_string(&report).unwrap();
        let back: KtapReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report, "{file}");
    }
}

/// The kernel log the runner stored for KUnit kernel (b) (see README.md): 6.1's nine suites,
/// one case edited to fail, busybox `dmesg` timestamps, and the rest of the boot log around
/// them.
#[test]
fn ktap_kunit_captured_structure() {
    let report = sample("kunit-6.1-x86_64-failing-dmesg.log");
    assert_eq!(report.plan, Some(9));
    let suites: Vec<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        suites,
        [
            "kunit_executor_test",
            "kunit-try-catch-test",
            "kunit-resource-test",
            "kunit-log-test",
            "kunit_status",
            "string-stream-test",
            "example",
            "list-kunit-test",
            "hlist",
        ]
    );
    let numbers: Vec<u32> = report.tests.iter().map(|t| t.number).collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<_>>());

    let suite = find(&report, "example");
    assert_eq!(suite.result, KtapResult::Fail);
    assert!(!suite.ok);
    assert_eq!(suite.expected_subtests, Some(4));
    assert_eq!(
        suite.diagnostics,
        [
            "example: initializing suite",
            "example: pass:1 fail:1 skip:2 total:4",
            "Totals: pass:1 fail:1 skip:2 total:4",
        ]
    );
    let failing = find(&report, "example.example_simple_test");
    assert_eq!((failing.number, failing.result), (1, KtapResult::Fail));
    assert_eq!(
        failing.diagnostics,
        [
            "example_simple_test: initializing",
            "example_simple_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29",
            "Expected 1 + 1 == 3, but",
            "    1 + 1 == 2",
        ]
    );
    let skip = find(&report, "example.example_skip_test");
    assert_eq!(skip.result, KtapResult::Skip);
    assert_eq!(
        skip.directive,
        Some(Directive::Skip(Some("this test should be skipped".into())))
    );
    assert_eq!(find(&report, "list-kunit-test").subtests.len(), 39);

    // As subtests: suite paths, the failure's message, times from the timestamps.
    let subtests = ktap::subtests(&report);
    assert_eq!(subtests.len(), 81);
    assert!(
        subtests
            .iter()
            .all(|t| t.suite.len() == 1 && t.duration.is_some())
    );
    let failed: Vec<_> = subtests
        .iter()
        .filter(|t| t.status == orchestrator_core::SubtestStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "example.example_simple_test");
    assert_eq!(failed[0].case(), "example_simple_test");
    assert_eq!(
        failed[0].message.as_deref(),
        Some(
            "example_simple_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29: \
             Expected 1 + 1 == 3, but"
        )
    );
    // From the plan line (0.650474) to the result line (0.654070).
    assert_eq!(
        failed[0].duration,
        Some(std::time::Duration::from_micros(3596))
    );
    let suites = ktap::suites(&report);
    assert_eq!(suites.len(), 9);
    assert_eq!(suites.iter().map(|s| s.cases).sum::<u32>(), 81);
    assert_eq!(
        ktap::kernel_log_problem(&report),
        None,
        "{:?}",
        report.problems
    );

    // Kernel (a), the same without the edit: every case as kunit.py counted them.
    let a = sample("kunit-6.1-x86_64-dmesg.log");
    assert_eq!(
        ktap::summary(&a),
        "KTAP: 79 passed, 0 failed, 2 skipped, 0 todo"
    );
    assert_eq!(paths(&a), paths(&report));
}

#[test]
fn ktap_kselftest_structure() {
    let report = sample("kselftest-tap13.log");
    assert_eq!(report.plan, Some(5));
    assert_eq!(
        paths(&report),
        [
            "selftests: timers: posix_timers.check_itimer virtual",
            "selftests: timers: posix_timers.check_itimer prof",
            "selftests: timers: posix_timers.check_itimer real",
            "selftests: net: reuseport_bpf_numa",
            "selftests: size: get_size",
            "selftests: ptrace: vmaccess.global.vmaccess",
            "selftests: ptrace: vmaccess.global.attach",
            "selftests: mm: hugetlb_madv_vs_map",
        ]
    );
    // The program's own `# `-prefixed TAP became subtests; its lines stay as diagnostics too.
    let timers = &report.tests[0];
    assert_eq!(timers.expected_subtests, Some(3));
    assert_eq!(timers.subtests.len(), 3);
    assert!(
        timers
            .diagnostics
            .contains(&"selftests: timers: posix_timers".to_owned())
    );

    let skipped = &report.tests[1];
    assert_eq!(skipped.result, KtapResult::Skip);
    assert_eq!(skipped.directive, Some(Directive::Skip(None)));
    assert_eq!(
        skipped.diagnostics.last().map(String::as_str),
        Some("SKIP: numa is not available")
    );

    let size = &report.tests[2];
    assert_eq!(size.result, KtapResult::Fail);
    assert_eq!(size.directive, None);
    assert_eq!(size.diagnostics.last().map(String::as_str), Some("exit=1"));

    let attach = find(&report, "selftests: ptrace: vmaccess.global.attach");
    assert_eq!(attach.result, KtapResult::Todo);
    assert!(!attach.ok);
    assert_eq!(
        attach.directive,
        Some(Directive::Todo(Some(
            "waits for a fix in ptrace_attach".into()
        )))
    );

    let flaky = &report.tests[4];
    assert_eq!(flaky.result, KtapResult::Todo);
    assert_eq!(
        flaky.directive.as_ref().and_then(Directive::reason),
        Some("flaky under emulation")
    );
}

#[test]
fn ktap_v1_nested_structure() {
    let report = sample("ktap-v1-nested.ktap");
    let main = &report.tests[0];
    assert_eq!(main.name, "driver_main");
    assert_eq!(main.result, KtapResult::Fail);
    assert_eq!(main.expected_subtests, Some(3));
    let names: Vec<_> = main.subtests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["driver_probe", "driver_unbind", "driver_io"]);
    let results: Vec<_> = main.subtests.iter().map(|t| t.result).collect();
    assert_eq!(
        results,
        [KtapResult::Pass, KtapResult::Pass, KtapResult::Fail]
    );
    assert_eq!(
        find(&report, "driver_main.driver_probe.probe_once").diagnostics,
        ["probe_once: setting up"]
    );
    assert_eq!(
        find(&report, "driver_main.driver_io.write_id").diagnostics,
        ["write_id: FAIL"]
    );
    let reset = find(&report, "driver_main.driver_io.reset");
    assert_eq!(reset.result, KtapResult::Skip);
    assert_eq!(
        reset.directive,
        Some(Directive::Skip(Some("reset line not wired".into())))
    );
    assert_eq!(report.flatten().len(), 6);
}

#[test]
fn ktap_crash_in_the_middle() {
    let report = sample("kunit-crash.log");
    assert!(!report.complete);
    assert_eq!(report.plan, Some(2));
    let suite = &report.tests[0];
    assert_eq!(suite.name, "crashy");
    assert_eq!(suite.result, KtapResult::Incomplete);
    assert!(!suite.ok);
    assert_eq!(suite.expected_subtests, Some(4));
    assert_eq!(suite.missing_subtests(), 2);
    assert_eq!(suite.subtests.len(), 2);
    // The parent counts as a failure: nothing below it explains its failure.
    assert_eq!(
        paths(&report),
        ["crashy", "crashy.crashy_first", "crashy.crashy_second"]
    );
    // The Oops' `#PF:` lines look like diagnostics: they are kept with the cut-short suite.
    assert!(
        suite
            .diagnostics
            .contains(&"module: crashy_test".to_owned())
    );
    assert!(
        suite
            .diagnostics
            .iter()
            .any(|d| d.starts_with("PF: supervisor read access"))
    );
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("plan says 2 tests, 1 reported"),
        "{problems}"
    );
    assert!(
        problems.contains("'crashy': plan says 4 tests, 2 reported"),
        "{problems}"
    );
    assert!(
        problems.contains("no result line for 'crashy'"),
        "{problems}"
    );
    assert!(
        problems.contains(
            "kernel crash while tests ran: BUG: kernel NULL pointer dereference, address: 0000000000000008"
        ),
        "{problems}"
    );
}

#[test]
fn ktap_interleaved_kernel_messages() {
    let report = sample("interleaved.log");
    assert_eq!(
        paths(&report),
        [
            "string-helpers.test_string_escape",
            "string-helpers.test_string_unescape",
            "string-helpers.test_string_get_size",
            "bitfields.test_bitfields_constants",
            "bitfields.test_bitfields_variables",
        ]
    );
    let unescape = find(&report, "string-helpers.test_string_unescape");
    assert_eq!(
        unescape.diagnostics,
        ["test_string_unescape: checking 12 cases"]
    );
    let get_size = find(&report, "string-helpers.test_string_get_size");
    assert_eq!(get_size.result, KtapResult::Fail);
    assert!(!get_size.ok);
    assert_eq!(
        get_size.directive,
        Some(Directive::Error(Some("helper returned -ENOMEM".into())))
    );
    // Unrelated messages went nowhere.
    let all_diagnostics: Vec<&String> = report
        .flatten()
        .iter()
        .flat_map(|(_, t)| t.diagnostics.iter())
        .chain(report.tests.iter().flat_map(|t| t.diagnostics.iter()))
        .collect();
    assert_eq!(all_diagnostics.len(), 1, "{all_diagnostics:?}");
}

#[test]
fn ktap_plan_at_end_and_missing_plan() {
    let report = sample("tap14-plan-at-end.tap");
    assert_eq!(report.plan, Some(4));
    let parser = &report.tests[0];
    assert_eq!(parser.name, "parser");
    assert_eq!(parser.expected_subtests, Some(2));
    assert_eq!(parser.subtests[1].name, "parses nested input");
    let timeout = &report.tests[1];
    assert_eq!(timeout.name, "handles timeouts");
    assert_eq!(
        timeout.diagnostics,
        ["message: \"timed out after 30s\"", "severity: fail"]
    );
    assert_eq!(
        report.tests[2].directive,
        Some(Directive::Skip(Some("not built in".into())))
    );
    assert_eq!(report.tests[3].result, KtapResult::Todo);

    let report = sample("tap13-no-plan.tap");
    assert_eq!(report.plan, None);
    assert!(!report.complete);
    assert_eq!(report.counts().missing, 0);
    assert!(report.problems[0].contains("no top-level plan"));
    assert_eq!(report.diagnostics, ["dhcp: no lease after 10s"]);
    let names: Vec<_> = report.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["boot", "mount root", "network up"]);
}

#[test]
fn ktap_old_kunit_bail_out_and_prefix() {
    let report = sample("kunit-old-tap14.log");
    assert_eq!(report.tests[0].name, "kunit-resource-test");
    assert_eq!(
        report.tests[0].subtests[0].name,
        "kunit_resource_test_init_resources"
    );

    let report = sample("bail-out.tap");
    assert_eq!(
        report.bail_out.as_deref(),
        Some("Couldn't open /dev/kvm: No such file or directory")
    );
    assert_eq!(report.tests.len(), 1);
    assert!(report.problems.iter().any(|p| p.starts_with("bail out: ")));

    let report = sample("prefixed.log");
    assert_eq!(paths(&report), ["prefixed.first", "prefixed.second"]);
    assert_eq!(report.tests[0].subtests[1].result, KtapResult::Skip);
}

#[test]
fn ktap_several_top_level_runs_append() {
    // Built-in suites first, a module's suite later: two top-level runs.
    let text = "KTAP version 1\n1..1\n    # Subtest: a\n    1..1\n    ok 1 a1\nok 1 a\n\
                [   9.1] loading module\n\
                KTAP version 1\n1..1\n    # Subtest: b\n    1..1\n    not ok 1 b1\nnot ok 1 b\n";
    let report = ktap::parse(text);
    assert!(report.complete, "{:?}", report.problems);
    assert_eq!(report.plan, Some(2));
    assert_eq!(paths(&report), ["a.a1", "b.b1"]);
    assert_eq!(counts(&report), (1, 1, 0, 0, 0));
}

#[test]
fn ktap_parent_failure_without_failing_child_is_counted() {
    let text = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..2\n    \
                ok 1 x\n    ok 2 y\n# s: suite exit: memory leak\nnot ok 1 s\n";
    let report = ktap::parse(text);
    assert!(report.complete);
    assert_eq!(paths(&report), ["s", "s.x", "s.y"]);
    assert_eq!(counts(&report), (2, 1, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// What every report must satisfy.
fn check_invariants(text: &str) -> Result<(), TestCaseError> {
    let report = ktap::parse(text);
    let again = ktap::parse(text);
    prop_assert_eq!(&report, &again, "parsing is deterministic");

    let counts = report.counts();
    let flat = report.flatten();
    prop_assert_eq!(counts.total(), flat.len() as u64);

    fn leaves(tests: &[KtapTest]) -> u64 {
        tests
            .iter()
            .map(|t| {
                if t.subtests.is_empty() {
                    1
                } else {
                    leaves(&t.subtests)
                }
            })
            .sum()
    }
    let leaf_count = leaves(&report.tests);
    prop_assert!(flat.len() as u64 >= leaf_count);
    prop_assert_eq!(
        flat.iter().filter(|(_, t)| t.subtests.is_empty()).count() as u64,
        leaf_count
    );
    fn failures(tests: &[KtapTest]) -> u64 {
        tests
            .iter()
            .map(|t| {
                u64::from(t.result.is_failure() && t.subtests.is_empty()) + failures(&t.subtests)
            })
            .sum()
    }
    prop_assert!(counts.failed >= failures(&report.tests));
    fn any_incomplete(tests: &[KtapTest]) -> bool {
        tests
            .iter()
            .any(|t| t.result == KtapResult::Incomplete || any_incomplete(&t.subtests))
    }
    if report.complete {
        prop_assert_eq!(counts.missing, 0);
        prop_assert!(!any_incomplete(&report.tests));
        prop_assert!(report.plan.is_some());
        prop_assert!(report.bail_out.is_none());
    }
    if report.tests.is_empty() && report.plan.is_none() {
        prop_assert!(!report.complete);
    }
    let json = serde_json::to_string(&report).unwrap();
    let back: KtapReport = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(back, report);
    Ok(())
}

fn fragment() -> impl Strategy<Value = String> {
    let body = prop_oneof![
        Just("KTAP version 1".to_owned()),
        Just("TAP version 13".to_owned()),
        Just("TAP version 14".to_owned()),
        (0u32..6).prop_map(|n| format!("1..{n}")),
        Just("1..0 # SKIP nothing to do".to_owned()),
        (
            any::<bool>(),
            proptest::option::of(0u32..8),
            any::<bool>(),
            "[a-z_]{0,8}",
            proptest::option::of(prop_oneof![
                Just("SKIP"),
                Just("skip"),
                Just("TODO"),
                Just("todo"),
                Just("XFAIL"),
                Just("TIMEOUT"),
                Just("ERROR"),
                Just("rcode=0"),
                Just(""),
            ]),
            "[a-z ]{0,6}",
        )
            .prop_map(|(ok, number, dash, name, directive, reason)| {
                let mut line = if ok {
                    "ok".to_owned()
                } else {
                    "not ok".to_owned()
                };
                if let Some(n) = number {
                    line += &format!(" {n}");
                }
                if dash {
                    line += " -";
                }
                line += &format!(" {name}");
                if let Some(d) = directive {
                    line += &format!(" # {d} {reason}");
                }
                line
            }),
        "[a-z_]{0,8}".prop_map(|name| format!("# Subtest: {name}")),
        "[ -~]{0,12}".prop_map(|text| format!("# {text}")),
        Just("---".to_owned()),
        Just("...".to_owned()),
        Just("  message: boom".to_owned()),
        Just("Bail out! stop".to_owned()),
        Just("BUG: kernel NULL pointer dereference, address: 0".to_owned()),
        Just("Oops: 0000 [#1] SMP".to_owned()),
        "[ -~]{0,20}",
        any::<String>(),
    ];
    // kselftest's runner prefixes each program's own output with `# `.
    let body = prop_oneof![4 => body.clone(), 1 => body.prop_map(|line| format!("# {line}"))];
    (
        0usize..14,
        proptest::option::of(prop_oneof![
            Just("[    1.234567] "),
            Just("[ 12.5][    T1] "),
            Just("<6>[    0.000001] "),
            Just("kunit: "),
        ]),
        body,
    )
        .prop_map(|(indent, decoration, body)| {
            format!("{}{}{body}", decoration.unwrap_or(""), " ".repeat(indent))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ktap_fuzz_arbitrary_strings(text in any::<String>()) {
        check_invariants(&text)?;
    }

    #[test]
    fn ktap_fuzz_printable_lines(text in "([ -~]{0,30}\n){0,30}") {
        check_invariants(&text)?;
    }

    #[test]
    fn ktap_fuzz_ktap_like_lines(
        lines in proptest::collection::vec(fragment(), 0..80),
        crlf in any::<bool>(),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        check_invariants(&text)?;
    }

    #[test]
    fn ktap_fuzz_truncation_never_adds_results(
        lines in proptest::collection::vec(fragment(), 0..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = lines.join("\n");
        check_invariants(&text)?;
        // A cut anywhere (on a char boundary) is still parsed without panicking.
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        check_invariants(&text[..at])?;
    }
}

#[test]
fn ktap_kselftest_timeout_cuts_nested_output() {
    let text = "TAP version 13\n1..2\n# selftests: net: udpgso_bench.sh\n# TAP version 13\n\
                # 1..4\n# ok 1 ipv4\n# ok 2 ipv6\n\
                not ok 1 selftests: net: udpgso_bench.sh # TIMEOUT 45 seconds\n\
                # selftests: net: nothing\n# TAP version 13\n# 1..0 # SKIP needs root\n\
                ok 2 selftests: net: nothing # SKIP\n";
    let report = ktap::parse(text);
    assert!(!report.complete);
    let bench = &report.tests[0];
    assert_eq!(bench.result, KtapResult::Fail);
    assert_eq!(
        bench.directive,
        Some(Directive::Timeout(Some("45 seconds".into())))
    );
    assert_eq!(bench.missing_subtests(), 2);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p == "in 'selftests: net: udpgso_bench.sh': plan says 4 tests, 2 reported"),
        "{:?}",
        report.problems
    );
    // The parent's own failure is counted: nothing below it failed.
    assert_eq!(counts(&report), (2, 1, 1, 0, 2));
    let nothing = &report.tests[1];
    assert_eq!(nothing.expected_subtests, Some(0));
    assert!(nothing.subtests.is_empty());
}

#[test]
fn ktap_empty_plan_with_skip_reason() {
    let report = ktap::parse("KTAP version 1\n1..0 # SKIP no devices found\n");
    assert!(report.complete, "{:?}", report.problems);
    assert_eq!(report.plan, Some(0));
    assert_eq!(report.diagnostics, ["SKIP no devices found"]);
    assert_eq!(report.counts(), ktap::Counts::default());
}
