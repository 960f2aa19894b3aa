//! Unpacking the guest's artifact archive on the host. The guest is untrusted: the tar stream
//! it sends may try to escape the artifact directory (`..`, absolute paths, links), plant device
//! files, or exhaust memory or disk (huge or many entries, sparse "bombs"). Every such entry is
//! rejected with a reason and nothing is written outside `dest`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Limits on what the guest may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactLimits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Number of files.
    pub max_files: usize,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_bytes: 1 << 30,
            max_files: 10_000,
        }
    }
}

/// What an archive yielded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Files written, relative path → size.
    pub files: BTreeMap<String, u64>,
    /// Entries refused, with the reason.
    pub rejected: Vec<(String, String)>,
    /// Whether the archive ended properly (its end marker was read).
    pub complete: bool,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

/// A path inside the artifact directory, or why the entry's name is not acceptable.
pub fn safe_relative(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("the path is absolute".into());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    Ok(out)
}

/// Reads a tar stream from the guest into `dest` (created if needed), within `limits`.
pub fn extract(reader: impl Read, dest: &Path, limits: ArtifactLimits) -> Extracted {
    let mut out = Extracted::default();
    if let Err(e) = std::fs::create_dir_all(dest) {
        out.error = Some(format!("cannot create {}: {e}", dest.display()));
        return out;
    }
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            out.error = Some(format!("not a tar stream: {e}"));
            return out;
        }
    };
    let mut bytes: u64 = 0;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.error = Some(format!("the archive is damaged or was cut short: {e}"));
                return out;
            }
        };
        let name = match entry.path() {
            Ok(p) => p.into_owned(),
            Err(e) => {
                out.error = Some(format!("an entry has an unreadable name: {e}"));
                return out;
            }
        };
        let shown = name.display().to_string();
        let kind = entry.header().entry_type();
        let rel = match safe_relative(&name) {
            Ok(r) => r,
            Err(why) => {
                out.rejected.push((shown, why));
                continue;
            }
        };
        let target = dest.join(&rel);
        if kind.is_dir() {
            if let Err(why) = make_dirs(dest, &rel) {
                out.rejected.push((shown, why));
            }
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            out.rejected.push((
                shown,
                "links are not accepted (they could point outside the artifact directory)".into(),
            ));
            continue;
        }
        if kind.is_gnu_sparse() {
            out.rejected.push((
                shown,
                "sparse entries are not accepted (their expanded size can be a bomb)".into(),
            ));
            continue;
        }
        if !kind.is_file() {
            out.rejected.push((
                shown,
                "only regular files and directories are accepted, not device files, FIFOs or other special entries".into(),
            ));
            continue;
        }
        if out.files.len() >= limits.max_files {
            out.rejected.push((
                shown,
                format!("more than {} files were sent", limits.max_files),
            ));
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if bytes.saturating_add(size) > limits.max_bytes {
            out.rejected.push((
                shown,
                format!(
                    "{size} bytes would pass the limit of {} bytes for all artifacts",
                    limits.max_bytes
                ),
            ));
            continue;
        }
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
            && let Err(why) = make_dirs(dest, parent)
        {
            out.rejected.push((shown, why));
            continue;
        }
        // Never follow or replace anything already there (a second entry with the same name,
        // or a directory): create the file fresh.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(f) => f,
            Err(e) => {
                out.rejected.push((shown, format!("cannot create it: {e}")));
                continue;
            }
        };
        // Copy at most the declared size, whatever the stream claims.
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut file);
        match copied {
            Ok(n) if n == size => {
                bytes += n;
                out.files.insert(rel.to_string_lossy().into_owned(), n);
            }
            Ok(n) => {
                let _ = std::fs::remove_file(&target);
                out.error = Some(format!(
                    "{shown}: the archive ended after {n} of {size} bytes"
                ));
                return out;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&target);
                out.error = Some(format!("{shown}: {e}"));
                return out;
            }
        }
    }
    out.complete = true;
    out
}

