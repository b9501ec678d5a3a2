//! Every error the HTTP layer answers with, mapped to a status and a JSON
//! body in one `ResponseError` impl.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::IdentityError;
use crate::limiter::StoreError;

/// The body of every error response except 429.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a few words.
    #[schema(example = "Invalid JSON body")]
    pub error: String,
    /// The specifics, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "expected value at line 1 column 1")]
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid caller identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// The store cannot answer and requests are refused (failure mode `closed`,
    /// or an endpoint that has nothing to show without it).
    #[error("rate limiter unavailable: {0}")]
    Unavailable(StoreError),
    /// The caller is on the rules file's deny-list.
    #[error("caller blocked")]
    Blocked,
    #[error("not found")]
    NotFound,
    /// An admin path whose id cannot be an identity of its strategy.
    #[error("no such identity: {0}")]
    NoSuchIdentity(String),
    /// An admin call without the right bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// A path or body that names no valid identity or override.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// The body did not arrive within REQUEST_BODY_TIMEOUT_MS.
    #[error("request body timeout")]
    BodyTimeout(std::time::Duration),
    #[error("request body too large")]
    PayloadTooLarge { limit: usize },
    /// A decision API (forward-auth, `/json`) asked by a peer that is not a
    /// trusted proxy; the detail says which setting lets it in.
    #[error("untrusted peer")]
    UntrustedPeer(&'static str),
    /// An operator's page asked by a peer outside OPERATOR_NETWORKS without
    /// the admin token.
    #[error("operator only")]
    OperatorOnly,
}

impl ApiError {
    fn body(&self) -> ErrorBody {
        let (error, detail) = match self {
            ApiError::Identity(err) => ("Invalid request identity", Some(err.to_string())),
            ApiError::InvalidJson(detail) => ("Invalid JSON body", Some(detail.clone())),
            ApiError::Unavailable(err) => (
                "Rate limiter unavailable",
                Some(format!("redis {}", err.kind())),
            ),
            ApiError::Blocked => (
                "Forbidden",
                Some("this caller is blocked by the rate limiter's rules".to_owned()),
            ),
            ApiError::NotFound => ("Not found", None),
            ApiError::NoSuchIdentity(detail) => ("Not found", Some(detail.clone())),
            ApiError::Unauthorized => (
                "Unauthorized",
                Some("send Authorization: Bearer <ADMIN_TOKEN>".to_owned()),
            ),
            ApiError::BadRequest(detail) => ("Bad request", Some(detail.clone())),
            ApiError::MethodNotAllowed { allow } => {
                ("Method not allowed", Some(format!("allowed: {allow}")))
            }
            ApiError::BodyTimeout(timeout) => (
                "Request timeout",
                Some(format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                )),
            ),
            ApiError::UntrustedPeer(detail) => ("Forbidden", Some((*detail).to_owned())),
            ApiError::OperatorOnly => (
                "Unauthorized",
                Some("for the operator: send Authorization: Bearer <ADMIN_TOKEN>, or ask from OPERATOR_NETWORKS".to_owned()),
            ),
            ApiError::PayloadTooLarge { limit } => (
                "Payload too large",
                Some(format!("the body may be at most {limit} bytes")),
            ),
        };
        ErrorBody {
            error: error.to_owned(),
            detail,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Identity(IdentityError::Token(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Identity(_) | ApiError::InvalidJson(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized | ApiError::OperatorOnly => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Blocked | ApiError::UntrustedPeer(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::NoSuchIdentity(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, 1));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::Unauthorized | ApiError::Identity(IdentityError::Token(_)) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

/// Middleware: every error response is JSON, including the ones actix
/// writes itself (a path that does not deserialize, a malformed header an
/// extractor refuses): their text becomes the `detail` of an [`ErrorBody`].
/// Responses that are JSON already pass untouched, and so does every
/// success, so the cost is one status check per request.
pub async fn json_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let response = next.call(req).await?.map_into_boxed_body();
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(response);
    }
    let (req, response) = response.into_parts();
    let (head, body) = response.into_parts();
    // Error bodies written by actix are short texts; a bound keeps an
    // unexpected stream from being buffered whole.
    let text = actix_web::body::to_bytes_limited(body, 4096)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty());
    let mut json = HttpResponse::build(status);
    for (name, value) in head.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.append_header((name.clone(), value.clone()));
        }
    }
    let json = json.json(ErrorBody {
        error: status.canonical_reason().unwrap_or("Error").to_owned(),
        detail: text,
    });
    Ok(actix_web::dev::ServiceResponse::new(req, json))
}
