//! What happened when a test ran: [`TestResult`], [`Outcome`] and [`Verdict`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::case::{Expectation, TestCase, TestId};
use crate::serde_duration;

/// The phase of a test's life, used for timings and to say where a timeout hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Phase {
    /// Preparing the test: placing files, building images.
    Setup,
    /// Booting the machine the test runs in (QEMU runner only).
    Boot,
    /// Running the test itself.
    Test,
    /// Stopping leftovers and collecting artifacts.
    Teardown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Setup => "setup",
            Phase::Boot => "boot",
            Phase::Test => "test",
            Phase::Teardown => "teardown",
        })
    }
}

/// How a guest (or a process) crashed, as classified by the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CrashKind {
    /// `Kernel panic - not syncing`.
    KernelPanic,
    /// A kernel oops.
    Oops,
    /// A kernel `BUG:` report.
    Bug,
    /// A soft or hard lockup detected by the watchdog.
    Lockup,
    /// An RCU stall.
    RcuStall,
    /// A task blocked for too long (hung-task detector).
    HungTask,
    /// The out-of-memory killer acted.
    OutOfMemory,
    /// The emulator exited cleanly without the test finishing, and the console did not say why.
    UnexpectedExit,
    /// The guest powered itself off (or halted) before the test finished.
    PowerOff,
    /// The guest rebooted before the test finished.
    Reboot,
    /// The machine never became ready to run the test (no init, a panic during boot...).
    BootFailure,
    /// Anything else the runner recognised as a crash.
    Other,
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrashKind::KernelPanic => "kernel panic",
            CrashKind::Oops => "oops",
            CrashKind::Bug => "kernel BUG",
            CrashKind::Lockup => "lockup",
            CrashKind::RcuStall => "RCU stall",
            CrashKind::HungTask => "hung task",
            CrashKind::OutOfMemory => "out of memory",
            CrashKind::UnexpectedExit => "unexpected exit",
            CrashKind::PowerOff => "guest powered off",
            CrashKind::Reboot => "guest rebooted",
            CrashKind::BootFailure => "boot failure",
            CrashKind::Other => "crash",
        })
    }
}

/// What happened to a test, independent of what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Outcome {
    /// The test ran and succeeded (exit code 0).
    Passed,
    /// The test ran and failed.
    Failed {
        /// The exit code, when the test exited.
        exit_code: Option<i32>,
        /// The signal number, when a signal killed it.
        signal: Option<i32>,
    },
    /// A time limit was hit.
    TimedOut {
        /// Which phase was running.
        phase: Phase,
        /// The limit that was exceeded.
        #[serde(with = "serde_duration")]
        limit: Duration,
    },
    /// The system under test crashed.
    Crashed {
        /// The kind of crash.
        crash: CrashKind,
    },
    /// The test could not be run properly for reasons outside the test (the runner, the host,
    /// the emulator). Only these are retried.
    InfraError {
        /// What went wrong.
        message: String,
        /// What kind of problem: whether another attempt may help (reports written before
        /// it existed read as infrastructure).
        #[serde(default)]
        cause: crate::runner::ErrorKind,
    },
    /// The test was not run.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The run was cancelled (Ctrl-C) while the test was running; it was stopped.
    Cancelled,
    /// The test itself succeeded (exit code 0), but cases it reported (KTAP/TAP
    /// [`subtests`](TestResult::subtests)) failed: judged like [`Failed`](Outcome::Failed). Set
    /// by [`TestResult::judge_subtests`]; the result's message names the failed cases.
    SubtestsFailed {
        /// How many subtests failed.
        failed: u32,
        /// How many subtests the test reported.
        total: u32,
    },
}

impl Outcome {
    /// Whether this is an infrastructure error (of any [`ErrorKind`](crate::ErrorKind)).
    pub fn is_infra_error(&self) -> bool {
        matches!(self, Outcome::InfraError { .. })
    }

    /// An infrastructure error: the host or the emulator failed; retried under `retries`.
    pub fn infra(message: impl Into<String>) -> Outcome {
        Outcome::InfraError {
            message: message.into(),
            cause: crate::runner::ErrorKind::Infrastructure,
        }
    }

