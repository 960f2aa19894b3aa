//! The shared store: workers writing through to one remote (a directory, or Garage on loopback
//! through S3), one pull seeing everything, tampering refused, leases and remote collection,
//! and a three-node Garage cluster losing a node during uploads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_store::{
    ArtifactKind, ArtifactStore, BlobBackend, DirBackend, Error, NewArtifact, ObjectStoreBackend,
    Query, RemoteGcOptions, RemoteOptions, VerifyOptions,
};
use object_store::ObjectStoreExt;
use testkit::{GarageCluster, GarageNode};

use crate::support::noise;

fn s3(env: Vec<(&'static str, String)>, bucket: &str, prefix: &str) -> Arc<dyn BlobBackend> {
    let opts = RemoteOptions {
        retry_timeout: Duration::from_secs(20),
        ..RemoteOptions::default()
    };
    Arc::new(
        ObjectStoreBackend::connect_with(&format!("s3://{bucket}/{prefix}"), env, &opts).unwrap(),
    )
}

fn worker(dir: &std::path::Path, name: &str, remote: Arc<dyn BlobBackend>) -> ArtifactStore {
    ArtifactStore::open(dir.join(name))
        .unwrap()
        .with_remote(remote)
}

/// What a worker stores for test `t`: a console log (small: kept inline locally), a 20 MiB
/// file for some (multipart upload), and a file every worker shares (dedup across workers).
fn artifacts(t: &str, seed: u64, big: bool) -> Vec<(NewArtifact, Vec<u8>)> {
    let mut v = vec![
        (
            NewArtifact::new(t, "campaign", ArtifactKind::Console, "console.log"),
            format!("[    0.000000] Linux version 6.1 ({t})\nbooted\n")
                .repeat(20)
                .into_bytes(),
        ),
        (
            NewArtifact::new(t, "campaign", ArtifactKind::Other, "shared.bin"),
            noise(40_000, 4242),
        ),
    ];
    if big {
        v.push((
            NewArtifact::new(t, "campaign", ArtifactKind::CoreDump, "core"),
            noise(20 << 20, seed),
        ));
    }
    v
}

fn add(store: &ArtifactStore, items: &[(NewArtifact, Vec<u8>)]) -> Vec<String> {
    store
        .add_many(items.iter().map(|(a, d)| (a.clone(), d.as_slice())))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn workers_writing_through_a_directory_backend_are_all_seen_by_one_pull() {
    let dir = tempfile::tempdir().unwrap();
    let remote: Arc<dyn BlobBackend> =
        Arc::new(DirBackend::open(dir.path().join("remote")).unwrap());
    let a = worker(dir.path(), "a", remote.clone());
    let b = worker(dir.path(), "b", remote.clone());
    let mut want = Vec::new();
    for (s, t) in [(&a, "t1"), (&b, "t2")] {
        let items = artifacts(t, 1, false);
        for (id, (_, data)) in add(s, &items).into_iter().zip(items) {
            want.push((id, data));
        }
    }
    let merged = worker(dir.path(), "merged", remote);
    let pulled = merged.pull_records().unwrap();
    assert_eq!(pulled.records_added, 4, "{pulled:?}");
    assert_eq!(
        merged.pull_records().unwrap().records_added,
        0,
        "pulled once"
    );
    for (id, data) in &want {
        assert_eq!(&merged.get(id).unwrap(), data);
    }
    assert!(merged.verify(VerifyOptions::default()).unwrap().is_clean());

    // A large blob fetched from the remote keeps its tree: its ranges are verified piecewise.
    let big = noise(1 << 20, 9);
    let r = a
        .add_bytes(
            NewArtifact::new("t1", "campaign", ArtifactKind::Other, "big.bin"),
            &big,
        )
        .unwrap();
    merged.pull_records().unwrap();
    assert!(
        merged.open_range(&r.id, 0..10).unwrap().is_none(),
        "not fetched yet"
    );
    assert!(merged.get(&r.id).unwrap() == big);
    let mut got = Vec::new();
    for piece in merged
        .open_range(&r.id, 0..big.len() as u64)
        .unwrap()
        .unwrap()
    {
        got.extend_from_slice(&piece.unwrap());
    }
    assert!(got == big);
}

#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn three_workers_share_a_garage_bucket_and_one_pull_sees_every_artifact() {
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (node, dir, acked) = (&node, dir.path(), &acked);
            s.spawn(move || {
                let store = worker(
                    dir,
                    &format!("w{w}"),
                    s3(node.env(), node.bucket(), "ci/run-1"),
                );
                let _lease = store.lease(Duration::from_secs(30)).unwrap();
                for i in 0..3u64 {
                    let t = format!("w{w}-t{i}");
                    let items = artifacts(&t, w * 10 + i, i == 0);
                    let ids = add(&store, &items);
                    let mut acked = acked.lock().unwrap();
                    for (id, (_, data)) in ids.into_iter().zip(items) {
                        acked.push((t.clone(), id, data));
                    }
                }
            });
        }
    });
    let acked = acked.into_inner().unwrap();
    // A fresh machine: nothing local, everything from the bucket.
    let merged = worker(
        dir.path(),
        "merged",
        s3(node.env(), node.bucket(), "ci/run-1"),
    );
    let pulled = merged.pull_records().unwrap();
    assert_eq!(pulled.records_added as usize, acked.len(), "{pulled:?}");
    for w in 0..3 {
        for i in 0..3 {
            let t = format!("w{w}-t{i}");
            let logs = merged
                .query(&Query::new().test(&t).kind(ArtifactKind::Console))
                .unwrap();
            assert_eq!(logs.len(), 1, "console log of {t}");
        }
    }
    for (t, id, data) in &acked {
        assert!(merged.get(id).unwrap() == *data, "{t} {id}");
    }
    // The shared file went up once however many workers stored it.
    let s3 = node.store();
    let keys = testkit_keys(&s3, "ci/run-1/content-v1");
    assert_eq!(keys.len(), 1 + 3 * 3 + 3, "blobs: {keys:?}");
    assert!(merged.verify(VerifyOptions::default()).unwrap().is_clean());
    // Another prefix in the same bucket is another store.
    let other = worker(dir.path(), "other", s3_for(&node, "ci/run-2"));
    assert_eq!(other.pull_records().unwrap().records_added, 0);
}

