//! Test support: real Redis processes on free loopback ports, and the real
//! application started as `main` starts it, on port 0.
//!
//! Every process is owned by a guard that kills it when dropped, so a failing
//! test leaves nothing behind.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod binary;
pub mod certs;
pub mod models;
mod redis;
pub mod rls;
mod topologies;
pub mod webdriver;
pub mod xds;

pub use self::redis::RedisServer;
#[allow(unused_imports)] // each test binary uses some of them
pub use topologies::{Cluster, Process, SentinelGroup};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rate_limiter::config::Settings;
use rate_limiter::startup::Application;

/// A backend that answers 200 "backend" to anything, on a free port (for
/// the gateways in front of it).
pub fn backend() -> (u16, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpServer};
    let port = free_port();
    let server = HttpServer::new(|| App::new().default_service(web::to(|| async { "backend" })))
        .workers(1)
        .bind(("127.0.0.1", port))
        .expect("bind the backend")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

/// A free TCP port on 127.0.0.1 (the kernel picks it; it is released at once
/// so the child process can bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub(crate) fn require(binary: &str) -> PathBuf {
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

    /// A directory with a short path (`/tmp/rlt-<12 hex>`): for programs
    /// that put Unix sockets in it (a socket path holds at most 107 bytes).
    pub fn short() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("rlt-{}", &id[..12]));
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

/// The application, running in this test's runtime on a free port.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// The Envoy rate limit service's gRPC port.
    pub grpc_port: u16,
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
        ("GRPC_PORT", "0"),
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
    // Sentinels or a Cluster instead of the one server.
    if env.contains_key("REDIS_SENTINELS") || env.contains_key("REDIS_CLUSTER_NODES") {
        env.remove("REDIS_URL");
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
    let grpc_port = app.grpc_port();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        grpc_port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        handle,
    }
}

/// The rules of the gateway tests: 2 per hour on `POST /v1/orders/*` (a
/// glob route), 100 per hour on everything, per key or client IP.
pub const ORDER_RULES: &str = r#"
[[policy]]
name = "orders"
algorithm = "gcra"
limit = 2
window = "1h"
route = "POST /v1/orders/*"

[[policy]]
name = "everything"
algorithm = "gcra"
limit = 100
window = "1h"
"#;

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

    /// The JSON answer of an admin API call without a body.
    pub async fn admin_json(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> serde_json::Value {
        self.admin(token, method, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
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

/// The number of the `unit`-second window we are in now.
pub fn window_index(unit: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / unit
}

/// Runs `scenario` until it runs within one `unit`-second window (a fixed
/// window that rolled over mid-scenario resets its counts; the run is then
/// repeated with fresh keys). A scenario that fails by panicking is retried
/// too when a window edge fell inside it (its assertions may have seen the
/// counts reset); within one window its failure is the test's.
pub async fn within_one_window<F, Fut>(unit: u64, mut scenario: F)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    for attempt in 0..5 {
        let before = window_index(unit);
        let outcome = std::panic::AssertUnwindSafe(scenario(attempt))
            .catch_unwind()
            .await;
        let crossed = window_index(unit) != before;
        match outcome {
            Ok(()) if !crossed => return,
            Err(panic) if !crossed => std::panic::resume_unwind(panic),
            _ => eprintln!("a {unit} s window rolled over during attempt {attempt}: again"),
        }
    }
    panic!("five windows of {unit} s rolled over during the scenario");
}
