use std::fs;
use std::io::{Read, Write};

use artifact_store::{
    ArtifactKind, ArtifactStore, Digest, Error, GcOptions, NewArtifact, Query, TestOutcome,
    VerifyOptions,
};
use chrono::{Duration, Utc};

use crate::support::{art, noise, store, tamper_inline};

#[test]
fn put_get_dedup_and_layout() {
    let (_d, s) = store();
    // Larger than an inline blob: a file of its own.
    let data = noise(40_000, 1);
    let a = s.add_bytes(art("t", "r1"), &data).unwrap();
    let b = s.add_bytes(art("t", "r2"), &data).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest, Digest::of(&data));
    assert_ne!(a.id, b.id);
    let hex = a.digest.to_hex();
    let p = s
        .root()
        .join("content-v1/blake3")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    assert!(p.is_file());
    assert_eq!(s.blob_path(&a.digest), p);
    assert_eq!(s.get(&b.id).unwrap(), data);
    let pb = s.put_blob(data.as_slice()).unwrap();
    assert!(pb.dedup());
    drop(pb);
    assert!(
        fs::read_dir(s.root().join("tmp")).unwrap().next().is_none(),
        "temp files cleaned up"
    );
}

#[test]
fn small_blobs_live_in_the_catalog_and_are_verified_like_files() {
    let (_d, s) = store();
    let a = s.add_bytes(art("t", "r1"), b"hello").unwrap();
    let b = s.add_bytes(art("t", "r2"), b"hello").unwrap();
    assert_eq!(a.digest, b.digest);
    assert!(s.has_blob(&a.digest).unwrap());
    assert!(!s.blob_path(&a.digest).exists(), "no file for a small blob");
    assert_eq!(s.get(&a.id).unwrap(), b"hello");
    assert_eq!(s.stats().unwrap().blobs, 1);
    let log = "[    0.1] a kernel log line\n".repeat(300).into_bytes();
    let c = s.add_bytes(art("t", "r3"), &log).unwrap();
    assert!(c.stored_size < c.raw_size, "compressed: {c:?}");
    assert_eq!(s.get(&c.id).unwrap(), log);
    assert_eq!(s.open_blob(&c.digest).unwrap().len_hint(), log.len() as u64);

    // Damaged in the database: refused, naming the artifact and where the blob lives.
    tamper_inline(&s, &c.digest, |d| {
        let last = d.len() - 1;
        d[last] ^= 1;
    });
    let err = s.get(&c.id).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { artifact: Some(x), .. } if *x == c.id),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("catalog-v1.sqlite#blob/"), "{msg}");
    assert!(s.read_to(&c.id, &mut Vec::new()).is_err());
    let rep = s.verify(VerifyOptions::default()).unwrap();
    assert_eq!(rep.corrupt.len(), 1, "{rep:?}");
    assert_eq!(rep.corrupt[0].artifacts, vec![c.id.clone()]);
    let rep = s.verify(VerifyOptions { repair: true }).unwrap();
    assert!(rep.repaired);
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
    assert_eq!(
        s.record_of(&c.id).unwrap().evicted.unwrap().reason,
        "blob corrupt"
    );
    assert_eq!(
        fs::read_dir(s.root().join("quarantine")).unwrap().count(),
        1,
        "the damaged blob is kept in quarantine"
    );
    // A header announcing a huge content is refused too, without allocating it.
    tamper_inline(&s, &a.digest, |d| {
        d[8..16].copy_from_slice(&u64::MAX.to_le_bytes())
    });
    assert!(matches!(s.get(&a.id).unwrap_err(), Error::Corrupt { .. }));
    tamper_inline(&s, &a.digest, |d| {
        d[8..16].copy_from_slice(&5u64.to_le_bytes())
    });
    assert_eq!(s.get(&a.id).unwrap(), b"hello");

    // Evicted and collected: the row goes, the other record's blob stays.
    s.evict(&[(a.id.clone(), "old".into()), (b.id.clone(), "old".into())])
        .unwrap();
    let gc = s.gc(&GcOptions::default()).unwrap();
    assert_eq!(gc.blobs_removed, 1, "{gc:?}");
    assert!(!s.has_blob(&a.digest).unwrap());
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
}

