//! The HTTP front end: routes, the rate-limit middleware, errors and the
//! OpenAPI documents. It knows the limiter's API, never a Redis command.

pub mod docs;
pub mod errors;
pub mod ratelimit;
pub mod routes;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::identity::Identifier;
use crate::startup::AppLimiter;

/// What every handler shares.
pub struct AppState {
    pub limiter: AppLimiter,
    pub identifier: Identifier,
    pub environment: String,
}

/// Largest request body accepted by the protected resource.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/resource")
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            // Only the POST route is limited: a wrong method is answered
            // with 405 and costs no quota.
            .route(
                web::post()
                    .to(routes::resource)
                    .wrap(from_fn(ratelimit::rate_limit)),
            )
            .default_service(web::to(routes::method_not_allowed)),
    )
    .route(
        "/rate-limit/status",
        web::get().to(routes::rate_limit_status),
    )
    .route("/health", web::get().to(routes::health))
    .route("/livez", web::get().to(routes::livez))
    .configure(docs::configure)
    .default_service(web::to(routes::not_found));
}
