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

const CONCURRENCY_RULES: &str = "\
[[policy]]
name = \"in_flight\"
algorithm = \"concurrency\"
limit = 2
lease = \"30s\"
strategy = \"user\"

[[policy]]
name = \"per_hour\"
algorithm = \"gcra\"
limit = 1000
window = \"1h\"
strategy = \"user\"
";

async fn acquire(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/leases"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A concurrency policy over HTTP: two leases at most per caller; a third
/// is refused with Retry-After until one is released; renewals keep a lease
/// and fail once it is gone; `/api/resource` takes a slot while it runs
/// (refused while both are held, given back after) and charges the rate
/// policy as usual; the metrics say what is in flight.
#[tokio::test]
async fn http_leases_acquire_renew_release_and_resource_holds_a_slot() {
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(CONCURRENCY_RULES);
    let app = support::spawn_app_with_rules(&redis, &rules, &[]).await;
    let key = unique_key("leases");
    // /api/resource with slots free: served, and its slot given back.
    for _ in 0..3 {
        assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    }
    let first = acquire(&app, &key).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["ttl_ms"], 30_000);
    assert_eq!(first["remaining"], 1);
    let second: Value = acquire(&app, &key).await.json().await.unwrap();
    assert_eq!(second["remaining"], 0);
    let full = acquire(&app, &key).await;
    assert_eq!(full.status(), 429);
    let retry: u64 = full.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Both held: /api/resource is refused too.
    assert_eq!(app.post_resource(Some(&key)).await.status(), 429);
    // Another caller has its own slots.
    assert_eq!(acquire(&app, &unique_key("other")).await.status(), 201);
    // Renew the first; an unknown lease cannot be renewed.
    let id = first["lease"].as_str().unwrap().to_owned();
    let renew = app
        .client
        .put(app.url(&format!("/api/leases/{id}")))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 200);
    let unknown = app
        .client
        .put(app.url("/api/leases/not-a-lease"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    // Another caller cannot release it.
    let foreign = app
        .client
        .delete(app.url(&format!("/api/leases/{id}")))
        .header("X-API-Key", unique_key("thief"))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 204);
    assert_eq!(acquire(&app, &key).await.status(), 429, "still held");
    // Its holder releases it: a slot is free for /api/resource.
    let release = app
        .client
        .delete(app.url(&format!("/api/leases/{id}")))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(release.status(), 204);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    assert_eq!(
        app.post_resource(Some(&key)).await.status(),
        200,
        "given back"
    );
    // A bad id is a 400.
    let bad = app
        .client
        .delete(app.url(&format!("/api/leases/{}", "x".repeat(200))))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metric(
            &metrics,
            "ratelimit_concurrency_limit{policy=\"in_flight\"}"
        ) == 2.0
    );
    // Held now: the second explicit lease and the other caller's.
    assert_eq!(
        metric(
            &metrics,
            "ratelimit_concurrency_in_flight{policy=\"in_flight\"}"
        ),
        2.0,
        "{metrics}"
    );
    // The dashboard's numbers say the same (counts only).
    let stats: Value = app.get("/dashboard/stats").await.json().await.unwrap();
    let row = &stats["concurrency"][0];
    assert_eq!(
        (
            &row["policy"],
            &row["in_flight"],
            &row["limit"],
            &row["expired"]
        ),
        (&json!("in_flight"), &json!(2), &json!(2), &json!(0))
    );
}

