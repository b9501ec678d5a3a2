//! `GET /admin/top`: who is being limited, across every instance.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::http::errors::{ApiError, ErrorBody};
use crate::limiter::top::{Kind, Window};

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopBy {
    /// Requests refused (429, blocked), cached denials included.
    #[default]
    Denied,
    /// Every request checked.
    Requests,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum TopWindow {
    /// The current minute.
    #[default]
    #[serde(rename = "1m")]
    Minute,
    /// The current hour.
    #[serde(rename = "1h")]
    Hour,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// `denied` (default) or `requests`.
    #[param(inline)]
    by: Option<TopBy>,
    /// How many, 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    n: Option<u32>,
    /// `1m` (default, the current minute) or `1h` (the current hour).
    #[param(inline)]
    window: Option<TopWindow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopEntry {
    /// The HTTP rules' `user`, `ip` or `client_ip`, or an Envoy descriptor's
    /// key.
    #[schema(example = "user")]
    pub strategy: String,
    /// `http`, or the Envoy domain.
    #[schema(example = "http")]
    pub domain: String,
    #[schema(example = "customer-42")]
    pub identifier: String,
    #[schema(example = 1234)]
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopReport {
    #[schema(example = "1m")]
    pub window: &'static str,
    #[schema(example = "denied")]
    pub by: &'static str,
    /// Largest first. Counted per instance (a bounded heavy-hitters
    /// sketch of 2,000 subjects) and summed over every instance's 200
    /// largest.
    pub top: Vec<TopEntry>,
}

/// Who is being limited: the identities (and Envoy descriptors) with the
/// most denials or requests in the current minute or hour, summed over
/// every instance.
#[utoipa::path(
    get,
    path = "/admin/top",
    tag = "admin",
    params(TopQuery),
    responses(
        (status = 200, description = "The heavy hitters", body = TopReport),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Redis cannot answer", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn get_top(
    query: web::Query<TopQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let n = query.n.unwrap_or(10);
    if !(1..=1000).contains(&n) {
        return Err(ApiError::BadRequest("n: from 1 to 1000".into()));
    }
    let (window, window_name) = match query.window.unwrap_or_default() {
        TopWindow::Minute => (Window::Minute, "1m"),
        TopWindow::Hour => (Window::Hour, "1h"),
    };
    let kind = match query.by.unwrap_or_default() {
        TopBy::Denied => Kind::Denied,
        TopBy::Requests => Kind::Requests,
    };
    let top = state
        .limiter
        .top(window, kind, n as usize)
        .await
        .map_err(ApiError::Unavailable)?;
    let top = top
        .into_iter()
        .map(|((key, identifier), count)| {
            let (domain, strategy) = match key.strip_prefix('@').and_then(|k| k.split_once('/')) {
                Some((domain, strategy)) => (domain.to_owned(), strategy.to_owned()),
                None => ("http".to_owned(), key.into_owned()),
            };
            TopEntry {
                strategy,
                domain,
                identifier,
                count,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(TopReport {
        window: window_name,
        by: kind.as_str(),
        top,
    }))
}
