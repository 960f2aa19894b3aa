//! Artifact endpoints: listing, one record, verified content with `Range`, store statistics.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use artifact_store::{ArtifactKind, ArtifactRecord, ArtifactStore, Digest, Query, TestOutcome};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{ApiError, ApiState, blocking, validate};

/// Most records one listing returns.
pub(crate) const MAX_LIMIT: u64 = 10_000;
/// Records a listing returns without `limit`.
pub(crate) const DEFAULT_LIMIT: u64 = 1_000;
/// Chunks a download is sent in.
const CHUNK: usize = 1 << 20;
/// Semaphore units are KiB (permits are counted in `u32`).
const UNIT: u64 = 1024;
/// Downloads verified into temp files at once (verifying or sending): bounds the temp space
/// to this many of the largest blobs; more requests wait their turn. Only blobs without a tree
/// (see [`STREAM_MIN`]) go through temp files.
pub const FILES_IN_FLIGHT: usize = 4;
/// Content larger than this (or than what is held in memory) is streamed when its blob has a
/// tree ([`ArtifactStore::open_range`]): each piece is verified against the digest before it
/// is sent, so sending overlaps with reading and hashing and nothing is staged in temp files.
/// A corruption found after the status line went out ends the connection early (the body is
/// shorter than its `Content-Length`, which every HTTP client reports) and is logged with the
/// repair command; the bytes sent before it were verified. Smaller content is verified whole
/// before the status line, so its corruption is always a `500` naming the repair.
pub const STREAM_MIN: u64 = 4 << 20;
/// Pieces of a streamed download in flight between the reader and the connection.
const STREAM_DEPTH: usize = 4;

/// How downloads are verified before they are sent: memory for what fits, else temp files; and
/// the content verified last, kept for the next requests.
#[derive(Debug)]
pub(crate) struct Downloads {
    /// Verifications in flight: half the budget.
    memory: Arc<Semaphore>,
    /// That half, in semaphore units.
    memory_units: u32,
    /// The largest blob held in memory (a quarter of the budget).
    in_memory_max: u64,
    /// Downloads through temp files in flight.
    files: Arc<Semaphore>,
    temp_dir: PathBuf,
    cache: Mutex<Cache>,
    buffers: Arc<Buffers>,
}

/// Buffers content was verified into, kept for the next verification (up to a quarter of the
/// budget): a fresh buffer costs the kernel a zeroed page per 4 KiB written, as much as the
/// decoding itself.
#[derive(Debug)]
pub(crate) struct Buffers {
    idle: Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl Buffers {
    /// An empty buffer of at least `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let best = idle
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut b = idle.swap_remove(i);
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= self.max {
            idle.push(buf);
        } else if let Some(i) = (0..idle.len()).min_by_key(|&i| idle[i].capacity())
            && idle[i].capacity() < buf.capacity()
            && held - idle[i].capacity() + buf.capacity() <= self.max
        {
            idle[i] = buf;
        }
    }
}

/// A buffer of verified content that goes back to its pool when the last `Bytes` of it drops.
struct Pooled {
    buf: Vec<u8>,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

impl Downloads {
    pub(crate) fn new(budget: u64, cache: bool, temp_dir: PathBuf) -> Self {
        let units = (budget / 2 / UNIT).clamp(1, u64::from(u32::MAX)) as usize;
        Downloads {
            memory: Arc::new(Semaphore::new(units)),
            memory_units: units as u32,
            in_memory_max: budget / 4,
            files: Arc::new(Semaphore::new(FILES_IN_FLIGHT)),
            temp_dir,
            cache: Mutex::new(Cache {
                capacity: if cache { budget / 2 } else { 0 },
                ..Cache::default()
            }),
            buffers: Arc::new(Buffers {
                idle: Mutex::new(Vec::new()),
                max: (budget / 4) as usize,
            }),
        }
    }

    fn cached(&self, d: &Digest) -> Option<Pieces> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(d)
    }

    fn caching(&self) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capacity
            > 0
    }

    fn keep(&self, d: Digest, b: Pieces) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(d, b)
    }
}

