//! One watch's sampling state: the tracked tree, the accounting of departed processes and the
//! host counters. Pure procfs reads; the thread around it lives in `monitor.rs`.
//!
//! # Accounting
//! The kernel adds a reaped child's CPU time, page faults and I/O to its parent's `c*` fields
//! (and, for I/O, to the parent's own `io` file). So the tree's cumulative cost is the sum over
//! its live (and zombie) processes of "own + reaped children", plus the last-seen figures of
//! processes that left the tree without an in-tree parent to absorb them (the roots, orphans).
//! A process that vanishes while its parent is alive in the tree was reaped by that parent:
//! its cost is now inside the parent's figures and is dropped from ours. Children that start
//! and exit between two samples are therefore counted through their parent, without a subreaper.
//! Context switches are not inherited, so they are summed from last-seen figures.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::{
    CpuSummary, ExactTotals, HostSummary, IoSummary, Mark, MemorySummary, ProcessFigures,
    ProcessSummary, Recording, SCHEMA_VERSION, Sample, SamplingError, Summary,
};
use crate::procread::{self, CpuTimes, Io, Pressure};
use crate::verdict::{self, Thresholds};

/// Cumulative per-process figures (ticks for CPU), children that were reaped included.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    user: u64,
    system: u64,
    guest: u64,
    minflt: u64,
    majflt: u64,
    io: Option<Io>,
    vcsw: Option<u64>,
    ivcsw: Option<u64>,
}

#[derive(Debug)]
struct Tracked {
    start: u64,
    ppid: u32,
    last: Counters,
    status: procread::Status,
    seen_tick: u64,
    /// The process's own figures for the per-process breakdown.
    own: Own,
}

/// One process's own figures, for the per-process breakdown (names empty when it is off).
#[derive(Debug, Default)]
struct Own {
    name: String,
    /// [`procread::Stat::exec_key`] when `name` and `command` were read.
    exec_key: u64,
    /// Reads of an empty command line so far: one read in the middle of an `exec` is empty,
    /// so it is tried again on the next samples (a few times: a kernel thread's stays empty).
    empty_reads: u8,
    command: String,
    /// utime + stime, ticks.
    cpu: u64,
    /// cutime + cstime, ticks.
    children_cpu: u64,
    peak_rss: u64,
    first_ms: u64,
    last_ms: u64,
}

/// Kept-open descriptors of one process: stat, status, io, main thread's children.
#[derive(Debug, Default)]
struct Handles {
    slots: [Option<std::fs::File>; 4],
    io_denied: bool,
}

/// Host-wide files, by index; [`HOST_NET`] is the watched namespace's `net/dev`.
const HOST_FILES: [&str; 6] = [
    "stat",
    "loadavg",
    "pressure/cpu",
    "pressure/memory",
    "pressure/io",
    "",
];
const HOST_NET: usize = 5;

/// Sum of figures; `io_missing` / `ctx_missing` once any contributing process was unreadable.
/// What one pass over the tree adds up besides the counters: memory, threads, processes, fds.
#[derive(Clone, Copy, Debug, Default)]
struct Gauges {
    rss: u64,
    vms: u64,
    threads: u64,
    nprocs: u32,
    fds: u64,
    /// Some process's fd count could not be read.
    fds_missing: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    user: u64,
    system: u64,
    guest: u64,
    minflt: u64,
    majflt: u64,
    io: Io,
    io_missing: bool,
    vcsw: u64,
    ivcsw: u64,
    ctx_missing: bool,
}

impl Acc {
    fn add_cost(&mut self, c: &Counters) {
        self.user += c.user;
        self.system += c.system;
        self.guest += c.guest;
        self.minflt += c.minflt;
        self.majflt += c.majflt;
        match c.io {
            Some(io) => {
                self.io.rchar += io.rchar;
                self.io.wchar += io.wchar;
                self.io.read_bytes += io.read_bytes;
                self.io.write_bytes += io.write_bytes;
                self.io.cancelled_write_bytes += io.cancelled_write_bytes;
            }
            None => self.io_missing = true,
        }
    }
    /// Never below `floor`: every field is a cumulative counter, but a tick can see a child
    /// already gone while its parent's `c*` fields, read just before, do not have it yet; the
    /// next tick has it back. Without the floor that dip and return is a one-tick spike of the
    /// child's whole CPU time (thousands of percent).
    fn at_least(mut self, floor: &Acc) -> Acc {
        self.user = self.user.max(floor.user);
        self.system = self.system.max(floor.system);
        self.guest = self.guest.max(floor.guest);
        self.minflt = self.minflt.max(floor.minflt);
        self.majflt = self.majflt.max(floor.majflt);
        self.io.rchar = self.io.rchar.max(floor.io.rchar);
        self.io.wchar = self.io.wchar.max(floor.io.wchar);
        self.io.read_bytes = self.io.read_bytes.max(floor.io.read_bytes);
        self.io.write_bytes = self.io.write_bytes.max(floor.io.write_bytes);
        self.vcsw = self.vcsw.max(floor.vcsw);
        self.ivcsw = self.ivcsw.max(floor.ivcsw);
        self
    }
    fn add_ctx(&mut self, c: &Counters) {
        match (c.vcsw, c.ivcsw) {
            (Some(v), Some(i)) => {
                self.vcsw += v;
                self.ivcsw += i;
            }
            _ => self.ctx_missing = true,
        }
    }
}

#[derive(Debug, Default)]
struct Host {
    cpu_first: Option<CpuTimes>,
    cpu_prev: Option<CpuTimes>,
    cpu_last: Option<CpuTimes>,
    psi_first: [Option<Pressure>; 3],
    psi_last: [Option<Pressure>; 3],
    net_path: Option<PathBuf>,
    net_first: Option<(u64, u64)>,
    /// The first root's network namespace (`net:[inode]`), and whether it is the monitor's own.
    net_ns: Option<String>,
    net_ns_shared: Option<bool>,
    mem_total: Option<u64>,
    cpus: u32,
    kernel: Option<String>,
    cpu_model: Option<String>,
}

