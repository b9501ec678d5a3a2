//! Concurrency leases over HTTP: a slot of the caller's concurrency
//! policies (`algorithm = "concurrency"`) held while `/api/resource` runs,
//! and explicit leases for work that runs elsewhere: acquire
//! (`POST /api/leases`, 429 with `Retry-After` when full), renew
//! (`PUT /api/leases/{id}`) and release (`DELETE /api/leases/{id}`).
//!
//! A lease lives in Redis with a time-to-live (the policy's `lease`): a
//! holder that dies frees its slot within it. Leases are the caller's own:
//! its identity names the set its ids live in, so nobody can renew or
//! release another caller's.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::caller::{host_of, identify};
use super::errors::{ApiError, ErrorBody};
use super::AppState;
use crate::identity::Caller;
use crate::limiter::{rules, CheckRequest, Decision, LeaseMode, Outcome, Route};

/// The longest lease id accepted, in bytes.
pub const MAX_LEASE_ID: usize = 128;

/// What the request holds, kept in its extensions by the rate-limit
/// middleware: the lease to release when the handler is done.
#[derive(Debug, Clone)]
pub struct HeldLease(pub String);

/// The caller's request for `route`, every descriptor taking, renewing or
/// giving back `lease` with `hits`, as `mode` says.
pub fn lease_request(
    state: &AppState,
    caller: &Caller,
    route: &Route<'_>,
    lease: &str,
    hits: i64,
    mode: LeaseMode,
) -> CheckRequest {
    let mut request = rules::http::request(caller, route, state.limiter.shapes());
    for d in &mut request.descriptors {
        d.lease = Some(lease.to_owned());
        d.hits = hits;
        d.leases = mode;
    }
    request
}

/// Whether an outcome took a concurrency slot.
pub fn holds_lease(outcome: &Outcome) -> bool {
    outcome
        .quotas
        .iter()
        .any(|(p, q)| p.algorithm().is_concurrency() && q.allowed)
}

/// Gives back the slot `lease` holds (the handler is done). A failure is
/// logged: the lease then expires on its own.
pub async fn release(state: &AppState, caller: &Caller, route: &Route<'_>, lease: &str) {
    let request = lease_request(state, caller, route, lease, -1, LeaseMode::OnlyLeases);
    if let Err(err) = state.limiter.check(&request).await {
        log::warn!("lease release failed, it expires on its own: {err}");
    }
}

/// A lease acquired.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lease {
    /// Its id: renew it with `PUT /api/leases/{id}`, release it with
    /// `DELETE`.
    #[schema(example = "8f0c2d0e-2b9d-4d7e-9d55-0a6a3f1f5c11")]
    pub lease: String,
    /// Milliseconds it lasts unless renewed (the shortest lease of the
    /// caller's concurrency policies); none when no concurrency policy
    /// applies to the caller.
    #[schema(example = 30000)]
    pub ttl_ms: Option<u64>,
    /// Slots still free under the tightest concurrency policy.
    #[schema(example = 2)]
    pub remaining: Option<u32>,
}

fn route_of(req: &HttpRequest) -> (Option<String>,) {
    (host_of(req.headers().get(header::HOST)),)
}

/// The leases of `POST /api/resource`: the caller's concurrency policies
/// there.
fn resource_route(host: Option<&str>) -> Route<'_> {
    Route {
        method: "POST",
        path: "/api/resource",
        host,
    }
}

fn lease_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty()
        || id.len() > MAX_LEASE_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ApiError::BadRequest(format!(
            "a lease id is 1 to {MAX_LEASE_ID} characters of letters, digits, '-', '_', '.', ':'"
        )));
    }
    Ok(id)
}

/// The concurrency quotas of an outcome: (shortest lease, least remaining).
fn lease_terms(outcome: &Outcome) -> (Option<u64>, Option<u32>) {
    let slots = outcome
        .quotas
        .iter()
        .filter(|(p, _)| p.algorithm().is_concurrency());
    let ttl = slots.clone().map(|(p, _)| p.window_ms()).min();
    let remaining = slots.map(|(_, q)| q.remaining).min();
    (ttl, remaining)
}

