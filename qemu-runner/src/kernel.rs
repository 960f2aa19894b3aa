//! Recognising kernel images, so a missing, empty, corrupt or wrong-architecture kernel is
//! reported before QEMU is started.
//!
//! This is the one recogniser: a test's own kernel ([`check`]) and a provisioned Debian kernel
//! (`provision`) are judged by the same rules per architecture:
//!
//! | arch | accepted |
//! |---|---|
//! | x86_64 | `bzImage` (`HdrS` at 0x202), or a little-endian 64-bit ELF for `EM_X86_64` |
//! | aarch64 | `Image` (`ARM\x64` at 0x38), the same gzip-compressed, or a little-endian 64-bit ELF for `EM_AARCH64` |
//! | armv7 | `zImage` (magic 0x016F2818 at 0x24), or a little-endian 32-bit ELF for `EM_ARM` |
//! | riscv64 | `Image` with both magics (`RISCV\0\0\0` at 0x30 and `RSC\x05` at 0x38), or a little-endian 64-bit ELF for `EM_RISCV` |

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use object::elf::{self, FileHeader32, FileHeader64};
use object::read::elf::FileHeader;
use object::{Endianness, FileKind};
use orchestrator_core::Arch;

/// Why a kernel image cannot be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The file cannot be opened (missing, unreadable).
    #[error(
        "cannot open kernel image {}: {source}; give an existing bzImage, Image, zImage or vmlinux",
        path.display()
    )]
    Open {
        /// The kernel image.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file cannot be read.
    #[error("cannot read kernel image {}: {source}", path.display())]
    Read {
        /// The kernel image.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("kernel image {} is empty", path.display())]
    Empty {
        /// The kernel image.
        path: PathBuf,
    },
    /// The file is not a kernel image this runner recognises.
    #[error(
        "{} is not a kernel image this runner recognises (x86 bzImage, arm64/riscv64 Image, ARM zImage or ELF vmlinux); is the file corrupt or truncated?",
        path.display()
    )]
    Unrecognised {
        /// The file.
        path: PathBuf,
    },
    /// The kernel is built for another architecture.
    #[error(
        "kernel image {} is built for {found}, but the test needs {wanted}: give a {wanted} kernel or change the test's `arch`",
        path.display()
    )]
    WrongArch {
        /// The kernel image.
        path: PathBuf,
        /// The architecture it is built for.
        found: Arch,
        /// The architecture the test needs.
        wanted: Arch,
    },
}

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
pub fn identify(path: &Path) -> Result<KernelInfo, KernelError> {
    let mut file = std::fs::File::open(path).map_err(|source| KernelError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut head = Vec::with_capacity(4096);
    file.by_ref()
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|source| KernelError::Read {
            path: path.to_owned(),
            source,
        })?;
    if head.is_empty() {
        return Err(KernelError::Empty {
            path: path.to_owned(),
        });
    }
    identify_bytes(&head).ok_or_else(|| KernelError::Unrecognised {
        path: path.to_owned(),
    })
}

/// Identifies a kernel from its first bytes (4 KiB is plenty).
pub fn identify_bytes(head: &[u8]) -> Option<KernelInfo> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let info = |format, arch| Some(KernelInfo { format, arch });
    if let Some(elf) = elf_header(head) {
        let arch = match (elf::Machine(elf.machine), elf.is_64) {
            (elf::EM_X86_64, true) => Arch::X86_64,
            (elf::EM_AARCH64, true) => Arch::Aarch64,
            (elf::EM_ARM, false) => Arch::Armv7,
            (elf::EM_RISCV, true) => Arch::Riscv64,
            _ => return None,
        };
        return elf.little_endian.then_some(KernelInfo {
            format: KernelFormat::Elf,
            arch,
        });
    }
    if at(0x202, b"HdrS") {
        return info(KernelFormat::BzImage, Arch::X86_64);
    }
    if at(0x38, b"ARM\x64") {
        return info(KernelFormat::Image, Arch::Aarch64);
    }
    if at(0x30, b"RISCV\0\0\0") && at(0x38, b"RSC\x05") {
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
pub fn check(path: &Path, arch: Arch) -> Result<KernelInfo, KernelError> {
    let info = identify(path)?;
    if info.arch != arch {
        return Err(KernelError::WrongArch {
            path: path.to_owned(),
            found: info.arch,
            wanted: arch,
        });
    }
    Ok(info)
}

/// Largest kernel image [`release`] reads (or decompresses) to look for its banner.
const RELEASE_SCAN_LIMIT: u64 = 256 << 20;

/// The release (`uname -r`) of the kernel image at `path`, where the image shows it: an x86
/// `bzImage` names it in its header; an uncompressed or gzip-compressed arm64 or riscv64
/// `Image`, or an ELF `vmlinux`, holds the banner `Linux version <release> (...`. `None` when
/// the file cannot be read or hides it (an ARM `zImage` is compressed).
pub fn release(path: &Path) -> Option<String> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(RELEASE_SCAN_LIMIT)
        .read_to_end(&mut data)
        .ok()?;
    release_from_bytes(&data)
}

