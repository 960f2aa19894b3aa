use std::collections::BTreeMap;
use std::time::Duration;

use artifact_store::retention::{
    FirstFailureAfterPass, KeepLastRuns, KindBudgets, LastPassingRun, MaxAge, MaxTotalSize,
    OutcomeAge, Pin, Policy, RetentionContext, RetentionPolicy,
};
use artifact_store::{
    ArtifactKind, ArtifactRecord, Digest, GcOptions, NewArtifact, TestOutcome, VerifyOptions,
};
use chrono::{DateTime, Utc};

use crate::support::store;

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// (test, run, kind, outcome, age in days, stored size, tag)
type Row = (
    &'static str,
    &'static str,
    ArtifactKind,
    Option<TestOutcome>,
    u32,
    u64,
    Option<&'static str>,
);

fn records(rows: &[Row]) -> Vec<ArtifactRecord> {
    let mut v: Vec<ArtifactRecord> = rows
        .iter()
        .enumerate()
        .map(|(i, (t, r, k, o, age, size, tag))| ArtifactRecord {
            id: format!("a{i}"),
            digest: Digest::of(format!("{i}").as_bytes()),
            test_id: (*t).into(),
            run_id: (*r).into(),
            kind: *k,
            name: "f".into(),
            raw_size: *size,
            stored_size: *size,
            created_at: now() - chrono::Duration::days(*age as i64),
            outcome: *o,
            arch: None,
            metadata: tag
                .map(|t| BTreeMap::from([("tag".to_owned(), t.to_owned())]))
                .unwrap_or_default(),
            evicted: None,
        })
        .collect();
    v.sort_by_key(|r| r.created_at);
    v
}

use ArtifactKind::{CoreDump as Core, Log};
use TestOutcome::{Crashed, Failed, Passed};

/// A history for the outcome rules: test `a` passes, regresses, recovers, regresses again.
const HISTORY: &[Row] = &[
    ("a", "r1", Log, Some(Passed), 10, 10, None),
    ("a", "r2", Log, Some(Passed), 8, 10, None),
    ("a", "r3", Log, Some(Failed), 6, 10, None),
    ("a", "r4", Log, Some(Failed), 5, 10, None),
    ("a", "r5", Log, Some(Passed), 3, 10, None),
    ("a", "r6", Core, Some(Crashed), 1, 10, None),
    ("b", "r1", Log, Some(Failed), 9, 10, None),
    ("b", "r2", Log, None, 2, 10, Some("release")),
];

struct Case {
    name: &'static str,
    policy: Policy,
    rows: &'static [Row],
    /// Per run `test/run`: kept?, and a fragment of the reason.
    expect: &'static [(&'static str, bool, &'static str)],
}

fn check(case: Case) {
    let recs = records(case.rows);
    let ctx = RetentionContext::new(now(), &recs);
    let plan = case.policy.plan(&ctx);
    assert_eq!(plan.decisions.len(), recs.len(), "{}", case.name);
    for (key, keep, reason) in case.expect {
        let (test, run) = key.split_once('/').unwrap();
        let ds: Vec<_> = plan
            .decisions
            .iter()
            .filter(|d| d.test_id == test && d.run_id == run)
            .collect();
        assert!(!ds.is_empty(), "{}: no artifact for {key}", case.name);
        for d in ds {
            assert_eq!(d.keep, *keep, "{}: {key}: {}\n{plan}", case.name, d.reason);
            assert!(
                d.reason.contains(reason),
                "{}: {key}: reason `{}` lacks `{reason}`",
                case.name,
                d.reason
            );
        }
    }
}

