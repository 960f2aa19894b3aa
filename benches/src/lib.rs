//! Criterion benchmarks of the workspace's hot paths, run with `cargo bench -p benches`.
//!
//! - `capture`: bounded output capture (`orchestrator_core::BoundedCapture`) against
//!   collecting everything into a `Vec`, for a test that prints a lot.
//! - `boot_overhead`: per architecture, the QEMU runner's time to a result for a trivial test
//!   against a plain `qemu-system-*` command line booting the same kernel and initramfs to
//!   poweroff, alternated in one run; prints medians and their ratio. Needs QEMU and the
//!   provisioned images (`cargo xtask test` installs both). `ORCH_BENCH_RUNS` sets the runs per
//!   side (default 5), `ORCH_BENCH_ARCHS` a comma-separated subset of architectures.
//! - `guest_io`: per architecture, artifact transfer out of the guest over virtio-serial and over
//!   the serial console (MB/s), and the throughput of boot-bound tests with 1 and 2 VMs at once.
//! - `planning`: the demo plan's wall time with the QEMU runner's campaign planning on and off,
//!   alternated in one run (`ORCH_BENCH_ROUNDS`, default 3); prints both, their medians and
//!   ratio, and how each test ran.
//! - `peer`: `uname -r` on the x86_64 kernel under TCG with virtme-ng 1.42 (installed into a venv
//!   of its own in the image cache; skipped, saying what to install, without it or a static
//!   busybox), the runner's plain QEMU command line, the runner with one boot, and tests from a
//!   restored snapshot, alternated in one run; prints medians and ratios to virtme-ng.
//!   `ORCH_BENCH_RUNS` sets the rounds (default 3), `ORCH_BENCH_TESTS` the restored tests a round
//!   (default 10), `ORCH_VNG` a `vng` to use instead.
//! - `artifact_channel`: per architecture, 64 MiB of artifacts from the test's exit to the files
//!   checked on the host, in a guest of its own, a session and a restored snapshot, against the
//!   raw virtio-serial port (`ORCH_BENCH_ARCHS`, `ORCH_BENCH_ROUNDS`, `ORCH_BENCH_MIB`).
//! - `x86_boot`: the x86_64 built-in profile against the previous q35/bzImage one
//!   (`ORCH_BENCH_RUNS`), or `-- --stress N` boots beside a spinning process, counting hangs.
//!
//! The library holds what the benchmarks share: [`under_cargo_bench`] keeps the QEMU benchmarks
//! out of `cargo test --benches`, [`env_num`] and [`archs`] read their settings.
#![deny(missing_docs)]

use orchestrator_core::Arch;

/// The number in the environment variable `name` (at least 1), else `default`. A value that is
/// no number is an error naming it, not a silent default.
pub fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            .max(1),
        Err(_) => default,
    }
}

/// The architectures in `ORCH_BENCH_ARCHS` (a comma list), else `default`.
pub fn archs(default: &[Arch]) -> Vec<Arch> {
    match std::env::var("ORCH_BENCH_ARCHS") {
        Ok(list) => list
            .split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("ORCH_BENCH_ARCHS: {a:?}: {e}"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Whether `cargo bench` started this benchmark (it passes `--bench`; `cargo test --benches`
/// does not, and these boots take minutes). Otherwise says how to run benchmark `name`.
pub fn under_cargo_bench(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        eprintln!("{name}: run with `cargo bench -p benches --bench {name}`");
    }
    yes
}
