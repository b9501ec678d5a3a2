//! Where Redis is (one server, Sentinel, Cluster) and how it is called:
//! the REDIS_* settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::env::{host, parse_addresses, Env};
use super::ConfigError;

/// Where Redis is: one server, a Sentinel-monitored master, or a Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// A `redis://` URL; built from REDIS_HOST/PORT/PASSWORD/DB when REDIS_URL is unset.
    Single { url: String },
    /// Ask these sentinels for the master of `master`, and follow failovers.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        /// The data nodes' ACL user (REDIS_USERNAME; None: `default`).
        username: Option<String>,
        password: Option<String>,
        /// The sentinels' own ACL user and password.
        sentinel_username: Option<String>,
        sentinel_password: Option<String>,
        db: i64,
    },
    /// A Redis Cluster reached through any of these seed nodes.
    Cluster {
        nodes: Vec<(String, u16)>,
        username: Option<String>,
        password: Option<String>,
    },
}

impl RedisTopology {
    pub fn name(&self) -> &'static str {
        match self {
            RedisTopology::Single { .. } => "single",
            RedisTopology::Sentinel { .. } => "sentinel",
            RedisTopology::Cluster { .. } => "cluster",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub topology: RedisTopology,
    /// How many multiplexed connections each worker thread keeps open.
    pub pool_size: u32,
    /// The bound on every Redis call, connection checkout included.
    pub timeout: Duration,
    /// The most checks one call of the check script decides: the checks
    /// waiting on a thread's connection are coalesced. 1 turns coalescing
    /// off (one call per check).
    pub batch_max: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker answers at once before probing Redis again.
    pub breaker_cooldown: Duration,
    /// TLS to the data nodes (a `rediss://` URL or REDIS_TLS), None:
    /// plaintext.
    pub tls: Option<RedisTls>,
    /// TLS to the sentinels (REDIS_SENTINEL_TLS, REDIS_TLS by default).
    pub sentinel_tls: bool,
}

/// How Redis is reached over TLS: the REDIS_TLS_* settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// REDIS_TLS_CACERT: the CAs to trust; None: the system's roots.
    pub ca: Option<PathBuf>,
    /// REDIS_TLS_CLIENT_CERT and REDIS_TLS_CLIENT_KEY: this service's
    /// certificate for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// REDIS_TLS_SKIP_HOSTNAME_VERIFICATION: the chain is still verified.
    pub skip_hostname_verification: bool,
}

/// REDIS_BATCH_MAX's default: a thread rarely has more checks waiting at
/// once, and the script of 64 checks holds Redis for well under a
/// millisecond.
pub const DEFAULT_BATCH_MAX: usize = 64;

impl RedisSettings {
    /// One server at `url`, the defaults otherwise (tests and tools).
    pub fn single(url: impl Into<String>, timeout: Duration) -> Self {
        RedisSettings {
            topology: RedisTopology::Single { url: url.into() },
            pool_size: 1,
            timeout,
            batch_max: DEFAULT_BATCH_MAX,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(500),
            tls: None,
            sentinel_tls: false,
        }
    }
}

pub(super) fn redis_topology(env: &Env<'_>) -> Result<RedisTopology, ConfigError> {
    if let Some(topology) = erl_topology(env)? {
        return Ok(topology);
    }
    let sentinels = env.optional("REDIS_SENTINELS", parse_addresses)?;
    let cluster = env.optional("REDIS_CLUSTER_NODES", parse_addresses)?;
    let password = env.get("REDIS_PASSWORD");
    // A redis:// URL names one server; with Sentinels or a Cluster as well
    // it is not clear which the operator meant.
    if let Some(url) = env.get("REDIS_URL") {
        for (name, set) in [
            ("REDIS_SENTINELS", sentinels.is_some()),
            ("REDIS_CLUSTER_NODES", cluster.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    &url,
                    format!("{name} is set too: set one of REDIS_URL and {name}"),
                ));
            }
        }
    }
    match (sentinels, cluster) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "REDIS_CLUSTER_NODES",
            &env.get("REDIS_CLUSTER_NODES").unwrap_or_default(),
            "set either REDIS_SENTINELS or REDIS_CLUSTER_NODES, not both",
        )),
        (Some(sentinels), None) => Ok(RedisTopology::Sentinel {
            sentinels,
            master: env.value("REDIS_SENTINEL_MASTER").unwrap_or_default(),
            username: env.get("REDIS_USERNAME"),
            password,
            sentinel_username: env.get("REDIS_SENTINEL_USERNAME"),
            sentinel_password: env.get("REDIS_SENTINEL_PASSWORD"),
            db: env.integer("REDIS_DB")? as i64,
        }),
        (None, Some(nodes)) => Ok(RedisTopology::Cluster {
            nodes,
            username: env.get("REDIS_USERNAME"),
            password,
        }),
        (None, None) => Ok(RedisTopology::Single {
            url: redis_url(env)?,
        }),
    }
}

