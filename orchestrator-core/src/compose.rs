//! The composed parts of an execution: a perf-monitor watch on the processes the runner reports,
//! and the artifact store that keeps what the test left behind.

//!
//! Each part is behind its cargo feature: the watch behind `monitor`, the store behind `store`.

#[cfg(feature = "monitor")]
pub(crate) use watch::{ExecutionWatch, add_metrics_file, usage_of};

#[cfg(feature = "store")]
pub(crate) use stored::store_execution;
#[cfg(feature = "store")]
pub use stored::{artifact_kind, store_outcome};
#[cfg(feature = "store")]
pub(crate) use stored::{report_artifact, result_metadata};

/// The name of a test's result among its stored artifacts (kind `result`): the
/// [`TestResult`](crate::TestResult) as JSON.
pub const RESULT_NAME: &str = "result.json";
/// The name of a run's report in the store (kind `report`): the
/// [`RunReport`](crate::RunReport) as JSON.
pub const REPORT_NAME: &str = "report.json";
/// The test id of the records that belong to a whole run (its report), not to one test.
pub const RUN_RECORD_TEST_ID: &str = "@run";

/// The name of the metrics recording among a test's artifacts (perf-monitor JSON lines).
pub const METRICS_NAME: &str = "metrics.jsonl";

#[cfg(feature = "monitor")]
mod watch {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use perf_monitor::{Guard, Monitor, ProcessFigures, Recording};

    use super::METRICS_NAME;
    use crate::case::TestCase;
    use crate::result::{
        ArtifactFile, HostLoad, NamespaceNetwork, ProcessCounts, ProcessUsage, ResourceUsage,
        TestResult, UsagePoint,
    };
    use crate::runner::{HostProcess, ProcessObserver};

    /// Watches the processes a runner reports for one execution with one perf-monitor guard, and
    /// passes them on to the caller's observer.
    #[derive(Debug)]
    pub(crate) struct ExecutionWatch {
        monitor: Arc<Monitor>,
        label: String,
        state: Mutex<WatchState>,
        inner: Option<Arc<dyn ProcessObserver>>,
    }

    #[derive(Debug, Default)]
    struct WatchState {
        guard: Option<Guard>,
        error: Option<String>,
    }

    impl ExecutionWatch {
        pub(crate) fn new(
            monitor: Arc<Monitor>,
            label: String,
            inner: Option<Arc<dyn ProcessObserver>>,
        ) -> Self {
            ExecutionWatch {
                monitor,
                label,
                state: Mutex::new(WatchState::default()),
                inner,
            }
        }

        /// Stops the watch: the recording, `None` when no process was reported, or why the watch
        /// failed.
        pub(crate) fn finish(&self) -> Option<Result<Recording, String>> {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match (state.guard.take(), state.error.take()) {
                (Some(guard), _) => Some(guard.finish().map_err(|e| e.to_string())),
                (None, Some(e)) => Some(Err(e)),
                (None, None) => None,
            }
        }
    }

    impl ProcessObserver for ExecutionWatch {
        fn process_started(&self, test: &TestCase, process: &HostProcess) {
            if let Some(inner) = &self.inner {
                inner.process_started(test, process);
            }
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match &state.guard {
                Some(guard) => guard.add_pid(process.pid),
                None => match self.monitor.watch_pid(process.pid, self.label.clone()) {
                    Ok(guard) => state.guard = Some(guard),
                    // A process that already left cannot be watched; say so in the result.
                    Err(e) => {
                        state.error = Some(format!("pid {} ({}): {e}", process.pid, process.label))
                    }
                },
            }
        }
    }