/// Content verified earlier, by digest, least recently used out first. What it holds are the
/// very bytes that were verified (never re-read from disk), so serving them is serving
/// verified content; a digest names one content forever.
#[derive(Debug, Default)]
struct Cache {
    capacity: u64,
    held: u64,
    tick: u64,
    entries: HashMap<Digest, (Pieces, u64)>,
}

/// Verified content in memory: one piece when verified whole, the pieces it was sent in when
/// streamed.
#[derive(Debug, Clone)]
struct Pieces(Arc<[Bytes]>);

impl Pieces {
    fn len(&self) -> u64 {
        self.0.iter().map(|b| b.len() as u64).sum()
    }

    /// `start..end` of the content, as slices of the pieces (no copy).
    fn slice(&self, start: u64, end: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0u64;
        for p in self.0.iter() {
            let (a, b) = (at, at + p.len() as u64);
            at = b;
            if b <= start || a >= end {
                continue;
            }
            out.push(p.slice((start.max(a) - a) as usize..(end.min(b) - a) as usize));
        }
        out
    }
}

impl Cache {
    fn get(&mut self, d: &Digest) -> Option<Pieces> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(d).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn put(&mut self, d: Digest, b: Pieces) {
        let len = b.len();
        if len > self.capacity || self.entries.contains_key(&d) {
            return;
        }
        while self.held + len > self.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((gone, _)) = self.entries.remove(&oldest) {
                self.held -= gone.len();
            }
        }
        self.tick += 1;
        self.held += len;
        self.entries.insert(d, (b, self.tick));
    }
}

/// The listing's filters: those of the store's `Query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    test: Option<String>,
    run: Option<String>,
    kind: Option<String>,
    arch: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    include_evicted: bool,
    #[serde(default)]
    newest_first: bool,
}

pub(crate) fn query_rejection(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", e.body_text()))
}

fn time(param: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "`{param}={v}` is not an RFC 3339 time ({e}): write it like 2026-01-31T12:00:00Z"
            ))
        })
}

impl ListParams {
    fn query(&self) -> Result<Query, ApiError> {
        let mut q = Query::new()
            .include_evicted(self.include_evicted)
            .newest_first(self.newest_first);
        if let Some(t) = &self.test {
            validate::test_id(t)?;
            q = q.test(t);
        }
        if let Some(r) = &self.run {
            validate::run_id(r)?;
            q = q.run(r);
        }
        if let Some(k) = &self.kind {
            let kind: ArtifactKind = k.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown kind `{k}`: one of {}",
                    ArtifactKind::ALL.map(|k| k.as_str()).join(", ")
                ))
            })?;
            q = q.kind(kind);
        }
        if let Some(a) = &self.arch {
            q = q.arch(a);
        }
        if let Some(o) = &self.outcome {
            let outcome: TestOutcome = o.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown outcome `{o}`: one of {}",
                    TestOutcome::ALL.map(|k| k.as_str()).join(", ")
                ))
            })?;
            q = q.outcome(outcome);
        }
        if let Some(s) = &self.since {
            q = q.since(time("since", s)?);
        }
        if let Some(u) = &self.until {
            q = q.until(time("until", u)?);
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "`limit={limit}`: between 1 and {MAX_LIMIT}"
            )));
        }
        Ok(q.limit(limit))
    }
}

