//! The only code that talks to Redis: the connection pool, the Lua scripts,
//! the key layout, and the mapping of Redis errors onto [`StoreError`].
//! It knows nothing about HTTP.

mod breaker;
mod pool;
pub mod scripts;
mod sentinel;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use redis::RedisError;
use tokio::time::timeout_at;

use crate::config::{RedisSettings, RedisTopology};

use crate::limiter::{
    Algorithm, Counter, Entry, Policy, Quota, RawOverride, ResetLog, Store, StoreError, StoreReply,
};
use crate::telemetry::Metrics;
use breaker::{Admission, Breaker};
use pool::{AnyConnection, Connection, LogErrors, Manager};

/// Characters kept as they are in a key; everything else is percent-encoded.
/// `{` and `}` must go (they would move the Cluster hash tag), `:` must go
/// (it separates the parts of a key), and `%` must go so that the encoding
/// is unambiguous: two different identifiers never share a key.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

/// The Redis key of one identity's counter under one policy:
/// `rate:{<strategy>:<id>}:<window>` for the built-in fixed-window policies
/// (`user` and `ip`), and `rate:{<strategy>:<id>}:<window>:<algorithm>:<policy>`
/// for every other. The window is in seconds (or `<n>ms` when it is not a
/// whole number of seconds). Everything inside the braces is the Cluster
/// hash tag, so all keys of one identity share a slot and one script may
/// touch them all. The algorithm is part of the name because each stores a
/// different shape of value.
pub fn counter_key(subject: &Entry, policy: &Policy) -> String {
    let window_ms = policy.window.as_millis();
    let window = if window_ms.is_multiple_of(1000) {
        (window_ms / 1000).to_string()
    } else {
        format!("{window_ms}ms")
    };
    let mut key = format!(
        "rate:{{{}:{}}}:{}",
        utf8_percent_encode(&subject.0, KEY_SAFE),
        utf8_percent_encode(&subject.1, KEY_SAFE),
        window
    );
    let builtin = policy.algorithm == Algorithm::FixedWindow && policy.name == subject.0;
    if !builtin {
        key.push(':');
        key.push_str(policy.algorithm.as_str());
        key.push(':');
        key.push_str(&policy.name);
    }
    key
}

/// The hash of the overrides set through the admin API, shared by every
/// instance: field `<strategy>:<id>`, value the override as JSON. It never
/// expires; an override's own `until` ends it.
pub const OVERRIDES_KEY: &str = "rate:overrides";

/// The log of admin resets (see `lua/publish_reset.lua`): one hash tag, one
/// Cluster slot.
pub const RESET_KEYS: [&str; 3] = [
    "rate:{admin}:resets",
    "rate:{admin}:resets:seq",
    "rate:{admin}:resets:trimmed",
];

/// Resets remembered for instances that fall behind; one that misses more
/// clears its whole deny cache instead.
const RESET_LOG_ENTRIES: u32 = 10_000;

/// How long the reset log outlives its last write.
const RESET_LOG_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The hash tag of a key: what its braces hold.
fn hash_tag(key: &str) -> Option<&str> {
    let start = key.find('{')? + 1;
    let end = start + key[start..].find('}')?;
    Some(&key[start..end])
}

/// A counter as the script takes it.
fn script_policy(counter: &Counter<'_>) -> ScriptPolicy {
    ScriptPolicy {
        key: counter_key(counter.subject, counter.policy),
        algorithm: counter.policy.algorithm,
        limit: counter.policy.limit.get(),
        window_ms: counter.policy.window_ms(),
        cost: counter.cost,
        shadow: counter.policy.shadow,
    }
}

/// One policy of a check, as the script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPolicy {
    pub key: String,
    pub algorithm: Algorithm,
    pub limit: u32,
    pub window_ms: u64,
    pub cost: u32,
    /// Report this policy's denial, never enforce it.
    pub shadow: bool,
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's pool of each store, by store id.
    static THREAD_POOLS: RefCell<HashMap<u64, bb8::Pool<Manager>>> = RefCell::new(HashMap::new());
}

/// Connecting may take longer than a command: it is not on a request's path
/// (bb8 connects in the background), and a TLS or remote Redis needs more.
fn connect_timeout(settings: &RedisSettings) -> Duration {
    settings.timeout.max(Duration::from_secs(1))
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis settings (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): {0}")]
    BadUrl(RedisError),
    #[error("cannot build the Redis pool: {0}")]
    Pool(RedisError),
}