/// [`release`] of an image's bytes.
pub fn release_from_bytes(data: &[u8]) -> Option<String> {
    let at = |off: usize, magic: &[u8]| data.get(off..off + magic.len()) == Some(magic);
    if at(0x202, b"HdrS") {
        // Boot protocol 2.00+: `kernel_version` at 0x20e points (past the first 0x200 bytes)
        // to a NUL-terminated "<release> (<builder>) #<n> ..." string.
        let version = u16::from_le_bytes([*data.get(0x206)?, *data.get(0x207)?]);
        let offset = usize::from(u16::from_le_bytes([*data.get(0x20e)?, *data.get(0x20f)?]));
        if version >= 0x0200 && offset != 0 {
            let text = data.get(offset + 0x200..)?;
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            let release = String::from_utf8_lossy(&text[..end.min(256)]);
            return release.split_whitespace().next().map(str::to_owned);
        }
        return None;
    }
    if at(0, &[0x1f, 0x8b]) {
        let mut inner = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(RELEASE_SCAN_LIMIT)
            .read_to_end(&mut inner)
            .ok()?;
        return banner_release(&inner);
    }
    banner_release(data)
}

/// The release in the first `Linux version <release> (` banner of `data`.
fn banner_release(data: &[u8]) -> Option<String> {
    // (The search runs in the standard library's string code: fast even in a debug build.)
    let text = String::from_utf8_lossy(data);
    text.match_indices("Linux version ")
        .find_map(|(at, banner)| {
            let rest = &text[at + banner.len()..];
            let end = rest
                .char_indices()
                .take(128)
                .find_map(|(i, c)| (c == ' ' || c == '\0' || !c.is_ascii_graphic()).then_some(i))?;
            (end > 0 && rest[end..].starts_with(" (")).then(|| rest[..end].to_owned())
        })
}

/// What an ELF file header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ElfHeader {
    /// 64-bit (`ELFCLASS64`) rather than 32-bit.
    pub(crate) is_64: bool,
    /// Little-endian (`ELFDATA2LSB`).
    pub(crate) little_endian: bool,
    /// `e_machine`.
    pub(crate) machine: u16,
}

/// The header of the ELF file starting with `head`, or `None` when it is not one.
pub(crate) fn elf_header(head: &[u8]) -> Option<ElfHeader> {
    fn fields<H: FileHeader<Endian = Endianness>>(head: &[u8], is_64: bool) -> Option<ElfHeader> {
        let header = H::parse(head).ok()?;
        let endian = header.endian().ok()?;
        Some(ElfHeader {
            is_64,
            little_endian: header.is_little_endian(),
            machine: header.e_machine(endian).0,
        })
    }
    match FileKind::parse(head).ok()? {
        FileKind::Elf32 => fields::<FileHeader32<Endianness>>(head, false),
        FileKind::Elf64 => fields::<FileHeader64<Endianness>>(head, true),
        _ => None,
    }
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
        let mut riscv = image(0x38, b"RSC\x05");
        riscv[0x30..0x38].copy_from_slice(b"RISCV\0\0\0");
        let cases = [
            (image(0x202, b"HdrS"), KernelFormat::BzImage, Arch::X86_64),
            (image(0x38, b"ARM\x64"), KernelFormat::Image, Arch::Aarch64),
            (riscv, KernelFormat::Image, Arch::Riscv64),
            (
                image(0x24, &0x016F_2818u32.to_le_bytes()),
                KernelFormat::ZImage,
                Arch::Armv7,
            ),
        ];
        for (bytes, format, arch) in cases {
            assert_eq!(identify_bytes(&bytes), Some(KernelInfo { format, arch }));
        }
        let mut elf = image(0, b"\x7fELF\x02\x01\x01");
        elf[18] = 243;
        assert_eq!(identify_bytes(&elf).unwrap().arch, Arch::Riscv64);
        assert_eq!(identify_bytes(b"#!/bin/sh\necho not a kernel\n"), None);
        // riscv64 needs both magics; a big-endian or wrong-class ELF is no kernel here.
        assert_eq!(identify_bytes(&image(0x38, b"RSC\x05")), None);
        assert_eq!(identify_bytes(&image(0x30, b"RISCV\0\0\0")), None);
        elf[5] = 2;
        assert_eq!(identify_bytes(&elf), None);
        elf[5] = 1;
        elf[4] = 1;
        assert_eq!(identify_bytes(&elf), None);
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
    fn releases_from_headers_and_banners() {
        let mut bz = image(0x202, b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let text = b"6.1.0-57-amd64 (debian-kernel@example) #1 SMP\0";
        bz[0x300..0x300 + text.len()].copy_from_slice(text);
        assert_eq!(release_from_bytes(&bz).as_deref(), Some("6.1.0-57-amd64"));

        let mut arm = image(0x38, b"ARM\x64");
        // A format string first, then the banner.
        arm.extend_from_slice(b"Linux version %s\0Linux version 6.1.0-rc1+ (me@host) #3\0");
        assert_eq!(release_from_bytes(&arm).as_deref(), Some("6.1.0-rc1+"));

        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&arm).unwrap();
        assert_eq!(
            release_from_bytes(&enc.finish().unwrap()).as_deref(),
            Some("6.1.0-rc1+")
        );
        assert_eq!(release_from_bytes(&image(0x38, b"ARM\x64")), None);
        assert_eq!(release(Path::new("/nonexistent/Image")), None);
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            identify(&empty)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        assert!(
            identify(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("cannot open")
        );
        let x86 = dir.path().join("bzImage");
        std::fs::write(&x86, image(0x202, b"HdrS")).unwrap();
        let err = check(&x86, Arch::Aarch64).unwrap_err().to_string();
        assert!(
            err.contains("built for x86_64, but the test needs aarch64"),
            "{err}"
        );
    }
}
