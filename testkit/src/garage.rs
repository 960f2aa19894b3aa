//! Garage (an S3-compatible object store) on loopback: one node, or a cluster of several.

use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

/// The S3 region every fixture's Garage serves (`s3_region`).
pub const REGION: &str = "garage";

/// The bucket every fixture creates.
const BUCKET: &str = "artifacts";

/// How long a node may take to come up, or back up, before the fixture gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between two readiness checks.
const POLL: Duration = Duration::from_millis(20);

/// How many lines of a node's log a panic message quotes.
const LOG_TAIL: usize = 40;

/// The Garage binary the fixtures run: `ORCH_GARAGE` if set (`cargo xtask test` builds Garage
/// once and sets it), else `~/.cache/qemu-orchestrator/tools/bin/garage`, where xtask installs it.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_GARAGE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/qemu-orchestrator/tools/bin/garage")
}

/// What a client needs to reach a bucket through one Garage node's S3 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Access {
    /// The node's S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The S3 region, [`REGION`].
    pub region: String,
    /// The bucket the key may read, write and own.
    pub bucket: String,
    /// The access key id (`GK` and 24 hex digits).
    pub key_id: String,
    /// The secret access key (64 hex digits).
    pub secret: String,
}

impl S3Access {
    /// The environment a worker process needs to reach the node through the standard AWS
    /// variables (`AmazonS3Builder::from_env` reads them): `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION` and `AWS_ALLOW_HTTP=true`. The
    /// bucket is not part of it: see [`bucket`](Self::bucket). A worker that inherits other
    /// `AWS_*` variables (a session token, a profile) may need them removed.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// The client options the node needs: plain HTTP allowed. `with_allow_http` is one of
    /// the client options, so `AmazonS3Builder::with_client_options` replaces it: start from
    /// these (`access.client_options().with_timeout(..)`), not from `ClientOptions::new()`,
    /// or every request fails with a "builder error" ("URL scheme is not allowed").
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new().with_allow_http(true)
    }

    /// An `AmazonS3Builder` for the bucket through this node: path-style requests (no
    /// virtual-hosted buckets), plain HTTP allowed, `object_store`'s default retries. Change
    /// what a test needs (`with_retry`, another bucket, client options starting from
    /// [`client_options`](Self::client_options)) before `build`.
    pub fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_client_options(self.client_options())
            .with_virtual_hosted_style_request(false)
    }

    /// An `object_store` handle on the bucket through this node ([`builder`](Self::builder),
    /// built).
    pub fn store(&self) -> AmazonS3 {
        self.builder()
            .build()
            .unwrap_or_else(|e| panic!("build an S3 client for {}: {e}", self.endpoint))
    }
}

/// A running single-node Garage (`replication_factor = 1`) on free loopback ports, with one
/// bucket and one key allowed to read, write and own it. Ready when [`start`](Self::start)
/// returns: a put and a get through its S3 endpoint succeeded. Killed on drop, its temp
/// directory (config, metadata, data, log) removed.
#[derive(Debug)]
pub struct GarageNode {
    cluster: GarageCluster,
}

impl GarageNode {
    /// Starts the node and waits until it serves S3 requests; panics (quoting its log) if it
    /// does not within 30 s or if Garage is not installed (see [`garage_binary`]).
    pub fn start() -> GarageNode {
        GarageNode {
            cluster: GarageCluster::start(1),
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        self.cluster.endpoint(0)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.cluster.bucket()
    }

    /// The access key id.
    pub fn key_id(&self) -> &str {
        self.cluster.key_id()
    }

    /// The secret access key.
    pub fn secret(&self) -> &str {
        self.cluster.secret()
    }

    /// The S3 region, [`REGION`].
    pub fn region(&self) -> &str {
        self.cluster.region()
    }

    /// Endpoint, region, bucket and credentials together.
    pub fn access(&self) -> S3Access {
        self.cluster.access(0)
    }

    /// The `AWS_*` environment of a worker process that should reach this node
    /// (see [`S3Access::env`]).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.cluster.env(0)
    }

    /// An `AmazonS3Builder` for the bucket (see [`S3Access::builder`]).
    pub fn builder(&self) -> AmazonS3Builder {
        self.cluster.builder(0)
    }

    /// An `object_store` handle on the bucket (see [`S3Access::store`]).
    pub fn store(&self) -> AmazonS3 {
        self.cluster.store(0)
    }

