//! Catalog records and queries.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Digest, Error};

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ArtifactKind {
    /// A log file (test output, service logs).
    Log,
    /// A console capture (serial console, kernel log).
    Console,
    /// A core dump or crash dump.
    CoreDump,
    /// A trace (ftrace, perf, strace, ...).
    Trace,
    /// A screenshot.
    Screenshot,
    /// Metrics (resource usage samples, timings).
    Metrics,
    /// Anything else.
    Other,
    /// A test's result (`result.json`: the orchestrator's `TestResult` as JSON), one per
    /// execution; its metadata holds the figures history needs without reading the blob.
    Result,
    /// A whole run's report (`report.json`: the orchestrator's `RunReport` as JSON), test id
    /// `@run`.
    Report,
}

impl ArtifactKind {
    /// Every kind.
    pub const ALL: [ArtifactKind; 9] = [
        ArtifactKind::Log,
        ArtifactKind::Console,
        ArtifactKind::CoreDump,
        ArtifactKind::Trace,
        ArtifactKind::Screenshot,
        ArtifactKind::Metrics,
        ArtifactKind::Other,
        ArtifactKind::Result,
        ArtifactKind::Report,
    ];

    /// The name stored in the catalog (`log`, `console`, `core-dump`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Log => "log",
            ArtifactKind::Console => "console",
            ArtifactKind::CoreDump => "core-dump",
            ArtifactKind::Trace => "trace",
            ArtifactKind::Screenshot => "screenshot",
            ArtifactKind::Metrics => "metrics",
            ArtifactKind::Other => "other",
            ArtifactKind::Result => "result",
            ArtifactKind::Report => "report",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ArtifactKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "artifact kind",
                detail: format!("unknown kind `{s}`"),
            })
    }
}

/// The outcome of the test that produced an artifact, as stored in the catalog.
///
/// The labels are those of `orchestrator_core::Outcome::label` (details such as exit codes stay
/// in the report); the orchestrator converts its outcomes when it stores a test's artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TestOutcome {
    /// The test passed.
    Passed,
    /// The test failed.
    Failed,
    /// The test hit a time limit.
    TimedOut,
    /// The system under test crashed.
    Crashed,
    /// An infrastructure error.
    InfraError,
    /// The test was skipped.
    Skipped,
    /// The run was cancelled.
    Cancelled,
}

impl TestOutcome {
    /// Every outcome.
    pub const ALL: [TestOutcome; 7] = [
        TestOutcome::Passed,
        TestOutcome::Failed,
        TestOutcome::TimedOut,
        TestOutcome::Crashed,
        TestOutcome::InfraError,
        TestOutcome::Skipped,
        TestOutcome::Cancelled,
    ];

    /// The stored label, the same as `orchestrator_core::Outcome::label`.
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::TimedOut => "timed-out",
            TestOutcome::Crashed => "crashed",
            TestOutcome::InfraError => "infra-error",
            TestOutcome::Skipped => "skipped",
            TestOutcome::Cancelled => "cancelled",
        }
    }

    /// Whether the test itself failed (failed, timed out or crashed); retention keeps these
    /// longer.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            TestOutcome::Failed | TestOutcome::TimedOut | TestOutcome::Crashed
        )
    }

    /// Whether the test passed.
    pub fn is_pass(self) -> bool {
        self == TestOutcome::Passed
    }
}

impl fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TestOutcome {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TestOutcome::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "outcome",
                detail: format!("unknown outcome `{s}`"),
            })
    }
}

/// Metadata key whose value [`Pin`](crate::retention::Pin) matches as a tag.
pub const TAG_KEY: &str = "tag";

/// What the caller says about an artifact being added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// The test that produced it (an orchestrator test id).
    pub test_id: String,
    /// The run it belongs to.
    pub run_id: String,
    /// What it is.
    pub kind: ArtifactKind,
    /// Its original file name.
    pub name: String,
    /// The test's outcome, when known.
    pub outcome: Option<TestOutcome>,
    /// The architecture (`x86_64`, `aarch64`, `armv7`, `riscv64`, ...).
    pub arch: Option<String>,
    /// When it was created; now when `None`.
    pub created_at: Option<DateTime<Utc>>,
    /// Free-form key/value metadata.
    pub metadata: BTreeMap<String, String>,
}