/// Counters in Redis (one server, Sentinel or Cluster), reached through
/// pools of multiplexed connections, one pool per thread that calls it.
/// Every call is bounded by the configured timeout and guarded by a circuit
/// breaker.
///
/// Why a pool per thread: actix-web runs each worker on its own
/// single-threaded runtime, and a multiplexed connection runs its socket in a
/// task of the runtime that created it. With one shared pool, most commands
/// crossed to another thread and back; perf showed a quarter of the CPU in
/// that other runtime and 16 % in context switches. A pool per worker keeps
/// each command, its socket and its reply on one thread.
pub struct RedisStore {
    /// Tells this store's pools apart in the per-thread table (tests run
    /// several stores in one process).
    id: u64,
    settings: RedisSettings,
    /// Shared by every pool: bumped on `+switch-master`.
    generation: Arc<AtomicU64>,
    timeout: Duration,
    topology: &'static str,
    /// A Redis Cluster: keys of different identities live in different slots.
    cluster: bool,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    /// Whether the last call succeeded; only used to log each loss and each
    /// recovery once.
    reachable: AtomicBool,
}

impl RedisStore {
    /// Validates the settings and loads the scripts (the pools are built by
    /// each thread on first use). A Redis that is down now is not
    /// an error: the service starts, answers by its failure mode, and
    /// connects when Redis appears.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        Self::connect_with_metrics(settings, Arc::new(Metrics::new())).await
    }

    /// As [`RedisStore::connect`], counting into `metrics`.
    pub async fn connect_with_metrics(
        settings: &RedisSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let generation = Arc::new(AtomicU64::new(0));
        // Validates the settings once; the per-thread pools build the same.
        Manager::new(
            &settings.topology,
            connect_timeout(settings),
            settings.timeout,
            generation.clone(),
        )
        .map_err(RedisSetupError::BadUrl)?;
        if let RedisTopology::Sentinel {
            sentinels,
            master,
            sentinel_password,
            ..
        } = &settings.topology
        {
            sentinel::watch_switch_master(
                sentinels.clone(),
                master.clone(),
                sentinel_password.clone(),
                generation.clone(),
            );
        }
        let store = RedisStore {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            settings: settings.clone(),
            generation,
            timeout: settings.timeout,
            topology: settings.topology.name(),
            cluster: matches!(settings.topology, RedisTopology::Cluster { .. }),
            breaker: Breaker::new(
                settings.breaker_failures,
                settings.breaker_cooldown,
                settings.breaker_cooldown.max(settings.timeout * 2),
            ),
            metrics,
            reachable: AtomicBool::new(true),
        };
        if let Err(err) = store.load_scripts().await {
            log::warn!(
                "redis: cannot load the Lua scripts at start-up ({err}); \
                 they will be loaded on first use"
            );
        }
        Ok(store)
    }

    /// SCRIPT LOAD of the check script.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        // Start-up may wait for the first connection longer than a request
        // would.
        let deadline = Instant::now() + self.timeout.max(Duration::from_secs(2));
        self.call(deadline, false, |mut conn| async move {
            scripts::load(&mut conn, &scripts::CHECK).await
        })
        .await
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        self.topology
    }

    /// Whether the circuit breaker is open (requests fail fast).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs check.lua over `policies` (keys of one hash tag). `now_ms`
    /// replaces Redis TIME; only tests pass it.
    pub async fn run_check(
        &self,
        policies: &[ScriptPolicy],
        now_ms: Option<u64>,
    ) -> Result<StoreReply, StoreError> {
        let keys: Vec<String> = policies.iter().map(|p| p.key.clone()).collect();
        let mut args = Vec::with_capacity(1 + 5 * policies.len());
        args.push(now_ms.map(|n| n.to_string()).unwrap_or_default());
        for p in policies {
            args.push(p.algorithm.as_str().to_owned());
            args.push(p.limit.to_string());
            args.push(p.window_ms.to_string());
            args.push(p.cost.to_string());
            args.push(if p.shadow { "1" } else { "0" }.to_owned());
        }
        let deadline = Instant::now() + self.timeout;
        let metrics = &self.metrics;
        let reply = self
            .call(deadline, true, |mut conn| async move {
                scripts::evalsha(
                    &mut conn,
                    &scripts::CHECK,
                    &keys,
                    &args,
                    &metrics.script_reloads,
                )
                .await
            })
            .await?;
        parse_reply(&reply, policies.len())
    }

    /// Checks out a connection and runs `op` on it, all before `deadline`,
    /// recording the outcome in the connection's health and, when `guarded`,
    /// going through the circuit breaker (health checks are not guarded: they
    /// must see Redis as it is).
    async fn call<T, F, Fut>(
        &self,
        deadline: Instant,
        guarded: bool,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(AnyConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        // Dropped with this future if the call is cancelled: a cancelled
        // probe then frees the probe slot instead of holding it for good.
        let permit = guarded.then(|| self.breaker.admit());
        if permit
            .as_ref()
            .is_some_and(|p| p.admission() == Admission::Reject)
        {
            self.metrics
                .redis_errors
                .with_label_values(&["circuit_open"])
                .inc();
            return Err(StoreError::CircuitOpen);
        }
        let started = Instant::now();
        let result = self.call_unguarded(deadline, op).await;
        self.metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            self.metrics
                .redis_errors
                .with_label_values(&[err.kind()])
                .inc();
        }
        if let Some(permit) = permit {
            match &result {
                Ok(_) => permit.success(),
                Err(StoreError::Timeout(_) | StoreError::Connection(_)) => permit.failure(),
                // Says nothing about Redis's health; the permit's drop
                // releases a probe.
                Err(_) => drop(permit),
            }
        }
        self.note_reachability(&result);
        result
    }

    async fn call_unguarded<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(AnyConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::from_std(deadline);
        match timeout_at(deadline, self.checkout()).await {
            Err(_) => Err(StoreError::Timeout(self.timeout)),
            Ok(Err(err)) => Err(err),
            Ok(Ok(conn)) => match timeout_at(deadline, op(conn.conn.clone())).await {
                Err(_) => {
                    conn.record_timeout();
                    Err(StoreError::Timeout(self.timeout))
                }
                Ok(Err(err)) => {
                    conn.record_error(&err);
                    Err(map_error(&err))
                }
                Ok(Ok(value)) => {
                    conn.record_success();
                    Ok(value)
                }
            },
        }
    }

    /// This thread's pool, built on first use (its connections' tasks then
    /// run on this thread's runtime).
    fn pool(&self) -> Result<bb8::Pool<Manager>, StoreError> {
        THREAD_POOLS.with(|pools| {
            if let Some(pool) = pools.borrow().get(&self.id) {
                return Ok(pool.clone());
            }
            let manager = Manager::new(
                &self.settings.topology,
                connect_timeout(&self.settings),
                self.settings.timeout,
                self.generation.clone(),
            )
            .map_err(|err| map_error(&err))?;
            let pool = bb8::Pool::builder()
                .max_size(self.settings.pool_size)
                .min_idle(Some(self.settings.pool_size))
                // The health record replaces bb8's PING on every checkout,
                // which would double the round trips per request.
                .test_on_check_out(false)
                .connection_timeout(self.settings.timeout)
                .error_sink(Box::new(LogErrors))
                .build_unchecked(manager);
            pools.borrow_mut().insert(self.id, pool.clone());
            Ok(pool)
        })
    }

    /// A healthy connection handle. The pool entry goes back at once: the
    /// handle is multiplexed, so holding the entry would only serialise
    /// requests. Entries found broken are dropped, and bb8 replaces them.
    async fn checkout(&self) -> Result<Connection, StoreError> {
        let pool = self.pool()?;
        loop {
            let entry = pool.get().await.map_err(|err| match err {
                bb8::RunError::TimedOut => StoreError::Timeout(self.timeout),
                bb8::RunError::User(err) => map_error(&err),
            })?;
            if !entry.is_broken() {
                return Ok(entry.clone());
            }
            // Dropping a broken entry makes bb8 discard it and start a
            // replacement; the loop then takes the next entry.
        }
    }

    fn note_reachability<T>(&self, result: &Result<T, StoreError>) {
        let ok = !matches!(
            result,
            Err(StoreError::Timeout(_) | StoreError::Connection(_) | StoreError::CircuitOpen)
        );
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            match result {
                Err(err) if !ok => log::warn!("redis: unavailable: {err}"),
                _ => log::info!("redis: reachable again"),
            }
        }
    }
}

