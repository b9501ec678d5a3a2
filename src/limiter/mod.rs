//! The rate-limit decision, independent of both HTTP and Redis.
//!
//! A [`Limiter`] takes an identity and the route it calls, finds the policies
//! that apply (the [`rules`]), asks its [`Store`] to check all of them in one
//! atomic step (in production the Redis layer, which runs one Lua script),
//! and turns the answer into a [`Decision`]. Being limited is a normal
//! outcome ([`Decision::Denied`]), not an error; [`LimiterError`] is only for
//! a store that cannot answer while the failure mode is `closed`.

pub mod deny_cache;
pub mod local;
pub mod overrides;
pub mod rules;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::FailureMode;
use crate::identity::{Identity, Strategy};
use crate::telemetry::Metrics;
pub use rules::{Resolution, Route, Rules, RulesError};

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

/// One limit: `limit` units per `window`, counted by `algorithm`; each
/// request takes `cost` units. `NonZeroU32` makes a zero limit
/// unrepresentable; [`Policy::new`] checks the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub algorithm: Algorithm,
    pub limit: NonZeroU32,
    pub window: Duration,
    pub cost: u32,
    /// Checked and counted, never enforced: a denial is reported (header,
    /// metrics) and the request goes through.
    pub shadow: bool,
}

impl Policy {
    /// A policy, or why it cannot be one.
    pub fn new(
        name: impl Into<String>,
        algorithm: Algorithm,
        limit: NonZeroU32,
        window: Duration,
        cost: u32,
    ) -> Result<Self, String> {
        let name = name.into();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "policy name {name:?}: use 1 to 64 letters, digits, '_' or '-'"
            ));
        }
        if window.as_millis() == 0 || !window.subsec_nanos().is_multiple_of(1_000_000) {
            return Err("the window must be a whole number of milliseconds, at least 1".into());
        }
        if cost > limit.get() {
            return Err(format!(
                "cost {cost} is above the limit {limit}: no request could ever be allowed"
            ));
        }
        if u128::from(limit.get()) * window.as_millis() >= MAX_LIMIT_TIMES_WINDOW_MS {
            return Err(format!(
                "limit × window in ms must stay below 2^53 (limit {limit}, window {} ms)",
                window.as_millis()
            ));
        }
        Ok(Policy {
            name,
            algorithm,
            limit,
            window,
            cost,
            shadow: false,
        })
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
    fn tighter_than(&self, other: &Quota) -> bool {
        let mine = u64::from(self.remaining) * u64::from(other.limit);
        let theirs = u64::from(other.remaining) * u64::from(self.limit);
        mine < theirs || (mine == theirs && self.remaining < other.remaining)
    }
}

/// What the store answers for one check of several policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReply {
    /// Every policy allowed, and every policy was charged.
    pub allowed: bool,
    /// One per policy, in the order asked.
    pub quotas: Vec<Quota>,
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
    /// The circuit breaker is open: the store failed repeatedly and is not
    /// asked again until its cool-down ends.
    #[error("circuit breaker open: the store failed repeatedly and is given a rest")]
    CircuitOpen,
}

impl StoreError {
    /// A short, stable name for headers and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Connection(_) => "connection",
            StoreError::Script(_) => "script",
            StoreError::Other(_) => "other",
            StoreError::CircuitOpen => "circuit_open",
        }
    }
}

