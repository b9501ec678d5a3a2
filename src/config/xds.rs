//! The settings of Envoy Gateway's rate limit Deployment that are not the
//! rate limit service's own: configuration over xDS (CONFIG_TYPE,
//! CONFIG_GRPC_XDS_*, XDS_CLIENT_BACKOFF_*, with envoyproxy/ratelimit's
//! names and defaults) and Prometheus on a listener of its own
//! (USE_PROMETHEUS, PROMETHEUS_ADDR, PROMETHEUS_PATH).

use std::path::PathBuf;
use std::time::Duration;

use super::env::{existing_file, ratio, Env};
use super::ConfigError;
use crate::policy::parse_window;

/// Where the Envoy domains come from, when an xDS server sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// CONFIG_GRPC_XDS_SERVER_URL as given (`host:port`).
    pub server_url: String,
    pub host: String,
    pub port: u16,
    /// CONFIG_GRPC_XDS_NODE_ID.
    pub node_id: String,
    /// CONFIG_GRPC_XDS_NODE_METADATA, as (key, value) pairs.
    pub node_metadata: Vec<(String, String)>,
    /// CONFIG_GRPC_XDS_SERVER_USE_TLS and its files.
    pub tls: Option<XdsTls>,
    pub backoff: Backoff,
    /// MERGE_DOMAIN_CONFIG.
    pub merge_domains: bool,
    /// ENVOY_KEY_FORMAT=ratelimit's CACHE_KEY_PREFIX.
    pub ratelimit_key_prefix: Option<String>,
    /// FORCE_START_WITHOUT_INITIAL_CONFIG: healthy before the first
    /// configuration arrives.
    pub force_start: bool,
}

/// TLS to the xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// This service's certificate and key (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The server's CAs; None: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry.
    pub server_name: String,
}

/// Reconnection waits: `initial`, doubled with each failure in a row up
/// to `max`, spread by `random_factor` either way when `jitter` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub random_factor: super::Ratio,
    pub jitter: bool,
}

impl Backoff {
    /// The wait after `failures` failures in a row (0: the first), given a
    /// random number in 0..1. Never shorter than `initial` times
    /// (1 - factor), so no reconnection loop is hot.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max.max(self.initial));
        if !self.jitter {
            return base;
        }
        let factor = self.random_factor.0.clamp(0.0, 1.0);
        let spread = 1.0 - factor + 2.0 * factor * random.clamp(0.0, 1.0);
        base.mul_f64(spread).max(Duration::from_millis(1))
    }
}

/// Prometheus metrics on a listener of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusSettings {
    /// `host:port` to bind (PROMETHEUS_ADDR's `:19001` binds every address).
    pub address: String,
    /// PROMETHEUS_PATH.
    pub path: String,
}

pub(super) fn xds_settings(
    env: &Env<'_>,
    merge_domains: bool,
    ratelimit_key_prefix: Option<String>,
) -> Result<Option<XdsSettings>, ConfigError> {
    let use_tls = env.bool("CONFIG_GRPC_XDS_SERVER_USE_TLS")?;
    let cert = env.optional("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", existing_file)?;
    let key = env.optional("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", existing_file)?;
    let ca = env.optional("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", existing_file)?;
    let san = env.get("CONFIG_GRPC_XDS_SERVER_TLS_SAN");
    let metadata = env.optional("CONFIG_GRPC_XDS_NODE_METADATA", node_metadata)?;
    let url = env.value("CONFIG_GRPC_XDS_SERVER_URL").unwrap_or_default();
    let (host, port) = server_address(&url)
        .map_err(|problem| ConfigError::new("CONFIG_GRPC_XDS_SERVER_URL", &url, problem))?;
    let backoff = Backoff {
        initial: env.parse("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", parse_window)?,
        max: env.parse("XDS_CLIENT_BACKOFF_MAX_INTERVAL", parse_window)?,
        random_factor: env.parse("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", |v| {
            ratio(v).map(super::Ratio)
        })?,
        jitter: env.bool("XDS_CLIENT_BACKOFF_JITTER")?,
    };
    if env.choice("CONFIG_TYPE")? != Some("GRPC_XDS_SOTW") {
        return Ok(None);
    }
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
                "",
                "CONFIG_GRPC_XDS_CLIENT_TLS_CERT is set: give its key too",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
                "",
                "CONFIG_GRPC_XDS_CLIENT_TLS_KEY is set: give its certificate too",
            ))
        }
    };
    let tls = use_tls.then(|| XdsTls {
        client,
        ca,
        server_name: san.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned()),
    });
    Ok(Some(XdsSettings {
        server_url: url,
        host,
        port,
        node_id: env.value("CONFIG_GRPC_XDS_NODE_ID").unwrap_or_default(),
        node_metadata: metadata.unwrap_or_default(),
        tls,
        backoff,
        merge_domains,
        ratelimit_key_prefix,
        force_start: env.bool("FORCE_START_WITHOUT_INITIAL_CONFIG")?,
    }))
}

