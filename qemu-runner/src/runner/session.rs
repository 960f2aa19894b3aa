//! Session mode: a booted guest runs test after test, each sent over the console.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use orchestrator_core::{ExecutionContext, Outcome, Phase, RunnerError, TestCase, TestResult};

use super::gather::{Delivery, list_artifacts};
use super::lifecycle::{Guest, Run, stop};
use super::port::{Archive, archive_of};
use super::{ExecutionMode, QemuRunner, phase};
use crate::image::{self, TestPart};

/// Largest gzip'd test part sent to a session guest over the console (its base64 must fit the
/// guest's terminal input buffer, 4 KiB, so nothing is dropped).
pub(super) const SESSION_PART_LIMIT: usize = 2800;

impl QemuRunner {
    /// A test in a guest that takes tests over the console, in session mode or from a
    /// snapshot (`mode`). A test too large for the console runs in a guest of its own.
    pub(super) async fn execute_in_guest(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        mode: ExecutionMode,
    ) -> Result<TestResult, RunnerError> {
        // A panic must leave the guest for its dump, and a root file system is a device of
        // the guest: such tests get a guest of their own.
        let alone = if self.vmcore_for(case) {
            Some("booted alone: a test with `vmcore` gets a guest of its own")
        } else if case.requirements.rootfs.is_some() {
            Some("booted alone: a test with a root file system gets a guest of its own")
        } else {
            None
        };
        if let Some(note) = alone {
            let mut r = self.execute_alone(case, ctx).await?;
            r.message = Some(match r.message.take() {
                Some(m) => format!("{note}; {m}"),
                None => note.to_owned(),
            });
            return Ok(r);
        }
        let run = Run::new(case, ctx);
        // The test goes over the console; what does not fit gets a guest of its own.
        let payload = match self.session_payload(case, self.output_limit(ctx)).await? {
            Ok(payload) => payload,
            Err(bytes) => return self.execute_alone_too_large(case, ctx, bytes).await,
        };
        let key = self.session_key(case)?;
        run.artifact_dir()?;
        if mode == ExecutionMode::SnapshotReset {
            self.execute_from_snapshot(run, payload, key).await
        } else {
            self.execute_in_session(run, payload, key).await
        }
    }

    /// What a session guest is sent for `case`: text when it can (no process to start in the
    /// guest), else an archive, or `Err(bytes)` when even the archive is too large for the
    /// console. Built on a blocking thread (the archive reads the test's files).
    pub(super) async fn session_payload(
        &self,
        case: &TestCase,
        output_limit: u64,
    ) -> Result<Result<Payload, usize>, RunnerError> {
        let case = case.clone();
        let serial_artifact_limit = self.config.serial_artifact_limit;
        tokio::task::spawn_blocking(move || payload_for(&case, output_limit, serial_artifact_limit))
            .await
            .map_err(|e| RunnerError::with_source("building the test's files panicked", e))?
    }

    /// Runs `case` in a guest of its own because it is too large to send to a session guest.
    pub(super) async fn execute_alone_too_large(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        bytes: usize,
    ) -> Result<TestResult, RunnerError> {
        tracing::debug!(
            bytes,
            "the test's files are too large for the console: booting alone"
        );
        let mut r = self.execute_alone(case, ctx).await?;
        let note = format!(
            "booted alone: its files ({bytes} bytes compressed) are too large to send to a session guest"
        );
        r.message = Some(match r.message.take() {
            Some(m) => format!("{note}; {m}"),
            None => note,
        });
        Ok(r)
    }

    /// What session guests for `case` are booted with: tests with the same key share them.
    fn session_key(&self, case: &TestCase) -> Result<String, RunnerError> {
        // (Every session guest of this runner gets the artifact channel, or none does.)
        self.boot_key(case, |profile| self.modules_for(case, profile, None))
    }

    /// What makes two tests' guests boot alike: architecture, kernel, module tree, the modules
    /// loaded at boot (`modules`, from the test's profile), the profile, memory and CPUs.
    pub(super) fn boot_key<M: std::fmt::Debug>(
        &self,
        case: &TestCase,
        modules: impl FnOnce(&crate::profile::MachineProfile) -> M,
    ) -> Result<String, RunnerError> {
        let arch = self.arch_of(case);
        let profile = self.profile(arch)?;
        let parts = self.parts(case, arch)?;
        Ok(format!(
            "{arch}|{}|{:?}|{:?}|{}|{:?}|{:?}",
            parts.kernel.display(),
            parts.modules_dir,
            modules(profile),
            serde_json::to_string(profile).unwrap_or_default(),
            case.requirements.memory_mib,
            case.requirements.cpus
        ))
    }

    /// Boots a session guest for the run's test in `dir` and waits for its agent. A guest that
    /// does not come up finishes the run's result instead (`None`).
    pub(super) async fn boot_session_guest(
        &self,
        run: &mut Run<'_>,
        dir: &Path,
    ) -> Result<Option<Guest>, RunnerError> {
        self.boot_session_guest_with(run, dir, None).await
    }

