//! The content store: blobs addressed by BLAKE3 in `content-v1/blake3/ab/cd/<hex>`.
//!
//! A blob file is a 16-byte header (`ASB1`, codec, three reserved bytes, the raw length as a
//! little-endian u64) followed by the content, raw or as one zstd frame. The digest is of the raw
//! content, so the same content always has the same address whatever its encoding.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::Digest;
use crate::error::{CorruptBlob, Error, Result};
use crate::frames::FrameWriter;
use crate::tree::{TreeHasher, VerifiedRange};

const MAGIC: &[u8; 4] = b"ASB1";
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// Bytes looked at to decide whether content compresses.
const SAMPLE: usize = 256 * 1024;

/// Streaming chunk size: memory per put or get is a few of these, whatever the blob size.
const CHUNK: usize = 1024 * 1024;
const ZSTD_LEVEL: i32 = 3;

/// What [`Blobs::verify_file_tree`] found of a blob's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeCheck {
    /// Content under 256 KiB: read whole, no tree kept.
    NotNeeded,
    /// A tree that matches the digest.
    Present,
    /// None, or one that does not match (a blob written by an earlier version, a damaged
    /// tree file).
    Missing,
    /// Was missing, made now.
    Written,
}

/// How hard the store works to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// fsync every blob and its directory before it becomes visible, and every catalog commit
    /// (SQLite `synchronous=FULL`). Survives power loss.
    #[default]
    Fsync,
    /// No fsync: survives the process being killed but not power loss. For scratch stores and
    /// benchmarks.
    Relaxed,
}

/// The directory layout and blob I/O, without the catalog.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    pub(crate) content: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) quarantine: PathBuf,
    /// Trees of large blobs (see [`crate::tree`]).
    pub(crate) trees: PathBuf,
    pub(crate) durability: Durability,
}

/// A blob that was written (or found already present) but whose record is not yet committed.
///
/// While it lives, its own copy of the content stays in the store's temp directory, so a garbage
/// collection running at the same moment cannot lose it: after the record commits, the store
/// re-links the blob from this copy if a collector removed it in between. Dropping it removes the
/// copy.
#[derive(Debug)]
#[must_use = "a pending blob protects content only until it is recorded or dropped"]
pub struct PendingBlob {
    pub(crate) digest: Digest,
    pub(crate) raw_size: u64,
    pub(crate) stored_size: u64,
    pub(crate) compressed: bool,
    pub(crate) dedup: bool,
    pub(crate) temp: PathBuf,
    pub(crate) path: PathBuf,
}

impl PendingBlob {
    /// The content digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Content size in bytes.
    pub fn raw_size(&self) -> u64 {
        self.raw_size
    }
    /// Size on disk.
    pub fn stored_size(&self) -> u64 {
        self.stored_size
    }
    /// Whether the content is stored zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.compressed
    }
    /// Whether the blob was already in the store (a dedup hit).
    pub fn dedup(&self) -> bool {
        self.dedup
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temp);
    }
}

/// A temp file written but not yet committed.
#[derive(Debug)]
pub(crate) struct Written {
    digest: Digest,
    raw_size: u64,
    stored_size: u64,
    compressed: bool,
    guard: TempGuard,
}

impl Written {
    /// What the catalog records of it.
    pub(crate) fn info(&self) -> crate::catalog::BlobInfo<'static> {
        crate::catalog::BlobInfo {
            digest: self.digest,
            raw_size: self.raw_size,
            stored_size: self.stored_size,
            compressed: self.compressed,
            inline: None,
        }
    }
}

impl Written {
    /// fsyncs the temp file.
    pub(crate) fn sync(&self) -> Result<()> {
        let temp = self.guard.0.as_ref().expect("armed guard");
        File::open(temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync", temp, e))
    }
}

/// A small blob encoded in memory: the catalog keeps it (see `StoreOptions::inline_max`).
#[derive(Debug)]
pub(crate) struct InlineBlob {
    pub(crate) digest: Digest,
    pub(crate) raw_size: u64,
    pub(crate) compressed: bool,
    /// The whole encoded blob, header included, as a blob file would hold it.
    pub(crate) bytes: Vec<u8>,
}

impl InlineBlob {
    /// What the catalog records of it, the bytes included.
    pub(crate) fn info(&self) -> crate::catalog::BlobInfo<'_> {
        crate::catalog::BlobInfo {
            digest: self.digest,
            raw_size: self.raw_size,
            stored_size: self.bytes.len() as u64,
            compressed: self.compressed,
            inline: Some(&self.bytes),
        }
    }
}