#[test]
fn a_version_1_catalog_is_upgraded_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let data = noise(40_000, 2);
    let id = {
        let s = ArtifactStore::open(&root).unwrap();
        s.add_bytes(art("t", "r"), &data).unwrap().id
    };
    // What version 1 wrote: no inline_blobs table.
    let db = rusqlite::Connection::open(root.join("catalog-v1.sqlite")).unwrap();
    db.execute_batch("DROP TABLE inline_blobs; PRAGMA user_version = 1;")
        .unwrap();
    drop(db);
    let s = ArtifactStore::open(&root).unwrap();
    assert_eq!(s.get(&id).unwrap(), data);
    let small = s.add_bytes(art("t", "r2"), b"small").unwrap();
    assert_eq!(s.get(&small.id).unwrap(), b"small");
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
}

#[test]
fn a_version_2_catalog_gains_the_kind_index_and_results_come_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let t0 = Utc::now() - Duration::hours(3);
    {
        let s = ArtifactStore::open(&root).unwrap();
        s.add_bytes(art("t", "r0"), b"log").unwrap();
    }
    // What version 2 wrote: no index by kind.
    let db = rusqlite::Connection::open(root.join("catalog-v1.sqlite")).unwrap();
    db.execute_batch("DROP INDEX artifacts_kind; PRAGMA user_version = 2;")
        .unwrap();
    drop(db);
    let s = ArtifactStore::open(&root).unwrap();
    for (i, run) in ["r1", "r2", "r3"].iter().enumerate() {
        let a = NewArtifact::new("t", *run, ArtifactKind::Result, "result.json")
            .created_at(t0 + Duration::minutes(i as i64))
            .meta("duration-ms", format!("{}", 100 + i));
        s.add_bytes(a, b"{}").unwrap();
    }
    let report = NewArtifact::new("@run", "r3", ArtifactKind::Report, "report.json");
    s.add_bytes(report, b"{}").unwrap();
    let newest = s
        .query(
            &Query::new()
                .test("t")
                .kind(ArtifactKind::Result)
                .newest_first(true)
                .limit(2),
        )
        .unwrap();
    let runs: Vec<&str> = newest.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(runs, ["r3", "r2"]);
    assert_eq!(newest[0].metadata["duration-ms"], "102");
    let reports = s.query(&Query::new().kind(ArtifactKind::Report)).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].kind.as_str(), "report");
    let db = rusqlite::Connection::open(root.join("catalog-v1.sqlite")).unwrap();
    let version: u32 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, artifact_store::CATALOG_VERSION);
    let plan: String = db
        .query_row(
            "EXPLAIN QUERY PLAN SELECT seq FROM artifacts WHERE kind = 'result' AND test_id = 't' ORDER BY created_at DESC LIMIT 5",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("artifacts_kind"), "{plan}");
    // The tests with results: each once, in order, evicted records included.
    for (test, run) in [("b", "r4"), ("a", "r4"), ("b", "r5")] {
        let a = NewArtifact::new(test, run, ArtifactKind::Result, "result.json");
        let r = s.add_bytes(a, test.as_bytes()).unwrap();
        if run == "r5" {
            s.evict(&[(r.id, "test".into())]).unwrap();
        }
    }
    s.add_bytes(art("c", "r4"), b"not a result").unwrap();
    assert_eq!(s.test_ids(ArtifactKind::Result).unwrap(), ["a", "b", "t"]);
    assert_eq!(s.test_ids(ArtifactKind::Report).unwrap(), ["@run"]);
    assert!(s.test_ids(ArtifactKind::CoreDump).unwrap().is_empty());
}

#[test]
fn compression_is_skipped_for_incompressible_data() {
    let (_d, s) = store();
    let text: Vec<u8> = b"kernel: line of log output\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    let mut x = 88172645463325252u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = s.put_blob(text.as_slice()).unwrap();
    let n = s.put_blob(noise.as_slice()).unwrap();
    assert!(t.compressed() && t.stored_size() < t.raw_size() / 10);
    assert!(!n.compressed());
    assert_eq!(n.stored_size(), n.raw_size() + 16);
    let small = s.put_blob(&noise[..1000]).unwrap();
    assert!(!small.compressed());
}

#[test]
fn streaming_large_content_uses_bounded_memory() {
    // 512 MiB through put and get; peak RSS must grow far less than that.
    struct Gen(u64, u64);
    impl Read for Gen {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0 as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.1 + i as u64) / 4096) as u8;
            }
            self.0 -= n as u64;
            self.1 += n as u64;
            Ok(n)
        }
    }
    fn hwm_kib() -> u64 {
        let s = fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }
    let (_d, s) = store();
    let size = 512u64 << 20;
    let before = hwm_kib();
    let r = s
        .add(art("big", "r1").meta("what", "core"), Gen(size, 0))
        .unwrap();
    assert_eq!(r.raw_size, size);
    let mut reader = s.open_artifact(&r.id).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut pos_ok) = (0u64, true);
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        pos_ok &= buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((total + i as u64) / 4096) as u8);
        total += n as u64;
    }
    assert!(pos_ok);
    assert_eq!(total, size);
    let grown = hwm_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "peak memory grew by {grown} KiB");
}

