//! Building a Linux initramfs: a `newc` cpio archive, optionally compressed.
//!
//! The kernel unpacks the initramfs given to it (`-initrd` under QEMU) into its root `tmpfs`
//! before running `/init`. The archive format is the SVR4 "new ASCII" cpio format (`newc`, magic
//! `070701`), described in the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`:
//! every entry is a 110-byte header of ASCII hex fields, the NUL-terminated name padded to a
//! multiple of four bytes, then the data padded to a multiple of four bytes; the archive ends with
//! an entry named `TRAILER!!!`.
//!
//! [`InitramfsBuilder`] collects entries (directories, regular files from memory or from disk,
//! symlinks and device nodes) and [`InitramfsBuilder::write_to`] streams the archive through a
//! [`Compression`] into any [`Write`]. Files added with [`InitramfsBuilder::file_from_path`] are
//! read only while writing, one buffer at a time, so an archive of several hundred megabytes is
//! never held in memory.
//!
//! The output is deterministic: entries are written in insertion order (auto-created parent
//! directories just before the first entry that needs them), inode numbers are assigned
//! sequentially from 1, every mtime, uid and gid is 0, and the gzip header carries no timestamp
//! or file name. The same inputs therefore give byte-identical archives, which can be cached by
//! digest.
//!
//! ```
//! use qemu_runner::initramfs::{Compression, InitramfsBuilder};
//!
//! let mut builder = InitramfsBuilder::new();
//! builder
//!     .dir("dev", 0o755)
//!     .char_device("dev/console", 0o600, 5, 1)
//!     .file_from_bytes("init", 0o755, b"#!/bin/sh\necho hello\n".to_vec())
//!     .symlink("bin/sh", "busybox");
//! let mut archive = Vec::new();
//! let written = builder.write_to(&mut archive, Compression::Gzip)?;
//! assert_eq!(written, archive.len() as u64);
//! # Ok::<(), qemu_runner::initramfs::InitramfsError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The `newc` magic number that starts every header.
const NEWC_MAGIC: &str = "070701";
/// The name of the entry that ends a cpio archive.
const TRAILER: &str = "TRAILER!!!";
/// The longest archive path accepted; the kernel rejects names longer than `PATH_MAX` (4096,
/// counting the terminating NUL).
const MAX_PATH_LEN: usize = 4095;
/// Size of the buffer between the cpio writer and the compressor.
const BUF_SIZE: usize = 128 * 1024;

/// gzip level used by [`Compression::Gzip`] (zlib's default).
pub const GZIP_LEVEL: u32 = 6;
/// zstd level used by [`Compression::Zstd`] (zstd's default; its 8 MiB or smaller window is
/// within what the kernel's initramfs decompressor accepts).
pub const ZSTD_LEVEL: i32 = 3;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const PERMISSION_BITS: u32 = 0o7777;
const DEFAULT_DIR_MODE: u32 = 0o755;

/// How the cpio archive is compressed.
///
/// The stock Debian kernels accept gzip, xz, lz4 and zstd initramfs images; gzip is the one
/// every kernel configuration supports, hence the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain cpio archive.
    None,
    /// gzip at level [`GZIP_LEVEL`], with no timestamp or name in its header.
    #[default]
    Gzip,
    /// A single zstd frame at level [`ZSTD_LEVEL`], with a content checksum.
    Zstd,
}

