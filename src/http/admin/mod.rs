//! The admin API under `/admin`: inspect and reset an identity, and set
//! overrides that every instance applies. Mounted only when ADMIN_TOKEN is
//! set (otherwise the whole tree is a 404); every call needs
//! `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time. Each
//! change writes one audit log line (target `audit`): who, what, when;
//! never the token, never a full API key.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, Error, HttpResponse, ResponseError};

pub mod descriptors;
pub mod top;
mod types;

pub use types::{IdentityPath, IdentityReport, OverrideEntry, ResetReport, StrategyName};

use super::routes::policy_statuses;
use super::{app_state, not_allowed, AppState};
use crate::http::errors::{ApiError, ErrorBody};
use crate::identity::{Identity, IdentityParseError, Strategy};
use crate::limiter::overrides::OverrideSpec;
use crate::limiter::{rules, AdminError, CheckRequest, Entry, OverrideState, Standing};

/// Largest admin request body (an override is a few dozen bytes).
const MAX_ADMIN_BODY_BYTES: usize = 16 * 1024;

/// Who made a change, for the audit log. There is one token, so one admin.
const ACTOR: &str = "admin";

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = app_state(&req);
    let authorized =
        super::planes::has_admin_token(&state, req.headers().get(header::AUTHORIZATION));
    if !authorized {
        return Ok(req
            .into_response(ApiError::Unauthorized.error_response())
            .map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// The subject (descriptor entry) of an identity: `(strategy, id)`.
fn subject(identity: &Identity) -> Entry {
    (identity.strategy.as_str().into(), identity.id.clone())
}

/// The identity named by `{strategy}/{id}` in a path.
fn identity(strategy: &str, id: &str) -> Result<Identity, ApiError> {
    let strategy: Strategy = strategy
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("unknown strategy: {e}")))?;
    Identity::parse(strategy, id).map_err(|err| match err {
        // A valid path (the schema cannot tie the id's form to the
        // strategy) that names no identity: there is no such resource.
        IdentityParseError::NotAnIp => {
            ApiError::NoSuchIdentity(format!("{id:?} is not an IP address"))
        }
        other => ApiError::BadRequest(format!("the identifier {other}")),
    })
}

/// Where `request` stands, read without counting: `limited` (with every
/// policy), `unlimited` or `blocked`.
pub(super) async fn standing(
    state: &AppState,
    request: &CheckRequest,
) -> Result<(&'static str, Vec<crate::http::routes::PolicyStatus>), ApiError> {
    let standing = state
        .limiter
        .status(request)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(described(&standing))
}

/// A standing as the admin API reports it: its status and every policy.
fn described(standing: &Standing) -> (&'static str, Vec<crate::http::routes::PolicyStatus>) {
    match standing {
        Standing::Limited(outcome) => ("limited", policy_statuses(outcome)),
        Standing::Unlimited => ("unlimited", Vec::new()),
        Standing::Blocked => ("blocked", Vec::new()),
    }
}

/// Sets `spec` as `subject`'s override on every instance; the stored
/// entry, answered, and the spec as the audit line shows it.
pub(super) async fn store_override(
    state: &AppState,
    subject: Entry,
    spec: OverrideSpec,
) -> Result<(HttpResponse, String), ApiError> {
    state
        .limiter
        .set_override(&subject, &spec)
        .await
        .map_err(|err| match err {
            AdminError::Invalid(problem) => ApiError::BadRequest(problem),
            AdminError::Store(err) => ApiError::Unavailable(err),
        })?;
    let detail = serde_json::to_string(&spec).unwrap_or_default();
    let entry = OverrideEntry::new(
        subject,
        OverrideState {
            spec,
            problem: None,
        },
    );
    Ok((HttpResponse::Ok().json(entry), detail))
}

