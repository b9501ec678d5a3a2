//! The limiter core: check requests in, decisions out. It knows no HTTP, no
//! gRPC and no Redis command.
//!
//! A [`Limiter`] takes a [`CheckRequest`] (a domain and its descriptors),
//! finds the limits each descriptor matches in the [`rules`] (admin
//! overrides first, see [`admin`]), asks its [`Store`] to check all of them
//! in one atomic step (in production the Redis layer, which runs one Lua
//! script), and turns the answer into a [`Decision`] with an outcome per
//! descriptor. The deny cache, shadow policies, the failure modes and the
//! overrides live here once and serve every front end.

pub mod admin;
pub mod breaker;
mod check;
pub mod decision;
pub mod deny_cache;
pub mod local;
pub mod overrides;
pub mod request;
pub mod rules;
pub mod slices;
mod status;
pub mod store;
pub mod top;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

pub use crate::policy::{Algorithm, FailureMode, Policy, Quota, MAX_LIMIT_TIMES_WINDOW_MS};
use crate::telemetry::Metrics;
pub use admin::{AdminError, OverrideState};
pub use check::Checked;
pub use decision::{Decision, LimiterError, Outcome, Standing};
pub use request::{CheckRequest, Descriptor, Entry, LeaseMode, LimitOverride};
pub use rules::{Item, Mark, Resolution, Route, Rules, RulesError};
pub use store::{Counter, RawOverride, ResetLog, SliceTaken, Store, StoreError, StoreReply};