/// The start of an input.
#[derive(Debug)]
pub(crate) enum Head {
    /// All of it (shorter than 256 KiB).
    Whole(Vec<u8>),
    /// Its first 256 KiB; more may follow.
    Start(Vec<u8>),
}

/// Encoded content: in memory, or in a temp file.
#[derive(Debug)]
pub(crate) enum Encoded {
    Inline(InlineBlob),
    Temp(Written),
}

impl Encoded {
    pub(crate) fn info(&self) -> crate::catalog::BlobInfo<'_> {
        match self {
            Encoded::Inline(b) => b.info(),
            Encoded::Temp(w) => w.info(),
        }
    }
}

/// Removes a temp file unless disarmed.
#[derive(Debug)]
struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Hashes and writes `sample`, then the rest of `reader` chunk by chunk; returns the byte count.
fn hash_copy(
    sample: &[u8],
    reader: &mut dyn Read,
    buf: &mut [u8],
    hasher: &mut TreeHasher,
    out: &mut impl Write,
    temp: &Path,
) -> Result<u64> {
    let werr = |e: io::Error| Error::io("write", temp, e);
    hasher.update(sample);
    out.write_all(sample).map_err(werr)?;
    let mut total = sample.len() as u64;
    loop {
        let k = read_full(reader, buf).map_err(|e| Error::io("read input for", temp, e))?;
        if k == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(werr)?;
        total += k as u64;
    }
}

/// The frame table of a compressed blob file holding `content_len` bytes of content, with the
/// file's size, when its stream is the frames a `FrameWriter` writes (a blob written by this
/// version elsewhere and fetched, or content within one frame); `None` for raw content or any
/// other stream, whose ranges are then decoded from the start.
fn frames_of_file(path: &Path, content_len: u64) -> Option<(Vec<u64>, u64)> {
    let mut file = File::open(path).ok()?;
    let stored_len = file.metadata().ok()?.len();
    let mut h = [0u8; 16];
    file.read_exact(&mut h).ok()?;
    if parse_header(&h)?.0 != CODEC_ZSTD {
        return None;
    }
    let mut stream = io::BufReader::with_capacity(CHUNK, file);
    crate::frames::scan(&mut stream, stored_len - 16, content_len).map(|o| (o, stored_len))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

thread_local! {
    /// Compression contexts reused across puts on a thread (allocating one costs more than
    /// compressing a small file).
    static CCTX: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn compress_small(data: &[u8], level: i32) -> Option<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if !c.iter().any(|(l, _)| *l == level) {
            c.push((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, cctx) = c.iter_mut().find(|(l, _)| *l == level)?;
        cctx.compress(data).ok()
    })
}

/// Blobs up to this size on disk are read in one go.
const SMALL_READ: u64 = 1 << 20;

thread_local! {
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decompress_small(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set above").decompress(data, capacity)
    })
}

/// An `InvalidData` error carrying a [`CorruptBlob`] (what verified readers return).
pub(crate) fn corrupt_io(digest: Digest, path: &Path, detail: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        CorruptBlob {
            digest,
            path: path.to_owned(),
            detail,
        },
    )
}

/// A decoder's error: an I/O error stays as it is, anything else means corrupt content.
pub(crate) fn decode_error(e: io::Error, digest: Digest, path: &Path) -> io::Error {
    if e.kind() == io::ErrorKind::Interrupted || e.raw_os_error().is_some() {
        e
    } else {
        corrupt_io(digest, path, format!("undecodable content: {e}"))
    }
}

/// The codec and content length of a blob starting with `h`, if it has a valid header.
fn parse_header(h: &[u8]) -> Option<(u8, u64)> {
    if h.len() < 16 || &h[..4] != MAGIC {
        return None;
    }
    Some((h[4], u64::from_le_bytes(h[8..16].try_into().ok()?)))
}

fn header(codec: u8, raw_len: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4] = codec;
    h[8..].copy_from_slice(&raw_len.to_le_bytes());
    h
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Whether `pid` names a live process (on this host).
pub(crate) fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true,
    }
}

