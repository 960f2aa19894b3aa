//! The guest lifecycle every execution mode shares: start QEMU, watch the console until the
//! agent is `READY`, run the test phases (the test, then the transfer of its results), stop
//! QEMU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orchestrator_core::{
    ExecutionContext, Outcome, Phase, PhaseTiming, RunnerError, TestCase, TestResult,
};

use super::console::{
    Wait, Watch, boot_outcome, drain_after_crash, exit_outcome, humantime_secs, quote_qemu_stderr,
    stop_test, wait,
};
use super::port::ArtifactPort;
use super::{NAME, Prepared, QemuRunner, command_line};
use crate::accel::Accel;
use crate::vm::{ConsoleStats, StopReport, Vm};

/// How often the host sends `TICK` while a test runs: the guest's watcher then bounds its copy
/// of the test's output. (The guest keeps no timer of its own: a read with a timeout could drop
/// the host's `STOP`.)
const TICK: Duration = Duration::from_millis(500);

/// One test's execution as it goes: the test, its context, and the result being filled in.
pub(super) struct Run<'a> {
    pub(super) case: &'a TestCase,
    pub(super) ctx: &'a ExecutionContext,
    pub(super) result: TestResult,
    /// What the result's message will say.
    pub(super) notes: Vec<String>,
    /// When the execution began (the start of its setup).
    pub(super) setup_start: DateTime<Utc>,
}

impl<'a> Run<'a> {
    /// A run of `case` that starts now; the outcome is `Passed` until something says otherwise.
    pub(super) fn new(case: &'a TestCase, ctx: &'a ExecutionContext) -> Self {
        let result = TestResult::new(case, NAME, Outcome::Passed);
        Run {
            case,
            ctx,
            result,
            notes: Vec::new(),
            setup_start: Utc::now(),
        }
    }

    /// The finished result: the teardown phase from `teardown_start`, the notes as its message.
    pub(super) fn finish(mut self, teardown_start: DateTime<Utc>) -> TestResult {
        self.result.end_phase(Phase::Teardown, teardown_start);
        self.result.finish(self.setup_start, &self.notes);
        self.result
    }

    /// The test's artifact directory, created. (Tiny: one directory.)
    pub(super) fn artifact_dir(&self) -> Result<PathBuf, RunnerError> {
        let artifacts = self.ctx.artifact_dir();
        std::fs::create_dir_all(&artifacts).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", artifacts.display()), e)
        })?;
        Ok(artifacts)
    }

    /// Records the test phase.
    pub(super) fn test_phase(&mut self, phases: &Phases) {
        self.result.phases.push(PhaseTiming {
            phase: Phase::Test,
            started_at: phases.test_start,
            finished_at: phases.test_end,
        });
    }

    /// Records how long the results took to arrive from the test's exit, when they did
    /// (`transfer-seconds`), and when the artifact archive was unpacked on the host, if one
    /// came over the port (`artifacts-seconds`: the files, without the streams sent after them
    /// over the console).
    pub(super) fn transfer_time(
        &mut self,
        phases: &Phases,
        transfer_ok: bool,
        unpacked: Option<Instant>,
    ) {
        let Some(t) = phases.transfer_started.filter(|_| transfer_ok) else {
            return;
        };
        let env = &mut self.result.environment;
        env.insert(
            "transfer-seconds".into(),
            format!("{:.3}", t.elapsed().as_secs_f64()),
        );
        if let Some(at) = unpacked {
            env.insert(
                "artifacts-seconds".into(),
                format!("{:.3}", at.saturating_duration_since(t).as_secs_f64()),
            );
        }
    }
}

/// When the test and its transfer ran.
#[derive(Debug)]
pub(super) struct Phases {
    pub(super) test_start: DateTime<Utc>,
    pub(super) test_end: DateTime<Utc>,
    pub(super) transfer_started: Option<Instant>,
}

