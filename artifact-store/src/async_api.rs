//! The async (tokio) API: the synchronous store on the blocking thread pool.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::retention::{RetentionPlan, RetentionPolicy};
use crate::store::{
    ArtifactStore, GcOptions, GcReport, RetentionOutcome, Stats, StoreOptions, VerifyOptions,
    VerifyReport,
};
use crate::{ArtifactRecord, ExportSummary, ImportSummary, NewArtifact, Query};

/// An [`ArtifactStore`] for async code: every call runs on tokio's blocking pool
/// (`spawn_blocking`), so hashing, compression and SQLite never block the runtime. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct AsyncArtifactStore {
    inner: Arc<ArtifactStore>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

impl From<ArtifactStore> for AsyncArtifactStore {
    fn from(s: ArtifactStore) -> Self {
        AsyncArtifactStore { inner: Arc::new(s) }
    }
}

impl AsyncArtifactStore {
    /// Opens (creating if needed) the store at `root`.
    pub async fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Self> {
        let root = root.into();
        Ok(blocking(move || ArtifactStore::open_with(root, options))
            .await?
            .into())
    }

    /// The synchronous store.
    pub fn sync(&self) -> &Arc<ArtifactStore> {
        &self.inner
    }

    /// Stores and records `bytes`.
    pub async fn add_bytes(&self, artifact: NewArtifact, bytes: Vec<u8>) -> Result<ArtifactRecord> {
        let s = self.inner.clone();
        blocking(move || s.add_bytes(artifact, &bytes)).await
    }

    /// Stores and records the file at `path`.
    pub async fn add_file(
        &self,
        artifact: NewArtifact,
        path: impl Into<PathBuf>,
    ) -> Result<ArtifactRecord> {
        let (s, path) = (self.inner.clone(), path.into());
        blocking(move || s.add_file(artifact, path)).await
    }

    /// Streams an async reader into the store (bounded memory) and records it.
    pub async fn add_reader(
        &self,
        artifact: NewArtifact,
        reader: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<ArtifactRecord> {
        let s = self.inner.clone();
        blocking(move || s.add(artifact, tokio_util::io::SyncIoBridge::new(reader))).await
    }

    /// Artifact `id`'s whole content, verified.
    pub async fn get(&self, id: impl Into<String>) -> Result<Vec<u8>> {
        let (s, id) = (self.inner.clone(), id.into());
        blocking(move || s.get(&id)).await
    }

    /// Writes artifact `id` to `dest` atomically, verified, with bounded memory.
    pub async fn get_to_file(
        &self,
        id: impl Into<String>,
        dest: impl Into<PathBuf>,
    ) -> Result<u64> {
        let (s, id, dest) = (self.inner.clone(), id.into(), dest.into());
        blocking(move || s.get_to_file(&id, dest)).await
    }

    /// The record of artifact `id`.
    pub async fn record_of(&self, id: impl Into<String>) -> Result<ArtifactRecord> {
        let (s, id) = (self.inner.clone(), id.into());
        blocking(move || s.record_of(&id)).await
    }

    /// Records matching `query`.
    pub async fn query(&self, query: Query) -> Result<Vec<ArtifactRecord>> {
        let s = self.inner.clone();
        blocking(move || s.query(&query)).await
    }

    /// A retention dry run.
    pub async fn plan_retention(
        &self,
        policy: impl RetentionPolicy + 'static,
        now: DateTime<Utc>,
    ) -> Result<RetentionPlan> {
        let s = self.inner.clone();
        blocking(move || s.plan_retention(&policy, now)).await
    }

    /// Applies a retention plan.
    pub async fn apply_retention(&self, plan: RetentionPlan) -> Result<RetentionOutcome> {
        let s = self.inner.clone();
        blocking(move || s.apply_retention(&plan)).await
    }

    /// Garbage collection.
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport> {
        let s = self.inner.clone();
        blocking(move || s.gc(&options)).await
    }

    /// Verification.
    pub async fn verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        let s = self.inner.clone();
        blocking(move || s.verify(options)).await
    }

    /// Statistics.
    pub async fn stats(&self) -> Result<Stats> {
        let s = self.inner.clone();
        blocking(move || s.stats()).await
    }

    /// Exports a bundle.
    pub async fn export_bundle(
        &self,
        query: Query,
        dest: impl Into<PathBuf>,
    ) -> Result<ExportSummary> {
        let (s, dest) = (self.inner.clone(), dest.into());
        blocking(move || s.export_bundle(&query, dest)).await
    }

    /// Imports a bundle.
    pub async fn import_bundle(&self, src: impl Into<PathBuf>) -> Result<ImportSummary> {
        let (s, src) = (self.inner.clone(), src.into());
        blocking(move || s.import_bundle(src)).await
    }
}
