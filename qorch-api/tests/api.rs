//! The API over a store made by a real host-runner campaign, through a real HTTP client.

mod support;

use std::collections::BTreeSet;

use orchestrator_core::artifact_store::{ArtifactStore, Digest, Query};
use support::{Served, raw_get, serve_campaign, tree_state};

/// The records of the campaign's store, by name.
fn records(s: &Served) -> Vec<orchestrator_core::artifact_store::ArtifactRecord> {
    ArtifactStore::open_read_only(s.store())
        .unwrap()
        .query(&Query::new())
        .unwrap()
}

fn by_name(s: &Served, name: &str) -> orchestrator_core::artifact_store::ArtifactRecord {
    records(s)
        .into_iter()
        .find(|r| r.name == name || r.name.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("no artifact {name} in {:#?}", records(s)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_listed_and_served_verified_with_ranges() {
    let s = serve_campaign(|c| c).await;
    let before = tree_state(&s.store());
    let all = records(&s);
    assert!(all.len() >= 9, "{all:#?}");

    // Listing: everything, then each filter.
    let listed = s.json("/api/v1/artifacts").await;
    let ids: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, all.iter().map(|r| r.id.as_str()).collect());
    let bulk = s.json("/api/v1/artifacts?test=bulk@aarch64").await;
    assert!(
        bulk.as_array()
            .unwrap()
            .iter()
            .all(|r| r["test_id"] == "bulk@aarch64")
    );
    assert!(bulk.as_array().unwrap().len() >= 4);
    let run = &s.report.run_id;
    let in_run = s
        .json(&format!("/api/v1/artifacts?run={run}&kind=log&limit=2"))
        .await;
    assert_eq!(in_run.as_array().unwrap().len(), 2);
    let failed = s.json("/api/v1/artifacts?outcome=failed").await;
    assert!(!failed.as_array().unwrap().is_empty());
    assert!(
        failed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["test_id"] == "fails@x86_64" && r["outcome"] == "failed")
    );
    // The host runner records no architecture.
    let none = s.json("/api/v1/artifacts?arch=riscv64").await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let none = s.json("/api/v1/artifacts?since=2999-01-01T00:00:00Z").await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let until = s
        .json("/api/v1/artifacts?until=2999-01-01T00:00:00Z&limit=3")
        .await;
    assert_eq!(until.as_array().unwrap().len(), 3);
    for bad in [
        "/api/v1/artifacts?kind=nonsense",
        "/api/v1/artifacts?outcome=great",
        "/api/v1/artifacts?since=yesterday",
        "/api/v1/artifacts?limit=0",
        "/api/v1/artifacts?limit=many",
        "/api/v1/artifacts?colour=blue",
        "/api/v1/artifacts?test=..%2Fetc",
    ] {
        let r = s.get(bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
    }

    // Every artifact's record and content: the BLAKE3 of the body is the record's digest.
    for rec in &all {
        let got = s.json(&format!("/api/v1/artifacts/{}", rec.id)).await;
        assert_eq!(got["digest"], rec.digest.to_hex());
        assert_eq!(got["name"], rec.name);
        let r = s
            .get(&format!("/api/v1/artifacts/{}/content", rec.id))
            .await;
        assert_eq!(r.status(), 200, "{}", rec.name);
        let h = r.headers().clone();
        assert_eq!(h["etag"], format!("\"{}\"", rec.digest).as_str());
        assert_eq!(h["content-length"], rec.raw_size.to_string().as_str());
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len() as u64, rec.raw_size, "{}", rec.name);
        assert_eq!(Digest::of(&body), rec.digest, "{}", rec.name);
    }

    // Content types by name and kind.
    for (name, ct) in [
        ("boot.log", "text/plain; charset=utf-8"),
        ("note.txt", "text/plain; charset=utf-8"),
        ("data.json", "application/json"),
        ("shot.png", "image/png"),
        ("big.bin", "application/octet-stream"),
        ("metrics.jsonl", "application/x-ndjson"),
    ] {
        let rec = by_name(&s, name);
        let r = s
            .get(&format!("/api/v1/artifacts/{}/content", rec.id))
            .await;
        assert_eq!(r.headers()["content-type"], ct, "{name}");
    }

    // Ranges, on a blob in memory, one verified into a temp file (zstd) and a raw one.
    for name in ["medium.dat", "seq.log", "big.log", "big.bin", "note.txt"] {
        let rec = by_name(&s, name);
        let whole = {
            let r = s
                .get(&format!("/api/v1/artifacts/{}/content", rec.id))
                .await;
            r.bytes().await.unwrap()
        };
        let len = whole.len() as u64;
        let url = s.url(&format!("/api/v1/artifacts/{}/content", rec.id));
        let client = reqwest::Client::new();
        for (range, start, end) in [
            ("bytes=0-9".to_owned(), 0, 10),
            (format!("bytes={}-", len - 7), len - 7, len),
            ("bytes=-5".to_owned(), len - 5, len),
            (format!("bytes=3-{}", len / 2), 3, len / 2 + 1),
            (format!("bytes=1-{}", len * 10), 1, len),
        ] {
            let r = client
                .get(&url)
                .header("Range", &range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{name} {range}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {start}-{}/{len}", end - 1).as_str()
            );
            assert_eq!(
                r.headers()["content-length"],
                (end - start).to_string().as_str()
            );
            let part = r.bytes().await.unwrap();
            assert_eq!(
                &part[..],
                &whole[start as usize..end as usize],
                "{name} {range}"
            );
        }
        for range in [
            format!("bytes={len}-"),
            format!("bytes={}-{}", len + 100, len + 200),
            "bytes=0-1,5-6".to_owned(),
            "bytes=99999999999999999999999999-".to_owned(),
            "bytes=9-3".to_owned(),
        ] {
            let r = client
                .get(&url)
                .header("Range", &range)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 416, "{name} {range}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes */{len}").as_str()
            );
        }
        // A cached copy: 304 without a body; If-Range with another validator: everything.
        let r = client
            .get(&url)
            .header("If-None-Match", format!("\"{}\"", rec.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let r = client
            .get(&url)
            .header("Range", "bytes=0-0")
            .header("If-Range", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len() as u64, len);
        let r = client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    }

    // More large downloads at once than the memory for them (streamed) or the temp files
    // (blobs without a tree, below) allow: the rest wait their turn, and every one arrives
    // whole.
    let concurrent = || {
        let mut downloads = tokio::task::JoinSet::new();
        for i in 0..3 * qorch_api::FILES_IN_FLIGHT {
            let rec = by_name(&s, if i % 2 == 0 { "big.bin" } else { "big.log" });
            let url = s.url(&format!("/api/v1/artifacts/{}/content", rec.id));
            downloads.spawn(async move {
                let r = reqwest::get(url).await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(Digest::of(&r.bytes().await.unwrap()), rec.digest);
            });
        }
        downloads
    };
    let mut downloads = concurrent();
    while let Some(done) = downloads.join_next().await {
        done.unwrap();
    }

    let stats = s.json("/api/v1/store/stats").await;
    assert_eq!(stats["live_records"].as_u64().unwrap(), all.len() as u64);
    assert!(stats["dedup_ratio"].as_f64().unwrap() >= 1.0);

    // Nothing the requests did wrote to the store.
    assert_eq!(before, tree_state(&s.store()));

    // Blobs without a tree, as an earlier version wrote them: verified whole into temp files
    // before they are sent, ranges too.
    std::fs::remove_dir_all(s.store().join("trees-v1")).unwrap();
    let mut downloads = concurrent();
    while let Some(done) = downloads.join_next().await {
        done.unwrap();
    }
    let rec = by_name(&s, "big.log");
    let r = reqwest::Client::new()
        .get(s.url(&format!("/api/v1/artifacts/{}/content", rec.id)))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    s.stop().await;
}

/// Over a Unix socket: every artifact's bytes are its digest's, ranges work, the socket is
/// private to its owner and gone when the server stops; a stale socket file is replaced and a
/// live one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_verified_content_and_ranges() {
    use std::os::unix::fs::PermissionsExt;
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("api.sock");
    // A socket file nobody listens on (a server that is gone): replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let s = serve_campaign(|c| c.with_unix_socket(&path)).await;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for rec in records(&s) {
        let r = s
            .get(&format!("/api/v1/artifacts/{}/content", rec.id))
            .await;
        assert_eq!(r.status(), 200, "{}", rec.name);
        let body = r.bytes().await.unwrap();
        assert_eq!(Digest::of(&body), rec.digest, "{}", rec.name);
        if body.len() > 20 {
            let r = s
                .client()
                .get(s.url(&format!("/api/v1/artifacts/{}/content", rec.id)))
                .header("Range", "bytes=5-14")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{}", rec.name);
            assert_eq!(&r.bytes().await.unwrap()[..], &body[5..15], "{}", rec.name);
        }
    }
    // A second server on the live socket: refused, naming it.
    let err = qorch_api::bind(&qorch_api::ApiConfig::new(s.store()).with_unix_socket(&path))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api.sock") && err.contains("listens there"),
        "{err}"
    );
    s.stop().await;
    assert!(!path.exists(), "the socket outlived its server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_bad_ids_and_unknown_things_are_refused() {
    let s = serve_campaign(|c| c).await;
    for raw in [
        "/api/v1/artifacts/../../../etc/passwd",
        "/api/v1/artifacts/..",
        "/api/v1/artifacts/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/v1/artifacts/%2E%2E/content",
        "/api/v1/artifacts/x%2Fy/content",
        "/api/v1/artifacts/%252e%252e%252fsecret",
        "/api/v1/../../etc/passwd",
        "/metrics/..",
    ] {
        let (status, body) = raw_get(s.addr, raw, None).await;
        assert_eq!(status, 400, "{raw}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused path"),
            "{v}"
        );
    }
    // Ids that are not UUIDs.
    for raw in [
        "/api/v1/artifacts/not-a-uuid",
        "/api/v1/artifacts/..%5C..%5Cwindows/content",
        "/api/v1/artifacts/67E55044-10B1-426F-9247-BB680E5FE0C8",
    ] {
        let (status, body) = raw_get(s.addr, raw, None).await;
        assert_eq!(status, 400, "{raw}: {body}");
    }
    // Unknown but well-formed: 404 naming it.
    let ghost = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    for path in [
        format!("/api/v1/artifacts/{ghost}"),
        format!("/api/v1/artifacts/{ghost}/content"),
    ] {
        let r = s.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(ghost),
            "{v}"
        );
    }
    let r = s.get("/api/v2/nothing").await;
    assert_eq!(r.status(), 404);
    // Read-only: other methods are refused.
    let r = reqwest::Client::new()
        .delete(s.url(&format!("/api/v1/artifacts/{ghost}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_is_refused_whole_and_ranges_too() {
    let s = serve_campaign(|c| c).await;
    // Downloaded (so verified) before the damage: served again from the verified copy kept in
    // memory, never from the damaged file.
    let early = by_name(&s, "seq.log");
    let first = s
        .get(&format!("/api/v1/artifacts/{}/content", early.id))
        .await;
    assert_eq!(Digest::of(&first.bytes().await.unwrap()), early.digest);
    // Blobs in files of their own: verified whole in memory (raw, zstd) and streamed (raw,
    // zstd: larger than the memory for one download here, with a tree).
    let store = ArtifactStore::open_read_only(s.store()).unwrap();
    for name in ["medium.dat", "seq.log", "big.bin", "big.log"] {
        let rec = by_name(&s, name);
        let path = store.blob_path(&rec.digest);
        assert!(path.is_file(), "{name} is not in a blob file");
        let content = store.get(&rec.id).unwrap();
        let streamed = rec.raw_size > qorch_api::STREAM_MIN.min(support::BUDGET / 4);
        assert_eq!(streamed, name.starts_with("big"), "{name}");
        // Flip a byte near the end: a reader that does not verify before sending would have
        // sent most of it already.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        if name == "seq.log" {
            // Verified and kept before the damage: see below.
            continue;
        }
        let get = |range: Option<&str>| {
            let mut rq =
                reqwest::Client::new().get(s.url(&format!("/api/v1/artifacts/{}/content", rec.id)));
            if let Some(r) = range {
                rq = rq.header("Range", r);
            }
            rq.send()
        };
        let refused = |r: reqwest::Response| async move {
            assert_eq!(r.status(), 500);
            assert_eq!(r.headers()["content-type"], "application/json");
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            v["error"]["message"].as_str().unwrap().to_owned()
        };
        if !streamed {
            // Verified whole before the status line: refused, whole and any range.
            for range in [None, Some("bytes=0-99")] {
                let msg = refused(get(range).await.unwrap()).await;
                assert!(msg.contains(&rec.id), "{msg}");
                assert!(msg.contains("qorch store verify --repair"), "{msg}");
                assert!(msg.contains("corrupt"), "{msg}");
            }
            continue;
        }
        // Streamed: the pieces before the damage are sent, each verified; the connection is
        // cut before the damaged piece, so no client ever holds a complete body.
        let r = get(None).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "{name}: the whole body arrived");
        // A range before the damage: served, and it is the content.
        let r = get(Some("bytes=0-99")).await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap(), &content[..100]);
        if name == "big.bin" {
            // Raw content: the damage is in the last 100 bytes, so a range starting there is
            // refused before its status line, naming the repair.
            let msg = refused(get(Some("bytes=-100")).await.unwrap()).await;
            assert!(msg.contains(&rec.id), "{msg}");
            assert!(msg.contains("qorch store verify --repair"), "{msg}");
        }
    }
    let again = s
        .get(&format!("/api/v1/artifacts/{}/content", early.id))
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(Digest::of(&again.bytes().await.unwrap()), early.digest);
    // Without the cache, the same blob is refused.
    let dir = s.dir.path().to_owned();
    let uncached = support::serve_dir(tempfile::tempdir().unwrap(), s.report.clone(), |c| {
        let mut c = c;
        c.store = dir.join("store");
        c.cache = false;
        c
    })
    .await;
    for range in [None, Some("bytes=0-99")] {
        let mut rq = reqwest::Client::new()
            .get(uncached.url(&format!("/api/v1/artifacts/{}/content", early.id)));
        if let Some(r) = range {
            rq = rq.header("Range", r);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), 500, "{range:?}");
        let msg = r.text().await.unwrap();
        assert!(
            msg.contains(&early.id) && msg.contains("qorch store verify --repair"),
            "{msg}"
        );
    }
    uncached.stop().await;

    // A missing blob, likewise.
    let rec = by_name(&s, "shot.png");
    let store = ArtifactStore::open_read_only(s.store()).unwrap();
    if !store.blob_path(&rec.digest).exists() {
        // Inline in the catalog: nothing to remove from outside.
    } else {
        std::fs::remove_file(store.blob_path(&rec.digest)).unwrap();
        let r = s
            .get(&format!("/api/v1/artifacts/{}/content", rec.id))
            .await;
        assert_eq!(r.status(), 500);
        let msg = r.text().await.unwrap();
        assert!(
            msg.contains(&rec.id) && msg.contains("qorch store verify --repair"),
            "{msg}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_off_loopback_and_checked_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let report = support::campaign(dir.path()).await;
    let store = dir.path().join("store");

    // Off loopback without a token: refused before anything listens.
    let config = qorch_api::ApiConfig::new(&store).with_bind("0.0.0.0:0".parse().unwrap());
    if std::env::var_os(qorch_api::TOKEN_ENV).is_none() {
        let err = qorch_api::bind(&config).await.unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:0") && err.contains("QORCH_API_TOKEN"),
            "{err}"
        );
        assert!(err.contains("--token"), "{err}");
    }
    let err = qorch_api::bind(&config.clone().with_token(""))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");

    let token = "s3cret-token.with:chars";
    let s = support::serve_dir(dir, report, |c| c.with_token(token)).await;
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/artifacts",
        "/metrics",
        "/api/v1/openapi.json",
        "/nothing",
    ] {
        let r = client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="qorch""#);
        let r = client
            .get(s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        let r = client
            .get(s.url(path))
            .header("Authorization", format!("Basic {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client
            .get(s.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{path}");
    }
    // Traversal with a token is still refused, without one it is not even looked at.
    let (status, _) = raw_get(s.addr, "/api/v1/artifacts/%2e%2e%2f", None).await;
    assert_eq!(status, 401);
    let (status, _) = raw_get(s.addr, "/api/v1/artifacts/%2e%2e%2f", Some(token)).await;
    assert_eq!(status, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_name_the_address_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let report = support::campaign(dir.path()).await;
    let s = support::serve_dir(dir, report, |c| c).await;
    // The port in use.
    let config = qorch_api::ApiConfig::new(s.store()).with_bind(s.addr);
    let err = qorch_api::bind(&config).await.unwrap_err().to_string();
    assert!(err.contains(&s.addr.to_string()), "{err}");
    assert!(err.contains("--bind"), "{err}");
    // Not a store: named, and nothing created there.
    let empty = tempfile::tempdir().unwrap();
    let err = qorch_api::bind(
        &qorch_api::ApiConfig::new(empty.path()).with_bind("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("is not an artifact store"), "{err}");
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
    assert!(std::fs::read_dir(empty.path()).unwrap().next().is_none());
    // A reports directory that does not exist.
    let err = qorch_api::bind(
        &qorch_api::ApiConfig::new(s.store())
            .with_bind("127.0.0.1:0".parse().unwrap())
            .with_reports(empty.path().join("nope")),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_in_the_prometheus_text_format() {
    let s = serve_campaign(|c| c).await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    for name in [
        "qorch_store_records{state=\"live\"}",
        "qorch_store_dedup_ratio ",
        "qorch_store_stored_bytes ",
        "qorch_store_kind_bytes{kind=\"log\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let r = reqwest::Client::new()
        .get(s.url("/metrics"))
        .header("Accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_parses_and_matches_the_router() {
    let spec: openapiv3::OpenAPI = serde_json::from_str(qorch_api::OPENAPI).unwrap();
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let mut described = BTreeSet::new();
    for (path, item) in spec.paths.paths.iter() {
        let item = item.as_item().unwrap();
        for (method, _) in item.iter() {
            described.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = qorch_api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(described, routed, "routes and description differ");

    // The served copy is the same, and every described path is answered by its route (a
    // well-formed id that exists, or one that does not: never the router's fallback).
    let s = serve_campaign(|c| c).await;
    let served = s.json("/api/v1/openapi.json").await;
    assert_eq!(
        served,
        serde_json::from_str::<serde_json::Value>(qorch_api::OPENAPI).unwrap()
    );
    let any = records(&s).into_iter().next().unwrap();
    for (_, path) in &routed {
        let concrete = path
            .replace("{id}", &any.id)
            .replace("{run_id}", &s.report.run_id)
            .replace("{test_id}", "logs@x86_64");
        let r = s.get(&concrete).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(!body.contains("no such endpoint"), "{path}: {body}");
        assert!(status.is_success(), "{path} ({concrete}): {status} {body}");
    }
    s.stop().await;
}

/// Parses `text` with the `prometheus-client` Python package's `parser` (`prometheus`) or
/// `openmetrics.parser`, as JSON families.
fn parse_with_python(python: &std::ffi::OsStr, parser: &str, text: &str) -> serde_json::Value {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parse_metrics.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(parser)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {parser} parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python's prometheus-client: run `cargo xtask test`, which installs it and sets JUNITPARSER_PYTHON"]
async fn metrics_parse_with_the_prometheus_projects_parsers() {
    let python = std::env::var_os("JUNITPARSER_PYTHON")
        .expect("JUNITPARSER_PYTHON is not set: run this test through `cargo xtask test`");
    let s = serve_campaign(|c| c).await;
    let text = s.get("/metrics").await.text().await.unwrap();
    let stats = s.json("/api/v1/store/stats").await;
    for parser in ["prometheus", "openmetrics"] {
        let families = parse_with_python(&python, parser, &text);
        let value = |family: &str, labels: serde_json::Value| -> f64 {
            let f = &families[family];
            assert!(
                f.is_object(),
                "{parser}: no family {family} in {families:#}"
            );
            f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| {
                    labels
                        .as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| s[1][k] == *v)
                })
                .unwrap_or_else(|| panic!("{parser}: {family} {labels} missing: {f:#}"))[2]
                .as_f64()
                .unwrap()
        };
        assert_eq!(families["qorch_store_records"]["type"], "gauge");
        assert_eq!(
            value("qorch_store_records", serde_json::json!({"state": "live"})),
            stats["live_records"].as_f64().unwrap()
        );
        assert_eq!(
            value("qorch_store_stored_bytes", serde_json::json!({})),
            stats["stored_bytes"].as_f64().unwrap()
        );
        assert!(
            (value("qorch_store_dedup_ratio", serde_json::json!({}))
                - stats["dedup_ratio"].as_f64().unwrap())
            .abs()
                < 1e-9
        );
        assert!(value("qorch_store_kind_bytes", serde_json::json!({"kind": "log"})) > 6e6);
        assert_eq!(value("qorch_runs", serde_json::json!({})), 1.0);
        assert_eq!(
            value(
                "qorch_last_run_tests",
                serde_json::json!({"verdict": "failed"})
            ),
            1.0
        );
        let cpu = value(
            "qorch_last_run_test_cpu_seconds",
            serde_json::json!({"test": "bulk@aarch64"}),
        );
        let expected = s.report.results[1].resources.as_ref().unwrap().cpu_seconds;
        assert!((cpu - expected).abs() < 1e-6, "{cpu} vs {expected}");
        assert_eq!(families["qorch_run_duration_seconds"]["type"], "histogram");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_reports_history_and_results() {
    // Two runs into one store, and a reports directory holding a page of the second and a
    // report the store never saw (written without a store, or before reports were recorded).
    let dir = tempfile::tempdir().unwrap();
    let first = support::campaign(dir.path()).await;
    let second = support::campaign(dir.path()).await;
    let reports = dir.path().join("out");
    let page_dir = reports.join("runs").join(&second.run_id);
    std::fs::create_dir_all(&page_dir).unwrap();
    std::fs::write(
        page_dir.join("report.html"),
        "<html><body>the page as written</body></html>",
    )
    .unwrap();
    let mut old = first.clone();
    old.run_id = "20200101T000000Z-0ld0ld00".into();
    old.started_at = first.started_at - chrono::Duration::days(365);
    old.finished_at = first.finished_at - chrono::Duration::days(365);
    let old_dir = reports.join("runs").join(&old.run_id);
    std::fs::create_dir_all(&old_dir).unwrap();
    // In the format of version 2 (before subtest suites and subtest counts).
    let mut v2 = serde_json::to_value(&old).unwrap();
    v2["schema_version"] = 2.into();
    v2["summary"].as_object_mut().unwrap().remove("subtests");
    for r in v2["results"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("suites");
    }
    std::fs::write(
        old_dir.join("report.json"),
        serde_json::to_vec_pretty(&v2).unwrap(),
    )
    .unwrap();
    let s = support::serve_dir(dir, second.clone(), |c| c.with_reports(&reports)).await;
    let before = tree_state(&s.store());

    let runs = s.json("/api/v1/runs").await;
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            second.run_id.as_str(),
            first.run_id.as_str(),
            old.run_id.as_str()
        ]
    );
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["tests"], 3);
    assert_eq!(runs[0]["counts"]["passed"], 2);
    assert_eq!(runs[0]["counts"]["failed"], 1);
    assert_eq!(runs[0]["in_store"], true);
    assert_eq!(runs[2]["in_store"], false);
    assert_eq!(runs[2]["counts"], runs[1]["counts"]);
    assert_eq!(
        s.json("/api/v1/runs?limit=1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A run's report, from the store and from the reports directory.
    for r in [&first, &second, &old] {
        let got = s.json(&format!("/api/v1/runs/{}", r.run_id)).await;
        assert_eq!(got["run_id"], r.run_id.as_str());
        let tests: Vec<&str> = got["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["test_id"].as_str().unwrap())
            .collect();
        assert_eq!(tests, ["logs@x86_64", "bulk@aarch64", "fails@x86_64"]);
        let back: orchestrator_core::RunReport = serde_json::from_value(got).unwrap();
        assert_eq!(back.summary, r.summary);
    }
    // Its page: the one written, else rendered from the stored report.
    let r = s
        .get(&format!("/api/v1/runs/{}/report.html", second.run_id))
        .await;
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        r.text().await.unwrap(),
        "<html><body>the page as written</body></html>"
    );
    for run in [&first.run_id, &old.run_id] {
        let r = s.get(&format!("/api/v1/runs/{run}/report.html")).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        let page = r.text().await.unwrap();
        assert!(
            page.contains(run.as_str()) && page.contains("fails@x86_64"),
            "{page}"
        );
    }
    // Unknown and malformed runs.
    let ghost = "20260101T000000Z-9h0s7000";
    for path in [
        format!("/api/v1/runs/{ghost}"),
        format!("/api/v1/runs/{ghost}/report.html"),
    ] {
        let r = s.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(ghost),
            "{v}"
        );
    }
    for bad in [
        "/api/v1/runs/bad%21id",
        "/api/v1/runs/-x/report.html",
        "/api/v1/runs?limit=0",
    ] {
        assert_eq!(s.get(bad).await.status(), 400, "{bad}");
    }

    // A test's history: both stored runs, newest first, with the monitor's figures.
    let h = s.json("/api/v1/tests/bulk@aarch64/history").await;
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["run_id"], second.run_id.as_str());
    assert_eq!(h[1]["run_id"], first.run_id.as_str());
    assert_eq!(h[0]["verdict"], "passed");
    assert!(h[0]["cpu_seconds"].as_f64().is_some(), "{h:#?}");
    assert!(h[0]["peak_rss_bytes"].as_u64().unwrap() > 0, "{h:#?}");
    let f = s.json("/api/v1/tests/fails@x86_64/history?limit=1").await;
    assert_eq!(f.as_array().unwrap().len(), 1);
    assert_eq!(f[0]["verdict"], "failed");
    // Its whole results.
    let res = s.json("/api/v1/tests/logs@x86_64/results").await;
    assert_eq!(res.as_array().unwrap().len(), 2);
    assert_eq!(res[0]["result"]["test_id"], "logs@x86_64");
    assert_eq!(res[0]["run_id"], second.run_id.as_str());
    let one = s
        .json(&format!(
            "/api/v1/tests/logs@x86_64/results?run={}",
            first.run_id
        ))
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["run_id"], first.run_id.as_str());
    assert_eq!(
        one[0]["result"]["stdout"],
        serde_json::to_value(&first.results[0].stdout).unwrap()
    );
    for path in [
        "/api/v1/tests/logs@x86_64x/history",
        "/api/v1/tests/nothing/results",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
        let msg = r.text().await.unwrap();
        assert!(msg.contains("no result of test"), "{msg}");
    }
    let r = s.get("/api/v1/tests/logs@x86_64x/history").await;
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("did you mean `logs@x86_64`")
    );
    for bad in [
        "/api/v1/tests/%2Fetc/history",
        "/api/v1/tests/-x/results",
        "/api/v1/tests/a%20b/history",
    ] {
        assert_eq!(s.get(bad).await.status(), 400, "{bad}");
    }

    // The metrics of the runs.
    let text = s.get("/metrics").await.text().await.unwrap();
    for line in [
        "qorch_runs 2".to_owned(),
        "qorch_last_run_tests{verdict=\"failed\"} 1".to_owned(),
        "qorch_last_run_tests{verdict=\"passed\"} 2".to_owned(),
        "qorch_last_run_outcomes{outcome=\"failed\"} 1".to_owned(),
        format!(
            "qorch_last_run_info{{run_id=\"{}\",name=\"\",status=\"failed\"}} 1",
            second.run_id
        ),
        "qorch_run_duration_seconds_count 2".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "{line} missing:\n{text}"
        );
    }
    for test in ["logs@x86_64", "bulk@aarch64", "fails@x86_64"] {
        for family in ["duration_seconds", "cpu_seconds", "peak_rss_bytes"] {
            let prefix = format!("qorch_last_run_test_{family}{{test=\"{test}\"}} ");
            assert!(text.contains(&prefix), "{prefix} missing:\n{text}");
        }
    }
    // Counted from samples: the longest test has them on any host.
    assert!(
        text.contains("qorch_last_run_test_peak_threads{test=\"bulk@aarch64\"} "),
        "{text}"
    );
    assert_eq!(
        before,
        tree_state(&s.store()),
        "a request wrote to the store"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_artifact_keeps_its_record_and_its_content_is_gone() {
    let s = serve_campaign(|c| c).await;
    let rec = by_name(&s, "note.txt");
    // Retention, run by a writer while the server runs.
    ArtifactStore::open(s.store())
        .unwrap()
        .evict(&[(rec.id.clone(), "older than 30 days".into())])
        .unwrap();
    let r = s
        .get(&format!("/api/v1/artifacts/{}/content", rec.id))
        .await;
    assert_eq!(r.status(), 410);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains(&rec.id) && msg.contains("older than 30 days"),
        "{msg}"
    );
    let got = s.json(&format!("/api/v1/artifacts/{}", rec.id)).await;
    assert_eq!(got["evicted"]["reason"], "older than 30 days");
    let live = s.json("/api/v1/artifacts?test=logs@x86_64").await;
    assert!(
        live.as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != rec.id.as_str())
    );
    let all = s
        .json("/api/v1/artifacts?test=logs@x86_64&include_evicted=true")
        .await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == rec.id.as_str())
    );
    s.stop().await;
}

/// Copies a directory tree.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_and_report_of_the_previous_version_are_served() {
    // Written by the program at commit 0d87bc4 (orchestrator-core's fixture): a version 2
    // catalog with the run's artifacts and no result or report records, and its report.json.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../orchestrator-core/tests/fixtures/previous-version");
    let report = orchestrator_core::RunReport::read_json(&fixture.join("report.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture.join("store"), &dir.path().join("store"));
    let out = dir.path().join("out");
    let run_dir = out.join("runs").join(&report.run_id);
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::copy(fixture.join("report.json"), run_dir.join("report.json")).unwrap();
    let before = tree_state(&dir.path().join("store"));
    let s = support::serve_dir(dir, report.clone(), |c| c.with_reports(&out)).await;

    let runs = s.json("/api/v1/runs").await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    assert_eq!(runs[0]["run_id"], report.run_id.as_str());
    assert_eq!(runs[0]["in_store"], false);
    assert_eq!(runs[0]["status"], "failed");
    let got = s.json(&format!("/api/v1/runs/{}", report.run_id)).await;
    assert_eq!(got["results"].as_array().unwrap().len(), 3);
    let page = s
        .get(&format!("/api/v1/runs/{}/report.html", report.run_id))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("ktap") && page.contains(&report.run_id),
        "{page}"
    );
    // The old store's artifacts, verified.
    let arts = s
        .json(&format!("/api/v1/artifacts?run={}", report.run_id))
        .await;
    assert!(!arts.as_array().unwrap().is_empty());
    for a in arts.as_array().unwrap() {
        let r = s
            .get(&format!(
                "/api/v1/artifacts/{}/content",
                a["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            Digest::of(&r.bytes().await.unwrap()).to_hex(),
            a["digest"].as_str().unwrap()
        );
    }
    // Without the reports directory, the store alone says how to import the report.
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let alone = support::serve_dir(tempfile::tempdir().unwrap(), report.clone(), |mut c| {
        c.store = s.store();
        c
    })
    .await;
    let r = alone.get(&format!("/api/v1/runs/{}", report.run_id)).await;
    assert_eq!(r.status(), 404);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("import"), "{msg}");
    alone.stop().await;
    // Read-only: the version 2 catalog was not upgraded.
    assert_eq!(before, tree_state(&s.store()));
    s.stop().await;
}
