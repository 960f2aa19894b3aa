//! `.tar.zst` bundles: `manifest.json` (format version, BLAKE3 digests and sizes of the blobs,
//! the catalog records) followed by one `blobs/<digest>` entry per blob.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::blob::PendingBlob;
use crate::error::{Error, Result};
use crate::model::{ArtifactRecord, Query};
use crate::store::ArtifactStore;

/// The bundle format this crate writes.
pub const BUNDLE_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const MAX_MANIFEST: u64 = 512 << 20;

/// A blob listed in a bundle manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBlob {
    /// BLAKE3 of the content.
    pub digest: Digest,
    /// Content size.
    pub size: u64,
}

/// The manifest at the start of every bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version ([`BUNDLE_VERSION`]).
    pub version: u32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Every blob in the bundle.
    pub blobs: Vec<ManifestBlob>,
    /// The catalog records (eviction state cleared).
    pub records: Vec<ArtifactRecord>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// Records exported.
    pub records: u64,
    /// Distinct blobs exported.
    pub blobs: u64,
    /// Content bytes exported.
    pub bytes: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// New records added.
    pub records_added: u64,
    /// Records already in the catalog (same id and digest), skipped.
    pub records_skipped: u64,
    /// Blobs verified.
    pub blobs: u64,
    /// Blobs that were already in the store.
    pub blobs_deduplicated: u64,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Bundle {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

impl ArtifactStore {
    /// Writes the live artifacts matching `query` to a `.tar.zst` bundle at `dest` (atomically:
    /// temp file, then rename). Every blob is verified while it is copied.
    pub fn export_bundle(&self, query: &Query, dest: impl AsRef<Path>) -> Result<ExportSummary> {
        let dest = dest.as_ref();
        let records = self.query(&query.clone().include_evicted(false))?;
        let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
        for r in &records {
            blobs.insert(r.digest, r.raw_size);
        }
        let manifest = Manifest {
            version: BUNDLE_VERSION,
            created_at: Utc::now(),
            blobs: blobs
                .iter()
                .map(|(d, s)| ManifestBlob {
                    digest: *d,
                    size: *s,
                })
                .collect(),
            records: records.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".bundle.{}.part", uuid::Uuid::new_v4().simple()));
        let res = (|| {
            let f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            let werr = |e: io::Error| Error::io("write", &tmp, e);
            let mut enc = zstd::stream::write::Encoder::new(BufWriter::new(f), 3).map_err(werr)?;
            enc.multithread(1).map_err(werr)?;
            let mut tar = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(json.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(manifest.created_at.timestamp().max(0) as u64);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, MANIFEST, json.as_slice())
                .map_err(werr)?;
            let mut bytes = 0;
            for (d, size) in &blobs {
                let reader = self.open_blob(d)?;
                let mut h = tar::Header::new_gnu();
                h.set_size(*size);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                // A corrupt blob fails the read (and the export) at its end.
                tar.append_data(&mut h, format!("blobs/{d}"), reader)
                    .map_err(werr)?;
                bytes += size;
            }
            let enc = tar.into_inner().map_err(werr)?;
            let mut w = enc.finish().map_err(werr)?;
            w.flush().map_err(werr)?;
            w.get_ref()
                .sync_all()
                .map_err(|e| Error::io("fsync", &tmp, e))?;
            fs::rename(&tmp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
            Ok(ExportSummary {
                records: records.len() as u64,
                blobs: blobs.len() as u64,
                bytes,
            })
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Imports a bundle: every entry must be a regular file named `manifest.json` (first) or
    /// `blobs/<digest>` listed in the manifest, and every blob must hash to its name and size.
    /// Records are added only after everything verified; a bad bundle adds no record.
    pub fn import_bundle(&self, src: impl AsRef<Path>) -> Result<ImportSummary> {
        let src = src.as_ref();
        let f = File::open(src).map_err(|e| Error::io("open", src, e))?;
        let dec = zstd::stream::read::Decoder::new(BufReader::new(f))
            .map_err(|e| bad(src, format!("not zstd: {e}")))?;
        let mut ar = tar::Archive::new(dec);
        let mut manifest: Option<Manifest> = None;
        let mut expected: HashMap<Digest, u64> = HashMap::new();
        let mut got: HashMap<Digest, PendingBlob> = HashMap::new();
        let mut summary = ImportSummary::default();
        let entries = ar
            .entries()
            .map_err(|e| bad(src, format!("unreadable archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(src, format!("unreadable entry: {e}")))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if !kind.is_file() {
                return Err(bad(
                    src,
                    format!(
                        "entry `{raw}` is a {kind:?}, not a regular file (links and special files are refused)"
                    ),
                ));
            }
            let p = Path::new(&raw);
            if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(
                    src,
                    format!("entry `{raw}` has an absolute path or `..`/`.` components"),
                ));
            }
            if raw == MANIFEST {
                if manifest.is_some() {
                    return Err(bad(src, "two manifests"));
                }
                if entry.size() > MAX_MANIFEST {
                    return Err(bad(src, "manifest too large"));
                }
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_MANIFEST)
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(src, format!("unreadable manifest: {e}")))?;
                let m: Manifest = serde_json::from_slice(&buf)
                    .map_err(|e| bad(src, format!("invalid manifest: {e}")))?;
                if m.version > BUNDLE_VERSION {
                    return Err(bad(
                        src,
                        format!(
                            "bundle version {} is newer than the supported {BUNDLE_VERSION}",
                            m.version
                        ),
                    ));
                }
                for b in &m.blobs {
                    expected.insert(b.digest, b.size);
                }
                for r in &m.records {
                    if expected.get(&r.digest) != Some(&r.raw_size) {
                        return Err(bad(
                            src,
                            format!(
                                "record {} refers to blob {} which the manifest does not list with size {}",
                                r.id, r.digest, r.raw_size
                            ),
                        ));
                    }
                    r.validate_record()
                        .map_err(|e| bad(src, format!("record {}: {e}", r.id)))?;
                }
                manifest = Some(m);
                continue;
            }
            let Some(hex) = raw.strip_prefix("blobs/") else {
                return Err(bad(src, format!("unexpected entry `{raw}`")));
            };
            if manifest.is_none() {
                return Err(bad(src, format!("entry `{raw}` comes before the manifest")));
            }
            let digest = Digest::from_hex(hex)
                .map_err(|_| bad(src, format!("entry `{raw}` is not named by a digest")))?;
            let Some(size) = expected.get(&digest).copied() else {
                return Err(bad(
                    src,
                    format!("blob {digest} is not listed in the manifest"),
                ));
            };
            if got.contains_key(&digest) {
                return Err(bad(src, format!("blob {digest} appears twice")));
            }
            let pending = self.put_blob(&mut entry).map_err(|e| match e {
                Error::Io { .. } => bad(src, format!("unreadable blob {digest}: {e}")),
                other => other,
            })?;
            if pending.digest != digest || pending.raw_size != size {
                return Err(bad(
                    src,
                    format!(
                        "blob {digest}: content hashes to {} ({} bytes, manifest says {size}): tampered or damaged",
                        pending.digest, pending.raw_size
                    ),
                ));
            }
            summary.blobs += 1;
            summary.blobs_deduplicated += pending.dedup as u64;
            got.insert(digest, pending);
        }
        let manifest = manifest.ok_or_else(|| bad(src, "no manifest"))?;
        for b in &manifest.blobs {
            if !got.contains_key(&b.digest) {
                return Err(bad(
                    src,
                    format!("blob {} listed in the manifest is missing", b.digest),
                ));
            }
        }
        let mut new = Vec::new();
        for r in &manifest.records {
            match self.catalog.get(&r.id)? {
                Some(old) if old.digest == r.digest => summary.records_skipped += 1,
                Some(old) => {
                    return Err(bad(
                        src,
                        format!(
                            "record {} exists with another blob ({} here, {} in the store)",
                            r.id, r.digest, old.digest
                        ),
                    ));
                }
                None => {
                    let mut r = r.clone();
                    let b = &got[&r.digest];
                    r.evicted = None;
                    r.stored_size = b.stored_size;
                    new.push(r);
                }
            }
        }
        let items: Vec<_> = new.iter().map(|r| (&got[&r.digest], r)).collect();
        self.record_existing(&items)?;
        summary.records_added = new.len() as u64;
        Ok(summary)
    }
}

impl ArtifactRecord {
    fn validate_record(&self) -> Result<()> {
        for (what, v) in [
            ("test id", &self.test_id),
            ("run id", &self.run_id),
            ("artifact id", &self.id),
        ] {
            if v.is_empty() {
                return Err(Error::Invalid {
                    what,
                    detail: "must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}
