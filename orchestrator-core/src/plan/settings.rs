//! What the `[store]` and `[monitor]` tables of a plan say, as plain data.
//!
//! These types only carry the plan's values; the programs that run a plan turn them into the
//! settings of the artifact store ([`RetentionPlan::policy`]) and the resource monitor
//! ([`MonitorPlan::config`]). A field left `None` (or empty) leaves the setting to that
//! program's default.

#[cfg(feature = "store")]
use std::collections::{BTreeMap, BTreeSet};
#[cfg(feature = "store")]
use std::path::PathBuf;
#[cfg(any(feature = "store", feature = "monitor"))]
use std::time::Duration;

#[cfg(feature = "store")]
use artifact_store::retention::{
    Decision, FirstFailureAfterPass, KeepLastRuns, KindBudgets, LastPassingRun, MaxAge,
    MaxTotalSize, OutcomeAge, Pin, RetentionContext,
};
#[cfg(feature = "store")]
use artifact_store::{ArtifactKind, ArtifactRecord, Durability, Policy, RetentionPolicy};

/// The `[store]` table: where test artifacts are kept, and for how long.
#[cfg(feature = "store")]
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct StorePlan {
    /// The store's directory (`path`, required), resolved against the plan file's directory.
    pub path: PathBuf,
    /// Whether every write is synced to disk (`durability = "fsync"`, the default) or not
    /// (`"relaxed"`: survives a crash of the program, not of the machine).
    pub durability: Durability,
    /// A remote the store writes through to (`remote = "s3://bucket/prefix"`), shared by the
    /// workers of a sharded campaign. Credentials come from the environment, never the plan.
    pub remote: Option<String>,
    /// The `[store.retention]` table, if the plan has one.
    pub retention: Option<RetentionPlan>,
}

#[cfg(feature = "store")]
impl StorePlan {
    /// A store in `path` that syncs every write and has no retention rules.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StorePlan {
            path: path.into(),
            ..StorePlan::default()
        }
    }
}

/// The `[store.retention]` table: which stored artifacts keep their contents.
///
/// Each key set adds a rule; [`RetentionPlan::policy`] combines them, and an artifact stays if
/// **any** rule keeps it. A table with no keys removes nothing. (Not to be confused with
/// [`artifact_store::retention::RetentionPlan`], a dry run of a policy.)
#[cfg(feature = "store")]
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RetentionPlan {
    /// Artifacts older than this are removed, younger ones kept (`max-age`).
    pub max_age: Option<Duration>,
    /// The artifacts of the last runs of each test are kept, older runs' removed
    /// (`keep-last-runs`, at least 1).
    pub keep_last_runs: Option<usize>,
    /// The newest artifacts are kept up to this many stored bytes in all, older ones removed
    /// (`max-total-size`).
    pub max_total_size: Option<u64>,
    /// The maximum age of some kinds of artifact (`kind-max-age`): with `max_age` they replace
    /// it for their kind; without it, other kinds are left to the other rules.
    pub kind_max_age: BTreeMap<ArtifactKind, Duration>,
    /// Stored-byte budgets of some kinds of artifact, newest kept first (`kind-budgets`).
    pub kind_budgets: BTreeMap<ArtifactKind, u64>,
    /// Artifacts of failed, timed-out or crashed tests are kept at least this long
    /// (`keep-failures-for`).
    pub keep_failures_for: Option<Duration>,
    /// Artifacts of passing tests are kept at least this long (`keep-passes-for`).
    pub keep_passes_for: Option<Duration>,
    /// The first failing run after a passing run of each test, where a regression started,
    /// is always kept (`first-failure-after-pass`, default `false`).
    pub first_failure_after_pass: bool,
    /// The last passing run of each test is always kept (`last-passing-run`, default
    /// `false`).
    pub last_passing_run: bool,
    /// Runs whose artifacts are always kept (`pin-runs`).
    pub pin_runs: Vec<String>,
    /// Artifacts with one of these tags are always kept (`pin-tags`).
    pub pin_tags: Vec<String>,
}