    /// The outcome of a [`RunnerError`](crate::RunnerError): an infrastructure error of its kind.
    pub fn from_error(error: &crate::RunnerError) -> Outcome {
        Outcome::InfraError {
            message: error.chain(),
            cause: error.kind(),
        }
    }

    /// Whether another attempt may end differently: infrastructure errors of a retryable
    /// [`ErrorKind`](crate::ErrorKind), and nothing else (real failures are never retried).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::InfraError { cause, .. } if cause.is_retryable())
    }

    /// A test that ran out of time in its test phase: past its own `timeout`, or stopped by the
    /// run's deadline (`by_run`) after running for `ran_for`. Returns the outcome and a sentence
    /// for the result's message.
    pub fn test_timed_out(timeout: Duration, ran_for: Duration, by_run: bool) -> (Outcome, String) {
        let limit = if by_run {
            Duration::from_millis(ran_for.as_millis().try_into().unwrap_or(u64::MAX))
        } else {
            timeout
        };
        let why = if by_run {
            "the run's deadline passed"
        } else {
            "the test exceeded its timeout"
        };
        (
            Outcome::TimedOut {
                phase: Phase::Test,
                limit,
            },
            format!("{why} after {}", humantime::format_duration(limit)),
        )
    }

    /// A short label: `passed`, `failed`, `timed-out`, `crashed`, `infra-error`, `skipped`,
    /// `cancelled`, `subtests-failed`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::SubtestsFailed { .. } => "subtests-failed",
            Outcome::Passed => "passed",
            Outcome::Failed { .. } => "failed",
            Outcome::TimedOut { .. } => "timed-out",
            Outcome::Crashed { .. } => "crashed",
            Outcome::InfraError { .. } => "infra-error",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed {
                exit_code: Some(c), ..
            } => write!(f, "failed with exit code {c}"),
            Outcome::Failed {
                signal: Some(s), ..
            } => write!(f, "killed by signal {s}"),
            Outcome::Failed { .. } => f.write_str("failed"),
            Outcome::TimedOut { phase, limit } => {
                write!(
                    f,
                    "timed out in {phase} after {}",
                    humantime::format_duration(*limit)
                )
            }
            Outcome::Crashed { crash } => write!(f, "crashed: {crash}"),
            Outcome::InfraError {
                message,
                cause: crate::runner::ErrorKind::Infrastructure,
            } => write!(f, "infrastructure error: {message}"),
            Outcome::InfraError { message, cause } => write!(f, "{cause} error: {message}"),
            Outcome::Skipped { reason } => write!(f, "skipped: {reason}"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::SubtestsFailed { failed, total } => {
                write!(f, "{failed} of {total} subtests failed")
            }
        }
    }
}

/// The outcome judged against the test's [`Expectation`]: what reports count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Passed as expected.
    Passed,
    /// Failed, and was expected to fail: counts as a success.
    ExpectedFailure,
    /// Failed (including timeouts and crashes) when expected to pass.
    Failed,
    /// Passed when expected to fail: counts as a failure.
    UnexpectedPass,
    /// An infrastructure error: the test says nothing about the code under test.
    Error,
    /// Not run.
    Skipped,
    /// Stopped by cancellation.
    Cancelled,
}

impl Verdict {
    /// Judges an outcome against an expectation.
    pub fn of(outcome: &Outcome, expect: Expectation) -> Verdict {
        match (outcome, expect) {
            (Outcome::Passed, Expectation::Pass) => Verdict::Passed,
            (Outcome::Passed, Expectation::Fail) => Verdict::UnexpectedPass,
            (
                Outcome::Failed { .. }
                | Outcome::TimedOut { .. }
                | Outcome::Crashed { .. }
                | Outcome::SubtestsFailed { .. },
                Expectation::Fail,
            ) => Verdict::ExpectedFailure,
            (
                Outcome::Failed { .. }
                | Outcome::TimedOut { .. }
                | Outcome::Crashed { .. }
                | Outcome::SubtestsFailed { .. },
                Expectation::Pass,
            ) => Verdict::Failed,
            (Outcome::InfraError { .. }, _) => Verdict::Error,
            (Outcome::Skipped { .. }, _) => Verdict::Skipped,
            (Outcome::Cancelled, _) => Verdict::Cancelled,
        }
    }

