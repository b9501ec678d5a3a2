//! Reading an HTTP request as the limiter needs it: who is calling (API key,
//! bearer token, client IP behind trusted proxies) and which route and host
//! it asks for. The rate-limit middleware, the status endpoint and
//! forward-auth all read requests through here.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::HttpRequest;

use crate::app::AppState;
use crate::identity::{Caller, IdentityError, RequestParts};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Identifies the caller of `req`: its identity and its client IP.
pub fn identify(req: &HttpRequest, state: &AppState) -> Result<Caller, IdentityError> {
    let headers = req.headers();
    let xff: Vec<&[u8]> = values(headers, &X_FORWARDED_FOR);
    let forwarded: Vec<&[u8]> = values(headers, &header::FORWARDED);
    state.identifier.caller(&RequestParts {
        api_key: api_key(headers, &state.api_key_header),
        bearer: api_key(headers, &header::AUTHORIZATION),
        x_forwarded_for: &xff,
        forwarded: &forwarded,
        peer: req.peer_addr(),
    })
}

/// The raw API key: the configured header's value or, when that header is
/// `Authorization`, the token of its `Bearer` scheme (any case).
fn api_key<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let value = headers.get(name)?.as_bytes();
    if name != header::AUTHORIZATION {
        return Some(value);
    }
    bearer(value)
}

/// The token of an `Authorization: Bearer <token>` value, trimmed (maybe
/// empty). The scheme name is case-insensitive (RFC 9110, section 11.1).
/// The one parser of it: API keys, JWTs and the admin token.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii_start();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// The host of a `Host` (or `X-Forwarded-Host`) value, without its port,
/// in its normal form (lower case, no trailing dot).
pub fn host_of(value: Option<&HeaderValue>) -> Option<String> {
    let host = value?.to_str().ok()?.trim();
    let host = match host.strip_prefix('[') {
        // [IPv6]:port
        Some(rest) => rest.split(']').next()?,
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    Some(crate::limiter::rules::http::normalize_host(host)).filter(|h| !h.is_empty())
}

fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    headers.get_all(name).map(HeaderValue::as_bytes).collect()
}

/// The route as the rules see it: the matched pattern (so
/// `/items/{id}` is one route, not one per id) or else the path.
pub fn route_of(req: &HttpRequest) -> (String, String) {
    let path = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    (req.method().as_str().to_owned(), path)
}
