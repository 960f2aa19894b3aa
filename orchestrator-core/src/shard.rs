//! Splitting a campaign across workers and joining their reports.
//!
//! Every worker loads the same plan and runs the share its [`Partition`] selects: by a hash of
//! the test id (a test always lands on the same shard, whatever else the plan holds), by count
//! (round robin in plan order: shards of equal size) or balanced by the durations an earlier run
//! recorded (shards that end together: see [`Partition::select_balanced`]). Each shard's report carries a
//! [`ShardInfo`]: the campaign's id, which shard it is, and every test id of the whole campaign.
//! [`merge`] joins the shard reports into one [`RunReport`] in the campaign's order and says which
//! tests no shard reported and which more than one did; reports of another campaign, of another
//! partitioning or the same shard twice are refused.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::case::TestCase;
use crate::report::{RunReport, SCHEMA_VERSION, Summary};
use crate::result::{Outcome, TestResult};

/// How tests are assigned to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShardBy {
    /// By a hash of the test id: stable when tests are added or removed elsewhere in the plan.
    Hash,
    /// Round robin in plan order: every shard gets the same number of tests (±1).
    Count,
    /// By the durations of an earlier run, so that shards take about as long
    /// ([`Partition::select_balanced`]); without durations, like equal durations.
    Balanced,
}

impl ShardBy {
    /// The mode's name in a partition string: `hash`, `count`, `balanced`.
    pub fn label(self) -> &'static str {
        match self {
            ShardBy::Hash => "hash",
            ShardBy::Count => "count",
            ShardBy::Balanced => "balanced",
        }
    }
}

/// One worker's share of a campaign: shard `index` of `total` (1-based), written `k/n`
/// (by hash), `k/n:count` or `k/n:balanced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Which shard, from 1 to `total`.
    pub index: usize,
    /// How many shards the campaign is split into.
    pub total: usize,
    /// How tests are assigned.
    pub by: ShardBy,
}

/// A partition string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid partition `{text}`: {why}; write `k/n` (by test-id hash), `k/n:count` or `k/n:balanced` with 1 <= k <= n, e.g. `2/3`"
)]
pub struct InvalidPartition {
    text: String,
    why: &'static str,
}

impl FromStr for Partition {
    type Err = InvalidPartition;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidPartition {
            text: text.to_owned(),
            why,
        };
        let (shares, by) = match text.split_once(':') {
            None => (text, ShardBy::Hash),
            Some((s, "hash")) => (s, ShardBy::Hash),
            Some((s, "count")) => (s, ShardBy::Count),
            Some((s, "balanced")) => (s, ShardBy::Balanced),
            Some(_) => {
                return Err(bad(
                    "the mode after `:` must be `hash`, `count` or `balanced`",
                ));
            }
        };
        let (k, n) = shares.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: usize = k.trim().parse().map_err(|_| bad("k is not a number"))?;
        let total: usize = n.trim().parse().map_err(|_| bad("n is not a number"))?;
        if total == 0 {
            return Err(bad("n must be at least 1"));
        }
        if index == 0 || index > total {
            return Err(bad("k must be between 1 and n"));
        }
        Ok(Partition { index, total, by })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.total)?;
        if self.by != ShardBy::Hash {
            write!(f, ":{}", self.by.label())?;
        }
        Ok(())
    }
}

/// The shard (1-based) a test id lands on among `total` by hash: the first 8 bytes of its
/// BLAKE3 digest, modulo `total`. The same on every machine and in every version of the plan.
pub fn shard_of(test_id: &str, total: usize) -> usize {
    let digest = blake3::hash(test_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_bytes()[..8]);
    (u64::from_le_bytes(head) % total.max(1) as u64) as usize + 1
}

/// A campaign id every worker derives alike from the same plan: its name and a digest of all
/// its test ids (`smoke-3f2a9c01d4e5`), for when the CI system gives none.
pub fn campaign_id(name: Option<&str>, all: &[TestCase]) -> String {
    let mut h = blake3::Hasher::new();
    for c in all {
        h.update(c.id.as_str().as_bytes());
        h.update(b"\n");
    }
    let hex = h.finalize().to_hex();
    format!("{}-{}", name.unwrap_or("campaign"), &hex[..12])
}