fn parse_reply(reply: &[i64], policies: usize) -> Result<StoreReply, StoreError> {
    if reply.len() != 2 + 5 * policies {
        return Err(StoreError::Script(format!(
            "check.lua returned {} values for {policies} policies, expected {}",
            reply.len(),
            2 + 5 * policies
        )));
    }
    let non_negative = |v: i64| v.max(0) as u64;
    let now_ms = non_negative(reply[1]);
    let quotas = reply[2..]
        .chunks_exact(5)
        .map(|q| Quota {
            allowed: q[0] == 1,
            limit: non_negative(q[1]) as u32,
            remaining: non_negative(q[2]).min(u64::from(u32::MAX)) as u32,
            reset: Duration::from_millis(non_negative(q[3])),
            retry_after: Duration::from_millis(non_negative(q[4])),
            now_ms,
        })
        .collect();
    Ok(StoreReply {
        allowed: reply[0] == 1,
        quotas,
    })
}

fn map_error(err: &RedisError) -> StoreError {
    if err.is_timeout() {
        StoreError::Timeout(Duration::ZERO)
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        StoreError::Connection(err.to_string())
    } else if matches!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            | redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
    ) {
        StoreError::Script(err.to_string())
    } else if pool::breaks_connection(err) {
        StoreError::Connection(err.to_string())
    } else {
        StoreError::Other(err.to_string())
    }
}

