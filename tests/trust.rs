//! Trust boundaries (issue 19): every endpoint belongs to one plane (the
//! public API, the decision APIs, the operator's pages), and nobody reaches
//! a plane, or a domain, not meant for them. Each test names the item of the
//! probe it pins; each failed on the code before its fix.

mod support;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use support::rls::{ask, client, descriptor, request};
use support::{spawn_app, spawn_app_with, unique_key, RedisServer, TempDir, TestApp};

/// A descriptor that refunds `hits` (is_negative_hits).
fn refund(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        is_negative_hits: true,
        ..descriptor(entries)
    }
}

/// POST /json with `body` from this test's address (127.0.0.1).
async fn post_json(app: &TestApp, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/json"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The statuses of `n` requests of `key` on the public API.
async fn statuses(app: &TestApp, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(app.post_resource(Some(key)).await.status().as_u16());
    }
    out
}

const TOKEN: &str = "an-admin-token-of-32-characters!";

/// The public API at 5 a day per key, /json served to this test's address
/// (a trusted proxy), and an admin token for /admin/top.
async fn public_app(redis: &RedisServer, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("RATE_LIMIT_USER_LIMIT", "5"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("ADMIN_TOKEN", TOKEN),
    ];
    settings.extend_from_slice(extra);
    spawn_app(redis, &settings).await
}

/// Item 1: over gRPC and /json, anyone could refund themselves after each
/// request (30 of 30 allowed at a limit of 5), spend another key's quota,
/// and fabricate top offenders. The `http` domain is not served there by
/// default: nothing is counted, refunded or named.
#[tokio::test]
async fn the_http_domain_is_not_served_over_rls_or_json() {
    let redis = RedisServer::start().await;
    let app = public_app(&redis, &[]).await;
    let mut c = client(&app).await;

    // A self-refunding client: each request refunded at once.
    let me = unique_key("refunder");
    let mut allowed = 0;
    for _ in 0..10 {
        if app.post_resource(Some(&me)).await.status() == 200 {
            allowed += 1;
        }
        let r = ask(&mut c, request("http", vec![refund(&[("user", &me)], 1)])).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        let body = format!(
            r#"{{"domain":"http","descriptors":[{{"entries":[{{"key":"user","value":"{me}"}}],"hitsAddend":"1","isNegativeHits":true}}]}}"#
        );
        assert_eq!(post_json(&app, &body).await.status(), 200);
    }
    assert_eq!(allowed, 5, "refunds over RLS and /json must not reach http");

    // Spending a victim's quota, and naming it among the top offenders.
    let victim = unique_key("victim");
    let spend = request(
        "http",
        vec![RateLimitDescriptor {
            hits_addend: Some(UInt64Value { value: 100 }),
            ..descriptor(&[("user", &victim)])
        }],
    );
    for _ in 0..3 {
        ask(&mut c, spend.clone()).await;
    }
    let body = format!(
        r#"{{"domain":"http","descriptors":[{{"entries":[{{"key":"user","value":"{victim}"}}],"hitsAddend":"100"}}]}}"#
    );
    post_json(&app, &body).await;
    assert_eq!(
        statuses(&app, &victim, 1).await,
        [200],
        "the victim is untouched"
    );
    let top: serde_json::Value = app
        .admin_json(
            TOKEN,
            reqwest::Method::GET,
            "/admin/top?by=requests&n=100&window=1m",
        )
        .await;
    let hits = top["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["identifier"] == victim.as_str())
        .map(|e| e["count"].as_u64().unwrap());
    assert_eq!(hits, Some(1), "only the victim's own request: {top}");

    // The metric of the refused domain has a fixed label.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"ratelimit_service_rate_limit_domain_not_found{domain="http"}"#),
        "{metrics}"
    );
}

