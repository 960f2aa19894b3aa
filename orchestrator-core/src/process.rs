//! [`ProcessRunner`]: runs a test as host processes in a process group of its own.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::case::{Command, TestCase};
use crate::output::BoundedCapture;
use crate::result::{ArtifactFile, Outcome, Phase, PhaseTiming, TestResult};
use crate::runner::{ExecutionContext, RunnerError, TestRunner};

/// Settings of [`ProcessRunner`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProcessRunnerConfig {
    /// How long a test's process group gets between SIGTERM and SIGKILL when it is stopped.
    pub kill_grace: Duration,
    /// How long to wait for output pipes to close after the process group is gone (a process
    /// that left the group with `setsid` can hold them open).
    pub pipe_drain: Duration,
}

impl Default for ProcessRunnerConfig {
    fn default() -> Self {
        ProcessRunnerConfig {
            kill_grace: Duration::from_secs(5),
            pipe_drain: Duration::from_secs(2),
        }
    }
}

/// Runs each test as a host process (a program, or a shell script) in its own process group.
///
/// The test's working directory is `<scratch>/work`, where its files are placed; its
/// environment has the case's variables plus `ORCH_TEST_ID`, `ORCH_RUN_ID`, `ORCH_ATTEMPT`,
/// `ORCH_WORK_DIR` and `ORCH_ARTIFACT_DIR` (files written there are collected as artifacts, as
/// are files in the working directory matching the case's artifact globs).
///
/// A test whose stdout holds KTAP or TAP (from its version line on) gets each of its cases as a
/// [subtest](crate::Subtest) ([`crate::ktap::subtests_of`]); a failed case fails the test.
///
/// On timeout or cancellation the whole process group is stopped in stages: SIGTERM, then
/// SIGKILL after [`ProcessRunnerConfig::kill_grace`], so no grandchild survives. Processes a
/// test leaves behind after it exits are stopped the same way.
#[derive(Clone, Debug, Default)]
pub struct ProcessRunner {
    config: ProcessRunnerConfig,
}

impl ProcessRunner {
    /// A runner with the given settings.
    pub fn new(config: ProcessRunnerConfig) -> Self {
        ProcessRunner { config }
    }

    /// Its settings.
    pub fn config(&self) -> &ProcessRunnerConfig {
        &self.config
    }
}

const NAME: &str = "process";

#[async_trait]
impl TestRunner for ProcessRunner {
    fn name(&self) -> &str {
        NAME
    }

    fn check(&self, case: &TestCase) -> Result<(), RunnerError> {
        unsupported(case).map_err(RunnerError::config)
    }

    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let mut result = TestResult::new(case, NAME, Outcome::Passed);
        result.environment.insert("runner".into(), NAME.into());
        result
            .environment
            .insert("command".into(), case.command.describe());

