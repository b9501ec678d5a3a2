//! Regression tests for the defects found by probing the service (issue 9).
//! Each test is named after the bug it pins and failed before its fix.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rate_limiter::config::{RedisSettings, RedisTopology};
use rate_limiter::limiter::breaker::Breaker;
use rate_limiter::limiter::{
    CheckRequest, Descriptor, FailureMode, Limiter, LimiterError, Rules, Store, StoreError,
};
use rate_limiter::redis::RedisStore;
use rate_limiter::telemetry::Metrics;
use serde_json::{json, Value};
use support::{
    eventually, header_u64, spawn_app, spawn_app_with_rules, unique_key, RedisServer, RulesFile,
    TestApp,
};

const TOKEN: &str = "hardening-admin-token-0123";

fn signal(redis: &RedisServer, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &redis.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.admin(TOKEN, method, path)
}

/// A limiter over `redis` with a breaker that opens after one failure and
/// probes again after `cooldown`; failure mode `closed`, so store errors
/// come back as errors.
async fn limiter_with_breaker(
    redis: &RedisServer,
    timeout: Duration,
    cooldown: Duration,
) -> Limiter<RedisStore> {
    let store = RedisStore::connect(&RedisSettings::single(redis.url(), timeout))
        .await
        .unwrap();
    let rules = Rules::parse(
        "breaker.toml",
        "[[policy]]\nname = \"user\"\nalgorithm = \"gcra\"\nlimit = 1000\nwindow = \"1h\"\nstrategy = \"user\"\n",
    )
    .unwrap();
    Limiter::new(
        store,
        rules,
        FailureMode::Closed,
        false,
        Arc::new(Metrics::new()),
    )
    .with_breaker(Breaker::new(1, cooldown, timeout * 2))
}

/// One request of `key` in the HTTP domain.
fn user_request(key: &str) -> CheckRequest {
    CheckRequest {
        domain: "http".into(),
        descriptors: vec![Descriptor::new(vec![("user".into(), key.to_owned())])],
    }
}

/// Item 1: the breaker's one probe was cancelled mid-call (the client reset
/// the connection) and the probe flag stayed set: every later call was
/// `circuit open`, for good, although Redis was back.
#[tokio::test]
async fn breaker_probe_cancelled_mid_call_does_not_keep_the_breaker_open() {
    let redis = RedisServer::start().await;
    let limiter = limiter_with_breaker(
        &redis,
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await;
    let request = user_request(&unique_key("probe"));
    limiter.check(&request).await.expect("Redis up");

    signal(&redis, "-STOP");
    let err = limiter.check(&request).await.unwrap_err();
    assert!(
        matches!(err, LimiterError::Unavailable(StoreError::Timeout(_))),
        "{err}"
    );
    assert!(limiter.breaker_open());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The probe goes out and is cancelled while Redis does not answer.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), limiter.check(&request)).await;
    assert!(cancelled.is_err(), "the probe was cancelled mid-call");
    signal(&redis, "-CONT");

    eventually("a new probe closes the breaker", || async {
        limiter.check(&request).await.is_ok()
    })
    .await;
    assert!(!limiter.breaker_open());
}

/// Item 1: a health check that reaches Redis closes the breaker at once,
/// without waiting for the cool-down.
#[tokio::test]
async fn breaker_closes_on_a_successful_health_ping() {
    let redis = RedisServer::start().await;
    let limiter = limiter_with_breaker(
        &redis,
        Duration::from_millis(200),
        Duration::from_secs(3600),
    )
    .await;
    let request = user_request(&unique_key("ping"));
    signal(&redis, "-STOP");
    assert!(limiter.check(&request).await.is_err());
    signal(&redis, "-CONT");
    assert!(limiter.breaker_open());
    limiter.ping().await.expect("Redis answers");
    assert!(!limiter.breaker_open(), "the ping closed the breaker");
    limiter
        .check(&request)
        .await
        .expect("calls go through again");
}

const SHADOW_DAILY_RULES: &str = r#"
[[policy]]
name = "burst"
algorithm = "token_bucket"
limit = 2
window = "2s"

[[policy]]
name = "daily"
algorithm = "gcra"
limit = 1
window = "1d"
shadow = true
"#;

