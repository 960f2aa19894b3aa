//! Bottleneck verdicts, the host-validity score and run-to-run comparison.
//!
//! The verdict looks at the host first: if the hypervisor stole CPU, the load exceeded the
//! CPUs, or PSI shows stalls, the run was *contended* and its timings are suspect, whatever the
//! test did. Otherwise it names what the test itself was limited by (memory, I/O, CPU) or
//! `Unconstrained` (mostly waiting: sleeps, network, a child's timer).
//!
//! The score is 100 minus penalties for host interference (steal, excess load, CPU/memory/I/O
//! pressure), clamped to 0–100: a low score says "do not trust this run's timings".

use serde::{Deserialize, Serialize};

use crate::model::Summary;

/// What limited a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Bottleneck {
    /// Nothing stood out: the tree mostly waited.
    #[default]
    Unconstrained,
    /// The tree kept CPUs busy.
    CpuBound,
    /// Memory stalls, major faults or a large share of host memory.
    MemoryPressure,
    /// Storage stalls or heavy storage traffic.
    IoBound,
    /// The hypervisor stole CPU time from the host.
    HostStealContended,
    /// The host's load exceeded its CPUs.
    HostLoadContended,
    /// Host-wide CPU pressure stalls (other work competed for the CPUs).
    HostPressureContended,
}

/// The performance verdict (the bottleneck) and why. Named apart from
/// `orchestrator_core::Verdict`, a test's pass/fail verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfVerdict {
    /// The main limit.
    pub bottleneck: Bottleneck,
    /// Every threshold that was crossed, in words (`"cpu 185% avg >= 80%"`).
    pub reasons: Vec<String>,
}

/// The former name of [`PerfVerdict`], kept for compatibility.
pub type Verdict = PerfVerdict;

/// Thresholds for the verdict. Percentages are 0–100 (CPU: of one core).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Average tree CPU per available core at or above which the run is CPU-bound.
    pub cpu_bound_percent: f64,
    /// Peak memory share of the host at or above which memory pressure is reported.
    pub memory_percent: f64,
    /// PSI `memory full` share at or above which memory pressure is reported.
    pub psi_memory_full_percent: f64,
    /// Major faults per second at or above which memory pressure is reported.
    pub major_faults_per_s: f64,
    /// PSI `io full` share at or above which the run is I/O-bound.
    pub psi_io_full_percent: f64,
    /// Host iowait share at or above which the run is I/O-bound (when the tree wrote or read).
    pub iowait_percent: f64,
    /// Host steal share at or above which the host is contended.
    pub steal_percent: f64,
    /// Peak 1-minute load per CPU at or above which the host is contended.
    pub load_per_cpu: f64,
    /// PSI `cpu some` share at or above which the host is contended.
    pub psi_cpu_some_percent: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu_bound_percent: 80.0,
            memory_percent: 80.0,
            psi_memory_full_percent: 5.0,
            major_faults_per_s: 100.0,
            psi_io_full_percent: 10.0,
            iowait_percent: 20.0,
            steal_percent: 5.0,
            load_per_cpu: 1.5,
            psi_cpu_some_percent: 25.0,
        }
    }
}

