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
//! Bounded in bytes: at most [`BUDGET_BYTES`] for the entries (each counted
//! with what it holds: the answer and its index keys); when full, expired
//! entries are dropped, and if that is not enough, new denials are simply
//! not cached. An entry keeps only what a cached answer needs: the denial
//! (the policies are shared with the rules), when it ends, and its size.
//! The request itself is not kept: it is known by a 128-bit keyed hash (two
//! SipHash keys drawn at start), which a client can neither predict nor
//! collide on purpose; the first half places it, the second confirms a hit,
//! so the common miss costs one hash, as before. Two requests whose first
//! halves meet share a place: the later one replaces the earlier (a cache
//! miss, never a wrong answer).
//!
//! Indexed: each subject (a descriptor's last entry, and for an Envoy domain
//! its path subject) leads to the entries that hold it, so forgetting one
//! subject (a refund, a reset) touches only its own entries, not the whole
//! cache.

use super::request::path_subject;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::request::{CheckRequest, Entry};
use super::Outcome;

/// Bytes of entries across all shards.
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;
const SHARDS: usize = 16;

/// A request, by the first half of its 128-bit keyed hash; the second half
/// is checked on a hit (so the common miss costs one hash).
type Key = u64;

struct Cached {
    /// The second half of the request's hash.
    check: u64,
    until: Instant,
    /// The denial as Redis reported it, at `cached_at`.
    outcome: Outcome,
    cached_at: Instant,
    /// What this entry counts against the budget.
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Cached>,
    bytes: usize,
}

impl Shard {
    /// Whether there was one.
    fn remove(&mut self, key: &Key) -> bool {
        let entry = self.entries.remove(key);
        if let Some(entry) = &entry {
            self.bytes -= entry.bytes;
        }
        entry.is_some()
    }
}

pub struct DenyCache {
    /// Sharded so that workers rarely wait on each other; std Mutex: never
    /// held across an await. Lock order: `index`, then a shard.
    shards: Vec<Mutex<Shard>>,
    /// Subject hash -> the keys of the entries that hold it. May name keys
    /// already gone (expired); rebuilt from the shards when it outgrows
    /// them.
    index: Mutex<HashMap<u64, Vec<Key>>>,
    hashers: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    budget: usize,
    /// Bumped by every clear and forget.
    generation: AtomicU64,
    /// Entries over all shards: a lookup in an empty cache (most of the
    /// time, for most services) hashes nothing and takes no lock.
    entries: AtomicUsize,
}

impl Default for DenyCache {
    fn default() -> Self {
        Self::with_budget(BUDGET_BYTES)
    }
}

/// What an entry of `outcome` and `subjects` index keys costs, in bytes.
fn entry_bytes(outcome: &Outcome, subjects: usize) -> usize {
    std::mem::size_of::<(Key, Cached)>()
        + outcome.quotas.capacity() * std::mem::size_of::<(std::sync::Arc<()>, super::Quota)>()
        + outcome.descriptors.capacity() * std::mem::size_of::<usize>()
        + subjects * (std::mem::size_of::<Key>() + std::mem::size_of::<u64>())
}

