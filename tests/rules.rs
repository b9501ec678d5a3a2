//! The rules file: one fixture per validation error, policies and overrides
//! over HTTP, the IETF headers (parsed as Structured Fields), hot reload.

mod support;

use std::path::{Path, PathBuf};

use rate_limiter::limiter::Rules;
use serde_json::Value;
use sfv::{BareItem, List, ListEntry, Parser};
use support::{
    eventually, header_u64, spawn_app_with_rules, unique_key, RedisServer, RulesFile, TestApp,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rules")
        .join(name)
}

#[test]
fn each_invalid_file_is_refused_naming_the_file_the_place_and_the_key() {
    let cases = [
        (
            "unknown_top_key.toml",
            "key 'ratelimit': unknown field `ratelimit`, expected `policy` or `override`",
        ),
        (
            "unknown_policy_key.toml",
            "policy \"per-minute\": key 'limt': unknown field `limt`, expected one of",
        ),
        (
            "zero_limit.toml",
            "policy \"per-minute\": key 'limit': must be at least 1, not 0",
        ),
        (
            "negative_limit.toml",
            "policy \"per-minute\": key 'limit': must be at least 1, not -3",
        ),
        (
            "unknown_algorithm.toml",
            "policy \"per-minute\": key 'algorithm': expected one of fixed_window",
        ),
        (
            "bad_duration.toml",
            "policy \"per-minute\": key 'window': expected seconds",
        ),
        (
            "duplicate_name.toml",
            "policy \"burst\": key 'name': duplicate name, already used by policy #1",
        ),
        (
            "missing_window.toml",
            "policy \"per-minute\": missing key 'window'",
        ),
        (
            "cost_above_limit.toml",
            "policy \"expensive\": key 'cost': cost 11 is above the limit 10",
        ),
        (
            "bad_strategy.toml",
            "policy \"per-minute\": key 'strategy': expected \"user\", \"jwt\" or \"ip\"",
        ),
        (
            "bad_route.toml",
            "policy \"per-minute\": key 'route': the path \"api/resource\" must start with '/'",
        ),
        ("no_policy.toml", "no [[policy]] table"),
        (
            "wrong_type.toml",
            "policy \"per-minute\": key 'limit': invalid type: string \"ten\", expected i64",
        ),
        (
            "float_window.toml",
            "policy \"per-minute\": key 'window': a duration such as",
        ),
        (
            "override_unknown_policy.toml",
            "override #1 (user \"partner\"): key 'policy': no policy named \"per-hour\"",
        ),
        (
            "override_two_actions.toml",
            "override #1 (user \"partner\"): key 'limit': choose one of",
        ),
        (
            "override_bad_ip.toml",
            "override #1 (ip \"not-an-address\"): key 'id': must be an IP address",
        ),
        ("not_toml.toml", "not valid TOML"),
        (
            "limit_too_large.toml",
            "policy \"huge\": key 'limit': limit × window in ms must stay below 2^53",
        ),
    ];
    let listed = std::fs::read_dir(fixture("")).unwrap().count();
    assert_eq!(listed, cases.len(), "one case per fixture file");
    for (file, expected) in cases {
        let path = fixture(file);
        let err = Rules::load(&path).expect_err(file).to_string();
        assert!(
            err.starts_with(&format!("{}: ", path.display())),
            "{file}: names the file: {err}"
        );
        assert!(
            err.contains(expected),
            "{file}:\n  got      {err}\n  expected {expected}"
        );
        assert!(!err.contains('\n'), "{file}: one line: {err}");
    }
}

#[test]
fn the_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.example.toml");
    let rules = Rules::load(&path).expect("rules.example.toml loads");
    assert!(rules.policies().count() >= 3);
}

const RULES: &str = r#"
[[policy]]
name = "per-second"
algorithm = "token_bucket"
limit = 3
window = "1s"
strategy = "user"

[[policy]]
name = "per-hour"
# Not a fixed window: an hour must not be able to end during the test.
algorithm = "gcra"
limit = 50
window = "1h"

[[policy]]
name = "ip-gcra"
algorithm = "gcra"
limit = 2
window = "1m"
strategy = "ip"

[[override]]
strategy = "user"
id = "vip"
limit = 1000
policy = "per-second"

[[override]]
strategy = "user"
id = "internal"
unlimited = true

[[override]]
strategy = "user"
id = "abuser"
blocked = true
"#;

async fn app_with_rules(redis: &RedisServer, rules: &str) -> (TestApp, RulesFile) {
    let file = RulesFile::new(rules);
    (spawn_app_with_rules(redis, &file, &[]).await, file)
}

