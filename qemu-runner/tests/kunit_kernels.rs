//! Kernels of one's own, as kunit.py builds them: what a kernel needs and what the runner says
//! when it lacks it. The kernels come from `cargo xtask test` (`ORCH_KUNIT_KERNELS`, see
//! `testkit::kunit_kernels`): (a) kunit.py's x86_64 kernel with what the runner needs, (c)
//! kunit.py's plain configuration (no initramfs support), (d) (c) with initramfs support alone
//! (no devtmpfs, no tmpfs, no virtio).

use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CancellationToken, CrashKind, Orchestrator, Outcome, Phase, Requirements, RunConfig,
    TestCase,
};
use qemu_runner::{MachineProfile, QemuConfig, QemuRunner};

mod support;
use support::by;

fn with_kernel(id: &str, kernel: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    req.kernel = Some(testkit::kunit_kernels().join(kernel).join("bzImage"));
    TestCase::script(id, script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(120))
}

/// One run for all three kernels (two guests at a time): (c) fails to boot with an error naming
/// `CONFIG_BLK_DEV_INITRD` well before the boot deadline; (a) and (d) run a script that passes,
/// (d) without devtmpfs and tmpfs (the agent made its device nodes, `/tmp` is the initramfs
/// root) and with an artifact over the serial console.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn kunit_kernels_boot_or_name_what_they_lack() {
    let deadline = MachineProfile::builtin(Arch::X86_64).boot_timeout_for(qemu_runner::Accel::Tcg);
    let cases = vec![
        with_kernel("no-initramfs", "c", "true"),
        with_kernel(
            "runner-options",
            "a",
            "grep -q ' /dev devtmpfs' /proc/mounts\n\
             grep -q ' /tmp tmpfs' /proc/mounts\n\
             [ -c /dev/urandom ]\n\
             uname -r",
        ),
        with_kernel(
            "initramfs-only",
            "d",
            "[ \"$(grep -c devtmpfs /proc/mounts)\" = 0 ]\n\
             [ \"$(grep -c ' /tmp tmpfs' /proc/mounts)\" = 0 ]\n\
             for n in null zero full random urandom kmsg tty console; do [ -c /dev/$n ]; done\n\
             head -c 16 /dev/urandom | od -An -tx1\n\
             echo made-here >/tmp/probe && cat /tmp/probe >note.txt\n\
             uname -r",
        )
        .with_artifact("note.txt"),
    ];
    let scratch = tempfile::tempdir().unwrap();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let started = Instant::now();
    let report = orch
        .run_with(cases, CancellationToken::new(), |_| {})
        .await
        .expect("valid run");
    for r in &report.results {
        eprintln!(
            "{}: {} [{:.1}s] {}",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            r.message.as_deref().unwrap_or("")
        );
    }
    eprintln!("all three in {:.1}s", started.elapsed().as_secs_f64());

    let c = by(&report, "no-initramfs");
    assert_eq!(
        c.outcome,
        Outcome::Crashed {
            crash: CrashKind::BootFailure
        },
        "{c:#?}"
    );
    let message = c.message.as_deref().unwrap_or("");
    assert!(message.contains("CONFIG_BLK_DEV_INITRD"), "{message}");
    // The boot phase ends at the panic: about 3 s here, against a deadline of 100 s. The whole
    // test adds the accelerator check of a kernel not seen before (up to 20 s: KVM is tried
    // first where /dev/kvm exists) and the console read after the panic (up to 3 s).
    let boot = c
        .phases
        .iter()
        .find(|p| p.phase == Phase::Boot)
        .expect("a boot phase")
        .duration();
    eprintln!(
        "no-initramfs: boot phase {:.1}s, test {:.1}s, boot deadline {:.0}s",
        boot.as_secs_f64(),
        c.duration().as_secs_f64(),
        deadline.as_secs_f64()
    );
    assert!(
        boot < deadline / 4 && c.duration() < deadline / 2,
        "the missing option was named after {:.1}s of boot, {:.1}s in all (boot deadline {:.0}s)",
        boot.as_secs_f64(),
        c.duration().as_secs_f64(),
        deadline.as_secs_f64()
    );

    let a = by(&report, "runner-options");
    assert_eq!(a.outcome, Outcome::Passed, "{a:#?}");
    let release = a.stdout.text.trim().to_owned();
    assert!(release.starts_with("6.1."), "{a:#?}");

    let d = by(&report, "initramfs-only");
    assert_eq!(d.outcome, Outcome::Passed, "{d:#?}");
    assert_eq!(
        d.environment["artifact-channel"], "serial-console",
        "{d:#?}"
    );
    let note = d
        .artifacts
        .iter()
        .find(|f| f.name == "files/note.txt")
        .expect("note.txt");
    assert_eq!(std::fs::read_to_string(&note.path).unwrap(), "made-here\n");
}