fn s3_for(node: &GarageNode, prefix: &str) -> Arc<dyn BlobBackend> {
    s3(node.env(), node.bucket(), prefix)
}

fn testkit_keys(s3: &object_store::aws::AmazonS3, prefix: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(testkit::list_keys(s3, Some(&prefix.into())))
        .unwrap()
}

#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn a_tampered_object_in_the_bucket_is_refused_naming_the_artifact() {
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "w", s3_for(&node, "p"));
    let data = noise(100_000, 7);
    let r = w
        .add_bytes(
            NewArtifact::new("t", "r", ArtifactKind::Log, "out.log"),
            &data,
        )
        .unwrap();
    // Someone with write access to the bucket changes one byte of the blob.
    let hex = r.digest.to_hex();
    let key = object_store::path::Path::from(format!(
        "p/content-v1/blake3/{}/{}/{hex}",
        &hex[..2],
        &hex[2..4]
    ));
    let s3 = node.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bytes = rt
        .block_on(async { s3.get(&key).await.unwrap().bytes().await.unwrap() })
        .to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    rt.block_on(s3.put(&key, bytes.into())).unwrap();

    let reader = worker(dir.path(), "reader", s3_for(&node, "p"));
    reader.pull_records().unwrap();
    let err = reader.get(&r.id).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Corrupt { artifact: Some(a), .. } if *a == r.id),
        "{err:?}"
    );
    assert!(msg.contains("s3://") && msg.contains(&hex), "{msg}");
    assert!(!reader.has_blob(&r.digest).unwrap(), "nothing corrupt kept");
    // The writer's own copy is intact.
    assert_eq!(w.get(&r.id).unwrap(), data);
}

#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn wrong_credentials_a_missing_bucket_and_no_server_fail_clearly() {
    let node = GarageNode::start();
    let opts = RemoteOptions {
        max_retries: 2,
        retry_timeout: Duration::from_secs(2),
        ..RemoteOptions::default()
    };
    let mut env = node.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "0".repeat(64);
        }
    }
    let t = Instant::now();
    let err = ObjectStoreBackend::connect_with(&format!("s3://{}/p", node.bucket()), env, &opts)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Remote {
                permanent: true,
                ..
            }
        ) && msg.contains("AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "not retried: {:?}",
        t.elapsed()
    );

    let err =
        ObjectStoreBackend::connect_with("s3://no-such-bucket/p", node.env(), &opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Remote {
                permanent: true,
                ..
            }
        ) && msg.contains("bucket does not exist"),
        "{msg}"
    );

    let mut env = node.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT" {
            *v = "http://127.0.0.1:9".into();
        }
    }
    let t = Instant::now();
    let err = ObjectStoreBackend::connect_with(&format!("s3://{}/p", node.bucket()), env, &opts)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Remote {
                permanent: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let err = ObjectStoreBackend::connect("s3://KEY:SECRET@bucket/p", &opts).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { .. }) && err.to_string().contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
}

