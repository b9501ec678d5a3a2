//! The only code that talks to Redis: the connection pool, the Lua scripts,
//! the key layout, and the mapping of Redis errors onto [`StoreError`].
//! It knows nothing about HTTP.

pub mod keys;
mod pool;
mod reply;
pub mod scripts;
mod sentinel;
mod store;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::RedisError;
use tokio::time::timeout_at;

use crate::config::{RedisSettings, RedisTopology};

use crate::limiter::{Counter, StoreError, StoreReply};
use crate::telemetry::Metrics;
pub use keys::{counter_key, OVERRIDES_KEY, RESET_KEYS};
use pool::{AnyConnection, Connection, LogErrors, Manager};
use reply::{map_error, parse_reply};

/// A counter as the script takes it.
pub(super) fn script_policy(counter: &Counter<'_>) -> ScriptPolicy {
    ScriptPolicy {
        key: counter_key(counter.subject, counter.policy),
        algorithm: if keys::ratelimit_key_prefix(counter.policy).is_some() {
            scripts::RATELIMIT_FIXED_WINDOW
        } else {
            counter.policy.algorithm().as_str()
        },
        limit: counter.policy.limit().get(),
        window_ms: counter.policy.window_ms(),
        cost: counter.cost,
        shadow: counter.policy.non_blocking(),
    }
}

/// One policy of a check, as the script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPolicy {
    pub key: String,
    /// The Lua module: an algorithm's name, or
    /// [`scripts::RATELIMIT_FIXED_WINDOW`].
    pub algorithm: &'static str,
    pub limit: u32,
    pub window_ms: u64,
    /// Units taken (negative: a refund).
    pub cost: i64,
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
/// Every call is bounded by the configured timeout (the limiter's circuit
/// breaker stands in front of the checks).
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
        self.call(deadline, |mut conn| async move {
            scripts::load(&mut conn, &scripts::CHECK).await
        })
        .await
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        self.topology
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
            args.push(p.algorithm.to_owned());
            args.push(p.limit.to_string());
            args.push(p.window_ms.to_string());
            args.push(p.cost.to_string());
            args.push(if p.shadow { "1" } else { "0" }.to_owned());
        }
        let deadline = Instant::now() + self.timeout;
        let metrics = &self.metrics;
        let reply = self
            .call(deadline, |mut conn| async move {
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
    /// recording the outcome in the connection's health and in the metrics.
    /// (The circuit breaker is the limiter's: see `limiter::breaker`.)
    async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(AnyConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
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
