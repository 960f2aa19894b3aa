//! Booting an x86 `bzImage` without its in-guest decompression.
//!
//! A `bzImage` carries the kernel (`vmlinux`, an ELF) compressed; its setup code decompresses
//! it in the guest before the kernel runs. Under TCG that is most of an x86_64 boot: the stock
//! Debian kernel is 8 MB of xz unpacking to 66 MB, several seconds of emulated CPU (measured:
//! the first console line 7–9 s after QEMU started, against about 1 s when QEMU loads the
//! unpacked ELF). A kernel built with `CONFIG_PVH` (Debian's is) has a PVH entry point in its
//! ELF notes (`XEN_ELFNOTE_PHYS32_ENTRY`), and QEMU boots such an ELF given to `-kernel`
//! directly, on `pc`, `q35` and `microvm`, with the same command line and initramfs.
//!
//! [`vmlinux_of`] unpacks a `bzImage` on the host (xz, gzip or zstd, the compressions of
//! distribution kernels); [`unpacked`] does it once per kernel into a cache. A kernel that
//! cannot be booted this way (no PVH note, another compression, an old boot protocol) is
//! booted as it is: the reason is logged, nothing fails.

use std::io::Read;
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

/// The ELF note type (owner `Xen`) holding the kernel's 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Largest kernel [`vmlinux_of`] unpacks.
const MAX_VMLINUX: usize = 512 << 20;

/// Whether `elf` is a little-endian x86_64 ELF with a PVH entry point note.
pub fn has_pvh_entry(elf: &[u8]) -> bool {
    if FileKind::parse(elf).ok() != Some(FileKind::Elf64) {
        return false;
    }
    let Ok(header) = FileHeader64::<Endianness>::parse(elf) else {
        return false;
    };
    let Ok(endian) = header.endian() else {
        return false;
    };
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return false;
    }
    let Ok(segments) = header.program_headers(endian, elf) else {
        return false;
    };
    segments
        .iter()
        .filter(|s| s.p_type(endian) == PT_NOTE)
        .filter_map(|s| s.notes(endian, elf).ok().flatten())
        .any(|mut notes| {
            while let Ok(Some(note)) = notes.next() {
                if note.name() == b"Xen" && note.n_type(endian).0 == XEN_ELFNOTE_PHYS32_ENTRY {
                    return true;
                }
            }
            false
        })
}

/// The `vmlinux` (an ELF with a PVH entry point) inside the `bzImage` `data`, or why it
/// cannot be booted directly.
pub fn vmlinux_of(data: &[u8]) -> Result<Vec<u8>, String> {
    let byte = |off: usize| data.get(off).copied().ok_or("the image is truncated");
    let le16 = |off: usize| Ok::<_, String>(u16::from_le_bytes([byte(off)?, byte(off + 1)?]));
    let le32 = |off: usize| {
        Ok::<_, String>(u32::from_le_bytes([
            byte(off)?,
            byte(off + 1)?,
            byte(off + 2)?,
            byte(off + 3)?,
        ]))
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no `HdrS` boot header)".into());
    }
    let version = le16(0x206)?;
    if version < 0x0208 {
        return Err(format!(
            "boot protocol {}.{:02} has no payload fields (2.08 or later needed)",
            version >> 8,
            version & 0xff
        ));
    }
    // The protected-mode part follows the boot sector and `setup_sects` sectors of setup code
    // (0 means 4); the payload's offset is counted from there.
    let setup_sects = match byte(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(0x248)? as usize;
    let length = le32(0x24c)? as usize;
    let payload = data
        .get(start..start.saturating_add(length))
        .filter(|p| p.len() >= 8)
        .ok_or("the payload lies outside the image")?;
    // The kernel's build appends the unpacked size (32-bit little-endian) to the stream.
    let (stream, size) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(size.try_into().expect("four bytes")) as usize;
    if size > MAX_VMLINUX {
        return Err(format!("the payload says it unpacks to {size} bytes"));
    }
    let mut out = Vec::with_capacity(size);
    let limit = MAX_VMLINUX as u64 + 1;
    let read = if stream.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        liblzma::read::XzDecoder::new(stream)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| format!("xz: {e}"))
    } else if stream.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(stream)
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))
    } else if stream.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(stream)
            .map_err(|e| format!("zstd: {e}"))?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd: {e}"))
    } else {
        Err(format!(
            "the payload's compression (magic {:02x?}) is not xz, gzip or zstd",
            &stream[..4]
        ))
    };
    read?;
    if out.len() != size {
        return Err(format!(
            "the payload unpacked to {} bytes, its trailer says {size}",
            out.len()
        ));
    }
    if !has_pvh_entry(&out) {
        return Err(
            "the kernel has no PVH entry point (built without CONFIG_PVH, or not x86_64)".into(),
        );
    }
    Ok(out)
}

