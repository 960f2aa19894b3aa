//! One QEMU process: its command line, its console, and stopping it in stages.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator_core::BoundedCapture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::accel::Accel;
use crate::profile::MachineProfile;
use crate::protocol::MAX_LINE;
use crate::qmp::{Qmp, QmpError};

/// Everything needed to start a guest.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The machine.
    pub profile: MachineProfile,
    /// The QEMU binary (resolved).
    pub qemu: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The kernel's `vmlinux`, unpacked on the host, that QEMU boots through its PVH entry
    /// instead of `kernel` ([`MachineProfile::unpack_kernel`]).
    pub unpacked_kernel: Option<PathBuf>,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Firmware for `-bios`, if any.
    pub firmware: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    /// Where the QMP socket goes.
    pub qmp_socket: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// The Unix socket (listened on by the host) the guest's artifact port connects to, if the
    /// test collects artifacts.
    pub artifact_socket: Option<PathBuf>,
    /// Whether QEMU starts waiting for its state from a migration (`-S -incoming defer`; see
    /// [`load_state`]) instead of booting.
    pub incoming: bool,
    /// Whether a kernel panic keeps the guest for a memory dump: QEMU pauses it at the panic
    /// (`-action panic=pause`, with the profile's
    /// [`vmcore_devices`](MachineProfile::vmcore_devices)) instead of letting it exit.
    pub vmcore: bool,
    /// The test's root file system, given to the guest read-only (a 9p share or a disk).
    pub rootfs: Option<crate::rootfs::Rootfs>,
    /// A file holding the guest's memory instead of anonymous memory (see [`RamFile`]).
    pub ram_file: Option<RamFile>,
}

/// Guest memory in a file (`-object memory-backend-file`): a guest saved with its memory
/// shared (`shared`, written through to the file) leaves its memory in the file, and
/// [`save_state`] then writes only the devices' state; guests restored from it map the file
/// privately, copy-on-write, so each starts from the saved memory and the file stays as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamFile {
    /// The file (created by QEMU if missing; sparse).
    pub path: PathBuf,
    /// Whether the guest's writes go to the file (`share=on`) or stay private to it.
    pub shared: bool,
}

/// The memory backend's id (and RAM block name) in QEMU: the same in the saved and the
/// restored guest, which migration needs.
const RAM_FILE_ID: &str = "orch-ram";

/// The name of the guest's artifact port.
pub const ARTIFACT_PORT: &str = "org.orch.artifacts";

/// No default devices, no reboot (a reboot ends QEMU), no display or monitor, and the first
/// serial port on stdio: how every guest of the runner, and the KVM kernel check, starts.
pub(crate) const HEADLESS_STDIO_CONSOLE: [&str; 10] = [
    "-nodefaults",
    "-no-reboot",
    "-display",
    "none",
    "-monitor",
    "none",
    "-chardev",
    "stdio,id=con,signal=off",
    "-serial",
    "chardev:con",
];

/// The QEMU arguments for a spec (without the binary).
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let p = &spec.profile;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["-M", &p.machine]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", &p.cpu_kvm]),
        Accel::Tcg => push(&["-accel", "tcg,thread=multi", "-cpu", &p.cpu_tcg]),
    }
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    if let Some(ram) = &spec.ram_file {
        // A comma in a QEMU option value is written twice.
        let path = ram.path.to_string_lossy().replace(',', ",,");
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id={RAM_FILE_ID},size={}M,mem-path={path},share={}",
                spec.memory_mib,
                if ram.shared { "on" } else { "off" }
            ),
            "-machine",
            &format!("memory-backend={RAM_FILE_ID}"),
        ]);
    }
    push(&HEADLESS_STDIO_CONSOLE);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", spec.qmp_socket.display()),
    ]);
    if let Some(display) = &p.display {
        push(&["-device", display]);
    }
    if let Some(sock) = &spec.artifact_socket
        && !p.virtio_serial.is_empty()
    {
        push(&["-device", &format!("{},id=vser", p.virtio_serial)]);
        push(&[
            "-chardev",
            &format!("socket,id=art,path={}", sock.display()),
        ]);
        push(&[
            "-device",
            &format!("virtserialport,bus=vser.0,chardev=art,name={ARTIFACT_PORT}"),
        ]);
    }
    if spec.vmcore {
        push(&["-action", "panic=pause"]);
        for device in &p.vmcore_devices {
            push(&["-device", device]);
        }
    }
    if let Some(rootfs) = &spec.rootfs {
        a.extend(rootfs.qemu_args(p));
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    if let Some(fw) = &spec.firmware {
        push(&["-bios", &fw.to_string_lossy()]);
    }
    let kernel = spec.unpacked_kernel.as_ref().unwrap_or(&spec.kernel);
    push(&["-kernel", &kernel.to_string_lossy()]);
    push(&["-initrd", &spec.initrd.to_string_lossy()]);
    push(&["-append", &spec.append]);
    a.extend(p.extra_args.iter().cloned());
    if spec.incoming {
        // Paused once loaded (`-S`): the caller resumes the guest when it wants it to run.
        a.extend(["-S", "-incoming", "defer"].map(str::to_owned));
    }
    a
}