impl Compression {
    /// The conventional file-name suffix for an archive compressed this way (`""`, `".gz"` or
    /// `".zst"`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

/// Why an initramfs could not be built.
///
/// Errors about the entries themselves (bad paths, duplicates, bad modes) are found when the
/// entry is added but, so that the builder's methods can be chained, are reported by
/// [`InitramfsBuilder::check`] and [`InitramfsBuilder::write_to`]; the first one wins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitramfsError {
    /// An archive path is empty, contains `..`, a NUL byte, or is too long.
    #[error("invalid initramfs path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries have the same (normalised) path.
    #[error("duplicate initramfs entry {path:?}")]
    Duplicate {
        /// The normalised path.
        path: String,
    },
    /// An entry's parent was added as something other than a directory.
    #[error("cannot add initramfs entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDirectory {
        /// The normalised path of the entry.
        path: String,
        /// The normalised path of the parent.
        parent: String,
    },
    /// A mode has bits outside the permission bits (`0o7777`); the file type is implied by the
    /// method used.
    #[error(
        "invalid mode {mode:#o} for initramfs entry {path:?}: give only permission bits (at most 0o7777)"
    )]
    InvalidMode {
        /// The normalised path.
        path: String,
        /// The mode as given.
        mode: u32,
    },
    /// A symlink target is empty or contains a NUL byte.
    #[error("invalid target {target:?} for initramfs symlink {path:?}")]
    InvalidSymlinkTarget {
        /// The normalised path of the symlink.
        path: String,
        /// The target as given.
        target: String,
    },
    /// A file is larger than the 32-bit size field of a `newc` header allows.
    #[error(
        "initramfs entry {path:?} is too large for a newc cpio archive ({size} bytes; the limit is 4 GiB - 1)"
    )]
    TooLarge {
        /// The normalised path.
        path: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A file given by [`InitramfsBuilder::file_from_path`] could not be read.
    #[error("cannot read {} for initramfs entry {path:?}: {source}", source_path.display())]
    Source {
        /// The normalised archive path.
        path: String,
        /// The file on disk.
        source_path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file given by [`InitramfsBuilder::file_from_path`] is not a regular file.
    #[error("{} (for initramfs entry {path:?}) is not a regular file", source_path.display())]
    SourceNotAFile {
        /// The normalised archive path.
        path: String,
        /// The file on disk.
        source_path: PathBuf,
    },
    /// A file given by [`InitramfsBuilder::file_from_path`] shrank while it was being copied.
    #[error("{} (for initramfs entry {path:?}) shrank while being archived: expected {expected} bytes, read {actual}", source_path.display())]
    SourceChanged {
        /// The normalised archive path.
        path: String,
        /// The file on disk.
        source_path: PathBuf,
        /// The size recorded in the header.
        expected: u64,
        /// The bytes that could be read.
        actual: u64,
    },
    /// Writing the archive (or compressing it) failed.
    #[error("writing initramfs: {0}")]
    Io(#[from] io::Error),
}

/// An entry error found when adding an entry, kept until it can be reported.
#[derive(Debug, Clone)]
enum Deferred {
    InvalidPath { path: String, reason: &'static str },
    Duplicate { path: String },
    ParentNotDirectory { path: String, parent: String },
    InvalidMode { path: String, mode: u32 },
    InvalidSymlinkTarget { path: String, target: String },
    TooLarge { path: String, size: u64 },
}

impl From<&Deferred> for InitramfsError {
    fn from(d: &Deferred) -> Self {
        match d.clone() {
            Deferred::InvalidPath { path, reason } => InitramfsError::InvalidPath { path, reason },
            Deferred::Duplicate { path } => InitramfsError::Duplicate { path },
            Deferred::ParentNotDirectory { path, parent } => {
                InitramfsError::ParentNotDirectory { path, parent }
            }
            Deferred::InvalidMode { path, mode } => InitramfsError::InvalidMode { path, mode },
            Deferred::InvalidSymlinkTarget { path, target } => {
                InitramfsError::InvalidSymlinkTarget { path, target }
            }
            Deferred::TooLarge { path, size } => InitramfsError::TooLarge { path, size },
        }
    }
}

/// Where a regular file's contents come from.
#[derive(Clone)]
enum FileData {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl fmt::Debug for FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            FileData::Path(p) => f.debug_tuple("Path").field(p).finish(),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Dir { explicit: bool },
    File(FileData),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// Permission bits only.
    mode: u32,
    kind: Kind,
}

/// Collects the entries of an initramfs and writes it as a (compressed) `newc` cpio archive.
///
/// Paths are archive paths relative to the root: a leading `/`, empty components and `.`
/// components are dropped (`/dev//./console` is `dev/console`); `..` is rejected. Parent
/// directories are created automatically with mode `0o755`, and [`dir`](Self::dir) may later set
/// the mode of such an auto-created directory. Modes are permission bits only (at most `0o7777`);
/// the file type comes from the method. Entries are owned by root (uid and gid 0).
///
/// Mistakes in entries are reported by [`check`](Self::check) and [`write_to`](Self::write_to),
/// so that calls can be chained.
#[derive(Debug, Clone, Default)]
pub struct InitramfsBuilder {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    error: Option<Deferred>,
}

impl InitramfsBuilder {
    /// An empty initramfs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and any missing parents).
    ///
    /// Declaring a directory that was only created implicitly as a parent sets its mode;
    /// declaring it twice is a [`InitramfsError::Duplicate`].
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let Some(path) = self.prepare(path, mode) else {
            return self;
        };
        if let Some(&i) = self.index.get(&path) {
            match &mut self.entries[i] {
                Entry {
                    kind: Kind::Dir { explicit },
                    mode: m,
                    ..
                } if !*explicit => {
                    *explicit = true;
                    *m = mode;
                }
                _ => self.fail(Deferred::Duplicate { path }),
            }
            return self;
        }
        self.push(path, mode, Kind::Dir { explicit: true });
        self
    }

    /// Adds a regular file with the given contents.
    pub fn file_from_bytes(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        let data = data.into();
        if let Some(path) = self.prepare_new(path, mode) {
            if u32::try_from(data.len()).is_err() {
                let size = data.len() as u64;
                self.fail(Deferred::TooLarge { path, size });
            } else {
                self.push(path, mode, Kind::File(FileData::Bytes(data)));
            }
        }
        self
    }

    /// Adds a regular file whose contents are read from `source` when the archive is written.
    ///
    /// `source` is opened and streamed by [`write_to`](Self::write_to); errors reading it are
    /// reported there. Symlinks are followed.
    pub fn file_from_path(&mut self, path: &str, mode: u32, source: &Path) -> &mut Self {
        if let Some(path) = self.prepare_new(path, mode) {
            self.push(path, mode, Kind::File(FileData::Path(source.to_path_buf())));
        }
        self
    }

    /// Adds a symbolic link pointing at `target` (stored verbatim; absolute targets resolve
    /// inside the initramfs once it is the root file system).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        if let Some(path) = self.prepare_new(path, 0o777) {
            if target.is_empty() || target.contains('\0') {
                let target = target.to_string();
                self.fail(Deferred::InvalidSymlinkTarget { path, target });
            } else {
                self.push(path, 0o777, Kind::Symlink(target.to_string()));
            }
        }
        self
    }

    /// Adds a character device node, e.g. `char_device("dev/console", 0o600, 5, 1)` so that the
    /// kernel can open the console for `/init` before `devtmpfs` is mounted.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        if let Some(path) = self.prepare_new(path, mode) {
            self.push(path, mode, Kind::CharDevice { major, minor });
        }
        self
    }

    /// Adds a block device node.
    pub fn block_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        if let Some(path) = self.prepare_new(path, mode) {
            self.push(path, mode, Kind::BlockDevice { major, minor });
        }
        self
    }

    /// The number of entries so far, counting auto-created parent directories but not the
    /// trailer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an entry with this path (normalised as by the adding methods) exists.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.index.contains_key(&p))
    }

    /// The first error in the entries added so far, if any.
    pub fn check(&self) -> Result<(), InitramfsError> {
        match &self.error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Writes the archive, compressed as asked, to `out` and returns the number of bytes
    /// written to `out`.
    ///
    /// Nothing is written if an entry was invalid ([`check`](Self::check) fails). Files added
    /// with [`file_from_path`](Self::file_from_path) are streamed; if one cannot be read, the
    /// error names it and `out` holds a partial archive. `out` is flushed at the end.
    pub fn write_to(
        &self,
        out: impl Write,
        compression: Compression,
    ) -> Result<u64, InitramfsError> {
        self.check()?;
        let mut counter = CountingWriter {
            inner: out,
            count: 0,
        };
        match compression {
            Compression::None => {
                let mut w = BufWriter::with_capacity(BUF_SIZE, &mut counter);
                self.write_cpio(&mut w)?;
                w.flush()?;
            }
            Compression::Gzip => {
                let encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(&mut counter, flate2::Compression::new(GZIP_LEVEL));
                let mut w = BufWriter::with_capacity(BUF_SIZE, encoder);
                self.write_cpio(&mut w)?;
                let encoder = w.into_inner().map_err(io::IntoInnerError::into_error)?;
                encoder.finish()?;
            }
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(&mut counter, ZSTD_LEVEL)?;
                encoder.include_checksum(true)?;
                let mut w = BufWriter::with_capacity(BUF_SIZE, encoder);
                self.write_cpio(&mut w)?;
                let encoder = w.into_inner().map_err(io::IntoInnerError::into_error)?;
                encoder.finish()?;
            }
        }
        counter.flush()?;
        Ok(counter.count)
    }

    /// Writes the uncompressed cpio stream.
    fn write_cpio(&self, w: &mut impl Write) -> Result<(), InitramfsError> {
        for (i, entry) in self.entries.iter().enumerate() {
            // Inode numbers only have to be distinct for entries with nlink > 1 (the kernel's
            // hard-link detection); sequential numbers keep the output deterministic.
            let ino = u32::try_from(i + 1).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "too many initramfs entries")
            })?;
            let mut header = Header {
                name: &entry.path,
                ino,
                mode: entry.mode,
                nlink: 1,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            };
            match &entry.kind {
                Kind::Dir { .. } => {
                    header.mode |= S_IFDIR;
                    header.nlink = 2;
                    header.write(w)?;
                }
                Kind::File(FileData::Bytes(data)) => {
                    header.mode |= S_IFREG;
                    header.filesize = data.len() as u32; // checked when added
                    header.write(w)?;
                    w.write_all(data)?;
                    write_padding(w, data.len() as u64)?;
                }
                Kind::File(FileData::Path(source)) => {
                    header.mode |= S_IFREG;
                    write_file_from_path(w, header, source)?;
                }
                Kind::Symlink(target) => {
                    header.mode |= S_IFLNK;
                    header.filesize =
                        u32::try_from(target.len()).map_err(|_| InitramfsError::TooLarge {
                            path: entry.path.clone(),
                            size: target.len() as u64,
                        })?;
                    header.write(w)?;
                    w.write_all(target.as_bytes())?;
                    write_padding(w, target.len() as u64)?;
                }
                Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                    header.mode |= if matches!(entry.kind, Kind::CharDevice { .. }) {
                        S_IFCHR
                    } else {
                        S_IFBLK
                    };
                    header.rdev_major = *major;
                    header.rdev_minor = *minor;
                    header.write(w)?;
                }
            }
        }
        Header {
            name: TRAILER,
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        }
        .write(w)?;
        Ok(())
    }

    /// Records the first entry error.
    fn fail(&mut self, error: Deferred) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// Normalises `path`, checks `mode` and creates missing parents. `None` if an error was
    /// recorded.
    fn prepare(&mut self, raw: &str, mode: u32) -> Option<String> {
        let path = match normalize(raw) {
            Ok(p) => p,
            Err(reason) => {
                let path = raw.to_string();
                self.fail(Deferred::InvalidPath { path, reason });
                return None;
            }
        };
        if mode & !PERMISSION_BITS != 0 {
            self.fail(Deferred::InvalidMode { path, mode });
            return None;
        }
        // Create the missing parents, outermost first.
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            match self.index.get(parent) {
                Some(&i) if matches!(self.entries[i].kind, Kind::Dir { .. }) => {}
                Some(_) => {
                    let parent = parent.to_string();
                    self.fail(Deferred::ParentNotDirectory { path, parent });
                    return None;
                }
                None => {
                    let parent = parent.to_string();
                    self.push(parent, DEFAULT_DIR_MODE, Kind::Dir { explicit: false });
                }
            }
            end += 1;
        }
        Some(path)
    }

    /// Like [`prepare`](Self::prepare), and also rejects an existing entry with this path.
    fn prepare_new(&mut self, raw: &str, mode: u32) -> Option<String> {
        let path = self.prepare(raw, mode)?;
        if self.index.contains_key(&path) {
            self.fail(Deferred::Duplicate { path });
            return None;
        }
        Some(path)
    }

    fn push(&mut self, path: String, mode: u32, kind: Kind) {
        self.index.insert(path.clone(), self.entries.len());
        self.entries.push(Entry { path, mode, kind });
    }
}

