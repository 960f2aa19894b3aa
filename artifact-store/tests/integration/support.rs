use artifact_store::{ArtifactKind, ArtifactStore, NewArtifact, StoreOptions};
use tempfile::TempDir;

/// A fresh store in a temp dir (relaxed fsync: these tests kill processes, not power).
pub(crate) fn store() -> (TempDir, ArtifactStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ArtifactStore::open_with(dir.path().join("store"), StoreOptions::default()).unwrap();
    (dir, s)
}

/// `n` pseudo-random bytes: incompressible, so stored in a file of its own when over 16 KiB.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    testkit::noise(n, seed)
}

/// Rewrites the encoded blob the catalog keeps for `digest` with `f` (to damage it).
pub(crate) fn tamper_inline(
    store: &ArtifactStore,
    digest: &artifact_store::Digest,
    f: impl FnOnce(&mut Vec<u8>),
) {
    let db = rusqlite::Connection::open(store.root().join("catalog-v1.sqlite")).unwrap();
    let mut data: Vec<u8> = db
        .query_row(
            "SELECT data FROM inline_blobs WHERE digest = ?1",
            [digest.to_hex()],
            |r| r.get(0),
        )
        .unwrap();
    f(&mut data);
    db.execute(
        "UPDATE inline_blobs SET data = ?2 WHERE digest = ?1",
        rusqlite::params![digest.to_hex(), data],
    )
    .unwrap();
}

pub(crate) fn art(test: &str, run: &str) -> NewArtifact {
    NewArtifact::new(test, run, ArtifactKind::Log, "out.log")
}

/// The generator of `src/bin/artifact-store-stress.rs`.
pub(crate) fn content(key: u64) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match key % 6 {
        0 => Vec::new(),
        1 => vec![key as u8],
        2 | 3 => (0..(next() % 200_000) as usize)
            .map(|i| b"abcdefgh log line\n"[i % 18] ^ ((key as u8) & 1))
            .collect(),
        _ => (0..(next() % 300_000) as usize)
            .map(|_| next() as u8)
            .collect(),
    }
}

/// Lines `OK <key> <id> <digest>` printed by the stress writer.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) key: u64,
    pub(crate) id: String,
    pub(crate) digest: String,
}

pub(crate) fn parse_acks(stdout: &str) -> Vec<Ack> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            if it.next()? != "OK" {
                return None;
            }
            let key = it.next()?.parse().ok()?;
            let id = it.next()?.to_owned();
            let digest = it.next()?.to_owned();
            (digest.len() == 64).then_some(Ack { key, id, digest })
        })
        .collect()
}

pub(crate) const STRESS: &str = env!("CARGO_BIN_EXE_artifact-store-stress");
