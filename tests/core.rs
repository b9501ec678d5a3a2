//! The limiter core on its own, as every front end uses it: check requests
//! (a domain and descriptors with hits) against a real Redis, a decision per
//! descriptor, peeks, and refunds that clear a cached denial.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rate_limiter::config::RedisSettings;
use rate_limiter::limiter::{
    CheckRequest, Decision, Descriptor, FailureMode, Limiter, LimiterError, Rules, Standing,
};
use rate_limiter::redis::RedisStore;
use rate_limiter::telemetry::Metrics;
use support::{unique_key, RedisServer};

const RULES: &str = r#"
[[policy]]
name = "per-key"
algorithm = "gcra"
limit = 2
window = "1h"
strategy = "user"

[[policy]]
name = "per-ip"
algorithm = "gcra"
limit = 100
window = "1h"
per = "client_ip"
"#;

async fn limiter(redis: &RedisServer) -> Limiter<RedisStore> {
    let store = redis.store().await;
    Limiter::new(
        store,
        Rules::parse("core.toml", RULES).expect("rules"),
        FailureMode::Closed,
        false,
        Arc::new(Metrics::new()),
    )
}

fn request(key: &str, ip: &str, hits: i64) -> CheckRequest {
    let mut user = Descriptor::new(vec![("user".into(), key.to_owned())]);
    user.hits = hits;
    CheckRequest {
        domain: "http".into(),
        descriptors: vec![
            Descriptor::new(vec![("client_ip".into(), ip.to_owned())]),
            user,
            // Matches no rule: reported as such, costs nothing.
            Descriptor::new(vec![("tenant".into(), "acme".to_owned())]),
        ],
    }
}

#[tokio::test]
async fn decisions_per_descriptor_peeks_and_refunds() {
    let redis = RedisServer::start().await;
    let limiter = limiter(&redis).await;
    let key = unique_key("core");
    for _ in 0..2 {
        let decision = limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap();
        assert!(matches!(decision, Decision::Allowed(_)), "{decision:?}");
    }
    let Decision::Denied(outcome) = limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap()
    else {
        panic!("the key's limit is spent")
    };
    let per = outcome.per_descriptor(3);
    assert_eq!(
        per[0].map(|(allowed, q)| (allowed, q.remaining)),
        Some((true, 98))
    );
    assert_eq!(
        per[1].map(|(allowed, q)| (allowed, q.remaining)),
        Some((false, 0))
    );
    assert_eq!(per[2], None, "a descriptor no rule matches");
    // Now cached: a second denial costs no Redis call.
    assert!(matches!(
        limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap(),
        Decision::Denied(_)
    ));
    assert_eq!(limiter.metrics().deny_cache_hits.get(), 1);

    // A peek (hits 0) reads without charging.
    let Standing::Limited(status) = limiter.status(&request(&key, "10.0.0.1", 1)).await.unwrap()
    else {
        panic!("limited")
    };
    let remaining: Vec<(&str, u32)> = status
        .quotas
        .iter()
        .map(|(p, q)| (p.name(), q.remaining))
        .collect();
    // In the rules' order: the key's policy first.
    assert_eq!(remaining, [("per-key", 0), ("per-ip", 98)]);

    // A refund reaches Redis (not the deny cache), gives one back, and
    // frees the cached denial.
    let refund = limiter.check(&request(&key, "10.0.0.1", -1)).await.unwrap();
    assert!(matches!(refund, Decision::Allowed(_)), "{refund:?}");
    let again = limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap();
    assert!(matches!(again, Decision::Allowed(_)), "{again:?}");
    // A refund never goes below an empty counter.
    limiter
        .check(&request(&key, "10.0.0.1", -50))
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap(),
            Decision::Allowed(_)
        ));
    }
    assert!(matches!(
        limiter.check(&request(&key, "10.0.0.1", 1)).await.unwrap(),
        Decision::Denied(_)
    ));
}

/// A policy's own failure mode: while Redis cannot answer, a request gets
/// the strictest mode among its policies (here `closed` on the per-IP
/// policy beats the service's `open`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strictest_failure_mode_of_a_requests_policies_applies() {
    let mut redis = RedisServer::start().await;
    let store = RedisStore::connect(&RedisSettings::single(
        redis.url(),
        Duration::from_millis(100),
    ))
    .await
    .expect("store");
    let rules = Rules::parse(
        "modes.toml",
        &RULES.replace(
            "per = \"client_ip\"\n",
            "per = \"client_ip\"\nfailure_mode = \"closed\"\n",
        ),
    )
    .expect("rules");
    let limiter = Limiter::new(
        store,
        rules,
        FailureMode::Open,
        false,
        Arc::new(Metrics::new()),
    );
    redis.kill();
    let key = unique_key("modes");
    let only_key = CheckRequest {
        domain: "http".into(),
        descriptors: vec![Descriptor::new(vec![("user".into(), key.clone())])],
    };
    assert!(
        matches!(
            limiter.check(&only_key).await,
            Ok(Decision::Degraded { .. })
        ),
        "the service's mode: open"
    );
    assert!(
        matches!(
            limiter.check(&request(&key, "10.0.0.1", 1)).await,
            Err(LimiterError::Unavailable(_))
        ),
        "the per-IP policy's mode: closed"
    );
}

/// Regression (issue 19, item 20): the rules file's reloader and the Envoy
/// configuration's each read the rules in force and wrote back their half,
/// so two reloads close together lost one change until its file changed
/// again. Through `update_rules` the two are one writer: however their
/// changes interleave, the last of each is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reloaders_at_once_lose_no_change() {
    use rate_limiter::limiter::rules::erl;
    let redis = RedisServer::start().await;
    let limiter = Arc::new(limiter(&redis).await);
    const ROUNDS: u32 = 300;
    let http = {
        let limiter = limiter.clone();
        std::thread::spawn(move || {
            for i in 1..=ROUNDS {
                let text = format!(
                    "[[policy]]\nname = \"p\"\nalgorithm = \"gcra\"\nlimit = {i}\nwindow = \"1h\"\n"
                );
                let rules = Rules::parse("reload.toml", &text).unwrap();
                limiter.update_rules(|current| rules.with_erl(current.erl().clone()));
            }
        })
    };
    let envoy = {
        let limiter = limiter.clone();
        std::thread::spawn(move || {
            for i in 1..=ROUNDS {
                let config = Arc::new(erl::Config {
                    files: vec![format!("config.{i}.yaml")],
                    ..Default::default()
                });
                limiter.update_rules(|current| Rules::clone(current).with_erl(config));
            }
        })
    };
    http.join().unwrap();
    envoy.join().unwrap();
    let rules = limiter.rules();
    assert_eq!(rules.policies().next().unwrap().limit().get(), ROUNDS);
    assert_eq!(rules.erl().files, [format!("config.{ROUNDS}.yaml")]);
}
