//! Recognising kernel images, so a missing, empty, corrupt or wrong-architecture kernel is
//! reported before QEMU is started.

use std::io::Read;
use std::path::Path;

use orchestrator_core::Arch;

/// The kind of kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// x86 `bzImage` (boot protocol header `HdrS`).
    BzImage,
    /// arm64 or riscv64 `Image` (magic at offset 0x38).
    Image,
    /// 32-bit ARM `zImage`.
    ZImage,
    /// An ELF `vmlinux`.
    Elf,
    /// A gzip-compressed `Image` (QEMU decompresses it for arm64).
    GzipImage,
}

/// What a kernel image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// Its format.
    pub format: KernelFormat,
    /// The architecture it is built for.
    pub arch: Arch,
}

/// Identifies the kernel image at `path`.
pub fn identify(path: &Path) -> Result<KernelInfo, String> {
    let mut file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot open kernel image {}: {e}; give an existing bzImage, Image, zImage or vmlinux",
            path.display()
        )
    })?;
    let mut head = Vec::with_capacity(4096);
    file.by_ref()
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read kernel image {}: {e}", path.display()))?;
    if head.is_empty() {
        return Err(format!("kernel image {} is empty", path.display()));
    }
    identify_bytes(&head).ok_or_else(|| {
        format!(
            "{} is not a kernel image this runner recognises (x86 bzImage, arm64/riscv64 Image, ARM zImage or ELF vmlinux); is the file corrupt or truncated?",
            path.display()
        )
    })
}

/// Identifies a kernel from its first bytes (4 KiB is plenty).
pub fn identify_bytes(head: &[u8]) -> Option<KernelInfo> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let info = |format, arch| Some(KernelInfo { format, arch });
    if at(0, b"\x7fELF") {
        let machine = u16::from_le_bytes([*head.get(18)?, *head.get(19)?]);
        let arch = match machine {
            62 => Arch::X86_64,
            183 => Arch::Aarch64,
            40 => Arch::Armv7,
            243 => Arch::Riscv64,
            _ => return None,
        };
        return info(KernelFormat::Elf, arch);
    }
    if at(0x202, b"HdrS") {
        return info(KernelFormat::BzImage, Arch::X86_64);
    }
    if at(0x38, b"ARM\x64") {
        return info(KernelFormat::Image, Arch::Aarch64);
    }
    if at(0x38, b"RSC\x05") || at(0x30, b"RISCV\0\0\0") {
        return info(KernelFormat::Image, Arch::Riscv64);
    }
    if at(0x24, &0x016F_2818u32.to_le_bytes()) {
        return info(KernelFormat::ZImage, Arch::Armv7);
    }
    if at(0, &[0x1f, 0x8b]) {
        let mut inner = Vec::new();
        let _ = flate2::read::GzDecoder::new(head)
            .take(4096)
            .read_to_end(&mut inner);
        let mut found = identify_bytes(&inner)?;
        if found.format == KernelFormat::Image {
            found.format = KernelFormat::GzipImage;
        }
        return Some(found);
    }
    None
}

/// Checks that `path` is a kernel for `arch`, with an error naming the file and the fix.
pub fn check(path: &Path, arch: Arch) -> Result<KernelInfo, String> {
    let info = identify(path)?;
    if info.arch != arch {
        return Err(format!(
            "kernel image {} is built for {}, but the test needs {arch}: give a {arch} kernel or change the test's `arch`",
            path.display(),
            info.arch
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 1024];
        v[off..off + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn recognises_each_format() {
        let cases = [
            (image(0x202, b"HdrS"), KernelFormat::BzImage, Arch::X86_64),
            (image(0x38, b"ARM\x64"), KernelFormat::Image, Arch::Aarch64),
            (image(0x38, b"RSC\x05"), KernelFormat::Image, Arch::Riscv64),
            (
                image(0x24, &0x016F_2818u32.to_le_bytes()),
                KernelFormat::ZImage,
                Arch::Armv7,
            ),
        ];
        for (bytes, format, arch) in cases {
            assert_eq!(identify_bytes(&bytes), Some(KernelInfo { format, arch }));
        }
        let mut elf = image(0, b"\x7fELF");
        elf[18] = 243;
        assert_eq!(identify_bytes(&elf).unwrap().arch, Arch::Riscv64);
        assert_eq!(identify_bytes(b"#!/bin/sh\necho not a kernel\n"), None);
    }

    #[test]
    fn gzip_images_are_looked_into() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&image(0x38, b"ARM\x64")).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            identify_bytes(&gz),
            Some(KernelInfo {
                format: KernelFormat::GzipImage,
                arch: Arch::Aarch64
            })
        );
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(identify(&empty).unwrap_err().contains("is empty"));
        assert!(
            identify(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot open")
        );
        let x86 = dir.path().join("bzImage");
        std::fs::write(&x86, image(0x202, b"HdrS")).unwrap();
        let err = check(&x86, Arch::Aarch64).unwrap_err();
        assert!(
            err.contains("built for x86_64, but the test needs aarch64"),
            "{err}"
        );
    }
}
