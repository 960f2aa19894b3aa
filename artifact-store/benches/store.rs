//! Side-by-side benchmark of `artifact-store` against the `zstd` command-line tool and the
//! `cacache` crate on the same files, plus dedup-hit puts, a catalog query among 1 000 000
//! records and a retention dry run over 100 000 records.
//!
//! `cargo bench -p artifact-store --bench store` (needs `zstd` on `PATH`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use artifact_store::retention::{
    FirstFailureAfterPass, KeepLastRuns, LastPassingRun, MaxAge, MaxTotalSize, Policy,
};
use artifact_store::{
    ArtifactKind, ArtifactStore, Durability, NewArtifact, ObjectStoreBackend, Query, RemoteOptions,
    StoreOptions, TestOutcome,
};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

const MIB: usize = 1 << 20;
const SMALL_FILES: usize = 10_000;
const SLICES: usize = 10;

struct Data {
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    random: PathBuf,
    small: Vec<PathBuf>,
}

fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn log_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut next = xorshift(seed | 1);
    let words = [
        "eth0", "link", "up", "virtio", "blk", "irq", "mapped", "kworker", "sched", "mm", "ext4",
        "mounted",
    ];
    let mut out = Vec::with_capacity(len + 200);
    let mut t = 0u64;
    while out.len() < len {
        t += next() % 5000;
        let r = next();
        out.extend_from_slice(
            format!(
                "[{:>5}.{:06}] {}: {} {} {} seq={} val=0x{:x}\n",
                t / 1_000_000,
                t % 1_000_000,
                words[(r % 12) as usize],
                words[((r >> 8) % 12) as usize],
                words[((r >> 16) % 12) as usize],
                (r >> 24) % 100,
                t,
                r >> 40
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn data() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let log = root.join("log64.txt");
    fs::write(&log, log_bytes(64 * MIB, 7)).unwrap();
    let random = root.join("random64.bin");
    let mut next = xorshift(99);
    let r: Vec<u8> = (0..64 * MIB / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    fs::write(&random, r).unwrap();
    let small_dir = root.join("small");
    fs::create_dir(&small_dir).unwrap();
    let mut next = xorshift(5);
    let small = (0..SMALL_FILES)
        .map(|i| {
            let p = small_dir.join(format!("f{i:05}.log"));
            fs::write(&p, log_bytes(512 + (next() % 7680) as usize, i as u64 + 1)).unwrap();
            p
        })
        .collect();
    Data {
        _dir: dir,
        root,
        log,
        random,
        small,
    }
}

fn zstd_cli(args: &[&str], files: &[PathBuf]) {
    let st = Command::new("zstd")
        .args(args)
        .args(files)
        .status()
        .expect("zstd CLI on PATH");
    assert!(st.success());
}

fn size_of(files: &[PathBuf]) -> u64 {
    files.iter().map(|f| fs::metadata(f).unwrap().len()).sum()
}

/// One competitor's put and get over a set of files.
trait Contender {
    fn name(&self) -> &'static str;
    fn clear(&mut self, files: &[PathBuf]);
    fn put(&mut self, files: &[PathBuf]);
    fn get(&mut self, files: &[PathBuf], out: &Path);
    /// Untimed, before each get: a contender that reads from elsewhere drops its local copies.
    fn before_get(&mut self, _files: &[PathBuf]) {}
    /// A batch get of many files, benchmarked as a row of its own (`<name> (batch get)`).
    fn batch_get(&mut self, _files: &[PathBuf], _out: &Path) -> bool {
        false
    }
}

struct Ours {
    name: &'static str,
    store: ArtifactStore,
    ids: std::collections::HashMap<PathBuf, (String, artifact_store::Digest)>,
}

impl Ours {
    /// Removes the local copies of `files`' blobs.
    fn drop_local(&self, files: &[PathBuf]) {
        let db = rusqlite::Connection::open(self.store.root().join("catalog-v1.sqlite")).unwrap();
        db.busy_timeout(Duration::from_secs(60)).unwrap();
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        for f in files {
            if let Some((_, d)) = self.ids.get(f) {
                let _ = fs::remove_file(self.store.blob_path(d));
                db.execute("DELETE FROM inline_blobs WHERE digest = ?1", [d.to_hex()])
                    .unwrap();
            }
        }
        db.execute_batch("COMMIT").unwrap();
    }
}

impl Contender for Ours {
    fn name(&self) -> &'static str {
        self.name
    }
    fn clear(&mut self, files: &[PathBuf]) {
        // Remove the blobs (files, or rows of the catalog for small ones; and in the remote)
        // so that the next put stores them again rather than finding them there.
        self.drop_local(files);
        if let Some(remote) = self.store.remote() {
            for f in files {
                if let Some((_, d)) = self.ids.get(f) {
                    let hex = d.to_hex();
                    remote
                        .delete(&format!(
                            "content-v1/blake3/{}/{}/{hex}",
                            &hex[..2],
                            &hex[2..4]
                        ))
                        .unwrap();
                }
            }
        }
    }
    fn before_get(&mut self, files: &[PathBuf]) {
        // With a remote: every read fetches from it (and verifies).
        if self.store.remote().is_some() {
            self.drop_local(files);
        }
    }
    fn put(&mut self, files: &[PathBuf]) {
        if let [f] = files {
            let r = self
                .store
                .add_file(NewArtifact::new("bench", "r", ArtifactKind::Log, "f"), f)
                .unwrap();
            self.ids.insert(f.clone(), (r.id, r.digest));
            return;
        }
        // Many files: one batch, like one `zstd` invocation over all of them.
        let items = files.iter().map(|f| {
            (
                NewArtifact::new("bench", "r", ArtifactKind::Log, "f"),
                fs::File::open(f).unwrap(),
            )
        });
        let records = self.store.add_many(items).unwrap();
        for (f, r) in files.iter().zip(records) {
            self.ids.insert(f.clone(), (r.id, r.digest));
        }
    }
    fn get(&mut self, files: &[PathBuf], out: &Path) {
        for (i, f) in files.iter().enumerate() {
            // Written in place like the other contenders (`get_to_file` adds a temp file and a
            // rename for atomicity).
            let mut o = fs::File::create(out.join(format!("o{i}"))).unwrap();
            self.store.read_to(&self.ids[f].0, &mut o).unwrap();
        }
    }
    fn batch_get(&mut self, files: &[PathBuf], out: &Path) -> bool {
        // (Nothing stored when a filter skipped the put benchmark.)
        if files.len() < 2 || self.name.contains("no fsync") || !self.ids.contains_key(&files[0]) {
            return false;
        }
        let ids: Vec<&str> = files.iter().map(|f| self.ids[f].0.as_str()).collect();
        self.store
            .read_many(&ids, |i, _, content| {
                fs::write(out.join(format!("o{i}")), content).unwrap();
                Ok(())
            })
            .unwrap();
        true
    }
}

struct ZstdCli {
    out: PathBuf,
    /// Then `syncfs(2)` on the output: the same durability as the store's default
    /// `Durability::Fsync` (the CLI itself never syncs).
    sync: bool,
}

impl Contender for ZstdCli {
    fn name(&self) -> &'static str {
        if self.sync {
            "zstd CLI + syncfs"
        } else {
            "zstd CLI (-3 / -d)"
        }
    }
    fn clear(&mut self, files: &[PathBuf]) {
        fs::create_dir_all(&self.out).unwrap();
        for f in files {
            let _ = fs::remove_file(
                self.out
                    .join(format!("{}.zst", f.file_name().unwrap().to_str().unwrap())),
            );
        }
    }
    fn put(&mut self, files: &[PathBuf]) {
        let out = self.out.to_str().unwrap();
        zstd_cli(&["-3", "-q", "-f", "--output-dir-flat", out], files);
        if self.sync {
            let dir = fs::File::open(&self.out).unwrap();
            nix::unistd::syncfs(&dir).unwrap();
        }
    }
    fn get(&mut self, files: &[PathBuf], out: &Path) {
        let z: Vec<PathBuf> = files
            .iter()
            .map(|f| {
                self.out
                    .join(format!("{}.zst", f.file_name().unwrap().to_str().unwrap()))
            })
            .collect();
        zstd_cli(
            &["-d", "-q", "-f", "--output-dir-flat", out.to_str().unwrap()],
            &z,
        );
    }
}

struct Cacache {
    dir: PathBuf,
    stored: std::collections::HashMap<PathBuf, cacache::Integrity>,
}

impl Contender for Cacache {
    fn name(&self) -> &'static str {
        "cacache"
    }
    fn clear(&mut self, files: &[PathBuf]) {
        for f in files {
            if let Some(sri) = self.stored.remove(f) {
                cacache::remove_sync(&self.dir, f.to_str().unwrap()).unwrap();
                cacache::remove_hash_sync(&self.dir, &sri).unwrap();
            }
        }
    }
    fn put(&mut self, files: &[PathBuf]) {
        for f in files {
            let data = fs::read(f).unwrap();
            let sri = cacache::write_sync(&self.dir, f.to_str().unwrap(), data).unwrap();
            self.stored.insert(f.clone(), sri);
        }
    }
    fn get(&mut self, files: &[PathBuf], out: &Path) {
        for (i, f) in files.iter().enumerate() {
            let data = cacache::read_sync(&self.dir, f.to_str().unwrap()).unwrap();
            fs::write(out.join(format!("o{i}")), data).unwrap();
        }
    }
}

