//! The Envoy domains over xDS (CONFIG_TYPE=GRPC_XDS_SOTW), as
//! envoyproxy/ratelimit takes them from Envoy Gateway: a State-of-the-World
//! client on the aggregated discovery service for the `RateLimitConfig`
//! resource type, one resource per domain.
//!
//! - Each response holds the whole configuration. It is compiled by the
//!   compiler of the YAML files (`limiter::rules::erl::xds`): valid, it
//!   replaces the Envoy domains for the next request and is ACKed (the
//!   request carries its version and nonce); invalid, it is NACKed with the
//!   reason in `error_detail` and the configuration in force stays.
//! - The connection is kept for ever: on any error or end of stream the
//!   client waits (XDS_CLIENT_BACKOFF_*, doubling with each failure in a
//!   row, never less than the initial interval times one minus the random
//!   factor, so a server that resets streams is not called in a loop) and
//!   connects again, asking with the version in force; the rules in force
//!   stay meanwhile.
//! - TLS with rustls: the server checked against CONFIG_GRPC_XDS_SERVER_TLS_
//!   CACERT (or the system's roots) and its name, this service's
//!   certificate presented; the files are re-read at every connection, so
//!   rotated ones are used at the next.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::app::AppState;
use crate::config::XdsSettings;
use crate::limiter::rules::erl::xds::{compile, TYPE_URL};
use crate::limiter::Rules;

/// How long a connection (TCP, TLS and HTTP/2) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// gRPC's INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// What one stream achieved before it ended.
struct Ended {
    /// A configuration was received (the failure count starts over).
    received: bool,
    why: String,
}

/// Keeps the Envoy domains in step with the xDS server for as long as the
/// runtime that calls this runs.
pub fn spawn(settings: XdsSettings, state: web::Data<AppState>) {
    tokio::spawn(async move {
        let mut version = String::new();
        let mut failures = 0u32;
        loop {
            let ended = session(&settings, &state, &mut version).await;
            let metrics = &state.limiter.metrics().xds;
            metrics.connected.set(0);
            if ended.received {
                failures = 0;
            }
            let wait = settings.backoff.delay(failures, random());
            failures = failures.saturating_add(1);
            log::warn!(
                "xds: {} ({}); the rules in force stay; connecting again in {} ms",
                ended.why,
                settings.server_url,
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
        }
    });
}

/// A number in 0..1 for the jitter.
fn random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One connection and stream, until it fails or ends.
async fn session(settings: &XdsSettings, state: &AppState, version: &mut String) -> Ended {
    let metrics = &state.limiter.metrics().xds;
    let channel = match connect(settings).await {
        Ok(channel) => channel,
        Err(why) => {
            metrics.connects.with_label_values(&["failed"]).inc();
            return Ended {
                received: false,
                why: format!("cannot connect: {why}"),
            };
        }
    };
    let (requests, outgoing) = mpsc::channel::<DiscoveryRequest>(4);
    // The first request names the version in force, so a server that has
    // nothing newer need not resend it (go-control-plane resends anyway).
    let _ = requests
        .send(request(settings, version.clone(), String::new(), None))
        .await;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await;
    let mut inbound = match stream {
        Ok(response) => response.into_inner(),
        Err(status) => {
            metrics.connects.with_label_values(&["failed"]).inc();
            return Ended {
                received: false,
                why: format!("the stream was refused: {}", status.message()),
            };
        }
    };
    metrics.connects.with_label_values(&["connected"]).inc();
    metrics.connected.set(1);
    log::info!(
        "xds: connected to {} as node {}",
        settings.server_url,
        settings.node_id
    );
    let mut received = false;
    loop {
        let response = match inbound.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return Ended {
                    received,
                    why: "the server ended the stream".into(),
                }
            }
            Err(status) => {
                return Ended {
                    received,
                    why: format!("the stream failed: {} {}", status.code(), status.message()),
                }
            }
        };
        received = true;
        let answer = apply(settings, state, version, &response);
        if requests.send(answer).await.is_err() {
            return Ended {
                received,
                why: "the stream closed".into(),
            };
        }
    }
}

