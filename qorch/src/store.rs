//! `qorch store ...`: the artifact store from the command line, over `artifact-store`'s public
//! API.
//!
//! The store is `--store DIR`, else the `[store] path` of `--plan PLAN`, else `<out>/store`
//! (`--out`, default `qorch-out`), as for `qorch run`. Read commands (`ls`, `cat`, `get`,
//! `verify` without `--repair`, `gc --dry-run`, `retention --dry-run`, `stats`, `export`) open
//! only an existing store and change nothing in it; `import` and `pull` create the store when
//! the directory is empty or missing.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use orchestrator_core::artifact_store::{
    self, ArtifactKind, ArtifactRecord, ArtifactStore, GcOptions, Query, TestOutcome, VerifyOptions,
};
use orchestrator_core::plan::{self, RetentionPlan};
use qemu_runner::QemuPlan;

use crate::util::{DEFAULT_OUT, connect_remote, is_store, open_existing_store, read_store};

/// `qorch store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store's directory (default: the plan's `[store] path`, else `<out>/store`).
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    /// The output directory whose `store` is used when neither --store nor a plan's `[store]`
    /// names one.
    #[arg(long, global = true, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A plan whose `[store]` (path, remote, retention) applies.
    #[arg(long, global = true)]
    pub plan: Option<PathBuf>,
    /// The remote of `push` and `pull`, and where `cat` and `get` fetch (and verify) blobs
    /// this store does not hold: `s3://bucket/prefix` or `file:///dir` (default: the plan's
    /// `[store] remote`).
    #[arg(long, global = true)]
    pub remote: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// The `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List artifact records matching filters (oldest first, or --newest), as a table or JSON.
    #[command(visible_alias = "query")]
    Ls(LsArgs),
    /// Write an artifact's content to stdout, verified against its digest: whole before the
    /// first byte, or, for content of 256 KiB or more written by this version, piece by piece
    /// (a damaged piece stops the output before any of its bytes, with exit status 2).
    Cat {
        /// The artifact id (from `ls`).
        id: String,
    },
    /// Save an artifact's content to a file, verified (nothing is written when it does not
    /// verify).
    Get {
        /// The artifact id (from `ls`).
        id: String,
        /// The file to write (default: the artifact's name in the current directory).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Check every blob against its digest and every record's blob; exits 1 on damage.
    Verify {
        /// Move corrupt blobs and stray files to `quarantine/`, collect orphans, and mark the
        /// records of damaged artifacts evicted (`blob corrupt`, `blob missing`).
        #[arg(long)]
        repair: bool,
    },
    /// Remove blobs no record needs and leftover temp files (safe while others write).
    Gc {
        /// Say what would go without removing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply retention rules (the plan's `[store.retention]`, or the rules given here), or
    /// list with --dry-run every artifact, keep or remove, with its reason.
    Retention(RetentionArgs),
    /// Records, blobs, logical and stored bytes, dedup and compression, per kind and test.
    Stats {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the artifacts matching a query into a bundle (`.tar.zst` with a BLAKE3 manifest).
    Export(ExportArgs),
    /// Add a bundle's artifacts to the store, verifying everything first.
    Import {
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Send runs' records and blobs to the remote (all runs by default).
    Push {
        /// Only these runs.
        #[arg(long = "run", value_name = "RUN")]
        runs: Vec<String>,
    },
    /// Bring every record published to the remote into this store (blobs are fetched, and
    /// verified, when read: `cat` and `get` with --remote).
    Pull,
}

/// Filters shared by `ls` and `export`.
#[derive(Debug, Args, Default, Clone)]
pub struct Filters {
    /// Only this test's artifacts (`id` or `id@arch`).
    #[arg(long)]
    pub test: Option<String>,
    /// Only this run's artifacts.
    #[arg(long)]
    pub run: Option<String>,
    /// Only this kind: log, console, core-dump, trace, screenshot, metrics, other, ...
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this architecture.
    #[arg(long)]
    pub arch: Option<String>,
    /// Only artifacts of tests with this outcome: passed, failed, timed-out, crashed,
    /// infra-error, skipped, cancelled.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only artifacts created at or after this time: RFC 3339 (`2026-01-31T12:00:00Z`) or an
    /// age (`2d`, `6h 30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only artifacts created before this time (RFC 3339 or an age).
    #[arg(long)]
    pub until: Option<String>,
    /// Only artifacts with this metadata (`key=value`; repeat for several).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Include records whose blob retention evicted.
    #[arg(long)]
    pub evicted: bool,
}

/// `store ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    filters: Filters,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Every matching record (no limit).
    #[arg(long, conflicts_with = "limit")]
    all: bool,
    /// JSON (an array of records) instead of a table.
    #[arg(long)]
    json: bool,
    /// Newest first (with --limit: the newest N) instead of oldest first.
    #[arg(long)]
    newest: bool,
}

/// `store export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Query terms, all of which must hold: `test=ID`, `run=ID`, `kind=K`, `arch=A`,
    /// `outcome=O`, `since=T`, `until=T`, `meta.KEY=VALUE` (the same as the flags).
    #[arg(value_name = "QUERY")]
    terms: Vec<String>,
    #[command(flatten)]
    filters: Filters,
    /// The bundle to write.
    #[arg(short = 'o', long, value_name = "BUNDLE")]
    output: PathBuf,
}

/// `store retention`.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// List every artifact with keep or remove and the reason; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Rule: remove artifacts older than this (`30d`).
    #[arg(long, value_name = "AGE")]
    max_age: Option<String>,
    /// Rule: keep the artifacts of each test's last N runs.
    #[arg(long, value_name = "N")]
    keep_last_runs: Option<usize>,
    /// Rule: keep the newest artifacts up to this many stored bytes (`10GiB`, `500MB`).
    #[arg(long, value_name = "SIZE")]
    max_total_size: Option<String>,
    /// Rule: keep artifacts of failed, timed-out or crashed tests at least this long.
    #[arg(long, value_name = "AGE")]
    keep_failures_for: Option<String>,
    /// Rule: keep artifacts of passing tests at least this long.
    #[arg(long, value_name = "AGE")]
    keep_passes_for: Option<String>,
    /// Rule: always keep each test's first failing run after a passing one.
    #[arg(long)]
    first_failure_after_pass: bool,
    /// Rule: always keep each test's last passing run.
    #[arg(long)]
    last_passing_run: bool,
    /// Rule: always keep this run's artifacts (repeat for several).
    #[arg(long = "pin-run", value_name = "RUN")]
    pin_runs: Vec<String>,
    /// Rule: always keep artifacts with this tag (repeat for several).
    #[arg(long = "pin-tag", value_name = "TAG")]
    pin_tags: Vec<String>,
}