    /// The report's view of a recording: totals and a thinned-out CPU and memory series.
    pub(crate) fn usage_of(recording: &Recording) -> ResourceUsage {
        let s = &recording.summary;
        let series = &recording.series;
        let t0 = series.first().map_or(0, |x| x.t_ms);
        let step = series.len().div_ceil(ResourceUsage::MAX_POINTS).max(1);
        let points = series
            .chunks(step)
            .map(|chunk| {
                // A point stands for its chunk: the mean CPU, the highest memory.
                let cpus: Vec<f64> = chunk.iter().filter_map(|x| x.cpu_percent).collect();
                let cpu_percent =
                    (!cpus.is_empty()).then(|| cpus.iter().sum::<f64>() / cpus.len() as f64);
                let last = chunk.last().expect("chunks are not empty");
                UsagePoint {
                    t: last.t_ms.saturating_sub(t0) as f64 / 1000.0,
                    cpu_percent,
                    rss_bytes: chunk.iter().map(|x| x.rss_bytes).max().unwrap_or(0),
                }
            })
            .collect();
        let bottleneck = serde_json::to_value(s.verdict.bottleneck)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", s.verdict.bottleneck));
        let p = &s.processes;
        let h = &s.host;
        let network =
            s.io.net_rx_bytes
                .zip(s.io.net_tx_bytes)
                .map(|(rx_bytes, tx_bytes)| NamespaceNetwork {
                    rx_bytes,
                    tx_bytes,
                    namespace: s.io.net_namespace.clone(),
                    shared_with_orchestrator: s.io.net_namespace_shared,
                });
        ResourceUsage {
            cpu_seconds: s.cpu.user_s + s.cpu.system_s,
            avg_cpu_percent: s.cpu.avg_percent,
            peak_cpu_percent: s.cpu.peak_percent,
            peak_rss_bytes: s.memory.peak_bytes,
            read_bytes: s.io.read_bytes,
            write_bytes: s.io.write_bytes,
            peak_processes: s.processes.peak,
            bottleneck,
            series: points,
            cpu_user_seconds: Some(s.cpu.user_s),
            cpu_system_seconds: Some(s.cpu.system_s),
            read_chars: s.io.read_chars,
            write_chars: s.io.write_chars,
            processes: Some(ProcessCounts {
                seen: p.seen,
                peak_threads: p.threads_peak,
                peak_open_files: p.fds_peak,
                voluntary_context_switches: p.ctx_voluntary,
                involuntary_context_switches: p.ctx_involuntary,
                minor_faults: p.minor_faults,
                major_faults: p.major_faults,
            }),
            network,
            host: Some(HostLoad {
                cpus: h.cpus,
                load1_peak: h.load1_peak,
                load_end: h.load_end,
                cpu_pressure: h.psi_cpu_some,
                memory_pressure: h.psi_memory_full,
                io_pressure: h.psi_io_full,
                busy_percent: h.busy_percent,
                steal_percent: h.steal_percent,
                iowait_percent: h.iowait_percent,
                validity_score: Some(s.score),
            }),
            top_cpu: s.top_cpu.iter().map(|f| process_usage(f, t0)).collect(),
            top_memory: s.top_memory.iter().map(|f| process_usage(f, t0)).collect(),
            unavailable: s.unavailable.clone(),
        }
    }

    /// A process of the breakdown, its times from the test's start (the series' first sample,
    /// as the series' points).
    fn process_usage(f: &ProcessFigures, t0: u64) -> ProcessUsage {
        let secs = |ms: u64| ms.saturating_sub(t0) as f64 / 1000.0;
        ProcessUsage {
            pid: f.pid,
            ppid: f.ppid,
            name: f.name.clone(),
            command: f.command.clone(),
            cpu_seconds: f.cpu_s,
            children_cpu_seconds: f.children_cpu_s,
            peak_rss_bytes: f.peak_rss_bytes,
            first_seen: secs(f.first_seen_ms),
            last_seen: secs(f.last_seen_ms),
            exited: f.exited,
        }
    }

    /// Writes `recording` as `metrics.jsonl` into `dir` and lists it among `result`'s artifacts.
    pub(crate) fn add_metrics_file(
        dir: &Path,
        recording: &Recording,
        result: &mut TestResult,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(METRICS_NAME);
        let text = recording.to_json_lines();
        std::fs::write(&path, &text)?;
        result
            .artifacts
            .push(ArtifactFile::new(METRICS_NAME, path, text.len() as u64));
        Ok(())
    }
}

#[cfg(feature = "store")]
mod stored {
    use std::io::Read;

    use artifact_store::{ArtifactKind, ArtifactStore, NewArtifact, TestOutcome};

    use super::{METRICS_NAME, REPORT_NAME, RESULT_NAME, RUN_RECORD_TEST_ID};
    use crate::case::TestCase;
    use crate::report::RunReport;
    use crate::result::{Outcome, StoredArtifact, TestResult};

    /// The catalog's outcome for an orchestrator outcome, by label. Labels the store does not know
    /// (`Outcome` is non-exhaustive) count as failures, so retention errs on the side of keeping.
    pub fn store_outcome(outcome: &Outcome) -> TestOutcome {
        outcome.label().parse().unwrap_or(TestOutcome::Failed)
    }

    /// The catalog kind of a collected file, from the names runners give them.
    pub fn artifact_kind(name: &str) -> ArtifactKind {
        let file = name.rsplit('/').next().unwrap_or(name);
        if name.contains(".orch-cores/")
            || file.starts_with("core.")
            || file == "core"
            || file == "vmcore"
        {
            ArtifactKind::CoreDump
        } else if name.contains(".orch-trace/") || file.ends_with(".trace") {
            ArtifactKind::Trace
        } else if file == "console.log" {
            ArtifactKind::Console
        } else if file == METRICS_NAME && !name.contains('/') {
            ArtifactKind::Metrics
        } else if file.ends_with(".png") || file.ends_with(".ppm") {
            ArtifactKind::Screenshot
        } else if file.ends_with(".log") || file.ends_with(".txt") || file == "dmesg" {
            ArtifactKind::Log
        } else {
            ArtifactKind::Other
        }
    }