/// Why saving, loading or screenshotting a guest over QMP failed; each message names the QMP
/// command or the state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The QMP socket could not be used.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A QMP command failed.
    #[error("QMP {command}: {source}")]
    Command {
        /// The command.
        command: String,
        /// What QEMU (or the socket) said.
        #[source]
        source: QmpError,
    },
    /// A QMP query never gave a final answer.
    #[error("QMP {command} still says {answer} after {limit:?}")]
    Stuck {
        /// The query.
        command: String,
        /// Its last answer.
        answer: serde_json::Value,
        /// How long it was polled.
        limit: Duration,
    },
    /// A screenshot took too long.
    #[error("QMP screendump timed out")]
    ScreendumpTimedOut,
    /// The state file's path cannot be given to QEMU.
    #[error("the state file path {} is not UTF-8", file.display())]
    NotUtf8 {
        /// The state file.
        file: PathBuf,
    },
    /// QEMU could not save the guest.
    #[error("the migration to {} failed: {reason}", file.display())]
    MigrationFailed {
        /// The state file.
        file: PathBuf,
        /// QEMU's reason.
        reason: String,
    },
    /// QEMU did not resume the saved guest.
    #[error("the guest state from {} did not load: QEMU says `{status}`", file.display())]
    NotLoaded {
        /// The state file.
        file: PathBuf,
        /// The guest's run state after loading.
        status: String,
    },
}

/// The `exec:` migration URI that runs `cat` with a redirection to or from `file`.
fn exec_uri(redirect: &str, file: &Path) -> Result<String, VmError> {
    let path = file.to_str().ok_or_else(|| VmError::NotUtf8 {
        file: file.to_owned(),
    })?;
    Ok(format!(
        "exec:cat {redirect} {}",
        crate::agent::shell_quote(path)
    ))
}

fn command_failed(command: &'static str) -> impl FnOnce(QmpError) -> VmError {
    move |source| VmError::Command {
        command: command.to_owned(),
        source,
    }
}

/// Polls a QMP query until `done` says the answer is final, for at most `limit`.
async fn poll_qmp(
    qmp: &mut Qmp,
    command: &str,
    limit: Duration,
    mut done: impl FnMut(&serde_json::Value) -> Option<Result<(), VmError>>,
) -> Result<(), VmError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let answer = qmp
            .execute(command, None)
            .await
            .map_err(|source| VmError::Command {
                command: command.to_owned(),
                source,
            })?;
        if let Some(r) = done(&answer) {
            return r;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmError::Stuck {
                command: command.to_owned(),
                answer,
                limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stops the guest behind `qmp_socket` and saves its whole state (memory and devices) to
/// `file` with a migration; the guest stays stopped.
pub async fn save_state(qmp_socket: &Path, file: &Path) -> Result<(), VmError> {
    save(qmp_socket, file, false).await
}

/// [`save_state`] for a guest whose memory is a shared [`RamFile`]: the memory stays in that
/// file and `file` gets the rest (the devices' state, a few hundred KiB), which
/// [`load_paused`] with `memory_in_file` loads into a guest mapping the same file privately.
pub async fn save_devices(qmp_socket: &Path, file: &Path) -> Result<(), VmError> {
    save(qmp_socket, file, true).await
}

/// Leaves shared file-backed memory out of the migration stream (QEMU's `x-ignore-shared`
/// capability, which both sides of a migration need).
async fn ignore_shared_memory(qmp: &mut Qmp) -> Result<(), VmError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
        })),
    )
    .await
    .map(|_| ())
    .map_err(command_failed("migrate-set-capabilities"))
}