impl Blobs {
    pub(crate) fn new(root: &Path, durability: Durability) -> Self {
        Blobs {
            content: root.join("content-v1").join("blake3"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
            trees: root.join("trees-v1").join("blake3"),
            durability,
        }
    }

    pub(crate) fn create_dirs(&self) -> Result<()> {
        for d in [&self.content, &self.tmp, &self.quarantine] {
            fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        Ok(())
    }

    /// `content-v1/blake3/ab/cd/<hex>`.
    pub(crate) fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.content.join(&hex[..2]).join(&hex[2..4]).join(hex)
    }

    fn new_temp(&self) -> Result<(File, PathBuf)> {
        let path = self.tmp.join(format!(
            "{}.{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let f = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create temp file", &path, e))?;
        Ok((f, path))
    }

    /// Streams `reader` into the store. Memory use is bounded (a few MiB) whatever the size.
    pub(crate) fn put(&self, reader: &mut dyn Read) -> Result<PendingBlob> {
        let sync = self.durability == Durability::Fsync;
        let w = self.write_temp(reader, sync)?;
        self.commit_written(w, sync)
    }

    /// Makes a written temp file visible (see [`commit`](Self::commit)).
    pub(crate) fn commit_written(&self, mut w: Written, sync_dirs: bool) -> Result<PendingBlob> {
        let temp = w.guard.0.take().expect("armed guard");
        let path = self.path_of(&w.digest);
        let dedup = match self.commit(&temp, &path, &w.digest, w.stored_size, sync_dirs) {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        Ok(PendingBlob {
            digest: w.digest,
            raw_size: w.raw_size,
            stored_size: w.stored_size,
            compressed: w.compressed,
            dedup,
            temp,
            path,
        })
    }

    /// Writes `reader` to a new temp file (fsynced if `sync`) without making it visible.
    pub(crate) fn write_temp(&self, reader: &mut dyn Read, sync: bool) -> Result<Written> {
        let encoded = match self.read_head(reader)? {
            // With no room inline, whole content goes to a temp file too.
            Head::Whole(content) => self.encode_whole(&content, sync, 0)?,
            Head::Start(sample) => self.encode_stream(sample, reader, sync)?,
        };
        match encoded {
            Encoded::Temp(w) => Ok(w),
            Encoded::Inline(_) => unreachable!("nothing is inline with a zero limit"),
        }
    }

    /// Reads up to 256 KiB of `reader`: the whole content if it is shorter.
    pub(crate) fn read_head(&self, reader: &mut dyn Read) -> Result<Head> {
        // Room up front: `read_to_end` into an empty vector starts with tiny probing reads.
        let mut sample = Vec::with_capacity(64 * 1024);
        (&mut *reader)
            .take(SAMPLE as u64)
            .read_to_end(&mut sample)
            .map_err(|e| Error::io("read input for", &self.tmp, e))?;
        Ok(if sample.len() < SAMPLE {
            Head::Whole(sample)
        } else {
            Head::Start(sample)
        })
    }

    /// Encodes content held whole in memory (shorter than 256 KiB): compressed once, whichever
    /// is smaller kept, in memory up to `inline_max` bytes, else written to a temp file.
    pub(crate) fn encode_whole(
        &self,
        content: &[u8],
        sync: bool,
        inline_max: usize,
    ) -> Result<Encoded> {
        let n = content.len();
        let raw_size = n as u64;
        let z = if n >= 64 {
            compress_small(content, ZSTD_LEVEL)
        } else {
            None
        };
        let (buf, compressed) = match z {
            Some(z) if (z.len() as u64) < raw_size - raw_size / 20 => {
                let mut buf = Vec::with_capacity(16 + z.len());
                buf.extend_from_slice(&header(CODEC_ZSTD, raw_size));
                buf.extend_from_slice(&z);
                (buf, true)
            }
            _ => {
                let mut buf = Vec::with_capacity(16 + n);
                buf.extend_from_slice(&header(CODEC_RAW, raw_size));
                buf.extend_from_slice(content);
                (buf, false)
            }
        };
        let digest = Digest::from(blake3::hash(content));
        if buf.len() <= inline_max {
            return Ok(Encoded::Inline(InlineBlob {
                digest,
                raw_size,
                compressed,
                bytes: buf,
            }));
        }
        let (mut file, temp) = self.new_temp()?;
        let guard = TempGuard(Some(temp.clone()));
        file.write_all(&buf)
            .map_err(|e| Error::io("write", &temp, e))?;
        if sync {
            file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
        }
        Ok(Encoded::Temp(Written {
            digest,
            raw_size,
            stored_size: buf.len() as u64,
            compressed,
            guard,
        }))
    }

    /// Streams content of 256 KiB or more (`sample`, then the rest of `reader`) into a new temp
    /// file (fsynced if `sync`): memory stays bounded whatever the size.
    pub(crate) fn encode_stream(
        &self,
        sample: Vec<u8>,
        reader: &mut dyn Read,
        sync: bool,
    ) -> Result<Encoded> {
        let mut hasher = TreeHasher::new();
        let n = sample.len();
        let (file, temp) = self.new_temp()?;
        let guard = TempGuard(Some(temp.clone()));
        let werr = |e: io::Error| Error::io("write", &temp, e);
        // Large content: decide from a fast compression of the first 256 KiB.
        let mut out = BufWriter::with_capacity(CHUNK, file);
        let probe = compress_small(&sample, 1).map(|z| z.len()).unwrap_or(n);
        let compressed = probe < n - n / 10;
        out.write_all(&header(if compressed { CODEC_ZSTD } else { CODEC_RAW }, 0))
            .map_err(werr)?;
        let mut buf = vec![0u8; CHUNK];
        let total;
        let mut frames = None;
        if compressed {
            // Independent frames of 8 MiB of content, compressed on a worker thread while
            // this one reads and hashes; where each starts goes into the tree file.
            let mut enc = FrameWriter::new(out, ZSTD_LEVEL).map_err(werr)?;
            total = hash_copy(&sample, reader, &mut buf, &mut hasher, &mut enc, &temp)?;
            let (inner, offsets) = enc.finish().map_err(werr)?;
            out = inner;
            frames = Some(offsets);
        } else {
            total = hash_copy(&sample, reader, &mut buf, &mut hasher, &mut out, &temp)?;
        }
        let raw_size = total;
        out.seek(SeekFrom::Start(8)).map_err(werr)?;
        out.write_all(&raw_size.to_le_bytes()).map_err(werr)?;
        let mut file = out.into_inner().map_err(|e| werr(e.into_error()))?;
        let stored_size = file.seek(SeekFrom::End(0)).map_err(werr)?;
        if sync {
            file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
        }
        drop(file);
        let (digest, cvs) = hasher.finish();
        crate::tree::store(
            &self.trees,
            &self.tmp,
            &digest,
            raw_size,
            &cvs,
            frames.as_deref().map(|offsets| crate::tree::Frames {
                offsets,
                stored_len: stored_size,
            }),
        );
        Ok(Encoded::Temp(Written {
            digest,
            raw_size,
            stored_size,
            compressed,
            guard,
        }))
    }

    /// Makes `temp`'s content visible at `path` without ever clobbering a good blob. Returns
    /// whether the blob was already there.
    pub(crate) fn commit(
        &self,
        temp: &Path,
        path: &Path,
        digest: &Digest,
        stored_size: u64,
        sync_dirs: bool,
    ) -> Result<bool> {
        let shard = path.parent().expect("blob paths have a parent");
        let mut linked = fs::hard_link(temp, path);
        if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) && !shard.exists() {
            // The first blob of its shard (linking first saves a lookup on every other put).
            fs::create_dir_all(shard).map_err(|e| Error::io("create directory", shard, e))?;
            if sync_dirs {
                fsync_dir(shard.parent().expect("shard parent"))?;
                fsync_dir(&self.content)?;
            }
            linked = fs::hard_link(temp, path);
        }
        match linked {
            Ok(()) => {
                if sync_dirs {
                    fsync_dir(shard)?;
                }
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Dedup hit. A same-size existing blob is trusted (reads verify anyway); anything
                // else is checked and replaced atomically if it is damaged.
                let same = fs::metadata(path)
                    .map(|m| m.len() == stored_size)
                    .unwrap_or(false);
                if !same && self.verify_file(path, digest).is_err() {
                    let repl = self.tmp.join(format!(
                        "{}.{}.repl",
                        std::process::id(),
                        uuid::Uuid::new_v4().simple()
                    ));
                    fs::hard_link(temp, &repl).map_err(|e| Error::io("link", &repl, e))?;
                    fs::rename(&repl, path)
                        .map_err(|e| Error::io("replace corrupt blob", path, e))?;
                    if sync_dirs {
                        fsync_dir(shard)?;
                    }
                }
                Ok(true)
            }
            Err(e) => Err(Error::io("link blob", path, e)),
        }
    }

    /// Moves a written temp file into place as its blob with `renameat2(RENAME_NOREPLACE)`:
    /// one directory operation instead of a link and, later, an unlink. Returns the blob's path
    /// and whether it was already there (a dedup hit: the temp file is removed; a damaged
    /// existing blob is replaced).
    ///
    /// Nothing protects the moved blob from a collection but the caller: call this only with the
    /// catalog's write lock held until the records that need the blob commit.
    pub(crate) fn rename_into_place(
        &self,
        mut w: Written,
        sync_dirs: bool,
    ) -> Result<(PathBuf, bool)> {
        let temp = w.guard.0.clone().expect("armed guard");
        let path = self.path_of(&w.digest);
        let shard = path.parent().expect("blob paths have a parent");
        let no_replace = |from: &Path, to: &Path| {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                from,
                nix::fcntl::AT_FDCWD,
                to,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(io::Error::from)
        };
        let mut moved = no_replace(&temp, &path);
        if matches!(&moved, Err(e) if e.kind() == io::ErrorKind::NotFound) && !shard.exists() {
            fs::create_dir_all(shard).map_err(|e| Error::io("create directory", shard, e))?;
            if sync_dirs {
                fsync_dir(shard.parent().expect("shard parent"))?;
                fsync_dir(&self.content)?;
            }
            moved = no_replace(&temp, &path);
        }
        match moved {
            Ok(()) => {
                w.guard.0 = None;
                if sync_dirs {
                    fsync_dir(shard)?;
                }
                Ok((path, false))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let same = fs::metadata(&path)
                    .map(|m| m.len() == w.stored_size)
                    .unwrap_or(false);
                if !same && self.verify_file(&path, &w.digest).is_err() {
                    fs::rename(&temp, &path)
                        .map_err(|e| Error::io("replace corrupt blob", &path, e))?;
                    w.guard.0 = None;
                    if sync_dirs {
                        fsync_dir(shard)?;
                    }
                }
                Ok((path, true))
            }
            // A file system without RENAME_NOREPLACE: link, which never clobbers either.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EINVAL | nix::libc::ENOSYS)
                ) =>
            {
                let dedup = self.commit(&temp, &path, &w.digest, w.stored_size, sync_dirs)?;
                Ok((path, dedup))
            }
            Err(e) => Err(Error::io("move blob into place", &path, e)),
        }
    }