#[cfg(feature = "store")]
impl RetentionPlan {
    /// The artifact store's policy for these rules: one built-in rule per key set, combined
    /// so that an artifact stays if any rule keeps it.
    ///
    /// `keep-failures-for` and `keep-passes-for` ([`OutcomeAge`]) only ever keep, as does
    /// `kind-max-age` ([`MaxAge`]) for the kinds it lists when there is no `max-age`; every
    /// other rule behaves as in [`artifact_store::retention`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use orchestrator_core::plan::RetentionPlan;
    ///
    /// let mut rules = RetentionPlan::default();
    /// rules.max_age = Some(Duration::from_secs(30 * 86_400));
    /// rules.last_passing_run = true;
    /// let policy = rules.policy();
    /// # let _ = policy;
    /// ```
    pub fn policy(&self) -> Policy {
        let mut policy = Policy::new();
        if let Some(max) = self.max_age {
            let mut rule = MaxAge::new(max);
            for (&kind, &age) in &self.kind_max_age {
                rule = rule.kind(kind, age);
            }
            policy = policy.with(rule);
        } else if !self.kind_max_age.is_empty() {
            let mut rule = MaxAge::new(Duration::MAX);
            for (&kind, &age) in &self.kind_max_age {
                rule = rule.kind(kind, age);
            }
            policy = policy.with(Scoped {
                rule,
                applies: Applies::Kinds(self.kind_max_age.keys().copied().collect()),
                keep_only: false,
            });
        }
        if let Some(n) = self.keep_last_runs {
            policy = policy.with(KeepLastRuns(n));
        }
        if let Some(bytes) = self.max_total_size {
            policy = policy.with(MaxTotalSize(bytes));
        }
        if !self.kind_budgets.is_empty() {
            let budgets = self
                .kind_budgets
                .iter()
                .fold(KindBudgets::new(), |b, (&kind, &bytes)| b.kind(kind, bytes));
            policy = policy.with(budgets);
        }
        if self.keep_failures_for.is_some() || self.keep_passes_for.is_some() {
            policy = policy.with(Scoped {
                rule: OutcomeAge {
                    failures: self.keep_failures_for.unwrap_or(Duration::ZERO),
                    passes: self.keep_passes_for.unwrap_or(Duration::ZERO),
                    other: Duration::ZERO,
                },
                applies: Applies::Outcomes {
                    failures: self.keep_failures_for.is_some(),
                    passes: self.keep_passes_for.is_some(),
                },
                keep_only: true,
            });
        }
        if self.first_failure_after_pass {
            policy = policy.with(FirstFailureAfterPass);
        }
        if self.last_passing_run {
            policy = policy.with(LastPassingRun);
        }
        if !self.pin_runs.is_empty() || !self.pin_tags.is_empty() {
            let pin = self.pin_runs.iter().fold(Pin::new(), |p, run| p.run(run));
            let pin = self.pin_tags.iter().fold(pin, |p, tag| p.tag(tag));
            policy = policy.with(pin);
        }
        policy
    }
}

/// Which records a [`Scoped`] rule has a say on.
#[cfg(feature = "store")]
#[derive(Debug)]
enum Applies {
    /// Records of these kinds.
    Kinds(BTreeSet<ArtifactKind>),
    /// Records of failing tests, of passing tests, or both.
    Outcomes { failures: bool, passes: bool },
}

/// A built-in rule narrowed to some records: it abstains on the others and, with `keep_only`,
/// instead of removing.
#[cfg(feature = "store")]
#[derive(Debug)]
struct Scoped<R> {
    rule: R,
    applies: Applies,
    keep_only: bool,
}