/// The state of one watch.
#[derive(Debug)]
pub(crate) struct Sampler {
    proc_root: PathBuf,
    roots: Vec<(u32, u64)>,
    pgids: Vec<u32>,
    follow_pgid: bool,
    rescan_every: Duration,
    last_rescan: Option<Instant>,
    churn: bool,
    reaped_flt: u64,
    children_supported: bool,
    procs: HashMap<u32, Tracked>,
    files: HashMap<u32, Handles>,
    open_files: usize,
    max_open_files: usize,
    host_files: [Option<std::fs::File>; 6],
    psi_missing: [bool; 3],
    status_every: u64,
    final_tick: bool,
    departed: Acc,
    /// The highest totals so far (see [`Acc::at_least`]).
    high: Acc,
    tick: u64,
    buf: Vec<u8>,
    path: String,
    queue: Vec<(u32, bool)>,
    visited: HashSet<u32>,
    kids: Vec<u32>,
    clk_tck: f64,
    page: u64,
    host: Host,
    started: Instant,
    started_unix_ms: u64,
    last_t: Option<(Instant, u64)>,
    // Running figures for the summary.
    seen: u64,
    hwm_max: Option<u64>,
    unavailable: BTreeSet<&'static str>,
    series: Vec<Sample>,
    max_samples: usize,
    stride: u64,
    cpu_peak: Option<f64>,
    write_rate_peak: Option<f64>,
    prev_write: Option<(u64, u64)>,
    rss_peak: u64,
    vms_peak: u64,
    procs_peak: u32,
    threads_peak: u64,
    fds_peak: Option<u64>,
    load1_peak: Option<f64>,
    latest: Option<Sample>,
    samples: u64,
    roots_alive: bool,
    marks: Vec<Mark>,
    /// Entries per list of the per-process breakdown; 0: off.
    top_n: usize,
    /// Departed processes that may still make a top list (bounded, see [`Sampler::retire`]).
    gone_top: Vec<ProcessFigures>,
}

/// What the monitor needs from its configuration.
#[derive(Debug, Clone)]
pub(crate) struct SamplerOptions {
    pub(crate) proc_root: PathBuf,
    pub(crate) follow_process_group: bool,
    pub(crate) rescan_interval: Duration,
    pub(crate) max_samples: usize,
    pub(crate) max_open_files: usize,
    pub(crate) status_every: u64,
    pub(crate) top_processes: usize,
}

fn clk_tck() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v as f64,
        _ => 100.0,
    }
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => 4096,
    }
}

impl Sampler {
    /// A sampler for `pids`; `None` when none of them exists.
    pub(crate) fn new(pids: &[u32], opts: &SamplerOptions) -> Option<Self> {
        let mut s = Sampler {
            proc_root: opts.proc_root.clone(),
            roots: Vec::new(),
            pgids: Vec::new(),
            follow_pgid: opts.follow_process_group,
            rescan_every: opts.rescan_interval,
            last_rescan: None,
            churn: false,
            reaped_flt: 0,
            children_supported: true,
            procs: HashMap::new(),
            files: HashMap::new(),
            open_files: 0,
            max_open_files: opts.max_open_files,
            host_files: Default::default(),
            psi_missing: [false; 3],
            status_every: opts.status_every.max(1),
            final_tick: false,
            departed: Acc::default(),
            high: Acc::default(),
            tick: 0,
            buf: Vec::with_capacity(4096),
            path: String::with_capacity(64),
            queue: Vec::new(),
            visited: HashSet::new(),
            kids: Vec::new(),
            clk_tck: clk_tck(),
            page: page_size(),
            host: Host::default(),
            started: Instant::now(),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            last_t: None,
            seen: 0,
            hwm_max: None,
            unavailable: BTreeSet::new(),
            series: Vec::new(),
            max_samples: opts.max_samples.max(2),
            stride: 1,
            cpu_peak: None,
            write_rate_peak: None,
            prev_write: None,
            rss_peak: 0,
            vms_peak: 0,
            procs_peak: 0,
            threads_peak: 0,
            fds_peak: None,
            load1_peak: None,
            latest: None,
            samples: 0,
            roots_alive: true,
            marks: Vec::new(),
            top_n: opts.top_processes,
            gone_top: Vec::new(),
        };
        for &pid in pids {
            s.add_root(pid);
        }
        if s.roots.is_empty() {
            return None;
        }
        let first = s.roots[0].0;
        s.host.net_path = Some(s.proc_root.join(first.to_string()).join("net/dev"));
        let ns = |p: PathBuf| {
            std::fs::read_link(p)
                .ok()
                .map(|l| l.to_string_lossy().into_owned())
        };
        s.host.net_ns = ns(s.proc_root.join(first.to_string()).join("ns/net"));
        s.host.net_ns_shared = s
            .host
            .net_ns
            .as_ref()
            .zip(ns(s.proc_root.join("self/ns/net")))
            .map(|(a, b)| *a == b);
        s.host.mem_total = procread::read_into(&s.proc_root.join("meminfo"), &mut s.buf)
            .then(|| procread::parse_mem_total(&s.buf))
            .flatten();
        s.host.kernel = std::fs::read_to_string(s.proc_root.join("sys/kernel/osrelease"))
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        s.host.cpu_model = std::fs::read_to_string(s.proc_root.join("cpuinfo"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| {
                        l.strip_prefix("model name")
                            .or_else(|| l.strip_prefix("uarch"))
                    })
                    .and_then(|v| v.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            });
        s.host.cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Some(s)
    }

    /// Adds a root; `false` when it does not exist.
    pub(crate) fn add_root(&mut self, pid: u32) -> bool {
        let Some(stat) = self.read_stat(pid) else {
            return false;
        };
        if !self.roots.iter().any(|r| r.0 == pid) {
            self.roots.push((pid, stat.starttime));
            if stat.pgrp == pid && !self.pgids.contains(&pid) {
                self.pgids.push(pid);
            }
        }
        self.roots_alive = true;
        true
    }

    /// Takes a sample and records a phase mark at it.
    pub(crate) fn mark(&mut self, label: String) {
        self.tick();
        let (t_ms, cpu_s) = self
            .latest
            .as_ref()
            .map_or((0, 0.0), |l| (l.t_ms, l.cpu_user_s + l.cpu_system_s));
        self.marks.push(Mark { label, t_ms, cpu_s });
    }