/// Judges a summary: the verdict and the host-validity score.
pub fn judge(s: &Summary, t: &Thresholds) -> (PerfVerdict, f64) {
    let mut reasons = Vec::new();
    let mut found: Vec<Bottleneck> = Vec::new();
    let cpus = f64::from(s.host.cpus.max(1));
    let h = &s.host;
    let mut score = 100.0;
    if let Some(steal) = h.steal_percent {
        score -= steal * 2.0;
        if steal >= t.steal_percent {
            reasons.push(format!("host steal {steal:.1}% >= {}%", t.steal_percent));
            found.push(Bottleneck::HostStealContended);
        }
    }
    if let Some(load) = h.load1_peak {
        let per = load / cpus;
        score -= ((per - 1.0).max(0.0) * 20.0).min(40.0);
        if per >= t.load_per_cpu {
            reasons.push(format!(
                "host load {load:.2} on {cpus} cpus >= {} per cpu",
                t.load_per_cpu
            ));
            found.push(Bottleneck::HostLoadContended);
        }
    }
    if let Some(p) = h.psi_cpu_some {
        score -= p * 0.5;
        if p >= t.psi_cpu_some_percent {
            reasons.push(format!(
                "host cpu pressure {p:.1}% >= {}%",
                t.psi_cpu_some_percent
            ));
            found.push(Bottleneck::HostPressureContended);
        }
    }
    let mut mem = false;
    if let Some(p) = h.psi_memory_full {
        score -= p;
        if p >= t.psi_memory_full_percent {
            reasons.push(format!(
                "memory pressure {p:.1}% >= {}%",
                t.psi_memory_full_percent
            ));
            mem = true;
        }
    }
    if let Some(p) = s.memory.peak_percent
        && p >= t.memory_percent
    {
        reasons.push(format!(
            "peak memory {p:.1}% of host >= {}%",
            t.memory_percent
        ));
        mem = true;
    }
    if s.duration_s > 0.0 {
        let rate = s.processes.major_faults as f64 / s.duration_s;
        if rate >= t.major_faults_per_s {
            reasons.push(format!(
                "{rate:.0} major faults/s >= {}",
                t.major_faults_per_s
            ));
            mem = true;
        }
    }
    if mem {
        found.push(Bottleneck::MemoryPressure);
    }
    let mut io = false;
    if let Some(p) = h.psi_io_full {
        score -= p * 0.5;
        if p >= t.psi_io_full_percent {
            reasons.push(format!("io pressure {p:.1}% >= {}%", t.psi_io_full_percent));
            io = true;
        }
    }
    let did_io = s.io.write_bytes.unwrap_or(0) + s.io.read_bytes.unwrap_or(0) > 0;
    if let Some(w) = h.iowait_percent
        && did_io
        && w >= t.iowait_percent
    {
        reasons.push(format!("host iowait {w:.1}% >= {}%", t.iowait_percent));
        io = true;
    }
    if io {
        found.push(Bottleneck::IoBound);
    }
    if let Some(avg) = s.cpu.avg_percent {
        // Per core the tree could use: never more cores than the host has.
        let usable = cpus.min((s.processes.threads_peak.max(1)) as f64);
        let per_core = avg / usable;
        if per_core >= t.cpu_bound_percent {
            reasons.push(format!(
                "cpu {avg:.0}% avg over {usable} usable cores >= {}% each",
                t.cpu_bound_percent
            ));
            found.push(Bottleneck::CpuBound);
        }
    }
    let bottleneck = found.first().copied().unwrap_or_default();
    (
        PerfVerdict {
            bottleneck,
            reasons,
        },
        score.clamp(0.0, 100.0),
    )
}

/// How far a metric may move between runs before it counts: both a relative band and an
/// absolute floor must be exceeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseBand {
    /// Relative change (0.10 = 10 %) within which a change is noise.
    pub relative: f64,
    /// CPU seconds within which a change is noise.
    pub cpu_s: f64,
    /// Bytes of peak memory within which a change is noise.
    pub memory_bytes: f64,
    /// Bytes of storage I/O within which a change is noise.
    pub io_bytes: f64,
    /// Wall seconds within which a change is noise.
    pub duration_s: f64,
}

impl Default for NoiseBand {
    fn default() -> Self {
        NoiseBand {
            relative: 0.10,
            cpu_s: 0.05,
            memory_bytes: 4.0 * 1024.0 * 1024.0,
            io_bytes: 1024.0 * 1024.0,
            duration_s: 0.1,
        }
    }
}

/// Direction of a change beyond the noise band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// Within the band.
    Unchanged,
    /// Costs more.
    Regressed,
    /// Costs less.
    Improved,
    /// Missing on one side.
    Unavailable,
}

/// One metric of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricDelta {
    /// Metric name (`cpu_total_s`, `peak_rss_bytes`, ...).
    pub metric: String,
    /// Baseline value.
    pub baseline: Option<f64>,
    /// Current value.
    pub current: Option<f64>,
    /// `(current - baseline) / baseline`, when the baseline is not zero.
    pub relative: Option<f64>,
    /// The judgement.
    pub change: Change,
}

/// Two runs compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Every compared metric.
    pub metrics: Vec<MetricDelta>,
    /// Whether any metric regressed beyond the noise band.
    pub regressed: bool,
    /// Whether either run's host was contended (score below 50): then the comparison is weak.
    pub contended: bool,
    /// Whether both runs had the same environment fingerprint (CPUs, memory, kernel, CPU
    /// model); when not, differences may be the machine's, not the code's.
    pub same_environment: bool,
}