    /// Whether the verdict counts as a success (passed, or failed as expected).
    pub fn is_success(self) -> bool {
        matches!(self, Verdict::Passed | Verdict::ExpectedFailure)
    }

    /// Every verdict.
    pub const ALL: [Verdict; 7] = [
        Verdict::Passed,
        Verdict::ExpectedFailure,
        Verdict::Failed,
        Verdict::UnexpectedPass,
        Verdict::Error,
        Verdict::Skipped,
        Verdict::Cancelled,
    ];

    /// The serialised name (`passed`, `expected-failure`, `failed`, `unexpected-pass`, `error`,
    /// `skipped`, `cancelled`), as in JSON reports and the store's result records.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::ExpectedFailure => "expected-failure",
            Verdict::Failed => "failed",
            Verdict::UnexpectedPass => "unexpected-pass",
            Verdict::Error => "error",
            Verdict::Skipped => "skipped",
            Verdict::Cancelled => "cancelled",
        }
    }

    /// The verdict named `name` ([`Verdict::name`]).
    pub fn from_name(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.name() == name)
    }

    /// A short upper-case label for terminals: `PASS`, `XFAIL`, `FAIL`, `XPASS`, `ERROR`,
    /// `SKIP`, `CANCEL`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Passed => "PASS",
            Verdict::ExpectedFailure => "XFAIL",
            Verdict::Failed => "FAIL",
            Verdict::UnexpectedPass => "XPASS",
            Verdict::Error => "ERROR",
            Verdict::Skipped => "SKIP",
            Verdict::Cancelled => "CANCEL",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Captured output of a stream, bounded in size.
///
/// When the stream is longer than the limit, the first and last parts are kept and the cut is
/// marked in `text` with a line `[... N bytes truncated ...]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOutput {
    /// The kept text (invalid UTF-8 replaced), including the truncation marker if any.
    pub text: String,
    /// How many bytes the stream produced in all.
    pub total_bytes: u64,
    /// How many of them were dropped.
    pub truncated_bytes: u64,
}

impl CapturedOutput {
    /// Whether some output was dropped.
    pub fn is_truncated(&self) -> bool {
        self.truncated_bytes > 0
    }
}

/// When a phase ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

impl PhaseTiming {
    /// How long the phase took.
    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// A file a test produced and the runner collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArtifactFile {
    /// Its name relative to the test's artifact directory.
    pub name: String,
    /// Where it is on the host.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Where the artifact store keeps it, once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredArtifact>,
}

impl ArtifactFile {
    /// Describes a collected file.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, size: u64) -> Self {
        ArtifactFile {
            name: name.into(),
            path: path.into(),
            size,
            stored: None,
        }
    }
}

/// An artifact's record in the artifact store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredArtifact {
    /// The catalog record's id (`ArtifactStore::get(id)` reads it back).
    pub id: String,
    /// The BLAKE3 digest of the content, in hex.
    pub digest: String,
    /// The catalog's kind (`log`, `console`, `core-dump`, `trace`, `screenshot`, `metrics`,
    /// `other`).
    pub kind: String,
}