#[test]
fn corrupt_and_truncated_blobs_fail_loudly_and_verify_repairs() {
    let (_d, s) = store();
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let a = s.add_bytes(art("t", "r1"), &data).unwrap();
    let b = s
        .add_bytes(art("t", "r1"), b"second blob, stays intact")
        .unwrap();
    let path = s.blob_path(&a.digest);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let err = s.get(&a.id).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&a.id) && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    // Truncated.
    fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert!(matches!(s.get(&a.id).unwrap_err(), Error::Corrupt { .. }));
    // get_to_file leaves nothing behind on corruption.
    let out = s.root().parent().unwrap().join("out.bin");
    assert!(s.get_to_file(&a.id, &out).is_err());
    assert!(!out.exists());

    let report = s.verify(VerifyOptions::default()).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].artifacts, vec![a.id.clone()]);
    assert!(!report.is_clean());
    let report = s.verify(VerifyOptions { repair: true }).unwrap();
    assert!(report.repaired);
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
    let rec = s.record_of(&a.id).unwrap();
    assert_eq!(rec.evicted.unwrap().reason, "blob corrupt");
    assert_eq!(s.get(&b.id).unwrap(), b"second blob, stays intact");
    // Storing the content again heals it.
    let c = s.add_bytes(art("t", "r2"), &data).unwrap();
    assert_eq!(s.get(&c.id).unwrap(), data);
}

#[test]
fn a_dedup_hit_replaces_a_damaged_blob() {
    let (_d, s) = store();
    let data = vec![7u8; 300_000];
    let a = s.add_bytes(art("t", "r1"), &data).unwrap();
    fs::write(s.blob_path(&a.digest), b"garbage").unwrap();
    let b = s.add_bytes(art("t", "r2"), &data).unwrap();
    assert_eq!(s.get(&a.id).unwrap(), data);
    assert_eq!(s.get(&b.id).unwrap(), data);
}

#[test]
fn missing_blobs_and_orphans_are_reported() {
    let (_d, s) = store();
    let a = s.add_bytes(art("t", "r1"), &noise(40_000, 3)).unwrap();
    fs::remove_file(s.blob_path(&a.digest)).unwrap();
    let err = s.get(&a.id).unwrap_err();
    assert!(
        matches!(err, Error::MissingBlob { .. }) && err.to_string().contains(&a.id),
        "{err}"
    );
    let orphan = s.put_blob(&b"nobody records me"[..]).unwrap();
    let d = orphan.digest();
    drop(orphan);
    let rep = s.verify(VerifyOptions::default()).unwrap();
    assert_eq!(rep.missing.len(), 1);
    assert_eq!(rep.orphans, vec![d]);
    fs::write(s.root().join("content-v1/blake3/stray"), b"x").unwrap();
    let rep = s.verify(VerifyOptions { repair: true }).unwrap();
    assert_eq!(rep.stray_files.len(), 1);
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
    assert_eq!(
        s.record_of(&a.id).unwrap().evicted.unwrap().reason,
        "blob missing"
    );
}

#[test]
fn gc_racing_a_pending_put_never_loses_the_blob() {
    let (_d, s) = store();
    let pending = s.put_blob(&b"racing content"[..]).unwrap();
    // A collector sees an unreferenced blob and removes it...
    let rep = s.gc(&GcOptions::default()).unwrap();
    assert_eq!(rep.blobs_removed, 1);
    assert!(!s.blob_path(&pending.digest()).exists());
    // ...and the record committed afterwards brings it back from the pending copy.
    let r = s.record(&pending, art("t", "r")).unwrap();
    assert_eq!(s.get(&r.id).unwrap(), b"racing content");
    // Temp files of live writers survive a collection.
    let other = s.put_blob(&b"still pending"[..]).unwrap();
    assert_eq!(s.gc(&GcOptions::default()).unwrap().temp_files_removed, 0);
    drop(other);
}