/// Item 1, the opt-in: RLS_HTTP_DOMAIN=true serves the domain to trusted
/// callers, refunds included (so the test above would see them).
#[tokio::test]
async fn rls_http_domain_serves_it_when_the_operator_says_so() {
    let redis = RedisServer::start().await;
    let app = public_app(&redis, &[("RLS_HTTP_DOMAIN", "true")]).await;
    let mut c = client(&app).await;
    let key = unique_key("served");
    assert_eq!(
        statuses(&app, &key, 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    ask(&mut c, request("http", vec![refund(&[("user", &key)], 2)])).await;
    assert_eq!(statuses(&app, &key, 3).await, [200, 200, 429]);
}

/// Item 1: /json is a decision API. By default it answers trusted proxies
/// only; JSON_API=off removes it, JSON_API=open serves anyone (as
/// envoyproxy/ratelimit on its private port).
#[tokio::test]
async fn json_answers_trusted_callers_only_or_as_json_api_says() {
    let redis = RedisServer::start().await;
    let body = r#"{"domain":"none","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#;
    let untrusted = spawn_app(&redis, &[]).await;
    let r = post_json(&untrusted, body).await;
    assert_eq!(r.status(), 403);
    let json: serde_json::Value = r.json().await.unwrap();
    assert!(json["detail"].as_str().unwrap().contains("TRUSTED_PROXIES"));
    let trusted = spawn_app(&redis, &[("TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    assert_eq!(post_json(&trusted, body).await.status(), 200);
    let off = spawn_app(
        &redis,
        &[("TRUSTED_PROXIES", "127.0.0.1"), ("JSON_API", "off")],
    )
    .await;
    assert_eq!(post_json(&off, body).await.status(), 404);
    let open = spawn_app(&redis, &[("JSON_API", "open")]).await;
    assert_eq!(post_json(&open, body).await.status(), 200);
}

/// Item 12 (and 13): /rlconfig listed value-specific rules (API keys with
/// raised limits) to anyone; /metrics and /dashboard/stats likewise. They
/// are the operator's: the admin token, or a peer in OPERATOR_NETWORKS.
#[tokio::test]
async fn operator_pages_need_the_token_outside_operator_networks() {
    let redis = RedisServer::start().await;
    let token = TOKEN;
    let outside = spawn_app(
        &redis,
        &[("OPERATOR_NETWORKS", "none"), ("ADMIN_TOKEN", token)],
    )
    .await;
    for path in ["/rlconfig", "/metrics", "/dashboard/stats"] {
        let r = outside.get(path).await;
        assert_eq!(r.status(), 401, "{path}");
        let r = outside
            .client
            .get(outside.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
        let r = outside
            .client
            .get(outside.url(path))
            .bearer_auth("not-the-admin-token-of-32-chars!")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    // The page itself holds no data and stays public.
    assert_eq!(outside.get("/dashboard").await.status(), 200);
    // From the operator's network (loopback by default), no token needed.
    let inside = spawn_app(&redis, &[]).await;
    for path in ["/rlconfig", "/metrics", "/dashboard/stats"] {
        assert_eq!(inside.get(path).await.status(), 200, "{path}");
    }
}

/// A configuration directory with one YAML file, for the Envoy domain tests.
fn erl_dir(yaml: &str) -> TempDir {
    let dir = TempDir::new("trust-erl");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/d.yaml"), yaml).unwrap();
    dir
}

async fn erl_app(redis: &RedisServer, dir: &TempDir) -> TestApp {
    let root = dir.path().display().to_string();
    spawn_app(
        redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_WATCH_ROOT", "false"),
        ],
    )
    .await
}

/// The Redis keys whose name holds `part`.
async fn keys_with(redis: &RedisServer, part: &str) -> Vec<String> {
    redis.keys(&format!("*{part}*")).await
}

/// Item 7: an anonymous per-descriptor `limit` made counters of the
/// caller's choosing, alive until the end of the calendar year. A client
/// limit applies only where a rule matches the descriptor; and keys and
/// values are bounded far below the 8 KiB they were.
#[tokio::test]
async fn client_limits_apply_only_where_a_rule_asks_and_entries_are_bounded() {
    let redis = RedisServer::start().await;
    let dir = erl_dir(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: day, requests_per_unit: 100 }\n",
    );
    let app = erl_app(&redis, &dir).await;
    let mut c = client(&app).await;
    let year = |entries: &[(&str, &str)]| RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: 6, // YEAR
        }),
        ..descriptor(entries)
    };
    for i in 0..20 {
        let invented = format!("invented-{i}");
        let r = ask(&mut c, request("d", vec![year(&[(&invented, "x")])])).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert!(r.statuses[0].current_limit.is_none(), "no limit applied");
    }
    assert_eq!(
        keys_with(&redis, "invented").await,
        Vec::<String>::new(),
        "no key made for invented descriptors"
    );
    // Where a rule matches, the caller's limit replaces the rule's.
    let v = unique_key("v");
    let first = ask(&mut c, request("d", vec![year(&[("k", &v)])])).await;
    assert_eq!(first.overall_code, Code::Ok as i32);
    let second = ask(&mut c, request("d", vec![year(&[("k", &v)])])).await;
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    assert_eq!(keys_with(&redis, &v).await.len(), 1, "the rule's counter");

    // Entry bounds: a 2 KiB value, a 200-byte key, a 200-byte domain.
    let long = "x".repeat(2048);
    let name = "k".repeat(200);
    for r in [
        request("d", vec![descriptor(&[("k", &long)])]),
        request("d", vec![descriptor(&[(&name, "v")])]),
        request(&name, vec![descriptor(&[("k", "v")])]),
    ] {
        let err = c.should_rate_limit(r).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
    }
    let ok = "x".repeat(1024);
    let r = ask(&mut c, request("d", vec![descriptor(&[("k", &ok)])])).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

/// Item 2, Traefik (which cannot run here), by the header contract its
/// documentation gives: with `trustForwardHeader: false` ForwardAuth writes
/// X-Forwarded-Method, -Uri (the request URI as received), -Host and -For
/// itself, and passes the client's other headers on untouched. The shipped
/// file must say false; the limiter, asked as Traefik asks, counts the
/// route Traefik saw in its normal form, whatever else the client sent.
#[tokio::test]
async fn traefik_forward_auth_as_its_documentation_describes_it() {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/traefik/dynamic.yml"),
    )
    .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&file).unwrap();
    let forward = &doc["http"]["middlewares"]["rate-limit"]["forwardAuth"];
    assert_eq!(
        forward["trustForwardHeader"],
        serde_yaml::Value::Bool(false)
    );

    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(support::ORDER_RULES);
    let app =
        support::spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let key = unique_key("traefik");
    // What Traefik sends for a client's `POST <uri>`, the client having
    // added its own nginx-family headers.
    let ask = |uri: &'static str| {
        app.client
            .get(app.url("/v1/forward-auth"))
            .header("X-Forwarded-Method", "POST")
            .header("X-Forwarded-Uri", uri)
            .header("X-Forwarded-Host", "api.example")
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Original-URI", "/elsewhere")
            .header("X-Original-Method", "GET")
            .header("X-API-Key", key.clone())
            .send()
    };
    let mut seen = Vec::new();
    for uri in [
        "/v1/orders/1",
        "/v1/%6Frders/2",
        "//v1/orders/3",
        "/v1/./x/../orders/4",
    ] {
        seen.push(ask(uri).await.unwrap().status().as_u16());
    }
    assert_eq!(seen, [200, 200, 429, 429]);
    // What has no normal form is refused, not guessed.
    for uri in ["/v1/orders%2F1", "/v1/%zz"] {
        assert_eq!(ask(uri).await.unwrap().status(), 400, "{uri}");
    }
}