async fn save(qmp_socket: &Path, file: &Path, memory_in_file: bool) -> Result<(), VmError> {
    let mut qmp = Qmp::connect(qmp_socket, Duration::from_secs(5)).await?;
    qmp.execute("stop", None)
        .await
        .map_err(command_failed("stop"))?;
    if memory_in_file {
        ignore_shared_memory(&mut qmp).await?;
    }
    let uri = exec_uri(">", file)?;
    qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
        .await
        .map_err(command_failed("migrate"))?;
    poll_qmp(
        &mut qmp,
        "query-migrate",
        Duration::from_secs(120),
        |a| match a.get("status").and_then(|s| s.as_str()) {
            Some("completed") => Some(Ok(())),
            Some("failed" | "cancelled") => Some(Err(VmError::MigrationFailed {
                file: file.to_owned(),
                reason: a
                    .get("error-desc")
                    .and_then(|e| e.as_str())
                    .unwrap_or("no reason given")
                    .to_owned(),
            })),
            _ => None,
        },
    )
    .await
}

/// Connects to the QMP socket of a QEMU that was just started, waiting (up to `limit`) for
/// QEMU to create it.
async fn connect_when_up(qmp_socket: &Path, limit: Duration) -> Result<Qmp, VmError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match Qmp::connect(qmp_socket, limit).await {
            Ok(qmp) => return Ok(qmp),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Loads a state saved by [`save_state`] into a QEMU started with [`VmSpec::incoming`], and
/// lets the guest run.
pub async fn load_state(qmp_socket: &Path, file: &Path) -> Result<(), VmError> {
    let mut qmp = load_paused(qmp_socket, file, false).await?;
    resume(&mut qmp).await
}

/// Loads a state saved by [`save_state`] (or, with `memory_in_file`, by [`save_devices`])
/// into a QEMU started with [`VmSpec::incoming`] and leaves the guest paused; returns the QMP
/// connection, for [`resume`].
pub async fn load_paused(
    qmp_socket: &Path,
    file: &Path,
    memory_in_file: bool,
) -> Result<Qmp, VmError> {
    let mut qmp = connect_when_up(qmp_socket, Duration::from_secs(10)).await?;
    if memory_in_file {
        ignore_shared_memory(&mut qmp).await?;
    }
    let uri = exec_uri("<", file)?;
    qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
        .await
        .map_err(command_failed("migrate-incoming"))?;
    let mut status = String::new();
    poll_qmp(&mut qmp, "query-status", Duration::from_secs(120), |a| {
        status = a
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_owned();
        match status.as_str() {
            "inmigrate" => None,
            _ => Some(Ok(())),
        }
    })
    .await?;
    match status.as_str() {
        "running" | "paused" | "postmigrate" | "prelaunch" => Ok(qmp),
        other => Err(VmError::NotLoaded {
            file: file.to_owned(),
            status: other.to_owned(),
        }),
    }
}

/// Lets a guest loaded by [`load_paused`] run.
pub async fn resume(qmp: &mut Qmp) -> Result<(), VmError> {
    qmp.execute("cont", None)
        .await
        .map(|_| ())
        .map_err(command_failed("cont"))
}

/// What the console reader reports.
#[derive(Debug)]
pub enum ConsoleEvent {
    /// A line (without its ending; cut at [`MAX_LINE`] bytes).
    Line(String),
    /// The console closed (QEMU exited).
    Closed,
}

/// How stopping went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Steps taken, in order: `quit`, `SIGTERM`, `SIGKILL`.
    pub steps: Vec<&'static str>,
    /// Whether the process was gone at the end.
    pub stopped: bool,
}

/// A running QEMU.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pid: u32,
    qmp_socket: PathBuf,
    stdin: Option<ChildStdin>,
    console: mpsc::Receiver<ConsoleEvent>,
    console_task: JoinHandle<ConsoleStats>,
    stderr_task: JoinHandle<BoundedCapture>,
}

/// What the console reader saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleStats {
    /// Bytes QEMU wrote to the console.
    pub total: u64,
    /// Bytes written to the log file.
    pub logged: u64,
}

