//! `qorch runs`, `qorch history TEST`, `qorch compare BEFORE AFTER` and `qorch export-kcidb RUN`:
//! what the store recorded across runs, through `orchestrator_core::history`.
//!
//! A run is named by its id in the store, a run directory or a report.json (see
//! [`load_run_ref`]); the store is found as for `qorch store` (`--store`, else the plan's
//! `[store] path`, else `<out>/store`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Args;
use orchestrator_core::artifact_store::ArtifactStore;
use orchestrator_core::history::{self, HistoryError};
use orchestrator_core::perf_monitor::verdict::NoiseBand;
use orchestrator_core::report::KcidbOptions;
use orchestrator_core::{RunReport, plan};
use qemu_runner::QemuPlan;

use crate::util::{DEFAULT_OUT, is_store, read_store};

/// Where the store is: shared by the commands that read it.
#[derive(Debug, Args, Clone)]
pub struct StoreAt {
    /// The store's directory (default: the plan's `[store] path`, else `<out>/store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// The output directory of the runs (`<out>/runs`) and, by default, of the store.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A plan whose `[store] path` names the store.
    #[arg(long)]
    pub plan: Option<PathBuf>,
}

impl StoreAt {
    /// The store's directory.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.store {
            return Ok(dir.clone());
        }
        if let Some(path) = &self.plan {
            let plan = plan::Loader::new().section::<QemuPlan>().load(path)?;
            if let Some(s) = &plan.settings.store {
                return Ok(s.path.clone());
            }
        }
        Ok(self.out.join("store"))
    }
}

/// `qorch runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(flatten)]
    at: StoreAt,
    /// At most this many runs (newest first; 0: all).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `qorch history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The test id (`id` or `id@arch`).
    test: String,
    #[command(flatten)]
    at: StoreAt,
    /// At most this many results (newest first; 0: all).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `qorch compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The runs before: run ids, run directories or report.json files, comma-separated (the
    /// medians of several runs are compared).
    before: String,
    /// The runs after, the same way.
    after: String,
    #[command(flatten)]
    at: StoreAt,
    /// Noise band: the relative change within which a figure is noise (0.10 = 10 %).
    #[arg(long, value_name = "FRACTION")]
    band_relative: Option<f64>,
    /// Noise band: CPU seconds within which a change is noise.
    #[arg(long, value_name = "SECONDS")]
    band_cpu: Option<f64>,
    /// Noise band: bytes of peak memory within which a change is noise.
    #[arg(long, value_name = "BYTES")]
    band_memory: Option<f64>,
    /// Noise band: wall seconds within which a change is noise.
    #[arg(long, value_name = "SECONDS")]
    band_duration: Option<f64>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `qorch export-kcidb`.
#[derive(Debug, Args)]
pub struct ExportKcidbArgs {
    /// The run: its id in the store, a run directory or a report.json.
    run: String,
    #[command(flatten)]
    at: StoreAt,
    /// The file to write (default: stdout).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// The submitting CI system's name, prefix of every id (lowercase letters, digits, `_`).
    #[arg(long, default_value = orchestrator_core::report::kcidb::DEFAULT_ORIGIN)]
    origin: String,
}

/// `qorch import-report`.
#[derive(Debug, Args)]
pub struct ImportReportArgs {
    /// report.json files or run directories (of this or an earlier version, or of another
    /// machine).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    #[command(flatten)]
    at: StoreAt,
}

/// A run named on the command line: a report.json, a run directory, a run of `<out>/runs` (or
/// `<out>/latest`), or a run of the store (its report record, else its result records). Returns
/// where it was found and the report.
pub fn load_run_ref(run: &str, out: &Path, store: &Path) -> anyhow::Result<(PathBuf, RunReport)> {
    let given = Path::new(run);
    let candidates = [
        given.to_owned(),
        given.join("report.json"),
        out.join("runs").join(run).join("report.json"),
        out.join(run).join("report.json"),
    ];
    if let Some(path) = candidates.into_iter().find(|p| p.is_file()) {
        let report = RunReport::read_json(&path)
            .with_context(|| format!("run {run}: cannot read {}", path.display()))?;
        return Ok((path, report));
    }
    let not_found = || {
        anyhow!(
            "no such run `{run}`: it is not a report.json, not a run directory holding one, not a \
             run in {}, and not a run of the store {} (list them with `qorch runs`)",
            out.join("runs").display(),
            store.display()
        )
    };
    if !is_store(store) {
        return Err(not_found());
    }
    let opened = read_store(store)?;
    match history::load_run(&opened, run) {
        Ok(report) => Ok((store.join(format!("(run {run})")), report)),
        Err(HistoryError::UnknownRun { .. }) => Err(not_found()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("run {run}"))),
    }
}

