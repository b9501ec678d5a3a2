//! The `local` failure mode: while Redis cannot answer, each instance keeps
//! approximate limits in memory, so an outage neither lets every request
//! through (`open`) nor refuses them all (`closed`).
//!
//! Approximate, and said so: each instance counts only what it sees (N
//! instances admit up to N times a limit), every policy is enforced as a GCRA
//! of the same rate and burst whatever its algorithm, and several policies
//! are checked one after another (a request denied by the second policy has
//! already been counted by the first). When Redis answers again the exact
//! counters take over and the local state is simply no longer consulted.
//!
//! The counting itself is the `governor` crate's keyed GCRA.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::request::Entry;
use super::store::Counter;
use super::Policy;

/// Checks between two sweeps of identities that are back to a full quota.
const SWEEP_EVERY: u64 = 10_000;

/// Keyed limiters kept at once. A policy is told apart by its limit and
/// window, and a caller's own limit (Envoy's descriptor `limit`) makes one
/// of its choosing: without a bound, made-up limits grew the process by
/// 148 MB during an outage (issue 19, item 11). Past it, limiters with no
/// identity left are dropped; if every one is in use, a check of a new one
/// is refused (it cannot be counted, and the mode must not fail open).
pub const MAX_LIMITERS: usize = 1024;

type Key = Entry;
/// A policy as the local limiter tells them apart: name, limit, window.
type PolicyId = (String, u32, Duration);
type Limiters = HashMap<PolicyId, Arc<DefaultKeyedRateLimiter<Key>>>;

#[derive(Default)]
pub struct LocalLimiter {
    /// One keyed limiter per (policy name, limit, window). A std Mutex:
    /// held only to look up or insert, never across an await.
    limiters: Mutex<Limiters>,
    checks: AtomicU64,
    /// Whether `limiters` may hold anything: read on every answered check,
    /// so the common case (no outage) takes no lock.
    used: std::sync::atomic::AtomicBool,
    clock: DefaultClock,
}

/// What the local limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVerdict {
    pub allowed: bool,
    /// Until the denying policy would allow; zero when allowed.
    pub retry_after: Duration,
}

impl LocalLimiter {
    fn limiter(&self, policy: &Policy) -> Option<Arc<DefaultKeyedRateLimiter<Key>>> {
        let id = (
            policy.name().to_owned(),
            policy.limit().get(),
            policy.window(),
        );
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        self.used.store(true, Ordering::Relaxed);
        if limiters.len() >= MAX_LIMITERS && !limiters.contains_key(&id) {
            limiters.retain(|_, l| {
                l.retain_recent();
                !l.is_empty()
            });
            if limiters.len() >= MAX_LIMITERS {
                return None;
            }
        }
        let limiter = limiters
            .entry(id)
            .or_insert_with(|| {
                let period = (policy.window() / policy.limit().get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)
                    .expect("a period of at least 1 ns")
                    .allow_burst(policy.limit());
                Arc::new(RateLimiter::keyed(quota))
            })
            .clone();
        Some(limiter)
    }

    /// Forgets everything: Redis answers again, and the exact counters
    /// take over (what was counted here is no longer consulted).
    pub fn clear(&self) {
        // A load first: on every answered check, and a read of a line no
        // one writes costs nothing, where a swap would be a write.
        if self.used.load(Ordering::Relaxed) && self.used.swap(false, Ordering::Relaxed) {
            *self.limiters.lock().unwrap_or_else(|e| e.into_inner()) = HashMap::new();
        }
    }

    /// Keyed limiters held now.
    pub fn len(&self) -> usize {
        self.limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks `counters` (each its subject under its policy, taking its
    /// cost), one after another.
    pub fn check(&self, counters: &[Counter<'_>]) -> LocalVerdict {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        // Shadow policies are never enforced, in this mode either.
        for counter in counters.iter().filter(|c| !c.policy.shadow()) {
            let policy = counter.policy;
            // Peeks and refunds take nothing here: the local limiter is
            // approximate, and a refund while Redis is down is not replayed.
            let Some(cost) = u32::try_from(counter.cost).ok().and_then(NonZeroU32::new) else {
                continue;
            };
            let Some(limiter) = self.limiter(policy) else {
                return LocalVerdict {
                    allowed: false,
                    retry_after: policy.window(),
                };
            };
            match limiter.check_key_n(counter.subject, cost) {
                Ok(Ok(_)) => {}
                Ok(Err(not_until)) => {
                    return LocalVerdict {
                        allowed: false,
                        retry_after: not_until.wait_time_from(self.clock.now()),
                    }
                }
                // Cost above the burst: cannot happen, Policy::new refuses it.
                Err(_) => {
                    return LocalVerdict {
                        allowed: false,
                        retry_after: policy.window(),
                    }
                }
            }
        }
        LocalVerdict {
            allowed: true,
            retry_after: Duration::ZERO,
        }
    }

    /// Forgets identities whose quota is full again: memory stays bounded by
    /// the identities active within one window.
    fn sweep(&self) {
        let limiters: Vec<_> = self
            .limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Algorithm;

    #[test]
    fn admits_the_burst_then_refuses_with_a_wait() {
        let local = LocalLimiter::default();
        let policy = Arc::new(
            Policy::new(
                "p",
                Algorithm::FixedWindow,
                NonZeroU32::new(3).unwrap(),
                Duration::from_secs(60),
                1,
            )
            .unwrap(),
        );
        let (a, b): (Entry, Entry) = (("user".into(), "a".into()), ("user".into(), "b".into()));
        let counter = |subject| Counter {
            subject,
            policy: &policy,
            cost: 1,
            lease: None,
        };
        for _ in 0..3 {
            assert!(local.check(&[counter(&a)]).allowed);
        }
        let denied = local.check(&[counter(&a)]);
        assert!(!denied.allowed);
        assert!(denied.retry_after > Duration::from_secs(15));
        assert!(denied.retry_after <= Duration::from_secs(20));
        assert!(local.check(&[counter(&b)]).allowed, "per subject");
    }

    /// Regression (issue 19, item 11): one limiter per made-up (name,
    /// limit, window), never freed.
    #[test]
    fn limiters_are_bounded_and_cleared_when_redis_returns() {
        let local = LocalLimiter::default();
        let subject: Entry = ("user".into(), "a".into());
        for limit in 1..=(MAX_LIMITERS as u32 + 50) {
            let policy = Policy::new(
                "made-up",
                Algorithm::FixedWindow,
                NonZeroU32::new(limit).unwrap(),
                Duration::from_secs(3600),
                1,
            )
            .unwrap();
            local.check(&[Counter {
                subject: &subject,
                policy: &policy,
                cost: 1,
                lease: None,
            }]);
            assert!(local.len() <= MAX_LIMITERS);
        }
        local.clear();
        assert!(local.is_empty());
    }
}
