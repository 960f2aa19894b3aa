//! Snapshot reset: the first test of a kind boots a guest and saves it; every test runs in a
//! fresh QEMU restored from that file.
//!
//! The saved guest's memory stays in a file of its own (the guest ran with its memory shared
//! with that file), and the state file holds only the devices: a restored guest maps the memory
//! file privately (copy-on-write), so loading it reads a few hundred KiB instead of the guest's
//! memory. The next guest is restored in advance, while a test runs, and waits paused until a
//! test takes it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use orchestrator_core::{ExecutionContext, Outcome, Phase, PhaseTiming, RunnerError, TestResult};

use super::console::{Watch, first_lines};
use super::lifecycle::{Guest, Run};
use super::session::{Payload, test_end};
use super::{Prepared, QemuRunner, phase};
use crate::protocol::Record;
use crate::qmp::Qmp;
use crate::vm::{RamFile, Vm, VmSpec};

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
        run.result.environment.insert(
            "mode".into(),
            super::ExecutionMode::SnapshotReset.name().into(),
        );
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
            snapshot.take_guest(self, &cell, run.ctx),
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
                // A pristine guest per test: this one is thrown away, nothing of it is needed.
                guest.vm.kill().await;
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
        // The guest's memory, written through to a sparse file that its restored copies map.
        let ram = dir.path().join("guest.ram");
        let ram_file = RamFile {
            path: ram.clone(),
            shared: true,
        };
        let Some(mut guest) = self
            .boot_session_guest_with(run, dir.path(), Some(ram_file))
            .await
            .map_err(SnapshotError::Runner)?
        else {
            return Err(SnapshotError::Boot);
        };
        let boot = started.elapsed();
        let file = dir.path().join("guest.state");
        let saving = Instant::now();
        let saved = crate::vm::save_devices(&guest.prepared.spec.qmp_socket, &file).await;
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
            ram,
            prepared: guest.prepared,
            ready,
            boot,
            restores: std::sync::atomic::AtomicU32::new(0),
            temp_dir: self.config.temp_dir.clone(),
            console_log_limit: self.config.console_log_limit,
            standby: Mutex::new(None),
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
    /// The guest's memory (the state file holds the rest).
    ram: PathBuf,
    prepared: Prepared,
    /// The agent's `READY`, which fixes the nonce every restored guest speaks with.
    ready: Option<Record>,
    /// How long the boot took.
    boot: std::time::Duration,
    restores: std::sync::atomic::AtomicU32,
    /// Where restored guests' sockets go (the runner's `temp_dir`).
    temp_dir: PathBuf,
    /// The runner's `console_log_limit`.
    console_log_limit: u64,
    /// The next guest, being restored or restored and paused, for the next test.
    standby: Mutex<Option<tokio::task::JoinHandle<Result<Loaded, String>>>>,
}

/// A guest restored from a snapshot and paused, waiting for a test.
#[derive(Debug)]
struct Loaded {
    /// Its number among the snapshot's restores.
    n: u32,
    vm: Vm,
    /// The QMP connection that loaded it, to let it run.
    qmp: Qmp,
    /// Its sockets and console log.
    sockets: tempfile::TempDir,
    spec: VmSpec,
    /// Where its artifact port connects, when the saved guest has one.
    artifact_listener: Option<tokio::net::UnixListener>,
    /// How long starting QEMU and loading took.
    took: Duration,
}

#[derive(Debug)]
enum SnapshotError {
    /// The guest did not boot; the test's result says why.
    Boot,
    Runner(RunnerError),
}