#[test]
fn records_outlive_evicted_blobs_and_shared_blobs_stay_while_needed() {
    let (_d, s) = store();
    let a = s.add_bytes(art("t", "r1"), b"shared").unwrap();
    let b = s.add_bytes(art("t", "r2"), b"shared").unwrap();
    s.evict(&[(a.id.clone(), "test".into())]).unwrap();
    assert_eq!(s.gc(&GcOptions::default()).unwrap().blobs_removed, 0);
    assert_eq!(s.get(&b.id).unwrap(), b"shared");
    assert!(matches!(s.get(&a.id).unwrap_err(), Error::Evicted { .. }));
    s.evict(&[(b.id.clone(), "test".into())]).unwrap();
    assert_eq!(s.gc(&GcOptions::default()).unwrap().blobs_removed, 1);
    let all = s.query(&Query::new().include_evicted(true)).unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|r| r.evicted.as_ref().unwrap().reason == "test")
    );
    assert!(s.query(&Query::new()).unwrap().is_empty());
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
}

#[test]
fn queries_by_every_field() {
    let (_d, s) = store();
    let t0 = Utc::now() - Duration::days(10);
    let add = |test: &str, run: &str, kind, outcome, arch: &str, days: i64, meta: (&str, &str)| {
        s.add_bytes(
            NewArtifact::new(test, run, kind, "f")
                .outcome(outcome)
                .arch(arch)
                .created_at(t0 + Duration::days(days))
                .meta(meta.0, meta.1),
            format!("{test}{run}{days}").as_bytes(),
        )
        .unwrap()
    };
    add(
        "boot",
        "r1",
        ArtifactKind::Console,
        TestOutcome::Passed,
        "x86_64",
        0,
        ("kernel", "6.1"),
    );
    add(
        "boot",
        "r2",
        ArtifactKind::Console,
        TestOutcome::Crashed,
        "aarch64",
        1,
        ("kernel", "6.6"),
    );
    add(
        "boot",
        "r2",
        ArtifactKind::CoreDump,
        TestOutcome::Crashed,
        "aarch64",
        1,
        ("kernel", "6.6"),
    );
    add(
        "net",
        "r2",
        ArtifactKind::Log,
        TestOutcome::Failed,
        "x86_64",
        2,
        ("kernel", "6.6"),
    );
    add(
        "net",
        "r3",
        ArtifactKind::Trace,
        TestOutcome::Passed,
        "riscv64",
        3,
        ("kernel", "6.1"),
    );
    let n = |q: Query| s.query(&q).unwrap().len();
    assert_eq!(n(Query::new()), 5);
    assert_eq!(n(Query::new().test("boot")), 3);
    assert_eq!(n(Query::new().run("r2")), 3);
    assert_eq!(n(Query::new().kind(ArtifactKind::Console)), 2);
    assert_eq!(n(Query::new().outcome(TestOutcome::Crashed)), 2);
    assert_eq!(n(Query::new().arch("x86_64")), 2);
    assert_eq!(n(Query::new().since(t0 + Duration::days(1))), 4);
    assert_eq!(
        n(Query::new()
            .since(t0 + Duration::days(1))
            .until(t0 + Duration::days(2))),
        2
    );
    assert_eq!(n(Query::new().meta("kernel", "6.1")), 2);
    assert_eq!(n(Query::new().meta("kernel", "6.6").test("net")), 1);
    assert_eq!(n(Query::new().limit(2)), 2);
    let recs = s.query(&Query::new().test("net")).unwrap();
    assert_eq!(recs[0].metadata["kernel"], "6.6");
    assert!(recs[0].created_at < recs[1].created_at);
    // Outcomes by their labels.
    for o in TestOutcome::ALL {
        assert_eq!(o.as_str().parse::<TestOutcome>().unwrap(), o);
    }
    assert!("exploded".parse::<TestOutcome>().is_err());
}

#[test]
fn stats_report_dedup_and_compression() {
    let (_d, s) = store();
    let text = vec![b'a'; 100_000];
    s.add_bytes(art("a", "r1"), &text).unwrap();
    s.add_bytes(art("b", "r1"), &text).unwrap();
    s.add_bytes(
        NewArtifact::new("b", "r1", ArtifactKind::Trace, "t"),
        b"xyz",
    )
    .unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.live_records, 3);
    assert_eq!(st.blobs, 2);
    assert_eq!(st.logical_bytes, 200_003);
    assert_eq!(st.unique_bytes, 100_003);
    assert!((st.dedup_ratio() - 2.0).abs() < 0.01);
    assert!(st.compression_ratio() > 10.0);
    assert_eq!(st.by_kind["log"].records, 2);
    assert_eq!(st.by_test["b"].raw_bytes, 100_003);
}