/// `GET /api/v1/artifacts`: records matching the filters, oldest first (the store's order) or
/// newest first.
pub(crate) async fn list(
    State(state): State<ApiState>,
    params: Result<axum::extract::Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<ArtifactRecord>>, ApiError> {
    let params = params.map_err(query_rejection)?;
    let q = params.query()?;
    let store = state.store();
    let records = blocking(move || Ok(store.query(&q)?)).await?;
    Ok(Json(records))
}

/// `GET /api/v1/artifacts/{id}`.
pub(crate) async fn record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ArtifactRecord>, ApiError> {
    validate::artifact_id(&id)?;
    let store = state.store();
    Ok(Json(blocking(move || Ok(store.record_of(&id)?)).await?))
}

/// `GET /api/v1/store/stats`.
pub(crate) async fn stats(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.store();
    let stats = blocking(move || Ok(store.stats()?)).await?;
    let mut v = serde_json::to_value(&stats).map_err(|e| ApiError::internal(e.to_string()))?;
    v["dedup_ratio"] = stats.dedup_ratio().into();
    v["compression_ratio"] = stats.compression_ratio().into();
    Ok(Json(v).into_response())
}

/// The content type of an artifact, from its name, else its kind. Text is UTF-8 (lossy bytes
/// are the client's to handle); guest-made HTML and SVG are sent as text, never as a page.
pub(crate) fn content_type(record: &ArtifactRecord) -> &'static str {
    const TEXT: &str = "text/plain; charset=utf-8";
    let name = record.name.to_ascii_lowercase();
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "json" => return "application/json",
        "jsonl" | "ndjson" => return "application/x-ndjson",
        "png" => return "image/png",
        "jpg" | "jpeg" => return "image/jpeg",
        "gif" => return "image/gif",
        "xml" => return "application/xml",
        "gz" | "tgz" => return "application/gzip",
        "zst" => return "application/zstd",
        "xz" => return "application/x-xz",
        "tar" => return "application/x-tar",
        "pdf" => return "application/pdf",
        "txt" | "log" | "out" | "err" | "csv" | "tap" | "ktap" | "html" | "htm" | "svg" => {
            return TEXT;
        }
        _ => {}
    }
    match record.kind.as_str() {
        "log" | "console" | "trace" => TEXT,
        "result" | "report" => "application/json",
        "metrics" => "application/x-ndjson",
        "screenshot" => "image/png",
        _ => "application/octet-stream",
    }
}

/// One byte range, inclusive start, exclusive end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
}

/// The `Range` header against a content of `len` bytes: `None` for the whole content.
fn range(headers: &HeaderMap, len: u64, etag: &str) -> Result<Option<Span>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    // `If-Range` with another validator: the whole content.
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return Ok(None);
    }
    let unsatisfiable = |why: String| {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, why)
            .with_header(header::CONTENT_RANGE, format!("bytes */{len}"))
    };
    let text = value
        .to_str()
        .map_err(|_| unsatisfiable("the Range header is not ASCII".into()))?;
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        // Another unit: ignored, as the HTTP semantics say.
        return Ok(None);
    };
    if spec.contains(',') {
        return Err(unsatisfiable(format!(
            "`Range: {text}` asks for several ranges: ask for one at a time"
        )));
    }
    let (a, b) = spec
        .trim()
        .split_once('-')
        .ok_or_else(|| unsatisfiable(format!("`Range: {text}` is malformed: bytes=START-END")))?;
    let num = |s: &str| -> Result<u64, ApiError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(unsatisfiable(format!(
                "`Range: {text}` is malformed: bytes=START-END"
            )));
        }
        s.parse().map_err(|_| {
            unsatisfiable(format!(
                "`Range: {text}` is past any content (this one has {len} bytes)"
            ))
        })
    };
    let span = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n = num(suffix)?;
            if n == 0 {
                return Err(unsatisfiable(format!("`Range: {text}` asks for no bytes")));
            }
            Span {
                start: len.saturating_sub(n),
                end: len,
            }
        }
        (start, "") => Span {
            start: num(start)?,
            end: len,
        },
        (start, last) => {
            let (s, l) = (num(start)?, num(last)?);
            if l < s {
                return Err(unsatisfiable(format!(
                    "`Range: {text}` ends before it starts"
                )));
            }
            Span {
                start: s,
                end: l.saturating_add(1).min(len),
            }
        }
    };
    if span.start >= len {
        return Err(unsatisfiable(format!(
            "`Range: {text}` starts past the end of the content ({len} bytes)"
        )));
    }
    Ok(Some(span))
}

/// Verified content, ready to send.
enum Verified {
    Memory(Bytes),
    File(File),
}

