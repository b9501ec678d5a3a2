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
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::identity::{Caller, Identity, Strategy};
pub use crate::policy::{Algorithm, FailureMode, Policy, Quota, MAX_LIMIT_TIMES_WINDOW_MS};
use crate::telemetry::Metrics;
pub use rules::{Resolution, Route, Rules, RulesError};

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
    /// Checks every policy for `caller` (each counted under
    /// [`Policy::counted_identity`]) in one atomic step and, if all allow and
    /// `charge` is set, charges each its cost. If any denies, none is
    /// charged. With `charge` unset nothing is written (a status read).
    /// A store may give up atomicity across identities where it must (a
    /// Redis Cluster keeps each identity in its own slot), and documents it.
    fn check(
        &self,
        caller: &Caller,
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

    /// The overrides every instance shares, as raw (identity key, JSON)
    /// pairs: the limiter decodes each entry on its own, so one bad entry
    /// cannot hide the others.
    fn load_overrides(&self) -> impl Future<Output = Result<Vec<RawOverride>, StoreError>> + Send;

    fn save_override(
        &self,
        key: &str,
        json: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether there was one to delete.
    fn delete_override(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the override under `key` only if it still holds exactly
    /// `json` (an expired override, unless an admin replaced it meanwhile).
    fn delete_override_if(
        &self,
        key: &[u8],
        json: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Tells every instance that the counters of the identity stored as
    /// `key` (see [`overrides::storage_key`]) were reset.
    fn publish_reset(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The resets published after sequence number `after`.
    fn resets_since(&self, after: u64)
        -> impl Future<Output = Result<ResetLog, StoreError>> + Send;
}

/// One stored override as the store holds it: (identity key, JSON), raw.
pub type RawOverride = (Vec<u8>, Vec<u8>);

/// Resets published by any instance, as [`Store::resets_since`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetLog {
    /// The sequence number of the latest reset (0: none ever).
    pub latest: u64,
    /// The identities (storage keys) reset after the sequence asked for.
    pub keys: Vec<Vec<u8>>,
    /// False when older entries were trimmed before they could be read: the
    /// reader must then forget every cached denial.
    pub complete: bool,
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
    /// `reported` is chosen among the enforced policies (shadow ones decide
    /// nothing a client sees); only when every policy is a shadow one (global
    /// shadow mode) among all of them, for the status endpoints.
    fn new(policies: Vec<Arc<Policy>>, quotas: Vec<Quota>, allowed: bool) -> Self {
        let quotas: Vec<(Arc<Policy>, Quota)> = policies.into_iter().zip(quotas).collect();
        let any_enforced = quotas.iter().any(|(p, _)| !p.shadow);
        let candidates = || {
            quotas
                .iter()
                .enumerate()
                .filter(move |(_, (p, _))| !any_enforced || !p.shadow)
        };
        let mut reported = candidates().next().map_or(0, |(i, _)| i);
        for (i, (_, q)) in candidates() {
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

    /// The reported policy if it is enforced: what `X-RateLimit-*` shows.
    pub fn enforced_reported(&self) -> Option<(&Policy, &Quota)> {
        Some(self.reported()).filter(|(p, _)| !p.shadow)
    }

    /// The enforced policies with their quotas.
    pub fn enforced(&self) -> impl Iterator<Item = (&Policy, &Quota)> {
        self.quotas
            .iter()
            .filter(|(p, _)| !p.shadow)
            .map(|(p, q)| (p.as_ref(), q))
    }

    /// Until every enforced policy that denies allows again (shadow
    /// policies never make a client wait); zero when none denies.
    pub fn retry_after(&self) -> Duration {
        self.enforced()
            .filter(|(_, q)| !q.allowed)
            .map(|(_, q)| q.retry_after)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// `Retry-After` for a denied request, in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after().as_millis() as u64)
            .div_ceil(1000)
            .max(1)
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

/// An admin override as last read from the store, with what it does under
/// the rules in force (or why it no longer fits them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dynamic {
    spec: overrides::OverrideSpec,
    action: Result<rules::OverrideAction, String>,
}

/// Dynamic overrides by identity.
type OverrideMap = HashMap<(Strategy, String), Dynamic>;

/// An admin override and whether it is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideState {
    pub spec: overrides::OverrideSpec,
    /// Why it is not in force (it no longer fits the rules), if it is not.
    pub problem: Option<String>,
}

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
    /// The last reset sequence seen (None until the first refresh).
    resets_seen: std::sync::Mutex<Option<u64>>,
    /// Storage keys of bad override entries already reported.
    reported_bad: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
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
            resets_seen: Default::default(),
            reported_bad: Default::default(),
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
        // Overrides are judged again under the new rules.
        let dynamic: OverrideMap = self
            .dynamic
            .load()
            .iter()
            .map(|(k, d)| (k.clone(), judge(&rules, k.0, d.spec.clone())))
            .collect();
        self.rules.store(Arc::new(rules));
        self.dynamic.store(Arc::new(dynamic));
        // A cached denial may not hold under the new limits.
        self.denied.clear();
    }

    /// Identities denied until their retry_after, answered without Redis.
    pub fn deny_cache(&self) -> &deny_cache::DenyCache {
        &self.denied
    }

    /// The override in force for `identity` now, if any, with the time it
    /// has left.
    fn active_override(
        &self,
        identity: &Identity,
    ) -> Option<(rules::OverrideAction, Option<Duration>)> {
        let dynamic = self.dynamic.load();
        if dynamic.is_empty() {
            return None;
        }
        let entry = dynamic.get(&(identity.strategy, identity.id.clone()))?;
        let now = SystemTime::now();
        if !entry.spec.active_at(now) {
            return None;
        }
        let action = entry.action.as_ref().ok()?.clone();
        Some((action, entry.spec.remaining_at(now)))
    }

    /// The policies for `identity` on `route`, dynamic overrides first, and
    /// how long that answer holds (until the override ends).
    fn resolve(&self, identity: &Identity, route: &Route<'_>) -> (Resolution, Option<Duration>) {
        let active = self.active_override(identity);
        let rules = self.rules.load();
        match active {
            None => (rules.resolve_with(identity, route, None), None),
            Some((action, valid_for)) => (
                rules.resolve_with(identity, route, Some(&action)),
                valid_for,
            ),
        }
    }

    /// Checks (and, if allowed, counts) one request of `caller` on `route`.
    pub async fn check(
        &self,
        caller: &Caller,
        route: &Route<'_>,
    ) -> Result<Decision, LimiterError> {
        let identity = &caller.identity;
        if let Some(outcome) = self.denied.get(identity, route) {
            self.metrics.deny_cache_hits.inc();
            return Ok(Decision::Denied(outcome));
        }
        let (resolution, valid_for) = self.resolve(identity, route);
        let policies = match countable(resolution, caller) {
            Resolution::Unlimited => return Ok(Decision::Unlimited),
            Resolution::Blocked => return Ok(Decision::Blocked),
            Resolution::Limited(policies) => policies,
        };
        // Read before asking the store: a reset that lands meanwhile makes
        // this check's denial stale, and the cache then refuses it.
        let generation = self.denied.generation();
        match self.store.check(caller, &policies, true).await {
            Ok(reply) => {
                let allowed = reply.allowed;
                let outcome = Outcome::new(policies, reply.quotas, allowed);
                Ok(if allowed {
                    Decision::Allowed(outcome)
                } else {
                    // The cache is keyed by identity: a denial that a per-IP
                    // policy took part in depends on the IP too, and is not
                    // cached.
                    let by_identity_only = outcome
                        .enforced()
                        .all(|(p, q)| q.allowed || !p.per_client_ip);
                    if by_identity_only {
                        self.denied
                            .insert(identity, route, &outcome, generation, valid_for);
                    }
                    Decision::Denied(outcome)
                })
            }
            Err(error) => match self.failure_mode {
                FailureMode::Open => Ok(Decision::Degraded { error, policies }),
                FailureMode::Closed => Err(LimiterError::Unavailable(error)),
                FailureMode::Local => {
                    let verdict = self.local.check(caller, &policies);
                    Ok(Decision::Local {
                        error,
                        verdict,
                        policies,
                    })
                }
            },
        }
    }

    /// The state of `caller` on `route` without counting anything.
    pub async fn status(&self, caller: &Caller, route: &Route<'_>) -> Result<Standing, StoreError> {
        let policies = match countable(self.resolve(&caller.identity, route).0, caller) {
            Resolution::Limited(policies) => policies,
            Resolution::Unlimited => return Ok(Standing::Unlimited),
            Resolution::Blocked => return Ok(Standing::Blocked),
        };
        let reply = self.store.check(caller, &policies, false).await?;
        Ok(Standing::Limited(Outcome::new(
            policies,
            reply.quotas,
            true,
        )))
    }

    /// Deletes the counters of `identity` under every policy that applies to
    /// it on `route` (the rules' policies and, when an override changes a
    /// window and so the key, the override's too); returns how many existed.
    /// Every instance forgets its cached denials of `identity` within a
    /// second.
    pub async fn reset(&self, identity: &Identity, route: &Route<'_>) -> Result<u64, StoreError> {
        let rules = self.rules.load();
        let mut policies = match rules.resolve_with(identity, route, None) {
            Resolution::Limited(policies) => policies,
            Resolution::Unlimited | Resolution::Blocked => Vec::new(),
        };
        if let Some(entry) = self
            .dynamic
            .load()
            .get(&(identity.strategy, identity.id.clone()))
        {
            if let Ok(action) = &entry.action {
                if let Resolution::Limited(more) = rules.resolve_with(identity, route, Some(action))
                {
                    policies.extend(more);
                }
            }
        }
        // Per-IP policies count an IP, not this identity (unless it is one).
        policies.retain(|p| !p.per_client_ip || identity.strategy == Strategy::Ip);
        let deleted = self.store.reset(identity, &policies).await?;
        self.denied.forget(identity);
        self.store
            .publish_reset(&overrides::storage_key(identity))
            .await?;
        Ok(deleted)
    }

    /// The admin override of `identity`, in force or not (expired ones are
    /// not shown).
    pub fn override_for(&self, identity: &Identity) -> Option<OverrideState> {
        self.dynamic
            .load()
            .get(&(identity.strategy, identity.id.clone()))
            .filter(|d| d.spec.active_at(SystemTime::now()))
            .map(Dynamic::state)
    }

    /// Every unexpired admin override.
    pub fn overrides(&self) -> Vec<(Identity, OverrideState)> {
        let now = SystemTime::now();
        let mut all: Vec<_> = self
            .dynamic
            .load()
            .iter()
            .filter(|(_, d)| d.spec.active_at(now))
            .map(|((strategy, id), d)| {
                (
                    Identity {
                        strategy: *strategy,
                        id: id.clone(),
                    },
                    d.state(),
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
        if let Err(problem) = judge(&self.rules.load(), identity.strategy, spec.clone()).action {
            return Err(AdminError::Invalid(problem));
        }
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

    /// Rereads what instances share (every [`overrides::REFRESH_INTERVAL`],
    /// and after each change): the overrides, and the resets published since
    /// the last refresh. Identities whose override changed or whose counters
    /// were reset are dropped from the deny cache, so a raised limit, an
    /// allow-listing or a reset applies on every instance within the
    /// interval. Expired overrides are deleted from the store.
    pub async fn refresh_overrides(&self) -> Result<(), StoreError> {
        self.refresh_resets().await?;
        let stored = self.store.load_overrides().await?;
        let rules = self.rules.load();
        let now = SystemTime::now();
        let mut fresh = OverrideMap::with_capacity(stored.len());
        let mut bad = Vec::new();
        for (key, json) in stored {
            let decoded = std::str::from_utf8(&key)
                .ok()
                .and_then(overrides::identity_of)
                .zip(serde_json::from_slice::<overrides::OverrideSpec>(&json).ok());
            let Some((identity, spec)) = decoded else {
                bad.push(key);
                continue;
            };
            if !spec.active_at(now) {
                // Gone for good: remove it, unless an admin replaced it
                // meanwhile (compare and delete).
                if let Err(err) = self.store.delete_override_if(&key, &json).await {
                    log::debug!("overrides: cannot remove an expired one: {err}");
                }
                continue;
            }
            let entry = judge(&rules, identity.strategy, spec);
            fresh.insert((identity.strategy, identity.id), entry);
        }
        self.report_bad_entries(bad);
        let old = self.dynamic.load_full();
        if *old == fresh {
            return Ok(());
        }
        for (key, entry) in fresh.iter() {
            if old.get(key).is_none_or(|o| o.action != entry.action) {
                if let Err(problem) = &entry.action {
                    log::warn!(
                        "overrides: the override of {} is not in force: {problem}",
                        Identity {
                            strategy: key.0,
                            id: key.1.clone()
                        }
                        .redacted()
                    );
                }
            }
        }
        let changed = old
            .iter()
            .filter(|(k, v)| fresh.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(fresh.keys().filter(|k| !old.contains_key(*k)));
        for key in changed {
            self.denied.forget(&Identity {
                strategy: key.0,
                id: key.1.clone(),
            });
        }
        self.dynamic.store(Arc::new(fresh));
        Ok(())
    }

    /// Forgets the cached denials of identities reset on any instance.
    async fn refresh_resets(&self) -> Result<(), StoreError> {
        let seen = *self.resets_seen.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.store.resets_since(seen.unwrap_or(u64::MAX)).await?;
        if let Some(seen) = seen {
            if log.latest < seen || !log.complete {
                // The log was lost (a flushed Redis) or trimmed past us.
                self.denied.clear();
            } else {
                for key in &log.keys {
                    if let Some(identity) = std::str::from_utf8(key)
                        .ok()
                        .and_then(overrides::identity_of)
                    {
                        self.denied.forget(&identity);
                    }
                }
            }
        }
        *self.resets_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(log.latest);
        Ok(())
    }

    /// Logs each unreadable override entry once (not every second).
    fn report_bad_entries(&self, bad: Vec<Vec<u8>>) {
        let mut reported = self.reported_bad.lock().unwrap_or_else(|e| e.into_inner());
        reported.retain(|k| bad.contains(k));
        for key in bad {
            if reported.insert(key.clone()) {
                log::warn!(
                    "overrides: ignoring an unreadable entry {:?} in the store",
                    String::from_utf8_lossy(&key)
                );
            }
        }
    }
}

impl Dynamic {
    fn state(&self) -> OverrideState {
        OverrideState {
            spec: self.spec.clone(),
            problem: self.action.as_ref().err().cloned(),
        }
    }
}

/// The identity whose counter `policy` uses for `caller`: its client IP for
/// a per-IP policy, else its identity. `None`: a per-IP policy for a caller
/// whose IP is unknown, which is skipped.
pub fn counted_identity<'a>(policy: &Policy, caller: &'a Caller) -> Option<&'a Identity> {
    if policy.per_client_ip {
        caller.client_ip.as_ref()
    } else {
        Some(&caller.identity)
    }
}

/// `resolution` without the per-IP policies of a caller whose IP is
/// unknown (nothing to count them by).
fn countable(resolution: Resolution, caller: &Caller) -> Resolution {
    match resolution {
        Resolution::Limited(mut policies) if caller.client_ip.is_none() => {
            policies.retain(|p| !p.per_client_ip);
            if policies.is_empty() {
                Resolution::Unlimited
            } else {
                Resolution::Limited(policies)
            }
        }
        other => other,
    }
}

/// What `spec` does to an identity of `strategy` under `rules`, or why it
/// cannot apply.
fn judge(rules: &Rules, strategy: Strategy, spec: overrides::OverrideSpec) -> Dynamic {
    let action = spec.action().and_then(|action| {
        rules
            .check_override(strategy, &action)
            .map(|()| action)
            .map_err(|(key, problem)| format!("{key}: {problem}"))
    });
    Dynamic { spec, action }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

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
