//! OpenTelemetry traces: a span per HTTP request (and per gRPC
//! `ShouldRateLimit` call), exported over OTLP (gRPC or HTTP/protobuf) to a
//! collector, as the standard OTEL_* variables say (`config::traces`).
//!
//! Off unless configured, and then free: no tracer exists, and the request
//! path asks one `Option` whether to trace.
//!
//! A span carries the route, the decision, the names of the policies and
//! the time spent waiting for Redis (also as a child span). It continues
//! the caller's W3C `traceparent`. Never in an attribute: an API key, a
//! token, a client IP, a raw path of the admin API (it can hold a key).

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpProtocol, ParentlessSampler, TraceSampler, TraceSettings};

/// The tracer provider and its tracer, while tracing is on.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry tracing (settings OTEL_EXPORTER_OTLP_*): {0}")]
pub struct TracingError(String);

impl Tracing {
    /// Builds the exporter and the provider (spans go out in batches from a
    /// thread of the SDK's; a gRPC exporter must be built in a Tokio
    /// runtime). Nothing connects yet: a collector that is down costs
    /// dropped spans and a logged error, never a request.
    pub fn start(settings: &TraceSettings) -> Result<Tracing, TracingError> {
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&settings.endpoint)
                .build(),
            OtlpProtocol::HttpProtobuf => SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&settings.endpoint)
                .build(),
        }
        .map_err(|e| TracingError(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler(settings.sampler))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attributes(
                        settings
                            .resource
                            .iter()
                            .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone())),
                    )
                    .build(),
            )
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        Ok(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The caller's trace context, from its `traceparent` header; an empty
    /// context without it. Its `tracestate` is dropped: it is the caller's
    /// free text (vendors' entries), and copied into every exported span it
    /// would carry whatever a client put there to the operator's collector.
    pub fn parent(&self, headers: &dyn Extractor) -> Context {
        use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};
        let context = self.propagator.extract(headers);
        let span = context.span().span_context().clone();
        if !span.is_valid() || *span.trace_state() == TraceState::default() {
            return context;
        }
        Context::new().with_remote_span_context(SpanContext::new(
            span.trace_id(),
            span.span_id(),
            span.trace_flags(),
            true,
            TraceState::default(),
        ))
    }

    /// Ends one request's span under `parent`, from its start to now, with
    /// `attributes` and the time the store took as a child span. A span the
    /// sampler drops costs no more than the decision: its attributes are
    /// never built.
    pub fn request_span(
        &self,
        parent: &Context,
        request: RequestSpan,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        let RequestSpan {
            name,
            kind,
            start,
            store,
            failed,
        } = request;
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .start_with_context(&self.tracer, parent);
        if !span.is_recording() {
            return;
        }
        let mut attributes = attributes();
        if let Some(store) = store {
            attributes.push(KeyValue::new(
                "ratelimit.redis.duration_ms",
                store.total.as_secs_f64() * 1e3,
            ));
            attributes.push(KeyValue::new(
                "ratelimit.redis.calls",
                i64::from(store.calls),
            ));
        }
        span.set_attributes(attributes);
        let context = parent.with_span(span);
        if let Some(store) = store {
            let mut redis = self
                .tracer
                .span_builder("redis check")
                .with_kind(SpanKind::Client)
                .with_start_time(store.start)
                .with_attributes([
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("db.operation.name", "EVALSHA"),
                ])
                .start_with_context(&self.tracer, &context);
            redis.end_with_timestamp(store.start + store.total);
        }
        let span = context.span();
        if failed {
            span.set_status(Status::error("server error"));
        }
        span.end();
    }

    /// Sends what is buffered and stops (at shutdown).
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            log::warn!("traces: shutting down: {err}");
        }
    }
}

fn sampler(sampler: TraceSampler) -> Sampler {
    let parentless = |s: ParentlessSampler| match s {
        ParentlessSampler::AlwaysOn => Sampler::AlwaysOn,
        ParentlessSampler::AlwaysOff => Sampler::AlwaysOff,
        ParentlessSampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
    };
    match sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        TraceSampler::ParentBased(s) => Sampler::ParentBased(Box::new(parentless(s))),
    }
}

/// One finished request, as its span shows it.
pub struct RequestSpan {
    /// e.g. `POST /api/resource`.
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub store: Option<StoreTime>,
    /// A server error: the span's status says so.
    pub failed: bool,
}

/// The time one request spent waiting for the store: from its first call,
/// the sum of its calls.
#[derive(Debug, Clone, Copy)]
pub struct StoreTime {
    pub start: SystemTime,
    pub total: Duration,
    pub calls: u32,
}

tokio::task_local! {
    static STORE_TIME: Cell<Option<StoreTime>>;
}

/// Runs `request`, noting the store calls made within it (in its task).
pub async fn timing_store<F: Future>(request: F) -> (F::Output, Option<StoreTime>) {
    STORE_TIME
        .scope(Cell::new(None), async {
            let output = request.await;
            (output, STORE_TIME.with(Cell::get))
        })
        .await
}

/// Whether the current task is a traced request (it notes its store
/// calls): only then is anything gathered for a span.
pub fn traced() -> bool {
    STORE_TIME.try_with(|_| ()).is_ok()
}

/// Notes one store call of the current request.
pub fn note_store_call(start: SystemTime, took: Duration) {
    let _ = STORE_TIME.try_with(|cell| {
        let mut time = cell.get().unwrap_or(StoreTime {
            start,
            total: Duration::ZERO,
            calls: 0,
        });
        time.total += took;
        time.calls += 1;
        cell.set(Some(time));
    });
}

/// Request headers as the propagator reads them.
pub struct HeaderExtractor<'a>(pub &'a actix_web::http::header::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// gRPC metadata as the propagator reads it.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
