//! Identities known to be over their limit, remembered until their
//! `retry_after`, so that a flood from one abusive client costs no Redis
//! round trip.
//!
//! Exact, not approximate: when Redis denied a request with retry_after T,
//! the same request cannot be allowed before T (other requests of the same
//! identity can only push T further away; a denied request charges nothing).
//! Three things could make it allowed earlier, and each clears the cache:
//! new rules (a hot reload), an admin override changing or expiring (an entry
//! never outlives the `until` of the override it was denied under), and an
//! operator resetting counters (on every instance: each learns of a reset
//! within a second through the store, see `Limiter::refresh_overrides`).
//!
//! A check that was in flight when the cache was cleared must not put its
//! now stale denial back: every clear bumps a generation, and an insert made
//! with an older generation is dropped.
//!
//! Bounded: at most [`CAPACITY`] entries; when full, expired entries are
//! dropped, and if none are, new denials are simply not cached.

use super::request::{is_path_subject, path_subject};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::request::{CheckRequest, Entry};
use super::Outcome;

/// Entries across all shards.
pub const CAPACITY: usize = 100_000;
const SHARDS: usize = 16;

struct Cached {
    request: CheckRequest,
    until: Instant,
    /// The denial as Redis reported it, at `cached_at`.
    outcome: Outcome,
    cached_at: Instant,
}

pub struct DenyCache {
    /// Sharded so that workers rarely wait on each other; std Mutex: never
    /// held across an await.
    shards: Vec<Mutex<HashMap<u64, Cached>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Bumped by every clear and forget.
    generation: AtomicU64,
}

impl Default for DenyCache {
    fn default() -> Self {
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            generation: AtomicU64::new(0),
        }
    }
}

impl DenyCache {
    fn hash(&self, request: &CheckRequest) -> u64 {
        self.hasher.hash_one(request)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Cached>> {
        self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The cached denial, brought forward to now (reset and retry_after
    /// shortened by the time elapsed), if the identity is still denied.
    pub fn get(&self, request: &CheckRequest) -> Option<Outcome> {
        self.get_at(request, Instant::now())
    }

    fn get_at(&self, request: &CheckRequest, now: Instant) -> Option<Outcome> {
        let hash = self.hash(request);
        let mut shard = self.shard(hash);
        let entry = shard.get(&hash)?;
        if entry.request != *request {
            return None;
        }
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

    /// The generation to pass to [`DenyCache::insert`]: read it before
    /// asking the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a denial until the request could be allowed, and at most
    /// for `valid_for` (the rest of the life of the override it was decided
    /// under). Dropped if the cache was cleared since `generation` was read.
    pub fn insert(
        &self,
        request: &CheckRequest,
        outcome: &Outcome,
        generation: u64,
        valid_for: Option<Duration>,
    ) {
        self.insert_at(request, outcome, generation, valid_for, Instant::now())
    }

    fn insert_at(
        &self,
        request: &CheckRequest,
        outcome: &Outcome,
        generation: u64,
        valid_for: Option<Duration>,
        now: Instant,
    ) {
        // Only enforced policies: a shadow policy's denial must not keep a
        // client out.
        let retry_after = valid_for.map_or(outcome.retry_after(), |v| v.min(outcome.retry_after()));
        if retry_after.is_zero() {
            return;
        }
        let hash = self.hash(request);
        let mut shard = self.shard(hash);
        // Checked under the shard lock, which clear and forget take after
        // bumping the generation: an insert either sees the new generation
        // or lands before the clear removes it.
        if self.generation() != generation {
            return;
        }
        if shard.len() >= CAPACITY / SHARDS && !shard.contains_key(&hash) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= CAPACITY / SHARDS {
                return;
            }
        }
        shard.insert(
            hash,
            Cached {
                request: request.clone(),
                until: now + retry_after,
                outcome: outcome.clone(),
                cached_at: now,
            },
        );
    }

    /// Forgets everything (new rules).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Forgets every request with a descriptor of `subject` (its counters
    /// were reset, or its override changed).
    pub fn forget(&self, subject: &Entry) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, e| {
                    let domain = &e.request.domain;
                    !e.request.descriptors.iter().any(|d| {
                        d.subject() == Some(subject)
                            || (is_path_subject(&subject.0)
                                && path_subject(
                                    domain,
                                    d.entries.iter().map(|e| &*e.0),
                                    d.entries.iter().map(|e| e.1.as_str()),
                                ) == *subject)
                    })
                });
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

    use crate::limiter::request::Descriptor;

    /// The request of user `id` on `path`.
    fn req(id: &str, path: &str) -> CheckRequest {
        CheckRequest {
            domain: "http".into(),
            descriptors: vec![Descriptor::new(vec![
                ("route".into(), format!("POST {path}")),
                ("user".into(), id.into()),
            ])],
        }
    }

    fn user(id: &str) -> Entry {
        ("user".into(), id.into())
    }

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
            descriptors: vec![0],
            reported: 0,
        }
    }