    /// After a record commits: puts the blob back from the pending copy if a concurrent
    /// collector removed it.
    pub(crate) fn ensure_present(&self, p: &PendingBlob) -> Result<()> {
        if p.path.exists() {
            return Ok(());
        }
        self.commit(
            &p.temp,
            &p.path,
            &p.digest,
            p.stored_size,
            self.durability == Durability::Fsync,
        )
        .map(|_| ())
    }

    /// Opens a blob's file (a missing one is [`Error::MissingBlob`]).
    fn open_file(&self, digest: &Digest) -> Result<(File, PathBuf)> {
        let path = self.path_of(digest);
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob {
                digest: *digest,
                path,
                artifact: None,
            }),
            Err(e) => Err(Error::io("open", path, e)),
        }
    }

    /// Opens a verifying reader.
    pub(crate) fn open(&self, digest: &Digest) -> Result<BlobReader> {
        let (file, path) = self.open_file(digest)?;
        BlobReader::new(file, path, *digest)
    }

    /// A verified reader over `range` of a blob's content, when the blob has a usable tree
    /// (`Ok(None)` when it has none, or one that does not match its digest).
    pub(crate) fn open_range(
        &self,
        digest: &Digest,
        range: std::ops::Range<u64>,
    ) -> Result<Option<VerifiedRange>> {
        let tree = crate::tree::path_of(&self.trees, digest);
        if !tree.exists() {
            return Ok(None);
        }
        let (mut file, path) = self.open_file(digest)?;
        let mut h = [0u8; 16];
        let n = read_full(&mut file, &mut h).map_err(|e| Error::io("read", &path, e))?;
        let corrupt = |detail: &str| Error::Corrupt {
            digest: *digest,
            path: path.clone(),
            artifact: None,
            detail: detail.into(),
        };
        let (codec, raw_len) =
            parse_header(&h[..n]).ok_or_else(|| corrupt("bad or truncated header"))?;
        if codec != CODEC_RAW && codec != CODEC_ZSTD {
            return Err(corrupt("unknown codec"));
        }
        if range.start > range.end || range.end > raw_len {
            return Err(Error::Invalid {
                what: "range",
                detail: format!(
                    "{}..{} is not within the {raw_len} bytes of blob {digest}",
                    range.start, range.end
                ),
            });
        }
        let stored_len = file
            .metadata()
            .map_err(|e| Error::io("read", &path, e))?
            .len();
        let Some(tree) = crate::tree::load(&tree, raw_len, digest, Some(stored_len)) else {
            return Ok(None);
        };
        VerifiedRange::new(
            file,
            codec == CODEC_ZSTD,
            tree,
            *digest,
            path.clone(),
            raw_len,
            range,
        )
        .map(Some)
        .map_err(|e| Error::io("read", &path, e))
    }

    /// Reads the whole blob through the verifier, discarding the content.
    pub(crate) fn verify_file(&self, path: &Path, digest: &Digest) -> Result<u64> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let r = BlobReader::new(file, path.to_owned(), *digest)?;
        r.copy_to(&mut io::sink())
            .map_err(|e| Error::io("read", path, e.unwrap_or_else(|e| e)))
    }

    /// [`verify_file`](Self::verify_file) for a blob that arrived encoded (a remote fetch): its
    /// tree is made from the same read (content of 256 KiB or more).
    pub(crate) fn verify_file_keeping_tree(&self, path: &Path, digest: &Digest) -> Result<u64> {
        self.verify_file_tree(path, digest, true).map(|(n, _)| n)
    }

    /// [`verify_file`](Self::verify_file), also telling whether content of 256 KiB or more has
    /// a usable tree; with `make`, a missing or damaged one is made from the same read (the
    /// content hashed group by group beside the verifying reader).
    pub(crate) fn verify_file_tree(
        &self,
        path: &Path,
        digest: &Digest,
        make: bool,
    ) -> Result<(u64, TreeCheck)> {
        struct Groups(TreeHasher);
        impl Write for Groups {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let r = BlobReader::new(file, path.to_owned(), *digest)?;
        let raw_len = r.len_hint();
        let tree = crate::tree::path_of(&self.trees, digest);
        let check = if raw_len < SAMPLE as u64 {
            TreeCheck::NotNeeded
        } else if crate::tree::load(&tree, raw_len, digest, None).is_some() {
            TreeCheck::Present
        } else {
            TreeCheck::Missing
        };
        let read = |r: BlobReader, out: &mut dyn Write| {
            r.copy_to(out)
                .map_err(|e| Error::io("read", path, e.unwrap_or_else(|e| e)))
        };
        if check != TreeCheck::Missing || !make {
            return Ok((read(r, &mut io::sink())?, check));
        }
        let mut groups = Groups(TreeHasher::new());
        let n = read(r, &mut groups)?;
        let (d, cvs) = groups.0.finish();
        // The reader checked the digest; the groups were hashed from the same bytes.
        let written = d == *digest && {
            let offsets = frames_of_file(path, n);
            let frames = offsets
                .as_ref()
                .map(|(offsets, stored_len)| crate::tree::Frames {
                    offsets,
                    stored_len: *stored_len,
                });
            crate::tree::store(&self.trees, &self.tmp, digest, n, &cvs, frames)
        };
        Ok((n, if written { TreeCheck::Written } else { check }))
    }

    /// Every blob file on disk with its digest (files with malformed names are returned as
    /// `Err(path)`).
    pub(crate) fn list(&self) -> Result<Vec<std::result::Result<(Digest, PathBuf), PathBuf>>> {
        let mut out = Vec::new();
        let rd = |p: &Path| fs::read_dir(p).map_err(|e| Error::io("list", p, e));
        for a in rd(&self.content)? {
            let a = a.map_err(|e| Error::io("list", &self.content, e))?.path();
            if !a.is_dir() {
                out.push(Err(a));
                continue;
            }
            for b in rd(&a)? {
                let b = b.map_err(|e| Error::io("list", &a, e))?.path();
                if !b.is_dir() {
                    out.push(Err(b));
                    continue;
                }
                for f in rd(&b)? {
                    let f = f.map_err(|e| Error::io("list", &b, e))?.path();
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    match Digest::from_hex(name) {
                        Ok(d) if self.path_of(&d) == f => out.push(Ok((d, f))),
                        _ => out.push(Err(f)),
                    }
                }
            }
        }
        Ok(out)
    }
}