/// Where counters live. The Redis layer implements it; the limiter never
/// builds a Redis command.
pub trait Store: Send + Sync + 'static {
    /// Checks every policy for `identity` in one atomic step and, if all
    /// allow and `charge` is set, charges each its cost. If any denies, none
    /// is charged. With `charge` unset nothing is written (a status read).
    fn check(
        &self,
        identity: &Identity,
        policies: &[Arc<Policy>],
        charge: bool,
    ) -> impl Future<Output = Result<StoreReply, StoreError>> + Send;

    /// Round-trip time of a trivial call, for health checks.
    fn ping(&self) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// Deletes the counters of `identity` under `policies`; returns how many
    /// existed.
    fn reset(
        &self,
        identity: &Identity,
        policies: &[Arc<Policy>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The overrides every instance shares, as (identity key, JSON) pairs.
    fn load_overrides(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    fn save_override(
        &self,
        key: &str,
        json: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether there was one to delete.
    fn delete_override(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The policies checked for one request, each with its quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub quotas: Vec<(Arc<Policy>, Quota)>,
    /// Index into `quotas` of the one to report in `X-RateLimit-*`: when
    /// denied, the denying policy that frees up last; otherwise the policy
    /// closest to exhaustion.
    pub reported: usize,
}

impl Outcome {
    fn new(policies: Vec<Arc<Policy>>, quotas: Vec<Quota>, allowed: bool) -> Self {
        let quotas: Vec<(Arc<Policy>, Quota)> = policies.into_iter().zip(quotas).collect();
        let mut reported = 0;
        for (i, (_, q)) in quotas.iter().enumerate().skip(1) {
            let best = &quotas[reported].1;
            let better = if allowed {
                q.tighter_than(best)
            } else {
                match (q.allowed, best.allowed) {
                    (false, true) => true,
                    (true, false) => false,
                    _ => q.retry_after > best.retry_after,
                }
            };
            if better {
                reported = i;
            }
        }
        Outcome { quotas, reported }
    }

    pub fn reported(&self) -> (&Policy, &Quota) {
        let (policy, quota) = &self.quotas[self.reported];
        (policy, quota)
    }

    /// `Retry-After` for a denied request: until every denying policy allows.
    pub fn retry_after_secs(&self) -> u64 {
        self.quotas
            .iter()
            .map(|(_, q)| q.retry_after_secs())
            .max()
            .unwrap_or(1)
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Outcome),
    Denied(Outcome),
    /// No policy applies to this caller and route, or the caller is on the
    /// allow-list: answered without Redis.
    Unlimited,
    /// The caller is on the deny-list: refused without Redis.
    Blocked,
    /// The store could not answer and the failure mode is `open`: the
    /// request goes through uncounted.
    Degraded {
        error: StoreError,
        policies: Vec<Arc<Policy>>,
    },
    /// The store could not answer and the failure mode is `local`: this
    /// instance decided alone, approximately.
    Local {
        error: StoreError,
        verdict: local::LocalVerdict,
        policies: Vec<Arc<Policy>>,
    },
}

/// Where a caller stands, read without counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Limited(Outcome),
    Unlimited,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The store could not answer and the failure mode is `closed`.
    #[error("rate limiter unavailable: {0}")]
    Unavailable(StoreError),
}

/// Dynamic overrides by identity, as last read from the store.
type OverrideMap = HashMap<(Strategy, String), overrides::OverrideSpec>;

/// Why an admin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("invalid override: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Limiter<S> {
    store: S,
    rules: ArcSwap<Rules>,
    /// Every policy in shadow mode (RATE_LIMIT_SHADOW), through reloads.
    shadow: bool,
    failure_mode: FailureMode,
    local: local::LocalLimiter,
    denied: deny_cache::DenyCache,
    dynamic: ArcSwap<OverrideMap>,
    metrics: Arc<Metrics>,
}

impl<S: Store> Limiter<S> {
    pub fn new(
        store: S,
        rules: Rules,
        failure_mode: FailureMode,
        shadow: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let rules = if shadow { rules.all_shadow() } else { rules };
        Limiter {
            store,
            rules: ArcSwap::from_pointee(rules),
            shadow,
            failure_mode,
            local: local::LocalLimiter::default(),
            denied: deny_cache::DenyCache::default(),
            dynamic: ArcSwap::from_pointee(HashMap::new()),
            metrics,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Puts new rules in force for the next request. Requests in flight
    /// finish under the rules they started with.
    pub fn replace_rules(&self, rules: Rules) {
        let rules = if self.shadow {
            rules.all_shadow()
        } else {
            rules
        };
        self.rules.store(Arc::new(rules));
        // A cached denial may not hold under the new limits.
        self.denied.clear();
    }

    /// Identities denied until their retry_after, answered without Redis.
    pub fn deny_cache(&self) -> &deny_cache::DenyCache {
        &self.denied
    }

    /// The policies for `identity` on `route`, dynamic overrides first.
    fn resolve(&self, identity: &Identity, route: &Route<'_>) -> Resolution {
        let dynamic = self.dynamic.load();
        let action = if dynamic.is_empty() {
            None
        } else {
            dynamic
                .get(&(identity.strategy, identity.id.clone()))
                .filter(|spec| spec.active_at(SystemTime::now()))
                .and_then(|spec| spec.action().ok())
        };
        self.rules
            .load()
            .resolve_with(identity, route, action.as_ref())
    }

    /// Checks (and, if allowed, counts) one request of `identity` on `route`.
    pub async fn check(
        &self,
        identity: &Identity,
        route: &Route<'_>,
    ) -> Result<Decision, LimiterError> {
        if let Some(outcome) = self.denied.get(identity, route) {
            self.metrics.deny_cache_hits.inc();
            return Ok(Decision::Denied(outcome));
        }
        let policies = match self.resolve(identity, route) {
            Resolution::Unlimited => return Ok(Decision::Unlimited),
            Resolution::Blocked => return Ok(Decision::Blocked),
            Resolution::Limited(policies) => policies,
        };
        match self.store.check(identity, &policies, true).await {
            Ok(reply) => {
                let allowed = reply.allowed;
                let outcome = Outcome::new(policies, reply.quotas, allowed);
                Ok(if allowed {
                    Decision::Allowed(outcome)
                } else {
                    self.denied.insert(identity, route, &outcome);
                    Decision::Denied(outcome)
                })
            }
            Err(error) => match self.failure_mode {
                FailureMode::Open => Ok(Decision::Degraded { error, policies }),
                FailureMode::Closed => Err(LimiterError::Unavailable(error)),
                FailureMode::Local => {
                    let verdict = self.local.check(identity, &policies);
                    Ok(Decision::Local {
                        error,
                        verdict,
                        policies,
                    })
                }
            },
        }
    }

    /// The state of `identity` on `route` without counting anything.
    pub async fn status(
        &self,
        identity: &Identity,
        route: &Route<'_>,
    ) -> Result<Standing, StoreError> {
        let policies = match self.resolve(identity, route) {
            Resolution::Limited(policies) => policies,
            Resolution::Unlimited => return Ok(Standing::Unlimited),
            Resolution::Blocked => return Ok(Standing::Blocked),
        };
        let reply = self.store.check(identity, &policies, false).await?;
        Ok(Standing::Limited(Outcome::new(
            policies,
            reply.quotas,
            true,
        )))
    }

    /// Deletes the counters of `identity` under every policy that applies to
    /// it on `route`; returns how many existed.
    pub async fn reset(&self, identity: &Identity, route: &Route<'_>) -> Result<u64, StoreError> {
        // The rules' policies, whatever an override says: an override
        // changes limits, not keys.
        let policies = match self.rules.load().resolve_with(identity, route, None) {
            Resolution::Limited(policies) => policies,
            Resolution::Unlimited | Resolution::Blocked => Vec::new(),
        };
        let deleted = self.store.reset(identity, &policies).await?;
        self.denied.forget(identity);
        Ok(deleted)
    }

    /// The override in force for `identity`, if any.
    pub fn override_for(&self, identity: &Identity) -> Option<overrides::OverrideSpec> {
        self.dynamic
            .load()
            .get(&(identity.strategy, identity.id.clone()))
            .filter(|spec| spec.active_at(SystemTime::now()))
            .cloned()
    }

    /// Every override in force.
    pub fn overrides(&self) -> Vec<(Identity, overrides::OverrideSpec)> {
        let now = SystemTime::now();
        let mut all: Vec<_> = self
            .dynamic
            .load()
            .iter()
            .filter(|(_, spec)| spec.active_at(now))
            .map(|((strategy, id), spec)| {
                (
                    Identity {
                        strategy: *strategy,
                        id: id.clone(),
                    },
                    spec.clone(),
                )
            })
            .collect();
        all.sort_by(|a, b| (a.0.strategy.as_str(), &a.0.id).cmp(&(b.0.strategy.as_str(), &b.0.id)));
        all
    }

    /// Stores an override for every instance, and applies it here at once.
    pub async fn set_override(
        &self,
        identity: &Identity,
        spec: &overrides::OverrideSpec,
    ) -> Result<(), AdminError> {
        let action = spec.action().map_err(AdminError::Invalid)?;
        self.rules
            .load()
            .check_override(identity.strategy, &action)
            .map_err(|(key, problem)| AdminError::Invalid(format!("{key}: {problem}")))?;
        if !spec.active_at(SystemTime::now()) {
            return Err(AdminError::Invalid("until is in the past".into()));
        }
        let json = serde_json::to_string(spec).map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.store
            .save_override(&overrides::storage_key(identity), &json)
            .await?;
        self.refresh_overrides().await?;
        Ok(())
    }

    /// Removes an override everywhere; whether there was one.
    pub async fn delete_override(&self, identity: &Identity) -> Result<bool, StoreError> {
        let existed = self
            .store
            .delete_override(&overrides::storage_key(identity))
            .await?;
        self.refresh_overrides().await?;
        Ok(existed)
    }

    /// Rereads the shared overrides (every [`overrides::REFRESH_INTERVAL`],
    /// and after each change). Identities whose override changed are
    /// dropped from the deny cache, so a raised limit or an allow-listing
    /// applies on every instance within the interval.
    pub async fn refresh_overrides(&self) -> Result<(), StoreError> {
        let stored = self.store.load_overrides().await?;
        let mut fresh = OverrideMap::with_capacity(stored.len());
        for (key, json) in stored {
            let (Some(identity), Ok(spec)) = (
                overrides::identity_of(&key),
                serde_json::from_str::<overrides::OverrideSpec>(&json),
            ) else {
                log::warn!("overrides: ignoring an unreadable entry {key:?}");
                continue;
            };
            fresh.insert((identity.strategy, identity.id), spec);
        }
        let old = self.dynamic.load_full();
        if *old == fresh {
            return Ok(());
        }
        for (key, spec) in old.iter() {
            if fresh.get(key) != Some(spec) {
                self.denied.forget(&Identity {
                    strategy: key.0,
                    id: key.1.clone(),
                });
            }
        }
        for key in fresh.keys().filter(|k| !old.contains_key(*k)) {
            self.denied.forget(&Identity {
                strategy: key.0,
                id: key.1.clone(),
            });
        }
        self.dynamic.store(Arc::new(fresh));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: u32, limit: u32, retry_ms: u64) -> Quota {
        Quota {
            allowed: retry_ms == 0,
            limit,
            remaining,
            reset: Duration::from_millis(1000),
            retry_after: Duration::from_millis(retry_ms),
            now_ms: 0,
        }
    }

    fn policy(name: &str) -> Arc<Policy> {
        Arc::new(
            Policy::new(
                name,
                Algorithm::FixedWindow,
                NonZeroU32::new(10).unwrap(),
                Duration::from_secs(1),
                1,
            )
            .unwrap(),
        )
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        assert_eq!(quota(0, 10, 1).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 999).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 1000).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 1001).retry_after_secs(), 2);
        assert_eq!(quota(0, 10, 0).retry_after_secs(), 1);
    }

    #[test]
    fn reset_is_an_absolute_second_never_early() {
        let q = |now_ms, reset_ms| Quota {
            now_ms,
            reset: Duration::from_millis(reset_ms),
            ..quota(0, 10, 0)
        };
        assert_eq!(q(1_000_000, 500).reset_at_unix(), 1001);
        assert_eq!(q(1_000_000, 1000).reset_at_unix(), 1001);
        assert_eq!(q(1_000_001, 59_999).reset_at_unix(), 1060);
    }

    #[test]
    fn the_reported_policy_is_the_closest_to_exhaustion() {
        // 5 of 10 left is tighter than 90 of 100.
        let o = Outcome::new(
            vec![policy("a"), policy("b")],
            vec![quota(90, 100, 0), quota(5, 10, 0)],
            true,
        );
        assert_eq!(o.reported().0.name, "b");
        // When denied, the denying policy that frees up last.
        let o = Outcome::new(
            vec![policy("a"), policy("b"), policy("c")],
            vec![quota(0, 10, 2000), quota(3, 10, 0), quota(0, 10, 9000)],
            false,
        );
        assert_eq!(o.reported().0.name, "c");
        assert_eq!(o.retry_after_secs(), 9);
    }

    #[test]
    fn policies_refuse_what_the_scripts_cannot_count() {
        let limit = NonZeroU32::new(5).unwrap();
        let window = Duration::from_secs(60);
        assert!(Policy::new("ok-name_1", Algorithm::Gcra, limit, window, 1).is_ok());
        assert!(Policy::new("bad name", Algorithm::Gcra, limit, window, 1).is_err());
        assert!(Policy::new("", Algorithm::Gcra, limit, window, 1).is_err());
        assert!(Policy::new("x", Algorithm::Gcra, limit, window, 6).is_err());
        assert!(Policy::new("x", Algorithm::Gcra, limit, Duration::from_micros(1500), 1).is_err());
        let huge = NonZeroU32::new(u32::MAX).unwrap();
        assert!(Policy::new(
            "x",
            Algorithm::Gcra,
            huge,
            Duration::from_secs(86400 * 30),
            1
        )
        .is_err());
    }
}