/// envoyproxy/ratelimit's Redis settings, so its deployments work
/// unchanged: REDIS_TYPE (`single`, `sentinel`, `cluster`, any case) with
/// REDIS_URL in its form (`host:port`, a Unix socket path,
/// `master,host:port,...` for Sentinel, `host:port,...` for Cluster),
/// REDIS_AUTH (`password` or `user:password`) and REDIS_SENTINEL_AUTH. Read
/// when REDIS_TYPE is set or REDIS_URL has no scheme; `None` otherwise.
fn erl_topology(env: &Env<'_>) -> Result<Option<RedisTopology>, ConfigError> {
    let kind = env.get("REDIS_TYPE");
    let url = env.get("REDIS_URL");
    if kind.is_none() && url.as_ref().is_none_or(|u| u.contains("://")) {
        return Ok(None);
    }
    let kind = kind.unwrap_or_else(|| "single".into()).to_ascii_lowercase();
    let auth = env.get("REDIS_AUTH");
    // `user:password`: an ACL user name has no `:`, a password may.
    let password = || {
        auth.as_ref()
            .map(|a| a.split_once(':').map_or(a.clone(), |(_, p)| p.to_owned()))
    };
    let username = || {
        auth.as_ref()
            .and_then(|a| a.split_once(':').map(|(u, _)| u.to_owned()))
    };
    let url_value = url.clone().unwrap_or_default();
    let bad = |problem: &str| ConfigError::new("REDIS_URL", &url_value, problem);
    match kind.as_str() {
        "single" => {
            let Some(url) = url else {
                return Ok(None);
            };
            if url.contains("://") {
                return Ok(None);
            }
            let userinfo = auth
                .as_ref()
                .map(|a| {
                    let encode = |s: &str| {
                        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                            .to_string()
                    };
                    match a.split_once(':') {
                        Some((user, pass)) => format!("{}:{}@", encode(user), encode(pass)),
                        None => format!(":{}@", encode(a)),
                    }
                })
                .unwrap_or_default();
            if url.starts_with('/') {
                return Ok(Some(RedisTopology::Single {
                    url: format!("unix://{url}"),
                }));
            }
            let (host, port) = parse_addresses(&url)
                .ok()
                .filter(|a| a.len() == 1)
                .and_then(|a| a.into_iter().next())
                .ok_or_else(|| bad("expected host:port, a socket path, or a redis:// URL"))?;
            let host = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => host,
            };
            Ok(Some(RedisTopology::Single {
                url: format!("redis://{userinfo}{host}:{port}/0"),
            }))
        }
        "sentinel" => {
            let (master, sentinels) = url_value.split_once(',').ok_or_else(|| {
                bad("REDIS_TYPE=sentinel: expected master-name,host:port[,host:port...]")
            })?;
            let sentinels = parse_addresses(sentinels).map_err(|p| bad(&p))?;
            Ok(Some(RedisTopology::Sentinel {
                sentinels,
                master: master.trim().to_owned(),
                username: username(),
                password: password(),
                sentinel_username: None,
                sentinel_password: env.get("REDIS_SENTINEL_AUTH"),
                db: 0,
            }))
        }
        "cluster" => Ok(Some(RedisTopology::Cluster {
            nodes: parse_addresses(&url_value).map_err(|p| bad(&p))?,
            username: username(),
            password: password(),
        })),
        other => Err(ConfigError::new(
            "REDIS_TYPE",
            other,
            "expected single, sentinel or cluster",
        )),
    }
}

