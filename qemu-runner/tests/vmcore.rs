//! `vmcore = true`: a kernel panic leaves the guest's memory as the `vmcore` artifact.
//!
//! The heavy test needs QEMU and the provisioned images, which `cargo xtask test` installs
//! before running it (with binutils, whose `readelf` reads an ELF dump's notes); plain
//! `cargo test` skips it as ignored. The dump's notes are checked here: one `NT_PRSTATUS` per
//! vCPU, read with `readelf -n` for ELF and by this file's own parser for kdump-compressed dumps.

use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CancellationToken, CrashKind, Orchestrator, Outcome, Requirements, RunConfig, TestCase,
};
use qemu_runner::{QemuConfig, QemuRunner};

/// `NT_PRSTATUS`: a CPU's registers, one note per vCPU.
const NT_PRSTATUS: u32 = 1;

/// Reads `len` bytes at `offset` of `data`, or says where the file ends.
fn bytes_at(data: &[u8], offset: u64, len: u64) -> Result<&[u8], String> {
    let start = usize::try_from(offset).map_err(|_| format!("offset {offset} too large"))?;
    let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            format!(
                "{len} bytes at {start} go past the end of {} bytes",
                data.len()
            )
        })?;
    Ok(&data[start..end])
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A kdump file as its reader sees it: `read(offset, len)` in the dump's own layout, whether
/// the file holds it as is or in makedumpfile's flattened layout.
///
/// QEMU 7.2's `kdump-zlib`/`-lzo`/`-snappy` write the flattened layout (QEMU's
/// `dump/dump.c`, `write_start_flat_header` and `write_buffer`; `include/sysemu/dump.h`,
/// `MakedumpfileHeader` and `MakedumpfileDataHeader`): a 4096-byte header starting with
/// `"makedumpfile"` (16 bytes, NUL-padded), `type` and `version` (i64, big-endian, both 1),
/// then records, each an `offset` and a `buf_size` (i64, big-endian) followed by `buf_size`
/// bytes that belong at `offset` of the dump, until a record whose offset and size are -1.
/// Every piece QEMU writes (the header, the sub-header, the notes, ...) is one record.
/// QEMU 8.2's `kdump-raw-*` write the dump itself.
enum Kdump<'a> {
    Plain(&'a [u8]),
    /// The records: the dump's offset, and the bytes.
    Flat(Vec<(u64, &'a [u8])>),
}

impl<'a> Kdump<'a> {
    fn new(data: &'a [u8]) -> Result<Self, String> {
        if !data.starts_with(b"makedumpfile\0") {
            return Ok(Kdump::Plain(data));
        }
        let be = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap());
        let header = bytes_at(data, 0, 32)?;
        if be(&header[16..24]) != 1 || be(&header[24..32]) != 1 {
            return Err("a flattened header of an unknown type or version".into());
        }
        let mut records = Vec::new();
        let mut at: u64 = 4096;
        loop {
            let head = bytes_at(data, at, 16)?;
            let (offset, size) = (be(&head[..8]), be(&head[8..]));
            if offset == -1 && size == -1 {
                return Ok(Kdump::Flat(records));
            }
            let (offset, size) = (
                u64::try_from(offset)
                    .map_err(|_| format!("a record at {at} has offset {offset}"))?,
                u64::try_from(size).map_err(|_| format!("a record at {at} has size {size}"))?,
            );
            records.push((offset, bytes_at(data, at + 16, size)?));
            at += 16 + size;
        }
    }

    /// `len` bytes at `offset` of the dump (in one record, for a flattened file).
    fn read(&self, offset: u64, len: u64) -> Result<&'a [u8], String> {
        match self {
            Kdump::Plain(data) => bytes_at(data, offset, len),
            Kdump::Flat(records) => {
                let end = offset
                    .checked_add(len)
                    .ok_or_else(|| format!("{len} bytes at {offset} overflow"))?;
                let (start, buf) = records
                    .iter()
                    .find(|(start, buf)| *start <= offset && end <= start + buf.len() as u64)
                    .ok_or_else(|| format!("no record holds {len} bytes at {offset}"))?;
                Ok(&buf[(offset - start) as usize..(end - start) as usize])
            }
        }
    }
}