enum Inner {
    /// A small blob read whole: the content is `buf[pos..]`.
    Mem {
        buf: Vec<u8>,
        pos: usize,
    },
    Raw(BufReader<File>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<File>>),
}

impl Read for Inner {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Inner::Mem { buf, pos } => {
                let n = out.len().min(buf.len() - *pos);
                out[..n].copy_from_slice(&buf[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
            Inner::Raw(r) => r.read(out),
            Inner::Zstd(r) => r.read(out),
        }
    }
}

/// Streamed blobs at least this large are copied by two threads: one decodes, the other hashes
/// and writes.
const PIPELINE_MIN: u64 = 4 * CHUNK as u64;

/// Streams a blob's content and verifies it: when the end is reached, the length and BLAKE3
/// digest must match or the final `read` fails with an `InvalidData` error carrying a
/// [`CorruptBlob`](crate::CorruptBlob). Never trust content from a reader that did not reach the
/// end; [`ArtifactStore::get`](crate::ArtifactStore::get) and
/// [`ArtifactStore::read_to`](crate::ArtifactStore::read_to) handle this for you.
pub struct BlobReader {
    inner: Inner,
    hasher: blake3::Hasher,
    digest: Digest,
    path: PathBuf,
    expected: u64,
    seen: u64,
    done: bool,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("digest", &self.digest)
            .field("path", &self.path)
            .field("seen", &self.seen)
            .finish()
    }
}

