//! The only code that talks to Redis: the connection pool, the Lua scripts,
//! the key layout, and the mapping of Redis errors onto [`StoreError`].
//! It knows nothing about HTTP.

mod pool;
pub mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use redis::RedisError;
use tokio::time::timeout_at;

use crate::config::RedisSettings;
use crate::identity::Identity;
use crate::limiter::{Algorithm, Policy, Quota, Store, StoreError};
use pool::{Connection, LogErrors, Manager};
use scripts::LuaScript;

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
/// `rate:{<strategy>:<id>}:<window>`, the window in seconds (or `<n>ms` when
/// it is not a whole number of seconds). Everything inside the braces is the
/// Cluster hash tag, so all keys of one identity share a slot.
pub fn counter_key(identity: &Identity, policy: &Policy) -> String {
    let window_ms = policy.window.as_millis();
    let window = if window_ms.is_multiple_of(1000) {
        (window_ms / 1000).to_string()
    } else {
        format!("{window_ms}ms")
    };
    format!(
        "rate:{{{}:{}}}:{}",
        identity.strategy,
        utf8_percent_encode(&identity.id, KEY_SAFE),
        window
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid setting REDIS_URL: {0}")]
    BadUrl(RedisError),
    #[error("cannot build the Redis pool: {0}")]
    Pool(RedisError),
}

/// Counters in one Redis server, reached through a pool of multiplexed
/// connections. Every call is bounded by the configured timeout.
pub struct RedisStore {
    pool: bb8::Pool<Manager>,
    timeout: Duration,
    /// Whether the last call succeeded; only used to log each loss and each
    /// recovery once.
    reachable: AtomicBool,
}

impl RedisStore {
    /// Builds the pool and loads the scripts. A Redis that is down now is not
    /// an error: the service starts, answers by its failure mode, and
    /// connects when Redis appears.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        let connect_timeout = settings.timeout.max(Duration::from_secs(1));
        let manager =
            Manager::new(&settings.url, connect_timeout).map_err(RedisSetupError::BadUrl)?;
        let pool = bb8::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(settings.pool_size))
            // The health record replaces bb8's PING on every checkout, which
            // would double the round trips per request.
            .test_on_check_out(false)
            .connection_timeout(settings.timeout)
            .error_sink(Box::new(LogErrors))
            .build_unchecked(manager);
        let store = RedisStore {
            pool,
            timeout: settings.timeout,
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

    /// SCRIPT LOAD of every script.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        // Start-up may wait for the first connection longer than a request
        // would.
        let deadline = Instant::now() + self.timeout.max(Duration::from_secs(2));
        self.call(deadline, |mut conn| async move {
            for script in scripts::ALL {
                scripts::load(&mut conn, script).await?;
            }
            Ok(())
        })
        .await
    }

    /// One fixed-window check. `now_ms` replaces Redis TIME; only tests pass it.
    pub async fn fixed_window(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        cost: u32,
        now_ms: Option<u64>,
    ) -> Result<Quota, StoreError> {
        let args = [limit as u64, window.as_millis() as u64, cost as u64];
        self.run(&scripts::FIXED_WINDOW, &[key], &args, now_ms)
            .await
    }

    async fn run(
        &self,
        script: &'static LuaScript,
        keys: &[&str],
        args: &[u64],
        now_ms: Option<u64>,
    ) -> Result<Quota, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let reply = self
            .call(deadline, |mut conn| async move {
                scripts::evalsha(&mut conn, script, keys, args, now_ms).await
            })
            .await?;
        parse_reply(script, &reply)
    }

    /// Checks out a connection and runs `op` on it, all before `deadline`,
    /// recording the outcome in the connection's health.
    async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::from_std(deadline);
        let result = match timeout_at(deadline, self.checkout()).await {
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
        };
        self.note_reachability(&result);
        result
    }

    /// A healthy connection handle. The pool entry goes back at once: the
    /// handle is multiplexed, so holding the entry would only serialise
    /// requests. Entries found broken are dropped, and bb8 replaces them.
    async fn checkout(&self) -> Result<Connection, StoreError> {
        loop {
            let entry = self.pool.get().await.map_err(|err| match err {
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
            Err(StoreError::Timeout(_)) | Err(StoreError::Connection(_))
        );
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            match result {
                Err(err) if !ok => log::warn!("redis: unavailable: {err}"),
                _ => log::info!("redis: reachable again"),
            }
        }
    }
}

fn parse_reply(script: &LuaScript, reply: &[i64]) -> Result<Quota, StoreError> {
    let [allowed, limit, remaining, reset, retry_after, now] = reply else {
        return Err(StoreError::Script(format!(
            "{} returned {} values, expected 6",
            script.name,
            reply.len()
        )));
    };
    let non_negative = |v: i64| v.max(0) as u64;
    Ok(Quota {
        allowed: *allowed == 1,
        limit: non_negative(*limit) as u32,
        remaining: non_negative(*remaining) as u32,
        reset: Duration::from_millis(non_negative(*reset)),
        retry_after: Duration::from_millis(non_negative(*retry_after)),
        now_ms: non_negative(*now),
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
    } else if err.is_unrecoverable_error() {
        StoreError::Connection(err.to_string())
    } else {
        StoreError::Other(err.to_string())
    }
}

impl Store for RedisStore {
    async fn check(
        &self,
        identity: &Identity,
        policy: &Policy,
        cost: u32,
    ) -> Result<Quota, StoreError> {
        let key = counter_key(identity, policy);
        match policy.algorithm {
            Algorithm::FixedWindow => {
                self.fixed_window(&key, policy.limit.get(), policy.window, cost, None)
                    .await
            }
        }
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let started = Instant::now();
        self.call(deadline, |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await?;
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitSettings;
    use std::num::NonZeroU32;

    fn policy(window: Duration) -> Policy {
        Policy::fixed_window(
            "user",
            LimitSettings {
                limit: NonZeroU32::new(5).unwrap(),
                window,
            },
        )
    }

    #[test]
    fn keys_carry_one_hash_tag_per_identity() {
        let key = counter_key(&Identity::user("abc"), &policy(Duration::from_secs(60)));
        assert_eq!(key, "rate:{user:abc}:60");
        let key = counter_key(
            &Identity::ip("::1".parse().unwrap()),
            &policy(Duration::from_millis(1500)),
        );
        assert_eq!(key, "rate:{ip:%3A%3A1}:1500ms");
    }

    #[test]
    fn hostile_identifiers_cannot_escape_the_hash_tag() {
        for id in ["a}b", "{x}", "a:b", "*", "%7D", "ключ", "a b"] {
            let key = counter_key(&Identity::user(id), &policy(Duration::from_secs(60)));
            let inner = key
                .strip_prefix("rate:{")
                .and_then(|k| k.strip_suffix("}:60"))
                .unwrap();
            assert!(!inner.contains(['{', '}']), "{key}");
            assert_eq!(inner.matches(':').count(), 1, "{key}");
        }
        let a = counter_key(&Identity::user("%7D"), &policy(Duration::from_secs(60)));
        let b = counter_key(&Identity::user("}"), &policy(Duration::from_secs(60)));
        assert_ne!(a, b);
    }
}