    /// [`boot_session_guest`](Self::boot_session_guest), the guest's memory in `ram_file` if
    /// given.
    pub(super) async fn boot_session_guest_with(
        &self,
        run: &mut Run<'_>,
        dir: &Path,
        ram_file: Option<crate::vm::RamFile>,
    ) -> Result<Option<Guest>, RunnerError> {
        let limit = self.output_limit(run.ctx);
        let mut prepared = self.prepare_inner(run.case, dir, true, true, limit).await?;
        prepared.spec.ram_file = ram_file;
        run.result.end_phase(Phase::Setup, run.setup_start);
        let id = self
            .boots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let (vm, watch, failed) = phase(tracing::debug_span!("boot", guest = id), async {
            let boot_start = Utc::now();
            let mut vm = self.start_vm(&prepared, &dir.join("console.log"))?;
            let (watch, failed) = self.await_ready(&mut vm, &prepared, boot_start, run).await;
            Ok::<_, RunnerError>((vm, watch, failed))
        })
        .await?;
        if let Some((outcome, note)) = failed {
            let result = &mut run.result;
            self.describe(result, &prepared);
            result.outcome = outcome;
            phase(
                tracing::debug_span!("stop"),
                stop(vm, &watch, &mut result.outcome),
            )
            .await;
            let artifacts = run.ctx.artifact_dir();
            let log = dir.join("console.log");
            result.artifacts = super::blocking(move || {
                let _ = std::fs::copy(log, artifacts.join("console.log"));
                list_artifacts(&artifacts)
            })
            .await;
            result.console_excerpt = watch
                .excerpt
                .text(&watch.tail.iter().cloned().collect::<Vec<_>>());
            result.started_at = run.setup_start;
            result.finished_at = Utc::now();
            result.message = Some(note);
            return Ok(None);
        }
        Ok(Some(Guest::new(id, vm, watch, prepared)))
    }

    /// Sends the run's test to a booted guest and takes its results. Returns whether the guest
    /// can take another test.
    pub(super) async fn run_in_guest(
        &self,
        guest: &mut Guest,
        payload: Payload,
        run: &mut Run<'_>,
    ) -> bool {
        let artifacts = run.ctx.artifact_dir();
        self.describe(&mut run.result, &guest.prepared);
        tracing::debug!(
            guest = guest.id,
            tests_before = guest.tests,
            accel = %guest.prepared.decision.accel,
            reason = %guest.prepared.decision.reason,
            "accelerator (the guest's)"
        );
        run.result
            .environment
            .insert("qemu-pid".into(), guest.vm.pid().to_string());
        run.ctx
            .process_started(guest.vm.pid(), guest.prepared.profile.qemu.clone());
        guest.watch.start_test();
        // The archive this test may send over the port: the guest's test number names it.
        let seq = guest.tests + 1;
        let files = artifacts.join("files");
        let expected = guest
            .port
            .as_ref()
            .map(|p| p.expect(seq, files, self.config.artifact_limits));
        let phases = phase(tracing::debug_span!("test", guest = guest.id), async {
            let message = payload.message(run.case.id.as_str(), &mut guest.known);
            tracing::debug!(bytes = message.len(), "test sent over the console");
            if let Err(e) = guest.vm.send_line(message.trim_end()).await {
                run.notes
                    .push(format!("the guest's console input failed: {e}"));
            }
            self.run_phases(&mut guest.vm, &mut guest.watch, run).await
        })
        .await;
        run.test_phase(&phases);
        let transfer_ok = guest.watch.delivered;
        let mut archive = Archive::None;
        let mut port_ok = true;
        if let (Some(port), Some(rx)) = (&guest.port, expected) {
            let sent = transfer_ok
                && guest.watch.stream_text("channel").as_deref() == Some("virtio-serial");
            archive = archive_of(port, rx, seq, sent, self.config.transfer_timeout).await;
            if let Some(why) = port.poisoned() {
                run.notes
                    .push(format!("the artifact port was given up: {why}"));
                port_ok = false;
            }
            port_ok &= !matches!(archive, Archive::Pending(_));
        }
        let unpacked = match (&archive, &guest.port) {
            (Archive::Arrived(_), Some(port)) => port.unpacked_at(seq),
            _ => None,
        };
        run.transfer_time(&phases, transfer_ok, unpacked);
        if let Some(slice) = &guest.watch.slice {
            let (slice, log) = (slice.clone(), artifacts.join("console.log"));
            super::blocking(move || {
                let _ = std::fs::write(log, slice);
            })
            .await;
        }
        // A guest whose test was stopped or crashed, or whose artifact port can no longer be
        // followed, is not trusted with another.
        let reusable = transfer_ok
            && port_ok
            && matches!(run.result.outcome, Outcome::Passed | Outcome::Failed { .. })
            && guest.vm.exited().is_none();
        if !reusable {
            tracing::debug!(
                guest = guest.id,
                "the guest is not trusted with another test"
            );
            let stopped = phase(tracing::debug_span!("stop"), guest.vm.stop()).await;
            guest.stop_report = Some(stopped);
        }
        let extracted = match archive {
            Archive::None => None,
            Archive::Arrived(e) => Some(e),
            // What arrived before QEMU stopped (the port closed).
            Archive::Pending(rx) => tokio::time::timeout(std::time::Duration::from_secs(10), rx)
                .await
                .ok()
                .and_then(Result::ok),
        };
        let delivery = Delivery {
            output_limit: self.output_limit(run.ctx),
            watch: &guest.watch,
            case: run.case,
            artifacts: &artifacts,
            extracted,
            transfer_ok,
        };
        phase(
            tracing::debug_span!("gather"),
            self.gather(delivery, &mut run.result, &mut run.notes),
        )
        .await;
        guest.tests += 1;
        reusable
    }