    fn insert(cache: &DenyCache, request: &CheckRequest, outcome: &Outcome) {
        cache.insert(request, outcome, cache.generation(), None);
    }

    #[test]
    fn remembers_until_retry_after_then_forgets() {
        let cache = DenyCache::default();
        let a = req("a", "/api/resource");
        let t0 = Instant::now();
        cache.insert_at(&a, &denied(80), cache.generation(), None, t0);
        let hit = cache
            .get_at(&a, t0 + Duration::from_millis(30))
            .expect("cached");
        assert_eq!(hit.quotas[0].1.retry_after, Duration::from_millis(50));
        assert!(cache.get_at(&req("b", "/api/resource"), t0).is_none());
        assert!(cache.get_at(&req("a", "/other"), t0).is_none());
        assert!(
            cache.get_at(&a, t0 + Duration::from_millis(80)).is_none(),
            "expired with retry_after"
        );
        assert!(cache.is_empty());
    }

    /// Regression (issue 9, item 5): a denial cached under an override
    /// outlived the override's `until`.
    #[test]
    fn deny_cache_entry_ends_with_its_override() {
        let cache = DenyCache::default();
        let a = req("a", "/api/resource");
        let t0 = Instant::now();
        let valid_for = Some(Duration::from_millis(20));
        cache.insert_at(&a, &denied(60_000), cache.generation(), valid_for, t0);
        assert!(cache.get_at(&a, t0 + Duration::from_millis(19)).is_some());
        assert!(cache.get_at(&a, t0 + Duration::from_millis(20)).is_none());
    }

    /// Regression (issue 9, item 7): a check in flight during a reset put
    /// its stale denial back into the cache.
    #[test]
    fn deny_cache_refuses_a_denial_from_before_a_reset() {
        let cache = DenyCache::default();
        let a = req("a", "/api/resource");
        let before = cache.generation();
        cache.forget(&user("a")); // the reset, while the check was in Redis
        cache.insert(&a, &denied(60_000), before, None);
        assert!(cache.get(&a).is_none());
        insert(&cache, &a, &denied(60_000));
        assert!(cache.get(&a).is_some(), "a fresh denial is kept");
    }

    #[test]
    fn clear_and_forget() {
        let cache = DenyCache::default();
        insert(&cache, &req("a", "/x"), &denied(60_000));
        insert(&cache, &req("b", "/x"), &denied(60_000));
        cache.forget(&user("a"));
        assert!(cache.get(&req("a", "/x")).is_none());
        assert!(cache.get(&req("b", "/x")).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = DenyCache::default();
        for i in 0..(CAPACITY + 5_000) {
            insert(&cache, &req(&format!("k{i}"), "/x"), &denied(60_000));
        }
        assert!(cache.len() <= CAPACITY);
    }
}
