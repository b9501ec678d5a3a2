//! The four algorithms of lua/, run through check.lua against a real
//! redis-server with an explicit `now`: property tests against reference
//! models, window edges, TTLs, and several policies in one call.

mod support;

use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rate_limiter::limiter::{Algorithm, StoreReply};
use rate_limiter::redis::{RedisStore, ScriptPolicy};
use support::models::{self, Model};
use support::RedisServer;

/// A window start: 2026-11-27T00:00:00Z, a multiple of every window used here.
const T0: u64 = 1_795_737_600_000;

fn policy(key: &str, algorithm: Algorithm, limit: u32, window_ms: u64, cost: u32) -> ScriptPolicy {
    ScriptPolicy {
        key: key.to_owned(),
        algorithm: algorithm.as_str(),
        limit,
        window_ms,
        cost: cost.into(),
        shadow: false,
        debit: false,
        lease: String::new(),
    }
}

async fn one(store: &RedisStore, p: ScriptPolicy, now: u64) -> StoreReply {
    store.run_check(&[p], Some(now)).await.expect("script runs")
}

fn model(algorithm: Algorithm, limit: u64, window: u64) -> Box<dyn Model> {
    match algorithm {
        Algorithm::FixedWindow => Box::new(models::FixedWindow::new(limit, window)),
        Algorithm::SlidingWindow => Box::new(models::SlidingWindow::new(limit, window)),
        Algorithm::TokenBucket => Box::new(models::TokenBucket::new(limit, window)),
        Algorithm::Gcra => Box::new(models::Gcra::new(limit, window)),
        Algorithm::Concurrency => unreachable!("not a rate"),
    }
}

/// Random (limit, window, start offset, [(time step, cost)]) sequences; each
/// request is sent to the model and to the script, which must agree on
/// allowed, remaining, reset and retry_after, field by field. Requests go
/// one by one, then the same sequences all at once (`coalesced`): the store
/// then decides the requests waiting on its connection in shared script
/// calls, and each must still get exactly the answer it gets alone, in
/// order.
fn agrees_with_model(algorithm: Algorithm) {
    let one_by_one = run_against_model(algorithm, false);
    let (requests, calls) = run_against_model(algorithm, true);
    assert!(
        calls * 2 < requests,
        "{algorithm}: {requests} requests sent at once took {calls} script calls: not coalesced"
    );
    assert_eq!(one_by_one.0, one_by_one.1, "one by one: a call per request");
}

