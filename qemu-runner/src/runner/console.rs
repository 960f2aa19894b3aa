//! The console state machine: what the runner learns from the guest's console lines
//! ([`Watch`]), waiting on them ([`wait`]), and what a boot, an exit or a crash means.

use std::collections::VecDeque;
use std::time::Instant;

use orchestrator_core::{CrashKind, Outcome, Phase};
use tokio_util::sync::CancellationToken;

use crate::crash::{self, Excerpt, Signal};
use crate::protocol::{Parser, Record, Stream};
use crate::vm::{ConsoleEvent, Vm};

pub(super) fn humantime_secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub(super) fn first_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

/// Console bytes kept per test in session mode.
const SLICE_LIMIT: usize = 1 << 20;

/// Why waiting on the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    Ready,
    BadRun,
    TestExit,
    Done,
    Exited,
    Fatal(CrashKind),
    Deadline,
    Cancelled,
}

/// What the runner has learnt from the console.
#[derive(Debug)]
pub(super) struct Watch {
    pub(super) parser: Parser,
    pub(super) excerpt: Excerpt,
    pub(super) tail: VecDeque<String>,
    pub(super) ready: Option<Record>,
    /// What the console showed missing from the kernel's configuration before `READY`.
    pub(super) missing: Option<crash::Missing>,
    pub(super) serious: Option<CrashKind>,
    pub(super) warnings: usize,
    /// A guest poweroff or reboot the console announced.
    pub(super) shutdown: Option<CrashKind>,
    /// The console showed a fatal crash (a kernel panic).
    pub(super) panicked: bool,
    /// QEMU itself failed (it exited by a signal or with an error): the outcome is an
    /// infrastructure error that quotes its stderr once it is read.
    pub(super) qemu_failed: bool,
    /// The agent's results (streams and exit code) arrived intact and were acknowledged.
    pub(super) delivered: bool,
    pub(super) closed: bool,
    pub(super) lines_seen: u64,
    /// Console lines of the current test (session mode), bounded.
    pub(super) slice: Option<Vec<u8>>,
    /// A session guest: a test's kernel log is its console lines rather than the agent's
    /// `dmesg` stream, and the next test (or `QUIT`) acknowledges a test's results.
    pub(super) session_guest: bool,
}

impl Watch {
    pub(super) fn new(limit: u64, serial_artifact_limit: u64) -> Self {
        Watch {
            parser: Parser::new(limit).with_stream_limit("artifacts", serial_artifact_limit),
            excerpt: Excerpt::default(),
            tail: VecDeque::new(),
            ready: None,
            missing: None,
            serious: None,
            warnings: 0,
            shutdown: None,
            panicked: false,
            qemu_failed: false,
            delivered: false,
            closed: false,
            lines_seen: 0,
            slice: None,
            session_guest: false,
        }
    }

    /// Forgets what belonged to the previous test of a session and starts keeping this
    /// test's console lines.
    pub(super) fn start_test(&mut self) {
        self.parser.reset_transfer();
        self.parser.clear_rejections();
        self.excerpt = Excerpt::default();
        self.tail.clear();
        self.serious = None;
        self.warnings = 0;
        self.shutdown = None;
        self.delivered = false;
        self.slice = Some(Vec::new());
    }

    pub(super) fn line(&mut self, line: &str) -> Option<Wait> {
        self.lines_seen += 1;
        if let Some(record) = self.parser.line(line) {
            return match record {
                r @ Record::Ready { .. } => {
                    self.ready = Some(r);
                    Some(Wait::Ready)
                }
                Record::Done => Some(Wait::Done),
                Record::Exit(_) => Some(Wait::TestExit),
                Record::BadRun => Some(Wait::BadRun),
                _ => None,
            };
        }
        if let Some(slice) = &mut self.slice
            && slice.len() < SLICE_LIMIT
        {
            slice.extend_from_slice(line.as_bytes());
            slice.push(b'\n');
        }
        if self.ready.is_none() && self.missing.is_none() {
            self.missing = crash::Missing::recognise(line);
        }
        let signal = crash::classify(line);
        self.excerpt.line(
            line,
            matches!(signal, Some(Signal::Fatal(_) | Signal::Serious(_))),
        );
        self.tail.push_back(line.chars().take(512).collect());
        if self.tail.len() > 20 {
            self.tail.pop_front();
        }
        match signal {
            Some(Signal::Fatal(kind)) => {
                self.panicked = true;
                return Some(Wait::Fatal(kind));
            }
            Some(Signal::Serious(kind)) if self.ready.is_some() && self.serious.is_none() => {
                self.serious = Some(kind);
            }
            Some(Signal::Warning) => self.warnings += 1,
            Some(Signal::Shutdown(kind)) => self.shutdown = Some(kind),
            Some(Signal::Serious(_)) | None => {}
        }
        None
    }