fn delta(metric: &str, b: Option<f64>, c: Option<f64>, rel: f64, abs: f64) -> MetricDelta {
    let (change, relative) = match (b, c) {
        (Some(b), Some(c)) => {
            let d = c - b;
            let relative = (b != 0.0).then(|| d / b);
            let beyond = d.abs() > abs && d.abs() > rel * b.abs();
            let change = match (beyond, d > 0.0) {
                (false, _) => Change::Unchanged,
                (true, true) => Change::Regressed,
                (true, false) => Change::Improved,
            };
            (change, relative)
        }
        _ => (Change::Unavailable, None),
    };
    MetricDelta {
        metric: metric.to_owned(),
        baseline: b,
        current: c,
        relative,
        change,
    }
}

/// Compares `current` against `baseline`: a metric regresses only when it grows by more than
/// both the relative band and the absolute floor.
pub fn compare(baseline: &Summary, current: &Summary, band: &NoiseBand) -> Comparison {
    let r = band.relative;
    let u = |v: Option<u64>| v.map(|x| x as f64);
    let metrics = vec![
        delta(
            "cpu_total_s",
            Some(baseline.cpu.total_s),
            Some(current.cpu.total_s),
            r,
            band.cpu_s,
        ),
        delta(
            "peak_rss_bytes",
            Some(baseline.memory.peak_bytes as f64),
            Some(current.memory.peak_bytes as f64),
            r,
            band.memory_bytes,
        ),
        delta(
            "read_bytes",
            u(baseline.io.read_bytes),
            u(current.io.read_bytes),
            r,
            band.io_bytes,
        ),
        delta(
            "write_bytes",
            u(baseline.io.write_bytes),
            u(current.io.write_bytes),
            r,
            band.io_bytes,
        ),
        delta(
            "duration_s",
            Some(baseline.duration_s),
            Some(current.duration_s),
            r,
            band.duration_s,
        ),
    ];
    let (a, b) = (&baseline.host, &current.host);
    Comparison {
        same_environment: a.cpus == b.cpus
            && a.mem_total_bytes == b.mem_total_bytes
            && a.kernel == b.kernel
            && a.cpu_model == b.cpu_model,
        regressed: metrics.iter().any(|m| m.change == Change::Regressed),
        contended: baseline.score < 50.0 || current.score < 50.0,
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(cpu: f64, rss: u64) -> Summary {
        let mut s = Summary {
            duration_s: 10.0,
            ..Summary::default()
        };
        s.host.cpus = 2;
        s.cpu.total_s = cpu;
        s.cpu.avg_percent = Some(cpu / 10.0 * 100.0);
        s.processes.threads_peak = 1;
        s.memory.peak_bytes = rss;
        s
    }

    #[test]
    fn comparison_respects_noise_band() {
        let band = NoiseBand::default();
        let base = summary(10.0, 100 << 20);
        assert!(!compare(&base, &summary(10.5, 101 << 20), &band).regressed);
        let c = compare(&base, &summary(12.0, 100 << 20), &band);
        assert!(c.regressed);
        assert_eq!(c.metrics[0].change, Change::Regressed);
        assert_eq!(
            compare(&base, &summary(8.0, 100 << 20), &band).metrics[0].change,
            Change::Improved
        );
        assert!(c.same_environment);
        let mut other = summary(10.0, 100 << 20);
        other.host.kernel = Some("6.1.0".into());
        assert!(!compare(&base, &other, &band).same_environment);
        // Small absolute changes stay noise even when relatively large.
        assert!(!compare(&summary(0.01, 1), &summary(0.03, 2), &band).regressed);
    }

    #[test]
    fn verdict_prefers_host_contention_and_thresholds_are_config() {
        let mut s = summary(9.5, 1 << 20);
        let (v, score) = judge(&s, &Thresholds::default());
        assert_eq!(v.bottleneck, Bottleneck::CpuBound);
        assert_eq!(score, 100.0);
        s.host.steal_percent = Some(10.0);
        let (v, score) = judge(&s, &Thresholds::default());
        assert_eq!(v.bottleneck, Bottleneck::HostStealContended);
        assert!(score <= 80.0);
        let lenient = Thresholds {
            steal_percent: 50.0,
            cpu_bound_percent: 99.0,
            ..Thresholds::default()
        };
        assert_eq!(judge(&s, &lenient).0.bottleneck, Bottleneck::Unconstrained);
    }
}
