//! The store: content, catalog, collection, verification and statistics.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::blob::{
    BlobReader, Blobs, Durability, Encoded, Head, PendingBlob, TreeCheck, pid_alive,
};
use crate::catalog::{BlobInfo, BlobOf, Catalog};
use crate::error::{Error, Result};
use crate::model::{ArtifactRecord, NewArtifact, Query};

/// The layout version of the store directory (`content-v1`, `catalog-v1.sqlite`).
pub const LAYOUT_VERSION: u32 = 1;
const LAYOUT_FILE: &str = "LAYOUT";

/// Blobs up to this many bytes encoded live in the catalog by default (see
/// [`StoreOptions::inline_max`]).
pub const DEFAULT_INLINE_MAX: usize = 16 * 1024;

/// Options for [`ArtifactStore::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync policy (default: [`Durability::Fsync`]).
    pub durability: Durability,
    /// Blobs stored by [`ArtifactStore::add`] and [`ArtifactStore::add_many`] whose encoded form
    /// is at most this many bytes live in the catalog database instead of a file of their own
    /// (default [`DEFAULT_INLINE_MAX`]; 0 puts every blob in a file). A file costs a create, a
    /// rename and a 4 KiB block for a few hundred bytes of log; in the catalog, a batch of them
    /// is one transaction with one fsync. Reads verify them like files.
    pub inline_max: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::default(),
            inline_max: DEFAULT_INLINE_MAX,
        }
    }
}

/// Options for [`ArtifactStore::gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Temp files of processes that are still alive are removed only when older than this
    /// (those of dead processes always are). Default: one day.
    pub temp_grace: Duration,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            temp_grace: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs no live record needs, removed.
    pub blobs_removed: u64,
    /// Their size on disk.
    pub bytes_removed: u64,
    /// Blobs kept.
    pub blobs_kept: u64,
    /// Abandoned temp files removed.
    pub temp_files_removed: u64,
}

/// A corrupt blob found by [`ArtifactStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptEntry {
    /// The digest it should have.
    pub digest: Digest,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
    /// Records that need it.
    pub artifacts: Vec<String>,
}

/// A record whose blob is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingEntry {
    /// The artifact id.
    pub artifact: String,
    /// Its blob digest.
    pub digest: Digest,
}

/// Options for [`ArtifactStore::verify`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Repair: corrupt blobs are moved to `quarantine/`, their records and records of missing
    /// blobs are marked evicted (`blob corrupt` / `blob missing`), stray files are quarantined,
    /// orphans are collected, and good blobs without a tree get one.
    pub repair: bool,
}

/// What [`ArtifactStore::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blob files read and hashed.
    pub blobs_checked: u64,
    /// Blobs whose content does not match their digest.
    pub corrupt: Vec<CorruptEntry>,
    /// Live records whose blob is not on disk.
    pub missing: Vec<MissingEntry>,
    /// Good blobs that no live record needs.
    pub orphans: Vec<Digest>,
    /// Files in the content directory that are not blobs.
    pub stray_files: Vec<PathBuf>,
    /// Whether the findings were repaired.
    pub repaired: bool,
    /// Good blobs of 256 KiB or more found without a usable tree (written by an earlier
    /// version, or a damaged tree file): read and verified whole before use, where a tree lets
    /// downloads stream and ranges verify alone. Not damage: [`is_clean`](Self::is_clean)
    /// ignores them.
    #[serde(default)]
    pub trees_missing: u64,
    /// Of those, the trees made by a repair (from the same read as the check).
    #[serde(default)]
    pub trees_written: u64,
}

impl VerifyReport {
    /// Nothing corrupt, missing, orphaned or stray.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.orphans.is_empty()
            && self.stray_files.is_empty()
    }
}

/// Bytes and counts for one kind or test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Live records.
    pub records: u64,
    /// Sum of their content sizes.
    pub raw_bytes: u64,
}

/// Store statistics from the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Records with their blob.
    pub live_records: u64,
    /// Records whose blob was evicted.
    pub evicted_records: u64,
    /// Distinct blobs that live records use.
    pub blobs: u64,
    /// Sum of live records' content sizes (what the store would hold without dedup).
    pub logical_bytes: u64,
    /// Sum of the distinct blobs' content sizes.
    pub unique_bytes: u64,
    /// Sum of the distinct blobs' sizes on disk.
    pub stored_bytes: u64,
    /// Per kind.
    pub by_kind: BTreeMap<String, Usage>,
    /// Per test.
    pub by_test: BTreeMap<String, Usage>,
}

