//! A panicked guest's memory as a `vmcore` artifact (`vmcore = true`).
//!
//! The guest is kept at its panic: on x86_64 the `pvpanic` device (driver `pvpanic_mmio`) tells
//! QEMU, which pauses it (`-action panic=pause`); elsewhere (Debian's arm64 kernel has no
//! pvpanic driver) the kernel waits at the panic (`panic=0`) and the runner stops the guest once
//! the console shows it. Either way the runner then stops the vCPUs over QMP, asks QEMU for a
//! `dump-guest-memory` in the best format it offers (kdump-compressed with zlib, lzo or snappy,
//! else ELF), waits for it within [`DUMP_TIMEOUT`] and a size bound (the guest's memory plus
//! [`HEADROOM`]), and QEMU is then stopped as usual. The `vmcoreinfo` device (with the
//! kernel's `qemu_fw_cfg` driver) puts the kernel's VMCOREINFO note in the dump.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::qmp::Qmp;

/// The dump's file name in the test's artifact directory (its store kind is `core-dump`).
pub(crate) const FILE_NAME: &str = "vmcore";

/// How long QEMU may take to write the dump.
pub(crate) const DUMP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a dump may hold beyond the guest's memory: ELF or kdump headers, CPU notes, the kdump
/// bitmaps and page descriptors.
const HEADROOM: u64 = 16 << 20;

/// The dump formats preferred, best first: kdump-compressed (zero pages left out, the others
/// compressed), in its plain layout where QEMU has it (8.2 and later: `kdump-raw-*`), else in
/// makedumpfile's flattened layout (what `kdump-*` writes; crash reads it, `makedumpfile -R`
/// rearranges it for other tools).
const PREFERRED: [&str; 6] = [
    "kdump-raw-zlib",
    "kdump-raw-lzo",
    "kdump-raw-snappy",
    "kdump-zlib",
    "kdump-lzo",
    "kdump-snappy",
];

/// A dump written.
#[derive(Debug)]
pub(crate) struct Dumped {
    /// QEMU's name of its format (`kdump-zlib`, `elf`, ...).
    pub(crate) format: String,
    /// Its size.
    pub(crate) bytes: u64,
    /// How long QEMU took to write it.
    pub(crate) elapsed: Duration,
}

/// The best format among those QEMU offers (`query-dump-guest-memory-capability`).
pub(crate) fn choose_format(offered: &[String]) -> &'static str {
    PREFERRED
        .into_iter()
        .find(|f| offered.iter().any(|o| o == f))
        .unwrap_or("elf")
}

/// Stops the guest behind `qmp_socket` and writes its memory (`memory_bytes` of RAM) to
/// `file`, within `limit`. A failed or unfinished dump leaves no file; the error says why.
pub(crate) async fn dump(
    qmp_socket: &Path,
    file: &Path,
    memory_bytes: u64,
    limit: Duration,
) -> Result<Dumped, String> {
    let result = write(qmp_socket, file, memory_bytes, limit).await;
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    result
}

