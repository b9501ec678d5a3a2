//! OpenTelemetry traces from the real binary, configured by the standard
//! OTEL_* variables, received by an OTLP receiver this test starts (the
//! collector's gRPC service, and OTLP/HTTP with protobuf bodies): spans
//! arrive with the service name, continue the caller's `traceparent`, carry
//! the route, decision, policies and Redis time, and no secret.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use support::binary::{log_lines, serve, wait_for_port};
use support::{RedisServer, TempDir};

const API_KEY: &str = "sk_live_trace_secret_4242";
const ADMIN_TOKEN: &str = "trace-admin-token-0123456789abcdef";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// What the receiver got: every export request.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

struct Receiver(Received);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port: its address and what it receives.
async fn grpc_receiver() -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Receiver(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{address}"), received)
}

/// An OTLP/HTTP receiver (POST /v1/traces, protobuf) on a free port.
async fn http_receiver() -> (String, Received) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let received = Received::default();
    let sink = received.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let sink = sink.clone();
        App::new().route(
            "/v1/traces",
            web::post().to(move |req: actix_web::HttpRequest, body: web::Bytes| {
                let sink = sink.clone();
                async move {
                    let kind = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if kind != "application/x-protobuf" {
                        return HttpResponse::UnsupportedMediaType().finish();
                    }
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(export) => {
                            sink.lock().unwrap().push(export);
                            HttpResponse::Ok()
                                .content_type("application/x-protobuf")
                                .body(ExportTraceServiceResponse::default().encode_to_vec())
                        }
                        Err(_) => HttpResponse::BadRequest().finish(),
                    }
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://{address}"), received)
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&Some(v.clone())))
            .collect::<Vec<_>>()
            .join(","),
        other => format!("{other:?}"),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

/// Every span received so far, with its resource's service name.
fn spans(received: &Received) -> Vec<(String, Span)> {
    let exports = received.lock().unwrap();
    exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            rs.scope_spans
                .iter()
                .flat_map(|ss| ss.spans.clone())
                .map(move |s| (service.clone(), s))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn spans_are_exported(protocol: &str, endpoint: &str, received: Received) {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("traces");
    let config = dir.path().join("rls/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("edge.yaml"),
        "domain: edge\ndescriptors:\n  - { key: api_key, rate_limit: { unit: day, requests_per_unit: 10 } }\n",
    )
    .unwrap();
    let root = dir.path().join("rls").display().to_string();
    let grpc_port = support::free_port().to_string();
    let mut child = serve(
        &dir,
        &redis,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", "limiter-under-test"),
            // Export every 100 ms instead of every 5 s (the SDK reads it).
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RATE_LIMIT_USER_LIMIT", "2"),
            ("RATE_LIMIT_USER_WINDOW", "1d"),
            ("RATE_LIMIT_ALGORITHM", "token_bucket"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("LOG_LEVEL", "info"),
            ("GRPC_PORT", &grpc_port),
            ("RUNTIME_ROOT", &root),
            ("RUNTIME_WATCH_ROOT", "false"),
        ],
    );
    let lines = log_lines(&mut child);
    let port = wait_for_port(&lines);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    // Two allowed, one denied (a token bucket of 2 a day: no window edge
    // can refill it meanwhile), then an admin call naming the key.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client
            .post(format!("{base}/api/resource"))
            .header("X-API-Key", API_KEY)
            .header("traceparent", &traceparent)
            .header("X-Forwarded-For", "203.0.113.77")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let admin = client
        .get(format!("{base}/admin/identities/user/{API_KEY}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    // Without a traceparent: a trace of its own.
    client.get(format!("{base}/livez")).send().await.unwrap();
    // Envoy's ShouldRateLimit, the traceparent in the gRPC metadata.
    {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
            rate_limit_descriptor::Entry, RateLimitDescriptor,
        };
        use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
        use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
        let mut rls = RateLimitServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "api_key".into(),
                    value: API_KEY.into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        });
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let answer = rls.should_rate_limit(request).await.unwrap().into_inner();
        assert_eq!(answer.overall_code, 1, "OK");
    }

    let started = Instant::now();
    let all = loop {
        let all = spans(&received);
        let ours = all
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == TRACE_ID && s.kind == SpanKind::Server as i32)
            .count();
        if ours >= 5 && all.iter().any(|(_, s)| s.name == "GET /livez") {
            break all;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{protocol}: spans missing; received {:?}",
            all.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for (service, span) in &all {
        assert_eq!(service, "limiter-under-test");
        // No secret anywhere: not the key, not the token, not the client.
        for kv in &span.attributes {
            let value = text(&kv.value);
            for secret in [API_KEY, ADMIN_TOKEN, "203.0.113.77", "127.0.0.1"] {
                assert!(
                    !value.contains(secret),
                    "{protocol}: {} = {value} in span {}",
                    kv.key,
                    span.name
                );
            }
        }
    }
    let resource: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "POST /api/resource" && hex(&s.trace_id) == TRACE_ID)
        .collect();
    assert_eq!(resource.len(), 3, "{protocol}");
    let mut decisions = Vec::new();
    for span in &resource {
        assert_eq!(
            hex(&span.parent_span_id),
            PARENT_SPAN,
            "the caller's trace continued"
        );
        assert_eq!(span.kind, SpanKind::Server as i32);
        let a = |k: &str| attribute(&span.attributes, k);
        assert_eq!(a("http.route").as_deref(), Some("/api/resource"));
        assert_eq!(a("http.request.method").as_deref(), Some("POST"));
        assert_eq!(a("ratelimit.strategy").as_deref(), Some("user"));
        assert_eq!(a("ratelimit.policies").as_deref(), Some("user"));
        let redis_ms: f64 = a("ratelimit.redis.duration_ms")
            .expect("the Redis time")
            .parse()
            .unwrap();
        assert!(redis_ms > 0.0);
        decisions.push((
            a("ratelimit.decision").unwrap(),
            a("http.response.status_code").unwrap(),
        ));
        // The Redis call, as a child span.
        let child = all
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "redis check" && s.parent_span_id == span.span_id)
            .expect("a child span for the Redis call");
        assert_eq!(child.kind, SpanKind::Client as i32);
        assert_eq!(child.trace_id, span.trace_id);
    }
    decisions.sort();
    assert_eq!(
        decisions,
        [
            ("allowed".to_owned(), "200".to_owned()),
            ("allowed".to_owned(), "200".to_owned()),
            ("denied".to_owned(), "429".to_owned()),
        ]
    );
    // The admin call: its route, not its path (which holds the key).
    let admin = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name.starts_with("GET /admin/identities"))
        .expect("the admin call's span");
    assert_eq!(
        attribute(&admin.attributes, "url.path").as_deref(),
        Some("/admin/identities/{strategy}/{id}")
    );
    // The gRPC call: its domain and overall code, the caller's trace.
    let rls = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        .expect("the ShouldRateLimit span");
    assert_eq!(hex(&rls.parent_span_id), PARENT_SPAN);
    assert_eq!(
        attribute(&rls.attributes, "ratelimit.domain").as_deref(),
        Some("edge")
    );
    assert_eq!(
        attribute(&rls.attributes, "ratelimit.overall_code").as_deref(),
        Some("OK")
    );
    assert_eq!(
        attribute(&rls.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(all
        .iter()
        .any(|(_, s)| s.name == "redis check" && s.parent_span_id == rls.span_id));
    // /livez, without a traceparent: a root span.
    let livez = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "GET /livez")
        .unwrap();
    assert!(livez.parent_span_id.is_empty());
    assert_ne!(hex(&livez.trace_id), TRACE_ID);

    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn spans_reach_an_otlp_grpc_receiver() {
    let (endpoint, received) = grpc_receiver().await;
    spans_are_exported("grpc", &endpoint, received).await;
}

#[tokio::test]
async fn spans_reach_an_otlp_http_receiver() {
    let (endpoint, received) = http_receiver().await;
    spans_are_exported("http/protobuf", &endpoint, received).await;
}

/// A bad OTEL_* value stops the start, naming the setting.
#[test]
fn a_bad_trace_setting_is_a_start_up_error() {
    let dir = TempDir::new("traces-bad");
    let out = support::binary::binary(
        &dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
}

/// `OTEL_TRACES_SAMPLER` is obeyed: with `parentbased_always_off` a request
/// without a sampled parent makes no span, one with it does.
#[tokio::test]
async fn the_sampler_setting_decides_which_requests_make_spans() {
    let (endpoint, received) = http_receiver().await;
    let redis = RedisServer::start().await;
    let dir = TempDir::new("traces-sampler");
    let mut child = serve(
        &dir,
        &redis,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_LEVEL", "info"),
        ],
    );
    let lines = log_lines(&mut child);
    let base = format!("http://127.0.0.1:{}", wait_for_port(&lines));
    let client = reqwest::Client::new();
    for _ in 0..3 {
        client.get(format!("{base}/livez")).send().await.unwrap();
    }
    // Ended after the unsampled ones: exported in the same batch or later.
    client
        .get(format!("{base}/health"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    while !spans(&received)
        .iter()
        .any(|(_, s)| s.name == "GET /health")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no span for the sampled request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = spans(&received).into_iter().map(|(_, s)| s.name).collect();
    assert!(!names.iter().any(|n| n == "GET /livez"), "{names:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Regression (issue 19, item 15): spans of unmatched routes carried the
/// raw path, and the client's `tracestate` was copied into exported spans.
/// The parent's trace and span ids are kept; its state and the unmatched
/// path are not.
#[tokio::test]
async fn spans_carry_neither_an_unmatched_path_nor_the_clients_tracestate() {
    let (endpoint, received) = http_receiver().await;
    let redis = RedisServer::start().await;
    let dir = TempDir::new("traces-private");
    let mut child = serve(
        &dir,
        &redis,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_LEVEL", "info"),
        ],
    );
    let lines = log_lines(&mut child);
    let base = format!("http://127.0.0.1:{}", wait_for_port(&lines));
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/secret-path-of-the-client"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=secret-state-of-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let started = Instant::now();
    let span = loop {
        if let Some((_, span)) = spans(&received)
            .into_iter()
            .find(|(_, s)| hex(&s.trace_id) == TRACE_ID)
        {
            break span;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no span");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN);
    assert_eq!(
        span.trace_state, "",
        "the client's tracestate is not exported"
    );
    let everything = format!("{span:?}");
    assert!(!everything.contains("secret"), "{everything}");
    assert_eq!(
        attribute(&span.attributes, "http.route").as_deref(),
        Some("unmatched")
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Envoy Gateway's tracing variables (envoyproxy/ratelimit's names) drive
/// the same OpenTelemetry setup: TRACING_ENABLED with the standard
/// endpoint, TRACING_EXPORTER_PROTOCOL, the service's name, namespace and
/// instance id on the spans' resource, TRACING_SAMPLING_RATE as the ratio.
#[tokio::test]
async fn envoy_gateways_tracing_variables_reach_the_spans() {
    let (endpoint, received) = grpc_receiver().await;
    let redis = RedisServer::start().await;
    let dir = TempDir::new("traces-eg");
    let mut child = serve(
        &dir,
        &redis,
        &[
            ("TRACING_ENABLED", "true"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("TRACING_SERVICE_NAME", "envoy-ratelimit"),
            ("TRACING_SERVICE_NAMESPACE", "envoy-gateway-system"),
            ("TRACING_SERVICE_INSTANCE_ID", "envoy-ratelimit-7d9f-x2"),
            ("TRACING_SAMPLING_RATE", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_LEVEL", "info"),
        ],
    );
    let lines = log_lines(&mut child);
    let base = format!("http://127.0.0.1:{}", wait_for_port(&lines));
    reqwest::get(format!("{base}/health")).await.unwrap();
    let started = Instant::now();
    let resource = loop {
        let found = received.lock().unwrap().iter().find_map(|e| {
            e.resource_spans.iter().find_map(|rs| {
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .any(|s| s.name == "GET /health")
                    .then(|| rs.resource.clone().unwrap_or_default())
            })
        });
        if let Some(resource) = found {
            break resource;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no span reached the collector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (key, value) in [
        ("service.name", "envoy-ratelimit"),
        ("service.namespace", "envoy-gateway-system"),
        ("service.instance.id", "envoy-ratelimit-7d9f-x2"),
    ] {
        assert_eq!(
            attribute(&resource.attributes, key).as_deref(),
            Some(value),
            "{key}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
