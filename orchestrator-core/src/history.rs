//! History across runs, read from the artifact store's catalog: the runs, a run's report, a
//! test's results over time, and two sets of runs compared against a noise band.
//!
//! Every execution the orchestrator stores is also recorded as its result (`result.json`, kind
//! `result`, the figures in the record's metadata: `duration-ms`, `cpu-ms`, `peak-rss-bytes`,
//! `verdict`, `outcome`, `runner`, `kernel`, `mode`, `attempt`, `started-at`, `position`), and every run
//! as its report (`report.json`, kind `report`, test id [`@run`](crate::RUN_RECORD_TEST_ID),
//! metadata `name`, `status`, `started-at`, `finished-at`, `counts`). History reads the
//! metadata, not the blobs, so a record whose blob retention evicted still has its figures, and
//! merged stores, stores pulled from a remote and bundles imported from elsewhere answer the
//! same way. Reports written before results were recorded come in with [`import_report`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::time::Duration;

use artifact_store::{ArtifactKind, ArtifactRecord, ArtifactStore, NewArtifact, Query};
use chrono::{DateTime, Utc};
use perf_monitor::verdict::{Change, NoiseBand};
use serde::{Deserialize, Serialize};

use crate::case::{Expectation, TestId};
use crate::compose::{RESULT_NAME, RUN_RECORD_TEST_ID, report_artifact, result_metadata};
use crate::report::{HostInfo, RunReport, SCHEMA_VERSION, Summary};
use crate::result::{CrashKind, Outcome, Phase, StoredArtifact, TestResult, Verdict};

/// Reading history failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] artifact_store::Error),
    /// No run has this id.
    #[error("no run `{run_id}` in the store{}", hint(close, "runs"))]
    UnknownRun {
        /// The id asked for.
        run_id: String,
        /// Stored run ids that look like it.
        close: Vec<String>,
    },
    /// The run has artifacts in the store but no result or report records: an earlier version
    /// of the program wrote it.
    #[error(
        "run `{run_id}` has artifacts in the store but no recorded results: an earlier version wrote it; import its report.json (`history::import_report`) to see it in history"
    )]
    NoResults {
        /// The run id.
        run_id: String,
    },
    /// No result of this test is stored.
    #[error("no result of test `{test_id}` in the store{}", hint(close, "tests"))]
    UnknownTest {
        /// The id asked for.
        test_id: String,
        /// Stored test ids that look like it.
        close: Vec<String>,
    },
    /// A stored result or report could not be read back.
    #[error("stored {what} (artifact {id}) is not a valid {what}: {detail}")]
    Corrupt {
        /// `result` or `report`.
        what: &'static str,
        /// The artifact id.
        id: String,
        /// Why.
        detail: String,
    },
}

fn hint(close: &[String], what: &str) -> String {
    if close.is_empty() {
        match what {
            "runs" => "; list the stored runs with `history::runs` (`store ls --kind report` on the command line)".into(),
            _ => "; list the stored tests' results with a query of kind `result`".into(),
        }
    } else {
        let names: Vec<String> = close.iter().map(|c| format!("`{c}`")).collect();
        format!("; did you mean {}?", names.join(", "))
    }
}

/// Up to five `candidates` that start with `wanted` or are close to it in edit distance.
fn close_matches<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .filter_map(|c| {
            let score = if c.starts_with(wanted) || wanted.starts_with(c) {
                1.0
            } else {
                strsim::jaro_winkler(wanted, c)
            };
            (score >= 0.8).then_some((score, c))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, c)| c.to_owned())
        .collect()
}