    /// Makes the next tick the final one: every file is read afresh.
    pub(crate) fn set_final(&mut self) {
        self.final_tick = true;
    }

    /// Whether any root was alive (zombies included) at the last tick.
    pub(crate) fn roots_alive(&self) -> bool {
        self.roots_alive
    }

    /// The newest sample.
    pub(crate) fn latest(&self) -> Option<&Sample> {
        self.latest.as_ref()
    }

    fn set_path(&mut self, pid: u32, rest: &str) {
        self.path.clear();
        let _ = write!(self.path, "{}/{pid}/{rest}", self.proc_root.display());
    }

    /// Whether another descriptor may be kept open (four per process at most).
    fn may_keep(&self) -> bool {
        self.open_files < self.max_open_files
    }

    /// Reads one per-process file, through the kept-open descriptor when there is one.
    fn read_file(&mut self, pid: u32, kind: usize) -> bool {
        const NAMES: [&str; 4] = ["stat", "status", "io", ""];
        if kind == 3 {
            self.path.clear();
            let _ = write!(
                self.path,
                "{}/{pid}/task/{pid}/children",
                self.proc_root.display()
            );
        } else {
            self.set_path(pid, NAMES[kind]);
        }
        let keep = self.may_keep();
        let h = self.files.entry(pid).or_default();
        let had = h.slots[kind].is_some();
        let ok = procread::read_cached(&mut h.slots[kind], &self.path, &mut self.buf, keep);
        let has = h.slots[kind].is_some();
        match (had, has) {
            (false, true) => self.open_files += 1,
            (true, false) => self.open_files -= 1,
            _ => {}
        }
        if !ok && had && kind == 0 {
            // The kept descriptor belonged to a process that is gone: the pid may have been
            // reused, so look again by path (start times decide).
            return self.read_file(pid, kind);
        }
        ok
    }

    fn forget_files(&mut self, pid: u32) {
        if let Some(h) = self.files.remove(&pid) {
            self.open_files -= h.slots.iter().filter(|s| s.is_some()).count();
        }
    }

    fn read_stat(&mut self, pid: u32) -> Option<procread::Stat> {
        if !self.read_file(pid, 0) {
            return None;
        }
        procread::parse_stat(&self.buf)
    }

    /// Lists the children of `pid`: those of its main thread every tick (kept descriptor), those
    /// of its other threads when `all_threads` (a directory walk, done at the status rate:
    /// a child forked by another thread is found a little later, with its whole history).
    fn read_children(&mut self, pid: u32, threads: u64, all_threads: bool) {
        self.kids.clear();
        if threads <= 1 || !all_threads {
            if self.read_file(pid, 3) {
                procread::parse_children(&self.buf, &mut self.kids);
            } else if Path::new(&self.path).parent().is_some_and(Path::exists) {
                self.children_supported = false;
            }
            return;
        }
        self.set_path(pid, "task");
        let Ok(rd) = std::fs::read_dir(&self.path) else {
            return;
        };
        let tids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for tid in tids {
            self.set_path(pid, &format!("task/{tid}/children"));
            if procread::read_into(Path::new(&self.path), &mut self.buf) {
                procread::parse_children(&self.buf, &mut self.kids);
            }
        }
    }

    fn fd_count(&mut self, pid: u32) -> Option<u64> {
        self.set_path(pid, "fd");
        // Since Linux 6.2 the size of /proc/<pid>/fd is the number of open descriptors.
        let md = std::fs::metadata(&self.path).ok()?;
        if md.len() > 0 {
            return Some(md.len());
        }
        std::fs::read_dir(&self.path)
            .ok()
            .map(|rd| rd.count() as u64)
    }

    /// The head of `pid`'s command line, read by path and bounded (a linker's may be megabytes).
    fn command_of(&mut self, pid: u32) -> String {
        use std::io::Read as _;
        self.set_path(pid, "cmdline");
        let mut raw = Vec::new();
        let limit = 4 * ProcessFigures::COMMAND_MAX as u64 + 4;
        match std::fs::File::open(&self.path) {
            Ok(f) if (&f).take(limit).read_to_end(&mut raw).is_ok() => {
                procread::command_head(&raw, ProcessFigures::COMMAND_MAX)
            }
            _ => String::new(),
        }
    }

