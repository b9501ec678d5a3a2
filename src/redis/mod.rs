//! The only code that talks to Redis: the connection pool, the Lua scripts,
//! the key layout, and the mapping of Redis errors onto [`StoreError`].
//! It knows nothing about HTTP.

mod batch;
mod call;
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
use tokio::sync::oneshot;

use crate::config::{RedisSettings, RedisTopology};

use crate::limiter::{Counter, StoreError, StoreReply};
use crate::telemetry::Metrics;
use batch::{Job, Queue};
pub use keys::{counter_key, OVERRIDES_KEY, RESET_KEYS};
use pool::Manager;
use reply::{non_negative, parse_reply};

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
        debit: counter.policy.debit(),
        lease: counter.lease.as_deref().unwrap_or_default().to_owned(),
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
    /// A charge always applies, even past the limit; a read asks whether a
    /// unit is left.
    pub debit: bool,
    /// A concurrency lease's id (empty: none).
    pub lease: String,
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// A map by store id: ids are ours (a counter), never a client's, so a
/// plain fast hash serves (the queue's map is read on every check).
type ById<T> = HashMap<u64, T, foldhash::fast::FixedState>;

thread_local! {
    /// This thread's pool of each store, by store id.
    static THREAD_POOLS: RefCell<ById<bb8::Pool<Manager>>> = RefCell::default();
    /// The connection this thread uses of each store (out of its pool), by
    /// store id.
    static THREAD_HELD: RefCell<ById<pool::Connection>> = RefCell::default();
    /// This thread's checks waiting for a call, by store id.
    static THREAD_QUEUES: RefCell<ById<Arc<Queue>>> = RefCell::default();
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
/// breaker stands in front of the checks). The checks waiting on a thread's
/// connection are coalesced into one script call (`batch`). Cloning shares
/// the store.
///
/// Why a pool per thread: actix-web runs each worker on its own
/// single-threaded runtime, and a multiplexed connection runs its socket in a
/// task of the runtime that created it. With one shared pool, most commands
/// crossed to another thread and back; perf showed a quarter of the CPU in
/// that other runtime and 16 % in context switches. A pool per worker keeps
/// each command, its socket and its reply on one thread.
#[derive(Clone)]
pub struct RedisStore(Arc<StoreShared>);

impl std::ops::Deref for RedisStore {
    type Target = StoreShared;
    fn deref(&self) -> &StoreShared {
        &self.0
    }
}

/// What the clones of a [`RedisStore`] share.
pub struct StoreShared {
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
    /// Every pool's error sink: remembers a refusal of the credentials.
    connect_errors: pool::LogErrors,
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
            settings,
            connect_timeout(settings),
            settings.timeout,
            generation.clone(),
        )
        .map_err(RedisSetupError::BadUrl)?;
        if let RedisTopology::Sentinel {
            sentinels,
            master,
            sentinel_username,
            sentinel_password,
            ..
        } = &settings.topology
        {
            let tls = match (settings.sentinel_tls, &settings.tls) {
                (true, Some(tls)) => Some(
                    crate::tls::redis_certificates(tls)
                        .map_err(|e| RedisSetupError::BadUrl(e.into()))?,
                ),
                _ => None,
            };
            sentinel::watch_switch_master(
                sentinels.clone(),
                master.clone(),
                sentinel::SentinelAuth {
                    username: sentinel_username.clone(),
                    password: sentinel_password.clone(),
                    tls,
                },
                generation.clone(),
            );
        }
        let store = RedisStore(Arc::new(StoreShared {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            settings: settings.clone(),
            generation,
            timeout: settings.timeout,
            topology: settings.topology.name(),
            cluster: matches!(settings.topology, RedisTopology::Cluster { .. }),
            metrics,
            reachable: AtomicBool::new(true),
            connect_errors: pool::LogErrors::default(),
        }));
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

    /// Runs check.lua over `policies` (keys of one slot), coalesced with
    /// the other checks waiting on this thread's connection. `now_ms`
    /// replaces Redis TIME; only tests pass it.
    pub async fn run_check(
        &self,
        policies: &[ScriptPolicy],
        now_ms: Option<u64>,
    ) -> Result<StoreReply, StoreError> {
        self.check_policies(policies.to_vec(), now_ms).await
    }

    async fn check_policies(
        &self,
        policies: Vec<ScriptPolicy>,
        now_ms: Option<u64>,
    ) -> Result<StoreReply, StoreError> {
        // The wait is bounded like a call of its own: its call answers by
        // the check's deadline, and a check still queued then is answered
        // with a timeout, uncharged (see `batch::Job::deadline`).
        let deadline = Instant::now() + self.timeout;
        if self.settings.batch_max <= 1 {
            // Boxed: a call's future is about 1 KB, and inline it would
            // make every check's future, and each request's, that large.
            let checks = [(&policies[..], now_ms)];
            let call = Box::pin(self.call_script(&checks, deadline));
            return Ok(call.await?.remove(0));
        }
        let queue = self.queue();
        let (reply, answer) = oneshot::channel();
        let start = queue.push(Job {
            policies,
            now_ms,
            deadline,
            reply,
        });
        if start {
            tokio::spawn(self.clone().flush(queue));
        }
        match answer.await {
            Ok(reply) => reply,
            Err(_) => Err(StoreError::Other(
                "the Redis call of this check was abandoned".into(),
            )),
        }
    }

    /// This thread's queue of checks.
    fn queue(&self) -> Arc<Queue> {
        THREAD_QUEUES.with(|queues| queues.borrow_mut().entry(self.id).or_default().clone())
    }

    /// Sends what waits in `queue` until nothing does (see `batch`).
    async fn flush(self, queue: Arc<Queue>) {
        /// Frees the queue for a new flusher if this one is dropped before
        /// it finishes (a runtime shutting down).
        struct Abandon<'a>(&'a Queue, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.abandon();
                }
            }
        }
        let mut guard = Abandon(&queue, false);
        let late = || Err(self.timed_out());
        while let Some(calls) = queue.take(self.settings.batch_max, self.cluster, late) {
            futures_util::future::join_all(calls.into_iter().map(|jobs| self.answer(jobs))).await;
            // When the next call would not be full: first the requests just
            // answered run (their responses go out) and the runtime reads
            // the sockets (tokio wakes a yielded task after polling its I/O
            // driver), so the checks of requests that came meanwhile join
            // the call instead of the one after. With two workers at 64
            // connections, 14.7 -> 18.9 checks per call (BENCHMARKS.md);
            // with a full call waiting (1,000 connections), yielding only
            // held back hundreds of requests, 9 % more CPU each. Alone, a
            // check waits no longer: its queue is empty after its answer.
            if queue.waiting() < self.settings.batch_max {
                tokio::task::yield_now().await;
            }
        }
        guard.1 = true;
    }

    /// One call for `jobs`, and each its reply.
    async fn answer(&self, jobs: Vec<Job>) {
        let checks: Vec<(&[ScriptPolicy], Option<u64>)> =
            jobs.iter().map(|j| (&j.policies[..], j.now_ms)).collect();
        // Every check's caller waits until its own deadline: the call ends
        // by the earliest.
        let deadline = jobs.iter().map(|j| j.deadline).min();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
        match self.call_script(&checks, deadline).await {
            Ok(replies) => {
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let _ = job.reply.send(Ok(reply));
                }
            }
            Err(err) => {
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// One EVALSHA of check.lua deciding `checks` in order (their keys all
    /// in one slot), and each check's reply.
    async fn call_script(
        &self,
        checks: &[(&[ScriptPolicy], Option<u64>)],
        deadline: Instant,
    ) -> Result<Vec<StoreReply>, StoreError> {
        let nkeys: usize = checks.iter().map(|(p, _)| p.len()).sum();
        let cmd = batch::check_command(checks, nkeys);
        self.metrics
            .redis_checks_per_call
            .observe(checks.len() as f64);
        let metrics = &self.metrics;
        let cmd = &cmd;
        let reply = self
            .call(deadline, |mut conn| async move {
                scripts::evalsha(&mut conn, &scripts::CHECK, cmd, &metrics.script_reloads).await
            })
            .await?;
        let Some((server_now, mut rest)) = reply.split_first() else {
            return Err(StoreError::Script("check.lua returned nothing".into()));
        };
        // The server's clock, for the checks that passed none.
        let server_now = non_negative(*server_now);
        let replies = checks
            .iter()
            .map(|(policies, now_ms)| {
                parse_reply(&mut rest, policies, now_ms.unwrap_or(server_now))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !rest.is_empty() {
            return Err(StoreError::Script(format!(
                "check.lua returned {} values more than {} checks of {nkeys} policies take",
                rest.len(),
                checks.len()
            )));
        }
        Ok(replies)
    }
}