fn throughput_benches(c: &mut Criterion) {
    let d = data();
    let mk = |name, durability| Ours {
        name,
        store: ArtifactStore::open_with(
            d.root.join(name),
            StoreOptions {
                durability,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
        ids: Default::default(),
    };
    let mut contenders: Vec<Box<dyn Contender>> = vec![
        Box::new(mk("artifact-store", Durability::Fsync)),
        Box::new(mk("artifact-store (no fsync)", Durability::Relaxed)),
        Box::new(ZstdCli {
            out: d.root.join("zstd-out"),
            sync: false,
        }),
        Box::new(ZstdCli {
            out: d.root.join("zstd-out-synced"),
            sync: true,
        }),
        Box::new(Cacache {
            dir: d.root.join("cacache"),
            stored: Default::default(),
        }),
    ];
    // The same store writing through to an S3 server (Garage on loopback, when built:
    // `cargo xtask test` builds it once), and reading back from it.
    let _garage = if testkit::garage_binary().exists() {
        let node = testkit::GarageNode::start();
        let remote = ObjectStoreBackend::connect_with(
            &format!("s3://{}/bench", node.bucket()),
            node.env(),
            &RemoteOptions::default(),
        )
        .unwrap();
        let mut ours = mk("artifact-store + Garage (S3)", Durability::Fsync);
        ours.store = ours.store.with_remote(std::sync::Arc::new(remote));
        contenders.insert(1, Box::new(ours));
        Some(node)
    } else {
        eprintln!(
            "no Garage binary at {}: the S3 rows are skipped (run `cargo xtask test` once)",
            testkit::garage_binary().display()
        );
        None
    };
    // Every get writes new files into an empty directory, whoever the contender, on a tmpfs
    // when there is one. The output is not what is compared, and on ext4 it can dwarf what is:
    // overwriting differs by method (the `zstd` CLI unlinks first, `File::create` truncates,
    // and a truncated file is written back on close under `auto_da_alloc`), and without a
    // journal, creating a file soon after many were deleted costs up to a millisecond (the
    // inode allocator skips inodes freed in the last 30 s).
    let out_base = match tempfile::tempdir_in("/dev/shm") {
        Ok(t) => t,
        Err(_) => tempfile::tempdir_in(&d.root).unwrap(),
    };
    let out = out_base.path().join("get-out");
    let fresh_out = || {
        let _ = fs::remove_dir_all(&out);
        fs::create_dir(&out).unwrap();
    };
    let small_slices: Vec<Vec<PathBuf>> = d
        .small
        .chunks(SMALL_FILES / SLICES)
        .map(|c| c.to_vec())
        .collect();
    let sets: Vec<(&str, Vec<Vec<PathBuf>>)> = vec![
        ("log-64MiB", vec![vec![d.log.clone()]]),
        ("random-64MiB", vec![vec![d.random.clone()]]),
        ("10k-small-files", small_slices),
    ];
    for (set, slices) in &sets {
        // Throughput per iteration: one slice (the whole file, or 1 000 of the 10 000 small files).
        let bytes = size_of(&slices[0]);
        for op in ["put", "get"] {
            let mut g = c.benchmark_group(format!("{op}/{set}"));
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3))
                .throughput(Throughput::Bytes(bytes));
            for ct in contenders.iter_mut() {
                // The put benchmark cycles through every slice and leaves them stored for the
                // get benchmark.
                let mut k = 0;
                g.bench_function(BenchmarkId::from_parameter(ct.name()), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let s = &slices[k % slices.len()];
                            k += 1;
                            if op == "put" {
                                ct.clear(s);
                                let t = Instant::now();
                                ct.put(s);
                                total += t.elapsed();
                            } else {
                                fresh_out();
                                ct.before_get(s);
                                let t = Instant::now();
                                ct.get(s, &out);
                                total += t.elapsed();
                            }
                        }
                        total
                    })
                });
                if op == "get" && ct.batch_get(&slices[0], &out) {
                    let name = format!("{} (batch get)", ct.name());
                    g.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                let s = &slices[k % slices.len()];
                                k += 1;
                                fresh_out();
                                ct.before_get(s);
                                let t = Instant::now();
                                assert!(ct.batch_get(s, &out));
                                total += t.elapsed();
                            }
                            total
                        })
                    });
                }
            }
            g.finish();
        }
    }
    // Dedup hit: the 64 MiB log again, already stored.
    let mut g = c.benchmark_group("put-dedup-hit/log-64MiB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(64 * MIB as u64));
    let store = ArtifactStore::open(d.root.join("dedup")).unwrap();
    store
        .add_file(NewArtifact::new("t", "r", ArtifactKind::Log, "f"), &d.log)
        .unwrap();
    g.bench_function("artifact-store", |b| {
        b.iter(|| {
            let r = store
                .add_file(NewArtifact::new("t", "r", ArtifactKind::Log, "f"), &d.log)
                .unwrap();
            assert!(r.raw_size > 0);
        })
    });
    g.finish();
}

