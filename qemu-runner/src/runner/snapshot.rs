//! Snapshot reset: the first test of a kind boots a guest and saves it; every test runs in a
//! fresh QEMU restored from that file.

use std::path::PathBuf;
use std::time::Instant;

use chrono::Utc;
use orchestrator_core::{ExecutionContext, Outcome, Phase, PhaseTiming, RunnerError, TestResult};

use super::console::{Watch, first_lines};
use super::lifecycle::{Guest, Run};
use super::session::{Payload, test_end};
use super::{Prepared, QemuRunner, phase};
use crate::protocol::Record;
use crate::vm::Vm;

impl QemuRunner {
    /// A test in a guest restored from a snapshot of a booted guest: every test starts from
    /// the same pristine state, without a boot. The first test of a kind boots the guest and
    /// takes the snapshot.
    pub(super) async fn execute_from_snapshot(
        &self,
        mut run: Run<'_>,
        payload: Payload,
        key: String,
    ) -> Result<TestResult, RunnerError> {
        let cell = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut taken_now = false;
        let snapshot = cell
            .get_or_try_init(|| async {
                taken_now = true;
                self.take_snapshot(&mut run).await
            })
            .await;
        let snapshot = match snapshot {
            Ok(s) => s,
            // The boot for the snapshot failed: this test's result says how.
            Err(SnapshotError::Boot) => return Ok(run.result),
            Err(SnapshotError::Runner(e)) => return Err(e),
        };
        if !taken_now {
            run.result.end_phase(Phase::Setup, run.setup_start);
        }
        let restore_start = Utc::now();
        let started = Instant::now();
        let restored = phase(
            tracing::debug_span!("boot", from = "snapshot"),
            snapshot.restore(self, run.ctx),
        )
        .await;
        let mut guest = match restored {
            Ok(guest) => guest,
            Err(e) => {
                run.result.outcome =
                    Outcome::infra(format!("restoring the guest from its snapshot failed: {e}"));
                run.result.finish(run.setup_start, &run.notes);
                return Ok(run.result);
            }
        };
        run.result.phases.push(PhaseTiming {
            phase: Phase::Boot,
            started_at: restore_start,
            finished_at: Utc::now(),
        });
        run.result.environment.insert(
            "snapshot-restore".into(),
            format!(
                "{:.0} ms (the boot it replaces took {:.0} ms)",
                started.elapsed().as_secs_f64() * 1e3,
                snapshot.boot.as_secs_f64() * 1e3
            ),
        );
        let reusable = self.run_in_guest(&mut guest, payload, &mut run).await;
        let teardown_start = test_end(&run.result);
        phase(tracing::debug_span!("stop"), async {
            if reusable {
                // A pristine guest per test: this one is done.
                guest.vm.stop().await;
            }
            let _ = guest.vm.finish().await;
        })
        .await;
        Ok(run.finish(teardown_start))
    }

    /// Boots a session guest and saves it, waiting for its first test, to a migration file.
    async fn take_snapshot(&self, run: &mut Run<'_>) -> Result<Snapshot, SnapshotError> {
        // Tiny: one directory.
        let dir = tempfile::Builder::new()
            .prefix("qemu-runner-snapshot-")
            .tempdir_in(&self.config.temp_dir)
            .map_err(|e| {
                SnapshotError::Runner(RunnerError::with_source(
                    "failed to create a directory for a guest snapshot",
                    e,
                ))
            })?;
        let started = Instant::now();
        let Some(mut guest) = self
            .boot_session_guest(run, dir.path())
            .await
            .map_err(SnapshotError::Runner)?
        else {
            return Err(SnapshotError::Boot);
        };
        let boot = started.elapsed();
        let file = dir.path().join("guest.state");
        let saving = Instant::now();
        let saved = crate::vm::save_state(&guest.prepared.spec.qmp_socket, &file).await;
        tracing::debug!(
            file = %file.display(),
            ok = saved.is_ok(),
            boot_ms = boot.as_millis() as u64,
            elapsed_ms = saving.elapsed().as_millis() as u64,
            "guest snapshot saved"
        );
        guest.vm.stop().await;
        let _ = guest.vm.finish().await;
        saved.map_err(|e| {
            SnapshotError::Runner(RunnerError::new(format!(
                "saving the booted {} guest to {} failed: {e}",
                guest.prepared.profile.arch,
                file.display()
            )))
        })?;
        let ready = guest.watch.ready.clone();
        Ok(Snapshot {
            dir,
            file,
            prepared: guest.prepared,
            ready,
            boot,
            restores: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

/// A booted guest saved to a file, restored for each test.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// Holds the state file; removed with the snapshot.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
    file: PathBuf,
    prepared: Prepared,
    /// The agent's `READY`, which fixes the nonce every restored guest speaks with.
    ready: Option<Record>,
    /// How long the boot took.
    boot: std::time::Duration,
    restores: std::sync::atomic::AtomicU32,
}

#[derive(Debug)]
enum SnapshotError {
    /// The guest did not boot; the test's result says why.
    Boot,
    Runner(RunnerError),
}

impl Snapshot {
    /// Starts a QEMU that takes its state from the snapshot and lets it run.
    async fn restore(&self, runner: &QemuRunner, ctx: &ExecutionContext) -> Result<Guest, String> {
        let n = self
            .restores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        // Tiny: two directories.
        let sockets = tempfile::Builder::new()
            .prefix("qemu-runner-")
            .tempdir_in(&runner.config.temp_dir)
            .map_err(|e| format!("cannot create a socket directory: {e}"))?;
        let mut spec = self.prepared.spec.clone();
        spec.qmp_socket = sockets.path().join("qmp.sock");
        spec.incoming = true;
        // The saved guest's artifact port, reconnected: the same device, its chardev connecting
        // to a listener of this QEMU's own (the port's "host connected" state travels in the
        // migration and matches).
        let artifact_listener = match &mut spec.artifact_socket {
            Some(path) => {
                *path = sockets.path().join("artifacts.sock");
                Some(
                    tokio::net::UnixListener::bind(&*path)
                        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let dir = ctx.scratch_dir().join("restored");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut vm = Vm::start(
            &spec,
            &dir.join("console.log"),
            runner.config.console_log_limit,
        )
        .map_err(|e| format!("failed to start {}: {e}", spec.qemu.display()))?;
        tracing::debug!(
            restore = n,
            file = %self.file.display(),
            "restoring the guest from its snapshot"
        );
        if let Err(e) = crate::vm::load_state(&spec.qmp_socket, &self.file).await {
            vm.stop().await;
            let (stderr, _) = vm.finish().await;
            return Err(match first_lines(&stderr, 3) {
                Some(qemu) => format!("{e} (QEMU: {qemu})"),
                None => e.to_string(),
            });
        }
        let mut watch = Watch::new(
            runner.output_limit(ctx),
            runner.config.serial_artifact_limit,
        );
        if let Some(Record::Ready {
            nonce,
            kernel_release,
            machine,
        }) = &self.ready
        {
            watch.line(&format!(
                "{} {nonce} READY {kernel_release} {machine}",
                crate::protocol::PREFIX
            ));
        }
        Ok(Guest::new(
            n,
            vm,
            watch,
            Prepared {
                artifact_listener,
                sockets,
                spec,
                decision: self.prepared.decision.clone(),
                profile: self.prepared.profile.clone(),
                qemu: self.prepared.qemu.clone(),
            },
        ))
    }
}