/// The durations of a run's tests by test id (each result's start to finish, retries not
/// counted), what [`Partition::select_balanced`] splits by. A test that ran more than once in
/// the report keeps its longest duration.
pub fn durations_of(report: &RunReport) -> BTreeMap<String, Duration> {
    let mut out: BTreeMap<String, Duration> = BTreeMap::new();
    for r in &report.results {
        let d = r.duration();
        let e = out.entry(r.test_id.as_str().to_owned()).or_default();
        *e = (*e).max(d);
    }
    out
}

/// The shard (1-based) of each of `ids` when they are split into `total` shards by
/// `durations`, in the order of `ids`: longest processing time first. The tests are sorted by
/// duration (longest first), then by id, then by position; each goes to the shard with the
/// least total so far (the lowest index on a tie). A test without a duration counts as the
/// median of the known durations of `ids` (one second when none is known, which deals the tests
/// out by count). Depends on nothing but its arguments, so every worker computes the same split.
///
/// No shard's total exceeds the optimum's by more than a third (Graham's bound for longest
/// processing time first: at most `(4/3 - 1/(3 * total))` times the best possible split), and
/// never more than the average share plus the longest test.
pub fn balanced_split(
    ids: &[&str],
    total: usize,
    durations: &BTreeMap<String, Duration>,
) -> Vec<usize> {
    let total = total.max(1);
    let mut known: Vec<u128> = ids
        .iter()
        .filter_map(|id| durations.get(*id).map(Duration::as_nanos))
        .collect();
    known.sort_unstable();
    let fallback = match known.len() {
        0 => Duration::from_secs(1).as_nanos(),
        n if n % 2 == 1 => known[n / 2],
        n => (known[n / 2 - 1] + known[n / 2]) / 2,
    };
    let weight = |id: &str| durations.get(id).map_or(fallback, Duration::as_nanos);
    let mut order: Vec<(u128, &str, usize)> = ids
        .iter()
        .enumerate()
        .map(|(pos, id)| (weight(id), *id, pos))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    // Least loaded first, lowest index on a tie.
    let mut loads: BinaryHeap<Reverse<(u128, usize)>> =
        (1..=total).map(|k| Reverse((0, k))).collect();
    let mut shard = vec![0; ids.len()];
    for (w, _, pos) in order {
        let Reverse((load, k)) = loads.pop().expect("at least one shard");
        shard[pos] = k;
        loads.push(Reverse((load + w, k)));
    }
    shard
}

impl Partition {
    /// This shard's cases, in plan order. A balanced partition without durations splits as
    /// if every test took as long ([`select_balanced`](Self::select_balanced) with none).
    pub fn select(&self, cases: Vec<TestCase>) -> Vec<TestCase> {
        self.select_balanced(cases, &BTreeMap::new())
    }

    /// This shard's cases, in plan order; a [`ShardBy::Balanced`] partition splits them by
    /// `durations` (per test id, e.g. [`durations_of`] an earlier run's report) with
    /// [`balanced_split`], so that shards take about as long. The other modes ignore
    /// `durations`.
    pub fn select_balanced(
        &self,
        cases: Vec<TestCase>,
        durations: &BTreeMap<String, Duration>,
    ) -> Vec<TestCase> {
        let balanced = if self.by == ShardBy::Balanced {
            let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
            balanced_split(&ids, self.total, durations)
        } else {
            Vec::new()
        };
        cases
            .into_iter()
            .enumerate()
            .filter(|(i, c)| match self.by {
                ShardBy::Hash => shard_of(c.id.as_str(), self.total) == self.index,
                ShardBy::Count => i % self.total + 1 == self.index,
                ShardBy::Balanced => balanced[*i] == self.index,
            })
            .map(|(_, c)| c)
            .collect()
    }