/// What a test's host processes cost, as the monitor sampled them (the QEMU process and its
/// children for the QEMU runner).
///
/// The fields after `series` came with report schema 5; a report written before reads with
/// them `None` or empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// CPU time (user + system) over the test, in seconds.
    pub cpu_seconds: f64,
    /// Average CPU use over the test, in percent of one core.
    pub avg_cpu_percent: Option<f64>,
    /// Highest CPU use between two samples, in percent of one core.
    pub peak_cpu_percent: Option<f64>,
    /// Highest resident memory of the process tree, in bytes.
    pub peak_rss_bytes: u64,
    /// Bytes read from storage, when procfs says.
    pub read_bytes: Option<u64>,
    /// Bytes written to storage, when procfs says.
    pub write_bytes: Option<u64>,
    /// Most processes alive at once.
    pub peak_processes: u32,
    /// The monitor's verdict on the bottleneck (`cpu`, `memory`, `io`, `host`, `none`...).
    pub bottleneck: String,
    /// CPU and memory over time, at most [`ResourceUsage::MAX_POINTS`] points.
    pub series: Vec<UsagePoint>,
    /// User CPU seconds (guest time included), part of `cpu_seconds`.
    #[serde(default)]
    pub cpu_user_seconds: Option<f64>,
    /// System CPU seconds, part of `cpu_seconds`.
    #[serde(default)]
    pub cpu_system_seconds: Option<f64>,
    /// Bytes passed to `read`-like system calls (cache hits and pipes included).
    #[serde(default)]
    pub read_chars: Option<u64>,
    /// Bytes passed to `write`-like system calls.
    #[serde(default)]
    pub write_chars: Option<u64>,
    /// Processes, threads, open files, context switches and page faults of the tree.
    #[serde(default)]
    pub processes: Option<ProcessCounts>,
    /// The network traffic of the namespace the test's processes ran in: **the namespace's, not
    /// the test's alone** (in the host's namespace, everything the host sent and received
    /// meanwhile).
    #[serde(default)]
    pub network: Option<NamespaceNetwork>,
    /// Load and pressure on the host meanwhile.
    #[serde(default)]
    pub host: Option<HostLoad>,
    /// The processes of the tree that used the most CPU, highest first (see
    /// [`ProcessUsage`]).
    #[serde(default)]
    pub top_cpu: Vec<ProcessUsage>,
    /// The processes of the tree with the highest peak resident memory, highest first.
    #[serde(default)]
    pub top_memory: Vec<ProcessUsage>,
    /// Figures the monitor could not read (the kernel or permissions would not give them):
    /// those are `None`, never zero.
    #[serde(default)]
    pub unavailable: Vec<String>,
}

impl ResourceUsage {
    /// The most points kept in [`series`](Self::series) (longer recordings are thinned out;
    /// the full series is a stored metrics artifact).
    pub const MAX_POINTS: usize = 300;
}

/// Process-level counts of a monitored test ([`ResourceUsage::processes`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessCounts {
    /// Distinct processes seen in the tree.
    pub seen: u64,
    /// Most threads alive at once.
    pub peak_threads: u64,
    /// Most open file descriptors at once, when procfs says.
    pub peak_open_files: Option<u64>,
    /// Voluntary context switches, when procfs says.
    pub voluntary_context_switches: Option<u64>,
    /// Involuntary context switches, when procfs says.
    pub involuntary_context_switches: Option<u64>,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Major page faults (pages read from storage).
    pub major_faults: u64,
}

/// Network traffic of a network namespace over a test ([`ResourceUsage::network`]): every
/// process of the namespace counts, not only the test's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NamespaceNetwork {
    /// Bytes received in the namespace.
    pub rx_bytes: u64,
    /// Bytes sent in the namespace.
    pub tx_bytes: u64,
    /// The namespace as procfs names it (`net:[4026531840]`), when readable.
    pub namespace: Option<String>,
    /// Whether it is the orchestrator's own namespace (the host's, usually): then the figures
    /// hold all the traffic of the host meanwhile.
    pub shared_with_orchestrator: Option<bool>,
}

impl NamespaceNetwork {
    /// How reports label these figures: whose traffic it is.
    pub fn label(&self) -> &'static str {
        match self.shared_with_orchestrator {
            Some(true) => "network (host namespace, not the test's alone)",
            Some(false) => "network (the test's namespace, not the test's alone)",
            None => "network (namespace, not the test's alone)",
        }
    }
}

/// Load and pressure on the host while a test ran ([`ResourceUsage::host`]); percentages are
/// of the test's span.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostLoad {
    /// Online CPUs.
    pub cpus: u32,
    /// Highest 1-minute load average.
    pub load1_peak: Option<f64>,
    /// Load averages (1, 5, 15 minutes) at the end.
    pub load_end: Option<[f64; 3]>,
    /// Share of the time some task stalled on CPU (pressure, `some`), percent.
    pub cpu_pressure: Option<f64>,
    /// Share of the time all tasks stalled on memory (pressure, `full`), percent.
    pub memory_pressure: Option<f64>,
    /// Share of the time all tasks stalled on I/O (pressure, `full`), percent.
    pub io_pressure: Option<f64>,
    /// Host CPUs busy, percent of all host CPU time.
    pub busy_percent: Option<f64>,
    /// CPU time stolen by the hypervisor, percent of all host CPU time.
    pub steal_percent: Option<f64>,
    /// CPUs waiting for I/O, percent of all host CPU time.
    pub iowait_percent: Option<f64>,
    /// The monitor's host-validity score, 0 to 100 (100: the host did not interfere).
    pub validity_score: Option<f64>,
}

