//! The [`Monitor`] handle, the [`Guard`] a watch returns and the [`Instrumented`] future wrapper.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Child;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::time::{ClockId, clock_gettime};

use crate::model::{ExactTotals, Recording, Sample};
use crate::sampler::{Sampler, SamplerOptions};
use crate::verdict::Thresholds;

/// How a [`Monitor`] samples. Derives `Default`; change what you need.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// Time between samples (default 100 ms; CPU percentages need at least that).
    pub interval: Duration,
    /// Verdict thresholds.
    pub thresholds: Thresholds,
    /// When a watched root leads its process group, also adopt processes of that group found by
    /// a periodic full `/proc` scan (catches orphans that were reparented before the sampler saw
    /// them, e.g. `qemu -daemonize`). Default on.
    pub follow_process_group: bool,
    /// Least time between two full `/proc` scans (default 1 s). Descendants are otherwise found
    /// incrementally through `/proc/<pid>/task/<tid>/children`; a scan runs only after the
    /// tree changed (orphans appear only when one of its processes exits), and at least every
    /// ten intervals.
    pub rescan_interval: Duration,
    /// How long [`Guard::finish`] waits for the sampler's final sample (default 5 s) and how
    /// long dropping a guard waits (a fifth of it); dropping never waits longer.
    pub stop_timeout: Duration,
    /// Most samples kept in a series; past it every other sample is dropped and the stride
    /// doubles, so memory stays bounded on long runs (default 36 000: one hour at 10 Hz).
    pub max_samples: usize,
    /// Where procfs is mounted (default `/proc`); tests point it at a fake tree.
    pub proc_root: PathBuf,
    /// Most procfs descriptors a watch keeps open for `pread` re-reads (default 256; four per
    /// process). Past it, files are opened per read: slower, never wrong.
    pub max_open_files: usize,
    /// How often `/proc/<pid>/status` (VmHWM, context switches) is re-read (default 500 ms, at
    /// least every sample); it is the costliest file. It is always read for a new process and
    /// at the final sample; VmHWM is monotonic and the counters cumulative, so nothing is lost
    /// but time resolution of the context-switch series.
    pub status_interval: Duration,
    /// How many processes the per-process breakdown keeps in each of its lists (top by CPU, top
    /// by peak memory; default 5). 0 turns the breakdown off (and the command-line reads of new
    /// processes with it).
    pub top_processes: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_millis(100),
            thresholds: Thresholds::default(),
            follow_process_group: true,
            rescan_interval: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(5),
            max_samples: 36_000,
            proc_root: PathBuf::from("/proc"),
            max_open_files: 256,
            status_interval: Duration::from_millis(500),
            top_processes: 5,
        }
    }
}

impl MonitorConfig {
    /// Sets the sampling interval.
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the verdict thresholds.
    #[must_use]
    pub fn with_thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sets the procfs mount point.
    #[must_use]
    pub fn with_proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = root.into();
        self
    }

    /// Sets how many processes each list of the per-process breakdown keeps (0: none).
    #[must_use]
    pub fn with_top_processes(mut self, n: usize) -> Self {
        self.top_processes = n;
        self
    }
}

/// A watch could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The pid does not exist (or exited before the first sample).
    #[error("no such process: pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// The sampler thread could not be started.
    #[error("failed to start the sampler thread for `{label}`")]
    Thread {
        /// The watch's label.
        label: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The sampler thread ended without a result (it panicked: a bug).
    #[error("sampler for `{label}` ended without a result")]
    SamplerFailed {
        /// The watch's label.
        label: String,
    },
    /// The sampler did not hand back its result within the stop timeout.
    #[error("sampler for `{label}` did not finish within {timeout:?}")]
    Timeout {
        /// The watch's label.
        label: String,
        /// The timeout.
        timeout: Duration,
    },
}

type Sink = Arc<dyn Fn(&Recording) + Send + Sync>;

/// A cheap, cloneable handle that starts watches. Make as many as you like, or share the one
/// from [`Monitor::global`].
#[derive(Clone, Default)]
pub struct Monitor {
    config: Arc<MonitorConfig>,
    sink: Option<Sink>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.config)
            .field("sink", &self.sink.as_ref().map(|_| "Fn(&Recording)"))
            .finish()
    }
}

static GLOBAL: OnceLock<Monitor> = OnceLock::new();

