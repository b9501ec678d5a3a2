//! Time as limits are written: Envoy's rate-limit units, a policy's label
//! in Envoy answers and metrics, and the one parser of windows.

use std::time::Duration;

/// An Envoy rate-limit unit, numbered as
/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`. Windows
/// of these units are aligned to the Unix epoch, as envoyproxy/ratelimit
/// aligns them: a month is 30 days, a year 365, a week starts on Thursday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
    Week = 7,
}

impl Unit {
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit numbered `code` in Envoy's response enum.
    pub fn try_from_code(code: i32) -> Option<Unit> {
        [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Month,
            Unit::Year,
            Unit::Week,
        ]
        .into_iter()
        .find(|u| *u as i32 == code)
    }

    /// The unit numbered `code` in `envoy.type.v3.RateLimitUnit`, the enum
    /// of a descriptor's `limit`: the response's numbers, without WEEK.
    pub fn from_override_code(code: i32) -> Option<Unit> {
        Unit::try_from_code(code).filter(|u| *u != Unit::Week)
    }

    /// This unit's number in `envoy.type.v3.RateLimitUnit`, if it has one.
    pub fn override_code(self) -> Option<i32> {
        (self != Unit::Week).then_some(self as i32)
    }

    /// A unit name, in any case (`minute`, `MINUTE`).
    pub fn parse(name: &str) -> Option<Unit> {
        [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Week,
            Unit::Month,
            Unit::Year,
        ]
        .into_iter()
        .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }

    /// The largest unit that divides `window` (for a window that is no
    /// unit, e.g. 30 s: `Second`); what a response names as its unit.
    pub fn base_of(window: Duration) -> Unit {
        let secs = window.as_secs();
        [
            Unit::Year,
            Unit::Month,
            Unit::Week,
            Unit::Day,
            Unit::Hour,
            Unit::Minute,
        ]
        .into_iter()
        .find(|u| secs >= u.seconds() && secs.is_multiple_of(u.seconds()))
        .unwrap_or(Unit::Second)
    }
}

/// How an Envoy response reports a limit (`current_limit`) and where its
/// counts go in the envoyproxy/ratelimit metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label {
    /// The rule's `name` ("" when it has none).
    pub name: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// The rule's path in the config, `domain.key_value.key` (see
    /// envoyproxy/ratelimit's stats keys).
    pub stats_key: String,
    /// The first two levels of that path, the `key1` and `key2` labels of
    /// the metrics ("" when the path is shorter).
    pub key1: String,
    pub key2: String,
    /// Metrics name the request's values (`detailed_metric`).
    pub detailed: bool,
    /// Counted under envoyproxy/ratelimit's own key, with this
    /// CACHE_KEY_PREFIX (ENVOY_KEY_FORMAT=ratelimit; fixed windows of one
    /// unit only).
    pub ratelimit_key_prefix: Option<String>,
}

/// A window: a whole number of seconds (`60`) or a duration with a unit
/// (`90s`, `15m`, `1h`, `1d`). Whole milliseconds, at least one.
pub fn parse_window(value: &str) -> Result<Duration, String> {
    let duration = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(value).map_err(|_| {
            "expected seconds (`60`) or a duration with a unit (`90s`, `15m`, `1h`, `1d`)"
                .to_owned()
        })?,
    };
    if duration.as_millis() == 0 {
        return Err("a window must be at least 1 ms".into());
    }
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err("a window must be a whole number of milliseconds".into());
    }
    if duration > Duration::from_secs(366 * 24 * 3600) {
        return Err("a window must be at most a year".into());
    }
    Ok(duration)
}