/// Normalises an archive path: drops a leading `/`, empty and `.` components; rejects `..`,
/// NUL bytes, the root itself and over-long paths.
fn normalize(raw: &str) -> Result<String, &'static str> {
    if raw.contains('\0') {
        return Err("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("`..` components are not allowed"),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("names the root directory (or is empty)");
    }
    if parts == [TRAILER] {
        return Err("is the cpio trailer name");
    }
    let path = parts.join("/");
    if path.len() > MAX_PATH_LEN {
        return Err("is longer than PATH_MAX");
    }
    Ok(path)
}

/// The variable fields of a `newc` header; the others are always 0 (uid, gid, mtime, device of
/// the file system, check) or derived (name size).
#[derive(Debug, Clone, Copy)]
struct Header<'a> {
    name: &'a str,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl Header<'_> {
    /// Writes the header, the NUL-terminated name and the padding after it.
    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let namesize = self.name.len() + 1;
        write!(
            w,
            "{NEWC_MAGIC}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            0, // mtime
            self.filesize,
            0, // devmajor
            0, // devminor
            self.rdev_major,
            self.rdev_minor,
            namesize,
            0, // check
        )?;
        w.write_all(self.name.as_bytes())?;
        w.write_all(&[0])?;
        write_padding(w, (110 + namesize) as u64)
    }
}

