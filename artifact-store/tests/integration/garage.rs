//! A real S3 server for the remote-store work: Garage on loopback (see `testkit`), one node or a
//! three-node cluster, and probes of how `object_store` reports what the remote store must
//! handle (missing bucket, wrong credentials, no server, multipart, conditional create).
//! `cargo xtask test` builds Garage once (cached) and passes the binary as `ORCH_GARAGE`.

use std::time::{Duration, Instant};

use object_store::aws::AmazonS3;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Error, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig,
    WriteMultipart,
};
use testkit::{GarageCluster, GarageNode};

/// `len` bytes of a deterministic pseudo-random sequence (xorshift) seeded by `seed`.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An error and its sources, one per line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str("\n  caused by: ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The kind of the transport error somewhere in `e`'s sources, if any.
fn http_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        source = s.source();
    }
    None
}

async fn read(s3: &AmazonS3, key: &ObjectPath) -> Vec<u8> {
    let got = s3
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {}", chain(&e)));
    got.bytes().await.unwrap().to_vec()
}

async fn list_all(s3: &AmazonS3, prefix: Option<&ObjectPath>) -> object_store::Result<Vec<String>> {
    testkit::list_keys(s3, prefix).await
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn a_local_garage_node_serves_s3_put_get_and_list() {
    let started = Instant::now();
    let garage = GarageNode::start();
    eprintln!("one Garage node up in {:?}", started.elapsed());
    let s3 = garage.store();
    let key = ObjectPath::from("blobs/ab/cd/abcdef");
    let body = content(1, 3 << 20);
    s3.put(&key, PutPayload::from(body.clone())).await.unwrap();
    assert_eq!(read(&s3, &key).await, body);
    let head = s3.head(&key).await.unwrap();
    assert_eq!(head.size, body.len() as u64);
    let other = ObjectPath::from("blobs/ef/01/ef0123");
    s3.put(&other, PutPayload::from_static(b"small"))
        .await
        .unwrap();
    // The fixture's readiness probe left nothing behind.
    assert_eq!(
        list_all(&s3, None).await.unwrap(),
        ["blobs/ab/cd/abcdef", "blobs/ef/01/ef0123"]
    );
    // A worker process would reach the same bucket through the AWS environment.
    let env: std::collections::HashMap<_, _> = garage.env().into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT"], garage.endpoint());
    assert_eq!(env["AWS_ACCESS_KEY_ID"], garage.key_id());
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], garage.secret());
    assert_eq!(env["AWS_REGION"], "garage");
    assert_eq!(env["AWS_ALLOW_HTTP"], "true");
    let mut from_env = object_store::aws::AmazonS3Builder::new().with_bucket_name(garage.bucket());
    for (k, v) in &env {
        from_env = from_env.with_config(k.to_ascii_lowercase().parse().unwrap(), v);
    }
    let from_env = from_env.build().unwrap();
    assert_eq!(
        from_env
            .get(&other)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"small"
    );
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn a_three_node_cluster_keeps_serving_reads_and_writes_with_a_node_killed() {
    let started = Instant::now();
    let mut cluster = GarageCluster::start(3);
    eprintln!("three Garage nodes up in {:?}", started.elapsed());
    assert_eq!(cluster.node_count(), 3);
    let endpoints = cluster.endpoints();
    assert!(endpoints[0] != endpoints[1] && endpoints[1] != endpoints[2]);
    let (s0, s2) = (cluster.store(0), cluster.store(2));
    // Some sizes: empty, small (inline in Garage's metadata), several 1 MiB blocks.
    let sizes = [0usize, 100, 5000, 1 << 20, (2 << 20) + 17];
    let mut objects = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let key = ObjectPath::from(format!("before/{i}"));
        let body = content(i as u64, len);
        s0.put(&key, PutPayload::from(body.clone())).await.unwrap();
        objects.push((key, body));
    }
    cluster.kill(1);
    assert!(!cluster.is_running(1));
    for (n, s3) in [(0usize, &s0), (2, &s2)] {
        for (i, &len) in sizes.iter().enumerate() {
            let key = ObjectPath::from(format!("after/{n}/{i}"));
            let body = content(100 * n as u64 + i as u64, len);
            let t = Instant::now();
            s3.put(&key, PutPayload::from(body.clone()))
                .await
                .unwrap_or_else(|e| panic!("put {key} via node {n}, node 1 down: {}", chain(&e)));
            if i == 0 {
                eprintln!("first put via node {n} with node 1 down: {:?}", t.elapsed());
            }
            objects.push((key, body));
        }
    }
    let t = Instant::now();
    for (key, body) in &objects {
        assert!(
            read(&s2, key).await == *body,
            "{key} differs read via node 2"
        );
    }
    eprintln!(
        "{} reads via node 2 with node 1 down: {:?}",
        objects.len(),
        t.elapsed()
    );
    let mut keys: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
    keys.sort();
    assert_eq!(list_all(&s2, None).await.unwrap(), keys);

    // Back up, node 1 serves everything, what was written while it was down included.
    let t = Instant::now();
    cluster.restart(1);
    eprintln!("node 1 back up in {:?}", t.elapsed());
    let s1 = cluster.store(1);
    for (key, body) in &objects {
        assert!(
            read(&s1, key).await == *body,
            "{key} differs read via node 1"
        );
    }
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn a_cluster_that_lost_its_quorum_answers_503_which_object_store_retries() {
    let mut cluster = GarageCluster::start(3);
    let key = ObjectPath::from("quorum/a");
    let body = content(3, 4000);
    cluster
        .store(0)
        .put(&key, PutPayload::from(body.clone()))
        .await
        .unwrap();
    cluster.kill(1);
    cluster.kill(2);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
    };
    let s0 = cluster.builder(0).with_retry(retry).build().unwrap();
    // One node of three cannot reach the write quorum (2). The first request waits on RPCs
    // sent into the dead nodes' connections until Garage notices them broken, at its next
    // write to them (a status exchange every 10 s, a ping every 15 s); then it answers 503
    // ServiceUnavailable, at once from then on, which object_store retries as a server error.
    let t = Instant::now();
    let e = s0
        .put(&ObjectPath::from("quorum/b"), PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    let took = t.elapsed();
    eprintln!("put without quorum: {} ({took:?})", chain(&e));
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "put: {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("503 Service Unavailable") && msg.contains("quorum"),
        "put: {msg}"
    );
    assert!(took < Duration::from_secs(15), "put: {took:?}");
    // Nor the read quorum (2).
    let t = Instant::now();
    let e = s0.get(&key).await.unwrap_err();
    let took = t.elapsed();
    eprintln!("get without quorum: {} ({took:?})", chain(&e));
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "get: {e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("503 Service Unavailable"), "get: {msg}");
    assert!(msg.contains("after 2 retries"), "get: {msg}");
    assert!(took < Duration::from_secs(2), "get: {took:?}");

    // With one more node back, the quorum is back: the object written before is intact.
    let t = Instant::now();
    cluster.restart(2);
    eprintln!("node 2 back up in {:?}", t.elapsed());
    assert_eq!(read(&cluster.store(0), &key).await, body);
    assert_eq!(read(&cluster.store(2), &key).await, body);
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn a_missing_bucket_is_not_found_for_head_get_put_and_list() {
    let garage = GarageNode::start();
    let s3 = garage
        .builder()
        .with_bucket_name("no-such-bucket")
        .build()
        .unwrap();
    let key = ObjectPath::from("a/b");

    let e = s3.head(&key).await.unwrap_err();
    eprintln!("head: {}", chain(&e));
    assert!(matches!(e, Error::NotFound { .. }), "head: {e:?}");

    let e = s3.get(&key).await.unwrap_err();
    eprintln!("get: {}", chain(&e));
    assert!(matches!(e, Error::NotFound { .. }), "get: {e:?}");
    assert!(e.to_string().contains("NoSuchBucket"), "get: {e}");

    let e = s3
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    eprintln!("put: {}", chain(&e));
    assert!(matches!(e, Error::NotFound { .. }), "put: {e:?}");
    assert!(e.to_string().contains("NoSuchBucket"), "put: {e}");

    // object_store wraps every list failure in `Error::Generic` (`ListRequest`), whatever the
    // status: only the message says 404.
    let e = list_all(&s3, None).await.unwrap_err();
    eprintln!("list: {}", chain(&e));
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "list: {e:?}"
    );
    assert!(e.to_string().contains("404 Not Found"), "list: {e}");
    assert!(e.to_string().contains("NoSuchBucket"), "list: {e}");
    let e = s3.list_with_delimiter(None).await.unwrap_err();
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "list_with_delimiter: {e:?}"
    );

    // Whereas a missing object in the bucket that exists is NotFound too: only the message
    // (NoSuchKey vs NoSuchBucket) tells them apart, and a HEAD has no body to tell.
    let e = garage.store().get(&key).await.unwrap_err();
    eprintln!("get of a missing key: {}", chain(&e));
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("NoSuchKey"), "{e}");
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn wrong_credentials_are_refused_without_retries() {
    let garage = GarageNode::start();
    let key = ObjectPath::from("a/b");
    garage
        .store()
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap();
    let wrong_secret = garage
        .builder()
        .with_secret_access_key("0".repeat(64))
        .build()
        .unwrap();
    let unknown_key = garage
        .builder()
        .with_access_key_id(format!("GK{}", "0".repeat(24)))
        .build()
        .unwrap();
    for (what, s3) in [
        ("wrong secret", &wrong_secret),
        ("unknown key id", &unknown_key),
    ] {
        let t = Instant::now();
        let e = s3.get(&key).await.unwrap_err();
        eprintln!("{what}, get: {} ({:?})", chain(&e), t.elapsed());
        assert!(
            matches!(e, Error::PermissionDenied { .. }),
            "{what}, get: {e:?}"
        );
        let e = s3.head(&key).await.unwrap_err();
        eprintln!("{what}, head: {}", chain(&e));
        assert!(
            matches!(e, Error::PermissionDenied { .. }),
            "{what}, head: {e:?}"
        );
        let e = s3
            .put(&key, PutPayload::from_static(b"y"))
            .await
            .unwrap_err();
        eprintln!("{what}, put: {}", chain(&e));
        assert!(
            matches!(e, Error::PermissionDenied { .. }),
            "{what}, put: {e:?}"
        );
        // Lists fail as `Error::Generic` whatever the status (see the missing bucket).
        let e = list_all(s3, None).await.unwrap_err();
        eprintln!("{what}, list: {}", chain(&e));
        assert!(
            matches!(e, Error::Generic { store: "S3", .. }),
            "{what}, list: {e:?}"
        );
        assert!(e.to_string().contains("403 Forbidden"), "{what}, list: {e}");
        // A 403 is not retried.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: {:?}",
            t.elapsed()
        );
    }
    // Nothing was overwritten.
    assert_eq!(read(&garage.store(), &key).await, b"x");
}

