//! The default mode: one boot for one test.

use chrono::Utc;
use orchestrator_core::{ExecutionContext, Phase, RunnerError, TestCase, TestResult};

use tracing::Instrument as _;

use super::gather::Delivery;
use super::lifecycle::{Run, stop};
use super::port::{Archive, archive_of};
use super::{QemuRunner, phase};
use crate::protocol::Record;

impl QemuRunner {
    /// One boot for one test.
    pub(super) async fn execute_alone(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let mut run = Run::new(case, ctx);
        run.result
            .environment
            .insert("mode".into(), super::ExecutionMode::Alone.name().into());
        let mut prepared = self
            .prepare_inner(case, ctx.scratch_dir(), true, false, self.output_limit(ctx))
            .await?;
        self.describe(&mut run.result, &prepared);
        let artifacts = run.artifact_dir()?;
        run.result.end_phase(Phase::Setup, run.setup_start);

        // The guest's artifact port, taken whenever the guest connects (in the execution's
        // span: the transfer is the test's, whatever the phase); its one test's archive is
        // number 1.
        let port = prepared
            .artifact_listener
            .take()
            .map(super::port::ArtifactPort::start);
        let expected = port
            .as_ref()
            .map(|p| p.expect(1, artifacts.join("files"), self.config.artifact_limits));
        // Boot.
        let (mut vm, mut watch, failed) = phase(tracing::debug_span!("boot"), async {
            let boot_start = Utc::now();
            let mut vm = self.start_vm(&prepared, &artifacts.join("console.log"))?;
            ctx.process_started(vm.pid(), prepared.profile.qemu.clone());
            run.result
                .environment
                .insert("qemu-pid".into(), vm.pid().to_string());
            let (watch, failed) = self
                .await_ready(&mut vm, &prepared, boot_start, &mut run)
                .await;
            Ok::<_, RunnerError>((vm, watch, failed))
        })
        .await?;

        let mut phases = None;
        let test_span = tracing::debug_span!("test");
        if let Some((outcome, note)) = failed {
            run.result.outcome = outcome;
            run.notes.push(note);
        } else {
            watch.keep_console();
            if let Some(Record::Ready {
                kernel_release,
                machine,
                ..
            }) = &watch.ready
            {
                run.result
                    .environment
                    .insert("kernel-release".into(), kernel_release.clone());
                run.result
                    .environment
                    .insert("guest-machine".into(), machine.clone());
            }
            let ran = phase(
                test_span.clone(),
                self.run_phases(&mut vm, &mut watch, &mut run),
            )
            .await;
            run.test_phase(&ran);
            phases = Some(ran);
        }

        // Teardown (from the test's exit, so it includes the transfer of its results): let the
        // artifact archive finish arriving (the end of the test phase), stop QEMU, keep the
        // logs.
        let teardown_start = phases.as_ref().map_or_else(Utc::now, |p| p.test_end);
        let transfer_ok = watch.delivered;
        let mut archive = Archive::None;
        if let (Some(port), Some(rx)) = (&port, expected) {
            let sent =
                transfer_ok && watch.stream_text("channel").as_deref() == Some("virtio-serial");
            // (Nothing to withdraw in a guest of its own: what the guest sends until QEMU
            // stops is the test's.)
            archive = match sent {
                true => {
                    archive_of(port, rx, 1, true, self.config.transfer_timeout)
                        .instrument(test_span)
                        .await
                }
                false => Archive::Pending(rx),
            };
            if let Some(why) = port.poisoned() {
                run.notes
                    .push(format!("the artifact port was given up: {why}"));
            }
        }
        if let Some(phases) = &phases {
            let unpacked = match (&archive, &port) {
                (Archive::Arrived(_), Some(port)) => port.unpacked_at(1),
                _ => None,
            };
            run.transfer_time(phases, transfer_ok, unpacked);
        }
        // A panicked guest kept for its memory (`vmcore`): dumped before QEMU stops.
        if prepared.spec.vmcore && watch.panicked {
            phase(tracing::debug_span!("vmcore"), async {
                let note = if vm.exited().is_some() {
                    "no vmcore: QEMU exited at the panic".to_owned()
                } else {
                    let (note, entry) = crate::vmcore::keep(
                        &prepared.spec.qmp_socket,
                        &artifacts,
                        prepared.spec.memory_mib,
                        self.config.artifact_limits.max_bytes,
                    )
                    .await;
                    if let Some(entry) = entry {
                        run.result.environment.insert("vmcore".into(), entry);
                    }
                    note
                };
                run.notes.push(note);
            })
            .await;
        }
        let stopped = phase(tracing::debug_span!("stop"), async {
            if prepared.profile.display.is_some() && vm.exited().is_none() {
                let shot = artifacts.join("screenshot.png");
                if let Err(e) = vm.screenshot(&shot).await {
                    run.notes.push(format!("no screenshot: {e}"));
                }
            }
            stop(vm, &watch, &mut run.result.outcome).await
        })
        .await;
        if stopped.report.steps.len() > 1 || !stopped.report.stopped {
            run.notes.push(format!(
                "QEMU was stopped with {}{}",
                stopped.report.steps.join(", then "),
                if stopped.report.stopped {
                    ""
                } else {
                    " and is still running"
                }
            ));
        }
        let console = stopped.console;
        if console.total > console.logged {
            run.notes.push(format!(
                "the console produced {} bytes; console.log keeps the first {}",
                console.total, console.logged
            ));
        }
        if !stopped.stderr.trim().is_empty() {
            run.result.environment.insert(
                "qemu-stderr".into(),
                stopped.stderr.trim().chars().take(2000).collect(),
            );
        }
        phase(tracing::debug_span!("gather"), async {
            // Artifacts: what arrived over virtio, once QEMU is gone (the socket closed, the
            // port's reader ends).
            let extracted = match archive {
                Archive::None => None,
                Archive::Arrived(e) => Some(e),
                Archive::Pending(rx) => {
                    tokio::time::timeout(std::time::Duration::from_secs(10), rx)
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
            };
            let delivery = Delivery {
                output_limit: self.output_limit(ctx),
                watch: &watch,
                case,
                artifacts: &artifacts,
                extracted,
                transfer_ok,
            };
            self.gather(delivery, &mut run.result, &mut run.notes).await;
        })
        .await;
        Ok(run.finish(teardown_start))
    }
}
