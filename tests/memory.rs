//! Redis memory per active identity, for each algorithm: INFO memory before
//! and after 10,000 identities each make one request. The figures are printed
//! (`cargo test --test memory -- --nocapture`) and quoted in the README; the
//! assertion only guards against a layout change that would multiply them.

mod support;

use std::time::Duration;

use futures::future::join_all;
use rate_limiter::config::RedisSettings;
use rate_limiter::limiter::Algorithm;
use rate_limiter::redis::{RedisStore, ScriptPolicy};
use support::RedisServer;

const IDENTITIES: usize = 10_000;

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

#[tokio::test]
async fn memory_per_identity_per_algorithm() {
    let redis = RedisServer::start().await;
    let store = RedisStore::connect(&RedisSettings::single(redis.url(), Duration::from_secs(10)))
        .await
        .unwrap();
    let mut conn = redis.connection().await.unwrap();
    println!("\nRedis memory per active identity ({IDENTITIES} identities, one policy, key rate:{{user:<20-char id>}}:60[:<algorithm>:<policy>]):");
    for algorithm in Algorithm::ALL {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let before = used_memory(&mut conn).await;
        for chunk in (0..IDENTITIES).collect::<Vec<_>>().chunks(200) {
            join_all(chunk.iter().map(|i| {
                let subject = ("user".into(), format!("customer-{i:011}"));
                let policy = rate_limiter::limiter::Policy::new(
                    "per-minute",
                    algorithm,
                    std::num::NonZeroU32::new(100).unwrap(),
                    Duration::from_secs(60),
                    1,
                )
                .unwrap();
                let store = &store;
                async move {
                    let p = ScriptPolicy {
                        key: rate_limiter::redis::counter_key(&subject, &policy),
                        algorithm: algorithm.as_str(),
                        limit: 100,
                        window_ms: 60_000,
                        cost: 1,
                        shadow: false,
                        debit: false,
                        lease: String::new(),
                    };
                    store.run_check(&[p], None).await.unwrap()
                }
            }))
            .await;
        }
        let after = used_memory(&mut conn).await;
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(keys, IDENTITIES as i64, "{algorithm}: one key per identity");
        let per_identity = (after - before) / IDENTITIES as i64;
        println!("  {:<15} {per_identity:>4} bytes", algorithm.as_str());
        assert!(
            per_identity < 300,
            "{algorithm}: {per_identity} bytes per identity"
        );
    }
}