    /// Keeps the console lines from now on (a guest of its own: the kernel log if the agent
    /// cannot send one).
    pub(super) fn keep_console(&mut self) {
        if self.slice.is_none() {
            self.slice = Some(Vec::new());
        }
    }

    /// Whether every stream arrived intact, with the exit code.
    pub(super) fn transfer_complete(&self) -> bool {
        let s = self.parser.streams();
        let serial_artifacts = self.stream_text("channel").as_deref() == Some("serial-console");
        self.parser.exit().is_some()
            && [
                "stdout", "stderr", "dmesg", "manifest", "missing", "channel",
            ]
            .iter()
            .all(|n| s.get(*n).is_some_and(Stream::verified))
            && (!serial_artifacts || s.get("artifacts").is_some_and(Stream::verified))
    }

    /// A small verified stream as trimmed text.
    pub(super) fn stream_text(&self, name: &str) -> Option<String> {
        self.parser
            .streams()
            .get(name)
            .filter(|s| s.verified())
            .map(|s| String::from_utf8_lossy(&s.data).trim().to_owned())
    }
}

pub(super) async fn wait(
    vm: &mut Vm,
    watch: &mut Watch,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Wait {
    loop {
        if watch.closed {
            // The console is gone; QEMU is exiting or has exited.
            return Wait::Exited;
        }
        tokio::select! {
            event = vm.next_console() => match event {
                Some(ConsoleEvent::Line(line)) => {
                    if let Some(w) = watch.line(&line) {
                        return w;
                    }
                }
                Some(ConsoleEvent::Closed) | None => {
                    watch.closed = true;
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => return Wait::Deadline,
            () = cancel.cancelled() => return Wait::Cancelled,
        }
    }
}

/// The outcome of a boot that did not reach `READY` (`None` when it did). `console` is the
/// kernel's name for the console device: a console that showed nothing names its driver's
/// options. What the console showed missing from the kernel's configuration is named in the
/// note.
pub(super) async fn boot_outcome(
    vm: &mut Vm,
    watch: &mut Watch,
    booted: Wait,
    boot_limit: std::time::Duration,
    console: &str,
) -> Option<(Outcome, String)> {
    // Appended to a note: what the kernel lacks, as the console showed it.
    let missing = |watch: &Watch| {
        watch
            .missing
            .as_ref()
            .map(|m| format!(": {}", m.explain()))
            .unwrap_or_default()
    };
    Some(match booted {
        Wait::Ready => return None,
        Wait::Fatal(kind) => {
            drain_after_crash(vm, watch).await;
            (
                Outcome::Crashed {
                    crash: CrashKind::BootFailure,
                },
                format!(
                    "the kernel crashed before the guest was ready ({kind}){}",
                    missing(watch)
                ),
            )
        }
        Wait::Exited => {
            let (outcome, note) = exit_outcome(vm, watch, "before the guest was ready").await;
            if watch.qemu_failed || watch.lines_seen == 0 {
                // QEMU's own failure: quoted with its stderr once that is read.
                watch.qemu_failed = true;
                (outcome, note)
            } else {
                (
                    Outcome::Crashed {
                        crash: CrashKind::BootFailure,
                    },
                    format!("{note}{}", missing(watch)),
                )
            }
        }
        Wait::Deadline => {
            let mut note = format!(
                "boot failure: the guest did not become ready within {}",
                humantime_secs(boot_limit)
            );
            if watch.missing.is_some() {
                note.push_str(&missing(watch));
            } else if watch.lines_seen == 0 {
                note.push_str(&format!(
                    "; the console showed nothing: the kernel may lack the driver of its console {console}"
                ));
                if let Some(options) = crash::console_options(console) {
                    note.push_str(&format!(" ({options})"));
                }
            }
            (
                Outcome::TimedOut {
                    phase: Phase::Boot,
                    limit: boot_limit,
                },
                note,
            )
        }
        Wait::Cancelled => (
            Outcome::Cancelled,
            "the run was cancelled during boot".into(),
        ),
        Wait::Done | Wait::TestExit | Wait::BadRun => {
            unreachable!("no record comes before READY")
        }
    })
}

/// How long the agent has to report a stopped test's exit: its SIGTERM grace (2 s) and the
/// start of its report, under emulation.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Stops a test past its deadline: `STOP` on the console makes the agent send SIGTERM, then
/// SIGKILL, to the test's processes, and report as usual; returns the exit code it reports.
/// `Err` says why nothing will come (the guest does not answer, it crashed, it exited): what
/// the console carried is all there is.
pub(super) async fn stop_test(
    vm: &mut Vm,
    watch: &mut Watch,
    cancel: &CancellationToken,
) -> Result<i32, String> {
    if let Err(e) = vm.send_line("STOP").await {
        return Err(format!(
            "the test could not be stopped ({e}): its output is lost"
        ));
    }
    let grace = Instant::now() + STOP_GRACE;
    loop {
        return match wait(vm, watch, grace, cancel).await {
            Wait::TestExit | Wait::Done => watch
                .parser
                .exit()
                .ok_or_else(|| "the agent reported no exit code".to_owned()),
            Wait::Ready | Wait::BadRun => continue,
            Wait::Fatal(kind) => {
                drain_after_crash(vm, watch).await;
                Err(format!(
                    "the kernel crashed ({kind}) while the test was stopped: its output is lost; see console.log"
                ))
            }
            Wait::Exited => Err("QEMU exited while the test was stopped".into()),
            Wait::Deadline => Err(format!(
                "the guest did not answer within {} of being asked to stop the test: its output is lost; the kernel log is what the console carried",
                humantime_secs(STOP_GRACE)
            )),
            Wait::Cancelled => Err("the run was cancelled while the test was stopped".into()),
        };
    }
}

/// Why QEMU exited while the runner still needed the guest (`when` says at what point): QEMU
/// killed by a signal or ending with an error of its own is an infrastructure error (retried
/// under `retries`; its stderr is quoted later by [`quote_qemu_stderr`]); a clean exit is the
/// guest's doing: the crash the kernel reported, a poweroff or a reboot the console announced
/// (`-no-reboot` turns a reboot into an exit), or an unexplained exit.
pub(super) async fn exit_outcome(vm: &mut Vm, watch: &mut Watch, when: &str) -> (Outcome, String) {
    // The console closed: QEMU is exiting or gone; its status comes within moments.
    let status = tokio::time::timeout(std::time::Duration::from_secs(1), vm.wait())
        .await
        .ok()
        .and_then(Result::ok);
    let clean = status.is_some_and(|s| s.success());
    if !clean {
        watch.qemu_failed = true;
        let how = match status {
            Some(s) => describe_exit(s),
            None => "stopped answering".to_owned(),
        };
        let text = format!("QEMU {how} {when}");
        return (Outcome::infra(text.clone()), text);
    }
    let (crash, why) = match (watch.serious, watch.shutdown) {
        (Some(kind), _) => (kind, format!("the kernel reported {kind}")),
        (None, Some(CrashKind::Reboot)) => (CrashKind::Reboot, "the guest rebooted".to_owned()),
        (None, Some(kind)) => (kind, "the guest powered off".to_owned()),
        (None, None) => (
            CrashKind::UnexpectedExit,
            "QEMU exited cleanly without a reason on the console".to_owned(),
        ),
    };
    (Outcome::Crashed { crash }, format!("{why} {when}"))
}

/// How a process ended, in words: `was killed by SIGKILL`, `exited with status 1`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
        format!("was killed by {name}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

/// Completes an infrastructure error caused by QEMU itself with the first lines of its stderr.
pub(super) fn quote_qemu_stderr(outcome: &mut Outcome, watch: &Watch, stderr: &str) {
    let Outcome::InfraError { message, .. } = outcome else {
        return;
    };
    if !watch.qemu_failed {
        return;
    }
    let quoted = first_lines(stderr, 5).unwrap_or_else(|| "no error output".into());
    *message = if message.is_empty() || watch.lines_seen == 0 {
        format!("QEMU failed to start the guest: {quoted}")
    } else {
        format!("{message}; QEMU's stderr: {quoted}")
    };
}

/// After a fatal crash: read what the kernel still prints (the backtrace) until QEMU exits
/// (`panic=-1` with `-no-reboot`) or a few seconds pass.
pub(super) async fn drain_after_crash(vm: &mut Vm, watch: &mut Watch) {
    let until = Instant::now() + std::time::Duration::from_secs(3);
    let never = CancellationToken::new();
    while !watch.closed && Instant::now() < until {
        if wait(vm, watch, until, &never).await == Wait::Deadline {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel (a) of the KUnit kernels booted with 4 KiB of random bytes as its initramfs
    /// (see crash.rs): the first thing the console shows missing is kept, the panic after it
    /// ends the boot.
    #[test]
    fn the_first_missing_piece_is_kept_and_the_panic_ends_the_boot() {
        let mut watch = Watch::new(1 << 20, 1 << 20);
        let lines = [
            "[    0.794448] Initramfs unpacking failed: invalid magic at start of compressed archive",
            "[    1.765316] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
        ];
        assert_eq!(watch.line(lines[0]), None);
        assert_eq!(
            watch.line(lines[1]),
            Some(Wait::Fatal(CrashKind::KernelPanic))
        );
        assert_eq!(
            watch.missing,
            Some(crash::Missing::InitramfsUnpacking(
                "invalid magic at start of compressed archive".into()
            ))
        );
        // After READY, a test's own output names nothing.
        let mut ready = Watch::new(1 << 20, 1 << 20);
        ready.line(&format!("ORCH1 {} READY 6.1.172 x86_64", "ab".repeat(16)));
        assert!(ready.ready.is_some());
        ready.line("Failed to execute /init (error -8)");
        assert_eq!(ready.missing, None);
    }
}
