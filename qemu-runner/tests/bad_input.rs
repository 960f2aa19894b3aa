//! Bad input is rejected before anything boots, with errors naming the thing and the fix.

use std::path::PathBuf;

use orchestrator_core::{Arch, Orchestrator, OrchestratorError, Requirements, RunConfig, TestCase};
use qemu_runner::{MachineProfile, QemuConfig, QemuRunner};

fn problems(config: QemuConfig, case: TestCase) -> String {
    let orch =
        Orchestrator::new(RunConfig::new("/tmp/unused")).with_runner(QemuRunner::new(config));
    match orch.validate(&[case]) {
        Err(OrchestratorError::Invalid { problems }) => problems.join("\n"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn with_kernel(arch: Arch, kernel: PathBuf) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    req.kernel = Some(kernel);
    TestCase::script("t", "true").with_requirements(req)
}

#[test]
fn missing_qemu_binary() {
    let mut p = MachineProfile::builtin(Arch::Armv7);
    p.qemu = "qemu-system-doesnotexist".into();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("zImage");
    let mut bytes = vec![0u8; 4096];
    bytes[0x24..0x28].copy_from_slice(&0x016F_2818u32.to_le_bytes());
    std::fs::write(&kernel, bytes).unwrap();
    let msg = problems(
        QemuConfig::new().with_profile(p),
        with_kernel(Arch::Armv7, kernel),
    );
    assert!(
        msg.contains("qemu-system-doesnotexist") && msg.contains("install"),
        "{msg}"
    );
}

#[test]
fn missing_firmware() {
    let mut p = MachineProfile::builtin(Arch::Riscv64);
    p.qemu = "/bin/true".into();
    p.firmware = vec!["/nonexistent/opensbi/fw_dynamic.bin".into()];
    let msg = problems(
        QemuConfig::new().with_profile(p),
        with_kernel(Arch::Riscv64, "/nonexistent".into()),
    );
    assert!(
        msg.contains("/nonexistent/opensbi/fw_dynamic.bin") && msg.contains("firmware"),
        "{msg}"
    );
}

#[test]
fn kernels_that_are_missing_empty_corrupt_or_for_another_arch() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = MachineProfile::builtin(Arch::Aarch64);
    p.qemu = "/bin/true".into();
    let config = || QemuConfig::new().with_profile(p.clone());

    let msg = problems(
        config(),
        with_kernel(Arch::Aarch64, dir.path().join("missing")),
    );
    assert!(msg.contains("cannot open kernel image"), "{msg}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(problems(config(), with_kernel(Arch::Aarch64, empty)).contains("is empty"));

    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    assert!(problems(config(), with_kernel(Arch::Aarch64, junk)).contains("corrupt or truncated"));

    let x86 = dir.path().join("bzImage");
    let mut bytes = vec![0u8; 4096];
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&x86, bytes).unwrap();
    let msg = problems(config(), with_kernel(Arch::Aarch64, x86));
    assert!(
        msg.contains("built for x86_64, but the test needs aarch64"),
        "{msg}"
    );
}

#[test]
fn modules_need_the_packaged_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("Image");
    let mut bytes = vec![0u8; 4096];
    bytes[0x38..0x3c].copy_from_slice(b"ARM\x64");
    std::fs::write(&kernel, bytes).unwrap();
    let mut p = MachineProfile::builtin(Arch::Aarch64);
    p.qemu = "/bin/true".into();
    let busybox = dir.path().join("busybox");
    std::fs::write(&busybox, b"x").unwrap();
    let images = std::collections::BTreeMap::from([(
        Arch::Aarch64,
        qemu_runner::image::GuestParts {
            arch: Arch::Aarch64,
            kernel: kernel.clone(),
            busybox,
            modules_dir: None,
            kernel_version: None,
        },
    )]);
    let config = QemuConfig::new()
        .with_profile(p)
        .with_images(qemu_runner::ImageSource::Custom(images));
    let mut req = Requirements::default();
    req.arch = Some(Arch::Aarch64);
    req.modules = vec!["9p".into()];
    let msg = problems(config, TestCase::script("t", "true").with_requirements(req));
    assert!(msg.contains("module tree"), "{msg}");
}
