//! Envoy's rate limit service (RLS v3), as envoyproxy/ratelimit answers it:
//! a `RateLimitRequest` becomes one check request for the core, and the
//! core's decision, with what the rules made of each descriptor, becomes a
//! `RateLimitResponse` with one status per descriptor. The gRPC server
//! ([`grpc`]) and the HTTP `/json` endpoint ([`json`]) both answer through
//! [`Rls::should_rate_limit`]: the request mapped in `request`, the
//! answer built in `response`, envoyproxy/ratelimit's metrics in `stats`.

pub mod grpc;
pub mod json;
mod request;
mod response;
mod stats;
mod tls;
pub mod xds;

pub use request::{check_request, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use response::{current_limit, ok_status, seconds, UNLIMITED_REMAINING};
use stats::Counted;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::web;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

use crate::app::AppState;
use crate::config::EnvoySettings;
use crate::limiter::{Decision, LimiterError, Mark};

/// The `domain` label of `domain_not_found` for every domain the rules do
/// not have: a caller's made-up names never become label values.
pub const UNKNOWN_DOMAIN_LABEL: &str = "unknown";

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
        // Each status's effective window (`t` of the IETF fields).
        let mut windows = Vec::with_capacity(count);
        for (i, mark) in checked.marks.iter().enumerate() {
            let d = &check.descriptors[i];
            let (status, t) = match mark {
                Mark::None => (ok_status(), 0),
                Mark::Unlimited => (
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        limit_remaining: UNLIMITED_REMAINING,
                        ..Default::default()
                    },
                    0,
                ),
                Mark::Banned { label, shadow } => {
                    let verdict = if *shadow {
                        Counted::ShadowOver
                    } else {
                        Counted::Over
                    };
                    self.count(&check.domain, label, d, verdict);
                    let reset = label.unit.seconds() - now % label.unit.seconds();
                    let status = DescriptorStatus {
                        code: if *shadow { Code::Ok } else { Code::OverLimit } as i32,
                        current_limit: Some(current_limit(label)),
                        limit_remaining: 0,
                        duration_until_reset: Some(seconds(reset)),
                        quota: None,
                    };
                    (status, reset)
                }
                Mark::Limited => match (&checked.decision, reported.get(i).copied().flatten()) {
                    (
                        Decision::Allowed(outcome) | Decision::Denied(outcome),
                        Some((allowed, q)),
                    ) => self.limited_status(&check.domain, outcome, q, allowed, d),
                    (Decision::Local { verdict, .. }, _) => {
                        let retry = verdict.retry_after.as_millis().div_ceil(1000) as u64;
                        let status = DescriptorStatus {
                            code: if verdict.allowed {
                                Code::Ok
                            } else {
                                Code::OverLimit
                            } as i32,
                            duration_until_reset: (!verdict.allowed).then(|| seconds(retry)),
                            ..Default::default()
                        };
                        (status, retry)
                    }
                    // Another descriptor is banned: this one was not counted.
                    _ => (ok_status(), 0),
                },
            };
            statuses.push(status);
            windows.push(t);
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
            response_headers_to_add: self.headers(&statuses, &windows, over),
            statuses,
            ..Default::default()
        };
        if over && self.settings.shadow_mode {
            limiter.metrics().envoy.global_shadow_mode.inc();
            response.overall_code = Code::Ok as i32;
        }
        Ok(response)
    }
}
