//! Forward-auth: the endpoint a gateway asks before it forwards a request
//! (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`). The
//! gateway describes the original request in headers; the answer is the
//! limiter's, as for `/api/resource`: 200 with the rate-limit headers, or
//! 429 with `Retry-After` and the JSON body (403 for a blocked caller).
//!
//! The description is believed only from a trusted proxy (TRUSTED_PROXIES):
//! anyone else could ask about any request, or pose as any client.

use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::caller::{host_of, identify};
use super::errors::{ApiError, ErrorBody};
use super::ratelimit::{verdict, RateLimitExceeded, Verdict};
use super::AppState;
use crate::limiter::Route;

/// The host the original request was sent to (every gateway kind).
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers that describe the original request: one family per gateway
/// kind, never both. A gateway overwrites its own family; the other one it
/// may pass on from the client untouched, so reading it (or preferring it)
/// would let the client choose the route the limiter sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    /// Traefik and Caddy (the default): `X-Forwarded-Method`, `X-Forwarded-Uri`.
    Forwarded,
    /// nginx `auth_request`: `X-Original-Method`, `X-Original-URI`.
    Nginx,
}

impl Gateway {
    /// The method and URI headers of this family.
    fn headers(self) -> (HeaderName, HeaderName) {
        match self {
            Gateway::Forwarded => (
                HeaderName::from_static("x-forwarded-method"),
                HeaderName::from_static("x-forwarded-uri"),
            ),
            Gateway::Nginx => (
                HeaderName::from_static("x-original-method"),
                HeaderName::from_static("x-original-uri"),
            ),
        }
    }
}

/// The methods forward-auth answers (a gateway asks with any of them).
pub const METHODS: [actix_web::http::Method; 8] = [
    actix_web::http::Method::GET,
    actix_web::http::Method::POST,
    actix_web::http::Method::PUT,
    actix_web::http::Method::DELETE,
    actix_web::http::Method::PATCH,
    actix_web::http::Method::HEAD,
    actix_web::http::Method::OPTIONS,
    actix_web::http::Method::TRACE,
];
/// The `Allow` header of a 405 for any other method.
pub const ALLOW: &str = "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, TRACE";

/// The answer when the request may go on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwardAllowed {
    #[schema(example = true)]
    pub allowed: bool,
}

/// The original request's method and path, from the gateway's headers of
/// its family.
fn original(headers: &HeaderMap, gateway: Gateway) -> Result<(String, String), ApiError> {
    let (method_header, uri_header) = gateway.headers();
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let method = text(&method_header).unwrap_or("GET").trim();
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::BadRequest(format!(
            "{method_header} {method:?} is not an HTTP method"
        )));
    }
    let uri = text(&uri_header).ok_or_else(|| {
        ApiError::BadRequest(match gateway {
            Gateway::Forwarded => "send the original URI in X-Forwarded-Uri (nginx: X-Original-URI with ?gateway=nginx)".into(),
            Gateway::Nginx => "send the original URI in X-Original-URI".into(),
        })
    })?;
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') || path.len() > 2048 {
        return Err(ApiError::BadRequest(format!(
            "{uri_header} {uri:?}: expected a path starting with '/', at most 2048 bytes"
        )));
    }
    // Rules match the normal form: every spelling the backend serves as
    // one route is that route.
    let path = crate::limiter::rules::http::normalize_path(path)
        .map_err(|problem| ApiError::BadRequest(format!("{uri_header} {uri:?}: {problem}")))?;
    Ok((method.to_ascii_uppercase(), path))
}

/// Query parameters of forward-auth.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForwardQuery {
    /// The status of a denial: 429 (the default), or 401 or 403 for gateways
    /// that pass only those on (nginx `auth_request` turns any other into
    /// 500; its snippet in `deploy/nginx/` turns 403 back into 429).
    #[param(minimum = 401, maximum = 429)]
    deny_status: Option<u16>,
    /// Which headers describe the original request: `forwarded` (the
    /// default: Traefik, Caddy) or `nginx` (`X-Original-Method`,
    /// `X-Original-URI`). Only that family is read.
    #[param(inline)]
    gateway: Option<Gateway>,
}

