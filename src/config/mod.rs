//! Typed settings read from the environment (and a `.env` file, loaded by
//! `main` before this runs).
//!
//! Every setting has a default that runs the service on a laptop; every bad
//! value stops the start with one line naming the setting, the value and what
//! was expected. Settings are read through a lookup function rather than
//! `std::env` directly so tests can build them from a map without touching
//! the process environment (which tests running in parallel share).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

mod env;
mod envoy;
pub mod list;
mod listeners;
mod render;
mod topology;
mod traces;
mod xds;

use crate::identity::jwt::{JwtKeySource, JwtSettings};
use crate::identity::ForwardedHeader;
use crate::policy::Algorithm;
pub use crate::policy::{parse_window, FailureMode};
use env::{existing_file, host, limit_settings, parse_networks, port, Env};
pub use envoy::{EnvoySettings, JsonApi, LimitHeaders, Ratio, RuntimeSettings};
use topology::redis_topology;
pub use topology::{RedisSettings, RedisTls, RedisTopology};
pub use traces::{OtlpProtocol, ParentlessSampler, TraceSampler, TraceSettings};
pub use xds::{Backoff, PrometheusSettings, XdsSettings, XdsTls};

/// A configuration error: which setting, what it held, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting}={value:?}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub value: String,
    pub problem: String,
}

/// `value` of `setting` as an error line may show it: a secret as its
/// length, a URL without the password in it.
pub fn redact(setting: &str, value: &str) -> String {
    if list::find(setting).is_some_and(list::Setting::is_secret) {
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
    /// RUST_LOG: env_logger filters refining `log_level` per module.
    pub rust_log: Option<String>,
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
    /// TLS (and mTLS) on PORT.
    pub http_tls: Option<crate::tls::ServerTlsSettings>,
    /// Settings given but ignored because another one wins, each naming
    /// both: logged at start-up.
    pub warnings: Vec<String>,
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
        let mut topology = redis_topology(&env)?;
        let (redis_tls, sentinel_tls) = topology::redis_tls(&env, &mut topology)?;
        let redis = RedisSettings {
            topology,
            tls: redis_tls,
            sentinel_tls,
            pool_size: env.integer("REDIS_POOL_SIZE")? as u32,
            timeout: env.millis("REDIS_TIMEOUT_MS")?,
            batch_max: env.integer("REDIS_BATCH_MAX")? as usize,
            breaker_failures: env.integer("REDIS_BREAKER_FAILURES")? as u32,
            breaker_cooldown: env.millis("REDIS_BREAKER_COOLDOWN_MS")?,
        };
        Ok(Settings {
            host: env.parse("HOST", host)?,
            port: env.parse("PORT", port)?,
            workers: env.optional_integer("WORKERS")?.map(|n| n as usize),
            environment: env.value("ENVIRONMENT").unwrap_or_default(),
            log_level: env.parse("LOG_LEVEL", |v| {
                v.parse::<log::LevelFilter>()
                    .map_err(|_| "expected one of off, error, warn, info, debug, trace".into())
            })?,
            rust_log: env.get("RUST_LOG"),
            redis,
            user_limit: limit_settings(&env, "RATE_LIMIT_USER_LIMIT", "RATE_LIMIT_USER_WINDOW")?,
            ip_limit: limit_settings(&env, "RATE_LIMIT_IP_LIMIT", "RATE_LIMIT_IP_WINDOW")?,
            algorithm: env.parse("RATE_LIMIT_ALGORITHM", str::parse)?,
            shadow: env.bool("RATE_LIMIT_SHADOW")?,
            ip_every_request: env.bool("RATE_LIMIT_IP_EVERY_REQUEST")?,
            log_format: match env.choice("LOG_FORMAT")? {
                Some("json") => LogFormat::Json,
                _ => LogFormat::Plain,
            },
            admin_token: env.optional("ADMIN_TOKEN", |v| {
                if v.len() < 16 {
                    Err("use at least 16 characters".into())
                } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
                    Err("use printable ASCII without spaces".into())
                } else {
                    Ok(v.to_owned())
                }
            })?,
            rules_path: env.optional("RATE_LIMIT_CONFIG", existing_file)?,
            failure_mode: env.parse("RATE_LIMIT_FAILURE_MODE", str::parse)?,
            trusted_proxies: env
                .optional("TRUSTED_PROXIES", parse_networks)?
                .unwrap_or_default(),
            operator_networks: env.parse("OPERATOR_NETWORKS", |v| match v {
                "none" => Ok(Vec::new()),
                _ => parse_networks(v),
            })?,
            forwarded_header: env.parse("FORWARDED_HEADER", str::parse)?,
            max_api_key_length: env.integer("MAX_API_KEY_LENGTH")? as usize,
            api_key_header: env.parse("API_KEY_HEADER", |v| {
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
            envoy: envoy::envoy_settings(&env)?,
            http_tls: listeners::http_tls(&env)?,
            body_timeout: env.millis("REQUEST_BODY_TIMEOUT_MS")?,
            warnings: ignored_settings(&env),
        })
    }
}

/// The settings given (other than their defaults) that another one
/// overrides: the parts of a Redis URL under REDIS_URL, the built-in limits
/// under RATE_LIMIT_CONFIG.
fn ignored_settings(env: &Env<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |winner: &str, losers: &[&'static str]| {
        for &name in losers {
            let default = list::find(name).map_or("", |s| s.default);
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
            &["REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB"],
        );
    }
    if env.get("RATE_LIMIT_CONFIG").is_some() {
        check(
            "RATE_LIMIT_CONFIG",
            &[
                "RATE_LIMIT_USER_LIMIT",
                "RATE_LIMIT_USER_WINDOW",
                "RATE_LIMIT_IP_LIMIT",
                "RATE_LIMIT_IP_WINDOW",
                "RATE_LIMIT_ALGORITHM",
                "RATE_LIMIT_IP_EVERY_REQUEST",
            ],
        );
    }
    if env
        .get("CONFIG_TYPE")
        .is_some_and(|t| t.eq_ignore_ascii_case("GRPC_XDS_SOTW"))
    {
        check("CONFIG_TYPE=GRPC_XDS_SOTW", &["RUNTIME_ROOT"]);
    }
    if env
        .get("USE_STATSD")
        .is_some_and(|v| env::parse_bool(&v) == Ok(true))
    {
        warnings.push(
            "USE_STATSD=true is ignored: there is no statsd sink here; the metrics are \
             Prometheus's (/metrics, or PROMETHEUS_ADDR with USE_PROMETHEUS=true)"
                .into(),
        );
    }
    warnings
}

/// JWT_CLAIM with exactly one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and
/// JWT_JWKS_FILE; JWT_ISSUER and JWT_AUDIENCE optional.
fn jwt_settings(env: &Env<'_>) -> Result<Option<JwtSettings>, ConfigError> {
    let file = |name: &'static str| env.optional(name, existing_file);
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
mod tests;
