//! Summaries and series survive JSON lines and zstd unchanged.

use perf_monitor::{
    Bottleneck, ExactTotals, Mark, PerfVerdict, ProcessFigures, Recording, Sample, SamplingError,
    Summary,
};
use proptest::prelude::*;

fn f() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), 0.0..1e12f64, -1e6..1e6f64]
}

fn of() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(f())
}

fn ou() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(any::<u64>())
}

prop_compose! {
    fn sample()(
        t_ms in any::<u64>(), processes in any::<u32>(), threads in any::<u64>(),
        cpu in (f(), f(), f(), of()), mem in (any::<u64>(), any::<u64>(), ou()),
        io in (ou(), ou(), ou(), ou()), ctx in (ou(), ou(), any::<u64>(), any::<u64>()),
        net in (ou(), ou()), load in proptest::option::of((f(), f(), f())),
        host in (of(), of(), of(), of(), of()),
    ) -> Sample {
        Sample {
            t_ms, processes, threads,
            cpu_user_s: cpu.0, cpu_system_s: cpu.1, cpu_guest_s: cpu.2, cpu_percent: cpu.3,
            rss_bytes: mem.0, vms_bytes: mem.1, fds: mem.2,
            read_bytes: io.0, write_bytes: io.1, read_chars: io.2, write_chars: io.3,
            ctx_voluntary: ctx.0, ctx_involuntary: ctx.1, minor_faults: ctx.2, major_faults: ctx.3,
            net_rx_bytes: net.0, net_tx_bytes: net.1,
            load: load.map(|l| [l.0, l.1, l.2]),
            psi_cpu_some: host.0, psi_memory_full: host.1, psi_io_full: host.2,
            steal_percent: host.3, host_busy_percent: host.4,
        }
    }
}

prop_compose! {
    fn summary()(
        label in ".{0,20}", pids in proptest::collection::vec(any::<u32>(), 0..4),
        times in (any::<u64>(), f(), any::<u64>(), any::<u64>()),
        cpu in (f(), f(), f(), f(), of(), of()),
        mem in (any::<u64>(), any::<u64>(), ou(), any::<u64>(), any::<u64>(), any::<u64>(), of()),
        io in (ou(), ou(), of(), of(), ou()),
        host in (any::<u32>(), ou(), of(), of(), of(), of()),
        fingerprint in (proptest::option::of(".{0,12}"), proptest::option::of(".{0,12}")),
        exact in proptest::option::of((f(), f(), any::<u64>(), proptest::option::of(any::<i32>()))),
        err in proptest::option::of((f(), of(), any::<i64>())),
        extra in (f(), of(), proptest::collection::vec("[a-z_]{1,10}", 0..4), f()),
        marks in proptest::collection::vec((".{0,8}", any::<u64>(), f()), 0..4),
        tops in proptest::collection::vec((any::<u32>(), ".{0,8}", f(), any::<u64>(), any::<bool>()), 0..3),
        ns in (proptest::option::of(".{0,12}"), proptest::option::of(any::<bool>())),
        b in prop_oneof![Just(Bottleneck::CpuBound), Just(Bottleneck::IoBound), Just(Bottleneck::HostStealContended), Just(Bottleneck::Unconstrained)],
    ) -> Summary {
        let mut s = Summary {
            schema_version: perf_monitor::SCHEMA_VERSION,
            label, pids,
            started_at_unix_ms: times.0, duration_s: times.1, interval_ms: times.2, samples: times.3,
            ..Summary::default()
        };
        s.cpu.user_s = cpu.0; s.cpu.system_s = cpu.1; s.cpu.guest_s = cpu.2; s.cpu.total_s = cpu.3;
        s.cpu.avg_percent = cpu.4; s.cpu.peak_percent = cpu.5;
        s.memory.rss_bytes = mem.0; s.memory.rss_peak_bytes = mem.1; s.memory.hwm_bytes = mem.2;
        s.memory.peak_bytes = mem.3; s.memory.vms_bytes = mem.4; s.memory.vms_peak_bytes = mem.5;
        s.memory.peak_percent = mem.6;
        s.io.read_bytes = io.0; s.io.write_bytes = io.1; s.io.read_rate = io.2; s.io.write_rate = io.3;
        s.io.net_rx_bytes = io.4;
        s.host.cpus = host.0; s.host.mem_total_bytes = host.1; s.host.load1_peak = host.2;
        s.host.psi_cpu_some = host.3; s.host.steal_percent = host.4; s.host.iowait_percent = host.5;
        s.host.kernel = fingerprint.0; s.host.cpu_model = fingerprint.1;
        s.exact = exact.map(|e| ExactTotals { user_s: e.0, system_s: e.1, max_rss_bytes: e.2, exit_code: e.3, signal: None });
        s.sampling_error = err.map(|e| SamplingError { cpu_s: e.0, cpu_relative: e.1, max_rss_bytes: e.2 });
        s.monitor_cpu_s = extra.0; s.poll_cpu_s = extra.1; s.unavailable = extra.2; s.score = extra.3;
        s.marks = marks.into_iter().map(|(label, t_ms, cpu_s)| Mark { label, t_ms, cpu_s }).collect();
        s.top_cpu = tops.into_iter().map(|(pid, name, cpu_s, peak_rss_bytes, exited)| ProcessFigures {
            pid, command: format!("{name} --flag"), name, cpu_s, peak_rss_bytes, exited, ..ProcessFigures::default()
        }).collect();
        s.top_memory = s.top_cpu.iter().rev().cloned().collect();
        s.io.net_namespace = ns.0; s.io.net_namespace_shared = ns.1;
        s.verdict = PerfVerdict { bottleneck: b, reasons: vec!["why".into()] };
        s
    }
}

/// The strategies are deeply nested tuples: generating them needs more than the default test
/// thread's stack in debug builds, so the property runs on a thread of its own.
#[test]
fn recordings_round_trip_through_json_lines_and_zstd() {
    let run = || {
        // `source_file` turns on persistence of failing cases to `proptest-regressions/`.
        let config = ProptestConfig {
            source_file: Some(file!()),
            ..ProptestConfig::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let strategy = (summary(), proptest::collection::vec(sample(), 0..20));
        runner
            .run(&strategy, |(summary, series)| {
                let rec = Recording { summary, series };
                let text = rec.to_json_lines();
                prop_assert_eq!(text.lines().count(), rec.series.len() + 1);
                prop_assert_eq!(&Recording::from_json_lines(&text).unwrap(), &rec);
                let z = rec.to_zstd(3).unwrap();
                prop_assert_eq!(&Recording::from_zstd(&z).unwrap(), &rec);
                Ok(())
            })
            .map_err(|e| e.to_string())
    };
    let result = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn newer_schema_versions_are_refused() {
    let mut rec = Recording::default();
    rec.summary.schema_version = perf_monitor::SCHEMA_VERSION + 1;
    assert!(Recording::from_json_lines(&rec.to_json_lines()).is_err());
    assert!(Recording::from_json_lines("").is_err());
    assert!(Recording::from_json_lines("{}\n").is_err());
}
