//! The outermost middleware: a request id for every request, one access log
//! line per request (plain text or JSON), and the HTTP request counter.
//!
//! The request id is taken from an `X-Request-Id` header when a trusted
//! proxy sent it (so one id follows a request through the proxies' logs and
//! ours), generated otherwise, and returned in `X-Request-Id`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpRequest};
use serde::Serialize;

use super::app_state;
use super::ratelimit::{LimitInfo, PolicyNames};
use crate::config::LogFormat;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Log target of access lines; `main` writes them as they are in JSON mode.
pub const ACCESS_TARGET: &str = "access";

/// This request's id (in the request's extensions while it is served): the
/// value of its `X-Request-Id`, so the response takes it without a copy.
#[derive(Debug, Clone)]
struct RequestId(HeaderValue);

impl RequestId {
    fn as_str(&self) -> &str {
        id_str(&self.0)
    }
}

/// A request id's text. Only ids that are printable ASCII are kept
/// (`acceptable`, or made here), so this never falls back.
fn id_str(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or("-")
}

/// `f` of the id of `req` (set by [`access`]), or of a fresh one; lent,
/// not copied.
pub fn with_request_id<R>(req: &HttpRequest, f: impl FnOnce(&str) -> R) -> R {
    match req.extensions().get::<RequestId>() {
        Some(id) => f(id.as_str()),
        None => f(new_request_id().as_str()),
    }
}

fn new_request_id() -> RequestId {
    let mut hex = [0; uuid::fmt::Simple::LENGTH];
    let hex = uuid::Uuid::new_v4().simple().encode_lower(&mut hex);
    let mut id = Vec::with_capacity(4 + hex.len());
    id.extend_from_slice(b"req_");
    id.extend_from_slice(hex.as_bytes());
    // Exactly as long as its capacity: a header value of it takes the
    // buffer as it is.
    RequestId(
        HeaderValue::from_maybe_shared(Bytes::from(id))
            .unwrap_or_else(|_| HeaderValue::from_static("req_")),
    )
}

/// An id a proxy may hand us: short, printable, no spaces or quotes.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[derive(Serialize)]
struct AccessLine<'a> {
    request_id: &'a str,
    peer: String,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    status: u16,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'static str>,
}

/// The method as a metric label: the standard methods, and `other` for
/// anything a client invents (a label value must come from a fixed set, or
/// each new one is a new series kept for the life of the process).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The path as it may appear in a log line. A dynamic route
/// (`/admin/overrides/{strategy}/{id}`) can carry an API key in its path, so
/// it is logged as its pattern; so is any other path under `/admin/` that
/// matched no route (a typo'd admin call still carries the key).
fn logged_path<'a>(route: &'a str, path: &'a str) -> &'a str {
    if route.contains('{') {
        route
    } else if route == "unmatched" && path.starts_with("/admin/") {
        "/admin/…"
    } else {
        path
    }
}