impl Stats {
    /// `logical_bytes / unique_bytes` (1.0 when empty).
    pub fn dedup_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            1.0
        } else {
            self.logical_bytes as f64 / self.unique_bytes as f64
        }
    }
    /// `unique_bytes / stored_bytes` (1.0 when empty).
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.unique_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// A content-addressed artifact store with its catalog. Cheap to share between threads
/// (`&self` methods, internally locked); several processes may open the same directory.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    inline_max: usize,
    pub(crate) remote: Option<crate::shared::Remote>,
    pub(crate) blobs: Blobs,
    pub(crate) catalog: Catalog,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store at `root` with default options.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open_with(root: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let root = root.as_ref().to_owned();
        fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        let layout = root.join(LAYOUT_FILE);
        match fs::read_to_string(&layout) {
            Ok(s) => check_layout(&s, layout)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let tmp = root.join(format!(".{LAYOUT_FILE}.{}", std::process::id()));
                fs::write(&tmp, format!("{LAYOUT_VERSION}\n"))
                    .map_err(|e| Error::io("write", &tmp, e))?;
                fs::rename(&tmp, &layout).map_err(|e| Error::io("write", &layout, e))?;
            }
            Err(e) => return Err(Error::io("read", layout, e)),
        }
        let blobs = Blobs::new(&root, options.durability);
        blobs.create_dirs()?;
        let catalog = Catalog::open(&root.join("catalog-v1.sqlite"), options.durability)?;
        Ok(ArtifactStore {
            root,
            inline_max: options.inline_max,
            remote: None,
            blobs,
            catalog,
        })
    }

    /// Opens an existing store for reading only: nothing is created or changed (no directory,
    /// no layout file, no catalog upgrade), and any write through it fails. For read commands
    /// and servers. (SQLite may leave its WAL index and an empty WAL file beside the catalog,
    /// as any reader of a WAL database does.) A directory that is not a store is an [`Error::Invalid`] naming it.
    pub fn open_read_only(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_owned();
        let layout = root.join(LAYOUT_FILE);
        let not_a_store = |why: &str| Error::Invalid {
            what: "store directory",
            detail: format!(
                "{} is not an artifact store ({why}): give the directory a run's `[store] path` named",
                root.display()
            ),
        };
        let s = match fs::read_to_string(&layout) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_store(if root.is_dir() {
                    "it has no LAYOUT file"
                } else {
                    "no such directory"
                }));
            }
            Err(e) => return Err(Error::io("read", layout, e)),
        };
        check_layout(&s, layout)?;
        let catalog_path = root.join("catalog-v1.sqlite");
        if !catalog_path.is_file() {
            return Err(not_a_store("it has no catalog-v1.sqlite"));
        }
        let blobs = Blobs::new(&root, Durability::Relaxed);
        let catalog = Catalog::open_read_only(&catalog_path)?;
        Ok(ArtifactStore {
            root,
            inline_max: 0,
            remote: None,
            blobs,
            catalog,
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob file with `digest` lives (whether or not it exists). Small blobs live in
    /// the catalog instead (see [`StoreOptions::inline_max`] and [`has_blob`](Self::has_blob)).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.path_of(digest)
    }

    /// Streams content into the store without recording it yet. Record it with
    /// [`record`](Self::record); until then the returned [`PendingBlob`] protects it from
    /// garbage collection.
    pub fn put_blob(&self, mut reader: impl Read) -> Result<PendingBlob> {
        self.blobs.put(&mut reader)
    }

    /// Records an artifact for a pending blob.
    pub fn record(&self, blob: &PendingBlob, artifact: NewArtifact) -> Result<ArtifactRecord> {
        let mut v = self.record_many(blob, vec![artifact])?;
        Ok(v.pop().expect("one record"))
    }

    /// Records several artifacts sharing one pending blob, in one transaction.
    pub fn record_many(
        &self,
        blob: &PendingBlob,
        artifacts: Vec<NewArtifact>,
    ) -> Result<Vec<ArtifactRecord>> {
        let now = Utc::now();
        let mut records = Vec::with_capacity(artifacts.len());
        for a in artifacts {
            a.validate()?;
            records.push(new_record(blob, a, now));
        }
        let info = info_of(blob);
        let items: Vec<_> = records.iter().map(|r| (info, r)).collect();
        self.catalog.insert(&items)?;
        // A collector that ran between the put and this commit may have removed the blob;
        // any later one sees the record. Put it back from the pending copy.
        self.blobs.ensure_present(blob)?;
        Ok(records)
    }

    pub(crate) fn record_existing(&self, items: &[(&PendingBlob, &ArtifactRecord)]) -> Result<()> {
        let v: Vec<_> = items.iter().map(|(b, r)| (info_of(b), *r)).collect();
        self.catalog.insert(&v)?;
        for (b, _) in items {
            self.blobs.ensure_present(b)?;
        }
        Ok(())
    }

    /// Stores content from `reader` and records it: the usual way to add an artifact.
    ///
    /// All or nothing: if it fails (a full disk, say), neither a record nor a blob nor a temp
    /// file of it stays behind.
    pub fn add(&self, artifact: NewArtifact, reader: impl Read) -> Result<ArtifactRecord> {
        let mut v = self.add_many([(artifact, reader)])?;
        Ok(v.pop().expect("one record"))
    }

    /// Stores and records many artifacts at once, all or nothing: one catalog transaction for the
    /// whole batch. Much faster than [`add`](Self::add) in a loop for many small files. If it
    /// fails, none of the records, blobs or temp files of the batch stay behind.
    ///
    /// Small blobs (at most [`StoreOptions::inline_max`] bytes encoded) go into the catalog with
    /// their records: no file, and with [`Durability::Fsync`] the commit's one fsync makes the
    /// whole batch durable. Larger blobs are each written to a temp file, then, inside the
    /// catalog's write transaction that records them, renamed into place without clobbering
    /// (`RENAME_NOREPLACE`; an existing blob is a dedup hit): a collection, which deletes only
    /// under that lock, can never see a blob whose record is not yet committed. With
    /// [`Durability::Fsync`], one such file is fsynced with its directory; several cost two
    /// `syncfs(2)` calls (content before names, names before records).
    pub fn add_many<R: Read>(
        &self,
        items: impl IntoIterator<Item = (NewArtifact, R)>,
    ) -> Result<Vec<ArtifactRecord>> {
        let items: Vec<(NewArtifact, R)> = items.into_iter().collect();
        let sync = self.blobs.durability == Durability::Fsync;
        let now = Utc::now();
        let mut records = Vec::with_capacity(items.len());
        let mut inline = Vec::new();
        let mut temps = Vec::new();
        // Per record: its blob info, or the index of its inline blob.
        let mut slots: Vec<std::result::Result<BlobInfo<'static>, usize>> = Vec::new();
        for (a, e) in self.encode_batch(items)? {
            records.push(record_of_info(&e.info(), a, now));
            match e {
                Encoded::Inline(b) => {
                    slots.push(Err(inline.len()));
                    inline.push(b);
                }
                Encoded::Temp(w) => {
                    slots.push(Ok(w.info()));
                    temps.push((records.len() - 1, w));
                }
            }
        }
        if records.is_empty() {
            return Ok(records);
        }
        let syncfs = || {
            let tmp = &self.blobs.tmp;
            let dir = File::open(tmp).map_err(|e| Error::io("open", tmp, e))?;
            nix::unistd::syncfs(&dir).map_err(|e| Error::io("syncfs", tmp, io::Error::from(e)))
        };
        // One file: fsync it and its directory rather than flush the whole file system. Inline
        // blobs are made durable by the catalog's commit.
        let per_file = sync && temps.len() == 1;
        let whole_fs = sync && temps.len() > 1;
        let label = |i: usize| {
            let r: &ArtifactRecord = &records[i];
            move |e: Error| e.storing(&r.test_id, &r.run_id, &r.name)
        };
        if per_file {
            let (i, w) = &temps[0];
            w.sync().map_err(label(*i))?;
        }
        if whole_fs {
            // The content is durable before any name points at it.
            syncfs()?;
        }
        let rows: Vec<_> = slots
            .iter()
            .zip(&records)
            .map(|(s, r)| (s.unwrap_or_else(|j| inline[j].info()), r))
            .collect();
        let single = (records.len() == 1).then(|| label(0));
        let remove = |fresh: &Vec<(Digest, PathBuf)>, needed: Option<&Needed<'_>>| {
            for (d, p) in fresh {
                if needed.is_none_or(|n| matches!(n(d), Ok(false))) {
                    let _ = fs::remove_file(p);
                }
            }
        };
        let placed = self.catalog.insert_after(
            &rows,
            || {
                let mut fresh = Vec::new();
                for (i, w) in temps {
                    let digest = w.info().digest;
                    match self.blobs.rename_into_place(w, per_file) {
                        Ok((_, true)) => {}
                        Ok((path, false)) => fresh.push((digest, path)),
                        Err(e) => {
                            remove(&fresh, None);
                            return Err(label(i)(e));
                        }
                    }
                }
                if whole_fs {
                    // Every name is durable before the records that need them commit.
                    if let Err(e) = syncfs() {
                        remove(&fresh, None);
                        return Err(e);
                    }
                }
                Ok(fresh)
            },
            |fresh, needed| remove(fresh, Some(needed)),
        );
        match placed {
            Ok(_) => {
                self.push_rows(&rows)?;
                Ok(records)
            }
            Err(e) => Err(match single {
                Some(l) => l(e),
                None => e,
            }),
        }
    }

    /// Encodes a batch in item order. Inputs are read on this thread; content shorter than
    /// 256 KiB is then hashed and compressed on up to four threads, in windows of at most 64 MiB
    /// so that memory stays bounded.
    fn encode_batch<R: Read>(
        &self,
        items: Vec<(NewArtifact, R)>,
    ) -> Result<Vec<(NewArtifact, Encoded)>> {
        const WINDOW: usize = 64 << 20;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut done: Vec<Option<Encoded>> = Vec::with_capacity(items.len());
        let mut arts = Vec::with_capacity(items.len());
        let mut window: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut window_bytes = 0;
        let flush = |window: &mut Vec<(usize, Vec<u8>)>,
                     done: &mut Vec<Option<Encoded>>,
                     arts: &[NewArtifact]|
         -> Result<()> {
            let work = std::mem::take(window);
            let encode = |chunk: &[(usize, Vec<u8>)]| -> Vec<(usize, Result<Encoded>)> {
                chunk
                    .iter()
                    .map(|(i, c)| (*i, self.blobs.encode_whole(c, false, self.inline_max)))
                    .collect()
            };
            // Below a few dozen items, threads cost more than they save.
            let n = threads.min(work.len() / 32).max(1);
            let results: Vec<(usize, Result<Encoded>)> = if n == 1 {
                encode(&work)
            } else {
                let size = work.len().div_ceil(n);
                std::thread::scope(|s| {
                    let handles: Vec<_> = work
                        .chunks(size)
                        .map(|chunk| s.spawn(move || encode(chunk)))
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().expect("an encoding thread panicked"))
                        .collect()
                })
            };
            for (i, r) in results {
                let a = &arts[i];
                done[i] = Some(r.map_err(|e| e.storing(&a.test_id, &a.run_id, &a.name))?);
            }
            Ok(())
        };
        for (i, (a, mut r)) in items.into_iter().enumerate() {
            a.validate()?;
            let label = |e: Error| e.storing(&a.test_id, &a.run_id, &a.name);
            let head = self.blobs.read_head(&mut r).map_err(label)?;
            done.push(None);
            match head {
                Head::Whole(content) => {
                    window_bytes += content.len();
                    window.push((i, content));
                }
                Head::Start(sample) => {
                    let e = self.blobs.encode_stream(sample, &mut r, false);
                    done[i] = Some(e.map_err(label)?);
                }
            }
            arts.push(a);
            if window_bytes >= WINDOW {
                flush(&mut window, &mut done, &arts)?;
                window_bytes = 0;
            }
        }
        flush(&mut window, &mut done, &arts)?;
        Ok(arts
            .into_iter()
            .zip(done)
            .map(|(a, e)| (a, e.expect("every item encoded")))
            .collect())
    }

    /// Stores `bytes` and records them.
    pub fn add_bytes(&self, artifact: NewArtifact, bytes: &[u8]) -> Result<ArtifactRecord> {
        self.add(artifact, bytes)
    }

    /// Stores the file at `path` and records it.
    pub fn add_file(
        &self,
        artifact: NewArtifact,
        path: impl AsRef<Path>,
    ) -> Result<ArtifactRecord> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        self.add(artifact, f)
    }

    /// The record of artifact `id`.
    pub fn record_of(&self, id: &str) -> Result<ArtifactRecord> {
        self.catalog
            .get(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })
    }

    /// A verifying reader over artifact `id`'s content (see [`BlobReader`]).
    pub fn open_artifact(&self, id: &str) -> Result<BlobReader> {
        let found = self.catalog.blob_of(id)?;
        self.open_found(id, found)
    }

    fn open_found(&self, id: &str, found: Option<BlobOf>) -> Result<BlobReader> {
        match found {
            None => Err(Error::NotFound { id: id.to_owned() }),
            Some((digest, Some(reason), _)) => Err(Error::Evicted {
                id: id.to_owned(),
                digest,
                reason,
            }),
            Some((digest, None, Some(data))) => {
                BlobReader::from_encoded(data, self.inline_path(&digest), digest)
                    .map_err(|e| e.with_artifact(id))
            }
            Some((digest, None, None)) => self
                .open_file_or_fetch(&digest)
                .map_err(|e| e.with_artifact(id)),
        }
    }

    /// Opens a blob file; one that is missing here is fetched from the remote, if any.
    fn open_file_or_fetch(&self, digest: &Digest) -> Result<BlobReader> {
        match self.blobs.open(digest) {
            Err(Error::MissingBlob { .. }) if self.fetch_remote(digest)? => self.blobs.open(digest),
            other => other,
        }
    }

    /// `range` of artifact `id`'s content, returned in pieces each verified against the
    /// artifact's digest before it is returned, so that it can be passed on at once (see
    /// [`VerifiedRange`](crate::VerifiedRange)); only the part of the content the range covers
    /// is hashed. `Ok(None)` when the artifact's blob has no tree to verify pieces with (content
    /// under 256 KiB, a blob written by an earlier version, or one not held here yet, which a
    /// store with a remote fetches at the first whole read, keeping its tree): read it with
    /// [`open_artifact`](Self::open_artifact), which verifies the whole. A range beyond the
    /// content is an [`Error::Invalid`].
    pub fn open_range(
        &self,
        id: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<crate::VerifiedRange>> {
        match self.catalog.blob_of(id)? {
            None => Err(Error::NotFound { id: id.to_owned() }),
            Some((digest, Some(reason), _)) => Err(Error::Evicted {
                id: id.to_owned(),
                digest,
                reason,
            }),
            Some((_, None, Some(_))) => Ok(None),
            Some((digest, None, None)) => match self.blobs.open_range(&digest, range) {
                // Not here: perhaps on the remote, which `open_artifact` fetches from.
                Err(Error::MissingBlob { .. }) => Ok(None),
                Ok(r) => Ok(r.map(|r| r.for_artifact(id))),
                Err(e) => Err(e.with_artifact(id)),
            },
        }
    }

    /// A verifying reader over a blob.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader> {
        match self.catalog.inline_blob(digest)? {
            Some(data) => BlobReader::from_encoded(data, self.inline_path(digest), *digest),
            None => self.open_file_or_fetch(digest),
        }
    }

    /// Whether the store holds the blob with `digest` (in a file or in the catalog).
    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.path_of(digest).exists() || self.catalog.has_inline(digest)?)
    }

    /// How errors name a blob the catalog keeps: `<catalog file>#blob/<digest>`.
    fn inline_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.catalog.path.clone().into_os_string();
        p.push(format!("#blob/{}", digest.to_hex()));
        PathBuf::from(p)
    }

    /// Streams artifact `id` into `out`, verifying it; returns the byte count. Content up to
    /// 1 MiB on disk is verified before anything is written. Larger content is decoded on a
    /// second thread while this one hashes and writes, so on corruption the error comes after
    /// the content was written: discard `out` then.
    pub fn read_to(&self, id: &str, out: &mut impl Write) -> Result<u64> {
        let r = self.open_artifact(id)?;
        copy_out(r, id, out)
    }

    /// Artifact `id`'s whole content, verified.
    pub fn get(&self, id: &str) -> Result<Vec<u8>> {
        let r = self.open_artifact(id)?;
        let path = r.path().to_owned();
        r.into_vec()
            .map_err(|e| Error::io("read", path, e).with_artifact(id))
    }

    /// The verified content of many artifacts, in the order of `ids`: one catalog read
    /// transaction for all the lookups instead of one per artifact, otherwise as
    /// [`get`](Self::get) in a loop. Stops at the first failure, naming its artifact.
    pub fn get_many<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(ids.len());
        self.read_many(ids, |_, _, content| {
            out.push(content);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `sink(index, id, content)` with the verified content of each artifact in `ids`, in
    /// order, holding only one at a time: [`get_many`](Self::get_many) for when the contents go
    /// elsewhere (files, a socket). One catalog read transaction for all the lookups. Stops at
    /// the first failure, of a read or of `sink`.
    pub fn read_many<S: AsRef<str>>(
        &self,
        ids: &[S],
        mut sink: impl FnMut(usize, &str, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let found = self.catalog.blobs_of(ids.iter().map(AsRef::as_ref))?;
        if self.remote.is_some() {
            // Blobs held only in the remote: fetched several at once first.
            let remote_only: Vec<Digest> = found
                .iter()
                .filter_map(|(_, f)| match f {
                    Some((d, None, None)) => Some(*d),
                    _ => None,
                })
                .collect();
            self.prefetch(&remote_only)?;
        }
        for (i, (id, f)) in found.into_iter().enumerate() {
            let r = self.open_found(id, f)?;
            let path = r.path().to_owned();
            let content = r
                .into_vec()
                .map_err(|e| Error::io("read", path, e).with_artifact(id))?;
            sink(i, id, content)?;
        }
        Ok(())
    }

    /// Writes artifact `id` to `dest` atomically (temp file beside it, then rename): a corrupt
    /// blob leaves nothing at `dest`.
    pub fn get_to_file(&self, id: &str, dest: impl AsRef<Path>) -> Result<u64> {
        let dest = dest.as_ref();
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.part",
            dest.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("artifact"),
            uuid::Uuid::new_v4().simple()
        ));
        let res = (|| {
            let mut f =
                io::BufWriter::new(File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?);
            let n = self.read_to(id, &mut f)?;
            f.flush().map_err(|e| Error::io("write", &tmp, e))?;
            fs::rename(&tmp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
            Ok(n)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// The runs of the records `query` matches, newest first (by their first matching record),
    /// with how many records each has; `query`'s limit counts runs. One catalog statement, no
    /// metadata read: `Query::new().kind(ArtifactKind::Result).include_evicted(true)` lists
    /// every run that recorded a result.
    pub fn runs(&self, query: &Query) -> Result<Vec<crate::RunRecords>> {
        self.catalog.runs(query)
    }

    /// Records matching `query`, oldest first.
    pub fn query(&self, query: &Query) -> Result<Vec<ArtifactRecord>> {
        self.catalog.query(query)
    }

    /// Marks artifacts evicted with a reason; their blobs go at the next [`gc`](Self::gc)
    /// unless another live record needs them. Returns how many records changed.
    /// With a remote, the evictions are published there too (see
    /// [`pull_records`](Self::pull_records)).
    pub fn evict(&self, ids: &[(String, String)]) -> Result<u64> {
        let n = self.catalog.evict(ids, Utc::now())?;
        if n > 0 {
            self.push_evictions(ids)?;
        }
        Ok(n)
    }

    /// Removes blobs that no live record needs and abandoned temp files.
    ///
    /// Safe while other threads and processes write: blobs are removed inside a catalog write
    /// transaction, so a record committed earlier protects its blob, and a writer committing later
    /// re-links the blob from its [`PendingBlob`] copy.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        // Temp files first: those of dead writers, or older than the grace period.
        let now = SystemTime::now();
        for e in fs::read_dir(&self.blobs.tmp).map_err(|e| Error::io("list", &self.blobs.tmp, e))? {
            let Ok(e) = e else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            let pid: Option<i32> = name.split('.').next().and_then(|p| p.parse().ok());
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > options.temp_grace);
            let dead = pid.is_some_and(|p| p != std::process::id() as i32 && !pid_alive(p));
            if dead || old {
                if !options.dry_run {
                    let _ = fs::remove_file(e.path());
                }
                report.temp_files_removed += 1;
            }
        }
        let on_disk = self.blobs.list()?;
        self.catalog.with_live_digests(|live, tx| {
            for (d, path) in on_disk.iter().flatten() {
                if live.contains(d) {
                    report.blobs_kept += 1;
                    continue;
                }
                let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                if !options.dry_run {
                    let _ = fs::remove_file(crate::tree::path_of(&self.blobs.trees, d));
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("remove blob", path, e)),
                    }
                    tx.execute("DELETE FROM blobs WHERE digest = ?1", [d.to_hex()])
                        .map_err(|e| Error::catalog(&self.catalog.path, "forget blob", e))?;
                }
                report.blobs_removed += 1;
                report.bytes_removed += size;
            }
            // Blobs the catalog keeps: removed in this same transaction.
            let mut dead = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT digest, length(data) FROM inline_blobs")
                    .map_err(|e| Error::catalog(&self.catalog.path, "list inline blobs", e))?;
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(|e| Error::catalog(&self.catalog.path, "list inline blobs", e))?;
                for row in rows {
                    let (hex, size) = row
                        .map_err(|e| Error::catalog(&self.catalog.path, "list inline blobs", e))?;
                    match Digest::from_hex(&hex) {
                        Ok(d) if live.contains(&d) => report.blobs_kept += 1,
                        _ => {
                            report.blobs_removed += 1;
                            report.bytes_removed += size as u64;
                            dead.push(hex);
                        }
                    }
                }
            }
            if !options.dry_run {
                for hex in dead {
                    for sql in [
                        "DELETE FROM inline_blobs WHERE digest = ?1",
                        "DELETE FROM blobs WHERE digest = ?1",
                    ] {
                        tx.execute(sql, [&hex])
                            .map_err(|e| Error::catalog(&self.catalog.path, "forget blob", e))?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// Reads every blob and checks it against the catalog: corrupt blobs, records whose blob is
    /// missing, orphans and stray files. With `repair`, fixes the catalog (see
    /// [`VerifyOptions::repair`]).
    pub fn verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            repaired: options.repair,
            ..Default::default()
        };
        let mut good: HashSet<Digest> = HashSet::new();
        let mut corrupt_paths = Vec::new();
        for entry in self.blobs.list()? {
            match entry {
                Ok((d, path)) => {
                    report.blobs_checked += 1;
                    match self.blobs.verify_file_tree(&path, &d, options.repair) {
                        Ok((_, tree)) => {
                            good.insert(d);
                            match tree {
                                TreeCheck::Missing => report.trees_missing += 1,
                                TreeCheck::Written => {
                                    report.trees_missing += 1;
                                    report.trees_written += 1;
                                }
                                TreeCheck::NotNeeded | TreeCheck::Present => {}
                            }
                        }
                        Err(Error::Corrupt { detail, .. }) => {
                            corrupt_paths.push((d, path.clone()));
                            report.corrupt.push(CorruptEntry {
                                digest: d,
                                path,
                                detail,
                                artifacts: Vec::new(),
                            });
                        }
                        Err(Error::MissingBlob { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(path) => report.stray_files.push(path),
            }
        }
        let mut corrupt_inline = Vec::new();
        self.catalog.each_inline_blob(|d, data| {
            report.blobs_checked += 1;
            let path = self.inline_path(&d);
            // `Error::io` turns a corruption found while reading into `Error::Corrupt`.
            let checked = BlobReader::from_encoded(data, path.clone(), d)
                .and_then(|r| r.into_vec().map_err(|e| Error::io("read", &path, e)));
            match checked {
                Ok(_) => {
                    good.insert(d);
                }
                Err(e) => {
                    let detail = match e {
                        Error::Corrupt { detail, .. } => detail,
                        e => e.to_string(),
                    };
                    corrupt_inline.push(d);
                    report.corrupt.push(CorruptEntry {
                        digest: d,
                        path,
                        detail,
                        artifacts: Vec::new(),
                    });
                }
            }
            Ok(())
        })?;
        let live = self.catalog.query(&Query::new())?;
        let mut needed = HashSet::new();
        for r in &live {
            needed.insert(r.digest);
            if let Some(c) = report.corrupt.iter_mut().find(|c| c.digest == r.digest) {
                c.artifacts.push(r.id.clone());
            } else if !good.contains(&r.digest)
                && !self.has_blob(&r.digest)?
                && !self.remote_has(&r.digest)?
            {
                report.missing.push(MissingEntry {
                    artifact: r.id.clone(),
                    digest: r.digest,
                });
            }
        }
        report.orphans = good
            .iter()
            .filter(|d| !needed.contains(d))
            .copied()
            .collect();
        report.orphans.sort();
        if options.repair {
            let mut evict = Vec::new();
            for (d, path) in &corrupt_paths {
                let q = self.blobs.quarantine.join(format!(
                    "{}.{}",
                    d.to_hex(),
                    uuid::Uuid::new_v4().simple()
                ));
                fs::rename(path, &q).map_err(|e| Error::io("quarantine", path, e))?;
            }
            for d in &corrupt_inline {
                // Read again only here: verify keeps no blob it has checked.
                let Some(data) = self.catalog.inline_blob(d)? else {
                    continue;
                };
                let q = self.blobs.quarantine.join(format!(
                    "{}.{}",
                    d.to_hex(),
                    uuid::Uuid::new_v4().simple()
                ));
                fs::write(&q, data).map_err(|e| Error::io("quarantine", &q, e))?;
            }
            self.catalog.forget_inline(&corrupt_inline)?;
            for c in &report.corrupt {
                evict.extend(
                    c.artifacts
                        .iter()
                        .map(|a| (a.clone(), "blob corrupt".to_owned())),
                );
            }
            evict.extend(
                report
                    .missing
                    .iter()
                    .map(|m| (m.artifact.clone(), "blob missing".to_owned())),
            );
            self.evict(&evict)?;
            for p in &report.stray_files {
                let q = self
                    .blobs
                    .quarantine
                    .join(format!("stray.{}", uuid::Uuid::new_v4().simple()));
                fs::rename(p, &q).map_err(|e| Error::io("quarantine", p, e))?;
            }
            self.gc(&GcOptions::default())?;
        }
        Ok(report)
    }

    /// The distinct test ids that have records of `kind` (evicted ones included), in order;
    /// fast on large catalogs (one index lookup per test).
    pub fn test_ids(&self, kind: crate::ArtifactKind) -> Result<Vec<String>> {
        self.catalog.test_ids(kind.as_str())
    }

    /// Bytes by kind and by test, dedup and compression ratios.
    pub fn stats(&self) -> Result<Stats> {
        let conn = self.catalog.lock();
        let e = |ctx: &'static str| move |err| Error::catalog(&self.catalog.path, ctx, err);
        let mut s = Stats::default();
        let (live, evicted, logical): (i64, i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(evicted_at IS NULL), 0), COALESCE(SUM(evicted_at IS NOT NULL), 0), COALESCE(SUM(CASE WHEN evicted_at IS NULL THEN raw_size ELSE 0 END), 0) FROM artifacts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(e("count records"))?;
        s.live_records = live as u64;
        s.evicted_records = evicted as u64;
        s.logical_bytes = logical as u64;
        let (blobs, unique, stored): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(raw_size), 0), COALESCE(SUM(stored_size), 0) FROM blobs WHERE digest IN (SELECT digest FROM artifacts WHERE evicted_at IS NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(e("sum blobs"))?;
        s.blobs = blobs as u64;
        s.unique_bytes = unique as u64;
        s.stored_bytes = stored as u64;
        for (col, map) in [("kind", &mut s.by_kind), ("test_id", &mut s.by_test)] {
            let mut st = conn
                .prepare(&format!("SELECT {col}, COUNT(*), SUM(raw_size) FROM artifacts WHERE evicted_at IS NULL GROUP BY {col}"))
                .map_err(e("group records"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(e("group records"))?;
            for row in rows {
                let (k, n, b) = row.map_err(e("group records"))?;
                map.insert(
                    k,
                    Usage {
                        records: n as u64,
                        raw_bytes: b as u64,
                    },
                );
            }
        }
        Ok(s)
    }
}

/// Copies a verified blob to `out`, naming `id` in errors.
/// Checks the layout file's content: a version this code reads.
fn check_layout(content: &str, layout: PathBuf) -> Result<()> {
    let found: u32 = content.trim().parse().map_err(|_| Error::Invalid {
        what: "store layout file",
        detail: format!("{} does not hold a version number", layout.display()),
    })?;
    if found > LAYOUT_VERSION {
        return Err(Error::NewerFormat {
            path: layout,
            found,
            supported: LAYOUT_VERSION,
        });
    }
    Ok(())
}

fn copy_out(r: BlobReader, id: &str, out: &mut dyn Write) -> Result<u64> {
    let path = r.path().to_owned();
    r.copy_to(out).map_err(|e| match e {
        // Not classified by errno: a full or read-only output is not the store's.
        Ok(source) => Error::Io {
            op: "write output of",
            path,
            source,
        },
        Err(e) => Error::io("read", &path, e).with_artifact(id),
    })
}

/// Whether a live record needs a blob (see `Catalog::insert_after`).
type Needed<'a> = dyn Fn(&Digest) -> Result<bool> + 'a;

fn new_record(blob: &PendingBlob, a: NewArtifact, now: chrono::DateTime<Utc>) -> ArtifactRecord {
    record_of_info(&info_of(blob), a, now)
}

fn record_of_info(
    blob: &BlobInfo<'_>,
    a: NewArtifact,
    now: chrono::DateTime<Utc>,
) -> ArtifactRecord {
    ArtifactRecord {
        id: uuid::Uuid::new_v4().to_string(),
        digest: blob.digest,
        test_id: a.test_id,
        run_id: a.run_id,
        kind: a.kind,
        name: a.name,
        raw_size: blob.raw_size,
        stored_size: blob.stored_size,
        created_at: a.created_at.unwrap_or(now),
        outcome: a.outcome,
        arch: a.arch,
        metadata: a.metadata,
        evicted: None,
    }
}

fn info_of(b: &PendingBlob) -> BlobInfo<'static> {
    BlobInfo {
        digest: b.digest,
        raw_size: b.raw_size,
        stored_size: b.stored_size,
        compressed: b.compressed,
        inline: None,
    }
}

impl ArtifactStore {
    /// A dry run: every live artifact with whether `policy` keeps it and why. Nothing changes
    /// (but with a remote, every worker's records are pulled first, so that the plan judges
    /// the whole shared store, not this worker's part of it).
    pub fn plan_retention(
        &self,
        policy: &(impl crate::retention::RetentionPolicy + ?Sized),
        now: chrono::DateTime<Utc>,
    ) -> Result<crate::retention::RetentionPlan> {
        if self.remote.is_some() {
            self.pull_records()?;
        }
        let records = self.catalog.query(&Query::new())?;
        let ctx = crate::retention::RetentionContext::new(now, &records);
        Ok(crate::retention::plan(policy, &ctx))
    }

    /// Applies a plan: marks the removed artifacts evicted (records stay, with the reason) and
    /// collects blobs no live record needs; with a remote, publishes the evictions and
    /// collects the remote too ([`gc_remote`](Self::gc_remote)).
    pub fn apply_retention(
        &self,
        plan: &crate::retention::RetentionPlan,
    ) -> Result<RetentionOutcome> {
        let ids: Vec<_> = plan
            .removed()
            .map(|d| (d.artifact.clone(), d.reason.clone()))
            .collect();
        let evicted = self.evict(&ids)?;
        let gc = self.gc(&GcOptions::default())?;
        let remote_gc = match self.remote {
            Some(_) => Some(self.gc_remote(&crate::RemoteGcOptions::default())?),
            None => None,
        };
        Ok(RetentionOutcome {
            records_evicted: evicted,
            gc,
            remote_gc,
        })
    }
}

/// What [`ArtifactStore::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOutcome {
    /// Records marked evicted.
    pub records_evicted: u64,
    /// The collection that followed.
    pub gc: GcReport,
    /// With a remote: the evictions were published and the remote collected (with the default
    /// grace period, and never past a live lease).
    pub remote_gc: Option<crate::RemoteGcReport>,
}