enum Cmd {
    Stop,
    AddPid(u32),
    Mark(String),
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<SharedState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SharedState {
    latest: Option<Sample>,
    roots_exited: bool,
}

impl Monitor {
    /// A monitor with `config`.
    pub fn new(config: MonitorConfig) -> Self {
        Monitor {
            config: Arc::new(config),
            sink: None,
        }
    }

    /// Calls `sink` with every finished recording, including those of guards that were dropped
    /// rather than finished (a harness stores them this way).
    #[must_use]
    pub fn with_sink(mut self, sink: impl Fn(&Recording) + Send + Sync + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// The process-wide monitor: the one passed to [`install_global`](Self::install_global), or
    /// a default one. Nothing forces its use; separate [`Monitor`]s work side by side.
    pub fn global() -> &'static Monitor {
        GLOBAL.get_or_init(Monitor::default)
    }

    /// Makes `self` the process-wide monitor; gives it back if one was already set or used.
    pub fn install_global(self) -> Result<(), Monitor> {
        GLOBAL.set(self)
    }

    /// Watches `pid` and all its descendants. Works on any pid readable in procfs (another
    /// user's processes yield fewer metrics, marked unavailable); exact totals need
    /// [`watch_child`](Self::watch_child).
    pub fn watch_pid(&self, pid: u32, label: impl Into<String>) -> Result<Guard, MonitorError> {
        self.start(&[pid], None, label.into())
    }

    /// Watches several roots as one tree (a test's process group leader and a QEMU, say).
    pub fn watch_pids(
        &self,
        pids: &[u32],
        label: impl Into<String>,
    ) -> Result<Guard, MonitorError> {
        self.start(pids, None, label.into())
    }

    /// Watches the current process (and its children).
    pub fn watch_current(&self, label: impl Into<String>) -> Result<Guard, MonitorError> {
        self.start(&[std::process::id()], None, label.into())
    }

    /// Watches a child this process spawned and takes it over: the monitor reaps it with
    /// `wait4` (after a last sample of the zombie), so the summary gets exact CPU and peak-RSS
    /// totals beside the sampled ones, and the exit status. Do not wait for it elsewhere.
    /// If the guard finishes while the child still runs, a detached thread reaps it later.
    pub fn watch_child(
        &self,
        child: Child,
        label: impl Into<String>,
    ) -> Result<Guard, MonitorError> {
        let pid = child.id();
        self.start(&[pid], Some(child), label.into())
    }

    /// Wraps a future: the watch (of the current process tree) starts at its first poll and
    /// finishes when it completes, and the CPU time spent inside its polls is measured on
    /// whichever thread polls it. Resolves to the future's output and the recording.
    pub fn instrument<F: Future>(&self, future: F, label: impl Into<String>) -> Instrumented<F> {
        Instrumented {
            future: Box::pin(future),
            monitor: self.clone(),
            label: label.into(),
            pid: std::process::id(),
            guard: None,
            start_error: None,
            poll_cpu: Duration::ZERO,
        }
    }

