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

/// The original method: Traefik's and Caddy's name, then nginx's.
const METHOD_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-method"),
];
/// The host the original request was sent to.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The original URI (path and query).
const URI_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-uri"),
];

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

/// The first of `names` present, as text.
fn first<'a>(headers: &'a HeaderMap, names: &[HeaderName]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| headers.get(name))
        .and_then(|v| v.to_str().ok())
}

/// The original request's method and path, from the gateway's headers.
fn original(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let method = first(headers, &METHOD_HEADERS).unwrap_or("GET").trim();
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::BadRequest(format!(
            "X-Forwarded-Method {method:?} is not an HTTP method"
        )));
    }
    let uri = first(headers, &URI_HEADERS).ok_or_else(|| {
        ApiError::BadRequest("send the original URI in X-Forwarded-Uri (or X-Original-URI)".into())
    })?;
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') || path.len() > 2048 {
        return Err(ApiError::BadRequest(format!(
            "X-Forwarded-Uri {uri:?}: expected a path starting with '/', at most 2048 bytes"
        )));
    }
    Ok((method.to_ascii_uppercase(), path.to_owned()))
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
        return ApiError::UntrustedPeer.error_response();
    }
    let deny_status = match web::Query::<ForwardQuery>::from_query(req.query_string()) {
        Ok(query) => match query.deny_status {
            None | Some(429) => StatusCode::TOO_MANY_REQUESTS,
            Some(401) => StatusCode::UNAUTHORIZED,
            Some(403) => StatusCode::FORBIDDEN,
            Some(other) => {
                return ApiError::BadRequest(format!("deny_status {other}: use 429, 401 or 403"))
                    .error_response()
            }
        },
        Err(err) => return ApiError::BadRequest(format!("query: {err}")).error_response(),
    };
    let (method, path) = match original(req.headers()) {
        Ok(original) => original,
        Err(err) => return err.error_response(),
    };
    let caller = match identify(&req, &state.identifier) {
        Ok(caller) => caller,
        Err(err) => return ApiError::from(err).error_response(),
    };
    let route = Route {
        method: &method,
        path: &path,
        host: host_of(req.headers().get(X_FORWARDED_HOST)),
    };
    match verdict(&req, &state, &caller, &route).await {
        Verdict::Answer(mut response) => {
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                *response.status_mut() = deny_status;
            }
            response
        }
        Verdict::Pass(headers) => {
            let mut response = HttpResponse::Ok().json(ForwardAllowed { allowed: true });
            for (name, value) in headers {
                response.headers_mut().insert(name, value);
            }
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
            original(&traefik).unwrap(),
            ("POST".into(), "/v1/orders/7".into())
        );
        let nginx = headers(&[("x-original-uri", "/a#frag")]);
        assert_eq!(original(&nginx).unwrap(), ("GET".into(), "/a".into()));
        assert!(original(&headers(&[])).is_err());
        assert!(original(&headers(&[("x-forwarded-uri", "relative")])).is_err());
        assert!(original(&headers(&[
            ("x-forwarded-method", "P O S T"),
            ("x-forwarded-uri", "/")
        ]))
        .is_err());
    }
}
