//! `qorch run` and `qorch merge`.
//!
//! `run` loads a plan, runs it (or one shard of it) with the host-process and QEMU runners,
//! watched by the monitor (unless the plan's `[monitor]` says `enabled = false`), its artifacts
//! going into the artifact store (the plan's `[store]`, else `<out>/store`; `--store`
//! overrides) with the plan's retention applied after the run. Ctrl-C (or SIGTERM) stops
//! running tests cleanly and still writes the reports; a second Ctrl-C exits at once.
//!
//! Output directory layout:
//!
//! ```text
//! <out>/runs/<run id>/{junit.xml,report.json,report.html}   one directory per run
//! <out>/latest -> runs/<run id>                            the newest run (replaced atomically)
//! <out>/scratch/<run id>/<test id>/attempt-<n>/            each execution's scratch directory
//! <out>/store/                                             the artifact store (by default)
//! ```
//!
//! Scratch: at the end of a run the scratch directories of the tests that succeeded and whose
//! collected files are all in the store are removed (their output is in the reports); the
//! others stay for inspection (tests that did not succeed; with `--no-store`, tests that
//! collected files), and the summary names them. Kept scratch of the
//! [`KEPT_RUNS`] newest runs stays; older runs' kept scratch is removed at the end of a later
//! run into the same `--out`. `--keep-scratch` keeps this run's whole scratch directory, which no
//! later run removes.
//!
//! Exit codes (`RunStatus`), made for `git bisect run` too: 0 when every test succeeded; 1 when
//! a test failed (a kernel that does not boot included); otherwise 125 when a test could not be
//! judged (an infrastructure error: QEMU would not start, ...; bisect skips the commit); 2 for
//! a bad plan or bad arguments (nothing ran); 130 when interrupted (bisect stops).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query, StoreOptions};
use orchestrator_core::perf_monitor::Monitor;
use orchestrator_core::plan::StorePlan;
use orchestrator_core::progress::{Progress, ProgressMode};
use orchestrator_core::report::KcidbOptions;
use orchestrator_core::shard::{self, Partition};
use orchestrator_core::{
    CancellationToken, Orchestrator, ProcessRunner, ProcessRunnerConfig, RunConfig, RunReport,
    RunStatus, Verdict, plan, report,
};
use qemu_runner::{QemuConfig, QemuPlan, QemuRunner};

use crate::history::load_run_ref;
use crate::util::{DEFAULT_OUT, connect_remote, tidy};

/// How many runs' kept scratch (of tests that did not succeed) stays in `<out>/scratch`.
pub const KEPT_RUNS: usize = 5;

/// The marker file in a run's scratch directory kept for its failed tests (and removed by a
/// later run once [`KEPT_RUNS`] newer runs kept theirs).
const KEPT_MARKER: &str = ".kept-for-failures";

