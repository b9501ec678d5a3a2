//! Deciding: a check request's limits resolved, the deny cache consulted,
//! the store asked in one atomic step (or the failure mode when it cannot
//! answer), and the answer turned into a decision.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl<S: Store> Limiter<S> {
    /// The store's counters for `items` of `request`; `charge` unset reads
    /// without writing.
    pub(super) fn counters<'a>(
        request: &'a CheckRequest,
        items: &'a [Item],
        charge: bool,
    ) -> Vec<Counter<'a>> {
        items
            .iter()
            .filter_map(|item| {
                let descriptor = &request.descriptors[item.descriptor];
                let concurrency = item.policy.algorithm().is_concurrency();
                let counts = charge
                    && match descriptor.leases {
                        LeaseMode::All => true,
                        LeaseMode::ReadLeases => !concurrency,
                        LeaseMode::OnlyLeases => concurrency,
                    };
                Some(Counter {
                    subject: item.subject.as_deref().or(descriptor.subject())?,
                    policy: &item.policy,
                    cost: if counts {
                        i64::from(item.policy.cost()).saturating_mul(descriptor.hits)
                    } else {
                        0
                    },
                    // A concurrency slot is a lease with an id: the caller's,
                    // or a fresh one (released, without its id, as the lease
                    // that expires first).
                    lease: match &descriptor.lease {
                        _ if !counts || !concurrency => None,
                        Some(id) => Some(std::borrow::Cow::Borrowed(id.as_str())),
                        None if descriptor.hits > 0 => {
                            Some(std::borrow::Cow::Owned(uuid::Uuid::new_v4().to_string()))
                        }
                        None => None,
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
                // Resolved again only for the marks, which only the
                // front ends that answer per descriptor ask for.
                let marks = match marks.then(|| self.resolve(request)) {
                    Some(Resolution::Limited { marks, .. }) => marks,
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
        let sliced = !refunds && counters.iter().any(|c| c.policy.slices() && c.cost > 0);
        let result = if sliced {
            // Boxed: its future is about 3 KB (slice takes through the
            // breaker), and inline it would make every request's future,
            // boxed and moved at each middleware, that large.
            Box::pin(self.check_sliced(&counters)).await
        } else {
            self.guarded(&counters).await
        };
        match result {
            Ok(reply) => {
                // Redis answers: the outage's local counts are done with.
                self.local.clear();
                for ((counter, quota), expired) in
                    counters.iter().zip(&reply.quotas).zip(&reply.expired)
                {
                    let policy = counter.policy;
                    if policy.algorithm().is_concurrency() {
                        let name = policy.label().map_or(policy.name(), |l| &l.stats_key);
                        self.metrics.concurrency.observe(
                            name,
                            quota.limit,
                            counter.cost,
                            // An acquire is granted when the whole check
                            // is; a release when it freed a lease.
                            quota.allowed && (counter.cost < 0 || reply.allowed),
                            *expired,
                        );
                    }
                }
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
                    // A debit's charges must reach Redis even while it is
                    // spent, and a concurrency slot can free at any moment
                    // (a release): their denials are never cached.
                    // A sliced denial may end as soon as another instance
                    // gives back what it holds (its slices keep their own
                    // short memory of an empty counter).
                    if !outcome
                        .quotas
                        .iter()
                        .any(|(p, _)| p.debit() || p.algorithm().is_concurrency() || p.slices())
                    {
                        self.denied.insert(request, &outcome, generation, valid_for);
                    }
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
}

impl<S: Store> Limiter<S> {
    /// Checks `counters` of which some are spent from quota slices (see
    /// [`slices`]): those spend from this instance's slices first, taking a
    /// slice from the store when theirs cannot pay; the rest go to the store
    /// as one check if every sliced one allowed (else they are only read).
    /// The units of a request refused after all (or left undecided by a
    /// store error) go back to their slices.
    async fn check_sliced(&self, counters: &[Counter<'_>]) -> Result<StoreReply, StoreError> {
        let mut holds = Vec::new();
        let reply = self.spend_then_check(counters, &mut holds).await;
        if !matches!(&reply, Ok(reply) if reply.allowed) {
            holds.into_iter().for_each(|h| self.slices.unspend(h));
        }
        reply
    }

    /// [`Limiter::check_sliced`]'s decision; the units it took from slices
    /// are in `holds`.
    async fn spend_then_check(
        &self,
        counters: &[Counter<'_>],
        holds: &mut Vec<slices::Hold>,
    ) -> Result<StoreReply, StoreError> {
        let mut quotas: Vec<Option<Quota>> = vec![None; counters.len()];
        let mut allowed = true;
        for (quota, counter) in quotas.iter_mut().zip(counters) {
            if !allowed || !counter.policy.slices() || counter.cost <= 0 {
                continue;
            }
            let take = |need, want, now| {
                let whole = Counter {
                    cost: 0,
                    lease: None,
                    ..counter.clone()
                };
                async move {
                    self.through_breaker(self.store.take_slice(
                        &whole,
                        need,
                        want,
                        slices::SHARE,
                        now,
                    ))
                    .await
                }
            };
            // None: too many subjects sliced; this one is decided exactly.
            if let Some(spent) = self.slices.spend(counter, take).await? {
                allowed &= spent.quota.allowed || counter.policy.non_blocking();
                *quota = Some(spent.quota);
                holds.extend(spent.hold);
            }
        }
        let (rest, rest_counters): (Vec<usize>, Vec<Counter<'_>>) = counters
            .iter()
            .enumerate()
            .filter(|(i, _)| quotas[*i].is_none())
            .map(|(i, c)| {
                let mut c = c.clone();
                // Refused already: read (but a debit, charged whatever).
                if !allowed && !c.policy.debit() {
                    c.cost = 0;
                    c.lease = None;
                }
                (i, c)
            })
            .unzip();
        let mut expired = vec![0; counters.len()];
        if !rest.is_empty() {
            let reply = self.guarded(&rest_counters).await?;
            allowed &= reply.allowed;
            for ((i, quota), gone) in rest.into_iter().zip(reply.quotas).zip(reply.expired) {
                quotas[i] = Some(quota);
                expired[i] = gone;
            }
        }
        Ok(StoreReply {
            allowed,
            quotas: quotas.into_iter().flatten().collect(),
            expired,
        })
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
pub(super) fn item_counters(items: &[Item]) -> Vec<Counter<'_>> {
    items
        .iter()
        .filter_map(|item| {
            Some(Counter {
                subject: item.subject.as_deref()?,
                policy: &item.policy,
                cost: 0,
                lease: None,
            })
        })
        .collect()
}

pub(super) fn outcome(items: Vec<Item>, quotas: Vec<Quota>, allowed: bool) -> Outcome {
    let descriptors = items.iter().map(|i| i.descriptor).collect();
    let quotas = items.into_iter().map(|i| i.policy).zip(quotas).collect();
    Outcome::new(quotas, descriptors, allowed)
}
