//! Envoy's rate limit service (RLS v3), as envoyproxy/ratelimit answers it:
//! a `RateLimitRequest` becomes one check request for the core, and the
//! core's decision, with what the rules made of each descriptor, becomes a
//! `RateLimitResponse` with one status per descriptor. The gRPC server
//! ([`grpc`]) and the HTTP `/json` endpoint ([`json`]) both answer through
//! [`Rls::should_rate_limit`].

pub mod grpc;
pub mod json;

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::web;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use crate::app::AppState;
use crate::config::EnvoySettings;
use crate::limiter::{
    CheckRequest, Decision, Descriptor, LimitOverride, LimiterError, Mark, Outcome,
};
use crate::policy::{Label, Policy, Quota, Unit};

/// Descriptors in one request, entries in one descriptor, bytes in a
/// domain, an entry's key and an entry's value: beyond these a request is
/// refused (INVALID_ARGUMENT) rather than turned into huge Redis keys, metric
/// labels or top-offender names. Why these sizes: a domain and a key are
/// names from the configuration (envoyproxy/ratelimit's own are a few dozen
/// bytes); a value is what Envoy read from the request (an address, a
/// header, a path, a claim), and 1 KiB holds any of those a rule matches
/// on. A Redis key holds the domain and the descriptor's entries, so one
/// key stays within a few KiB, not the 8 KiB per entry these were.
pub const MAX_DESCRIPTORS: usize = 256;
pub const MAX_ENTRIES: usize = 64;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 1024;

/// The `domain` label of `domain_not_found` for every domain the rules do
/// not have: a caller's made-up names never become label values.
pub const UNKNOWN_DOMAIN_LABEL: &str = "unknown";

/// `limit_remaining` of an unlimited descriptor.
const UNLIMITED_REMAINING: u32 = u32::MAX;

/// Why a call gets no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RlsError {
    /// The request is malformed (gRPC INVALID_ARGUMENT, HTTP 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// Redis could not answer, or no configuration is loaded (gRPC
    /// UNAVAILABLE: Envoy's `failure_mode_deny` then decides).
    #[error("{0}")]
    Unavailable(String),
}

/// The rate limit service over the shared core.
#[derive(Clone)]
pub struct Rls {
    state: web::Data<AppState>,
    settings: Arc<EnvoySettings>,
}