/// `qorch store`.
pub fn store(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let settings = match &args.plan {
        Some(path) => plan::Loader::new()
            .section::<QemuPlan>()
            .load(path)?
            .settings
            .store
            .clone(),
        None => None,
    };
    let dir = args
        .store
        .clone()
        .or_else(|| settings.as_ref().map(|s| s.path.clone()))
        .unwrap_or_else(|| args.out.join("store"));
    let remote = args
        .remote
        .clone()
        .or_else(|| settings.as_ref().and_then(|s| s.remote.clone()));
    let remote_url = || -> anyhow::Result<String> {
        remote.clone().ok_or_else(|| {
            anyhow!(
                "no remote: give --remote s3://bucket/prefix (or file:///dir), or a --plan whose \
                 [store] has `remote`"
            )
        })
    };
    match args.command {
        StoreCommand::Ls(ls) => list(&read_store(&dir)?, ls),
        // Through a remote, a blob read is kept locally: a writable store.
        StoreCommand::Cat { id } => cat(&reader(&dir, &remote)?, &id),
        StoreCommand::Get { id, output } => get(&reader(&dir, &remote)?, &id, output),
        StoreCommand::Verify { repair } => verify(&writer_if(&dir, repair)?, repair),
        StoreCommand::Gc { dry_run } => gc(&writer_if(&dir, !dry_run)?, dry_run),
        StoreCommand::Retention(r) => {
            let rules = retention_rules(&r, settings.and_then(|s| s.retention))?;
            retention(&writer_if(&dir, !r.dry_run)?, &r, &rules)
        }
        StoreCommand::Stats { json } => stats(&read_store(&dir)?, json),
        StoreCommand::Export(e) => export(&read_store(&dir)?, e),
        StoreCommand::Import { bundle } => {
            let store = open_or_create(&dir)?;
            let s = store
                .import_bundle(&bundle)
                .map_err(|e| explain(e, None))
                .with_context(|| format!("cannot import {}", bundle.display()))?;
            println!(
                "imported {}: {} records added, {} already there; {} blobs ({} already stored)",
                bundle.display(),
                s.records_added,
                s.records_skipped,
                s.blobs,
                s.blobs_deduplicated
            );
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Push { runs } => {
            let url = remote_url()?;
            let store = open_existing_store(&dir)?.with_remote(connect_remote(&url)?);
            let runs: Vec<String> = if runs.is_empty() {
                let all = store.query(&Query::new().include_evicted(true))?;
                all.into_iter()
                    .map(|r| r.run_id)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            } else {
                runs
            };
            let (mut records, mut blobs) = (0, 0);
            for run in &runs {
                let r = store
                    .push_run(run)
                    .map_err(|e| explain(e, None))
                    .with_context(|| format!("cannot push run {run} to {url}"))?;
                if r.records == 0 {
                    anyhow::bail!(
                        "run {run} has no records in {}: list runs with `qorch store ls`",
                        dir.display()
                    );
                }
                records += r.records;
                blobs += r.blobs_uploaded;
            }
            println!(
                "pushed {} runs to {url}: {records} records, {blobs} blobs uploaded (the others \
                 were there)",
                runs.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Pull => {
            let url = remote_url()?;
            let store = open_or_create(&dir)?.with_remote(connect_remote(&url)?);
            let p = store
                .pull_records()
                .with_context(|| format!("cannot pull the records of {url}"))?;
            println!(
                "pulled from {url} into {}: {} record objects read, {} records added, {} \
                 records marked evicted",
                dir.display(),
                p.objects_read,
                p.records_added,
                p.records_evicted
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The store for `cat` and `get`: read-only, or through `remote` (whose blobs are kept).
fn reader(dir: &Path, remote: &Option<String>) -> anyhow::Result<ArtifactStore> {
    Ok(match remote {
        Some(url) => open_existing_store(dir)?.with_remote(connect_remote(url)?),
        None => read_store(dir)?,
    })
}

/// The store, writable only when the command changes it.
fn writer_if(dir: &Path, writes: bool) -> anyhow::Result<ArtifactStore> {
    if writes {
        open_existing_store(dir)
    } else {
        read_store(dir)
    }
}

/// A store to write into: an existing one, or a new one in a missing or empty directory.
fn open_or_create(dir: &Path) -> anyhow::Result<ArtifactStore> {
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if !is_store(dir) && !empty {
        anyhow::bail!(
            "{} is not an artifact store (no LAYOUT file) and not empty: name a store's \
             directory, or a new one, with --store DIR",
            dir.display()
        );
    }
    ArtifactStore::open(dir)
        .with_context(|| format!("cannot open the artifact store {}", dir.display()))
}

/// A store error, with what to do about it.
fn explain(e: artifact_store::Error, id: Option<&str>) -> anyhow::Error {
    use artifact_store::Error as E;
    let about = id.map(|i| format!("artifact {i}: ")).unwrap_or_default();
    match &e {
        E::MissingBlob { .. } => anyhow!(
            "{about}{e}\n  help: a store that pulled its records reads blobs through its remote: \
             give --remote URL; otherwise run `qorch store verify --repair` (the record stays, \
             marked evicted)"
        ),
        E::Corrupt { .. } => anyhow!(
            "{about}{e}\n  help: run `qorch store verify --repair` to move damaged blobs aside \
             (their records stay, marked evicted)"
        ),
        E::NotFound { .. } => anyhow!("{e}\n  help: list artifact ids with `qorch store ls`"),
        E::Evicted { .. } => anyhow!(
            "{e}\n  help: its record stays (`qorch store ls --evicted`); the content is gone"
        ),
        _ => anyhow::Error::new(e),
    }
}

impl Filters {
    /// Applies one `key=value` query term.
    fn term(&mut self, term: &str) -> anyhow::Result<()> {
        let (key, value) = term.split_once('=').ok_or_else(|| {
            anyhow!("query term `{term}` is not `key=value` (test=, run=, kind=, ...)")
        })?;
        let value = value.to_owned();
        match key {
            "test" => self.test = Some(value),
            "run" => self.run = Some(value),
            "kind" => self.kind = Some(value),
            "arch" => self.arch = Some(value),
            "outcome" => self.outcome = Some(value),
            "since" => self.since = Some(value),
            "until" => self.until = Some(value),
            _ => match key.strip_prefix("meta.") {
                Some(k) if !k.is_empty() => self.meta.push(format!("{k}={value}")),
                _ => anyhow::bail!(
                    "query term `{term}`: unknown key `{key}` (test, run, kind, arch, outcome, \
                     since, until, meta.KEY)"
                ),
            },
        }
        Ok(())
    }

    fn query(&self) -> anyhow::Result<Query> {
        let mut q = Query::new().include_evicted(self.evicted);
        if let Some(t) = &self.test {
            q = q.test(t.as_str());
        }
        if let Some(r) = &self.run {
            q = q.run(r.as_str());
        }
        if let Some(k) = &self.kind {
            let kind: ArtifactKind = k.parse().map_err(|_| {
                anyhow!(
                    "unknown kind `{k}`: one of {}",
                    ArtifactKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })?;
            q = q.kind(kind);
        }
        if let Some(a) = &self.arch {
            q = q.arch(a.as_str());
        }
        if let Some(o) = &self.outcome {
            let outcome: TestOutcome = o.parse().map_err(|_| {
                anyhow!(
                    "unknown outcome `{o}`: one of {}",
                    TestOutcome::ALL.map(|o| o.as_str()).join(", ")
                )
            })?;
            q = q.outcome(outcome);
        }
        if let Some(s) = &self.since {
            q = q.since(parse_time(s, "--since")?);
        }
        if let Some(u) = &self.until {
            q = q.until(parse_time(u, "--until")?);
        }
        for m in &self.meta {
            let (k, v) = m
                .split_once('=')
                .ok_or_else(|| anyhow!("--meta `{m}` is not `key=value`"))?;
            q = q.meta(k, v);
        }
        Ok(q)
    }
}

/// RFC 3339, or an age before now (`2d`, `90m`).
fn parse_time(text: &str, what: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(text).map_err(|e| {
        anyhow!(
            "{what} `{text}`: neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age \
             (2d, 6h): {e}"
        )
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(age).context("age too large")?)
}

fn list(store: &ArtifactStore, args: LsArgs) -> anyhow::Result<ExitCode> {
    let mut q = args.filters.query()?.newest_first(args.newest);
    if !args.all {
        // One more than asked: to say that there are more.
        q = q.limit(args.limit.saturating_add(1));
    }
    let mut records = store.query(&q).map_err(|e| explain(e, None))?;
    let more = !args.all && records.len() as u64 > args.limit;
    if more {
        records.truncate(args.limit as usize);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &records)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "id", "test", "run", "kind", "name", "size", "arch", "outcome", "created",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.test_id.clone(),
                r.run_id.clone(),
                r.kind.to_string(),
                r.name.clone(),
                if r.evicted.is_some() {
                    format!("{} (evicted)", bytes(r.raw_size))
                } else {
                    bytes(r.raw_size)
                },
                r.arch.clone().unwrap_or_else(|| "-".into()),
                r.outcome.map_or("-", |o| o.as_str()).to_owned(),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    table(&mut out, &header, &rows)?;
    if more {
        writeln!(
            out,
            "(first {} records, {} first; --limit N or --all for more)",
            args.limit,
            if args.newest { "newest" } else { "oldest" }
        )?;
    } else if records.is_empty() {
        writeln!(out, "no matching records")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &mut header.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn cat(store: &ArtifactStore, id: &str) -> anyhow::Result<ExitCode> {
    let len = store
        .record_of(id)
        .map_err(|e| explain(e, Some(id)))?
        .raw_size;
    if let Some(mut pieces) = store
        .open_range(id, 0..len)
        .map_err(|e| explain(e, Some(id)))?
    {
        // Each piece verified before it is written: no temp copy of a large blob.
        let mut out = std::io::stdout().lock();
        let mut buf = Vec::new();
        while let Some(r) = pieces.next_into(&mut buf) {
            r.map_err(|e| explain(e, Some(id)))?;
            match out.write_all(&buf) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                other => other?,
            }
        }
        let _ = out.flush();
        return Ok(ExitCode::SUCCESS);
    }
    // Into an unnamed temp file first: only content that verified reaches stdout.
    let mut tmp = tempfile::tempfile().context("cannot create a temporary file")?;
    store
        .read_to(id, &mut tmp)
        .map_err(|e| explain(e, Some(id)))?;
    tmp.rewind()?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = tmp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match out.write_all(&buf[..n]) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            other => other?,
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

fn get(store: &ArtifactStore, id: &str, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let record = store.record_of(id).map_err(|e| explain(e, Some(id)))?;
    let dest = match output {
        Some(p) => p,
        None => {
            let name = Path::new(&record.name)
                .file_name()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("artifact {id} has no file name: give -o FILE"))?;
            if name.exists() {
                anyhow::bail!(
                    "{} exists: give -o FILE to choose where artifact {id} goes",
                    name.display()
                );
            }
            name
        }
    };
    let n = store
        .get_to_file(id, &dest)
        .map_err(|e| explain(e, Some(id)))?;
    println!(
        "{}: {} ({}, verified {})",
        dest.display(),
        bytes(n),
        record.name,
        record.digest
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(store: &ArtifactStore, repair: bool) -> anyhow::Result<ExitCode> {
    let r = store
        .verify(VerifyOptions { repair })
        .map_err(|e| explain(e, None))?;
    println!(
        "{}: {} blobs checked",
        store.root().display(),
        r.blobs_checked
    );
    for c in &r.corrupt {
        println!(
            "corrupt blob {} at {} ({}); artifacts: {}",
            c.digest,
            c.path.display(),
            c.detail,
            c.artifacts.join(", ")
        );
    }
    for m in &r.missing {
        println!("missing blob {} of artifact {}", m.digest, m.artifact);
    }
    for o in &r.orphans {
        println!("orphan blob {o} (no record needs it)");
    }
    for s in &r.stray_files {
        println!("stray file {}", s.display());
    }
    if r.trees_written > 0 {
        println!(
            "trees written for {} blobs of 256 KiB or more (written by an earlier version, or \
             with a damaged tree): their downloads now stream, their ranges verify alone",
            r.trees_written
        );
    }
    if r.trees_missing > r.trees_written {
        println!(
            "{} blobs of 256 KiB or more have no tree (written by an earlier version, or a \
             damaged tree): they are verified whole before use; `qorch store verify --repair` \
             writes their trees",
            r.trees_missing - r.trees_written
        );
    }
    if r.is_clean() {
        println!("the store is intact");
        return Ok(ExitCode::SUCCESS);
    }
    if repair {
        println!(
            "repaired: corrupt blobs and stray files moved to {}, orphans collected; the records \
             of damaged artifacts stay, marked evicted (`blob corrupt`, `blob missing`)",
            store.root().join("quarantine").display()
        );
    } else {
        println!("the store is damaged: run `qorch store verify --repair`");
    }
    Ok(ExitCode::FAILURE)
}

fn gc(store: &ArtifactStore, dry_run: bool) -> anyhow::Result<ExitCode> {
    let r = store
        .gc(&GcOptions {
            dry_run,
            ..GcOptions::default()
        })
        .map_err(|e| explain(e, None))?;
    println!(
        "{} {} blobs ({}), {} temp files; {} blobs kept",
        if dry_run { "would remove" } else { "removed" },
        r.blobs_removed,
        bytes(r.bytes_removed),
        r.temp_files_removed,
        r.blobs_kept
    );
    Ok(ExitCode::SUCCESS)
}

/// The rules of `store retention`: the flags when any is given, else the plan's.
fn retention_rules(
    r: &RetentionArgs,
    plan: Option<RetentionPlan>,
) -> anyhow::Result<RetentionPlan> {
    let age = |v: &Option<String>, flag: &str| -> anyhow::Result<Option<Duration>> {
        v.as_ref()
            .map(|t| {
                humantime::parse_duration(t).map_err(|e| anyhow!("{flag} `{t}`: not an age: {e}"))
            })
            .transpose()
    };
    let mut rules = RetentionPlan::default();
    rules.max_age = age(&r.max_age, "--max-age")?;
    rules.keep_last_runs = r.keep_last_runs;
    if r.keep_last_runs == Some(0) {
        anyhow::bail!("--keep-last-runs must be at least 1");
    }
    rules.max_total_size = r
        .max_total_size
        .as_ref()
        .map(|s| parse_size(s))
        .transpose()?;
    rules.keep_failures_for = age(&r.keep_failures_for, "--keep-failures-for")?;
    rules.keep_passes_for = age(&r.keep_passes_for, "--keep-passes-for")?;
    rules.first_failure_after_pass = r.first_failure_after_pass;
    rules.last_passing_run = r.last_passing_run;
    rules.pin_runs = r.pin_runs.clone();
    rules.pin_tags = r.pin_tags.clone();
    if rules != RetentionPlan::default() {
        return Ok(rules);
    }
    plan.ok_or_else(|| {
        anyhow!(
            "no retention rules: give some (--keep-last-runs N, --max-age 30d, --max-total-size \
             10GiB, ...) or a --plan with a [store.retention] table"
        )
    })
}

/// `1234`, `10GiB`, `500 MB`, `2k`.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("size `{text}`: expected a number and a unit (10GiB, 500MB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => anyhow::bail!("size `{text}`: unknown unit `{u}` (B, KB, KiB, MB, MiB, GB, GiB, TB)"),
    };
    Ok((n * mult as f64) as u64)
}

fn retention(
    store: &ArtifactStore,
    args: &RetentionArgs,
    rules: &RetentionPlan,
) -> anyhow::Result<ExitCode> {
    let plan = store
        .plan_retention(&rules.policy(), Utc::now())
        .map_err(|e| explain(e, None))?;
    let mut out = std::io::stdout().lock();
    let removed = plan.removed().count();
    let freed: u64 = plan.removed().map(|d| d.stored_size).sum();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "dry_run": args.dry_run,
                "decisions": plan.decisions.iter().map(|d| serde_json::json!({
                    "artifact": d.artifact,
                    "test_id": d.test_id,
                    "run_id": d.run_id,
                    "kind": d.kind,
                    "stored_size": d.stored_size,
                    "keep": d.keep,
                    "reason": d.reason,
                })).collect::<Vec<_>>(),
            }),
        )?;
        writeln!(out)?;
    } else {
        let rows: Vec<[String; 7]> = plan
            .decisions
            .iter()
            .map(|d| {
                [
                    if d.keep { "keep" } else { "remove" }.to_owned(),
                    d.artifact.clone(),
                    d.test_id.clone(),
                    d.run_id.clone(),
                    d.kind.to_string(),
                    bytes(d.stored_size),
                    d.reason.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["decision", "id", "test", "run", "kind", "stored", "reason"],
            &rows,
        )?;
        writeln!(
            out,
            "{} artifacts: {} kept, {removed} {} ({} stored)",
            plan.decisions.len(),
            plan.decisions.len() - removed,
            if args.dry_run {
                "would be removed"
            } else {
                "removed"
            },
            bytes(freed)
        )?;
    }
    if !args.dry_run {
        let outcome = store.apply_retention(&plan).map_err(|e| explain(e, None))?;
        if !args.json {
            writeln!(
                out,
                "{} records evicted (records stay, marked evicted); {} blobs ({}) collected",
                outcome.records_evicted,
                outcome.gc.blobs_removed,
                bytes(outcome.gc.bytes_removed)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(store: &ArtifactStore, json: bool) -> anyhow::Result<ExitCode> {
    let s = store.stats().map_err(|e| explain(e, None))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "store {}", store.root().display())?;
    writeln!(
        out,
        "records: {} live, {} evicted; blobs: {}",
        s.live_records, s.evicted_records, s.blobs
    )?;
    writeln!(
        out,
        "bytes: {} logical, {} unique (dedup {:.2}x), {} stored (compression {:.2}x)",
        bytes(s.logical_bytes),
        bytes(s.unique_bytes),
        s.dedup_ratio(),
        bytes(s.stored_bytes),
        s.compression_ratio()
    )?;
    let rows = |m: &std::collections::BTreeMap<String, artifact_store::Usage>| {
        m.iter()
            .map(|(k, u)| [k.clone(), u.records.to_string(), bytes(u.raw_bytes)])
            .collect::<Vec<_>>()
    };
    writeln!(out, "\nby kind:")?;
    table(&mut out, &["kind", "records", "bytes"], &rows(&s.by_kind))?;
    writeln!(out, "\nby test:")?;
    table(&mut out, &["test", "records", "bytes"], &rows(&s.by_test))?;
    Ok(ExitCode::SUCCESS)
}

fn export(store: &ArtifactStore, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut filters = args.filters.clone();
    for t in &args.terms {
        filters.term(t)?;
    }
    let q = filters.query()?;
    let matching: Vec<ArtifactRecord> = store.query(&q).map_err(|e| explain(e, None))?;
    if matching.is_empty() {
        anyhow::bail!("no artifacts match the query: nothing to export (see `qorch store ls`)");
    }
    let s = store
        .export_bundle(&q, &args.output)
        .map_err(|e| explain(e, None))
        .with_context(|| format!("cannot export to {}", args.output.display()))?;
    println!(
        "exported {} records, {} blobs ({}) to {}",
        s.records,
        s.blobs,
        bytes(s.bytes),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