/// Item 2: when an enforced policy denied, Retry-After, X-RateLimit-Limit
/// and the deny cache's expiry were taken over shadow policies too: a burst
/// denial said `Retry-After: 22488` and the instance kept denying after
/// the burst had refilled.
#[tokio::test]
async fn shadow_policy_never_decides_retry_after_or_the_deny_cache() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(SHADOW_DAILY_RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[]).await;
    let key = unique_key("shadow-daily");
    // The daily shadow policy denies from the second request on; the burst
    // denies once its two tokens are gone.
    let mut denial = None;
    for _ in 0..10 {
        let r = app.post_resource(Some(&key)).await;
        if r.status() == 429 {
            denial = Some(r);
            break;
        }
    }
    let denial = denial.expect("the burst policy denies");
    let retry = header_u64(&denial, "Retry-After");
    assert!(
        retry <= 2,
        "Retry-After {retry}: the burst's, not the daily's"
    );
    assert_eq!(header_u64(&denial, "X-RateLimit-Limit"), 2);
    let policy = denial.headers()["RateLimit-Policy"].to_str().unwrap();
    assert!(!policy.contains("daily"), "{policy}");
    let body: Value = denial.json().await.unwrap();
    assert_eq!(body["retry_after"], retry);

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = app.post_resource(Some(&key)).await;
    assert_eq!(r.status(), 200, "the burst refilled: no cached denial");
    assert_eq!(r.headers()["X-RateLimit-Shadow"], "\"daily\"");
}

/// Item 3: with RATE_LIMIT_SHADOW=true, a Redis outage in failure mode
/// `local` answered 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_are_not_enforced_in_local_mode() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_SHADOW", "true"),
            ("RATE_LIMIT_FAILURE_MODE", "local"),
            ("RATE_LIMIT_USER_LIMIT", "2"),
            ("REDIS_TIMEOUT_MS", "100"),
        ],
    )
    .await;
    redis.kill();
    let key = unique_key("shadow-local");
    for i in 0..5 {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 200, "request {i}");
        let reason = r.headers()["X-RateLimit-Degraded"].to_str().unwrap();
        assert!(reason.ends_with("; local"), "{reason}");
    }
}

/// Item 4: every invented HTTP method became a new metric series, kept for
/// the life of the process: 2,000 requests grew /metrics from 4 KB to 8 MB.
#[tokio::test]
async fn invented_methods_and_paths_do_not_grow_metrics() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    // One request of each kind first, so that the series a real client
    // creates exist before the baseline.
    for method in ["FOO", "GET"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client
            .request(m, app.url("/nope"))
            .send()
            .await
            .unwrap();
    }
    let before = app.get("/metrics").await.text().await.unwrap().len();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let path = format!("/invented/{i}");
        let r = app
            .client
            .request(method, app.url(&path))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.len() < before + 2048,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains("method=\"other\""),
        "invented methods are `other`"
    );
    assert!(!text.contains("M17X") && !text.contains("/invented/"));
}

