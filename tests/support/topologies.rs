//! Redis topologies for the tests: a Sentinel group and a Cluster, built
//! from real redis-server and redis-sentinel processes.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require, RedisServer, TempDir};

/// A child process killed on drop (sentinels).
pub struct Process(Child);

impl Process {
    /// Owns `child`: it is killed when this is dropped.
    pub fn new(child: Child) -> Self {
        Process(child)
    }
}

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
            let (child, port) = start_sentinel(dir.path(), i, master.port).await;
            sentinels.push(child);
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

/// Sentinel `i` of a group watching the master on `master_port`, answering
/// PING, and its port. A free port can be taken by another test between
/// being found and being bound: a sentinel that exits before it answers is
/// started again on another port (a group that never settles was the
/// symptom).
async fn start_sentinel(dir: &Path, i: usize, master_port: u16) -> (Process, u16) {
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.display(),
            ),
        )
        .unwrap();
        let child = Command::new(require("redis-sentinel"))
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-sentinel");
        let mut process = Process(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.0.try_wait() {
                break;
            }
            if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return (process, port);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(process);
    }
    panic!("redis-sentinel {i} did not start on any of 5 free ports");
}

/// Three Redis Cluster masters on loopback, slots spread by
/// `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    /// The keys matching `pattern` of each node that has any.
    pub async fn holders(&self, pattern: &str) -> Vec<Vec<String>> {
        let mut holders = Vec::new();
        for node in &self.nodes {
            let found = node.keys(pattern).await;
            if !found.is_empty() {
                holders.push(found);
            }
        }
        holders
    }

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
