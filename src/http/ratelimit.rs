//! The rate-limit middleware: identify the caller, ask the limiter, then
//! either run the handler and add the `X-RateLimit-*` headers, or answer 429.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::caller::{host_of, identify, route_of};
use super::errors::ApiError;
use super::headers::{
    enforced_limit, insert_quota_headers, mark_degraded, DecisionHeaders, SetHeader,
    X_RATELIMIT_REMAINING,
};
use super::{app_state, AppState};
use crate::identity::{Caller, Identity};

use crate::limiter::{rules, Decision, LimiterError, Outcome, Policy, Route};
use crate::telemetry::Metrics;

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

fn too_many_requests(identity: &Identity, outcome: &Outcome) -> HttpResponse {
    refusal("Rate limit exceeded", identity, outcome)
}

/// A 429 saying `error`, with `Retry-After` and the quota headers of
/// `outcome` (a rate limit reached, every concurrency slot held).
pub(super) fn refusal(error: &'static str, identity: &Identity, outcome: &Outcome) -> HttpResponse {
    let retry_after = outcome.retry_after_secs();
    let (_, quota) = outcome.reported();
    let mut response = HttpResponse::TooManyRequests()
        .insert_header((header::RETRY_AFTER, retry_after))
        .json(RateLimitExceeded {
            error,
            identifier: identity.id.clone(),
            limit: quota.limit,
            retry_after,
        });
    insert_quota_headers(response.headers_mut(), outcome);
    response
}

/// What the rate limiter decided for a request, for the access log
/// (kept in the request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitInfo {
    pub strategy: &'static str,
    pub decision: &'static str,
}

/// The names of the policies a decision involved, for a traced request's
/// span (kept in the request's extensions only when tracing is on).
#[derive(Debug, Clone, Default)]
pub struct PolicyNames(pub Vec<String>);

/// Counts one decision under every policy it involved (labels: strategy,
/// policy name from the configuration, decision; never a client value), and
/// notes it in the request for the access log (and the trace).
fn record<'a>(
    req: &HttpRequest,
    metrics: &Metrics,
    strategy: &'static str,
    policies: impl IntoIterator<Item = &'a Policy>,
    decision: &'static str,
) {
    let traced = crate::traces::traced();
    let mut names = Vec::new();
    let mut any = false;
    for policy in policies {
        any = true;
        metrics
            .decisions
            .with_label_values(&[strategy, policy.name(), decision])
            .inc();
        if traced {
            names.push(policy.name().to_owned());
        }
    }
    if traced {
        req.extensions_mut().insert(PolicyNames(names));
    }
    if !any {
        metrics
            .decisions
            .with_label_values(&[strategy, "none", decision])
            .inc();
    }
    // Read only by the access log line and the trace: a box per request
    // saved when neither is written.
    if traced || log::log_enabled!(target: super::access::ACCESS_TARGET, log::Level::Info) {
        req.extensions_mut()
            .insert(LimitInfo { strategy, decision });
    }
}

/// `X-RateLimit-Shadow` on a request that shadow policies would have denied:
/// a Structured Field list of their names.
pub const X_RATELIMIT_SHADOW: HeaderName = HeaderName::from_static("x-ratelimit-shadow");

/// What the limiter's decision means for one HTTP request.
pub enum Verdict {
    /// Go ahead: serve the request and add these headers to its response.
    Pass(DecisionHeaders),
    /// Answer this instead (429, 403, 503).
    Answer(HttpResponse),
}

/// Middleware for limited routes (wrap them with `from_fn(rate_limit)`).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = app_state(&req);
    let caller = match identify(req.request(), &state) {
        Ok(caller) => caller,
        Err(err) => return Ok(req.into_response(ApiError::from(err).error_response())),
    };
    // The route and the host only when some policy is scoped to one (most
    // rules scope none): the descriptors have no place for them otherwise.
    let shapes = state.limiter.shapes();
    let (method, path) = if shapes.route || shapes.path {
        route_of(req.request())
    } else {
        Default::default()
    };
    let host = shapes
        .host
        .then(|| host_of(req.headers().get(header::HOST)))
        .flatten();
    let route = Route {
        method: &method,
        path: &path,
        host: host.as_deref(),
    };
    // The request holds a slot of the caller's concurrency policies while
    // it runs (a lease named by a fresh id), given back when it is done.
    let lease = shapes.leases.then(|| uuid::Uuid::new_v4().to_string());
    match verdict(
        req.request(),
        &state,
        &caller,
        &route,
        shapes,
        lease.as_deref(),
    )
    .await
    {
        Verdict::Answer(response) => Ok(req.into_response(response)),
        Verdict::Pass(headers) => {
            let held = req.extensions().get::<super::leases::HeldLease>().is_some();
            let result = next.call(req).await;
            if let Some(lease) = lease.filter(|_| held) {
                super::leases::release(&state, &caller, &route, &lease).await;
            }
            let mut response = result?.map_into_boxed_body();
            headers.apply(response.headers_mut());
            Ok(response)
        }
    }
}