    fn start(
        &self,
        pids: &[u32],
        child: Option<Child>,
        label: String,
    ) -> Result<Guard, MonitorError> {
        let cfg = &*self.config;
        let Some(mut sampler) = Sampler::new(pids, &sampler_options(cfg)) else {
            if let Some(c) = child {
                reap_later(c);
            }
            return Err(MonitorError::NoSuchProcess {
                pid: pids.first().copied().unwrap_or(0),
            });
        };
        let shared = Arc::new(Shared::default());
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
        let (res_tx, res_rx) = mpsc::sync_channel::<Recording>(1);
        let interval = cfg.interval.max(Duration::from_millis(1));
        let thresholds = cfg.thresholds.clone();
        let sink = self.sink.clone();
        let shared2 = Arc::clone(&shared);
        let label2 = label.clone();
        let handle = std::thread::Builder::new()
            .name(format!(
                "perf-monitor:{}",
                pids.first().copied().unwrap_or(0)
            ))
            .spawn(move || {
                let t0 = thread_cpu();
                let mut child = child;
                let mut exact = None;
                // Fixed rate: ticks at start + k * interval; late ticks are skipped, not queued.
                let mut deadline = Instant::now();
                loop {
                    step(&mut sampler, &mut child, &mut exact, &shared2);
                    let now = Instant::now();
                    deadline += interval;
                    while deadline <= now {
                        deadline += interval;
                    }
                    let mut stop = false;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match cmd_rx.recv_timeout(left) {
                            Ok(Cmd::AddPid(p)) => {
                                sampler.add_root(p);
                            }
                            Ok(Cmd::Mark(label)) => sampler.mark(label),
                            Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => {
                                stop = true;
                                break;
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                // Final sample (of the zombie, if the child just exited).
                sampler.set_final();
                step(&mut sampler, &mut child, &mut exact, &shared2);
                if let Some(c) = child.take() {
                    reap_later(c);
                }
                let monitor_cpu_s = (thread_cpu() - t0).as_secs_f64();
                let rec = sampler.finalize(&label2, interval, exact, monitor_cpu_s, &thresholds);
                if let Some(sink) = &sink {
                    sink(&rec);
                }
                let _ = res_tx.try_send(rec);
            })
            .map_err(|source| MonitorError::Thread {
                label: label.clone(),
                source,
            })?;
        Ok(Guard {
            label,
            cmd: cmd_tx,
            result: res_rx,
            shared,
            handle: Some(handle),
            stop_timeout: cfg.stop_timeout,
        })
    }
}

/// A synchronous, thread-less sampler: you decide when to sample. What a [`Guard`]'s thread
/// runs, for callers that drive sampling themselves (from `spawn_blocking`, a benchmark, a
/// harness loop).
pub struct Probe {
    sampler: Sampler,
    label: String,
    interval: Duration,
    thresholds: Thresholds,
    t0: Duration,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// A probe of the trees rooted at `pids`, configured like `monitor`'s watches.
    pub fn new(
        monitor: &Monitor,
        pids: &[u32],
        label: impl Into<String>,
    ) -> Result<Self, MonitorError> {
        let cfg = &*monitor.config;
        let sampler =
            Sampler::new(pids, &sampler_options(cfg)).ok_or(MonitorError::NoSuchProcess {
                pid: pids.first().copied().unwrap_or(0),
            })?;
        Ok(Probe {
            sampler,
            label: label.into(),
            interval: cfg.interval,
            thresholds: cfg.thresholds.clone(),
            t0: thread_cpu(),
        })
    }

    /// Takes a sample and records a phase mark at it.
    pub fn mark(&mut self, label: impl Into<String>) {
        self.sampler.mark(label.into());
    }

    /// Takes one sample and returns it.
    pub fn sample(&mut self) -> &Sample {
        self.sampler.tick();
        // tick() always records a sample.
        self.sampler.latest().unwrap_or(&EMPTY_SAMPLE)
    }

    /// Takes a final sample and condenses all of them. `monitor_cpu_s` counts this thread's
    /// CPU since [`Probe::new`].
    pub fn finish(mut self) -> Recording {
        self.sampler.set_final();
        self.sampler.tick();
        let cpu = thread_cpu().saturating_sub(self.t0).as_secs_f64();
        self.sampler
            .finalize(&self.label, self.interval, None, cpu, &self.thresholds)
    }
}

static EMPTY_SAMPLE: Sample = Sample {
    t_ms: 0,
    processes: 0,
    threads: 0,
    cpu_user_s: 0.0,
    cpu_system_s: 0.0,
    cpu_guest_s: 0.0,
    cpu_percent: None,
    rss_bytes: 0,
    vms_bytes: 0,
    fds: None,
    read_bytes: None,
    write_bytes: None,
    read_chars: None,
    write_chars: None,
    ctx_voluntary: None,
    ctx_involuntary: None,
    minor_faults: 0,
    major_faults: 0,
    net_rx_bytes: None,
    net_tx_bytes: None,
    load: None,
    psi_cpu_some: None,
    psi_memory_full: None,
    psi_io_full: None,
    steal_percent: None,
    host_busy_percent: None,
};

fn sampler_options(cfg: &MonitorConfig) -> SamplerOptions {
    SamplerOptions {
        proc_root: cfg.proc_root.clone(),
        follow_process_group: cfg.follow_process_group,
        rescan_interval: cfg.rescan_interval,
        max_samples: cfg.max_samples,
        max_open_files: cfg.max_open_files,
        top_processes: cfg.top_processes,
        status_every: (cfg.status_interval.as_nanos() / cfg.interval.as_nanos().max(1)).max(1)
            as u64,
    }
}

/// One sampling step: reap the owned child if it exited (after sampling its zombie), sample.
fn step(
    sampler: &mut Sampler,
    child: &mut Option<Child>,
    exact: &mut Option<ExactTotals>,
    shared: &Shared,
) {
    let exited = child.as_ref().is_some_and(|c| {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(waitid(Id::Pid(pid), flags), Ok(WaitStatus::StillAlive))
    });
    sampler.tick();
    if exited && let Some(mut c) = child.take() {
        // The child is a zombie: its figures are final and were just sampled; wait4 returns
        // at once.
        use wait4::Wait4;
        if let Ok(r) = c.wait4() {
            use std::os::unix::process::ExitStatusExt;
            *exact = Some(ExactTotals {
                user_s: r.rusage.utime.as_secs_f64(),
                system_s: r.rusage.stime.as_secs_f64(),
                max_rss_bytes: r.rusage.maxrss,
                exit_code: r.status.code(),
                signal: r.status.signal(),
            });
        }
    }
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.latest = sampler.latest().cloned();
    if !sampler.roots_alive() || exact.is_some() {
        st.roots_exited = true;
        shared.cv.notify_all();
    }
}

/// Reaps a child we own but no longer watch, without blocking the caller.
fn reap_later(mut child: Child) {
    let _ = std::thread::Builder::new()
        .name("perf-monitor-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
}

fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// A running watch. Finish it with [`finish`](Self::finish) to get the [`Recording`];
/// dropping it stops the watch too (the recording then goes to the monitor's sink only).
/// Neither panics; dropping waits at most a fifth of the stop timeout.
#[must_use = "dropping the guard stops the watch at once"]
pub struct Guard {
    label: String,
    cmd: mpsc::Sender<Cmd>,
    result: mpsc::Receiver<Recording>,
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
    stop_timeout: Duration,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// The watch's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Adds another root to the watched tree (a process the test started later).
    pub fn add_pid(&self, pid: u32) {
        let _ = self.cmd.send(Cmd::AddPid(pid));
    }

    /// Marks the start of a phase (`"boot"`, `"run"`): the sampler takes a sample at once and
    /// records the mark in [`Summary::marks`](crate::Summary::marks). Does not block.
    pub fn mark(&self, label: impl Into<String>) {
        let _ = self.cmd.send(Cmd::Mark(label.into()));
    }

    /// The newest sample, if one was taken.
    pub fn latest(&self) -> Option<Sample> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latest
            .clone()
    }

    /// Waits up to `timeout` for the watched roots to exit (the owned child to be reaped);
    /// `true` if they did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.roots_exited {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.shared.cv.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Stops sampling, takes a final sample and returns the recording.
    pub fn finish(mut self) -> Result<Recording, MonitorError> {
        let _ = self.cmd.send(Cmd::Stop);
        match self.result.recv_timeout(self.stop_timeout) {
            Ok(r) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
                Ok(r)
            }
            Err(RecvTimeoutError::Disconnected) => Err(MonitorError::SamplerFailed {
                label: self.label.clone(),
            }),
            Err(RecvTimeoutError::Timeout) => Err(MonitorError::Timeout {
                label: self.label.clone(),
                timeout: self.stop_timeout,
            }),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let _ = self.cmd.send(Cmd::Stop);
        // Bounded: the sampler finishes on its own and hands the recording to the sink.
        if self.result.recv_timeout(self.stop_timeout / 5).is_ok() {
            let _ = handle.join();
        }
    }
}

/// A future watched from its first poll to its completion; see [`Monitor::instrument`].
#[must_use = "futures do nothing unless polled"]
pub struct Instrumented<F: Future> {
    future: Pin<Box<F>>,
    monitor: Monitor,
    label: String,
    pid: u32,
    guard: Option<Guard>,
    start_error: Option<MonitorError>,
    poll_cpu: Duration,
}

impl<F: Future> fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("label", &self.label)
            .field("poll_cpu", &self.poll_cpu)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Instrumented<F> {
    /// Watches `pid` (and descendants) instead of the current process.
    pub fn with_pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = (F::Output, Result<Recording, MonitorError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.guard.is_none() && this.start_error.is_none() {
            match this.monitor.watch_pid(this.pid, this.label.clone()) {
                Ok(g) => this.guard = Some(g),
                Err(e) => this.start_error = Some(e),
            }
        }
        let t0 = thread_cpu();
        let out = this.future.as_mut().poll(cx);
        this.poll_cpu += thread_cpu().saturating_sub(t0);
        match out {
            Poll::Pending => Poll::Pending,
            Poll::Ready(v) => {
                let rec = match (this.guard.take(), this.start_error.take()) {
                    (Some(g), _) => g.finish().map(|mut r| {
                        r.summary.poll_cpu_s = Some(this.poll_cpu.as_secs_f64());
                        r
                    }),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(MonitorError::NoSuchProcess { pid: this.pid }),
                };
                Poll::Ready((v, rec))
            }
        }
    }
}
