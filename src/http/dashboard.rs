//! `GET /dashboard`: one page, served by the binary with every asset
//! embedded (no CDN: it works offline), that shows what the service is
//! doing right now and, with the admin token typed in, who is being
//! limited and what to do about one of them (through the admin API).
//!
//! The page polls `GET /dashboard/stats` every second: aggregate counters
//! only, like `/metrics` (decisions by strategy, policy and decision; Redis;
//! the rules), never an identity. Identities (the top offenders, a looked-up
//! client) come from the admin API, behind its token, which the page keeps
//! in the tab and sends only in the Authorization header.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use prometheus::core::Collector;
use serde::Serialize;
use utoipa::ToSchema;

use super::routes::{redis_health, RedisHealth};
use super::AppState;

const INDEX_HTML: &str = include_str!("../../static/dashboard/index.html");
const APP_JS: &str = include_str!("../../static/dashboard/app.js");
const APP_CSS: &str = include_str!("../../static/dashboard/app.css");

/// Everything the page loads comes from this service, and nothing runs but
/// its own script: the browser refuses the rest.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The page.
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The policy name the page shows for every `detailed_metric` series.
const DETAILED: &str = "(detailed_metric)";

/// One counter of decisions.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionCount {
    /// The HTTP rules' strategy (`user`, `ip`), or `envoy:<domain>`.
    #[schema(example = "user")]
    pub strategy: String,
    /// The policy's name, or an Envoy limit's stats key.
    #[schema(example = "user")]
    pub policy: String,
    /// `allowed`, `denied`, `shadow_denied`, `degraded`, `local_allowed`,
    /// `local_denied`, `blocked` or `unlimited`.
    #[schema(example = "allowed")]
    pub decision: String,
    /// Since the instance started.
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardRedis {
    #[serde(flatten)]
    pub health: RedisHealth,
    /// `open`, `closed` or `local`: what limited requests get while Redis
    /// cannot answer.
    #[schema(example = "open")]
    pub failure_mode: &'static str,
    /// Calls of the check script so far, and the checks they decided
    /// (coalesced: several per call under load).
    pub script_calls: u64,
    pub checks: u64,
    /// Failed Redis calls so far.
    pub errors: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardRules {
    /// 1 as started, one more per reload that was applied.
    pub version: u64,
    /// When the rules in force were loaded (ms since the epoch); null: at
    /// start-up.
    pub since_ms: Option<u64>,
    /// Policies of the HTTP rules.
    pub policies: usize,
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    /// The Envoy domains configured, sorted.
    pub envoy_domains: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardStats {
    /// The server's clock (ms since the epoch), for rates between polls.
    pub time_ms: u64,
    pub version: &'static str,
    pub environment: String,
    /// Whether the admin API is on (ADMIN_TOKEN is set).
    pub admin: bool,
    pub decisions: Vec<DecisionCount>,
    pub redis: DashboardRedis,
    pub rules: DashboardRules,
    /// The listeners' certificates and when they expire.
    pub certificates: Vec<super::routes::ServedCertificate>,
    /// Concurrency policies: in flight, limit, leases leaked.
    pub concurrency: Vec<DashboardConcurrency>,
}

/// One concurrency policy as this instance sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardConcurrency {
    /// The policy (an Envoy rule's stats key).
    pub policy: String,
    /// Requests in flight as this instance saw them (acquired minus
    /// released minus expired; sum over instances for the fleet).
    pub in_flight: i64,
    /// At most this many at once, per subject.
    pub limit: i64,
    /// Leases that expired without release (holders that died or forgot).
    pub expired: u64,
}

/// What the dashboard shows, as counters since start-up (the page turns
/// them into rates): decisions, Redis, the rules. No identity.
#[utoipa::path(
    get,
    path = "/dashboard/stats",
    tag = "health",
    responses((status = 200, description = "The dashboard's numbers", body = DashboardStats))
)]
pub async fn stats(state: web::Data<AppState>) -> HttpResponse {
    let metrics = state.limiter.metrics();
    let (_, health) = redis_health(&state).await;
    let mut decisions = Vec::new();
    collect(&metrics.decisions, &mut decisions, |labels, count| {
        Some(DecisionCount {
            strategy: labels("strategy")?,
            policy: labels("policy")?,
            decision: labels("decision")?,
            count,
        })
    });
    for (vec, decision) in [
        (&metrics.envoy.within_limit, "allowed"),
        (&metrics.envoy.over_limit, "denied"),
    ] {
        collect(vec, &mut decisions, |labels, count| {
            let (domain, key1) = (labels("domain")?, labels("key1")?);
            let key2 = labels("key2").unwrap_or_default();
            // A detailed_metric rule's labels are request values: the page
            // shows their sum, never the values (issue 19, item 13).
            let detailed = metrics.envoy.is_detailed(&domain, &key1, &key2);
            Some(DecisionCount {
                strategy: format!("envoy:{domain}"),
                policy: if detailed {
                    DETAILED.to_owned()
                } else if key2.is_empty() {
                    key1
                } else {
                    format!("{key1}.{key2}")
                },
                decision: decision.to_owned(),
                count,
            })
        });
    }
    // The detailed series, one row per domain and decision.
    let mut merged: Vec<DecisionCount> = Vec::with_capacity(decisions.len());
    for d in decisions {
        match merged.iter_mut().find(|m| {
            m.policy == DETAILED
                && d.policy == DETAILED
                && m.strategy == d.strategy
                && m.decision == d.decision
        }) {
            Some(m) => m.count += d.count,
            None => merged.push(d),
        }
    }
    let decisions = merged;
    let mut errors: Vec<u64> = Vec::new();
    collect(&metrics.redis_errors, &mut errors, |_, count| Some(count));
    let concurrency = concurrency_rows(&metrics.concurrency);
    let rules = state.limiter.rules();
    let (version, since_ms) = state.limiter.rules_version();
    let mut envoy_domains: Vec<String> = rules.erl().domains.keys().cloned().collect();
    envoy_domains.sort();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(DashboardStats {
            time_ms: crate::limiter::top::now_ms(),
            version: env!("CARGO_PKG_VERSION"),
            environment: state.environment.clone(),
            admin: state.admin_token.is_some(),
            decisions,
            certificates: super::routes::served_certificates(&state),
            concurrency,
            redis: DashboardRedis {
                health,
                failure_mode: state.limiter.failure_mode().as_str(),
                script_calls: metrics.redis_checks_per_call.get_sample_count(),
                checks: metrics.redis_checks_per_call.get_sample_sum() as u64,
                errors: errors.iter().sum(),
            },
            rules: DashboardRules {
                version,
                since_ms,
                policies: rules.policies().count(),
                reloads_ok: metrics.rules_reloads.with_label_values(&["success"]).get(),
                reloads_refused: metrics.rules_reloads.with_label_values(&["failure"]).get(),
                envoy_domains,
            },
        })
}