    /// Runs `garage <args>` against the node and returns its stdout; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cluster.cli(0, args)
    }

    /// The temp directory holding the node's config, metadata, data and log.
    pub fn dir(&self) -> &Path {
        self.cluster.node_dir(0)
    }

    /// The file the node's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        self.cluster.log_path(0)
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.cluster.log_tail(0, lines)
    }
}

/// A running Garage cluster of `n` nodes on loopback: distinct RPC, S3 and admin ports, one
/// `rpc_secret`, `replication_factor = n` with the default (`consistent`) consistency mode,
/// every node connected to the others and given a role (zones `dc1`..`dcN`, 1 GB each) in an
/// applied layout. One bucket and one key, usable through any node's S3 endpoint: when
/// [`start`](Self::start) returns, a put and a get through every node succeeded. Nodes can be
/// [`kill`](Self::kill)ed and [`restart`](Self::restart)ed. All are killed on drop, the temp
/// directory (a `node<i>` directory per node: config, metadata, data, `garage.log`) removed.
#[derive(Debug)]
pub struct GarageCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    bucket: String,
    key_id: String,
    secret: String,
    /// Last: removed after `drop` has killed the nodes.
    dir: tempfile::TempDir,
}

/// One node of a cluster.
#[derive(Debug)]
struct Node {
    index: usize,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    endpoint: String,
    /// `<hex public key>@127.0.0.1:<rpc port>`, once the node has started.
    id: String,
    child: Option<Child>,
}

impl GarageCluster {
    /// Starts `n` nodes, connects them, applies a layout, creates the bucket and the key, and
    /// waits until every node serves S3 requests. Panics, quoting the failing node's log, if
    /// Garage is not installed (see [`garage_binary`]) or a step takes longer than 30 s.
    pub fn start(n: usize) -> GarageCluster {
        assert!(n >= 1, "a Garage cluster needs at least one node");
        let bin = garage_binary();
        assert!(
            bin.is_file(),
            "Garage is not installed at {}: run `cargo xtask test` (it builds it once), or set \
             ORCH_GARAGE",
            bin.display()
        );
        let mut attempt = 1;
        loop {
            match Self::try_start(&bin, n) {
                Ok(cluster) => return cluster,
                // A free port taken by someone else between our probe and Garage's bind.
                Err(e) if attempt < 3 && e.contains("Address already in use") => attempt += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(bin: &Path, n: usize) -> Result<GarageCluster, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let dir = tempfile::Builder::new()
            .prefix("garage-")
            .tempdir()
            .map_err(|e| format!("create a temp dir for Garage: {e}"))?;
        let ports = free_ports(3 * n);
        let rpc_secret = hex(32);
        let admin_token = hex(16);
        let mut nodes = Vec::with_capacity(n);
        for (i, p) in ports.chunks(3).enumerate() {
            let (rpc, s3, admin) = (p[0], p[1], p[2]);
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
            let config = d.join("garage.toml");
            let text = format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = {n}\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{rpc_secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 \n\
                 [admin]\n\
                 api_bind_addr = \"127.0.0.1:{admin}\"\n\
                 admin_token = \"{admin_token}\"\n",
                meta = d.join("meta").display(),
                data = d.join("data").display(),
            );
            std::fs::write(&config, text)
                .map_err(|e| format!("write {}: {e}", config.display()))?;
            nodes.push(Node {
                index: i,
                log: d.join("garage.log"),
                dir: d,
                config,
                endpoint: format!("http://127.0.0.1:{s3}"),
                id: String::new(),
                child: None,
            });
        }
        // From here on, dropping `cluster` kills whatever was started.
        let mut cluster = GarageCluster {
            bin: bin.to_owned(),
            nodes,
            bucket: BUCKET.to_owned(),
            key_id: format!("GK{}", hex(12)),
            secret: hex(32),
            dir,
        };
        for node in &mut cluster.nodes {
            node.spawn(bin)?;
        }
        for i in 0..n {
            let id = cluster.poll(i, deadline, "write its node key", |c| {
                c.nodes[i].cli(bin, &["node", "id", "-q"])
            })?;
            cluster.nodes[i].id = id.trim().to_owned();
            cluster.poll(i, deadline, "answer RPC", |c| {
                c.nodes[i].cli(bin, &["status"])
            })?;
        }
        for i in 1..n {
            let id = cluster.nodes[i].id.clone();
            cluster.poll(i, deadline, "accept node 0's RPC connection", |c| {
                c.nodes[0].cli(bin, &["node", "connect", &id])
            })?;
        }
        let first = &cluster.nodes[0];
        for (i, node) in cluster.nodes.iter().enumerate() {
            let hex_id = node.id.split('@').next().unwrap_or_default();
            let zone = format!("dc{}", i + 1);
            first.cli(bin, &["layout", "assign", "-z", &zone, "-c", "1G", hex_id])?;
        }
        first.cli(bin, &["layout", "apply", "--version", "1"])?;
        first.cli(bin, &["bucket", "create", &cluster.bucket])?;
        let (key, secret) = (&cluster.key_id, &cluster.secret);
        first.cli(
            bin,
            &["key", "import", "--yes", "-n", "testkit", key, secret],
        )?;
        first.cli(
            bin,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &cluster.bucket,
                "--key",
                key,
            ],
        )?;
        for i in 0..n {
            cluster.wait_s3(i, deadline)?;
        }
        Ok(cluster)
    }

    /// How many nodes the cluster has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self, i: usize) -> &str {
        &self.node(i).endpoint
    }