impl BlobReader {
    /// A reader over a whole encoded blob held in memory (one kept by the catalog).
    pub(crate) fn from_encoded(buf: Vec<u8>, path: PathBuf, digest: Digest) -> Result<Self> {
        match Self::whole(buf, &path, digest)? {
            Some((inner, expected)) => Ok(Self::with(inner, expected, path, digest)),
            // Inline blobs hold less than 256 KiB of content.
            None => Err(Error::Corrupt {
                digest,
                path,
                artifact: None,
                detail: "header announces more content than an inline blob holds".into(),
            }),
        }
    }

    /// Decodes a whole encoded blob in memory; `None` when it should be streamed instead.
    fn whole(mut buf: Vec<u8>, path: &Path, digest: Digest) -> Result<Option<(Inner, u64)>> {
        let corrupt = |detail: &str| Error::Corrupt {
            digest,
            path: path.to_owned(),
            artifact: None,
            detail: detail.into(),
        };
        let (codec, expected) =
            parse_header(&buf).ok_or_else(|| corrupt("bad or truncated header"))?;
        match codec {
            CODEC_RAW => Ok(Some((Inner::Mem { buf, pos: 16 }, expected))),
            CODEC_ZSTD if expected <= 4 * SMALL_READ => {
                let out = decompress_small(&buf[16..], expected as usize)
                    .map_err(|e| corrupt(&format!("undecodable content: {e}")))?;
                buf = out;
                Ok(Some((Inner::Mem { buf, pos: 0 }, expected)))
            }
            CODEC_ZSTD => Ok(None),
            _ => Err(corrupt("unknown codec")),
        }
    }

