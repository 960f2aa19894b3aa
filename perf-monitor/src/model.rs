//! The serialisable results: one [`Sample`] per tick, a [`Summary`] per watch, and the
//! [`Recording`] that holds both.
//!
//! A metric the kernel would not give us is `None` ("unavailable") and its name is listed in
//! [`Summary::unavailable`]; it is never reported as zero.

use serde::{Deserialize, Serialize};

use crate::verdict::PerfVerdict;

/// Version of the [`Summary`]/[`Recording`] format; bumped when a field changes.
///
/// 2: the summary gains the per-process breakdown ([`Summary::top_cpu`],
/// [`Summary::top_memory`]) and the network namespace's identity ([`IoSummary::net_namespace`],
/// [`IoSummary::net_namespace_shared`]). Version 1 recordings still read (empty lists, `None`).
pub const SCHEMA_VERSION: u32 = 2;

/// The process tree and the host at one instant. Counters are cumulative since the watch began.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the watch started.
    pub t_ms: u64,
    /// Live processes in the tree.
    pub processes: u32,
    /// Threads in those processes.
    pub threads: u64,
    /// User CPU seconds of the tree (live, exited and reaped descendants), guest time included.
    pub cpu_user_s: f64,
    /// System CPU seconds of the tree.
    pub cpu_system_s: f64,
    /// Guest (virtual CPU) seconds of the tree, a part of `cpu_user_s`.
    pub cpu_guest_s: f64,
    /// CPU use over the last interval, percent of one core; `None` on the first sample.
    pub cpu_percent: Option<f64>,
    /// Summed resident set size of the live processes, bytes.
    pub rss_bytes: u64,
    /// Summed virtual size of the live processes, bytes.
    pub vms_bytes: u64,
    /// Open file descriptors of the live processes.
    pub fds: Option<u64>,
    /// Bytes the tree caused to be read from storage.
    pub read_bytes: Option<u64>,
    /// Bytes the tree caused to be written to storage (less cancelled writes).
    pub write_bytes: Option<u64>,
    /// Bytes passed to `read`-like system calls.
    pub read_chars: Option<u64>,
    /// Bytes passed to `write`-like system calls.
    pub write_chars: Option<u64>,
    /// Voluntary context switches of the live and departed processes.
    pub ctx_voluntary: Option<u64>,
    /// Involuntary context switches.
    pub ctx_involuntary: Option<u64>,
    /// Minor page faults (reaped children included).
    pub minor_faults: u64,
    /// Major page faults (reaped children included).
    pub major_faults: u64,
    /// Bytes received in the root's network namespace since the watch began.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent in the root's network namespace since the watch began.
    pub net_tx_bytes: Option<u64>,
    /// Host load averages (1, 5, 15 minutes).
    pub load: Option<[f64; 3]>,
    /// Host CPU pressure, `some avg10`, percent.
    pub psi_cpu_some: Option<f64>,
    /// Host memory pressure, `full avg10`, percent.
    pub psi_memory_full: Option<f64>,
    /// Host I/O pressure, `full avg10`, percent.
    pub psi_io_full: Option<f64>,
    /// Host CPU stolen by the hypervisor over the last interval, percent of all CPU time.
    pub steal_percent: Option<f64>,
    /// Host CPUs busy over the last interval, percent of all CPU time.
    pub host_busy_percent: Option<f64>,
}

/// CPU figures of a watch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSummary {
    /// User seconds (sampled, guest included).
    pub user_s: f64,
    /// System seconds (sampled).
    pub system_s: f64,
    /// Guest seconds (sampled).
    pub guest_s: f64,
    /// `user_s + system_s`.
    pub total_s: f64,
    /// Average CPU percent of one core over the watch.
    pub avg_percent: Option<f64>,
    /// Highest per-interval CPU percent.
    pub peak_percent: Option<f64>,
}

/// Memory figures of a watch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySummary {
    /// Tree RSS at the last sample, bytes.
    pub rss_bytes: u64,
    /// Highest sampled tree RSS (sum over live processes), bytes.
    pub rss_peak_bytes: u64,
    /// Highest VmHWM the kernel reported for any one process of the tree (exact for that
    /// process while it was alive), bytes.
    pub hwm_bytes: Option<u64>,
    /// `max(rss_peak_bytes, hwm_bytes)`: the best estimate of the tree's peak RSS.
    pub peak_bytes: u64,
    /// Tree virtual size at the last sample, bytes.
    pub vms_bytes: u64,
    /// Highest sampled tree virtual size, bytes.
    pub vms_peak_bytes: u64,
    /// `peak_bytes` as a percentage of the host's memory.
    pub peak_percent: Option<f64>,
}