/// One process of a test's tree in the per-process breakdown ([`ResourceUsage::top_cpu`],
/// [`ResourceUsage::top_memory`]). A process that exited keeps its last figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessUsage {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// The kernel's command name (at most 15 bytes).
    pub name: String,
    /// The head of its command line (empty when unreadable).
    pub command: String,
    /// Its own CPU seconds (user + system, children not included).
    pub cpu_seconds: f64,
    /// CPU seconds of the children it reaped (those seen alive are also listed on their own).
    pub children_cpu_seconds: f64,
    /// Its highest resident memory, bytes.
    pub peak_rss_bytes: u64,
    /// Seconds since the test started when it was first and last seen.
    pub first_seen: f64,
    /// See `first_seen`.
    pub last_seen: f64,
    /// Whether it exited before the test ended.
    pub exited: bool,
}

/// One point of a [`ResourceUsage`] series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// Seconds since the test started.
    pub t: f64,
    /// CPU use since the previous point, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory of the process tree, in bytes.
    pub rss_bytes: u64,
}

/// The status of one case inside a test (a KUnit or kselftest case reported in KTAP/TAP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SubtestStatus {
    /// It passed.
    Passed,
    /// It failed (or was cut short).
    Failed,
    /// It was skipped.
    Skipped,
    /// It failed as expected (`TODO`, `XFAIL`).
    Todo,
}

/// One case inside a test, as the test reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtest {
    /// Its path, parts joined with `.` (`suite.case`, `suite.case.param`).
    pub name: String,
    /// What happened.
    pub status: SubtestStatus,
    /// The reason of a skip or todo, or the first diagnostic of a failure.
    pub message: Option<String>,
    /// The names of the tests it is nested in, outermost first (a KUnit case: its suite; a
    /// parameterised case's parameter: the suite and the case); empty at the top level. The
    /// case's own name is the rest of [`name`](Self::name) ([`Subtest::case`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suite: Vec<String>,
    /// How long it ran, when the output's timestamps tell (a kernel log's `[    1.234567]`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_duration::option"
    )]
    pub duration: Option<Duration>,
}

impl Subtest {
    /// A case at the top level (no suite), without a message or a duration.
    pub fn new(name: impl Into<String>, status: SubtestStatus) -> Self {
        Subtest {
            name: name.into(),
            status,
            message: None,
            suite: Vec::new(),
            duration: None,
        }
    }

    /// The case's own name: [`name`](Self::name) without its suite path.
    pub fn case(&self) -> &str {
        let mut rest = self.name.as_str();
        for part in &self.suite {
            match rest
                .strip_prefix(part.as_str())
                .and_then(|r| r.strip_prefix('.'))
            {
                Some(r) => rest = r,
                None => return &self.name,
            }
        }
        rest
    }

    /// The suite path joined with `.` (empty at the top level).
    pub fn suite_path(&self) -> String {
        self.suite.join(".")
    }

    /// The case judged inside a test that expects `expect`: a failed case fails (and fails its
    /// test), unless the test is expected to fail; a `TODO`/`XFAIL` case is an expected
    /// failure; a skipped case is skipped. Every report shows a case with this verdict.
    pub fn verdict(&self, expect: Expectation) -> Verdict {
        match (self.status, expect) {
            (SubtestStatus::Passed, _) => Verdict::Passed,
            (SubtestStatus::Failed, Expectation::Pass) => Verdict::Failed,
            (SubtestStatus::Failed, Expectation::Fail) | (SubtestStatus::Todo, _) => {
                Verdict::ExpectedFailure
            }
            (SubtestStatus::Skipped, _) => Verdict::Skipped,
        }
    }
}