impl Vm {
    /// Starts QEMU. The console goes to `console_log` (at most `log_limit` bytes, then a
    /// marker) and, line by line, to [`Vm::next_console`].
    pub fn start(spec: &VmSpec, console_log: &Path, log_limit: u64) -> std::io::Result<Vm> {
        let log = std::fs::File::create(console_log)?;
        let mut cmd = tokio::process::Command::new(&spec.qemu);
        cmd.args(qemu_args(spec))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        tracing::debug!(
            pid,
            command = %crate::runner::command_line(spec),
            console_log = %console_log.display(),
            "QEMU started"
        );
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel(4096);
        let console_task = tokio::spawn(read_console(
            stdout,
            tokio::fs::File::from_std(log),
            log_limit,
            tx,
        ));
        let stderr_task = tokio::spawn(async move {
            let mut cap = BoundedCapture::new(64 * 1024);
            let _ = cap.read_to_end(stderr).await;
            cap
        });
        Ok(Vm {
            stdin: child.stdin.take(),
            child,
            pid,
            qmp_socket: spec.qmp_socket.clone(),
            console: rx,
            console_task,
            stderr_task,
        })
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next console event; `None` once the reader is done and everything was consumed.
    pub async fn next_console(&mut self) -> Option<ConsoleEvent> {
        self.console.recv().await
    }

    /// Whether QEMU has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Writes a line to the guest's console input.
    pub async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(std::io::Error::other("console input closed"));
        };
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await
    }

    /// Saves a PNG of the display to `path` (the profile must have a display device).
    pub async fn screenshot(&self, path: &Path) -> Result<(), VmError> {
        let mut qmp = Qmp::connect(&self.qmp_socket, Duration::from_secs(2)).await?;
        let args = serde_json::json!({ "filename": path.display().to_string(), "format": "png" });
        tokio::time::timeout(
            Duration::from_secs(5),
            qmp.execute("screendump", Some(args)),
        )
        .await
        .map_err(|_| VmError::ScreendumpTimedOut)?
        .map(|_| ())
        .map_err(VmError::from)
    }

    /// Stops QEMU in stages, each with a bounded wait: QMP `quit`, SIGTERM, SIGKILL.
    pub async fn stop(&mut self) -> StopReport {
        let report = self.stop_in_stages().await;
        tracing::debug!(
            pid = self.pid,
            steps = %report.steps.join(", "),
            stopped = report.stopped,
            "QEMU stopped"
        );
        report
    }

    /// Kills QEMU at once (SIGKILL) and waits for it: for a guest that is thrown away, whose
    /// state nobody needs (a restored guest after its test).
    pub async fn kill(&mut self) -> StopReport {
        let mut report = StopReport::default();
        if self.exited().is_none() {
            report.steps.push("SIGKILL");
            let _ = self.child.start_kill();
        }
        report.stopped = self.wait_for(Duration::from_secs(5)).await;
        tracing::debug!(pid = self.pid, stopped = report.stopped, "QEMU killed");
        report
    }

    async fn stop_in_stages(&mut self) -> StopReport {
        let mut report = StopReport::default();
        if let Some(status) = self.exited() {
            tracing::debug!(pid = self.pid, %status, "QEMU had exited");
            report.stopped = true;
            return report;
        }
        report.steps.push("quit");
        if let Ok(mut qmp) = Qmp::connect(&self.qmp_socket, Duration::from_secs(1)).await {
            // QEMU may exit before it answers; either way, wait for the process.
            let _ = tokio::time::timeout(Duration::from_secs(1), qmp.execute("quit", None)).await;
        }
        if self.wait_for(Duration::from_secs(2)).await {
            report.stopped = true;
            return report;
        }
        report.steps.push("SIGTERM");
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if self.wait_for(Duration::from_secs(2)).await {
            report.stopped = true;
            return report;
        }
        report.steps.push("SIGKILL");
        let _ = self.child.start_kill();
        report.stopped = self.wait_for(Duration::from_secs(5)).await;
        report
    }

    async fn wait_for(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.child.wait()).await.is_ok()
    }

    /// After QEMU exited: its stderr (bounded) and what the console reader saw.
    pub async fn finish(self) -> (String, ConsoleStats) {
        drop(self.stdin);
        drop(self.console);
        let stats = tokio::time::timeout(Duration::from_secs(2), self.console_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = match tokio::time::timeout(Duration::from_secs(2), self.stderr_task).await {
            Ok(Ok(cap)) => cap.finish().text,
            _ => String::new(),
        };
        (stderr, stats)
    }
}

