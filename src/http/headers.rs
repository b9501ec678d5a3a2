//! The headers a decision adds to a response: the quota of the policies
//! that applied (`X-RateLimit-*` and the IETF `RateLimit-Policy` and
//! `RateLimit` fields), and for a request let through without Redis's
//! answer (failure modes `open` and `local`) why.

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web::{BufMut, BytesMut};

use crate::limiter::{Outcome, Policy, StoreError};

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// Set when a request was let through without asking Redis (failure mode
/// `open`); its value says why, e.g. `redis-timeout`.
pub const X_RATELIMIT_DEGRADED: HeaderName = HeaderName::from_static("x-ratelimit-degraded");
/// IETF draft-ietf-httpapi-ratelimit-headers: the policies that apply.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// IETF draft-ietf-httpapi-ratelimit-headers: the state under each policy.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Headers a verdict adds to the response it lets through: a handful, each
/// set once, so a list applied to the response's own map (a map of their
/// own would cost a hash table per request, filled and then emptied).
#[derive(Debug, Default)]
pub struct DecisionHeaders(Vec<(HeaderName, HeaderValue)>);

impl DecisionHeaders {
    /// Sets them on `headers`, each replacing any of its name.
    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.0 {
            headers.insert(name, value);
        }
    }
}

/// Where headers are set: a response's map, or a [`DecisionHeaders`].
pub trait SetHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue);
}

impl SetHeader for HeaderMap {
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

impl SetHeader for DecisionHeaders {
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds) of the
/// reported policy, and the IETF `RateLimit-Policy` / `RateLimit` fields
/// (draft-ietf-httpapi-ratelimit-headers-11) with one item per policy.
///
/// Shadow policies appear in none of them: they decide nothing a client
/// sees except `X-RateLimit-Shadow`.
pub fn insert_quota_headers(headers: &mut impl SetHeader, outcome: &Outcome) {
    let Some((_, quota)) = outcome.enforced_reported() else {
        return;
    };
    // Every value written into one buffer (with itoa: this runs on every
    // decision), then each header given a slice of it: one allocation for
    // the five values instead of one or two each.
    let mut buf = BytesMut::with_capacity(160);
    let mut ends = [0; 5];
    let mut number = itoa::Buffer::new();
    buf.put_slice(number.format(quota.limit).as_bytes());
    ends[0] = buf.len();
    buf.put_slice(number.format(quota.remaining).as_bytes());
    ends[1] = buf.len();
    buf.put_slice(number.format(quota.reset_at_unix()).as_bytes());
    ends[2] = buf.len();
    for (i, (policy, _)) in outcome.enforced().enumerate() {
        if i > 0 {
            buf.put_slice(b", ");
        }
        buf.put_slice(policy.field_item().as_bytes());
    }
    ends[3] = buf.len();
    for (i, (policy, quota)) in outcome.enforced().enumerate() {
        if i > 0 {
            buf.put_slice(b", ");
        }
        let t = quota.effective_window_secs(policy.algorithm(), policy.window());
        buf.put_u8(b'"');
        buf.put_slice(policy.name().as_bytes());
        buf.put_slice(b"\";r=");
        buf.put_slice(number.format(quota.remaining).as_bytes());
        buf.put_slice(b";t=");
        buf.put_slice(number.format(t).as_bytes());
    }
    ends[4] = buf.len();
    let values = buf.freeze();
    let names = [
        X_RATELIMIT_LIMIT,
        X_RATELIMIT_REMAINING,
        X_RATELIMIT_RESET,
        RATELIMIT_POLICY,
        RATELIMIT,
    ];
    let mut start = 0;
    for (name, end) in names.into_iter().zip(ends) {
        if let Ok(value) = HeaderValue::from_maybe_shared(values.slice(start..end)) {
            headers.set(name, value);
        }
        start = end;
    }
}

/// A response decided without Redis: `X-RateLimit-Degraded` says why (and,
/// with `local`, that this instance counted alone), `X-RateLimit-Limit` the
/// tightest limit that applied.
pub(super) fn mark_degraded(
    headers: &mut impl SetHeader,
    error: &StoreError,
    policies: &[Arc<Policy>],
    local: bool,
) {
    if let Some(limit) = enforced_limit(policies) {
        headers.set(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
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
    headers.set(X_RATELIMIT_DEGRADED, HeaderValue::from_static(reason));
}

/// The tightest limit among the enforced policies.
pub(super) fn enforced_limit(policies: &[Arc<Policy>]) -> Option<u32> {
    policies
        .iter()
        .filter(|p| !p.shadow())
        .map(|p| p.limit().get())
        .min()
}