#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn remote_collection_removes_only_unneeded_blobs_older_than_every_live_lease() {
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let a = worker(dir.path(), "a", s3_for(&node, "gc"));
    let keep = a
        .add_bytes(
            NewArtifact::new("t", "r1", ArtifactKind::Log, "keep"),
            &noise(30_000, 1),
        )
        .unwrap();
    let old = a
        .add_bytes(
            NewArtifact::new("t", "r1", ArtifactKind::Log, "old"),
            &noise(30_000, 2),
        )
        .unwrap();
    a.evict(&[(old.id.clone(), "retention".into())]).unwrap();

    // A second worker holds a lease and stores, then evicts, something: too young to collect
    // while its lease lives.
    let b = worker(dir.path(), "b", s3_for(&node, "gc"));
    std::thread::sleep(Duration::from_millis(1100));
    let lease = b.lease(Duration::from_secs(30)).unwrap();
    let young = b
        .add_bytes(
            NewArtifact::new("t", "r2", ArtifactKind::Log, "young"),
            &noise(30_000, 3),
        )
        .unwrap();
    b.evict(&[(young.id.clone(), "retention".into())]).unwrap();

    let collector = worker(dir.path(), "gc", s3_for(&node, "gc"));
    let grace0 = RemoteGcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let rep = collector.gc_remote(&grace0).unwrap();
    assert_eq!(rep.live_leases, 1, "{rep:?}");
    assert_eq!(rep.blobs_removed, 1, "only the old evicted blob: {rep:?}");
    assert_eq!(rep.blobs_too_young, 1, "{rep:?}");
    assert_eq!(collector.get(&keep.id).unwrap(), noise(30_000, 1));
    assert!(matches!(
        collector.get(&old.id).unwrap_err(),
        Error::Evicted { .. }
    ));

    // The lease ends: now the young one goes too.
    drop(lease);
    let rep = collector.gc_remote(&grace0).unwrap();
    assert_eq!((rep.live_leases, rep.blobs_removed), (0, 1), "{rep:?}");
    // With the default grace period nothing written in the last hour goes.
    let c = worker(dir.path(), "c", s3_for(&node, "gc"));
    let gone = c
        .add_bytes(
            NewArtifact::new("t", "r3", ArtifactKind::Log, "x"),
            &noise(30_000, 4),
        )
        .unwrap();
    c.evict(&[(gone.id, "retention".into())]).unwrap();
    let rep = collector.gc_remote(&RemoteGcOptions::default()).unwrap();
    assert_eq!(rep.blobs_removed, 0, "{rep:?}");
    assert_eq!(collector.get(&keep.id).unwrap(), noise(30_000, 1));
}