fn parse_list(response: &reqwest::Response, name: &str) -> List {
    let raw = response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap();
    Parser::new(raw)
        .parse::<List>()
        .unwrap_or_else(|e| panic!("{name}: {raw:?} is not a Structured Field list: {e}"))
}

/// (name, [(param, integer)]) for each item of an sf-list.
fn items(list: &List) -> Vec<(String, Vec<(String, i64)>)> {
    list.iter()
        .map(|entry| match entry {
            ListEntry::Item(item) => {
                let name = match &item.bare_item {
                    BareItem::String(s) => s.as_str().to_owned(),
                    other => panic!("policy names are sf-strings, not {other:?}"),
                };
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| match v {
                        BareItem::Integer(i) => (k.as_str().to_owned(), i64::from(*i)),
                        other => panic!("{k} is not an integer: {other:?}"),
                    })
                    .collect();
                (name, params)
            }
            ListEntry::InnerList(_) => panic!("no inner lists expected"),
        })
        .collect()
}

#[tokio::test]
async fn several_policies_are_checked_and_reported_together() {
    let redis = RedisServer::start().await;
    let (app, _rules) = app_with_rules(&redis, RULES).await;
    let key = unique_key("multi");

    let first = app.post_resource(Some(&key)).await;
    assert_eq!(first.status(), 200);
    // per-second (3) is the closer to exhaustion: 2 of 3 left vs 49 of 50.
    assert_eq!(header_u64(&first, "X-RateLimit-Limit"), 3);
    assert_eq!(header_u64(&first, "X-RateLimit-Remaining"), 2);
    let policies = items(&parse_list(&first, "RateLimit-Policy"));
    assert_eq!(
        policies,
        vec![
            ("per-second".into(), vec![("q".into(), 3), ("w".into(), 1)]),
            (
                "per-hour".into(),
                vec![("q".into(), 50), ("w".into(), 3600)]
            ),
        ]
    );
    let state = items(&parse_list(&first, "RateLimit"));
    assert_eq!(state[0].0, "per-second");
    assert_eq!(state[0].1[0], ("r".into(), 2));
    assert_eq!(state[1].0, "per-hour");
    assert_eq!(state[1].1[0], ("r".into(), 49));
    let t = state[1].1[1].1;
    assert!(t > 0 && t <= 3600, "t = {t}");

    // Exhaust the per-second bucket: the 429 names it and charges nothing.
    let mut denied = None;
    for _ in 0..5 {
        let r = app.post_resource(Some(&key)).await;
        if r.status() == 429 {
            denied = Some(r);
            break;
        }
    }
    let denied = denied.expect("the bucket runs dry");
    assert_eq!(header_u64(&denied, "X-RateLimit-Limit"), 3);
    assert_eq!(header_u64(&denied, "X-RateLimit-Remaining"), 0);
    let state = items(&parse_list(&denied, "RateLimit"));
    assert_eq!(state[0].1[0], ("r".into(), 0));
    assert_eq!(
        state[0].1[1],
        ("t".into(), header_u64(&denied, "Retry-After") as i64)
    );
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["limit"], 3);

    let status: Value = app.status(&key).await.json().await.unwrap();
    let hour = &status["policies"][1];
    assert_eq!(hour["name"], "per-hour");
    // 3 allowed (at most; the bucket refills a token every 333 ms), and the
    // denied request did not touch the hour.
    let hour_remaining = hour["remaining"].as_u64().unwrap();
    assert!((46..=47).contains(&hour_remaining), "{hour_remaining}");
}

/// `t` is draft-ietf-httpapi-ratelimit-headers-11's effective window: the
/// seconds within which the caller can use no more than `r`. For a bucket
/// that is until the next unit refills (one every 360 s here), not until it
/// is full again (about 1,080 s after three requests): within 1,080 s the
/// caller could use three more.
#[tokio::test]
async fn t_is_the_effective_window_of_each_algorithm() {
    let redis = RedisServer::start().await;
    let mut rules = String::new();
    for algorithm in ["fixed_window", "sliding_window", "token_bucket", "gcra"] {
        rules.push_str(&format!(
            "[[policy]]\nname = \"{algorithm}\"\nalgorithm = \"{algorithm}\"\nlimit = 10\nwindow = \"1h\"\n\n"
        ));
    }
    let (app, _rules) = app_with_rules(&redis, &rules).await;
    let key = unique_key("effective-window");
    let mut last = None;
    for _ in 0..3 {
        let response = app.post_resource(Some(&key)).await;
        assert_eq!(response.status(), 200);
        last = Some(response);
    }
    let state = items(&parse_list(&last.unwrap(), "RateLimit"));
    let t = |name: &str| {
        let (_, params) = state.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(params[0], ("r".into(), 7), "{name}");
        assert_eq!(params[1].0, "t");
        params[1].1 as u64
    };
    // Fixed window: until the hour ends (on the service's clock; either
    // side of an hour's end the two agree within a couple of seconds).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_hour_end = 3600 - now % 3600;
    let fixed = t("fixed_window");
    assert!(
        fixed.abs_diff(to_hour_end) <= 2 || fixed.abs_diff(to_hour_end + 3600) <= 2,
        "fixed window t = {fixed}, {to_hour_end} s to the hour's end"
    );
    for bucket in ["token_bucket", "gcra"] {
        let t = t(bucket);
        assert!((350..=360).contains(&t), "{bucket}: t = {t}");
    }
    // Sliding window: the mean time per unit until the estimate is empty
    // (three units counted in this window: at most the window's length).
    let sliding = t("sliding_window");
    assert!(
        (1..=3600).contains(&sliding),
        "sliding window t = {sliding}"
    );
}

