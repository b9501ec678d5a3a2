//! The HTTP API, end to end: the real application on port 0 against a real
//! redis-server.

mod support;

use serde_json::Value;
use support::{header_u64, spawn_app, unique_key, RedisServer};

#[tokio::test]
async fn resource_answers_with_the_documented_body_and_headers() {
    let redis = RedisServer::start().await;
    // The service's defaults: fixed windows of 60 s (one request, so no
    // window edge can fall inside what is counted).
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_ALGORITHM", "fixed_window"),
            ("RATE_LIMIT_USER_WINDOW", "60"),
        ],
    )
    .await;
    let key = unique_key("body");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let response = app.post_resource(Some(&key)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header_u64(&response, "X-RateLimit-Limit"), 20);
    assert_eq!(header_u64(&response, "X-RateLimit-Remaining"), 19);
    let reset = header_u64(&response, "X-RateLimit-Reset");
    assert!(reset > before && reset <= before + 61, "reset {reset}");
    assert_eq!(reset % 60, 0, "fixed windows end on the minute");
    assert!(response.headers().get("X-RateLimit-Degraded").is_none());

    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Request successful");
    assert_eq!(body["data"], serde_json::json!({"processed": true}));
    let id = body["request_id"].as_str().unwrap();
    assert!(id.starts_with("req_") && id.len() > 8, "{id}");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(timestamp.ends_with('Z'), "UTC: {timestamp}");
    humantime::parse_rfc3339(timestamp).expect("RFC 3339");

    let second: Value = app.post_resource(Some(&key)).await.json().await.unwrap();
    assert_ne!(second["request_id"], body["request_id"], "ids are unique");
}

#[tokio::test]
async fn over_the_limit_gets_429_with_retry_after_and_the_body() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "3")]).await;
    let key = unique_key("deny");
    for expected_remaining in [2, 1, 0] {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), expected_remaining);
    }
    let r = app.post_resource(Some(&key)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 3);
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 0);
    let reset = header_u64(&r, "X-RateLimit-Reset");
    let retry_after = header_u64(&r, "Retry-After");
    // GCRA 3 per day: one request comes back every 8 hours.
    assert!(
        (8 * 3600 - 60..=8 * 3600).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["identifier"], key.as_str());
    assert_eq!(body["limit"], 3);
    assert_eq!(body["retry_after"], retry_after);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The full limit is back a day after the first request.
    assert!(reset >= now + retry_after && reset <= now + 86_400 + 1);

    // Denied requests consumed nothing: the status still shows 0 remaining,
    // and other keys are untouched.
    let other = app.post_resource(Some(&unique_key("other"))).await;
    assert_eq!(other.status(), 200);
    assert_eq!(header_u64(&other, "X-RateLimit-Remaining"), 2);
}

#[tokio::test]
async fn denied_requests_do_not_consume_quota() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "2")]).await;
    let key = unique_key("noconsume");
    for _ in 0..2 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    }
    for _ in 0..5 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 429);
    }
    let conn = redis.connection().await.unwrap();
    let counter = format!("rate:{{user:{key}}}:86400:gcra:user");
    // The stored TAT: two requests of 12 hours each ahead of the first.
    let read = |mut conn: redis::aio::MultiplexedConnection| {
        let counter = counter.clone();
        async move {
            let value: String = redis::cmd("GET")
                .arg(&counter)
                .query_async(&mut conn)
                .await
                .unwrap();
            value.parse::<u64>().unwrap()
        }
    };
    let tat = read(conn.clone()).await;
    for _ in 0..5 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 429);
    }
    assert_eq!(
        read(conn.clone()).await,
        tat,
        "denied requests change nothing stored"
    );
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let ahead = tat - now_us;
    assert!(
        (86_400_000_000 - 60_000_000..=86_400_000_000).contains(&ahead),
        "the TAT holds the two admitted requests only ({ahead} us ahead)"
    );
}