/// Replication factor 3 on three loopback nodes; one node is killed while four writers upload.
/// Every put that returned success must read back, verified, from a fresh store afterwards.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn a_three_node_cluster_loses_a_node_during_uploads_and_loses_no_acknowledged_put() {
    let mut cluster = GarageCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let remotes: Vec<Arc<dyn BlobBackend>> = (0..4)
        .map(|w| {
            s3(
                cluster.env(if w % 2 == 0 { 0 } else { 2 }),
                cluster.bucket(),
                "ha",
            )
        })
        .collect();
    let acked = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    let killed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for (w, remote) in remotes.iter().enumerate() {
            let (dir, acked, failed) = (dir.path(), &acked, &failed);
            s.spawn(move || {
                let store = worker(dir, &format!("w{w}"), remote.clone());
                for i in 0..12u64 {
                    let seed = (w as u64) << 32 | i;
                    let len = if i % 4 == 0 {
                        6 << 20
                    } else {
                        30_000 + i as usize
                    };
                    let data = noise(len, seed);
                    let a = NewArtifact::new(format!("w{w}-t{i}"), "ha", ArtifactKind::Log, "out");
                    match store.add_bytes(a, &data) {
                        Ok(r) => acked.lock().unwrap().push((r.id, seed, len)),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
        // Kill node 1 once the uploads are under way.
        let t = Instant::now();
        while acked.lock().unwrap().len() < 8 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.kill(1);
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(killed.into_inner());
    let acked = acked.into_inner().unwrap();
    let failed = failed.into_inner().unwrap();
    eprintln!(
        "{} acknowledged puts, {} failed: {failed:?}",
        acked.len(),
        failed.len()
    );
    assert!(
        acked.len() >= 40,
        "most puts should survive one node of three: {failed:?}"
    );
    let fresh = worker(
        dir.path(),
        "fresh",
        s3(cluster.env(2), cluster.bucket(), "ha"),
    );
    fresh.pull_records().unwrap();
    for (id, seed, len) in &acked {
        assert!(
            fresh.get(id).unwrap() == noise(*len, *seed),
            "acknowledged put {id} reads back"
        );
    }
    assert!(fresh.verify(VerifyOptions::default()).unwrap().is_clean());
}

/// The server goes away in the middle of a 256 MiB upload: the put fails with a transient remote
/// error (after its retries) instead of hanging or reporting success, the artifact stays stored
/// locally, and once the server is back `push_run` publishes it; a fresh store then reads it.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn a_server_gone_mid_upload_fails_the_put_and_push_run_publishes_it_later() {
    let mut garage = GarageCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let opts = RemoteOptions {
        part_size: 5 << 20,
        max_retries: 2,
        retry_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(5),
    };
    let url = format!("s3://{}/gone", garage.bucket());
    let backend = |env: Vec<(&'static str, String)>| -> Arc<dyn BlobBackend> {
        Arc::new(ObjectStoreBackend::connect_with(&url, env, &opts).unwrap())
    };
    let w = worker(dir.path(), "w", backend(garage.env(0)));
    // Large enough that the upload (~1 s here) is still running when the server goes.
    let data = noise(256 << 20, 99);
    let failed = std::thread::scope(|s| {
        let put = s.spawn(|| {
            w.add_bytes(
                NewArtifact::new("t", "r", ArtifactKind::CoreDump, "core"),
                &data,
            )
        });
        // The record commits locally before the push starts: once it is visible, let the
        // upload run a little, then take the server away.
        let t = Instant::now();
        while w.query(&Query::new().run("r")).unwrap().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the local put never committed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        garage.kill(0);
        put.join().unwrap()
    });
    let err = match failed {
        Err(e) => e,
        Ok(r) => panic!(
            "the upload of {} finished before the server went away: nothing was tested",
            r.id
        ),
    };
    assert!(
        matches!(
            err,
            Error::Remote {
                permanent: false,
                ..
            }
        ),
        "{err:?}"
    );
    // Stored locally, not lost.
    let local = w.query(&Query::new().run("r")).unwrap();
    assert_eq!(local.len(), 1);
    assert_eq!(w.get(&local[0].id).unwrap(), data);

    garage.restart(0);
    let w = worker(dir.path(), "w", backend(garage.env(0)));
    let pushed = w.push_run("r").unwrap();
    assert_eq!(
        (pushed.records, pushed.blobs_uploaded),
        (1, 1),
        "{pushed:?}"
    );
    let fresh = worker(dir.path(), "fresh", backend(garage.env(0)));
    assert_eq!(fresh.pull_records().unwrap().records_added, 1);
    assert!(fresh.get(&local[0].id).unwrap() == data);
}

/// Four writers store the same 12 MiB content at the same moment: every put succeeds, the
/// bucket holds one blob, and every record reads back.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn writers_racing_on_one_blob_all_succeed_and_share_it() {
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(12 << 20, 5);
    let barrier = std::sync::Barrier::new(4);
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|w| {
                let (node, dir, data, barrier) = (&node, dir.path(), &data, &barrier);
                s.spawn(move || {
                    let store = worker(dir, &format!("w{w}"), s3_for(node, "race"));
                    barrier.wait();
                    store
                        .add_bytes(
                            NewArtifact::new(format!("t{w}"), "r", ArtifactKind::Other, "x"),
                            data,
                        )
                        .unwrap()
                        .id
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let keys = testkit_keys(&node.store(), "race/content-v1");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let fresh = worker(dir.path(), "fresh", s3_for(&node, "race"));
    fresh.pull_records().unwrap();
    for id in &ids {
        assert!(fresh.get(id).unwrap() == data);
    }
}

/// Retention on a shared store judges every worker's records (pulled first), publishes its
/// evictions, and the remote collection that follows keeps what the grace period protects;
/// a later collection without grace removes the evicted blob, and every other store sees the
/// eviction when it pulls.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn retention_over_a_shared_store_sees_every_worker_and_publishes_evictions() {
    use artifact_store::retention::KeepLastRuns;
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let a = worker(dir.path(), "a", s3_for(&node, "ret"));
    let old = a
        .add_bytes(
            NewArtifact::new("boot", "run-1", ArtifactKind::Log, "out"),
            &noise(20_000, 1),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let b = worker(dir.path(), "b", s3_for(&node, "ret"));
    let new = b
        .add_bytes(
            NewArtifact::new("boot", "run-2", ArtifactKind::Log, "out"),
            &noise(20_000, 2),
        )
        .unwrap();
    // B's store holds only its own record, but the plan judges both runs.
    let plan = b
        .plan_retention(&KeepLastRuns(1), chrono::Utc::now())
        .unwrap();
    let removed: Vec<&str> = plan.removed().map(|d| d.artifact.as_str()).collect();
    assert_eq!(removed, vec![old.id.as_str()]);
    let outcome = b.apply_retention(&plan).unwrap();
    assert_eq!(outcome.records_evicted, 1);
    let remote_gc = outcome
        .remote_gc
        .expect("a store with a remote collects it");
    assert_eq!(
        remote_gc.blobs_removed, 0,
        "younger than the grace period: {remote_gc:?}"
    );
    let rep = b
        .gc_remote(&RemoteGcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        })
        .unwrap();
    assert_eq!(rep.blobs_removed, 1, "{rep:?}");
    // A sees the eviction when it pulls; a fresh store too.
    assert_eq!(a.pull_records().unwrap().records_evicted, 1);
    assert!(a.record_of(&old.id).unwrap().evicted.is_some());
    let fresh = worker(dir.path(), "fresh", s3_for(&node, "ret"));
    fresh.pull_records().unwrap();
    assert!(matches!(
        fresh.get(&old.id).unwrap_err(),
        Error::Evicted { .. }
    ));
    assert_eq!(fresh.get(&new.id).unwrap(), noise(20_000, 2));
}

/// 256 MiB of incompressible content goes up to the bucket in parts and comes back from it to
/// a fresh store: peak memory grows by a few parts, not by the content.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn a_large_blob_goes_up_and_comes_back_with_bounded_memory() {
    struct Noise(u64, u64);
    impl std::io::Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len().min(self.0 as usize)) & !7;
            for c in buf[..n].chunks_exact_mut(8) {
                self.1 ^= self.1 << 13;
                self.1 ^= self.1 >> 7;
                self.1 ^= self.1 << 17;
                c.copy_from_slice(&self.1.to_le_bytes());
            }
            self.0 -= n as u64;
            Ok(n)
        }
    }
    fn hwm_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let size = 256u64 << 20;
    let w = worker(dir.path(), "w", s3_for(&node, "big"));
    let before = hwm_kib();
    let r = w
        .add(
            NewArtifact::new("t", "r", ArtifactKind::CoreDump, "core"),
            Noise(size, 7),
        )
        .unwrap();
    let fresh = worker(dir.path(), "fresh", s3_for(&node, "big"));
    fresh.pull_records().unwrap();
    let mut out = std::io::sink();
    assert_eq!(fresh.read_to(&r.id, &mut out).unwrap(), size);
    let grown = hwm_kib().saturating_sub(before);
    eprintln!(
        "peak memory grew by {grown} KiB for {} MiB up and down",
        size >> 20
    );
    assert!(grown < 96 * 1024, "peak memory grew by {grown} KiB");
}