/// A client that took a lease and was killed (SIGKILL) before releasing
/// it: its slot comes back within the lease's time-to-live, and the leak
/// counter counts it.
#[tokio::test]
async fn a_killed_holder_frees_its_slot_within_the_ttl_and_is_counted() {
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(
        "[[policy]]\nname = \"jobs\"\nalgorithm = \"concurrency\"\nlimit = 1\nlease = \"1s\"\nstrategy = \"user\"\n",
    );
    let app = support::spawn_app_with_rules(&redis, &rules, &[]).await;
    let key = unique_key("killed");
    // The client: takes a lease, says so, then works (and would release).
    let script = format!(
        "import sys, time, urllib.request\n\
         r = urllib.request.Request('{}', method='POST', headers={{'X-API-Key': '{key}'}})\n\
         print(urllib.request.urlopen(r, timeout=10).status, flush=True)\n\
         time.sleep(60)\n",
        app.url("/api/leases")
    );
    // Blocking reads off the runtime: the app answers on this runtime.
    let (status, mut client) = tokio::task::spawn_blocking(move || {
        let mut client = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(client.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        (line.trim().to_owned(), client)
    })
    .await
    .unwrap();
    assert_eq!(status, "201");
    client.kill().unwrap(); // SIGKILL
    client.wait().unwrap();
    let killed_at = std::time::Instant::now();
    assert_eq!(
        acquire(&app, &key).await.status(),
        429,
        "the dead client's slot"
    );
    let mut freed = None;
    while killed_at.elapsed() < std::time::Duration::from_secs(5) {
        let r = acquire(&app, &key).await;
        if r.status() == 201 {
            freed = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let freed = freed.expect("the slot came back");
    assert!(
        freed <= std::time::Duration::from_millis(1_500),
        "{freed:?}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "ratelimit_concurrency_leases_expired_total{policy=\"jobs\"}"
        ),
        1.0,
        "{metrics}"
    );
}

/// Without a concurrency policy the lease endpoints answer at once and ask
/// Redis nothing: a flood of them costs Redis no work.
#[tokio::test]
async fn lease_endpoints_without_a_concurrency_policy_never_ask_redis() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let key = unique_key("no-leases");
    // The check script's calls, as the dashboard counts them.
    let calls = || async {
        let stats: Value = app.get("/dashboard/stats").await.json().await.unwrap();
        stats["redis"]["script_calls"].as_u64().unwrap()
    };
    let before = calls().await;
    let created = acquire(&app, &key).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert!(body["ttl_ms"].is_null());
    let id = body["lease"].as_str().unwrap().to_owned();
    let url = app.url(&format!("/api/leases/{id}"));
    assert_eq!(
        app.client
            .put(&url)
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .delete(&url)
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(calls().await, before);
}

/// An acquire is a request of the caller's: its rate policies charge it,
/// and refuse it once spent, even with slots free (a flood of acquires
/// cannot make Redis write lease sets past the caller's rate).
#[tokio::test]
async fn an_acquire_is_charged_to_the_callers_rate_policies() {
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(
        "[[policy]]\nname = \"slots\"\nalgorithm = \"concurrency\"\nlimit = 5\nlease = \"30s\"\nstrategy = \"user\"\n\n[[policy]]\nname = \"per_hour\"\nalgorithm = \"gcra\"\nlimit = 2\nwindow = \"1h\"\nstrategy = \"user\"\n",
    );
    let app = support::spawn_app_with_rules(&redis, &rules, &[]).await;
    let key = unique_key("charged");
    for _ in 0..2 {
        let r = acquire(&app, &key).await;
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().await.unwrap()["lease"]
            .as_str()
            .unwrap()
            .to_owned();
        let gone = app
            .client
            .delete(app.url(&format!("/api/leases/{id}")))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 204);
    }
    let refused = acquire(&app, &key).await;
    assert_eq!(refused.status(), 429, "slots are free, the rate is spent");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "Rate limit exceeded");
    let mut conn = redis.connection().await.unwrap();
    let sets = redis.keys(&format!("*{key}*slots*")).await;
    let held: i64 = if let Some(set) = sets.first() {
        redis::cmd("ZCARD")
            .arg(set)
            .query_async(&mut conn)
            .await
            .unwrap()
    } else {
        0
    };
    assert_eq!(held, 0, "the refused acquire holds nothing");
}
