//! The HTTP front end: routes, the rate-limit middleware, errors and the
//! OpenAPI documents. It knows the limiter's API, never a Redis command.

pub mod access;
pub mod admin;
pub mod docs;
pub mod errors;
pub mod ratelimit;
pub mod routes;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::config::LogFormat;
use crate::identity::Identifier;
use crate::startup::AppLimiter;

/// What every handler shares.
pub struct AppState {
    pub limiter: AppLimiter,
    pub identifier: Identifier,
    pub environment: String,
    pub log_format: LogFormat,
    /// `/admin` exists only when this is set.
    pub admin_token: Option<String>,
}

/// The shared state, from a middleware's request. Startup registers it on
/// every App, so its absence is a wiring bug, not an input.
pub fn app_state(req: &actix_web::dev::ServiceRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered by startup")
        .clone()
}

/// Largest request body accepted by the protected resource.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every route. `admin` mounts `/admin` (ADMIN_TOKEN is set); without it
/// the tree does not exist and answers 404 like any unknown path.
pub fn configure(cfg: &mut web::ServiceConfig, admin: bool) {
    if admin {
        cfg.service(admin::scope());
    }
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
    .route("/metrics", web::get().to(routes::metrics))
    .configure(docs::configure)
    .default_service(web::to(routes::not_found));
}
