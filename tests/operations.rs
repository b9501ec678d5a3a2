//! Operations: /metrics checked with a Prometheus text parser after known
//! traffic, the admin API (auth, identities, overrides shared by instances),
//! shadow mode, request ids.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_parse::{Scrape, Value as Sample};
use serde_json::{json, Value};
use support::{
    eventually, spawn_app, spawn_app_with_rules, unique_key, RedisServer, RulesFile, TempDir,
    TestApp,
};

const TOKEN: &str = "test-admin-token-0123456789";

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of `name` with exactly these labels (among others), summed.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_known_traffic_without_client_values_in_labels() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "3")]).await;
    let key = unique_key("secret-metrics-key");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.post_resource(Some(&key)).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(app.post_resource(None).await.status(), 200);
    // A script reload: SCRIPT FLUSH, then one request.
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        app.post_resource(Some(&unique_key("other"))).await.status(),
        200
    );

    let m = scrape(&app).await;
    let decisions = |decision| {
        value(
            &m,
            "ratelimit_requests_total",
            &[
                ("strategy", "user"),
                ("policy", "user"),
                ("decision", decision),
            ],
        )
    };
    assert_eq!(decisions("allowed"), 4.0);
    assert_eq!(decisions("denied"), 2.0);
    assert_eq!(
        value(
            &m,
            "ratelimit_requests_total",
            &[("strategy", "ip"), ("decision", "allowed")]
        ),
        1.0
    );
    // Only the third request left less than 20 % (0 of 3).
    assert_eq!(
        value(&m, "ratelimit_near_limit_total", &[("policy", "user")]),
        1.0
    );
    // The second denial came from the deny cache.
    assert_eq!(value(&m, "ratelimit_deny_cache_hits_total", &[]), 1.0);
    assert_eq!(value(&m, "ratelimit_deny_cache_entries", &[]), 1.0);
    assert_eq!(value(&m, "ratelimit_script_reloads_total", &[]), 1.0);
    let post = |status| {
        value(
            &m,
            "http_requests_total",
            &[
                ("route", "/api/resource"),
                ("method", "POST"),
                ("status", status),
            ],
        )
    };
    assert_eq!(post("200"), 5.0);
    assert_eq!(post("429"), 2.0);
    // 6 script calls reached Redis (the cached denial did not), plus the
    // start-up script load and the per-second refresh of overrides and
    // resets (two calls each time it ran).
    let calls = value(&m, "ratelimit_redis_call_duration_seconds", &[]);
    assert!((6.0..=13.0).contains(&calls), "{calls}");
    assert_eq!(value(&m, "ratelimit_redis_breaker_open", &[]), 0.0);
    for sample in &m.samples {
        for (name, label) in sample.labels.iter() {
            assert!(
                !label.contains("secret-metrics-key"),
                "{} {name}={label}",
                sample.metric
            );
            assert!(
                !label.contains("127.0.0.1"),
                "{} {name}={label}",
                sample.metric
            );
        }
    }
}

#[tokio::test]
async fn metrics_count_redis_errors_by_kind_and_the_breaker() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("REDIS_BREAKER_FAILURES", "2"),
            ("REDIS_BREAKER_COOLDOWN_MS", "60000"),
        ],
    )
    .await;
    redis.kill();
    for _ in 0..4 {
        assert_eq!(
            app.post_resource(Some(&unique_key("e"))).await.status(),
            200
        );
    }
    let m = scrape(&app).await;
    let failed = value(
        &m,
        "ratelimit_redis_errors_total",
        &[("kind", "connection")],
    ) + value(&m, "ratelimit_redis_errors_total", &[("kind", "timeout")]);
    assert!(failed >= 2.0, "{failed}");
    assert_eq!(
        value(
            &m,
            "ratelimit_redis_errors_total",
            &[("kind", "circuit_open")]
        ),
        2.0
    );
    assert_eq!(value(&m, "ratelimit_redis_breaker_open", &[]), 1.0);
    assert_eq!(
        value(&m, "ratelimit_requests_total", &[("decision", "degraded")]),
        4.0
    );
}

#[tokio::test]
async fn rules_reloads_are_counted_by_result() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("metrics-rules");
    let path = dir.path().join("rules.toml");
    let rules = |limit: i64| {
        format!(
            "[[policy]]\nname = \"p\"\nalgorithm = \"gcra\"\nlimit = {limit}\nwindow = \"1m\"\n"
        )
    };
    std::fs::write(&path, rules(5)).unwrap();
    let app = spawn_app(&redis, &[("RATE_LIMIT_CONFIG", path.to_str().unwrap())]).await;
    std::fs::write(&path, rules(0)).unwrap();
    eventually("the condition", || async {
        value(
            &scrape(&app).await,
            "ratelimit_rules_reloads_total",
            &[("result", "failure")],
        ) == 1.0
    })
    .await;
    std::fs::write(&path, rules(7)).unwrap();
    eventually("the condition", || async {
        value(
            &scrape(&app).await,
            "ratelimit_rules_reloads_total",
            &[("result", "success")],
        ) == 1.0
    })
    .await;
}

fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.admin(TOKEN, method, path)
}

#[tokio::test]
async fn admin_is_absent_without_a_token_and_refuses_a_wrong_one() {
    let redis = RedisServer::start().await;
    let closed = spawn_app(&redis, &[]).await;
    for path in ["/admin/overrides", "/admin/identities/user/x"] {
        let r = admin(&closed, reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    let app = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let r = app.get("/admin/overrides").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Unauthorized");
    for wrong in ["wrong", &TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}x")] {
        let r = app
            .client
            .get(app.url("/admin/overrides"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = app
        .client
        .get(app.url("/admin/overrides"))
        .header("Authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin(&app, reqwest::Method::GET, "/admin/overrides")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn admin_inspects_and_resets_an_identity() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[("ADMIN_TOKEN", TOKEN), ("RATE_LIMIT_USER_LIMIT", "3")],
    )
    .await;
    let key = unique_key("inspect");
    let path = format!("/admin/identities/user/{key}");

    let fresh: Value = admin(&app, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["status"], "limited");
    assert_eq!(
        fresh["policies"][0]["remaining"], 3,
        "unknown identities have their full limit"
    );
    assert!(fresh["override"].is_null());

    for _ in 0..4 {
        app.post_resource(Some(&key)).await;
    }
    let used: Value = admin(&app, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(used["policies"][0]["remaining"], 0);
    assert_eq!(used["policies"][0]["limit"], 3);
    // Inspecting consumed nothing.
    let again: Value = admin(&app, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["policies"][0]["remaining"], 0);

    let r = admin(&app, reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 1);
    // The reset also cleared this instance's cached denial.
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);

    // An unknown strategy is a bad path; an `ip` id that is no IP address
    // is a valid path naming no identity (the OpenAPI schema cannot tie the
    // id's form to the strategy).
    for (bad, status) in [
        ("/admin/identities/tenant/x", 400),
        ("/admin/identities/ip/not-an-ip", 404),
    ] {
        let r = admin(&app, reqwest::Method::GET, bad).send().await.unwrap();
        assert_eq!(r.status(), status, "{bad}");
    }
    let ip: Value = admin(&app, reqwest::Method::GET, "/admin/identities/ip/10.1.2.3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ip["strategy"], "ip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_set_on_one_instance_applies_on_another() {
    let redis = RedisServer::start().await;
    let settings = [("ADMIN_TOKEN", TOKEN), ("RATE_LIMIT_USER_LIMIT", "2")];
    let a = spawn_app(&redis, &settings).await;
    let b = spawn_app(&redis, &settings).await;
    let key = unique_key("override");
    let path = format!("/admin/overrides/user/{key}");
    let limit_on = |app: &TestApp| {
        let status = app.status_json(key.clone());
        async move {
            let s = status.await;
            (
                s["status"].as_str().unwrap().to_owned(),
                s["limit"].as_u64(),
            )
        }
    };

    // b learns the denial first (deny cache), then a raises the limit.
    for _ in 0..3 {
        b.post_resource(Some(&key)).await;
    }
    assert_eq!(b.post_resource(Some(&key)).await.status(), 429);
    let r = admin(&a, reqwest::Method::PUT, &path)
        .json(&json!({"limit": 10, "window": "1m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["override"], json!({"limit": 10, "window": "1m"}));
    assert_eq!(
        limit_on(&a).await,
        ("limited".into(), Some(10)),
        "at once on a"
    );
    let started = Instant::now();
    while limit_on(&b).await != ("limited".into(), Some(10)) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b never applied the override"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "override seen by the other instance after {:?}",
        started.elapsed()
    );
    // b's cached denial was dropped with the change.
    assert_eq!(b.post_resource(Some(&key)).await.status(), 200);

    // Blocked everywhere, then removed.
    admin(&a, reqwest::Method::PUT, &path)
        .json(&json!({"blocked": true}))
        .send()
        .await
        .unwrap();
    eventually("the condition", || async {
        b.post_resource(Some(&key)).await.status() == 403
    })
    .await;
    let got: Value = admin(&b, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["override"], json!({"blocked": true}));
    let list: Value = admin(&b, reqwest::Method::GET, "/admin/overrides")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["identifier"], key.as_str());
    let r = admin(&b, reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = admin(&b, reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    eventually("the condition", || async {
        a.post_resource(Some(&key)).await.status() != 403
    })
    .await;
    assert_eq!(
        admin(&a, reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // An allow-listing that ends by itself.
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    admin(&a, reqwest::Method::PUT, &path)
        .json(&json!({"unlimited": true, "until": until}))
        .send()
        .await
        .unwrap();
    assert_eq!(limit_on(&a).await.0, "unlimited");
    eventually("the condition", || async {
        limit_on(&a).await.0 == "limited"
    })
    .await;
}

#[tokio::test]
async fn invalid_overrides_get_a_clear_400() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let path = "/admin/overrides/user/someone";
    let past = 1_000u64;
    for body in [
        json!({"limit": 0}),
        json!({"limit": 5, "blocked": true}),
        json!({}),
        json!({"limt": 5}),
        json!({"limit": 5, "window": "soon"}),
        json!({"limit": 5, "policy": "nope"}),
        json!({"blocked": true, "until": past}),
        json!({"unlimited": "yes"}),
    ] {
        let r = admin(&app, reqwest::Method::PUT, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = r.json().await.unwrap();
        assert!(err["detail"].is_string(), "{body}: {err}");
    }
    let r = admin(&app, reqwest::Method::PUT, path)
        .header("Content-Type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "Invalid JSON body"
    );
    let r = admin(&app, reqwest::Method::PUT, "/admin/overrides/tenant/x")
        .json(&json!({"blocked": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

const SHADOW_RULES: &str = r#"
[[policy]]
name = "enforced"
# GCRA over a day: no window can end during the test and change the count.
algorithm = "gcra"
limit = 100
window = "1d"

[[policy]]
name = "trial"
algorithm = "token_bucket"
limit = 2
window = "1h"
shadow = true
"#;

#[tokio::test]
async fn a_shadow_policy_denies_nothing_but_counts() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(SHADOW_RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[]).await;
    let key = unique_key("shadow");
    let mut shadowed = 0;
    for i in 0..5 {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 200, "request {i}: shadow policies never deny");
        if let Some(h) = r.headers().get("X-RateLimit-Shadow") {
            assert_eq!(h, "\"trial\"");
            shadowed += 1;
        }
    }
    assert_eq!(
        shadowed, 3,
        "the trial policy would have denied requests 3 to 5"
    );
    let status: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(
        status["policies"][0]["remaining"], 95,
        "the enforced policy counted all five"
    );
    assert_eq!(status["policies"][1]["remaining"], 0);
    assert_eq!(status["policies"][1]["shadow"], true);
    let m = scrape(&app).await;
    let count = |policy, decision| {
        value(
            &m,
            "ratelimit_requests_total",
            &[("policy", policy), ("decision", decision)],
        )
    };
    assert_eq!(count("trial", "allowed"), 2.0);
    assert_eq!(count("trial", "shadow_denied"), 3.0);
    assert_eq!(count("enforced", "shadow_denied"), 3.0);
}

#[tokio::test]
async fn global_shadow_mode_never_denies() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_SHADOW", "true"),
            ("RATE_LIMIT_USER_LIMIT", "2"),
        ],
    )
    .await;
    let key = unique_key("global-shadow");
    for i in 0..4 {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("X-RateLimit-Shadow").is_some(),
            i >= 2,
            "request {i}"
        );
    }
    let m = scrape(&app).await;
    assert_eq!(
        value(
            &m,
            "ratelimit_requests_total",
            &[("decision", "shadow_denied")]
        ),
        2.0
    );
    assert_eq!(
        value(&m, "ratelimit_requests_total", &[("decision", "denied")]),
        0.0
    );
}

#[tokio::test]
async fn request_ids_are_returned_and_taken_only_from_trusted_proxies() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let r = app.post_resource(Some(&unique_key("rid"))).await;
    let header = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["request_id"],
        header.as_str(),
        "one id for header, body and log"
    );
    let livez = app.get("/livez").await;
    assert!(livez.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));

    let send = |app: &TestApp, id: &'static str| {
        app.client
            .get(app.url("/livez"))
            .header("X-Request-Id", id)
            .send()
    };
    let untrusted = send(&app, "from-the-client").await.unwrap();
    assert_ne!(untrusted.headers()["x-request-id"], "from-the-client");

    let proxied = spawn_app(&redis, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let r = send(&proxied, "proxy-trace-42").await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "proxy-trace-42");
    let r = send(&proxied, "bad id with spaces").await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");
    let headers: HashMap<_, _> = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    assert!(headers.contains_key("x-request-id"));
}