        // Setup: directories, files, the script.
        let setup_start = Utc::now();
        let work = ctx.scratch_dir().join("work");
        let artifacts = ctx.artifact_dir();
        for dir in [&work, &artifacts] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                RunnerError::with_source(format!("failed to create {}", dir.display()), e)
            })?;
        }
        for file in &case.files {
            check_relative(&file.dest).map_err(RunnerError::new)?;
            let (source, dest) = (file.source.clone(), work.join(&file.dest));
            tokio::task::spawn_blocking(move || copy_tree(&source, &dest))
                .await
                .map_err(|e| RunnerError::with_source("copying test files panicked", e))?
                .map_err(RunnerError::new)?;
        }
        let (program, args) = match &case.command {
            Command::Exec { program, args } => (program.clone(), args.clone()),
            Command::Script { shell, body } => {
                let script = ctx.scratch_dir().join("test-script.sh");
                tokio::fs::write(&script, body).await.map_err(|e| {
                    RunnerError::with_source(format!("failed to write {}", script.display()), e)
                })?;
                let mut argv = shell.clone();
                if argv.is_empty() {
                    argv = Command::default_shell();
                }
                let program = argv.remove(0);
                argv.push(script.to_string_lossy().into_owned());
                (program, argv)
            }
        };
        result.end_phase(Phase::Setup, setup_start);

        // Test.
        let test_start = Utc::now();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .current_dir(&work)
            .envs(&case.env)
            .env("ORCH_TEST_ID", case.id.as_str())
            .env("ORCH_RUN_ID", ctx.run_id())
            .env("ORCH_ATTEMPT", ctx.attempt().to_string())
            .env("ORCH_WORK_DIR", &work)
            .env("ORCH_ARTIFACT_DIR", &artifacts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            RunnerError::with_source(
                format!("failed to start `{program}` for test {}", case.id),
                e,
            )
        })?;
        let pid = child
            .id()
            .ok_or_else(|| RunnerError::new("the test process exited before its pid was read"))?;
        let pgid = Pid::from_raw(pid as i32);
        ctx.process_started(pid, "test");
        tracing::debug!(pid, command = %case.command.describe(), "test process started");
        result.environment.insert("pgid".into(), pid.to_string());

        let limit = ctx.output_limit();
        let stdout = spawn_capture(child.stdout.take(), limit);
        let stderr = spawn_capture(child.stderr.take(), limit);

        let (deadline, by_run) = ctx.deadline_after(case.timeout);
        enum End {
            Exited(ExitStatus),
            TimedOut,
            Cancelled,
        }
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => End::Exited(status),
                Err(e) => {
                    let _ = stop_group(&mut child, pgid, self.config.kill_grace).await;
                    return Err(RunnerError::with_source("failed to wait for the test process", e));
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => End::TimedOut,
            () = ctx.cancel_token().cancelled() => End::Cancelled,
        };
        let test_end = Utc::now();
        let mut notes = Vec::new();
        match end {
            End::Exited(status) => {
                result.outcome = outcome_of(status);
            }
            End::TimedOut => {
                let stop = stop_group(&mut child, pgid, self.config.kill_grace).await;
                let ran_for = (test_end - test_start).to_std().unwrap_or_default();
                let (outcome, why) = Outcome::test_timed_out(case.timeout, ran_for, by_run);
                result.outcome = outcome;
                notes.push(format!("{why}; {}", stop.describe(pid)));
            }
            End::Cancelled => {
                let stop = stop_group(&mut child, pgid, self.config.kill_grace).await;
                result.outcome = Outcome::Cancelled;
                notes.push(format!("the run was cancelled; {}", stop.describe(pid)));
            }
        }
        result.phases.push(PhaseTiming {
            phase: Phase::Test,
            started_at: test_start,
            finished_at: test_end,
        });

        // Teardown: leftovers, output, artifacts.
        let teardown_start = Utc::now();
        if group_has_live_members(pgid) {
            let stop = stop_group(&mut child, pgid, self.config.kill_grace).await;
            notes.push(format!(
                "the test left processes running; {}",
                stop.describe(pid)
            ));
        }
        let (out, out_cut) = finish_capture(stdout, self.config.pipe_drain).await;
        let (err, err_cut) = finish_capture(stderr, self.config.pipe_drain).await;
        if out_cut || err_cut {
            notes.push(
                "a process outside the test's process group kept its output open; capture stopped"
                    .into(),
            );
        }
        result.stdout = out;
        result.stderr = err;
        if result.stdout.is_truncated() || result.stderr.is_truncated() {
            notes.push(format!(
                "output truncated to {limit} bytes per stream (stdout {} of {} bytes kept, stderr {} of {})",
                result.stdout.total_bytes - result.stdout.truncated_bytes,
                result.stdout.total_bytes,
                result.stderr.total_bytes - result.stderr.truncated_bytes,
                result.stderr.total_bytes
            ));
        }
        // A test that prints KTAP or TAP (with its version line) reports its own cases.
        if let Some((subtests, suites, summary)) = crate::ktap::cases_of(&result.stdout.text) {
            result.subtests = subtests;
            result.suites = suites;
            notes.push(summary);
        }
        let work2 = work.clone();
        let artifacts2 = artifacts.clone();
        let globs = case.artifacts.clone();
        let collected =
            tokio::task::spawn_blocking(move || collect_artifacts(&work2, &artifacts2, &globs))
                .await
                .map_err(|e| RunnerError::with_source("artifact collection panicked", e))?
                .map_err(|e| RunnerError::new(format!("failed to collect artifacts: {e}")))?;
        result.artifacts = collected;
        result.end_phase(Phase::Teardown, teardown_start);
        result.finish(setup_start, &notes);
        Ok(result)
    }
}

