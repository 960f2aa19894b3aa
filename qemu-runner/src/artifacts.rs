//! Unpacking the guest's artifact archive on the host. The guest is untrusted: the tar stream
//! it sends may try to escape the artifact directory (`..`, absolute paths, links), plant device
//! files, or exhaust memory or disk (huge or many entries, sparse "bombs"). Every such entry is
//! rejected with a reason and nothing is written outside `dest`. The guest's manifest is
//! checked against what was extracted ([`check_manifest`]): a name in it is only ever looked
//! up among the files this module wrote, so it cannot make the host open anything else.

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
    /// Entries refused, with the reason (the first [`MAX_REJECTED_SHOWN`]).
    pub rejected: Vec<(String, String)>,
    /// Entries refused beyond those in `rejected`.
    pub rejected_more: u64,
    /// Whether the archive ended properly (its end marker was read).
    pub complete: bool,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

/// Refused entries kept with their name and reason; more are only counted.
pub const MAX_REJECTED_SHOWN: usize = 100;

/// The longest artifact path accepted (Linux's `PATH_MAX`).
pub const MAX_NAME: usize = 4096;

/// Why an artifact's name is refused; the message is the reason kept with the refused entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is not UTF-8.
    #[error("the name is not UTF-8")]
    NotUtf8,
    /// The name has a newline.
    #[error("the name contains a newline (the manifest lists one name per line)")]
    Newline,
    /// The name is longer than [`MAX_NAME`].
    #[error("the path is {0} bytes long, more than {MAX_NAME}")]
    TooLong(usize),
    /// The name climbs out with `..`.
    #[error("the path contains `..`")]
    ParentDir,
    /// The name is absolute.
    #[error("the path is absolute")]
    Absolute,
    /// The name is empty (or only `.`).
    #[error("the path is empty")]
    Empty,
}

/// A path inside the artifact directory, or why the entry's name is not acceptable: only
/// plain relative names of at most [`MAX_NAME`] bytes, UTF-8, without a newline (the guest's
/// manifest is one name per line) or `..`.
pub fn safe_relative(name: &Path) -> Result<PathBuf, NameError> {
    let Some(text) = name.to_str() else {
        return Err(NameError::NotUtf8);
    };
    if text.contains('\n') {
        return Err(NameError::Newline);
    }
    if text.len() > MAX_NAME {
        return Err(NameError::TooLong(text.len()));
    }
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(NameError::ParentDir),
            Component::RootDir | Component::Prefix(_) => {
                return Err(NameError::Absolute);
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(NameError::Empty);
    }
    Ok(out)
}

impl Extracted {
    fn reject(&mut self, name: String, why: String) {
        if self.rejected.len() < MAX_REJECTED_SHOWN {
            self.rejected.push((name, why));
        } else {
            self.rejected_more += 1;
        }
    }

    /// How many entries were refused.
    pub fn rejected_count(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_more
    }
}

/// Bytes of tar stream read at most for `limits`: the contents plus generous room for headers
/// (and GNU long names) of the files and as many refused entries, so a guest sending an
/// endless or padded stream is cut off.
fn stream_budget(limits: ArtifactLimits) -> u64 {
    let entries = (limits.max_files as u64)
        .saturating_mul(2)
        .saturating_add(64);
    limits
        .max_bytes
        .saturating_add(entries.saturating_mul(2 * 512 + MAX_NAME as u64))
        .saturating_add(1 << 20)
}