#[test]
fn newer_formats_are_refused() {
    let (_d, s) = store();
    let root = s.root().to_owned();
    drop(s);
    let conn = rusqlite::Connection::open(root.join("catalog-v1.sqlite")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = ArtifactStore::open(&root).unwrap_err();
    assert!(matches!(err, Error::NewerFormat { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("catalog-v1.sqlite"));
    fs::write(root.join("LAYOUT"), "7\n").unwrap();
    assert!(matches!(
        ArtifactStore::open(&root).unwrap_err(),
        Error::NewerFormat { found: 7, .. }
    ));
}

/// Root ignores file permissions, so as root this drops to `nobody` after setting the store up,
/// which is only safe in a process of its own (nextest's process-per-test mode).
#[test]
#[ignore = "as root it drops its rights, which needs nextest's process-per-test mode: run `cargo xtask test`"]
fn read_only_store_gives_a_clear_error_and_loses_nothing() {
    let root = nix::unistd::Uid::effective().is_root();
    assert!(
        !root || std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test"),
        "as root this test must run in a process of its own: run it through `cargo xtask test`"
    );
    use std::os::unix::fs::PermissionsExt;
    let (_d, s) = store();
    let a = s.add_bytes(art("t", "r1"), b"kept").unwrap();
    let tmp = s.root().join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555)).unwrap();
    if root {
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::setresuid(nobody, nobody, nobody).unwrap();
    }
    // Large enough for a file of its own (small blobs go into the open catalog).
    let err = s.add_bytes(art("t", "r2"), &noise(40_000, 4)).unwrap_err();
    if !root {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert_eq!(s.get(&a.id).unwrap(), b"kept");
}

#[test]
fn invalid_input_is_rejected() {
    let (_d, s) = store();
    assert!(matches!(
        s.add_bytes(art("", "r"), b"x").unwrap_err(),
        Error::Invalid { .. }
    ));
    assert!(matches!(s.get("nope").unwrap_err(), Error::NotFound { .. }));
    let mut out = Vec::new();
    assert!(s.read_to("nope", &mut out).is_err());
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = artifact_store::AsyncArtifactStore::open(dir.path().join("s"), Default::default())
        .await
        .unwrap();
    let (mut w, r) = tokio::io::duplex(1 << 16);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for i in 0..100u32 {
            w.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
        }
    });
    let rec = s.add_reader(art("t", "r"), r).await.unwrap();
    writer.await.unwrap();
    let got = s.get(rec.id.clone()).await.unwrap();
    assert!(got.starts_with(b"line 0\n") && got.ends_with(b"line 99\n"));
    let dest = dir.path().join("out.txt");
    assert_eq!(
        s.get_to_file(rec.id.clone(), &dest).await.unwrap(),
        got.len() as u64
    );
    assert_eq!(s.query(Query::new().test("t")).await.unwrap().len(), 1);
    assert!(s.verify(VerifyOptions::default()).await.unwrap().is_clean());
    assert_eq!(s.stats().await.unwrap().live_records, 1);
}

#[test]
fn add_many_records_a_batch_with_dedup() {
    let (_d, s) = store();
    let items: Vec<_> = (0..50u32)
        .map(|i| {
            (
                art("t", &format!("r{}", i % 5)),
                format!("content {}", i % 10).into_bytes(),
            )
        })
        .collect();
    let recs = s
        .add_many(items.iter().map(|(a, d)| (a.clone(), d.as_slice())))
        .unwrap();
    assert_eq!(recs.len(), 50);
    for ((_, d), r) in items.iter().zip(&recs) {
        assert_eq!(&s.get(&r.id).unwrap(), d);
    }
    assert_eq!(s.stats().unwrap().blobs, 10);
    assert!(fs::read_dir(s.root().join("tmp")).unwrap().next().is_none());
    // All or nothing: an invalid item records nothing.
    let bad = vec![(art("t", "r"), &b"x"[..]), (art("", "r"), &b"y"[..])];
    assert!(s.add_many(bad).is_err());
    assert_eq!(s.query(&Query::new()).unwrap().len(), 50);
    assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
}