    /// A departed process's last figures, offered to the breakdown. The list stays bounded:
    /// past `4 * top_n` entries, only those within the top `top_n` by CPU or by peak memory
    /// stay. A departed process's figures are final, so one outside both tops then can never
    /// enter them later: the final lists are exact.
    fn retire(&mut self, pid: u32, t: Tracked) {
        if self.top_n == 0 {
            return;
        }
        let mut f = self.figures_of(pid, &t);
        f.exited = true;
        self.gone_top.push(f);
        if self.gone_top.len() > 4 * self.top_n {
            let n = self.top_n;
            let mut keep = vec![false; self.gone_top.len()];
            let mut order: Vec<usize> = (0..self.gone_top.len()).collect();
            order.sort_by(|&a, &b| by_cpu(&self.gone_top[a], &self.gone_top[b]));
            order.iter().take(n).for_each(|&i| keep[i] = true);
            order.sort_by(|&a, &b| by_memory(&self.gone_top[a], &self.gone_top[b]));
            order.iter().take(n).for_each(|&i| keep[i] = true);
            let mut i = 0;
            self.gone_top.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }

    fn figures_of(&self, pid: u32, t: &Tracked) -> ProcessFigures {
        ProcessFigures {
            pid,
            ppid: t.ppid,
            name: t.own.name.clone(),
            command: t.own.command.clone(),
            cpu_s: t.own.cpu as f64 / self.clk_tck,
            children_cpu_s: t.own.children_cpu as f64 / self.clk_tck,
            peak_rss_bytes: t.own.peak_rss,
            first_seen_ms: t.own.first_ms,
            last_seen_ms: t.own.last_ms,
            exited: false,
        }
    }

    /// The top lists: live processes at their latest figures beside the departed ones.
    fn top_lists(&self) -> (Vec<ProcessFigures>, Vec<ProcessFigures>) {
        if self.top_n == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut all: Vec<ProcessFigures> = self
            .procs
            .iter()
            .map(|(&pid, t)| self.figures_of(pid, t))
            .chain(self.gone_top.iter().cloned())
            .collect();
        all.sort_by(by_cpu);
        let cpu = all.iter().take(self.top_n).cloned().collect();
        all.sort_by(by_memory);
        all.truncate(self.top_n);
        (cpu, all)
    }

    /// Reads a host-wide file (`kind` indexes [`HOST_FILES`]) through a kept descriptor.
    fn read_host(&mut self, kind: usize) -> bool {
        self.path.clear();
        if kind == HOST_NET {
            match &self.host.net_path {
                Some(p) => self.path.push_str(&p.to_string_lossy()),
                None => return false,
            }
        } else {
            let _ = write!(
                self.path,
                "{}/{}",
                self.proc_root.display(),
                HOST_FILES[kind]
            );
        }
        procread::read_cached(&mut self.host_files[kind], &self.path, &mut self.buf, true)
    }

    /// Full `/proc` scan for processes of the roots' process groups or with an in-tree parent.
    fn rescan(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let pids: Vec<u32> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        for pid in pids {
            if self.visited.contains(&pid) || self.procs.contains_key(&pid) {
                continue;
            }
            self.set_path(pid, "stat");
            // By path: no descriptor is kept for processes outside the tree.
            if procread::read_into(Path::new(&self.path), &mut self.buf)
                && let Some(st) = procread::parse_stat(&self.buf)
                && (self.visited.contains(&st.ppid) || self.pgids.contains(&st.pgrp))
            {
                self.queue.push((pid, true));
            }
        }
    }

    /// Takes one sample.
    pub(crate) fn tick(&mut self) {
        self.tick += 1;
        let tick = self.tick;
        let now = Instant::now();
        let t_ms = now.duration_since(self.started).as_millis() as u64;
        self.visited.clear();
        self.queue.clear();
        for &(pid, _) in &self.roots {
            self.queue.push((pid, true));
        }
        self.queue.extend(self.procs.keys().map(|&p| (p, false)));
        let mut g = Gauges::default();
        let mut live = Acc::default();
        let mut roots_alive = false;
        let mut cminflt_sum = 0u64;
        let mut rescanned = false;
        loop {
            let Some((pid, via_parent)) = self.queue.pop() else {
                // Orphans appear only when a process of the tree exits, so with working
                // `children` files a scan is due only after churn (a departure, a new process,
                // a reaped child seen through `cminflt`), at most once per `rescan_every`, with
                // a backstop every ten intervals.
                let due = self.last_rescan.is_none_or(|t| {
                    let since = now.duration_since(t);
                    (since >= self.rescan_every && (self.churn || !self.children_supported))
                        || since >= self.rescan_every * 10
                });
                let wanted =
                    !self.children_supported || (self.follow_pgid && !self.pgids.is_empty());
                if !rescanned && due && wanted {
                    rescanned = true;
                    self.churn = false;
                    self.last_rescan = Some(now);
                    self.rescan();
                    continue;
                }
                break;
            };
            if self.visited.contains(&pid) {
                continue;
            }
            let Some(stat) = self.read_stat(pid) else {
                continue;
            };
            // The name from the stat just read (before another read reuses the buffer), only
            // for a new process or after an exec (a forked child starts with its parent's name
            // and command line): then the command line is read again too.
            let name = (self.top_n > 0)
                .then(|| procread::comm_of(&self.buf))
                .flatten()
                .filter(|c| {
                    self.procs.get(&pid).is_none_or(|t| {
                        t.start != stat.starttime
                            || (stat.exec_key != 0 && t.own.exec_key != stat.exec_key)
                            || t.own.name.as_bytes() != *c
                            || (t.own.command.is_empty()
                                && t.own.empty_reads < 3
                                && stat.state != b'Z')
                    })
                })
                .map(|c| String::from_utf8_lossy(c).into_owned());
            let root = self.roots.iter().find(|r| r.0 == pid).copied();
            let known_start = self.procs.get(&pid).map(|t| t.start);
            let is_same = match (root, known_start) {
                (Some((_, start)), _) => stat.starttime == start,
                (None, Some(start)) => stat.starttime == start,
                (None, None) => via_parent,
            };
            if !is_same {
                if root.is_some() || !via_parent {
                    // A reused pid: not ours (the old process is accounted as departed below).
                    continue;
                }
                // A new child of the tree reusing the pid of a process that left it.
                self.forget_files(pid);
                if let Some(old) = self.procs.remove(&pid) {
                    if !self.visited.contains(&old.ppid) {
                        self.departed.add_cost(&old.last);
                    }
                    self.departed.add_ctx(&old.last);
                    self.retire(pid, old);
                }
            }
            if root.is_some() {
                roots_alive = true;
            }
            self.visited.insert(pid);
            // status is the costliest file: read it every `status_every` ticks, for new
            // processes and on the final tick; its counters are cumulative, VmHWM monotonic.
            let prev = self.procs.get(&pid).filter(|t| t.start == stat.starttime);
            // Also when RSS grew past the last VmHWM: the peak is moving, read it now.
            let rss_now = stat.rss_pages * self.page;
            // An exec replaced the image: the process's own peak starts again (a fork shares its
            // parent's pages until it execs; VmHWM starts again too), so read the status now.
            // A key of 0 is no image at all: an exiting process (its memory already gone,
            // not yet a zombie) or a kernel thread.
            let execed = self.top_n > 0
                && stat.exec_key != 0
                && prev.is_some_and(|t| t.own.exec_key != stat.exec_key);
            let status_due = prev.is_none_or(|t| t.status.hwm_bytes.is_some_and(|h| rss_now > h))
                || execed
                || self.final_tick
                || tick.is_multiple_of(self.status_every);
            let status = if !status_due {
                prev.map(|t| t.status).unwrap_or_default()
            } else if self.read_file(pid, 1) {
                procread::parse_status(&self.buf)
            } else {
                procread::Status::default()
            };
            let io_denied = self.files.get(&pid).is_some_and(|h| h.io_denied);
            let io = if io_denied {
                None
            } else if self.read_file(pid, 2) {
                procread::parse_io(&self.buf)
            } else {
                if let Some(h) = self.files.get_mut(&pid) {
                    h.io_denied = true;
                }
                None
            };
            let c = Counters {
                user: stat.utime + stat.cutime,
                system: stat.stime + stat.cstime,
                guest: stat.guest_time + stat.cguest_time,
                minflt: stat.minflt + stat.cminflt,
                majflt: stat.majflt + stat.cmajflt,
                io: io.map(|mut io| {
                    io.write_bytes = io.write_bytes.saturating_sub(io.cancelled_write_bytes);
                    io.cancelled_write_bytes = 0;
                    io
                }),
                vcsw: status.voluntary_ctxt,
                ivcsw: status.nonvoluntary_ctxt,
            };
            if stat.state != b'Z' {
                match self.fd_count(pid) {
                    Some(n) => g.fds += n,
                    None => g.fds_missing = true,
                }
            }
            if let Some(h) = status.hwm_bytes {
                self.hwm_max = Some(self.hwm_max.map_or(h, |m| m.max(h)));
            }
            live.add_cost(&c);
            live.add_ctx(&c);
            cminflt_sum += stat.cminflt;
            g.rss += stat.rss_pages * self.page;
            g.vms += stat.vsize;
            g.threads += stat.num_threads;
            g.nprocs += 1;
            let command = match &name {
                Some(_) if stat.state != b'Z' => Some(self.command_of(pid))
                    // Read while exiting: keep what was read before.
                    .filter(|c| !c.is_empty() || stat.exec_key != 0),
                _ => None,
            };
            let peak_rss = rss_now.max(status.hwm_bytes.unwrap_or(0));
            let update_own = |own: &mut Own| {
                own.cpu = stat.utime + stat.stime;
                own.children_cpu = stat.cutime + stat.cstime;
                if execed {
                    own.peak_rss = 0;
                }
                own.peak_rss = own.peak_rss.max(peak_rss);
                own.last_ms = t_ms;
                if let Some(n) = name {
                    own.name = n;
                    if stat.exec_key != 0 {
                        own.exec_key = stat.exec_key;
                    }
                }
                if let Some(c) = command {
                    own.empty_reads = own.empty_reads.saturating_add(u8::from(c.is_empty()));
                    own.command = c;
                }
            };
            match self.procs.entry(pid) {
                Entry::Occupied(mut o) => {
                    let t = o.get_mut();
                    t.ppid = stat.ppid;
                    t.last = c;
                    t.status = status;
                    t.seen_tick = tick;
                    update_own(&mut t.own);
                }
                Entry::Vacant(v) => {
                    let mut own = Own {
                        first_ms: t_ms,
                        ..Own::default()
                    };
                    update_own(&mut own);
                    v.insert(Tracked {
                        start: stat.starttime,
                        ppid: stat.ppid,
                        last: c,
                        status,
                        seen_tick: tick,
                        own,
                    });
                    self.seen += 1;
                    self.churn = true;
                }
            }
            if stat.state != b'Z' {
                self.read_children(pid, stat.num_threads, status_due);
                for i in 0..self.kids.len() {
                    let k = self.kids[i];
                    if !self.visited.contains(&k) {
                        self.queue.push((k, true));
                    }
                }
            }
        }
        self.roots_alive = roots_alive;
        // Departures: absorbed by a live in-tree parent, or kept at their last-seen figures.
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, t)| t.seen_tick != tick)
            .map(|(&p, _)| p)
            .collect();
        if cminflt_sum != self.reaped_flt || !gone.is_empty() {
            self.churn = true;
        }
        self.reaped_flt = cminflt_sum;
        for pid in gone {
            self.forget_files(pid);
            if let Some(t) = self.procs.remove(&pid) {
                if !self.visited.contains(&t.ppid) {
                    self.departed.add_cost(&t.last);
                }
                self.departed.add_ctx(&t.last);
                self.retire(pid, t);
            }
        }
        let total = {
            let mut a = live;
            let d = self.departed;
            a.user += d.user;
            a.system += d.system;
            a.guest += d.guest;
            a.minflt += d.minflt;
            a.majflt += d.majflt;
            a.io.rchar += d.io.rchar;
            a.io.wchar += d.io.wchar;
            a.io.read_bytes += d.io.read_bytes;
            a.io.write_bytes += d.io.write_bytes;
            a.io_missing |= d.io_missing;
            a.vcsw += d.vcsw;
            a.ivcsw += d.ivcsw;
            a.ctx_missing |= d.ctx_missing;
            a.at_least(&self.high)
        };
        self.high = total;
        let sample = self.finish_sample(now, &total, &g);
        self.record(sample);
    }

    fn finish_sample(&mut self, now: Instant, a: &Acc, g: &Gauges) -> Sample {
        let Gauges {
            rss,
            vms,
            threads,
            nprocs,
            fds,
            fds_missing,
        } = *g;
        let t_ms = now.duration_since(self.started).as_millis() as u64;
        let cpu_ticks = a.user + a.system;
        let cpu_percent = self.last_t.and_then(|(t, ticks)| {
            let dt = now.duration_since(t).as_secs_f64();
            (dt > 0.0).then(|| (cpu_ticks.saturating_sub(ticks)) as f64 / self.clk_tck / dt * 100.0)
        });
        self.last_t = Some((now, cpu_ticks));
        // Host.
        let cpu = self
            .read_host(0)
            .then(|| procread::parse_cpu_times(&self.buf))
            .flatten();
        let (steal_percent, host_busy_percent) = match (self.host.cpu_prev, cpu) {
            (Some(p), Some(c)) if c.total > p.total => {
                let dt = (c.total - p.total) as f64;
                (
                    Some(c.steal.saturating_sub(p.steal) as f64 / dt * 100.0),
                    Some(c.busy.saturating_sub(p.busy) as f64 / dt * 100.0),
                )
            }
            _ => (None, None),
        };
        if cpu.is_some() {
            self.host.cpu_first.get_or_insert(cpu.unwrap_or_default());
            self.host.cpu_prev = cpu;
            self.host.cpu_last = cpu;
        } else {
            self.unavailable.insert("host_cpu");
        }
        let load = self
            .read_host(1)
            .then(|| procread::parse_loadavg(&self.buf))
            .flatten();
        if load.is_none() {
            self.unavailable.insert("load");
        }
        let mut psi = [None; 3];
        for i in 0..3 {
            psi[i] = (!self.psi_missing[i] && self.read_host(2 + i))
                .then(|| procread::parse_pressure(&self.buf))
                .flatten();
            // A kernel without PSI will not grow it: stop trying.
            self.psi_missing[i] |= psi[i].is_none() && self.host_files[2 + i].is_none();
            if psi[i].is_some() {
                if self.host.psi_first[i].is_none() {
                    self.host.psi_first[i] = psi[i];
                }
                self.host.psi_last[i] = psi[i];
            } else {
                self.unavailable
                    .insert(["psi_cpu", "psi_memory", "psi_io"][i]);
            }
        }
        let net = self
            .read_host(HOST_NET)
            .then(|| procread::parse_net_dev(&self.buf))
            .flatten();
        let net_delta = match (net, self.host.net_first) {
            (Some(n), None) => {
                self.host.net_first = Some(n);
                Some((0, 0))
            }
            (Some(n), Some(f)) => Some((n.0.saturating_sub(f.0), n.1.saturating_sub(f.1))),
            (None, _) => {
                // The namespace's file went away with the root: keep the last figures.
                self.latest
                    .as_ref()
                    .and_then(|l| l.net_rx_bytes.zip(l.net_tx_bytes))
            }
        };
        if net_delta.is_none() {
            self.unavailable.insert("network");
        }
        if a.io_missing {
            self.unavailable.insert("io");
        }
        if a.ctx_missing {
            self.unavailable.insert("context_switches");
        }
        if fds_missing {
            self.unavailable.insert("fds");
        }
        let io = (!a.io_missing).then_some(a.io);
        Sample {
            t_ms,
            processes: nprocs,
            threads,
            cpu_user_s: a.user as f64 / self.clk_tck,
            cpu_system_s: a.system as f64 / self.clk_tck,
            cpu_guest_s: a.guest as f64 / self.clk_tck,
            cpu_percent,
            rss_bytes: rss,
            vms_bytes: vms,
            fds: (!fds_missing).then_some(fds),
            read_bytes: io.map(|i| i.read_bytes),
            write_bytes: io.map(|i| i.write_bytes),
            read_chars: io.map(|i| i.rchar),
            write_chars: io.map(|i| i.wchar),
            ctx_voluntary: (!a.ctx_missing).then_some(a.vcsw),
            ctx_involuntary: (!a.ctx_missing).then_some(a.ivcsw),
            minor_faults: a.minflt,
            major_faults: a.majflt,
            net_rx_bytes: net_delta.map(|n| n.0),
            net_tx_bytes: net_delta.map(|n| n.1),
            load,
            psi_cpu_some: psi[0].map(|p| p.some_avg10),
            psi_memory_full: psi[1].and_then(|p| p.full_avg10),
            psi_io_full: psi[2].and_then(|p| p.full_avg10),
            steal_percent,
            host_busy_percent,
        }
    }

    fn record(&mut self, s: Sample) {
        self.samples += 1;
        if let Some(p) = s.cpu_percent {
            self.cpu_peak = Some(self.cpu_peak.map_or(p, |m| m.max(p)));
        }
        if let Some(w) = s.write_bytes {
            if let Some((t, prev)) = self.prev_write {
                let dt = s.t_ms.saturating_sub(t) as f64 / 1000.0;
                if dt > 0.0 {
                    let r = w.saturating_sub(prev) as f64 / dt;
                    self.write_rate_peak = Some(self.write_rate_peak.map_or(r, |m| m.max(r)));
                }
            }
            self.prev_write = Some((s.t_ms, w));
        }
        self.rss_peak = self.rss_peak.max(s.rss_bytes);
        self.vms_peak = self.vms_peak.max(s.vms_bytes);
        self.procs_peak = self.procs_peak.max(s.processes);
        self.threads_peak = self.threads_peak.max(s.threads);
        if let Some(f) = s.fds {
            self.fds_peak = Some(self.fds_peak.map_or(f, |m| m.max(f)));
        }
        if let Some(l) = s.load {
            self.load1_peak = Some(self.load1_peak.map_or(l[0], |m| m.max(l[0])));
        }
        // Bounded memory: past `max_samples`, keep every other sample and double the stride.
        if self.samples.is_multiple_of(self.stride) {
            self.series.push(s.clone());
            if self.series.len() >= self.max_samples {
                let mut i = 0;
                self.series.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
        }
        self.latest = Some(s);
    }

    /// Condenses everything into a recording.
    pub(crate) fn finalize(
        mut self,
        label: &str,
        interval: Duration,
        exact: Option<ExactTotals>,
        monitor_cpu_s: f64,
        thresholds: &Thresholds,
    ) -> Recording {
        let last = self.latest.clone().unwrap_or_default();
        if self.series.last() != Some(&last) && self.samples > 0 {
            self.series.push(last.clone());
        }
        let duration_s = self.started.elapsed().as_secs_f64();
        let total_s = last.cpu_user_s + last.cpu_system_s;
        let span_s = last.t_ms as f64 / 1000.0;
        let rate = |v: Option<u64>| v.and_then(|b| (span_s > 0.0).then(|| b as f64 / span_s));
        let peak_bytes = self.rss_peak.max(self.hwm_max.unwrap_or(0));
        let h = &self.host;
        let psi_share = |i: usize, full: bool| -> Option<f64> {
            let (f, l) = (h.psi_first[i]?, h.psi_last[i]?);
            let (a, b) = if full {
                (f.full_total_us?, l.full_total_us?)
            } else {
                (f.some_total_us, l.some_total_us)
            };
            (span_s > 0.0).then(|| b.saturating_sub(a) as f64 / 1e6 / span_s * 100.0)
        };
        let cpu_share = |pick: fn(&CpuTimes) -> u64| -> Option<f64> {
            let (f, l) = (h.cpu_first?, h.cpu_last?);
            (l.total > f.total).then(|| {
                pick(&l).saturating_sub(pick(&f)) as f64 / (l.total - f.total) as f64 * 100.0
            })
        };
        let host = HostSummary {
            cpus: h.cpus,
            kernel: h.kernel.clone(),
            cpu_model: h.cpu_model.clone(),
            mem_total_bytes: h.mem_total,
            load1_peak: self.load1_peak,
            load_end: last.load,
            psi_cpu_some: psi_share(0, false),
            psi_memory_full: psi_share(1, true),
            psi_io_full: psi_share(2, true),
            steal_percent: cpu_share(|c| c.steal),
            busy_percent: cpu_share(|c| c.busy),
            iowait_percent: cpu_share(|c| c.iowait),
        };
        let sampling_error = exact.as_ref().map(|e| {
            let ex = e.user_s + e.system_s;
            SamplingError {
                cpu_s: ex - total_s,
                cpu_relative: (ex > 0.0).then(|| (ex - total_s) / ex),
                max_rss_bytes: e.max_rss_bytes as i64 - peak_bytes as i64,
            }
        });
        if self.hwm_max.is_none() {
            self.unavailable.insert("vm_hwm");
        }
        let (top_cpu, top_memory) = self.top_lists();
        let mut summary = Summary {
            schema_version: SCHEMA_VERSION,
            label: label.to_owned(),
            pids: self.roots.iter().map(|r| r.0).collect(),
            started_at_unix_ms: self.started_unix_ms,
            duration_s,
            interval_ms: interval.as_millis() as u64,
            samples: self.samples,
            cpu: CpuSummary {
                user_s: last.cpu_user_s,
                system_s: last.cpu_system_s,
                guest_s: last.cpu_guest_s,
                total_s,
                avg_percent: (span_s > 0.0).then(|| total_s / span_s * 100.0),
                peak_percent: self.cpu_peak,
            },
            memory: MemorySummary {
                rss_bytes: last.rss_bytes,
                rss_peak_bytes: self.rss_peak,
                hwm_bytes: self.hwm_max,
                peak_bytes,
                vms_bytes: last.vms_bytes,
                vms_peak_bytes: self.vms_peak,
                peak_percent: h
                    .mem_total
                    .map(|t| peak_bytes as f64 / t.max(1) as f64 * 100.0),
            },
            io: IoSummary {
                read_bytes: last.read_bytes,
                write_bytes: last.write_bytes,
                read_chars: last.read_chars,
                write_chars: last.write_chars,
                read_rate: rate(last.read_bytes),
                write_rate: rate(last.write_bytes),
                write_rate_peak: self.write_rate_peak,
                net_rx_bytes: last.net_rx_bytes,
                net_tx_bytes: last.net_tx_bytes,
                net_namespace: h.net_ns.clone(),
                net_namespace_shared: h.net_ns_shared,
            },
            processes: ProcessSummary {
                seen: self.seen,
                peak: self.procs_peak,
                threads_peak: self.threads_peak,
                fds_peak: self.fds_peak,
                ctx_voluntary: last.ctx_voluntary,
                ctx_involuntary: last.ctx_involuntary,
                minor_faults: last.minor_faults,
                major_faults: last.major_faults,
            },
            host,
            exact,
            sampling_error,
            monitor_cpu_s,
            poll_cpu_s: None,
            marks: std::mem::take(&mut self.marks),
            top_cpu,
            top_memory,
            unavailable: self.unavailable.iter().map(|s| (*s).to_owned()).collect(),
            score: 0.0,
            verdict: Default::default(),
        };
        let (v, score) = verdict::judge(&summary, thresholds);
        summary.verdict = v;
        summary.score = score;
        Recording {
            summary,
            series: std::mem::take(&mut self.series),
        }
    }
}