/// Takes a slot of the caller's concurrency policies.
#[utoipa::path(
    post,
    path = "/api/leases",
    tag = "leases",
    params(
        ("X-API-Key" = Option<String>, Header, description = "The caller, as for /api/resource", max_length = 256, pattern = "^[ -~]*$"),
    ),
    responses(
        (status = 201, description = "A slot is held until released, renewed or expired", body = Lease),
        (status = 400, description = "An unusable X-API-Key", body = ErrorBody),
        (status = 401, description = "A bearer token that does not verify", body = ErrorBody),
        (status = 429, description = "Every slot is held; Retry-After says when the first lease expires", body = super::ratelimit::RateLimitExceeded),
        (status = 503, description = "Redis cannot answer (failure mode closed)", body = ErrorBody),
    )
)]
pub async fn acquire(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, &state.identifier)?;
    let (host,) = route_of(&req);
    let id = uuid::Uuid::new_v4().to_string();
    if !state.limiter.shapes().leases {
        // No concurrency policy: nothing to hold, nothing to ask Redis.
        return Ok(HttpResponse::Created().json(Lease {
            lease: id,
            ttl_ms: None,
            remaining: None,
        }));
    }
    let route = resource_route(host.as_deref());
    let request = lease_request(&state, &caller, &route, &id, 1, LeaseMode::OnlyLeases);
    let decision = state
        .limiter
        .check(&request)
        .await
        .map_err(|crate::limiter::LimiterError::Unavailable(e)| ApiError::Unavailable(e))?;
    let (ttl_ms, remaining) = match &decision {
        Decision::Allowed(outcome) => lease_terms(outcome),
        Decision::Denied(outcome) => {
            let retry = outcome.retry_after_secs();
            let (_, quota) = outcome.reported();
            return Ok(HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, retry))
                .json(super::ratelimit::RateLimitExceeded {
                    error: "Every slot is held",
                    identifier: caller.identity.id.clone(),
                    limit: quota.limit,
                    retry_after: retry,
                }));
        }
        Decision::Blocked => return Err(ApiError::Blocked),
        _ => (None, None),
    };
    Ok(HttpResponse::Created().json(Lease {
        lease: id,
        ttl_ms,
        remaining,
    }))
}

/// Renews a lease the caller holds: it lasts another full lease.
#[utoipa::path(
    put,
    path = "/api/leases/{id}",
    tag = "leases",
    params(("id" = String, Path, description = "The lease id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")),
    responses(
        (status = 200, description = "Renewed (or no concurrency policy applies)", body = Lease),
        (status = 400, description = "An unusable id or X-API-Key", body = ErrorBody),
        (status = 404, description = "The lease is not held: it expired or was released", body = ErrorBody),
        (status = 503, description = "Redis cannot answer (failure mode closed)", body = ErrorBody),
    )
)]
pub async fn renew(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, &state.identifier)?;
    let id = lease_id(&id)?.to_owned();
    if !state.limiter.shapes().leases {
        return Ok(HttpResponse::Ok().json(Lease {
            lease: id,
            ttl_ms: None,
            remaining: None,
        }));
    }
    let (host,) = route_of(&req);
    let route = resource_route(host.as_deref());
    let request = lease_request(&state, &caller, &route, &id, 0, LeaseMode::OnlyLeases);
    let decision = state
        .limiter
        .check(&request)
        .await
        .map_err(|crate::limiter::LimiterError::Unavailable(e)| ApiError::Unavailable(e))?;
    let (ttl_ms, remaining) = match &decision {
        Decision::Allowed(outcome) => lease_terms(outcome),
        Decision::Denied(_) => {
            // The lease is not held: it expired or was released.
            return Err(ApiError::NotFound);
        }
        Decision::Blocked => return Err(ApiError::Blocked),
        _ => (None, None),
    };
    Ok(HttpResponse::Ok().json(Lease {
        lease: id,
        ttl_ms,
        remaining,
    }))
}

/// Releases a lease the caller holds (a lease already gone frees nothing).
#[utoipa::path(
    delete,
    path = "/api/leases/{id}",
    tag = "leases",
    params(("id" = String, Path, description = "The lease id", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")),
    responses(
        (status = 204, description = "Released"),
        (status = 400, description = "An unusable id or X-API-Key", body = ErrorBody),
        (status = 503, description = "Redis cannot answer (failure mode closed)", body = ErrorBody),
    )
)]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, &state.identifier)?;
    let id = lease_id(&id)?;
    if !state.limiter.shapes().leases {
        return Ok(HttpResponse::NoContent().finish());
    }
    let (host,) = route_of(&req);
    let route = resource_route(host.as_deref());
    let request = lease_request(&state, &caller, &route, id, -1, LeaseMode::OnlyLeases);
    state
        .limiter
        .check(&request)
        .await
        .map_err(|crate::limiter::LimiterError::Unavailable(e)| ApiError::Unavailable(e))?;
    Ok(HttpResponse::NoContent().finish())
}