/// What the process runner cannot give `case`, with the fix.
fn unsupported(case: &TestCase) -> Result<(), String> {
    if let Some(kernel) = &case.requirements.kernel {
        return Err(format!(
            "it needs kernel {} but the process runner runs on the host: remove `kernel` or use a VM runner",
            kernel.display()
        ));
    }
    if let Some(rootfs) = &case.requirements.rootfs {
        return Err(format!(
            "it needs root file system {} but the process runner runs on the host: remove `rootfs` or use a VM runner",
            rootfs.display()
        ));
    }
    if !case.requirements.modules.is_empty() {
        return Err(format!(
            "it needs kernel modules ({}) but the process runner runs on the host: remove `modules` or use a VM runner",
            case.requirements.modules.join(", ")
        ));
    }
    if let Some(dir) = &case.requirements.modules_dir {
        return Err(format!(
            "it needs the kernel modules of {} but the process runner runs on the host: remove `modules-dir` or use a VM runner",
            dir.display()
        ));
    }
    if case.trace.is_some() {
        return Err(
            "it asks for kernel tracing, which the process runner cannot give: remove `trace` or use a VM runner"
                .to_owned(),
        );
    }
    if let Some(arch) = case.requirements.arch
        && Some(arch) != crate::Arch::host()
    {
        return Err(format!(
            "it needs architecture {arch} but this host is {}: remove `arch` or use a VM runner",
            std::env::consts::ARCH
        ));
    }
    if let Command::Exec { program, .. } = &case.command
        && !program.contains('/')
        && which::which(program).is_err()
    {
        return Err(format!(
            "program `{program}` is not in PATH: install it or give its full path"
        ));
    }
    if let Some(shell) = match &case.command {
        Command::Script { shell, .. } => shell.first(),
        _ => None,
    } && !shell.contains('/')
        && which::which(shell).is_err()
    {
        return Err(format!(
            "shell `{shell}` is not in PATH: install it or set `shell` to one that exists"
        ));
    }
    for file in &case.files {
        if !file.source.exists() {
            return Err(format!(
                "file {} to place beside the test does not exist: fix its path",
                file.source.display()
            ));
        }
        check_relative(&file.dest)?;
    }
    Ok(())
}

fn check_relative(dest: &Path) -> Result<(), String> {
    if dest.as_os_str().is_empty()
        || dest
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "destination {} must be a relative path inside the working directory, without `..`",
            dest.display()
        ));
    }
    Ok(())
}

fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Passed,
        (code, signal) => Outcome::Failed {
            exit_code: code,
            signal,
        },
    }
}

fn spawn_capture<R>(reader: Option<R>, limit: usize) -> JoinHandle<BoundedCapture>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut capture = BoundedCapture::new(limit);
        if let Some(reader) = reader {
            // A read error ends the capture; what was read is kept.
            let _ = capture.read_to_end(reader).await;
        }
        capture
    })
}

/// Waits for a capture task; if the pipe stays open past `drain`, returns what was read so far
/// is lost with the task, so report it as cut.
async fn finish_capture(
    task: JoinHandle<BoundedCapture>,
    drain: Duration,
) -> (crate::CapturedOutput, bool) {
    let abort = task.abort_handle();
    match tokio::time::timeout(drain, task).await {
        Ok(Ok(capture)) => (capture.finish(), false),
        Ok(Err(_)) => (crate::CapturedOutput::default(), true),
        Err(_) => {
            abort.abort();
            (
                crate::CapturedOutput {
                    text: "[output lost: the pipe was held open by an escaped process]\n".into(),
                    ..Default::default()
                },
                true,
            )
        }
    }
}

/// What stopping a process group took.
#[derive(Debug, Default)]
struct StopReport {
    term_sent: bool,
    kill_sent: bool,
    survivors: bool,
    grace: Duration,
}

impl StopReport {
    fn describe(&self, pgid: u32) -> String {
        match (self.term_sent, self.kill_sent, self.survivors) {
            (false, _, _) => format!("process group {pgid} had already ended"),
            (true, false, _) => format!("process group {pgid} stopped with SIGTERM"),
            (true, true, false) => format!(
                "process group {pgid} ignored SIGTERM for {} and was stopped with SIGKILL",
                humantime::format_duration(self.grace)
            ),
            (true, true, true) => format!(
                "process group {pgid} still has processes after SIGKILL (uninterruptible sleep?)"
            ),
        }
    }
}

