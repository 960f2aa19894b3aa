//! What several subcommands share: the output directory, the store's location, remotes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use orchestrator_core::artifact_store::{
    BlobBackend, DirBackend, ObjectStoreBackend, RemoteOptions,
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

/// `dir`, without the `..` of a plan-relative path, when it exists.
pub(crate) fn tidy(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}