/// A booted guest that takes tests over its console (a session guest or a restored snapshot).
#[derive(Debug)]
pub(super) struct Guest {
    pub(super) id: u32,
    pub(super) vm: Vm,
    pub(super) watch: Watch,
    pub(super) prepared: Prepared,
    pub(super) tests: u32,
    /// The `/orch` files the agent has from the last test sent as text (empty after an
    /// archive): a `TEXT` message sends only the ones that differ.
    pub(super) known: BTreeMap<&'static str, String>,
    /// How the guest was stopped, once it was.
    pub(super) stop_report: Option<StopReport>,
    /// The guest's virtio artifact port, when it has one.
    pub(super) port: Option<ArtifactPort>,
}

impl Guest {
    /// Guest number `id`, whose agent is ready for its first test.
    /// Its artifact port is read from now on (QEMU connected to it at its start).
    pub(super) fn new(id: u32, vm: Vm, mut watch: Watch, mut prepared: Prepared) -> Self {
        watch.session_guest = true;
        let port = prepared.artifact_listener.take().map(ArtifactPort::start);
        Guest {
            port,
            id,
            vm,
            watch,
            prepared,
            tests: 0,
            known: BTreeMap::new(),
            stop_report: None,
        }
    }
}

/// How QEMU ended: see [`stop`].
pub(super) struct Stopped {
    pub(super) report: StopReport,
    pub(super) stderr: String,
    pub(super) console: ConsoleStats,
}

/// Stops QEMU in stages and reads what it left; an infrastructure error QEMU caused quotes its
/// stderr.
pub(super) async fn stop(mut vm: Vm, watch: &Watch, outcome: &mut Outcome) -> Stopped {
    let report = vm.stop().await;
    let (stderr, console) = vm.finish().await;
    quote_qemu_stderr(outcome, watch, &stderr);
    Stopped {
        report,
        stderr,
        console,
    }
}

impl QemuRunner {
    /// Starts QEMU for a prepared guest, its console kept in `console_log`.
    pub(super) fn start_vm(
        &self,
        prepared: &Prepared,
        console_log: &Path,
    ) -> Result<Vm, RunnerError> {
        Vm::start(&prepared.spec, console_log, self.config.console_log_limit).map_err(|e| {
            RunnerError::with_source(format!("failed to start {}", prepared.qemu.display()), e)
        })
    }

    /// Watches a started guest's console until its agent is `READY` (`None`), or the boot
    /// fails: the outcome and a note saying how. Records the boot phase from `boot_start`.
    pub(super) async fn await_ready(
        &self,
        vm: &mut Vm,
        prepared: &Prepared,
        boot_start: DateTime<Utc>,
        run: &mut Run<'_>,
    ) -> (Watch, Option<(Outcome, String)>) {
        let mut watch = Watch::new(
            self.output_limit(run.ctx),
            self.config.serial_artifact_limit,
        );
        let boot_limit = prepared.profile.boot_timeout_for(prepared.decision.accel);
        let (deadline, _) = run.ctx.deadline_after(boot_limit);
        let booted = wait(vm, &mut watch, deadline, run.ctx.cancel_token()).await;
        run.result.phases.push(PhaseTiming {
            phase: Phase::Boot,
            started_at: boot_start,
            finished_at: Utc::now(),
        });
        let failed = boot_outcome(
            vm,
            &mut watch,
            booted,
            boot_limit,
            &prepared.profile.console,
        )
        .await;
        match &failed {
            None => tracing::debug!(accel = %prepared.decision.accel, "guest agent ready"),
            Some((outcome, note)) => {
                tracing::debug!(outcome = %outcome.label(), note = %note, "the guest did not boot");
            }
        }
        (watch, failed)
    }

