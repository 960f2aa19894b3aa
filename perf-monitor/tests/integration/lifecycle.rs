//! Bad input, unavailable metrics, dropping, futures and the shared handle.

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perf_monitor::{Monitor, MonitorConfig, MonitorError, Recording};

use super::{monitor, workload};

#[test]
fn a_pid_that_does_not_exist_is_an_error() {
    let err = monitor(50).watch_pid(u32::MAX - 7, "ghost").unwrap_err();
    assert!(matches!(err, MonitorError::NoSuchProcess { .. }), "{err}");
}

#[test]
fn a_process_that_exits_at_once_still_finishes() {
    let child = std::process::Command::new("true").spawn().unwrap();
    let guard = monitor(50).watch_child(child, "true");
    // Either it was gone before the first read, or the guard finishes normally.
    if let Ok(guard) = guard {
        assert!(guard.wait_exit(Duration::from_secs(10)));
        let rec = guard.finish().unwrap();
        assert_eq!(rec.summary.exact.unwrap().exit_code, Some(0));
    }
}

#[test]
fn an_unrelated_existing_pid_can_be_watched() {
    // Not our child: no exact totals, but sampled figures and a clean finish.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let guard = monitor(20).watch_pid(sleeper.id(), "sleep").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert!(guard.latest().is_some());
    let rec = guard.finish().unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(rec.summary.exact.is_none());
    assert!(rec.summary.samples >= 2);
    assert!(rec.summary.memory.hwm_bytes.unwrap() > 0);
    assert_eq!(rec.summary.processes.peak, 1);
}

/// A fake procfs with one process whose `io`, `status`, `/proc/pressure` and `net/dev` are
/// missing: those metrics must read "unavailable", not zero.
#[test]
fn missing_proc_files_are_unavailable_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pid = 4242;
    let p = root.join(pid.to_string());
    fs::create_dir_all(p.join(format!("task/{pid}"))).unwrap();
    fs::create_dir_all(p.join("fd")).unwrap();
    fs::write(
        p.join("stat"),
        format!("{pid} (fake) S 1 {pid} {pid} 0 -1 0 10 0 0 0 150 50 0 0 20 0 1 0 100 4096000 100 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"),
    )
    .unwrap();
    fs::write(p.join(format!("task/{pid}/children")), "").unwrap();
    fs::write(root.join("stat"), "cpu  10 0 10 70 5 0 0 0 0 0\n").unwrap();
    fs::write(root.join("loadavg"), "0.10 0.20 0.30 1/10 5\n").unwrap();
    fs::write(root.join("meminfo"), "MemTotal:  1048576 kB\n").unwrap();
    let m = Monitor::new(
        MonitorConfig::default()
            .with_interval(Duration::from_millis(20))
            .with_proc_root(root),
    );
    let guard = m.watch_pid(pid, "fake").unwrap();
    std::thread::sleep(Duration::from_millis(70));
    let rec = guard.finish().unwrap();
    let s = &rec.summary;
    assert_eq!(s.io.write_bytes, None);
    assert_eq!(s.io.read_bytes, None);
    assert_eq!(s.io.write_rate, None);
    assert_eq!(s.host.psi_cpu_some, None);
    assert_eq!(s.host.psi_io_full, None);
    assert_eq!(s.io.net_rx_bytes, None);
    assert_eq!(s.processes.ctx_voluntary, None);
    assert_eq!(s.memory.hwm_bytes, None);
    for name in [
        "io",
        "psi_cpu",
        "psi_memory",
        "psi_io",
        "network",
        "context_switches",
        "vm_hwm",
    ] {
        assert!(
            s.unavailable.iter().any(|u| u == name),
            "{name} not in {:?}",
            s.unavailable
        );
    }
    // What the fake tree does provide is read.
    assert!((s.cpu.total_s - 2.0).abs() < 1e-9, "{}", s.cpu.total_s);
    assert_eq!(s.memory.vms_bytes, 4_096_000);
    assert_eq!(s.host.load_end, Some([0.1, 0.2, 0.3]));
    for sample in &rec.series {
        assert_eq!(sample.write_bytes, None);
        assert_eq!(sample.psi_memory_full, None);
    }
    // And "unavailable" survives serialisation as null, not 0.
    let back = Recording::from_json_lines(&rec.to_json_lines()).unwrap();
    assert_eq!(back.summary.io.write_bytes, None);
    assert!(rec.to_json_lines().contains("\"write_bytes\":null"));
}

