//! A store shared through a remote: write-through pushes, pulling every worker's records,
//! leases, collection of the remote, and reads that fetch (and verify) remote blobs.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::blob::Durability;
use crate::catalog::BlobInfo;
use crate::error::{Error, Result};
use crate::model::ArtifactRecord;
use crate::remote::{
    BlobBackend, CONTENT, EVICTIONS, EvictionBatch, LEASES, LeaseObject, MAX_LEASE_OBJECT,
    MAX_RECORD_OBJECT, RECORDS, RecordBatch, RemoteRecord, blob_key, digest_of_key,
};
use crate::store::ArtifactStore;

/// Requests in flight at once when pushing a batch or fetching for one.
const PUSH_THREADS: usize = 8;
/// Blobs up to this size are uploaded without a `HEAD` first.
const SEND_WITHOUT_ASKING: u64 = 64 << 10;

/// The remote of a store and the lease this process holds on it.
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) backend: Arc<dyn BlobBackend>,
    /// When this process's lease began: blobs last written before are re-uploaded, not trusted.
    pub(crate) lease_start: Arc<Mutex<Option<DateTime<Utc>>>>,
}

/// What [`ArtifactStore::pull_records`] brought in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// Record objects read (those pulled before are skipped).
    pub objects_read: u64,
    /// Records added to the local catalog.
    pub records_added: u64,
    /// Records marked evicted from eviction objects.
    pub records_evicted: u64,
}

/// What [`ArtifactStore::push_run`] sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// Records sent.
    pub records: u64,
    /// Blobs uploaded (the others were there already).
    pub blobs_uploaded: u64,
}

/// Options for [`ArtifactStore::gc_remote`].
#[derive(Debug, Clone)]
pub struct RemoteGcOptions {
    /// Blobs written within this long are never removed, whatever the leases say (default one
    /// hour; it also absorbs clock differences between hosts).
    pub grace: Duration,
    /// Report without removing.
    pub dry_run: bool,
}

