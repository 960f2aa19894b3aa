//! A test's own `modules-dir`: found, indexed and checked before anything boots; the artifact
//! channel's modules taken from it where it has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orchestrator_core::{Arch, Requirements, TestCase, TestRunner};

use super::{ImageSource, QemuConfig, QemuRunner};
use crate::image::{self, GuestParts};
use crate::modules::ModuleIndex;
use crate::modules::tests::{add_module_built_for, install_tree};
use crate::profile::MachineProfile;

/// An x86 bzImage header naming kernel `release`.
fn bz_image(dir: &Path, release: &str) -> PathBuf {
    let mut bytes = vec![0u8; 4096];
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bytes[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
    let text = format!("{release} (me@host) #1 SMP\0");
    bytes[0x400..0x400 + text.len()].copy_from_slice(text.as_bytes());
    let path = dir.join(format!("bzImage-{release}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A runner with a stand-in QEMU and busybox for x86_64 (nothing here boots).
fn runner(dir: &Path) -> QemuRunner {
    let mut profile = MachineProfile::builtin(Arch::X86_64);
    profile.qemu = "/bin/true".into();
    let busybox = dir.join("busybox");
    std::fs::write(&busybox, b"busybox").unwrap();
    let images = BTreeMap::from([(
        Arch::X86_64,
        GuestParts {
            arch: Arch::X86_64,
            kernel: dir.join("unused"),
            busybox,
            modules_dir: None,
            kernel_version: None,
        },
    )]);
    QemuRunner::new(
        QemuConfig::new()
            .with_profile(profile)
            .with_images(ImageSource::Custom(images))
            .with_build_cache(dir.join("cache")),
    )
}

fn case(kernel: &Path, modules_dir: &Path, modules: &[&str]) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    req.kernel = Some(kernel.to_owned());
    req.modules_dir = Some(modules_dir.to_owned());
    req.modules = modules.iter().map(|m| (*m).to_owned()).collect();
    TestCase::script("t", "true")
        .with_requirements(req)
        .with_artifact("out.bin")
}

#[test]
fn a_good_tree_passes_the_check_and_feeds_the_channel() {
    let (tmp, dir) = install_tree("6.1.0-kunit");
    let kernel = bz_image(tmp.path(), "6.1.0-kunit");
    let runner = runner(tmp.path());
    let case = case(&kernel, &tmp.path().join("mods"), &["kunit-example-test"]);
    runner.check(&case).unwrap();

    let parts = runner.parts(&case, Arch::X86_64).unwrap();
    assert_eq!(parts.kernel_version.as_deref(), Some("6.1.0-kunit"));
    let index = runner
        .module_index(parts.modules_dir.as_ref().unwrap())
        .unwrap();
    let profile = MachineProfile::builtin(Arch::X86_64);
    // virtio_pci is built in (modules.builtin), virtio_console a module of the tree.
    assert_eq!(
        runner.modules_for(&case, &profile, Some(&index)),
        ["virtio_pci", "virtio_console", "kunit-example-test"]
    );

    // The channel's modules load at boot, the test's in its phase; compressed ones go in
    // decompressed.
    let modules = runner.modules_for(&case, &profile, Some(&index));
    let boot = ["virtio_pci".to_owned(), "virtio_console".to_owned()];
    let cache = tmp.path().join("cache");
    let base = image::base_image_indexed(&parts, Some(&index), &modules, &boot, &cache).unwrap();
    assert_eq!(base.boot_order, ["kernel/drivers/char/virtio_console.ko"]);
    assert_eq!(
        base.test_order(),
        [
            "kernel/lib/kunit/kunit.ko",
            "kernel/lib/kunit/kunit-example-test.ko"
        ]
    );
    // Built again the same: the cached archive; a module installed again: a new archive.
    let again = image::base_image_indexed(&parts, Some(&index), &modules, &boot, &cache).unwrap();
    assert_eq!(again.path, base.path);
    std::fs::remove_file(dir.join("kernel/lib/kunit/kunit.ko")).unwrap();
    add_module_built_for(
        &dir,
        "kernel/lib/kunit/kunit.ko",
        "kunit",
        "",
        true,
        "6.1.0-kunit SMP preempt mod_unload modversions",
    );
    let rebuilt = image::base_image_indexed(&parts, Some(&index), &modules, &boot, &cache).unwrap();
    assert_ne!(rebuilt.path, base.path);
}

#[test]
fn a_kernel_without_the_console_module_gets_no_channel_module() {
    let (tmp, dir) = install_tree("6.1.0-kunit");
    std::fs::remove_file(dir.join("kernel/drivers/char/virtio_console.ko.zst")).unwrap();
    let kernel = bz_image(tmp.path(), "6.1.0-kunit");
    let runner = runner(tmp.path());
    let case = case(&kernel, &dir, &[]);
    runner.check(&case).unwrap();
    let index = ModuleIndex::scan(&dir).unwrap();
    // Neither a module nor built in: left out (the guest then uses the serial console).
    assert_eq!(
        runner.modules_for(&case, &MachineProfile::builtin(Arch::X86_64), Some(&index)),
        ["virtio_pci"]
    );
}

#[test]
fn tree_mistakes_fail_the_check_with_the_path_and_the_fix() {
    let (tmp, _dir) = install_tree("6.1.0-kunit");
    let kernel = bz_image(tmp.path(), "6.1.0-kunit");
    let runner = runner(tmp.path());
    let mods = tmp.path().join("mods");
    let problem = |case: &TestCase| runner.check(case).unwrap_err().to_string();

    let missing = tmp.path().join("no-such-dir");
    let err = problem(&case(&kernel, &missing, &[]));
    assert!(err.contains("`modules-dir`"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(
        err.contains("make modules_install INSTALL_MOD_PATH="),
        "{err}"
    );

    let err = problem(&case(&kernel, &mods, &["kunit_exampel_test"]));
    assert!(
        err.contains("unknown kernel module `kunit_exampel_test`"),
        "{err}"
    );
    assert!(err.contains("did you mean `kunit_example_test`"), "{err}");
    assert!(err.contains(&mods.display().to_string()), "{err}");
    assert!(err.contains("make modules_install"), "{err}");

    // The kernel that boots is another build than the tree's modules.
    let other = bz_image(tmp.path(), "6.1.0-other");
    let err = problem(&case(&other, &mods, &["kunit_example_test"]));
    assert!(
        err.contains("built for kernel 6.1.0-kunit") && err.contains("boots is 6.1.0-other"),
        "{err}"
    );

    // An empty tree.
    let empty = tmp.path().join("empty/lib/modules/6.1.0-kunit");
    std::fs::create_dir_all(empty.join("kernel")).unwrap();
    let err = problem(&case(&kernel, &tmp.path().join("empty"), &[]));
    assert!(err.contains("no *.ko"), "{err}");
    assert!(err.contains("make modules_install"), "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");

    // Modules with a kernel of one's own and no tree: the fix names `modules-dir`.
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    req.kernel = Some(kernel.clone());
    req.modules = vec!["9p".into()];
    let err = problem(&TestCase::script("t", "true").with_requirements(req));
    assert!(
        err.contains("module tree") && err.contains("`modules-dir`"),
        "{err}"
    );
}
