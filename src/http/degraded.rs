//! The headers of a request let through without Redis's answer (failure
//! modes `open` and `local`).

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderValue};

use super::ratelimit::{X_RATELIMIT_DEGRADED, X_RATELIMIT_LIMIT};
use crate::limiter::{Policy, StoreError};

/// A response decided without Redis: `X-RateLimit-Degraded` says why (and,
/// with `local`, that this instance counted alone), `X-RateLimit-Limit` the
/// tightest limit that applied.
pub(super) fn mark_degraded(
    headers: &mut HeaderMap,
    error: &StoreError,
    policies: &[Arc<Policy>],
    local: bool,
) {
    if let Some(limit) = enforced_limit(policies) {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    }
    let reason = match (error, local) {
        (StoreError::Timeout(_), false) => "redis-timeout",
        (StoreError::Connection(_), false) => "redis-unreachable",
        (StoreError::CircuitOpen, false) => "redis-circuit-open",
        (StoreError::Auth(_), false) => "redis-auth",
        (_, false) => "redis-error",
        (StoreError::Timeout(_), true) => "redis-timeout; local",
        (StoreError::Connection(_), true) => "redis-unreachable; local",
        (StoreError::CircuitOpen, true) => "redis-circuit-open; local",
        (StoreError::Auth(_), true) => "redis-auth; local",
        (_, true) => "redis-error; local",
    };
    headers.insert(X_RATELIMIT_DEGRADED, HeaderValue::from_static(reason));
}

/// The tightest limit among the enforced policies.
pub(super) fn enforced_limit(policies: &[Arc<Policy>]) -> Option<u32> {
    policies
        .iter()
        .filter(|p| !p.shadow())
        .map(|p| p.limit().get())
        .min()
}