    fn with(inner: Inner, expected: u64, path: PathBuf, digest: Digest) -> Self {
        BlobReader {
            inner,
            hasher: blake3::Hasher::new(),
            digest,
            path,
            expected,
            seen: 0,
            done: false,
        }
    }

    fn new(mut file: File, path: PathBuf, digest: Digest) -> Result<Self> {
        let corrupt = |detail: &str| Error::Corrupt {
            digest,
            path: path.clone(),
            artifact: None,
            detail: detail.into(),
        };
        let stored = file
            .metadata()
            .map_err(|e| Error::io("read", &path, e))?
            .len();
        if stored < 16 {
            return Err(corrupt("bad or truncated header"));
        }
        let mut small = None;
        if stored <= SMALL_READ {
            // Small blob: one read of the whole file, one decompression with a reused context.
            let mut buf = vec![0u8; stored as usize];
            let n = read_full(&mut file, &mut buf).map_err(|e| Error::io("read", &path, e))?;
            buf.truncate(n);
            small = Self::whole(buf, &path, digest)?;
        }
        let (inner, expected) = match small {
            Some(s) => s,
            None => {
                let mut h = [0u8; 16];
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| Error::io("read", &path, e))?;
                let n = read_full(&mut file, &mut h).map_err(|e| Error::io("read", &path, e))?;
                let (codec, expected) =
                    parse_header(&h[..n]).ok_or_else(|| corrupt("bad or truncated header"))?;
                let body = BufReader::with_capacity(CHUNK.min(stored as usize), file);
                let inner = match codec {
                    CODEC_RAW => Inner::Raw(body),
                    CODEC_ZSTD => Inner::Zstd(
                        zstd::stream::read::Decoder::with_buffer(body)
                            .map_err(|e| Error::io("start decoding", &path, e))?,
                    ),
                    _ => return Err(corrupt("unknown codec")),
                };
                (inner, expected)
            }
        };
        Ok(Self::with(inner, expected, path, digest))
    }

    /// The digest being verified.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The content length announced by the blob header.
    pub fn len_hint(&self) -> u64 {
        self.expected
    }

    fn corrupt(&self, detail: String) -> io::Error {
        corrupt_io(self.digest, &self.path, detail)
    }
}

