//! TLS everywhere: Redis over TLS (`redis-server --tls-port`) with a CA,
//! with mutual TLS and with an ACL user, as a Sentinel group and as a
//! Cluster; the gRPC and HTTP listeners over TLS and mTLS; certificates
//! that rotate under a running service. Certificates come from
//! `support::certs` (rcgen).

mod support;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::certs::{Pair, Pki};
use support::{
    eventually, free_port, header_u64, settings, spawn_app_with, unique_key, RedisServer, TestApp,
};

/// A redis-server with a plaintext port (for the test's own checks) and a
/// TLS port serving `server`; clients must present a certificate when
/// `mutual`.
async fn tls_redis(pki: &Pki, server: &Pair, mutual: bool, extra: &[&str]) -> (RedisServer, u16) {
    let tls_port = free_port();
    let mut args: Vec<String> = vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        server.cert_str().into(),
        "--tls-key-file".into(),
        server.key_str().into(),
        "--tls-ca-cert-file".into(),
        pki.ca_str().into(),
        "--tls-auth-clients".into(),
        if mutual { "yes" } else { "no" }.into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    (RedisServer::start_with(&args).await, tls_port)
}

async fn app(redis_url: &str, overrides: &[(&str, &str)]) -> TestApp {
    let mut all = vec![("REDIS_URL", redis_url)];
    all.extend_from_slice(overrides);
    spawn_app_with(settings(redis_url, &all)).await
}

async fn health(app: &TestApp) -> (StatusCode, Value) {
    let response = app.get("/health").await;
    (response.status(), response.json().await.unwrap())
}

