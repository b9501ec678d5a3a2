//! Budgets beyond request counts, end to end through the service: debit
//! policies (costs charged after the response) with reserve and settle
//! over envoyproxy/ratelimit's JSON API, and the rules that declare them.

mod support;

use serde_json::{json, Value};
use support::{spawn_app, unique_key, RedisServer, TempDir, TestApp};

/// An app with one Envoy domain `ai`: a debit budget of 100 tokens an hour
/// per user (GCRA: nothing rolls over at a window edge during a test).
async fn app(redis: &RedisServer, dir: &TempDir) -> TestApp {
    let config = dir.path().join("ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("ai.yaml"),
        "domain: ai\ndescriptors:\n  - key: user\n    rate_limit: { unit: hour, requests_per_unit: 100, algorithm: gcra, debit: true }\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    spawn_app(
        redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("JSON_API", "open"),
        ],
    )
    .await
}

/// One `/json` call for `user`: `hits` units (negative: a refund).
async fn call(app: &TestApp, user: &str, hits: i64) -> (String, u64) {
    let reply: Value = app
        .client
        .post(app.url("/json"))
        .json(&json!({
            "domain": "ai",
            "descriptors": [{
                "entries": [{"key": "user", "value": user}],
                "hits_addend": hits.unsigned_abs(),
                "is_negative_hits": hits < 0,
            }]
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        reply["overallCode"].as_str().unwrap().to_owned(),
        reply["statuses"][0]["limitRemaining"].as_u64().unwrap_or(0),
    )
}

fn ok(remaining: u64) -> (String, u64) {
    ("OK".to_owned(), remaining)
}

/// Reserve an estimate up front, settle the real amount after: the
/// difference is refunded, or the excess debited even past the limit, and
/// the next answer shows the true remainder.
#[tokio::test]
async fn reserve_then_settle_refunds_or_debits_the_difference() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("budgets-settle");
    let app = app(&redis, &dir).await;
    let user = unique_key("settle");
    // Reserve 50, use 30: 20 back.
    assert_eq!(call(&app, &user, 50).await, ok(50));
    assert_eq!(call(&app, &user, -20).await, ok(70));
    assert_eq!(call(&app, &user, 0).await, ok(70), "the true remainder");
    // Reserve 50, use 80: 30 more, past the remaining 20: charged, and the
    // answer says the budget is spent.
    assert_eq!(call(&app, &user, 50).await, ok(20));
    let settle = call(&app, &user, 30).await;
    assert_eq!(settle, ("OVER_LIMIT".to_owned(), 0));
    // The next request-phase question (hits 0) is refused.
    assert_eq!(call(&app, &user, 0).await.0, "OVER_LIMIT");
    // 110 of 100 were counted: 10 back leaves it spent, 11 leaves 1.
    call(&app, &user, -10).await;
    assert_eq!(call(&app, &user, 0).await.0, "OVER_LIMIT");
    call(&app, &user, -1).await;
    assert_eq!(call(&app, &user, 0).await, ok(1));
}

/// The same budget declared in a TOML rules file (`debit = true`) on the
/// HTTP API: a key's requests past the limit are refused, and the rules
/// file is read with the new key.
#[tokio::test]
async fn debit_is_a_policy_key_of_the_rules_file_and_of_the_yaml() {
    let rules = rate_limiter::limiter::Rules::parse(
        "rules.toml",
        "[[policy]]\nname = \"tokens\"\nalgorithm = \"gcra\"\nlimit = 100\nwindow = \"1h\"\nstrategy = \"user\"\ndebit = true\n",
    )
    .unwrap();
    let policy = rules.policies().next().unwrap();
    assert!(policy.debit());
    let plain = rate_limiter::limiter::Rules::parse(
        "rules.toml",
        "[[policy]]\nname = \"tokens\"\nalgorithm = \"gcra\"\nlimit = 100\nwindow = \"1h\"\nstrategy = \"user\"\n",
    )
    .unwrap();
    assert!(!plain.policies().next().unwrap().debit());
    let err = rate_limiter::limiter::Rules::parse(
        "rules.toml",
        "[[policy]]\nname = \"tokens\"\nalgorithm = \"gcra\"\nlimit = 100\nwindow = \"1h\"\nstrategy = \"user\"\ndebit = \"yes\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("debit"), "{err}");
    let yaml = rate_limiter::limiter::rules::erl::parse(
        &[(
            "config.ai.yaml".into(),
            "domain: ai\ndescriptors:\n  - key: user\n    rate_limit: { unit: hour, requests_per_unit: 5, debit: maybe }\n".into(),
        )],
        false,
    )
    .unwrap_err();
    assert!(yaml.to_string().contains("debit"), "{yaml}");
}