    /// Every node's S3 endpoint, in node order.
    pub fn endpoints(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.endpoint.as_str()).collect()
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret access key.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The S3 region, [`REGION`].
    pub fn region(&self) -> &str {
        REGION
    }

    /// Node `i`'s full node id, `<hex public key>@127.0.0.1:<rpc port>`.
    pub fn node_id(&self, i: usize) -> &str {
        &self.node(i).id
    }

    /// Endpoint of node `i`, region, bucket and credentials together.
    pub fn access(&self, i: usize) -> S3Access {
        S3Access {
            endpoint: self.node(i).endpoint.clone(),
            region: REGION.to_owned(),
            bucket: self.bucket.clone(),
            key_id: self.key_id.clone(),
            secret: self.secret.clone(),
        }
    }

    /// The `AWS_*` environment of a worker process that should reach the bucket through node
    /// `i` (see [`S3Access::env`]).
    pub fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        self.access(i).env()
    }

    /// An `AmazonS3Builder` for the bucket through node `i` (see [`S3Access::builder`]).
    pub fn builder(&self, i: usize) -> AmazonS3Builder {
        self.access(i).builder()
    }

    /// An `object_store` handle on the bucket through node `i` (see [`S3Access::store`]).
    pub fn store(&self, i: usize) -> AmazonS3 {
        self.access(i).store()
    }

    /// Kills node `i` with SIGKILL and waits for it to exit. Its files stay, for
    /// [`restart`](Self::restart). Does nothing if it is not running.
    pub fn kill(&mut self, i: usize) {
        let node = self.node_mut(i);
        if let Some(mut child) = node.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            child
                .wait()
                .unwrap_or_else(|e| panic!("wait for garage node {i}: {e}"));
        }
    }

    /// Whether node `i` is running (it was not killed and has not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.node_mut(i).exited().is_none() && self.node(i).child.is_some()
    }

    /// Starts node `i` again with its config, metadata and data (killing it first if it is
    /// running), and waits until a put and a get through its S3 endpoint succeed. Panics,
    /// quoting its log, if that takes longer than 30 s.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let deadline = Instant::now() + READY_TIMEOUT;
        if let Err(e) = self.rejoin(i, deadline) {
            panic!("restart garage node {i}: {e}");
        }
    }

    /// Starts killed node `i`, reconnects it and the running nodes both ways, and waits until
    /// it serves S3 requests. Garage sends RPCs to a peer only over a connection it dialled
    /// itself, and redials a peer that was down every 30 s at best: without the explicit
    /// `node connect`s the others would treat node `i` as down for up to that long.
    fn rejoin(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let bin = self.bin.clone();
        self.nodes[i].spawn(&bin)?;
        self.poll(i, deadline, "answer RPC", |c| {
            c.nodes[i].cli(&bin, &["status"])
        })?;
        let id_i = self.nodes[i].id.clone();
        for j in 0..self.nodes.len() {
            if j == i || !self.is_running(j) {
                continue;
            }
            let id_j = self.nodes[j].id.clone();
            self.poll(i, deadline, &format!("connect to node {j}"), |c| {
                c.nodes[i].cli(&bin, &["node", "connect", &id_j])
            })?;
            self.poll(
                i,
                deadline,
                &format!("accept node {j}'s RPC connection"),
                |c| c.nodes[j].cli(&bin, &["node", "connect", &id_i]),
            )?;
        }
        self.wait_s3(i, deadline)
    }

    /// Runs `garage <args>` against node `i` and returns its stdout; panics if it fails.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.node(i)
            .cli(&self.bin, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The cluster's temp directory (one `node<i>` directory per node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s directory: `garage.toml`, `meta/`, `data/`, `garage.log`.
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.node(i).dir
    }

    /// The file node `i`'s stdout and stderr go to (appended to across restarts).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.node(i).log
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.node(i).log_tail(lines)
    }

    fn node(&self, i: usize) -> &Node {
        let n = self.nodes.len();
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no garage node {i}: the cluster has {n}"))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("no garage node {i}: the cluster has {n}"))
    }

    /// Calls `f` until it succeeds, node `i` exits, or `deadline` passes; the errors quote
    /// node `i`'s log.
    fn poll<T>(
        &mut self,
        i: usize,
        deadline: Instant,
        what: &str,
        mut f: impl FnMut(&Self) -> Result<T, String>,
    ) -> Result<T, String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.nodes[i].exited() {
                return Err(format!(
                    "garage node {i} exited ({status}) before it could {what}\n{}",
                    self.nodes[i].quoted_log()
                ));
            }
            let last = match f(self) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "garage node {i} did not {what} within {:.1?} (last error: {last})\n{}",
                    start.elapsed(),
                    self.nodes[i].quoted_log()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until a put, a get and a delete of a small object through node `i` succeed.
    fn wait_s3(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("build a tokio runtime: {e}"))?;
        let store = self
            .builder(i)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(5),
            })
            .with_client_options(
                self.access(i)
                    .client_options()
                    .with_timeout(Duration::from_secs(5)),
            )
            .build()
            .map_err(|e| format!("build an S3 client: {e}"))?;
        let key = ObjectPath::from(format!(".testkit/ready-{}", hex(8)));
        let ready = self.poll(i, deadline, "serve S3 puts and gets", |_| {
            run_on_thread(&rt, async {
                let body = PutPayload::from_static(b"ready");
                store.put(&key, body).await.map_err(|e| e.to_string())?;
                let got = store.get(&key).await.map_err(|e| e.to_string())?;
                let got = got.bytes().await.map_err(|e| e.to_string())?;
                if got.as_ref() != b"ready" {
                    return Err(format!("read back {got:?} instead of \"ready\""));
                }
                store.delete(&key).await.map_err(|e| e.to_string())
            })
        });
        // Dropping a runtime blocks, which panics if the caller is in an async context.
        rt.shutdown_background();
        ready
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Node {
    /// Starts `garage server`, its stdout and stderr appended to the log.
    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("open {}: {e}", self.log.display()))
        };
        let child = garage(bin, &self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .spawn()
            .map_err(|e| format!("start {} server: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// How the server exited, if it has.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// Runs `garage -c <config> <args>` (a CLI command the node answers over RPC).
    fn cli(&self, bin: &Path, args: &[&str]) -> Result<String, String> {
        let out = garage(bin, &self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run garage {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?} against node {} failed ({}): {}",
                self.index,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn quoted_log(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}\n---",
            self.log.display(),
            self.log_tail(LOG_TAIL)
        )
    }
}

/// `garage -c <config>`, without colours and without the caller's `GARAGE_*` variables (which
/// would override the config).
fn garage(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(config).env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GARAGE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `f` to completion on `rt` from a thread of its own: callers may be inside a runtime.
fn run_on_thread<F>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .expect("S3 probe thread panicked")
    })
}

/// `n` distinct loopback ports free at the time of the call (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
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

/// Every key under `prefix` (all of the store if `None`), sorted: `ObjectStore::list`
/// collected, for tests that compare a bucket's content.
pub async fn list_keys(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
) -> object_store::Result<Vec<String>> {
    use futures::TryStreamExt as _;
    let metas: Vec<_> = store.list(prefix).try_collect().await?;
    let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
    keys.sort();
    Ok(keys)
}