/// Reads a tar stream from the guest into `dest` (created if needed), within `limits`.
pub fn extract(reader: impl Read, dest: &Path, limits: ArtifactLimits) -> Extracted {
    let mut out = Extracted::default();
    let budget = stream_budget(limits);
    let reader = reader.take(budget);
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
    let mut dirs: usize = 0;
    for entry in entries {
        if out.rejected_count() > limits.max_files as u64 || dirs > limits.max_files {
            out.error = Some(format!(
                "more than {} entries were refused or were directories; the rest of the archive was not read",
                limits.max_files
            ));
            return out;
        }
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.error = Some(format!(
                    "the archive is damaged or was cut short (or passed {budget} bytes, the most read for these limits): {e}"
                ));
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
        let shown = name.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let rel = match safe_relative(&name) {
            Ok(r) => r,
            Err(why) => {
                out.reject(shown, why.to_string());
                continue;
            }
        };
        let target = dest.join(&rel);
        if kind.is_dir() {
            dirs += 1;
            if let Err(why) = make_dirs(dest, &rel) {
                out.reject(shown, why);
            }
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            out.reject(
                shown,
                "links are not accepted (they could point outside the artifact directory)".into(),
            );
            continue;
        }
        if kind.is_gnu_sparse() {
            out.reject(
                shown,
                "sparse entries are not accepted (their expanded size can be a bomb)".into(),
            );
            continue;
        }
        if !kind.is_file() {
            out.reject(
                shown,
                "only regular files and directories are accepted, not device files, FIFOs or other special entries".into(),
            );
            continue;
        }
        if out.files.len() >= limits.max_files {
            out.reject(
                shown,
                format!("more than {} files were sent", limits.max_files),
            );
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if bytes.saturating_add(size) > limits.max_bytes {
            out.reject(
                shown,
                format!(
                    "{size} bytes would pass the limit of {} bytes for all artifacts",
                    limits.max_bytes
                ),
            );
            continue;
        }
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
            && let Err(why) = make_dirs(dest, parent)
        {
            out.reject(shown, why);
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
                out.reject(shown, format!("cannot create it: {e}"));
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

/// What the guest's manifest said about the extracted files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestCheck {
    /// Files whose MD5 differs from the manifest's.
    pub damaged: Vec<String>,
    /// Files whose size differs from the one the manifest lists.
    pub wrong_size: Vec<String>,
    /// Names the manifest lists that were not extracted (never opened).
    pub lost: Vec<String>,
    /// Extracted files the manifest does not list (arrived, but unverified).
    pub unlisted: Vec<String>,
    /// Manifest lines refused, with the reason; the first [`MAX_REJECTED_SHOWN`].
    pub rejected: Vec<(String, String)>,
    /// Lines refused beyond those in `rejected` (including lines past the line limit).
    pub rejected_more: u64,
}

/// Checks the guest's manifest (`<md5>  <name>` lines, as `md5sum` prints them, from a guest
/// that sends its archive over the serial console; `<size> <name>` lines, as `stat -c '%s %n'`
/// prints them, from one that sends it over the virtio port, where a size mismatch lands in
/// [`ManifestCheck::wrong_size`]) against the files [`extract`] wrote under `files_dir`. Why
/// sizes suffice there: ARCHITECTURE.md, "Artifacts over the virtio port". The manifest comes
/// from the guest and may name
/// anything: a name is only looked up in `extracted.files` (after [`safe_relative`]), and only
/// such a file is opened, without following a symlink, without blocking and only if it is
/// still the regular file of the size extracted. Lines past `max_lines` are refused unread.
pub fn check_manifest(
    manifest: &[u8],
    extracted: &Extracted,
    files_dir: &Path,
    max_lines: usize,
) -> ManifestCheck {
    let mut out = ManifestCheck::default();
    let reject = |out: &mut ManifestCheck, name: &[u8], why: String| {
        if out.rejected.len() < MAX_REJECTED_SHOWN {
            out.rejected
                .push((String::from_utf8_lossy(name).into_owned(), why));
        } else {
            out.rejected_more += 1;
        }
    };
    let mut listed = std::collections::BTreeSet::new();
    let lines = manifest.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    for (i, line) in lines.enumerate() {
        if i >= max_lines {
            reject(
                &mut out,
                line,
                format!("the manifest has more than {max_lines} lines"),
            );
            continue;
        }
        // md5sum escapes a name holding `\\`, a newline or a carriage return (`\\\\`, `\\n`,
        // `\\r`) and marks its line with a leading `\\`.
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (claim, name) = match line.get(..34) {
            Some(head)
                if head[32..] == *b"  "
                    && head[..32]
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) =>
            {
                (Claim::Md5(&head[..32]), &line[34..])
            }
            _ => match size_line(line).filter(|_| !escaped) {
                Some((size, name)) => (Claim::Size(size), name),
                None => {
                    reject(
                        &mut out,
                        line,
                        "not a `<md5>  <name>` or `<size> <name>` line".into(),
                    );
                    continue;
                }
            },
        };
        let unescaped;
        let name = if escaped {
            match unescape(name) {
                Some(n) => {
                    unescaped = n;
                    &unescaped[..]
                }
                None => {
                    reject(
                        &mut out,
                        name,
                        "an escaped name with an unknown escape".into(),
                    );
                    continue;
                }
            }
        } else {
            name
        };
        let Ok(text) = std::str::from_utf8(name) else {
            reject(&mut out, name, "the name is not UTF-8".into());
            continue;
        };
        let rel = match safe_relative(Path::new(text)) {
            Ok(rel) => rel,
            Err(why) => {
                reject(&mut out, name, why.to_string());
                continue;
            }
        };
        let key = rel.to_string_lossy().into_owned();
        if !listed.insert(key.clone()) {
            reject(&mut out, name, "listed twice".into());
            continue;
        }
        let Some(&size) = extracted.files.get(&key) else {
            out.lost.push(key);
            continue;
        };
        match claim {
            // The size the guest listed: nothing to open.
            Claim::Size(listed) if listed == size => {}
            Claim::Size(_) => out.wrong_size.push(key),
            Claim::Md5(sum) => match md5_of_extracted(&files_dir.join(&rel), size) {
                Ok(got) if got.as_bytes() == sum => {}
                Ok(_) => out.damaged.push(key),
                Err(why) => reject(&mut out, name, why),
            },
        }
    }
    out.unlisted = extracted
        .files
        .keys()
        .filter(|k| !listed.contains(*k))
        .cloned()
        .collect();
    out
}

/// What a manifest line claims about a file.
enum Claim<'a> {
    /// Its MD5, as hex (the serial console's manifest: `md5sum`).
    Md5(&'a [u8]),
    /// Its size (the virtio port's manifest: `stat -c '%s %n'`).
    Size(u64),
}

/// A `<size> <name>` line (the name as it is, never escaped): the size and the name.
fn size_line(line: &[u8]) -> Option<(u64, &[u8])> {
    let space = line.iter().position(|&b| b == b' ')?;
    let digits = &line[..space];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((size, &line[space + 1..]))
}

/// A name as md5sum escapes it, or `None` for an escape it does not write.
fn unescape(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// The MD5 of a file [`extract`] wrote: opened without following a symlink or blocking, and
/// read only if it is still a regular file of `size` bytes.
fn md5_of_extracted(path: &Path, size: u64) -> Result<String, String> {
    use md5::Digest as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| format!("the extracted file cannot be opened: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("the extracted file cannot be examined: {e}"))?;
    if !meta.is_file() || meta.len() != size {
        return Err("the extracted file was replaced".into());
    }
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reader = file.take(size);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("the extracted file cannot be read: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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

    #[test]
    fn awkward_names_are_kept_exactly_or_refused_with_a_reason() {
        let long = format!("d/{}/{}", "x".repeat(200), "y".repeat(200));
        let mut v = Vec::new();
        for name in ["tab\there", "sp ace", "cr\rname", "nl\nname", "sub/../x"] {
            v.extend(tar_entry(name.as_bytes(), b"1"));
        }
        v.extend(tar_entry(long.as_bytes(), b"2"));
        v.extend(tar_entry(b"bad\xffutf8", b"3"));
        let dest = tempfile::tempdir().unwrap();
        let got = extract(&finish(v)[..], dest.path(), ArtifactLimits::default());
        assert!(got.complete, "{got:?}");
        let kept: Vec<&str> = got.files.keys().map(String::as_str).collect();
        assert_eq!(kept, ["cr\rname", &long, "sp ace", "tab\there"]);
        assert_eq!(std::fs::read(dest.path().join(&long)).unwrap(), b"2");
        let why: BTreeMap<&str, &str> = got
            .rejected
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_str()))
            .collect();
        assert!(why["nl\nname"].contains("newline"), "{why:?}");
        assert!(why["sub/../x"].contains(".."), "{why:?}");
        assert!(why["bad\u{fffd}utf8"].contains("UTF-8"), "{why:?}");
    }

    /// A GNU tar entry (long names through a `././@LongLink` entry), as busybox writes them.
    fn tar_entry(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let mut out = Vec::new();
        if name.len() >= 100 {
            let mut l = tar::Header::new_gnu();
            l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            l.set_size(name.len() as u64 + 1);
            l.set_entry_type(tar::EntryType::GNULongName);
            l.set_cksum();
            out.extend_from_slice(l.as_bytes());
            let mut n = name.to_vec();
            n.push(0);
            n.resize(n.len().div_ceil(512) * 512, 0);
            out.extend(n);
            h.as_gnu_mut().unwrap().name[..99].copy_from_slice(&name[..99]);
        } else {
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        let mut d = data.to_vec();
        d.resize(d.len().div_ceil(512) * 512, 0);
        out.extend(d);
        out
    }

    #[test]
    fn refused_entries_and_endless_streams_are_bounded() {
        let limits = ArtifactLimits {
            max_bytes: 1 << 20,
            max_files: 50,
        };
        // A stream of nothing but refused entries: reading stops after max_files of them.
        let mut v = Vec::new();
        for i in 0..5000 {
            v.extend(raw_entry(&format!("/abs/{i}"), b'0', b"", ""));
        }
        let dest = tempfile::tempdir().unwrap();
        let got = extract(&finish(v)[..], dest.path(), limits);
        assert!(!got.complete);
        assert_eq!(got.rejected_count(), 51);
        assert!(got.error.unwrap().contains("not read"));
        // An endless stream (a huge refused entry that is all padding) is read only up to the
        // budget for the limits.
        let endless = std::io::repeat(0u8);
        let mut head = raw_entry("dev", b'3', b"", "");
        head[124..136].copy_from_slice(b"77777777777\0");
        let sum: u32 = {
            let mut h = head[..512].to_vec();
            h[148..156].copy_from_slice(b"        ");
            h.iter().map(|&b| u32::from(b)).sum()
        };
        head[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let counted = std::sync::atomic::AtomicU64::new(0);
        struct Counting<'a, R>(R, &'a std::sync::atomic::AtomicU64);
        impl<R: Read> Read for Counting<'_, R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(n)
            }
        }
        let got = extract(
            Counting((&head[..]).chain(endless), &counted),
            dest.path(),
            limits,
        );
        assert!(!got.complete);
        let read = counted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read <= stream_budget(limits), "{read}");
        assert!(got.error.unwrap().contains("most read"));
    }

    #[test]
    fn the_manifest_only_ever_reaches_extracted_files() {
        use md5::Digest as _;
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("files");
        let mut v = raw_entry("a.txt", b'0', b"alpha", "");
        v.extend(raw_entry("b.txt", b'0', b"beta", ""));
        v.extend(raw_entry("c.txt", b'0', b"gamma", ""));
        v.extend(raw_entry("back\\slash\rcr", b'0', b"delta", ""));
        let got = extract(&finish(v)[..], &dest, ArtifactLimits::default());
        let md5 = |d: &[u8]| -> String {
            md5::Md5::digest(d)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        // A FIFO outside and one planted inside: opening either would block.
        let fifo = outer.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        nix::unistd::mkfifo(&dest.join("planted"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // c.txt is swapped for a symlink after extraction.
        std::fs::remove_file(dest.join("c.txt")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dest.join("c.txt")).unwrap();
        let z = "0".repeat(32);
        let manifest = format!(
            "{}  ./a.txt\n{z}  b.txt\n{}  c.txt\n{z}  /etc/hostname\n{z}  /dev/zero\n\
             {z}  {}\n{z}  ../fifo\n{z}  planted\n{z}  missing.txt\ngarbage\n{}  a.txt\n\
             \\{}  back\\\\slash\\rcr\n\\{z}  /etc/x\\n{z}  f\n\\{z}  bad\\q\n",
            md5(b"alpha"),
            md5(b"gamma"),
            fifo.display(),
            md5(b"alpha"),
            md5(b"delta"),
        );
        let check = check_manifest(manifest.as_bytes(), &got, &dest, 100);
        assert_eq!(check.damaged, ["b.txt"]);
        assert_eq!(check.lost, ["planted", "missing.txt"]);
        assert!(check.unlisted.is_empty());
        let why: BTreeMap<&str, &str> = check
            .rejected
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_str()))
            .collect();
        assert!(why["c.txt"].contains("cannot be opened"), "{why:?}");
        assert!(why["/etc/hostname"].contains("absolute"), "{why:?}");
        assert!(why["/dev/zero"].contains("absolute"), "{why:?}");
        assert!(why[fifo.to_str().unwrap()].contains("absolute"), "{why:?}");
        assert!(why["../fifo"].contains(".."), "{why:?}");
        assert!(why["garbage"].contains("line"), "{why:?}");
        assert!(why["a.txt"].contains("twice"), "{why:?}");
        // An escaped newline is still refused, an unknown escape too; a real escaped name is
        // checked (it matched: not damaged, not lost, not unlisted).
        let forged = format!("/etc/x\n{z}  f");
        assert!(why[forged.as_str()].contains("newline"), "{why:?}");
        assert!(why["bad\\q"].contains("escape"), "{why:?}");
        // Lines past the limit are refused without being looked at.
        let many: String = (0..50).map(|i| format!("{z}  f{i}\n")).collect();
        let check = check_manifest(many.as_bytes(), &got, &dest, 10);
        assert_eq!(check.lost.len(), 10);
        assert_eq!(check.rejected.len(), 40);
        assert!(check.rejected[0].1.contains("more than 10 lines"));
        assert_eq!(
            check.unlisted,
            ["a.txt", "b.txt", "back\\slash\rcr", "c.txt"]
        );
    }

    #[test]
    fn a_size_manifest_checks_sizes_without_opening_anything() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("files");
        let mut v = raw_entry("a.txt", b'0', b"alpha", "");
        v.extend(raw_entry("b.txt", b'0', b"beta", ""));
        v.extend(raw_entry("back\\slash", b'0', b"x", ""));
        let got = extract(&finish(v)[..], &dest, ArtifactLimits::default());
        // Swapped for a FIFO after extraction: a size line never opens it.
        std::fs::remove_file(dest.join("b.txt")).unwrap();
        nix::unistd::mkfifo(&dest.join("b.txt"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let manifest = "5 a.txt\n3 b.txt\n1 back\\slash\n7 /etc/hostname\n9 gone.txt\n\
                        5 a.txt\n\\5 a.txt\n123456789012345678901 big\nx y\n";
        let check = check_manifest(manifest.as_bytes(), &got, &dest, 100);
        assert!(check.damaged.is_empty(), "{check:?}");
        assert_eq!(check.wrong_size, ["b.txt"]);
        assert_eq!(check.lost, ["gone.txt"]);
        let why: BTreeMap<&str, &str> = check
            .rejected
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_str()))
            .collect();
        assert!(why["/etc/hostname"].contains("absolute"), "{why:?}");
        assert!(why["a.txt"].contains("twice"), "{why:?}");
        // No escapes in a size line; no size past u64; no size at all.
        assert!(why["5 a.txt"].contains("line"), "{why:?}");
        assert!(why["123456789012345678901 big"].contains("line"), "{why:?}");
        assert!(why["x y"].contains("line"), "{why:?}");
        assert!(check.unlisted.is_empty(), "{check:?}");
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
