//! Concurrency and Redis trouble: exact limits across instances, SCRIPT FLUSH
//! under traffic, Redis killed and restarted in each failure mode.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;
use support::{header_u64, spawn_app, unique_key, RedisServer, TestApp};

/// A bound that only a hang would exceed. Not a speed assertion: the timeout
/// is 100 ms, and this allows thirty times that for a loaded machine.
const NO_HANG: Duration = Duration::from_secs(3);

/// 1,000 concurrent requests for one key, alternating between two instances
/// that share one Redis: exactly `limit` are admitted, whatever the algorithm.
async fn exact_under_concurrency(algorithm: &str) {
    let redis = RedisServer::start().await;
    // A day-long window: the refill of token bucket and GCRA over the few
    // seconds of the test is a small fraction of one request, and a fixed or
    // sliding window cannot change under it unless the test runs across
    // midnight UTC, which the reset check below would report.
    let overrides = [
        ("RATE_LIMIT_USER_LIMIT", "137"),
        ("RATE_LIMIT_USER_WINDOW", "1d"),
        ("RATE_LIMIT_ALGORITHM", algorithm),
        ("REDIS_TIMEOUT_MS", "5000"),
    ];
    let a = spawn_app(&redis, &overrides).await;
    let b = spawn_app(&redis, &overrides).await;
    let key = unique_key("concurrent");

    let requests = (0..1000).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post_resource(Some(&key))
    });
    let responses = join_all(requests).await;

    let mut allowed = 0;
    let mut denied = 0;
    let mut resets = HashSet::new();
    for r in &responses {
        match r.status().as_u16() {
            200 => allowed += 1,
            429 => denied += 1,
            other => panic!("{algorithm}: unexpected status {other}"),
        }
        assert!(r.headers().get("X-RateLimit-Degraded").is_none());
        if algorithm == "fixed_window" {
            resets.insert(header_u64(r, "X-RateLimit-Reset"));
        }
    }
    if algorithm == "fixed_window" {
        assert_eq!(resets.len(), 1, "all in one window");
    }
    assert_eq!(allowed, 137, "{algorithm}");
    assert_eq!(denied, 863, "{algorithm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_two_instances_admit_exactly_the_limit_fixed_window() {
    exact_under_concurrency("fixed_window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_two_instances_admit_exactly_the_limit_sliding_window() {
    exact_under_concurrency("sliding_window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_two_instances_admit_exactly_the_limit_token_bucket() {
    exact_under_concurrency("token_bucket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_two_instances_admit_exactly_the_limit_gcra() {
    exact_under_concurrency("gcra").await;
}

/// Sends `n` requests for `key`, in parallel batches of 10.
async fn traffic(app: &TestApp, key: &str, n: usize) -> Vec<reqwest::Response> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n / 10 {
        out.extend(join_all((0..10).map(|_| app.post_resource(Some(key)))).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_traffic_costs_no_request() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "1000")]).await;
    let key = unique_key("flush");
    let mut conn = redis.connection().await.unwrap();

    let mut statuses = Vec::new();
    for round in 0..5 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        for r in traffic(&app, &key, 40).await {
            assert!(
                r.headers().get("X-RateLimit-Degraded").is_none(),
                "round {round}: a request was served without Redis"
            );
            statuses.push(r.status().as_u16());
        }
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let body: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(
        body["remaining"],
        1000 - 200,
        "every request was counted once"
    );
}

async fn timed_post(app: &TestApp, key: &str) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let r = app.post_resource(Some(key)).await;
    (r, started.elapsed())
}