/// Item 5: a denial cached under an admin override outlived the override's
/// `until`: the identity stayed denied under a limit that no longer applied.
#[tokio::test]
async fn deny_cache_does_not_outlive_an_override() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("ADMIN_TOKEN", TOKEN),
            ("RATE_LIMIT_USER_LIMIT", "100"),
            ("RATE_LIMIT_USER_WINDOW", "1h"),
            ("RATE_LIMIT_ALGORITHM", "fixed_window"),
        ],
    )
    .await;
    let key = unique_key("until");
    let until = unix_now() + 2;
    let r = admin(
        &app,
        reqwest::Method::PUT,
        &format!("/admin/overrides/user/{key}"),
    )
    .json(&json!({"limit": 1, "until": until}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // A fixed window of an hour, shared by the override (limit 1) and the
    // rules (limit 100): the second request is denied, or the third if an
    // hour began between the first two.
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 2 {
        statuses.push(app.post_resource(Some(&key)).await.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Once the override ends, the rules' 100 per hour apply again.
    while unix_now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
}

/// Item 6: an admin reset deleted nothing when an override had changed the
/// window, since the counter lived under the override's key.
#[tokio::test]
async fn admin_reset_deletes_the_counter_of_an_override_window() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[("ADMIN_TOKEN", TOKEN), ("RATE_LIMIT_ALGORITHM", "gcra")],
    )
    .await;
    let key = unique_key("reset-window");
    let r = admin(
        &app,
        reqwest::Method::PUT,
        &format!("/admin/overrides/user/{key}"),
    )
    .json(&json!({"limit": 2, "window": "1h"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 429);
    let r = admin(
        &app,
        reqwest::Method::DELETE,
        &format!("/admin/identities/user/{key}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["deleted"], 1, "the override's counter");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
}

/// Item 7: a reset through one instance left the others denying from
/// their deny caches until the old retry_after.
#[tokio::test]
async fn admin_reset_through_one_instance_reaches_the_others() {
    let redis = RedisServer::start().await;
    let overrides = [
        ("ADMIN_TOKEN", TOKEN),
        ("RATE_LIMIT_USER_LIMIT", "1"),
        ("RATE_LIMIT_USER_WINDOW", "1h"),
        ("RATE_LIMIT_ALGORITHM", "gcra"),
    ];
    let a = spawn_app(&redis, &overrides).await;
    let b = spawn_app(&redis, &overrides).await;
    let key = unique_key("reset-everywhere");
    assert_eq!(b.post_resource(Some(&key)).await.status(), 200);
    assert_eq!(b.post_resource(Some(&key)).await.status(), 429);
    // B now answers this key from its deny cache.
    assert_eq!(b.post_resource(Some(&key)).await.status(), 429);
    let r = admin(
        &a,
        reqwest::Method::DELETE,
        &format!("/admin/identities/user/{key}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    eventually("instance B forgets its cached denial", || async {
        b.post_resource(Some(&key)).await.status() == 200
    })
    .await;
}

/// Item 9: one entry of the overrides hash that was not UTF-8 failed the
/// whole refresh, marked the pooled connection broken, and made admin
/// writes answer 503 after writing. Expired overrides stayed in Redis for
/// ever.
#[tokio::test]
async fn one_bad_override_entry_does_not_stop_refresh() {
    let redis = RedisServer::start().await;
    let a = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let b = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("rate:overrides")
        .arg(b"user:\xff\xfe".as_slice())
        .arg(b"\xff{not json".as_slice())
        .arg("user:expired-one")
        .arg(r#"{"blocked":true,"until":1}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let key = unique_key("good-override");
    let r = admin(
        &a,
        reqwest::Method::PUT,
        &format!("/admin/overrides/user/{key}"),
    )
    .json(&json!({"unlimited": true}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    eventually("instance B reads the good override", || async {
        b.post_resource(Some(&key)).await.status() == 200
            && admin(
                &b,
                reqwest::Method::GET,
                &format!("/admin/overrides/user/{key}"),
            )
            .send()
            .await
            .unwrap()
            .status()
                == 200
    })
    .await;
    eventually("the expired override is removed from Redis", || {
        let mut conn = conn.clone();
        async move {
            let exists: bool = redis::cmd("HEXISTS")
                .arg("rate:overrides")
                .arg("user:expired-one")
                .query_async(&mut conn)
                .await
                .unwrap();
            !exists
        }
    })
    .await;
    let health: Value = a.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
}

/// Item 9: an override that no longer fits reloaded rules (its limit is
/// below a policy's new cost) is ignored, with a warning, and shown as not
/// in force.
#[tokio::test]
async fn an_override_that_no_longer_fits_the_rules_is_not_in_force() {
    let redis = RedisServer::start().await;
    let rules = |cost: u32| {
        format!(
            "[[policy]]\nname = \"p\"\nalgorithm = \"gcra\"\nlimit = 10\nwindow = \"1h\"\ncost = {cost}\n"
        )
    };
    let file = RulesFile::new(&rules(1));
    let app = spawn_app_with_rules(&redis, &file, &[("ADMIN_TOKEN", TOKEN)]).await;
    let key = unique_key("unfit");
    let r = admin(
        &app,
        reqwest::Method::PUT,
        &format!("/admin/overrides/user/{key}"),
    )
    .json(&json!({"limit": 1}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let entry: Value = r.json().await.unwrap();
    assert_eq!(entry["in_force"], true);
    file.write(&rules(2));
    eventually("the override is shown as not in force", || async {
        let entry: Value = admin(
            &app,
            reqwest::Method::GET,
            &format!("/admin/overrides/user/{key}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        entry["in_force"] == false
            && entry["problem"]
                .as_str()
                .is_some_and(|p| p.contains("cost"))
    })
    .await;
    // The rules' 10 per hour at cost 2 apply: five requests.
    for i in 0..5 {
        assert_eq!(
            app.post_resource(Some(&key)).await.status(),
            200,
            "request {i}"
        );
    }
    assert_eq!(app.post_resource(Some(&key)).await.status(), 429);
}

/// Item 10: REDIS_TIMEOUT_MS above 500 was cut short by the Redis client's
/// own default response timeout of 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_timeout_above_500ms_is_honoured() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("REDIS_TIMEOUT_MS", "10000")]).await;
    let key = unique_key("slow-redis");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    signal(&redis, "-STOP");
    let pending = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/resource"))
            .header("X-API-Key", &key);
        async move { request.send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    signal(&redis, "-CONT");
    let r = pending.await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("X-RateLimit-Degraded").is_none(),
        "Redis answered within REDIS_TIMEOUT_MS: {:?}",
        r.headers().get("X-RateLimit-Degraded")
    );
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 18);
}

/// Sends `request` on `stream` and reads one response (head and, from its
/// Content-Length, body); returns the head in lower case.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).unwrap();
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return head;
            }
        }
        let n = stream
            .read(&mut buf)
            .expect("a response before the read timeout");
        assert!(
            n > 0,
            "the server closed the connection: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

/// Item 11: a client dripping its body held a connection indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_body_gets_408() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("REQUEST_BODY_TIMEOUT_MS", "300")]).await;
    let port = app.port;
    let head = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"POST /api/resource HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{",
            )
            .unwrap();
        read_response(&mut stream)
    })
    .await
    .unwrap();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
}

/// Item 12: a 429 from the deny cache to a POST with a body closed the
/// connection (the body was never read), so abusive clients cost a TCP
/// handshake per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_post_with_a_body_keeps_the_connection() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_USER_LIMIT", "1"),
            ("RATE_LIMIT_ALGORITHM", "gcra"),
        ],
    )
    .await;
    let port = app.port;
    let key = unique_key("keepalive");
    let statuses = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let body = "{\"payload\": \"0123456789\"}";
        let request = format!(
            "POST /api/resource HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        (0..4)
            .map(|_| {
                let head = exchange(&mut stream, request.as_bytes());
                assert!(!head.contains("connection: close"), "{head}");
                head[9..12].to_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Allowed, denied by Redis, then twice from the deny cache: all on one
    // connection.
    assert_eq!(statuses, ["200", "429", "429", "429"]);
}

/// Item 14: IPv6 addresses in REDIS_CLUSTER_NODES passed validation and then
/// stopped the start (`redis://::1:7000` is no URL).
#[tokio::test]
async fn ipv6_cluster_seeds_are_accepted() {
    let mut settings = RedisSettings::single("redis://127.0.0.1:1/0", Duration::from_millis(100));
    settings.topology = RedisTopology::Cluster {
        nodes: vec![("::1".into(), support::free_port())],
        username: None,
        password: None,
    };
    // Nothing listens there: the service starts and answers by its
    // failure mode, as with any Redis that is down.
    let store = RedisStore::connect(&settings)
        .await
        .expect("an IPv6 seed is a valid setting");
    assert!(store.ping().await.is_err());
}

/// Item 16: actix's own 4xx answers (a body over the limit, a path that
/// does not decode, a method a path does not take) were plain text.
#[tokio::test]
async fn actix_errors_are_json() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let big = vec![b' '; 70 * 1024];
    let cases = [
        (app.client.post(app.url("/api/resource")).body(big), 413),
        (
            // Not gzip: actix's decoder fails while the body is read.
            app.client
                .post(app.url("/api/resource"))
                .header("Content-Encoding", "gzip")
                .body("this is not gzip"),
            400,
        ),
        (app.client.delete(app.url("/health")), 405),
        (
            admin(&app, reqwest::Method::PATCH, "/admin/overrides/user/k"),
            405,
        ),
        (app.client.get(app.url("/no/such/path")), 404),
    ];
    for (request, status) in cases {
        let r = request.send().await.unwrap();
        let url = r.url().to_string();
        assert_eq!(r.status().as_u16(), status, "{url}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{url}"
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{url}: {body}");
    }
    let r = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET");
}

/// Item 18: a client escaped the IP limit by inventing API keys, each a
/// fresh identity with a full quota. With RATE_LIMIT_IP_EVERY_REQUEST the
/// `ip` limit counts every request of the client IP, key or not.
#[tokio::test]
async fn invented_api_keys_share_the_client_ip_limit() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_IP_EVERY_REQUEST", "true"),
            ("RATE_LIMIT_IP_LIMIT", "5"),
            ("RATE_LIMIT_USER_LIMIT", "100"),
            ("RATE_LIMIT_ALGORITHM", "gcra"),
            ("RATE_LIMIT_IP_WINDOW", "1h"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let key = unique_key(&format!("invented-{i}"));
        statuses.push(app.post_resource(Some(&key)).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    // Anonymous requests from the same IP share the same counter.
    assert_eq!(app.post_resource(None).await.status(), 429);
}

/// Item 18, the rules file: `per = "client_ip"`.
#[tokio::test]
async fn a_per_client_ip_policy_counts_every_key_of_one_ip() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(
        r#"
[[policy]]
name = "per-key"
algorithm = "gcra"
limit = 100
window = "1h"
strategy = "user"

[[policy]]
name = "per-ip"
algorithm = "gcra"
limit = 3
window = "1h"
per = "client_ip"
"#,
    );
    let app = spawn_app_with_rules(&redis, &rules, &[]).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let key = unique_key(&format!("rules-invented-{i}"));
        statuses.push(app.post_resource(Some(&key)).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let key = unique_key("status-per-ip");
    let status: Value = app.status(&key).await.json().await.unwrap();
    let names: Vec<&str> = status["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["per-key", "per-ip"]);
    assert_eq!(status["policies"][1]["remaining"], 0);
}
