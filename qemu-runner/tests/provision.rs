//! Provisions real Debian guest images into the default cache directory and checks what it got.
//! Both tests are ignored by default: they download packages (and install QEMU).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator_core::Arch;
use qemu_runner::provision::{self, ProvisionOptions};

fn head(path: &Path) -> Vec<u8> {
    let mut head = Vec::new();
    File::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .take(4096)
        .read_to_end(&mut head)
        .unwrap();
    head
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// `(ELF class, e_machine)` of a little-endian ELF file.
fn elf(head: &[u8]) -> Option<(u8, u16)> {
    (at(head, 0, b"\x7fELF") && head[5] == 1)
        .then(|| (head[4], u16::from_le_bytes([head[18], head[19]])))
}

fn check_kernel(arch: Arch, path: &Path) {
    let head = head(path);
    let ok = match arch {
        Arch::X86_64 => at(&head, 0x202, b"HdrS"),
        Arch::Aarch64 => at(&head, 0x38, b"ARM\x64"),
        Arch::Armv7 => at(&head, 0x24, &0x016F_2818u32.to_le_bytes()),
        // Debian's riscv64 "vmlinux" is a flat Image (with an EFI stub), not an ELF file.
        Arch::Riscv64 => at(&head, 0x30, b"RISCV\0\0\0") && at(&head, 0x38, b"RSC\x05"),
        _ => unreachable!(),
    };
    assert!(
        ok,
        "{arch}: {} is not the expected kernel format",
        path.display()
    );
}

fn check_busybox(arch: Arch, path: &Path) {
    let expected = match arch {
        Arch::X86_64 => (2, 62),
        Arch::Aarch64 => (2, 183),
        Arch::Armv7 => (1, 40),
        Arch::Riscv64 => (2, 243),
        _ => unreachable!(),
    };
    assert_eq!(
        elf(&head(path)),
        Some(expected),
        "{arch}: {}",
        path.display()
    );
}

#[test]
#[ignore = "downloads Debian packages: run `cargo xtask test`"]
fn provisions_every_architecture() {
    let opts = ProvisionOptions::new(provision::default_cache_dir())
        .with_progress(|message| eprintln!("provision: {message}"));
    let started = Instant::now();
    let manifest = provision::provision(&opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "provisioned {} in {:.1}s",
        manifest.cache_dir.display(),
        started.elapsed().as_secs_f64()
    );

    for arch in Arch::ALL {
        let image = manifest.image(arch).unwrap();
        eprintln!(
            "{arch}: {} {} ({}), kernel {}, busybox {}, suites {:?}, notes {:?}",
            image.kernel_package,
            image.kernel_package_version,
            image.debian_suite,
            image.kernel.display(),
            image.busybox.display(),
            image.apt_suites,
            image.notes,
        );
        assert_eq!(image.arch, arch);
        check_kernel(arch, &image.kernel);
        check_busybox(arch, &image.busybox);
        assert!(image.kernel_config.is_file());
        assert!(image.modules_dir.join("modules.order").is_file());
        assert!(image.modules_dir.ends_with(&image.kernel_version));
        assert_eq!(
            image.kernel_package,
            format!("linux-image-{}", image.kernel_version)
        );
        assert!(image.files.len() >= 4, "{:?}", image.files);
    }

    // A second run finds everything in place and does nothing.
    let started = Instant::now();
    let again = provision::provision(&opts).unwrap();
    let second = started.elapsed();
    assert_eq!(again, manifest);

    let started = Instant::now();
    let loaded = provision::load(&manifest.cache_dir).unwrap();
    let load = started.elapsed();
    assert_eq!(loaded, manifest);
    eprintln!(
        "second provision (full verification) {:.2}s, load {:.2}s",
        second.as_secs_f64(),
        load.as_secs_f64()
    );
    assert!(load < Duration::from_secs(5), "load took {load:?}");
}

#[test]
#[ignore = "installs QEMU with apt-get (needs root): run `cargo xtask test`"]
fn installs_qemu() {
    provision::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
    for (binary, _) in provision::QEMU_BINARIES {
        let out = std::process::Command::new(binary)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        assert!(out.status.success(), "{binary} --version failed");
    }
}