/// Runs the property test; returns (requests sent, EVALSHA calls made).
fn run_against_model(algorithm: Algorithm, coalesced: bool) -> (u64, u64) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = runtime.block_on(RedisServer::start());
    let store = runtime.block_on(redis.store());
    let cases = (1u32..=12, 1u64..=3000).prop_flat_map(|(limit, window)| {
        let step = 0..=window * 3 / 2;
        (
            Just(limit),
            Just(window),
            0..window,
            prop::collection::vec((step, 0u32..=3), 1..40),
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let requests = std::sync::atomic::AtomicU64::new(0);
    let calls_before = runtime.block_on(redis.evalsha_calls());
    runner
        .run(&cases, |(limit, window, offset, steps)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = format!("rate:{{user:prop-{n}-{coalesced}}}:{}", algorithm.as_str());
            let mut model = model(algorithm, limit.into(), window);
            let mut now = T0 + offset;
            let requests_of_case: Vec<(u64, u32)> = steps
                .into_iter()
                .map(|(dt, cost)| {
                    now += dt;
                    (now, cost.min(limit))
                })
                .collect();
            requests.fetch_add(
                requests_of_case.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let check = |&(now, cost): &(u64, u32)| {
                one(&store, policy(&key, algorithm, limit, window, cost), now)
            };
            let replies: Vec<StoreReply> = if coalesced {
                // Queued in this order by the first poll, decided in it.
                runtime.block_on(futures::future::join_all(
                    requests_of_case.iter().map(check),
                ))
            } else {
                requests_of_case
                    .iter()
                    .map(|r| runtime.block_on(check(r)))
                    .collect()
            };
            for (i, (&(now, cost), reply)) in requests_of_case.iter().zip(replies).enumerate() {
                let expected = model.request(now, cost.into());
                let q = reply.quotas[0];
                let got = models::Reply {
                    allowed: reply.allowed,
                    remaining: q.remaining.into(),
                    reset: q.reset.as_millis() as u64,
                    retry_after: q.retry_after.as_millis() as u64,
                };
                prop_assert_eq!(
                    got,
                    expected,
                    "request {} (t = +{} ms, cost {}) of limit {} per {} ms",
                    i,
                    now - T0,
                    cost,
                    limit,
                    window
                );
            }
            Ok(())
        })
        .unwrap();
    let calls = runtime.block_on(redis.evalsha_calls()) - calls_before;
    (requests.into_inner(), calls)
}

#[test]
fn fixed_window_agrees_with_its_model() {
    agrees_with_model(Algorithm::FixedWindow);
}

#[test]
fn sliding_window_agrees_with_its_model() {
    agrees_with_model(Algorithm::SlidingWindow);
}

#[test]
fn token_bucket_agrees_with_its_model() {
    agrees_with_model(Algorithm::TokenBucket);
}

#[test]
fn gcra_agrees_with_its_model() {
    agrees_with_model(Algorithm::Gcra);
}

/// Requests admitted out of `n` sent at `now`, one by one.
async fn burst(store: &RedisStore, p: &ScriptPolicy, now: u64, n: u32) -> u32 {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += one(store, p.clone(), now).await.allowed as u32;
    }
    admitted
}

#[tokio::test]
async fn window_edges_per_algorithm() {
    // `limit` sent in the last millisecond of one window, then `limit` in the
    // first millisecond of the next: what each algorithm lets through.
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let (limit, window) = (10u32, 60_000u64);
    let end = T0 + window - 1;
    let start = T0 + window;
    let mut admitted = Vec::new();
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:edge}}:{}", algorithm.as_str());
        let p = policy(&key, algorithm, limit, window, 1);
        // A quiet first part of the window, so only the burst counts.
        let before = burst(&store, &p, end, limit + 5).await;
        let after = burst(&store, &p, start, limit + 5).await;
        admitted.push((algorithm, before, after));
    }
    for (algorithm, before, after) in admitted {
        assert_eq!(
            before, limit,
            "{algorithm}: the first burst fills the limit"
        );
        match algorithm {
            // The fixed window forgets everything at the edge: 2 x limit.
            Algorithm::FixedWindow => assert_eq!(after, limit),
            // The previous window still weighs (window - 0) / window = all
            // of it, less the rounding: nothing more fits 1 ms later.
            Algorithm::SlidingWindow => assert_eq!(after, 0),
            // 1 ms refills limit / window = 1/6000 of a token: nothing.
            Algorithm::TokenBucket | Algorithm::Gcra => assert_eq!(after, 0),
            Algorithm::Concurrency => unreachable!("not a rate"),
        }
    }
}

#[tokio::test]
async fn sliding_window_stays_within_its_bound_across_an_edge() {
    // Documented bound: after a window that ended with a burst of `limit`,
    // at most ceil(limit x e / window) more get through within e ms of the
    // edge, and no fixed window ever holds more than `limit`, so no span of
    // one window sees more than 2 x limit.
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let (limit, window) = (10u64, 1_000u64);
    let p = policy(
        "rate:{user:slide}:sw",
        Algorithm::SlidingWindow,
        limit as u32,
        window,
        1,
    );
    let edge = T0 + window;
    assert_eq!(burst(&store, &p, edge - 1, 15).await as u64, limit);
    let mut admitted = 0u64;
    for e in 0..window {
        admitted += burst(&store, &p, edge + e, 3).await as u64;
        let bound = (limit * (e + 1)).div_ceil(window);
        assert!(
            admitted <= bound,
            "{admitted} admitted {e} ms after the edge, bound {bound}"
        );
    }
    assert_eq!(
        admitted, limit,
        "the next window fills up as the previous one decays"
    );
}

#[tokio::test]
async fn token_bucket_and_gcra_admit_exactly_their_refill() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    // 10 per second: one every 100 ms after the burst.
    for algorithm in [Algorithm::TokenBucket, Algorithm::Gcra] {
        let key = format!("rate:{{user:refill}}:{}", algorithm.as_str());
        let p = policy(&key, algorithm, 10, 1_000, 1);
        assert_eq!(
            burst(&store, &p, T0, 20).await,
            10,
            "{algorithm}: the burst"
        );
        assert_eq!(
            burst(&store, &p, T0 + 99, 5).await,
            0,
            "{algorithm}: 99 ms refill nothing"
        );
        assert_eq!(
            burst(&store, &p, T0 + 100, 5).await,
            1,
            "{algorithm}: 100 ms refill one"
        );
        assert_eq!(
            burst(&store, &p, T0 + 550, 5).await,
            4,
            "{algorithm}: 450 ms more"
        );
        assert_eq!(
            burst(&store, &p, T0 + 10_000, 50).await,
            10,
            "{algorithm}: full again, capped"
        );
    }
}