async fn read_console(
    mut stdout: tokio::process::ChildStdout,
    mut log: tokio::fs::File,
    log_limit: u64,
    tx: mpsc::Sender<ConsoleEvent>,
) -> ConsoleStats {
    let mut stats = ConsoleStats::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut marked = false;
    let mut receiver_alive = true;
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        stats.total += n as u64;
        if stats.logged < log_limit {
            let take = (log_limit - stats.logged).min(n as u64) as usize;
            if log.write_all(&chunk[..take]).await.is_ok() {
                stats.logged += take as u64;
            }
        } else if !marked {
            marked = true;
            let _ = log
                .write_all(b"\n[... console log truncated: limit reached ...]\n")
                .await;
        }
        if !receiver_alive {
            continue;
        }
        for &b in chunk {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if tx.send(ConsoleEvent::Line(text)).await.is_err() {
                    receiver_alive = false;
                    break;
                }
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() && receiver_alive {
        let _ = tx
            .send(ConsoleEvent::Line(
                String::from_utf8_lossy(&line).into_owned(),
            ))
            .await;
    }
    let _ = log.flush().await;
    let _ = tx.send(ConsoleEvent::Closed).await;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::Arch;

    #[test]
    fn command_lines_follow_the_profile() {
        let profile = MachineProfile::builtin(Arch::Riscv64);
        let spec = VmSpec {
            qemu: "qemu-system-riscv64".into(),
            accel: Accel::Tcg,
            kernel: "/k/vmlinux".into(),
            unpacked_kernel: None,
            initrd: "/k/initrd".into(),
            firmware: Some("/fw/fw_dynamic.bin".into()),
            append: "console=ttyS0 panic=-1".into(),
            qmp_socket: "/run/q.sock".into(),
            memory_mib: 256,
            cpus: 2,
            artifact_socket: None,
            incoming: false,
            vmcore: false,
            rootfs: None,
            ram_file: None,
            profile,
        };
        let args = qemu_args(&spec).join(" ");
        assert!(
            args.starts_with("-M virt -accel tcg,thread=multi -cpu rv64 -m 256 -smp 2 "),
            "{args}"
        );
        assert!(args.contains("-bios /fw/fw_dynamic.bin"));
        assert!(args.contains("-qmp unix:/run/q.sock,server=on,wait=off"));
        assert!(args.ends_with("-append console=ttyS0 panic=-1"));

        let mut kvm = spec.clone();
        kvm.accel = Accel::Kvm;
        kvm.firmware = None;
        let args = qemu_args(&kvm).join(" ");
        assert!(args.contains("-accel kvm -cpu host"));
        assert!(!args.contains("-bios"));
        assert!(!args.contains("-action"));
    }

    #[test]
    fn memory_in_a_file_and_incoming_guests_paused() {
        let mut spec = VmSpec {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            kernel: "/k/bzImage".into(),
            initrd: "/k/initrd".into(),
            firmware: None,
            append: "console=ttyS0".into(),
            qmp_socket: "/run/q.sock".into(),
            memory_mib: 512,
            cpus: 1,
            artifact_socket: None,
            incoming: false,
            vmcore: false,
            rootfs: None,
            ram_file: Some(RamFile {
                path: "/snap,1/guest.ram".into(),
                shared: true,
            }),
            unpacked_kernel: None,
            profile: MachineProfile::builtin(Arch::X86_64),
        };
        let args = qemu_args(&spec).join(" ");
        assert!(
            args.contains(
                "-m 512 -smp 1 -object memory-backend-file,id=orch-ram,size=512M,\
                 mem-path=/snap,,1/guest.ram,share=on -machine memory-backend=orch-ram "
            ),
            "{args}"
        );
        assert!(!args.contains("-incoming"), "{args}");
        spec.ram_file.as_mut().unwrap().shared = false;
        spec.incoming = true;
        let args = qemu_args(&spec).join(" ");
        assert!(args.contains("share=off"), "{args}");
        assert!(args.ends_with(" -S -incoming defer"), "{args}");
    }

    #[test]
    fn a_vmcore_guest_pauses_at_a_panic_with_its_devices() {
        let spec = VmSpec {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            kernel: "/k/bzImage".into(),
            unpacked_kernel: None,
            initrd: "/k/initrd".into(),
            firmware: None,
            append: "console=ttyS0 panic=0".into(),
            qmp_socket: "/run/q.sock".into(),
            memory_mib: 512,
            cpus: 2,
            artifact_socket: None,
            incoming: false,
            vmcore: true,
            rootfs: None,
            ram_file: None,
            profile: MachineProfile::builtin(Arch::X86_64),
        };
        let args = qemu_args(&spec).join(" ");
        assert!(
            args.contains("-action panic=pause -device pvpanic -device vmcoreinfo -kernel"),
            "{args}"
        );
        assert!(args.contains("-kernel /k/bzImage "), "{args}");
        // An unpacked vmlinux is what QEMU boots.
        let mut unpacked = spec.clone();
        unpacked.unpacked_kernel = Some("/cache/vmlinux-pvh-1234".into());
        let args = qemu_args(&unpacked).join(" ");
        assert!(args.contains("-kernel /cache/vmlinux-pvh-1234 "), "{args}");
        assert!(!args.contains("bzImage"), "{args}");
    }
}
