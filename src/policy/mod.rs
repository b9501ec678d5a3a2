//! What a limit is, independent of who asks and where it is counted: a
//! policy (limit, window, cost) here; the algorithms and failure modes
//! (`mode`), Envoy's units, labels and the window parser (`unit`), the
//! quota a store reports (`quota`). The bottom of the module map: it uses
//! no other module of the crate.

mod mode;
mod quota;
mod unit;

pub use mode::{Algorithm, FailureMode};
pub use quota::Quota;
pub use unit::{parse_window, Label, Unit};

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

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
    #[error("{0}")]
    Slices(&'static str),
}

impl PolicyError {
    /// The key of a policy that is wrong.
    pub fn key(&self) -> &'static str {
        match self {
            PolicyError::Name(_) => "name",
            PolicyError::Window => "window",
            PolicyError::CostAboveLimit { .. } => "cost",
            PolicyError::TooLarge { .. } => "limit",
            PolicyError::Slices(_) => "slices",
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
    /// A debit policy: every positive hit is charged, even past the limit
    /// (a cost known after the response), and the next requests are denied
    /// until the budget has drained; a peek (hits 0) is denied once it is
    /// spent.
    debit: bool,
    /// Spent from quota slices each instance takes from the store (see
    /// `limiter::slices`) rather than decided by the store one by one.
    slices: bool,
    /// This policy's item of the IETF `RateLimit-Policy` field, made once.
    field_item: String,
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
            && !algorithm.is_concurrency()
            && u128::from(limit.get()) * window.as_millis() >= MAX_LIMIT_TIMES_WINDOW_MS
        {
            return Err(PolicyError::TooLarge {
                limit,
                window_ms: window.as_millis(),
            });
        }
        Ok(Policy {
            algorithm,
            limit,
            window,
            cost,
            shadow: false,
            per_client_ip: false,
            failure_mode: None,
            label: None,
            quota_mode: false,
            debit: false,
            slices: false,
            // Names are [A-Za-z0-9_-]: no escaping inside an sf-string. w:
            // whole seconds, at least 1.
            field_item: format!(
                "\"{name}\";q={limit};w={}",
                window.as_millis().div_ceil(1000).max(1)
            ),
            name,
        })
    }

    /// The same policy, charging every positive hit (a debit) or not.
    pub fn with_debit(mut self, debit: bool) -> Self {
        self.debit = debit;
        self
    }

    /// Whether every positive hit is charged, even past the limit.
    pub fn debit(&self) -> bool {
        self.debit
    }

    /// The same policy, spent from quota slices or not; an algorithm a
    /// slice means nothing to (a sliding window, slots) and a debit (a charge
    /// that must reach the store whatever is left) cannot be.
    pub fn with_slices(mut self, slices: bool) -> Result<Self, PolicyError> {
        if slices {
            match self.algorithm {
                Algorithm::FixedWindow | Algorithm::TokenBucket | Algorithm::Gcra => {}
                Algorithm::SlidingWindow => {
                    return Err(PolicyError::Slices(
                        "a sliding window cannot be sliced (its estimate weighs the previous \
                         window, so units taken now are not units spent now): use fixed_window, \
                         token_bucket or gcra",
                    ))
                }
                Algorithm::Concurrency => {
                    return Err(PolicyError::Slices(
                        "a concurrency policy cannot be sliced: a slot is held and given back, \
                         not spent",
                    ))
                }
            }
            if self.debit {
                return Err(PolicyError::Slices(
                    "a debit policy cannot be sliced: its charges must reach the store even \
                     past the limit",
                ));
            }
        }
        self.slices = slices;
        Ok(self)
    }

    /// Whether this policy is spent from quota slices.
    pub fn slices(&self) -> bool {
        self.slices
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
                .with_debit(self.debit)
                .with_slices(self.slices)?
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

    /// `"<name>";q=<limit>;w=<window in s>`: this policy's item of the IETF
    /// `RateLimit-Policy` field (draft-ietf-httpapi-ratelimit-headers-11).
    pub fn field_item(&self) -> &str {
        &self.field_item
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

#[cfg(test)]
mod tests;