/// Disk and network I/O of a watch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoSummary {
    /// Bytes read from storage.
    pub read_bytes: Option<u64>,
    /// Bytes written to storage.
    pub write_bytes: Option<u64>,
    /// Bytes through `read`-like calls.
    pub read_chars: Option<u64>,
    /// Bytes through `write`-like calls.
    pub write_chars: Option<u64>,
    /// Average storage read rate, bytes per second.
    pub read_rate: Option<f64>,
    /// Average storage write rate, bytes per second.
    pub write_rate: Option<f64>,
    /// Highest per-interval storage write rate, bytes per second.
    pub write_rate_peak: Option<f64>,
    /// Bytes received in the network namespace of the first root: every process of that
    /// namespace counts (the host's whole traffic when the tree runs in the host's namespace),
    /// not the tree's alone.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent in the network namespace of the first root (see `net_rx_bytes`).
    pub net_tx_bytes: Option<u64>,
    /// The namespace the network figures are from, as procfs names it (`net:[4026531840]`).
    #[serde(default)]
    pub net_namespace: Option<String>,
    /// Whether that namespace is the monitoring process's own (then the figures include the
    /// traffic of everything else that runs in it, the monitor's host included).
    #[serde(default)]
    pub net_namespace_shared: Option<bool>,
}

/// Process-level counts of a watch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// Distinct processes seen (pid and start time).
    pub seen: u64,
    /// Most live processes at one sample.
    pub peak: u32,
    /// Most threads at one sample.
    pub threads_peak: u64,
    /// Most open file descriptors at one sample.
    pub fds_peak: Option<u64>,
    /// Voluntary context switches.
    pub ctx_voluntary: Option<u64>,
    /// Involuntary context switches.
    pub ctx_involuntary: Option<u64>,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Major page faults.
    pub major_faults: u64,
}

/// One process of the watched tree and what it cost by itself: an entry of the per-process
/// breakdown ([`Summary::top_cpu`], [`Summary::top_memory`]).
///
/// A process that exited keeps the figures of the last sample that saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    /// Process id.
    pub pid: u32,
    /// Parent process id, when last seen.
    pub ppid: u32,
    /// The kernel's command name (`comm`, at most 15 bytes), as last seen (an `exec` changes it).
    pub name: String,
    /// The head of the command line (arguments joined by spaces, at most
    /// [`ProcessFigures::COMMAND_MAX`] characters, `…` when cut); empty for kernel threads and
    /// when it could not be read.
    pub command: String,
    /// The process's own CPU seconds (user + system, its threads included, its children not).
    pub cpu_s: f64,
    /// CPU seconds of the children it reaped (`cutime + cstime`); children seen alive are also
    /// listed on their own, so this overlaps them.
    pub children_cpu_s: f64,
    /// Highest resident memory of the process: the larger of its sampled RSS and the kernel's
    /// VmHWM, bytes, since its last `exec` (a forked child shares its parent's pages until it
    /// runs its own program, as its name and command line describe).
    pub peak_rss_bytes: u64,
    /// Milliseconds since the watch started at the first sample that saw it.
    pub first_seen_ms: u64,
    /// Milliseconds since the watch started at the last sample that saw it.
    pub last_seen_ms: u64,
    /// Whether it was gone before the last sample.
    pub exited: bool,
}

impl ProcessFigures {
    /// The most characters of a command line kept in [`command`](Self::command).
    pub const COMMAND_MAX: usize = 160;
}

/// What the host was doing meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Online CPUs.
    pub cpus: u32,
    /// Kernel release (`/proc/sys/kernel/osrelease`), part of the environment fingerprint.
    #[serde(default)]
    pub kernel: Option<String>,
    /// CPU model (`/proc/cpuinfo`), part of the environment fingerprint.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// Host memory, bytes.
    pub mem_total_bytes: Option<u64>,
    /// Highest 1-minute load average.
    pub load1_peak: Option<f64>,
    /// Load averages at the end.
    pub load_end: Option<[f64; 3]>,
    /// Share of the watch during which some task stalled on CPU, percent (from PSI totals).
    pub psi_cpu_some: Option<f64>,
    /// Share of the watch during which all tasks stalled on memory, percent.
    pub psi_memory_full: Option<f64>,
    /// Share of the watch during which all tasks stalled on I/O, percent.
    pub psi_io_full: Option<f64>,
    /// CPU time stolen by the hypervisor, percent of all host CPU time over the watch.
    pub steal_percent: Option<f64>,
    /// Host CPUs busy, percent of all host CPU time over the watch.
    pub busy_percent: Option<f64>,
    /// Host CPUs waiting for I/O, percent of all host CPU time over the watch.
    pub iowait_percent: Option<f64>,
}

/// Totals the kernel reports exactly, for a direct child reaped with `wait4`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExactTotals {
    /// User CPU seconds (`ru_utime`, waited-for descendants included).
    pub user_s: f64,
    /// System CPU seconds (`ru_stime`).
    pub system_s: f64,
    /// Peak RSS of the child or its largest waited-for descendant (`ru_maxrss`), bytes.
    pub max_rss_bytes: u64,
    /// Exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
}

