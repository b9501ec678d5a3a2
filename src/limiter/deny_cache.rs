//! Identities known to be over their limit, remembered until their
//! `retry_after`, so that a flood from one abusive client costs no Redis
//! round trip.
//!
//! Exact, not approximate: when Redis denied a request with retry_after T,
//! the same request cannot be allowed before T (other requests of the same
//! identity can only push T further away; a denied request charges nothing).
//! Two things could make it allowed earlier, and both clear the cache: new
//! rules (a hot reload), and an operator resetting counters (cleared on this
//! instance; other instances keep denying until their entry expires, at most
//! the retry_after Redis gave them).
//!
//! Bounded: at most [`CAPACITY`] entries; when full, expired entries are
//! dropped, and if none are, new denials are simply not cached.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Outcome, Route};
use crate::identity::Identity;

/// Entries across all shards.
pub const CAPACITY: usize = 100_000;
const SHARDS: usize = 16;

struct Entry {
    identity: Identity,
    method: String,
    path: String,
    until: Instant,
    /// The denial as Redis reported it, at `cached_at`.
    outcome: Outcome,
    cached_at: Instant,
}

pub struct DenyCache {
    /// Sharded so that workers rarely wait on each other; std Mutex: never
    /// held across an await.
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for DenyCache {
    fn default() -> Self {
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl DenyCache {
    fn hash(&self, identity: &Identity, route: &Route<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        identity.hash(&mut h);
        route.method.hash(&mut h);
        route.path.hash(&mut h);
        h.finish()
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The cached denial, brought forward to now (reset and retry_after
    /// shortened by the time elapsed), if the identity is still denied.
    pub fn get(&self, identity: &Identity, route: &Route<'_>) -> Option<Outcome> {
        let hash = self.hash(identity, route);
        let mut shard = self.shard(hash);
        let entry = shard.get(&hash)?;
        if entry.identity != *identity || entry.method != route.method || entry.path != route.path {
            return None;
        }
        let now = Instant::now();
        if now >= entry.until {
            shard.remove(&hash);
            return None;
        }
        let elapsed = now - entry.cached_at;
        let mut outcome = entry.outcome.clone();
        for (_, quota) in &mut outcome.quotas {
            quota.reset = quota.reset.saturating_sub(elapsed);
            quota.retry_after = quota.retry_after.saturating_sub(elapsed);
            quota.now_ms += elapsed.as_millis() as u64;
        }
        Some(outcome)
    }

    /// Remembers a denial until the request could be allowed.
    pub fn insert(&self, identity: &Identity, route: &Route<'_>, outcome: &Outcome) {
        let retry_after = outcome
            .quotas
            .iter()
            .map(|(_, q)| q.retry_after)
            .max()
            .unwrap_or(Duration::ZERO);
        if retry_after.is_zero() {
            return;
        }
        let now = Instant::now();
        let hash = self.hash(identity, route);
        let mut shard = self.shard(hash);
        if shard.len() >= CAPACITY / SHARDS && !shard.contains_key(&hash) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= CAPACITY / SHARDS {
                return;
            }
        }
        shard.insert(
            hash,
            Entry {
                identity: identity.clone(),
                method: route.method.to_owned(),
                path: route.path.to_owned(),
                until: now + retry_after,
                outcome: outcome.clone(),
                cached_at: now,
            },
        );
    }

    /// Forgets everything (new rules).
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Forgets one identity on every route (its counters were reset).
    pub fn forget(&self, identity: &Identity) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, e| e.identity != *identity);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Algorithm, Policy, Quota};
    use std::num::NonZeroU32;
    use std::sync::Arc;

    const ROUTE: Route<'static> = Route {
        method: "POST",
        path: "/api/resource",
    };

    fn denied(retry_ms: u64) -> Outcome {
        let policy = Arc::new(
            Policy::new(
                "p",
                Algorithm::FixedWindow,
                NonZeroU32::new(1).unwrap(),
                Duration::from_secs(60),
                1,
            )
            .unwrap(),
        );
        Outcome {
            quotas: vec![(
                policy,
                Quota {
                    allowed: false,
                    limit: 1,
                    remaining: 0,
                    reset: Duration::from_millis(retry_ms),
                    retry_after: Duration::from_millis(retry_ms),
                    now_ms: 1_000_000,
                },
            )],
            reported: 0,
        }
    }

    #[test]
    fn remembers_until_retry_after_then_forgets() {
        let cache = DenyCache::default();
        let a = Identity::user("a");
        cache.insert(&a, &ROUTE, &denied(80));
        let hit = cache.get(&a, &ROUTE).expect("cached");
        assert!(hit.quotas[0].1.retry_after <= Duration::from_millis(80));
        assert!(cache.get(&Identity::user("b"), &ROUTE).is_none());
        let other_route = Route {
            method: "POST",
            path: "/other",
        };
        assert!(cache.get(&a, &other_route).is_none());
        std::thread::sleep(Duration::from_millis(90));
        assert!(cache.get(&a, &ROUTE).is_none(), "expired with retry_after");
        assert!(cache.is_empty());
    }

    #[test]
    fn clear_and_forget() {
        let cache = DenyCache::default();
        cache.insert(&Identity::user("a"), &ROUTE, &denied(60_000));
        cache.insert(&Identity::user("b"), &ROUTE, &denied(60_000));
        cache.forget(&Identity::user("a"));
        assert!(cache.get(&Identity::user("a"), &ROUTE).is_none());
        assert!(cache.get(&Identity::user("b"), &ROUTE).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = DenyCache::default();
        for i in 0..(CAPACITY + 5_000) {
            cache.insert(&Identity::user(format!("k{i}")), &ROUTE, &denied(60_000));
        }
        assert!(cache.len() <= CAPACITY);
    }
}
