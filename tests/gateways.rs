//! Real gateways in front of a tiny backend, asking the rate limiter through
//! forward-auth, each running the configuration shipped in `deploy/` with
//! its addresses pointed at the test's processes on free loopback ports:
//! nginx (`auth_request`) and Caddy (`forward_auth`).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use support::{free_port, header_u64, require, spawn_app_with_rules, unique_key, Process};
use support::{RedisServer, RulesFile, TempDir};

const RULES: &str = r#"
[[policy]]
name = "orders"
algorithm = "gcra"
limit = 2
window = "1h"
route = "POST /v1/orders/*"

[[policy]]
name = "everything"
algorithm = "gcra"
limit = 100
window = "1h"
"#;

/// A backend that answers 200 "backend" to anything, on a free port.
fn backend() -> (u16, actix_web::dev::ServerHandle) {
    let port = free_port();
    let server = HttpServer::new(|| App::new().default_service(web::to(|| async { "backend" })))
        .workers(1)
        .bind(("127.0.0.1", port))
        .expect("bind the backend")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

/// nginx with the shipped snippet, its three addresses pointed at the test's
/// processes.
fn nginx(dir: &TempDir, listen: u16, limiter: u16, backend: u16) -> Process {
    let snippet = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/rate-limiter.conf"),
    )
    .expect("the shipped snippet");
    let snippet = snippet
        .replace(
            "server 127.0.0.1:8000;",
            &format!("server 127.0.0.1:{limiter};"),
        )
        .replace(
            "server 127.0.0.1:9000;",
            &format!("server 127.0.0.1:{backend};"),
        )
        .replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{listen};"),
        );
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n{snippet}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(require("nginx"))
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Process::new(child)
}

async fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_limits_each_key_and_answers_429() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let (backend_port, backend) = backend();
    let dir = TempDir::new("nginx");
    let port = free_port();
    let _nginx = nginx(&dir, port, app.port, backend_port);
    wait_for(port).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let key = unique_key("nginx");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = client
            .post(url(&format!("/v1/orders/{i}")))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 200 {
            assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 2);
            assert_eq!(r.text().await.unwrap(), "backend");
        } else {
            let retry = header_u64(&r, "Retry-After");
            assert!(retry >= 1, "Retry-After {retry}");
            assert_eq!(header_u64(&r, "X-RateLimit-Remaining"), 0);
            assert!(r.headers().get("RateLimit-Policy").is_some());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["retry_after"], retry);
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the route's limit, through nginx"
    );
    // The route rule applies to its route only.
    let r = client
        .get(url("/v1/orders/1"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 100);
    // Another key has its own count.
    let r = client
        .post(url("/v1/orders/1"))
        .header("X-API-Key", unique_key("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without a key the client is the address nginx saw (127.0.0.1 here),
    // passed in X-Forwarded-For: its own count, limited like a key.
    let mut anonymous = Vec::new();
    for _ in 0..3 {
        let r = client.post(url("/v1/orders/9")).send().await.unwrap();
        anonymous.push(r.status().as_u16());
    }
    assert_eq!(anonymous, [200, 200, 429]);
    backend.stop(false).await;
}

/// Caddy with the shipped Caddyfile.
fn caddy(dir: &TempDir, listen: u16, limiter: u16, backend: u16) -> Process {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/caddy/Caddyfile"),
    )
    .expect("the shipped Caddyfile");
    let file = file
        .replace(
            "forward_auth 127.0.0.1:8000",
            &format!("forward_auth 127.0.0.1:{limiter}"),
        )
        .replace(
            "reverse_proxy 127.0.0.1:9000",
            &format!("reverse_proxy 127.0.0.1:{backend}"),
        )
        .replace(":8080 {", &format!("http://127.0.0.1:{listen} {{"));
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, file).unwrap();
    let child = Command::new(require("caddy"))
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        // Caddy keeps its state under the home and XDG directories.
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start caddy");
    Process::new(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_limits_each_key_and_passes_the_429_on() {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let (backend_port, backend) = backend();
    let dir = TempDir::new("caddy");
    let port = free_port();
    let _caddy = caddy(&dir, port, app.port, backend_port);
    wait_for(port).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let key = unique_key("caddy");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = client
            .post(url(&format!("/v1/orders/{i}")))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 200 {
            assert_eq!(r.text().await.unwrap(), "backend");
        } else {
            // The limiter's own answer, passed on as it is.
            let retry = header_u64(&r, "Retry-After");
            assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 2);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["retry_after"], retry);
            assert_eq!(body["identifier"], key.as_str());
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the route's limit, through Caddy"
    );
    let r = client
        .get(url("/v1/orders/1"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a route rule applies to its route only");
    // Without a key the client is the address Caddy saw, in X-Forwarded-For.
    let mut anonymous = Vec::new();
    for _ in 0..3 {
        let r = client.post(url("/v1/orders/9")).send().await.unwrap();
        if r.status() == 429 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["identifier"], "127.0.0.1");
            anonymous.push(429);
        } else {
            anonymous.push(r.status().as_u16());
        }
    }
    assert_eq!(anonymous, [200, 200, 429]);
    backend.stop(false).await;
}
