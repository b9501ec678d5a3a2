//! Typed settings read from the environment (and a `.env` file, loaded by
//! `main` before this runs).
//!
//! Every setting has a default that runs the service on a laptop; every bad
//! value stops the start with one line naming the setting, the value and what
//! was expected. Settings are read through a lookup function rather than
//! `std::env` directly so tests can build them from a map without touching
//! the process environment (which tests running in parallel share).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

mod env;
mod topology;
mod traces;

use crate::identity::jwt::{JwtKeySource, JwtSettings};
use crate::identity::ForwardedHeader;
use crate::policy::Algorithm;
pub use crate::policy::{parse_window, FailureMode};
use env::{
    bounded_integer, existing_file, is_hostname, limit_settings, parse_bool, parse_networks, Env,
};
use topology::redis_topology;
pub use topology::{RedisSettings, RedisTopology};
pub use traces::{OtlpProtocol, ParentlessSampler, TraceSampler, TraceSettings};

/// A configuration error: which setting, what it held, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting}={value:?}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub value: String,
    pub problem: String,
}

/// Settings whose values are secrets: an error shows their length only.
const SECRET_SETTINGS: [&str; 6] = [
    "ADMIN_TOKEN",
    "JWT_SECRET",
    "REDIS_PASSWORD",
    "REDIS_AUTH",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_SENTINEL_AUTH",
];

/// `value` of `setting` as an error line may show it: a secret as its
/// length, a URL without the password in it.
pub fn redact(setting: &str, value: &str) -> String {
    if SECRET_SETTINGS.contains(&setting) {
        return format!("<redacted, {} bytes>", value.len());
    }
    // scheme://user:password@host...: the password goes.
    if let Some((scheme, rest)) = value.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let user = rest[..at].split(':').next().unwrap_or_default();
            return format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..]);
        }
    }
    value.to_owned()
}

impl ConfigError {
    fn new(setting: &'static str, value: &str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            value: redact(setting, value),
            problem: problem.into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (env_logger's format).
    Plain,
    /// One JSON object per line.
    Json,
}

/// One limit: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub limit: NonZeroU32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; `None` means one per CPU core.
    pub workers: Option<usize>,
    pub environment: String,
    pub log_level: log::LevelFilter,
    pub redis: RedisSettings,
    pub user_limit: LimitSettings,
    pub ip_limit: LimitSettings,
    /// The algorithm of the built-in `user` and `ip` policies.
    pub algorithm: Algorithm,
    /// The built-in `ip` policy applies to every request, counted per client
    /// IP, with or without an API key.
    pub ip_every_request: bool,
    /// A TOML rules file; when set, its policies replace the built-in ones.
    pub rules_path: Option<PathBuf>,
    /// Every policy in shadow mode: counted and reported, never enforced.
    pub shadow: bool,
    /// `plain` or `json` log lines.
    pub log_format: LogFormat,
    /// Enables `/admin` when set.
    pub admin_token: Option<String>,
    pub failure_mode: FailureMode,
    /// Peers that may read the operator's pages (`/metrics`, `/rlconfig`,
    /// `/dashboard/stats`) without the admin token.
    pub operator_networks: Vec<IpNet>,
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The one forwarding header those proxies write.
    pub forwarded_header: ForwardedHeader,
    /// Longest `X-API-Key` accepted, in bytes.
    pub max_api_key_length: usize,
    /// How long a client may take to send a request body (then 408).
    pub body_timeout: Duration,
    /// The header that carries API keys; `Authorization` means
    /// `Authorization: Bearer <key>`.
    pub api_key_header: String,
    /// JWT identities (JWT_CLAIM and a key source), when configured.
    pub jwt: Option<JwtSettings>,
    /// OpenTelemetry traces over OTLP; None: off.
    pub traces: Option<TraceSettings>,
    /// The Envoy rate limit service (gRPC) and its configuration.
    pub envoy: EnvoySettings,
    /// Settings given but ignored because another one wins, each naming
    /// both: logged at start-up.
    pub warnings: Vec<String>,
}

/// Where envoyproxy/ratelimit's YAML configuration lives, read with its
/// settings and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// RUNTIME_ROOT.
    pub root: PathBuf,
    /// RUNTIME_SUBDIRECTORY (default empty).
    pub subdirectory: String,
    /// RUNTIME_APPDIRECTORY (default `config`).
    pub appdirectory: String,
    /// RUNTIME_WATCH_ROOT (default true).
    pub watch_root: bool,
    /// RUNTIME_IGNOREDOTFILES (default false).
    pub ignore_dotfiles: bool,
    /// MERGE_DOMAIN_CONFIG (default false).
    pub merge_domains: bool,
    /// ENVOY_KEY_FORMAT=ratelimit: count fixed windows under
    /// envoyproxy/ratelimit's own keys, with CACHE_KEY_PREFIX (default
    /// empty); `None`: this service's keys (ENVOY_KEY_FORMAT=native).
    pub ratelimit_key_prefix: Option<String>,
}