/// Progress display.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProgressArg {
    /// A live bar on a terminal, plain lines otherwise.
    Auto,
    /// One line per test start and end, on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// `qorch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (TOML).
    pub plan: PathBuf,
    /// Run only shard k of n: `k/n` by test-id hash (a test always lands on the same shard),
    /// `k/n:count` (round robin, equal shares) or `k/n:balanced` (by the durations of
    /// `--balance-from RUN`, so that shards end together). Every worker runs the same plan.
    #[arg(long)]
    pub partition: Option<Partition>,
    /// The campaign's id, the same on every worker (e.g. the CI pipeline id). Default: the
    /// plan's name and a digest of its test ids.
    #[arg(long, requires = "partition")]
    pub campaign: Option<String>,
    /// Directory for the run directories (`runs/<run id>/`), the `latest` link, scratch
    /// files and (unless the plan or --store say otherwise) the artifact store.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Tests run at once (overrides the plan's `[run] parallelism`).
    #[arg(short = 'j', long)]
    pub parallelism: Option<usize>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
    /// The artifact store's directory (overrides the plan's `[store] path`; default
    /// `<out>/store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Keep no artifacts in a store.
    #[arg(long, conflicts_with = "store")]
    pub no_store: bool,
    /// A remote the store writes through to, `s3://bucket/prefix` (overrides the plan's
    /// `[store] remote`) or `file:///dir`; S3 credentials and endpoint come from the AWS
    /// environment or the profile `AWS_PROFILE` of `~/.aws/credentials` and `~/.aws/config`.
    /// A lease on it is held for the whole run.
    #[arg(long, conflicts_with = "no_store")]
    pub remote: Option<String>,
    /// Keep this run's whole scratch directory (`<out>/scratch/<run id>`); by default only the
    /// scratch of tests that did not succeed, or whose files are in no store, is kept (that of
    /// the five newest runs that kept some).
    #[arg(long)]
    pub keep_scratch: bool,
    /// Run only the plan's tests that did not succeed in an earlier run: failed, errored,
    /// timed out, crashed, unexpectedly passed, cancelled, or missing from it (tests skipped
    /// in a run that was not interrupted stay skipped). RUN is a report.json, a run directory,
    /// the id of a run in `<out>/runs` (`latest` too), or of a run whose report is in the
    /// store.
    #[arg(long, value_name = "RUN")]
    pub rerun_failed: Option<String>,
    /// With `--partition k/n:balanced`: split by the durations this earlier run recorded (a
    /// run id of the store or of `<out>/runs`, a run directory or a report.json), the same on
    /// every worker; tests it does not know count as its median duration.
    #[arg(long, value_name = "RUN", requires = "partition")]
    pub balance_from: Option<String>,
    /// Also write the run in KernelCI's KCIDB schema to this file.
    #[arg(long, value_name = "FILE")]
    pub kcidb: Option<PathBuf>,
    /// The KCIDB origin (the submitting CI system's name: lowercase letters, digits, `_`).
    #[arg(long, value_name = "ORIGIN", default_value = orchestrator_core::report::kcidb::DEFAULT_ORIGIN, requires = "kcidb")]
    pub kcidb_origin: String,
}

/// `qorch merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The workers' reports: report.json files or run directories.
    #[arg(required = true, num_args = 1..)]
    pub reports: Vec<PathBuf>,
    /// Where the merged run directory (`runs/<run id>/`) and the `latest` link go.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// The store the records of `--remote` are pulled into (default `<out>/store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Pull every worker's records from this remote (`s3://bucket/prefix` or `file:///dir`)
    /// into the store and check that each test of the campaign has its console log.
    #[arg(long)]
    pub remote: Option<String>,
}