#[tokio::test]
async fn retry_after_is_exactly_long_enough() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:retry}}:{}", algorithm.as_str());
        let p = policy(&key, algorithm, 3, 7_000, 1);
        let mut now = T0 + 1_234;
        burst(&store, &p, now, 3).await;
        for _ in 0..4 {
            let denied = one(&store, p.clone(), now).await;
            assert!(!denied.allowed, "{algorithm}");
            let wait = denied.quotas[0].retry_after.as_millis() as u64;
            assert!(wait > 0);
            // Denied requests charge nothing, so probing is free: one
            // millisecond early is still too early.
            let early = one(&store, p.clone(), now + wait - 1).await;
            assert!(!early.allowed, "{algorithm}: allowed before retry_after");
            now += wait;
            assert!(
                one(&store, p.clone(), now).await.allowed,
                "{algorithm}: allowed after waiting"
            );
            burst(&store, &p, now, 3).await; // used up again
        }
    }
}

#[tokio::test]
async fn a_denied_request_charges_no_policy() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    let policies: Vec<ScriptPolicy> = Algorithm::ALL
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            // The fixed window is the tight one: 2 per minute.
            let limit = if i == 0 { 2 } else { 100 };
            policy(
                &format!("rate:{{user:multi}}:{}", a.as_str()),
                a,
                limit,
                60_000,
                1,
            )
        })
        .collect();
    for _ in 0..2 {
        let r = store.run_check(&policies, Some(T0)).await.unwrap();
        assert!(r.allowed);
    }
    let dump = |conn: &mut redis::aio::MultiplexedConnection| {
        let keys: Vec<String> = policies.iter().map(|p| p.key.clone()).collect();
        let mut conn = conn.clone();
        async move {
            let mut values = Vec::new();
            for key in keys {
                let v: redis::Value = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                values.push(format!("{v:?}"));
            }
            values
        }
    };
    let before = dump(&mut conn).await;
    for _ in 0..5 {
        let r = store.run_check(&policies, Some(T0 + 10)).await.unwrap();
        assert!(!r.allowed);
        assert!(!r.quotas[0].allowed);
        for q in &r.quotas[1..] {
            assert!(q.allowed, "the others would allow");
            assert_eq!(q.remaining, 98, "and report their level, uncharged");
        }
    }
    assert_eq!(dump(&mut conn).await, before, "no counter moved");
}

#[tokio::test]
async fn every_key_expires_once_it_stops_mattering() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    let now = T0 + 45_000;
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:ttl}}:{}", algorithm.as_str());
        one(&store, policy(&key, algorithm, 5, 60_000, 1), now).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (low, high) = match algorithm {
            Algorithm::FixedWindow => (15_000, 16_000), // the window's end + 1 s
            Algorithm::SlidingWindow => (75_000, 76_000), // the next window's end + 1 s
            Algorithm::TokenBucket | Algorithm::Gcra => (12_000, 13_000), // full again + 1 s
            Algorithm::Concurrency => unreachable!("not a rate"),
        };
        assert!((low..=high).contains(&pttl), "{algorithm}: pttl {pttl}");
        if algorithm == Algorithm::FixedWindow {
            // A later write of the same window keeps the expiry its first
            // write set (SET ... KEEPTTL): still the window's end, not
            // moved by the clock of the second.
            one(&store, policy(&key, algorithm, 5, 60_000, 1), now + 5_000).await;
            let kept: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(
                kept <= pttl && kept > 14_000,
                "{algorithm}: the window's expiry is kept ({pttl} then {kept})"
            );
        }
    }
}

#[tokio::test]
async fn a_key_without_ttl_gets_one_and_a_foreign_key_is_replaced() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:foreign}}:{}", algorithm.as_str());
        let _: () = redis::cmd("RPUSH")
            .arg(&key)
            .arg("junk")
            .query_async(&mut conn)
            .await
            .unwrap();
        let r = one(&store, policy(&key, algorithm, 3, 60_000, 1), T0).await;
        assert!(r.allowed, "{algorithm}: a list under our key is replaced");
        assert_eq!(r.quotas[0].remaining, 2);

        let _: () = redis::cmd("PERSIST")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let denied_or_peek = one(&store, policy(&key, algorithm, 3, 60_000, 0), T0 + 1).await;
        assert!(denied_or_peek.allowed);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            pttl > 0,
            "{algorithm}: a counter without TTL gets one (pttl {pttl})"
        );
    }
}