/// Highest own CPU first (then lowest pid, for a stable order).
fn by_cpu(a: &ProcessFigures, b: &ProcessFigures) -> std::cmp::Ordering {
    b.cpu_s.total_cmp(&a.cpu_s).then(a.pid.cmp(&b.pid))
}

/// Highest peak RSS first (then lowest pid).
fn by_memory(a: &ProcessFigures, b: &ProcessFigures) -> std::cmp::Ordering {
    b.peak_rss_bytes
        .cmp(&a.peak_rss_bytes)
        .then(a.pid.cmp(&b.pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn stat_line(pid: u32, ppid: u32, utime: u64, cutime: u64) -> String {
        format!(
            "{pid} (p) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 {utime} 0 {cutime} 0 20 0 1 0 {start} 4096 10 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
            start = 1000 + pid
        )
    }

    fn put(root: &Path, pid: u32, ppid: u32, utime: u64, cutime: u64, kids: &str) {
        let p = root.join(pid.to_string());
        fs::create_dir_all(p.join(format!("task/{pid}"))).unwrap();
        fs::write(p.join("stat"), stat_line(pid, ppid, utime, cutime)).unwrap();
        fs::write(p.join(format!("task/{pid}/children")), kids).unwrap();
    }

    fn opts(root: &Path) -> SamplerOptions {
        SamplerOptions {
            proc_root: root.to_owned(),
            follow_process_group: false,
            rescan_interval: Duration::from_secs(1),
            max_samples: 100,
            // Path reads only, so rewritten files are seen.
            max_open_files: 0,
            status_every: 1,
            top_processes: 2,
        }
    }

    fn cpu(s: &Sampler) -> f64 {
        let l = s.latest().unwrap();
        l.cpu_user_s + l.cpu_system_s
    }

    #[test]
    fn a_child_reaped_by_its_in_tree_parent_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 100, 1, 100, 0, "101 ");
        put(r, 101, 100, 50, 0, "");
        let mut s = Sampler::new(&[100], &opts(r)).unwrap();
        let tck = s.clk_tck;
        s.tick();
        assert_eq!(s.latest().unwrap().processes, 2);
        assert!((cpu(&s) - 150.0 / tck).abs() < 1e-9);
        // The child ran on to 80 ticks and was reaped by the parent: it moves into cutime.
        fs::remove_dir_all(r.join("101")).unwrap();
        put(r, 100, 1, 110, 80, "");
        s.tick();
        assert_eq!(s.latest().unwrap().processes, 1);
        assert!((cpu(&s) - 190.0 / tck).abs() < 1e-9, "{}", cpu(&s));
        assert_eq!(s.seen, 2);
    }

    #[test]
    fn a_child_reaped_between_reading_its_parent_and_itself_makes_no_spike() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 110, 1, 10, 0, "111 ");
        put(r, 111, 110, 500, 0, "");
        let mut s = Sampler::new(&[110], &opts(r)).unwrap();
        let tck = s.clk_tck;
        s.tick();
        // The parent was read before it reaped the child, the child after it was gone.
        fs::remove_dir_all(r.join("111")).unwrap();
        put(r, 110, 1, 10, 0, "");
        s.tick();
        assert!(
            (cpu(&s) - 510.0 / tck).abs() < 1e-9,
            "never backwards: {}",
            cpu(&s)
        );
        // Next tick the parent's cutime has it (the child ran 20 more ticks).
        put(r, 110, 1, 10, 520, "");
        s.tick();
        assert!((cpu(&s) - 530.0 / tck).abs() < 1e-9, "{}", cpu(&s));
        // So the rate between the last two ticks is from 20 ticks, not from the child's 500.
    }

    #[test]
    fn an_orphan_and_the_root_keep_their_last_seen_cost_when_they_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 200, 1, 10, 0, "201 ");
        put(r, 201, 200, 20, 0, "");
        let mut s = Sampler::new(&[200], &opts(r)).unwrap();
        let tck = s.clk_tck;
        s.tick();
        // The root exits (reaped outside the tree); the child is orphaned to pid 1.
        fs::remove_dir_all(r.join("200")).unwrap();
        put(r, 201, 1, 30, 0, "");
        s.tick();
        assert!(!s.roots_alive());
        assert!((cpu(&s) - 40.0 / tck).abs() < 1e-9, "{}", cpu(&s));
        // The orphan is reaped by init: its last figures stay.
        fs::remove_dir_all(r.join("201")).unwrap();
        s.tick();
        assert_eq!(s.latest().unwrap().processes, 0);
        assert!((cpu(&s) - 40.0 / tck).abs() < 1e-9);
    }

    #[test]
    fn a_reused_pid_outside_the_tree_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 300, 1, 10, 0, "301 ");
        put(r, 301, 300, 5, 0, "");
        let mut s = Sampler::new(&[300], &opts(r)).unwrap();
        s.tick();
        // 301 exits and is reaped by the root; an unrelated process gets pid 301 (other start).
        put(r, 300, 1, 10, 5, "");
        fs::write(
            r.join("301/stat"),
            stat_line(301, 1, 999, 0).replace(" 1301 ", " 9999 "),
        )
        .unwrap();
        s.tick();
        let l = s.latest().unwrap();
        assert_eq!(l.processes, 1);
        assert!((cpu(&s) - 15.0 / s.clk_tck).abs() < 1e-9, "{}", cpu(&s));
    }

    #[test]
    fn the_series_stays_bounded_on_long_runs() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 400, 1, 1, 0, "");
        let mut o = opts(r);
        o.max_samples = 8;
        let mut s = Sampler::new(&[400], &o).unwrap();
        for _ in 0..1000 {
            s.tick();
        }
        assert!(s.series.len() <= 8, "{}", s.series.len());
        assert_eq!(s.samples, 1000);
        let rec = s.finalize(
            "long",
            Duration::from_millis(100),
            None,
            0.0,
            &Thresholds::default(),
        );
        assert_eq!(rec.summary.samples, 1000);
        assert!(rec.series.len() <= 9);
        assert!(rec.series.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    }

    #[test]
    fn departed_processes_stay_bounded_and_the_top_lists_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 500, 1, 1, 0, "");
        let mut s = Sampler::new(&[500], &opts(r)).unwrap();
        s.tick();
        // 100 children, one at a time, each seen once then gone; child 537 burns the most.
        for k in 0..100u32 {
            let pid = 501 + k;
            let ticks = if pid == 537 { 900 } else { u64::from(k % 50) };
            put(r, 500, 1, 1, 0, &format!("{pid} "));
            put(r, pid, 500, ticks, 0, "");
            s.tick();
            fs::remove_dir_all(r.join(pid.to_string())).unwrap();
            put(r, 500, 1, 1, 0, "");
            s.tick();
            assert!(s.gone_top.len() <= 4 * s.top_n, "{}", s.gone_top.len());
        }
        let rec = s.finalize(
            "many",
            Duration::from_millis(100),
            None,
            0.0,
            &Thresholds::default(),
        );
        let cpu: Vec<u32> = rec.summary.top_cpu.iter().map(|p| p.pid).collect();
        // Then the first child with 49 ticks (k = 49).
        assert_eq!(cpu, [537, 550], "{:#?}", rec.summary.top_cpu);
        let top = &rec.summary.top_cpu[0];
        assert_eq!(top.name, "p");
        assert!(top.exited);
        assert!((top.cpu_s - 900.0 / clk_tck()).abs() < 1e-9);
        assert_eq!(rec.summary.top_memory.len(), 2);
    }

    #[test]
    fn an_exec_restarts_the_own_peak_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, 600, 1, 1, 0, "601 ");
        put(r, 601, 600, 1, 0, "");
        // The forked child, before its exec: its parent's name and 1000 resident pages.
        let forked = stat_line(601, 600, 1, 0).replace(" 4096 10 0 0 ", " 4096 1000 0 7 ");
        fs::write(r.join("601/stat"), &forked).unwrap();
        let mut s = Sampler::new(&[600], &opts(r)).unwrap();
        s.tick();
        assert_eq!(s.procs[&601].own.peak_rss, 1000 * s.page);
        // After the exec: another image (code address), another name, 20 pages.
        let execed = forked
            .replace(" 4096 1000 0 7 ", " 4096 20 0 9 ")
            .replace("(p)", "(small)");
        fs::write(r.join("601/stat"), execed).unwrap();
        s.tick();
        let own = &s.procs[&601].own;
        assert_eq!((own.name.as_str(), own.peak_rss), ("small", 20 * s.page));
        s.tick();
        assert_eq!(s.procs[&601].own.peak_rss, 20 * s.page, "no second reset");
        // Exiting: its memory is gone (no image, no pages) before it is a zombie.
        let exiting = forked
            .replace(" 4096 1000 0 7 ", " 4096 0 0 0 ")
            .replace("(p)", "(small)");
        fs::write(r.join("601/stat"), exiting).unwrap();
        s.tick();
        let own = &s.procs[&601].own;
        assert_eq!((own.name.as_str(), own.peak_rss), ("small", 20 * s.page));
    }
}