#[test]
fn get_many_and_read_many_return_verified_content_in_order() {
    let (_d, s) = store();
    let contents: Vec<Vec<u8>> = (0..30u32)
        .map(|i| format!("log {i}\n").repeat(i as usize * 40).into_bytes())
        .collect();
    let recs = s
        .add_many(contents.iter().map(|c| (art("t", "r"), c.as_slice())))
        .unwrap();
    // Reversed, with a duplicate: order and repeats are kept.
    let mut ids: Vec<&str> = recs.iter().rev().map(|r| r.id.as_str()).collect();
    ids.push(&recs[3].id);
    let got = s.get_many(&ids).unwrap();
    let mut want: Vec<Vec<u8>> = contents.iter().rev().cloned().collect();
    want.push(contents[3].clone());
    assert_eq!(got, want);
    let mut seen = Vec::new();
    s.read_many(&ids, |i, id, content| {
        assert_eq!(id, ids[i]);
        seen.push(content);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, want);
    assert!(s.get_many::<&str>(&[]).unwrap().is_empty());

    // Failures name the artifact: unknown, evicted, corrupt; and the sink's error comes back.
    let err = s.get_many(&[recs[0].id.as_str(), "nope"]).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { id } if id == "nope"),
        "{err}"
    );
    s.evict(&[(recs[1].id.clone(), "old".into())]).unwrap();
    let err = s.get_many(&[&recs[1].id]).unwrap_err();
    assert!(matches!(err, Error::Evicted { .. }), "{err}");
    tamper_inline(&s, &recs[5].digest, |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    });
    let err = s.get_many(&[&recs[4].id, &recs[5].id]).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { artifact: Some(a), .. } if *a == recs[5].id),
        "{err}"
    );
    let mut calls = 0;
    let err = s
        .read_many(&[&recs[6].id, &recs[7].id], |_, id, _| {
            calls += 1;
            Err(Error::NotFound { id: id.to_owned() })
        })
        .unwrap_err();
    assert!(matches!(&err, Error::NotFound { id } if *id == recs[6].id));
    assert_eq!(calls, 1);
}

/// Content of several MiB is copied by two threads (one decodes, one hashes and writes): it must
/// still round-trip, and corruption, truncation and a failing writer must still be reported.
#[test]
fn large_reads_verify_and_report_corruption_and_write_errors() {
    let (_d, s) = store();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..9 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let text: Vec<u8> = noise
        .iter()
        .map(|b| b"abcdefgh\n"[(b % 9) as usize])
        .collect();
    let zeros = vec![0u8; 24 << 20];
    for (what, data) in [("noise", &noise), ("text", &text), ("zeros", &zeros)] {
        let r = s.add_bytes(art(what, "r"), data).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.read_to(&r.id, &mut out).unwrap(), data.len() as u64);
        assert!(out == *data, "{what}");
        assert!(s.get(&r.id).unwrap() == *data, "{what}");
        // A writer that fails after 3 MiB: a write error naming the artifact's blob, not a hang
        // and not "corrupt".
        struct Failing(usize);
        impl Write for Failing {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0 >= 3 << 20 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = s.read_to(&r.id, &mut Failing(0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    op: "write output of",
                    ..
                }
            ),
            "{what}: {err:?}"
        );
        // One flipped byte in the middle, then truncation.
        let path = s.blob_path(&r.digest);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        for _ in 0..2 {
            let err = s.read_to(&r.id, &mut std::io::sink()).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { artifact: Some(a), .. } if *a == r.id),
                "{what}: {err}"
            );
            assert!(matches!(s.get(&r.id).unwrap_err(), Error::Corrupt { .. }));
            bytes[mid] ^= 0x40;
            fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        }
        let report = s.verify(VerifyOptions::default()).unwrap();
        assert_eq!(report.corrupt.len(), 1, "{what}");
        s.verify(VerifyOptions { repair: true }).unwrap();
    }
}

/// Every file of a directory tree with its size and modification time.
fn tree_state(root: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_read_only_store_reads_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let big = noise(40_000, 7);
    let (small_id, big_id) = {
        let s = ArtifactStore::open(&root).unwrap();
        let a = s.add_bytes(art("t", "r1"), b"small log").unwrap();
        let b = s.add_bytes(art("t", "r1"), &big).unwrap();
        (a.id, b.id)
    };
    let before = tree_state(&root);
    {
        let s = ArtifactStore::open_read_only(&root).unwrap();
        assert_eq!(s.get(&small_id).unwrap(), b"small log");
        assert_eq!(s.get(&big_id).unwrap(), big);
        assert_eq!(s.query(&Query::new().test("t")).unwrap().len(), 2);
        assert_eq!(s.stats().unwrap().live_records, 2);
        let err = s.add_bytes(art("t", "r2"), b"no").unwrap_err();
        assert!(err.to_string().contains("catalog"), "{err}");
    }
    // The refused write left nothing either. SQLite's own WAL index and an empty WAL may
    // remain (a reader cannot remove them); the database and the content are as they were.
    let sqlite_side = |p: &std::path::Path| {
        let p = p.to_string_lossy();
        p.ends_with("-shm") || p.ends_with("-wal")
    };
    let after = tree_state(&root);
    for (p, len, _) in &after {
        if p.to_string_lossy().ends_with("-wal") {
            assert_eq!(*len, 0, "{}", p.display());
        }
    }
    let after: Vec<_> = after
        .into_iter()
        .filter(|(p, ..)| !sqlite_side(p))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, ..)| !sqlite_side(p))
        .collect();
    assert_eq!(before, after);

    // Not a store: named, and nothing created.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = ArtifactStore::open_read_only(&empty)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not an artifact store") && err.contains("empty"),
        "{err}"
    );
    assert!(fs::read_dir(&empty).unwrap().next().is_none());
    let err = ArtifactStore::open_read_only(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such directory"), "{err}");
    assert!(!dir.path().join("missing").exists());
}

