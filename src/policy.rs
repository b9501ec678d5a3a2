//! What a limit is, independent of who asks and where it is counted: the
//! algorithms, a policy (limit, window, cost), the quota a store reports for
//! it, the failure modes, and the one parser of durations. The bottom of the
//! module map: it uses no other module of the crate.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What a request gets when Redis cannot answer within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Allow the request and mark the response as degraded.
    Open,
    /// Refuse the request with 503.
    Closed,
    /// Keep approximate limits in this process until Redis returns.
    Local,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
            FailureMode::Local => "local",
        }
    }
}

impl FailureMode {
    /// How much of the limit a mode keeps while the store cannot answer:
    /// `closed` (refuse) over `local` (approximate) over `open` (allow). A
    /// request whose policies ask for different modes gets the strictest.
    pub fn strictness(self) -> u8 {
        match self {
            FailureMode::Open => 0,
            FailureMode::Local => 1,
            FailureMode::Closed => 2,
        }
    }
}

impl FromStr for FailureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            "local" => Ok(FailureMode::Local),
            _ => Err("expected `open`, `closed` or `local`".into()),
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The algorithm a policy counts with. Each has one Lua module in `lua/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    Gcra,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ];

    /// The name used in settings, rules files and the Lua module table.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                "expected one of fixed_window, sliding_window, token_bucket, gcra".to_owned()
            })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scripts compute in integers held in Lua's doubles; limit × window (in
/// ms) above this would lose exactness.
pub const MAX_LIMIT_TIMES_WINDOW_MS: u128 = 1 << 53;

/// Why a policy cannot be one; [`PolicyError::key`] names the setting or
/// rules-file key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy name {0:?}: use 1 to 64 letters, digits, '_' or '-'")]
    Name(String),
    #[error("the window must be a whole number of milliseconds, at least 1")]
    Window,
    #[error("cost {cost} is above the limit {limit}: no request could ever be allowed")]
    CostAboveLimit { cost: u32, limit: NonZeroU32 },
    #[error("limit × window in ms must stay below 2^53 (limit {limit}, window {window_ms} ms)")]
    TooLarge { limit: NonZeroU32, window_ms: u128 },
}

impl PolicyError {
    /// The key of a policy that is wrong.
    pub fn key(&self) -> &'static str {
        match self {
            PolicyError::Name(_) => "name",
            PolicyError::Window => "window",
            PolicyError::CostAboveLimit { .. } => "cost",
            PolicyError::TooLarge { .. } => "limit",
        }
    }
}

/// One limit: `limit` units per `window`, counted by `algorithm`; each
/// request takes `cost` units. `NonZeroU32` makes a zero limit
/// unrepresentable; [`Policy::new`] checks the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// The fields are private: every policy is made by [`Policy::new`] (or
/// changed by [`Policy::with_limit`]), so every one the scripts see is valid.
pub struct Policy {
    name: String,
    algorithm: Algorithm,
    limit: NonZeroU32,
    window: Duration,
    cost: u32,
    shadow: bool,
    per_client_ip: bool,
    failure_mode: Option<FailureMode>,
    /// How an Envoy rate-limit response names this limit, when it came
    /// from an envoyproxy/ratelimit rule (or a descriptor's `limit`).
    label: Option<Arc<Label>>,
    /// envoyproxy/ratelimit's `quota_mode`: its denial never blocks the
    /// other limits of a request (the Envoy front end decides the overall
    /// answer from all quota-mode descriptors).
    quota_mode: bool,
}

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

impl Policy {
    /// A policy, or why it cannot be one.
    pub fn new(
        name: impl Into<String>,
        algorithm: Algorithm,
        limit: NonZeroU32,
        window: Duration,
        cost: u32,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(PolicyError::Name(name));
        }
        if window.as_millis() == 0 || !window.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(PolicyError::Window);
        }
        if cost > limit.get() {
            return Err(PolicyError::CostAboveLimit { cost, limit });
        }
        // A fixed window only counts up to its limit; the other algorithms
        // compute in units of time per request.
        if algorithm != Algorithm::FixedWindow
            && u128::from(limit.get()) * window.as_millis() >= MAX_LIMIT_TIMES_WINDOW_MS
        {
            return Err(PolicyError::TooLarge {
                limit,
                window_ms: window.as_millis(),
            });
        }
        Ok(Policy {
            name,
            algorithm,
            limit,
            window,
            cost,
            shadow: false,
            per_client_ip: false,
            failure_mode: None,
            label: None,
            quota_mode: false,
        })
    }

    /// The same policy, in shadow mode or not.
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The same policy, counted per client IP or per caller.
    pub fn with_per_client_ip(mut self, per_client_ip: bool) -> Self {
        self.per_client_ip = per_client_ip;
        self
    }

    /// The same policy with its own failure mode (`None`: the service's).
    pub fn with_failure_mode(mut self, failure_mode: Option<FailureMode>) -> Self {
        self.failure_mode = failure_mode;
        self
    }

    /// The same policy in quota mode or not.
    pub fn with_quota_mode(mut self, quota_mode: bool) -> Self {
        self.quota_mode = quota_mode;
        self
    }

    pub fn quota_mode(&self) -> bool {
        self.quota_mode
    }

    /// Checked without blocking the request's other limits: a shadow or a
    /// quota-mode policy.
    pub fn non_blocking(&self) -> bool {
        self.shadow || self.quota_mode
    }

    /// The same policy, reported to Envoy as `label` says.
    pub fn with_label(mut self, label: Label) -> Self {
        self.label = Some(Arc::new(label));
        self
    }

    pub fn label(&self) -> Option<&Label> {
        self.label.as_deref()
    }

    /// What this policy wants when the store cannot answer, if it says
    /// (rules file `failure_mode`); otherwise RATE_LIMIT_FAILURE_MODE.
    pub fn failure_mode(&self) -> Option<FailureMode> {
        self.failure_mode
    }

    /// The same policy with another limit and window (an override), or why
    /// that would not be a valid policy.
    pub fn with_limit(&self, limit: NonZeroU32, window: Duration) -> Result<Self, PolicyError> {
        Ok(
            Policy::new(self.name.clone(), self.algorithm, limit, window, self.cost)?
                .with_shadow(self.shadow)
                .with_per_client_ip(self.per_client_ip)
                .with_failure_mode(self.failure_mode)
                .with_quota_mode(self.quota_mode)
                .with_label_of(self),
        )
    }

    /// `other`'s label, reporting this policy's limit and window.
    fn with_label_of(mut self, other: &Policy) -> Self {
        self.label = other.label.as_ref().map(|label| {
            if label.requests_per_unit == self.limit.get()
                && label.unit.seconds() * 1000 == self.window_ms()
            {
                return label.clone();
            }
            Arc::new(Label {
                requests_per_unit: self.limit.get(),
                unit: Unit::base_of(self.window),
                ..Label::clone(label)
            })
        });
        self
    }

    /// Unique within a rules file; part of the Redis key.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Units each hit takes.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Checked and counted, never enforced: a denial is reported (header,
    /// metrics) and the request goes through.
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// Counted per client IP for every request, with or without an API key
    /// (rules file `per = "client_ip"`, RATE_LIMIT_IP_EVERY_REQUEST).
    pub fn per_client_ip(&self) -> bool {
        self.per_client_ip
    }

    pub fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }
}

/// The state of one identity under one policy, as the store reports it
/// (the common reply of every algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// This policy alone would allow the request.
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the full limit is available again.
    pub reset: Duration,
    /// Until this policy would allow the same request; zero when it does.
    pub retry_after: Duration,
    /// The store's clock at the decision, in ms since the Unix epoch.
    pub now_ms: u64,
}

impl Quota {
    /// When the full limit is back, in Unix seconds (rounded up, so a client
    /// that waits until then is never early).
    pub fn reset_at_unix(&self) -> u64 {
        (self.now_ms + self.reset.as_millis() as u64).div_ceil(1000)
    }

    /// Seconds until the full limit is back, rounded up.
    pub fn reset_secs(&self) -> u64 {
        (self.reset.as_millis() as u64).div_ceil(1000)
    }

    /// `Retry-After` in whole seconds: rounded up, and at least 1, so that a
    /// client honouring it is never refused again for being early.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_millis() as u64).div_ceil(1000).max(1)
    }

    /// Is `self` closer to exhaustion than `other`? Compares the fraction
    /// left (remaining / limit), then the absolute remaining.
    pub fn tighter_than(&self, other: &Quota) -> bool {
        let mine = u64::from(self.remaining) * u64::from(other.limit);
        let theirs = u64::from(other.remaining) * u64::from(self.limit);
        mine < theirs || (mine == theirs && self.remaining < other.remaining)
    }
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