/// Creates `rel` (relative) under `dest` one component at a time, refusing to pass through
/// anything that is not a real directory (a symlink planted earlier, say).
fn make_dirs(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} exists and is not a directory", cur.display())),
            Err(_) => std::fs::create_dir(&cur)
                .map_err(|e| format!("cannot create directory {}: {e}", cur.display()))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a raw tar stream entry by entry, bypassing the `tar` crate's own path checks so
    /// that hostile names can be written.
    fn raw_entry(name: &str, kind: u8, data: &[u8], link: &str) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let size = format!("{:011o}\0", data.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        if kind == b'S' {
            h[257..265].copy_from_slice(b"ustar  \0"); // GNU, which sparse entries need
            // A sparse "bomb": it claims 1 TiB once expanded.
            h[483..495].copy_from_slice(b"20000000000\0");
        } else {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn finish(mut v: Vec<u8>) -> Vec<u8> {
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.clone());
                if e.file_type().unwrap().is_dir() {
                    out.extend(walk(&p));
                }
            }
        }
        out
    }

    #[test]
    fn ordinary_archives_unpack() {
        let mut v = raw_entry("logs/", b'5', b"", "");
        v.extend(raw_entry("logs/a.txt", b'0', b"hello", ""));
        v.extend(raw_entry("b.bin", b'0', &[1, 2, 3], ""));
        let dir = tempfile::tempdir().unwrap();
        let got = extract(&finish(v)[..], dir.path(), ArtifactLimits::default());
        assert!(got.complete && got.rejected.is_empty(), "{got:?}");
        assert_eq!(got.files.get("logs/a.txt"), Some(&5));
        assert_eq!(std::fs::read(dir.path().join("b.bin")).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn hostile_entries_are_rejected_with_reasons_and_nothing_escapes() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("artifacts");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_entry("../escape.txt", b'0', b"x", ""), ".."),
            (raw_entry("/etc/evil", b'0', b"x", ""), "absolute"),
            (raw_entry("link", b'2', b"", "/etc/passwd"), "links"),
            (raw_entry("hard", b'1', b"", "../outside"), "links"),
            (raw_entry("dev", b'3', b"", ""), "device"),
            (raw_entry("fifo", b'6', b"", ""), "device"),
        ];
        for (entry, reason) in cases {
            let got = extract(&finish(entry)[..], &dest, ArtifactLimits::default());
            assert_eq!(got.rejected.len(), 1, "{got:?}");
            assert!(
                got.rejected[0].1.contains(reason),
                "{got:?} should mention {reason}"
            );
        }
        // A sparse "bomb" claiming 1 TiB: refused, by the check or by the tar reader itself.
        let got = extract(
            &finish(raw_entry("sparse", b'S', b"", ""))[..],
            &dest,
            ArtifactLimits::default(),
        );
        let said = format!("{:?} {:?}", got.rejected, got.error);
        assert!(said.contains("sparse"), "{said}");
        // A regular entry claiming a huge size is refused by the byte limit before any read.
        let mut huge = raw_entry("huge", b'0', b"", "");
        huge[124..136].copy_from_slice(b"20000000000\0");
        let sum: u32 = {
            let mut h = huge[..512].to_vec();
            h[148..156].copy_from_slice(b"        ");
            h.iter().map(|&b| u32::from(b)).sum()
        };
        huge[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let got = extract(&huge[..], &dest, ArtifactLimits::default());
        assert!(got.rejected[0].1.contains("limit"), "{got:?}");
        assert!(files_under(&dest).is_empty(), "{:?}", files_under(&dest));
        assert_eq!(files_under(outer.path()), ["artifacts"]);
    }

    #[test]
    fn a_planted_symlink_directory_is_not_followed() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("a");
        std::fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(outer.path(), dest.join("sub")).unwrap();
        let got = extract(
            &finish(raw_entry("sub/x.txt", b'0', b"x", ""))[..],
            &dest,
            ArtifactLimits::default(),
        );
        assert_eq!(got.rejected.len(), 1, "{got:?}");
        assert!(!outer.path().join("x.txt").exists());
    }

    #[test]
    fn size_and_count_limits_hold() {
        let dest = tempfile::tempdir().unwrap();
        let mut v = Vec::new();
        for i in 0..5 {
            v.extend(raw_entry(&format!("f{i}"), b'0', &[0u8; 100], ""));
        }
        let got = extract(
            &finish(v.clone())[..],
            &dest.path().join("count"),
            ArtifactLimits {
                max_bytes: 1 << 20,
                max_files: 3,
            },
        );
        assert_eq!(got.files.len(), 3);
        assert_eq!(got.rejected.len(), 2);
        assert!(got.rejected[0].1.contains("more than 3 files"));
        let got = extract(
            &finish(v)[..],
            &dest.path().join("bytes"),
            ArtifactLimits {
                max_bytes: 250,
                max_files: 100,
            },
        );
        assert_eq!(got.files.len(), 2);
        assert!(got.rejected[0].1.contains("limit of 250 bytes"));
    }

    #[test]
    fn a_stream_cut_short_keeps_what_arrived_and_says_so() {
        let mut v = raw_entry("whole.txt", b'0', b"complete", "");
        let cut = raw_entry("cut.bin", b'0', &[7u8; 4096], "");
        v.extend_from_slice(&cut[..1024]);
        let dest = tempfile::tempdir().unwrap();
        let got = extract(&v[..], dest.path(), ArtifactLimits::default());
        assert!(!got.complete);
        assert!(got.error.is_some());
        assert_eq!(got.files.len(), 1);
        assert!(!dest.path().join("cut.bin").exists());
    }

    proptest! {
        #[test]
        fn names_never_escape(parts in proptest::collection::vec("(\\.\\.|\\.|/|[a-z]{1,3}|)", 0..6)) {
            let name = parts.join("/");
            if let Ok(rel) = safe_relative(Path::new(&name)) {
                prop_assert!(rel.is_relative());
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            }
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("d");
            if name.len() < 100 {
                let _ = extract(&finish(raw_entry(&name, b'0', b"x", ""))[..], &dest, ArtifactLimits::default());
                for p in walk(outer.path()) {
                    prop_assert!(p.starts_with(&dest), "{} escaped", p.display());
                }
            }
        }
    }
}