    /// What this shard's report should carry: `campaign` names the whole campaign (the same on
    /// every worker, e.g. the CI pipeline's id), `all` is the whole campaign's cases before
    /// selection.
    pub fn info(&self, campaign: impl Into<String>, all: &[TestCase]) -> ShardInfo {
        ShardInfo {
            campaign: campaign.into(),
            partition: *self,
            campaign_tests: all.iter().map(|c| c.id.as_str().to_owned()).collect(),
            balanced_from: None,
        }
    }
}

/// Which part of which campaign a report covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The campaign's id, shared by all its shards.
    pub campaign: String,
    /// Which shard.
    pub partition: Partition,
    /// Every test id of the whole campaign, in plan order.
    pub campaign_tests: Vec<String>,
    /// For a balanced partition: the run whose durations it was split by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balanced_from: Option<String>,
}

impl ShardInfo {
    /// The same, saying which run's durations a balanced partition was split by.
    #[must_use]
    pub fn with_balanced_from(mut self, run_id: impl Into<String>) -> Self {
        self.balanced_from = Some(run_id.into());
        self
    }
}

/// Why shard reports cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// Nothing to merge.
    #[error("no shard reports to merge: pass the report.json of every shard")]
    Empty,
    /// A report is not a shard's (it was run without a partition).
    #[error(
        "report {run_id} is not a shard's report (run without a partition): merge only the reports of one sharded campaign"
    )]
    NotSharded {
        /// The report's run id.
        run_id: String,
    },
    /// A report of another campaign (or of the same campaign split another way).
    #[error(
        "report {run_id} belongs to {found}, not to {expected}: merge only the shards of one campaign"
    )]
    OtherCampaign {
        /// The odd report's run id.
        run_id: String,
        /// The campaign (and partitioning) of the first report.
        expected: String,
        /// The campaign (and partitioning) of this one.
        found: String,
    },
    /// Two reports claim the same shard.
    #[error("shard {partition} is reported twice (runs {first} and {second}): keep one of them")]
    ShardTwice {
        /// The shard.
        partition: Partition,
        /// The first report's run id.
        first: String,
        /// The second report's run id.
        second: String,
    },
}

/// The merged report and what did not add up.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Merged {
    /// One report for the whole campaign, results in the campaign's order; a test no shard
    /// reported is there as skipped, saying so.
    pub report: RunReport,
    /// Tests of the campaign that no shard reported.
    pub missing: Vec<String>,
    /// Tests reported by more than one shard (the first shard's result is kept).
    pub duplicated: Vec<String>,
    /// Results for tests that are not in the campaign (kept, after the campaign's tests).
    pub unexpected: Vec<String>,
    /// Shards that sent no report (1-based).
    pub missing_shards: Vec<usize>,
}

impl Merged {
    /// Whether every test of the campaign was reported exactly once by its shards.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.missing_shards.is_empty()
    }
}