/// `qorch run`.
pub async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    // Tests run in their own working directories: every path they are given is absolute.
    args.out = std::path::absolute(&args.out)
        .with_context(|| format!("cannot resolve --out {}", args.out.display()))?;
    let mode = match args.progress {
        ProgressArg::Auto => ProgressMode::Auto,
        ProgressArg::Lines => ProgressMode::Lines,
        ProgressArg::Quiet => ProgressMode::Quiet,
    };
    if let (Some(p), Some(_)) = (&args.partition, &args.balance_from)
        && p.by != shard::ShardBy::Balanced
    {
        anyhow::bail!(
            "--balance-from applies to a balanced partition: write --partition {}/{}:balanced",
            p.index,
            p.total
        );
    }
    let plan_path = &args.plan;
    let mut plan = plan::Loader::new().section::<QemuPlan>().load(plan_path)?;
    let kcidb = match &args.kcidb {
        Some(_) => Some(KcidbOptions::with_origin(&args.kcidb_origin)?),
        None => None,
    };
    // Runs named by --rerun-failed and --balance-from: run directories, report.json files, or
    // runs of the store.
    let store_dir = args
        .store
        .clone()
        .or_else(|| plan.settings.store.as_ref().map(|s| s.path.clone()))
        .unwrap_or_else(|| args.out.join("store"));
    let previous = match &args.rerun_failed {
        Some(run) => Some(
            load_run_ref(run, &args.out, &store_dir)
                .with_context(|| format!("--rerun-failed {run}"))?,
        ),
        None => None,
    };
    let balance = match &args.balance_from {
        Some(run) => Some(
            load_run_ref(run, &args.out, &store_dir)
                .with_context(|| format!("--balance-from {run}"))?
                .1,
        ),
        None => None,
    };
    let mut config = RunConfig::new(args.out.join("scratch"))
        .with_plan_settings(&plan.settings)
        .with_name(plan.name.clone());
    if let Some(p) = args.partition {
        let campaign = args
            .campaign
            .clone()
            .unwrap_or_else(|| shard::campaign_id(plan.name.as_deref(), &plan.cases));
        let mut info = p.info(campaign, &plan.cases);
        let durations = match &balance {
            Some(report) => {
                info = info.with_balanced_from(report.run_id.clone());
                shard::durations_of(report)
            }
            None => Default::default(),
        };
        config = config.with_shard(info);
        plan.cases = p.select_balanced(std::mem::take(&mut plan.cases), &durations);
    }
    if let Some((source, report)) = &previous {
        let again = rerun_selection(report);
        let before = plan.cases.len();
        plan.cases.retain(|c| again(c.id.as_str()));
        if plan.cases.is_empty() {
            println!(
                "nothing to rerun: every one of the {before} tests succeeded in run {} ({})",
                report.run_id,
                source.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let ids: Vec<&str> = plan.cases.iter().map(|c| c.id.as_str()).collect();
        println!(
            "rerunning {} of {before} tests that did not succeed in run {}: {}",
            ids.len(),
            report.run_id,
            ids.join(", ")
        );
    }
    if let Some(p) = args.parallelism {
        config = config.with_parallelism(p);
    }
    let mut runner_config = ProcessRunnerConfig::default();
    if let Some(grace) = plan.settings.kill_grace {
        runner_config.kill_grace = grace;
    }
    // Host processes by default; `runner = "qemu"` boots guests (planned unless the plan's
    // [qemu] says `planning = false`).
    let qemu = match plan.section::<QemuPlan>() {
        Some(q) => QemuConfig::from_plan(q),
        None => QemuConfig::from_plan(&QemuPlan::default()),
    };
    let mut orchestrator = Orchestrator::new(config)
        .with_runner(ProcessRunner::new(runner_config))
        .with_runner(QemuRunner::new(qemu));
    let monitor = plan.settings.monitor.clone().unwrap_or_default();
    if monitor.enabled {
        orchestrator = orchestrator.with_monitor(Monitor::new(monitor.config()));
    }
    let mut lease = None;
    if !args.no_store {
        let mut store = plan
            .settings
            .store
            .clone()
            .unwrap_or_else(|| StorePlan::new(args.out.join("store")));
        if let Some(dir) = &args.store {
            store.path = dir.clone();
        }
        std::fs::create_dir_all(&store.path).with_context(|| {
            format!("cannot create the artifact store {}", store.path.display())
        })?;
        // Shown in the summary: without the `..` of a plan-relative path.
        let root = tidy(&store.path);
        let mut opened = ArtifactStore::open_with(
            &root,
            StoreOptions {
                durability: store.durability,
                ..StoreOptions::default()
            },
        )
        .with_context(|| format!("cannot open the artifact store {}", root.display()))?;
        if let Some(url) = args.remote.as_ref().or(store.remote.as_ref()) {
            opened = opened.with_remote(connect_remote(url)?);
            // Held for the whole run: a collection of the shared store elsewhere removes
            // nothing this worker writes.
            lease = Some(
                opened
                    .lease(std::time::Duration::from_secs(120))
                    .with_context(|| format!("cannot take a lease on the remote store {url}"))?,
            );
            println!("artifacts also go to {url}");
        }
        orchestrator = orchestrator.with_store(opened);
        if let Some(retention) = &store.retention {
            orchestrator = orchestrator.with_retention(retention.policy());
        }
    }
    orchestrator
        .validate(&plan.cases)
        .with_context(|| format!("plan {} cannot run", plan_path.display()))?;

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());

    let mut progress = Progress::new(mode);
    let report = orchestrator
        .run_with(plan.cases, cancel, |event| progress.event(event))
        .await?;
    progress.finish();
    drop(lease);

    let dir = write_reports(&args.out, &report)?;
    if let (Some(path), Some(options)) = (&args.kcidb, &kcidb) {
        report
            .write_kcidb(path, options)
            .with_context(|| format!("cannot write the KCIDB file {}", path.display()))?;
    }
    print!(
        "{}",
        report::summary_table(&report, std::io::stdout().is_terminal())
    );
    print_reports(&args.out, &dir);
    if let Some(path) = &args.kcidb {
        println!("KCIDB: {}", path.display());
    }
    let scratch = args.out.join("scratch");
    match tidy_scratch(&scratch, &report, args.keep_scratch) {
        Ok(Scratch::Removed) => {}
        Ok(Scratch::KeptAll(dir)) => println!("scratch kept (--keep-scratch): {}", dir.display()),
        Ok(Scratch::KeptFailed(dirs)) => {
            println!(
                "scratch kept for inspection (tests that did not succeed, files not in a store):"
            );
            for d in dirs {
                println!("  {}", d.display());
            }
        }
        Err(e) => eprintln!("warning: cannot tidy the scratch directory: {e:#}"),
    }
    Ok(ExitCode::from(report.status().exit_code()))
}

