//! What several subcommands share: the output directory, the store's location, remotes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use orchestrator_core::artifact_store::{
    ArtifactStore, BlobBackend, DirBackend, ObjectStoreBackend, RemoteOptions,
};

/// The default output directory of `run` and `merge` (reports, scratch, the store).
pub(crate) const DEFAULT_OUT: &str = "qorch-out";

/// Connects to a remote store: `s3://bucket/prefix` (credentials and endpoint from the AWS
/// environment, with the usual retries) or `file:///dir` (a directory, on a shared file system
/// say).
pub(crate) fn connect_remote(url: &str) -> anyhow::Result<Arc<dyn BlobBackend>> {
    if let Some(dir) = url.strip_prefix("file://") {
        anyhow::ensure!(
            dir.starts_with('/'),
            "remote `{url}`: a file:// remote needs an absolute path (file:///srv/artifacts)"
        );
        let backend = DirBackend::open(dir)
            .with_context(|| format!("cannot use the remote directory {dir}"))?;
        return Ok(Arc::new(backend));
    }
    let backend = ObjectStoreBackend::connect(url, &RemoteOptions::default())
        .with_context(|| format!("cannot use the remote store {url}"))?;
    Ok(Arc::new(backend))
}

/// Whether `dir` holds an artifact store (its `LAYOUT` file).
pub(crate) fn is_store(dir: &Path) -> bool {
    dir.join("LAYOUT").is_file()
}

/// Opens the existing store in `dir` for reading only: nothing in it is created, upgraded or
/// changed. A directory that is not a store is an error.
pub(crate) fn read_store(dir: &Path) -> anyhow::Result<ArtifactStore> {
    check_store(dir)?;
    ArtifactStore::open_read_only(dir)
        .with_context(|| format!("cannot open the artifact store {}", dir.display()))
}

/// Opens the existing store in `dir` to change it; a directory that is not a store is an error
/// (nothing is created).
pub(crate) fn open_existing_store(dir: &Path) -> anyhow::Result<ArtifactStore> {
    check_store(dir)?;
    ArtifactStore::open(dir)
        .with_context(|| format!("cannot open the artifact store {}", dir.display()))
}

fn check_store(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        anyhow::bail!(
            "there is no artifact store at {}: the directory does not exist (a run creates its \
             store in <out>/store; name another with --store DIR)",
            dir.display()
        );
    }
    if !is_store(dir) {
        anyhow::bail!(
            "{} is not an artifact store (it has no LAYOUT file): name a store's directory with \
             --store DIR",
            dir.display()
        );
    }
    Ok(())
}

/// `dir`, without the `..` of a plan-relative path, when it exists.
pub(crate) fn tidy(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}