impl BlobReader {
    /// Checks the content seen so far against the header and digest (at the end).
    fn finish(&mut self) -> io::Result<()> {
        self.done = true;
        if self.seen != self.expected {
            return Err(self.corrupt(format!(
                "length {} but the header says {}",
                self.seen, self.expected
            )));
        }
        let got = Digest::from(self.hasher.finalize());
        if got != self.digest {
            return Err(self.corrupt(format!("content hashes to {got}")));
        }
        Ok(())
    }

    /// Accounts for `data` just read: length check and hashing.
    fn consume(&mut self, data: &[u8]) -> io::Result<()> {
        self.seen += data.len() as u64;
        if self.seen > self.expected {
            self.done = true;
            return Err(self.corrupt(format!(
                "longer than the {} bytes in the header",
                self.expected
            )));
        }
        self.hasher.update(data);
        Ok(())
    }

    /// Turns a decoder error into a corruption error (I/O errors stay as they are).
    fn decode_error(&self, e: io::Error) -> io::Error {
        decode_error(e, self.digest, &self.path)
    }

    /// The whole content, verified (the store's fast path for small blobs: no copy).
    pub(crate) fn into_vec(mut self) -> io::Result<Vec<u8>> {
        if self.seen == 0
            && let Inner::Mem { buf, pos } = &mut self.inner
        {
            let mut buf = std::mem::take(buf);
            buf.drain(..*pos);
            self.consume(&buf)?;
            self.finish()?;
            return Ok(buf);
        }
        let mut v = Vec::with_capacity(self.expected.min(64 << 20) as usize);
        self.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Copies the rest of the content to `out`, verified; returns the byte count. Small blobs
    /// are verified before anything is written; large ones are decoded on a second thread while
    /// this one hashes and writes, and a corruption error comes after the content was written.
    /// Write errors come back as `Err(Ok(e))`, read and verification errors as `Err(Err(e))`.
    pub(crate) fn copy_to(
        mut self,
        out: &mut dyn Write,
    ) -> std::result::Result<u64, std::result::Result<io::Error, io::Error>> {
        if let Inner::Mem { buf, pos } = &mut self.inner {
            let data = std::mem::take(buf);
            let start = std::mem::take(pos);
            self.consume(&data[start..]).map_err(Err)?;
            self.finish().map_err(Err)?;
            out.write_all(&data[start..]).map_err(Ok)?;
            return Ok((data.len() - start) as u64);
        }
        if self.expected >= PIPELINE_MIN {
            return self.copy_pipelined(out);
        }
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            let n = match self.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Err(e)),
            };
            out.write_all(&buf[..n]).map_err(Ok)?;
            total += n as u64;
        }
    }

    /// One thread decodes into a few recycled buffers, this one hashes and writes them.
    fn copy_pipelined(
        mut self,
        out: &mut dyn Write,
    ) -> std::result::Result<u64, std::result::Result<io::Error, io::Error>> {
        use std::sync::mpsc;
        let mut inner = std::mem::replace(
            &mut self.inner,
            Inner::Mem {
                buf: Vec::new(),
                pos: 0,
            },
        );
        std::thread::scope(|s| {
            let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(4);
            let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..4 {
                free_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
            }
            s.spawn(move || {
                while let Ok(mut buf) = free_rx.recv() {
                    let r = read_full(&mut inner, &mut buf);
                    let last = !matches!(r, Ok(n) if n > 0);
                    if full_tx.send(r.map(|n| (buf, n))).is_err() || last {
                        return;
                    }
                }
            });
            let mut total = 0u64;
            loop {
                let (buf, n) = match full_rx.recv() {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        self.done = true;
                        return Err(Err(self.decode_error(e)));
                    }
                    Err(_) => {
                        return Err(Err(io::Error::other(format!(
                            "decoder thread of {} stopped early",
                            self.path.display()
                        ))));
                    }
                };
                if n == 0 {
                    self.finish().map_err(Err)?;
                    return Ok(total);
                }
                self.consume(&buf[..n]).map_err(Err)?;
                out.write_all(&buf[..n]).map_err(Ok)?;
                total += n as u64;
                // The decoder may have stopped after a short (final) read; that is fine.
                let _ = free_tx.send(buf);
            }
        })
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => return Err(self.decode_error(e)),
        };
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.consume(&buf[..n])?;
        Ok(n)
    }
}
