//! A real store made by a real host-runner run, and a real server on 127.0.0.1:0 over it.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orchestrator_core::artifact_store::ArtifactStore;
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{Orchestrator, ProcessRunner, RunConfig, RunReport, TestCase};
use qorch_api::ApiConfig;

/// Download memory of the test servers: 8 MiB, so that blobs above 2 MiB are verified into a
/// temp file and smaller ones in memory; both paths are exercised.
pub const BUDGET: u64 = 8 << 20;

fn cases() -> Vec<TestCase> {
    vec![
        // Text: a compressible log in a blob file of its own, a small inline one, JSON.
        TestCase::script(
            "logs@x86_64",
            "i=0; while [ $i -lt 4000 ]; do echo \"line $i of the boot log\"; i=$((i+1)); done > boot.log; \
             echo 'a small note' > note.txt; echo '{\"answer\": 42}' > data.json",
        )
        .with_artifact("*.log")
        .with_artifact("*.txt")
        .with_artifact("*.json")
        .with_timeout(Duration::from_secs(60)),
        // Large: incompressible 3 MiB (stored raw) and 6 MiB compressible (zstd, decoded on two
        // threads), both verified into temp files; 1.5 MiB incompressible and 1.3 MiB of
        // numbers (zstd), both verified in memory; a "screenshot".
        TestCase::script(
            "bulk@aarch64",
            "head -c 3145728 /dev/urandom > big.bin; yes 'console line' | head -c 6291456 > big.log; \
             head -c 1572864 /dev/urandom > medium.dat; seq 1 200000 > seq.log; \
             head -c 5000 /dev/urandom > shot.png",
        )
        .with_artifact("*.bin")
        .with_artifact("*.dat")
        .with_artifact("*.log")
        .with_artifact("shot.png")
        .with_timeout(Duration::from_secs(60)),
        TestCase::script(
            "fails@x86_64",
            "echo 'assertion failed' > why.txt; exit 3",
        )
        .with_artifact("why.txt")
        .with_timeout(Duration::from_secs(60)),
    ]
}

/// Runs the campaign into `dir/store` through the orchestrator, with the monitor.
pub async fn campaign(dir: &Path) -> RunReport {
    Orchestrator::new(RunConfig::new(dir.join("scratch")))
        .with_runner(ProcessRunner::default())
        .with_store(ArtifactStore::open(dir.join("store")).unwrap())
        .with_monitor(Monitor::new(
            MonitorConfig::default().with_interval(Duration::from_millis(20)),
        ))
        .run(cases())
        .await
        .unwrap()
}

/// A served store: the directory, the report of the run that made it, the server's address.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub report: RunReport,
    pub addr: SocketAddr,
    /// The Unix socket served on instead of `addr`, if any.
    pub unix: Option<PathBuf>,
    pub token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), qorch_api::Error>>>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        match &self.unix {
            Some(_) => format!("http://localhost{path}"),
            None => format!("http://{}{path}", self.addr),
        }
    }

    /// A client that reaches the server (over its Unix socket, if it has one).
    pub fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(path) = &self.unix {
            b = b.unix_socket(path.as_path());
        }
        b.build().unwrap()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// GET with the token, if any.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut rq = self.client().get(self.url(path));
        if let Some(t) = &self.token {
            rq = rq.bearer_auth(t);
        }
        rq.send().await.unwrap()
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Runs the campaign and serves its store (with `config` adjusted by `tweak`).
pub async fn serve_campaign(tweak: impl FnOnce(ApiConfig) -> ApiConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let report = campaign(dir.path()).await;
    serve_dir(dir, report, tweak).await
}

pub async fn serve_dir(
    dir: tempfile::TempDir,
    report: RunReport,
    tweak: impl FnOnce(ApiConfig) -> ApiConfig,
) -> Served {
    let mut config =
        ApiConfig::new(dir.path().join("store")).with_bind("127.0.0.1:0".parse().unwrap());
    config.memory_budget = BUDGET;
    let config = tweak(config);
    let token = config.token.clone();
    let bound = qorch_api::bind(&config).await.unwrap();
    let addr = bound
        .local_addr()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let unix = bound.unix_socket().map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async {
        let _ = rx.await;
    }));
    Served {
        dir,
        report,
        addr,
        unix,
        token,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Sends `GET <raw path>` as written (no client normalises it) and returns the status and body.
pub async fn raw_get(addr: SocketAddr, raw_path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {raw_path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Every file under `root` with its size and modification time, SQLite's WAL index and (empty)
/// WAL left out: what a read must not change.
pub fn tree_state(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let p = e.path();
            let name = p.to_string_lossy();
            if m.is_dir() {
                dirs.push(p);
            } else if name.ends_with("-shm") || (name.ends_with("-wal") && m.len() == 0) {
            } else {
                out.push((p, m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}