#[tokio::test]
async fn a_server_that_is_not_listening_fails_within_the_retry_budget() {
    // A port nothing listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(2),
    };
    let access = testkit::S3Access {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: testkit::REGION.to_owned(),
        bucket: "artifacts".to_owned(),
        key_id: format!("GK{}", "0".repeat(24)),
        secret: "0".repeat(64),
    };
    let s3 = access
        .builder()
        .with_retry(retry)
        .with_client_options(
            access
                .client_options()
                .with_connect_timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let key = ObjectPath::from("a/b");
    let t = Instant::now();
    let e = s3.get(&key).await.unwrap_err();
    let get_took = t.elapsed();
    eprintln!("get: {} ({get_took:?})", chain(&e));
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "get: {e:?}"
    );
    assert_eq!(
        http_kind(&e),
        Some(HttpErrorKind::Connect),
        "get: {}",
        chain(&e)
    );
    assert!(e.to_string().contains("after 3 retries"), "get: {e}");
    // Three backoffs of at least 50 ms each, well within the 2 s retry timeout.
    assert!(get_took >= Duration::from_millis(150), "get: {get_took:?}");
    assert!(get_took < Duration::from_secs(2), "get: {get_took:?}");

    // A put is retried the same way: the request was never sent.
    let t = Instant::now();
    let e = s3
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    let put_took = t.elapsed();
    eprintln!("put: {} ({put_took:?})", chain(&e));
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "put: {e:?}"
    );
    assert_eq!(
        http_kind(&e),
        Some(HttpErrorKind::Connect),
        "put: {}",
        chain(&e)
    );
    assert!(put_took < Duration::from_secs(2), "put: {put_took:?}");
    let e = list_all(&s3, None).await.unwrap_err();
    assert!(
        matches!(e, Error::Generic { store: "S3", .. }),
        "list: {e:?}"
    );
    assert_eq!(
        http_kind(&e),
        Some(HttpErrorKind::Connect),
        "list: {}",
        chain(&e)
    );
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn a_20_mib_multipart_upload_reads_back_exact() {
    let garage = GarageNode::start();
    let s3 = garage.store();
    let key = ObjectPath::from("multipart/big");
    // Not a multiple of the 5 MiB part size: the last part is short.
    let body = content(7, (20 << 20) + 12_345);
    let t = Instant::now();
    let mut upload = WriteMultipart::new(s3.put_multipart(&key).await.unwrap());
    for chunk in body.chunks(1 << 20) {
        upload.wait_for_capacity(4).await.unwrap();
        upload.write(chunk);
    }
    let put = upload.finish().await.unwrap();
    eprintln!(
        "multipart upload of {} bytes: {:?}, {put:?}",
        body.len(),
        t.elapsed()
    );
    let head = s3.head(&key).await.unwrap();
    assert_eq!(head.size, body.len() as u64);
    // S3's multipart ETag: `"<md5 of the part md5s>-<part count>"`; five parts here.
    let etag = head.e_tag.unwrap();
    assert!(etag.ends_with("-5\""), "{etag}");
    assert!(
        read(&s3, &key).await == body,
        "the upload reads back different"
    );
    // A range across the first part boundary.
    let boundary = 5u64 << 20;
    let range = s3
        .get_range(&key, boundary - 10..boundary + 10)
        .await
        .unwrap();
    assert_eq!(
        range.as_ref(),
        &body[boundary as usize - 10..boundary as usize + 10]
    );

    // An aborted upload leaves no object; neither does one still in progress.
    let aborted = ObjectPath::from("multipart/aborted");
    let mut upload = WriteMultipart::new(s3.put_multipart(&aborted).await.unwrap());
    upload.write(&body[..6 << 20]);
    upload.wait_for_capacity(0).await.unwrap();
    let e = s3.head(&aborted).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "in progress: {e:?}");
    upload.abort().await.unwrap();
    let e = s3.head(&aborted).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "aborted: {e:?}");
}

#[tokio::test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
async fn put_mode_create_overwrites_an_existing_key_on_garage() {
    let garage = GarageNode::start();
    let s3 = garage.store();
    let key = ObjectPath::from("create/once");
    // On a fresh key, Create writes.
    s3.put_opts(
        &key,
        PutPayload::from_static(b"first"),
        PutMode::Create.into(),
    )
    .await
    .unwrap();
    assert_eq!(read(&s3, &key).await, b"first");
    // object_store sends `If-None-Match: *`, which Garage 2.5.0 ignores: instead of
    // `Error::AlreadyExists`, the second Create succeeds and replaces the object. The remote
    // store must not rely on `PutMode::Create` against Garage.
    let second = s3
        .put_opts(
            &key,
            PutPayload::from_static(b"second"),
            PutMode::Create.into(),
        )
        .await;
    eprintln!("Create on an existing key: {second:?}");
    assert!(second.is_ok(), "Garage now refuses: {second:?}");
    assert_eq!(read(&s3, &key).await, b"second");
}