#[tokio::test]
async fn a_flood_from_a_denied_client_costs_no_redis_call() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "2")]).await;
    let key = unique_key("flood");
    for _ in 0..2 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    }
    let first = app.post_resource(Some(&key)).await;
    assert_eq!(first.status(), 429);
    let retry = header_u64(&first, "Retry-After");
    let before = redis.evalsha_calls().await;
    for _ in 0..50 {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 0);
        assert!(header_u64(&r, "Retry-After") <= retry);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["identifier"], key.as_str());
    }
    assert_eq!(
        redis.evalsha_calls().await,
        before,
        "denials answered from the deny cache"
    );
    // Another client is unaffected and still goes to Redis.
    assert_eq!(
        app.post_resource(Some(&unique_key("fine"))).await.status(),
        200
    );
    assert_eq!(redis.evalsha_calls().await, before + 1);
}

#[tokio::test]
async fn without_a_key_the_client_ip_is_limited() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_IP_LIMIT", "2")]).await;
    for _ in 0..2 {
        assert_eq!(app.post_resource(None).await.status(), 200);
    }
    assert_eq!(app.post_resource(None).await.status(), 429);
    // An empty key is no key.
    let r = app
        .client
        .post(app.url("/api/resource"))
        .header("X-API-Key", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["identifier"], "127.0.0.1");
    // A key moves the caller to its own limit.
    assert_eq!(
        app.post_resource(Some(&unique_key("k"))).await.status(),
        200
    );
}

#[tokio::test]
async fn user_and_ip_limits_are_configured_separately() {
    let redis = RedisServer::start().await;
    let app = spawn_app(
        &redis,
        &[
            ("RATE_LIMIT_USER_LIMIT", "7"),
            ("RATE_LIMIT_USER_WINDOW", "30"),
            ("RATE_LIMIT_IP_LIMIT", "4"),
            ("RATE_LIMIT_IP_WINDOW", "10"),
        ],
    )
    .await;
    let key = unique_key("cfg");
    let user: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(user["limit"], 7);
    assert_eq!(user["window"], 30);
    let ip: Value = app.get("/rate-limit/status").await.json().await.unwrap();
    assert_eq!(ip["strategy"], "ip");
    assert_eq!(ip["limit"], 4);
    assert_eq!(ip["window"], 10);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let redis = RedisServer::start().await;
    let trusting = spawn_app(
        &redis,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("RATE_LIMIT_IP_LIMIT", "1"),
        ],
    )
    .await;
    let send = |app: &support::TestApp, xff: &'static str| {
        app.client
            .post(app.url("/api/resource"))
            .header("X-Forwarded-For", xff)
            .send()
    };
    // Behind a trusted proxy, each forwarded client has its own limit.
    assert_eq!(send(&trusting, "203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(send(&trusting, "203.0.113.2").await.unwrap().status(), 200);
    let r = send(&trusting, "203.0.113.1").await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["identifier"], "203.0.113.1");
    // A forged left-most entry does not help: the proxy appended the real one.
    assert_eq!(
        send(&trusting, "198.51.100.7, 203.0.113.1")
            .await
            .unwrap()
            .status(),
        429
    );

    // Without trust the header is ignored: every request is 127.0.0.1.
    let redis2 = RedisServer::start().await;
    let plain = spawn_app(&redis2, &[("RATE_LIMIT_IP_LIMIT", "1")]).await;
    assert_eq!(send(&plain, "203.0.113.1").await.unwrap().status(), 200);
    let r = send(&plain, "203.0.113.2").await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["identifier"], "127.0.0.1");
}