    /// The test phase (until the agent reports the exit code) and the transfer of its
    /// results, with `ACK`/`RESEND`; sets the outcome.
    pub(super) async fn run_phases(
        &self,
        vm: &mut Vm,
        watch: &mut Watch,
        run: &mut Run<'_>,
    ) -> Phases {
        let Run {
            case,
            ctx,
            result,
            notes,
            ..
        } = run;
        let (case, ctx) = (*case, *ctx);
        let cancel = ctx.cancel_token().clone();
        let started = Utc::now();
        let (deadline, by_run) = ctx.deadline_after(case.timeout);
        let test_started = Instant::now();
        // The test runs until the agent reports its exit code.
        let mut exit_code = None;
        // A test stopped at its deadline keeps that outcome, whatever its exit code then.
        let mut stopped: Option<Outcome> = None;
        let mut next_tick = test_started + TICK;
        loop {
            match wait(vm, watch, deadline.min(next_tick), &cancel).await {
                // Time to wake the guest's watcher (it bounds the guest's copy of the output);
                // a console that fails here is seen by the next wait.
                Wait::Deadline if Instant::now() < deadline => {
                    let _ = vm.send_line("TICK").await;
                    next_tick = Instant::now() + TICK;
                }
                Wait::TestExit | Wait::Done => {
                    exit_code = watch.parser.exit();
                    break;
                }
                Wait::BadRun => {
                    result.outcome =
                        Outcome::infra("the test sent to the session guest arrived damaged");
                    break;
                }
                Wait::Fatal(kind) => {
                    drain_after_crash(vm, watch).await;
                    result.outcome = Outcome::Crashed { crash: kind };
                    break;
                }
                Wait::Exited => {
                    let (outcome, note) = exit_outcome(vm, watch, "before the test finished").await;
                    result.outcome = outcome;
                    notes.push(note);
                    break;
                }
                Wait::Deadline => {
                    let (outcome, why) =
                        Outcome::test_timed_out(case.timeout, test_started.elapsed(), by_run);
                    result.outcome = outcome.clone();
                    notes.push(why);
                    // Ask the agent to stop the test and send what it wrote so far.
                    match stop_test(vm, watch, &cancel).await {
                        Ok(code) => {
                            exit_code = Some(code);
                            stopped = Some(outcome);
                        }
                        Err(why) => notes.push(why),
                    }
                    break;
                }
                Wait::Cancelled => {
                    result.outcome = Outcome::Cancelled;
                    notes.push("the run was cancelled during the test".into());
                    break;
                }
                Wait::Ready => {}
            }
        }
        let test_end = Utc::now();
        let transfer_started = Some(Instant::now());
        tracing::debug!(
            exit_code,
            outcome = %result.outcome.label(),
            elapsed_ms = test_started.elapsed().as_millis() as u64,
            "test ended"
        );
        if let Some(code) = exit_code {
            // Then the agent sends the results; a damaged transfer is asked for again.
            let (deadline, _) = ctx.deadline_after(self.config.transfer_timeout);
            let mut resends = 0;
            loop {
                match wait(vm, watch, deadline, &cancel).await {
                    Wait::Done => {
                        if watch.transfer_complete() {
                            // A session guest takes its next test (or QUIT) as the ACK.
                            if !watch.session_guest {
                                let _ = vm.send_line("ACK").await;
                            }
                            watch.delivered = true;
                            result.outcome = match watch.serious {
                                _ if stopped.is_some() => {
                                    notes.push(format!(
                                        "the test was stopped (it then exited with {code}); its output so far was collected"
                                    ));
                                    stopped.take().expect("checked")
                                }
                                Some(kind) => {
                                    notes.push(format!(
                                        "the kernel reported a problem during the test ({kind}); the test exited with {code}"
                                    ));
                                    Outcome::Crashed { crash: kind }
                                }
                                None if code == 0 => Outcome::Passed,
                                None => Outcome::Failed {
                                    exit_code: Some(code),
                                    signal: None,
                                },
                            };
                            break;
                        }
                        if resends >= self.config.max_resends {
                            result.outcome = Outcome::infra(format!(
                                "the guest's results arrived damaged {} times",
                                resends + 1
                            ));
                            break;
                        }
                        resends += 1;
                        watch.parser.reset_transfer();
                        let _ = vm.send_line("RESEND").await;
                    }
                    Wait::TestExit | Wait::Ready | Wait::BadRun => {}
                    Wait::Fatal(kind) => {
                        drain_after_crash(vm, watch).await;
                        result.outcome = Outcome::Crashed { crash: kind };
                        notes.push(format!(
                            "the kernel crashed after the test exited with {code}, while results were sent"
                        ));
                        break;
                    }
                    Wait::Exited => {
                        let when =
                            format!("after the test exited with {code}, while results were sent");
                        let (outcome, note) = exit_outcome(vm, watch, &when).await;
                        result.outcome = outcome;
                        notes.push(note);
                        break;
                    }
                    Wait::Deadline => {
                        result.outcome = Outcome::TimedOut {
                            phase: Phase::Teardown,
                            limit: self.config.transfer_timeout,
                        };
                        notes.push(format!(
                            "the test exited with {code} but its results did not arrive within {}",
                            humantime_secs(self.config.transfer_timeout)
                        ));
                        break;
                    }
                    Wait::Cancelled => {
                        result.outcome = Outcome::Cancelled;
                        notes.push("the run was cancelled while results were sent".into());
                        break;
                    }
                }
            }
            if resends > 0 {
                result
                    .environment
                    .insert("resends".into(), resends.to_string());
            }
            tracing::debug!(
                channel = "serial console",
                delivered = watch.delivered,
                bytes = watch.parser.streams().values().map(|s| s.data.len()).sum::<usize>(),
                resends,
                outcome = %result.outcome.label(),
                elapsed_ms = transfer_started.map_or(0, |t| t.elapsed().as_millis() as u64),
                "results transfer ended"
            );
        }
        Phases {
            test_start: started,
            test_end,
            transfer_started,
        }
    }
}

