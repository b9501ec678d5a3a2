//! Who may reach what: every route belongs to one plane, and each plane is
//! reachable only by those it is meant for (README, "Security model").
//!
//! - **Public**: the seed's API to end clients, health and the docs. Anyone.
//! - **Decision**: the APIs trusted callers ask for decisions. Forward-auth
//!   and `POST /json` answer peers in TRUSTED_PROXIES (`JSON_API=open`
//!   serves `/json` to anyone, `off` not at all); gRPC is its own listener.
//! - **Operator**: `/admin` (the admin token, always), and what the operator
//!   reads (`/metrics`, `/rlconfig`, `/dashboard/stats`): the admin token,
//!   or a peer in OPERATOR_NETWORKS (loopback by default).
//!
//! Trust comes from the connection's peer address or a credential, never
//! from what a request says about itself (a forwarding header).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{Error, HttpRequest, ResponseError};
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::AppState;
use crate::config::JsonApi;

/// Whether `authorization` carries the admin token (compared in constant
/// time; never with no token configured).
pub fn has_admin_token(state: &AppState, authorization: Option<&header::HeaderValue>) -> bool {
    match (
        authorization.and_then(|v| bearer_token(v.as_bytes())),
        state.admin_token.as_deref(),
    ) {
        (Some(presented), Some(expected)) => bool::from(presented.ct_eq(expected.as_bytes())),
        _ => false,
    }
}

/// The token of an `Authorization: Bearer <token>` value (not empty).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    super::caller::bearer(value).filter(|t| !t.is_empty())
}

/// Whether `req` may read the operator's pages: the admin token, or a peer
/// in OPERATOR_NETWORKS.
pub fn operator(req: &HttpRequest, state: &AppState) -> bool {
    has_admin_token(state, req.headers().get(header::AUTHORIZATION))
        || req.peer_addr().is_some_and(|peer| {
            let ip = crate::identity::canonical_ip(peer.ip());
            state.operator_networks.iter().any(|net| net.contains(&ip))
        })
}

/// Middleware of the operator's read-only routes: 401 for anyone else
/// (the admin token lets them in).
pub async fn operator_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = super::app_state(&req);
    if !operator(req.request(), &state) {
        return Ok(req
            .into_response(ApiError::OperatorOnly.error_response())
            .map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Middleware of `POST /json`: as JSON_API says.
pub async fn json_api(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = super::app_state(&req);
    let refusal = match state.json_api {
        JsonApi::Open => None,
        JsonApi::Off => Some(ApiError::NotFound),
        JsonApi::Trusted if state.identifier.trusts(req.peer_addr()) => None,
        JsonApi::Trusted => Some(ApiError::UntrustedPeer(
            "/json answers trusted proxies only (TRUSTED_PROXIES; JSON_API=open serves anyone)",
        )),
    };
    match refusal {
        Some(err) => Ok(req
            .into_response(err.error_response())
            .map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    /// Regression (issue 9, item 16): the scheme name is case-insensitive.
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok", "bearer tok", "BEARER  tok ", "  bEaReR tok"] {
            assert_eq!(
                bearer_token(value.as_bytes()),
                Some(&b"tok"[..]),
                "{value:?}"
            );
        }
        for value in ["Basic tok", "Bearer", "Bearer ", "Bearertok"] {
            assert_eq!(bearer_token(value.as_bytes()), None, "{value:?}");
        }
    }
}
