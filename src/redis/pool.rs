//! Connections to Redis (one server, the master behind Sentinel, or a
//! Cluster), created and replaced by a bb8 pool.
//!
//! Each pool entry is a *multiplexed* connection: many commands in flight at
//! once, answered in order. Requests do not hold a pool entry while their
//! command runs (that would cap concurrency at the pool size, measured at
//! ~13k req/s against ~20k here); they clone the connection handle out of the
//! entry and hand the entry straight back. bb8 still does what it is good at:
//! creating connections, keeping `pool_size` of them, and replacing the ones
//! that break.
//!
//! Connections are made here rather than by bb8-redis's manager, which
//! can neither set the client's response timeout (the redis crate's default
//! of 500 ms would cut a longer REDIS_TIMEOUT_MS short) nor tell bb8 that a
//! connection broke. bb8 learns that only through `has_broken`, and a multiplexed connection
//! whose socket died never recovers by itself. So every handle carries a
//! shared [`Health`] record: a dropped connection, a READONLY reply (a
//! demoted master after a Sentinel failover), or several timeouts in a row
//! mark it broken, and the next checkout of that entry discards it and lets
//! bb8 build a fresh one, which for Sentinel means asking the sentinels for
//! the master again. A `+switch-master` event bumps the pool's generation,
//! which breaks every connection made before it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, Value,
};

use crate::config::{RedisSettings, RedisTopology};

/// Timeouts in a row after which a connection is replaced. One slow answer
/// is no reason to reconnect; a connection that keeps timing out is likely
/// talking to a half-open socket.
const TIMEOUTS_BEFORE_REPLACING: u32 = 3;

#[derive(Debug, Default)]
pub(crate) struct Health {
    broken: AtomicBool,
    timeouts_in_a_row: AtomicU32,
}

/// A connection plus its shared health record. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) conn: AnyConnection,
    health: Arc<Health>,
    /// The pool generation it was made in, and the pool's current one.
    generation: u64,
    current: Arc<AtomicU64>,
}

impl Connection {
    pub(crate) fn is_broken(&self) -> bool {
        self.health.broken.load(Ordering::Relaxed)
            || self.generation != self.current.load(Ordering::Relaxed)
    }

    pub(crate) fn record_success(&self) {
        self.health.timeouts_in_a_row.store(0, Ordering::Relaxed);
    }

