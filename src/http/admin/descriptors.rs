//! The admin API for the descriptors of Envoy domains, as it is for API keys
//! and IPs: where a descriptor stands, resetting its counters, and an
//! override for it. A descriptor is named by its domain (in the path) and
//! its entries (`?descriptor=k1=v1/k2=v2`, keys and values
//! percent-encoded), e.g. `/admin/descriptors/edge?descriptor=api_key=k1`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::types::{OverrideEntry, ResetReport};
use super::AppState;
use crate::http::errors::{ApiError, ErrorBody};
use crate::http::routes::PolicyStatus;
use crate::limiter::overrides::{self, OverrideSpec};
use crate::limiter::request::parse_path;
use crate::limiter::{CheckRequest, Descriptor, Entry};

/// The `{domain}` of a descriptor path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// An Envoy domain of the configuration (RUNTIME_ROOT).
    #[param(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")]
    domain: String,
}

/// Which descriptor of the domain.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescriptorQuery {
    /// Its entries in order, `key=value` joined by `/`, keys and values
    /// percent-encoded (`api_key=k1`, `remote_address=10.0.0.1/path=%2Fv1`).
    #[param(
        example = "api_key=k1",
        pattern = "^([^%/=]|%[0-9A-Fa-f]{2})+=([^%/]|%[0-9A-Fa-f]{2})*(/([^%/=]|%[0-9A-Fa-f]{2})+=([^%/]|%[0-9A-Fa-f]{2})*){0,63}$"
    )]
    descriptor: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DescriptorReport {
    #[schema(example = "edge")]
    pub domain: String,
    #[schema(example = "api_key=k1")]
    pub descriptor: String,
    /// `limited`, `unlimited` (no limit applies) or `blocked`.
    #[schema(example = "limited")]
    pub status: &'static str,
    /// The admin override of this descriptor, if any.
    #[serde(rename = "override")]
    pub override_spec: Option<OverrideSpec>,
    /// Why the override is not in force; absent when it is or there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_problem: Option<String>,
    /// Its limits, read without counting.
    pub policies: Vec<PolicyStatus>,
}

/// The check request of one descriptor, and the subject its counters and
/// override are stored under.
fn named(
    state: &AppState,
    domain: &str,
    query: &DescriptorQuery,
) -> Result<(CheckRequest, Entry), ApiError> {
    let entries = parse_path(&query.descriptor)
        .filter(|e| e.len() <= crate::envoy::MAX_ENTRIES)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "descriptor: expected key=value entries joined by '/', percent-encoded".into(),
            )
        })?;
    let descriptor = Descriptor::new(entries);
    let subject = state
        .limiter
        .rules()
        .subject(domain, &descriptor)
        .ok_or_else(|| ApiError::NoSuchIdentity(format!("no Envoy domain {domain:?}")))?;
    let request = CheckRequest {
        domain: domain.to_owned().into(),
        descriptors: vec![descriptor],
    };
    Ok((request, subject))
}

fn audit(action: &str, subject: &Entry, detail: &str) {
    let descriptor = overrides::redacted(subject);
    super::audit(
        action,
        format_args!("descriptor={}", descriptor.escape_debug()),
        detail,
    );
}

/// Where one descriptor stands: its limits, remaining and reset, read
/// without counting, and its override.
#[utoipa::path(
    get,
    path = "/admin/descriptors/{domain}",
    tag = "admin",
    params(DomainPath, DescriptorQuery),
    responses(
        (status = 200, description = "Its standing", body = DescriptorReport),
        (status = 400, description = "A malformed descriptor", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such Envoy domain", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn get_descriptor(
    path: web::Path<DomainPath>,
    query: web::Query<DescriptorQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (request, subject) = named(&state, &path.domain, &query)?;
    let (status, policies) = super::standing(&state, &request).await?;
    let found = state.limiter.override_for(&subject);
    Ok(HttpResponse::Ok().json(DescriptorReport {
        domain: path.domain.clone(),
        descriptor: query.descriptor.clone(),
        status,
        override_problem: found.as_ref().and_then(|o| o.problem.clone()),
        override_spec: found.map(|o| o.spec),
        policies,
    }))
}

/// Resets one descriptor's counters (on every instance: cached denials
/// are dropped within a second).
#[utoipa::path(
    delete,
    path = "/admin/descriptors/{domain}",
    tag = "admin",
    params(DomainPath, DescriptorQuery),
    responses(
        (status = 200, description = "Reset", body = ResetReport),
        (status = 400, description = "A malformed descriptor", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such Envoy domain", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn reset_descriptor(
    path: web::Path<DomainPath>,
    query: web::Query<DescriptorQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (request, subject) = named(&state, &path.domain, &query)?;
    let deleted = state
        .limiter
        .reset_descriptors(&request, &subject)
        .await
        .map_err(ApiError::Unavailable)?;
    audit("reset_counters", &subject, &format!("deleted={deleted}"));
    Ok(HttpResponse::Ok().json(ResetReport { deleted }))
}

/// Sets an override for one descriptor on every instance:
/// `{"limit": N, "window": "1m"}` (every limit of the descriptor becomes
/// that), `{"unlimited": true}` or `{"blocked": true}`, each optionally with
/// `"until"`.
#[utoipa::path(
    put,
    path = "/admin/descriptors/{domain}/override",
    tag = "admin",
    params(DomainPath, DescriptorQuery),
    request_body = OverrideSpec,
    responses(
        (status = 200, description = "Stored and in force", body = OverrideEntry),
        (status = 400, description = "Not a valid override, a malformed descriptor", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such Envoy domain", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn put_descriptor_override(
    path: web::Path<DomainPath>,
    query: web::Query<DescriptorQuery>,
    body: web::Json<OverrideSpec>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, subject) = named(&state, &path.domain, &query)?;
    let (response, detail) =
        super::store_override(&state, subject.clone(), body.into_inner()).await?;
    audit("set_override", &subject, &detail);
    Ok(response)
}

/// Removes one descriptor's override on every instance.
#[utoipa::path(
    delete,
    path = "/admin/descriptors/{domain}/override",
    tag = "admin",
    params(DomainPath, DescriptorQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A malformed descriptor", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such Envoy domain, or no override", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn delete_descriptor_override(
    path: web::Path<DomainPath>,
    query: web::Query<DescriptorQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, subject) = named(&state, &path.domain, &query)?;
    let response = super::remove_override(&state, &subject).await?;
    audit("delete_override", &subject, "");
    Ok(response)
}