/// Joins the reports of one sharded campaign (see the module docs).
pub fn merge(reports: Vec<RunReport>) -> Result<Merged, MergeError> {
    let first = reports.first().ok_or(MergeError::Empty)?;
    let key = |r: &RunReport| -> Result<(String, usize, ShardBy, Vec<String>), MergeError> {
        let s = r.shard.as_ref().ok_or_else(|| MergeError::NotSharded {
            run_id: r.run_id.clone(),
        })?;
        Ok((
            s.campaign.clone(),
            s.partition.total,
            s.partition.by,
            s.campaign_tests.clone(),
        ))
    };
    let describe = |k: &(String, usize, ShardBy, Vec<String>)| {
        format!(
            "campaign `{}` in {} shards by {} ({} tests)",
            k.0,
            k.1,
            k.2.label(),
            k.3.len()
        )
    };
    let expected = key(first)?;
    let mut by_shard: BTreeMap<usize, &RunReport> = BTreeMap::new();
    for r in &reports {
        let k = key(r)?;
        if k != expected {
            return Err(MergeError::OtherCampaign {
                run_id: r.run_id.clone(),
                expected: describe(&expected),
                found: describe(&k),
            });
        }
        let p = r.shard.as_ref().expect("checked").partition;
        if let Some(prev) = by_shard.insert(p.index, r) {
            return Err(MergeError::ShardTwice {
                partition: p,
                first: prev.run_id.clone(),
                second: r.run_id.clone(),
            });
        }
    }
    let (campaign, total, by, tests) = expected;
    let mut found: BTreeMap<&str, &TestResult> = BTreeMap::new();
    let mut duplicated = BTreeSet::new();
    let mut extra: Vec<&TestResult> = Vec::new();
    let known: BTreeSet<&str> = tests.iter().map(String::as_str).collect();
    for r in by_shard.values() {
        for res in &r.results {
            let id = res.test_id.as_str();
            if !known.contains(id) {
                extra.push(res);
                continue;
            }
            // The first shard's result stays; a second one is flagged.
            match found.entry(id) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(res);
                }
                std::collections::btree_map::Entry::Occupied(_) => {
                    duplicated.insert(id.to_owned());
                }
            }
        }
    }
    let mut results = Vec::with_capacity(tests.len());
    let mut missing = Vec::new();
    for id in &tests {
        match found.get(id.as_str()) {
            Some(r) => {
                // A shard that wrote schema 2 never judged subtests: the merge does.
                let mut r = (*r).clone();
                r.judge_subtests();
                results.push(r);
            }
            None => {
                missing.push(id.clone());
                results.push(missing_result(id, total, by));
            }
        }
    }
    let unexpected: Vec<String> = extra.iter().map(|r| r.test_id.to_string()).collect();
    results.extend(extra.into_iter().cloned().map(|mut r| {
        r.judge_subtests();
        r
    }));
    let missing_shards = (1..=total).filter(|k| !by_shard.contains_key(k)).collect();
    let started_at = by_shard.values().map(|r| r.started_at).min().expect("one");
    let finished_at = by_shard.values().map(|r| r.finished_at).max().expect("one");
    let interrupted = by_shard.values().find_map(|r| r.interrupted);
    let report = RunReport {
        schema_version: SCHEMA_VERSION,
        run_id: format!("{campaign}-merged"),
        name: first.name.clone(),
        started_at,
        finished_at,
        interrupted,
        summary: Summary::of(&results),
        results,
        host: first.host.clone(),
        storage: None,
        shard: None,
    };
    Ok(Merged {
        report,
        missing,
        duplicated: duplicated.into_iter().collect(),
        unexpected,
        missing_shards,
    })
}