/// Credentials, region and endpoint from a profile of the AWS shared files, as the AWS tools
/// read them; a profile that is in neither file is a clear error naming both.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn credentials_and_endpoint_come_from_an_aws_profile() {
    let node = GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = GK000000000000000000000000\naws_secret_access_key = {}\n\n\
             [ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            "0".repeat(64),
            node.key_id(),
            node.secret()
        ),
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nregion = {}\nendpoint_url = {}\n",
            node.region(),
            node.endpoint()
        ),
    )
    .unwrap();
    let files = |profile: &str| {
        vec![
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ("AWS_CONFIG_FILE", config.display().to_string()),
            ("AWS_PROFILE", profile.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    };
    let url = format!("s3://{}/profiles", node.bucket());
    let opts = RemoteOptions::default();
    let backend = ObjectStoreBackend::connect_with(&url, files("ci"), &opts).unwrap();
    let w = worker(dir.path(), "w", Arc::new(backend));
    let r = w
        .add_bytes(
            NewArtifact::new("t", "r", ArtifactKind::Log, "x"),
            b"through a profile",
        )
        .unwrap();
    let fresh = worker(
        dir.path(),
        "fresh",
        Arc::new(ObjectStoreBackend::connect_with(&url, files("ci"), &opts).unwrap()),
    );
    fresh.pull_records().unwrap();
    assert_eq!(fresh.get(&r.id).unwrap(), b"through a profile");

    let err = ObjectStoreBackend::connect_with(&url, files("nope"), &opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Invalid { .. })
            && msg.contains("`nope`")
            && msg.contains(&creds.display().to_string())
            && msg.contains(&config.display().to_string()),
        "{msg}"
    );
}

