//! Retention policies: which artifacts keep their blobs.
//!
//! Every rule looks at all live records and says, for each one, [`Decision::Keep`],
//! [`Decision::Remove`] or [`Decision::Abstain`]. Rules combine in a [`Policy`]: an artifact is
//! kept if **any** rule keeps it, removed if at least one rule removes it and none keeps it, and
//! kept when every rule abstains. An empty policy removes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{ArtifactKind, ArtifactRecord, TAG_KEY};

/// One rule's word on one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep it, because...
    Keep(String),
    /// Remove it, because...
    Remove(String),
    /// No opinion.
    Abstain,
}

/// A run of one test: its artifacts share a test id and run id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run id.
    pub run_id: String,
    /// Its earliest artifact's time (runs are ordered by it, then by id).
    pub started: DateTime<Utc>,
    /// Some artifact has a failing outcome.
    pub failed: bool,
    /// Some artifact passed and none failed.
    pub passed: bool,
}

/// What rules see: the live records and their runs.
#[derive(Debug)]
pub struct RetentionContext<'a> {
    /// The time decisions are made at.
    pub now: DateTime<Utc>,
    /// The live records (blob not evicted), oldest first.
    pub records: &'a [ArtifactRecord],
    runs: HashMap<&'a str, Vec<RunSummary>>,
}

impl<'a> RetentionContext<'a> {
    /// Builds the context (runs per test, oldest first).
    pub fn new(now: DateTime<Utc>, records: &'a [ArtifactRecord]) -> Self {
        let mut by: HashMap<&'a str, HashMap<&'a str, RunSummary>> = HashMap::new();
        for r in records {
            let s = by
                .entry(r.test_id.as_str())
                .or_default()
                .entry(r.run_id.as_str())
                .or_insert_with(|| RunSummary {
                    run_id: r.run_id.clone(),
                    started: r.created_at,
                    failed: false,
                    passed: false,
                });
            s.started = s.started.min(r.created_at);
            if let Some(o) = r.outcome {
                s.failed |= o.is_failure();
                s.passed |= o.is_pass();
            }
        }
        let runs = by
            .into_iter()
            .map(|(t, m)| {
                let mut v: Vec<RunSummary> = m.into_values().collect();
                for s in &mut v {
                    s.passed &= !s.failed;
                }
                v.sort_by(|a, b| {
                    a.started
                        .cmp(&b.started)
                        .then_with(|| a.run_id.cmp(&b.run_id))
                });
                (t, v)
            })
            .collect();
        RetentionContext { now, records, runs }
    }

    /// The runs of `test_id`, oldest first.
    pub fn runs_of(&self, test_id: &str) -> &[RunSummary] {
        self.runs.get(test_id).map(Vec::as_slice).unwrap_or(&[])
    }

    fn age(&self, r: &ArtifactRecord) -> Duration {
        (self.now - r.created_at).to_std().unwrap_or(Duration::ZERO)
    }
}

/// A retention rule. Return one decision per record of `ctx.records`, in order.
pub trait RetentionPolicy: fmt::Debug + Send + Sync {
    /// Decides for every record.
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision>;
}

impl<P: RetentionPolicy + ?Sized> RetentionPolicy for Box<P> {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        (**self).decide(ctx)
    }
}

impl<P: RetentionPolicy + ?Sized> RetentionPolicy for std::sync::Arc<P> {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        (**self).decide(ctx)
    }
}

impl<P: RetentionPolicy + ?Sized> RetentionPolicy for &P {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        (**self).decide(ctx)
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) && s > 0 => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3_600) && s > 0 => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) && s > 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Keeps artifacts younger than a maximum age (optionally per kind), removes older ones.
#[derive(Debug, Clone)]
pub struct MaxAge {
    default: Duration,
    per_kind: BTreeMap<ArtifactKind, Duration>,
}

impl MaxAge {
    /// Maximum age for every kind.
    pub fn new(max: Duration) -> Self {
        MaxAge {
            default: max,
            per_kind: BTreeMap::new(),
        }
    }
    /// A different maximum for `kind` (core dumps age out sooner than logs).
    pub fn kind(mut self, kind: ArtifactKind, max: Duration) -> Self {
        self.per_kind.insert(kind, max);
        self
    }
}

impl RetentionPolicy for MaxAge {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        ctx.records
            .iter()
            .map(|r| {
                let (max, what) = match self.per_kind.get(&r.kind) {
                    Some(m) => (*m, format!("max age {} for {}", human(*m), r.kind)),
                    None => (self.default, format!("max age {}", human(self.default))),
                };
                if ctx.age(r) <= max {
                    Decision::Keep(format!("younger than {what}"))
                } else {
                    Decision::Remove(format!("older than {what}"))
                }
            })
            .collect()
    }
}

/// Keeps the artifacts of the last `n` runs of each test, removes older runs'.
#[derive(Debug, Clone, Copy)]
pub struct KeepLastRuns(pub usize);