impl DenyCache {
    /// A cache of at most `budget` bytes of entries.
    pub fn with_budget(budget: usize) -> Self {
        DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            index: Mutex::new(HashMap::new()),
            hashers: Default::default(),
            budget,
            generation: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
        }
    }

    fn key(&self, request: &CheckRequest) -> Key {
        self.hashers.0.hash_one(request)
    }

    fn check(&self, request: &CheckRequest) -> u64 {
        self.hashers.1.hash_one(request)
    }

    fn subject_hash(&self, subject: &Entry) -> u64 {
        self.hashers.1.hash_one(subject)
    }

    /// The subjects whose reset or refund frees `request`'s denial.
    fn subjects(&self, request: &CheckRequest) -> Vec<u64> {
        let mut out = Vec::with_capacity(request.descriptors.len() * 2);
        for d in &request.descriptors {
            out.extend(d.subject().map(|s| self.subject_hash(s)));
            if request.domain != super::rules::http::DOMAIN {
                out.push(self.subject_hash(&path_subject(
                    &request.domain,
                    d.entries.iter().map(|e| &*e.0),
                    d.entries.iter().map(|e| e.1.as_str()),
                )));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Key>>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached denial, brought forward to now (reset and retry_after
    /// shortened by the time elapsed), if the identity is still denied.
    pub fn get(&self, request: &CheckRequest) -> Option<Outcome> {
        // Empty (most of the time, for most deployments): no clock read and
        // no hashing.
        if self.entries.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.get_at(request, Instant::now())
    }

    fn get_at(&self, request: &CheckRequest, now: Instant) -> Option<Outcome> {
        let key = self.key(request);
        let mut shard = self.shard(key);
        let entry = shard.entries.get(&key)?;
        if entry.check != self.check(request) {
            return None;
        }
        if now >= entry.until {
            if shard.remove(&key) {
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
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
        let (key, check) = (self.key(request), self.check(request));
        let subjects = self.subjects(request);
        let bytes = entry_bytes(outcome, subjects.len());
        let per_shard = self.budget / SHARDS;
        if bytes > per_shard {
            return;
        }
        // The index first, then the shard (the lock order): a forget either
        // comes before (and the generation tells) or after (and finds the
        // entry through the index).
        let mut index = self.index();
        let mut shard = self.shard(key);
        if self.generation() != generation {
            return;
        }
        if shard.remove(&key) {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        if shard.bytes + bytes > per_shard {
            let (before, count) = (shard.bytes, shard.entries.len());
            shard.entries.retain(|_, e| e.until > now);
            shard.bytes = shard.entries.values().map(|e| e.bytes).sum();
            debug_assert!(shard.bytes <= before);
            self.entries
                .fetch_sub(count - shard.entries.len(), Ordering::Relaxed);
            if shard.bytes + bytes > per_shard {
                return;
            }
        }
        shard.bytes += bytes;
        self.entries.fetch_add(1, Ordering::Relaxed);
        shard.entries.insert(
            key,
            Cached {
                check,
                until: now + retry_after,
                outcome: outcome.clone(),
                cached_at: now,
                bytes,
            },
        );
        drop(shard);
        for subject in subjects {
            index.entry(subject).or_default().push(key);
        }
        // Keys of expired or replaced entries stay in the index until it
        // outgrows the cache; then it is rebuilt from what is left.
        let indexed: usize = index.values().map(Vec::len).sum();
        if indexed > 2 * self.budget / entry_bytes(outcome, 1).max(1) {
            self.rebuild(&mut index);
        }
    }

    /// Drops the index keys of entries no longer cached.
    fn rebuild(&self, index: &mut HashMap<u64, Vec<Key>>) {
        let live: std::collections::HashSet<Key> = self
            .shards
            .iter()
            .flat_map(|s| {
                let shard = s.lock().unwrap_or_else(|e| e.into_inner());
                shard.entries.keys().copied().collect::<Vec<_>>()
            })
            .collect();
        index.retain(|_, keys| {
            keys.retain(|k| live.contains(k));
            !keys.is_empty()
        });
    }

    /// Forgets everything (new rules).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut index = self.index();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            self.entries
                .fetch_sub(shard.entries.len(), Ordering::Relaxed);
            shard.entries.clear();
            shard.bytes = 0;
        }
        index.clear();
    }

    /// Forgets every request with a descriptor of `subject` (its counters
    /// were reset, or its override changed, or it was refunded): only the
    /// entries the index names.
    pub fn forget(&self, subject: &Entry) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut index = self.index();
        for key in index
            .remove(&self.subject_hash(subject))
            .unwrap_or_default()
        {
            if self.shard(key).remove(&key) {
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Bytes of entries now.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).bytes)
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

    /// Regression (issue 19, item 5): bounded by count (100,000 whole
    /// requests), 400 denied requests of 626 KB took 300-500 MB. Bounded
    /// by bytes, whatever the requests weigh, and the requests are not kept.
    #[test]
    fn stays_within_its_byte_budget() {
        let budget = 16 * 1024;
        let cache = DenyCache::with_budget(budget);
        let huge = "v".repeat(100 * 1024);
        for i in 0..400 {
            insert(&cache, &req(&format!("{huge}{i}"), "/x"), &denied(60_000));
            assert!(cache.bytes() <= budget, "{} bytes", cache.bytes());
        }
        assert!(cache.len() > 10, "it still caches: {}", cache.len());
        let indexed: usize = cache.index().values().map(Vec::len).sum();
        assert!(indexed <= 2 * cache.len() + 2 * budget / 64, "{indexed}");
    }

    /// Regression (issue 19, item 6): each refund scanned the whole cache
    /// on the worker thread. A forget touches only its subject's entries:
    /// forgetting one of many leaves the others, and costs no scan (the
    /// index names the one entry).
    #[test]
    fn forget_goes_through_the_index() {
        let cache = DenyCache::default();
        for i in 0..5_000 {
            insert(&cache, &req(&format!("k{i}"), "/x"), &denied(60_000));
        }
        assert_eq!(
            cache
                .index()
                .get(&cache.subject_hash(&user("k7")))
                .map(Vec::len),
            Some(1)
        );
        cache.forget(&user("k7"));
        assert!(cache.get(&req("k7", "/x")).is_none());
        assert!(cache.get(&req("k8", "/x")).is_some());
        assert_eq!(cache.len(), 4_999);
        assert!(cache
            .index()
            .get(&cache.subject_hash(&user("k7")))
            .is_none());
    }

    /// Envoy domains: forgetting a path subject frees the denials of its
    /// descriptors.
    #[test]
    fn forget_a_path_subject() {
        let cache = DenyCache::default();
        let request = CheckRequest {
            domain: "d".into(),
            descriptors: vec![Descriptor::new(vec![
                ("k".into(), "v".into()),
                ("s".into(), "w".into()),
            ])],
        };
        insert(&cache, &request, &denied(60_000));
        let subject = path_subject("d", ["k", "s"].into_iter(), ["v", "w"].into_iter());
        cache.forget(&subject);
        assert!(cache.get(&request).is_none());
    }
}