/// Removes `subject`'s override on every instance: 204, or 404 when it
/// had none.
pub(super) async fn remove_override(
    state: &AppState,
    subject: &Entry,
) -> Result<HttpResponse, ApiError> {
    let existed = state
        .limiter
        .delete_override(subject)
        .await
        .map_err(ApiError::Unavailable)?;
    if !existed {
        return Err(ApiError::NotFound);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// One audit line: who (the one admin), `action`, on what (`target`,
/// e.g. `identity=user:abcd…`, never a whole key), when, and `detail`.
pub(super) fn audit(action: &str, target: std::fmt::Arguments<'_>, detail: &str) {
    log::info!(
        target: "audit",
        "actor={ACTOR} action={action} {target} at={} {detail}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
    );
}

/// Why is this customer limited? Every policy that applies, with limit,
/// remaining and reset, read without consuming.
#[utoipa::path(
    get,
    path = "/admin/identities/{strategy}/{id}",
    tag = "admin",
    params(IdentityPath),
    responses(
        (status = 200, description = "Its standing", body = IdentityReport),
        (status = 400, description = "Unknown strategy", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "An `ip` id that is not an IP address: no such identity", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn get_identity(
    path: web::Path<IdentityPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&path.strategy, &path.id)?;
    // Every policy that may count it, whatever route or host it is
    // scoped to (forward-auth's routes too).
    let standing = state
        .limiter
        .identity_status(&rules::http::subjects(&identity))
        .await
        .map_err(ApiError::Unavailable)?;
    let (status, policies) = described(&standing);
    let override_state = state.limiter.override_for(&subject(&identity));
    Ok(HttpResponse::Ok().json(IdentityReport {
        strategy: identity.strategy.as_str(),
        override_problem: override_state.as_ref().and_then(|o| o.problem.clone()),
        override_spec: override_state.map(|o| o.spec),
        identifier: identity.id,
        status,
        policies,
    }))
}

/// Resets an identity's counters under every policy that applies to it.
#[utoipa::path(
    delete,
    path = "/admin/identities/{strategy}/{id}",
    tag = "admin",
    params(IdentityPath),
    responses(
        (status = 200, description = "Reset", body = ResetReport),
        (status = 400, description = "Unknown strategy", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "An `ip` id that is not an IP address: no such identity", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn reset_identity(
    path: web::Path<IdentityPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&path.strategy, &path.id)?;
    let deleted = state
        .limiter
        .reset_identity(&rules::http::subjects(&identity))
        .await
        .map_err(ApiError::Unavailable)?;
    audit(
        "reset_counters",
        format_args!("identity={}", identity.redacted()),
        &format!("deleted={deleted}"),
    );
    Ok(HttpResponse::Ok().json(ResetReport { deleted }))
}

/// Sets an override for one identity on every instance (each rereads them
/// every second): `{"limit": N, "window": "1m"}`, `{"unlimited": true}` or
/// `{"blocked": true}`, each optionally with `"until": <Unix seconds>`.
#[utoipa::path(
    put,
    path = "/admin/overrides/{strategy}/{id}",
    tag = "admin",
    params(IdentityPath),
    request_body = OverrideSpec,
    responses(
        (status = 200, description = "Stored and in force", body = OverrideEntry),
        (status = 400, description = "Not a valid override, an unknown strategy", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "An `ip` id that is not an IP address: no such identity", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn put_override(
    path: web::Path<IdentityPath>,
    body: web::Json<OverrideSpec>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&path.strategy, &path.id)?;
    let (response, detail) = store_override(&state, subject(&identity), body.into_inner()).await?;
    audit(
        "set_override",
        format_args!("identity={}", identity.redacted()),
        &detail,
    );
    Ok(response)
}

/// The override of one identity.
#[utoipa::path(
    get,
    path = "/admin/overrides/{strategy}/{id}",
    tag = "admin",
    params(IdentityPath),
    responses(
        (status = 200, description = "The override", body = OverrideEntry),
        (status = 400, description = "Unknown strategy", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No override for this identity, or an `ip` id that is not an IP address", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn get_override(
    path: web::Path<IdentityPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&path.strategy, &path.id)?;
    let found = state
        .limiter
        .override_for(&subject(&identity))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(OverrideEntry::new(subject(&identity), found)))
}

/// Removes one identity's override on every instance.
#[utoipa::path(
    delete,
    path = "/admin/overrides/{strategy}/{id}",
    tag = "admin",
    params(IdentityPath),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Unknown strategy", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No override for this identity, or an `ip` id that is not an IP address", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn delete_override(
    path: web::Path<IdentityPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&path.strategy, &path.id)?;
    let response = remove_override(&state, &subject(&identity)).await?;
    audit(
        "delete_override",
        format_args!("identity={}", identity.redacted()),
        "",
    );
    Ok(response)
}

/// Every unexpired override, each saying whether it is in force.
#[utoipa::path(
    get,
    path = "/admin/overrides",
    tag = "admin",
    responses(
        (status = 200, description = "All overrides", body = [OverrideEntry]),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn list_overrides(state: web::Data<AppState>) -> HttpResponse {
    let entries: Vec<OverrideEntry> = state
        .limiter
        .overrides()
        .into_iter()
        .map(|(identity, found)| OverrideEntry::new(identity, found))
        .collect();
    HttpResponse::Ok().json(entries)
}

/// The `/admin` tree, behind the bearer token.
pub fn scope() -> actix_web::Scope<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    web::scope("/admin")
        .wrap(from_fn(require_token))
        .wrap(from_fn(|req, next| {
            super::body::buffer(req, next, MAX_ADMIN_BODY_BYTES)
        }))
        .app_data(
            web::JsonConfig::default()
                .limit(MAX_ADMIN_BODY_BYTES)
                .error_handler(|err, _| ApiError::InvalidJson(err.to_string()).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|err, _| ApiError::BadRequest(format!("path: {err}")).into()),
        )
        .service(
            web::resource("/overrides")
                .route(web::get().to(list_overrides))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/identities/{strategy}/{id}")
                .route(web::get().to(get_identity))
                .route(web::delete().to(reset_identity))
                .default_service(not_allowed("GET, DELETE")),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _| ApiError::BadRequest(format!("query: {err}")).into()),
        )
        .service(
            web::resource("/top")
                .route(web::get().to(top::get_top))
                .default_service(not_allowed("GET")),
        )
        .service(
            web::resource("/descriptors/{domain}")
                .route(web::get().to(descriptors::get_descriptor))
                .route(web::delete().to(descriptors::reset_descriptor))
                .default_service(not_allowed("GET, DELETE")),
        )
        .service(
            web::resource("/descriptors/{domain}/override")
                .route(web::put().to(descriptors::put_descriptor_override))
                .route(web::delete().to(descriptors::delete_descriptor_override))
                .default_service(not_allowed("PUT, DELETE")),
        )
        .service(
            web::resource("/overrides/{strategy}/{id}")
                .route(web::put().to(put_override))
                .route(web::get().to(get_override))
                .route(web::delete().to(delete_override))
                .default_service(not_allowed("PUT, GET, DELETE")),
        )
}