/// REDIS_URL wins; otherwise the URL is built from its parts, with the
/// password percent-encoded so any character in it survives.
fn redis_url(env: &Env<'_>) -> Result<String, ConfigError> {
    if let Some(url) = env.get("REDIS_URL") {
        let parsed = redis::parse_redis_url(&url);
        let scheme_ok = matches!(
            parsed.as_ref().map(|u| u.scheme()),
            Some("redis") | Some("rediss") | Some("redis+unix") | Some("unix")
        );
        if !scheme_ok {
            return Err(ConfigError::new(
                "REDIS_URL",
                &url,
                "expected a URL such as redis://[user:password@]host:port[/db] or rediss:// for TLS",
            ));
        }
        return Ok(url);
    }
    let host = env.parse("REDIS_HOST", host)?;
    let port = env.integer("REDIS_PORT")?;
    let db = env.integer("REDIS_DB")?;
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    };
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let user = env
        .get("REDIS_USERNAME")
        .map(|u| encode(&u))
        .unwrap_or_default();
    let auth = match env.get("REDIS_PASSWORD") {
        Some(password) => format!("{user}:{}@", encode(&password)),
        None if !user.is_empty() => format!("{user}@"),
        None => String::new(),
    };
    Ok(format!("redis://{auth}{host}:{port}/{db}"))
}

/// The REDIS_TLS_* settings, when Redis is reached over TLS: REDIS_TLS, or a
/// `rediss://` URL. A Single topology's URL becomes `rediss://`.
pub(super) fn redis_tls(
    env: &Env<'_>,
    topology: &mut RedisTopology,
) -> Result<(Option<RedisTls>, bool), ConfigError> {
    let asked = env.bool("REDIS_TLS")?;
    let url_tls = matches!(topology, RedisTopology::Single { url } if url.starts_with("rediss://"));
    let file = |name: &'static str| env.optional(name, super::env::existing_file);
    let ca = file("REDIS_TLS_CACERT")?;
    let cert = file("REDIS_TLS_CLIENT_CERT")?;
    let key = file("REDIS_TLS_CLIENT_KEY")?;
    let skip = env.bool("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION")?;
    let sentinel_tls = env.optional("REDIS_SENTINEL_TLS", super::env::parse_bool)?;
    if !(asked || url_tls) {
        if sentinel_tls == Some(true) {
            return Err(ConfigError::new(
                "REDIS_SENTINEL_TLS",
                "true",
                "set REDIS_TLS=true too: the sentinels and the data nodes share its settings",
            ));
        }
        for (name, set) in [
            ("REDIS_TLS_CACERT", ca.is_some()),
            ("REDIS_TLS_CLIENT_CERT", cert.is_some()),
            ("REDIS_TLS_CLIENT_KEY", key.is_some()),
            ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", skip),
        ] {
            if set {
                return Err(ConfigError::new(
                    name,
                    &env.get(name).unwrap_or_default(),
                    "Redis is reached in plaintext: set REDIS_TLS=true (or a rediss:// URL)",
                ));
            }
        }
        return Ok((None, sentinel_tls.unwrap_or(false)));
    }
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "REDIS_TLS_CLIENT_KEY",
                "",
                "REDIS_TLS_CLIENT_CERT is set: give its key too",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "REDIS_TLS_CLIENT_CERT",
                "",
                "REDIS_TLS_CLIENT_KEY is set: give its certificate too",
            ))
        }
    };
    match topology {
        RedisTopology::Single { url } if url.starts_with("redis://") => {
            *url = format!("rediss://{}", &url["redis://".len()..]);
        }
        RedisTopology::Single { url } if !url.starts_with("rediss://") => {
            return Err(ConfigError::new(
                "REDIS_TLS",
                "true",
                "a Unix socket is not reached over TLS",
            ));
        }
        RedisTopology::Sentinel { .. } if skip => {
            return Err(ConfigError::new(
                "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
                "true",
                "not available with Sentinel (the client checks the master the sentinels name): \
                 give the nodes certificates that name their addresses",
            ))
        }
        _ => {}
    }
    let tls = RedisTls {
        ca,
        client,
        skip_hostname_verification: skip,
    };
    crate::tls::check_redis_files(&tls).map_err(|(setting, problem)| {
        ConfigError::new(setting, &env.get(setting).unwrap_or_default(), problem)
    })?;
    Ok((Some(tls), sentinel_tls.unwrap_or(true)))
}