fn populate(store: &ArtifactStore, n: usize, tests: usize) {
    let blob = store
        .put_blob(&b"shared content of every synthetic record"[..])
        .unwrap();
    let base = chrono::Utc::now() - chrono::Duration::days(60);
    let mut next = xorshift(3);
    let per_test = n / tests;
    let mut batch = Vec::with_capacity(100_000);
    for run in 0..per_test {
        for t in 0..tests {
            let r = next();
            let outcome = if r.is_multiple_of(5) {
                TestOutcome::Failed
            } else {
                TestOutcome::Passed
            };
            let kind = if r.is_multiple_of(7) {
                ArtifactKind::CoreDump
            } else {
                ArtifactKind::Log
            };
            batch.push(
                NewArtifact::new(
                    format!("test-{t:05}"),
                    format!("run-{run:04}"),
                    kind,
                    "out.log",
                )
                .outcome(outcome)
                .arch(if r.is_multiple_of(2) {
                    "x86_64"
                } else {
                    "aarch64"
                })
                .created_at(base + chrono::Duration::minutes((run * 60 + t % 60) as i64)),
            );
            if batch.len() == 100_000 {
                store
                    .record_many(&blob, std::mem::take(&mut batch))
                    .unwrap();
            }
        }
    }
    if !batch.is_empty() {
        store.record_many(&blob, batch).unwrap();
    }
}