/// A writer that refuses to grow past `max` bytes (a blob longer than its record says).
struct Bounded<W> {
    inner: W,
    written: u64,
    max: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            return Err(io::Error::other(format!(
                "the content is longer than the {} bytes its record says",
                self.max
            )));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the whole content through the store's verifying reader into memory or a temp file.
/// Nothing is returned unless the digest matched.
fn verify(
    store: &ArtifactStore,
    record: &ArtifactRecord,
    in_memory: Option<&Arc<Buffers>>,
    temp_dir: &std::path::Path,
) -> Result<Verified, ApiError> {
    let check_len = |n: u64| {
        if n == record.raw_size {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "artifact {}: its content has {n} bytes but its record says {}: repair the store with `{}`",
                record.id,
                record.raw_size,
                crate::REPAIR_COMMAND
            )))
        }
    };
    if let Some(buffers) = in_memory {
        let mut out = Bounded {
            inner: buffers.take(record.raw_size as usize),
            written: 0,
            max: record.raw_size,
        };
        let read = store.read_to(&record.id, &mut out);
        let buf = Pooled {
            buf: out.inner,
            home: buffers.clone(),
        };
        check_len(read?)?;
        return Ok(Verified::Memory(Bytes::from_owner(buf)));
    }
    let file = tempfile::tempfile_in(temp_dir).map_err(|e| {
        ApiError::internal(format!(
            "cannot create a temporary file in {} to verify artifact {} into: {e}",
            temp_dir.display(),
            record.id
        ))
    })?;
    let mut out = Bounded {
        inner: BufWriter::with_capacity(CHUNK, file),
        written: 0,
        max: record.raw_size,
    };
    let n = store.read_to(&record.id, &mut out)?;
    check_len(n)?;
    let mut file = out.inner.into_inner().map_err(|e| {
        ApiError::internal(format!(
            "cannot write the temporary copy of artifact {}: {}",
            record.id,
            e.error()
        ))
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| ApiError::internal(format!("temporary copy of {}: {e}", record.id)))?;
    Ok(Verified::File(file))
}

/// What the first trip to the blocking pool found besides the record.
enum Early {
    /// Not read: a `HEAD`, an evicted artifact, a `304`, or no memory free at once.
    Nothing,
    /// Verified earlier; served from those bytes.
    Cached(Pieces),
    /// Streamed: the first piece verified (or how that failed), the reader of the rest.
    Stream(Result<(Option<Vec<u8>>, artifact_store::VerifiedRange), ApiError>),
    /// Verified now (or how that failed), with the memory it holds.
    Verified(Result<Verified, ApiError>, Option<OwnedSemaphorePermit>),
}

fn etag_of(record: &ArtifactRecord) -> String {
    format!("\"{}\"", record.digest)
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers.get(header::IF_NONE_MATCH).is_some_and(|inm| {
        inm.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    })
}

/// Semaphore units of a content of `len` bytes.
fn units(len: u64) -> u32 {
    len.div_ceil(UNIT).max(1).min(u64::from(u32::MAX)) as u32
}