/// One stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunInfo {
    /// The run id.
    pub run_id: String,
    /// The plan's name, when the report says.
    pub name: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished (unknown for a run without a report).
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed`, `untestable` or `interrupted` ([`RunStatus::label`](crate::RunStatus::label));
    /// `None` for a run without a report (it stopped before its end, or lost it).
    pub status: Option<String>,
    /// Number of tests.
    pub tests: usize,
    /// Tests per verdict name ([`Verdict::name`]).
    pub counts: BTreeMap<String, usize>,
    /// Whether the run has a report record (else it was put together from its results).
    pub has_report: bool,
}

/// The stored runs, newest first: from their report records, and for runs without one (a run
/// that stopped before its end) from their result records.
pub fn runs(store: &ArtifactStore) -> Result<Vec<RunInfo>, HistoryError> {
    let reports = store.query(
        &Query::new()
            .test(RUN_RECORD_TEST_ID)
            .kind(ArtifactKind::Report)
            .include_evicted(true)
            .newest_first(true),
    )?;
    let mut out: Vec<RunInfo> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &reports {
        if !seen.insert(r.run_id.clone()) {
            continue;
        }
        let m = &r.metadata;
        let counts = m.get("counts").map(|c| parse_counts(c)).unwrap_or_default();
        out.push(RunInfo {
            run_id: r.run_id.clone(),
            name: m.get("name").cloned(),
            started_at: time_meta(r, "started-at").unwrap_or(r.created_at),
            finished_at: Some(time_meta(r, "finished-at").unwrap_or(r.created_at)),
            status: m.get("status").cloned(),
            tests: m
                .get("tests")
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| counts.values().sum()),
            counts,
            has_report: true,
        });
    }
    let result_runs = store.runs(
        &Query::new()
            .kind(ArtifactKind::Result)
            .include_evicted(true),
    )?;
    for g in result_runs {
        if seen.contains(&g.run_id) {
            continue;
        }
        let records = result_records(store, &g.run_id)?;
        let latest = latest_attempts(&records);
        let mut counts = BTreeMap::new();
        for r in &latest {
            if let Some(v) = r.metadata.get("verdict") {
                *counts.entry(v.clone()).or_insert(0) += 1;
            }
        }
        out.push(RunInfo {
            run_id: g.run_id.clone(),
            name: None,
            started_at: latest
                .iter()
                .filter_map(|r| time_meta(r, "started-at"))
                .min()
                .unwrap_or(g.first),
            finished_at: None,
            status: None,
            tests: latest.len(),
            counts,
            has_report: false,
        });
    }
    out.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.run_id.cmp(&b.run_id))
    });
    Ok(out)
}

fn parse_counts(s: &str) -> BTreeMap<String, usize> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `passed=2,failed=1`: the report record's `counts`.
pub(crate) fn counts_meta(summary: &Summary) -> String {
    [
        (Verdict::Passed, summary.passed),
        (Verdict::ExpectedFailure, summary.expected_failures),
        (Verdict::Failed, summary.failed),
        (Verdict::UnexpectedPass, summary.unexpected_passes),
        (Verdict::Error, summary.errors),
        (Verdict::Skipped, summary.skipped),
        (Verdict::Cancelled, summary.cancelled),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(v, n)| format!("{}={n}", v.name()))
    .collect::<Vec<_>>()
    .join(",")
}

fn time_meta(r: &ArtifactRecord, key: &str) -> Option<DateTime<Utc>> {
    r.metadata
        .get(key)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn attempt_of(r: &ArtifactRecord) -> u32 {
    r.metadata
        .get("attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1)
}

fn result_records(
    store: &ArtifactStore,
    run_id: &str,
) -> Result<Vec<ArtifactRecord>, HistoryError> {
    Ok(store.query(
        &Query::new()
            .run(run_id)
            .kind(ArtifactKind::Result)
            .include_evicted(true),
    )?)
}

/// The last attempt's record of each test, in the run's order of the tests (their recorded
/// `position`, else the time they started).
fn latest_attempts(records: &[ArtifactRecord]) -> Vec<&ArtifactRecord> {
    let mut by_test: HashMap<&str, Vec<&ArtifactRecord>> = HashMap::new();
    for r in records {
        by_test.entry(&r.test_id).or_default().push(r);
    }
    let mut tests: Vec<Vec<&ArtifactRecord>> = by_test.into_values().collect();
    for t in &mut tests {
        t.sort_by_key(|r| attempt_of(r));
    }
    // The test's place in the run when recorded, else the time it started.
    tests.sort_by_key(|t| {
        let position: Option<usize> = t[0].metadata.get("position").and_then(|p| p.parse().ok());
        (
            position.unwrap_or(usize::MAX),
            time_meta(t[0], "started-at").unwrap_or(t[0].created_at),
            t[0].test_id.clone(),
        )
    });
    tests
        .into_iter()
        .map(|t| *t.last().expect("not empty"))
        .collect()
}

/// Reads a stored report, refusing report versions newer than this library.
fn parse_report(id: &str, bytes: &[u8]) -> Result<RunReport, HistoryError> {
    let corrupt = |detail: String| HistoryError::Corrupt {
        what: "report",
        id: id.to_owned(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let version = value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version == 0 || version > u64::from(SCHEMA_VERSION) {
        return Err(corrupt(format!(
            "report schema version {version}; this program reads versions 1 to {SCHEMA_VERSION}"
        )));
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// A run's report: its report record, else (a run that stopped before its end, or whose report
/// blob was evicted) put together from its result records, the last attempt of each test in
/// the run's order of the tests, linked to the run's other records. A result whose blob was
/// evicted is rebuilt from its record's metadata (outcome, verdict, duration, resources).
pub fn load_run(store: &ArtifactStore, run_id: &str) -> Result<RunReport, HistoryError> {
    let reports = store.query(
        &Query::new()
            .run(run_id)
            .kind(ArtifactKind::Report)
            .newest_first(true),
    )?;
    if let Some(r) = reports.first() {
        return parse_report(&r.id, &store.get(&r.id)?);
    }
    let records = result_records(store, run_id)?;
    if records.is_empty() {
        let any = Query::new().run(run_id).include_evicted(true).limit(1);
        if !store.query(&any)?.is_empty() {
            return Err(HistoryError::NoResults {
                run_id: run_id.to_owned(),
            });
        }
        let known = runs(store)?;
        return Err(HistoryError::UnknownRun {
            run_id: run_id.to_owned(),
            close: close_matches(run_id, known.iter().map(|r| r.run_id.as_str())),
        });
    }
    let all = store.query(&Query::new().run(run_id))?;
    let mut by_test: BTreeMap<&str, Vec<&ArtifactRecord>> = BTreeMap::new();
    for r in &records {
        by_test.entry(&r.test_id).or_default().push(r);
    }
    let mut results = Vec::new();
    for rec in latest_attempts(&records) {
        let mut result = result_of(store, rec)?;
        // The links to the records stored with it (the blob was written before they existed).
        for a in &mut result.artifacts {
            if a.stored.is_some() {
                continue;
            }
            if let Some(x) = all.iter().find(|x| {
                x.test_id == rec.test_id
                    && x.name == a.name
                    && x.kind != ArtifactKind::Result
                    && attempt_of(x) == result.attempt
            }) {
                a.stored = Some(StoredArtifact {
                    id: x.id.clone(),
                    digest: x.digest.to_hex(),
                    kind: x.kind.as_str().to_owned(),
                });
            }
        }
        if result.earlier_attempts.is_empty() {
            for earlier in by_test[rec.test_id.as_str()]
                .iter()
                .filter(|x| attempt_of(x) < result.attempt)
            {
                let e = result_of(store, earlier)?;
                result.earlier_attempts.push(crate::result::AttemptRecord {
                    attempt: e.attempt,
                    outcome: e.outcome,
                    message: e.message,
                });
            }
        }
        results.push(result);
    }
    let started_at = results
        .iter()
        .map(|r| r.started_at)
        .min()
        .unwrap_or_default();
    let finished_at = results
        .iter()
        .map(|r| r.finished_at)
        .max()
        .unwrap_or_default();
    Ok(RunReport::new(
        run_id,
        results,
        started_at,
        finished_at,
        HostInfo::default(),
    ))
}

/// The result a record holds: its blob, or when that was evicted, what its metadata says.
fn result_of(store: &ArtifactStore, rec: &ArtifactRecord) -> Result<TestResult, HistoryError> {
    if rec.evicted.is_none() {
        let bytes = store.get(&rec.id)?;
        return serde_json::from_slice(&bytes).map_err(|e| HistoryError::Corrupt {
            what: "result",
            id: rec.id.clone(),
            detail: e.to_string(),
        });
    }
    let m = &rec.metadata;
    let verdict = m.get("verdict").and_then(|v| Verdict::from_name(v));
    let why = format!(
        "the stored result was evicted ({}); this is what its catalog record says",
        rec.evicted.as_ref().map_or("", |e| e.reason.as_str())
    );
    let label = m
        .get("outcome")
        .map(String::as_str)
        .or(rec.outcome.map(|o| o.as_str()))
        .unwrap_or("infra-error");
    let outcome = match label {
        "passed" => Outcome::Passed,
        "failed" | "subtests-failed" => Outcome::Failed {
            exit_code: None,
            signal: None,
        },
        "timed-out" => Outcome::TimedOut {
            phase: Phase::Test,
            limit: Duration::ZERO,
        },
        "crashed" => Outcome::Crashed {
            crash: CrashKind::Other,
        },
        "skipped" => Outcome::Skipped {
            reason: why.clone(),
        },
        "cancelled" => Outcome::Cancelled,
        _ => Outcome::infra(why.clone()),
    };
    let expect = match verdict {
        Some(Verdict::ExpectedFailure | Verdict::UnexpectedPass) => Expectation::Fail,
        _ => Expectation::Pass,
    };
    let started_at = time_meta(rec, "started-at").unwrap_or(rec.created_at);
    let duration = m
        .get("duration-ms")
        .and_then(|d| d.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let resources = match (m.get("cpu-ms"), m.get("peak-rss-bytes")) {
        (None, None) => None,
        (cpu, rss) => Some(crate::result::ResourceUsage {
            cpu_seconds: cpu.and_then(|c| c.parse::<f64>().ok()).unwrap_or(0.0) / 1000.0,
            avg_cpu_percent: None,
            peak_cpu_percent: None,
            peak_rss_bytes: rss.and_then(|r| r.parse().ok()).unwrap_or(0),
            read_bytes: None,
            write_bytes: None,
            peak_processes: 0,
            bottleneck: String::new(),
            series: Vec::new(),
            ..Default::default()
        }),
    };
    let mut environment = BTreeMap::new();
    for (key, env) in [("kernel", "kernel"), ("mode", "mode")] {
        if let Some(v) = m.get(key) {
            environment.insert(env.to_owned(), v.clone());
        }
    }
    if let Some(a) = &rec.arch {
        environment.insert("arch".into(), a.clone());
    }
    Ok(TestResult {
        test_id: TestId::new(rec.test_id.clone())
            .unwrap_or_else(|_| TestId::new("invalid-test-id").expect("a valid id")),
        name: rec.test_id.clone(),
        runner: m.get("runner").cloned().unwrap_or_default(),
        outcome,
        expect,
        tags: m
            .get("tags")
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        attempt: attempt_of(rec),
        earlier_attempts: Vec::new(),
        message: Some(why),
        started_at,
        finished_at: started_at
            + chrono::Duration::from_std(duration).unwrap_or_else(|_| chrono::Duration::zero()),
        phases: Vec::new(),
        stdout: Default::default(),
        stderr: Default::default(),
        artifacts: Vec::new(),
        console_excerpt: None,
        environment,
        metrics: BTreeMap::new(),
        resources,
        subtests: Vec::new(),
        suites: Vec::new(),
    })
}

/// One stored result of a test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The run.
    pub run_id: String,
    /// When the test started.
    pub at: DateTime<Utc>,
    /// The outcome label ([`Outcome::label`]).
    pub outcome: Option<String>,
    /// The verdict against the test's expectation.
    pub verdict: Option<Verdict>,
    /// Wall time.
    pub duration: Option<Duration>,
    /// CPU seconds of the test's processes, when monitored.
    pub cpu_seconds: Option<f64>,
    /// Peak memory of the test's processes, when monitored.
    pub peak_rss_bytes: Option<u64>,
    /// The kernel (release, or image), when known.
    pub kernel: Option<String>,
    /// The execution mode (`alone`, `session`, `snapshot-reset`), when known.
    pub mode: Option<String>,
    /// The architecture, when known.
    pub arch: Option<String>,
    /// The runner.
    pub runner: Option<String>,
    /// Which attempt (above 1 after infrastructure errors).
    pub attempt: u32,
    /// The result record's artifact id (`store cat` shows the whole result).
    pub artifact_id: String,
    /// Whether the result's blob was evicted (the figures stay).
    pub evicted: bool,
}

impl HistoryEntry {
    fn of(r: &ArtifactRecord) -> Self {
        let m = &r.metadata;
        HistoryEntry {
            run_id: r.run_id.clone(),
            at: time_meta(r, "started-at").unwrap_or(r.created_at),
            outcome: m
                .get("outcome")
                .cloned()
                .or_else(|| r.outcome.map(|o| o.as_str().to_owned())),
            verdict: m.get("verdict").and_then(|v| Verdict::from_name(v)),
            duration: m
                .get("duration-ms")
                .and_then(|d| d.parse().ok())
                .map(Duration::from_millis),
            cpu_seconds: m
                .get("cpu-ms")
                .and_then(|c| c.parse::<f64>().ok())
                .map(|c| c / 1000.0),
            peak_rss_bytes: m.get("peak-rss-bytes").and_then(|b| b.parse().ok()),
            kernel: m.get("kernel").cloned(),
            mode: m.get("mode").cloned(),
            arch: r.arch.clone(),
            runner: m.get("runner").cloned(),
            attempt: attempt_of(r),
            artifact_id: r.id.clone(),
            evicted: r.evicted.is_some(),
        }
    }
}

/// The stored results of `test_id`, newest first, at most `limit` (0: all): one indexed catalog
/// query over the result records' metadata, no blob read, so evicted results count too.
pub fn test_history(
    store: &ArtifactStore,
    test_id: &str,
    limit: usize,
) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut q = Query::new()
        .test(test_id)
        .kind(ArtifactKind::Result)
        .include_evicted(true)
        .newest_first(true);
    if limit > 0 {
        q = q.limit(limit as u64);
    }
    let records = store.query(&q)?;
    if records.is_empty() {
        let tests = store.test_ids(ArtifactKind::Result)?;
        return Err(HistoryError::UnknownTest {
            test_id: test_id.to_owned(),
            close: close_matches(
                test_id,
                tests
                    .iter()
                    .map(String::as_str)
                    .filter(|t| *t != RUN_RECORD_TEST_ID),
            ),
        });
    }
    Ok(records.iter().map(HistoryEntry::of).collect())
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn bytes(b: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b.abs() >= 1024.0 * MIB {
        format!("{:.2} GiB", b / 1024.0 / MIB)
    } else if b.abs() >= MIB {
        format!("{:.1} MiB", b / MIB)
    } else if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// A test's history as a plain-text table, newest first.
pub fn render_history(test_id: &str, entries: &[HistoryEntry]) -> String {
    let header = [
        "run", "started", "verdict", "outcome", "duration", "cpu", "peak mem", "kernel", "mode",
    ];
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            let attempt = if e.attempt > 1 {
                format!(" (attempt {})", e.attempt)
            } else {
                String::new()
            };
            [
                format!("{}{attempt}", e.run_id),
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.verdict.map_or("-".into(), |v| v.label().to_owned()),
                e.outcome.clone().unwrap_or_else(|| "-".into()),
                e.duration.map_or("-".into(), secs),
                e.cpu_seconds.map_or("-".into(), |c| format!("{c:.2} s")),
                e.peak_rss_bytes.map_or("-".into(), |b| bytes(b as f64)),
                e.kernel.clone().unwrap_or_else(|| "-".into()),
                e.mode.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!(
        "History of test `{test_id}`: {} result{}, newest first\n",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    let evicted = entries.iter().filter(|e| e.evicted).count();
    if evicted > 0 {
        let _ = writeln!(
            out,
            "({evicted} of these results had their stored JSON evicted by retention; the figures come from the catalog)"
        );
    }
    out
}

/// One side's values of a metric over its runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideStats {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many runs had a value.
    pub runs: usize,
}

impl SideStats {
    fn of(mut v: Vec<f64>) -> Option<SideStats> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(SideStats {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }

    /// The spread of the runs (largest minus smallest).
    pub fn spread(&self) -> f64 {
        self.max - self.min
    }
}

/// One resource metric of one test, compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricComparison {
    /// `cpu_total_s`, `peak_rss_bytes`, `read_bytes`, `write_bytes` or `duration_s` (the names
    /// of [`perf_monitor::verdict::compare`]).
    pub metric: String,
    /// The baseline side.
    pub before: Option<SideStats>,
    /// The compared side.
    pub after: Option<SideStats>,
    /// `(after - before) / before` of the medians.
    pub relative: Option<f64>,
    /// The judgement: regressed only when the medians moved beyond the noise band and by more
    /// than the spread of either side's runs.
    pub change: Change,
    /// Whether the noise band alone judged it regressed or improved but the runs' spread was
    /// larger than the change.
    pub within_spread: bool,
}

/// A test whose verdict differs between the two sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeChange {
    /// The test.
    pub test_id: String,
    /// Its verdict on the baseline side (the most frequent over its runs), `None` when absent.
    pub before: Option<Verdict>,
    /// Its verdict on the compared side.
    pub after: Option<Verdict>,
}

impl OutcomeChange {
    /// A test that succeeded (or did not exist) before and does not succeed now.
    pub fn is_regression(&self) -> bool {
        let ok = |v: Option<Verdict>| v.is_none_or(Verdict::is_success);
        self.after.is_some() && ok(self.before) && !ok(self.after)
    }
}

/// Two sets of runs compared: what changed per test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunComparison {
    /// The baseline runs.
    pub before_runs: Vec<String>,
    /// The compared runs.
    pub after_runs: Vec<String>,
    /// The noise band the resources were judged against.
    pub band: NoiseBand,
    /// Tests whose verdict changed (also tests only one side has).
    pub outcome_changes: Vec<OutcomeChange>,
    /// Per test (passing on both sides), its resource metrics.
    pub resources: BTreeMap<String, Vec<MetricComparison>>,
    /// Whether the two sides ran on like hosts (same CPU count, OS and architecture).
    pub same_host: bool,
}

impl RunComparison {
    /// Whether anything regressed: a test that newly fails, or a resource beyond the band.
    pub fn is_regression(&self) -> bool {
        self.outcome_changes
            .iter()
            .any(OutcomeChange::is_regression)
            || self.resource_regressions().next().is_some()
    }

    /// The regressed metrics: `(test id, metric)`.
    pub fn resource_regressions(&self) -> impl Iterator<Item = (&str, &MetricComparison)> {
        self.resources.iter().flat_map(|(t, ms)| {
            ms.iter()
                .filter(|m| m.change == Change::Regressed)
                .map(move |m| (t.as_str(), m))
        })
    }
}

fn most_frequent(v: &[Verdict]) -> Option<Verdict> {
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    for x in v {
        *counts.entry(*x).or_default() += 1;
    }
    // Ties go to the latest run's verdict.
    let best = counts.values().max().copied()?;
    v.iter().rev().find(|x| counts[x] == best).copied()
}

/// Compares the runs of side `before` (the baseline) with those of side `after`: tests whose
/// verdict changed, and per test passing on both sides its CPU time, peak memory, storage I/O
/// and duration, the medians of each side's runs judged with
/// [`perf_monitor::verdict::compare`] against `band`; with several runs per side a change must
/// also exceed the spread of either side's runs to count.
pub fn compare(before: &[RunReport], after: &[RunReport], band: &NoiseBand) -> RunComparison {
    let mut order: Vec<String> = Vec::new();
    let mut verdicts: [BTreeMap<String, Vec<Verdict>>; 2] = Default::default();
    let mut figures: [BTreeMap<String, Vec<&TestResult>>; 2] = Default::default();
    for (side, reports) in [before, after].into_iter().enumerate() {
        for report in reports {
            for r in &report.results {
                let id = r.test_id.as_str().to_owned();
                if !order.contains(&id) {
                    order.push(id.clone());
                }
                verdicts[side]
                    .entry(id.clone())
                    .or_default()
                    .push(r.verdict());
                if r.verdict().is_success() {
                    figures[side].entry(id).or_default().push(r);
                }
            }
        }
    }
    let mut outcome_changes = Vec::new();
    let mut resources = BTreeMap::new();
    for id in &order {
        let b = verdicts[0].get(id).and_then(|v| most_frequent(v));
        let a = verdicts[1].get(id).and_then(|v| most_frequent(v));
        if a != b {
            outcome_changes.push(OutcomeChange {
                test_id: id.clone(),
                before: b,
                after: a,
            });
        }
        if let (Some(x), Some(y)) = (figures[0].get(id), figures[1].get(id)) {
            resources.insert(id.clone(), compare_resources(x, y, band));
        }
    }
    let hosts = |rs: &[RunReport]| -> BTreeSet<(usize, String, String)> {
        rs.iter()
            .filter(|r| !r.host.os.is_empty())
            .map(|r| (r.host.cpus, r.host.os.clone(), r.host.arch.clone()))
            .collect()
    };
    let (hb, ha) = (hosts(before), hosts(after));
    RunComparison {
        before_runs: before.iter().map(|r| r.run_id.clone()).collect(),
        after_runs: after.iter().map(|r| r.run_id.clone()).collect(),
        band: band.clone(),
        outcome_changes,
        resources,
        same_host: hb.is_empty() || ha.is_empty() || (hb.len() == 1 && hb == ha),
    }
}

fn compare_resources(
    before: &[&TestResult],
    after: &[&TestResult],
    band: &NoiseBand,
) -> Vec<MetricComparison> {
    type Pick = fn(&TestResult) -> Option<f64>;
    let picks: [(&str, Pick); 5] = [
        ("cpu_total_s", |r| {
            r.resources.as_ref().map(|u| u.cpu_seconds)
        }),
        ("peak_rss_bytes", |r| {
            r.resources.as_ref().map(|u| u.peak_rss_bytes as f64)
        }),
        ("read_bytes", |r| {
            r.resources
                .as_ref()
                .and_then(|u| u.read_bytes)
                .map(|b| b as f64)
        }),
        ("write_bytes", |r| {
            r.resources
                .as_ref()
                .and_then(|u| u.write_bytes)
                .map(|b| b as f64)
        }),
        ("duration_s", |r| Some(r.duration().as_secs_f64())),
    ];
    let stats: Vec<(Option<SideStats>, Option<SideStats>)> = picks
        .iter()
        .map(|(_, pick)| {
            (
                SideStats::of(before.iter().filter_map(|r| pick(r)).collect()),
                SideStats::of(after.iter().filter_map(|r| pick(r)).collect()),
            )
        })
        .collect();
    // The medians as two monitor summaries, judged by the monitor's own comparison.
    let summary = |side: usize| {
        let mut s = perf_monitor::Summary::default();
        let med = |i: usize| {
            let st: &Option<SideStats> = if side == 0 { &stats[i].0 } else { &stats[i].1 };
            st.as_ref().map(|s| s.median)
        };
        s.cpu.total_s = med(0).unwrap_or(0.0);
        s.memory.peak_bytes = med(1).unwrap_or(0.0) as u64;
        s.io.read_bytes = med(2).map(|b| b as u64);
        s.io.write_bytes = med(3).map(|b| b as u64);
        s.duration_s = med(4).unwrap_or(0.0);
        s.score = 100.0;
        s
    };
    let judged = perf_monitor::verdict::compare(&summary(0), &summary(1), band);
    picks
        .iter()
        .zip(stats)
        .map(|((metric, _), (b, a))| {
            let delta = judged.metrics.iter().find(|m| m.metric == *metric);
            let mut change = match (&b, &a) {
                (Some(_), Some(_)) => delta.map_or(Change::Unavailable, |d| d.change),
                _ => Change::Unavailable,
            };
            let mut within_spread = false;
            if let (Some(b), Some(a), Change::Regressed | Change::Improved) = (&b, &a, change) {
                let moved = (a.median - b.median).abs();
                if moved <= b.spread().max(a.spread()) {
                    within_spread = true;
                    change = Change::Unchanged;
                }
            }
            MetricComparison {
                metric: (*metric).to_owned(),
                relative: match (&b, &a) {
                    (Some(b), Some(a)) if b.median != 0.0 => Some((a.median - b.median) / b.median),
                    _ => None,
                },
                before: b,
                after: a,
                change,
                within_spread,
            }
        })
        .collect()
}

fn metric_value(metric: &str, v: f64) -> String {
    match metric {
        "cpu_total_s" | "duration_s" => format!("{v:.2} s"),
        _ => bytes(v),
    }
}

fn metric_name(metric: &str) -> &str {
    match metric {
        "cpu_total_s" => "cpu",
        "peak_rss_bytes" => "peak memory",
        "read_bytes" => "read",
        "write_bytes" => "written",
        "duration_s" => "duration",
        other => other,
    }
}

fn runs_line(runs: &[String]) -> String {
    match runs.len() {
        1 => format!("run {}", runs[0]),
        n => format!("{n} runs ({})", runs.join(", ")),
    }
}

impl fmt::Display for RunComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.band;
        writeln!(
            f,
            "Comparing {} (before) with {} (after)",
            runs_line(&self.before_runs),
            runs_line(&self.after_runs)
        )?;
        writeln!(
            f,
            "Noise band: a change counts beyond {:.0}% and at least {:.2} s CPU, {} memory, {} I/O, {:.2} s duration{}",
            b.relative * 100.0,
            b.cpu_s,
            bytes(b.memory_bytes),
            bytes(b.io_bytes),
            b.duration_s,
            if self.before_runs.len() > 1 || self.after_runs.len() > 1 {
                "; medians of each side's runs, and beyond the spread of either side's runs"
            } else {
                ""
            }
        )?;
        if !self.same_host {
            writeln!(
                f,
                "Note: the two sides ran on different hosts; resource changes may be the machines'"
            )?;
        }
        let show = |v: Option<Verdict>| v.map_or("absent", Verdict::label);
        if self.outcome_changes.is_empty() {
            writeln!(f, "Outcomes: no test changed its verdict")?;
        } else {
            writeln!(f, "Outcome changes:")?;
            for c in &self.outcome_changes {
                let what = if c.is_regression() {
                    "  REGRESSION"
                } else if c.before.is_some_and(|v| !v.is_success())
                    && c.after.is_some_and(Verdict::is_success)
                {
                    "  fixed"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {}: {} -> {}{what}",
                    c.test_id,
                    show(c.before),
                    show(c.after)
                )?;
            }
        }
        let mut changed = 0;
        for (test, metrics) in &self.resources {
            for m in metrics {
                let (Some(before), Some(after)) = (&m.before, &m.after) else {
                    continue;
                };
                if m.change == Change::Unchanged && !m.within_spread {
                    continue;
                }
                if changed == 0 {
                    writeln!(f, "Resource changes:")?;
                }
                changed += 1;
                let verdict = match (m.change, m.within_spread) {
                    (Change::Regressed, _) => "REGRESSION",
                    (Change::Improved, _) => "improved",
                    (_, true) => "within the runs' spread: not counted",
                    _ => "unchanged",
                };
                let spread = if before.runs > 1 || after.runs > 1 {
                    format!(
                        ", spread {} / {}",
                        metric_value(&m.metric, before.spread()),
                        metric_value(&m.metric, after.spread())
                    )
                } else {
                    String::new()
                };
                writeln!(
                    f,
                    "  {test} {}: {} -> {} ({}{spread})  {verdict}",
                    metric_name(&m.metric),
                    metric_value(&m.metric, before.median),
                    metric_value(&m.metric, after.median),
                    m.relative
                        .map_or("n/a".into(), |r| format!("{:+.0}%", r * 100.0)),
                )?;
            }
        }
        if changed == 0 {
            writeln!(
                f,
                "Resources: no change beyond the noise band ({} test{} compared)",
                self.resources.len(),
                if self.resources.len() == 1 { "" } else { "s" }
            )?;
        }
        let outcome_regressions = self
            .outcome_changes
            .iter()
            .filter(|c| c.is_regression())
            .count();
        let resource_regressions = self.resource_regressions().count();
        if self.is_regression() {
            writeln!(
                f,
                "Result: REGRESSION ({outcome_regressions} test{} newly failing, {resource_regressions} resource regression{})",
                if outcome_regressions == 1 { "" } else { "s" },
                if resource_regressions == 1 { "" } else { "s" }
            )
        } else {
            writeln!(f, "Result: no regression")
        }
    }
}

/// A comparison as plain text (its [`Display`](fmt::Display)).
pub fn render_comparison(c: &RunComparison) -> String {
    c.to_string()
}

/// What [`import_report`] added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImportSummary {
    /// Result records added (tests that had none in this run yet).
    pub results_added: usize,
    /// Whether the report record was added (false: the run already had one).
    pub report_added: bool,
}

/// Records a report written elsewhere or by an earlier version of this program (which kept no
/// result records) into the store: a result record per test that has none in the run yet, and
/// the report record unless the run has one. The records carry the report's times, so history
/// orders them where they belong. Importing the same report again adds nothing.
pub fn import_report(
    store: &ArtifactStore,
    report: &RunReport,
) -> Result<ImportSummary, HistoryError> {
    let mut summary = ImportSummary::default();
    let have: BTreeSet<String> = result_records(store, &report.run_id)?
        .into_iter()
        .map(|r| r.test_id)
        .collect();
    let mut items: Vec<(NewArtifact, Vec<u8>)> = Vec::new();
    for (position, r) in report.results.iter().enumerate() {
        if have.contains(r.test_id.as_str()) {
            continue;
        }
        let json = serde_json::to_vec_pretty(r).map_err(|e| HistoryError::Corrupt {
            what: "result",
            id: r.test_id.to_string(),
            detail: e.to_string(),
        })?;
        let mut a = NewArtifact::new(
            r.test_id.as_str(),
            report.run_id.as_str(),
            ArtifactKind::Result,
            RESULT_NAME,
        )
        .outcome(crate::compose::store_outcome(&r.outcome))
        .created_at(r.finished_at)
        .meta("imported", "true")
        .meta("position", position.to_string());
        for (k, v) in result_metadata(r) {
            a = a.meta(k, v);
        }
        if let Some(arch) = r.environment.get("arch") {
            a = a.arch(arch.clone());
        }
        items.push((a, json));
    }
    let has_report = !store
        .query(
            &Query::new()
                .run(&report.run_id)
                .kind(ArtifactKind::Report)
                .include_evicted(true)
                .limit(1),
        )?
        .is_empty();
    if !has_report {
        let json = serde_json::to_vec_pretty(report).map_err(|e| HistoryError::Corrupt {
            what: "report",
            id: report.run_id.clone(),
            detail: e.to_string(),
        })?;
        items.push((
            report_artifact(report)
                .created_at(report.finished_at)
                .meta("imported", "true"),
            json,
        ));
    }
    summary.results_added = items.len() - usize::from(!has_report);
    summary.report_added = !has_report;
    if !items.is_empty() {
        store.add_many(items.iter().map(|(a, b)| (a.clone(), b.as_slice())))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::TestCase;
    use crate::result::ResourceUsage;

    fn report(run: &str, figures: &[(&str, Outcome, f64, u64)]) -> RunReport {
        let results: Vec<TestResult> = figures
            .iter()
            .map(|(id, outcome, cpu, rss)| {
                let mut r = TestResult::new(&TestCase::script(id, "true"), "host", outcome.clone());
                r.finished_at = r.started_at + chrono::Duration::milliseconds(500);
                r.resources = Some(ResourceUsage {
                    cpu_seconds: *cpu,
                    avg_cpu_percent: None,
                    peak_cpu_percent: None,
                    peak_rss_bytes: *rss,
                    read_bytes: None,
                    write_bytes: None,
                    peak_processes: 1,
                    bottleneck: "cpu".into(),
                    series: Vec::new(),
                    ..ResourceUsage::default()
                });
                r
            })
            .collect();
        RunReport::new(run, results, Utc::now(), Utc::now(), HostInfo::current())
    }

    const MIB: u64 = 1 << 20;
    fn failed() -> Outcome {
        Outcome::Failed {
            exit_code: Some(1),
            signal: None,
        }
    }

    #[test]
    fn outcome_changes_and_resource_regressions_beyond_band_and_spread() {
        let band = NoiseBand::default();
        let a = [report(
            "a1",
            &[
                ("t", Outcome::Passed, 1.0, 100 * MIB),
                ("u", Outcome::Passed, 1.0, MIB),
            ],
        )];
        let b = [report(
            "b1",
            &[
                ("t", Outcome::Passed, 2.0, 200 * MIB),
                ("u", failed(), 1.0, MIB),
            ],
        )];
        let c = compare(&a, &b, &band);
        assert!(c.is_regression());
        assert_eq!(c.outcome_changes.len(), 1);
        assert!(c.outcome_changes[0].is_regression());
        let regressed: Vec<&str> = c
            .resource_regressions()
            .map(|(_, m)| m.metric.as_str())
            .collect();
        assert_eq!(regressed, ["cpu_total_s", "peak_rss_bytes"]);
        let text = c.to_string();
        assert!(
            text.contains("Noise band: a change counts beyond 10%"),
            "{text}"
        );
        assert!(text.contains("u: PASS -> FAIL  REGRESSION"), "{text}");
        assert!(
            text.contains("t cpu: 1.00 s -> 2.00 s (+100%)  REGRESSION"),
            "{text}"
        );
        // Fixed is no regression; nor is a change within the runs' spread.
        assert!(!compare(&b[..1], &a[..1], &band).outcome_changes[0].is_regression());
        let side = |cpus: [f64; 3]| -> Vec<RunReport> {
            cpus.iter()
                .enumerate()
                .map(|(i, c)| report(&format!("r{i}"), &[("t", Outcome::Passed, *c, MIB)]))
                .collect()
        };
        let c = compare(&side([1.0, 1.5, 2.0]), &side([1.4, 1.7, 2.1]), &band);
        let cpu = &c.resources["t"][0];
        assert!(
            cpu.within_spread && cpu.change == Change::Unchanged,
            "{cpu:#?}"
        );
        assert!(!c.is_regression(), "{c}");
        assert!(c.to_string().contains("within the runs' spread"), "{c}");
        assert!(compare(&side([1.0, 1.1, 1.05]), &side([2.0, 2.1, 2.2]), &band).is_regression());
    }
}