/// The header names of LIMIT_RESPONSE_HEADERS_ENABLED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHeaders {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// A number from 0 to 1.
#[derive(Debug, Clone, Copy)]
pub struct Ratio(pub f64);

impl PartialEq for Ratio {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Ratio {}

/// The Envoy rate limit service (RLS v3 over gRPC, as envoyproxy/ratelimit
/// serves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoySettings {
    /// GRPC_HOST (default 0.0.0.0).
    pub grpc_host: String,
    /// GRPC_PORT (default 8081; 0 picks a free port).
    pub grpc_port: u16,
    /// GRPC_UDS: a Unix socket to serve gRPC on instead of the TCP port.
    pub grpc_uds: Option<PathBuf>,
    /// The YAML configuration, when RUNTIME_ROOT is set.
    pub runtime: Option<RuntimeSettings>,
    /// SHADOW_MODE: an over-limit answer becomes OK overall (the statuses
    /// still say OVER_LIMIT).
    pub shadow_mode: bool,
    /// LIMIT_RESPONSE_HEADERS_ENABLED, with the header names.
    pub limit_headers: Option<LimitHeaders>,
    /// NEAR_LIMIT_RATIO (default 0.8), for the near_limit metric.
    pub near_limit_ratio: Ratio,
    /// FORCE_START_WITHOUT_INITIAL_CONFIG: start even when the first load
    /// of the YAML configuration fails.
    pub force_start: bool,
    /// RLS_HTTP_DOMAIN: serve the HTTP API's own `http` domain over gRPC
    /// and `/json` (default false: its counters are the public API's, and
    /// a caller of the decision plane could charge, refund or name anyone's).
    pub http_domain: bool,
    /// JSON_API: who may call `POST /json` on PORT.
    pub json_api: JsonApi,
}