#[cfg(feature = "store")]
impl<R: RetentionPolicy> RetentionPolicy for Scoped<R> {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let applies = |record: &ArtifactRecord| match &self.applies {
            Applies::Kinds(kinds) => kinds.contains(&record.kind),
            Applies::Outcomes { failures, passes } => record
                .outcome
                .is_some_and(|o| (*failures && o.is_failure()) || (*passes && o.is_pass())),
        };
        self.rule
            .decide(ctx)
            .into_iter()
            .zip(ctx.records)
            .map(|(decision, record)| match decision {
                _ if !applies(record) => Decision::Abstain,
                Decision::Remove(_) if self.keep_only => Decision::Abstain,
                decision => decision,
            })
            .collect()
    }
}

/// The `[monitor]` table: sampling the host processes of each test.
#[cfg(feature = "monitor")]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MonitorPlan {
    /// Whether tests are monitored (`enabled`, default `true`).
    pub enabled: bool,
    /// Time between samples (`interval`, at least 10ms, default 100ms).
    pub interval: Duration,
    /// Processes listed in each list of a result's per-process breakdown, the top ones by CPU
    /// and by peak memory (`top-processes`, 0 to 100, default 5; 0 turns the breakdown off).
    pub top_processes: usize,
}

#[cfg(feature = "monitor")]
impl MonitorPlan {
    /// The shortest `interval` a plan may ask for.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

    /// The monitor's settings: its defaults with this plan's interval and breakdown size.
    pub fn config(&self) -> perf_monitor::MonitorConfig {
        perf_monitor::MonitorConfig::default()
            .with_interval(self.interval)
            .with_top_processes(self.top_processes)
    }
}

#[cfg(feature = "monitor")]
impl Default for MonitorPlan {
    fn default() -> Self {
        MonitorPlan {
            enabled: true,
            interval: Duration::from_millis(100),
            top_processes: 5,
        }
    }
}

#[cfg(all(test, feature = "store", feature = "monitor"))]
mod tests {
    use chrono::{TimeDelta, Utc};

    use artifact_store::{Digest, TestOutcome};

    use super::*;

    fn record(
        id: &str,
        run: &str,
        days_old: i64,
        kind: ArtifactKind,
        outcome: Option<TestOutcome>,
    ) -> ArtifactRecord {
        ArtifactRecord {
            id: id.to_owned(),
            digest: Digest::of(id.as_bytes()),
            test_id: "test".to_owned(),
            run_id: run.to_owned(),
            kind,
            name: format!("{id}.txt"),
            raw_size: 100,
            stored_size: 100,
            created_at: Utc::now() - TimeDelta::days(days_old),
            outcome,
            arch: None,
            metadata: BTreeMap::new(),
            evicted: None,
        }
    }