/// The checks of one hot key coalesced into one call write it once, at the
/// end of the call, with its last value; and the expiry a new window's first
/// charge sets is what the key keeps, although the later charges of the call
/// keep the key's own (a counter another tool made persistent gets one).
/// Then the same by the Redis server's clock (the common check's one-argument
/// form): one SET per call, whatever window the call falls in.
#[tokio::test]
async fn a_hot_keys_checks_in_one_call_write_it_once() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    let key = "rate:{user:hot}:fixed_window";
    // Last window's count, made persistent.
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(format!("{} 7", T0 - 60_000))
        .query_async(&mut conn)
        .await
        .unwrap();
    let p = || policy(key, Algorithm::FixedWindow, 100, 60_000, 1);
    let checks = futures::future::join_all((0..20).map(|i| one(&store, p(), T0 + i)));
    let replies = written_once_per_call(&redis, checks).await;
    let remaining: Vec<u32> = replies.iter().map(|r| r.quotas[0].remaining).collect();
    assert_eq!(remaining, (80..100).rev().collect::<Vec<_>>());
    let value: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, format!("{T0} 20"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (59_000..=61_000).contains(&pttl),
        "the new window's expiry, kept by the call's later charges: {pttl}"
    );

    let key = "rate:{user:hot-now}:fixed_window";
    let p = || policy(key, Algorithm::FixedWindow, 1000, 3_600_000, 1);
    let checks = futures::future::join_all((0..20).map(|_| {
        let (store, p) = (&store, p());
        async move { store.run_check(&[p], None).await }
    }));
    for reply in written_once_per_call(&redis, checks).await {
        assert!(reply.expect("script runs").allowed);
    }
}

/// Runs `checks` (20 of one key, at once) and asserts that they shared
/// calls and that each call wrote the key once (INFO commandstats).
async fn written_once_per_call<T>(redis: &RedisServer, checks: impl Future<Output = T>) -> T {
    let (sets, calls) = (
        redis.command_calls("set").await,
        redis.evalsha_calls().await,
    );
    let replies = checks.await;
    let calls = redis.evalsha_calls().await - calls;
    assert!(calls < 20, "coalesced: {calls} calls");
    assert_eq!(
        redis.command_calls("set").await - sets,
        calls,
        "one SET per call"
    );
    replies
}

#[tokio::test]
async fn a_peek_reads_without_writing() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:peek}}:{}", algorithm.as_str());
        let r = one(&store, policy(&key, algorithm, 5, 60_000, 0), T0 + 1).await;
        assert!(r.allowed);
        assert_eq!(r.quotas[0].remaining, 5);
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "{algorithm}: a peek must not create the key");
        one(&store, policy(&key, algorithm, 5, 60_000, 1), T0 + 2).await;
        let r = one(&store, policy(&key, algorithm, 5, 60_000, 0), T0 + 3).await;
        assert_eq!(r.quotas[0].remaining, 4, "{algorithm}");
    }
}

#[tokio::test]
async fn without_now_the_redis_clock_is_used() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let redis_now = secs * 1000 + micros / 1000;
    let r = store
        .run_check(
            &[policy(
                "rate:{user:clock}:60",
                Algorithm::FixedWindow,
                5,
                60_000,
                1,
            )],
            None,
        )
        .await
        .unwrap();
    let q = r.quotas[0];
    assert!(q.now_ms >= redis_now && q.now_ms < redis_now + 5_000);
    assert_eq!(
        q.now_ms + q.reset.as_millis() as u64,
        (q.now_ms / 60_000 + 1) * 60_000,
        "reset points at the end of the epoch-aligned window"
    );
}

