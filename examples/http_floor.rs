//! The floor under the HTTP benchmark (scripts/bench.sh's `floor` cases): a
//! bare actix-web server, as the service runs it (the same workers, the same
//! allocator), that answers the benchmark's requests with the service's own
//! response shapes and does nothing else: no middleware, no rules, no
//! limiter, no Redis.
//!
//!   GET  /livez          200 {"status":"alive"}, an X-Request-Id
//!   POST /api/resource   the body read and checked as JSON; then, for an
//!                        X-API-Key starting with `abuser`, the service's 429
//!                        (its JSON, Retry-After and the quota headers), for
//!                        any other the service's 200 (its JSON with a
//!                        request id and a timestamp, the quota headers)
//!
//! Its answers differ from the service's in two details: the 200's
//! timestamp is Unix milliseconds (the service writes RFC 3339), and the
//! `RateLimit` field is made with `format!` (the service writes its five
//! quota values into one buffer).
//!
//! What the service spends beyond this server, per request, is what its
//! middleware, its limiter and its Redis client cost; what this server
//! spends on a POST beyond its GET is what actix-web and the kernel charge
//! for the POST's body and larger answer, which no limiter can save.
//!
//!   cargo run --release --example http_floor -- 127.0.0.1:8090 [WORKERS]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::web::Bytes;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Serialize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fresh `req_<32 hex digits>`, as the service makes its request ids.
fn request_id() -> HeaderValue {
    let mut id = Vec::with_capacity(36);
    id.extend_from_slice(b"req_");
    let mut hex = [0; uuid::fmt::Simple::LENGTH];
    id.extend_from_slice(
        uuid::Uuid::new_v4()
            .simple()
            .encode_lower(&mut hex)
            .as_bytes(),
    );
    HeaderValue::from_maybe_shared(Bytes::from(id)).expect("hex digits")
}

fn json(mut response: HttpResponse, body: Vec<u8>) -> HttpResponse {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.set_body(actix_web::body::BoxBody::new(body))
}

/// The service's quota headers for a policy with `remaining` left (the
/// numbers formatted per request, the policy's own field as it is).
fn quota_headers(headers: &mut HeaderMap, remaining: u32, id: HeaderValue) {
    let ratelimit = format!("\"user\";r={remaining};t=36128");
    headers.insert(
        HeaderName::from_static("ratelimit"),
        HeaderValue::from_str(&ratelimit).expect("ascii"),
    );
    headers.insert(HeaderName::from_static("x-request-id"), id);
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(remaining),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from(100_000_000u32),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-policy"),
        HeaderValue::from_static("\"user\";q=100000000;w=60"),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from(1_796_515_200u64),
    );
}

async fn livez() -> HttpResponse {
    let mut response = HttpResponse::Ok().finish();
    response
        .headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id());
    json(response, br#"{"status":"alive"}"#.to_vec())
}

#[derive(Serialize)]
struct Refused<'a> {
    error: &'static str,
    identifier: &'a str,
    limit: u32,
    retry_after: u64,
}

#[derive(Serialize)]
struct Done<'a> {
    message: &'static str,
    request_id: &'a str,
    timestamp: u128,
    data: Processed,
}

#[derive(Serialize)]
struct Processed {
    processed: bool,
}

async fn resource(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return HttpResponse::BadRequest().finish();
    }
    let id = request_id();
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (mut response, remaining) = if key.starts_with("abuser") {
        let body = serde_json::to_vec(&Refused {
            error: "Rate limit exceeded",
            identifier: key,
            limit: 1,
            retry_after: 36128,
        });
        let mut response = json(
            HttpResponse::TooManyRequests().finish(),
            body.unwrap_or_default(),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(36128u32));
        (response, 0)
    } else {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let body = serde_json::to_vec(&Done {
            message: "Request successful",
            request_id: id.to_str().unwrap_or("-"),
            timestamp: millis,
            data: Processed { processed: true },
        });
        (
            json(HttpResponse::Ok().finish(), body.unwrap_or_default()),
            99_999_999,
        )
    };
    quota_headers(response.headers_mut(), remaining, id);
    response
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let workers: usize = args.get(1).map_or(Ok(2), |w| w.parse()).expect("WORKERS");
    HttpServer::new(|| {
        App::new()
            .route("/livez", web::get().to(livez))
            .route("/api/resource", web::post().to(resource))
    })
    .workers(workers)
    .bind(address)?
    .run()
    .await
}
