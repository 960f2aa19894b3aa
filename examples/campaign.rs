//! Runs a plan file: progress while it runs, a summary table at the end, JUnit XML, a JSON
//! report and an HTML report in the output directory. Every test is watched by the monitor
//! (unless the plan's `[monitor]` says `enabled = false`) and its artifacts go into the artifact
//! store (the plan's `[store]`, else `<out>/store`; `--store` overrides), with the plan's
//! retention applied after the run. Ctrl-C (or SIGTERM) stops running tests cleanly and still
//! writes the reports; a second Ctrl-C exits at once.
//!
//! Diagnostics: the libraries' `tracing` events go to stderr, filtered by `RUST_LOG` (default:
//! warnings only); `RUST_LOG=qemu_runner=debug` shows, per test, the QEMU command line, the
//! accelerator decision, the phases and the artifact transfer.
//!
//! Exit codes (`RunStatus`), made for `git bisect run` too: 0 when every test succeeded; 1 when
//! a test failed (a kernel that does not boot included); otherwise 125 when a test could not be
//! judged (an infrastructure error: QEMU would not start, ...; bisect skips the commit); 2 for
//! a bad plan or bad arguments (nothing ran); 130 when interrupted (bisect stops).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orchestrator_core::artifact_store::{
    ArtifactKind, ArtifactStore, BlobBackend, ObjectStoreBackend, Query, RemoteOptions,
    StoreOptions,
};
use orchestrator_core::perf_monitor::Monitor;
use orchestrator_core::plan::StorePlan;
use orchestrator_core::progress::{Progress, ProgressMode};
use orchestrator_core::shard::{self, Partition};
use orchestrator_core::{
    CancellationToken, Orchestrator, ProcessRunner, ProcessRunnerConfig, RunConfig, RunStatus,
    plan, report,
};
use qemu_runner::{QemuConfig, QemuPlan, QemuRunner};

/// Run a test plan (or one shard of it) and write JUnit XML, JSON and HTML reports; or merge
/// the JSON reports of a sharded campaign's workers.
#[derive(Debug, Parser)]
#[command(name = "campaign")]
struct Args {
    /// The plan file (TOML).
    #[arg(required_unless_present = "merge")]
    plan: Option<PathBuf>,
    /// Run only shard k of n: `k/n` by test-id hash (a test always lands on the same shard), or
    /// `k/n:count` (round robin, equal shares). Every worker runs the same plan.
    #[arg(long)]
    partition: Option<Partition>,
    /// The campaign's id, the same on every worker (e.g. the CI pipeline id). Default: the
    /// plan's name and a digest of its test ids.
    #[arg(long, requires = "partition")]
    campaign: Option<String>,
    /// Merge these shard reports (report.json of every worker) into one JSON, JUnit and HTML
    /// report in `--out`; fails when a test is missing or reported twice.
    #[arg(long, num_args = 1.., conflicts_with_all = ["plan", "partition"])]
    merge: Vec<PathBuf>,
    /// Directory for the reports and each test's scratch files.
    #[arg(long, default_value = "target/campaign")]
    out: PathBuf,
    /// Tests run at once (overrides the plan's `[run] parallelism`).
    #[arg(short = 'j', long)]
    parallelism: Option<usize>,
    /// Progress display: auto (bar on a terminal), lines, quiet.
    #[arg(long, default_value = "auto")]
    progress: String,
    /// The artifact store's directory (overrides the plan's `[store] path`; default
    /// `<out>/store`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Keep no artifacts in a store.
    #[arg(long, conflicts_with = "store")]
    no_store: bool,
    /// A remote the store writes through to, `s3://bucket/prefix` (overrides the plan's
    /// `[store] remote`); credentials and endpoint from the AWS environment or the profile
    /// `AWS_PROFILE` of `~/.aws/credentials` and `~/.aws/config`. With `--merge`:
    /// pull every worker's records from it into the store and check each test's console log.
    #[arg(long, conflicts_with = "no_store")]
    remote: Option<String>,
}

/// Connects to a remote store, with the usual retries.
fn connect_remote(url: &str) -> anyhow::Result<std::sync::Arc<dyn BlobBackend>> {
    let backend = ObjectStoreBackend::connect(url, &RemoteOptions::default())
        .with_context(|| format!("cannot use the remote store {url}"))?;
    Ok(std::sync::Arc::new(backend))
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (warnings only when it is unset or
/// names nothing valid), coloured on a terminal only.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mode = match args.progress.as_str() {
        "auto" => ProgressMode::Auto,
        "lines" => ProgressMode::Lines,
        "quiet" => ProgressMode::Quiet,
        other => anyhow::bail!("unknown --progress `{other}`: use auto, lines or quiet"),
    };
    if !args.merge.is_empty() {
        return merge_reports(&args);
    }
    let plan_path = args.plan.clone().expect("clap requires a plan");
    let mut plan = plan::Loader::new().section::<QemuPlan>().load(&plan_path)?;
    let mut config = RunConfig::new(args.out.join("scratch"))
        .with_plan_settings(&plan.settings)
        .with_name(plan.name.clone());
    if let Some(p) = args.partition {
        let campaign = args
            .campaign
            .clone()
            .unwrap_or_else(|| shard::campaign_id(plan.name.as_deref(), &plan.cases));
        config = config.with_shard(p.info(campaign, &plan.cases));
        plan.cases = p.select(std::mem::take(&mut plan.cases));
    }
    if let Some(p) = args.parallelism {
        config = config.with_parallelism(p);
    }
    let mut runner_config = ProcessRunnerConfig::default();
    if let Some(grace) = plan.settings.kill_grace {
        runner_config.kill_grace = grace;
    }
    // Host processes by default; `runner = "qemu"` boots a guest per test.
    let qemu = match plan.section::<QemuPlan>() {
        Some(q) => QemuConfig::from_plan(q),
        None => QemuConfig::new(),
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
        // Shown in the summary: without the `..` of a plan-relative path.
        std::fs::create_dir_all(&store.path).with_context(|| {
            format!("cannot create the artifact store {}", store.path.display())
        })?;
        let root = std::fs::canonicalize(&store.path).unwrap_or_else(|_| store.path.clone());
        let opened = ArtifactStore::open_with(
            &root,
            StoreOptions {
                durability: store.durability,
                ..StoreOptions::default()
            },
        )
        .with_context(|| format!("cannot open the artifact store {}", root.display()))?;
        let mut opened = opened;
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
    let junit = args.out.join("junit.xml");
    let json = args.out.join("report.json");
    let html = args.out.join("report.html");
    report.write_junit(&junit)?;
    report.write_json(&json)?;
    report.write_html(&html)?;
    print!(
        "{}",
        report::summary_table(&report, std::io::stdout().is_terminal())
    );
    println!(
        "reports: {} {} {}",
        junit.display(),
        json.display(),
        html.display()
    );
    Ok(ExitCode::from(report.status().exit_code()))
}

/// `--merge`: one report from the shards' reports.
fn merge_reports(args: &Args) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.merge {
        reports.push(
            orchestrator_core::RunReport::read_json(path)
                .with_context(|| format!("cannot read shard report {}", path.display()))?,
        );
    }
    let merged = shard::merge(reports)?;
    let junit = args.out.join("junit.xml");
    let json = args.out.join("report.json");
    let html = args.out.join("report.html");
    merged.report.write_junit(&junit)?;
    merged.report.write_json(&json)?;
    merged.report.write_html(&html)?;
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
    println!(
        "reports: {} {} {}",
        junit.display(),
        json.display(),
        html.display()
    );
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