#[test]
fn retention_rules_table() {
    let cases = vec![
        Case {
            name: "empty policy removes nothing",
            policy: Policy::new(),
            rows: HISTORY,
            expect: &[
                ("a/r1", true, "no rule removes it"),
                ("b/r2", true, "no rule removes it"),
            ],
        },
        Case {
            name: "max age",
            policy: Policy::new().with(MaxAge::new(4 * DAY)),
            rows: HISTORY,
            expect: &[
                ("a/r4", false, "older than max age 4d"),
                ("a/r5", true, "younger than max age 4d"),
            ],
        },
        Case {
            name: "max age per kind: core dumps age out sooner",
            policy: Policy::new()
                .with(MaxAge::new(30 * DAY).kind(Core, Duration::from_secs(12 * 3600))),
            rows: HISTORY,
            expect: &[
                ("a/r6", false, "max age 12h for core-dump"),
                ("a/r1", true, "younger than max age 30d"),
            ],
        },
        Case {
            name: "keep last 2 runs per test",
            policy: Policy::new().with(KeepLastRuns(2)),
            rows: HISTORY,
            expect: &[
                ("a/r4", false, "not among the last 2 runs"),
                ("a/r5", true, "among the last 2 runs"),
                ("a/r6", true, "among the last 2"),
                ("b/r1", true, "among the last 2"),
            ],
        },
        Case {
            name: "max total size keeps the newest",
            policy: Policy::new().with(MaxTotalSize(30)),
            rows: HISTORY,
            expect: &[
                ("a/r6", true, "within the total size budget"),
                ("b/r2", true, "within"),
                ("a/r5", true, "within"),
                ("a/r4", false, "over the total size budget"),
                ("a/r1", false, "oldest go first"),
            ],
        },
        Case {
            name: "per-kind budget applies to its kind only",
            policy: Policy::new().with(KindBudgets::new().kind(Core, 5)),
            rows: HISTORY,
            expect: &[
                ("a/r6", false, "over the core-dump budget"),
                ("a/r1", true, "no rule removes it"),
            ],
        },
        Case {
            name: "failures kept longer than passes",
            policy: Policy::new().with(OutcomeAge {
                failures: 7 * DAY,
                passes: 2 * DAY,
                other: 30 * DAY,
            }),
            rows: HISTORY,
            expect: &[
                ("a/r3", true, "failure younger than 7d"),
                ("a/r5", false, "pass older than 2d"),
                ("b/r1", false, "failure older than 7d"),
                ("b/r2", true, "other outcome younger"),
            ],
        },
        Case {
            name: "first failing run after a pass",
            policy: Policy::new()
                .with(MaxAge::new(DAY))
                .with(FirstFailureAfterPass),
            rows: HISTORY,
            expect: &[
                ("a/r3", true, "first failing run after a pass"),
                ("a/r4", false, "older than max age 1d"),
                ("a/r6", true, "first failing run after a pass"),
                ("b/r1", false, "older"),
            ],
        },
        Case {
            name: "last passing run",
            policy: Policy::new().with(KeepLastRuns(1)).with(LastPassingRun),
            rows: HISTORY,
            expect: &[
                ("a/r5", true, "last passing run of its test"),
                ("a/r2", false, "not among the last 1 runs"),
                ("a/r6", true, "among the last 1 runs"),
            ],
        },
        Case {
            name: "pinning by run and tag",
            policy: Policy::new()
                .with(MaxAge::new(DAY))
                .with(Pin::new().run("r1").tag("release")),
            rows: HISTORY,
            expect: &[
                ("a/r1", true, "run r1 is pinned"),
                ("b/r1", true, "run r1 is pinned"),
                ("b/r2", true, "tag release is pinned"),
                ("a/r2", false, "older than max age 1d"),
            ],
        },
        Case {
            name: "combination: kept if any rule keeps, reasons joined",
            policy: Policy::new()
                .with(KeepLastRuns(1))
                .with(MaxTotalSize(10))
                .with(LastPassingRun)
                .with(FirstFailureAfterPass)
                .with(Pin::new().tag("release")),
            rows: HISTORY,
            expect: &[
                (
                    "a/r6",
                    true,
                    "among the last 1 runs of its test; within the total size budget",
                ),
                ("a/r5", true, "last passing run"),
                ("a/r3", true, "first failing run after a pass"),
                (
                    "a/r4",
                    false,
                    "not among the last 1 runs of its test; over the total size budget",
                ),
                ("a/r1", false, "not among the last 1 runs"),
                ("b/r1", false, "not among"),
                ("b/r2", true, "tag release is pinned"),
            ],
        },
    ];
    for c in cases {
        check(c);
    }
}

#[test]
fn dry_run_lists_every_artifact_then_apply_evicts_and_collects() {
    let (_d, s) = store();
    let t = Utc::now();
    for (i, run) in ["r1", "r2", "r3"].iter().enumerate() {
        let a = NewArtifact::new("t", *run, Log, "log")
            .outcome(Passed)
            .created_at(t - chrono::Duration::days(3 - i as i64));
        s.add_bytes(a, format!("content {run}").as_bytes()).unwrap();
    }
    let policy = Policy::new().with(KeepLastRuns(2));
    let plan = s.plan_retention(&policy, t).unwrap();
    assert_eq!(plan.decisions.len(), 3);
    assert_eq!(plan.removed().count(), 1);
    let text = plan.to_string();
    assert!(
        text.contains("remove")
            && text.contains("run=r1")
            && text.contains("not among the last 2 runs"),
        "{text}"
    );
    // The dry run changed nothing.
    assert_eq!(s.query(&artifact_store::Query::new()).unwrap().len(), 3);
    let out = s.apply_retention(&plan).unwrap();
    assert_eq!(out.records_evicted, 1);
    assert_eq!(out.gc.blobs_removed, 1);
    let ev = s
        .query(&artifact_store::Query::new().run("r1").include_evicted(true))
        .unwrap();
    assert!(
        ev[0]
            .evicted
            .as_ref()
            .unwrap()
            .reason
            .contains("not among the last 2 runs")
    );
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
    assert_eq!(s.gc(&GcOptions::default()).unwrap().blobs_removed, 0);
    // A custom rule through the trait.
    #[derive(Debug)]
    struct NothingOlderThanNow;
    impl RetentionPolicy for NothingOlderThanNow {
        fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<artifact_store::retention::Decision> {
            ctx.records
                .iter()
                .map(|_| artifact_store::retention::Decision::Remove("custom".into()))
                .collect()
        }
    }
    let plan = s.plan_retention(&NothingOlderThanNow, t).unwrap();
    assert_eq!(plan.removed().count(), 2);
}