/// Where the store keeps the tree of `digest`.
fn tree_path(s: &ArtifactStore, digest: &artifact_store::Digest) -> std::path::PathBuf {
    let hex = digest.to_hex();
    s.root()
        .join("trees-v1/blake3")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex)
}

/// Every piece of a verified range, joined.
fn range_of(s: &ArtifactStore, id: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, Error> {
    let pieces = s
        .open_range(id, range)
        .unwrap()
        .expect("a blob of 256 KiB or more written now has a tree");
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&p?);
    }
    Ok(out)
}

#[test]
fn compressed_ranges_are_decoded_from_their_own_frame() {
    let (_d, s) = store();
    // Frames hold 8 MiB of content each: three frames.
    let frame = 8 << 20;
    let log: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("[{i:>8}] console line {i}\n").into_bytes())
        .take(2 * frame + 5000)
        .collect();
    let r = s.add_bytes(art("t", "r1"), &log).unwrap();
    let len = log.len() as u64;
    let f = frame as u64;
    // Independent frames are still one zstd stream: any zstd reader decodes the blob.
    let blob = s.blob_path(&r.digest);
    let mut bytes = fs::read(&blob).unwrap();
    assert_eq!(zstd::decode_all(&bytes[16..]).unwrap(), log);
    for (a, b) in [(len - 100, len), (f - 10, f + 10), (2 * f, len), (0, len)] {
        assert_eq!(
            range_of(&s, &r.id, a..b).unwrap(),
            &log[a as usize..b as usize],
            "{a}..{b}"
        );
    }
    // A tree made again from the blob alone (as `verify --repair` or a remote fetch makes
    // one) finds the frames too: the damage below proves it.
    let tree = tree_path(&s, &r.digest);
    fs::remove_file(&tree).unwrap();
    let v = s.verify(VerifyOptions { repair: true }).unwrap();
    assert_eq!(v.trees_written, 1);
    // Damage to the first frame's header: a whole read fails, but a range in a later frame is
    // served, verified, because it is decoded from its own frame, never through the damage.
    // (Damage inside a frame's data may decode to wrong bytes without an error; skipped, they
    // are never served, but only a broken header proves where decoding starts.)
    bytes[16] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    assert!(matches!(s.get(&r.id), Err(Error::Corrupt { .. })));
    assert!(range_of(&s, &r.id, 0..100).is_err());
    assert_eq!(
        range_of(&s, &r.id, len - 65536..len).unwrap(),
        &log[log.len() - 65536..]
    );
    assert_eq!(
        range_of(&s, &r.id, f..f + 100_000).unwrap(),
        &log[frame..frame + 100_000]
    );
    // The same content encoded otherwise (one stream, as an earlier version wrote it): the
    // frame table describes another file and is not used; ranges decode from the start.
    let mut single = bytes[..16].to_vec();
    single.extend_from_slice(&zstd::encode_all(&log[..], 3).unwrap());
    fs::write(&blob, &single).unwrap();
    assert_eq!(s.get(&r.id).unwrap(), log);
    assert_eq!(
        range_of(&s, &r.id, len - 65536..len).unwrap(),
        &log[log.len() - 65536..]
    );
}

