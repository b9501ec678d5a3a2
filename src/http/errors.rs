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
    /// An admin call without the right bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// A path or body that names no valid identity or override.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
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
            ApiError::Unauthorized => (
                "Unauthorized",
                Some("send Authorization: Bearer <ADMIN_TOKEN>".to_owned()),
            ),
            ApiError::BadRequest(detail) => ("Bad request", Some(detail.clone())),
            ApiError::MethodNotAllowed { allow } => {
                ("Method not allowed", Some(format!("allowed: {allow}")))
            }
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
            ApiError::Identity(_) | ApiError::InvalidJson(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Blocked => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
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
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}
