//! Splitting a campaign across workers and joining their reports.
//!
//! Every worker loads the same plan and runs the share its [`Partition`] selects: by a hash of
//! the test id (a test always lands on the same shard, whatever else the plan holds) or by count
//! (round robin in plan order: shards of equal size). Each shard's report carries a
//! [`ShardInfo`]: the campaign's id, which shard it is, and every test id of the whole campaign.
//! [`merge`] joins the shard reports into one [`RunReport`] in the campaign's order and says which
//! tests no shard reported and which more than one did; reports of another campaign, of another
//! partitioning or the same shard twice are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

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
}

/// One worker's share of a campaign: shard `index` of `total` (1-based), written `k/n`
/// (by hash) or `k/n:count`.
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
    "invalid partition `{text}`: {why}; write `k/n` (by test-id hash) or `k/n:count` with 1 <= k <= n, e.g. `2/3`"
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
            Some(_) => return Err(bad("the mode after `:` must be `hash` or `count`")),
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
        if self.by == ShardBy::Count {
            f.write_str(":count")?;
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

impl Partition {
    /// This shard's cases, in plan order.
    pub fn select(&self, cases: Vec<TestCase>) -> Vec<TestCase> {
        cases
            .into_iter()
            .enumerate()
            .filter(|(i, c)| match self.by {
                ShardBy::Hash => shard_of(c.id.as_str(), self.total) == self.index,
                ShardBy::Count => i % self.total + 1 == self.index,
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
            match k.2 {
                ShardBy::Hash => "hash",
                ShardBy::Count => "count",
            },
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
    let (campaign, total, _, tests) = expected;
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
                results.push(missing_result(id, total));
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
fn missing_result(id: &str, total: usize) -> TestResult {
    let case = TestCase::script(id, "");
    let mut r = TestResult::new(
        &case,
        "none",
        Outcome::Skipped {
            reason: format!(
                "no shard reported it (shard {} of {total} by hash)",
                shard_of(id, total)
            ),
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
        for bad in ["0/3", "4/3", "1/0", "a/3", "3", "1/2:size"] {
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
}
