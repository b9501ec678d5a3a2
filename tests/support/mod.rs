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
}

impl RedisServer {
    pub async fn start() -> Self {
        let dir = TempDir::new("redis");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new(require("redis-server"))
            .args(["--port", &self.port.to_string()])
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
pub fn settings(redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("WORKERS", "2"),
        ("LOG_LEVEL", "warn"),
        ("REDIS_URL", redis_url),
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

/// A unique API key, so tests sharing a Redis never share counters.
pub fn unique_key(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
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