/// The CPU count and the `NT_PRSTATUS` notes of a kdump-compressed dump (64-bit, little-endian
/// guest: x86_64 and aarch64), from its headers as QEMU writes them (`include/sysemu/dump.h`,
/// `DiskDumpHeader64` and `KdumpSubHeader64`, both packed, fields in the guest's byte order):
///
/// - at 0, the disk dump header: `signature` `"KDUMP   "` (8 bytes), `header_version` (u32,
///   at 8), `utsname` (6 × 65 bytes, at 12), `timestamp` (22 bytes, at 402), then u32s:
///   `status` (424), `block_size` (428), `sub_hdr_size` (432), `bitmap_blocks` (436),
///   `max_mapnr` (440), `total_ram_blocks` (444), `device_blocks` (448), `written_blocks`
///   (452), `current_cpu` (456), `nr_cpus` (460);
/// - at `block_size` (one header block), the kdump sub-header: `phys_base` (u64, at 0),
///   `dump_level` and `split` (u32, at 8 and 12), `start_pfn` and `end_pfn` (u64, at 16 and
///   24), `offset_vmcoreinfo` and `size_vmcoreinfo` (u64, at 32 and 40), `offset_note` and
///   `note_size` (u64, at 48 and 56; header version 4 and later), ...;
/// - at `offset_note`, `note_size` bytes of ELF notes: each an `Elf64_Nhdr` (`n_namesz`,
///   `n_descsz`, `n_type`, u32 each) followed by the name and the descriptor, each padded to
///   4 bytes. QEMU writes one `NT_PRSTATUS` (name `CORE`) per vCPU, with other notes (x86's
///   `QEMU` CPU state, arm's `NT_PRFPREG`, the guest's `VMCOREINFO`) around them.
///
/// Returns `nr_cpus` and the number of `CORE` `NT_PRSTATUS` notes.
fn kdump_cpus(data: &[u8]) -> Result<(u32, usize), String> {
    let dump = Kdump::new(data)?;
    let header = dump.read(0, 464)?;
    if &header[..8] != b"KDUMP   " {
        return Err(format!("no KDUMP signature: {:?}", &header[..8]));
    }
    let version = u32_le(header, 8);
    if version < 4 {
        return Err(format!("header version {version} has no note area"));
    }
    let block_size = u32_le(header, 428);
    if !(512..=1 << 20).contains(&block_size) {
        return Err(format!("implausible block size {block_size}"));
    }
    let nr_cpus = u32_le(header, 460);
    let sub = dump.read(u64::from(block_size), 64)?;
    let (offset_note, note_size) = (u64_le(sub, 48), u64_le(sub, 56));
    if note_size > 64 << 20 {
        return Err(format!("implausible note size {note_size}"));
    }
    let notes = dump.read(offset_note, note_size)?;
    let pad = |n: u32| (n as usize).div_ceil(4) * 4;
    let mut prstatus = 0;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz, kind) = (
            u32_le(notes, at),
            u32_le(notes, at + 4),
            u32_le(notes, at + 8),
        );
        let name_at = at + 12;
        let next = name_at
            .checked_add(pad(namesz))
            .and_then(|n| n.checked_add(pad(descsz)))
            .filter(|&n| n <= notes.len())
            .ok_or_else(|| format!("the note at {at} of the note area goes past its end"))?;
        let name = &notes[name_at..name_at + namesz as usize];
        if kind == NT_PRSTATUS && name.strip_suffix(b"\0").unwrap_or(name) == b"CORE" {
            prstatus += 1;
        }
        at = next;
    }
    Ok((nr_cpus, prstatus))
}