/// Who may call envoyproxy/ratelimit's `POST /json` on the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonApi {
    /// Not served (404).
    Off,
    /// Served to peers in TRUSTED_PROXIES only (the default): the port may
    /// face the internet, and a decision API answers trusted callers.
    Trusted,
    /// Served to anyone, as envoyproxy/ratelimit does on its private port.
    Open,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (a name -> value function). Empty
    /// values count as unset, so `PORT=` in a `.env` file means "default".
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let redis = RedisSettings {
            topology: redis_topology(&env)?,
            pool_size: env.parse_with("REDIS_POOL_SIZE", 1, |v| {
                bounded_integer(v, 1, 1024).map(|n| n as u32)
            })?,
            timeout: env.parse_with("REDIS_TIMEOUT_MS", Duration::from_millis(100), |v| {
                bounded_integer(v, 1, 60_000).map(Duration::from_millis)
            })?,
            batch_max: env.parse_with("REDIS_BATCH_MAX", topology::DEFAULT_BATCH_MAX, |v| {
                bounded_integer(v, 1, 1024).map(|n| n as usize)
            })?,
            breaker_failures: env.parse_with("REDIS_BREAKER_FAILURES", 3, |v| {
                bounded_integer(v, 1, 1_000_000).map(|n| n as u32)
            })?,
            breaker_cooldown: env.parse_with(
                "REDIS_BREAKER_COOLDOWN_MS",
                Duration::from_millis(500),
                |v| bounded_integer(v, 1, 600_000).map(Duration::from_millis),
            )?,
        };
        Ok(Settings {
            host: env.parse_with("HOST", "0.0.0.0".to_owned(), |v| {
                if v.parse::<IpAddr>().is_ok() || is_hostname(v) {
                    Ok(v.to_owned())
                } else {
                    Err("expected an IP address or a host name".into())
                }
            })?,
            port: env.parse_with("PORT", 8000, |v| {
                bounded_integer(v, 0, 65535).map(|n| n as u16)
            })?,
            workers: env.parse_with("WORKERS", None, |v| {
                bounded_integer(v, 1, 1024).map(|n| Some(n as usize))
            })?,
            environment: env
                .get("ENVIRONMENT")
                .unwrap_or_else(|| "development".into()),
            log_level: env.parse_with("LOG_LEVEL", log::LevelFilter::Info, |v| {
                v.parse::<log::LevelFilter>()
                    .map_err(|_| "expected one of off, error, warn, info, debug, trace".into())
            })?,
            redis,
            user_limit: limit_settings(&env, "RATE_LIMIT_USER_LIMIT", "RATE_LIMIT_USER_WINDOW")?,
            ip_limit: limit_settings(&env, "RATE_LIMIT_IP_LIMIT", "RATE_LIMIT_IP_WINDOW")?,
            algorithm: env.parse_with("RATE_LIMIT_ALGORITHM", Algorithm::FixedWindow, |v| {
                v.parse()
            })?,
            shadow: env.parse_with("RATE_LIMIT_SHADOW", false, parse_bool)?,
            ip_every_request: env.parse_with("RATE_LIMIT_IP_EVERY_REQUEST", false, parse_bool)?,
            log_format: env.parse_with("LOG_FORMAT", LogFormat::Plain, |v| match v {
                "plain" => Ok(LogFormat::Plain),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `plain` or `json`".into()),
            })?,
            admin_token: env.parse_with("ADMIN_TOKEN", None, |v| {
                if v.len() < 16 {
                    Err("use at least 16 characters".into())
                } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
                    Err("use printable ASCII without spaces".into())
                } else {
                    Ok(Some(v.to_owned()))
                }
            })?,
            rules_path: env.parse_with("RATE_LIMIT_CONFIG", None, existing_file)?,
            failure_mode: env
                .parse_with("RATE_LIMIT_FAILURE_MODE", FailureMode::Open, |v| v.parse())?,
            trusted_proxies: env.parse_with("TRUSTED_PROXIES", Vec::new(), parse_networks)?,
            operator_networks: env.parse_with(
                "OPERATOR_NETWORKS",
                vec![
                    "127.0.0.0/8".parse().expect("a network"),
                    "::1/128".parse().expect("a network"),
                ],
                |v| match v {
                    "none" => Ok(Vec::new()),
                    _ => parse_networks(v),
                },
            )?,
            forwarded_header: env.parse_with(
                "FORWARDED_HEADER",
                ForwardedHeader::default(),
                str::parse,
            )?,
            max_api_key_length: env.parse_with("MAX_API_KEY_LENGTH", 256, |v| {
                bounded_integer(v, 1, 4096).map(|n| n as usize)
            })?,
            api_key_header: env.parse_with("API_KEY_HEADER", "X-API-Key".to_owned(), |v| {
                if !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    Ok(v.to_owned())
                } else {
                    Err("expected a header name (letters, digits and '-'), e.g. X-API-Key or Authorization".into())
                }
            })?,
            jwt: jwt_settings(&env)?,
            traces: traces::trace_settings(&env)?,
            envoy: envoy_settings(&env)?,
            body_timeout: env.parse_with(
                "REQUEST_BODY_TIMEOUT_MS",
                Duration::from_secs(5),
                |v| bounded_integer(v, 1, 600_000).map(Duration::from_millis),
            )?,
            warnings: ignored_settings(&env),
        })
    }
}

