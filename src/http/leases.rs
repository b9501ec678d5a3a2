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
use crate::limiter::{rules, CheckRequest, Decision, LeaseMode, LimiterError, Outcome, Route};

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

/// Asks about the caller's lease `id` with `hits` (1 acquire, 0 renew,
/// -1 release) under its policies of `POST /api/resource`, as `mode` says;
/// None when no concurrency policy exists (nothing to hold, nothing to ask
/// Redis).
async fn lease_call(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    id: &str,
    hits: i64,
    mode: LeaseMode,
) -> Result<Option<Decision>, ApiError> {
    if !state.limiter.shapes().leases {
        return Ok(None);
    }
    let host = host_of(req.headers().get(header::HOST));
    let route = Route {
        method: "POST",
        path: "/api/resource",
        host: host.as_deref(),
    };
    let request = lease_request(state, caller, &route, id, hits, mode);
    match state.limiter.check(&request).await {
        Ok(decision) => Ok(Some(decision)),
        Err(LimiterError::Unavailable(err)) => Err(ApiError::Unavailable(err)),
    }
}

/// The body of a held (or renewed) lease.
fn lease_body(id: String, decision: Option<&Decision>) -> Lease {
    let (ttl_ms, remaining) = match decision {
        Some(Decision::Allowed(outcome)) => lease_terms(outcome),
        _ => (None, None),
    };
    Lease {
        lease: id,
        ttl_ms,
        remaining,
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
        (status = 429, description = "Every slot is held (Retry-After: when the first lease expires), or a rate policy of the caller's is spent", body = super::ratelimit::RateLimitExceeded),
        (status = 503, description = "Redis cannot answer (failure mode closed)", body = ErrorBody),
    )
)]
pub async fn acquire(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, &state)?;
    let id = uuid::Uuid::new_v4().to_string();
    // An acquire is a request of the caller's: its rate policies charge it
    // too, so inventing keys cannot make Redis hold lease sets at will (a
    // per-IP policy refuses the flood before any set is written).
    let decision = lease_call(&req, &state, &caller, &id, 1, LeaseMode::All).await?;
    match &decision {
        Some(Decision::Denied(outcome)) => {
            let (policy, _) = outcome.reported();
            let error = if policy.algorithm().is_concurrency() {
                "Every slot is held"
            } else {
                "Rate limit exceeded"
            };
            return Ok(super::ratelimit::refusal(error, &caller.identity, outcome));
        }
        Some(Decision::Blocked) => return Err(ApiError::Blocked),
        _ => {}
    }
    Ok(HttpResponse::Created().json(lease_body(id, decision.as_ref())))
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
    let caller = identify(&req, &state)?;
    let id = lease_id(&id)?.to_owned();
    let decision = lease_call(&req, &state, &caller, &id, 0, LeaseMode::OnlyLeases).await?;
    match &decision {
        // The lease is not held: it expired or was released.
        Some(Decision::Denied(_)) => return Err(ApiError::NotFound),
        Some(Decision::Blocked) => return Err(ApiError::Blocked),
        _ => {}
    }
    Ok(HttpResponse::Ok().json(lease_body(id, decision.as_ref())))
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
    let caller = identify(&req, &state)?;
    let id = lease_id(&id)?;
    lease_call(&req, &state, &caller, id, -1, LeaseMode::OnlyLeases).await?;
    Ok(HttpResponse::NoContent().finish())
}
