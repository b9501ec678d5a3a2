//! envoyproxy/ratelimit's HTTP endpoints on the HTTP port: `POST /json`
//! (a `RateLimitRequest` in proto3 JSON; 200 with the response when OK, 429
//! when over the limit, 400 for a malformed request or a service error, as
//! envoyproxy/ratelimit answers) and `/healthcheck` (200 `OK`, or 500 while
//! the configuration is missing or Redis does not answer), and `/rlconfig`
//! (its debug port's dump of the limits in force).

use actix_web::{web, HttpResponse};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::{Rls, RlsError};
use crate::policy::Unit;

/// Largest `/json` body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `POST /json`.
pub async fn json(rls: web::Data<Rls>, body: web::Bytes) -> HttpResponse {
    let request: JsonRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return bad_request(&format!("invalid RateLimitRequest JSON: {err}")),
    };
    match rls.should_rate_limit(&request.into_proto(), "json").await {
        Ok(response) => {
            let over = response.overall_code == Code::OverLimit as i32;
            let body = JsonResponse::from(&response);
            if over {
                HttpResponse::TooManyRequests().json(body)
            } else {
                HttpResponse::Ok().json(body)
            }
        }
        Err(RlsError::InvalidArgument(m) | RlsError::Unavailable(m)) => bad_request(&m),
    }
}

fn bad_request(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "error": message }))
}

/// `GET /rlconfig`: envoyproxy/ratelimit's dump of the limits in force,
/// one line each (`<stats key>: unit=<UNIT> requests_per_unit=<n>,
/// shadow_mode: <bool>, quota_mode: <bool>`), sorted.
pub async fn rlconfig(rls: web::Data<Rls>) -> HttpResponse {
    let rules = rls.state().limiter.rules();
    let mut lines = rules.erl().dump.clone();
    lines.sort();
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

/// `/healthcheck`, any method.
pub async fn healthcheck(rls: web::Data<Rls>) -> HttpResponse {
    if super::grpc::healthy(&rls).await {
        HttpResponse::Ok().content_type("text/plain").body("OK")
    } else {
        HttpResponse::InternalServerError().finish()
    }
}

/// A 64-bit (or 32-bit) integer as proto3 JSON writes it: a number or a
/// string of digits.
fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(u64),
        Text(String),
    }
    match Option::<Int>::deserialize(d)? {
        None => Ok(None),
        Some(Int::Number(n)) => Ok(Some(n)),
        Some(Int::Text(t)) => t
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{t:?} is not an unsigned integer"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(
        default,
        alias = "hits_addend",
        rename = "hitsAddend",
        deserialize_with = "integer"
    )]
    hits_addend: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(
        default,
        alias = "hits_addend",
        rename = "hitsAddend",
        deserialize_with = "integer"
    )]
    hits_addend: Option<u64>,
    #[serde(default, alias = "is_negative_hits", rename = "isNegativeHits")]
    is_negative_hits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(
        default,
        alias = "requests_per_unit",
        rename = "requestsPerUnit",
        deserialize_with = "integer"
    )]
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unit: Option<serde_json::Value>,
}

impl JsonRequest {
    fn into_proto(self) -> RateLimitRequest {
        RateLimitRequest {
            domain: self.domain,
            hits_addend: self
                .hits_addend
                .map_or(0, |h| u32::try_from(h).unwrap_or(u32::MAX)),
            descriptors: self
                .descriptors
                .into_iter()
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .entries
                        .into_iter()
                        .map(|e| Entry {
                            key: e.key,
                            value: e.value,
                        })
                        .collect(),
                    limit: d.limit.map(|l| RateLimitOverride {
                        requests_per_unit: l
                            .requests_per_unit
                            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                        // A name (`"MINUTE"`) or a number; anything else is
                        // UNKNOWN, which the service refuses.
                        unit: match l.unit {
                            Some(serde_json::Value::String(name)) => Unit::parse(&name)
                                .and_then(Unit::override_code)
                                .unwrap_or(0),
                            Some(serde_json::Value::Number(n)) => {
                                n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0)
                            }
                            _ => 0,
                        },
                    }),
                    hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
                    is_negative_hits: d.is_negative_hits,
                })
                .collect(),
        }
    }
}

/// A `RateLimitResponse` in proto3 JSON: camelCase, enums by name, fields
/// at their default left out, durations as `"44s"`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonResponse {
    overall_code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<JsonStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    response_headers_to_add: Vec<JsonHeader>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonStatus {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_limit: Option<JsonLimit>,
    #[serde(skip_serializing_if = "is_zero")]
    limit_remaining: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_until_reset: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLimit {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "is_zero")]
    requests_per_unit: u32,
    unit: String,
}

#[derive(Serialize)]
struct JsonHeader {
    key: String,
    value: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn code_name(code: i32) -> &'static str {
    match code {
        1 => "OK",
        2 => "OVER_LIMIT",
        _ => "UNKNOWN",
    }
}

impl From<&RateLimitResponse> for JsonResponse {
    fn from(r: &RateLimitResponse) -> Self {
        JsonResponse {
            overall_code: code_name(r.overall_code),
            statuses: r
                .statuses
                .iter()
                .map(|s| JsonStatus {
                    code: code_name(s.code),
                    current_limit: s.current_limit.as_ref().map(|l| JsonLimit {
                        name: l.name.clone(),
                        requests_per_unit: l.requests_per_unit,
                        unit: Unit::try_from_code(l.unit)
                            .map_or("UNKNOWN".into(), |u| u.as_str().to_ascii_uppercase()),
                    }),
                    limit_remaining: s.limit_remaining,
                    duration_until_reset: s
                        .duration_until_reset
                        .as_ref()
                        .map(|d| format!("{}s", d.seconds)),
                })
                .collect(),
            response_headers_to_add: r
                .response_headers_to_add
                .iter()
                .map(|h| JsonHeader {
                    key: h.key.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        }
    }
}
