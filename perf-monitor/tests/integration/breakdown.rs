//! The per-process breakdown on real processes: the tree's top processes by CPU and by peak
//! memory, each with its pid, name and command line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use perf_monitor::{Monitor, MonitorConfig};

const MIB: u64 = 1 << 20;

#[test]
fn a_cpu_burner_and_a_memory_holder_lead_their_lists_with_pid_name_and_command() {
    let w = env!("CARGO_BIN_EXE_perf-workload");
    // The shell prints its children's pids, then waits for both: they exit before the watch
    // ends, so they are listed with their last figures.
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("{w} burn 0.6 & echo burn $!; {w} touch 96 1200 & echo touch $!; wait"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let monitor = Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(50)));
    let sh = child.id();
    let guard = monitor.watch_child(child, "breakdown").unwrap();
    let mut pids = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let (what, pid) = line.split_once(' ').unwrap();
        pids.insert(what.to_owned(), pid.parse::<u32>().unwrap());
    }
    assert!(guard.wait_exit(Duration::from_secs(60)));
    let rec = guard.finish().unwrap();
    let s = &rec.summary;
    let (burn, touch) = (pids["burn"], pids["touch"]);
    assert!(
        !s.top_cpu.is_empty() && s.top_cpu.len() <= 5,
        "{:#?}",
        s.top_cpu
    );
    assert!(s.top_memory.len() <= 5, "{:#?}", s.top_memory);

    let first = &s.top_cpu[0];
    assert_eq!(first.pid, burn, "{:#?}", s.top_cpu);
    assert_eq!(first.ppid, sh);
    assert_eq!(first.name, "perf-workload");
    assert!(
        first.command.ends_with("perf-workload burn 0.6"),
        "{first:#?}"
    );
    assert!(first.cpu_s >= 0.5, "{first:#?}");
    assert!(first.exited, "{first:#?}");
    assert!(first.last_seen_ms >= first.first_seen_ms);

    let top = &s.top_memory[0];
    assert_eq!(top.pid, touch, "{:#?}", s.top_memory);
    assert!(
        top.command.ends_with("perf-workload touch 96 1200"),
        "{top:#?}"
    );
    assert!(top.peak_rss_bytes >= 96 * MIB, "{top:#?}");
    assert!(top.exited);

    // The shell is in the lists too, with its reaped children's CPU beside its own.
    let shell = s
        .top_cpu
        .iter()
        .find(|p| p.pid == sh)
        .expect("the root is listed");
    assert_eq!(shell.name, "sh");
    assert!(shell.command.starts_with("sh -c "), "{shell:#?}");
    assert!(shell.children_cpu_s >= 0.5, "{shell:#?}");
    assert!(shell.cpu_s < first.cpu_s);
    // Sorted, highest first.
    assert!(s.top_cpu.windows(2).all(|w| w[0].cpu_s >= w[1].cpu_s));
    assert!(
        s.top_memory
            .windows(2)
            .all(|w| w[0].peak_rss_bytes >= w[1].peak_rss_bytes)
    );
}

#[test]
fn many_short_children_keep_the_lists_bounded_and_off_means_empty() {
    let w = env!("CARGO_BIN_EXE_perf-workload");
    let monitor = Monitor::new(
        MonitorConfig::default()
            .with_interval(Duration::from_millis(10))
            .with_top_processes(2),
    );
    let child = Command::new(w).args(["fork", "40", "15"]).spawn().unwrap();
    let guard = monitor.watch_child(child, "fork").unwrap();
    assert!(guard.wait_exit(Duration::from_secs(60)));
    let s = guard.finish().unwrap().summary;
    assert!(s.processes.seen >= 10, "{}", s.processes.seen);
    assert_eq!(s.top_cpu.len(), 2, "{:#?}", s.top_cpu);
    assert_eq!(s.top_memory.len(), 2, "{:#?}", s.top_memory);

    let off = Monitor::new(MonitorConfig::default().with_top_processes(0));
    let child = Command::new("true").spawn().unwrap();
    let guard = off.watch_child(child, "off").unwrap();
    assert!(guard.wait_exit(Duration::from_secs(30)));
    let s = guard.finish().unwrap().summary;
    assert!(s.top_cpu.is_empty() && s.top_memory.is_empty());
}

#[test]
fn the_network_figures_name_their_namespace() {
    let child = Command::new("sleep").arg("0.2").spawn().unwrap();
    let guard = super::monitor(50).watch_child(child, "ns").unwrap();
    assert!(guard.wait_exit(Duration::from_secs(30)));
    let s = guard.finish().unwrap().summary;
    let ns =
        s.io.net_namespace
            .as_deref()
            .expect("our own child's namespace is readable");
    assert!(ns.starts_with("net:["), "{ns}");
    // The child runs in the test's own namespace.
    assert_eq!(s.io.net_namespace_shared, Some(true));
}