#[tokio::test]
async fn a_lowered_limit_never_reports_more_than_itself() {
    // A reload may lower a limit below what an identity already used.
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:lowered}}:{}", algorithm.as_str());
        burst(&store, &policy(&key, algorithm, 10, 60_000, 1), T0, 5).await;
        let r = one(&store, policy(&key, algorithm, 3, 60_000, 1), T0 + 1).await;
        assert!(r.quotas[0].remaining <= 3, "{algorithm}: {:?}", r.quotas[0]);
        match algorithm {
            // Counters: 5 used of 3 allowed, nothing fits, 0 left (not -2).
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                assert!(!r.allowed, "{algorithm}");
                assert_eq!(r.quotas[0].remaining, 0, "{algorithm}");
            }
            // Buckets: the smaller capacity caps what is there.
            Algorithm::TokenBucket | Algorithm::Gcra => assert!(r.allowed, "{algorithm}"),
            Algorithm::Concurrency => unreachable!("not a rate"),
        }
    }
}

/// Regression (issue 9, item 13): stored values no algorithm could have
/// written (a GCRA TAT a year ahead, a token bucket measured in the future,
/// numbers past 2^53, `1e400`) gave script errors (503) or absurd
/// Retry-After values. Each now reads as a stale, empty counter, and the key
/// ends up with the algorithm's own TTL, not the foreign one.
#[tokio::test]
async fn out_of_range_stored_values_are_stale() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let mut conn = redis.connection().await.unwrap();
    let year_us = 366 * 24 * 3600 * 1_000_000u64;
    let window = 60_000u64;
    let cases: Vec<(Algorithm, String)> = vec![
        (Algorithm::Gcra, ((T0 * 1000) + year_us).to_string()),
        (Algorithm::Gcra, "1e400".into()),
        (Algorithm::Gcra, "99999999999999999999999999".into()),
        (Algorithm::TokenBucket, format!("0 {}", T0 + year_us / 1000)),
        (Algorithm::TokenBucket, format!("99999999999999999999 {T0}")),
        (
            Algorithm::FixedWindow,
            format!("{T0} 99999999999999999999999"),
        ),
        // This window's prefix, but no whole count after it.
        (Algorithm::FixedWindow, format!("{T0} 1.5")),
        (Algorithm::FixedWindow, format!("{T0} -3")),
        (Algorithm::FixedWindow, format!("{T0} ")),
        (Algorithm::FixedWindow, format!("{T0} 1e400")),
        (
            Algorithm::SlidingWindow,
            format!("{T0} 99999999999999999999999 1"),
        ),
    ];
    for (i, (algorithm, value)) in cases.into_iter().enumerate() {
        let key = format!("rate:{{user:absurd-{i}}}:{}", algorithm.as_str());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("EX")
            .arg(10 * 365 * 24 * 3600)
            .query_async(&mut conn)
            .await
            .unwrap();
        let r = store
            .run_check(&[policy(&key, algorithm, 3, window, 1)], Some(T0 + 10))
            .await
            .unwrap_or_else(|e| panic!("{algorithm} {value:?}: {e}"));
        assert!(r.allowed, "{algorithm} {value:?}: read as an empty counter");
        assert_eq!(r.quotas[0].remaining, 2, "{algorithm} {value:?}");
        assert!(
            r.quotas[0].reset <= Duration::from_millis(window),
            "{algorithm} {value:?}: reset {:?}",
            r.quotas[0].reset
        );
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            // The sliding window keeps a count for two windows.
            pttl > 0 && pttl <= 2 * window as i64 + 1000,
            "{algorithm} {value:?}: the key's TTL is the algorithm's ({pttl} ms)"
        );
    }
}

/// Refunds (a negative cost): units given back, never past an empty
/// counter, always allowed and always written, for every algorithm.
#[tokio::test]
async fn refunds_give_units_back_and_never_go_below_empty() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let window = 3_600_000;
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:refund}}:{}", algorithm.as_str());
        let at = |cost: i64, now: u64| {
            let mut p = policy(&key, algorithm, 3, window, 1);
            p.cost = cost;
            let store = &store;
            async move { store.run_check(&[p], Some(now)).await.unwrap() }
        };
        let t = T0 + 10;
        for _ in 0..3 {
            assert!(at(1, t).await.allowed, "{algorithm}");
        }
        assert!(!at(1, t).await.allowed, "{algorithm}: exhausted");
        let refund = at(-2, t).await;
        assert!(refund.allowed, "{algorithm}: a refund is always allowed");
        assert_eq!(refund.quotas[0].remaining, 2, "{algorithm}: two back");
        assert!(at(1, t).await.allowed, "{algorithm}");
        assert!(at(1, t).await.allowed, "{algorithm}");
        assert!(!at(1, t).await.allowed, "{algorithm}: exhausted again");
        // More than was taken: floored at an empty counter, not beyond.
        let refund = at(-10, t).await;
        assert_eq!(refund.quotas[0].remaining, 3, "{algorithm}: full, not 13");
        for _ in 0..3 {
            assert!(at(1, t).await.allowed, "{algorithm}");
        }
        assert!(!at(1, t).await.allowed, "{algorithm}: the limit holds");
    }
}