#[tokio::test]
async fn overrides_raise_a_limit_bypass_or_block() {
    let redis = RedisServer::start().await;
    let (app, _rules) = app_with_rules(&redis, RULES).await;

    for _ in 0..10 {
        assert_eq!(app.post_resource(Some("vip")).await.status(), 200);
    }
    let status: Value = app.status("vip").await.json().await.unwrap();
    assert_eq!(status["policies"][0]["limit"], 1000);
    assert_eq!(
        status["policies"][1]["limit"], 50,
        "only per-second was raised"
    );

    for _ in 0..10 {
        let r = app.post_resource(Some("internal")).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("X-RateLimit-Limit").is_none(),
            "not limited at all"
        );
    }
    let status: Value = app.status("internal").await.json().await.unwrap();
    assert_eq!(status["status"], "unlimited");

    let r = app.post_resource(Some("abuser")).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Forbidden");
    let status: Value = app.status("abuser").await.json().await.unwrap();
    assert_eq!(status["status"], "blocked");

    // Neither touched Redis.
    let keys = redis.keys("rate:{user:internal}*").await;
    assert!(keys.is_empty());
    let keys = redis.keys("rate:{user:abuser}*").await;
    assert!(keys.is_empty());

    // Callers without a key get the ip policy alone.
    assert_eq!(app.post_resource(None).await.status(), 200);
    assert_eq!(app.post_resource(None).await.status(), 200);
    let r = app.post_resource(None).await;
    assert_eq!(r.status(), 429);
    let policies = items(&parse_list(&r, "RateLimit-Policy"));
    assert_eq!(
        policies.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["per-hour", "ip-gcra"]
    );
}

#[tokio::test]
async fn a_bad_rules_file_stops_the_start() {
    let redis = RedisServer::start().await;
    let settings = support::settings(
        &redis.url(),
        &[(
            "RATE_LIMIT_CONFIG",
            fixture("zero_limit.toml").to_str().unwrap(),
        )],
    );
    let err = rate_limiter::startup::Application::build(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("RATE_LIMIT_CONFIG"), "{err}");
    assert!(
        err.contains("zero_limit.toml: policy \"per-minute\": key 'limit'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_applies_to_the_next_request_and_a_broken_one_is_refused() {
    let redis = RedisServer::start().await;
    let (app, file) = app_with_rules(&redis, RULES).await;
    let key = unique_key("reload");

    // Traffic runs through every reload below; none of it may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (client, url, stop) = (app.client.clone(), app.url("/api/resource"), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .header("X-API-Key", "background")
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        })
    };

    let limit_of = |app: &TestApp, key: String| {
        let status = app.status_json(key);
        async move { status.await["policies"][0]["limit"].as_u64() }
    };
    assert_eq!(limit_of(&app, key.clone()).await, Some(3));

    file.write(&RULES.replace("limit = 3\n", "limit = 7\n"));
    eventually("the new limit applies", || {
        let f = limit_of(&app, key.clone());
        async move { f.await == Some(7) }
    })
    .await;

    // A broken file: refused, the rules in force stay. Waiting for the
    // refusal to be counted proves the file was read (a plain sleep would
    // pass even if nothing were ever re-read).
    file.write(&RULES.replace("limit = 3\n", "limit = 0\n"));
    eventually("the broken file is read and refused", || async {
        app.get("/metrics")
            .await
            .text()
            .await
            .unwrap()
            .contains("ratelimit_rules_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert_eq!(limit_of(&app, key.clone()).await, Some(7));

    // Fixed again: applies.
    file.write(&RULES.replace("limit = 3\n", "limit = 9\n"));
    eventually("the fixed file applies", || {
        let f = limit_of(&app, key.clone());
        async move { f.await == Some(9) }
    })
    .await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(statuses.len() > 10, "traffic ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "no request failed during reloads: {statuses:?}"
    );
}