/// A test that has subtests of its own, as the test reported it: a KUnit suite, or a
/// parameterised case; its own result line's verdict, beside those of its cases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtestSuite {
    /// Its path, parts joined with `.` (`suite`, `suite.case`).
    pub name: String,
    /// Its own result: passed, failed (its result line said `not ok`, or it never printed one:
    /// the output was cut short), skipped or todo.
    pub status: SubtestStatus,
    /// The reason of a skip, or why it failed.
    pub message: Option<String>,
    /// How many cases below it were counted (its [`Subtest`]s, parameters included).
    pub cases: u32,
    /// How long it ran, when the output's timestamps tell.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_duration::option"
    )]
    pub duration: Option<Duration>,
}

/// At most this many failed subtests are named in a result's message.
const NAMED_FAILED_SUBTESTS: usize = 5;

/// An earlier attempt of a test that ended in an infrastructure error and was retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt number (1-based).
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// The runner's explanation.
    pub message: Option<String>,
}

/// Everything known about one execution of one test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TestResult {
    /// The test's id.
    pub test_id: TestId,
    /// The test's display name.
    pub name: String,
    /// The runner that executed it.
    pub runner: String,
    /// What happened.
    pub outcome: Outcome,
    /// What was expected.
    pub expect: Expectation,
    /// The test's tags.
    pub tags: Vec<String>,
    /// Which attempt this is (1-based; above 1 only after infrastructure errors).
    pub attempt: u32,
    /// Earlier attempts that ended in infrastructure errors.
    pub earlier_attempts: Vec<AttemptRecord>,
    /// A human-readable explanation of the outcome (what timed out, how it was stopped...).
    pub message: Option<String>,
    /// When the test started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Timings of the phases it went through.
    pub phases: Vec<PhaseTiming>,
    /// Standard output, bounded.
    pub stdout: CapturedOutput,
    /// Standard error, bounded.
    pub stderr: CapturedOutput,
    /// Collected files.
    pub artifacts: Vec<ArtifactFile>,
    /// The interesting part of the machine's console (QEMU runner).
    pub console_excerpt: Option<String>,
    /// A record of the environment it ran in (host, accelerator and why, kernel...).
    pub environment: BTreeMap<String, String>,
    /// Resource metrics, filled by whoever measured them.
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// What the test's host processes cost, when the orchestrator monitored them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceUsage>,

    /// Cases the test reported itself (KTAP/TAP output), in order.
    #[serde(default)]
    pub subtests: Vec<Subtest>,
    /// The suites (and parameterised cases) the [`subtests`](Self::subtests) are nested in,
    /// with their own results, in order (since schema 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<SubtestSuite>,
}

impl TestResult {
    /// An empty result for `case` that started now, with the given outcome; runners fill in the
    /// rest.
    pub fn new(case: &TestCase, runner: impl Into<String>, outcome: Outcome) -> Self {
        let now = Utc::now();
        TestResult {
            test_id: case.id.clone(),
            name: case.name.clone(),
            runner: runner.into(),
            outcome,
            expect: case.expect,
            tags: case.tags.clone(),
            attempt: 1,
            earlier_attempts: Vec::new(),
            message: None,
            started_at: now,
            finished_at: now,
            phases: Vec::new(),
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            artifacts: Vec::new(),
            console_excerpt: None,
            environment: BTreeMap::new(),
            metrics: BTreeMap::new(),
            resources: None,
            subtests: Vec::new(),
            suites: Vec::new(),
        }
    }

    /// The outcome judged against the expectation. A failed subtest counts even when the
    /// outcome was never [judged](Self::judge_subtests) (a result built by hand, or read from a
    /// report of schema 2): a `passed` outcome with failed subtests is judged as
    /// [`Outcome::SubtestsFailed`].
    pub fn verdict(&self) -> Verdict {
        if self.outcome == Outcome::Passed && self.failed_subtests().next().is_some() {
            return Verdict::of(&self.subtests_failed_outcome(), self.expect);
        }
        Verdict::of(&self.outcome, self.expect)
    }

    /// The subtests that failed ([`SubtestStatus::Failed`]: `not ok` without a `SKIP`, `TODO`
    /// or `XFAIL` directive, or cut short), in order.
    pub fn failed_subtests(&self) -> impl Iterator<Item = &Subtest> {
        self.subtests
            .iter()
            .filter(|t| t.status == SubtestStatus::Failed)
    }