/// `GET /api/v1/artifacts/{id}/content`: the content, no byte sent before it was verified.
pub(crate) async fn content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate::artifact_id(&id)?;
    let head = method == Method::HEAD;
    // One trip to the blocking pool for the record and, when the memory for it is free at
    // once, the verification too: each hop costs a thread hand-off, which on a loaded host
    // is worth more than the catalog read.
    let (record, early) = {
        let state = state.clone();
        let headers = headers.clone();
        blocking(move || {
            let store = state.store();
            let record = store.record_of(&id)?;
            if head || record.evicted.is_some() || not_modified(&headers, &etag_of(&record)) {
                return Ok((record, Early::Nothing));
            }
            let downloads = &state.inner.downloads;
            let len = record.raw_size;
            if let Some(bytes) = downloads.cached(&record.digest) {
                return Ok((record, Early::Cached(bytes)));
            }
            if len > STREAM_MIN.min(downloads.in_memory_max)
                && let Ok(span) = range(&headers, len, &etag_of(&record))
            {
                let Span { start, end } = span.unwrap_or(Span { start: 0, end: len });
                match store.open_range(&record.id, start..end) {
                    Ok(Some(mut rest)) => {
                        // The first piece before the status line: a blob damaged there gets
                        // a clear error, not a cut connection.
                        let first = rest.next().transpose();
                        let early = first.map(|f| (f, rest)).map_err(ApiError::from);
                        return Ok((record, Early::Stream(early)));
                    }
                    Ok(None) => {}
                    Err(e) => return Ok((record, Early::Stream(Err(e.into())))),
                }
            }
            let early = if len > downloads.in_memory_max {
                match downloads.files.clone().try_acquire_many_owned(1) {
                    Ok(permit) => Early::Verified(
                        verify(&store, &record, None, &downloads.temp_dir),
                        Some(permit),
                    ),
                    Err(_) => Early::Nothing,
                }
            } else if let Ok(permit) = downloads.memory.clone().try_acquire_many_owned(units(len)) {
                let verified = verify(
                    &store,
                    &record,
                    Some(&downloads.buffers),
                    &downloads.temp_dir,
                );
                Early::Verified(verified, Some(permit))
            } else {
                Early::Nothing
            };
            Ok((record, early))
        })
        .await?
    };
    if let Some(ev) = &record.evicted {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!(
                "artifact {}: its content was evicted ({}, {}); its record remains",
                record.id, ev.reason, ev.at
            ),
        ));
    }
    let len = record.raw_size;
    let etag = etag_of(&record);
    if not_modified(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let span = range(&headers, len, &etag)?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type(&record))
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header(header::CONTENT_DISPOSITION, disposition(&record.name));
    let Span { start, end } = span.unwrap_or(Span { start: 0, end: len });
    if span.is_some() {
        builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    builder = builder.header(header::CONTENT_LENGTH, end - start);
    let build = |b: axum::http::response::Builder, body: Body| {
        b.body(body)
            .map_err(|e| ApiError::internal(format!("cannot build the answer: {e}")))
    };
    if head {
        // No byte is sent: nothing to verify.
        return build(builder, Body::empty());
    }

    let downloads = &state.inner.downloads;
    let (verified, permit) = match early {
        Early::Cached(pieces) => {
            return build(builder, pieces_body(pieces.slice(start, end), None));
        }
        Early::Stream(streamed) => {
            let (first, rest) = streamed?;
            // Memory: the pieces in flight, and the whole content when it is kept for the
            // next requests (a whole download of what fits the cache, memory free at once).
            let whole = downloads.caching() && span.is_none() && len <= downloads.in_memory_max;
            let in_flight = units(len.min(STREAM_DEPTH as u64 * (1 << 20) + (1 << 20)))
                .min(downloads.memory_units);
            let (keep, permit) = match whole
                .then(|| {
                    downloads
                        .memory
                        .clone()
                        .try_acquire_many_owned(units(len))
                        .ok()
                })
                .flatten()
            {
                Some(p) => (true, p),
                None => (
                    false,
                    downloads
                        .memory
                        .clone()
                        .acquire_many_owned(in_flight)
                        .await
                        .map_err(|_| ApiError::internal("the download pool is closed"))?,
                ),
            };
            let body = stream_body(state.clone(), record.clone(), first, rest, keep, permit);
            return build(builder, body);
        }
        Early::Verified(verified, permit) => (verified?, permit),
        Early::Nothing => {
            // The memory or the temp files were taken by other downloads: wait, then verify.
            let in_memory = len <= downloads.in_memory_max;
            let (pool, n) = if in_memory {
                (&downloads.memory, units(len))
            } else {
                (&downloads.files, 1)
            };
            let permit = pool
                .clone()
                .acquire_many_owned(n)
                .await
                .map_err(|_| ApiError::internal("the download pool is closed"))?;
            let store = state.store();
            let temp_dir = downloads.temp_dir.clone();
            let buffers = in_memory.then(|| downloads.buffers.clone());
            let verified = blocking({
                let record = record.clone();
                move || verify(&store, &record, buffers.as_ref(), &temp_dir)
            })
            .await?;
            (verified, Some(permit))
        }
    };
    let body = match verified {
        Verified::Memory(bytes) => {
            downloads.keep(record.digest, Pieces(Arc::new([bytes.clone()])));
            memory_body(bytes.slice(start as usize..end as usize), permit)
        }
        Verified::File(file) => file_body(file, start, end, permit),
    };
    build(builder, body)
}