/// Applies a response if it is valid; the ACK or NACK to send back.
fn apply(
    settings: &XdsSettings,
    state: &AppState,
    version: &mut String,
    response: &DiscoveryResponse,
) -> DiscoveryRequest {
    let metrics = state.limiter.metrics();
    if response.type_url != TYPE_URL {
        metrics.xds.responses.with_label_values(&["nack"]).inc();
        let why = format!("unexpected resource type '{}'", response.type_url);
        log::error!("xds: NACK version {}: {why}", response.version_info);
        return request(settings, version.clone(), response.nonce.clone(), Some(why));
    }
    metrics.xds.last_received.set(now());
    let compiled = compile(
        &response.resources,
        settings.merge_domains,
        settings.ratelimit_key_prefix.as_deref(),
    );
    match compiled {
        Ok(config) => {
            let domains = config.domains.len();
            let config = Arc::new(config);
            state
                .limiter
                .update_rules(|current| Rules::clone(current).with_erl(config));
            metrics.envoy.config_load_success.inc();
            metrics.envoy.config_loaded.set(1);
            metrics.xds.responses.with_label_values(&["ack"]).inc();
            metrics.xds.version.reset();
            metrics
                .xds
                .version
                .with_label_values(&[bounded(&response.version_info)])
                .set(1);
            log::info!(
                "xds: applied version {} ({domains} domains); ACK",
                response.version_info
            );
            version.clone_from(&response.version_info);
            request(settings, version.clone(), response.nonce.clone(), None)
        }
        Err(err) => {
            metrics.envoy.config_load_error.inc();
            metrics.xds.responses.with_label_values(&["nack"]).inc();
            log::error!(
                "xds: NACK version {}; the rules in force stay: {err}",
                response.version_info
            );
            request(
                settings,
                version.clone(),
                response.nonce.clone(),
                Some(err.to_string()),
            )
        }
    }
}

/// A version as a label value: at most 64 bytes.
fn bounded(version: &str) -> &str {
    let mut end = version.len().min(64);
    while !version.is_char_boundary(end) {
        end -= 1;
    }
    &version[..end]
}

/// A discovery request: the first (no nonce), an ACK, or a NACK (`error`).
fn request(
    settings: &XdsSettings,
    version_info: String,
    response_nonce: String,
    error: Option<String>,
) -> DiscoveryRequest {
    let metadata = (!settings.node_metadata.is_empty()).then(|| Struct {
        fields: settings
            .node_metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    },
                )
            })
            .collect(),
    });
    DiscoveryRequest {
        version_info,
        node: Some(Node {
            id: settings.node_id.clone(),
            metadata,
            user_agent_name: env!("CARGO_PKG_NAME").into(),
            ..Default::default()
        }),
        type_url: TYPE_URL.into(),
        response_nonce,
        error_detail: error.map(|message| Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// A channel to the xDS server, over TLS when configured.
async fn connect(settings: &XdsSettings) -> Result<Channel, String> {
    let uri = format!("http://{}:{}", settings.host, settings.port);
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(365 * 24 * 3600))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let Some(tls) = &settings.tls else {
        return endpoint.connect().await.map_err(error_chain);
    };
    let config =
        Arc::new(crate::tls::client_config(tls).map_err(|(setting, p)| format!("{setting}: {p}"))?);
    let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("CONFIG_GRPC_XDS_SERVER_TLS_SAN: {e}"))?;
    let address = (
        settings.host.trim_matches(['[', ']']).to_owned(),
        settings.port,
    );
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, name, address) = (config.clone(), name.clone(), address.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(error_chain)
}

/// An error with its causes (tonic's own says only "transport error").
fn error_chain(err: impl std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