/// Stops a process group in stages: SIGTERM, up to `grace` for it to end, then SIGKILL. Reaps
/// the leader along the way so that its zombie does not count as a live member.
async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) -> StopReport {
    let mut report = StopReport {
        grace,
        ..StopReport::default()
    };
    if !group_has_live_members(pgid) && !leader_running(child) {
        let _ = child.try_wait();
        return report;
    }
    report.term_sent = killpg(pgid, Signal::SIGTERM).is_ok();
    if wait_group_gone(child, pgid, grace).await {
        return report;
    }
    report.kill_sent = killpg(pgid, Signal::SIGKILL).is_ok();
    report.survivors = !wait_group_gone(child, pgid, Duration::from_secs(5)).await;
    report
}

fn leader_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

async fn wait_group_gone(child: &mut Child, pgid: Pid, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leader = leader_running(child);
        if !leader && !group_has_live_members(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether any process in group `pgid` is alive (zombies do not count).
fn group_has_live_members(pgid: Pid) -> bool {
    if let Err(Errno::ESRCH) = killpg(pgid, None) {
        return false;
    }
    // The group exists; it may hold only zombies (reparented orphans waiting for init to reap
    // them), which signals do not stop. Look for a member that is not one.
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat_state_pgrp(&stat)
            && pgrp == pgid.as_raw()
            && state != 'Z'
            && state != 'X'
        {
            return true;
        }
    }
    false
}

/// Parses the state and process group out of `/proc/<pid>/stat`.
fn parse_stat_state_pgrp(stat: &str) -> Option<(char, i32)> {
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Copies a file, or a directory with everything in it, to `dest`.
fn copy_tree(source: &Path, dest: &Path) -> Result<(), String> {
    for entry in walkdir::WalkDir::new(source).follow_links(true) {
        let entry = entry.map_err(|e| format!("failed to read {}: {e}", source.display()))?;
        let rel = entry
            .path()
            .strip_prefix(source)
            .map_err(|e| e.to_string())?;
        let target = if rel.as_os_str().is_empty() {
            dest.to_owned()
        } else {
            dest.join(rel)
        };
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("failed to create {}: {e}", target.display()))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
            }
            std::fs::copy(entry.path(), &target).map_err(|e| {
                format!(
                    "failed to copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Copies files in `work` matching `globs` into `artifacts` (keeping their relative paths),
/// then lists everything in `artifacts`.
fn collect_artifacts(
    work: &Path,
    artifacts: &Path,
    globs: &[String],
) -> Result<Vec<ArtifactFile>, String> {
    if !globs.is_empty() {
        let mut builder = globset::GlobSetBuilder::new();
        for g in globs {
            let glob = globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("invalid artifact glob `{g}`: {e}"))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|e| format!("invalid artifact globs: {e}"))?;
        for entry in walkdir::WalkDir::new(work).follow_links(false) {
            let entry = entry.map_err(|e| e.to_string())?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(work).map_err(|e| e.to_string())?;
            if set.is_match(rel) {
                let dest = artifacts.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
                }
                std::fs::copy(entry.path(), &dest).map_err(|e| {
                    format!(
                        "failed to copy {} to {}: {e}",
                        entry.path().display(),
                        dest.display()
                    )
                })?;
            }
        }
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(artifacts)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| e.to_string())?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel: PathBuf = entry
            .path()
            .strip_prefix(artifacts)
            .map_err(|e| e.to_string())?
            .to_owned();
        let size = entry.metadata().map_err(|e| e.to_string())?.len();
        out.push(ArtifactFile::new(rel.to_string_lossy(), entry.path(), size));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_names() {
        let stat = "1234 (a) b (c)) S 1 777 777 0 -1 4194560 ...";
        assert_eq!(parse_stat_state_pgrp(stat), Some(('S', 777)));
    }

    #[test]
    fn destinations_must_stay_inside() {
        assert!(check_relative(Path::new("a/b.txt")).is_ok());
        assert!(check_relative(Path::new("../x")).is_err());
        assert!(check_relative(Path::new("/etc/x")).is_err());
        assert!(check_relative(Path::new("")).is_err());
    }
}