#[test]
fn dropping_a_guard_is_bounded_and_feeds_the_sink() {
    let got: Arc<Mutex<Vec<Recording>>> = Arc::default();
    let got2 = Arc::clone(&got);
    let m = monitor(50).with_sink(move |r| got2.lock().unwrap().push(r.clone()));
    let child = workload(&["burn", "0.2"]);
    let guard = m.watch_child(child, "dropped").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let t = Instant::now();
    drop(guard);
    assert!(t.elapsed() <= m.config().stop_timeout / 5 + Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let recs = got.lock().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].summary.label, "dropped");
}

#[test]
fn instrumented_future_measures_its_polls() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let m = monitor(20);
    let (v, rec) = rt.block_on(m.instrument(
        async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let t = Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(100) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            7
        },
        "future",
    ));
    assert_eq!(v, 7);
    let rec = rec.unwrap();
    let poll = rec.summary.poll_cpu_s.unwrap();
    assert!((0.005..2.0).contains(&poll), "poll cpu {poll}");
    assert_eq!(rec.summary.pids, vec![std::process::id()]);
}

#[test]
fn global_handle_and_independent_monitors_coexist() {
    let g = Monitor::global();
    let a = g.watch_current("global").unwrap();
    let b = monitor(30).watch_current("own").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let (ra, rb) = (a.finish().unwrap(), b.finish().unwrap());
    assert_eq!(ra.summary.label, "global");
    assert_eq!(rb.summary.label, "own");
    assert!(rb.summary.samples >= 2);
    assert!(rb.summary.monitor_cpu_s >= 0.0);
}

#[test]
fn added_pids_join_the_tree() {
    let mut a = std::process::Command::new("sleep")
        .arg("3")
        .spawn()
        .unwrap();
    let mut b = std::process::Command::new("sleep")
        .arg("3")
        .spawn()
        .unwrap();
    let guard = monitor(20).watch_pid(a.id(), "two").unwrap();
    guard.mark("one");
    guard.add_pid(b.id());
    std::thread::sleep(Duration::from_millis(60));
    guard.mark("both");
    std::thread::sleep(Duration::from_millis(120));
    let rec = guard.finish().unwrap();
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert_eq!(rec.summary.processes.peak, 2);
    assert_eq!(rec.summary.pids.len(), 2);
    let marks: Vec<&str> = rec.summary.marks.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(marks, ["one", "both"]);
    assert!(rec.summary.marks[0].t_ms <= rec.summary.marks[1].t_ms);
}

/// Another user's process: its `io` is unreadable, so I/O is "unavailable", while CPU and
/// memory still come from the world-readable `stat`. Drops this test process's root rights,
/// so it runs only under nextest's process-per-test mode, as root.
#[test]
#[ignore = "drops root rights, so needs root and nextest's process-per-test mode: run `cargo xtask test`"]
fn another_users_process_has_io_unavailable() {
    assert!(
        std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test")
            && nix::unistd::Uid::effective().is_root(),
        "needs root and nextest's process-per-test mode: run it through `cargo xtask test`"
    );
    let mut sleeper = std::process::Command::new("sleep")
        .arg("0.6")
        .spawn()
        .unwrap();
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::setresuid(nobody, nobody, nobody).unwrap();
    let guard = monitor(50).watch_pid(sleeper.id(), "root-owned").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let rec = guard.finish().unwrap();
    sleeper.wait().unwrap();
    let s = &rec.summary;
    assert_eq!(s.io.write_bytes, None);
    assert_eq!(s.io.read_chars, None);
    assert!(
        s.unavailable.iter().any(|u| u == "io"),
        "{:?}",
        s.unavailable
    );
    assert!(s.memory.rss_peak_bytes > 0);
    assert!(s.samples >= 2);
}