impl QemuRunner {
    /// Records how the guest was set up in the result's environment ([`describe_guest`]), and
    /// which kernel it booted: a provisioned (stock) kernel's Debian package
    /// (`kernel-package`, `kernel-package-version`, `kernel-distribution`), else the kernel
    /// image's BLAKE3 (`kernel-blake3`); the release (`kernel-release`) when known.
    pub(super) fn describe(&self, result: &mut TestResult, prepared: &Prepared) {
        describe_guest(result, prepared);
        let kernel = &prepared.spec.kernel;
        let env = &mut result.environment;
        let stock = {
            let guard = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().and_then(|m| {
                m.images
                    .get(&prepared.profile.arch)
                    .filter(|image| &image.kernel == kernel)
                    .cloned()
            })
        };
        match stock {
            Some(image) => {
                env.insert("kernel-package".into(), image.kernel_package);
                env.insert(
                    "kernel-package-version".into(),
                    image.kernel_package_version,
                );
                env.insert(
                    "kernel-distribution".into(),
                    format!("debian {}", image.debian_suite),
                );
                env.insert("kernel-release".into(), image.kernel_version);
            }
            None => {
                if let Some(digest) = self.kernel_digest(kernel) {
                    env.insert("kernel-blake3".into(), digest);
                }
                if let Some(release) = self.kernel_release(kernel) {
                    env.insert("kernel-release".into(), release);
                }
            }
        }
    }
}

/// Records how the guest was set up in the result's environment.
pub(super) fn describe_guest(result: &mut TestResult, prepared: &Prepared) {
    let Prepared {
        profile,
        decision,
        spec,
        ..
    } = prepared;
    let env = &mut result.environment;
    env.insert("arch".into(), profile.arch.to_string());
    env.insert("accelerator".into(), decision.accel.to_string());
    env.insert("accelerator-reason".into(), decision.reason.clone());
    env.insert("machine".into(), profile.machine.clone());
    env.insert(
        "cpu".into(),
        match decision.accel {
            Accel::Kvm => profile.cpu_kvm.clone(),
            Accel::Tcg => profile.cpu_tcg.clone(),
        },
    );
    env.insert("kernel".into(), spec.kernel.display().to_string());
    if let Some(vmlinux) = &spec.unpacked_kernel {
        // What QEMU booted: the kernel's own vmlinux, unpacked on the host.
        env.insert("kernel-unpacked".into(), vmlinux.display().to_string());
    }
    if let Some(rootfs) = &spec.rootfs {
        env.insert("rootfs".into(), rootfs.path.display().to_string());
    }
    env.insert("channel".into(), "serial console".into());
    env.insert("qemu-command".into(), command_line(spec));
}