/// A row per concurrency policy seen (its `limit` gauge is set on every
/// decision).
fn concurrency_rows(metrics: &crate::telemetry::ConcurrencyMetrics) -> Vec<DashboardConcurrency> {
    let mut rows = Vec::new();
    for family in metrics.limit.collect() {
        for metric in family.get_metric() {
            let Some(policy) = metric.get_label().first().map(|l| l.value().to_owned()) else {
                continue;
            };
            rows.push(DashboardConcurrency {
                in_flight: metrics.in_flight.with_label_values(&[&policy]).get(),
                limit: metric.get_gauge().value() as i64,
                expired: metrics.expired.with_label_values(&[&policy]).get(),
                policy,
            });
        }
    }
    rows.sort_by(|a, b| a.policy.cmp(&b.policy));
    rows
}

/// Each series of `vec` with a count above 0, as `make` turns its labels
/// (looked up by name) and count into a row.
fn collect<T>(
    vec: &prometheus::IntCounterVec,
    rows: &mut Vec<T>,
    make: impl Fn(&dyn Fn(&str) -> Option<String>, u64) -> Option<T>,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let count = metric.get_counter().value() as u64;
            if count == 0 {
                continue;
            }
            let labels = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
            };
            rows.extend(make(&labels, count));
        }
    }
}
