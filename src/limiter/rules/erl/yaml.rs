//! One `rate_limit` read from YAML, the keys envoyproxy/ratelimit accepts
//! (and ours), and the typed reads of a mapping's fields, each failing
//! with its message.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::policy::{parse_window, Algorithm, Unit};

/// Every key envoyproxy/ratelimit accepts anywhere in a file, and ours.
pub(super) const VALID_KEYS: [&str; 23] = [
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    // Ours.
    "rate_limits",
    "algorithm",
    "unit_multiplier",
    "window",
    "debit",
    "lease",
    "slices",
];

/// A file's text as a YAML root: a map (an empty file is an empty one).
pub(super) fn root(text: &str) -> Result<Mapping, String> {
    let root: Value =
        serde_yaml::from_str(text).map_err(|err| format!("error loading config file: {err}"))?;
    match root {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(map) => Ok(map),
        _ => Err("error loading config file: the file is not a YAML map".into()),
    }
}

/// One `rate_limit` as read, before it becomes a policy.
pub(super) struct ParsedLimit {
    pub(super) name: Option<String>,
    pub(super) replaces: Vec<String>,
    pub(super) unlimited: bool,
    pub(super) requests_per_unit: u32,
    pub(super) unit: Unit,
    pub(super) window: Duration,
    pub(super) algorithm: Algorithm,
    /// Ours: every positive hit charged, even past the limit.
    pub(super) debit: bool,
    /// Ours: spent from quota slices (see `limiter::slices`).
    pub(super) slices: bool,
}

pub(super) fn parse_limit(map: &Mapping) -> Result<ParsedLimit, String> {
    let unlimited = field_bool(map, "unlimited")?;
    let unit_text = field_string(map, "unit")?.unwrap_or_default();
    let unit = Unit::parse(&unit_text);
    // A concurrency limit needs no unit (its span is the lease).
    let concurrency = field_string(map, "algorithm")?.as_deref() == Some("concurrency");
    if unlimited {
        if unit.is_some() {
            return Err("should not specify rate limit unit when unlimited".into());
        }
    } else if unit.is_none() && !(concurrency && unit_text.is_empty()) {
        return Err(format!("invalid rate limit unit '{unit_text}'"));
    }
    let requests_per_unit = match map.get("requests_per_unit") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => {
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format!("error loading config file: requests_per_unit: {n} is not a uint32")
                })?
        }
        Some(other) => {
            return Err(format!(
                "error loading config file: requests_per_unit: {} is not a uint32",
                scalar(other).unwrap_or_default()
            ))
        }
    };
    let replaces = list(map.get("replaces"), "replaces")?
        .iter()
        .map(|r| field_string(r, "name").map(Option::unwrap_or_default))
        .collect::<Result<Vec<_>, _>>()?;
    let unit = unit.unwrap_or(Unit::Second);
    let multiplier = match map.get("unit_multiplier") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .ok_or("unit_multiplier: expected a whole number of at least 1")?,
        Some(_) => return Err("unit_multiplier: expected a whole number of at least 1".into()),
    };
    let window = match field_string(map, "window")? {
        Some(_) if map.contains_key("unit_multiplier") => {
            return Err("set window or unit_multiplier, not both".into())
        }
        Some(text) => parse_window(&text).map_err(|err| format!("window: {err}"))?,
        None => Duration::from_secs(unit.seconds().saturating_mul(multiplier)),
    };
    let algorithm = match field_string(map, "algorithm")? {
        None => Algorithm::FixedWindow,
        Some(name) => name.parse().map_err(|err| format!("algorithm: {err}"))?,
    };
    // A concurrency limit: `requests_per_unit` in flight, each holding a
    // lease of `lease`.
    let window = match (algorithm.is_concurrency(), field_string(map, "lease")?) {
        (true, Some(lease)) => parse_window(&lease).map_err(|err| format!("lease: {err}"))?,
        (true, None) => return Err("algorithm concurrency needs a lease (e.g. lease: 30s)".into()),
        (false, Some(_)) => return Err("lease: only algorithm concurrency takes a lease".into()),
        (false, None) => window,
    };
    Ok(ParsedLimit {
        name: field_string(map, "name")?.filter(|n| !n.is_empty()),
        replaces,
        unlimited,
        requests_per_unit,
        unit: if map.contains_key("window") || algorithm.is_concurrency() {
            Unit::base_of(window)
        } else {
            unit
        },
        window,
        algorithm,
        debit: field_bool(map, "debit")?,
        slices: field_bool(map, "slices")?,
    })
}

/// envoyproxy/ratelimit's key check: every key of every map (but inside
/// `metadata`) a string it knows, every list a list of maps, every leaf a
/// string, an integer, a boolean or null.
pub(super) fn validate_keys(map: &Mapping) -> Result<(), String> {
    for (key, value) in map {
        let Value::String(key) = key else {
            return Err(format!(
                "config error, key is not of type string: {}",
                scalar(key).unwrap_or_else(|| format!("{key:?}"))
            ));
        };
        if !VALID_KEYS.contains(&key.as_str()) {
            return Err(format!("config error, unknown key '{key}'"));
        }
        if key == "metadata" {
            continue;
        }
        match value {
            Value::Sequence(items) => {
                for item in items {
                    match item {
                        Value::Mapping(m) => validate_keys(m)?,
                        other => {
                            return Err(format!(
                                "config error, yaml file contains list of type other than map: {}",
                                scalar(other).unwrap_or_else(|| format!("{other:?}"))
                            ))
                        }
                    }
                }
            }
            Value::Mapping(m) => validate_keys(m)?,
            Value::String(_) | Value::Bool(_) | Value::Null => {}
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            _ => return Err("error checking config".into()),
        }
    }
    Ok(())
}

/// A scalar as text (YAML `value: 1` is the value "1").
pub(super) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn field_string(map: &Mapping, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => scalar(value)
            .map(Some)
            .ok_or_else(|| format!("error loading config file: {key}: expected a string")),
    }
}

pub(super) fn field_bool(map: &Mapping, key: &str) -> Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!(
            "error loading config file: {key}: expected true or false"
        )),
    }
}

pub(super) fn mapping(value: &Value, key: &str) -> Result<Mapping, String> {
    match value {
        Value::Mapping(m) => Ok(m.clone()),
        _ => Err(format!("error loading config file: {key}: expected a map")),
    }
}

pub(super) fn list(value: Option<&Value>, key: &str) -> Result<Vec<Mapping>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(|i| mapping(i, key)).collect(),
        Some(_) => Err(format!("error loading config file: {key}: expected a list")),
    }
}