/// A debit policy (`debit = true`), every algorithm, through check.lua with
/// an explicit clock: a charge past the limit is counted anyway (the reply
/// says it did not fit), a peek (cost 0) is denied while the budget is
/// spent, and its `retry_after` is exact: a peek 1 ms earlier is denied,
/// one at that moment allowed. The same sequence on an ordinary policy
/// charges nothing for the refused request. Every unit sent is counted: 25
/// charged against 10, then 15 refunded, leave the budget exactly spent.
#[tokio::test]
async fn debit_policies_charge_past_the_limit_and_peeks_wait_until_it_drains() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let (limit, window) = (10u32, 60_000u64);
    for algorithm in Algorithm::ALL {
        let key = format!("rate:{{user:debit}}:{}", algorithm.as_str());
        let at = |cost: i64, debit: bool| ScriptPolicy {
            cost,
            debit,
            ..policy(&key, algorithm, limit, window, 0)
        };
        let now = T0 + 1_000;
        let first = one(&store, at(7, true), now).await;
        assert!(first.allowed, "{algorithm}: 7 of 10 fit");
        // 7 more do not fit: charged anyway, and the answer says so.
        let second = one(&store, at(7, true), now).await;
        assert!(!second.allowed, "{algorithm}");
        assert_eq!(second.quotas[0].remaining, 0, "{algorithm}");
        // A peek: the budget is spent.
        let peek = one(&store, at(0, true), now).await;
        assert!(!peek.allowed, "{algorithm}: a peek once spent");
        let wait = peek.quotas[0].retry_after.as_millis() as u64;
        assert!(wait > 0, "{algorithm}");
        let before = one(&store, at(0, true), now + wait - 1).await;
        assert!(!before.allowed, "{algorithm}: 1 ms before retry_after");
        let then = one(&store, at(0, true), now + wait).await;
        assert!(then.allowed, "{algorithm}: at retry_after ({wait} ms)");
        assert!(then.quotas[0].remaining >= 1, "{algorithm}");
        // 14 charged against 10: it waited for more than the 4 excess units
        // to drain (a fixed or sliding window waits for its window to end).
        let per_unit = window / u64::from(limit);
        assert!(wait > 4 * per_unit, "{algorithm}: {wait} ms");

        // The same on an ordinary policy: the refused 7 are not charged.
        let key = format!("rate:{{user:plain}}:{}", algorithm.as_str());
        let plain = |cost: i64| ScriptPolicy {
            cost,
            ..policy(&key, algorithm, limit, window, 0)
        };
        assert!(one(&store, plain(7), now).await.allowed);
        assert!(!one(&store, plain(7), now).await.allowed);
        let peek = one(&store, plain(0), now).await;
        assert!(peek.allowed, "{algorithm}");
        assert_eq!(peek.quotas[0].remaining, 3, "{algorithm}");
    }

    // A debit in a check with an enforced policy that refuses: the debit is
    // charged all the same (the cost was spent), the other is not.
    let debit = ScriptPolicy {
        cost: 3,
        debit: true,
        ..policy(
            "rate:{user:mixed}:debit",
            Algorithm::FixedWindow,
            10,
            window,
            0,
        )
    };
    let strict = policy(
        "rate:{user:mixed}:strict",
        Algorithm::FixedWindow,
        1,
        window,
        3,
    );
    let now = T0 + 2_000;
    let mixed = store
        .run_check(&[debit.clone(), strict], Some(now))
        .await
        .unwrap();
    assert!(!mixed.allowed);
    let after = one(&store, ScriptPolicy { cost: 0, ..debit }, now).await;
    assert_eq!(after.quotas[0].remaining, 7, "the debit was charged");

    // Every unit counted: 25 against 10 in charges of 5, 15 refunded: spent
    // exactly (a dropped charge would leave room).
    let key = "rate:{user:total}:debit";
    let at = |cost: i64| ScriptPolicy {
        cost,
        debit: true,
        ..policy(key, Algorithm::FixedWindow, 10, window, 0)
    };
    for _ in 0..5 {
        one(&store, at(5), now).await;
    }
    one(&store, at(-15), now).await;
    assert!(!one(&store, at(0), now).await.allowed, "10 of 10 used");
    one(&store, at(-1), now).await;
    let left = one(&store, at(0), now).await;
    assert!(left.allowed);
    assert_eq!(left.quotas[0].remaining, 1);
}

