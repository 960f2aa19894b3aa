use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use artifact_store::{ArtifactStore, Digest, GcOptions, Query, VerifyOptions};

use crate::support::{STRESS, content, parse_acks};

/// A writer process (puts, records, occasional collections) is killed with SIGKILL at random
/// points 200 times. Afterwards: no corrupt or partial blob, no record without its blob, every
/// acknowledged put readable with the right content, and `verify` clean after a collection.
#[test]
fn writer_killed_200_times_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    ArtifactStore::open(&root).unwrap();
    let started = Instant::now();
    let mut acks = Vec::new();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let kills = 200;
    let mut killed_mid_run = 0;
    // On a loaded host a writer may be killed before its first put more often than not: more
    // writers are killed until enough puts were acknowledged to mean anything.
    let mut i = 0;
    while i < kills || (acks.len() <= 200 && i < 5 * kills) {
        let writer = i;
        i += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut child = Command::new(STRESS)
            .args([
                "writer",
                root.to_str().unwrap(),
                &writer.to_string(),
                "1000000",
                "7",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill somewhere between start-up and a few dozen puts.
        std::thread::sleep(Duration::from_micros(2_000 + x % 60_000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = child.wait().unwrap();
        killed_mid_run += (status.code().is_none()) as u32;
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        acks.extend(parse_acks(&out));
    }
    assert!(
        killed_mid_run >= kills,
        "only {killed_mid_run} writers were killed mid-run"
    );
    assert!(
        acks.len() > 200,
        "too few successful puts ({}) to mean anything",
        acks.len()
    );

    let store = ArtifactStore::open(&root).unwrap();
    // Before any cleanup: nothing corrupt or partial is visible, no record lacks its blob.
    let report = store.verify(VerifyOptions::default()).unwrap();
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert!(report.missing.is_empty(), "{report:?}");
    assert!(report.stray_files.is_empty(), "{report:?}");
    for a in &acks {
        let data = store
            .get(&a.id)
            .unwrap_or_else(|e| panic!("acknowledged put {} lost: {e}", a.id));
        assert_eq!(data, content(a.key));
        assert_eq!(Digest::of(&data).to_hex(), a.digest);
    }
    let records = store.query(&Query::new().include_evicted(true)).unwrap();
    assert!(records.len() >= acks.len());
    // Collect what the killed writers left (temp files, blobs stored but never recorded).
    let gc = store.gc(&GcOptions::default()).unwrap();
    let report = store.verify(VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    eprintln!(
        "{i} kills, {} acknowledged puts, {} records, gc removed {} temp files and {} orphan blobs, in {:?}",
        acks.len(),
        records.len(),
        gc.temp_files_removed,
        gc.blobs_removed,
        started.elapsed()
    );
}
