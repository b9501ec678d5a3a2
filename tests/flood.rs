//! Floods within a fixed budget (issue 19, the memory-bound items): the real
//! binary, its resident memory (VmRSS) read before and after a flood of
//! what an anonymous caller may send, and the growth held to a bound far
//! below what the flood would cost if kept. The figures are printed
//! (`cargo test --test flood -- --nocapture`).

mod support;

use support::binary::{log_lines, serve, signal, wait_for_port};
use support::{RedisServer, TempDir};

/// The process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// One denied /json request of 256 descriptors, each a 1,000-byte made-up
/// value (~260 KB): before, the deny cache kept each whole (items 5, 6), and
/// top offenders each value whole (item 9).
fn denied_request(i: usize) -> String {
    let descriptors: Vec<String> = (0..256)
        .map(|d| {
            let value = format!("{i:08}-{d:04}-{}", "x".repeat(986));
            format!(r#"{{"entries":[{{"key":"k","value":"{value}"}}]}}"#)
        })
        .collect();
    format!(
        r#"{{"domain":"d","descriptors":[{}]}}"#,
        descriptors.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_denied_requests_stays_within_its_budget() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("flood");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    // Every value of k is denied at once (a limit of 0).
    std::fs::write(
        dir.path().join("config/d.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 0 }\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let mut child = serve(
        &dir,
        &redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("JSON_API", "open"),
        ],
    );
    let lines = log_lines(&mut child);
    let port = wait_for_port(&lines);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/json");
    // Warm up (allocator arenas, connections), then measure.
    for i in 0..10 {
        let r = client
            .post(&url)
            .body(denied_request(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
    }
    let before = rss(child.id());
    const FLOOD: usize = 400;
    let mut sent = 0u64;
    for i in 10..10 + FLOOD {
        let body = denied_request(i);
        sent += body.len() as u64;
        let r = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), 429);
    }
    let after = rss(child.id());
    let grown = after.saturating_sub(before);
    println!(
        "\n{FLOOD} denied requests, {} MB sent: resident memory {} -> {} MB (+{} MB)",
        sent / 1_000_000,
        before / 1_000_000,
        after / 1_000_000,
        grown / 1_000_000
    );
    // Kept whole, the flood alone would be > 100 MB (it was 300-500 MB).
    // Bounded: the deny cache's 16 MiB, top offenders' 4,000 cut subjects
    // per window, plus allocator slack.
    assert!(
        grown < 48 * 1024 * 1024,
        "resident memory grew by {grown} bytes"
    );
    signal(&child, "-TERM");
    let _ = child.wait();
}
