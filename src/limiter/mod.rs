//! The rate-limit decision, independent of both HTTP and Redis.
//!
//! A [`Limiter`] takes an identity and a cost, picks the policy that applies,
//! asks its [`Store`] (in production the Redis layer, which runs one Lua
//! script) and turns the answer into a [`Decision`]. Being limited is a normal
//! outcome ([`Decision::Denied`]), not an error; [`LimiterError`] is only for
//! a store that cannot answer while the failure mode is `closed`.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::{FailureMode, LimitSettings, Settings};
use crate::identity::{Identity, Strategy};

/// The algorithm a policy counts with. Each has one Lua script in `lua/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    FixedWindow,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// One limit: `limit` units per `window`, counted by `algorithm`.
/// `NonZeroU32` makes a zero limit unrepresentable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub algorithm: Algorithm,
    pub limit: NonZeroU32,
    pub window: Duration,
}

impl Policy {
    pub fn fixed_window(name: impl Into<String>, limits: LimitSettings) -> Self {
        Policy {
            name: name.into(),
            algorithm: Algorithm::FixedWindow,
            limit: limits.limit,
            window: limits.window,
        }
    }
}

/// Which policy applies to which caller.
#[derive(Debug, Clone)]
pub struct Policies {
    user: Policy,
    ip: Policy,
}

impl Policies {
    pub fn new(user: Policy, ip: Policy) -> Self {
        Policies { user, ip }
    }

    pub fn from_settings(settings: &Settings) -> Self {
        Policies::new(
            Policy::fixed_window("user", settings.user_limit),
            Policy::fixed_window("ip", settings.ip_limit),
        )
    }

    pub fn for_identity(&self, identity: &Identity) -> &Policy {
        match identity.strategy {
            Strategy::User => &self.user,
            Strategy::Ip => &self.ip,
        }
    }
}

/// The state of one identity under one policy, as the store reports it
/// (the common reply of every Lua script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the full limit is available again.
    pub reset: Duration,
    /// Until the same request would be allowed; zero when allowed.
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

    /// `Retry-After` in whole seconds: rounded up, and at least 1, so that a
    /// client honouring it is never refused again for being early.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_millis() as u64).div_ceil(1000).max(1)
    }
}

/// Why the store could not answer. Backend-neutral: the Redis layer maps its
/// own errors onto these kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the store: {0}")]
    Connection(String),
    #[error("the store refused the script: {0}")]
    Script(String),
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// A short, stable name for headers and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Connection(_) => "connection",
            StoreError::Script(_) => "script",
            StoreError::Other(_) => "other",
        }
    }
}

/// Where counters live. The Redis layer implements it; the limiter never
/// builds a Redis command.
pub trait Store: Send + Sync + 'static {
    /// Counts `cost` units for `identity` under `policy` if they fit, in one
    /// atomic step. A `cost` of 0 only reads.
    fn check(
        &self,
        identity: &Identity,
        policy: &Policy,
        cost: u32,
    ) -> impl Future<Output = Result<Quota, StoreError>> + Send;

    /// Round-trip time of a trivial call, for health checks.
    fn ping(&self) -> impl Future<Output = Result<Duration, StoreError>> + Send;
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Quota),
    Denied(Quota),
    /// The store could not answer and the failure mode is `open`: the
    /// request goes through uncounted.
    Degraded(StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The store could not answer and the failure mode is `closed`.
    #[error("rate limiter unavailable: {0}")]
    Unavailable(StoreError),
}

pub struct Limiter<S> {
    store: S,
    policies: Policies,
    failure_mode: FailureMode,
}

impl<S: Store> Limiter<S> {
    pub fn new(store: S, policies: Policies, failure_mode: FailureMode) -> Self {
        Limiter {
            store,
            policies,
            failure_mode,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    pub fn policy_for(&self, identity: &Identity) -> &Policy {
        self.policies.for_identity(identity)
    }

    /// Counts one request of `cost` units for `identity`.
    pub async fn check(&self, identity: &Identity, cost: u32) -> Result<Decision, LimiterError> {
        let policy = self.policy_for(identity);
        match self.store.check(identity, policy, cost).await {
            Ok(quota) if quota.allowed => Ok(Decision::Allowed(quota)),
            Ok(quota) => Ok(Decision::Denied(quota)),
            Err(err) => match self.failure_mode {
                FailureMode::Open => Ok(Decision::Degraded(err)),
                FailureMode::Closed => Err(LimiterError::Unavailable(err)),
            },
        }
    }

    /// The state of `identity` without counting anything.
    pub async fn status(&self, identity: &Identity) -> Result<(&Policy, Quota), StoreError> {
        let policy = self.policy_for(identity);
        let quota = self.store.check(identity, policy, 0).await?;
        Ok((policy, quota))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(now_ms: u64, reset_ms: u64, retry_ms: u64) -> Quota {
        Quota {
            allowed: retry_ms == 0,
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::from_millis(retry_ms),
            now_ms,
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        assert_eq!(quota(0, 0, 1).retry_after_secs(), 1);
        assert_eq!(quota(0, 0, 999).retry_after_secs(), 1);
        assert_eq!(quota(0, 0, 1000).retry_after_secs(), 1);
        assert_eq!(quota(0, 0, 1001).retry_after_secs(), 2);
        assert_eq!(quota(0, 0, 0).retry_after_secs(), 1);
    }

    #[test]
    fn reset_is_an_absolute_second_never_early() {
        assert_eq!(quota(1_000_000, 500, 0).reset_at_unix(), 1001);
        assert_eq!(quota(1_000_000, 1000, 0).reset_at_unix(), 1001);
        assert_eq!(quota(1_000_001, 59_999, 0).reset_at_unix(), 1060);
    }
}