fn lease(key: &str, id: &str, limit: u32, ttl_ms: u64, cost: i64) -> ScriptPolicy {
    ScriptPolicy {
        key: key.to_owned(),
        algorithm: "concurrency",
        limit,
        window_ms: ttl_ms,
        cost,
        shadow: false,
        debit: false,
        lease: id.to_owned(),
    }
}

/// The concurrency module with an explicit clock: N leases at most; a
/// lease already held is renewed, not counted twice; a release frees its
/// slot (without an id, the lease that expires first); a lease expires on
/// its own after its TTL (and is counted as expired), after which its
/// renewal is refused.
#[tokio::test]
async fn concurrency_leases_are_counted_renewed_released_and_expire() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let key = "rate:{user:conc}:leases";
    let at = |id: &str, cost: i64| lease(key, id, 3, 10_000, cost);
    let now = T0;
    for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
        let r = one(&store, at(id, 1), now).await;
        assert!(r.allowed, "{id}");
        assert_eq!(r.quotas[0].remaining, 2 - n as u32);
    }
    let full = one(&store, at("d", 1), now + 100).await;
    assert!(!full.allowed);
    assert_eq!(full.quotas[0].remaining, 0);
    // The first lease expires at now + 10 s: that is when a slot is sure.
    assert_eq!(full.quotas[0].retry_after, Duration::from_millis(9_900));
    // Acquiring a lease already held renews it: still three holders.
    let again = one(&store, at("a", 1), now + 200).await;
    assert!(again.allowed);
    assert_eq!(again.quotas[0].remaining, 0);
    // A release frees its slot.
    let released = one(&store, at("b", -1), now + 300).await;
    assert!(released.allowed);
    assert_eq!(released.quotas[0].remaining, 1);
    assert!(one(&store, at("d", 1), now + 300).await.allowed);
    // c renewed at +5 s: it now expires at +15 s.
    assert!(one(&store, at("c", 0), now + 5_000).await.allowed);
    // At +10.25 s, a (renewed at +0.2 s) has expired; d (+0.3 s) has not.
    let later = one(&store, at("e", 1), now + 10_250).await;
    assert!(later.allowed, "a's slot is free");
    assert_eq!(later.expired, vec![1], "one lease expired without release");
    assert!(
        !one(&store, at("a", 0), now + 10_250).await.allowed,
        "a lost its lease"
    );
    // Full again (c, d, e); a release without an id frees d, which
    // expires first, so f fits and d's renewal is refused.
    assert!(!one(&store, at("f", 1), now + 10_260).await.allowed);
    assert!(one(&store, at("", -1), now + 10_270).await.allowed);
    assert!(one(&store, at("f", 1), now + 10_280).await.allowed);
    assert!(!one(&store, at("d", 0), now + 10_290).await.allowed);
    assert!(one(&store, at("c", 0), now + 10_290).await.allowed);
}

