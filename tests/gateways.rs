//! Real gateways in front of a tiny backend, asking the rate limiter through
//! forward-auth, each running the configuration shipped in `deploy/` with
//! its addresses pointed at the test's processes on free loopback ports:
//! nginx (`auth_request`) and Caddy (`forward_auth`).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{backend, free_port, header_u64, require, spawn_app_with_rules, unique_key, Process};
use support::{RedisServer, RulesFile, TempDir};

use support::ORDER_RULES as RULES;

/// nginx with the shipped snippet, its three addresses pointed at the test's
/// processes. One process (`master_process off`): killing it leaves no
/// worker behind.
fn nginx(dir: &TempDir, listen: u16, limiter: u16, backend: u16) -> Process {
    nginx_with(dir, listen, limiter, backend, |snippet| snippet)
}

/// The same, the snippet changed by `edit` first.
fn nginx_with(
    dir: &TempDir,
    listen: u16,
    limiter: u16,
    backend: u16,
    edit: impl FnOnce(String) -> String,
) -> Process {
    let snippet = edit(
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/rate-limiter.conf"),
        )
        .expect("the shipped snippet"),
    );
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
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
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

/// What every gateway must show, through the gateway listening on `port`:
/// each key gets the route's limit, then 429 with `Retry-After` and the
/// JSON body; the route rule applies to its route only; without a key the
/// client is the address the gateway saw. `copies_headers` says whether an
/// allowed response carries the rate-limit headers (nginx's snippet adds
/// them; Caddy hands them to the backend).
async fn a_gateway_limits_each_key_and_answers_429(port: u16, copies_headers: bool) {
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let key = unique_key("gateway");
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
            if copies_headers {
                assert_eq!(header_u64(&r, "X-RateLimit-Limit"), 2);
            }
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
        "the route's limit, through the gateway"
    );
    // The route rule applies to its route only; another key counts apart.
    let r = client
        .get(url("/v1/orders/1"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(url("/v1/orders/1"))
        .header("X-API-Key", unique_key("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without a key the client is the address the gateway saw (127.0.0.1
    // here), passed in X-Forwarded-For: its own count.
    let mut anonymous = Vec::new();
    for _ in 0..3 {
        let r = client.post(url("/v1/orders/9")).send().await.unwrap();
        anonymous.push(r.status().as_u16());
    }
    assert_eq!(anonymous, [200, 200, 429]);
}

/// One raw HTTP/1.1 request (the path sent byte for byte, as no URL parser
/// would leave it), and the response's status.
async fn raw_status(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Regression (issue 19, items 2 and 3): with its `POST /v1/orders/*` quota
/// spent, a client got through by sending its own forwarding headers (the
/// limiter preferred the client's X-Forwarded-Uri to nginx's X-Original-URI)
/// or another spelling of the path. Through the shipped file, nothing
/// reaches the backend: the route is the one the gateway saw, in its normal
/// form.
async fn a_client_cannot_choose_the_route_the_limiter_sees(port: u16) {
    let key = unique_key("spoofer");
    let key_header = [("X-API-Key", key.as_str())];
    for _ in 0..2 {
        assert_eq!(
            raw_status(port, "POST", "/v1/orders/1", &key_header).await,
            200
        );
    }
    assert_eq!(
        raw_status(port, "POST", "/v1/orders/1", &key_header).await,
        429
    );
    let forged: &[(&str, &str)] = &[
        ("X-API-Key", &key),
        ("X-Forwarded-Uri", "/elsewhere"),
        ("X-Forwarded-Method", "GET"),
        ("X-Original-URI", "/elsewhere"),
        ("X-Original-Method", "GET"),
        ("X-Forwarded-Host", "other.example"),
        ("Forwarded", "for=198.51.100.7;host=other.example"),
    ];
    assert_eq!(
        raw_status(port, "POST", "/v1/orders/1", forged).await,
        429,
        "forged headers"
    );
    for spelling in [
        "/v1/%6Frders/1",
        "/v1/%6frders/1",
        "//v1/orders/1",
        "/v1//orders/1",
        "/v1/./orders/1",
        "/v1/x/../orders/1",
        "/v1/%2e/orders/1",
        "/v1/orders/%31",
    ] {
        let status = raw_status(port, "POST", spelling, &key_header).await;
        assert_eq!(status, 429, "{spelling} reached the backend or was mangled");
    }
}

/// Starts the limiter and a backend, then `gateway` in front of them on a
/// free port, and checks it.
async fn check_gateway(
    tag: &str,
    gateway: fn(&TempDir, u16, u16, u16) -> Process,
    copies_headers: bool,
) {
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(RULES);
    let app = spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let (backend_port, backend) = backend();
    let dir = TempDir::new(tag);
    let port = free_port();
    let _gateway = gateway(&dir, port, app.port, backend_port);
    wait_for(port).await;
    a_gateway_limits_each_key_and_answers_429(port, copies_headers).await;
    a_client_cannot_choose_the_route_the_limiter_sees(port).await;
    backend.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_limits_each_key_and_answers_429() {
    check_gateway("nginx", nginx, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_limits_each_key_and_passes_the_429_on() {
    check_gateway("caddy", caddy, false).await;
}

/// nginx asking forward-auth over HTTPS with a client certificate, as the
/// shipped snippet's `#tls` lines say: the limiter serves PORT over TLS with
/// TLS_CLIENT_CA_FILE, and limits apply as over plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_asks_forward_auth_over_mutual_tls() {
    let pki = support::certs::Pki::new("nginx-tls");
    let server = pki.issue("limiter", &["localhost"]);
    let client = pki.issue("nginx", &["nginx.internal"]);
    let redis = RedisServer::start().await;
    let rules = RulesFile::new(RULES);
    let app = spawn_app_with_rules(
        &redis,
        &rules,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("TLS_CERT_FILE", server.cert_str()),
            ("TLS_KEY_FILE", server.key_str()),
            ("TLS_CLIENT_CA_FILE", pki.ca_str()),
        ],
    )
    .await;
    let (backend_port, backend) = backend();
    let dir = TempDir::new("nginx-tls");
    let port = free_port();
    let _nginx = nginx_with(&dir, port, app.port, backend_port, |snippet| {
        let plain = "        proxy_pass http://rate_limiter/v1/forward-auth?deny_status=403&gateway=nginx;\n";
        assert!(snippet.contains(plain));
        snippet
            .replace(plain, "")
            .replace("#tls ", "")
            .replace("/etc/nginx/rate-limiter/ca.pem", pki.ca_str())
            .replace("/etc/nginx/rate-limiter/nginx.pem", client.cert_str())
            .replace("/etc/nginx/rate-limiter/nginx.key", client.key_str())
    });
    wait_for(port).await;
    a_gateway_limits_each_key_and_answers_429(port, true).await;
    backend.stop(false).await;
}