/// Which of a plan's test ids `--rerun-failed` runs again after `report`.
fn rerun_selection(report: &RunReport) -> impl Fn(&str) -> bool + use<> {
    let interrupted = report.interrupted.is_some();
    let verdicts: BTreeMap<String, Verdict> = report
        .results
        .iter()
        .map(|r| (r.test_id.to_string(), r.verdict()))
        .collect();
    move |id| match verdicts.get(id) {
        None => true,
        Some(v) if v.is_success() => false,
        Some(Verdict::Skipped) => interrupted,
        Some(_) => true,
    }
}

/// Writes a report's JUnit XML, JSON and HTML into a new `<out>/runs/<run id>/` and points
/// `<out>/latest` to it; returns the run directory.
pub(crate) fn write_reports(out: &Path, report: &RunReport) -> anyhow::Result<PathBuf> {
    let runs = out.join("runs");
    std::fs::create_dir_all(&runs)
        .with_context(|| format!("cannot create the runs directory {}", runs.display()))?;
    let base = if !report.run_id.is_empty()
        && report
            .run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(c))
        && !report.run_id.starts_with('.')
    {
        report.run_id.clone()
    } else {
        report.started_at.format("%Y%m%dT%H%M%SZ").to_string()
    };
    // A merge of the same shards twice gets a second directory.
    let mut name = base.clone();
    let mut n = 1;
    let dir = loop {
        let dir = runs.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n += 1;
                name = format!("{base}.{n}");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
        }
    };
    report.write_junit(&dir.join("junit.xml"))?;
    report.write_json(&dir.join("report.json"))?;
    report.write_html(&dir.join("report.html"))?;
    point_latest(out, &name)?;
    Ok(dir)
}

/// Points `<out>/latest` to `runs/<name>`: a new link renamed over the old one, so a reader
/// never sees it missing.
fn point_latest(out: &Path, name: &str) -> anyhow::Result<()> {
    let latest = out.join("latest");
    let tmp = out.join(format!(".latest.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("runs").join(name), &tmp)
        .with_context(|| format!("cannot create the link {}", tmp.display()))?;
    std::fs::rename(&tmp, &latest).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "cannot replace {} (a directory there? remove it)",
            latest.display()
        )
    })
}

fn print_reports(out: &Path, dir: &Path) {
    println!(
        "reports: {} {} {}",
        dir.join("junit.xml").display(),
        dir.join("report.json").display(),
        dir.join("report.html").display()
    );
    println!("latest: {}", out.join("latest").display());
}

/// What became of a run's scratch directory.
enum Scratch {
    Removed,
    KeptAll(PathBuf),
    KeptFailed(Vec<PathBuf>),
}