/// Should the gateway forward this request?
///
/// Any method. The gateway describes the original request:
/// `X-Forwarded-Method` and `X-Forwarded-Uri` (or nginx's `X-Original-Method`
/// and `X-Original-URI`), the client in `X-Forwarded-For`, and passes the
/// original `X-API-Key`. Believed only from TRUSTED_PROXIES. Rules select
/// on the original method and path (`route = "POST /v1/orders/*"`).
#[utoipa::path(
    method(get, post, put, delete, patch, head, options, trace),
    path = "/v1/forward-auth",
    tag = "forward-auth",
    params(
        ForwardQuery,
        ("X-Forwarded-Method" = Option<String>, Header, description = "The original method (default GET); nginx: X-Original-Method", pattern = "^[A-Za-z]{1,16}$"),
        ("X-Forwarded-Uri" = String, Header, description = "The original path and query; nginx: X-Original-URI", pattern = "^/[ -~]{0,2047}$"),
        ("X-Forwarded-Host" = Option<String>, Header, description = "The host the original request was sent to (for rules with `host`)", max_length = 253),
        ("X-API-Key" = Option<String>, Header, description = "The original request's API key, as for /api/resource", max_length = 256, pattern = "^[ -~]*$"),
    ),
    responses(
        (status = 200, description = "Allowed: forward it (copy the rate-limit headers)", body = ForwardAllowed),
        (status = 400, description = "No usable description of the original request, or an unusable X-API-Key", body = ErrorBody),
        (status = 401, description = "Rate limit exceeded, with `deny_status=401`; or a bearer token that does not verify (JWT identities)", body = RateLimitExceeded),
        (status = 403, description = "Asked by a peer that is not a trusted proxy, the caller is blocked, or (with `deny_status=403`) the rate limit is exceeded", body = ErrorBody),
        (status = 429, description = "Rate limit exceeded: answer the client with this", body = RateLimitExceeded),
        (status = 503, description = "Redis cannot answer and the failure mode is `closed`", body = ErrorBody),
    )
)]
pub async fn forward_auth(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.identifier.trusts(req.peer_addr()) {
        return ApiError::UntrustedPeer(
            "forward-auth answers trusted proxies only (TRUSTED_PROXIES)",
        )
        .error_response();
    }
    let query = match web::Query::<ForwardQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(err) => return ApiError::BadRequest(format!("query: {err}")).error_response(),
    };
    let deny_status = match query.deny_status {
        None | Some(429) => StatusCode::TOO_MANY_REQUESTS,
        Some(401) => StatusCode::UNAUTHORIZED,
        Some(403) => StatusCode::FORBIDDEN,
        Some(other) => {
            return ApiError::BadRequest(format!("deny_status {other}: use 429, 401 or 403"))
                .error_response()
        }
    };
    let gateway = query.gateway.unwrap_or(Gateway::Forwarded);
    let (method, path) = match original(req.headers(), gateway) {
        Ok(original) => original,
        Err(err) => return err.error_response(),
    };
    let caller = match identify(&req, &state) {
        Ok(caller) => caller,
        Err(err) => return ApiError::from(err).error_response(),
    };
    let host = host_of(req.headers().get(X_FORWARDED_HOST));
    let route = Route {
        method: &method,
        path: &path,
        host: host.as_deref(),
    };
    match verdict(&req, &state, &caller, &route, state.limiter.shapes(), None).await {
        Verdict::Answer(mut response) => {
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                *response.status_mut() = deny_status;
            }
            response
        }
        Verdict::Pass(headers) => {
            let mut response = HttpResponse::Ok().json(ForwardAllowed { allowed: true });
            headers.apply(response.headers_mut());
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_original_request_from_either_header_family() {
        let traefik = headers(&[
            ("x-forwarded-method", "post"),
            ("x-forwarded-uri", "/v1/orders/7?x=1"),
        ]);
        assert_eq!(
            original(&traefik, Gateway::Forwarded).unwrap(),
            ("POST".into(), "/v1/orders/7".into())
        );
        let nginx = headers(&[("x-original-uri", "/a#frag")]);
        assert_eq!(
            original(&nginx, Gateway::Nginx).unwrap(),
            ("GET".into(), "/a".into())
        );
        assert!(original(&headers(&[]), Gateway::Forwarded).is_err());
        assert!(original(
            &headers(&[("x-forwarded-uri", "relative")]),
            Gateway::Forwarded
        )
        .is_err());
        assert!(original(
            &headers(&[("x-forwarded-method", "P O S T"), ("x-forwarded-uri", "/")]),
            Gateway::Forwarded
        )
        .is_err());
    }

    /// Regression (issue 19, item 2): a client behind nginx sent its own
    /// X-Forwarded-Uri, which the limiter preferred to nginx's
    /// X-Original-URI, and so chose the route it was counted on. Each
    /// family is read alone.
    #[test]
    fn one_family_is_read_never_the_other() {
        let spoofed = headers(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/v1/orders/1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/elsewhere"),
        ]);
        assert_eq!(
            original(&spoofed, Gateway::Nginx).unwrap(),
            ("POST".into(), "/v1/orders/1".into())
        );
        // Only nginx's headers, read as Traefik's: refused, not guessed.
        let nginx = headers(&[("x-original-uri", "/v1/orders/1")]);
        assert!(original(&nginx, Gateway::Forwarded).is_err());
    }
}
