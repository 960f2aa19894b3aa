//! A real S3 server for the remote-store work: a single Garage node on loopback, with a bucket
//! and a key, started and stopped by the test. `cargo xtask test` builds Garage once (cached)
//! and passes the binary as `ORCH_GARAGE`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A running single-node Garage with one bucket and one key; killed on drop.
pub(crate) struct Garage {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `bytes` random bytes in hex (secrets, tokens, key ids).
fn hex(bytes: usize) -> String {
    let mut out = String::new();
    while out.len() < 2 * bytes {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(2 * bytes);
    out
}

impl Garage {
    /// The binary: `ORCH_GARAGE`, else the tools cache `cargo xtask test` fills.
    fn binary() -> PathBuf {
        if let Some(p) = std::env::var_os("ORCH_GARAGE") {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").expect("HOME");
        PathBuf::from(home).join(".cache/qemu-orchestrator/tools/bin/garage")
    }

    fn cli(&self, bin: &Path, config: &Path, args: &[&str]) -> String {
        let out = Command::new(bin)
            .arg("-c")
            .arg(config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run garage {args:?}: {e}"));
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn start() -> Garage {
        let bin = Self::binary();
        assert!(
            bin.is_file(),
            "Garage is not installed at {}: run `cargo xtask test` (it builds it once), or set \
             ORCH_GARAGE",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let config = d.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{token}\"\n",
                meta = d.join("meta").display(),
                data = d.join("data").display(),
                secret = hex(32),
                token = hex(16),
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let g = Garage {
            child,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "artifacts".into(),
            key_id: format!("GK{}", hex(12)),
            secret: hex(32),
        };
        // The node, once it answers, gets a role; then a bucket and a key.
        let started = Instant::now();
        let node = loop {
            let out = Command::new(&bin)
                .arg("-c")
                .arg(&config)
                .arg("status")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(id) = text
                .lines()
                .find(|l| l.contains("NO ROLE ASSIGNED"))
                .and_then(|l| l.split_whitespace().next())
            {
                break id.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "garage did not come up: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        g.cli(
            &bin,
            &config,
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
        );
        g.cli(&bin, &config, &["layout", "apply", "--version", "1"]);
        g.cli(&bin, &config, &["bucket", "create", &g.bucket.clone()]);
        let (id, secret) = (g.key_id.clone(), g.secret.clone());
        g.cli(
            &bin,
            &config,
            &["key", "import", "--yes", "-n", "test", &id, &secret],
        );
        let bucket = g.bucket.clone();
        g.cli(
            &bin,
            &config,
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &id,
            ],
        );
        g
    }

    pub(crate) fn store(&self) -> impl ObjectStore {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region("garage")
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()
            .unwrap()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs Garage: run `cargo xtask test`, which builds it once and sets ORCH_GARAGE"]
async fn a_local_garage_node_serves_s3_put_get_and_list() {
    let garage = Garage::start();
    let s3 = garage.store();
    let key = ObjectPath::from("blobs/ab/cd/abcdef");
    let body = vec![7u8; 3 << 20];
    // Garage may take a moment to accept writes after the layout is applied.
    let started = Instant::now();
    loop {
        match s3.put(&key, PutPayload::from(body.clone())).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("retrying put: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put to Garage failed: {e}"),
        }
    }
    let got = s3.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), body.as_slice());
    let head = s3.head(&key).await.unwrap();
    assert_eq!(head.size, body.len() as u64);
    // Wrong credentials are refused at once.
    let wrong = AmazonS3Builder::new()
        .with_endpoint(&garage.endpoint)
        .with_region("garage")
        .with_bucket_name(&garage.bucket)
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key("0".repeat(64))
        .with_allow_http(true)
        .build()
        .unwrap();
    assert!(wrong.get(&key).await.is_err());
}
