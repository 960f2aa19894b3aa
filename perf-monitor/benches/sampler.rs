//! The sampler's cost: its own CPU time at 10 Hz over a 20-process tree, and one sample against
//! `sysinfo` refreshing the same processes, side by side.
//!
//! `cargo bench -p perf-monitor --bench sampler`

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use perf_monitor::{Monitor, MonitorConfig, Probe};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

const TREE: usize = 20;

/// `perf-workload tree 20 …`: a parent with 19 sleeping children. Returns it once all 20 exist.
// The caller (`benches`) kills and waits for the returned child.
#[allow(clippy::zombie_processes)]
fn tree() -> (Child, Vec<u32>) {
    let exe = env!("CARGO_BIN_EXE_perf-workload");
    // Its own process group, like a test under orchestrator-core's ProcessRunner: the
    // monitor then also follows the group (change-triggered /proc rescans).
    let mut child = Command::new(exe)
        .args(["tree", &TREE.to_string(), "600"])
        .process_group(0)
        .spawn()
        .expect("spawn perf-workload tree");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap_or_default();
        let mut pids: Vec<u32> = kids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() + 1 >= TREE {
            pids.insert(0, child.id());
            return (child, pids);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process tree did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn overhead_at_10hz(root: u32) {
    let secs = std::env::var("PERF_MONITOR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let monitor = Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(100)));
    let guard = monitor.watch_pid(root, "bench-tree").expect("watch");
    std::thread::sleep(Duration::from_secs_f64(secs));
    let rec = guard.finish().expect("finish");
    let s = &rec.summary;
    let pct = s.monitor_cpu_s / s.duration_s * 100.0;
    println!(
        "sampler overhead at 10 Hz over {} processes: {:.4} cpu-s in {:.2} s = {:.3} % of one core \
         ({} samples, {:.1} us/sample) [goal <= 1 %]",
        s.processes.peak,
        s.monitor_cpu_s,
        s.duration_s,
        pct,
        s.samples,
        s.monitor_cpu_s / s.samples as f64 * 1e6
    );
}

fn one_sample(c: &mut Criterion, root: u32, pids: &[u32]) {
    let monitor = Monitor::default();
    let mut probe = Probe::new(&monitor, &[root], "bench").expect("probe");
    assert_eq!(probe.sample().processes as usize, TREE);
    let spids: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
    let mut sys = System::new();
    sys.refresh_processes(ProcessesToUpdate::Some(&spids), true);
    assert_eq!(sys.processes().len(), TREE);
    let mut g = c.benchmark_group("one_sample_20_processes");
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("perf_monitor_probe", |b| {
        b.iter(|| probe.sample().processes)
    });
    g.bench_function("sysinfo_refresh_default", |b| {
        b.iter(|| sys.refresh_processes(ProcessesToUpdate::Some(&spids), true))
    });
    let kind = ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_disk_usage();
    g.bench_function("sysinfo_refresh_cpu_mem_disk", |b| {
        b.iter(|| sys.refresh_processes_specifics(ProcessesToUpdate::Some(&spids), true, kind))
    });
    g.finish();
    // Interleaved blocks, so that load from other work on the machine hits both sides alike;
    // the median of the per-block ratios is the figure.
    let block = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..50 {
            f();
        }
        t.elapsed() / 50
    };
    let (mut ours, mut dflt, mut min) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..40 {
        ours.push(block(&mut || {
            std::hint::black_box(probe.sample());
        }));
        dflt.push(block(&mut || {
            std::hint::black_box(sys.refresh_processes(ProcessesToUpdate::Some(&spids), true));
        }));
        min.push(block(&mut || {
            std::hint::black_box(sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&spids),
                true,
                kind,
            ));
        }));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |a: &[Duration], b: &[Duration]| {
        median(
            a.iter()
                .zip(b)
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect(),
        )
    };
    let med = |v: &[Duration]| median(v.iter().map(Duration::as_secs_f64).collect()) * 1e6;
    println!(
        "one sample over {TREE} processes (median of 40 interleaved blocks): perf-monitor {:.0} us, \
         sysinfo default refresh {:.0} us (ratio {:.2}), sysinfo cpu+memory+disk refresh {:.0} us \
         (ratio {:.2}) [goal <= 0.5]",
        med(&ours),
        med(&dflt),
        ratio(&ours, &dflt),
        med(&min),
        ratio(&ours, &min),
    );
}

fn benches(c: &mut Criterion) {
    let (mut child, pids) = tree();
    overhead_at_10hz(child.id());
    one_sample(c, child.id(), &pids);
    let _ = Command::new("pkill")
        .args(["-P", &child.id().to_string()])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(sampler, benches);

fn main() {
    sampler();
    Criterion::default().configure_from_args().final_summary();
}