impl Snapshot {
    /// Starts a QEMU that takes its state from the snapshot, and leaves the guest paused.
    async fn load(&self) -> Result<Loaded, String> {
        let started = Instant::now();
        let n = self
            .restores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        // Tiny: a directory.
        let sockets = tempfile::Builder::new()
            .prefix("qemu-runner-")
            .tempdir_in(&self.temp_dir)
            .map_err(|e| format!("cannot create a socket directory: {e}"))?;
        let mut spec = self.prepared.spec.clone();
        spec.qmp_socket = sockets.path().join("qmp.sock");
        spec.incoming = true;
        spec.ram_file = Some(RamFile {
            path: self.ram.clone(),
            shared: false,
        });
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
        let vm = Vm::start(
            &spec,
            &sockets.path().join("console.log"),
            self.console_log_limit,
        )
        .map_err(|e| format!("failed to start {}: {e}", spec.qemu.display()))?;
        tracing::debug!(
            restore = n,
            file = %self.file.display(),
            "restoring the guest from its snapshot"
        );
        match crate::vm::load_paused(&spec.qmp_socket, &self.file, true).await {
            Ok(qmp) => {
                let took = started.elapsed();
                tracing::debug!(
                    restore = n,
                    elapsed_ms = took.as_millis() as u64,
                    "guest restored, paused"
                );
                Ok(Loaded {
                    n,
                    vm,
                    qmp,
                    sockets,
                    spec,
                    artifact_listener,
                    took,
                })
            }
            Err(e) => Err(gone(vm, e.to_string()).await),
        }
    }

    /// A restored guest for a test, running: the one restored in advance if there is one,
    /// else one restored now. Then restores the next in advance.
    async fn take_guest(
        &self,
        runner: &QemuRunner,
        cell: &Arc<tokio::sync::OnceCell<Snapshot>>,
        ctx: &ExecutionContext,
    ) -> Result<Guest, String> {
        let waiting = self
            .standby
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let early = match waiting {
            Some(task) => match task.await {
                Ok(Ok(loaded)) => Some(loaded),
                // It failed: this test restores its own and says how that went.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the guest restored in advance failed");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "restoring a guest in advance panicked");
                    None
                }
            },
            None => None,
        };
        let in_advance = early.is_some();
        let mut loaded = match early {
            Some(loaded) => loaded,
            None => self.load().await?,
        };
        self.restore_next(cell);
        if let Err(e) = crate::vm::resume(&mut loaded.qmp).await {
            return Err(gone(loaded.vm, e.to_string()).await);
        }
        tracing::debug!(
            restore = loaded.n,
            in_advance,
            restore_ms = loaded.took.as_millis() as u64,
            "restored guest running"
        );
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
            loaded.n,
            loaded.vm,
            watch,
            Prepared {
                artifact_listener: loaded.artifact_listener,
                sockets: loaded.sockets,
                spec: loaded.spec,
                decision: self.prepared.decision.clone(),
                profile: self.prepared.profile.clone(),
                qemu: self.prepared.qemu.clone(),
            },
        ))
    }

    /// Starts restoring the next guest, unless one is already on its way: it loads while the
    /// current test runs and waits paused (using no CPU) for the next test.
    fn restore_next(&self, cell: &Arc<tokio::sync::OnceCell<Snapshot>>) {
        let mut standby = self.standby.lock().unwrap_or_else(|e| e.into_inner());
        if standby.is_some() {
            return;
        }
        let cell = Arc::clone(cell);
        *standby = Some(tokio::spawn(async move {
            match cell.get() {
                Some(snapshot) => snapshot.load().await,
                None => Err("the snapshot is gone".to_owned()),
            }
        }));
    }

    /// Stops the guest restored in advance, if any (the runner's cleanup).
    pub(super) async fn discard_standby(&self) {
        let waiting = self
            .standby
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = waiting {
            // Let a guest still loading finish (a load is bounded), so that its QEMU is killed
            // and reaped here rather than left to a drop.
            match tokio::time::timeout(Duration::from_secs(30), &mut task).await {
                Ok(Ok(Ok(mut loaded))) => {
                    loaded.vm.kill().await;
                    let _ = loaded.vm.finish().await;
                }
                Ok(_) => {}
                // Dropping the load kills its QEMU.
                Err(_) => task.abort(),
            }
        }
    }
}

/// Kills a guest that could not be restored; `why`, with the start of QEMU's stderr.
async fn gone(mut vm: Vm, why: String) -> String {
    vm.kill().await;
    let (stderr, _) = vm.finish().await;
    match first_lines(&stderr, 3) {
        Some(qemu) => format!("{why} (QEMU: {qemu})"),
        None => why,
    }
}
