//! The settings of the Envoy rate limit service (RLS v3 over gRPC, as
//! envoyproxy/ratelimit serves it) and of its YAML configuration.

use std::path::PathBuf;

use super::env::{host, port, ratio, Env};
use super::ConfigError;

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
    /// TLS (and mTLS) on the gRPC port.
    pub grpc_tls: Option<crate::tls::ServerTlsSettings>,
    /// CONFIG_TYPE=GRPC_XDS_SOTW: the Envoy domains come from an xDS server.
    pub xds: Option<super::xds::XdsSettings>,
    /// USE_PROMETHEUS: the metrics on a listener of their own.
    pub prometheus: Option<super::xds::PrometheusSettings>,
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

pub(super) fn envoy_settings(env: &Env<'_>) -> Result<EnvoySettings, ConfigError> {
    let merge_domains = env.bool("MERGE_DOMAIN_CONFIG")?;
    let ratelimit_key_prefix = match env.choice("ENVOY_KEY_FORMAT")? {
        Some("ratelimit") => Some(env.value("CACHE_KEY_PREFIX").unwrap_or_default()),
        _ => None,
    };
    let xds = super::xds::xds_settings(env, merge_domains, ratelimit_key_prefix.clone())?;
    // With xDS the RUNTIME_* settings are ignored (Envoy Gateway sets them
    // to a directory that does not exist).
    let root = if xds.is_some() {
        None
    } else {
        env.optional("RUNTIME_ROOT", |v| {
            let root = PathBuf::from(v);
            if root.is_dir() {
                Ok(root)
            } else {
                Err("no such directory".to_owned())
            }
        })?
    };
    let runtime = match root {
        None => None,
        Some(root) => Some(RuntimeSettings {
            root,
            subdirectory: env.value("RUNTIME_SUBDIRECTORY").unwrap_or_default(),
            appdirectory: env.value("RUNTIME_APPDIRECTORY").unwrap_or_default(),
            watch_root: env.bool("RUNTIME_WATCH_ROOT")?,
            ignore_dotfiles: env.bool("RUNTIME_IGNOREDOTFILES")?,
            merge_domains,
            ratelimit_key_prefix,
        }),
    };
    let grpc_tls = super::listeners::grpc_tls(env)?;
    if grpc_tls.is_some() && env.get("GRPC_UDS").is_some() {
        return Err(ConfigError::new(
            "GRPC_UDS",
            &env.get("GRPC_UDS").unwrap_or_default(),
            "GRPC_SERVER_USE_TLS is for the TCP port: unset one of them",
        ));
    }
    Ok(EnvoySettings {
        grpc_host: env.parse("GRPC_HOST", host)?,
        grpc_port: env.parse("GRPC_PORT", port)?,
        grpc_uds: env.optional("GRPC_UDS", |v| {
            let path = PathBuf::from(v);
            match path.parent() {
                Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => Ok(path),
                _ => Err("the socket's directory does not exist".into()),
            }
        })?,
        runtime,
        shadow_mode: env.bool("SHADOW_MODE")?,
        limit_headers: if env.bool("LIMIT_RESPONSE_HEADERS_ENABLED")? {
            Some(LimitHeaders {
                limit: env.parse("LIMIT_LIMIT_HEADER", header_name)?,
                remaining: env.parse("LIMIT_REMAINING_HEADER", header_name)?,
                reset: env.parse("LIMIT_RESET_HEADER", header_name)?,
            })
        } else {
            None
        },
        near_limit_ratio: env.parse("NEAR_LIMIT_RATIO", |v| ratio(v).map(Ratio))?,
        force_start: env.bool("FORCE_START_WITHOUT_INITIAL_CONFIG")?,
        http_domain: env.bool("RLS_HTTP_DOMAIN")?,
        json_api: match env.choice("JSON_API")? {
            Some("off") => JsonApi::Off,
            Some("open") => JsonApi::Open,
            _ => JsonApi::Trusted,
        },
        grpc_tls,
        xds,
        prometheus: super::xds::prometheus_settings(env)?,
    })
}

fn header_name(v: &str) -> Result<String, String> {
    if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(v.to_owned())
    } else {
        Err("expected a header name (letters, digits and '-')".into())
    }
}
