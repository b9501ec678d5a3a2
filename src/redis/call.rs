//! One Redis call: a connection from this thread's pool, the operation,
//! one deadline over both, and the outcome recorded in the connection's
//! health, the metrics and the reachability log.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::time::timeout_at;

use super::pool::{AnyConnection, ConnectFailure, Connection, Manager};
use super::reply::map_error;
use super::{connect_timeout, RedisStore, THREAD_HELD, THREAD_POOLS};
use crate::limiter::StoreError;

impl RedisStore {
    /// Checks out a connection and runs `op` on it, all before `deadline`,
    /// recording the outcome in the connection's health and in the metrics.
    /// (The circuit breaker is the limiter's: see `limiter::breaker`.)
    pub(super) async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, StoreError>
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
        // The thread's connection as last used, when it is still sound: no
        // pool checkout, and one timer for the call.
        let conn = match self.held() {
            Some(conn) => conn,
            None => match timeout_at(deadline, self.checkout()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(err)) => return Err(err),
                Ok(Ok(conn)) => {
                    self.hold(&conn);
                    conn
                }
            },
        };
        match timeout_at(deadline, op(conn.conn.clone())).await {
            Err(_) => {
                conn.record_timeout();
                Err(self.timed_out())
            }
            Ok(Err(err)) => {
                conn.record_error(&err);
                Err(map_error(&err))
            }
            Ok(Ok(value)) => {
                conn.record_success();
                Ok(value)
            }
        }
    }

    /// The connection this thread last checked out of its pool, while it is
    /// sound. A multiplexed connection serves any number of calls at once,
    /// so holding one per thread costs nothing; one found broken is dropped
    /// here, and the next checkout lets the pool replace it.
    fn held(&self) -> Option<Connection> {
        THREAD_HELD.with(|held| {
            let mut held = held.borrow_mut();
            match held.get(&self.id) {
                Some(conn) if !conn.is_broken() => Some(conn.clone()),
                Some(_) => {
                    held.remove(&self.id);
                    None
                }
                None => None,
            }
        })
    }

    fn hold(&self, conn: &Connection) {
        THREAD_HELD.with(|held| held.borrow_mut().insert(self.id, conn.clone()));
    }

    /// This thread's pool, built on first use (its connections' tasks then
    /// run on this thread's runtime).
    fn pool(&self) -> Result<bb8::Pool<Manager>, StoreError> {
        THREAD_POOLS.with(|pools| {
            if let Some(pool) = pools.borrow().get(&self.id) {
                return Ok(pool.clone());
            }
            let manager = Manager::new(
                &self.settings,
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
                .error_sink(Box::new(self.connect_errors.clone()))
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
                // No connection within the timeout: because the
                // credentials were refused, if they were.
                bb8::RunError::TimedOut => self.timed_out(),
                bb8::RunError::User(err) => map_error(&err),
            })?;
            if !entry.is_broken() {
                return Ok(entry.clone());
            }
            // Dropping a broken entry makes bb8 discard it and start a
            // replacement; the loop then takes the next entry.
        }
    }

    /// What a call that ran out of time reports: an authentication error
    /// when the pools' last connection attempt was refused its credentials
    /// (the pool then waits out the timeout, retrying), else a timeout.
    pub(super) fn timed_out(&self) -> StoreError {
        match self.connect_errors.last_failure() {
            Some(ConnectFailure::Auth(text)) => StoreError::Auth(text),
            Some(ConnectFailure::Tls(text)) => StoreError::Connection(format!(
                "TLS handshake failed: {text} (check REDIS_TLS_CACERT, REDIS_TLS_CLIENT_CERT \
                 and _KEY, and that the certificate names the address dialled)"
            )),
            None => StoreError::Timeout(self.timeout),
        }
    }

    fn note_reachability<T>(&self, result: &Result<T, StoreError>) {
        let ok = !matches!(
            result,
            Err(StoreError::Timeout(_)
                | StoreError::Connection(_)
                | StoreError::Auth(_)
                | StoreError::CircuitOpen)
        );
        if self.reachable.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                self.connect_errors.clear();
            }
            match result {
                Err(err) if !ok => log::warn!("redis: unavailable: {err}"),
                _ => log::info!("redis: reachable again"),
            }
        }
    }
}