/// The settings given (other than their defaults) that another one
/// overrides: the parts of a Redis URL under REDIS_URL, the built-in limits
/// under RATE_LIMIT_CONFIG.
fn ignored_settings(env: &Env<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |winner: &str, defaults: &[(&str, &str)]| {
        for (name, default) in defaults {
            if let Some(value) = env.get(name).filter(|v| v != default) {
                warnings.push(format!(
                    "{name}={} is ignored: {winner} is set and wins",
                    redact(name, &value)
                ));
            }
        }
    };
    if env.get("REDIS_URL").is_some_and(|u| u.contains("://")) {
        check(
            "REDIS_URL",
            &[
                ("REDIS_HOST", "127.0.0.1"),
                ("REDIS_PORT", "6379"),
                ("REDIS_PASSWORD", ""),
                ("REDIS_DB", "0"),
            ],
        );
    }
    if env.get("RATE_LIMIT_CONFIG").is_some() {
        check(
            "RATE_LIMIT_CONFIG",
            &[
                ("RATE_LIMIT_USER_LIMIT", "20"),
                ("RATE_LIMIT_USER_WINDOW", "60"),
                ("RATE_LIMIT_IP_LIMIT", "20"),
                ("RATE_LIMIT_IP_WINDOW", "60"),
                ("RATE_LIMIT_ALGORITHM", "fixed_window"),
                ("RATE_LIMIT_IP_EVERY_REQUEST", "false"),
            ],
        );
    }
    warnings
}

fn envoy_settings(env: &Env<'_>) -> Result<EnvoySettings, ConfigError> {
    let name = |setting: &'static str, default: &str| {
        env.parse_with(setting, default.to_owned(), |v| {
            if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                Ok(v.to_owned())
            } else {
                Err("expected a header name (letters, digits and '-')".into())
            }
        })
    };
    let runtime = match env.get("RUNTIME_ROOT") {
        None => None,
        Some(root) => {
            let root = PathBuf::from(root);
            if !root.is_dir() {
                return Err(ConfigError::new(
                    "RUNTIME_ROOT",
                    &root.display().to_string(),
                    "no such directory",
                ));
            }
            Some(RuntimeSettings {
                root,
                subdirectory: env.get("RUNTIME_SUBDIRECTORY").unwrap_or_default(),
                appdirectory: env
                    .get("RUNTIME_APPDIRECTORY")
                    .unwrap_or_else(|| "config".into()),
                watch_root: env.parse_with("RUNTIME_WATCH_ROOT", true, parse_bool)?,
                ignore_dotfiles: env.parse_with("RUNTIME_IGNOREDOTFILES", false, parse_bool)?,
                merge_domains: env.parse_with("MERGE_DOMAIN_CONFIG", false, parse_bool)?,
                ratelimit_key_prefix: match env.get("ENVOY_KEY_FORMAT").as_deref() {
                    None | Some("native") => None,
                    Some("ratelimit") => Some(env.get("CACHE_KEY_PREFIX").unwrap_or_default()),
                    Some(other) => {
                        return Err(ConfigError::new(
                            "ENVOY_KEY_FORMAT",
                            other,
                            "expected native or ratelimit",
                        ))
                    }
                },
            })
        }
    };
    Ok(EnvoySettings {
        grpc_host: env.parse_with("GRPC_HOST", "0.0.0.0".to_owned(), |v| {
            if v.parse::<IpAddr>().is_ok() || is_hostname(v) {
                Ok(v.to_owned())
            } else {
                Err("expected an IP address or a host name".into())
            }
        })?,
        grpc_port: env.parse_with("GRPC_PORT", 8081, |v| {
            bounded_integer(v, 0, 65535).map(|n| n as u16)
        })?,
        grpc_uds: env.parse_with("GRPC_UDS", None, |v| {
            let path = PathBuf::from(v);
            match path.parent() {
                Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => Ok(Some(path)),
                _ => Err("the socket's directory does not exist".into()),
            }
        })?,
        runtime,
        shadow_mode: env.parse_with("SHADOW_MODE", false, parse_bool)?,
        limit_headers: if env.parse_with("LIMIT_RESPONSE_HEADERS_ENABLED", false, parse_bool)? {
            Some(LimitHeaders {
                limit: name("LIMIT_LIMIT_HEADER", "RateLimit-Limit")?,
                remaining: name("LIMIT_REMAINING_HEADER", "RateLimit-Remaining")?,
                reset: name("LIMIT_RESET_HEADER", "RateLimit-Reset")?,
            })
        } else {
            None
        },
        near_limit_ratio: env.parse_with("NEAR_LIMIT_RATIO", Ratio(0.8), |v| {
            v.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .map(Ratio)
                .ok_or_else(|| "expected a number from 0 to 1".to_owned())
        })?,
        force_start: env.parse_with("FORCE_START_WITHOUT_INITIAL_CONFIG", false, parse_bool)?,
        http_domain: env.parse_with("RLS_HTTP_DOMAIN", false, parse_bool)?,
        json_api: env.parse_with("JSON_API", JsonApi::Trusted, |v| {
            match v.to_ascii_lowercase().as_str() {
                "off" => Ok(JsonApi::Off),
                "trusted" => Ok(JsonApi::Trusted),
                "open" => Ok(JsonApi::Open),
                _ => Err("expected off, trusted or open".into()),
            }
        })?,
    })
}