#[tokio::test]
async fn status_reports_without_consuming() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let key = unique_key("status");
    for _ in 0..3 {
        app.post_resource(Some(&key)).await;
    }
    for _ in 0..5 {
        let r = app.status(&key).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("X-RateLimit-Remaining").is_none(),
            "status is not itself limited"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["strategy"], "user");
        assert_eq!(body["identifier"], key.as_str());
        assert_eq!(body["limit"], 20);
        assert_eq!(body["remaining"], 17);
        assert_eq!(body["window"], 86_400);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // GCRA 20 per day: three requests are back in 3 x 72 minutes.
        let reset = body["reset"].as_u64().unwrap();
        assert!(reset > now && reset <= now + 3 * 72 * 60 + 1, "{reset}");
    }
    let r = app.post_resource(Some(&key)).await;
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 16);
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_json_error() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let key = unique_key("json");
    let r = app
        .client
        .post(app.url("/api/resource"))
        .header("X-API-Key", &key)
        .header("Content-Type", "application/json")
        .body("{\"broken\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Invalid JSON body");
    assert!(body["detail"].as_str().unwrap().contains("EOF"));

    // Valid JSON, and no body at all, are both fine.
    let ok = app
        .client
        .post(app.url("/api/resource"))
        .header("X-API-Key", &key)
        .json(&serde_json::json!({"any": ["thing", 1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
}

#[tokio::test]
async fn a_huge_body_is_refused_with_413() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let r = app
        .client
        .post(app.url("/api/resource"))
        .header("X-API-Key", unique_key("big"))
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn other_methods_get_405_and_cost_nothing() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let key = unique_key("method");
    // Other spellings of POST are other methods (methods are
    // case-sensitive), and so is one made up.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::from_bytes(b"post").unwrap(),
        reqwest::Method::from_bytes(b"Post").unwrap(),
        reqwest::Method::from_bytes(b"FOO").unwrap(),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url("/api/resource"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "POST");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Method not allowed");
    }
    let body: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(body["remaining"], 20);
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let r = app.get("/nope").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Not found");
}

#[tokio::test]
async fn hostile_keys_are_refused_or_isolated_never_a_5xx() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "2")]).await;

    let huge = "k".repeat(8 * 1024);
    let r = app.post_resource(Some(&huge)).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Invalid request identity");
    assert!(body["detail"].as_str().unwrap().contains("8192 bytes"));

    let not_utf8 = reqwest::header::HeaderValue::from_bytes(b"\xff\xfekey").unwrap();
    let r = app
        .client
        .post(app.url("/api/resource"))
        .header("X-API-Key", not_utf8)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app.status_raw(b"\xff\xfekey").await;
    assert_eq!(r.status(), 400);

    // Keys made of the characters that matter to Redis keys and hash tags
    // are ordinary keys, each with its own counter.
    let tricky = [
        "*",
        "{",
        "}",
        ":",
        "{user:victim}",
        "a:b:c",
        "ключ-🔑",
        "%7B",
        "?*[]",
    ];
    for key in tricky {
        let raw = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap();
        for expected in [200, 200, 429] {
            let r = app
                .client
                .post(app.url("/api/resource"))
                .header("X-API-Key", raw.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), expected, "key {key:?}");
        }
    }
    // The key that looks like another identity's hash tag did not touch it.
    let victim: Value = app.status("victim").await.json().await.unwrap();
    assert_eq!(victim["remaining"], 2);
    // Every counter lives under the rate: prefix with one hash tag each
    // (the top offenders, published every second, have their own tag).
    let keys = redis.keys("*").await;
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| !k.starts_with("rate:{top}:"))
        .collect();
    assert_eq!(keys.len(), tricky.len(), "{keys:?}");
    for key in keys {
        assert!(
            key.starts_with("rate:{user:") && key.ends_with("}:86400:gcra:user"),
            "{key}"
        );
        assert_eq!(key.matches('{').count(), 1, "{key}");
    }
}