/// The `NT_PRSTATUS` notes `readelf -n` lists in an ELF dump.
fn elf_prstatus(path: &Path) -> usize {
    let out = std::process::Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf runs (binutils; `cargo xtask test` installs it)");
    assert!(out.status.success(), "readelf -n failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("NT_PRSTATUS"))
        .count()
}

fn panic_case(arch: Arch) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    req.cpus = Some(2);
    req.vmcore = true;
    TestCase::script(
        &format!("vmcore@{arch}"),
        "echo c > /proc/sysrq-trigger; sleep 60",
    )
    .with_requirements(req)
    .with_timeout(Duration::from_secs(240))
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_sysrq_panic_leaves_a_vmcore_with_both_vcpus() {
    let scratch = tempfile::tempdir().unwrap();
    // Both architectures at once (TCG is slow: two guests share the wait).
    let mut config = QemuConfig::new();
    config.pool = Some(2);
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(config));
    let started = Instant::now();
    let report = orch
        .run_with(
            vec![panic_case(Arch::X86_64), panic_case(Arch::Aarch64)],
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("valid run");
    eprintln!("both guests in {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(report.results.len(), 2);
    if std::env::var_os("ORCH_KEEP_SCRATCH").is_some() {
        eprintln!("scratch kept: {}", scratch.keep().display());
    }
    for r in &report.results {
        eprintln!(
            "{}: {} [{:.1}s] {}",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            r.message.as_deref().unwrap_or("")
        );
        // The crash stays the outcome; the dump is listed beside the console log.
        assert_eq!(
            r.outcome,
            Outcome::Crashed {
                crash: CrashKind::KernelPanic
            },
            "{r:#?}"
        );
        let message = r.message.as_deref().unwrap_or_default();
        assert!(message.contains("vmcore: vmcore ("), "{message}");
        let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert!(
            names.contains(&"console.log") && names.contains(&"vmcore"),
            "{names:?}"
        );
        let entry = &r.environment["vmcore"];
        eprintln!("{}: {entry}", r.test_id);
        let vmcore = r.artifacts.iter().find(|a| a.name == "vmcore").unwrap();
        assert!(vmcore.size > 0);
        // At most the guest's memory (512 MiB) and headers.
        assert!(vmcore.size <= (512 + 16) << 20, "{entry}");
        let data = std::fs::read(&vmcore.path).unwrap();
        if data.starts_with(b"\x7fELF") {
            assert!(entry.contains("(elf,"), "{entry}");
            assert_eq!(elf_prstatus(&vmcore.path), 2, "{entry}");
        } else {
            assert!(entry.contains("(kdump-"), "{entry}");
            let (nr_cpus, prstatus) = kdump_cpus(&data).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!((nr_cpus, prstatus), (2, 2), "{entry}");
        }
        // Where the guest stopped: x86_64's pvpanic pauses it inside panic(), before the
        // kernel's closing line; the other kernels print it and wait.
        let console = std::fs::read_to_string(scratch_file(r, "console.log")).unwrap();
        eprintln!(
            "{}: the console shows the end of the panic: {}",
            r.test_id,
            console.contains("---[ end Kernel panic")
        );
        // QEMU is gone.
        let pid: u32 = r.environment["qemu-pid"].parse().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(
            stat.is_err() || stat.unwrap().contains(") Z "),
            "QEMU {pid} is still running"
        );
    }
}

/// An artifact's path on the host.
fn scratch_file(r: &orchestrator_core::TestResult, name: &str) -> std::path::PathBuf {
    r.artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .path
        .clone()
}

#[test]
fn truncated_or_damaged_kdump_files_are_refused() {
    assert!(kdump_cpus(b"KDUMP   ").is_err());
    let mut header = vec![0u8; 464];
    header[..8].copy_from_slice(b"KDUMP   ");
    header[8..12].copy_from_slice(&6u32.to_le_bytes());
    header[428..432].copy_from_slice(&4096u32.to_le_bytes());
    header[460..464].copy_from_slice(&2u32.to_le_bytes());
    // No sub-header after the header.
    assert!(kdump_cpus(&header).unwrap_err().contains("past the end"));
    // A sub-header whose notes lie past the end.
    header.resize(4096 + 64, 0);
    header[4096 + 48..4096 + 56].copy_from_slice(&8192u64.to_le_bytes());
    header[4096 + 56..4096 + 64].copy_from_slice(&40u64.to_le_bytes());
    assert!(kdump_cpus(&header).unwrap_err().contains("past the end"));
    // Two CORE NT_PRSTATUS notes and a QEMU note, in the plain layout and flattened.
    let note = |name: &[u8], kind: u32, desc: usize| {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend(vec![0u8; desc.div_ceil(4) * 4]);
        n
    };
    let mut notes = note(b"CORE\0", 1, 336);
    notes.extend(note(b"QEMU\0", 0, 10));
    notes.extend(note(b"CORE\0", 1, 336));
    header[4096 + 48..4096 + 56].copy_from_slice(&(4096u64 + 64).to_le_bytes());
    header[4096 + 56..4096 + 64].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    let mut plain = header.clone();
    plain.extend(&notes);
    assert_eq!(kdump_cpus(&plain), Ok((2, 2)));
    let mut flat = vec![0u8; 4096];
    flat[..13].copy_from_slice(b"makedumpfile\0");
    flat[16..24].copy_from_slice(&1i64.to_be_bytes());
    flat[24..32].copy_from_slice(&1i64.to_be_bytes());
    for (offset, piece) in [
        (0, &header[..464]),
        (4096, &header[4096..]),
        (4160, &notes[..]),
    ] {
        flat.extend((offset as i64).to_be_bytes());
        flat.extend((piece.len() as i64).to_be_bytes());
        flat.extend(piece);
    }
    flat.extend((-1i64).to_be_bytes());
    flat.extend((-1i64).to_be_bytes());
    assert_eq!(kdump_cpus(&flat), Ok((2, 2)));
    // A flattened file cut short.
    assert!(kdump_cpus(&flat[..flat.len() - 20]).is_err());
}