/// Polls until requests are limited through Redis again.
async fn wait_for_recovery(app: &TestApp, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.post_resource(Some(key)).await;
        if r.status() == 200 && r.headers().get("X-RateLimit-Remaining").is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no recovery 15 s after Redis came back (last status {})",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_in_open_mode_allows_marks_and_recovers() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[("RATE_LIMIT_USER_LIMIT", "5"), ("REDIS_TIMEOUT_MS", "100")],
    )
    .await;
    let key = unique_key("open");
    for _ in 0..5 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    }
    assert_eq!(app.post_resource(Some(&key)).await.status(), 429);

    redis.kill();
    // The identity known to be over its limit stays denied (the deny cache
    // holds it until its retry_after, Redis or not).
    let (r, took) = timed_post(&app, &key).await;
    assert!(took < NO_HANG);
    assert_eq!(r.status(), 429);
    let other = unique_key("open-other");
    for _ in 0..10 {
        let (r, took) = timed_post(&app, &other).await;
        assert!(took < NO_HANG, "answered in {took:?}");
        assert_eq!(r.status(), 200, "open: allowed while Redis is down");
        let reason = r.headers()["X-RateLimit-Degraded"].to_str().unwrap();
        assert!(reason.starts_with("redis-"), "{reason}");
        assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 5);
        assert!(r.headers().get("X-RateLimit-Remaining").is_none());
    }
    let health = app.get("/health").await;
    assert_eq!(health.status(), 503);
    assert_eq!(app.get("/livez").await.status(), 200);

    // Redis returns, empty (no persistence): limits start over, by
    // themselves, without restarting the service.
    redis.restart().await;
    let waited = wait_for_recovery(&app, &other).await;
    eprintln!("open mode: limiting again {waited:?} after Redis came back");
    assert_eq!(app.get("/health").await.status(), 200);
    let body: Value = app.status(&other).await.json().await.unwrap();
    assert_eq!(body["remaining"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_in_closed_mode_refuses_with_503_and_recovers() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_FAILURE_MODE", "closed"),
            ("REDIS_TIMEOUT_MS", "100"),
        ],
    )
    .await;
    let key = unique_key("closed");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);

    redis.kill();
    for _ in 0..10 {
        let (r, took) = timed_post(&app, &key).await;
        assert!(took < NO_HANG, "answered in {took:?}");
        assert_eq!(r.status(), 503);
        assert_eq!(header_u64(&r, "Retry-After"), 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Rate limiter unavailable");
    }
    let status = app.status(&key).await;
    assert_eq!(status.status(), 503, "no state to report without Redis");

    redis.restart().await;
    let waited = wait_for_recovery(&app, &key).await;
    assert!(waited < Duration::from_secs(15));
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_redis_finds_it_later() {
    // Reserve a port, start the app against it with nothing listening.
    let mut redis = RedisServer::start().await;
    redis.kill();
    let app = spawn_app(&redis, &[("REDIS_TIMEOUT_MS", "100")]).await;
    let key = unique_key("late");
    let r = app.post_resource(Some(&key)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("X-RateLimit-Degraded").is_some());
    assert_eq!(app.get("/health").await.status(), 503);

    redis.restart().await;
    wait_for_recovery(&app, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_bounded_by_the_timeout() {
    // SIGSTOP: the socket stays open but nothing answers, the case a plain
    // connection would wait on forever.
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("REDIS_TIMEOUT_MS", "200"),
            ("REDIS_BREAKER_FAILURES", "3"),
            ("REDIS_BREAKER_COOLDOWN_MS", "60000"),
        ],
    )
    .await;
    let key = unique_key("paused");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);

    let pid = redis.pid().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
    };
    assert!(signal("-STOP").success());
    let mut reasons = Vec::new();
    let mut fast = Vec::new();
    for _ in 0..8 {
        let (r, took) = timed_post(&app, &key).await;
        assert!(took < NO_HANG, "answered in {took:?}");
        assert_eq!(r.status(), 200);
        let reason = r.headers()["X-RateLimit-Degraded"]
            .to_str()
            .unwrap()
            .to_owned();
        if reason == "redis-circuit-open" {
            fast.push(took);
        }
        reasons.push(reason);
    }
    // Three timeouts open the breaker; from then on requests are answered
    // without waiting for Redis at all.
    assert_eq!(
        reasons[..3],
        ["redis-timeout", "redis-timeout", "redis-timeout"]
    );
    assert!(
        reasons[3..].iter().all(|r| r == "redis-circuit-open"),
        "{reasons:?}"
    );
    eprintln!(
        "paused Redis: timeouts then breaker open; answers with the breaker open took {fast:?}"
    );
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis"]["breaker"], "open");
    assert!(signal("-CONT").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_in_local_mode_keeps_approximate_limits_and_recovers() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_FAILURE_MODE", "local"),
            ("REDIS_TIMEOUT_MS", "100"),
            ("RATE_LIMIT_USER_LIMIT", "3"),
            ("RATE_LIMIT_USER_WINDOW", "1h"),
        ],
    )
    .await;
    let key = unique_key("local");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);

    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (r, took) = timed_post(&app, &key).await;
        assert!(took < NO_HANG, "answered in {took:?}");
        let reason = r.headers()["X-RateLimit-Degraded"].to_str().unwrap();
        assert!(reason.ends_with("; local"), "{reason}");
        assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 3);
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            // One request every 20 minutes refills a local quota of 3/h.
            let retry = header_u64(&r, "Retry-After");
            assert!((1..=1200).contains(&retry), "{retry}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["retry_after"], retry);
        }
    }
    // The local limiter starts from a full quota: 3 allowed, then refused.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert!(health["reason"].as_str().unwrap().contains("per instance"));

    redis.restart().await;
    wait_for_recovery(&app, &key).await;
    let body: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(body["remaining"], 2, "exact counting again, in Redis");
}