/// Removes the run's scratch directory, or the part of it that succeeded (see the module
/// docs), then older runs' kept scratch beyond [`KEPT_RUNS`].
fn tidy_scratch(root: &Path, report: &RunReport, keep_all: bool) -> anyhow::Result<Scratch> {
    let run_dir = root.join(&report.run_id);
    let outcome = if keep_all {
        Scratch::KeptAll(run_dir.clone())
    } else {
        let mut kept = Vec::new();
        for r in &report.results {
            let dir = run_dir.join(r.test_id.as_str());
            if !dir.exists() {
                continue;
            }
            // Files only the scratch holds (no store, or a failed put) stay.
            if r.verdict().is_success() && r.artifacts.iter().all(|a| a.stored.is_some()) {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            } else {
                kept.push(dir);
            }
        }
        if kept.is_empty() {
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)
                    .with_context(|| format!("cannot remove {}", run_dir.display()))?;
            }
            Scratch::Removed
        } else {
            remove_empty_dirs(&run_dir);
            std::fs::write(run_dir.join(KEPT_MARKER), "")
                .with_context(|| format!("cannot mark {}", run_dir.display()))?;
            Scratch::KeptFailed(kept)
        }
    };
    // Older runs' kept scratch, oldest first: by when the marker was written (the end of
    // their run), then by name (run ids begin with their start time).
    let mut kept_runs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|p| {
                    let written = std::fs::metadata(p.join(KEPT_MARKER))
                        .and_then(|m| m.modified())
                        .ok()?;
                    Some((written, p))
                })
                .collect()
        })
        .unwrap_or_default();
    kept_runs.sort();
    let excess = kept_runs.len().saturating_sub(KEPT_RUNS);
    for (_, old) in &kept_runs[..excess] {
        std::fs::remove_dir_all(old)
            .with_context(|| format!("cannot remove old scratch {}", old.display()))?;
    }
    if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(root);
    }
    Ok(outcome)
}

/// Removes the empty directories below `dir` (test ids with `/` nest).
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&p);
                let _ = std::fs::remove_dir(&p);
            }
        }
    }
}

/// `qorch merge`: one report from the shards' reports.
pub fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let file = if path.is_dir() {
            path.join("report.json")
        } else {
            path.clone()
        };
        reports.push(
            RunReport::read_json(&file)
                .with_context(|| format!("cannot read shard report {}", file.display()))?,
        );
    }
    let merged = shard::merge(reports)?;
    let dir = write_reports(&args.out, &merged.report)?;
    print!(
        "{}",
        report::summary_table(&merged.report, std::io::stdout().is_terminal())
    );
    for (what, list) in [
        ("missing (no shard reported them)", &merged.missing),
        ("reported by more than one shard", &merged.duplicated),
        ("not in the campaign", &merged.unexpected),
    ] {
        if !list.is_empty() {
            println!("{} tests {what}: {}", list.len(), list.join(", "));
        }
    }
    if !merged.missing_shards.is_empty() {
        let shards: Vec<String> = merged.missing_shards.iter().map(usize::to_string).collect();
        println!("shards without a report: {}", shards.join(", "));
    }
    let mut logs_complete = true;
    if let Some(url) = &args.remote {
        let dir = args.store.clone().unwrap_or_else(|| args.out.join("store"));
        let store = ArtifactStore::open(&dir)
            .with_context(|| format!("cannot open the artifact store {}", dir.display()))?
            .with_remote(connect_remote(url)?);
        let pulled = store
            .pull_records()
            .with_context(|| format!("cannot pull the records of {url}"))?;
        // One query per test: every test of the merged campaign should have its console log.
        let mut without = Vec::new();
        for r in &merged.report.results {
            let q = Query::new()
                .test(r.test_id.as_str())
                .kind(ArtifactKind::Console);
            if store.query(&q)?.is_empty() {
                without.push(r.test_id.to_string());
            }
        }
        println!(
            "store {}: {} records pulled from {url}; console logs for {} of {} tests",
            dir.display(),
            pulled.records_added,
            merged.report.results.len() - without.len(),
            merged.report.results.len()
        );
        if !without.is_empty() {
            println!("tests without a console log: {}", without.join(", "));
            logs_complete = false;
        }
    }
    print_reports(&args.out, &dir);
    // A shard that did not report, or a test without its console log, fails the campaign.
    let status = merged.report.status();
    Ok(
        if status == RunStatus::Succeeded && !(merged.is_complete() && logs_complete) {
            ExitCode::FAILURE
        } else {
            ExitCode::from(status.exit_code())
        },
    )
}

/// First SIGINT or SIGTERM: cancel the run (tests are stopped, reports written). Second: exit.
fn spawn_signal_handler(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("warning: cannot install signal handlers; Ctrl-C will not write reports");
            return;
        };
        for count in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if count == 0 {
                eprintln!(
                    "interrupted: stopping running tests and writing reports (press Ctrl-C again to exit at once)"
                );
                cancel.cancel();
            } else {
                eprintln!("interrupted twice: exiting without reports");
                std::process::exit(130);
            }
        }
    });
}
