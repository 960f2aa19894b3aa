//! Artifact download over the API (verified whole, then sent over loopback HTTP and read by a
//! real client) against the store reading the same blob in-process: `ArtifactStore::get`, the
//! content in hand and verified, as a program embedding the store reads an artifact (the
//! ratios printed), and `ArtifactStore::read_to` into `io::sink()`, verified and thrown away
//! (the lower bound of any reader, shown for reference), for a compressible log (zstd) and
//! incompressible data (raw) at 1, 8 and 64 MiB (all verified in memory with the default
//! budget), medians of 7: "cold" verifies at every request (the cache of verified content
//! off), "warm" is a repeated download served from that cache. "TCP" is the same byte count
//! written and read over a plain loopback socket in the same run: what any download over
//! loopback costs besides reading the blob, so a cold download cannot beat `read_to(sink)` +
//! TCP.
//!
//! `cargo bench -p qorch-api --bench download`

use std::io;
use std::time::{Duration, Instant};

use artifact_store::{ArtifactKind, ArtifactStore, NewArtifact};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn content(len: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!("[{:>12}] console line {i} of the log\n", i * 7).as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    } else {
        // xorshift: incompressible and reproducible.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut ids = Vec::new();
    {
        let store = ArtifactStore::open(&root).unwrap();
        for (label, len, compressible) in [
            ("log 1 MiB", 1 << 20, true),
            ("random 1 MiB", 1 << 20, false),
            ("log 8 MiB", 8 << 20, true),
            ("random 8 MiB", 8 << 20, false),
            ("log 64 MiB", 64 << 20, true),
            ("random 64 MiB", 64 << 20, false),
        ] {
            let data = content(len, compressible);
            let kind = if compressible {
                ArtifactKind::Log
            } else {
                ArtifactKind::Other
            };
            let r = store
                .add_bytes(
                    NewArtifact::new("bench", "run-1", kind, format!("{label}.bin")),
                    &data,
                )
                .unwrap();
            ids.push((label, r.id, len));
        }
    }
    let mut servers = Vec::new();
    for cache in [false, true] {
        let mut config = qorch_api::ApiConfig::new(&root).with_bind("127.0.0.1:0".parse().unwrap());
        config.cache = cache;
        let bound = rt.block_on(qorch_api::bind(&config)).unwrap();
        let addr = bound.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(bound.serve(async {
            let _ = rx.await;
        }));
        servers.push((addr, tx, server));
    }
    let (cold, warm) = (servers[0].0, servers[1].0);
    let store = ArtifactStore::open_read_only(&root).unwrap();
    let client = reqwest::Client::new();
    println!(
        "{:<16} {:>14} {:>14} {:>14} {:>14} {:>6} {:>14} {:>6}",
        "blob", "read_to(sink)", "get", "TCP", "API cold", "ratio", "API warm", "ratio"
    );
    // A loopback socket whose other end answers each byte with `n` bytes.
    let tcp = {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let zeros = vec![0u8; 64 << 20];
            let mut n = [0u8; 8];
            while s.read_exact(&mut n).is_ok() {
                s.write_all(&zeros[..u64::from_le_bytes(n) as usize])
                    .unwrap();
            }
        });
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        std::sync::Mutex::new((c, vec![0u8; 64 << 20]))
    };
    let over_tcp = |len: usize| {
        use std::io::{Read, Write};
        let mut g = tcp.lock().unwrap();
        let (c, buf) = &mut *g;
        let t = Instant::now();
        c.write_all(&(len as u64).to_le_bytes()).unwrap();
        c.read_exact(&mut buf[..len]).unwrap();
        t.elapsed()
    };
    let fetch = |addr: std::net::SocketAddr, id: &str| {
        rt.block_on(async {
            let mut r = client
                .get(format!("http://{addr}/api/v1/artifacts/{id}/content"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut n = 0;
            while let Some(c) = r.chunk().await.unwrap() {
                n += c.len();
            }
            n
        })
    };
    for (label, id, len) in &ids {
        let (mut sink, mut local, mut c, mut w, mut raw) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let t = Instant::now();
            let n = store.read_to(id, &mut io::sink()).unwrap();
            sink.push(t.elapsed());
            assert_eq!(n as usize, *len);
            let t = Instant::now();
            let bytes = std::hint::black_box(store.get(id).unwrap());
            local.push(t.elapsed());
            assert_eq!(bytes.len(), *len);
            drop(bytes);
            raw.push(over_tcp(*len));
            for (addr, times) in [(cold, &mut c), (warm, &mut w)] {
                let t = Instant::now();
                assert_eq!(fetch(addr, id), *len);
                times.push(t.elapsed());
            }
        }
        let (s, l, c, w, t) = (
            median(sink),
            median(local),
            median(c),
            median(w),
            median(raw),
        );
        let mib = *len as f64 / (1 << 20) as f64;
        let rate = |d: Duration| mib / d.as_secs_f64();
        println!(
            "{label:<16} {:>9.0} MiB/s {:>9.0} MiB/s {:>9.0} MiB/s {:>9.0} MiB/s {:>6.2} {:>9.0} MiB/s {:>6.2}",
            rate(s),
            rate(l),
            rate(t),
            rate(c),
            l.as_secs_f64() / c.as_secs_f64(),
            rate(w),
            l.as_secs_f64() / w.as_secs_f64()
        );
    }
    for (_, tx, server) in servers {
        let _ = tx.send(());
        rt.block_on(server).unwrap().unwrap();
    }
}
