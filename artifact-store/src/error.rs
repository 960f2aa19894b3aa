//! Errors of the artifact store.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the artifact store. Every variant names the path, blob or
/// artifact it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What was being done (`create`, `write`, `read`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system is full (ENOSPC or EDQUOT, or SQLite's "database or disk is full" for the
    /// catalog). A put that fails this way leaves nothing partial visible: no temp file, no blob
    /// without a record, no record.
    #[error("no space left on the file system holding {}{}: free space there (in a store: apply a retention policy or run `gc`) and retry", path.display(), artifact.as_ref().map(|a| format!(" (storing {a})")).unwrap_or_default())]
    StorageFull {
        /// The file being written (a temp file of the store, or its catalog).
        path: PathBuf,
        /// The artifact being stored, if known (`test <test> run <run> name <name>`).
        artifact: Option<String>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The store is read-only (EROFS, or permission denied when writing).
    #[error("the store is read-only: cannot write {}", path.display())]
    ReadOnly {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A blob on disk does not match its digest (corrupted or truncated).
    #[error("blob {digest} at {} is corrupt{}: {detail}", path.display(), artifact.as_ref().map(|a| format!(" (artifact {a})")).unwrap_or_default())]
    Corrupt {
        /// The expected digest.
        digest: Digest,
        /// The blob file.
        path: PathBuf,
        /// The artifact being read, if known.
        artifact: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// A blob that a record needs is not on disk.
    #[error("blob {digest} is missing at {}{}", path.display(), artifact.as_ref().map(|a| format!(" (artifact {a})")).unwrap_or_default())]
    MissingBlob {
        /// The digest.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
        /// The artifact being read, if known.
        artifact: Option<String>,
    },
    /// No record with this artifact id.
    #[error("artifact {id} not found in the catalog")]
    NotFound {
        /// The artifact id.
        id: String,
    },
    /// The artifact's record is kept but its blob was evicted.
    #[error("artifact {id}: its blob {digest} was evicted ({reason})")]
    Evicted {
        /// The artifact id.
        id: String,
        /// The blob digest.
        digest: Digest,
        /// Why it was evicted.
        reason: String,
    },
    /// The catalog database failed.
    #[error("catalog {}: failed to {context}", path.display())]
    Catalog {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The store or catalog was written by a newer version of this crate.
    #[error("{} has format version {found}, newer than the supported version {supported}: upgrade artifact-store", path.display())]
    NewerFormat {
        /// The catalog or layout file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest version this crate reads.
        supported: u32,
    },
    /// A bundle is malformed, tampered with or hostile. Nothing from it was recorded.
    #[error("bundle {}: {detail}", path.display())]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An argument was invalid (an empty test id, a malformed digest, ...).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The remote store failed. Transient failures were retried with backoff before this;
    /// `permanent` ones (credentials refused, a missing bucket) were not.
    #[error("remote store {location}: {op} failed{}: {detail}", artifact.as_ref().map(|a| format!(" (artifact {a})")).unwrap_or_default())]
    Remote {
        /// What was being done.
        op: &'static str,
        /// The remote object or store (`s3://bucket/prefix/key`).
        location: String,
        /// The artifact concerned, if known.
        artifact: Option<String>,
        /// What went wrong, with the fix where there is an obvious one.
        detail: String,
        /// Whether retrying cannot help (credentials, a missing bucket, a bad request).
        permanent: bool,
    },
    /// A blocking task of the async API panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    /// Wraps an I/O error with the operation and path, classifying full disks and read-only
    /// stores.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        // A corrupt-blob error travelling inside an io::Error (from `BlobReader`).
        if source.get_ref().is_some_and(|e| e.is::<CorruptBlob>()) {
            let inner = source.into_inner().expect("checked above");
            let c = inner.downcast::<CorruptBlob>().expect("checked above");
            return Error::Corrupt {
                digest: c.digest,
                path: c.path,
                artifact: None,
                detail: c.detail,
            };
        }
        match source.raw_os_error() {
            Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => {
                Error::StorageFull {
                    path,
                    artifact: None,
                    source,
                }
            }
            Some(code) if code == nix::libc::EROFS => Error::ReadOnly { path, source },
            _ if source.kind() == io::ErrorKind::PermissionDenied
                && op != "read"
                && op != "open" =>
            {
                Error::ReadOnly { path, source }
            }
            _ => Error::Io { op, path, source },
        }
    }

    pub(crate) fn catalog(
        path: impl Into<PathBuf>,
        context: impl Into<String>,
        source: rusqlite::Error,
    ) -> Self {
        if let rusqlite::Error::SqliteFailure(e, _) = &source
            && e.code == rusqlite::ErrorCode::DiskFull
        {
            // The catalog could not grow (SQLite rolled the transaction back).
            let context = context.into();
            return Error::StorageFull {
                path: path.into(),
                artifact: None,
                source: io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("catalog: failed to {context}: {source}"),
                ),
            };
        }
        Error::Catalog {
            path: path.into(),
            context: context.into(),
            source,
        }
    }

    pub(crate) fn with_artifact(self, id: &str) -> Self {
        match self {
            Error::Corrupt {
                digest,
                path,
                detail,
                ..
            } => Error::Corrupt {
                digest,
                path,
                artifact: Some(id.to_owned()),
                detail,
            },
            Error::MissingBlob { digest, path, .. } => Error::MissingBlob {
                digest,
                path,
                artifact: Some(id.to_owned()),
            },
            Error::Remote {
                op,
                location,
                detail,
                permanent,
                ..
            } => Error::Remote {
                op,
                location,
                artifact: Some(id.to_owned()),
                detail,
                permanent,
            },
            other => other,
        }
    }

    /// Names the artifact a failed put was storing.
    pub(crate) fn storing(self, test: &str, run: &str, name: &str) -> Self {
        match self {
            Error::StorageFull {
                path,
                artifact: None,
                source,
            } => Error::StorageFull {
                path,
                artifact: Some(format!("test `{test}` run `{run}` name `{name}`")),
                source,
            },
            other => other,
        }
    }
}

/// Corruption detected while streaming a blob; carried inside an `io::Error` by
/// [`BlobReader`](crate::BlobReader) and turned into [`Error::Corrupt`] by the store.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest} at {} is corrupt: {detail}", path.display())]
pub struct CorruptBlob {
    /// The expected digest.
    pub digest: Digest,
    /// The blob file.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
}
