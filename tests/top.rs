//! Who is being limited: `GET /admin/top`, the heavy hitters of every
//! instance summed through Redis.

mod support;

use serde_json::Value;
use support::{eventually, spawn_app, unique_key, RedisServer, TestApp};

const TOKEN: &str = "top-offenders-token-0123";

async fn top(app: &TestApp, query: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/admin/top?{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

fn hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
}

/// The count `report` gives `identifier`, if it lists it.
fn count_of(report: &Value, identifier: &str) -> Option<u64> {
    report["top"]
        .as_array()?
        .iter()
        .find(|e| e["identifier"] == identifier)
        .and_then(|e| e["count"].as_u64())
}

#[tokio::test]
async fn the_top_offenders_of_every_instance_are_summed() {
    let redis = RedisServer::start().await;
    let settings = [("ADMIN_TOKEN", TOKEN), ("RATE_LIMIT_USER_LIMIT", "2")];
    let a = spawn_app(&redis, &settings).await;
    let b = spawn_app(&redis, &settings).await;
    // An hour that ends mid-run starts the counts again: run again.
    for _attempt in 0..3 {
        let started = hour();
        let abuser = unique_key("abuser");
        let polite = unique_key("polite");
        // 2 allowed and 5 denied through a, 3 more denied through b.
        for _ in 0..7 {
            a.post_resource(Some(&abuser)).await;
        }
        for _ in 0..3 {
            assert_eq!(b.post_resource(Some(&abuser)).await.status(), 429);
        }
        b.post_resource(Some(&polite)).await;
        eventually("both instances' counts", || async {
            let denied: Value = top(&b, "by=denied&window=1h&n=5")
                .await
                .json()
                .await
                .unwrap();
            count_of(&denied, &abuser) == Some(8)
        })
        .await;
        let denied: Value = top(&b, "by=denied&window=1h&n=5")
            .await
            .json()
            .await
            .unwrap();
        if hour() != started {
            continue;
        }
        assert_eq!(denied["by"], "denied");
        assert_eq!(denied["window"], "1h");
        assert_eq!(denied["top"][0]["identifier"], abuser.as_str(), "{denied}");
        assert_eq!(denied["top"][0]["strategy"], "user");
        assert_eq!(denied["top"][0]["domain"], "http");
        assert_eq!(count_of(&denied, &polite), None, "never denied");
        let requests: Value = top(&a, "by=requests&window=1h").await.json().await.unwrap();
        assert_eq!(count_of(&requests, &abuser), Some(10), "{requests}");
        assert_eq!(count_of(&requests, &polite), Some(1));
        break;
    }
    // Bad parameters: 400; no token: 401.
    for query in ["n=0", "n=1001", "by=everything", "window=1d", "n=x"] {
        assert_eq!(top(&a, query).await.status(), 400, "{query}");
    }
    let r = a.client.get(a.url("/admin/top")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Nothing of it in the metrics.
    let metrics = a.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("abuser"));
}