    fn subtests_failed_outcome(&self) -> Outcome {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Outcome::SubtestsFailed {
            failed: count(self.failed_subtests().count()),
            total: count(self.subtests.len()),
        }
    }

    /// Applies the subtests to the result: when some failed, a test that passed (exit code 0)
    /// becomes [`Outcome::SubtestsFailed`], and the message says which failed (`2 of 40
    /// subtests failed: suite.a, suite.b`, at most five named) whatever the outcome. Runners
    /// need not call it: the orchestrator judges every result it gets (and a shard merge every
    /// result it joins). Calling it again changes nothing.
    pub fn judge_subtests(&mut self) {
        let failed: Vec<&str> = self.failed_subtests().map(|t| t.name.as_str()).collect();
        if failed.is_empty() {
            return;
        }
        let mut sentence = format!(
            "{} of {} subtests failed: {}",
            failed.len(),
            self.subtests.len(),
            failed
                .iter()
                .take(NAMED_FAILED_SUBTESTS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
        if failed.len() > NAMED_FAILED_SUBTESTS {
            sentence.push_str(&format!(
                " and {} more",
                failed.len() - NAMED_FAILED_SUBTESTS
            ));
        }
        if self.outcome == Outcome::Passed {
            self.outcome = self.subtests_failed_outcome();
        }
        match &mut self.message {
            Some(m) if m.contains(&sentence) => {}
            Some(m) if !m.is_empty() => {
                m.push_str("; ");
                m.push_str(&sentence);
            }
            _ => self.message = Some(sentence),
        }
    }

    /// Wall-clock duration from start to finish.
    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }

    /// Records that `phase` ran from `started_at` until now.
    pub fn end_phase(&mut self, phase: Phase, started_at: DateTime<Utc>) {
        self.phases.push(PhaseTiming {
            phase,
            started_at,
            finished_at: Utc::now(),
        });
    }

    /// Closes the result: it started at `started_at` and ends now; `notes`, if any, become the
    /// message.
    pub fn finish(&mut self, started_at: DateTime<Utc>, notes: &[String]) {
        self.started_at = started_at;
        self.finished_at = Utc::now();
        if !notes.is_empty() {
            self.message = Some(notes.join("; "));
        }
    }

    /// The timing of a phase, if the test went through it.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseTiming> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_failures_count_as_success() {
        let failed = Outcome::Failed {
            exit_code: Some(1),
            signal: None,
        };
        assert_eq!(
            Verdict::of(&failed, Expectation::Fail),
            Verdict::ExpectedFailure
        );
        assert!(Verdict::of(&failed, Expectation::Fail).is_success());
        assert!(!Verdict::of(&Outcome::Passed, Expectation::Fail).is_success());
        let infra = Outcome::infra("qemu missing");
        assert_eq!(Verdict::of(&infra, Expectation::Fail), Verdict::Error);
        assert!(infra.is_retryable());
        let config = Outcome::from_error(&crate::RunnerError::config("no kernel at /k"));
        assert_eq!(Verdict::of(&config, Expectation::Pass), Verdict::Error);
        assert!(
            !config.is_retryable(),
            "configuration errors are not retried"
        );
        assert_eq!(config.to_string(), "configuration error: no kernel at /k");
        // Reports written before the kind existed read as infrastructure errors.
        let old: Outcome =
            serde_json::from_str(r#"{"kind":"infra-error","message":"qemu died"}"#).unwrap();
        assert!(old.is_retryable());
    }

    #[test]
    fn outcome_serialises_with_a_kind_tag() {
        let json = serde_json::to_value(Outcome::TimedOut {
            phase: Phase::Boot,
            limit: Duration::from_millis(1500),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "timed-out", "phase": "boot", "limit": 1.5})
        );
    }

    fn with_subtests(outcome: Outcome, statuses: &[SubtestStatus]) -> TestResult {
        let case = TestCase::script("t", "true");
        let mut r = TestResult::new(&case, "process", outcome);
        r.subtests = statuses
            .iter()
            .enumerate()
            .map(|(i, &status)| Subtest {
                name: format!("suite.case{i}"),
                status,
                message: None,
                suite: Vec::new(),
                duration: None,
            })
            .collect();
        r
    }

