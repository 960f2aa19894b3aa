//! Artifact download over the API (sent over loopback HTTP and read by a real client, no byte
//! before it was verified) against the store reading the same blob in-process:
//! `ArtifactStore::get`, the content in hand and verified, as a program embedding the store
//! reads an artifact (the ratios printed), and `ArtifactStore::read_to` into `io::sink()`,
//! verified and thrown away (the lower bound of any reader, shown for reference), for a
//! compressible log (zstd) and incompressible data (raw) at 1, 8 and 64 MiB, medians of 7. The
//! 1 MiB blobs are verified whole before the status line; the 8 and 64 MiB ones (over
//! `qorch_api::STREAM_MIN`) are streamed, each piece verified before it is sent. "cold"
//! verifies at every request (the cache of verified content off), "warm" is a repeated
//! download served from that cache; each over loopback TCP and over a Unix socket
//! (`ApiConfig::unix_socket`, `qorch serve --unix-socket`). "TCP" and "Unix" are the same byte
//! count written and read over a plain socket of that kind in the same run: what any download
//! over it costs besides reading the blob. A line gives the lowest ratios: of repeated
//! downloads (the server as shipped), of first downloads of 8 MiB and more, and of 1 MiB. Then
//! what any request costs besides its content: a `304 Not Modified` answer (the record looked
//! up, nothing read or sent), alternating with `get` as the downloads do and back to back,
//! beside `get` of the 1 MiB blobs. Then a range (the last 64 KiB, cold, over TCP) against the
//! whole download: a blob with a tree hashes only the groups the range covers, and compressed
//! content is decoded from the 8 MiB frame holding the range's start.
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
        testkit::noise(len, 1)
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
            ids.push((label, r.id, len, r.digest));
        }
    }
    // Servers: cold and warm, over TCP and over a Unix socket; a client and base URL each.
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for unix in [false, true] {
        for cache in [false, true] {
            let mut config =
                qorch_api::ApiConfig::new(&root).with_bind("127.0.0.1:0".parse().unwrap());
            config.cache = cache;
            let socket = dir.path().join(format!("api-{cache}.sock"));
            if unix {
                config = config.with_unix_socket(&socket);
            }
            let bound = rt.block_on(qorch_api::bind(&config)).unwrap();
            let (client, base) = match bound.local_addr() {
                Some(addr) => (reqwest::Client::new(), format!("http://{addr}")),
                None => (
                    reqwest::Client::builder()
                        .unix_socket(socket.as_path())
                        .build()
                        .unwrap(),
                    "http://localhost".to_owned(),
                ),
            };
            clients.push((client, base));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let server = rt.spawn(bound.serve(async {
                let _ = rx.await;
            }));
            servers.push((tx, server));
        }
    }
    let store = ArtifactStore::open_read_only(&root).unwrap();
    // The client runs on a runtime of its own on this thread, as a separate program would:
    // not on the server's workers.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>5} {:>9} {:>5} | {:>9} {:>5} {:>9} {:>5}   (MiB/s; ratio = get time ÷ download time)",
        "blob",
        "read_to",
        "get",
        "TCP",
        "Unix",
        "TCP cold",
        "ratio",
        "TCP warm",
        "ratio",
        "Unix cold",
        "ratio",
        "Unix warm",
        "ratio"
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
    // The same over a Unix socket.
    let unix = {
        use std::io::{Read, Write};
        let path = dir.path().join("plain.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let zeros = vec![0u8; 64 << 20];
            let mut n = [0u8; 8];
            while s.read_exact(&mut n).is_ok() {
                s.write_all(&zeros[..u64::from_le_bytes(n) as usize])
                    .unwrap();
            }
        });
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::sync::Mutex::new((c, vec![0u8; 64 << 20]))
    };
    fn over<S: std::io::Read + std::io::Write>(
        socket: &std::sync::Mutex<(S, Vec<u8>)>,
        len: usize,
    ) -> Duration {
        let mut g = socket.lock().unwrap();
        let (c, buf) = &mut *g;
        let t = Instant::now();
        c.write_all(&(len as u64).to_le_bytes()).unwrap();
        c.read_exact(&mut buf[..len]).unwrap();
        t.elapsed()
    }
    let fetch = |(client, base): &(reqwest::Client, String), id: &str| {
        client_rt.block_on(async {
            let mut r = client
                .get(format!("{base}/api/v1/artifacts/{id}/content"))
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
    // Lowest ratios: repeated downloads (the server as shipped keeps the verified bytes),
    // first downloads of 8 MiB and more, first downloads of 1 MiB.
    let mut lowest = [f64::INFINITY; 3];
    for (label, id, len, _) in &ids {
        let (mut sink, mut local, mut raw, mut raw_unix) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Per server: TCP cold, TCP warm, Unix cold, Unix warm.
        let mut api: Vec<Vec<Duration>> = vec![Vec::new(); clients.len()];
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
            raw.push(over(&tcp, *len));
            raw_unix.push(over(&unix, *len));
            for (client, times) in clients.iter().zip(&mut api) {
                let t = Instant::now();
                assert_eq!(fetch(client, id), *len);
                times.push(t.elapsed());
            }
        }
        let (s, l, t, u) = (median(sink), median(local), median(raw), median(raw_unix));
        let mib = *len as f64 / (1 << 20) as f64;
        let rate = |d: Duration| mib / d.as_secs_f64();
        let mut line = format!(
            "{label:<14} {:>9.0} {:>9.0} {:>9.0} {:>9.0} |",
            rate(s),
            rate(l),
            rate(t),
            rate(u)
        );
        for (i, times) in api.into_iter().enumerate() {
            let d = median(times);
            let ratio = l.as_secs_f64() / d.as_secs_f64();
            let class = match (i % 2 == 1, *len > 1 << 20) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 2,
            };
            lowest[class] = lowest[class].min(ratio);
            line.push_str(&format!(
                " {:>9.0} {:>5.2}{}",
                rate(d),
                ratio,
                if i == 1 { " |" } else { "" }
            ));
        }
        println!("{line}");
    }
    println!(
        "lowest ratio: repeated downloads {:.2}; first downloads, 8 MiB and more {:.2}, 1 MiB {:.2}",
        lowest[0], lowest[1], lowest[2]
    );
    // What every request costs besides its content: a conditional request of the 1 MiB
    // blobs answered `304 Not Modified` (the record looked up, no content read or sent),
    // cold over TCP, against `get` of the same blob.
    // "304" alternates with `get`, as the downloads above do; "304 in a row" is the same
    // request back to back, the server's threads awake.
    println!(
        "\n{:<14} {:>12} {:>16} {:>12}   (cold, TCP, medians of 7)",
        "blob", "304", "304 in a row", "get"
    );
    for (label, id, _, digest) in ids.iter().filter(|(_, _, len, _)| *len == 1 << 20) {
        let (client, base) = &clients[0];
        let not_modified = || {
            let t = Instant::now();
            let status = client_rt.block_on(async {
                client
                    .get(format!("{base}/api/v1/artifacts/{id}/content"))
                    .header("If-None-Match", format!("\"{digest}\""))
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
            assert_eq!(status, 304);
            t.elapsed()
        };
        let (mut answer, mut local) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            answer.push(not_modified());
            let t = Instant::now();
            drop(std::hint::black_box(store.get(id).unwrap()));
            local.push(t.elapsed());
        }
        let in_a_row: Vec<Duration> = (0..7).map(|_| not_modified()).collect();
        let ms = |v: Vec<Duration>| median(v).as_secs_f64() * 1e3;
        println!(
            "{label:<14} {:>9.2} ms {:>13.2} ms {:>9.2} ms",
            ms(answer),
            ms(in_a_row),
            ms(local)
        );
    }
    // A range is verified alone when its blob is streamed (a tree): the last 64 KiB of each
    // blob, cold over TCP, against the whole first download.
    println!(
        "\n{:<14} {:>12} {:>14}   (cold, TCP, medians of 7)",
        "blob", "last 64 KiB", "whole"
    );
    for (label, id, len, _) in &ids {
        let mut times = (Vec::new(), Vec::new());
        let (client, base) = &clients[0];
        for _ in 0..7 {
            let t = Instant::now();
            let got = client_rt.block_on(async {
                let r = client
                    .get(format!("{base}/api/v1/artifacts/{id}/content"))
                    .header("Range", "bytes=-65536")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 206);
                r.bytes().await.unwrap().len()
            });
            times.0.push(t.elapsed());
            assert_eq!(got, 65536);
            let t = Instant::now();
            assert_eq!(fetch(&clients[0], id), *len);
            times.1.push(t.elapsed());
        }
        let ms = |v: Vec<Duration>| median(v).as_secs_f64() * 1e3;
        println!(
            "{label:<14} {:>9.2} ms {:>11.2} ms",
            ms(times.0),
            ms(times.1)
        );
    }
    for (tx, server) in servers {
        let _ = tx.send(());
        rt.block_on(server).unwrap().unwrap();
    }
}
