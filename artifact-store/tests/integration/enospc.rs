//! A full file system: the store lives on a 4 MiB tmpfs that fills up in the middle of a put.
//!
//! Needs root (for `mount`). Not root: the test says why and returns early. As root it must run,
//! and a failing `mount` fails it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifact_store::{ArtifactStore, Error, Query, VerifyOptions};

use crate::support::{art, noise};

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted (then the dir removed) on drop.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// `None` when not root (the reason is printed); panics when root and `mount` fails.
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "SKIPPED: mounting a small tmpfs to fill it up needs root; run the tests as root \
                 to cover a full disk"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run `mount` (util-linux)");
        assert!(
            out.status.success(),
            "as root, `mount -t tmpfs -o size={size} tmpfs {}` must work for this test (a \
             container without CAP_SYS_ADMIN?): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.take().expect("mounted");
        let ok = Command::new("umount")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a leaked file descriptor): detach it so the temp dir can go.
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        }
    }
}

/// Every blob file and temp file under the store, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Fills the file system holding `dir` completely with a file there; returns its path.
fn fill_up(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 4096];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling up {}: {e}", filler.display()),
        }
    }
    filler
}

/// Checks the store after a failed put of an artifact of `test`: the error is clear, nothing
/// partial is visible (no temp file, no record, no blob but those of `kept`) and everything in
/// `kept` reads back.
fn assert_failed_cleanly(store: &ArtifactStore, err: &Error, test: &str, kept: &[Kept]) {
    let root = store.root();
    let msg = err.to_string();
    assert!(matches!(err, Error::StorageFull { .. }), "{err:?}");
    // Says what happened, where (a path inside the store), to what, and the fix.
    assert!(msg.contains("no space left"), "{msg}");
    assert!(msg.contains(root.to_str().unwrap()), "{msg}");
    assert!(msg.contains(&format!("test `{test}`")), "{msg}");
    assert!(msg.contains("free space"), "{msg}");
    assert!(msg.contains("gc"), "{msg}");
    let tmp = files_under(&root.join("tmp"));
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let records = store.query(&Query::new()).unwrap();
    assert_eq!(
        records.len(),
        kept.len(),
        "a record of the failed put: {msg}"
    );
    let mut blobs: Vec<_> = records
        .iter()
        .map(|r| store.blob_path(&r.digest))
        .filter(|p| p.exists())
        .collect();
    for r in &records {
        assert!(
            store.has_blob(&r.digest).unwrap(),
            "record {} lost its blob",
            r.id
        );
    }
    blobs.sort();
    blobs.dedup();
    assert_eq!(
        files_under(&root.join("content-v1")),
        blobs,
        "a blob of the failed put: {msg}"
    );
    let report = store.verify(VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    for (id, data) in kept {
        assert_eq!(&store.get(id).unwrap(), data, "artifact {id}");
    }
}

type Kept = (String, Vec<u8>);

#[test]
fn full_file_system_mid_put_leaves_nothing_partial() {
    let Some(fs_) = Tmpfs::mount("4m") else {
        return;
    };
    let root = fs_.path().join("store");
    let store = ArtifactStore::open(&root).unwrap();
    let mut kept = Vec::new();
    for i in 0..20u64 {
        let data = format!("log line {i}\n")
            .repeat(50 + i as usize)
            .into_bytes();
        kept.push((
            store.add_bytes(art("before", "r1"), &data).unwrap().id,
            data,
        ));
    }
    let big = noise(1 << 20, 7);
    kept.push((store.add_bytes(art("before", "r1"), &big).unwrap().id, big));

    // 1. A streamed put (8 MiB, incompressible) runs out of space half-way through its temp file.
    let huge = noise(8 << 20, 11);
    let err = store.add_bytes(art("huge", "r2"), &huge).unwrap_err();
    eprintln!("streamed put: {err}");
    assert_failed_cleanly(&store, &err, "huge", &kept);
    // A compressible stream that still does not fit (the compressed frame is written as it goes).
    let text: Vec<u8> = noise(8 << 20, 13)
        .into_iter()
        .map(|b| b"0123456789abcdef\n"[(b % 17) as usize])
        .collect();
    let err = store.add_bytes(art("text", "r2"), &text[..]).unwrap_err();
    eprintln!("compressed put: {err}");
    assert_failed_cleanly(&store, &err, "text", &kept);
    // A batch fails as a whole.
    let batch = (0..4u64).map(|i| (art("batch", "r2"), noise(1 << 20, 100 + i)));
    let err = store
        .add_many(batch.map(|(a, d)| (a, std::io::Cursor::new(d))))
        .unwrap_err();
    eprintln!("batch put: {err}");
    assert_failed_cleanly(&store, &err, "batch", &kept);

    // 2. The file system full to the last byte, then a little room: small puts go on until one
    //    fails, in its blob or in the catalog (SQLite's WAL cannot grow). Either way it is all
    //    or nothing.
    let filler = fill_up(fs_.path());
    let err = store.add_bytes(art("tiny", "r3"), b"tiny").unwrap_err();
    assert_failed_cleanly(&store, &err, "tiny", &kept);
    let mut catalog_full = false;
    for room in [8, 16, 24, 32, 48, 64, 96, 128] {
        let len = fs::metadata(&filler).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(len.saturating_sub(room * 1024))
            .unwrap();
        let mut added = Vec::new();
        let err = loop {
            let data = format!("small artifact {room} {}", added.len()).into_bytes();
            match store.add_bytes(art("small", "r4"), &data) {
                Ok(r) => added.push((r.id, data)),
                Err(e) => break e,
            }
            assert!(added.len() < 10_000, "never ran out of space");
        };
        let on_catalog = err.to_string().contains("catalog-v1.sqlite");
        eprintln!(
            "{room} KiB freed: {} small puts, then ({}) {err}",
            added.len(),
            if on_catalog { "catalog" } else { "blob" }
        );
        catalog_full |= on_catalog;
        // Those that succeeded are there; the failed one left nothing.
        kept.extend(added);
        assert_failed_cleanly(&store, &err, "small", &kept);
        if catalog_full {
            break;
        }
    }
    assert!(
        catalog_full,
        "no put failed in the catalog: the test does not cover a full SQLite database any more"
    );

    // 3. With room again, the store works as before.
    fs::remove_file(&filler).unwrap();
    let after = noise(1 << 20, 17);
    let r = store.add_bytes(art("after", "r5"), &after).unwrap();
    assert_eq!(store.get(&r.id).unwrap(), after);
    for (id, data) in &kept {
        assert_eq!(&store.get(id).unwrap(), data, "artifact {id}");
    }
    assert!(store.verify(VerifyOptions::default()).unwrap().is_clean());
    drop(store);
}
