//! The gRPC server: `envoy.service.ratelimit.v3.RateLimitService` and the
//! standard health service, on GRPC_HOST:GRPC_PORT beside the HTTP server.
//!
//! Health answers for `ratelimit` (the name envoyproxy/ratelimit registers
//! and Envoy health checks written for it ask), for `""` and for the
//! service's full name: SERVING while the configuration is loaded and Redis
//! answers, NOT_SERVING otherwise, rechecked every second.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::{Rls, RlsError};

/// The health service name envoyproxy/ratelimit registers.
pub const HEALTH_NAME: &str = "ratelimit";
const METHOD: &str = "ShouldRateLimit";
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let answer = |result: Result<RateLimitResponse, RlsError>| {
            result.map(Response::new).map_err(|err| match err {
                RlsError::InvalidArgument(m) => Status::invalid_argument(m),
                RlsError::Unavailable(m) => Status::unavailable(m),
            })
        };
        let Some(tracing) = self.state().tracing.clone() else {
            return answer(Rls::should_rate_limit(self, request.get_ref(), METHOD).await);
        };
        let parent = tracing.parent(&crate::traces::MetadataExtractor(request.metadata()));
        let start = std::time::SystemTime::now();
        // Boxed: timing_store holds the call's future twice (taken by
        // value), and inline it would make every call's future, traced or
        // not, that much larger.
        let (result, store_time) = Box::pin(crate::traces::timing_store(Rls::should_rate_limit(
            self,
            request.get_ref(),
            METHOD,
        )))
        .await;
        let result = answer(result);
        let request = request.get_ref();
        let known = (self.state().limiter.rules().erl().domains).contains_key(&request.domain);
        let domain = known.then_some(request.domain.as_str());
        trace_call(
            &tracing, &parent, start, request, domain, &result, store_time,
        );
        result
    }
}

/// The span of one ShouldRateLimit call: the domain (configuration, not a
/// client value), the overall code and the gRPC status; never a
/// descriptor's value.
fn trace_call(
    tracing: &crate::traces::Tracing,
    parent: &opentelemetry::Context,
    start: std::time::SystemTime,
    request: &RateLimitRequest,
    domain: Option<&str>,
    result: &Result<Response<RateLimitResponse>, Status>,
    store_time: Option<crate::traces::StoreTime>,
) {
    use opentelemetry::KeyValue;
    let service = "envoy.service.ratelimit.v3.RateLimitService";
    let attributes = || {
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", METHOD),
            KeyValue::new(
                "rpc.grpc.status_code",
                result.as_ref().map_or_else(|s| s.code() as i64, |_| 0),
            ),
            KeyValue::new("ratelimit.descriptors", request.descriptors.len() as i64),
        ];
        // The domain when the configuration has it (an unknown one is
        // whatever the client sent, and stays out).
        if let Some(domain) = domain {
            attributes.push(KeyValue::new("ratelimit.domain", domain.to_owned()));
        }
        if let Ok(response) = result {
            let code = match response.get_ref().overall_code {
                1 => "OK",
                2 => "OVER_LIMIT",
                _ => "UNKNOWN",
            };
            attributes.push(KeyValue::new("ratelimit.overall_code", code));
        }
        attributes
    };
    let failed = matches!(result, Err(s) if s.code() != tonic::Code::InvalidArgument);
    tracing.request_span(
        parent,
        crate::traces::RequestSpan {
            name: format!("{service}/{METHOD}"),
            kind: opentelemetry::trace::SpanKind::Server,
            start,
            store: store_time,
            failed,
        },
        attributes,
    );
}

/// Streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 128;
/// The longest a call may take, its request body included.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request message (tonic's default is 4 MiB; a request of the most
/// descriptors and entries the service takes is far below 1 MiB of names).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest header block of a call.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the gRPC server listens.
pub enum Listener {
    Tcp(std::net::TcpListener),
    /// GRPC_UDS.
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }
}

/// Serves `rls` on `listener` from `threads` threads until `stop` turns
/// true (or its sender is gone), and keeps the health service up to date
/// meanwhile (on the caller's runtime).
///
/// Each thread has a runtime of its own that accepts connections from the
/// shared listener and serves their calls: a call, its Redis call (the
/// thread's connection and queue of checks, see `redis`) and its answer
/// stay on one thread, as an HTTP request does on its actix worker. On a
/// work-stealing runtime a call and the task driving its Redis connection
/// moved between threads, and its check joined whichever thread's queue it
/// ran on.
pub fn spawn(
    rls: Rls,
    listener: Listener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    threads: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(report_health(rls.clone(), reporter));
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let health_stop = stopped(stop.clone());
    tokio::spawn(async move {
        health_stop.await;
        health_task.abort();
    });
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let (rls, tls, health) = (rls.clone(), tls.clone(), health.clone());
        let stop = stopped(stop.clone());
        std::thread::Builder::new()
            .name(format!("grpc-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => return log::error!("gRPC server: no runtime: {err}"),
                };
                if let Err(err) = runtime.block_on(serve(rls, listener, tls, health, stop)) {
                    log::error!("gRPC server error: {err}");
                }
            })?;
    }
    Ok(())
}

/// Serves `rls` and `health` on `listener` until `stop` resolves.
async fn serve(
    rls: Rls,
    listener: Listener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Bounds on what one peer can hold (issue 19, item 8: 6,400-8,800
    // unfinished streams on one connection held ~100 MB). Envoy opens
    // another connection when one has MAX_STREAMS in flight.
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        // A call unfinished after this (a body that never comes) ends with
        // DEADLINE_EXCEEDED: Envoy's own timeout is far shorter.
        .timeout(CALL_TIMEOUT)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        // Pings find a peer that vanished without closing its connection.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
        .add_service(health)
        .add_service(RateLimitServiceServer::new(rls).max_decoding_message_size(MAX_MESSAGE_BYTES));
    let result = match listener {
        Listener::Tcp(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            match tls {
                Some(config) => {
                    let incoming = super::tls::incoming(listener, config);
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            }
        }
        Listener::Unix(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(listener)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    result.map_err(std::io::Error::other)
}

/// Whether the service can answer: a configuration in force and Redis
/// answering.
///
/// In the `local` failure mode the service still decides while Redis is
/// gone (approximately, in process), so it stays SERVING: an Envoy that
/// health-checks it keeps asking, and the local limits are used.
pub(super) async fn healthy(rls: &Rls) -> bool {
    let limiter = &rls.state().limiter;
    limiter.metrics().envoy.config_loaded.get() == 1
        && (limiter.failure_mode() == crate::policy::FailureMode::Local
            || limiter.ping().await.is_ok())
}

async fn report_health(rls: Rls, reporter: HealthReporter) {
    let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
    let mut last = None;
    loop {
        ticks.tick().await;
        let status = if healthy(&rls).await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for name in [HEALTH_NAME, ""] {
                reporter.set_service_status(name, status).await;
            }
            match status {
                ServingStatus::Serving => {
                    reporter.set_serving::<RateLimitServiceServer<Rls>>().await
                }
                _ => {
                    reporter
                        .set_not_serving::<RateLimitServiceServer<Rls>>()
                        .await
                }
            }
            last = Some(status);
        }
    }
}