impl Store for RedisStore {
    /// One script call for every counter, except on a Cluster when the
    /// counters have several subjects (a request of an API key that is also
    /// limited per client IP): each subject's keys live in their own slot,
    /// so each subject's counters run in their own call, in the request's
    /// order. Then a subject that allowed stays charged when a later one
    /// denies (for the HTTP front end: one request counted against the
    /// client IP, whose descriptors come first), and once one denies the
    /// rest are only read. Within each subject the check stays atomic and
    /// all-or-nothing.
    async fn check(&self, counters: &[Counter<'_>]) -> Result<StoreReply, StoreError> {
        let policies: Vec<ScriptPolicy> = counters.iter().map(script_policy).collect();
        let first = counters.first().map(|c| c.subject);
        let split = self.cluster && counters.iter().any(|c| Some(c.subject) != first);
        if !split {
            return self.run_check(&policies, None).await;
        }
        let mut subjects: Vec<&Entry> = Vec::new();
        for counter in counters {
            if !subjects.contains(&counter.subject) {
                subjects.push(counter.subject);
            }
        }
        let mut quotas = vec![None; policies.len()];
        let mut allowed = true;
        for subject in subjects {
            let (indices, mut group): (Vec<usize>, Vec<ScriptPolicy>) = counters
                .iter()
                .zip(&policies)
                .enumerate()
                .filter(|(_, (c, _))| c.subject == subject)
                .map(|(i, (_, p))| (i, p.clone()))
                .unzip();
            if !allowed {
                // Already denied: read the rest without charging it.
                group.iter_mut().for_each(|p| p.cost = 0);
            }
            let reply = self.run_check(&group, None).await?;
            allowed &= reply.allowed;
            for (i, quota) in indices.into_iter().zip(reply.quotas) {
                quotas[i] = Some(quota);
            }
        }
        Ok(StoreReply {
            allowed,
            quotas: quotas.into_iter().flatten().collect(),
        })
    }

    async fn reset(&self, counters: &[Counter<'_>]) -> Result<u64, StoreError> {
        let mut keys: Vec<String> = counters
            .iter()
            .map(|c| counter_key(c.subject, c.policy))
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.timeout;
        // One DEL per subject: a subject's keys share a hash tag, so each is
        // a single-slot command on a Cluster too.
        let mut deleted = 0;
        let mut tags: Vec<&str> = keys.iter().filter_map(|k| hash_tag(k)).collect();
        tags.dedup();
        for tag in tags {
            let group: Vec<&String> = keys.iter().filter(|k| hash_tag(k) == Some(tag)).collect();
            deleted += self
                .call(deadline, false, |mut conn| async move {
                    redis::cmd("DEL")
                        .arg(&group)
                        .query_async::<u64>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(deleted)
    }

    async fn load_overrides(&self) -> Result<Vec<RawOverride>, StoreError> {
        let deadline = Instant::now() + self.timeout;
        // Raw bytes: a field or value that is not UTF-8 is the limiter's to
        // skip, not a failed call.
        self.call(deadline, false, |mut conn| async move {
            redis::cmd("HGETALL")
                .arg(OVERRIDES_KEY)
                .query_async::<Vec<(Vec<u8>, Vec<u8>)>>(&mut conn)
                .await
        })
        .await
    }

    async fn delete_override_if(&self, key: &[u8], json: &[u8]) -> Result<bool, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, false, |mut conn| async move {
            scripts::DELETE_IF
                .key(OVERRIDES_KEY)
                .arg(key)
                .arg(json)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(|n| n > 0)
    }

    async fn publish_reset(&self, key: &str) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, false, |mut conn| async move {
            scripts::PUBLISH_RESET
                .key(&RESET_KEYS[..])
                .arg(key)
                .arg(RESET_LOG_ENTRIES)
                .arg(RESET_LOG_TTL_MS)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn resets_since(&self, after: u64) -> Result<ResetLog, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (latest, trimmed, keys) = self
            .call(deadline, false, |mut conn| async move {
                scripts::RESETS_SINCE
                    .key(&RESET_KEYS[..])
                    .arg(after)
                    .invoke_async::<(u64, u64, Vec<Vec<u8>>)>(&mut conn)
                    .await
            })
            .await?;
        Ok(ResetLog {
            latest,
            keys,
            complete: after >= trimmed,
        })
    }

    async fn save_override(&self, key: &str, json: &str) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, false, |mut conn| async move {
            redis::cmd("HSET")
                .arg(OVERRIDES_KEY)
                .arg(key)
                .arg(json)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn delete_override(&self, key: &str) -> Result<bool, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, false, |mut conn| async move {
            redis::cmd("HDEL")
                .arg(OVERRIDES_KEY)
                .arg(key)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(|n| n > 0)
    }

    /// PING on a Cluster (every node); ROLE elsewhere, because a demoted
    /// master still answers PING but can take no write: a server that is not
    /// a master is reported (and its connection replaced).
    async fn ping(&self) -> Result<Duration, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let started = Instant::now();
        let cluster = self.cluster;
        let role = self
            .call(deadline, false, |mut conn| async move {
                if cluster {
                    redis::cmd("PING").query_async::<()>(&mut conn).await?;
                    return Ok(None);
                }
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                let role = match role.first() {
                    Some(redis::Value::BulkString(bytes)) => {
                        String::from_utf8_lossy(bytes).into_owned()
                    }
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    _ => String::new(),
                };
                if role != "master" {
                    // Reported through the error path, so the connection is
                    // marked broken and the next one asks the sentinels.
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                        "connected to a server that is not a master",
                        role,
                    )));
                }
                Ok(Some(role))
            })
            .await;
        match role {
            Ok(_) => {
                // Redis answers: requests need not wait for the next probe.
                self.breaker.record_success();
                Ok(started.elapsed())
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn user(id: impl Into<String>) -> Entry {
        ("user".into(), id.into())
    }

    fn ip(addr: std::net::IpAddr) -> Entry {
        ("ip".into(), Identity::ip(addr).id)
    }
    use std::num::NonZeroU32;

    fn policy(window: Duration) -> Policy {
        Policy::new(
            "user",
            Algorithm::FixedWindow,
            NonZeroU32::new(5).unwrap(),
            window,
            1,
        )
        .unwrap()
    }

    #[test]
    fn keys_carry_one_hash_tag_per_identity() {
        let key = counter_key(&user("abc"), &policy(Duration::from_secs(60)));
        assert_eq!(key, "rate:{user:abc}:60");
        let mut ip_policy = policy(Duration::from_millis(1500));
        ip_policy.name = "ip".into();
        let key = counter_key(&ip("::1".parse().unwrap()), &ip_policy);
        assert_eq!(key, "rate:{ip:%3A%3A1}:1500ms");
    }

    #[test]
    fn hostile_identifiers_cannot_escape_the_hash_tag() {
        for id in ["a}b", "{x}", "a:b", "*", "%7D", "ключ", "a b"] {
            let key = counter_key(&user(id), &policy(Duration::from_secs(60)));
            let inner = key
                .strip_prefix("rate:{")
                .and_then(|k| k.strip_suffix("}:60"))
                .unwrap();
            assert!(!inner.contains(['{', '}']), "{key}");
            assert_eq!(inner.matches(':').count(), 1, "{key}");
        }
        let a = counter_key(&user("%7D"), &policy(Duration::from_secs(60)));
        let b = counter_key(&user("}"), &policy(Duration::from_secs(60)));
        assert_ne!(a, b);
    }

    #[test]
    fn other_policies_name_their_algorithm_and_policy() {
        let p = Policy::new(
            "burst",
            Algorithm::TokenBucket,
            NonZeroU32::new(5).unwrap(),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        assert_eq!(
            counter_key(&user("k"), &p),
            "rate:{user:k}:1:token_bucket:burst"
        );
        // The built-in name on the other strategy is not the built-in key.
        let user = policy(Duration::from_secs(60));
        assert_eq!(
            counter_key(&ip("10.0.0.1".parse().unwrap()), &user),
            "rate:{ip:10.0.0.1}:60:fixed_window:user"
        );
    }
}