/// Item 14: /docs/ and /redoc share the dashboard's origin (where the admin
/// token lives in sessionStorage) and had no CSP and no `nosniff`.
#[tokio::test]
async fn the_documentation_pages_carry_a_csp_and_nosniff() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    for path in ["/docs/", "/redoc", "/api-docs/openapi.json"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}

/// Item 13: /dashboard/stats carried detailed_metric request values (the
/// values of the request, as metric labels). The page shows their sum.
#[tokio::test]
async fn dashboard_stats_carry_no_request_values() {
    let redis = RedisServer::start().await;
    let dir = erl_dir(
        "domain: d\ndescriptors:\n  - key: k\n    detailed_metric: true\n    rate_limit: { unit: day, requests_per_unit: 100 }\n",
    );
    let app = erl_app(&redis, &dir).await;
    let mut c = client(&app).await;
    let value = unique_key("private-value");
    ask(&mut c, request("d", vec![descriptor(&[("k", &value)])])).await;
    let stats = app.get("/dashboard/stats").await.text().await.unwrap();
    assert!(!stats.contains(&value), "{stats}");
    assert!(stats.contains("(detailed_metric)"), "{stats}");
}

/// Item 17: the admin override hash had no bound on count or size, and
/// every instance reread it whole every second. It holds at most 10,000
/// overrides (a new one past that is refused; replacing one is not), and
/// an instance rereads it only when its version moves.
#[tokio::test]
async fn the_override_hash_is_bounded_and_reread_only_when_it_changes() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await.unwrap();
    let mut fill = redis::pipe();
    for i in 0..rate_limiter::limiter::overrides::MAX_OVERRIDES {
        fill.cmd("HSET")
            .arg("rate:overrides")
            .arg(format!("user:filler-{i}"))
            .arg(r#"{"unlimited":true}"#)
            .ignore();
    }
    let _: () = fill.query_async(&mut conn).await.unwrap();
    let app = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    let put = |id: String| {
        app.admin(
            TOKEN,
            reqwest::Method::PUT,
            &format!("/admin/overrides/user/{id}"),
        )
        .json(&serde_json::json!({"unlimited": true}))
        .send()
    };
    let r = put(unique_key("one-too-many")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("10000 overrides"));
    assert_eq!(
        put("filler-7".into()).await.unwrap().status(),
        200,
        "a replacement"
    );
    let r = app
        .admin(
            TOKEN,
            reqwest::Method::DELETE,
            "/admin/overrides/user/filler-8",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(put(unique_key("now-fits")).await.unwrap().status(), 200);
    let long = "k".repeat(3000);
    assert_eq!(put(long).await.unwrap().status(), 400, "a 3 KB identity");

    // Idle: the version is read every second, the hash no more.
    let before = redis.command_calls("hgetall").await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let reads = redis.command_calls("hgetall").await - before;
    assert!(reads <= 1, "{reads} whole rereads in 3.5 s of nothing");
    assert!(
        redis.command_calls("hget").await >= 3,
        "the version is read"
    );
}

/// Item 24: a wrong Redis password (or a missing ACL permission) was
/// reported as "the store did not answer within 100ms". It is named an
/// authentication error, in /health and in the metrics.
#[tokio::test]
async fn a_wrong_redis_password_is_reported_as_an_authentication_error() {
    let redis = RedisServer::start_with(&["--requirepass".into(), "right-password".into()]).await;
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/0")
        .to_owned();
    let url = format!("redis://:wrong-password@127.0.0.1:{port}");
    let app = spawn_app_with(support::settings(&url, &[("REDIS_TIMEOUT_MS", "300")])).await;
    support::eventually("health names the authentication error", || async {
        let r = app.get("/health").await;
        let body = r.text().await.unwrap();
        body.contains("credentials") && !body.contains("did not answer")
    })
    .await;
    let r = app.post_resource(Some("k")).await;
    assert_eq!(r.headers()["X-RateLimit-Degraded"], "redis-auth");
}

/// Item 21: RATE_LIMIT_SHADOW shadowed only the HTTP policies, though the
/// README says every policy. The Envoy domains' limits, their bans and a
/// caller's own limit are reported and not enforced too.
#[tokio::test]
async fn rate_limit_shadow_shadows_the_envoy_domains_too() {
    let redis = RedisServer::start().await;
    let dir = erl_dir(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: day, requests_per_unit: 1 }\n  - key: banned\n    rate_limit: { unit: day, requests_per_unit: 0 }\n",
    );
    let root = dir.path().display().to_string();
    let app = spawn_app(
        &redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("RATE_LIMIT_SHADOW", "true"),
        ],
    )
    .await;
    let mut c = client(&app).await;
    let v = unique_key("shadowed");
    for _ in 0..3 {
        let r = ask(&mut c, request("d", vec![descriptor(&[("k", &v)])])).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
    }
    let r = ask(&mut c, request("d", vec![descriptor(&[("banned", &v)])])).await;
    assert_eq!(r.overall_code, Code::Ok as i32, "a ban, shadowed: {r:?}");
    let own = RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: 4, // DAY
        }),
        ..descriptor(&[("k", &unique_key("own"))])
    };
    for _ in 0..2 {
        let r = ask(&mut c, request("d", vec![own.clone()])).await;
        assert_eq!(
            r.overall_code,
            Code::Ok as i32,
            "a caller's limit, shadowed"
        );
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ratelimit_service_rate_limit_shadow_mode{domain=\"d\""),
        "over-limit hits counted as shadow_mode"
    );
}

