//! Forward-auth over HTTP: a gateway (here the test client, from a trusted
//! proxy address) describes the original request; route rules with globs,
//! keys, client IPs from X-Forwarded-For, and the refusals.

mod support;

use serde_json::Value;
use support::{header_u64, spawn_app, spawn_app_with_rules, unique_key, RedisServer, RulesFile};

use support::ORDER_RULES as RULES;

fn ask(app: &support::TestApp, method: &str, uri: &str) -> reqwest::RequestBuilder {
    app.client
        .get(app.url("/v1/forward-auth"))
        .header("X-Forwarded-Method", method)
        .header("X-Forwarded-Uri", uri)
}

#[tokio::test]
async fn forward_auth_limits_the_original_route_per_key() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let key = unique_key("gateway");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = ask(&app, "POST", &format!("/v1/orders/{i}?expand=1"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(header_u64(&r, "Retry-After") >= 1);
            assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 2);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["identifier"], key.as_str());
        } else {
            assert!(r.headers().get("RateLimit-Policy").is_some());
        }
    }
    assert_eq!(statuses, [200, 200, 429], "the glob route's limit");
    // Another route of the same key: only the catch-all applies.
    let r = ask(&app, "GET", "/v1/orders/1")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 100);
}

#[tokio::test]
async fn forward_auth_identifies_the_client_the_gateway_saw() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(&RULES.replace("limit = 2\n", "limit = 1\n"));
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let send = |client: &'static str| {
        ask(&app, "POST", "/v1/orders/1")
            .header("X-Forwarded-For", client)
            .send()
    };
    assert_eq!(send("203.0.113.7").await.unwrap().status(), 200);
    let denied = send("203.0.113.7").await.unwrap();
    assert_eq!(denied.status(), 429);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["identifier"], "203.0.113.7");
    assert_eq!(
        send("203.0.113.8").await.unwrap().status(),
        200,
        "another client"
    );
}

#[tokio::test]
async fn forward_auth_refuses_untrusted_peers_and_vague_requests() {
    let redis = RedisServer::start().await;
    let untrusted = spawn_app(&redis, &[]).await;
    let r = ask(&untrusted, "GET", "/x").send().await.unwrap();
    assert_eq!(
        r.status(),
        403,
        "no TRUSTED_PROXIES: nobody may describe a request"
    );
    let trusted = spawn_app(&redis, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let r = trusted
        .client
        .get(trusted.url("/v1/forward-auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no original URI");
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("X-Forwarded-Uri"));
    // nginx's header names (with ?gateway=nginx, and only then), any method.
    let r = trusted
        .client
        .post(trusted.url("/v1/forward-auth?gateway=nginx"))
        .header("X-Original-URI", "/anything")
        .header("X-API-Key", unique_key("nginx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 19);
}

/// `deny_status` turns a denial into 401 or 403 for gateways that pass only
/// those on (nginx's auth_request), with the same headers.
#[tokio::test]
async fn forward_auth_denies_with_the_status_a_gateway_passes_on() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(&RULES.replace("limit = 2\n", "limit = 1\n"));
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let key = unique_key("deny-status");
    let send = |query: &'static str| {
        app.client
            .get(app.url(&format!("/v1/forward-auth{query}")))
            .header("X-Forwarded-Method", "POST")
            .header("X-Forwarded-Uri", "/v1/orders/1")
            .header("X-API-Key", &key)
            .send()
    };
    assert_eq!(send("?deny_status=403").await.unwrap().status(), 200);
    let r = send("?deny_status=403").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(header_u64(&r, "Retry-After") >= 1);
    assert_eq!(send("?deny_status=401").await.unwrap().status(), 401);
    assert_eq!(send("").await.unwrap().status(), 429);
    assert_eq!(send("?deny_status=500").await.unwrap().status(), 400);
}

/// Rules select on the original host too (`host`, a glob allowed).
#[tokio::test]
async fn forward_auth_rules_select_on_the_original_host() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(
        r#"
[[policy]]
name = "partner-api"
algorithm = "gcra"
limit = 1
window = "1h"
host = "*.partner.example"

[[policy]]
name = "everything"
algorithm = "gcra"
limit = 100
window = "1h"
"#,
    );
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let key = unique_key("host");
    let send = |host: &'static str| {
        ask(&app, "GET", "/v1/things")
            .header("X-Forwarded-Host", host)
            .header("X-API-Key", &key)
            .send()
    };
    assert_eq!(
        send("api.partner.example:8443").await.unwrap().status(),
        200
    );
    assert_eq!(
        send("API.Partner.Example").await.unwrap().status(),
        429,
        "hosts match in any case"
    );
    assert_eq!(
        send("api.example.com").await.unwrap().status(),
        200,
        "another host"
    );
}
