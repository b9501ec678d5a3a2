//! Test support: real Redis processes on free loopback ports, and the real
//! application started as `main` starts it, on port 0.
//!
//! Every process is owned by a guard that kills it when dropped, so a failing
//! test leaves nothing behind.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod models;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rate_limiter::config::Settings;
use rate_limiter::startup::Application;

/// A free TCP port on 127.0.0.1 (the kernel picks it; it is released at once
/// so the child process can bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn require(binary: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{binary}` is not installed; ./run_tests.sh installs it (apt-get install redis-server redis-tools)")
    })
}

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rate-limiter-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server child process on a loopback port. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with extra arguments (`--replicaof`, `--cluster-enabled`...).
    pub async fn start_with(extra: &[String]) -> Self {
        let dir = TempDir::new("redis");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            extra: extra.to_vec(),
        };
        server.spawn().await;
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let child = Command::new(require("redis-server"))
            .args(["--port", &self.port.to_string()])
            .args(&self.extra)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = self.connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A direct connection, for arranging and inspecting state.
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Kills the server (SIGKILL: as abrupt as a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The application, running in this test's runtime on a free port.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // stop() sends the command at once; its future only reports completion.
        drop(self.handle.stop(false));
    }
}

/// Settings as `main` would read them from this environment: loopback, port
/// 0, two workers, the given Redis; `overrides` on top.
///
/// REDIS_TIMEOUT_MS is 1 s rather than the default 100 ms: test binaries run
/// many tests at once on two shared cores, and a test that expects Redis to
/// answer must not see a slow moment as an outage. Tests of outages set
/// their own short timeout.
///
/// The built-in limits count with GCRA over a day, not with the default
/// fixed window of 60 s: a fixed window rolls over on the wall clock, and a
/// test counting requests must never depend on a minute not ending during
/// it. Under GCRA 20 per day, one request comes back every 72 minutes: no
/// test lasts that long. Tests of another algorithm or window say so.
pub fn settings(redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("WORKERS", "2"),
        ("LOG_LEVEL", "warn"),
        ("REDIS_URL", redis_url),
        ("REDIS_TIMEOUT_MS", "1000"),
        ("RATE_LIMIT_ALGORITHM", "gcra"),
        ("RATE_LIMIT_USER_WINDOW", "1d"),
        ("RATE_LIMIT_IP_WINDOW", "1d"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Settings::from_lookup(|name| env.get(name).cloned()).expect("valid test settings")
}

pub async fn spawn_app(redis: &RedisServer, overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(settings(&redis.url(), overrides)).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let port = app.port();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        handle,
    }
}

/// A rules file in a private temporary directory, removed on drop.
pub struct RulesFile {
    _dir: TempDir,
    pub path: PathBuf,
}

impl RulesFile {
    pub fn new(text: &str) -> Self {
        let dir = TempDir::new("rules");
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, text).expect("write the rules file");
        RulesFile { _dir: dir, path }
    }

    /// Replaces the contents (a hot reload picks them up).
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write the rules file");
    }

    /// The value of RATE_LIMIT_CONFIG.
    pub fn setting(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temporary path")
    }
}

/// The app with `rules` as its rules file, and `overrides` on top.
pub async fn spawn_app_with_rules(
    redis: &RedisServer,
    rules: &RulesFile,
    overrides: &[(&str, &str)],
) -> TestApp {
    let mut all = vec![("RATE_LIMIT_CONFIG", rules.setting())];
    all.extend_from_slice(overrides);
    spawn_app(redis, &all).await
}