/// `qorch runs`: the stored runs, newest first.
pub fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let store = read_store(&args.at.dir()?)?;
    let mut runs = history::runs(&store)?;
    if args.limit > 0 {
        runs.truncate(args.limit);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &runs)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<28}  {:<20}  {:<12}  {:>5}  {:<20}  verdicts",
        "run", "started", "status", "tests", "name"
    )?;
    for r in &runs {
        let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(
            out,
            "{:<28}  {:<20}  {:<12}  {:>5}  {:<20}  {}",
            r.run_id,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            r.status.as_deref().unwrap_or("(no report)"),
            r.tests,
            r.name.as_deref().unwrap_or("-"),
            counts.join(", ")
        )?;
    }
    if runs.is_empty() {
        let stats = store.stats()?;
        if stats.live_records + stats.evicted_records > 0 {
            writeln!(
                out,
                "no runs recorded: the store's {} artifacts came without results or reports (a \
                 store written by an earlier version); record their runs' reports with `qorch \
                 import-report REPORT...`",
                stats.live_records + stats.evicted_records
            )?;
        } else {
            writeln!(out, "no runs in the store")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `qorch history TEST`: outcomes, durations and resource figures over the stored runs.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = read_store(&args.at.dir()?)?;
    let entries = history::test_history(&store, &args.test, args.limit)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", history::render_history(&args.test, &entries))?;
        write!(out, "{}", newest_breakdown(&store, &entries))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The per-process breakdown of the newest result that has one (its blob still stored and the
/// test monitored): the top processes by CPU and by peak memory, with pid and name. Empty when
/// none has.
fn newest_breakdown(store: &ArtifactStore, entries: &[history::HistoryEntry]) -> String {
    use std::fmt::Write as _;
    let usage = entries
        .iter()
        .filter(|e| !e.evicted && e.cpu_seconds.is_some())
        .find_map(|e| {
            let bytes = store.get(&e.artifact_id).ok()?;
            let result: orchestrator_core::TestResult = serde_json::from_slice(&bytes).ok()?;
            let u = result.resources?;
            (!u.top_cpu.is_empty() || !u.top_memory.is_empty()).then_some((e.run_id.clone(), u))
        });
    let Some((run, u)) = usage else {
        return String::new();
    };
    let mut s = String::new();
    for (what, list) in [("CPU", &u.top_cpu), ("peak memory", &u.top_memory)] {
        let _ = writeln!(s, "\nTop processes by {what} in run {run}:");
        let _ = writeln!(
            s,
            "{:>8}  {:<16} {:>9} {:>11}  command",
            "pid", "name", "CPU s", "peak MiB"
        );
        for p in list {
            let command: String = p.command.chars().take(60).collect();
            let _ = writeln!(
                s,
                "{:>8}  {:<16} {:>9.2} {:>11.1}  {}",
                p.pid,
                p.name,
                p.cpu_seconds,
                p.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                command.escape_debug()
            );
        }
    }
    s
}

/// `qorch compare BEFORE AFTER`: exits 1 on a regression (a test newly failing, or a resource
/// figure worse beyond the noise band), 0 otherwise.
pub fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let store = args.at.dir()?;
    let load = |refs: &str| -> anyhow::Result<Vec<RunReport>> {
        refs.split(',')
            .filter(|r| !r.is_empty())
            .map(|r| load_run_ref(r, &args.at.out, &store).map(|(_, report)| report))
            .collect()
    };
    let before = load(&args.before)?;
    let after = load(&args.after)?;
    let mut band = NoiseBand::default();
    for (value, slot, flag) in [
        (args.band_relative, &mut band.relative, "--band-relative"),
        (args.band_cpu, &mut band.cpu_s, "--band-cpu"),
        (args.band_memory, &mut band.memory_bytes, "--band-memory"),
        (args.band_duration, &mut band.duration_s, "--band-duration"),
    ] {
        if let Some(v) = value {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} {v}: give a number of at least 0"
            );
            *slot = v;
        }
    }
    let comparison = history::compare(&before, &after, &band);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &comparison)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", history::render_comparison(&comparison))?;
    }
    Ok(if comparison.is_regression() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `qorch export-kcidb RUN`: the run in KernelCI's schema.
pub fn export_kcidb(args: ExportKcidbArgs) -> anyhow::Result<ExitCode> {
    let options = KcidbOptions::with_origin(&args.origin)?;
    let (_, report) = load_run_ref(&args.run, &args.at.out, &args.at.dir()?)?;
    match &args.output {
        Some(path) => {
            report
                .write_kcidb(path, &options)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "run {} in KCIDB's schema: {}",
                report.run_id,
                path.display()
            );
        }
        None => {
            let value = report.kcidb(&options)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &value)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `qorch import-report REPORT...`: records reports written elsewhere or by an earlier version
/// (which kept no result records) in the store, so `runs`, `history` and `compare` see them.
/// Importing a report again adds nothing. The store is created when the directory is new.
pub fn import_report(args: ImportReportArgs) -> anyhow::Result<ExitCode> {
    let dir = args.at.dir()?;
    let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    anyhow::ensure!(
        is_store(&dir) || empty,
        "{} is not an artifact store (no LAYOUT file) and not empty: name a store's directory, \
         or a new one, with --store DIR",
        dir.display()
    );
    let store = ArtifactStore::open(&dir)
        .with_context(|| format!("cannot open the artifact store {}", dir.display()))?;
    for path in &args.reports {
        let file = if path.is_dir() {
            path.join("report.json")
        } else {
            path.clone()
        };
        let report = RunReport::read_json(&file)
            .with_context(|| format!("cannot read the report {}", file.display()))?;
        let s = history::import_report(&store, &report)
            .with_context(|| format!("cannot import {}", file.display()))?;
        println!(
            "run {}: {} results added{}",
            report.run_id,
            s.results_added,
            if s.report_added {
                ", report added"
            } else {
                " (the store had its report)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