impl RetentionPolicy for KeepLastRuns {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut recent: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in ctx.records {
            recent.entry(&r.test_id).or_insert_with(|| {
                let runs = ctx.runs_of(&r.test_id);
                runs[runs.len().saturating_sub(self.0)..]
                    .iter()
                    .map(|s| s.run_id.as_str())
                    .collect()
            });
        }
        ctx.records
            .iter()
            .map(|r| {
                if recent[r.test_id.as_str()].contains(r.run_id.as_str()) {
                    Decision::Keep(format!("among the last {} runs of its test", self.0))
                } else {
                    Decision::Remove(format!("not among the last {} runs of its test", self.0))
                }
            })
            .collect()
    }
}

fn newest_first_budget<'a>(
    records: impl Iterator<Item = (usize, &'a ArtifactRecord)>,
    budget: u64,
    label: &str,
    out: &mut [Decision],
) {
    let mut v: Vec<_> = records.collect();
    v.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then(b.0.cmp(&a.0)));
    let mut used = 0u64;
    let mut counted = HashSet::new();
    let mut full = false;
    for (i, r) in v {
        // A blob shared by several records is paid for once.
        let cost = if counted.contains(&r.digest) {
            0
        } else {
            r.stored_size
        };
        if !full && used + cost <= budget {
            used += cost;
            counted.insert(r.digest);
            out[i] = Decision::Keep(format!(
                "within the {label} budget of {budget} bytes (newest first)"
            ));
        } else {
            full = true;
            out[i] = Decision::Remove(format!(
                "over the {label} budget of {budget} bytes (oldest go first)"
            ));
        }
    }
}

/// Keeps the newest artifacts whose blobs fit in a total size, removes the oldest beyond it.
#[derive(Debug, Clone, Copy)]
pub struct MaxTotalSize(pub u64);

impl RetentionPolicy for MaxTotalSize {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut out = vec![Decision::Abstain; ctx.records.len()];
        newest_first_budget(
            ctx.records.iter().enumerate(),
            self.0,
            "total size",
            &mut out,
        );
        out
    }
}

/// Per-kind size budgets (newest first within each kind); kinds without a budget abstain.
#[derive(Debug, Clone, Default)]
pub struct KindBudgets(BTreeMap<ArtifactKind, u64>);

impl KindBudgets {
    /// No budgets yet.
    pub fn new() -> Self {
        KindBudgets::default()
    }
    /// At most `bytes` stored for `kind`.
    pub fn kind(mut self, kind: ArtifactKind, bytes: u64) -> Self {
        self.0.insert(kind, bytes);
        self
    }
}

impl RetentionPolicy for KindBudgets {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut out = vec![Decision::Abstain; ctx.records.len()];
        for (kind, budget) in &self.0 {
            let label = format!("{kind}");
            newest_first_budget(
                ctx.records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.kind == *kind),
                *budget,
                &label,
                &mut out,
            );
        }
        out
    }
}

/// Maximum ages by outcome: failures are usually kept longer than passes. Records without an
/// outcome, or with another one (skipped, infra error, ...), use `other`.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeAge {
    /// Maximum age of artifacts of failing tests (failed, timed out, crashed).
    pub failures: Duration,
    /// Maximum age of artifacts of passing tests.
    pub passes: Duration,
    /// Maximum age of the rest.
    pub other: Duration,
}

impl RetentionPolicy for OutcomeAge {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        ctx.records
            .iter()
            .map(|r| {
                let (max, what) = match r.outcome {
                    Some(o) if o.is_failure() => (self.failures, "failure"),
                    Some(o) if o.is_pass() => (self.passes, "pass"),
                    _ => (self.other, "other outcome"),
                };
                if ctx.age(r) <= max {
                    Decision::Keep(format!("{what} younger than {}", human(max)))
                } else {
                    Decision::Remove(format!("{what} older than {}", human(max)))
                }
            })
            .collect()
    }
}

/// Always keeps the first failing run after a passing run of each test (where a regression
/// started); abstains otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstFailureAfterPass;

impl RetentionPolicy for FirstFailureAfterPass {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut keep: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in ctx.records {
            keep.entry(&r.test_id).or_insert_with(|| {
                let runs = ctx.runs_of(&r.test_id);
                let mut set = HashSet::new();
                for w in runs.windows(2) {
                    if w[0].passed && w[1].failed {
                        set.insert(w[1].run_id.as_str());
                    }
                }
                set
            });
        }
        ctx.records
            .iter()
            .map(|r| {
                if keep[r.test_id.as_str()].contains(r.run_id.as_str()) {
                    Decision::Keep("first failing run after a pass".into())
                } else {
                    Decision::Abstain
                }
            })
            .collect()
    }
}

/// Always keeps the last passing run of each test; abstains otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastPassingRun;

impl RetentionPolicy for LastPassingRun {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut last: HashMap<&str, Option<&str>> = HashMap::new();
        for r in ctx.records {
            last.entry(&r.test_id).or_insert_with(|| {
                ctx.runs_of(&r.test_id)
                    .iter()
                    .rev()
                    .find(|s| s.passed)
                    .map(|s| s.run_id.as_str())
            });
        }
        ctx.records
            .iter()
            .map(|r| {
                if last[r.test_id.as_str()] == Some(r.run_id.as_str()) {
                    Decision::Keep("last passing run of its test".into())
                } else {
                    Decision::Abstain
                }
            })
            .collect()
    }
}