/// Exact minus sampled, where both exist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingError {
    /// Exact CPU seconds minus sampled CPU seconds.
    pub cpu_s: f64,
    /// `cpu_s` relative to the exact figure.
    pub cpu_relative: Option<f64>,
    /// Exact peak RSS minus the sampled peak, bytes (negative when the sampled tree sum is higher).
    pub max_rss_bytes: i64,
}

/// A named instant in a watch (`boot`, `run`, `teardown`): phases are the spans between marks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// The phase that starts here.
    pub label: String,
    /// Milliseconds since the watch started.
    pub t_ms: u64,
    /// Tree CPU seconds (user + system) at the sample taken for the mark.
    pub cpu_s: f64,
}

/// Everything a watch measured, condensed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// [`SCHEMA_VERSION`] at the time of writing.
    pub schema_version: u32,
    /// The label given when the watch started.
    pub label: String,
    /// The watched root pids.
    pub pids: Vec<u32>,
    /// Start, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Wall-clock seconds watched.
    pub duration_s: f64,
    /// Sampling interval, milliseconds.
    pub interval_ms: u64,
    /// Samples taken.
    pub samples: u64,
    /// CPU.
    pub cpu: CpuSummary,
    /// Memory.
    pub memory: MemorySummary,
    /// Disk and network.
    pub io: IoSummary,
    /// Processes, threads, fds, context switches, faults.
    pub processes: ProcessSummary,
    /// The host.
    pub host: HostSummary,
    /// Exact totals from `wait4`, when the watched root was a child handed to the monitor.
    pub exact: Option<ExactTotals>,
    /// Exact minus sampled, when `exact` is present.
    pub sampling_error: Option<SamplingError>,
    /// CPU seconds the sampler itself used.
    pub monitor_cpu_s: f64,
    /// CPU seconds spent inside polls of an instrumented future, when the watch came from
    /// [`Monitor::instrument`](crate::Monitor::instrument).
    pub poll_cpu_s: Option<f64>,
    /// Phase marks set with [`Guard::mark`](crate::Guard::mark), in order.
    #[serde(default)]
    pub marks: Vec<Mark>,
    /// The processes of the tree that used the most CPU time (own CPU, highest first), at most
    /// [`MonitorConfig::top_processes`](crate::MonitorConfig::top_processes).
    #[serde(default)]
    pub top_cpu: Vec<ProcessFigures>,
    /// The processes of the tree with the highest peak resident memory, highest first, at most
    /// [`MonitorConfig::top_processes`](crate::MonitorConfig::top_processes).
    #[serde(default)]
    pub top_memory: Vec<ProcessFigures>,
    /// Metrics that could not be read (at least once), by name.
    pub unavailable: Vec<String>,
    /// Host-validity score, 0 to 100 (100: the host did not interfere; see [`crate::verdict`]).
    pub score: f64,
    /// What limited the run.
    pub verdict: PerfVerdict,
}

/// A summary with its time series: what an artifact store keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// The summary.
    pub summary: Summary,
    /// One sample per tick, oldest first.
    pub series: Vec<Sample>,
}

/// Reading or writing a [`Recording`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A line was not valid JSON for its position.
    #[error("invalid recording line {line}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The recording was empty.
    #[error("empty recording: no summary line")]
    Empty,
    /// A newer writer produced it.
    #[error("recording schema version {found} is newer than the supported {SCHEMA_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// zstd compression or decompression failed.
    #[error("zstd stream failed")]
    Zstd(#[source] std::io::Error),
}

impl Recording {
    /// Compact JSON lines: the summary on the first line, then one sample per line.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        // Serialising these plain structs cannot fail.
        out.push_str(&serde_json::to_string(&self.summary).unwrap_or_default());
        out.push('\n');
        for s in &self.series {
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Parses what [`to_json_lines`](Self::to_json_lines) wrote.
    pub fn from_json_lines(text: &str) -> Result<Self, CodecError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or(CodecError::Empty)?;
        let summary: Summary =
            serde_json::from_str(first).map_err(|source| CodecError::Json { line: 1, source })?;
        if summary.schema_version > SCHEMA_VERSION {
            return Err(CodecError::Version {
                found: summary.schema_version,
            });
        }
        let series = lines
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| CodecError::Json {
                    line: i + 1,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Recording { summary, series })
    }

    /// JSON lines compressed with zstd at `level` (3 is a good default).
    pub fn to_zstd(&self, level: i32) -> Result<Vec<u8>, CodecError> {
        zstd::encode_all(self.to_json_lines().as_bytes(), level).map_err(CodecError::Zstd)
    }

    /// Reads what [`to_zstd`](Self::to_zstd) wrote.
    pub fn from_zstd(bytes: &[u8]) -> Result<Self, CodecError> {
        let raw = zstd::decode_all(bytes).map_err(CodecError::Zstd)?;
        let text = String::from_utf8(raw).map_err(|e| {
            CodecError::Zstd(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        Self::from_json_lines(&text)
    }
}
