//! Redis Cluster: three masters created with `redis-cli --cluster create`.
//! Identities spread over every node, each limited exactly; several
//! policies of one identity in one script call (one slot, thanks to the hash
//! tag).

mod support;

use futures::future::join_all;
use serde_json::Value;
use support::{header_u64, spawn_app_on, unique_key, Cluster, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_spread_over_all_nodes_are_each_limited_exactly() {
    let cluster = Cluster::start().await;
    let nodes = cluster.nodes_setting();
    let app = spawn_app_on(&[
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("RATE_LIMIT_USER_LIMIT", "3"),
        ("RATE_LIMIT_USER_WINDOW", "1h"),
        ("RATE_LIMIT_ALGORITHM", "sliding_window"),
        // Exact counts: a slow moment on a loaded machine must not be
        // answered by the failure mode.
        ("REDIS_TIMEOUT_MS", "5000"),
    ])
    .await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["redis"]["topology"], "cluster");

    let keys: Vec<String> = (0..60).map(|i| unique_key(&format!("c{i}"))).collect();
    for key in &keys {
        let statuses: Vec<u16> = join_all((0..4).map(|_| app.post_resource(Some(key))))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            3,
            "{key}: {statuses:?}"
        );
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{key}");
    }
    // The counters are spread over the three masters.
    for node in &cluster.nodes {
        let mut conn = node.connection().await.unwrap();
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert!(n > 5, "node {} holds {n} of 60 counters", node.port);
    }

    // 1,000 concurrent requests for one key over two instances.
    let b = spawn_app_on(&[
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("RATE_LIMIT_USER_LIMIT", "3"),
        ("RATE_LIMIT_USER_WINDOW", "1h"),
        ("RATE_LIMIT_ALGORITHM", "sliding_window"),
        ("REDIS_TIMEOUT_MS", "5000"),
    ])
    .await;
    let key = unique_key("burst");
    let responses = join_all((0..1000).map(|i| {
        let app = if i % 2 == 0 { &app } else { &b };
        app.post_resource(Some(&key))
    }))
    .await;
    assert!(responses
        .iter()
        .all(|r| r.headers().get("X-RateLimit-Degraded").is_none()));
    assert_eq!(responses.iter().filter(|r| r.status() == 200).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_policies_of_one_identity_run_in_one_call_on_a_cluster() {
    let cluster = Cluster::start().await;
    let nodes = cluster.nodes_setting();
    let dir = TempDir::new("cluster-rules");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[policy]]
name = "second"
algorithm = "token_bucket"
limit = 2
window = "10s"

[[policy]]
name = "hour"
algorithm = "gcra"
limit = 100
window = "1h"

[[policy]]
name = "day"
# Not a fixed window: a day must not be able to end during the test.
algorithm = "token_bucket"
limit = 1000
window = "1d"
"#,
    )
    .unwrap();
    let app = spawn_app_on(&[
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("RATE_LIMIT_CONFIG", rules.to_str().unwrap()),
        ("REDIS_TIMEOUT_MS", "1000"),
    ])
    .await;
    let key = unique_key("multi");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);
    for _ in 0..3 {
        let r = app.post_resource(Some(&key)).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 2);
    }
    let status: Value = app.status(&key).await.json().await.unwrap();
    assert_eq!(
        status["policies"][1]["remaining"], 98,
        "denials charged no other policy"
    );
    assert_eq!(status["policies"][2]["remaining"], 998);

    // All three keys of the identity sit on one node, in one slot.
    let holders = cluster.holders(&format!("rate:{{user:{key}}}*")).await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].len(), 3);
}

/// Envoy requests on a Cluster: several descriptors (each its own slot), a
/// descriptor with several limits (one slot, one atomic call), and keys in
/// envoyproxy/ratelimit's format (no hash tag, a slot of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_descriptors_over_several_slots() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

    let cluster = Cluster::start().await;
    let nodes = cluster.nodes_setting();
    let dir = TempDir::new("cluster-erl");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/c.yaml"),
        "domain: c\ndescriptors:\n  - key: user\n    rate_limits:\n      - { unit: day, requests_per_unit: 3 }\n      - { unit: day, requests_per_unit: 5, algorithm: gcra }\n  - { key: ip, rate_limit: { unit: day, requests_per_unit: 100, algorithm: gcra } }\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    for format in ["native", "ratelimit"] {
        let app = spawn_app_on(&[
            ("REDIS_CLUSTER_NODES", nodes.as_str()),
            ("REDIS_TIMEOUT_MS", "5000"),
            ("RUNTIME_ROOT", &root),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("ENVOY_KEY_FORMAT", format),
        ])
        .await;
        let mut client =
            RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", app.grpc_port))
                .await
                .unwrap();
        let day = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400
        };
        // A day that ends mid-run resets the fixed window: run again.
        for _attempt in 0..3 {
            let started = day();
            let user = unique_key(format);
            let d = |k: &str, v: &str| RateLimitDescriptor {
                entries: vec![Entry {
                    key: k.into(),
                    value: v.into(),
                }],
                ..Default::default()
            };
            let mut remaining = Vec::new();
            for _ in 0..4 {
                let r = client
                    .should_rate_limit(RateLimitRequest {
                        domain: "c".into(),
                        descriptors: vec![d("ip", &format!("ip-{user}")), d("user", &user)],
                        hits_addend: 0,
                    })
                    .await
                    .expect("an answer, not a CROSSSLOT error")
                    .into_inner();
                remaining.push((r.overall_code, r.statuses[1].limit_remaining));
            }
            if day() != started {
                continue;
            }
            // 3 a day on the user (the fixed window, tighter than GCRA's 5),
            // then over.
            assert_eq!(remaining, [(1, 2), (1, 1), (1, 0), (2, 0)], "{format}");
            break;
        }
    }
}

/// A sliced policy on a Cluster: the slice script's two keys (the counter
/// and its epoch) share the subject's hash tag, so each take and give-back
/// is one call on the node holding the slot; concurrent requests over two
/// instances admit exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliced_policies_run_on_a_cluster() {
    let cluster = Cluster::start().await;
    let nodes = cluster.nodes_setting();
    let dir = TempDir::new("cluster-slices");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[policy]]\nname = \"hot\"\nalgorithm = \"gcra\"\nlimit = 50\nwindow = \"1h\"\nslices = true\n",
    )
    .unwrap();
    let settings = [
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("RATE_LIMIT_CONFIG", rules.to_str().unwrap()),
        ("REDIS_TIMEOUT_MS", "1000"),
    ];
    let a = spawn_app_on(&settings).await;
    let b = spawn_app_on(&settings).await;
    let key = unique_key("sliced");
    let asks = (0..120).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let key = key.clone();
        async move { app.post_resource(Some(&key)).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(asks).await;
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    assert!((44..=50).contains(&admitted), "{admitted} admitted");
    // What the instances held goes back within a second and a sweep.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let mut more = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        more += usize::from(app.post_resource(Some(&key)).await.status() == 200);
    }
    assert_eq!(
        admitted + more,
        50,
        "exactly the limit: {admitted} then {more}"
    );
    let holders = cluster.holders(&format!("rate:{{user:{key}}}*")).await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(
        holders[0].len(),
        2,
        "the counter and its epoch: {holders:?}"
    );
}