/// Keeps pinned artifacts: those of pinned runs, or tagged (metadata key
/// [`TAG_KEY`]) with a pinned tag; abstains otherwise.
#[derive(Debug, Clone, Default)]
pub struct Pin {
    runs: BTreeSet<String>,
    tags: BTreeSet<String>,
}

impl Pin {
    /// Nothing pinned yet.
    pub fn new() -> Self {
        Pin::default()
    }
    /// Pins a run.
    pub fn run(mut self, run_id: impl Into<String>) -> Self {
        self.runs.insert(run_id.into());
        self
    }
    /// Pins a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }
}

impl RetentionPolicy for Pin {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        ctx.records
            .iter()
            .map(|r| {
                if self.runs.contains(&r.run_id) {
                    Decision::Keep(format!("run {} is pinned", r.run_id))
                } else if let Some(t) = r.metadata.get(TAG_KEY).filter(|t| self.tags.contains(*t)) {
                    Decision::Keep(format!("tag {t} is pinned"))
                } else {
                    Decision::Abstain
                }
            })
            .collect()
    }
}

/// Rules combined: kept if any rule keeps, removed if one removes and none keeps.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Box<dyn RetentionPolicy>>,
}

impl Policy {
    /// The empty policy (removes nothing).
    pub fn new() -> Self {
        Policy::default()
    }
    /// Adds a rule.
    pub fn with(mut self, rule: impl RetentionPolicy + 'static) -> Self {
        self.rules.push(Box::new(rule));
        self
    }

    /// Evaluates the rules into a plan.
    pub fn plan(&self, ctx: &RetentionContext<'_>) -> RetentionPlan {
        plan(self, ctx)
    }
}

impl RetentionPolicy for Policy {
    fn decide(&self, ctx: &RetentionContext<'_>) -> Vec<Decision> {
        let mut keep: Vec<Vec<String>> = vec![Vec::new(); ctx.records.len()];
        let mut remove: Vec<Vec<String>> = vec![Vec::new(); ctx.records.len()];
        for rule in &self.rules {
            let d = rule.decide(ctx);
            assert_eq!(
                d.len(),
                ctx.records.len(),
                "retention rule {rule:?} must decide for every record"
            );
            for (i, d) in d.into_iter().enumerate() {
                match d {
                    Decision::Keep(r) => keep[i].push(r),
                    Decision::Remove(r) => remove[i].push(r),
                    Decision::Abstain => {}
                }
            }
        }
        keep.into_iter()
            .zip(remove)
            .map(|(k, r)| {
                if !k.is_empty() {
                    Decision::Keep(k.join("; "))
                } else if !r.is_empty() {
                    Decision::Remove(r.join("; "))
                } else {
                    Decision::Abstain
                }
            })
            .collect()
    }
}

/// The verdict on one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    /// The artifact id.
    pub artifact: String,
    /// Its test.
    pub test_id: String,
    /// Its run.
    pub run_id: String,
    /// Its kind.
    pub kind: ArtifactKind,
    /// Its stored size.
    pub stored_size: u64,
    /// Kept (true) or removed.
    pub keep: bool,
    /// Why.
    pub reason: String,
}

/// A dry run: every live artifact with whether it is kept and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPlan {
    /// One per live artifact, oldest first.
    pub decisions: Vec<RetentionDecision>,
}

impl RetentionPlan {
    /// The artifacts to remove.
    pub fn removed(&self) -> impl Iterator<Item = &RetentionDecision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
    /// The artifacts kept.
    pub fn kept(&self) -> impl Iterator<Item = &RetentionDecision> {
        self.decisions.iter().filter(|d| d.keep)
    }
}

impl fmt::Display for RetentionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.decisions {
            writeln!(
                f,
                "{} {} test={} run={} kind={}: {}",
                if d.keep { "keep  " } else { "remove" },
                d.artifact,
                d.test_id,
                d.run_id,
                d.kind,
                d.reason
            )?;
        }
        Ok(())
    }
}

/// Evaluates any policy into a plan (abstentions are kept).
pub fn plan(policy: &(impl RetentionPolicy + ?Sized), ctx: &RetentionContext<'_>) -> RetentionPlan {
    let d = policy.decide(ctx);
    assert_eq!(
        d.len(),
        ctx.records.len(),
        "retention policy must decide for every record"
    );
    let decisions = ctx
        .records
        .iter()
        .zip(d)
        .map(|(r, d)| {
            let (keep, reason) = match d {
                Decision::Keep(s) => (true, s),
                Decision::Remove(s) => (false, s),
                Decision::Abstain => (true, "no rule removes it".to_owned()),
            };
            RetentionDecision {
                artifact: r.id.clone(),
                test_id: r.test_id.clone(),
                run_id: r.run_id.clone(),
                kind: r.kind,
                stored_size: r.stored_size,
                keep,
                reason,
            }
        })
        .collect();
    RetentionPlan { decisions }
}
