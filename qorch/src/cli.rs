//! The command line: subcommands, logging, the async runtime and exit codes.
//!
//! Exit codes: `run` and `merge` end with the run's status (0 every test succeeded, 1 a test
//! failed, 125 a test could not be judged, 130 interrupted); every command ends with 2 when it
//! could not do its work (a bad plan, bad arguments, a directory that is not a store, an
//! unknown id) and 1 when a check it made failed (`store verify` finding damage).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run kernel test plans in QEMU guests and host processes, and keep their artifacts.
#[derive(Debug, Parser)]
#[command(name = "qorch", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test plan (or one shard of it): progress, a summary table, and JUnit XML, JSON
    /// and HTML reports in `<out>/runs/<run id>/` (`<out>/latest` points to the newest).
    Run(crate::run::RunArgs),
    /// Merge the reports of a sharded campaign's workers into one report.
    Merge(crate::run::MergeArgs),
    /// Install QEMU and the stock Debian guest images (kernels and busybox) the QEMU runner
    /// boots: says what it will install and where, shows progress; does nothing when they are
    /// there and verify.
    Provision(crate::provision::ProvisionArgs),
    /// The runs the store recorded, newest first.
    Runs(crate::history::RunsArgs),
    /// A test's outcomes, durations and resource figures over the stored runs.
    History(crate::history::HistoryArgs),
    /// Compare runs (or sets of runs): tests whose outcome changed, and resource regressions
    /// judged against the noise band; exits 1 on a regression.
    Compare(crate::history::CompareArgs),
    /// Write a run in KernelCI's KCIDB schema.
    ExportKcidb(crate::history::ExportKcidbArgs),
    /// Record reports written elsewhere or by an earlier version in the store, for `runs`,
    /// `history` and `compare`.
    ImportReport(crate::history::ImportReportArgs),
    /// Serve the store's runs, results, history, artifacts and metrics over a read-only HTTP
    /// API (`/api/v1/...`, `/metrics`), on loopback unless a token is set.
    Serve(crate::serve::ServeArgs),
    /// Inspect and maintain the artifact store: list, read, verify, collect, bundle, share.
    Store(crate::store::StoreArgs),
}

/// The `qorch` binary: parses the process's arguments and runs the command.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs `qorch` with `args` (the first is the program name), as the binary would.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => crate::run::run(args).await,
            Command::Merge(args) => crate::run::merge(args),
            Command::Provision(args) => crate::provision::provision(args),
            Command::Store(args) => crate::store::store(args),
            Command::Runs(args) => crate::history::runs(args),
            Command::Serve(args) => crate::serve::serve(args).await,
            Command::History(args) => crate::history::history(args),
            Command::Compare(args) => crate::history::compare(args),
            Command::ExportKcidb(args) => crate::history::export_kcidb(args),
            Command::ImportReport(args) => crate::history::import_report(args),
        }
    });
    match result {
        Ok(code) => code,
        // A reader that went away (`qorch store ls | head`) is no error.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(BrokenPipe))
    })
}

/// Sends `tracing` events to stderr, filtered by `RUST_LOG` (warnings only when it is unset or
/// names nothing valid), coloured on a terminal only. Does nothing when a subscriber is set.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