/// `inline; filename="<name>"` with the name made header-safe.
fn disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("inline; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// Memory content: the permit is released when the last chunk has gone.
fn memory_body(bytes: Bytes, permit: Option<OwnedSemaphorePermit>) -> Body {
    struct Held {
        bytes: Bytes,
        _permit: Option<OwnedSemaphorePermit>,
    }
    impl AsRef<[u8]> for Held {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }
    Body::from(Bytes::from_owner(Held {
        bytes,
        _permit: permit,
    }))
}

/// Cached content's slices.
fn pieces_body(mut slices: Vec<Bytes>, permit: Option<OwnedSemaphorePermit>) -> Body {
    if slices.len() == 1 {
        return memory_body(slices.pop().expect("one slice"), permit);
    }
    Body::from_stream(futures::stream::iter(
        slices.into_iter().map(Ok::<_, std::convert::Infallible>),
    ))
}

/// A streamed download: `first`, then the rest of the pieces, each verified before it is
/// read from the channel; read on the blocking pool. On a corruption the body ends with an
/// error (hyper then closes the connection before the announced length) and the server logs
/// which artifact and how to repair it. The permit is released when the last piece is sent.
fn stream_body(
    state: ApiState,
    record: ArtifactRecord,
    first: Option<Vec<u8>>,
    rest: artifact_store::VerifiedRange,
    keep: bool,
    permit: OwnedSemaphorePermit,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(STREAM_DEPTH);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut rest = rest;
        let buffers = state.inner.downloads.buffers.clone();
        let mut kept = keep.then(Vec::new);
        let mut next = first.map(Bytes::from);
        loop {
            let b = match next.take() {
                Some(b) => b,
                None => {
                    // Pooled buffers: a fresh one costs a zeroed page per 4 KiB.
                    let mut buf = buffers.take(artifact_store::MAX_PIECE);
                    match rest.next_into(&mut buf) {
                        None => {
                            buffers.give(buf);
                            break;
                        }
                        Some(Ok(())) => Bytes::from_owner(Pooled {
                            buf,
                            home: buffers.clone(),
                        }),
                        Some(Err(e)) => {
                            tracing::error!(
                                artifact = %record.id,
                                "download cut short: {e}; repair the store with `{}`",
                                crate::REPAIR_COMMAND
                            );
                            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                            return;
                        }
                    }
                }
            };
            if let Some(k) = &mut kept {
                k.push(b.clone());
            }
            if tx.blocking_send(Ok(b)).is_err() {
                // The client went away.
                return;
            }
        }
        if let Some(k) = kept {
            state.inner.downloads.keep(record.digest, Pieces(k.into()));
        }
    });
    channel_body(rx)
}

/// A body of what a blocking task sends through `rx`; an error ends it early.
fn channel_body(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A verified temp file's `start..end`, read on the blocking pool in 1 MiB chunks; the permit
/// (its place among the temp files in flight) is released when the file is closed.
fn file_body(file: File, start: u64, end: u64, permit: Option<OwnedSemaphorePermit>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut pos = start;
        while pos < end {
            let n = CHUNK.min((end - pos) as usize);
            let mut buf = vec![0u8; n];
            let r = file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf));
            let failed = r.is_err();
            if tx.blocking_send(r).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    channel_body(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, len: u64) -> Result<Option<Span>, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        range(&h, len, "\"x\"")
    }

    #[test]
    fn ranges() {
        assert_eq!(
            r("bytes=0-9", 100).unwrap(),
            Some(Span { start: 0, end: 10 })
        );
        assert_eq!(
            r("bytes=90-", 100).unwrap(),
            Some(Span {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=-10", 100).unwrap(),
            Some(Span {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=-1000", 100).unwrap(),
            Some(Span { start: 0, end: 100 })
        );
        assert_eq!(
            r("bytes=50-1000", 100).unwrap(),
            Some(Span {
                start: 50,
                end: 100
            })
        );
        assert_eq!(r("items=0-1", 100).unwrap(), None);
        for bad in [
            "bytes=100-",
            "bytes=5-1",
            "bytes=0-1,4-5",
            "bytes=-0",
            "bytes=x-1",
            "bytes=99999999999999999999999-",
            "bytes=",
        ] {
            let e = r(bad, 100).unwrap_err();
            assert_eq!(e.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        }
    }
}