impl NewArtifact {
    /// An artifact of `kind` named `name` from `test_id` in `run_id`.
    pub fn new(
        test_id: impl Into<String>,
        run_id: impl Into<String>,
        kind: ArtifactKind,
        name: impl Into<String>,
    ) -> Self {
        NewArtifact {
            test_id: test_id.into(),
            run_id: run_id.into(),
            kind,
            name: name.into(),
            outcome: None,
            arch: None,
            created_at: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the test's outcome.
    pub fn outcome(mut self, outcome: TestOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Sets the architecture.
    pub fn arch(mut self, arch: impl Into<String>) -> Self {
        self.arch = Some(arch.into());
        self
    }

    /// Sets the creation time (default: now).
    pub fn created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (what, v) in [("test id", &self.test_id), ("run id", &self.run_id)] {
            if v.is_empty() {
                return Err(Error::Invalid {
                    what,
                    detail: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}

/// Why and when a record's blob was evicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eviction {
    /// When.
    pub at: DateTime<Utc>,
    /// Why (the retention reason, or `blob missing` / `blob corrupt` from a verify repair).
    pub reason: String,
}

/// One artifact in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Unique artifact id (a UUID).
    pub id: String,
    /// The blob holding its content.
    pub digest: Digest,
    /// The test that produced it.
    pub test_id: String,
    /// The run it belongs to.
    pub run_id: String,
    /// What it is.
    pub kind: ArtifactKind,
    /// Its original file name.
    pub name: String,
    /// Content size in bytes.
    pub raw_size: u64,
    /// Size of the blob on disk (compressed or not, with its header).
    pub stored_size: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The test's outcome.
    pub outcome: Option<TestOutcome>,
    /// The architecture.
    pub arch: Option<String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Set when the blob was evicted; the record itself stays.
    pub evicted: Option<Eviction>,
}

/// A catalog query; every criterion set must match. Results are ordered oldest first (or newest
/// first, [`Query::newest_first`]).
///
/// ```
/// use artifact_store::{ArtifactKind, Query, TestOutcome};
/// let q = Query::new().test("boot").kind(ArtifactKind::Console).outcome(TestOutcome::Crashed);
/// # let _ = q;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub(crate) test_id: Option<String>,
    pub(crate) run_id: Option<String>,
    pub(crate) kind: Option<ArtifactKind>,
    pub(crate) outcome: Option<TestOutcome>,
    pub(crate) arch: Option<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) include_evicted: bool,
    pub(crate) limit: Option<u64>,
    pub(crate) newest_first: bool,
}

impl Query {
    /// Matches everything that still has its blob.
    pub fn new() -> Self {
        Query::default()
    }

    /// Only this test.
    pub fn test(mut self, test_id: impl Into<String>) -> Self {
        self.test_id = Some(test_id.into());
        self
    }

    /// Only this run.
    pub fn run(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Only this kind.
    pub fn kind(mut self, kind: ArtifactKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only this outcome.
    pub fn outcome(mut self, outcome: TestOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Only this architecture.
    pub fn arch(mut self, arch: impl Into<String>) -> Self {
        self.arch = Some(arch.into());
        self
    }

    /// Created at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }

    /// Created before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }

    /// Metadata `key` equals `value` (several calls: all must match).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Also return records whose blob was evicted.
    pub fn include_evicted(mut self, yes: bool) -> Self {
        self.include_evicted = yes;
        self
    }

    /// At most `n` records.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Newest first instead of oldest first (with [`limit`](Self::limit): the newest `n`).
    pub fn newest_first(mut self, yes: bool) -> Self {
        self.newest_first = yes;
        self
    }
}

/// The records of one run that a query matched ([`ArtifactStore::runs`](crate::ArtifactStore::runs)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecords {
    /// The run id.
    pub run_id: String,
    /// When its first matching record was created.
    pub first: DateTime<Utc>,
    /// When its last matching record was created.
    pub last: DateTime<Utc>,
    /// How many records matched.
    pub records: u64,
}
