//! The handlers. Each parses, calls, responds; the decisions live elsewhere.

use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::access::with_request_id;
use super::caller::{host_of, identify};
use super::errors::{ApiError, ErrorBody};
use super::ratelimit::RateLimitExceeded;
use super::{AppState, Millis};
use crate::limiter::{rules, Outcome, Route, Standing, StoreError};
use crate::policy::FailureMode;

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceData {
    pub processed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceResponse<'a> {
    #[schema(example = "Request successful")]
    pub message: &'static str,
    /// Unique per request.
    #[schema(example = "req_9f1c2d3e4b5a49c8a7d6e5f4a3b2c1d0")]
    pub request_id: &'a str,
    /// When the request was served, RFC 3339 in UTC.
    #[schema(example = "2026-11-27T23:40:33.123Z", value_type = String)]
    pub timestamp: Millis,
    pub data: ResourceData,
}

/// The protected resource.
///
/// Every call counts against the caller's limit: the `user` limit when an
/// `X-API-Key` header is sent, the `ip` limit otherwise. A JSON body is
/// optional.
#[utoipa::path(
    post,
    path = "/api/resource",
    tag = "resource",
    params(
        ("X-API-Key" = Option<String>, Header, description = "Identifies the caller (strategy `user`). Without it the client IP is used (strategy `ip`). At most 256 bytes (MAX_API_KEY_LENGTH), no control characters. The portable alphabet is printable ASCII, as documented here; other UTF-8 is accepted too, bytes that are not UTF-8 are a 400.", max_length = 256, pattern = "^[ -~]*$"),
    ),
    request_body(content = Option<serde_json::Value>, content_type = "application/json", description = "Optional; any JSON value."),
    responses(
        (status = 200, description = "Allowed and served", body = ResourceResponse),
        (status = 400, description = "Malformed JSON body or an unusable X-API-Key", body = ErrorBody),
        (status = 401, description = "A bearer token that does not verify (JWT identities, JWT_CLAIM)", body = ErrorBody),
        (status = 403, description = "The caller is on the rules file's deny-list (`blocked = true`)", body = ErrorBody),
        (status = 405, description = "Only POST is allowed", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded: wait `Retry-After` seconds", body = RateLimitExceeded),
        (status = 503, description = "Redis cannot answer and RATE_LIMIT_FAILURE_MODE is `closed`", body = ErrorBody),
    )
)]
pub async fn resource(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    // Read whole by the route's body::buffer: this takes it without a copy.
    let body = super::body::whole(payload, super::MAX_BODY_BYTES).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|err| ApiError::InvalidJson(err.to_string()))?;
    }
    // The same id as the X-Request-Id header and the access log line.
    Ok(with_request_id(&req, |request_id| {
        HttpResponse::Ok().json(ResourceResponse {
            message: "Request successful",
            request_id,
            timestamp: Millis(SystemTime::now()),
            data: ResourceData { processed: true },
        })
    }))
}

