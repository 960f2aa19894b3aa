//! The catalog: one SQLite database in WAL mode, shared safely by several processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, TransactionBehavior, params, params_from_iter,
};

use crate::Digest;
use crate::blob::Durability;
use crate::error::{Error, Result};
use crate::model::{ArtifactRecord, Eviction, Query};

/// The catalog format this crate writes (`PRAGMA user_version`). Version 2 added
/// `inline_blobs` and `remote_pulled`; version 3 the index `artifacts_kind` (a test's results
/// or the runs' reports, newest first, in one index range). Older catalogs are upgraded when
/// opened.
pub const CATALOG_VERSION: u32 = 3;

/// The oldest catalog format read without an upgrade ([`Catalog::open_read_only`]).
const READ_ONLY_MIN_VERSION: u32 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS artifacts(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  digest TEXT NOT NULL,
  test_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  raw_size INTEGER NOT NULL,
  stored_size INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  outcome TEXT,
  arch TEXT,
  evicted_at INTEGER,
  eviction_reason TEXT
);
CREATE INDEX IF NOT EXISTS artifacts_test ON artifacts(test_id, created_at);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run_id);
CREATE INDEX IF NOT EXISTS artifacts_digest ON artifacts(digest);
CREATE INDEX IF NOT EXISTS artifacts_created ON artifacts(created_at);
CREATE INDEX IF NOT EXISTS artifacts_kind ON artifacts(kind, test_id, created_at);
CREATE TABLE IF NOT EXISTS metadata(
  artifact INTEGER NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY(artifact, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_kv ON metadata(key, value);
CREATE TABLE IF NOT EXISTS blobs(
  digest TEXT PRIMARY KEY,
  raw_size INTEGER NOT NULL,
  stored_size INTEGER NOT NULL,
  compressed INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inline_blobs(
  digest TEXT PRIMARY KEY,
  data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS remote_pulled(
  key TEXT PRIMARY KEY
) WITHOUT ROWID;
";

const COLUMNS: &str = "seq, id, digest, test_id, run_id, kind, name, raw_size, stored_size, created_at, outcome, arch, evicted_at, eviction_reason";

pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) path: PathBuf,
    conn: Mutex<Connection>,
}

/// An artifact's blob digest, if it was evicted the reason, and the encoded blob if the catalog
/// keeps it.
pub(crate) type BlobOf = (Digest, Option<String>, Option<Vec<u8>>);

/// Blob facts recorded with an artifact.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobInfo<'a> {
    pub(crate) digest: Digest,
    pub(crate) raw_size: u64,
    pub(crate) stored_size: u64,
    pub(crate) compressed: bool,
    /// The encoded blob, when the catalog keeps it instead of a file.
    pub(crate) inline: Option<&'a [u8]>,
}

impl Catalog {
    /// Opens the SQLite file with `flags` and reads its format version, refusing a newer one.
    fn connect(path: &Path, flags: OpenFlags, op: &str) -> Result<(Connection, u32)> {
        let err = |ctx: &str, e| Error::catalog(path, ctx, e);
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| err(op, e))?;
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(|e| err("set busy timeout", e))?;
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| err("read format version", e))?;
        if version > CATALOG_VERSION {
            return Err(Error::NewerFormat {
                path: path.to_owned(),
                found: version,
                supported: CATALOG_VERSION,
            });
        }
        Ok((conn, version))
    }

    pub(crate) fn open(path: &Path, durability: Durability) -> Result<Self> {
        let err = |ctx: &str, e| Error::catalog(path, ctx, e);
        let (mut conn, version) = Self::connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            "open",
        )?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| err("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err("enable WAL", rusqlite::Error::InvalidQuery));
        }
        let sync = if durability == Durability::Fsync {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| err("set synchronous", e))?;
        if version < CATALOG_VERSION {
            // Idempotent, under the write lock: several processes may open a new store at once.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| err("begin schema creation", e))?;
            tx.execute_batch(SCHEMA)
                .map_err(|e| err("create schema", e))?;
            tx.pragma_update(None, "user_version", CATALOG_VERSION)
                .map_err(|e| err("write format version", e))?;
            tx.commit().map_err(|e| err("commit schema", e))?;
        }
        Ok(Catalog {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// Opens an existing catalog for reading only: no schema change, no journal-mode change,
    /// nothing written (SQLite still maps the WAL index shared with writers).
    pub(crate) fn open_read_only(path: &Path) -> Result<Self> {
        let (conn, version) =
            Self::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY, "open read-only")?;
        // Versions from 2 on differ by indexes only: a reader needs no upgrade (merely a
        // slower plan). Version 1 lacks the tables of inline blobs.
        if version < READ_ONLY_MIN_VERSION {
            return Err(Error::Invalid {
                what: "catalog",
                detail: format!(
                    "{} has format version {version}, older than {READ_ONLY_MIN_VERSION}: open it once for writing (any write command, `verify --repair` say) to upgrade it",
                    path.display()
                ),
            });
        }
        Ok(Catalog {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn err(&self, ctx: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        let ctx = ctx.into();
        move |e| Error::catalog(&self.path, ctx, e)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts records in one transaction.
    pub(crate) fn insert(&self, items: &[(BlobInfo<'_>, &ArtifactRecord)]) -> Result<()> {
        self.insert_after(items, || Ok(()), |_, _| {})
    }

    /// Inserts records in one write transaction, after `place` ran inside it: with the write lock
    /// held, no collection can run between what `place` does (moving blobs into place) and the
    /// commit of the records that need them. A failing `place` rolls back (and cleans up after
    /// itself). If the records do not commit, `undo` gets `place`'s value back under a new write
    /// lock, with a test of whether a live record needs a digest (another writer may have
    /// recorded the same content in between), before the error is returned.
    pub(crate) fn insert_after<T>(
        &self,
        items: &[(BlobInfo<'_>, &ArtifactRecord)],
        place: impl FnOnce() -> Result<T>,
        undo: impl FnOnce(&T, &dyn Fn(&Digest) -> Result<bool>),
    ) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin insert"))?;
        let placed = place()?;
        let inserted = self.insert_rows(&tx, items);
        let committed = match inserted {
            Ok(()) => tx.commit().map_err(self.err("commit insert")),
            Err(e) => {
                drop(tx);
                Err(e)
            }
        };
        if let Err(e) = committed {
            if let Ok(tx) = conn.transaction_with_behavior(TransactionBehavior::Immediate) {
                undo(&placed, &|d: &Digest| self.needed_in(&tx, d));
                let _ = tx.commit();
            }
            return Err(e);
        }
        Ok(placed)
    }

    /// Whether a live record needs blob `d`, inside `tx`.
    fn needed_in(&self, tx: &rusqlite::Transaction<'_>, d: &Digest) -> Result<bool> {
        let mut st = tx
            .prepare_cached(
                "SELECT 1 FROM artifacts WHERE digest = ?1 AND evicted_at IS NULL LIMIT 1",
            )
            .map_err(self.err("prepare lookup"))?;
        st.exists([d.to_hex()])
            .map_err(self.err(format!("look up records of blob {d}")))
    }

    fn insert_rows(
        &self,
        tx: &rusqlite::Transaction<'_>,
        items: &[(BlobInfo<'_>, &ArtifactRecord)],
    ) -> Result<()> {
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO artifacts(id, digest, test_id, run_id, kind, name, raw_size, stored_size, created_at, outcome, arch, evicted_at, eviction_reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, NULL)",
                )
                .map_err(self.err("prepare insert"))?;
            let mut meta = tx
                .prepare_cached("INSERT INTO metadata(artifact, key, value) VALUES (?1, ?2, ?3)")
                .map_err(self.err("prepare insert"))?;
            let mut blob = tx
                .prepare_cached("INSERT OR IGNORE INTO blobs(digest, raw_size, stored_size, compressed) VALUES (?1, ?2, ?3, ?4)")
                .map_err(self.err("prepare insert"))?;
            let mut inline = tx
                .prepare_cached("INSERT OR IGNORE INTO inline_blobs(digest, data) VALUES (?1, ?2)")
                .map_err(self.err("prepare insert"))?;
            let mut last_blob = None;
            for (b, r) in items {
                ins.execute(params![
                    r.id,
                    r.digest.to_hex(),
                    r.test_id,
                    r.run_id,
                    r.kind.as_str(),
                    r.name,
                    r.raw_size as i64,
                    r.stored_size as i64,
                    to_micros(r.created_at),
                    r.outcome.map(|o| o.as_str()),
                    r.arch,
                ])
                .map_err(|e| Error::catalog(&self.path, format!("insert artifact {}", r.id), e))?;
                let seq = tx.last_insert_rowid();
                for (k, v) in &r.metadata {
                    meta.execute(params![seq, k, v])
                        .map_err(self.err("insert metadata"))?;
                }
                if last_blob != Some(b.digest) {
                    blob.execute(params![
                        b.digest.to_hex(),
                        b.raw_size as i64,
                        b.stored_size as i64,
                        b.compressed
                    ])
                    .map_err(self.err("insert blob"))?;
                    if let Some(data) = b.inline {
                        inline
                            .execute(params![b.digest.to_hex(), data])
                            .map_err(self.err("insert blob"))?;
                    }
                    last_blob = Some(b.digest);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: &str) -> Result<Option<ArtifactRecord>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM artifacts WHERE id = ?1"))
            .map_err(self.err("prepare lookup"))?;
        let row = st
            .query_row([id], row_to_record)
            .optional()
            .map_err(self.err(format!("look up artifact {id}")))?;
        drop(st);
        match row {
            Some((seq, mut r)) => {
                r.metadata = load_meta(&conn, seq).map_err(self.err("load metadata"))?;
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    /// What a read needs of artifact `id`: its digest and, if evicted, the reason. One cached
    /// statement, no metadata.
    pub(crate) fn blob_of(&self, id: &str) -> Result<Option<BlobOf>> {
        let conn = self.lock();
        lookup_blob(&conn, id).map_err(self.err(format!("look up artifact {id}")))
    }

    /// [`blob_of`](Self::blob_of) for many ids in one read transaction.
    pub(crate) fn blobs_of<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(&'a str, Option<BlobOf>)>> {
        let mut conn = self.lock();
        // DEFERRED: a read transaction, one snapshot for the whole batch.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.err("begin lookup"))?;
        let mut out = Vec::new();
        for id in ids {
            let b = lookup_blob(&tx, id).map_err(self.err(format!("look up artifact {id}")))?;
            out.push((id, b));
        }
        tx.commit().map_err(self.err("end lookup"))?;
        Ok(out)
    }

    pub(crate) fn query(&self, q: &Query) -> Result<Vec<ArtifactRecord>> {
        let (filter, args) = where_clause(q);
        let mut sql = format!("SELECT {COLUMNS} FROM artifacts a WHERE {filter}");
        sql.push_str(if q.newest_first {
            " ORDER BY created_at DESC, seq DESC"
        } else {
            " ORDER BY created_at, seq"
        });
        if let Some(n) = q.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(&sql)
            .map_err(self.err("prepare query"))?;
        let rows = st
            .query_map(params_from_iter(args), row_to_record)
            .map_err(self.err("run query"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("read query results"))?;
        drop(st);
        let mut out = Vec::with_capacity(rows.len());
        if rows.len() > 2000 {
            // Many rows: one pass over the metadata table beats a lookup per row.
            let mut all: std::collections::HashMap<i64, BTreeMap<String, String>> =
                std::collections::HashMap::new();
            let mut st = conn
                .prepare("SELECT artifact, key, value FROM metadata")
                .map_err(self.err("prepare metadata"))?;
            let mut it = st.query([]).map_err(self.err("load metadata"))?;
            while let Some(r) = it.next().map_err(self.err("load metadata"))? {
                all.entry(r.get(0).map_err(self.err("load metadata"))?)
                    .or_default()
                    .insert(
                        r.get(1).map_err(self.err("load metadata"))?,
                        r.get(2).map_err(self.err("load metadata"))?,
                    );
            }
            for (seq, mut r) in rows {
                r.metadata = all.remove(&seq).unwrap_or_default();
                out.push(r);
            }
        } else {
            for (seq, mut r) in rows {
                r.metadata = load_meta(&conn, seq).map_err(self.err("load metadata"))?;
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The runs of the records `q` matches (its limit counts runs), newest first: per run its
    /// first and last record's time and how many records match. One statement.
    pub(crate) fn runs(&self, q: &Query) -> Result<Vec<crate::model::RunRecords>> {
        let (filter, args) = where_clause(q);
        let mut sql = format!(
            "SELECT run_id, MIN(created_at), MAX(created_at), COUNT(*) FROM artifacts a WHERE {filter} GROUP BY run_id ORDER BY MIN(created_at) DESC, run_id"
        );
        if let Some(n) = q.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(&sql)
            .map_err(self.err("prepare query"))?;
        let rows = st
            .query_map(params_from_iter(args), |r| {
                Ok(crate::model::RunRecords {
                    run_id: r.get(0)?,
                    first: from_micros(r.get(1)?),
                    last: from_micros(r.get(2)?),
                    records: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(self.err("run query"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("read query results"))?;
        Ok(rows)
    }

    /// Marks records evicted (only those not already evicted). Returns how many changed.
    pub(crate) fn evict(&self, ids: &[(String, String)], at: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin eviction"))?;
        let mut n = 0;
        {
            let mut st = tx
                .prepare_cached("UPDATE artifacts SET evicted_at = ?2, eviction_reason = ?3 WHERE id = ?1 AND evicted_at IS NULL")
                .map_err(self.err("prepare eviction"))?;
            for (id, reason) in ids {
                n += st
                    .execute(params![id, to_micros(at), reason])
                    .map_err(self.err(format!("evict {id}")))? as u64;
            }
        }
        tx.commit().map_err(self.err("commit eviction"))?;
        Ok(n)
    }

    /// Keys of the remote objects already pulled.
    pub(crate) fn pulled_keys(&self) -> Result<std::collections::HashSet<String>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT key FROM remote_pulled")
            .map_err(self.err("list pulled objects"))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err("list pulled objects"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.err("list pulled objects"))
    }

    /// Notes that remote object `key` was pulled.
    pub(crate) fn mark_pulled(&self, key: &str) -> Result<()> {
        let conn = self.lock();
        conn.execute(
            "INSERT OR IGNORE INTO remote_pulled(key) VALUES (?1)",
            [key],
        )
        .map_err(self.err(format!("note pulled object {key}")))?;
        Ok(())
    }

    /// Inserts records pulled from remote object `key`, skipping those already here (by id),
    /// and notes the object pulled, in one transaction. Returns how many were new.
    pub(crate) fn insert_pulled(
        &self,
        items: &[(BlobInfo<'_>, &ArtifactRecord)],
        key: &str,
    ) -> Result<u64> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin pull"))?;
        let mut fresh = Vec::new();
        {
            let mut known = tx
                .prepare_cached("SELECT 1 FROM artifacts WHERE id = ?1")
                .map_err(self.err("prepare lookup"))?;
            let mut seen = std::collections::HashSet::new();
            for (b, r) in items {
                let have = known
                    .exists([&r.id])
                    .map_err(self.err(format!("look up artifact {}", r.id)))?;
                if !have && seen.insert(r.id.as_str()) {
                    fresh.push((*b, *r));
                }
            }
        }
        self.insert_rows(&tx, &fresh)?;
        tx.execute(
            "INSERT OR IGNORE INTO remote_pulled(key) VALUES (?1)",
            [key],
        )
        .map_err(self.err(format!("note pulled object {key}")))?;
        tx.commit().map_err(self.err("commit pull"))?;
        Ok(fresh.len() as u64)
    }

    /// `(raw size, stored size, compressed)` of the blobs the catalog knows among `digests`.
    pub(crate) fn blob_infos(
        &self,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Result<std::collections::HashMap<Digest, (u64, u64, bool)>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT raw_size, stored_size, compressed FROM blobs WHERE digest = ?1")
            .map_err(self.err("prepare lookup"))?;
        let mut out = std::collections::HashMap::new();
        for d in digests {
            if out.contains_key(&d) {
                continue;
            }
            let row = st
                .query_row([d.to_hex()], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()
                .map_err(self.err(format!("look up blob {d}")))?;
            if let Some(row) = row {
                out.insert(d, row);
            }
        }
        Ok(out)
    }

    /// The digests live records need.
    pub(crate) fn live_digests(&self) -> Result<std::collections::HashSet<Digest>> {
        self.with_live_digests(|live, _| Ok(live.clone()))
    }

    /// The encoded blob the catalog keeps for `digest`, if any.
    pub(crate) fn inline_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT data FROM inline_blobs WHERE digest = ?1")
            .map_err(self.err("prepare lookup"))?;
        st.query_row([digest.to_hex()], |r| r.get(0))
            .optional()
            .map_err(self.err(format!("look up blob {digest}")))
    }

    /// Whether the catalog keeps blob `digest` (without reading it).
    /// The distinct test ids of the records of `kind`, in order: a skip scan of the
    /// `artifacts_kind` index (one lookup per test, not per record).
    pub(crate) fn test_ids(&self, kind: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "WITH RECURSIVE t(id) AS (
                   SELECT MIN(test_id) FROM artifacts WHERE kind = ?1
                   UNION ALL
                   SELECT (SELECT MIN(test_id) FROM artifacts WHERE kind = ?1 AND test_id > t.id)
                   FROM t WHERE t.id IS NOT NULL
                 ) SELECT id FROM t WHERE id IS NOT NULL",
            )
            .map_err(self.err("prepare test listing"))?;
        st.query_map([kind], |r| r.get(0))
            .map_err(self.err("list tests"))?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.err("read test listing"))
    }

    pub(crate) fn has_inline(&self, digest: &Digest) -> Result<bool> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT 1 FROM inline_blobs WHERE digest = ?1")
            .map_err(self.err("prepare lookup"))?;
        st.exists([digest.to_hex()])
            .map_err(self.err(format!("look up blob {digest}")))
    }

    /// Calls `f` with every blob the catalog keeps, one at a time, in one read transaction.
    pub(crate) fn each_inline_blob(
        &self,
        mut f: impl FnMut(Digest, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.err("begin listing"))?;
        {
            let mut st = tx
                .prepare("SELECT digest, data FROM inline_blobs")
                .map_err(self.err("list inline blobs"))?;
            let mut rows = st.query([]).map_err(self.err("list inline blobs"))?;
            while let Some(r) = rows.next().map_err(self.err("list inline blobs"))? {
                let hex: String = r.get(0).map_err(self.err("list inline blobs"))?;
                let data: Vec<u8> = r.get(1).map_err(self.err("list inline blobs"))?;
                let digest = Digest::from_hex(&hex).map_err(|e| Error::Invalid {
                    what: "catalog inline blob",
                    detail: format!("{}: {e}", self.path.display()),
                })?;
                f(digest, data)?;
            }
        }
        tx.commit().map_err(self.err("end listing"))?;
        Ok(())
    }

    /// Forgets blobs the catalog keeps (after they were quarantined).
    pub(crate) fn forget_inline(&self, digests: &[Digest]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin removal"))?;
        for d in digests {
            tx.execute("DELETE FROM inline_blobs WHERE digest = ?1", [d.to_hex()])
                .map_err(self.err(format!("forget blob {d}")))?;
        }
        tx.commit().map_err(self.err("commit removal"))?;
        Ok(())
    }

    /// Runs `f` inside an IMMEDIATE transaction with the digests that live records need:
    /// concurrent record inserts wait until it commits.
    pub(crate) fn with_live_digests<T>(
        &self,
        f: impl FnOnce(&std::collections::HashSet<Digest>, &rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin collection"))?;
        let live = {
            let mut st = tx
                .prepare_cached("SELECT DISTINCT digest FROM artifacts WHERE evicted_at IS NULL")
                .map_err(self.err("list live blobs"))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(self.err("list live blobs"))?;
            let mut set = std::collections::HashSet::new();
            for r in rows {
                let hex = r.map_err(self.err("list live blobs"))?;
                if let Ok(d) = Digest::from_hex(&hex) {
                    set.insert(d);
                }
            }
            set
        };
        let out = f(&live, &tx)?;
        tx.commit().map_err(self.err("commit collection"))?;
        Ok(out)
    }
}

/// The `WHERE` condition of a query (on table alias `a`) and its arguments.
fn where_clause(q: &Query) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from("1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |cond: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&cond.replace('?', &format!("?{}", args.len())));
    };
    use rusqlite::types::Value as V;
    if let Some(t) = &q.test_id {
        add(" AND test_id = ?", V::Text(t.clone()));
    }
    if let Some(t) = &q.run_id {
        add(" AND run_id = ?", V::Text(t.clone()));
    }
    if let Some(k) = q.kind {
        add(" AND kind = ?", V::Text(k.as_str().into()));
    }
    if let Some(o) = q.outcome {
        add(" AND outcome = ?", V::Text(o.as_str().into()));
    }
    if let Some(a) = &q.arch {
        add(" AND arch = ?", V::Text(a.clone()));
    }
    if let Some(t) = q.since {
        add(" AND created_at >= ?", V::Integer(to_micros(t)));
    }
    if let Some(t) = q.until {
        add(" AND created_at < ?", V::Integer(to_micros(t)));
    }
    for (k, v) in &q.metadata {
        args.push(V::Text(k.clone()));
        args.push(V::Text(v.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM metadata m WHERE m.artifact = a.seq AND m.key = ?{} AND m.value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    if !q.include_evicted {
        sql.push_str(" AND evicted_at IS NULL");
    }
    (sql, args)
}

fn lookup_blob(conn: &Connection, id: &str) -> rusqlite::Result<Option<BlobOf>> {
    let mut st = conn.prepare_cached(
        "SELECT a.digest, a.evicted_at IS NOT NULL, a.eviction_reason, i.data FROM artifacts a
         LEFT JOIN inline_blobs i ON i.digest = a.digest WHERE a.id = ?1",
    )?;
    st.query_row([id], |r| {
        let digest: String = r.get(0)?;
        let digest = Digest::from_hex(&digest).map_err(|e| bad(0, e))?;
        let evicted: bool = r.get(1)?;
        let reason = evicted.then(|| r.get::<_, Option<String>>(2)).transpose()?;
        let data = if evicted { None } else { r.get(3)? };
        Ok((digest, reason.map(Option::unwrap_or_default), data))
    })
    .optional()
}

fn load_meta(conn: &Connection, seq: i64) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut st = conn.prepare_cached("SELECT key, value FROM metadata WHERE artifact = ?1")?;
    let rows = st.query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn bad(col: usize, e: Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, ArtifactRecord)> {
    let digest: String = r.get(2)?;
    let kind: String = r.get(5)?;
    let outcome: Option<String> = r.get(10)?;
    let evicted_at: Option<i64> = r.get(12)?;
    Ok((
        r.get(0)?,
        ArtifactRecord {
            id: r.get(1)?,
            digest: Digest::from_hex(&digest).map_err(|e| bad(2, e))?,
            test_id: r.get(3)?,
            run_id: r.get(4)?,
            kind: kind.parse().map_err(|e| bad(5, e))?,
            name: r.get(6)?,
            raw_size: r.get::<_, i64>(7)? as u64,
            stored_size: r.get::<_, i64>(8)? as u64,
            created_at: from_micros(r.get(9)?),
            outcome: outcome
                .map(|o| o.parse())
                .transpose()
                .map_err(|e| bad(10, e))?,
            arch: r.get(11)?,
            metadata: BTreeMap::new(),
            evicted: evicted_at
                .map(|at| -> rusqlite::Result<Eviction> {
                    Ok(Eviction {
                        at: from_micros(at),
                        reason: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
                    })
                })
                .transpose()?,
        },
    ))
}