/// The unpacked `vmlinux` of the `bzImage` at `kernel`, made once into `cache_dir` as
/// `vmlinux-pvh-<digest>` (`digest`: the image's, so a changed image gets a new file), or why
/// the kernel is to be booted as it is.
pub fn unpacked(kernel: &Path, digest: &str, cache_dir: &Path) -> Result<PathBuf, String> {
    let file = cache_dir.join(format!("vmlinux-pvh-{digest}"));
    if file.is_file() {
        return Ok(file);
    }
    let data = std::fs::read(kernel).map_err(|e| format!("reading {}: {e}", kernel.display()))?;
    let vmlinux = vmlinux_of(&data)?;
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| format!("creating {}: {e}", cache_dir.display()))?;
    // Written aside and renamed: a reader never sees half a file, racing writers agree.
    let mut tmp = tempfile::NamedTempFile::new_in(cache_dir)
        .map_err(|e| format!("writing into {}: {e}", cache_dir.display()))?;
    std::io::Write::write_all(&mut tmp, &vmlinux)
        .map_err(|e| format!("writing into {}: {e}", cache_dir.display()))?;
    tmp.persist(&file)
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal x86_64 ELF with one PT_NOTE segment holding a note of `owner` and `kind`.
    fn elf_with_note(owner: &[u8], kind: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little-endian
        e[6] = 1; // EV_CURRENT
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = Vec::new();
        note.extend((owner.len() as u32 + 1).to_le_bytes());
        note.extend(8u32.to_le_bytes());
        note.extend(kind.to_le_bytes());
        note.extend(owner);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend(0x0100_0850u64.to_le_bytes());
        let at = e.len() as u64;
        let ph = &mut e[64..120];
        ph[..4].copy_from_slice(&PT_NOTE.0.to_le_bytes());
        ph[8..16].copy_from_slice(&at.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        ph[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_memsz
        ph[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        e.extend(note);
        e
    }

    /// A bzImage-shaped file whose payload is `compressed` (with the size trailer).
    fn bzimage(compressed: &[u8], unpacked_len: usize) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut d = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        d[0x1f1] = setup_sects;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        d[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&(compressed.len() as u32 + 4).to_le_bytes());
        d.extend([0u8; 16]);
        d.extend(compressed);
        d.extend((unpacked_len as u32).to_le_bytes());
        d.extend([0u8; 32]);
        d
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(data, 1)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_pvh_note_is_found_and_only_that_one() {
        assert!(has_pvh_entry(&elf_with_note(b"Xen", 18)));
        assert!(!has_pvh_entry(&elf_with_note(b"Xen", 17)));
        assert!(!has_pvh_entry(&elf_with_note(b"GNU", 18)));
        assert!(!has_pvh_entry(b"not an ELF at all"));
    }

    #[test]
    fn payloads_in_each_compression_unpack_to_the_elf() {
        let elf = elf_with_note(b"Xen", 18);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &elf).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::stream::encode_all(elf.as_slice(), 3).unwrap();
        for packed in [xz(&elf), gz, zst] {
            assert_eq!(vmlinux_of(&bzimage(&packed, elf.len())).unwrap(), elf);
        }
    }

    #[test]
    fn kernels_that_cannot_boot_directly_say_why() {
        let elf = elf_with_note(b"Xen", 18);
        let no_pvh = elf_with_note(b"Xen", 17);
        let err = vmlinux_of(&bzimage(&xz(&no_pvh), no_pvh.len())).unwrap_err();
        assert!(err.contains("CONFIG_PVH"), "{err}");
        let err = vmlinux_of(&bzimage(&xz(&elf), elf.len() + 1)).unwrap_err();
        assert!(err.contains("trailer"), "{err}");
        let err = vmlinux_of(&bzimage(b"BZh91AY&SY", 100)).unwrap_err();
        assert!(err.contains("not xz, gzip or zstd"), "{err}");
        assert!(vmlinux_of(&elf).unwrap_err().contains("HdrS"));
        let mut old = bzimage(&xz(&elf), elf.len());
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(vmlinux_of(&old).unwrap_err().contains("2.06"));
        let mut cut = bzimage(&xz(&elf), elf.len());
        cut.truncate(2100);
        assert!(vmlinux_of(&cut).unwrap_err().contains("outside"));
    }

    #[test]
    fn unpacking_is_done_once_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let elf = elf_with_note(b"Xen", 18);
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, bzimage(&xz(&elf), elf.len())).unwrap();
        let cache = dir.path().join("cache");
        let file = unpacked(&kernel, "d1", &cache).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), elf);
        // The cached file is used as it is, without reading the image again.
        std::fs::remove_file(&kernel).unwrap();
        assert_eq!(unpacked(&kernel, "d1", &cache).unwrap(), file);
        let err = unpacked(&kernel, "d2", &cache).unwrap_err();
        assert!(err.contains("vmlinuz"), "{err}");
    }
}