pub async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyStatus {
    #[schema(example = "user")]
    pub name: String,
    /// fixed_window, sliding_window, token_bucket or gcra.
    #[schema(example = "fixed_window")]
    pub algorithm: &'static str,
    #[schema(example = 20)]
    pub limit: u32,
    /// Window length in seconds (may be fractional).
    #[schema(example = 60.0)]
    pub window: f64,
    /// Units each request takes.
    #[schema(example = 1)]
    pub cost: u32,
    /// Counted and reported, never enforced.
    pub shadow: bool,
    #[schema(example = 17)]
    pub remaining: u32,
    /// Unix seconds when this policy's full limit is back.
    #[schema(example = 1795823280)]
    pub reset: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitStatus {
    /// `user` (identified by X-API-Key) or `ip`.
    #[schema(example = "user")]
    pub strategy: &'static str,
    #[schema(example = "demo-key")]
    pub identifier: String,
    /// `limited`; `unlimited` (allow-listed, or no policy applies);
    /// `blocked` (deny-listed).
    #[schema(example = "limited")]
    pub status: &'static str,
    /// The policy closest to exhaustion: its limit.
    #[schema(example = 20)]
    pub limit: Option<u32>,
    #[schema(example = 17)]
    pub remaining: Option<u32>,
    /// Unix seconds when its full limit is back.
    #[schema(example = 1795823280)]
    pub reset: Option<u64>,
    /// Its window length in whole seconds (rounded up).
    #[schema(example = 60)]
    pub window: Option<u64>,
    /// Every policy that applies to POST /api/resource for this caller.
    pub policies: Vec<PolicyStatus>,
}

/// The caller's current limits on `POST /api/resource`, without counting a
/// request.
#[utoipa::path(
    get,
    path = "/rate-limit/status",
    tag = "rate limit",
    params(
        ("X-API-Key" = Option<String>, Header, description = "The caller, as for /api/resource", max_length = 256, pattern = "^[ -~]*$"),
    ),
    responses(
        (status = 200, description = "The caller's state", body = RateLimitStatus),
        (status = 400, description = "An unusable X-API-Key", body = ErrorBody),
        (status = 401, description = "A bearer token that does not verify (JWT identities, JWT_CLAIM)", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    )
)]
pub async fn rate_limit_status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, &state)?;
    let host = host_of(req.headers().get(actix_web::http::header::HOST));
    let route = Route {
        method: "POST",
        path: "/api/resource",
        host: host.as_deref(),
    };
    let request = rules::http::request(&caller, &route, state.limiter.shapes());
    let standing = state
        .limiter
        .status(&request)
        .await
        .map_err(ApiError::Unavailable)?;
    let mut body = RateLimitStatus {
        strategy: caller.identity.strategy.as_str(),
        identifier: caller.identity.id,
        status: match standing {
            Standing::Blocked => "blocked",
            _ => "unlimited",
        },
        limit: None,
        remaining: None,
        reset: None,
        window: None,
        policies: Vec::new(),
    };
    if let Standing::Limited(outcome) = standing {
        let (policy, quota) = outcome.reported();
        body.status = "limited";
        body.limit = Some(quota.limit);
        body.remaining = Some(quota.remaining);
        body.reset = Some(quota.reset_at_unix());
        body.window = Some(policy.window().as_millis().div_ceil(1000) as u64);
        body.policies = policy_statuses(&outcome);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Each policy of `outcome` as the status and admin endpoints show it.
pub fn policy_statuses(outcome: &Outcome) -> Vec<PolicyStatus> {
    outcome
        .quotas
        .iter()
        .map(|(policy, quota)| PolicyStatus {
            name: policy.name().to_owned(),
            algorithm: policy.algorithm().as_str(),
            limit: quota.limit,
            window: policy.window().as_secs_f64(),
            cost: policy.cost(),
            shadow: policy.shadow(),
            remaining: quota.remaining,
            reset: quota.reset_at_unix(),
        })
        .collect()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain"))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = state.limiter.metrics();
    // Gauges are sampled when scraped, not kept up to date on the hot path.
    metrics
        .deny_cache_entries
        .set(state.limiter.deny_cache().len() as i64);
    metrics
        .breaker_open
        .set(i64::from(state.limiter.breaker_open()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

/// A listener's certificate in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServedCertificate {
    /// `http` (PORT) or `grpc` (GRPC_PORT).
    #[schema(example = "grpc")]
    pub listener: &'static str,
    /// When it expires, in Unix seconds.
    #[schema(example = 1798761600)]
    pub expires_at: i64,
}

/// The certificates the listeners serve (from the expiry gauge the
/// certificate watcher keeps).
pub fn served_certificates(state: &AppState) -> Vec<ServedCertificate> {
    let gauge = &state.limiter.metrics().tls_certificate_expiry;
    ["http", "grpc"]
        .into_iter()
        .filter_map(|listener| {
            let expires_at = gauge.get_metric_with_label_values(&[listener]).ok()?.get();
            (expires_at != 0).then_some(ServedCertificate {
                listener,
                expires_at,
            })
        })
        .collect()
}

/// Pings Redis: the outcome, and Redis's part of `/health` (also the
/// dashboard's).
pub async fn redis_health(state: &AppState) -> (Result<(), StoreError>, RedisHealth) {
    let topology = state.limiter.store().topology();
    let ping = state.limiter.ping().await;
    let breaker = if state.limiter.breaker_open() {
        "open"
    } else {
        "closed"
    };
    let health = RedisHealth {
        tls: state.limiter.metrics().redis_tls.get() == 1,
        status: if ping.is_ok() { "up" } else { "down" },
        latency_ms: ping
            .as_ref()
            .ok()
            .map(|latency| (latency.as_secs_f64() * 1e6).round() / 1e3),
        error: ping.as_ref().err().map(ToString::to_string),
        topology,
        breaker,
    };
    (ping.map(drop), health)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedisHealth {
    /// `up` or `down`.
    #[schema(example = "up")]
    pub status: &'static str,
    /// PING round trip in milliseconds; null when Redis did not answer.
    #[schema(example = 0.21)]
    pub latency_ms: Option<f64>,
    /// Why Redis is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `single`, `sentinel` or `cluster`.
    #[schema(example = "single")]
    pub topology: &'static str,
    /// Whether Redis is reached over TLS.
    pub tls: bool,
    /// The circuit breaker: `closed` (calls go to Redis) or `open` (calls
    /// fail at once until the next probe).
    #[schema(example = "closed")]
    pub breaker: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy`; `degraded` when Redis does not answer and requests are
    /// served by the failure mode (`open` or `local`); `unhealthy` when Redis
    /// does not answer and requests are refused (`closed`).
    #[schema(example = "healthy")]
    pub status: &'static str,
    /// Why the status is not `healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub redis: RedisHealth,
    /// The certificates the listeners serve over TLS, and when each
    /// expires; empty when they serve plaintext.
    pub certificates: Vec<ServedCertificate>,
    /// What limited requests get while Redis is down: `open`, `closed` or `local`.
    #[schema(example = "open")]
    pub failure_mode: &'static str,
    #[schema(example = "development")]
    pub environment: String,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
    #[schema(example = "2026-11-27T23:40:33.123Z")]
    pub timestamp: String,
}

/// Readiness: the service and its Redis.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Redis answers PING", body = Health),
        (status = 503, description = "Redis does not answer within REDIS_TIMEOUT_MS", body = Health),
    )
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (ping, redis) = redis_health(&state).await;
    let mode = state.limiter.failure_mode();
    let (mut response, status, reason) = match ping {
        Ok(()) => (HttpResponse::Ok(), "healthy", None),
        Err(err) => (
            HttpResponse::ServiceUnavailable(),
            if mode == FailureMode::Closed {
                "unhealthy"
            } else {
                "degraded"
            },
            Some(match mode {
                FailureMode::Closed => format!("redis {}: limited requests get 503", err.kind()),
                FailureMode::Open => format!(
                    "redis {}: limited requests are allowed uncounted",
                    err.kind()
                ),
                FailureMode::Local => format!(
                    "redis {}: limits are kept per instance, approximately",
                    err.kind()
                ),
            }),
        ),
    };
    response.json(Health {
        status,
        reason,
        redis,
        certificates: served_certificates(&state),
        failure_mode: state.limiter.failure_mode().as_str(),
        environment: state.environment.clone(),
        version: env!("CARGO_PKG_VERSION"),
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "alive")]
    pub status: &'static str,
}

/// Liveness: 200 while the process runs. Never calls Redis.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    responses((status = 200, description = "The process is running", body = Liveness))
)]
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "alive" })
}
