//! The HTTP front end: routes, the rate-limit middleware, errors and the
//! OpenAPI documents. It knows the limiter's API, never a Redis command.

pub mod access;
pub mod admin;
pub mod body;
pub mod caller;
pub mod dashboard;
pub mod docs;
pub mod errors;
pub mod forward_auth;
mod headers;
pub mod leases;
pub mod planes;
pub mod ratelimit;
pub mod routes;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::web;

use crate::envoy;

pub use crate::app::AppState;

/// The shared state, from a middleware's request. Startup registers it on
/// every App, so its absence is a wiring bug, not an input.
pub fn app_state(req: &actix_web::dev::ServiceRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered by startup")
        .clone()
}

/// A time written as RFC 3339 in UTC with milliseconds, straight into the
/// JSON (no string of its own per response).
#[derive(Debug)]
pub struct Millis(pub std::time::SystemTime);

impl serde::Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// Largest request body accepted by the protected resource.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every route. `admin` mounts `/admin` (ADMIN_TOKEN is set); without it
/// the tree does not exist and answers 404 like any unknown path. A method
/// a path does not take is answered 405 with `Allow`, never 404.
pub fn configure(cfg: &mut web::ServiceConfig, admin: bool) {
    if admin {
        cfg.service(admin::scope());
    }
    cfg.service(
        web::resource("/api/resource")
            .wrap(from_fn(|req, next| body::buffer(req, next, MAX_BODY_BYTES)))
            // Only the POST route is limited: a wrong method is answered
            // with 405 and costs no quota.
            .route(
                only(Method::POST)
                    .to(routes::resource)
                    .wrap(from_fn(ratelimit::rate_limit)),
            )
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/api/leases")
            .route(only(Method::POST).to(leases::acquire))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/api/leases/{id}")
            .route(only(Method::PUT).to(leases::renew))
            .route(only(Method::DELETE).to(leases::delete))
            .default_service(not_allowed("PUT, DELETE")),
    )
    .service({
        // Any standard method: a gateway may ask with the original one.
        let mut resource = web::resource("/v1/forward-auth");
        for method in forward_auth::METHODS {
            resource = resource.route(only(method).to(forward_auth::forward_auth));
        }
        resource.default_service(not_allowed(forward_auth::ALLOW))
    })
    .service(
        // envoyproxy/ratelimit's endpoints.
        web::resource("/json")
            .app_data(web::PayloadConfig::new(envoy::json::MAX_BODY_BYTES))
            .wrap(from_fn(|req, next| {
                body::buffer(req, next, envoy::json::MAX_BODY_BYTES)
            }))
            .wrap(from_fn(planes::json_api))
            .route(only(Method::POST).to(envoy::json::json))
            .default_service(not_allowed("POST")),
    )
    .service(web::resource("/healthcheck").route(web::route().to(envoy::json::healthcheck)))
    .service(get_only("/rlconfig", envoy::json::rlconfig).wrap(from_fn(planes::operator_only)))
    .service(get_only("/rate-limit/status", routes::rate_limit_status))
    .service(get_only("/health", routes::health))
    .service(get_only("/livez", routes::livez))
    .service(get_only("/metrics", routes::metrics).wrap(from_fn(planes::operator_only)))
    .service(get_only("/dashboard", dashboard::page))
    .service(get_only("/dashboard/app.js", dashboard::script))
    .service(get_only("/dashboard/app.css", dashboard::style))
    .service(get_only("/dashboard/stats", dashboard::stats).wrap(from_fn(planes::operator_only)))
    .configure(|cfg| docs::configure(cfg, admin))
    .default_service(web::to(routes::not_found));
}

/// A path that answers GET only.
fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(only(Method::GET).to(handler))
        .default_service(not_allowed("GET"))
}

/// A route for one method. Not actix's `web::post()` and the like: their
/// guard records every method a request was tried against in its
/// extensions (a vector and a box per route tried, on every request) for
/// an `Allow` header that `not_allowed` writes here instead.
fn only(method: Method) -> actix_web::Route {
    struct Only(Method);
    impl actix_web::guard::Guard for Only {
        fn check(&self, ctx: &actix_web::guard::GuardContext<'_>) -> bool {
            ctx.head().method == self.0
        }
    }
    web::route().guard(Only(method))
}

/// The default service of a resource: 405 naming the methods it takes.
pub(crate) fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move {
        use actix_web::ResponseError;
        errors::ApiError::MethodNotAllowed { allow }.error_response()
    })
}
