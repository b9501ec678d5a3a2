//! Reads a request body whole, within a size limit and a deadline, before
//! the rate limiter or a handler sees the request.
//!
//! Why before: a client that drips its body one byte at a time would
//! otherwise hold a connection for as long as it likes (actix bounds only
//! the reading of the head), and a request answered without reading its
//! body (a 429 from the deny cache) forces actix to close the connection,
//! so an abusive client would cost a TCP handshake per request. Read here,
//! every answer keeps the connection alive.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::BytesMut;
use actix_web::{Error, ResponseError};
use futures_util::StreamExt;

use super::app_state;
use super::errors::ApiError;

/// Middleware for routes that take a body of at most `limit` bytes.
pub async fn buffer(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    limit: usize,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let timeout = app_state(&req).body_timeout;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(req
            .into_response(ApiError::PayloadTooLarge { limit }.error_response())
            .map_into_boxed_body());
    }
    let (http_req, mut payload) = req.into_parts();
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| ApiError::BadRequest(format!("body: {err}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // Most bodies have arrived with their head: read them without arming
    // the deadline's timer (one fewer timer per request); the timer starts
    // when the body is not all there.
    let mut read = std::pin::pin!(read);
    let read = match futures_util::poll!(read.as_mut()) {
        std::task::Poll::Ready(read) => Ok(read),
        std::task::Poll::Pending => tokio::time::timeout(timeout, read).await,
    };
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(err)) => return Ok(ServiceResponse::new(http_req, err.error_response())),
        Err(_) => {
            return Ok(ServiceResponse::new(
                http_req,
                ApiError::BodyTimeout(timeout).error_response(),
            ))
        }
    };
    let req = ServiceRequest::from_parts(http_req, Payload::from(body));
    Ok(next.call(req).await?.map_into_boxed_body())
}