impl Rls {
    pub fn new(state: web::Data<AppState>, settings: EnvoySettings) -> Self {
        Rls {
            state,
            settings: Arc::new(settings),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Whether this service answers for `domain` over RLS: a domain of the
    /// rules, and the HTTP API's own only where RLS_HTTP_DOMAIN allows it.
    fn serves(&self, domain: &str) -> bool {
        (self.settings.http_domain || domain != crate::limiter::rules::http::DOMAIN)
            && self.state.limiter.rules().has_domain(domain)
    }

    /// Answers one `ShouldRateLimit` call; `method` labels its metrics.
    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
        method: &str,
    ) -> Result<RateLimitResponse, RlsError> {
        let started = Instant::now();
        let metrics = &self.state.limiter.metrics().envoy;
        metrics.total_requests.with_label_values(&[method]).inc();
        let result = self.answer(request).await;
        if let Err(err) = &result {
            let kind = match err {
                RlsError::InvalidArgument(_) => "service_error",
                RlsError::Unavailable(_) => "redis_error",
            };
            metrics.errors.with_label_values(&[kind]).inc();
        }
        metrics
            .response_time
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn answer(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, RlsError> {
        let check = check_request(request)?;
        let limiter = &self.state.limiter;
        if !self.serves(&check.domain) {
            // Nothing is counted, looked up or remembered for a domain the
            // rules do not have (as envoyproxy/ratelimit answers it: OK,
            // no limit), nor for the HTTP API's own unless RLS_HTTP_DOMAIN.
            // The name a caller chose is no metric label: one label for
            // all of them.
            let label = if check.domain == crate::limiter::rules::http::DOMAIN {
                crate::limiter::rules::http::DOMAIN
            } else {
                UNKNOWN_DOMAIN_LABEL
            };
            limiter
                .metrics()
                .envoy
                .domain_not_found
                .with_label_values(&[label])
                .inc_by(check.descriptors.len() as u64);
            return Ok(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses: vec![ok_status(); check.descriptors.len()],
                ..Default::default()
            });
        }
        let checked = limiter
            .check_marked(&check, true)
            .await
            .map_err(|LimiterError::Unavailable(err)| RlsError::Unavailable(err.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let count = check.descriptors.len();
        let reported = match &checked.decision {
            Decision::Allowed(outcome) | Decision::Denied(outcome) => {
                outcome.per_descriptor_reported(count)
            }
            Decision::Degraded { error, .. } => {
                return Err(RlsError::Unavailable(error.to_string()))
            }
            _ => vec![None; count],
        };
        // A deny-listed subject (an admin override) blocks the whole
        // request before any descriptor is looked at.
        if checked.marks.len() != count {
            let over = DescriptorStatus {
                code: Code::OverLimit as i32,
                ..Default::default()
            };
            return Ok(RateLimitResponse {
                overall_code: if self.settings.shadow_mode {
                    Code::Ok
                } else {
                    Code::OverLimit
                } as i32,
                statuses: vec![over; count],
                ..Default::default()
            });
        }
        let mut statuses = Vec::with_capacity(count);
        for (i, mark) in checked.marks.iter().enumerate() {
            let d = &check.descriptors[i];
            let status = match mark {
                Mark::None => ok_status(),
                Mark::Unlimited => DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: UNLIMITED_REMAINING,
                    ..Default::default()
                },
                Mark::Banned { label, shadow } => {
                    let verdict = if *shadow {
                        Counted::ShadowOver
                    } else {
                        Counted::Over
                    };
                    self.count(&check.domain, label, d, verdict);
                    DescriptorStatus {
                        code: if *shadow { Code::Ok } else { Code::OverLimit } as i32,
                        current_limit: Some(current_limit(label)),
                        limit_remaining: 0,
                        duration_until_reset: Some(seconds(
                            label.unit.seconds() - now % label.unit.seconds(),
                        )),
                        quota: None,
                    }
                }
                Mark::Limited => match (&checked.decision, reported.get(i).copied().flatten()) {
                    (
                        Decision::Allowed(outcome) | Decision::Denied(outcome),
                        Some((allowed, q)),
                    ) => self.limited_status(&check.domain, outcome, q, allowed, d),
                    (Decision::Local { verdict, .. }, _) => DescriptorStatus {
                        code: if verdict.allowed {
                            Code::Ok
                        } else {
                            Code::OverLimit
                        } as i32,
                        duration_until_reset: (!verdict.allowed).then(|| {
                            seconds(verdict.retry_after.as_millis().div_ceil(1000) as u64)
                        }),
                        ..Default::default()
                    },
                    // Another descriptor is banned: this one was not counted.
                    _ => ok_status(),
                },
            };
            statuses.push(status);
        }
        // envoyproxy/ratelimit's rule: over if a descriptor not in quota
        // mode is over, or if every quota-mode descriptor is.
        let quota_mode: Vec<bool> = (0..count)
            .map(
                |i| match (&checked.decision, reported.get(i).copied().flatten()) {
                    (Decision::Allowed(o) | Decision::Denied(o), Some((_, q))) => {
                        o.quotas[q].0.quota_mode()
                    }
                    _ => false,
                },
            )
            .collect();
        let is_over = |s: &DescriptorStatus| s.code == Code::OverLimit as i32;
        let mut quota = statuses
            .iter()
            .zip(&quota_mode)
            .filter(|(_, q)| **q)
            .map(|(s, _)| s)
            .peekable();
        let quota_over = quota.peek().is_some() && quota.all(is_over);
        let over = quota_over
            || statuses
                .iter()
                .zip(&quota_mode)
                .any(|(s, q)| !q && is_over(s));
        let mut response = RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            response_headers_to_add: self.headers(&statuses, over),
            statuses,
            ..Default::default()
        };
        if over && self.settings.shadow_mode {
            limiter.metrics().envoy.global_shadow_mode.inc();
            response.overall_code = Code::Ok as i32;
        }
        Ok(response)
    }

    /// The status of a descriptor the store answered for: the policy
    /// reported for it (its tightest, or the one denying longest).
    fn limited_status(
        &self,
        domain: &str,
        outcome: &Outcome,
        index: usize,
        allowed: bool,
        d: &Descriptor,
    ) -> DescriptorStatus {
        let (policy, quota) = &outcome.quotas[index];
        let label = label_of(policy);
        let over = !quota.allowed;
        let verdict = match (over, policy.shadow()) {
            (false, _) => Counted::Within {
                remaining: quota.remaining,
                limit: quota.limit,
            },
            (true, false) => Counted::Over,
            (true, true) => Counted::ShadowOver,
        };
        self.count(domain, &label, d, verdict);
        DescriptorStatus {
            code: if allowed { Code::Ok } else { Code::OverLimit } as i32,
            current_limit: Some(current_limit(&label)),
            limit_remaining: if over { 0 } else { quota.remaining },
            duration_until_reset: Some(seconds(reset_secs(quota))),
            quota: None,
        }
    }

    /// envoyproxy/ratelimit's per-rule counts (in hits) for one descriptor.
    fn count(&self, domain: &str, label: &Label, d: &Descriptor, verdict: Counted) {
        let Ok(hits) = u64::try_from(d.hits) else {
            return; // a refund counts nothing
        };
        let metrics = &self.state.limiter.metrics().envoy;
        // detailed_metric: the request's values at each level.
        let level = |i: usize| {
            d.entries
                .get(i)
                .map(|(k, v)| format!("{k}_{v}"))
                .unwrap_or_default()
        };
        let (key1, key2) = if label.detailed {
            (Cow::Owned(level(0)), Cow::Owned(level(1)))
        } else {
            (
                Cow::Borrowed(label.key1.as_str()),
                Cow::Borrowed(label.key2.as_str()),
            )
        };
        let labels = metrics.labels(domain, &key1, &key2, label.detailed);
        metrics.total_hits.with_label_values(&labels).inc_by(hits);
        let (remaining, limit) = match verdict {
            Counted::Within { remaining, limit } => (remaining, limit),
            over => {
                metrics.over_limit.with_label_values(&labels).inc_by(hits);
                if over == Counted::ShadowOver {
                    metrics.shadow_mode.with_label_values(&labels).inc_by(hits);
                }
                return;
            }
        };
        metrics.within_limit.with_label_values(&labels).inc_by(hits);
        // After this hit `limit - remaining` are used; past the near-limit
        // share of the limit, the hits beyond it are near_limit ones.
        let near = (f64::from(limit) * self.settings.near_limit_ratio.0).floor() as u64;
        let after = u64::from(limit.saturating_sub(remaining));
        if after > near {
            let before = after.saturating_sub(hits);
            let count = if before >= near { hits } else { after - near };
            metrics.near_limit.with_label_values(&labels).inc_by(count);
        }
    }

    /// LIMIT_RESPONSE_HEADERS_ENABLED's three headers, from the status with
    /// the least remaining; and on OVER_LIMIT `Retry-After` and the IETF
    /// `RateLimit-Policy` / `RateLimit` fields.
    fn headers(&self, statuses: &[DescriptorStatus], over: bool) -> Vec<HeaderValue> {
        let mut headers = Vec::new();
        let limited = || statuses.iter().filter(|s| s.current_limit.is_some());
        let reset = |s: &DescriptorStatus| s.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
        if let Some(names) = &self.settings.limit_headers {
            let closest =
                limited().min_by_key(|s| (s.code != Code::OverLimit as i32, s.limit_remaining));
            if let Some(s) = closest {
                let limit = s.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
                headers.push(header(&names.limit, limit.to_string()));
                headers.push(header(&names.remaining, s.limit_remaining.to_string()));
                headers.push(header(&names.reset, reset(s).to_string()));
            }
        }
        if over {
            let retry_after = statuses
                .iter()
                .filter(|s| s.code == Code::OverLimit as i32)
                .map(reset)
                .max()
                .unwrap_or(1)
                .max(1);
            headers.push(header("retry-after", retry_after.to_string()));
            let (mut policy, mut state) = (String::new(), String::new());
            for (i, s) in limited().enumerate() {
                let Some(limit) = &s.current_limit else {
                    continue;
                };
                let sep = if i > 0 { ", " } else { "" };
                let name = sf_string(&limit.name, i);
                let window = Unit::try_from_code(limit.unit).map_or(1, Unit::seconds);
                let _ = write!(
                    policy,
                    "{sep}{name};q={};w={window}",
                    limit.requests_per_unit
                );
                let _ = write!(state, "{sep}{name};r={};t={}", s.limit_remaining, reset(s));
            }
            if !policy.is_empty() {
                headers.push(header("ratelimit-policy", policy));
                headers.push(header("ratelimit", state));
            }
        }
        headers
    }
}

/// How a descriptor's hits count in envoyproxy/ratelimit's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Within its limit, with what is left of it.
    Within { remaining: u32, limit: u32 },
    /// Over an enforced limit.
    Over,
    /// Over a shadow-mode limit (allowed).
    ShadowOver,
}

/// The check request of a `RateLimitRequest`, or why it is malformed.
pub fn check_request(request: &RateLimitRequest) -> Result<CheckRequest, RlsError> {
    let invalid = |m: &str| Err(RlsError::InvalidArgument(m.to_owned()));
    if request.domain.is_empty() {
        return invalid("rate limit domain must not be empty");
    }
    if request.descriptors.is_empty() {
        return invalid("rate limit descriptor list must not be empty");
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return invalid(&format!(
            "at most {MAX_DESCRIPTORS} descriptors per request"
        ));
    }
    if request.domain.len() > MAX_NAME_BYTES {
        return invalid(&format!("the domain is longer than {MAX_NAME_BYTES} bytes"));
    }
    let default_hits = u64::from(request.hits_addend.max(1));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| descriptor(d, default_hits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CheckRequest {
        domain: Cow::Owned(request.domain.clone()),
        descriptors,
    })
}

fn descriptor(d: &RateLimitDescriptor, default_hits: u64) -> Result<Descriptor, RlsError> {
    let invalid = |m: String| Err(RlsError::InvalidArgument(m));
    if d.entries.len() > MAX_ENTRIES {
        return invalid(format!("at most {MAX_ENTRIES} entries per descriptor"));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    for e in &d.entries {
        if e.key.is_empty() {
            return invalid("a descriptor entry has an empty key".into());
        }
        if e.key.len() > MAX_NAME_BYTES || e.value.len() > MAX_VALUE_BYTES {
            return invalid(format!(
                "a descriptor entry's key is longer than {MAX_NAME_BYTES} bytes or its value longer than {MAX_VALUE_BYTES}"
            ));
        }
        entries.push((Cow::Owned(e.key.clone()), e.value.clone()));
    }
    // Present and 0 is a check that takes nothing; far beyond any limit is
    // as good as u32::MAX.
    let hits = d.hits_addend.as_ref().map_or(default_hits, |h| h.value);
    let hits = i64::from(u32::try_from(hits).unwrap_or(u32::MAX));
    let limit = match &d.limit {
        None => None,
        Some(limit) => {
            let Some(unit) = Unit::from_override_code(limit.unit) else {
                return invalid(
                    "a descriptor's limit needs a unit: SECOND, MINUTE, HOUR, DAY, MONTH or YEAR"
                        .into(),
                );
            };
            Some(LimitOverride {
                requests_per_unit: limit.requests_per_unit,
                unit,
            })
        }
    };
    Ok(Descriptor {
        entries,
        hits: if d.is_negative_hits { -hits } else { hits },
        limit,
    })
}

/// The label of a policy: its rule's, or one made up for a policy of the
/// HTTP domain asked about through Envoy.
fn label_of(policy: &Policy) -> Cow<'_, Label> {
    match policy.label() {
        Some(label) => Cow::Borrowed(label),
        None => Cow::Owned(Label {
            name: policy.name().to_owned(),
            requests_per_unit: policy.limit().get(),
            unit: Unit::base_of(policy.window()),
            stats_key: format!("http.{}", policy.name()),
            key1: policy.name().to_owned(),
            key2: String::new(),
            detailed: false,
            ratelimit_key_prefix: None,
        }),
    }
}

fn current_limit(label: &Label) -> RateLimit {
    RateLimit {
        name: label.name.clone(),
        requests_per_unit: label.requests_per_unit,
        unit: label.unit as i32,
    }
}

fn ok_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

fn seconds(seconds: u64) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Whole seconds until the quota is full again, at least 1 (a window that
/// ends in 300 ms is reported as 1 s, never 0).
fn reset_secs(quota: &Quota) -> u64 {
    quota.reset_secs().max(1)
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    }
}

/// A limit's name as an sf-string (`"name"`), or `"limit-<i>"` when it has
/// none.
fn sf_string(name: &str, index: usize) -> String {
    if name.is_empty() {
        return format!("\"limit-{}\"", index + 1);
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