/// `host:port` (a gRPC target; `dns:///` and `http://` prefixes dropped,
/// IPv6 in brackets).
fn server_address(url: &str) -> Result<(String, u16), String> {
    let target = url
        .strip_prefix("dns:///")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let expected = || "expected host:port (e.g. envoy-gateway:18001)".to_owned();
    let (host, port) = target.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !bare.is_empty()
        && port != 0
        && (bare.parse::<std::net::IpAddr>().is_ok() || super::env::is_hostname(bare));
    if !valid {
        return Err(expected());
    }
    let host = if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_owned()
    };
    Ok((host, port))
}

/// `key1:val1,key2=val2`, as envoyproxy/ratelimit reads it.
fn node_metadata(value: &str) -> Result<Vec<(String, String)>, String> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, val) = pair
                .split_once([':', '='])
                .ok_or_else(|| format!("'{pair}': expected key:value or key=value"))?;
            Ok((key.trim().to_owned(), val.trim().to_owned()))
        })
        .collect()
}

pub(super) fn prometheus_settings(
    env: &Env<'_>,
) -> Result<Option<PrometheusSettings>, ConfigError> {
    let address = env.parse("PROMETHEUS_ADDR", |v| {
        let (host, port) = v
            .rsplit_once(':')
            .ok_or("expected [host]:port, e.g. :19001")?;
        let port: u16 = port
            .parse()
            .map_err(|_| "expected [host]:port, e.g. :19001")?;
        let host = match host {
            "" => "0.0.0.0",
            h => h,
        };
        Ok(format!("{host}:{port}"))
    })?;
    let path = env.parse("PROMETHEUS_PATH", |v| {
        if v.starts_with('/') && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(v.to_owned())
        } else {
            Err("expected a path starting with /".to_owned())
        }
    })?;
    // Accepted, for Envoy Gateway's Deployment: read so a bad value is
    // still named.
    env.choice("REDIS_SOCKET_TYPE")?;
    env.bool("USE_STATSD")?;
    // The metrics already carry the names its mapping gives them.
    let _ = env.get("PROMETHEUS_MAPPER_YAML");
    if !env.bool("USE_PROMETHEUS")? {
        return Ok(None);
    }
    Ok(Some(PrometheusSettings { address, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_address("envoy-gateway:18001").unwrap(),
            ("envoy-gateway".to_owned(), 18001)
        );
        assert_eq!(
            server_address("dns:///10.0.0.1:18001").unwrap(),
            ("10.0.0.1".to_owned(), 18001)
        );
        assert_eq!(
            server_address("[::1]:18001").unwrap(),
            ("[::1]".to_owned(), 18001)
        );
        for bad in ["envoy-gateway", "host:0", ":18001", "a b:1", "host:99999"] {
            assert!(server_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_metadata_in_both_forms() {
        assert_eq!(
            node_metadata("a:1,b=2").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert!(node_metadata("nothing").is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_never_hot() {
        let b = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            random_factor: super::super::Ratio(0.5),
            jitter: true,
        };
        assert_eq!(b.delay(0, 0.5), Duration::from_secs(10));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(20));
        assert_eq!(b.delay(9, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(5));
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(15));
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(90));
        let plain = Backoff { jitter: false, ..b };
        assert_eq!(plain.delay(0, 0.0), Duration::from_secs(10));
    }
}
