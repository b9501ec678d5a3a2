//! A redis-server child process per test, on a free loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require, TempDir};

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
                // A server with a password answers NOAUTH: up all the same.
                if pong.is_ok() || pong.is_err_and(|e| e.code() == Some("NOAUTH")) {
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

    /// The service's store on this server (a 5 s command timeout).
    pub async fn store(&self) -> rate_limiter::redis::RedisStore {
        rate_limiter::redis::RedisStore::connect(&rate_limiter::config::RedisSettings::single(
            self.url(),
            Duration::from_secs(5),
        ))
        .await
        .expect("store")
    }

    /// The keys matching `pattern` (KEYS: a test's small keyspace).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.connection().await.unwrap();
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// How many EVALSHA calls the server has run (INFO commandstats).
    pub async fn evalsha_calls(&self) -> u64 {
        self.command_calls("evalsha").await
    }

    /// How many calls of `command` (lower case) the server has run (INFO
    /// commandstats).
    pub async fn command_calls(&self, command: &str) -> u64 {
        let mut conn = self.connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
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
