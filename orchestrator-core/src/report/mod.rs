//! Reports of a run: the versioned JSON [`RunReport`], JUnit XML and a human summary table.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::orchestrator::Interruption;
use crate::result::{TestResult, Verdict};

mod html;
mod junit;
mod table;

pub use html::html_report;
pub use junit::junit_report;
pub use table::summary_table;

/// Version of the JSON report format; bumped whenever a field is added or changed.
///
/// 2: results gain `subtests`.
pub const SCHEMA_VERSION: u32 = 2;

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
    pub retention: Option<artifact_store::RetentionOutcome>,
    /// The whole store's statistics after the run (and retention).
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

impl RunReport {
    /// Whether the run succeeded as a whole.
    pub fn is_success(&self) -> bool {
        self.summary.is_success() && self.interrupted.is_none()
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