/// Asks the limiter about `caller` on `route` and turns the decision into
/// headers or an answer; counts it, and notes it in `req` for the access
/// log. Every HTTP front end (the limited routes, forward-auth) uses it.
/// With `lease`, concurrency policies take a slot under that id (noted in
/// `req` as [`super::leases::HeldLease`], for the caller to release);
/// without, they are only read (forward-auth never learns when the request
/// ends). `shapes` are the rules' as `route` was made for them.
pub async fn verdict(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    route: &Route<'_>,
    shapes: rules::Shapes,
    lease: Option<&str>,
) -> Verdict {
    let identity = &caller.identity;
    let strategy = identity.strategy.as_str();
    let metrics = state.limiter.metrics();
    let mut request = rules::http::request(caller, route, shapes);
    if shapes.leases {
        for d in &mut request.descriptors {
            match lease {
                Some(id) => d.lease = Some(id.to_owned()),
                None => d.leases = crate::limiter::LeaseMode::ReadLeases,
            }
        }
    }
    let decision = match state.limiter.check(&request).await {
        Ok(decision) => decision,
        Err(LimiterError::Unavailable(err)) => {
            record(req, metrics, strategy, [], "unavailable");
            return Verdict::Answer(ApiError::Unavailable(err).error_response());
        }
    };
    let mut headers = DecisionHeaders::default();
    match decision {
        Decision::Allowed(outcome) => {
            let shadow_denied: Vec<&str> = outcome
                .quotas
                .iter()
                .filter(|(p, q)| p.shadow() && !q.allowed)
                .map(|(p, _)| p.name())
                .collect();
            let label = if shadow_denied.is_empty() {
                "allowed"
            } else {
                "shadow_denied"
            };
            record(
                req,
                metrics,
                strategy,
                outcome.quotas.iter().map(|(p, _)| p.as_ref()),
                label,
            );
            for (policy, quota) in &outcome.quotas {
                // Near the limit: less than 20 % left.
                if quota.allowed && u64::from(quota.remaining) * 5 < u64::from(quota.limit) {
                    metrics
                        .near_limit
                        .with_label_values(&[strategy, policy.name()])
                        .inc();
                }
            }
            insert_quota_headers(&mut headers, &outcome);
            if let Some(id) = lease.filter(|_| super::leases::holds_lease(&outcome)) {
                req.extensions_mut()
                    .insert(super::leases::HeldLease(id.to_owned()));
            }
            if !shadow_denied.is_empty() {
                let names: Vec<String> = shadow_denied.iter().map(|n| format!("\"{n}\"")).collect();
                if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
                    headers.set(X_RATELIMIT_SHADOW, value);
                }
            }
            Verdict::Pass(headers)
        }
        Decision::Denied(outcome) => {
            record(
                req,
                metrics,
                strategy,
                outcome.quotas.iter().map(|(p, _)| p.as_ref()),
                "denied",
            );
            Verdict::Answer(too_many_requests(identity, &outcome))
        }
        Decision::Unlimited => {
            record(req, metrics, strategy, [], "unlimited");
            Verdict::Pass(headers)
        }
        Decision::Blocked => {
            record(req, metrics, strategy, [], "blocked");
            Verdict::Answer(ApiError::Blocked.error_response())
        }
        Decision::Degraded { error, policies } => {
            record(
                req,
                metrics,
                strategy,
                policies.iter().map(|p| p.as_ref()),
                "degraded",
            );
            mark_degraded(&mut headers, &error, &policies, false);
            Verdict::Pass(headers)
        }
        Decision::Local {
            error,
            verdict,
            policies,
        } if verdict.allowed => {
            record(
                req,
                metrics,
                strategy,
                policies.iter().map(|p| p.as_ref()),
                "local_allowed",
            );
            mark_degraded(&mut headers, &error, &policies, true);
            Verdict::Pass(headers)
        }
        Decision::Local {
            error,
            verdict,
            policies,
        } => {
            record(
                req,
                metrics,
                strategy,
                policies.iter().map(|p| p.as_ref()),
                "local_denied",
            );
            let retry_after = (verdict.retry_after.as_millis() as u64)
                .div_ceil(1000)
                .max(1);
            let limit = enforced_limit(&policies).unwrap_or(0);
            let mut response = HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, retry_after))
                .json(RateLimitExceeded {
                    error: "Rate limit exceeded",
                    identifier: identity.id.clone(),
                    limit,
                    retry_after,
                });
            let headers = response.headers_mut();
            mark_degraded(headers, &error, &policies, true);
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(0u32));
            Verdict::Answer(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::BoxBody;
    use actix_web::dev::ServiceRequest;
    use actix_web::middleware::Next;

    use crate::limiter::{CheckRequest, Limiter};
    use crate::redis::RedisStore;

    /// The size of what `f` returns.
    fn returned_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every middleware boxes and moves the future of the layer inside it,
    /// and a request waiting on Redis holds it: a store call through the
    /// breaker, held twice, and the sliced check inline made the rate-limit
    /// layer's 4.6 KB (BENCHMARKS.md, third round). A bound, not a timing.
    #[test]
    fn a_requests_futures_stay_small() {
        fn check<'a>(
            limiter: &'a Limiter<RedisStore>,
            request: &'a CheckRequest,
        ) -> impl std::future::Future + 'a {
            limiter.check(request)
        }
        let rate_limit =
            returned_size(|req: ServiceRequest, next: Next<BoxBody>| super::rate_limit(req, next));
        let check = returned_size(check);
        assert!(
            rate_limit <= 2048,
            "rate_limit's future: {rate_limit} bytes"
        );
        assert!(check <= 1536, "the check's future: {check} bytes");
    }
}
