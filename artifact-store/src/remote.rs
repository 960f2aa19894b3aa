//! Remote blobs and records: the [`BlobBackend`] seam, with a local directory
//! ([`DirBackend`]) and object storage through the `object_store` crate
//! ([`ObjectStoreBackend`]: S3 and S3-compatible servers such as Garage or MinIO) behind it.
//!
//! A store with a remote ([`ArtifactStore::with_remote`](crate::ArtifactStore::with_remote))
//! writes through: every artifact is committed locally, then its blob and a small record object
//! go to the remote, and `add` returns only once both are there. Several workers (CI jobs, lab
//! machines) share one remote; after a campaign,
//! [`pull_records`](crate::ArtifactStore::pull_records) brings every worker's records into a
//! local catalog, whose reads fetch the blobs they need from the remote, verified.
//!
//! # Layout of a remote
//!
//! ```text
//! <prefix>/content-v1/blake3/ab/cd/<64 hex digits>   blobs, encoded as in a local store
//! <prefix>/records-v1/<run>/<artifact id>.json       one record per artifact
//! <prefix>/leases-v1/<uuid>.json                     workers writing right now
//! ```
//!
//! # Concurrency without server-side conditions
//!
//! S3 servers differ in the conditional writes they honour (Garage 2.5 ignores
//! `If-None-Match: *`), so nothing here relies on them. Blob keys are content addresses: two
//! workers racing on one key write the same bytes, and a put is "create if absent" by a `HEAD`
//! first (a hit skips the upload) and a `HEAD` after (the size must match). Records have unique
//! keys. Garbage collection ([`gc_remote`](crate::ArtifactStore::gc_remote)) may run while
//! workers write because writers hold a [lease](crate::ArtifactStore::lease): a collector never
//! deletes a blob modified after the oldest live lease began (nor within a grace period), and a
//! writer holding a lease re-uploads, rather than trusts, a blob last written before its lease
//! began, so every blob a live writer relies on is younger than the collector's cutoff.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::error::{Error, Result};
use crate::model::ArtifactRecord;

/// Size and modification time of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectFacts {
    /// Bytes.
    pub size: u64,
    /// When it was last written (the server's clock).
    pub modified: DateTime<Utc>,
}

/// Where remote blobs and records live: a flat namespace of keys (`a/b/c`) holding byte strings.
/// The content addressing, verification and leases are built on top, the same for every backend.
pub trait BlobBackend: Send + Sync + fmt::Debug {
    /// Where, for messages: `s3://bucket/prefix`, `/srv/artifacts`.
    fn location(&self) -> String;
    /// Facts about object `key`, or `None` if there is none.
    fn stat(&self, key: &str) -> Result<Option<ObjectFacts>>;
    /// Writes object `key` (replacing it) from exactly `size` bytes of `source`. Large objects
    /// go up in parts with bounded memory. Either the whole object becomes visible or nothing.
    fn put(&self, key: &str, source: &mut dyn Read, size: u64) -> Result<()>;
    /// Streams object `key` into `out`. Returns `Ok(None)` if there is none, else the bytes
    /// copied.
    fn get(&self, key: &str, out: &mut dyn Write) -> Result<Option<u64>>;
    /// Deletes object `key` (a missing one is fine).
    fn delete(&self, key: &str) -> Result<()>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`).
    fn list(&self, prefix: &str) -> Result<Vec<(String, ObjectFacts)>>;
}

/// The key of a blob.
pub(crate) fn blob_key(d: &Digest) -> String {
    let hex = d.to_hex();
    format!("content-v1/blake3/{}/{}/{hex}", &hex[..2], &hex[2..4])
}

/// The digest a blob key names.
pub(crate) fn digest_of_key(key: &str) -> Option<Digest> {
    let hex = key.strip_prefix("content-v1/blake3/")?.rsplit('/').next()?;
    let d = Digest::from_hex(hex).ok()?;
    (blob_key(&d) == key).then_some(d)
}

pub(crate) const RECORDS: &str = "records-v1/";
pub(crate) const EVICTIONS: &str = "evictions-v1/";
pub(crate) const LEASES: &str = "leases-v1/";
pub(crate) const CONTENT: &str = "content-v1/";
/// Record and eviction objects larger than this are refused (a record is a few hundred bytes;
/// a batch holds one test's artifacts).
pub(crate) const MAX_RECORD_OBJECT: u64 = 16 << 20;
/// Lease objects larger than this are refused.
pub(crate) const MAX_LEASE_OBJECT: u64 = 64 << 10;

/// What a record object holds: the records of one batch of artifacts (one `add_many`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordBatch {
    /// Format of this object (1).
    pub(crate) version: u32,
    pub(crate) records: Vec<RemoteRecord>,
}

/// One record with what the catalog keeps of its blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RemoteRecord {
    pub(crate) record: ArtifactRecord,
    /// Whether the blob is zstd-compressed.
    pub(crate) compressed: bool,
}

/// What an eviction object holds: records whose blobs retention or repair gave up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EvictionBatch {
    pub(crate) version: u32,
    /// `(artifact id, reason)`.
    pub(crate) evicted: Vec<(String, String)>,
    pub(crate) at: DateTime<Utc>,
}

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseObject {
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// When the lease began (the server's clock, from the first write).
    pub(crate) started: Option<DateTime<Utc>>,
    /// Seconds after its last renewal that the lease lapses.
    pub(crate) ttl_secs: u64,
}

// ---------------------------------------------------------------------------------------------
// A local directory.

/// A directory as a backend: keys are relative paths, writes go through a temp file and a
/// rename. For a remote on a shared file system, and as the local side of comparisons.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// Uses (creating) the directory `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_owned();
        fs::create_dir_all(root.join(".tmp"))
            .map_err(|e| Error::io("create directory", &root, e))?;
        Ok(DirBackend { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(Error::Invalid {
                what: "object key",
                detail: format!("`{key}` is not a relative path of plain names"),
            });
        }
        Ok(self.root.join(key))
    }
}