/// Item 19: the admin API's standing and reset looked only at `POST
/// /api/resource` with no host, so the counters of route- and host-scoped
/// policies (forward-auth's) were neither shown nor reset, though the
/// README promises every counter.
#[tokio::test]
async fn admin_shows_and_resets_route_and_host_scoped_counters() {
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(
        r#"
[[policy]]
name = "orders"
algorithm = "gcra"
limit = 2
window = "1h"
route = "POST /v1/orders/*"

[[policy]]
name = "partner-host"
algorithm = "gcra"
limit = 5
window = "1h"
host = "partner.example"
"#,
    );
    let app = support::spawn_app_with_rules(
        &redis,
        &rules,
        &[("TRUSTED_PROXIES", "127.0.0.1"), ("ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let key = unique_key("scoped");
    let ask = || {
        app.client
            .get(app.url("/v1/forward-auth"))
            .header("X-Forwarded-Method", "POST")
            .header("X-Forwarded-Uri", "/v1/orders/1")
            .header("X-Forwarded-Host", "partner.example")
            .header("X-API-Key", key.clone())
            .send()
    };
    let seen: Vec<u16> = {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(ask().await.unwrap().status().as_u16());
        }
        seen
    };
    assert_eq!(seen, [200, 200, 429]);
    let identity = format!("/admin/identities/user/{key}");
    let shown: serde_json::Value = app.admin_json(TOKEN, reqwest::Method::GET, &identity).await;
    let remaining = |name: &str| {
        shown["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["remaining"].as_u64().unwrap())
    };
    assert_eq!(remaining("orders"), Some(0), "{shown}");
    assert_eq!(remaining("partner-host"), Some(3), "{shown}");
    let r: serde_json::Value = app
        .admin_json(TOKEN, reqwest::Method::DELETE, &identity)
        .await;
    assert_eq!(r["deleted"], 2, "both scoped counters: {r}");
    assert_eq!(ask().await.unwrap().status(), 200, "reset");
}

/// Item 25: the rules, YAML and JWKS files were read every second on the
/// async runtime that also serves gRPC, so a read that blocks (a slow or
/// network volume; here a FIFO nobody writes to, swapped in for the rules
/// file) held it up. The reads run on blocking threads: the service keeps
/// answering meanwhile.
#[tokio::test]
async fn a_file_read_that_blocks_does_not_stop_the_service() {
    use std::os::unix::fs::OpenOptionsExt;
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(support::ORDER_RULES);
    let app = support::spawn_app_with_rules(&redis, &rules, &[]).await;
    let grpc_port = app.grpc_port;
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("rules.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A second name for the FIFO, to release it once it is out of the way.
    let release = dir.path().join("release.fifo");
    std::fs::hard_link(&fifo, &release).unwrap();
    std::fs::rename(&fifo, &rules.path).unwrap();
    // This test's runtime runs the poller and the gRPC server; a client on
    // a thread and runtime of its own asks once the next poll is waiting on
    // the FIFO, then releases that read (a writer that closes at once: end
    // of file; non-blocking, so with no reader the open fails instead of
    // waiting), so that a runtime the read held up is free again and the
    // test fails rather than hangs.
    let (path, regular) = (rules.path.clone(), dir.path().join("rules.toml"));
    std::fs::write(&regular, support::ORDER_RULES).unwrap();
    let answered = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let answered = runtime.block_on(async move {
            let ask = async {
                let mut c =
                    RateLimitServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
                        .await
                        .ok()?;
                c.should_rate_limit(request("none", vec![descriptor(&[("k", "v")])]))
                    .await
                    .ok()
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), ask)
                .await
                .ok()
                .flatten()
                .is_some()
        });
        // A regular file again, then the FIFO released, so no later poll
        // waits on it either.
        std::fs::rename(&regular, &path).unwrap();
        const O_NONBLOCK: i32 = 0o4000;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&release);
        answered
    });
    // A blocking wait for the other thread: nothing here holds the runtime.
    let answered = tokio::task::spawn_blocking(move || answered.join().unwrap())
        .await
        .unwrap();
    assert!(
        answered,
        "gRPC did not answer while a poll's read was blocked"
    );
}

/// Item 9: an idle instance rewrote its top offenders into Redis every
/// second (8-9.6 MB/s of 24 KB subjects). It writes only what changed:
/// after traffic stops, nothing more.
#[tokio::test]
async fn an_idle_instance_publishes_nothing() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    for _ in 0..5 {
        app.post_resource(Some(&unique_key("busy"))).await;
    }
    // Its last publication of that traffic, then quiet.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = redis.command_calls("hset").await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let writes = redis.command_calls("hset").await - before;
    assert_eq!(writes, 0, "{writes} writes while idle");
}