impl Default for RemoteGcOptions {
    fn default() -> Self {
        RemoteGcOptions {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What [`ArtifactStore::gc_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteGcReport {
    /// Blobs no record needs, older than the cutoff: removed.
    pub blobs_removed: u64,
    /// Their size.
    pub bytes_removed: u64,
    /// Blobs kept: needed, or too young to judge.
    pub blobs_kept: u64,
    /// Unneeded blobs kept because they are younger than the cutoff.
    pub blobs_too_young: u64,
    /// Leases of live writers seen.
    pub live_leases: u64,
    /// Nothing written after this was removed.
    pub cutoff: DateTime<Utc>,
}

/// A writer's lease on a shared remote: while it lives (renewed in the background), collections
/// remove nothing written after it began. [`Lease::release`] ends it and reports; dropping it
/// ends it too, waiting at most [`LEASE_DROP_WAIT`].
#[derive(Debug)]
pub struct Lease {
    key: String,
    started: DateTime<Utc>,
    /// `Some` until the lease is ended.
    live: Option<LiveLease>,
}

/// What ending a lease needs besides its key and start: the renewer to stop, the remote to
/// delete the object from, the store's slot.
#[derive(Debug)]
struct LiveLease {
    backend: Arc<dyn BlobBackend>,
    slot: Arc<Mutex<Option<DateTime<Utc>>>>,
    stop: mpsc::Sender<()>,
    renewer: std::thread::JoinHandle<()>,
}

impl LiveLease {
    /// Stops the renewer (waiting for it), forgets the lease that began at `started` in the
    /// store and deletes its object `key`.
    fn end(self, key: &str, started: DateTime<Utc>) -> Result<()> {
        drop(self.stop);
        let _ = self.renewer.join();
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if *slot == Some(started) {
                *slot = None;
            }
        }
        self.backend.delete(key)
    }
}

/// How long dropping a [`Lease`] waits for the renewer to stop and the remote to delete the
/// lease object; past it the drop returns and the work finishes on its own thread (should the
/// process exit first, the lease lapses `ttl` after its last renewal).
pub const LEASE_DROP_WAIT: Duration = Duration::from_secs(5);

impl Lease {
    /// When it began (the server's clock).
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }
    /// Its object's key in the remote.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Ends the lease now: stops the renewer and deletes the lease object, waiting for both
    /// (as long as the remote takes) and saying whether the remote took the deletion.
    pub fn release(mut self) -> Result<()> {
        match self.live.take() {
            Some(live) => live.end(&self.key, self.started),
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        // The join and the network call go to a thread of their own: a drop never blocks
        // longer than LEASE_DROP_WAIT, whatever the remote does.
        let (key, started) = (self.key.clone(), self.started);
        let (done, finished) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("artifact-store-lease-end".into())
            .spawn(move || {
                if let Err(e) = live.end(&key, started) {
                    // It lapses on its own once its ttl has passed.
                    tracing::warn!(lease = %key, error = %e, "removing the store's lease failed");
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = finished.recv_timeout(LEASE_DROP_WAIT);
        }
    }
}

/// Runs `f` over `items` on up to `threads` threads; the first error wins.
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    if items.len() <= 1 || threads <= 1 {
        return items.iter().try_for_each(f);
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items.len() {
                        return;
                    }
                    if let Err(e) = f(&items[i]) {
                        let mut slot = failed.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        next.store(items.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn get_small(backend: &dyn BlobBackend, key: &str, size: u64, max: u64) -> Result<Option<Vec<u8>>> {
    if size > max {
        return Err(Error::Remote {
            op: "read",
            location: format!("{}/{key}", backend.location()),
            artifact: None,
            detail: format!("{size} bytes, more than the {max} such an object may hold: refused"),
            permanent: true,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    let mut limited = LimitedWriter {
        inner: &mut buf,
        left: max,
    };
    let found = backend.get(key, &mut limited)?;
    Ok(found.map(|_| buf))
}

/// Small objects fetched eight at a time, in the order of `keys` (`None`: gone meanwhile).
fn fetch_small(backend: &dyn BlobBackend, keys: &[(String, u64)]) -> Result<Vec<Option<Vec<u8>>>> {
    let slots: Vec<Mutex<Option<Vec<u8>>>> = keys.iter().map(|_| Mutex::new(None)).collect();
    let indexed: Vec<usize> = (0..keys.len()).collect();
    parallel(&indexed, PUSH_THREADS, |&i| {
        let (key, size) = &keys[i];
        let got = get_small(backend, key, *size, MAX_RECORD_OBJECT)?;
        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = got;
        Ok(())
    })?;
    Ok(slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect())
}

/// Refuses to grow past `left` bytes (the remote is not trusted to send what it announced).
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.left {
            return Err(std::io::Error::other("object larger than announced"));
        }
        self.left -= b.len() as u64;
        self.inner.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    backend: &dyn BlobBackend,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Remote {
        op: "read",
        location: format!("{}/{key}", backend.location()),
        artifact: None,
        detail: format!("not a valid object of this store: {e}"),
        permanent: true,
    })
}

impl ArtifactStore {
    /// Shares this store through `backend`: from now on `add`/`add_many` return only once
    /// every blob and record of the call is in the remote too (after the local commit: a
    /// failed push leaves the artifacts stored locally, and [`push_run`](Self::push_run)
    /// sends them again), reads of blobs not held locally fetch them from the remote and verify
    /// them, and evictions are published. Writers sharing a remote with a collector should hold
    /// a [`lease`](Self::lease).
    pub fn with_remote(mut self, backend: Arc<dyn BlobBackend>) -> Self {
        self.remote = Some(Remote {
            backend,
            lease_start: Arc::new(Mutex::new(None)),
        });
        self
    }

    /// The remote, if the store has one.
    pub fn remote(&self) -> Option<&Arc<dyn BlobBackend>> {
        self.remote.as_ref().map(|r| &r.backend)
    }

    fn need_remote(&self) -> Result<&Remote> {
        self.remote.as_ref().ok_or_else(|| Error::Invalid {
            what: "operation",
            detail: "this store has no remote (see ArtifactStore::with_remote)".into(),
        })
    }

    /// Uploads a blob unless the remote has it already (same size, and when a lease is held,
    /// written after the lease began). Returns whether it was uploaded.
    fn push_blob(&self, remote: &Remote, b: &BlobInfo<'_>) -> Result<bool> {
        let backend = &*remote.backend;
        let key = blob_key(&b.digest);
        let lease_start = *remote.lease_start.lock().unwrap_or_else(|p| p.into_inner());
        // A small blob is cheaper to send again (the same bytes: content addressing) than to
        // ask about first.
        let ask_first = b.stored_size > SEND_WITHOUT_ASKING;
        if ask_first && let Some(f) = backend.stat(&key)? {
            let fresh = lease_start.is_none_or(|s| f.modified >= s);
            if f.size == b.stored_size && fresh {
                return Ok(false);
            }
        }
        let sent = match b.inline {
            Some(bytes) => backend.put(&key, &mut &bytes[..], bytes.len() as u64),
            None => self.send_local_blob(backend, &key, &b.digest),
        };
        match sent {
            Ok(()) => Ok(true),
            Err(e) => {
                // Writers racing on one blob: a server may abandon all but one multipart upload
                // of a key (Garage answers the others `NoSuchUpload`). The winner stored the
                // same bytes, so the blob is there all the same.
                match backend.stat(&key) {
                    Ok(Some(f)) if f.size == b.stored_size => Ok(false),
                    _ => Err(e),
                }
            }
        }
    }

    /// Uploads the local copy of blob `d` (a file, or the catalog's inline copy).
    fn send_local_blob(&self, backend: &dyn BlobBackend, key: &str, d: &Digest) -> Result<()> {
        let path = self.blobs.path_of(d);
        match File::open(&path) {
            Ok(mut f) => {
                let len = f.metadata().map_err(|e| Error::io("read", &path, e))?.len();
                backend.put(key, &mut f, len)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let data = self
                    .catalog
                    .inline_blob(d)?
                    .ok_or_else(|| Error::MissingBlob {
                        digest: *d,
                        path: path.clone(),
                        artifact: None,
                    })?;
                backend.put(key, &mut &data[..], data.len() as u64)
            }
            Err(e) => Err(Error::io("open", &path, e)),
        }
    }

    /// Sends blobs, then one record object for `rows` (after their local commit).
    pub(crate) fn push_rows(&self, rows: &[(BlobInfo<'_>, &ArtifactRecord)]) -> Result<u64> {
        let Some(remote) = &self.remote else {
            return Ok(0);
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seen = HashSet::new();
        let unique: Vec<_> = rows.iter().filter(|(b, _)| seen.insert(b.digest)).collect();
        let uploaded = AtomicUsize::new(0);
        parallel(&unique, PUSH_THREADS, |(b, r)| {
            if self
                .push_blob(remote, b)
                .map_err(|e| e.with_artifact(&r.id))?
            {
                uploaded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?;
        let batch = RecordBatch {
            version: 1,
            records: rows
                .iter()
                .map(|(b, r)| RemoteRecord {
                    record: (*r).clone(),
                    compressed: b.compressed,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&batch).expect("records serialise");
        let key = format!("{RECORDS}{}.json", uuid::Uuid::new_v4().simple());
        remote
            .backend
            .put(&key, &mut &body[..], body.len() as u64)
            .map_err(|e| e.with_artifact(&rows[0].1.id))?;
        Ok(uploaded.into_inner() as u64)
    }

    /// Sends every record of run `run_id` (and its blobs) to the remote again: after a push
    /// failed, or to publish a run stored before the remote was attached. Idempotent (pulls
    /// skip records they have).
    pub fn push_run(&self, run_id: &str) -> Result<PushReport> {
        self.need_remote()?;
        let records = self.query(&crate::Query::new().run(run_id))?;
        let infos = self.catalog.blob_infos(records.iter().map(|r| r.digest))?;
        let rows: Vec<(BlobInfo<'_>, &ArtifactRecord)> = records
            .iter()
            .map(|r| {
                let (raw_size, stored_size, compressed) = infos
                    .get(&r.digest)
                    .copied()
                    .unwrap_or((r.raw_size, r.stored_size, false));
                (
                    BlobInfo {
                        digest: r.digest,
                        raw_size,
                        stored_size,
                        compressed,
                        inline: None,
                    },
                    r,
                )
            })
            .collect();
        let mut report = PushReport::default();
        for chunk in rows.chunks(1000) {
            report.blobs_uploaded += self.push_rows(chunk)?;
            report.records += chunk.len() as u64;
        }
        Ok(report)
    }

    /// Publishes evictions to the remote (after the local commit).
    pub(crate) fn push_evictions(&self, ids: &[(String, String)]) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if ids.is_empty() {
            return Ok(());
        }
        let batch = EvictionBatch {
            version: 1,
            evicted: ids.to_vec(),
            at: Utc::now(),
        };
        let body = serde_json::to_vec(&batch).expect("evictions serialise");
        let key = format!("{EVICTIONS}{}.json", uuid::Uuid::new_v4().simple());
        remote.backend.put(&key, &mut &body[..], body.len() as u64)
    }

    /// Brings every record and eviction published to the remote (by any worker) into the local
    /// catalog: afterwards one query sees every worker's artifacts, and reading one fetches its
    /// blob from the remote. Objects pulled before are skipped. Records from the remote are
    /// validated; a malformed object fails the pull, naming it.
    pub fn pull_records(&self) -> Result<PullReport> {
        let remote = self.need_remote()?;
        let backend = &*remote.backend;
        let mut report = PullReport::default();
        let done = self.catalog.pulled_keys()?;
        let todo: Vec<(String, u64)> = backend
            .list(RECORDS)?
            .into_iter()
            .filter(|(key, _)| !done.contains(key) && key.ends_with(".json"))
            .map(|(key, facts)| (key, facts.size))
            .collect();
        // Fetched several at once, a window at a time; inserted in key order.
        for window in todo.chunks(64) {
            let fetched = fetch_small(backend, window)?;
            for ((key, _), bytes) in window.iter().zip(fetched) {
                let Some(bytes) = bytes else {
                    continue;
                };
                self.insert_record_object(backend, key, &bytes, &mut report)?;
            }
        }
        for (key, facts) in backend.list(EVICTIONS)? {
            if done.contains(&key) || !key.ends_with(".json") {
                continue;
            }
            let Some(bytes) = get_small(backend, &key, facts.size, MAX_RECORD_OBJECT)? else {
                continue;
            };
            let batch: EvictionBatch = parse_json(backend, &key, &bytes)?;
            report.records_evicted += self.catalog.evict(&batch.evicted, batch.at)?;
            self.catalog.mark_pulled(&key)?;
            report.objects_read += 1;
        }
        Ok(report)
    }

    /// Inserts the records of one pulled record object.
    fn insert_record_object(
        &self,
        backend: &dyn BlobBackend,
        key: &str,
        bytes: &[u8],
        report: &mut PullReport,
    ) -> Result<()> {
        let batch: RecordBatch = parse_json(backend, key, bytes)?;
        let mut rows = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            validate_remote(&r.record).map_err(|detail| Error::Remote {
                op: "read",
                location: format!("{}/{key}", backend.location()),
                artifact: Some(r.record.id.clone()),
                detail,
                permanent: true,
            })?;
            rows.push((
                BlobInfo {
                    digest: r.record.digest,
                    raw_size: r.record.raw_size,
                    stored_size: r.record.stored_size,
                    compressed: r.compressed,
                    inline: None,
                },
                &r.record,
            ));
        }
        report.records_added += self.catalog.insert_pulled(&rows, key)?;
        report.objects_read += 1;
        Ok(())
    }

    /// Takes a lease on the remote for this writer, renewed in the background every third of
    /// `ttl`, ended when dropped (a crashed writer's lease lapses `ttl` after its last
    /// renewal). While it lives, [`gc_remote`](Self::gc_remote) anywhere removes nothing
    /// written after it began, and this store re-uploads rather than trusts older blobs it
    /// needs.
    pub fn lease(&self, ttl: Duration) -> Result<Lease> {
        let remote = self.need_remote()?;
        let backend = remote.backend.clone();
        let key = format!("{LEASES}{}.json", uuid::Uuid::new_v4().simple());
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let mut obj = LeaseObject {
            host,
            pid: std::process::id(),
            started: None,
            ttl_secs: ttl.as_secs().max(1),
        };
        let write = |backend: &dyn BlobBackend, obj: &LeaseObject| {
            let body = serde_json::to_vec(obj).expect("lease serialises");
            backend.put(&key, &mut &body[..], body.len() as u64)
        };
        write(&*backend, &obj)?;
        let started = backend
            .stat(&key)?
            .map(|f| f.modified)
            .unwrap_or_else(Utc::now);
        obj.started = Some(started);
        write(&*backend, &obj)?;
        *remote.lease_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        let (stop, stopped) = mpsc::channel::<()>();
        let renewer = {
            let backend = backend.clone();
            let key = key.clone();
            let every = (ttl / 3).max(Duration::from_millis(200));
            std::thread::Builder::new()
                .name("artifact-store-lease".into())
                .spawn(move || {
                    let body = serde_json::to_vec(&obj).expect("lease serialises");
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                        // A failed renewal is retried at the next tick; the lease lapses only
                        // if they keep failing for `ttl`.
                        if let Err(e) = backend.put(&key, &mut &body[..], body.len() as u64) {
                            tracing::warn!(
                                lease = %key,
                                error = %e,
                                "renewing the store's lease failed; retried at the next tick"
                            );
                        }
                    }
                })
                .map_err(|e| Error::io("start the lease renewer for", LEASES, e))?
        };
        Ok(Lease {
            key,
            started,
            live: Some(LiveLease {
                backend,
                slot: remote.lease_start.clone(),
                stop,
                renewer,
            }),
        })
    }

    /// Removes blobs from the remote that no record (of any worker) needs, safely while
    /// writers holding leases go on: first the live leases give a cutoff (the oldest lease's
    /// start, and never later than `grace` ago), then the blobs are listed, then every record
    /// is pulled; only unneeded blobs last written before the cutoff go.
    pub fn gc_remote(&self, options: &RemoteGcOptions) -> Result<RemoteGcReport> {
        let remote = self.need_remote()?;
        let backend = &*remote.backend;
        let now = Utc::now();
        let grace = chrono::Duration::from_std(options.grace).unwrap_or(chrono::Duration::MAX);
        let mut cutoff = now - grace;
        let mut live_leases = 0;
        for (key, facts) in backend.list(LEASES)? {
            let Some(bytes) = get_small(backend, &key, facts.size, MAX_LEASE_OBJECT)? else {
                continue;
            };
            // An unreadable lease is treated as live from its last write: never unsafe.
            let (started, ttl) = match serde_json::from_slice::<LeaseObject>(&bytes) {
                Ok(l) => (l.started.unwrap_or(facts.modified), l.ttl_secs),
                Err(_) => (facts.modified, 24 * 3600),
            };
            if facts.modified + chrono::Duration::seconds(ttl as i64) > now {
                live_leases += 1;
                cutoff = cutoff.min(started.min(facts.modified));
            }
        }
        let blobs = backend.list(CONTENT)?;
        self.pull_records()?;
        let live = self.catalog.live_digests()?;
        let mut report = RemoteGcReport {
            blobs_removed: 0,
            bytes_removed: 0,
            blobs_kept: 0,
            blobs_too_young: 0,
            live_leases,
            cutoff,
        };
        for (key, facts) in blobs {
            let Some(d) = digest_of_key(&key) else {
                continue;
            };
            if live.contains(&d) {
                report.blobs_kept += 1;
            } else if facts.modified >= cutoff {
                report.blobs_kept += 1;
                report.blobs_too_young += 1;
            } else {
                if !options.dry_run {
                    backend.delete(&key)?;
                }
                report.blobs_removed += 1;
                report.bytes_removed += facts.size;
            }
        }
        Ok(report)
    }

    /// Fetches blob `d` from the remote into the local store, verified. `Ok(false)` if the
    /// remote does not have it.
    pub(crate) fn fetch_remote(&self, d: &Digest) -> Result<bool> {
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        let backend = &*remote.backend;
        let key = blob_key(d);
        let tmp = self.blobs.tmp.join(format!(
            "{}.{}.fetch",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            let Some(size) = backend.get(&key, &mut f)? else {
                return Ok(false);
            };
            if self.blobs.durability == Durability::Fsync {
                f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
            }
            drop(f);
            match self.blobs.verify_file_keeping_tree(&tmp, d) {
                Ok(_) => {}
                Err(Error::Corrupt { detail, .. }) => {
                    return Err(Error::Corrupt {
                        digest: *d,
                        path: PathBuf::from(format!("{}/{key}", backend.location())),
                        artifact: None,
                        detail,
                    });
                }
                Err(e) => return Err(e),
            }
            self.blobs.commit(
                &tmp,
                &self.blobs.path_of(d),
                d,
                size,
                self.blobs.durability == Durability::Fsync,
            )?;
            Ok(true)
        })();
        let _ = fs::remove_file(&tmp);
        res
    }

    /// Fetches the blobs among `digests` that are not held locally, several at once (before a
    /// batch read). Missing and corrupt ones are left for the reads to report.
    pub(crate) fn prefetch(&self, digests: &[Digest]) -> Result<()> {
        if self.remote.is_none() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for d in digests {
            if seen.insert(*d) && !self.has_blob(d)? {
                missing.push(*d);
            }
        }
        parallel(&missing, PUSH_THREADS, |d| match self.fetch_remote(d) {
            Ok(_) | Err(Error::Corrupt { .. }) => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// Whether the remote holds blob `d` (false without a remote).
    pub(crate) fn remote_has(&self, d: &Digest) -> Result<bool> {
        match &self.remote {
            Some(r) => Ok(r.backend.stat(&blob_key(d))?.is_some()),
            None => Ok(false),
        }
    }
}

/// Checks a record read from the remote (which is not trusted).
fn validate_remote(r: &ArtifactRecord) -> std::result::Result<(), String> {
    let plain = |s: &str| !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control);
    if !plain(&r.id) || r.id.len() > 128 {
        return Err("record with a missing or malformed id".into());
    }
    if !plain(&r.test_id) || !plain(&r.run_id) {
        return Err("record with a missing or malformed test or run id".into());
    }
    if r.name.len() > 4096 || r.metadata.len() > 1024 {
        return Err("record with an oversized name or metadata".into());
    }
    Ok(())
}