/// Requests counted exactly over TLS: the remaining count goes down by one
/// per request, and the counter is in Redis.
async fn counts_exactly(app: &TestApp, redis: &RedisServer) {
    let key = unique_key("tls");
    for expected in (15..20).rev() {
        let response = app.post_resource(Some(&key)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header_u64(&response, "X-RateLimit-Remaining"), expected);
    }
    let keys = redis.keys(&format!("rate:{{user:{key}}}*")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn redis_over_tls_with_a_ca_counts_exactly() {
    let pki = Pki::new("redis-ca");
    let server = pki.issue("redis", &["localhost", "127.0.0.1"]);
    let (redis, tls_port) = tls_redis(&pki, &server, false, &[]).await;
    let url = format!("rediss://localhost:{tls_port}/0");
    let app = app(&url, &[("REDIS_TLS_CACERT", pki.ca_str())]).await;
    counts_exactly(&app, &redis).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"]["tls"], true);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("ratelimit_redis_tls 1"), "{metrics}");

    // REDIS_TLS=true with host and port does the same.
    let parts = spawn_app_with(settings(
        "",
        &[
            ("REDIS_URL", ""),
            ("REDIS_TLS", "true"),
            ("REDIS_HOST", "localhost"),
            ("REDIS_PORT", &tls_port.to_string()),
            ("REDIS_TLS_CACERT", pki.ca_str()),
        ],
    ))
    .await;
    counts_exactly(&parts, &redis).await;
}

#[tokio::test]
async fn redis_mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new("redis-mtls");
    let server = pki.issue("redis", &["localhost"]);
    let client = pki.issue("client", &["rate-limiter"]);
    let (redis, tls_port) = tls_redis(&pki, &server, true, &[]).await;
    let url = format!("rediss://localhost:{tls_port}/0");
    let with = app(
        &url,
        &[
            ("REDIS_TLS_CACERT", pki.ca_str()),
            ("REDIS_TLS_CLIENT_CERT", client.cert_str()),
            ("REDIS_TLS_CLIENT_KEY", client.key_str()),
        ],
    )
    .await;
    counts_exactly(&with, &redis).await;
    let without = app(
        &url,
        &[
            ("REDIS_TLS_CACERT", pki.ca_str()),
            ("REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let (status, body) = health(&without).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"]["status"], "down");
}

/// An ACL user over TLS; a wrong password is an authentication error the
/// health check names.
#[tokio::test]
async fn redis_acl_user_over_tls() {
    let pki = Pki::new("redis-acl");
    let server = pki.issue("redis", &["localhost"]);
    let (redis, tls_port) = tls_redis(
        &pki,
        &server,
        false,
        &["--user", "limiter", "on", ">s3cret-pw", "~*", "&*", "+@all"],
    )
    .await;
    let url = format!("rediss://localhost:{tls_port}/0");
    let good = app(
        &url,
        &[
            ("REDIS_TLS_CACERT", pki.ca_str()),
            ("REDIS_USERNAME", "limiter"),
            ("REDIS_PASSWORD", "s3cret-pw"),
            ("REDIS_URL", ""),
            ("REDIS_TLS", "true"),
            ("REDIS_HOST", "localhost"),
            ("REDIS_PORT", &tls_port.to_string()),
        ],
    )
    .await;
    counts_exactly(&good, &redis).await;
    let mut conn = redis.connection().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(clients.contains("user=limiter"), "{clients}");

    let bad = app(
        &format!("rediss://limiter:wrong@localhost:{tls_port}/0"),
        &[
            ("REDIS_TLS_CACERT", pki.ca_str()),
            ("REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let (status, body) = health(&bad).await;
    assert_eq!(status, 503, "{body}");
    let error = body["redis"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("auth"), "{body}");
}

/// The wrong CA, a certificate for another name, plaintext against the
/// TLS port: each a 503 from /health within the timeout, naming the cause;
/// the hostname opt-out accepts the other name and still checks the chain.
#[tokio::test]
async fn redis_tls_failures_are_named() {
    let pki = Pki::new("redis-bad");
    let other = Pki::new("other-ca");
    let server = pki.issue("redis", &["redis.internal"]);
    let (redis, tls_port) = tls_redis(&pki, &server, false, &[]).await;
    let by_ip = format!("rediss://127.0.0.1:{tls_port}/0");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 3] = [
        (
            "wrong CA",
            vec![("REDIS_TLS_CACERT", other.ca_str())],
            "certificate",
        ),
        (
            "wrong name",
            vec![("REDIS_TLS_CACERT", pki.ca_str())],
            "certificate",
        ),
        ("plaintext", vec![], ""),
    ];
    for (what, overrides, cause) in cases {
        let url = if what == "plaintext" {
            format!("redis://127.0.0.1:{tls_port}/0")
        } else {
            by_ip.clone()
        };
        let mut overrides = overrides;
        overrides.push(("REDIS_TIMEOUT_MS", "300"));
        let app = app(&url, &overrides).await;
        let started = std::time::Instant::now();
        let (status, body) = health(&app).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: no hang"
        );
        assert_eq!(status, 503, "{what}: {body}");
        let error = body["redis"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(error.contains(cause), "{what}: {body}");
        // The limited endpoint answers by the failure mode, never a 5xx.
        let response = app.post_resource(Some("k")).await;
        assert_eq!(response.status(), 200, "{what}");
        assert!(response.headers().contains_key("x-ratelimit-degraded"));
    }
    let skip = app(
        &by_ip,
        &[
            ("REDIS_TLS_CACERT", pki.ca_str()),
            ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"),
        ],
    )
    .await;
    counts_exactly(&skip, &redis).await;
    let still_checked = app(
        &by_ip,
        &[
            ("REDIS_TLS_CACERT", other.ca_str()),
            ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"),
            ("REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    assert_eq!(health(&still_checked).await.0, 503);
}

/// Bad files stop the start with one line naming the setting.
#[test]
fn bad_tls_files_stop_the_start_naming_the_setting() {
    let pki = Pki::new("bad-files");
    let good = pki.issue("client", &["client"]);
    let other = pki.issue("other", &["other"]);
    let expired = pki.issue_until("expired", &["client"], 2021);
    let lookup = |pairs: Vec<(&str, String)>| {
        let mut map: std::collections::HashMap<String, String> = [
            ("REDIS_URL", "rediss://localhost:6380/0".to_owned()),
            ("REDIS_TLS_CACERT", pki.ca_str().to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in pairs {
            map.insert(k.to_owned(), v);
        }
        rate_limiter::config::Settings::from_lookup(|k| map.get(k).cloned())
    };
    let cases = [
        (
            vec![
                ("REDIS_TLS_CLIENT_CERT", good.cert_str().to_owned()),
                ("REDIS_TLS_CLIENT_KEY", other.key_str().to_owned()),
            ],
            "REDIS_TLS_CLIENT_KEY",
            "does not match",
        ),
        (
            vec![
                ("REDIS_TLS_CLIENT_CERT", expired.cert_str().to_owned()),
                ("REDIS_TLS_CLIENT_KEY", expired.key_str().to_owned()),
            ],
            "REDIS_TLS_CLIENT_CERT",
            "expired",
        ),
        (
            vec![("REDIS_TLS_CLIENT_CERT", "/no/such.pem".to_owned())],
            "REDIS_TLS_CLIENT_CERT",
            "no such file",
        ),
        (
            vec![("REDIS_TLS_CACERT", good.key_str().to_owned())],
            "REDIS_TLS_CACERT",
            "certificate",
        ),
    ];
    for (pairs, setting, problem) in cases {
        let err = lookup(pairs).unwrap_err();
        assert_eq!(err.setting, setting, "{err}");
        assert!(err.to_string().contains(problem), "{err}");
        assert_eq!(err.to_string().lines().count(), 1);
    }
}

/// A listener's settings: the files, and (mTLS) the client CA.
fn grpc_tls<'a>(server: &'a Pair, ca: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", server.cert_str()),
        ("GRPC_SERVER_TLS_KEY", server.key_str()),
    ];
    if let Some(ca) = ca {
        // Envoy Gateway's name for it.
        pairs.push(("GRPC_SERVER_TLS_CA_CERT", ca));
    }
    pairs
}

async fn grpc_client(
    app: &TestApp,
    pki: &Pki,
    identity: Option<&Pair>,
) -> Result<
    envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient<
        tonic::transport::Channel,
    >,
    tonic::transport::Error,
>{
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&pair.cert).unwrap(),
            std::fs::read(&pair.key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", app.grpc_port))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(
        envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(
            channel,
        ),
    )
}

/// gRPC over mTLS: a client with a certificate the CA signed (and, with
/// GRPC_CLIENT_TLS_SAN, the pinned name) is answered; one without, or
/// with another name, is refused at the handshake.
#[tokio::test]
async fn grpc_mutual_tls_and_a_pinned_client_name() {
    let redis = RedisServer::start().await;
    let pki = Pki::new("grpc-mtls");
    let server = pki.issue("grpc", &["localhost", "127.0.0.1"]);
    let envoy = pki.issue("envoy", &["envoy.gateway"]);
    let stranger = pki.issue("stranger", &["somebody.else"]);
    let mut overrides = grpc_tls(&server, Some(pki.ca_str()));
    overrides.push(("GRPC_CLIENT_TLS_SAN", "envoy.gateway"));
    overrides.push(("RLS_HTTP_DOMAIN", "true"));
    let app = spawn_app_with(settings(&redis.url(), &overrides)).await;
    let mut client = grpc_client(&app, &pki, Some(&envoy)).await.unwrap();
    let request = support::rls::request(
        "http",
        vec![support::rls::descriptor(&[(
            "user",
            &unique_key("grpc-tls"),
        )])],
    );
    let answer = support::rls::ask(&mut client, request.clone()).await;
    assert_eq!(answer.overall_code, 1, "OK over mTLS");
    for identity in [None, Some(&stranger)] {
        let refused = match grpc_client(&app, &pki, identity).await {
            Err(_) => true,
            Ok(mut c) => c.should_rate_limit(request.clone()).await.is_err(),
        };
        assert!(
            refused,
            "a client without the pinned certificate is refused"
        );
    }
    let (status, body) = health(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["certificates"][0]["listener"], "grpc");
    assert_eq!(body["certificates"][0]["expires_at"], 4070908800_i64);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(
        "ratelimit_tls_certificate_expiry_timestamp_seconds{listener=\"grpc\"} 4070908800"
    ));
}

fn https_client(pki: &Pki, identity: Option<&Pair>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(10));
    if let Some(pair) = identity {
        let mut pem = std::fs::read(&pair.cert).unwrap();
        pem.extend(std::fs::read(&pair.key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// HTTPS on PORT, with mutual TLS: the API answers over TLS to a client
/// with a certificate, and a client without one never gets an answer.
#[tokio::test]
async fn http_over_tls_and_mutual_tls() {
    let redis = RedisServer::start().await;
    let pki = Pki::new("http-tls");
    let server = pki.issue("http", &["localhost"]);
    let gateway = pki.issue("gateway", &["gateway"]);
    let app = spawn_app_with(settings(
        &redis.url(),
        &[
            ("TLS_CERT_FILE", server.cert_str()),
            ("TLS_KEY_FILE", server.key_str()),
            ("TLS_CLIENT_CA_FILE", pki.ca_str()),
        ],
    ))
    .await;
    let url = format!("https://localhost:{}/api/resource", app.port);
    let response = https_client(&pki, Some(&gateway))
        .post(&url)
        .header("X-API-Key", unique_key("https"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_u64(&response, "X-RateLimit-Remaining"), 19);
    assert!(https_client(&pki, None).post(&url).send().await.is_err());
    // Plain HTTP on the TLS port gets no answer either.
    assert!(reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/livez", app.port))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success()));
}

/// The peer certificate a fresh TLS connection to `port` is served.
async fn served_certificate(pki: &Pki, port: u16) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Certificates rewritten in place (as cert-manager does) are served to new
/// connections within seconds; a connection opened before keeps working;
/// the expiry gauge follows; a broken pair is refused and the old one stays.
#[tokio::test]
async fn certificates_rotate_without_a_restart() {
    use rustls::pki_types::pem::PemObject;
    let redis = RedisServer::start().await;
    let pki = Pki::new("rotate");
    let first = pki.issue("first", &["localhost"]);
    let live = Pair {
        cert: pki.dir.path().join("live.pem"),
        key: pki.dir.path().join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let app = spawn_app_with(settings(
        &redis.url(),
        &[
            ("TLS_CERT_FILE", live.cert_str()),
            ("TLS_KEY_FILE", live.key_str()),
        ],
    ))
    .await;
    let der = |path: &std::path::Path| {
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    };
    assert_eq!(served_certificate(&pki, app.port).await, der(&first.cert));
    let client = https_client(&pki, None);
    let url = format!("https://localhost:{}/livez", app.port);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let second = pki.issue_until("second", &["localhost"], 2098);
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let expected = der(&second.cert);
    eventually("the new certificate is served", || {
        let expected = expected.clone();
        let pki = &pki;
        let port = app.port;
        async move { served_certificate(pki, port).await == expected }
    })
    .await;
    // The connection pooled before the rotation still answers.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let metrics = app.get_https_metrics(&pki).await;
    assert!(
        metrics.contains("listener=\"http\"} 4039372800"),
        "{metrics}"
    );

    // A certificate without its key: refused, the second stays.
    let third = pki.issue("third", &["localhost"]);
    std::fs::copy(&third.cert, &live.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_certificate(&pki, app.port).await, expected);
}

trait HttpsMetrics {
    async fn get_https_metrics(&self, pki: &Pki) -> String;
}

impl HttpsMetrics for TestApp {
    async fn get_https_metrics(&self, pki: &Pki) -> String {
        https_client(pki, None)
            .get(format!("https://localhost:{}/metrics", self.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// TLS lines for a Redis or Sentinel configuration file serving `server`.
fn tls_conf(pki: &Pki, server: &Pair, port: u16) -> String {
    format!(
        "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\n\
         tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
        server.cert_str(),
        server.key_str(),
        pki.ca_str()
    )
}

/// A Sentinel group reached over TLS only: the sentinel on its TLS port
/// names the master by its TLS port, and the service reaches both with
/// TLS; exact limits follow.
#[tokio::test]
async fn sentinel_over_tls() {
    let pki = Pki::new("sentinel-tls");
    let server = pki.issue("node", &["localhost", "127.0.0.1"]);
    let (master, master_tls) = tls_redis(&pki, &server, false, &[]).await;
    let sentinel_port = free_port();
    let conf = pki.dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "{}dir {}\nsentinel monitor mymaster 127.0.0.1 {master_tls} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n",
            tls_conf(&pki, &server, sentinel_port),
            pki.dir.path().display()
        ),
    )
    .unwrap();
    let _sentinel = support::Process::new(
        std::process::Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-sentinel (./run_tests.sh installs it)"),
    );
    let app = spawn_app_with(settings(
        "",
        &[
            ("REDIS_SENTINELS", &format!("127.0.0.1:{sentinel_port}")),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", pki.ca_str()),
        ],
    ))
    .await;
    eventually(
        "the service reaches the master through the sentinel",
        || async { health(&app).await.0 == 200 },
    )
    .await;
    counts_exactly(&app, &master).await;
    let (_, body) = health(&app).await;
    assert_eq!(body["redis"]["topology"], "sentinel");
    assert_eq!(body["redis"]["tls"], true);
}

/// A Cluster whose nodes speak TLS to clients and to each other: the nodes
/// it announces are reached with TLS too, and every identity is counted on
/// its own node, exactly.
#[tokio::test]
async fn cluster_over_tls() {
    let pki = Pki::new("cluster-tls");
    let server = pki.issue("node", &["localhost", "127.0.0.1"]);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            tls_redis(
                &pki,
                &server,
                false,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                ],
            )
            .await,
        );
    }
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(nodes.iter().map(|(n, _)| format!("127.0.0.1:{}", n.port)))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (node, _) in &nodes {
        eventually("the cluster reaches state ok", || async {
            let Ok(mut conn) = node.connection().await else {
                return false;
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            info.contains("cluster_state:ok")
        })
        .await;
    }
    let seeds: Vec<String> = nodes
        .iter()
        .map(|(_, tls)| format!("127.0.0.1:{tls}"))
        .collect();
    let app = spawn_app_with(settings(
        "",
        &[
            ("REDIS_CLUSTER_NODES", &seeds[..1].join(",")),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", pki.ca_str()),
        ],
    ))
    .await;
    eventually("the cluster is reached over TLS", || async {
        health(&app).await.0 == 200
    })
    .await;
    // Many identities: they land on every node, each counted exactly.
    let mut per_node = [0usize; 3];
    for i in 0..30 {
        let key = unique_key(&format!("cluster-tls-{i}"));
        for expected in [19, 18] {
            let response = app.post_resource(Some(&key)).await;
            assert_eq!(response.status(), 200);
            let degraded = response.headers().get("x-ratelimit-degraded").cloned();
            assert!(degraded.is_none(), "{degraded:?}");
            assert_eq!(header_u64(&response, "X-RateLimit-Remaining"), expected);
        }
        for (n, (node, _)) in nodes.iter().enumerate() {
            let found = node.keys(&format!("rate:{{user:{key}}}*")).await;
            per_node[n] += found.len();
        }
    }
    assert_eq!(per_node.iter().sum::<usize>(), 30);
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every node holds identities: {per_node:?}"
    );
}