fn facts(m: &fs::Metadata) -> ObjectFacts {
    ObjectFacts {
        size: m.len(),
        modified: m
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    }
}

impl BlobBackend for DirBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectFacts>> {
        let p = self.path(key)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(facts(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", p, e)),
        }
    }

    fn put(&self, key: &str, source: &mut dyn Read, size: u64) -> Result<()> {
        let p = self.path(key)?;
        let tmp = self.root.join(".tmp").join(format!(
            "{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            let n = io::copy(&mut source.take(size), &mut f)
                .map_err(|e| Error::io("write", &tmp, e))?;
            if n != size {
                return Err(Error::Invalid {
                    what: "object source",
                    detail: format!("{key}: {n} bytes where {size} were announced"),
                });
            }
            f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
            let dir = p.parent().expect("keys have a parent");
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            fs::rename(&tmp, &p).map_err(|e| Error::io("rename into place", &p, e))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn get(&self, key: &str, out: &mut dyn Write) -> Result<Option<u64>> {
        let p = self.path(key)?;
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", p, e)),
        };
        io::copy(&mut f, out)
            .map(Some)
            .map_err(|e| Error::io("read", p, e))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", p, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, ObjectFacts)>> {
        let mut out = Vec::new();
        let start = self.root.join(prefix.trim_end_matches('/'));
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", dir, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io("list", &dir, e))?;
                let p = e.path();
                let m = e.metadata().map_err(|e| Error::io("stat", &p, e))?;
                if m.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root)
                    && let Some(key) = rel.to_str()
                    && !key.starts_with(".tmp/")
                {
                    out.push((key.to_owned(), facts(&m)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Object storage.

/// Options for [`ObjectStoreBackend`].
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Objects larger than this go up as multipart uploads of parts this size (default 8 MiB;
    /// S3 wants at least 5 MiB). Memory per upload: about two parts.
    pub part_size: usize,
    /// Retries of transient failures (timeouts, connection errors, 5xx answers) with
    /// exponential backoff; permanent ones (4xx: credentials, a missing bucket) fail at once.
    /// Default: 10 retries within 3 minutes.
    pub max_retries: usize,
    /// The time within which a request is retried (default 3 minutes).
    pub retry_timeout: Duration,
    /// A request (connect included) that takes longer than this fails (and is retried); default
    /// 60 s.
    pub request_timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            part_size: 8 << 20,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Object storage through the `object_store` crate: S3 and S3-compatible servers.
///
/// Credentials come from the environment and the usual files, never from plan files:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`); else the profile
/// `AWS_PROFILE` (or `default`) of the shared credentials file (`~/.aws/credentials`, or
/// `AWS_SHARED_CREDENTIALS_FILE`); else the web-identity, container and instance-metadata
/// sources that `object_store` reads. `AWS_ENDPOINT` (with `AWS_ALLOW_HTTP=true` for plain
/// HTTP) and `AWS_REGION`, or `endpoint_url` and `region` in the profile of `~/.aws/config`
/// (`AWS_CONFIG_FILE`), point at other S3 servers.
pub struct ObjectStoreBackend {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: String,
    location: String,
    part_size: usize,
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectStoreBackend {
    fn drop(&mut self) {
        // Without waiting: the last handle may go inside an async context, where a blocking
        // shutdown panics. Nothing is in flight: every request was waited for.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Turns an `object_store` error into ours, with the fix where there is an obvious one.
fn remote_error(op: &'static str, location: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let (permanent, hint) = match &e {
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => (
            true,
            "the server refused the credentials: check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and the key's rights on the bucket)",
        ),
        E::NotFound { .. } => (true, "not found"),
        E::UnknownConfigurationKey { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => {
            (true, "")
        }
        _ => {
            let text = e.to_string();
            if text.contains("NoSuchBucket") {
                (
                    true,
                    "the bucket does not exist: create it or fix the bucket in the URL",
                )
            } else if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
                || text.contains("403")
            {
                (
                    true,
                    "the server refused the credentials: check AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (and the key's rights on the bucket)",
                )
            } else {
                (false, "")
            }
        }
    };
    Error::Remote {
        op,
        location: location.to_owned(),
        artifact: None,
        detail: if hint.is_empty() {
            e.to_string()
        } else {
            format!("{hint} ({e})")
        },
        permanent,
    }
}

/// Settings that name the AWS shared files rather than an `object_store` key.
const FILE_SETTINGS: &[&str] = &[
    "aws_profile",
    "aws_shared_credentials_file",
    "aws_config_file",
];

/// What the AWS shared files give for the profile (`AWS_PROFILE`, else `default`), for the
/// settings that neither `config` nor the environment set: the access key, secret and session
/// token from the credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`),
/// the region and endpoint from the config file (`AWS_CONFIG_FILE`, else `~/.aws/config`).
fn aws_files(
    config: &[(String, String)],
) -> Result<Vec<(object_store::aws::AmazonS3ConfigKey, String)>> {
    use object_store::aws::AmazonS3ConfigKey as K;
    let get = |name: &str| {
        config
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name.to_ascii_uppercase()).ok())
            .filter(|v| !v.is_empty())
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |setting: &str, default: &str| {
        get(setting)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let shown = |p: Option<PathBuf>, default: &str| {
        p.map(|p| p.display().to_string())
            .unwrap_or_else(|| default.to_owned())
    };
    let named_profile = get("aws_profile");
    let profile = named_profile.clone().unwrap_or_else(|| "default".into());
    let load = |path: &Path| -> Result<Option<ini::Ini>> {
        match ini::Ini::load_from_file(path) {
            Ok(i) => Ok(Some(i)),
            Err(ini::Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Invalid {
                what: "AWS configuration file",
                detail: format!("{}: {e}", path.display()),
            }),
        }
    };
    let mut out = Vec::new();
    let mut found_profile = false;
    if get("aws_access_key_id").is_none()
        && let Some(path) = file("aws_shared_credentials_file", ".aws/credentials")
        && let Some(ini) = load(&path)?
        && let Some(section) = ini.section(Some(profile.as_str()))
    {
        found_profile = true;
        for (name, key) in [
            ("aws_access_key_id", K::AccessKeyId),
            ("aws_secret_access_key", K::SecretAccessKey),
            ("aws_session_token", K::Token),
        ] {
            if let Some(v) = section.get(name) {
                out.push((key, v.to_owned()));
            }
        }
    }
    if let Some(path) = file("aws_config_file", ".aws/config")
        && let Some(ini) = load(&path)?
    {
        let name = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        if let Some(section) = ini.section(Some(name.as_str())) {
            found_profile = true;
            if get("aws_region").is_none()
                && get("aws_default_region").is_none()
                && let Some(v) = section.get("region")
            {
                out.push((K::Region, v.to_owned()));
            }
            if get("aws_endpoint").is_none()
                && get("aws_endpoint_url").is_none()
                && let Some(v) = section.get("endpoint_url")
            {
                out.push((K::Endpoint, v.to_owned()));
            }
        }
    }
    if let Some(p) = named_profile
        && !found_profile
        && get("aws_access_key_id").is_none()
    {
        return Err(Error::Invalid {
            what: "AWS profile",
            detail: format!(
                "`{p}` (AWS_PROFILE) is in neither {} nor {}: add it there, or set \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                shown(
                    file("aws_shared_credentials_file", ".aws/credentials"),
                    "~/.aws/credentials"
                ),
                shown(file("aws_config_file", ".aws/config"), "~/.aws/config"),
            ),
        });
    }
    Ok(out)
}

impl ObjectStoreBackend {
    /// Connects to `url` (`s3://bucket/optional/prefix`) with credentials and endpoint from the
    /// environment, and checks that the bucket answers (so that wrong credentials and a
    /// missing bucket fail here, clearly, rather than at the first artifact).
    pub fn connect(url: &str, options: &RemoteOptions) -> Result<Self> {
        Self::connect_with(url, std::iter::empty::<(String, String)>(), options)
    }

    /// [`connect`](Self::connect), with `config` (environment-style names such as
    /// `AWS_ENDPOINT`, or `object_store`'s keys) applied over the environment.
    pub fn connect_with<K: AsRef<str>, V: Into<String>>(
        url: &str,
        config: impl IntoIterator<Item = (K, V)>,
        options: &RemoteOptions,
    ) -> Result<Self> {
        let bad = |why: String| Error::Invalid {
            what: "remote store URL",
            detail: why,
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            bad(format!(
                "`{url}`: only s3:// URLs are supported (S3 and compatible servers): s3://bucket/prefix"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad(format!(
                "`s3://{}/...` carries credentials or a port: put credentials in \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the server in AWS_ENDPOINT, \
                 never in a URL or plan file",
                bucket.rsplit('@').next().unwrap_or("")
            )));
        }
        if bucket.is_empty() {
            return Err(bad(format!(
                "`{url}` names no bucket (expected s3://bucket/prefix)"
            )));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        let bucket = bucket.to_owned();
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
        };
        let config: Vec<(String, String)> = config
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
            .collect();
        let mut builder = object_store::aws::AmazonS3Builder::from_env();
        for (k, v) in aws_files(&config)? {
            builder = builder.with_config(k, v);
        }
        for (k, v) in config
            .iter()
            .filter(|(k, _)| !FILE_SETTINGS.contains(&k.as_str()))
        {
            let key: object_store::aws::AmazonS3ConfigKey =
                k.parse().map_err(|e| Error::Invalid {
                    what: "remote store setting",
                    detail: format!("`{k}`: {e}"),
                })?;
            builder = builder.with_config(key, v.clone());
        }
        // Timeouts through the config keys: `with_client_options` would replace what the
        // environment set (AWS_ALLOW_HTTP among it).
        use object_store::ClientConfigKey as C;
        use object_store::aws::AmazonS3ConfigKey as K;
        let s3 = builder
            .with_config(
                K::Client(C::Timeout),
                format!("{}ms", options.request_timeout.as_millis()),
            )
            .with_config(K::Client(C::ConnectTimeout), "10s")
            .with_bucket_name(&bucket)
            .with_retry(retry)
            .build()
            .map_err(|e| remote_error("configure", url, e))?;
        let b = Self::new(
            Arc::new(s3),
            &prefix,
            format!("s3://{bucket}/{prefix}"),
            options,
        )?;
        b.check()?;
        Ok(b)
    }

    /// Wraps an `object_store` handle (any of its backends), keys under `prefix`.
    pub fn new(
        store: Arc<dyn object_store::ObjectStore>,
        prefix: &str,
        location: String,
        options: &RemoteOptions,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("artifact-store-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the remote client runtime", &location, e))?;
        Ok(ObjectStoreBackend {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            location: location.trim_end_matches('/').to_owned(),
            part_size: options.part_size.max(5 << 20),
            rt: Some(rt),
        })
    }

    /// Lists once: fails with a clear error if the bucket is missing or the credentials are
    /// refused.
    pub fn check(&self) -> Result<()> {
        let store = self.store.clone();
        let prefix = self.object_path(LEASES);
        let r = self.run(async move { store.list_with_delimiter(Some(&prefix)).await });
        r.map(|_| ())
            .map_err(|e| remote_error("list", &self.location, e))
    }

    fn object_path(&self, key: &str) -> object_store::path::Path {
        let key = key.trim_end_matches('/');
        if self.prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, p: &object_store::path::Path) -> Option<String> {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            Some(s.to_owned())
        } else {
            s.strip_prefix(&self.prefix)?
                .strip_prefix('/')
                .map(str::to_owned)
        }
    }

    fn where_(&self, key: &str) -> String {
        format!("{}/{key}", self.location)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `fut` on the client's runtime and waits for it: safe from any thread, async
    /// runtime workers included.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("the remote client runtime dropped a request")
    }
}

impl BlobBackend for ObjectStoreBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectFacts>> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.object_path(key);
        match self.run(async move { store.head(&path).await }) {
            Ok(m) => Ok(Some(ObjectFacts {
                size: m.size,
                modified: m.last_modified,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error("stat", &self.where_(key), e)),
        }
    }

    fn put(&self, key: &str, source: &mut dyn Read, size: u64) -> Result<()> {
        use object_store::ObjectStoreExt;
        let path = self.object_path(key);
        let at = self.where_(key);
        let read_err = |e: io::Error| Error::Io {
            op: "read upload source for",
            path: PathBuf::from(&at),
            source: e,
        };
        if size <= self.part_size as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            source.take(size).read_to_end(&mut buf).map_err(read_err)?;
            if buf.len() as u64 != size {
                return Err(Error::Invalid {
                    what: "upload source",
                    detail: format!("{at}: {} bytes where {size} were announced", buf.len()),
                });
            }
            let store = self.store.clone();
            return self
                .run(async move { store.put(&path, buf.into()).await })
                .map(|_| ())
                .map_err(|e| remote_error("upload", &at, e));
        }
        // Multipart: read a part here while the previous one uploads; at most two parts in
        // memory.
        let store = self.store.clone();
        let p2 = path.clone();
        let mut upload = self
            .run(async move { store.put_multipart(&p2).await })
            .map_err(|e| remote_error("start multipart upload", &at, e))?;
        let mut in_flight: Option<tokio::task::JoinHandle<object_store::Result<()>>> = None;
        let mut left = size;
        let result = (|| -> Result<()> {
            while left > 0 {
                let n = left.min(self.part_size as u64) as usize;
                let mut buf = vec![0u8; n];
                source.read_exact(&mut buf).map_err(read_err)?;
                left -= n as u64;
                let part = upload.put_part(buf.into());
                if let Some(h) = in_flight.take() {
                    self.wait(h)
                        .map_err(|e| remote_error("upload part", &at, e))?;
                }
                in_flight = Some(self.rt().spawn(part));
            }
            if let Some(h) = in_flight.take() {
                self.wait(h)
                    .map_err(|e| remote_error("upload part", &at, e))?;
            }
            Ok(())
        })();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let r = match result {
                Ok(()) => upload.complete().await.map(|_| ()).map_err(|e| (true, e)),
                Err(e) => {
                    let _ = upload.abort().await;
                    Ok::<(), (bool, object_store::Error)>(()).and(Err((
                        false,
                        object_store::Error::Generic {
                            store: "artifact-store",
                            source: e.to_string().into(),
                        },
                    )))
                }
            };
            let _ = tx.send(r);
        });
        match rx
            .recv()
            .expect("the remote client runtime dropped a request")
        {
            Ok(()) => Ok(()),
            Err((true, e)) => Err(remote_error("complete multipart upload", &at, e)),
            Err((false, e)) => Err(Error::Remote {
                op: "upload",
                location: at.clone(),
                artifact: None,
                detail: e.to_string(),
                permanent: false,
            }),
        }
    }

    fn get(&self, key: &str, out: &mut dyn Write) -> Result<Option<u64>> {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        let at = self.where_(key);
        let store = self.store.clone();
        let path = self.object_path(key);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<object_store::Result<bytes::Bytes>>(4);
        let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            match store.get(&path).await {
                Ok(r) => {
                    let _ = first_tx.send(Ok(()));
                    let mut s = r.into_stream();
                    while let Some(chunk) = s.next().await {
                        let stop = chunk.is_err();
                        if tx.send(chunk).await.is_err() || stop {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                }
            }
        });
        match first_rx
            .recv()
            .expect("the remote client runtime dropped a request")
        {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote_error("download", &at, e)),
        }
        let mut total = 0u64;
        // Not `blocking_recv`: that refuses to run on a thread inside an async runtime, which
        // callers of this synchronous API may well be.
        while let Some(chunk) = futures::executor::block_on(rx.recv()) {
            let chunk = chunk.map_err(|e| remote_error("download", &at, e))?;
            out.write_all(&chunk).map_err(|e| Error::Io {
                op: "write download of",
                path: PathBuf::from(&at),
                source: e,
            })?;
            total += chunk.len() as u64;
        }
        Ok(Some(total))
    }

    fn delete(&self, key: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.object_path(key);
        match self.run(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_error("delete", &self.where_(key), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, ObjectFacts)>> {
        use futures::TryStreamExt;
        let store = self.store.clone();
        let path = self.object_path(prefix);
        let metas = self
            .run(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await })
            .map_err(|e| remote_error("list", &self.where_(prefix), e))?;
        let mut out: Vec<_> = metas
            .into_iter()
            .filter_map(|m| {
                let key = self.key_of(&m.location)?;
                Some((
                    key,
                    ObjectFacts {
                        size: m.size,
                        modified: m.last_modified,
                    },
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl ObjectStoreBackend {
    fn wait(
        &self,
        h: tokio::task::JoinHandle<object_store::Result<()>>,
    ) -> object_store::Result<()> {
        self.run(async move {
            h.await
                .unwrap_or_else(|e| Err(object_store::Error::JoinError { source: e }))
        })
    }
}