    fn kept(rules: &RetentionPlan, records: &[ArtifactRecord]) -> Vec<bool> {
        let ctx = RetentionContext::new(Utc::now(), records);
        rules
            .policy()
            .plan(&ctx)
            .decisions
            .iter()
            .map(|d| d.keep)
            .collect()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn empty_rules_remove_nothing() {
        let records = [record("a", "r1", 400, ArtifactKind::Log, None)];
        assert_eq!(kept(&RetentionPlan::default(), &records), [true]);
    }

    #[test]
    fn max_age_with_per_kind_ages() {
        let rules = RetentionPlan {
            max_age: Some(30 * DAY),
            kind_max_age: BTreeMap::from([(ArtifactKind::CoreDump, 7 * DAY)]),
            ..RetentionPlan::default()
        };
        let records = [
            record("log-old", "r1", 40, ArtifactKind::Log, None),
            record("log-new", "r2", 10, ArtifactKind::Log, None),
            record("core-new", "r2", 10, ArtifactKind::CoreDump, None),
            record("core-newer", "r3", 1, ArtifactKind::CoreDump, None),
        ];
        assert_eq!(kept(&rules, &records), [false, true, false, true]);
    }

    #[test]
    fn kind_max_age_alone_leaves_other_kinds_to_other_rules() {
        let rules = RetentionPlan {
            kind_max_age: BTreeMap::from([(ArtifactKind::CoreDump, 7 * DAY)]),
            keep_last_runs: Some(1),
            ..RetentionPlan::default()
        };
        let records = [
            record("log-old-run", "r1", 10, ArtifactKind::Log, None),
            record("core-old-run", "r1", 10, ArtifactKind::CoreDump, None),
            record("core-young-old-run", "r2", 3, ArtifactKind::CoreDump, None),
            record("log-last-run", "r3", 1, ArtifactKind::Log, None),
        ];
        // The old log is not kept forever by a "max age" of other kinds.
        assert_eq!(kept(&rules, &records), [false, false, true, true]);
    }

    #[test]
    fn outcome_ages_only_keep() {
        let rules = RetentionPlan {
            keep_failures_for: Some(30 * DAY),
            max_age: Some(7 * DAY),
            ..RetentionPlan::default()
        };
        let records = [
            record(
                "fail-40d",
                "r1",
                40,
                ArtifactKind::Log,
                Some(TestOutcome::Crashed),
            ),
            record(
                "fail-20d",
                "r2",
                20,
                ArtifactKind::Log,
                Some(TestOutcome::Failed),
            ),
            record(
                "pass-20d",
                "r3",
                20,
                ArtifactKind::Log,
                Some(TestOutcome::Passed),
            ),
            record(
                "pass-1d",
                "r4",
                1,
                ArtifactKind::Log,
                Some(TestOutcome::Passed),
            ),
        ];
        assert_eq!(kept(&rules, &records), [false, true, false, true]);

        // Alone, they remove nothing.
        let rules = RetentionPlan {
            keep_passes_for: Some(DAY),
            ..RetentionPlan::default()
        };
        assert_eq!(kept(&rules, &records), [true; 4]);
    }

    #[test]
    fn budgets_runs_and_pins() {
        let rules = RetentionPlan {
            max_total_size: Some(250),
            pin_runs: vec!["r1".into()],
            ..RetentionPlan::default()
        };
        let records = [
            record("pinned", "r1", 9, ArtifactKind::Log, None),
            record("oldest", "r2", 8, ArtifactKind::Log, None),
            record("old", "r3", 7, ArtifactKind::Log, None),
            record("new", "r4", 1, ArtifactKind::Log, None),
        ];
        assert_eq!(kept(&rules, &records), [true, false, true, true]);

        let rules = RetentionPlan {
            kind_budgets: BTreeMap::from([(ArtifactKind::Log, 100)]),
            keep_last_runs: Some(2),
            ..RetentionPlan::default()
        };
        let records = [
            record("old-log", "r1", 3, ArtifactKind::Log, None),
            record("old-core", "r1", 3, ArtifactKind::CoreDump, None),
            record("mid-log", "r2", 2, ArtifactKind::Log, None),
            record("new-log", "r3", 1, ArtifactKind::Log, None),
        ];
        assert_eq!(kept(&rules, &records), [false, false, true, true]);
    }

    #[test]
    fn pass_and_failure_runs() {
        let rules = RetentionPlan {
            max_age: Some(DAY),
            first_failure_after_pass: true,
            last_passing_run: true,
            ..RetentionPlan::default()
        };
        let records = [
            record(
                "pass",
                "r1",
                5,
                ArtifactKind::Log,
                Some(TestOutcome::Passed),
            ),
            record(
                "first-fail",
                "r2",
                4,
                ArtifactKind::Log,
                Some(TestOutcome::Failed),
            ),
            record(
                "fail-again",
                "r3",
                3,
                ArtifactKind::Log,
                Some(TestOutcome::Failed),
            ),
        ];
        assert_eq!(kept(&rules, &records), [true, true, false]);
    }

    #[test]
    fn monitor_defaults() {
        let monitor = MonitorPlan::default();
        assert!(monitor.enabled);
        assert_eq!(monitor.config().interval, Duration::from_millis(100));
        assert_eq!(StorePlan::new("x").durability, Durability::Fsync);
    }
}