async fn write(
    qmp_socket: &Path,
    file: &Path,
    memory_bytes: u64,
    limit: Duration,
) -> Result<Dumped, String> {
    let path = file
        .to_str()
        .ok_or_else(|| format!("the path {} is not UTF-8", file.display()))?;
    let mut qmp = Qmp::connect(qmp_socket, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    // Paused by pvpanic already, or still looping in panic(): stopped either way.
    qmp.execute("stop", None).await.map_err(|e| e.to_string())?;
    let offered: Vec<String> = qmp
        .execute("query-dump-guest-memory-capability", None)
        .await
        .map_err(|e| e.to_string())?
        .get("formats")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let format = choose_format(&offered);
    let started = Instant::now();
    qmp.execute(
        "dump-guest-memory",
        Some(json!({
            "paging": false,
            "protocol": format!("file:{path}"),
            "detach": true,
            "format": format,
        })),
    )
    .await
    .map_err(|e| e.to_string())?;
    let max_bytes = memory_bytes.saturating_add(HEADROOM);
    let deadline = started + limit;
    loop {
        let answer = qmp
            .execute("query-dump", None)
            .await
            .map_err(|e| e.to_string())?;
        match answer.get("status").and_then(Value::as_str) {
            Some("completed") => break,
            Some("failed") => return Err(format!("QEMU's {format} dump failed")),
            _ => {}
        }
        let written = std::fs::metadata(file).map_or(0, |m| m.len());
        if written > max_bytes {
            return Err(format!(
                "the {format} dump grew past {} MiB (the guest's memory and headers): abandoned",
                max_bytes >> 20
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the {format} dump did not finish within {}s ({} of {} bytes written): abandoned",
                limit.as_secs(),
                answer.get("completed").and_then(Value::as_u64).unwrap_or(0),
                answer.get("total").and_then(Value::as_u64).unwrap_or(0),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let bytes = std::fs::metadata(file)
        .map_err(|e| format!("the dump {} cannot be read: {e}", file.display()))?
        .len();
    Ok(Dumped {
        format: format.to_owned(),
        bytes,
        elapsed,
    })
}

/// Dumps a panicked guest into `artifacts/vmcore`: the note for the result's message, and the
/// `vmcore` environment entry on success. The guest's memory must fit in `max_artifact_bytes`.
pub(crate) async fn keep(
    qmp_socket: &Path,
    artifacts: &Path,
    memory_mib: u32,
    max_artifact_bytes: u64,
) -> (String, Option<String>) {
    let memory_bytes = u64::from(memory_mib) << 20;
    if memory_bytes > max_artifact_bytes {
        return (
            format!(
                "no vmcore: the guest's {memory_mib} MiB of memory are more than max-artifact-bytes ({} MiB)",
                max_artifact_bytes >> 20
            ),
            None,
        );
    }
    let file: PathBuf = artifacts.join(FILE_NAME);
    match dump(qmp_socket, &file, memory_bytes, DUMP_TIMEOUT).await {
        Ok(d) => {
            tracing::debug!(
                format = %d.format,
                bytes = d.bytes,
                elapsed_ms = d.elapsed.as_millis() as u64,
                "vmcore written"
            );
            (
                format!(
                    "vmcore: {FILE_NAME} ({}, {:.1} MiB of a {memory_mib} MiB guest, written in {:.1}s)",
                    d.format,
                    d.bytes as f64 / f64::from(1u32 << 20),
                    d.elapsed.as_secs_f64()
                ),
                Some(format!(
                    "{FILE_NAME} ({}, {} bytes, {:.3}s)",
                    d.format,
                    d.bytes,
                    d.elapsed.as_secs_f64()
                )),
            )
        }
        Err(why) => (format!("no vmcore: {why}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdump_compression_is_preferred_to_elf() {
        let offered = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            choose_format(&offered(&[
                "elf",
                "kdump-zlib",
                "kdump-lzo",
                "kdump-snappy"
            ])),
            "kdump-zlib"
        );
        assert_eq!(
            choose_format(&offered(&["elf", "kdump-snappy"])),
            "kdump-snappy"
        );
        assert_eq!(choose_format(&offered(&["elf", "win-dmp"])), "elf");
        assert_eq!(
            choose_format(&offered(&["elf", "kdump-zlib", "kdump-raw-zlib"])),
            "kdump-raw-zlib"
        );
        assert_eq!(choose_format(&[]), "elf");
    }

    #[tokio::test]
    async fn a_guest_larger_than_the_artifact_limit_is_not_dumped() {
        let dir = tempfile::tempdir().unwrap();
        let (note, env) = keep(&dir.path().join("qmp.sock"), dir.path(), 2048, 1 << 30).await;
        assert_eq!(
            note,
            "no vmcore: the guest's 2048 MiB of memory are more than max-artifact-bytes (1024 MiB)"
        );
        assert!(env.is_none());
        // No QEMU behind the socket: the reason, and no file.
        let (note, env) = keep(&dir.path().join("qmp.sock"), dir.path(), 64, 1 << 30).await;
        assert!(note.starts_with("no vmcore: QMP socket"), "{note}");
        assert!(env.is_none() && !dir.path().join(FILE_NAME).exists());
    }
}
