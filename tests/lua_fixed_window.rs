//! lua/fixed_window.lua against a real redis-server, with an explicit `now`
//! to place requests exactly at window edges.

mod support;

use std::time::Duration;

use rate_limiter::config::RedisSettings;
use rate_limiter::limiter::Quota;
use rate_limiter::redis::RedisStore;
use support::RedisServer;

const MINUTE: Duration = Duration::from_secs(60);
/// A window start: 2026-11-27T00:00:00Z, a multiple of 60 s in ms.
const T0: u64 = 1_795_737_600_000;

async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&RedisSettings {
        url: redis.url(),
        pool_size: 2,
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("store")
}

async fn hit(store: &RedisStore, key: &str, limit: u32, now: u64) -> Quota {
    store
        .fixed_window(key, limit, MINUTE, 1, Some(now))
        .await
        .expect("script runs")
}

#[tokio::test]
async fn admits_exactly_the_limit_within_a_window() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    for i in 0..5u32 {
        let q = hit(&store, "rate:{user:a}:60", 5, T0 + 1000 + i as u64).await;
        assert!(q.allowed, "request {i}");
        assert_eq!(q.limit, 5);
        assert_eq!(q.remaining, 4 - i);
        assert_eq!(q.retry_after, Duration::ZERO);
    }
    let q = hit(&store, "rate:{user:a}:60", 5, T0 + 2000).await;
    assert!(!q.allowed);
    assert_eq!(q.remaining, 0);
    // retry_after is exactly the time to the next window.
    assert_eq!(q.retry_after, Duration::from_millis(58_000));
    assert_eq!(q.reset, Duration::from_millis(58_000));
    assert_eq!(q.now_ms, T0 + 2000);
}

#[tokio::test]
async fn the_window_resets_exactly_at_its_edge() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:edge}:60";
    for _ in 0..3 {
        assert!(hit(&store, key, 3, T0).await.allowed);
    }
    // The last millisecond of the window is still the same window.
    let last = hit(&store, key, 3, T0 + 59_999).await;
    assert!(!last.allowed);
    assert_eq!(last.retry_after, Duration::from_millis(1));
    // The first millisecond of the next is a new one.
    let next = hit(&store, key, 3, T0 + 60_000).await;
    assert!(next.allowed);
    assert_eq!(next.remaining, 2);
    assert_eq!(next.reset, MINUTE);
}

#[tokio::test]
async fn a_burst_across_the_edge_admits_twice_the_limit() {
    // The known weakness of a fixed window: `limit` at the end of one window
    // and `limit` at the start of the next, 2 ms apart.
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:burst}:60";
    let mut admitted = 0;
    for now in [T0 + 59_999, T0 + 60_000] {
        for _ in 0..15 {
            admitted += hit(&store, key, 10, now).await.allowed as u32;
        }
    }
    assert_eq!(admitted, 20);
}

#[tokio::test]
async fn a_denied_request_counts_nothing() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:deny}:60";
    for _ in 0..2 {
        hit(&store, key, 2, T0).await;
    }
    for _ in 0..10 {
        assert!(!hit(&store, key, 2, T0 + 10).await.allowed);
    }
    let mut conn = redis.connection().await.unwrap();
    let used: u64 = redis::cmd("HGET")
        .arg(key)
        .arg("c")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(used, 2);
}

#[tokio::test]
async fn counters_expire_with_their_window() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:ttl}:60";
    hit(&store, key, 5, T0 + 45_000).await;
    let mut conn = redis.connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((14_000..=15_000).contains(&pttl), "pttl {pttl}");
}

#[tokio::test]
async fn a_counter_without_ttl_gets_one() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:persist}:60";
    let mut conn = redis.connection().await.unwrap();
    // A full counter for the current window, left without a TTL by someone.
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("w")
        .arg(T0)
        .arg("c")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let q = hit(&store, key, 3, T0 + 30_000).await;
    assert!(!q.allowed);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((29_000..=30_000).contains(&pttl), "pttl {pttl}");
}

#[tokio::test]
async fn a_key_of_another_type_is_replaced() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:wrongtype}:60";
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    let q = hit(&store, key, 3, T0).await;
    assert!(q.allowed);
    assert_eq!(q.remaining, 2);
}

#[tokio::test]
async fn a_peek_reads_without_writing() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:peek}:60";
    let q = store
        .fixed_window(key, 5, MINUTE, 0, Some(T0 + 1))
        .await
        .unwrap();
    assert!(q.allowed);
    assert_eq!(q.remaining, 5);
    let mut conn = redis.connection().await.unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a peek must not create the counter");
    hit(&store, key, 5, T0 + 2).await;
    let q = store
        .fixed_window(key, 5, MINUTE, 0, Some(T0 + 3))
        .await
        .unwrap();
    assert_eq!(q.remaining, 4);
}

#[tokio::test]
async fn without_now_the_redis_clock_is_used() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let mut conn = redis.connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let redis_now = secs * 1000 + micros / 1000;
    let q = store
        .fixed_window("rate:{user:clock}:60", 5, MINUTE, 1, None)
        .await
        .unwrap();
    assert!(q.now_ms >= redis_now && q.now_ms < redis_now + 5_000);
    assert_eq!(
        q.now_ms + q.reset.as_millis() as u64,
        (q.now_ms / 60_000 + 1) * 60_000,
        "reset points at the end of the epoch-aligned window"
    );
}

#[tokio::test]
async fn a_lowered_limit_reports_zero_remaining_not_a_negative() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let key = "rate:{user:lowered}:60";
    for _ in 0..5 {
        hit(&store, key, 10, T0).await;
    }
    let q = hit(&store, key, 3, T0 + 1).await;
    assert!(!q.allowed);
    assert_eq!(q.remaining, 0);
}
