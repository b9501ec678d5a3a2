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
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{Error, ResponseError};
use futures_util::{Stream, StreamExt};

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
    let (http_req, payload) = req.into_parts();
    let read = whole(payload, limit);
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

/// The whole of `payload`, at most `limit` bytes: the chunk itself, without
/// a copy, when it comes as one (as a body read by [`buffer`] does, and as
/// most small bodies arrive).
pub async fn whole<S>(mut payload: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| ApiError::BadRequest(format!("body: {err}")))?;
        let read = first.as_ref().map_or(rest.len(), Bytes::len);
        if read + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match first.take() {
            None if rest.is_empty() => first = Some(chunk),
            earlier => {
                rest.extend_from_slice(&earlier.unwrap_or_default());
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    #[actix_web::test]
    async fn a_body_is_read_whole_and_one_chunk_is_not_copied() {
        let one = Bytes::from_static(b"{\"a\": 1}");
        let read = whole(futures_util::stream::iter([Ok(one.clone())]), 64)
            .await
            .unwrap();
        assert_eq!(read.as_ptr(), one.as_ptr(), "the chunk itself");
        let read = whole(chunks(&["{\"a\"", ": ", "1}"]), 64).await.unwrap();
        assert_eq!(&read[..], b"{\"a\": 1}");
        assert!(whole(chunks(&[]), 64).await.unwrap().is_empty());
    }

    #[actix_web::test]
    async fn a_body_past_its_limit_is_refused_whether_in_one_chunk_or_many() {
        for parts in [
            &["0123456789"][..],
            &["0123", "4567", "89"],
            &["", "01234567", "89"],
        ] {
            assert!(
                matches!(
                    whole(chunks(parts), 9).await,
                    Err(ApiError::PayloadTooLarge { limit: 9 })
                ),
                "{parts:?}"
            );
            assert_eq!(whole(chunks(parts), 10).await.unwrap().len(), 10);
        }
    }
}