    pub(crate) fn record_timeout(&self) {
        let n = self
            .health
            .timeouts_in_a_row
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n >= TIMEOUTS_BEFORE_REPLACING {
            self.health.broken.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_error(&self, err: &RedisError) {
        if breaks_connection(err) {
            self.health.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether `err` means the connection itself is unusable. READONLY: this
/// server was a master and is a replica now (Sentinel failover); a new
/// connection asks the sentinels where the master is. A reply of an
/// unexpected type or shape (a value that is not UTF-8, a bad stored entry)
/// says nothing about the socket: treating it as broken would make one bad
/// value reconnect every instance, again and again.
pub(crate) fn breaks_connection(err: &RedisError) -> bool {
    use redis::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::Client
    ) {
        return false;
    }
    err.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || err.is_connection_dropped()
        || err.is_io_error()
        || err.is_unrecoverable_error()
}

/// A connection to a single server or a master found through Sentinel
/// (both multiplexed), or to a Cluster (which routes each command by its key
/// and follows MOVED/ASK itself).
#[derive(Clone)]
pub(crate) enum AnyConnection {
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConnection::Multiplexed(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConnection::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Multiplexed(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// How new connections are made, per topology.
enum Connector {
    /// One server.
    Single(Client),
    /// Asks the sentinels for the current master at every connect.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// Creates connections for bb8, with a bound on connecting and
/// broken-connection tracking.
pub(crate) struct Manager {
    connector: Connector,
    connect_timeout: Duration,
    /// The client's own bound on one reply: REDIS_TIMEOUT_MS. (The redis
    /// crate's default, 500 ms, would cut a longer setting short.)
    config: AsyncConnectionConfig,
    /// Bumped when the master changes; connections of an older generation
    /// count as broken.
    generation: Arc<AtomicU64>,
}

impl Manager {
    pub(crate) fn new(
        settings: &RedisSettings,
        connect_timeout: Duration,
        response_timeout: Duration,
        generation: Arc<AtomicU64>,
    ) -> Result<Self, RedisError> {
        let tls = settings.tls.as_ref();
        let certificates = tls
            .map(crate::tls::redis_certificates)
            .transpose()
            .map_err(RedisError::from)?;
        let connector = match &settings.topology {
            RedisTopology::Single { url } => {
                let client = match &certificates {
                    Some(certificates) => {
                        let client = Client::build_with_tls(url.as_str(), certificates.clone())?;
                        let mut info = client.get_connection_info().clone();
                        if tls.is_some_and(|t| t.skip_hostname_verification) {
                            let mut addr = info.addr().clone();
                            addr.set_danger_accept_invalid_hostnames(true);
                            info = info.set_addr(addr);
                        }
                        Client::open(info)?
                    }
                    None => Client::open(url.as_str())?,
                };
                Connector::Single(client)
            }
            RedisTopology::Sentinel {
                sentinels,
                master,
                username,
                password,
                sentinel_username,
                sentinel_password,
                db,
            } => {
                let addresses = sentinels.iter().map(|(host, port)| {
                    if settings.sentinel_tls {
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host.clone(), *port)
                    }
                });
                let mut builder =
                    SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)?
                        .set_client_to_redis_db(*db);
                if let Some(certificates) = &certificates {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_redis_certificates(certificates.clone());
                    if settings.sentinel_tls {
                        builder = builder
                            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                            .set_client_to_sentinel_certificates(certificates.clone());
                    }
                }
                if let Some(username) = username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(username) = sentinel_username {
                    builder = builder.set_client_to_sentinel_username(username);
                }
                if let Some(password) = sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build()?))
            }
            RedisTopology::Cluster {
                nodes,
                username,
                password,
            } => {
                let scheme = if tls.is_some() { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|(host, port)| match host.parse::<std::net::Ipv6Addr>() {
                        Ok(v6) => format!("{scheme}://[{v6}]:{port}"),
                        Err(_) => format!("{scheme}://{host}:{port}"),
                    })
                    .collect();
                let mut builder = ClusterClient::builder(urls)
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout);
                if let (Some(tls), Some(certificates)) = (tls, &certificates) {
                    // Every node the Cluster announces is reached so too.
                    builder = builder
                        .tls(redis::TlsMode::Secure)
                        .certs(certificates.clone())
                        .danger_accept_invalid_hostnames(tls.skip_hostname_verification);
                }
                if let Some(username) = username {
                    builder = builder.username(username.clone());
                }
                if let Some(password) = password {
                    builder = builder.password(password.clone());
                }
                Connector::Cluster(builder.build()?)
            }
        };
        Ok(Manager {
            connector,
            connect_timeout,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            generation,
        })
    }

    async fn open(&self) -> Result<AnyConnection, RedisError> {
        Ok(match &self.connector {
            Connector::Single(client) => AnyConnection::Multiplexed(
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
            ),
            Connector::Sentinel(client) => AnyConnection::Multiplexed(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&self.config)
                    .await?,
            ),
            Connector::Cluster(client) => {
                AnyConnection::Cluster(client.get_async_connection().await?)
            }
        })
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        // Read before connecting: a switch during the connect makes this
        // connection stale at once rather than trusted.
        let generation = self.generation.load(Ordering::Relaxed);
        // Without this bound a connect to an address that drops packets
        // waits for the kernel's TCP timeout (minutes), holding a pool slot.
        let conn = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                RedisError::from(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out connecting to Redis",
                ))
            })??;
        Ok(Connection {
            conn,
            health: Arc::default(),
            generation,
            current: self.generation.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.is_broken()
    }
}

/// bb8 reports connection failures here; they are logged at debug because the
/// store logs the transitions that matter (Redis lost, Redis back) at warn and
/// info, once each, instead of once per retry. The last refusal of the
/// credentials is kept, so that a pool that timed out waiting for a
/// connection says why (an authentication error, not "no answer").
#[derive(Debug, Clone, Default)]
pub(crate) struct LogErrors(pub(crate) Arc<std::sync::Mutex<Option<ConnectFailure>>>);

/// Why the last connection attempt failed, when the reason is one the
/// operator must act on: the credentials, or the TLS handshake.
#[derive(Debug, Clone)]
pub(crate) enum ConnectFailure {
    Auth(String),
    Tls(String),
}

impl LogErrors {
    /// The last such failure, if no connection was made since.
    pub(crate) fn last_failure(&self) -> Option<ConnectFailure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn clear(&self) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some() {
            *last = None;
        }
    }
}

/// A failed TLS handshake (the certificate, its name, the protocol), as
/// rustls words it.
fn is_tls_error(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["certificate", "handshake", "tls", "alert"]
        .iter()
        .any(|word| text.contains(word))
}

impl bb8::ErrorSink<RedisError> for LogErrors {
    fn sink(&self, err: RedisError) {
        log::debug!("redis pool: cannot connect: {err}");
        let text = err.to_string();
        let failure = if super::reply::is_auth_error(&err) {
            Some(ConnectFailure::Auth(text))
        } else if is_tls_error(&text) {
            Some(ConnectFailure::Tls(text))
        } else {
            None
        };
        if failure.is_some() {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = failure;
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}