/// 1,000 acquires at once over two instances (two stores, two connections)
/// with N = 10 and Redis's own clock: exactly 10 are granted; a sampler
/// reading the set while they hold never sees more than 10; every slot
/// comes back after release, and after the TTL when nobody releases.
#[tokio::test]
async fn concurrent_acquires_over_two_instances_never_exceed_the_limit() {
    let redis = RedisServer::start().await;
    let (a, b) = (redis.store().await, redis.store().await);
    let key = "rate:{user:race}:leases";
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let max_seen = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sampler = {
        let (sampling, max_seen) = (sampling.clone(), max_seen.clone());
        let mut conn = redis.connection().await.unwrap();
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                let n: i64 = redis::cmd("ZCARD")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                max_seen.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let acquires = (0..1000).map(|i| {
        let store = if i % 2 == 0 { &a } else { &b };
        async move {
            let id = format!("lease-{i}");
            let r = store
                .run_check(&[lease(key, &id, 10, 60_000, 1)], None)
                .await
                .unwrap();
            (id, r.allowed)
        }
    });
    let results = futures::future::join_all(acquires).await;
    let held: Vec<String> = results
        .into_iter()
        .filter(|(_, allowed)| *allowed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(held.len(), 10, "exactly N granted");
    tokio::time::sleep(Duration::from_millis(50)).await;
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    let seen = max_seen.load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen <= 10, "a sample saw {seen} holders");
    assert_eq!(seen, 10);
    for id in &held {
        a.run_check(&[lease(key, id, 10, 60_000, -1)], None)
            .await
            .unwrap();
    }
    let mut conn = redis.connection().await.unwrap();
    let left: i64 = redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "every slot back after release");
    // Nobody releases: the slots come back after the TTL (300 ms).
    for i in 0..10 {
        let id = format!("short-{i}");
        assert!(
            b.run_check(&[lease(key, &id, 10, 300, 1)], None)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !b.run_check(&[lease(key, "late", 10, 300, 1)], None)
            .await
            .unwrap()
            .allowed
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = b
        .run_check(&[lease(key, "late", 10, 300, 1)], None)
        .await
        .unwrap();
    assert!(after.allowed);
    assert_eq!(
        after.expired,
        vec![10],
        "ten leases expired without release"
    );
}

/// Debit policies against the reference models, every algorithm: random
/// charges (up to twice the limit, so many overshoot) and peeks, with the
/// model charging every charge in full. Script and model agree on each
/// answer: allowed, remaining, and for a refused peek or charge the exact
/// wait until one unit fits.
#[test]
fn debit_policies_agree_with_the_models() {
    for algorithm in Algorithm::ALL {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let redis = runtime.block_on(RedisServer::start());
        let store = runtime.block_on(redis.store());
        let cases = (1u32..=12, 1u64..=3000).prop_flat_map(|(limit, window)| {
            (
                Just(limit),
                Just(window),
                0..window,
                prop::collection::vec((0..=window, 0..=2 * limit), 1..30),
            )
        });
        let mut runner = TestRunner::new(Config {
            cases: 48,
            ..Config::default()
        });
        let case = std::sync::atomic::AtomicU32::new(0);
        runner
            .run(&cases, |(limit, window, offset, steps)| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("rate:{{user:debit-prop-{n}}}:{}", algorithm.as_str());
                let mut model = model(algorithm, limit.into(), window);
                let mut now = T0 + offset;
                for (dt, cost) in steps {
                    now += dt;
                    let p = ScriptPolicy {
                        cost: cost.into(),
                        debit: true,
                        ..policy(&key, algorithm, limit, window, 0)
                    };
                    let got = runtime.block_on(one(&store, p, now));
                    let quota = &got.quotas[0];
                    let asked = u64::from(cost.max(1));
                    let fits = model.fits(now, asked);
                    if cost > 0 {
                        model.charge(now, u64::from(cost));
                    }
                    let wait = if fits && cost == 0 {
                        0
                    } else {
                        (0..=model.horizon())
                            .find(|t| model.fits(now + t, 1))
                            .expect("drains")
                    };
                    let what = format!(
                        "{algorithm} limit {limit} window {window} at +{} cost {cost}",
                        now - T0
                    );
                    prop_assert_eq!(got.allowed, fits, "{}", what);
                    prop_assert_eq!(u64::from(quota.remaining), model.remaining(now), "{}", what);
                    if !fits {
                        prop_assert_eq!(quota.retry_after.as_millis() as u64, wait, "{}", what);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

/// Regression: a debit of u32::MAX units (Envoy's hits_addend is a u32)
/// on the slowest budgets must not overflow what a script can store (GCRA's
/// meter, a token bucket's deficit): the script answers, the budget is
/// spent, and a peek says so with a finite wait.
#[tokio::test]
async fn a_huge_debit_is_stored_and_spends_the_budget() {
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let year = 365 * 24 * 3_600_000;
    for algorithm in Algorithm::ALL {
        for window in [3_600_000, year] {
            let key = format!("rate:{{user:huge-{window}}}:{}", algorithm.as_str());
            let at = |cost: i64| ScriptPolicy {
                cost,
                debit: true,
                ..policy(&key, algorithm, 1, window, 0)
            };
            let charged = store
                .run_check(&[at(i64::from(u32::MAX))], Some(T0))
                .await
                .unwrap_or_else(|e| panic!("{algorithm} {window}: {e}"));
            assert!(!charged.allowed, "{algorithm}");
            let peek = one(&store, at(0), T0 + 1).await;
            assert!(!peek.allowed, "{algorithm} {window}: spent");
            assert!(peek.quotas[0].retry_after > Duration::ZERO, "{algorithm}");
        }
    }
}
