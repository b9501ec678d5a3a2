//! The rate-limit middleware: identify the caller, ask the limiter, then
//! either run the handler and add the `X-RateLimit-*` headers, or answer 429.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::errors::ApiError;
use super::AppState;
use crate::identity::{Identifier, Identity, IdentityError, RequestParts};
use crate::limiter::{Decision, LimiterError, Quota};

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// Set when a request was let through without asking Redis (failure mode
/// `open`); its value says why, e.g. `redis-timeout`.
pub const X_RATELIMIT_DEGRADED: HeaderName = HeaderName::from_static("x-ratelimit-degraded");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The 429 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitExceeded {
    #[schema(example = "Rate limit exceeded")]
    pub error: &'static str,
    /// The caller's identifier: its API key, or its IP address.
    #[schema(example = "demo-key")]
    pub identifier: String,
    /// The limit that was reached.
    #[schema(example = 20)]
    pub limit: u32,
    /// Seconds to wait; equal to the `Retry-After` header.
    #[schema(example = 42)]
    pub retry_after: u64,
}

/// Identifies the caller of `req`.
pub fn identify(req: &HttpRequest, identifier: &Identifier) -> Result<Identity, IdentityError> {
    let headers = req.headers();
    let xff: Vec<&[u8]> = values(headers, &X_FORWARDED_FOR);
    let forwarded: Vec<&[u8]> = values(headers, &header::FORWARDED);
    identifier.identify(&RequestParts {
        api_key: headers.get(X_API_KEY).map(HeaderValue::as_bytes),
        x_forwarded_for: &xff,
        forwarded: &forwarded,
        peer: req.peer_addr(),
    })
}

fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    headers.get_all(name).map(HeaderValue::as_bytes).collect()
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds).
pub fn insert_quota_headers(headers: &mut HeaderMap, quota: &Quota) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(quota.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(quota.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(quota.reset_at_unix()));
}

fn too_many_requests(identity: &Identity, quota: &Quota) -> HttpResponse {
    let retry_after = quota.retry_after_secs();
    let mut response = HttpResponse::TooManyRequests()
        .insert_header((header::RETRY_AFTER, retry_after))
        .json(RateLimitExceeded {
            error: "Rate limit exceeded",
            identifier: identity.id.clone(),
            limit: quota.limit,
            retry_after,
        });
    insert_quota_headers(response.headers_mut(), quota);
    response
}

/// Middleware for limited routes (wrap them with `from_fn(rate_limit)`).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered by startup")
        .clone();
    let identity = match identify(req.request(), &state.identifier) {
        Ok(identity) => identity,
        Err(err) => return Ok(req.into_response(ApiError::from(err).error_response())),
    };
    let decision = match state.limiter.check(&identity, 1).await {
        Ok(decision) => decision,
        Err(LimiterError::Unavailable(err)) => {
            return Ok(req.into_response(ApiError::Unavailable(err).error_response()));
        }
    };
    match decision {
        Decision::Allowed(quota) => {
            let mut response = next.call(req).await?.map_into_boxed_body();
            insert_quota_headers(response.headers_mut(), &quota);
            Ok(response)
        }
        Decision::Denied(quota) => Ok(req.into_response(too_many_requests(&identity, &quota))),
        Decision::Degraded(err) => {
            let limit = state.limiter.policy_for(&identity).limit.get();
            let mut response = next.call(req).await?.map_into_boxed_body();
            let headers = response.headers_mut();
            headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
            let reason = match err.kind() {
                "timeout" => "redis-timeout",
                "connection" => "redis-unreachable",
                _ => "redis-error",
            };
            headers.insert(X_RATELIMIT_DEGRADED, HeaderValue::from_static(reason));
            Ok(response)
        }
    }
}