#[test]
fn ranges_of_large_blobs_are_verified_piece_by_piece() {
    let (_d, s) = store();
    let g = 64 * 1024;
    // Raw (incompressible) and zstd (a log) content, neither a whole number of groups.
    let log: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("[{i:>8}] console line {i}\n").into_bytes())
        .take(20 * g + 123)
        .collect();
    let raw = noise(9 * g + 17, 7);
    for data in [raw, log] {
        let r = s.add_bytes(art("t", "r1"), &data).unwrap();
        let len = data.len() as u64;
        let tree = tree_path(&s, &r.digest);
        assert!(tree.is_file(), "the tree is kept beside the blob");
        assert!(s.verify(VerifyOptions::default()).unwrap().is_clean());
        for (a, b) in [
            (0, len),
            (0, 1),
            (g as u64 - 1, g as u64 + 1),
            (3 * g as u64 + 5, 7 * g as u64),
            (len - 1, len),
            (len, len),
            (100, 100),
        ] {
            assert_eq!(
                range_of(&s, &r.id, a..b).unwrap(),
                &data[a as usize..b as usize],
                "{a}..{b} of {len}"
            );
        }
        // Pieces grow from one group, so the first verified bytes come early.
        let first = s
            .open_range(&r.id, 0..len)
            .unwrap()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first.len(), g);
        assert!(matches!(
            s.open_range(&r.id, 0..len + 1),
            Err(Error::Invalid { what: "range", .. })
        ));

        // A damaged byte in the last group: the groups before it are still served, verified;
        // the damaged one is an error before any of its bytes; so is a range starting there.
        let blob = s.blob_path(&r.digest);
        let mut bytes = fs::read(&blob).unwrap();
        let pristine = bytes.clone();
        let at = bytes.len() - 10;
        bytes[at] ^= 0x40;
        fs::write(&blob, &bytes).unwrap();
        let mut got = Vec::new();
        let mut failed = None;
        for p in s.open_range(&r.id, 0..len).unwrap().unwrap() {
            match p {
                Ok(p) => got.extend_from_slice(&p),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.expect("the damage is found");
        assert!(
            matches!(&e, Error::Corrupt { artifact: Some(a), .. } if *a == r.id),
            "{e}"
        );
        assert!(e.to_string().contains(&r.digest.to_hex()), "{e}");
        assert_eq!(
            got,
            &data[..got.len()],
            "what came before the damage is the content"
        );
        if data.len() == 9 * g + 17 {
            // Raw: the damage is in the last group; the pieces before the one holding it
            // (1, 2 and 4 groups) were served.
            assert_eq!(got.len(), 7 * g);
            assert_eq!(range_of(&s, &r.id, 0..g as u64).unwrap(), &data[..g]);
        }
        assert!(range_of(&s, &r.id, len - 5..len).is_err());
        fs::write(&blob, &pristine).unwrap();

        // A damaged or forged tree is never used: the reader falls back to whole verification.
        // (A group value changed: a damaged frame table is only left out, tested in `tree`.)
        let mut t = fs::read(&tree).unwrap();
        t[16 + 5] ^= 1;
        fs::write(&tree, &t).unwrap();
        assert!(s.open_range(&r.id, 0..len).unwrap().is_none());
        fs::remove_file(&tree).unwrap();
        assert!(s.open_range(&r.id, 0..len).unwrap().is_none());
        assert_eq!(s.get(&r.id).unwrap(), data);
        // A blob without its tree (as an earlier version wrote it) is no damage: `verify`
        // counts it and writes nothing; `verify --repair` makes the tree from its read.
        let v = s.verify(VerifyOptions::default()).unwrap();
        assert!(v.is_clean(), "{v:?}");
        assert_eq!((v.trees_missing, v.trees_written), (1, 0));
        assert!(!tree.exists(), "a check writes nothing");
        let v = s.verify(VerifyOptions { repair: true }).unwrap();
        assert_eq!((v.trees_missing, v.trees_written), (1, 1));
        assert_eq!(range_of(&s, &r.id, 0..len).unwrap(), data);
        let v = s.verify(VerifyOptions { repair: true }).unwrap();
        assert_eq!((v.trees_missing, v.trees_written), (0, 0));
        fs::remove_file(&tree).unwrap();
        // Adding the content again puts a damaged tree right.
        fs::write(&tree, b"AST1").unwrap();
        s.add_bytes(art("t", "r3"), &data).unwrap();
        assert_eq!(range_of(&s, &r.id, 0..len).unwrap(), data);
    }
    // Small content has no tree; an unknown id is an error.
    let small = s.add_bytes(art("t", "r2"), &noise(40_000, 3)).unwrap();
    assert!(s.open_range(&small.id, 0..10).unwrap().is_none());
    assert!(matches!(
        s.open_range("nope", 0..1),
        Err(Error::NotFound { .. })
    ));
    // Collection removes a tree with its blob.
    let big = noise(5 * g, 11);
    let r = s.add_bytes(art("gone", "r9"), &big).unwrap();
    let tree_dir = s
        .root()
        .join("trees-v1/blake3")
        .join(&r.digest.to_hex()[..2]);
    assert!(
        tree_dir
            .join(&r.digest.to_hex()[2..4])
            .join(r.digest.to_hex())
            .is_file()
    );
    s.evict(&[(r.id.clone(), "test".into())]).unwrap();
    s.gc(&GcOptions::default()).unwrap();
    assert!(
        !tree_dir
            .join(&r.digest.to_hex()[2..4])
            .join(r.digest.to_hex())
            .exists()
    );
}