/// A unique API key, so tests sharing a Redis never share counters.
pub fn unique_key(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// An admin API request with `token` as the bearer token.
    pub fn admin(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// POST /api/resource, with an API key if given.
    pub async fn post_resource(&self, api_key: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(self.url("/api/resource"));
        if let Some(key) = api_key {
            request = request.header("X-API-Key", key);
        }
        request.send().await.expect("POST /api/resource")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET /rate-limit/status for `api_key`, as JSON. Takes owned values so
    /// that the future can outlive a borrow of the app (spawned probes).
    pub fn status_json(
        &self,
        api_key: String,
    ) -> impl std::future::Future<Output = serde_json::Value> {
        let request = self
            .client
            .get(self.url("/rate-limit/status"))
            .header("X-API-Key", api_key);
        async move {
            request
                .send()
                .await
                .expect("GET /rate-limit/status")
                .json()
                .await
                .expect("a JSON status")
        }
    }

    pub async fn status(&self, api_key: &str) -> reqwest::Response {
        self.client
            .get(self.url("/rate-limit/status"))
            .header("X-API-Key", api_key)
            .send()
            .await
            .expect("GET /rate-limit/status")
    }
}

/// A header as an integer, failing the test with its name when absent.
pub fn header_u64(response: &reqwest::Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .expect("ASCII header")
        .parse()
        .unwrap_or_else(|_| panic!("header {name} is not an integer"))
}

impl TestApp {
    /// GET /rate-limit/status with raw key bytes (possibly not UTF-8).
    pub async fn status_raw(&self, api_key: &[u8]) -> reqwest::Response {
        self.client
            .get(self.url("/rate-limit/status"))
            .header(
                "X-API-Key",
                reqwest::header::HeaderValue::from_bytes(api_key).expect("a header value"),
            )
            .send()
            .await
            .expect("GET /rate-limit/status")
    }
}

/// A child process killed on drop (sentinels).
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A master, one replica and three sentinels watching them as `mymaster`,
/// with a short down-after-milliseconds so failovers take seconds.
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    _sentinels: Vec<Process>,
    _dir: TempDir,
}

impl SentinelGroup {
    pub async fn start() -> Self {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with(&[
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])
        .await;
        let dir = TempDir::new("sentinels");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.path().display(),
                    master.port
                ),
            )
            .unwrap();
            let child = Command::new(require("redis-sentinel"))
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-sentinel");
            sentinels.push(Process(child));
            sentinel_ports.push(port);
        }
        let group = SentinelGroup {
            master,
            replica,
            sentinel_ports,
            _sentinels: sentinels,
            _dir: dir,
        };
        group.wait_until_ready().await;
        group
    }

    /// `host:port,...` for REDIS_SENTINELS.
    pub fn sentinels_setting(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the first sentinel that answers reports it.
    pub async fn master_port(&self) -> Option<u16> {
        for port in &self.sentinel_ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let addr: redis::RedisResult<(String, String)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query_async(&mut conn)
                .await;
            if let Ok((_, port)) = addr {
                return port.parse().ok();
            }
        }
        None
    }

    /// Until the replica is in sync and every sentinel knows of it and of
    /// the other sentinels (a failover needs a quorum that has met).
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel group did not settle in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&self) -> bool {
        let Ok(mut replica) = self.replica.connection().await else {
            return false;
        };
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut replica)
            .await
            .unwrap_or_default();
        if !info.contains("master_link_status:up") {
            return false;
        }
        for port in &self.sentinel_ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                return false;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let master: redis::RedisResult<HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("master")
                .arg("mymaster")
                .query_async(&mut conn)
                .await;
            let Ok(master) = master else { return false };
            let count = |k: &str| {
                master
                    .get(k)
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            if count("num-slaves") < 1 || count("num-other-sentinels") < 2 {
                return false;
            }
        }
        true
    }
}

/// Three Redis Cluster masters on loopback, slots spread by
/// `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ])
                .await,
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(require("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ok().await {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach state ok in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster
    }

    async fn ok(&self) -> bool {
        for node in &self.nodes {
            let Ok(mut conn) = node.connection().await else {
                return false;
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return false;
            }
        }
        true
    }

    /// `host:port,...` for REDIS_CLUSTER_NODES.
    pub fn nodes_setting(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Settings for an app on `topology` settings (no single REDIS_URL).
pub async fn spawn_app_on(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(settings("redis://127.0.0.1:1/0", overrides)).await
}

/// Polls `check` until it holds, failing the test with `what` after 10 s
/// (reloads and override refreshes happen every second).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