/// Pads a stream that is `len` bytes past a 4-byte boundary back to one.
fn write_padding(w: &mut impl Write, len: u64) -> io::Result<()> {
    let pad = (4 - (len % 4) as usize) % 4;
    w.write_all(&[0; 3][..pad])
}

/// Writes one regular file whose contents come from disk.
fn write_file_from_path(
    w: &mut impl Write,
    mut header: Header<'_>,
    source: &Path,
) -> Result<(), InitramfsError> {
    let path = header.name;
    let mk_source = |e: io::Error| InitramfsError::Source {
        path: path.to_string(),
        source_path: source.to_path_buf(),
        source: e,
    };
    let file = File::open(source).map_err(mk_source)?;
    let meta = file.metadata().map_err(mk_source)?;
    if !meta.is_file() {
        return Err(InitramfsError::SourceNotAFile {
            path: path.to_string(),
            source_path: source.to_path_buf(),
        });
    }
    let size = meta.len();
    header.filesize = u32::try_from(size).map_err(|_| InitramfsError::TooLarge {
        path: path.to_string(),
        size,
    })?;
    header.write(w)?;
    let mut reader = file.take(size);
    let copied = copy_from_source(&mut reader, w).map_err(|e| match e {
        CopyError::Read(e) => mk_source(e),
        CopyError::Write(e) => InitramfsError::Io(e),
    })?;
    if copied != size {
        return Err(InitramfsError::SourceChanged {
            path: path.to_string(),
            source_path: source.to_path_buf(),
            expected: size,
            actual: copied,
        });
    }
    write_padding(w, size)?;
    Ok(())
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy`, telling read errors (the source file's fault) from write errors (the output's).
fn copy_from_source(reader: &mut impl Read, w: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0; 64 * 1024];
    let mut copied = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
}

/// Counts the bytes that reach the output.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One parsed `newc` entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Parsed {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A strict `newc` reader: checks magic, padding and the trailer, and that nothing follows.
    fn parse(archive: &[u8]) -> Vec<Parsed> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let mut pos: usize = 0;
        let mut out = Vec::new();
        loop {
            assert!(pos.is_multiple_of(4));
            let h = &archive[pos..pos + 110];
            assert_eq!(&h[..6], b"070701", "bad magic at {pos}");
            let field = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
            let namesize = field(11) as usize;
            assert_eq!(field(12), 0, "check field");
            assert_eq!((field(7), field(8)), (0, 0), "devmajor/devminor");
            let name_start = pos + 110;
            let name = &archive[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name must be NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let mut data_start = name_start + namesize;
            while !data_start.is_multiple_of(4) {
                assert_eq!(archive[data_start], 0, "name padding");
                data_start += 1;
            }
            let filesize = field(6) as usize;
            let data = archive[data_start..data_start + filesize].to_vec();
            pos = data_start + filesize;
            while !pos.is_multiple_of(4) {
                assert_eq!(archive[pos], 0, "data padding");
                pos += 1;
            }
            if name == TRAILER {
                assert_eq!(pos, archive.len(), "bytes after the trailer");
                return out;
            }
            out.push(Parsed {
                name,
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data,
            });
        }
    }

    fn write(builder: &InitramfsBuilder, compression: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        let n = builder.write_to(&mut out, compression).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn sample() -> InitramfsBuilder {
        let mut b = InitramfsBuilder::new();
        b.dir("dev", 0o755)
            .char_device("/dev/console", 0o600, 5, 1)
            .block_device("dev/vda", 0o660, 254, 0)
            .file_from_bytes("init", 0o755, b"#!/bin/sh\nexec /bin/agent\n".to_vec())
            .file_from_bytes("etc/empty", 0o644, Vec::new())
            .file_from_bytes("lib/modules/x/kernel/a.ko", 0o644, vec![7u8; 5])
            .symlink("bin/sh", "busybox")
            .dir("lib", 0o700);
        b
    }

    #[test]
    fn writes_all_entry_kinds() {
        let entries = parse(&write(&sample(), Compression::None));
        type Summary<'a> = (&'a str, u32, u32, (u32, u32), &'a [u8]);
        let summary: Vec<Summary<'_>> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.mode, e.nlink, e.rdev, e.data.as_slice()))
            .collect();
        let empty: &[u8] = &[];
        assert_eq!(
            summary,
            [
                ("dev", 0o040755, 2, (0, 0), empty),
                ("dev/console", 0o020600, 1, (5, 1), empty),
                ("dev/vda", 0o060660, 1, (254, 0), empty),
                (
                    "init",
                    0o100755,
                    1,
                    (0, 0),
                    &b"#!/bin/sh\nexec /bin/agent\n"[..]
                ),
                ("etc", 0o040755, 2, (0, 0), empty),
                ("etc/empty", 0o100644, 1, (0, 0), empty),
                ("lib", 0o040700, 2, (0, 0), empty),
                ("lib/modules", 0o040755, 2, (0, 0), empty),
                ("lib/modules/x", 0o040755, 2, (0, 0), empty),
                ("lib/modules/x/kernel", 0o040755, 2, (0, 0), empty),
                (
                    "lib/modules/x/kernel/a.ko",
                    0o100644,
                    1,
                    (0, 0),
                    &[7u8; 5][..]
                ),
                ("bin", 0o040755, 2, (0, 0), empty),
                ("bin/sh", 0o120777, 1, (0, 0), &b"busybox"[..]),
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino, i as u32 + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
        }
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let out = write(&InitramfsBuilder::new(), Compression::None);
        assert!(parse(&out).is_empty());
        assert_eq!(out.len(), 124); // 110 + 11 bytes of name, padded to 4
        assert!(out.starts_with(b"070701"));
    }

    #[test]
    fn compressed_outputs_decompress_to_the_plain_archive() {
        let b = sample();
        let plain = write(&b, Compression::None);

        let gz = write(&b, Compression::Gzip);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);

        let zst = write(&b, Compression::Zstd);
        assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(zstd::stream::decode_all(zst.as_slice()).unwrap(), plain);
        assert_eq!(Compression::default(), Compression::Gzip);
    }

    #[test]
    fn output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("payload");
        std::fs::write(&source, vec![42u8; 100_003]).unwrap();
        let build = || {
            let mut b = sample();
            b.file_from_path("usr/bin/payload", 0o755, &source);
            b
        };
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(write(&build(), compression), write(&build(), compression));
        }
        let entries = parse(&write(&build(), Compression::None));
        let payload = entries
            .iter()
            .find(|e| e.name == "usr/bin/payload")
            .unwrap();
        assert_eq!(payload.data, vec![42u8; 100_003]);
        assert_eq!(payload.mode, 0o100755);
    }

    #[test]
    fn paths_are_normalised() {
        let mut b = InitramfsBuilder::new();
        b.file_from_bytes("//a/./b//c", 0o644, b"x".to_vec());
        assert!(b.contains("a/b/c"));
        assert!(b.contains("/a/b"));
        let names: Vec<String> = parse(&write(&b, Compression::None))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "a/b", "a/b/c"]);
    }

    fn first_error(build: impl FnOnce(&mut InitramfsBuilder)) -> InitramfsError {
        let mut b = InitramfsBuilder::new();
        build(&mut b);
        let mut out = Vec::new();
        let err = b.write_to(&mut out, Compression::Gzip).unwrap_err();
        assert!(out.is_empty(), "nothing may be written for invalid entries");
        assert_eq!(b.check().unwrap_err().to_string(), err.to_string());
        err
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in ["", "/", "./.", "a/../b", "..", "a\0b", TRAILER] {
            let err = first_error(|b| {
                b.file_from_bytes(bad, 0o644, Vec::new());
            });
            assert!(
                matches!(&err, InitramfsError::InvalidPath { path, .. } if path == bad),
                "{bad:?}: {err}"
            );
        }
        let long = "a/".repeat(2048) + "b";
        let err = first_error(|b| {
            b.dir(&long, 0o755);
        });
        assert!(err.to_string().contains("PATH_MAX"), "{err}");
        let err = first_error(|b| {
            b.symlink("x/../y", "z");
        });
        assert!(err.to_string().contains("\"x/../y\""), "{err}");
    }

    #[test]
    fn rejects_duplicates() {
        let err = first_error(|b| {
            b.file_from_bytes("etc/passwd", 0o644, Vec::new())
                .symlink("/etc/passwd", "x");
        });
        assert!(matches!(&err, InitramfsError::Duplicate { path } if path == "etc/passwd"));
        assert_eq!(err.to_string(), "duplicate initramfs entry \"etc/passwd\"");
        let err = first_error(|b| {
            b.dir("etc", 0o755).dir("etc/", 0o700);
        });
        assert!(matches!(&err, InitramfsError::Duplicate { path } if path == "etc"));
        let err = first_error(|b| {
            b.file_from_bytes("etc/x", 0o644, Vec::new())
                .dir("etc/x", 0o755);
        });
        assert!(matches!(&err, InitramfsError::Duplicate { path } if path == "etc/x"));
        // The first error is kept.
        let err = first_error(|b| {
            b.dir("a", 0o755).dir("a", 0o755).dir("b/../c", 0o755);
        });
        assert!(matches!(err, InitramfsError::Duplicate { .. }));
    }

    #[test]
    fn rejects_other_mistakes() {
        let err = first_error(|b| {
            b.file_from_bytes("bin", 0o755, Vec::new())
                .symlink("bin/sh", "busybox");
        });
        assert!(
            matches!(&err, InitramfsError::ParentNotDirectory { path, parent } if path == "bin/sh" && parent == "bin"),
            "{err}"
        );
        let err = first_error(|b| {
            b.file_from_bytes("init", 0o100755, Vec::new());
        });
        assert!(
            matches!(err, InitramfsError::InvalidMode { mode: 0o100755, .. }),
            "{err}"
        );
        let err = first_error(|b| {
            b.symlink("bin/sh", "");
        });
        assert!(
            matches!(err, InitramfsError::InvalidSymlinkTarget { .. }),
            "{err}"
        );
    }

    #[test]
    fn reports_unreadable_sources() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut b = InitramfsBuilder::new();
        b.file_from_path("bin/agent", 0o755, &missing);
        b.check().unwrap();
        let err = b.write_to(io::sink(), Compression::None).unwrap_err();
        assert!(matches!(&err, InitramfsError::Source { path, .. } if path == "bin/agent"));
        let message = err.to_string();
        assert!(message.contains("bin/agent") && message.contains(&*missing.to_string_lossy()));

        let mut b = InitramfsBuilder::new();
        b.file_from_path("bin/agent", 0o755, dir.path());
        let err = b.write_to(io::sink(), Compression::None).unwrap_err();
        assert!(
            matches!(err, InitramfsError::SourceNotAFile { .. }),
            "{err}"
        );
    }

    #[test]
    fn explicit_dir_overrides_auto_created_parent() {
        let mut b = InitramfsBuilder::new();
        b.symlink("root/.profile", "/etc/profile")
            .dir("root", 0o700);
        assert_eq!(b.len(), 2);
        let entries = parse(&write(&b, Compression::None));
        assert_eq!(entries[0].name, "root");
        assert_eq!(entries[0].mode, 0o040700);
    }

    proptest! {
        #[test]
        fn arbitrary_files_round_trip(
            files in proptest::collection::btree_map("[a-z]{1,9}(/[a-z0-9._-]{1,7}){0,2}/?", proptest::collection::vec(any::<u8>(), 0..70), 0..8)
        ) {
            let mut b = InitramfsBuilder::new();
            let mut expected = Vec::new();
            for (path, data) in &files {
                b.file_from_bytes(path, 0o644, data.clone());
                expected.push((normalize(path).unwrap_or_default(), data.clone()));
            }
            // Generated names can collide with auto-created directories: only check valid sets.
            prop_assume!(b.check().is_ok());
            let entries = parse(&write(&b, Compression::None));
            let got: Vec<(String, Vec<u8>)> = entries
                .into_iter()
                .filter(|e| e.mode & S_IFREG != 0 && e.mode & S_IFDIR == 0)
                .map(|e| (e.name, e.data))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