/// The remote is not trusted: a malformed record object, a record with a control character in
/// its id, and an object larger than any record object may be all fail the pull, naming the
/// object; nothing of them reaches the catalog.
#[test]
fn malformed_remote_records_are_refused_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("remote");
    let remote: Arc<dyn BlobBackend> = Arc::new(DirBackend::open(&root).unwrap());
    let w = worker(dir.path(), "w", remote.clone());
    w.add_bytes(NewArtifact::new("t", "r", ArtifactKind::Log, "x"), b"fine")
        .unwrap();
    let records = root.join("records-v1");
    let good = std::fs::read_dir(&records)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"{ not json".to_vec()),
        (
            "control",
            text.replacen("\"id\":\"", "\"id\":\"\\u0007", 1)
                .into_bytes(),
        ),
        ("huge", vec![b' '; (16 << 20) + 1]),
    ];
    for (name, bytes) in cases {
        let path = records.join(format!("zz-{name}.json"));
        std::fs::write(&path, bytes).unwrap();
        let reader = worker(dir.path(), &format!("reader-{name}"), remote.clone());
        let err = reader.pull_records().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Remote {
                    permanent: true,
                    ..
                }
            ) && msg.contains(&format!("zz-{name}.json")),
            "{name}: {msg}"
        );
        std::fs::remove_file(&path).unwrap();
        // Nothing of the bad object went in; without it the pull completes.
        assert!(reader.query(&Query::new()).unwrap().len() <= 1, "{name}");
        reader.pull_records().unwrap();
        assert_eq!(reader.query(&Query::new()).unwrap().len(), 1, "{name}");
    }
}

/// A remote whose deletions hang (a server that stopped answering).
#[derive(Debug)]
struct HangingDeletes(DirBackend);

impl BlobBackend for HangingDeletes {
    fn location(&self) -> String {
        self.0.location()
    }
    fn stat(&self, key: &str) -> artifact_store::Result<Option<artifact_store::ObjectFacts>> {
        self.0.stat(key)
    }
    fn put(
        &self,
        key: &str,
        source: &mut dyn std::io::Read,
        size: u64,
    ) -> artifact_store::Result<()> {
        self.0.put(key, source, size)
    }
    fn get(&self, key: &str, out: &mut dyn std::io::Write) -> artifact_store::Result<Option<u64>> {
        self.0.get(key, out)
    }
    fn delete(&self, _key: &str) -> artifact_store::Result<()> {
        std::thread::sleep(Duration::from_secs(60));
        Ok(())
    }
    fn list(
        &self,
        prefix: &str,
    ) -> artifact_store::Result<Vec<(String, artifact_store::ObjectFacts)>> {
        self.0.list(prefix)
    }
}

/// Dropping a lease never waits on the remote for longer than `LEASE_DROP_WAIT`, although its
/// deletion hangs; `release` ends a lease and waits, and the lease object is gone afterwards.
#[test]
fn dropping_a_lease_is_bounded_when_the_remote_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let hanging: Arc<dyn BlobBackend> = Arc::new(HangingDeletes(
        DirBackend::open(tmp.path().join("remote")).unwrap(),
    ));
    let store = worker(tmp.path(), "w", hanging);
    let lease = store.lease(Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    drop(lease);
    let waited = started.elapsed();
    assert!(
        waited >= artifact_store::LEASE_DROP_WAIT && waited < artifact_store::LEASE_DROP_WAIT * 2,
        "dropping the lease took {waited:?}"
    );

    let remote: Arc<dyn BlobBackend> =
        Arc::new(DirBackend::open(tmp.path().join("remote2")).unwrap());
    let store = worker(tmp.path(), "w2", remote.clone());
    let lease = store.lease(Duration::from_secs(30)).unwrap();
    let key = lease.key().to_owned();
    assert!(remote.stat(&key).unwrap().is_some());
    lease.release().unwrap();
    assert!(
        remote.stat(&key).unwrap().is_none(),
        "the lease object is deleted"
    );
}
