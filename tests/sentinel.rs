//! Redis Sentinel: a master, a replica and three sentinels, real processes.
//! Under continuous traffic the master is killed; the service must follow the
//! promotion by itself, never answer 5xx in `open` mode, and be exact again
//! afterwards. The figures are printed (`scripts/failover_test.sh` runs this
//! with --nocapture).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use support::{spawn_app_on, unique_key, SentinelGroup, TestApp};

/// One request of the background traffic.
struct Sample {
    at: Instant,
    status: u16,
    degraded: bool,
}

fn traffic(app: &TestApp, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Sample>> {
    let (client, url) = (app.client.clone(), app.url("/api/resource"));
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let r = client
                .post(&url)
                .header("X-API-Key", format!("traffic-{n}"))
                .send()
                .await
                .expect("the service always answers");
            samples.push(Sample {
                at: Instant::now(),
                status: r.status().as_u16(),
                degraded: r.headers().get("X-RateLimit-Degraded").is_some(),
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_traffic_is_followed_and_limits_are_exact_again() {
    let mut group = SentinelGroup::start().await;
    let old_master = group.master.port;
    assert_eq!(group.master_port().await, Some(old_master));
    let sentinels = group.sentinels_setting();
    let overrides = [
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", "mymaster"),
        ("RATE_LIMIT_FAILURE_MODE", "open"),
        ("RATE_LIMIT_USER_LIMIT", "137"),
        ("RATE_LIMIT_USER_WINDOW", "1d"),
        ("REDIS_TIMEOUT_MS", "200"),
    ];
    let a = spawn_app_on(&overrides).await;
    let b = spawn_app_on(&overrides).await;
    let health: serde_json::Value = a.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis"]["topology"], "sentinel");
    assert_eq!(health["status"], "healthy");

    let stop = Arc::new(AtomicBool::new(false));
    let loads = [traffic(&a, stop.clone()), traffic(&b, stop.clone())];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    group.master.kill();
    let promoted = loop {
        if let Some(port) = group.master_port().await {
            if port != old_master {
                assert_eq!(port, group.replica.port);
                break Instant::now();
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no promotion within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Keep the traffic going until both instances are limiting through the
    // new master again, and a little beyond.
    let deadline = promoted + Duration::from_secs(15);
    loop {
        let ra = a.post_resource(Some(&unique_key("probe"))).await;
        let rb = b.post_resource(Some(&unique_key("probe"))).await;
        let exact = |r: &reqwest::Response| {
            r.status() == 200 && r.headers().get("X-RateLimit-Degraded").is_none()
        };
        if exact(&ra) && exact(&rb) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not following the new master 15 s after promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = join_all(loads)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();

    let server_errors = samples.iter().filter(|s| s.status >= 500).count();
    assert_eq!(server_errors, 0, "open mode: no 5xx at any point");
    let degraded: Vec<&Sample> = samples.iter().filter(|s| s.degraded).collect();
    let last_degraded = degraded.iter().map(|s| s.at).max();
    let first_exact_after = samples
        .iter()
        .filter(|s| s.at > promoted && !s.degraded && s.status == 200)
        .map(|s| s.at)
        .min()
        .expect("exact answers after the promotion");
    let ms = |d: Duration| d.as_millis();
    eprintln!("\nSentinel failover (down-after-milliseconds 1000, REDIS_TIMEOUT_MS 200, failure mode open):");
    eprintln!("  requests during the run        {}", samples.len());
    eprintln!("  5xx                            {server_errors}");
    eprintln!("  degraded (served without Redis) {}", degraded.len());
    eprintln!(
        "  master killed -> promotion     {} ms",
        ms(promoted - killed)
    );
    eprintln!(
        "  degraded window                {} ms",
        last_degraded.map_or(0, |l| ms(l.saturating_duration_since(killed)))
    );
    eprintln!(
        "  promotion -> exact again       {} ms",
        ms(first_exact_after.saturating_duration_since(promoted))
    );

    // Exact again: 1,000 concurrent requests for one key over both instances.
    let key = unique_key("after-failover");
    let responses = join_all((0..1000).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post_resource(Some(&key))
    }))
    .await;
    let allowed = responses.iter().filter(|r| r.status() == 200).count();
    let denied = responses.iter().filter(|r| r.status() == 429).count();
    assert!(responses
        .iter()
        .all(|r| r.headers().get("X-RateLimit-Degraded").is_none()));
    eprintln!("  after failover, 1000 concurrent: {allowed} allowed (limit 137), {denied} denied");
    assert_eq!((allowed, denied), (137, 863));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_is_left_for_the_new_one() {
    // A manual failover: the old master stays up but becomes a replica and
    // answers writes with READONLY. The service must move on.
    let group = SentinelGroup::start().await;
    let sentinels = group.sentinels_setting();
    let app = spawn_app_on(&[
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("RATE_LIMIT_FAILURE_MODE", "closed"),
    ])
    .await;
    let key = unique_key("demoted");
    assert_eq!(app.post_resource(Some(&key)).await.status(), 200);

    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}", group.sentinel_ports[0])).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    while group.master_port().await != Some(group.replica.port) {
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Requests may fail (closed mode: 503) for a moment, then succeed against
    // the new master; never a READONLY turned into a wrong answer.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.post_resource(Some(&key)).await;
        assert!(
            r.status() == 200 || r.status() == 503,
            "status {}",
            r.status()
        );
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached the new master");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = group.replica.keys(&format!("rate:{{user:{key}}}*")).await;
    assert_eq!(keys.len(), 1, "the counter lives on the new master");
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
}
