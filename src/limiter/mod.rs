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
pub mod decision;
pub mod deny_cache;
pub mod local;
pub mod overrides;
pub mod request;
pub mod rules;
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
pub use decision::{Decision, LimiterError, Outcome, Standing};
pub use request::{CheckRequest, Descriptor, Entry, LimitOverride};
pub use rules::{Item, Mark, Resolution, Route, Rules, RulesError};
pub use store::{Counter, RawOverride, ResetLog, Store, StoreError, StoreReply};

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
    /// The last reset sequence seen (None until the first refresh).
    resets_seen: Mutex<Option<u64>>,
    /// Storage keys of bad override entries already reported.
    reported_bad: Mutex<HashSet<Vec<u8>>>,
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
            reported_bad: Default::default(),
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
    /// cancelled mid-call frees its slot.
    async fn guarded(&self, counters: &[Counter<'_>]) -> Result<StoreReply, StoreError> {
        let permit = self.breaker.admit();
        if permit.admission() == breaker::Admission::Reject {
            self.metrics
                .redis_errors
                .with_label_values(&["circuit_open"])
                .inc();
            return Err(StoreError::CircuitOpen);
        }
        // A traced request notes the time it waits for the store.
        let result = if crate::traces::traced() {
            let (wall, started) = (SystemTime::now(), std::time::Instant::now());
            let result = self.store.check(counters).await;
            crate::traces::note_store_call(wall, started.elapsed());
            result
        } else {
            self.store.check(counters).await
        };
        match &result {
            Ok(_) => permit.success(),
            Err(StoreError::Timeout(_) | StoreError::Connection(_)) => permit.failure(),
            // Says nothing about the store's health; the permit's drop
            // releases a probe.
            Err(_) => drop(permit),
        }
        result
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

    /// The store's counters for `items` of `request`; `charge` unset reads
    /// without writing.
    fn counters<'a>(
        request: &'a CheckRequest,
        items: &'a [Item],
        charge: bool,
    ) -> Vec<Counter<'a>> {
        items
            .iter()
            .filter_map(|item| {
                let descriptor = &request.descriptors[item.descriptor];
                Some(Counter {
                    subject: item.subject.as_deref().or(descriptor.subject())?,
                    policy: &item.policy,
                    cost: if charge {
                        i64::from(item.policy.cost()).saturating_mul(descriptor.hits)
                    } else {
                        0
                    },
                })
            })
            .collect()
    }

    /// Checks (and, if allowed, counts) one request.
    pub async fn check(&self, request: &CheckRequest) -> Result<Decision, LimiterError> {
        Ok(self.check_marked(request, false).await?.decision)
    }

    /// Counts `request` among the heavy hitters: each subject (descriptor
    /// subject; for an Envoy domain, its key prefixed with `@<domain>/`)
    /// once, as a denial too when `denied`.
    fn record_top(&self, request: &CheckRequest, denied: bool) {
        let now = top::now_secs();
        if request.domain == rules::http::DOMAIN {
            // The common case: borrowed, nothing allocated but what the
            // counts keep.
            let mut subjects: Vec<&Entry> = Vec::with_capacity(request.descriptors.len());
            for subject in request.descriptors.iter().filter_map(Descriptor::subject) {
                if !subjects.contains(&subject) {
                    subjects.push(subject);
                }
            }
            self.top.record(subjects.into_iter(), denied, now);
            return;
        }
        let mut subjects: Vec<Entry> = Vec::with_capacity(request.descriptors.len());
        for (key, value) in request.descriptors.iter().filter_map(Descriptor::subject) {
            let subject: Entry = (format!("@{}/{key}", request.domain).into(), value.clone());
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
        self.top.record(subjects.iter(), denied, now);
    }

    /// Checks (and, if allowed, counts) one request; with `marks`, also
    /// says what the rules made of each descriptor (for the front ends that
    /// answer per descriptor).
    pub async fn check_marked(
        &self,
        request: &CheckRequest,
        marks: bool,
    ) -> Result<Checked, LimiterError> {
        let checked = self.check_uncounted(request, marks).await;
        if let Ok(Checked { decision, .. }) = &checked {
            let denied = matches!(decision, Decision::Denied(_) | Decision::Blocked)
                || matches!(decision, Decision::Local { verdict, .. } if !verdict.allowed);
            // Peeks and refunds are not requests of anyone.
            if request.descriptors.iter().any(|d| d.hits > 0) {
                self.record_top(request, denied);
            }
        }
        checked
    }

    async fn check_uncounted(
        &self,
        request: &CheckRequest,
        marks: bool,
    ) -> Result<Checked, LimiterError> {
        let refunds = request.descriptors.iter().any(|d| d.hits < 0);
        // A refund must reach the store (and then frees its subjects'
        // cached denials); it is never answered from the deny cache.
        if !refunds {
            if let Some(outcome) = self.denied.get(request) {
                self.metrics.deny_cache_hits.inc();
                let marks = match (marks, self.resolve(request)) {
                    (true, Resolution::Limited { marks, .. }) => marks,
                    _ => Vec::new(),
                };
                return Ok(Checked {
                    decision: Decision::Denied(outcome),
                    marks,
                });
            }
        }
        let (items, valid_for, marks) = match self.resolve(request) {
            Resolution::Blocked => return Ok(Checked::new(Decision::Blocked)),
            Resolution::Limited {
                marks,
                banned: true,
                ..
            } => {
                return Ok(Checked {
                    decision: Decision::Blocked,
                    marks,
                })
            }
            Resolution::Limited { items, marks, .. } if items.is_empty() => {
                return Ok(Checked {
                    decision: Decision::Unlimited,
                    marks,
                })
            }
            Resolution::Limited {
                items,
                valid_for,
                marks,
                ..
            } => (items, valid_for, marks),
        };
        let decision = self.decide(request, items, valid_for, refunds).await?;
        Ok(Checked { decision, marks })
    }

    /// Asks the store about `items` and turns its answer (or its failure)
    /// into a decision.
    async fn decide(
        &self,
        request: &CheckRequest,
        items: Vec<Item>,
        valid_for: Option<Duration>,
        refunds: bool,
    ) -> Result<Decision, LimiterError> {
        // Read before asking the store: a reset that lands meanwhile makes
        // this check's denial stale, and the cache then refuses it.
        let generation = self.denied.generation();
        let counters = Self::counters(request, &items, true);
        match self.guarded(&counters).await {
            Ok(reply) => {
                // Redis answers: the outage's local counts are done with.
                self.local.clear();
                if refunds {
                    for subject in request
                        .descriptors
                        .iter()
                        .filter(|d| d.hits < 0)
                        .filter_map(Descriptor::subject)
                    {
                        self.denied.forget(subject);
                    }
                }
                let allowed = reply.allowed;
                let outcome = outcome(items, reply.quotas, allowed);
                Ok(if allowed {
                    Decision::Allowed(outcome)
                } else {
                    self.denied.insert(request, &outcome, generation, valid_for);
                    Decision::Denied(outcome)
                })
            }
            Err(error) => {
                let policies: Vec<Arc<Policy>> = items.iter().map(|i| i.policy.clone()).collect();
                // Each policy's own mode, or the service's; the strictest wins.
                let mode = policies
                    .iter()
                    .map(|p| p.failure_mode().unwrap_or(self.failure_mode))
                    .max_by_key(|m| m.strictness())
                    .unwrap_or(self.failure_mode);
                match mode {
                    FailureMode::Open => Ok(Decision::Degraded { error, policies }),
                    FailureMode::Closed => Err(LimiterError::Unavailable(error)),
                    FailureMode::Local => {
                        let verdict = self.local.check(&counters);
                        Ok(Decision::Local {
                            error,
                            verdict,
                            policies,
                        })
                    }
                }
            }
        }
    }

    /// The override in force for `subject`: the admin API's, else the
    /// rules file's.
    fn override_action(&self, rules: &Rules, subject: &Entry) -> Option<rules::OverrideAction> {
        self.dynamic_action(subject)
            .map(|(action, _)| action)
            .or_else(|| rules.file_override(subject).cloned())
    }

    /// Every counter of the HTTP domain that `subjects` (an identity's, see
    /// [`rules::http::subjects`]) may have: each policy counted under one of
    /// them, whatever route or host it is scoped to, with each subject's
    /// override applied (and, with `unchanged`, also as the rules say).
    fn identity_items(&self, rules: &Rules, subjects: &[Entry], unchanged: bool) -> Vec<Item> {
        let mut items = Vec::new();
        for subject in subjects {
            let action = self.override_action(rules, subject);
            let shared = Arc::new(subject.clone());
            for policy in rules.http_policies_for(&subject.0) {
                let item = |policy: Arc<Policy>| Item {
                    descriptor: 0,
                    policy,
                    subject: Some(shared.clone()),
                };
                let applied = action.as_ref().map(|a| a.apply(policy));
                match applied {
                    Some(changed) if !Arc::ptr_eq(&changed, policy) => {
                        if unchanged {
                            items.push(item(policy.clone()));
                        }
                        items.push(item(changed));
                    }
                    _ => items.push(item(policy.clone())),
                }
            }
        }
        items
    }

    /// Where an identity stands under every policy that may count it,
    /// without counting anything: blocked or allow-listed by an override,
    /// or each counter as it is.
    pub async fn identity_status(&self, subjects: &[Entry]) -> Result<Standing, StoreError> {
        let rules = self.rules.load_full();
        match subjects
            .first()
            .and_then(|s| self.override_action(&rules, s))
        {
            Some(rules::OverrideAction::Blocked) => return Ok(Standing::Blocked),
            Some(rules::OverrideAction::Unlimited) => return Ok(Standing::Unlimited),
            _ => {}
        }
        let items = self.identity_items(&rules, subjects, false);
        if items.is_empty() {
            return Ok(Standing::Unlimited);
        }
        let reply = self.guarded(&item_counters(&items)).await?;
        Ok(Standing::Limited(outcome(items, reply.quotas, true)))
    }

    /// Where `request` stands, without counting anything.
    pub async fn status(&self, request: &CheckRequest) -> Result<Standing, StoreError> {
        let items = match self.resolve(request) {
            Resolution::Blocked => return Ok(Standing::Blocked),
            Resolution::Limited { items, .. } if items.is_empty() => {
                return Ok(Standing::Unlimited)
            }
            Resolution::Limited { banned: true, .. } => return Ok(Standing::Blocked),
            Resolution::Limited { items, .. } => items,
        };
        let reply = self
            .guarded(&Self::counters(request, &items, false))
            .await?;
        Ok(Standing::Limited(outcome(items, reply.quotas, true)))
    }
}

/// A decision with what the rules made of each descriptor (empty unless
/// asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub decision: Decision,
    pub marks: Vec<Mark>,
}

impl Checked {
    fn new(decision: Decision) -> Self {
        Checked {
            decision,
            marks: Vec::new(),
        }
    }
}

/// The counters of `items` that name their subject, read without charging.
fn item_counters(items: &[Item]) -> Vec<Counter<'_>> {
    items
        .iter()
        .filter_map(|item| {
            Some(Counter {
                subject: item.subject.as_deref()?,
                policy: &item.policy,
                cost: 0,
            })
        })
        .collect()
}

fn outcome(items: Vec<Item>, quotas: Vec<Quota>, allowed: bool) -> Outcome {
    let (descriptors, policies) = items.into_iter().map(|i| (i.descriptor, i.policy)).unzip();
    Outcome::new(policies, descriptors, quotas, allowed)
}
