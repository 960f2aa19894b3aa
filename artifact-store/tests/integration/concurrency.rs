use std::process::{Command, Stdio};
use std::time::Instant;

use artifact_store::retention::{KeepLastRuns, LastPassingRun, Policy};
use artifact_store::{ArtifactStore, Digest, Error, GcOptions, Query, VerifyOptions};

use crate::support::{STRESS, content, parse_acks};

/// 8 writer processes put overlapping content while a collector process applies retention and
/// collects in a loop (and this process collects too): no live record loses its blob and no
/// acknowledged put is lost (it is readable, or its record says retention evicted it).
#[test]
fn eight_writers_with_gc_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    ArtifactStore::open(&root).unwrap();
    let stop = dir.path().join("stop");
    let started = Instant::now();
    let collector = Command::new(STRESS)
        .args(["collector", root.to_str().unwrap(), stop.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            Command::new(STRESS)
                .args([
                    "writer",
                    root.to_str().unwrap(),
                    &(1000 + i).to_string(),
                    "120",
                    "25",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let local = ArtifactStore::open(&root).unwrap();
    let mut acks = Vec::new();
    let mut local_rounds = 0;
    let outputs: Vec<_> = writers
        .into_iter()
        .map(|w| {
            local.gc(&GcOptions::default()).unwrap();
            local_rounds += 1;
            w.wait_with_output().unwrap()
        })
        .collect();
    for o in &outputs {
        assert!(
            o.status.success(),
            "writer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let a = parse_acks(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(a.len(), 120);
        acks.extend(a);
    }
    std::fs::write(&stop, b"").unwrap();
    let c = collector.wait_with_output().unwrap();
    assert!(c.status.success());
    let rounds = String::from_utf8_lossy(&c.stdout).trim().to_owned();
    // One more retention pass, so that evictions are certain even on a machine so slow that the
    // collector never overlapped enough writes.
    let policy = Policy::new().with(KeepLastRuns(15)).with(LastPassingRun);
    local
        .apply_retention(&local.plan_retention(&policy, chrono::Utc::now()).unwrap())
        .unwrap();

    let store = ArtifactStore::open(&root).unwrap();
    let mut evicted = 0;
    for a in &acks {
        let rec = store
            .record_of(&a.id)
            .unwrap_or_else(|e| panic!("acknowledged put {} has no record: {e}", a.id));
        match store.get(&a.id) {
            Ok(data) => {
                assert_eq!(data, content(a.key));
                assert_eq!(Digest::of(&data).to_hex(), a.digest);
            }
            Err(Error::Evicted { reason, .. }) => {
                assert!(
                    rec.evicted.is_some()
                        && !reason.contains("missing")
                        && !reason.contains("corrupt")
                );
                evicted += 1;
            }
            Err(e) => panic!("acknowledged put {} lost: {e}", a.id),
        }
    }
    assert!(
        evicted > 0 && evicted < acks.len(),
        "retention should evict some but not all ({evicted})"
    );
    let live = store.query(&Query::new()).unwrap();
    for r in &live {
        assert!(
            store.has_blob(&r.digest).unwrap(),
            "live record {} lost its blob",
            r.id
        );
    }
    store.gc(&GcOptions::default()).unwrap();
    let report = store.verify(VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    eprintln!(
        "{} puts by 8 writers, {evicted} evicted by retention, collector {rounds}, {local_rounds} local gc rounds, in {:?}",
        acks.len(),
        started.elapsed()
    );
}