/// JWT_CLAIM with exactly one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and
/// JWT_JWKS_FILE; JWT_ISSUER and JWT_AUDIENCE optional.
fn jwt_settings(env: &Env<'_>) -> Result<Option<JwtSettings>, ConfigError> {
    let file = |name: &'static str| env.parse_with(name, None, existing_file);
    let sources = [
        (
            "JWT_SECRET",
            env.get("JWT_SECRET").map(JwtKeySource::Secret),
        ),
        (
            "JWT_PUBLIC_KEY_FILE",
            file("JWT_PUBLIC_KEY_FILE")?.map(JwtKeySource::PemFile),
        ),
        (
            "JWT_JWKS_FILE",
            file("JWT_JWKS_FILE")?.map(JwtKeySource::JwksFile),
        ),
    ];
    let mut given = sources.into_iter().filter_map(|(n, s)| s.map(|s| (n, s)));
    let first = given.next();
    if let Some((second, _)) = given.next() {
        return Err(ConfigError::new(
            second,
            &env.get(second).unwrap_or_default(),
            "set one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE",
        ));
    }
    let claim = env.get("JWT_CLAIM");
    let (issuer, audience) = (env.get("JWT_ISSUER"), env.get("JWT_AUDIENCE"));
    match (claim, first) {
        (None, None) => Ok(None),
        (None, Some((name, _))) => Err(ConfigError::new(
            "JWT_CLAIM",
            "",
            format!("{name} is set: name the claim that identifies the caller, e.g. sub"),
        )),
        (Some(claim), None) => Err(ConfigError::new(
            "JWT_CLAIM",
            &claim,
            "set one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE to verify tokens",
        )),
        (Some(claim), Some((_, keys))) => Ok(Some(JwtSettings {
            claim,
            keys,
            issuer,
            audience,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    fn single(url: &str) -> RedisTopology {
        RedisTopology::Single { url: url.into() }
    }

    #[test]
    fn envoy_ratelimit_redis_settings_work_unchanged() {
        let topology = |pairs: &[(&str, &str)]| settings(pairs).map(|s| s.redis.topology);
        assert_eq!(
            topology(&[("REDIS_URL", "redis:6379")]).unwrap(),
            single("redis://redis:6379/0")
        );
        assert_eq!(
            topology(&[("REDIS_URL", "10.0.0.1:6380"), ("REDIS_AUTH", "user:p@ss")]).unwrap(),
            single("redis://user:p%40ss@10.0.0.1:6380/0")
        );
        assert_eq!(
            topology(&[
                ("REDIS_URL", "/var/run/redis.sock"),
                ("REDIS_SOCKET_TYPE", "unix")
            ])
            .unwrap(),
            single("unix:///var/run/redis.sock")
        );
        assert_eq!(
            topology(&[
                ("REDIS_TYPE", "SENTINEL"),
                ("REDIS_URL", "mymaster,10.0.0.1:26379,10.0.0.2:26379"),
                ("REDIS_AUTH", "pw"),
                ("REDIS_SENTINEL_AUTH", "spw"),
            ])
            .unwrap(),
            RedisTopology::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)],
                master: "mymaster".into(),
                password: Some("pw".into()),
                sentinel_password: Some("spw".into()),
                db: 0,
            }
        );
        assert_eq!(
            topology(&[("REDIS_TYPE", "cluster"), ("REDIS_URL", "a:7000,b:7001")])
                .unwrap()
                .name(),
            "cluster"
        );
        let err = topology(&[("REDIS_TYPE", "ring")]).unwrap_err();
        assert_eq!(err.setting, "REDIS_TYPE");
        let err = topology(&[("REDIS_TYPE", "sentinel"), ("REDIS_URL", "a:1")]).unwrap_err();
        assert_eq!(err.setting, "REDIS_URL");
    }

    #[test]
    fn sentinel_and_cluster_topologies() {
        let s = settings(&[
            (
                "REDIS_SENTINELS",
                "10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
            ),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(
            s.redis.topology,
            RedisTopology::Sentinel {
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("sentinel-b".into(), 26380),
                    ("::1".into(), 26381)
                ],
                master: "mymaster".into(),
                password: Some("pw".into()),
                sentinel_password: None,
                db: 0,
            }
        );
        let s = settings(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")]).unwrap();
        assert_eq!(s.redis.topology.name(), "cluster");
        let err = settings(&[
            ("REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
            ("REDIS_SENTINELS", "127.0.0.1:26379"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "REDIS_CLUSTER_NODES");
        for bad in ["nohost", "h:0", "bad host!:1", ","] {
            let err = settings(&[("REDIS_SENTINELS", bad)]).unwrap_err();
            assert_eq!(err.setting, "REDIS_SENTINELS", "{bad}");
        }
    }

    #[test]
    fn defaults_run_a_local_service() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.redis.topology, single("redis://127.0.0.1:6379/0"));
        assert_eq!(s.redis.timeout, Duration::from_millis(100));
        assert_eq!(s.user_limit.limit.get(), 20);
        assert_eq!(s.user_limit.window, Duration::from_secs(60));
        assert_eq!(s.ip_limit.limit.get(), 20);
        assert_eq!(s.failure_mode, FailureMode::Open);
        assert!(s.trusted_proxies.is_empty());
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        let cases: &[(&str, &str)] = &[
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("RATE_LIMIT_USER_LIMIT", "0"),
            ("RATE_LIMIT_IP_LIMIT", "-5"),
            ("RATE_LIMIT_USER_WINDOW", "soon"),
            ("RATE_LIMIT_IP_WINDOW", "0"),
            ("REDIS_TIMEOUT_MS", "0"),
            ("REDIS_POOL_SIZE", "lots"),
            ("REDIS_BATCH_MAX", "0"),
            ("REDIS_PORT", "0"),
            ("REDIS_URL", "http://example"),
            ("RATE_LIMIT_FAILURE_MODE", "maybe"),
            ("TRUSTED_PROXIES", "10.0.0.1,not-an-ip"),
            ("LOG_LEVEL", "loud"),
            ("HOST", "bad host!"),
            ("WORKERS", "0"),
            ("RATE_LIMIT_ALGORITHM", "leaky"),
            ("RATE_LIMIT_CONFIG", "/no/such/rules.toml"),
            ("REDIS_BREAKER_FAILURES", "0"),
            ("REDIS_BREAKER_COOLDOWN_MS", "soon"),
            ("REDIS_CLUSTER_NODES", "127.0.0.1"),
            ("RATE_LIMIT_SHADOW", "perhaps"),
            ("LOG_FORMAT", "xml"),
            ("ADMIN_TOKEN", "short"),
            ("FORWARDED_HEADER", "X-Real-IP"),
            ("REQUEST_BODY_TIMEOUT_MS", "0"),
            ("RATE_LIMIT_IP_EVERY_REQUEST", "sometimes"),
            ("API_KEY_HEADER", "X API Key"),
            ("JWT_CLAIM", "sub"),
            ("JWT_PUBLIC_KEY_FILE", "/no/such/key.pem"),
            ("JSON_API", "public"),
            ("RLS_HTTP_DOMAIN", "maybe"),
        ];
        for (name, value) in cases {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.setting, *name, "{err}");
            assert_eq!(err.value, redact(name, value));
            let line = err.to_string();
            assert!(
                line.starts_with(&format!("invalid setting {name}=")),
                "{line}"
            );
            assert!(!line.contains('\n'));
        }
    }

    /// Regression (issue 19, item 22): a too-short admin token and a Redis
    /// URL with its password were echoed in the start-up error.
    #[test]
    fn start_up_errors_redact_secrets() {
        let err = settings(&[("ADMIN_TOKEN", "hunter2")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("7 bytes"), "{err}");
        let err = settings(&[("REDIS_URL", "mysql://app:hunter2@db:3306/x")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(
            err.to_string().contains("mysql://app:<redacted>@db:3306/x"),
            "{err}"
        );
    }

    #[test]
    fn url_is_built_from_parts_with_an_encoded_password() {
        let s = settings(&[
            ("REDIS_HOST", "redis.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "p@ss:w/rd"),
            ("REDIS_DB", "2"),
        ])
        .unwrap();
        let RedisTopology::Single { url } = &s.redis.topology else {
            panic!("single")
        };
        assert_eq!(url, "redis://:p%40ss%3Aw%2Frd@redis.internal:6380/2");
        let info = redis::parse_redis_url(url).unwrap();
        assert_eq!(info.host_str(), Some("redis.internal"));
    }

    #[test]
    fn redis_url_wins_over_parts() {
        let s = settings(&[
            ("REDIS_URL", "redis://10.1.2.3:7000/1"),
            ("REDIS_HOST", "ignored"),
            ("REDIS_PASSWORD", "hunter2"),
        ])
        .unwrap();
        assert_eq!(s.redis.topology, single("redis://10.1.2.3:7000/1"));
        // Regression (issue 19, item 23): silently.
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(
            s.warnings[0].starts_with("REDIS_HOST=ignored is ignored"),
            "{:?}",
            s.warnings
        );
        assert!(s.warnings.iter().all(|w| w.contains("REDIS_URL")));
        assert!(!s.warnings.iter().any(|w| w.contains("hunter2")));
    }

    /// Regression (issue 19, item 23): REDIS_SENTINELS beat REDIS_URL
    /// silently (the README said the URL wins); limit settings were ignored
    /// under RATE_LIMIT_CONFIG without a word.
    #[test]
    fn settings_that_override_each_other_are_refused_or_named() {
        for other in ["REDIS_SENTINELS", "REDIS_CLUSTER_NODES"] {
            let err = settings(&[
                ("REDIS_URL", "redis://10.1.2.3:7000/1"),
                (other, "10.0.0.1:26379"),
            ])
            .unwrap_err();
            assert_eq!(err.setting, "REDIS_URL");
            assert!(err.problem.contains(other), "{err}");
        }
        let rules = std::env::temp_dir().join(format!("rules-{}.toml", std::process::id()));
        std::fs::write(&rules, "").unwrap();
        let s = settings(&[
            ("RATE_LIMIT_CONFIG", rules.to_str().unwrap()),
            ("RATE_LIMIT_USER_LIMIT", "500"),
        ])
        .unwrap();
        let _ = std::fs::remove_file(&rules);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("RATE_LIMIT_USER_LIMIT")
                && s.warnings[0].contains("RATE_LIMIT_CONFIG")
        );
    }

    #[test]
    fn windows_take_seconds_or_units() {
        assert_eq!(parse_window("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_window("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_window("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_window("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("1us").is_err());
        assert!(parse_window("-1").is_err());
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let s = settings(&[("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,::1")]).unwrap();
        assert_eq!(s.trusted_proxies.len(), 3);
        assert!(s.trusted_proxies[1].contains(&"10.2.3.4".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn empty_values_mean_default() {
        let s = settings(&[("PORT", ""), ("REDIS_URL", "  ")]).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.redis.topology, single("redis://127.0.0.1:6379/0"));
    }

    #[test]
    fn env_example_lists_every_setting_with_its_default() {
        let example = include_str!("../../.env.example");
        let pairs: HashMap<String, String> = example
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').expect("NAME=value");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let from_example = Settings::from_lookup(|k| {
            read.borrow_mut().insert(k.to_owned());
            pairs.get(k).cloned()
        })
        .unwrap();
        assert_eq!(
            from_example,
            settings(&[]).unwrap(),
            "the example shows the defaults"
        );
        // The Sentinel settings are read only once REDIS_SENTINELS is set.
        Settings::from_lookup(|k| {
            read.borrow_mut().insert(k.to_owned());
            match k {
                "REDIS_SENTINELS" => Some("127.0.0.1:26379".to_owned()),
                _ => pairs.get(k).cloned(),
            }
        })
        .unwrap();
        let listed: std::collections::BTreeSet<String> = pairs.keys().cloned().collect();
        assert_eq!(read.into_inner(), listed);
    }
}