/// The stand-in result of a test no shard reported.
fn missing_result(id: &str, total: usize, by: ShardBy) -> TestResult {
    let case = TestCase::script(id, "");
    let mut r = TestResult::new(
        &case,
        "none",
        Outcome::Skipped {
            reason: match by {
                ShardBy::Hash => format!(
                    "no shard reported it (shard {} of {total} by hash)",
                    shard_of(id, total)
                ),
                // Which shard depends on the whole plan (and the durations): not said here.
                other => format!("no shard reported it ({total} shards by {})", other.label()),
            },
        },
    );
    r.message = Some("missing from every shard report".to_owned());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_and_print() {
        let p: Partition = "2/3".parse().unwrap();
        assert_eq!((p.index, p.total, p.by), (2, 3, ShardBy::Hash));
        assert_eq!(p.to_string(), "2/3");
        let c: Partition = "1/4:count".parse().unwrap();
        assert_eq!(c.by, ShardBy::Count);
        assert_eq!(c.to_string(), "1/4:count");
        let b: Partition = "3/4:balanced".parse().unwrap();
        assert_eq!((b.index, b.total, b.by), (3, 4, ShardBy::Balanced));
        assert_eq!(b.to_string(), "3/4:balanced");
        assert_eq!("2/3:hash".parse::<Partition>().unwrap().to_string(), "2/3");
        let e = "1/2:size".parse::<Partition>().unwrap_err().to_string();
        assert!(e.contains("`balanced`"), "{e}");
        for bad in ["0/3", "4/3", "1/0", "a/3", "3", "1/2:size", "0/2:balanced"] {
            let e = bad.parse::<Partition>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("k/n"), "{e}");
        }
    }

    fn cases(n: usize) -> Vec<TestCase> {
        (0..n)
            .map(|i| TestCase::script(&format!("t{i}@aarch64"), "true"))
            .collect()
    }

    #[test]
    fn every_case_lands_on_exactly_one_shard_either_way() {
        for by in [ShardBy::Hash, ShardBy::Count] {
            let all = cases(100);
            let mut seen = Vec::new();
            for index in 1..=3 {
                let p = Partition {
                    index,
                    total: 3,
                    by,
                };
                let share = p.select(all.clone());
                if by == ShardBy::Count {
                    assert!((33..=34).contains(&share.len()), "{}", share.len());
                } else {
                    assert!(!share.is_empty());
                }
                seen.extend(share.into_iter().map(|c| c.id.to_string()));
            }
            seen.sort();
            let mut want: Vec<String> = all.iter().map(|c| c.id.to_string()).collect();
            want.sort();
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn a_test_keeps_its_shard_when_others_come_and_go() {
        let p = Partition {
            index: 2,
            total: 3,
            by: ShardBy::Hash,
        };
        let before: Vec<String> = p
            .select(cases(50))
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        let after: Vec<String> = p
            .select(cases(80))
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        assert!(before.iter().all(|id| after.contains(id)));
    }

    fn secs(pairs: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        pairs
            .iter()
            .map(|(id, s)| ((*id).to_owned(), Duration::from_secs(*s)))
            .collect()
    }

    #[test]
    fn balanced_shards_take_about_as_long() {
        // Longest first, each to the least loaded shard: 8 -> 1, 7 -> 2, 6 -> 3, 5 -> 3 (6),
        // 4 -> 2 (7), 3 -> 1 (8), 2 -> 1 (all at 11: the lowest index); totals 13, 11, 11.
        let d = secs(&[
            ("a", 3),
            ("b", 8),
            ("c", 2),
            ("d", 7),
            ("e", 6),
            ("f", 5),
            ("g", 4),
        ]);
        let ids = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(balanced_split(&ids, 3, &d), vec![1, 1, 1, 2, 3, 3, 2]);
        // Through `select_balanced`, in plan order, and recorded as balanced.
        let all: Vec<TestCase> = ids.iter().map(|id| TestCase::script(id, "true")).collect();
        let p: Partition = "3/3:balanced".parse().unwrap();
        let share: Vec<String> = p
            .select_balanced(all.clone(), &d)
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        assert_eq!(share, ["e", "f"]);
        let info = p.info("ci-1", &all).with_balanced_from("run-0");
        assert_eq!(info.partition.by, ShardBy::Balanced);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["partition"]["by"], "balanced");
        assert_eq!(json["balanced_from"], "run-0");
        // A shard info written before the field existed still reads.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("balanced_from");
        let read: ShardInfo = serde_json::from_value(old).unwrap();
        assert_eq!(read.balanced_from, None);
    }

    #[test]
    fn tests_without_a_duration_count_as_the_median() {
        // Known: 1, 3, 10 (median 3); `new` counts as 3 s.
        let d = secs(&[("x", 10), ("y", 3), ("z", 1)]);
        let ids = ["new", "x", "y", "z"];
        // Order: x (10) -> 1, new (3) -> 2, y (3) -> 2 (6), z (1) -> 2 (7).
        assert_eq!(balanced_split(&ids, 2, &d), vec![2, 1, 2, 2]);
        // Without any duration: dealt by count, each shard gets 2 of 4 (order: by id).
        let none = BTreeMap::new();
        assert_eq!(balanced_split(&ids, 2, &none), vec![1, 2, 1, 2]);
        // Durations of a report: each result's start to finish.
        let mut r = TestResult::new(&TestCase::script("x", "true"), "process", Outcome::Passed);
        r.finished_at = r.started_at + chrono::Duration::milliseconds(1500);
        let report = RunReport {
            schema_version: SCHEMA_VERSION,
            run_id: "r".into(),
            name: None,
            started_at: r.started_at,
            finished_at: r.finished_at,
            interrupted: None,
            summary: Summary::of(std::slice::from_ref(&r)),
            results: vec![r],
            host: crate::report::HostInfo::default(),
            storage: None,
            shard: None,
        };
        let want = BTreeMap::from([("x".to_owned(), Duration::from_millis(1500))]);
        assert_eq!(durations_of(&report), want);
    }

    /// The best split's largest total, by trying every assignment (small inputs only).
    fn optimum(weights: &[u128], total: usize) -> u128 {
        fn go(weights: &[u128], loads: &mut Vec<u128>, best: &mut u128) {
            let Some((&w, rest)) = weights.split_first() else {
                *best = (*best).min(loads.iter().copied().max().unwrap_or(0));
                return;
            };
            for k in 0..loads.len() {
                loads[k] += w;
                if loads[k] < *best {
                    go(rest, loads, best);
                }
                loads[k] -= w;
            }
        }
        let mut best = u128::MAX;
        go(weights, &mut vec![0; total], &mut best);
        best
    }

    proptest::proptest! {
        #[test]
        fn balanced_splits_are_complete_deterministic_and_near_the_optimum(
            weights in proptest::collection::vec(proptest::option::of(0u64..1000), 0..40),
            total in 1usize..6,
        ) {
            let ids: Vec<String> = (0..weights.len()).map(|i| format!("t{i}@x86_64")).collect();
            let durations: BTreeMap<String, Duration> = ids
                .iter()
                .zip(&weights)
                .filter_map(|(id, w)| w.map(|w| (id.clone(), Duration::from_millis(w))))
                .collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let split = balanced_split(&refs, total, &durations);
            // Every test on exactly one shard, a shard within 1..=total.
            proptest::prop_assert_eq!(split.len(), ids.len());
            proptest::prop_assert!(split.iter().all(|k| (1..=total).contains(k)));
            let cases: Vec<TestCase> = ids.iter().map(|id| TestCase::script(id, "true")).collect();
            let mut seen: Vec<String> = (1..=total)
                .flat_map(|index| {
                    Partition { index, total, by: ShardBy::Balanced }
                        .select_balanced(cases.clone(), &durations)
                })
                .map(|c| c.id.to_string())
                .collect();
            seen.sort();
            let mut want = ids.clone();
            want.sort();
            proptest::prop_assert_eq!(seen, want);
            // A function of the inputs only: the same again, and the same whatever order the
            // durations were gathered in or whatever other tests they name.
            proptest::prop_assert_eq!(&balanced_split(&refs, total, &durations), &split);
            let mut more = durations.clone();
            more.insert("not-in-the-plan".into(), Duration::from_secs(1));
            // (Only durations of the plan's tests count, also for the median.)
            proptest::prop_assert_eq!(&balanced_split(&refs, total, &more), &split);
            // Loads as the split counts them (unknown durations as the median).
            let ms = 1_000_000u128;
            let mut known: Vec<u128> = weights.iter().flatten().map(|w| u128::from(*w) * ms).collect();
            known.sort_unstable();
            let fallback = match known.len() {
                0 => 1000 * ms,
                n if n % 2 == 1 => known[n / 2],
                n => (known[n / 2 - 1] + known[n / 2]) / 2,
            };
            let w: Vec<u128> = weights
                .iter()
                .map(|x| x.map_or(fallback, |w| u128::from(w) * ms))
                .collect();
            let mut loads = vec![0u128; total];
            for (k, w) in split.iter().zip(&w) {
                loads[k - 1] += w;
            }
            let makespan = loads.iter().copied().max().unwrap_or(0);
            let sum: u128 = w.iter().sum();
            let longest = w.iter().copied().max().unwrap_or(0);
            let m = total as u128;
            // List scheduling: the last test on the fullest shard went to the least loaded one,
            // whose load was at most the average of the others.
            proptest::prop_assert!(makespan * m <= sum + longest * m);
            // Graham's bound for longest processing time first, against the true optimum.
            if w.len() <= 9 && total <= 3 {
                let opt = optimum(&w, total);
                proptest::prop_assert!(
                    3 * m * makespan <= (4 * m - 1) * opt,
                    "makespan {} optimum {} loads {:?}", makespan, opt, loads
                );
            }
        }
    }
}
