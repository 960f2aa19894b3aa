//! Content-addressed artifact store for test runs: logs, console captures, core dumps, traces
//! and screenshots kept, found, deduplicated and eventually removed.
//!
//! - **Content.** Blobs are addressed by the BLAKE3 digest of their content in a versioned,
//!   sharded layout (`content-v1/blake3/ab/cd/<digest>`), zstd-compressed unless the data does
//!   not compress. A put streams into a temp file inside the store, fsyncs it, then moves it
//!   into place without clobbering (`renameat2(RENAME_NOREPLACE)`, or `link(2)`: an existing
//!   blob is a dedup hit). Small blobs (up to [`DEFAULT_INLINE_MAX`] bytes encoded, see
//!   [`StoreOptions::inline_max`]) live in the catalog database instead, written in the
//!   transaction that records them. Every read verifies the digest. Memory stays bounded
//!   whatever the size.
//! - **Catalog.** One record per artifact in SQLite (WAL, safe for several processes):
//!   test, run, kind, name, sizes, time, outcome, architecture, metadata. Records outlive
//!   evicted blobs.
//! - **Retention.** [`RetentionPolicy`] rules ([`retention`]) combined in a [`Policy`]; a dry
//!   run gives every artifact's reason.
//! - **Garbage collection** that is safe while other processes write ([`ArtifactStore::gc`]).
//! - **Bundles.** `.tar.zst` exports with a BLAKE3 manifest; imports verify everything.
//! - **Async.** [`AsyncArtifactStore`] runs the synchronous core on tokio's blocking pool.
//!
//! # Layout
//!
//! ```text
//! <root>/LAYOUT                 layout version (1)
//! <root>/catalog-v1.sqlite      the catalog (+ -wal, -shm), small blobs included
//! <root>/content-v1/blake3/ab/cd/<64 hex digits>
//! <root>/trees-v1/blake3/ab/cd/<64 hex digits>   group hashes of blobs of 256 KiB or more
//! <root>/tmp/<pid>.<uuid>.tmp   writes in progress
//! <root>/quarantine/            corrupt blobs moved aside by `verify` with repair
//! ```
//!
//! # Examples
//!
//! ```
//! use artifact_store::{ArtifactKind, ArtifactStore, NewArtifact, Query, TestOutcome};
//! use artifact_store::retention::{KeepLastRuns, LastPassingRun, Policy};
//!
//! # fn main() -> Result<(), artifact_store::Error> {
//! # let dir = std::env::temp_dir().join(format!("artifact-store-doc-{}", std::process::id()));
//! let store = ArtifactStore::open(&dir)?;
//! let log = NewArtifact::new("boot", "run-1", ArtifactKind::Console, "console.log")
//!     .outcome(TestOutcome::Passed)
//!     .arch("x86_64")
//!     .meta("kernel", "6.1");
//! let record = store.add_bytes(log, b"Linux version 6.1 ...")?;
//! assert_eq!(store.get(&record.id)?, b"Linux version 6.1 ...");
//!
//! let found = store.query(&Query::new().test("boot").meta("kernel", "6.1"))?;
//! assert_eq!(found.len(), 1);
//!
//! let policy = Policy::new().with(KeepLastRuns(5)).with(LastPassingRun);
//! let plan = store.plan_retention(&policy, chrono::Utc::now())?;
//! assert!(plan.removed().next().is_none());
//! assert!(store.verify(Default::default())?.is_clean());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod async_api;
mod blob;
mod bundle;
mod catalog;
mod digest;
mod error;
mod frames;
mod model;
pub mod remote;
pub mod retention;
mod shared;
mod store;
mod tree;

pub use async_api::AsyncArtifactStore;
pub use blob::{BlobReader, Durability, PendingBlob};
pub use bundle::{BUNDLE_VERSION, ExportSummary, ImportSummary, Manifest, ManifestBlob};
pub use catalog::CATALOG_VERSION;
pub use digest::Digest;
pub use error::{CorruptBlob, Error, Result};
pub use model::{
    ArtifactKind, ArtifactRecord, Eviction, NewArtifact, Query, RunRecords, TAG_KEY, TestOutcome,
};
pub use remote::{BlobBackend, DirBackend, ObjectFacts, ObjectStoreBackend, RemoteOptions};
pub use retention::{Policy, RetentionPolicy};
pub use shared::{LEASE_DROP_WAIT, Lease, PullReport, PushReport, RemoteGcOptions, RemoteGcReport};
pub use store::{
    ArtifactStore, CorruptEntry, DEFAULT_INLINE_MAX, GcOptions, GcReport, LAYOUT_VERSION,
    MissingEntry, RetentionOutcome, Stats, StoreOptions, Usage, VerifyOptions, VerifyReport,
};
pub use tree::{MAX_PIECE, VerifiedRange};