#[tokio::test]
async fn health_reports_redis_and_livez_needs_nothing() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let r = app.get("/health").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["redis"]["status"], "up");
    assert!(body["redis"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["failure_mode"], "open");
    assert_eq!(body["redis"]["topology"], "single");
    assert_eq!(body["redis"]["breaker"], "closed");

    redis.kill();
    let r = app.get("/health").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    // Requests are still served (failure mode open): degraded, with why.
    assert_eq!(body["status"], "degraded");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .contains("allowed uncounted"));
    assert_eq!(body["redis"]["status"], "down");
    assert!(body["redis"]["latency_ms"].is_null());
    assert!(body["redis"]["error"].is_string());

    let r = app.get("/livez").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "alive");
}

#[tokio::test]
async fn docs_are_served_by_the_service_itself() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;

    let r = app.get("/docs").await;
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/docs/");
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    assert_no_external_loads(&html);
    let init = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api-docs/openapi.json"));

    let page = app.get("/redoc").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Redoc.init("));
    assert!(html.contains("/redoc/redoc.standalone.js"));
    assert_no_external_loads(&html);
    let js = app.get("/redoc/redoc.standalone.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    assert!(js.bytes().await.unwrap().len() > 500_000);
}

/// No `src=` or `href=` pointing off the service.
fn assert_no_external_loads(html: &str) {
    for attr in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "//cdn",
        "googleapis",
    ] {
        assert!(
            !html.contains(attr),
            "page loads something external: {attr}"
        );
    }
}

#[tokio::test]
async fn openapi_documents_every_endpoint_status_and_header() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let doc: Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/resource", "post"),
        ("/rate-limit/status", "get"),
        ("/health", "get"),
        ("/livez", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let responses = &paths["/api/resource"]["post"]["responses"];
    for status in ["200", "400", "403", "405", "429", "503"] {
        assert!(responses[status].is_object(), "status {status} documented");
    }
    for header in [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit-Policy",
        "RateLimit",
    ] {
        assert!(
            responses["200"]["headers"][header].is_object(),
            "{header} on 200"
        );
        assert!(
            responses["429"]["headers"][header].is_object(),
            "{header} on 429"
        );
    }
    assert!(responses["429"]["headers"]["Retry-After"].is_object());
    assert!(responses["200"]["headers"]["X-RateLimit-Degraded"].is_object());
    assert!(paths["/health"]["get"]["responses"]["503"].is_object());
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "ResourceResponse",
        "RateLimitExceeded",
        "RateLimitStatus",
        "Health",
        "ErrorBody",
    ] {
        assert!(schemas[schema].is_object(), "schema {schema}");
    }
    let params = paths["/api/resource"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params
        .iter()
        .any(|p| p["name"] == "X-API-Key" && p["in"] == "header"));
}

/// API_KEY_HEADER names the header that carries keys; with
/// `Authorization` the key is the token of `Bearer <key>`.
#[tokio::test]
async fn the_api_key_header_is_a_setting_and_can_be_a_bearer_token() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("API_KEY_HEADER", "X-Client-Key")]).await;
    let key = unique_key("client-key");
    let status = |builder: reqwest::RequestBuilder| async move {
        let body: Value = builder.send().await.unwrap().json().await.unwrap();
        (body["strategy"].clone(), body["identifier"].clone())
    };
    let url = app.url("/rate-limit/status");
    assert_eq!(
        status(app.client.get(&url).header("X-Client-Key", &key)).await,
        (Value::from("user"), Value::from(key.as_str()))
    );
    assert_eq!(
        status(app.client.get(&url).header("X-API-Key", &key))
            .await
            .0,
        "ip",
        "the default header is not read when another is set"
    );

    let bearer = spawn_app(&redis, &[("API_KEY_HEADER", "Authorization")]).await;
    let url = bearer.url("/rate-limit/status");
    assert_eq!(
        status(
            bearer
                .client
                .get(&url)
                .header("Authorization", format!("bearer {key}"))
        )
        .await,
        (Value::from("user"), Value::from(key.as_str()))
    );
    assert_eq!(
        status(bearer.client.get(&url).header("Authorization", "Basic abc"))
            .await
            .0,
        "ip",
        "another scheme carries no key"
    );
}