    #[test]
    fn judging_names_at_most_five_failed_subtests_once() {
        let mut statuses = vec![SubtestStatus::Passed; 28];
        statuses.extend([SubtestStatus::Failed; 12]);
        let mut r = with_subtests(Outcome::Passed, &statuses);
        r.message = Some("KTAP: 28 passed, 12 failed".into());
        r.judge_subtests();
        assert_eq!(
            r.outcome,
            Outcome::SubtestsFailed {
                failed: 12,
                total: 40
            }
        );
        assert_eq!(r.outcome.to_string(), "12 of 40 subtests failed");
        assert_eq!(r.outcome.label(), "subtests-failed");
        let want = "KTAP: 28 passed, 12 failed; 12 of 40 subtests failed: suite.case28, \
                    suite.case29, suite.case30, suite.case31, suite.case32 and 7 more";
        assert_eq!(r.message.as_deref(), Some(want));
        r.judge_subtests();
        assert_eq!(
            r.message.as_deref(),
            Some(want),
            "judging twice changes nothing"
        );
        assert_eq!(r.verdict(), Verdict::Failed);
    }

    #[test]
    fn other_outcomes_stay_and_get_the_names() {
        let failed = Outcome::Failed {
            exit_code: Some(1),
            signal: None,
        };
        let mut r = with_subtests(
            failed.clone(),
            &[SubtestStatus::Failed, SubtestStatus::Passed],
        );
        r.judge_subtests();
        assert_eq!(r.outcome, failed);
        assert_eq!(
            r.message.as_deref(),
            Some("1 of 2 subtests failed: suite.case0")
        );
        // Skips and todos fail nothing.
        let mut r = with_subtests(
            Outcome::Passed,
            &[SubtestStatus::Skipped, SubtestStatus::Todo],
        );
        r.judge_subtests();
        assert_eq!(
            (r.outcome.clone(), r.message.clone()),
            (Outcome::Passed, None)
        );
        assert_eq!(r.verdict(), Verdict::Passed);
    }

    #[test]
    fn subtest_verdicts_follow_the_test_expectation() {
        let t = |status| Subtest {
            name: "c".into(),
            status,
            message: None,
            suite: Vec::new(),
            duration: None,
        };
        use SubtestStatus::*;
        let pass: Vec<Verdict> = [Passed, Failed, Skipped, Todo]
            .map(|s| t(s).verdict(Expectation::Pass))
            .to_vec();
        assert_eq!(
            pass,
            [
                Verdict::Passed,
                Verdict::Failed,
                Verdict::Skipped,
                Verdict::ExpectedFailure
            ]
        );
        assert_eq!(
            t(Failed).verdict(Expectation::Fail),
            Verdict::ExpectedFailure
        );
        assert_eq!(
            Verdict::of(
                &Outcome::SubtestsFailed {
                    failed: 1,
                    total: 1
                },
                Expectation::Fail
            ),
            Verdict::ExpectedFailure
        );
    }

    #[test]
    fn subtests_keep_their_suite_path_and_read_without_it() {
        let mut t = Subtest::new(
            "example.example_params_test.value 1.5",
            SubtestStatus::Passed,
        );
        assert_eq!(t.case(), t.name);
        t.suite = vec!["example".into(), "example_params_test".into()];
        t.duration = Some(Duration::from_micros(1500));
        assert_eq!(t.case(), "value 1.5");
        assert_eq!(t.suite_path(), "example.example_params_test");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json["suite"],
            serde_json::json!(["example", "example_params_test"])
        );
        assert_eq!(json["duration"], 0.0015);
        assert_eq!(serde_json::from_value::<Subtest>(json).unwrap(), t);
        // A subtest as schema 3 wrote it: no suite, no duration (and none written back).
        let old = serde_json::json!({"name": "suite.case", "status": "failed", "message": null});
        let read: Subtest = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(read, Subtest::new("suite.case", SubtestStatus::Failed));
        assert_eq!(read.case(), "suite.case");
        assert_eq!(serde_json::to_value(&read).unwrap(), old);
        // A suite path that is not the name's start leaves the whole name as the case.
        let odd = Subtest {
            suite: vec!["other".into()],
            ..read
        };
        assert_eq!(odd.case(), "suite.case");
    }
}