pub async fn access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let state = app_state(&req);
    let forwarded = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(acceptable) && state.identifier.trusts(req.peer_addr()))
        .map(|v| RequestId(v.clone()));
    req.extensions_mut()
        .insert(forwarded.unwrap_or_else(new_request_id));

    let traced = state.tracing.as_ref().map(|tracing| {
        (
            tracing.parent(&crate::traces::HeaderExtractor(req.headers())),
            std::time::SystemTime::now(),
        )
    });
    let (response, store_time) = if traced.is_some() {
        crate::traces::timing_store(next.call(req)).await
    } else {
        (next.call(req).await, None)
    };
    let mut response = response?;
    // Taken back: nothing reads it after this layer.
    let id = response
        .request()
        .extensions_mut()
        .remove::<RequestId>()
        .unwrap_or_else(new_request_id);
    response.headers_mut().insert(X_REQUEST_ID, id.0);
    let id = response.headers().get(&X_REQUEST_ID).map_or("-", id_str);
    let request = response.request();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    state
        .limiter
        .metrics()
        .http_requests
        .with_label_values(&[
            &route,
            method_label(request.method()),
            response.status().as_str(),
        ])
        .inc();
    if let (Some(tracing), Some((parent, start))) = (&state.tracing, traced) {
        trace_request(
            tracing,
            (parent, start),
            request,
            &route,
            status,
            id,
            store_time,
        );
    }

    if log::log_enabled!(target: ACCESS_TARGET, log::Level::Info) {
        let info = request.extensions().get::<LimitInfo>().copied();
        let line = AccessLine {
            request_id: id,
            peer: request
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_else(|| "-".into()),
            method: request.method().as_str(),
            path: logged_path(&route, request.path()),
            route: &route,
            status,
            latency_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            strategy: info.map(|i| i.strategy),
            decision: info.map(|i| i.decision),
        };
        match state.log_format {
            LogFormat::Json => {
                if let Ok(json) = serde_json::to_string(&line) {
                    log::info!(target: ACCESS_TARGET, "{json}");
                }
            }
            // No headers and no identity: an API key must never reach a log.
            LogFormat::Plain => log::info!(
                target: ACCESS_TARGET,
                "{} \"{} {}\" {} {:.3}ms request_id={} strategy={} decision={}",
                line.peer,
                line.method,
                line.path,
                line.status,
                line.latency_ms,
                line.request_id,
                line.strategy.unwrap_or("-"),
                line.decision.unwrap_or("-"),
            ),
        }
    }
    Ok(response)
}

/// The span of one HTTP request (see `traces`): the route and status, the
/// limiter's strategy, decision and policies, the request id; never a key,
/// a token, the client's address or a raw admin path.
#[allow(clippy::too_many_arguments)]
fn trace_request(
    tracing: &crate::traces::Tracing,
    (parent, start): (opentelemetry::Context, std::time::SystemTime),
    request: &HttpRequest,
    route: &str,
    status: u16,
    id: &str,
    store_time: Option<crate::traces::StoreTime>,
) {
    use opentelemetry::{KeyValue, Value};
    let method = method_label(request.method());
    let attributes = || {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("ratelimit.request_id", id.to_owned()),
        ];
        // The path of a matched route (its pattern where it has
        // parameters); a path that matched nothing is the client's own
        // text, and a span does not carry it.
        if route != "unmatched" {
            attributes.push(KeyValue::new(
                "url.path",
                logged_path(route, request.path()).to_owned(),
            ));
        }
        let extensions = request.extensions();
        if let Some(info) = extensions.get::<LimitInfo>() {
            attributes.push(KeyValue::new("ratelimit.strategy", info.strategy));
            attributes.push(KeyValue::new("ratelimit.decision", info.decision));
        }
        if let Some(PolicyNames(names)) = extensions.get::<PolicyNames>() {
            attributes.push(KeyValue::new(
                "ratelimit.policies",
                Value::Array(
                    names
                        .iter()
                        .map(|n| opentelemetry::StringValue::from(n.clone()))
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ));
        }
        attributes
    };
    tracing.request_span(
        &parent,
        crate::traces::RequestSpan {
            name: format!("{method} {route}"),
            kind: opentelemetry::trace::SpanKind::Server,
            start,
            store: store_time,
            failed: status >= 500,
        },
        attributes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 9, item 15): an admin path matching no route was
    /// logged raw, API key included.
    #[test]
    fn unmatched_admin_paths_are_not_logged_raw() {
        let path = "/admin/identities/user/sk_live_secret/extra";
        assert_eq!(logged_path("unmatched", path), "/admin/…");
        assert_eq!(
            logged_path(
                "/admin/overrides/{strategy}/{id}",
                "/admin/overrides/user/sk"
            ),
            "/admin/overrides/{strategy}/{id}"
        );
        assert_eq!(logged_path("unmatched", "/nope"), "/nope");
    }

    #[test]
    fn forwarded_ids_must_be_short_and_printable() {
        assert!(acceptable("abc-123_DEF"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable("quote\""));
        assert!(!acceptable(&"x".repeat(129)));
    }
}