pub struct Limiter<S> {
    store: S,
    rules: ArcSwap<Rules>,
    /// Held by [`Limiter::update_rules`]: one change of the rules at a time.
    rules_writer: Mutex<()>,
    /// Every policy in shadow mode (RATE_LIMIT_SHADOW), through reloads.
    shadow: bool,
    failure_mode: FailureMode,
    local: local::LocalLimiter,
    breaker: breaker::Breaker,
    denied: deny_cache::DenyCache,
    dynamic: ArcSwap<admin::OverrideMap>,
    /// The overrides' version when they were last read whole, and when.
    overrides_seen: Mutex<Option<(Option<u64>, std::time::Instant)>>,
    /// Held for a whole refresh of the overrides: an admin call's refresh
    /// and the periodic one never interleave (one could return before the
    /// other's newer map is in force, or store an older one over it).
    refreshing: tokio::sync::Mutex<()>,
    /// The last reset sequence seen (None until the first refresh).
    resets_seen: Mutex<Option<u64>>,
    /// Storage keys of bad override entries already reported.
    reported_bad: Mutex<HashSet<Vec<u8>>>,
    /// The quota slices this instance holds (see [`slices`]).
    slices: slices::Slices,
    /// Who is being limited (see [`top`]).
    top: top::TopOffenders,
    /// [`top::TopOffenders::recorded`] as last published.
    top_published: AtomicU64,
    /// This instance's name among those publishing heavy hitters.
    instance: String,
    /// The rules' version: 1 as started, one more per replacement.
    rules_version: AtomicU64,
    /// When the rules were last replaced (ms since the epoch; 0: never).
    rules_since_ms: AtomicU64,
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
            rules_writer: Mutex::new(()),
            shadow,
            failure_mode,
            local: local::LocalLimiter::default(),
            breaker: breaker::Breaker::default(),
            denied: deny_cache::DenyCache::default(),
            dynamic: ArcSwap::from_pointee(HashMap::new()),
            resets_seen: Default::default(),
            overrides_seen: Default::default(),
            refreshing: Default::default(),
            reported_bad: Default::default(),
            slices: slices::Slices::new(
                slices::Clock::Real(std::time::Instant::now()),
                metrics.clone(),
            ),
            top: top::TopOffenders::default(),
            top_published: AtomicU64::new(0),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            rules_version: AtomicU64::new(1),
            rules_since_ms: AtomicU64::new(0),
            metrics,
        }
    }

    /// The same limiter with `breaker` in front of its store.
    pub fn with_breaker(mut self, breaker: breaker::Breaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// The same limiter with its slices on `clock` (the model tests').
    pub fn with_slice_clock(mut self, clock: slices::Clock) -> Self {
        self.slices = slices::Slices::new(clock, self.metrics.clone());
        self
    }

    /// The quota slices this instance holds.
    pub fn slices(&self) -> &slices::Slices {
        &self.slices
    }

    /// Gives back the unspent units of expired slices (all of them with
    /// `all`: the instance stops); run every [`slices::SWEEP_INTERVAL`].
    pub async fn sweep_slices(&self, all: bool) {
        self.slices.sweep(&self.store, all).await;
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether the circuit breaker is open (checks fail fast).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The store's health check; an answer closes an open breaker at once
    /// (requests need not wait for the next probe).
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let latency = self.store.ping().await?;
        self.breaker.record_success();
        Ok(latency)
    }

    /// Asks the store through the circuit breaker: while it is open the
    /// answer is `CircuitOpen` at once, and one call in each cool-down
    /// probes the store. The permit is dropped with this future, so a probe
    /// cancelled mid-call frees its slot. (Written out rather than through
    /// [`Limiter::through_breaker`]: a future passed by value is held
    /// twice in the caller's state, and every request's future, boxed by
    /// each middleware, would carry both copies of the store call.)
    async fn guarded(&self, counters: &[Counter<'_>]) -> Result<StoreReply, StoreError> {
        let permit = self.admit()?;
        // A traced request notes the time it waits for the store.
        let result = if crate::traces::traced() {
            let (wall, started) = (SystemTime::now(), std::time::Instant::now());
            let result = self.store.check(counters).await;
            crate::traces::note_store_call(wall, started.elapsed());
            result
        } else {
            self.store.check(counters).await
        };
        settle(permit, &result);
        result
    }

    /// `call` (a call of the store) through the circuit breaker.
    async fn through_breaker<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let permit = self.admit()?;
        let result = call.await;
        settle(permit, &result);
        result
    }

    /// The breaker's permit for one store call, or `CircuitOpen` (counted)
    /// while it is open.
    fn admit(&self) -> Result<breaker::Permit<'_>, StoreError> {
        let permit = self.breaker.admit();
        if permit.admission() == breaker::Admission::Reject {
            self.metrics
                .redis_errors
                .with_label_values(&["circuit_open"])
                .inc();
            return Err(StoreError::CircuitOpen);
        }
        Ok(permit)
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

    /// The descriptor shapes of the rules in force (see
    /// [`rules::http::request`]); cheaper than [`Limiter::rules`] on the
    /// request path.
    pub fn shapes(&self) -> rules::Shapes {
        self.rules.load().shapes()
    }

    /// Puts in force the rules `change` makes of those in force, as one
    /// writer: two changes at once (the rules file's reloader and the Envoy
    /// configuration's, each replacing its half) are made one after the
    /// other, so neither undoes the other.
    pub fn update_rules(&self, change: impl FnOnce(&Rules) -> Rules) {
        let _writer = self.rules_writer.lock().unwrap_or_else(|e| e.into_inner());
        let rules = change(&self.rules.load());
        self.replace_rules(rules);
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
        let dynamic: admin::OverrideMap = self
            .dynamic
            .load()
            .iter()
            .map(|(k, d)| (k.clone(), admin::judge(&rules, &k.0, d.spec.clone())))
            .collect();
        self.rules.store(Arc::new(rules));
        self.dynamic.store(Arc::new(dynamic));
        // A cached denial may not hold under the new limits.
        self.denied.clear();
        self.rules_version.fetch_add(1, Ordering::Relaxed);
        self.rules_since_ms.store(top::now_ms(), Ordering::Relaxed);
    }

    /// The rules' version (1 as started, one more per replacement) and when
    /// they were last replaced (ms since the epoch; None: as started).
    pub fn rules_version(&self) -> (u64, Option<u64>) {
        let since = self.rules_since_ms.load(Ordering::Relaxed);
        (
            self.rules_version.load(Ordering::Relaxed),
            (since > 0).then_some(since),
        )
    }

    /// Requests denied until their retry_after, answered without Redis.
    pub fn deny_cache(&self) -> &deny_cache::DenyCache {
        &self.denied
    }

    /// The admin override in force for `subject`, with the time it has
    /// left.
    fn dynamic_action(&self, subject: &Entry) -> Option<(rules::OverrideAction, Option<Duration>)> {
        let dynamic = self.dynamic.load();
        if dynamic.is_empty() {
            return None;
        }
        let entry = dynamic.get(subject)?;
        let now = SystemTime::now();
        if !entry.spec.active_at(now) {
            return None;
        }
        let action = entry.action.as_ref().ok()?.clone();
        Some((action, entry.spec.remaining_at(now)))
    }

    /// The limits of every descriptor of `request`, overrides applied.
    fn resolve(&self, request: &CheckRequest) -> Resolution {
        self.rules
            .load()
            .resolve(request, |subject| self.dynamic_action(subject))
    }
}

/// Tells the breaker how a store call went.
fn settle<T>(permit: breaker::Permit<'_>, result: &Result<T, StoreError>) {
    match result {
        Ok(_) => permit.success(),
        Err(StoreError::Timeout(_) | StoreError::Connection(_)) => permit.failure(),
        // Says nothing about the store's health; the permit's drop
        // releases a probe.
        Err(_) => drop(permit),
    }
}