    /// A test in a session guest: reuse an idle guest booted the same way, or boot one.
    async fn execute_in_session(
        &self,
        mut run: Run<'_>,
        payload: Payload,
        key: String,
    ) -> Result<TestResult, RunnerError> {
        let idle = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        let mut guest = match idle {
            Some(guest) => {
                tracing::debug!(
                    guest = guest.id,
                    tests = guest.tests,
                    "reusing an idle session guest"
                );
                run.result.end_phase(Phase::Setup, run.setup_start);
                guest
            }
            None => {
                tracing::debug!("no idle session guest: booting one");
                let dir = run.ctx.scratch_dir().join("session");
                match self.boot_session_guest(&mut run, &dir).await? {
                    Some(guest) => guest,
                    None => return Ok(run.result),
                }
            }
        };
        run.result
            .environment
            .insert("mode".into(), ExecutionMode::Session.name().into());
        run.result.environment.insert(
            "session".into(),
            format!("guest {}, test {}", guest.id, guest.tests + 1),
        );
        let reusable = self.run_in_guest(&mut guest, payload, &mut run).await;
        let teardown_start = test_end(&run.result);
        if reusable {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .push(guest);
        } else {
            let _ = guest.vm.finish().await;
            let steps = guest
                .stop_report
                .as_ref()
                .map(|r| r.steps.join(", then "))
                .unwrap_or_default();
            run.notes.push(format!(
                "session guest {} was stopped ({steps}) after {} test(s); the next test boots a new one",
                guest.id, guest.tests
            ));
        }
        // Teardown counts from the test's exit: it includes the transfer of the results.
        Ok(run.finish(teardown_start))
    }
}

/// When the test in a guest ended (teardown counts from then: it includes the transfer of the
/// results).
pub(super) fn test_end(result: &TestResult) -> DateTime<Utc> {
    result
        .phase(Phase::Test)
        .map_or_else(Utc::now, |p| p.finished_at)
}

/// What a session guest is sent for `case` (see [`QemuRunner::session_payload`]).
fn payload_for(
    case: &TestCase,
    output_limit: u64,
    serial_artifact_limit: u64,
) -> Result<Result<Payload, usize>, RunnerError> {
    let test_part = TestPart {
        case,
        output_limit,
        load_order: &[],
        boot_order: &[],
        kernel_version: None,
        serial_artifact_limit,
        wait_for_ack: true,
    };
    let text = image::text_files(&test_part)
        .map_err(RunnerError::new)?
        .filter(|files| {
            let all: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
            image::text_message(case.id.as_str(), &all).len() <= SESSION_PART_LIMIT
        });
    if let Some(files) = text {
        return Ok(Ok(Payload::Text(files)));
    }
    let part = image::test_archive(&test_part).map_err(RunnerError::new)?;
    if part.len() > SESSION_PART_LIMIT {
        return Ok(Err(part.len()));
    }
    Ok(Ok(Payload::Archive(part)))
}

/// How a session guest is sent a test.
#[derive(Debug)]
pub(super) enum Payload {
    /// The `/orch` files as text.
    Text(Vec<(&'static str, String)>),
    /// A gzip'd cpio archive of `/orch` and `/work`.
    Archive(Vec<u8>),
}

impl Payload {
    /// The console message, given what the guest already has (updated).
    pub(super) fn message(self, id: &str, known: &mut BTreeMap<&'static str, String>) -> String {
        match self {
            Payload::Text(files) => {
                // Only what changed since the last test.
                let changed: Vec<(&str, &str)> = files
                    .iter()
                    .filter(|(n, t)| known.get(n) != Some(t))
                    .map(|(n, t)| (*n, t.as_str()))
                    .collect();
                let message = image::text_message(id, &changed);
                *known = files.into_iter().collect();
                message
            }
            Payload::Archive(part) => {
                // `RUN <lines> <md5>`, then base64 lines; the archive replaces every file.
                known.clear();
                let b64 = base64::engine::general_purpose::STANDARD.encode(&part);
                let sum: String = {
                    use md5::Digest;
                    md5::Md5::digest(&part)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                };
                let lines: Vec<&[u8]> = b64.as_bytes().chunks(76).collect();
                let mut message = format!("RUN {} {sum}\n", lines.len());
                for l in lines {
                    message.push_str(std::str::from_utf8(l).unwrap_or_default());
                    message.push('\n');
                }
                message
            }
        }
    }
}