    /// The metadata of a result record: the figures history and compare read without the blob.
    pub(crate) fn result_metadata(result: &TestResult) -> Vec<(&'static str, String)> {
        let mut m = vec![
            ("attempt", result.attempt.to_string()),
            ("runner", result.runner.clone()),
            ("verdict", result.verdict().name().to_owned()),
            ("outcome", result.outcome.label().to_owned()),
            ("duration-ms", result.duration().as_millis().to_string()),
            ("started-at", result.started_at.to_rfc3339()),
        ];
        if let Some(u) = &result.resources {
            m.push((
                "cpu-ms",
                ((u.cpu_seconds * 1000.0).round() as u64).to_string(),
            ));
            m.push(("peak-rss-bytes", u.peak_rss_bytes.to_string()));
        }
        if let Some(k) = kernel_of(result) {
            m.push(("kernel", k));
        }
        if let Some(mode) = mode_of(result) {
            m.push(("mode", mode.to_owned()));
        }
        m
    }

    /// The kernel a result ran: the release the guest reported, else the kernel image.
    fn kernel_of(result: &TestResult) -> Option<String> {
        let env = &result.environment;
        env.get("kernel-release")
            .or_else(|| env.get("kernel"))
            .cloned()
    }

    /// How a VM runner ran the test (`alone`, `session`, `snapshot-reset`), from its environment
    /// record; `None` for runners without modes.
    fn mode_of(result: &TestResult) -> Option<&str> {
        let env = &result.environment;
        if let Some(m) = env.get("mode") {
            Some(m.as_str())
        } else if env.contains_key("session") {
            Some("session")
        } else if env.contains_key("snapshot-restore") {
            Some("snapshot-reset")
        } else if env.contains_key("accelerator") {
            Some("alone")
        } else {
            None
        }
    }

    /// The record of a run's report: `report.json`, kind `report`, test id `@run`.
    pub(crate) fn report_artifact(report: &RunReport) -> NewArtifact {
        let mut a = NewArtifact::new(
            RUN_RECORD_TEST_ID,
            report.run_id.as_str(),
            ArtifactKind::Report,
            REPORT_NAME,
        )
        .meta("status", report.status().label())
        .meta("started-at", report.started_at.to_rfc3339())
        .meta("finished-at", report.finished_at.to_rfc3339())
        .meta("schema-version", report.schema_version.to_string())
        .meta("tests", report.summary.total.to_string())
        .meta("counts", crate::history::counts_meta(&report.summary));
        if let Some(name) = &report.name {
            a = a.meta("name", name.clone());
        }
        a
    }

    /// Puts an execution's files (with its metrics recording, already among them) and its result
    /// (`result.json`, kind `result`; `position` is the test's place in the run, 0-based) into
    /// the store in one catalog transaction, and links each
    /// [`ArtifactFile`] of `result` to its record. Blocking.
    pub(crate) fn store_execution(
        store: &ArtifactStore,
        run_id: &str,
        case: &TestCase,
        position: usize,
        result: &mut TestResult,
    ) -> Result<(), String> {
        let outcome = store_outcome(&result.outcome);
        let arch = case
            .requirements
            .arch
            .map(|a| a.as_str().to_owned())
            .or_else(|| result.environment.get("arch").cloned());
        let tagged = |mut a: NewArtifact| {
            if let Some(arch) = &arch {
                a = a.arch(arch.clone());
            }
            // Retention pins match the `tag` key: the test's first tag; `tags` holds them all.
            if let Some(tag) = case.tags.first() {
                a = a
                    .meta(artifact_store::TAG_KEY, tag.clone())
                    .meta("tags", case.tags.join(","));
            }
            a
        };
        let mut items: Vec<(NewArtifact, Box<dyn Read>)> =
            Vec::with_capacity(result.artifacts.len() + 1);
        for f in &result.artifacts {
            let a = NewArtifact::new(case.id.as_str(), run_id, artifact_kind(&f.name), &f.name)
                .outcome(outcome)
                .meta("attempt", result.attempt.to_string())
                .meta("runner", result.runner.clone());
            let file = std::fs::File::open(&f.path).map_err(|e| {
                format!(
                    "cannot read artifact `{}` of test `{}` at {}: {e}",
                    f.name,
                    case.id,
                    f.path.display()
                )
            })?;
            items.push((tagged(a), Box::new(file)));
        }
        let json = serde_json::to_vec_pretty(&*result)
            .map_err(|e| format!("cannot serialise the result of test `{}`: {e}", case.id))?;
        let mut a = NewArtifact::new(case.id.as_str(), run_id, ArtifactKind::Result, RESULT_NAME)
            .outcome(outcome);
        for (k, v) in result_metadata(result) {
            a = a.meta(k, v);
        }
        a = a.meta("position", position.to_string());
        items.push((tagged(a), Box::new(std::io::Cursor::new(json))));
        let records = store.add_many(items).map_err(|e| e.to_string())?;
        for (f, r) in result.artifacts.iter_mut().zip(&records) {
            f.stored = Some(StoredArtifact {
                id: r.id.clone(),
                digest: r.digest.to_hex(),
                kind: r.kind.as_str().to_owned(),
            });
        }
        Ok(())
    }
}