fn catalog_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let relaxed = StoreOptions {
        durability: Durability::Relaxed,
        ..StoreOptions::default()
    };
    let t = Instant::now();
    let big = ArtifactStore::open_with(dir.path().join("million"), relaxed.clone()).unwrap();
    populate(&big, 1_000_000, 10_000);
    eprintln!("populated 1 000 000 records in {:?}", t.elapsed());
    let mut g = c.benchmark_group("catalog");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut k = 0usize;
    g.bench_function("query one test among 1M records", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            let r = big
                .query(&Query::new().test(format!("test-{k:05}")))
                .unwrap();
            assert_eq!(r.len(), 100);
        })
    });
    g.finish();
    drop(big);

    let store = ArtifactStore::open_with(dir.path().join("hundred-k"), relaxed).unwrap();
    populate(&store, 100_000, 1_000);
    let policy = Policy::new()
        .with(
            MaxAge::new(Duration::from_secs(30 * 86_400))
                .kind(ArtifactKind::CoreDump, Duration::from_secs(7 * 86_400)),
        )
        .with(KeepLastRuns(10))
        .with(LastPassingRun)
        .with(FirstFailureAfterPass)
        .with(MaxTotalSize(1 << 30));
    let mut g = c.benchmark_group("retention");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("dry run over 100k records", |b| {
        b.iter(|| {
            let plan = store.plan_retention(&policy, chrono::Utc::now()).unwrap();
            assert_eq!(plan.decisions.len(), 100_000);
        })
    });
    g.finish();
}

criterion_group!(benches, throughput_benches, catalog_benches);
criterion_main!(benches);
