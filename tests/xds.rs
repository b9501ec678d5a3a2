//! Configuration over xDS, as Envoy Gateway delivers it to its rate limit
//! Deployment: the real binary against a test control plane
//! (`support::xds`, go-control-plane's behaviour: a snapshot per node id,
//! versions and nonces, mutual TLS), with Envoy Gateway's environment and
//! the descriptor shapes it generates from a BackendTrafficPolicy.

mod support;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use rate_limiter::limiter::rules::erl::xds::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy,
};
use rate_limiter::policy::Unit;
use support::binary::{binary, log_lines, Served};
use support::certs::Pki;
use support::rls::descriptor;
use support::xds::{ControlPlane, Seen, Tls};
use support::{free_port, within_one_window, RedisServer, TempDir};
use tonic::transport::Channel;

const NODE: &str = "envoy-ratelimit";
/// Envoy Gateway's domain for a listener: its name.
const DOMAIN: &str = "default/eg/http";
const ROUTE: &str = "httproute/default/backend/rule/0";

fn limit(unit: Option<Unit>, n: u32) -> Option<RateLimitPolicy> {
    Some(RateLimitPolicy::per(unit, n))
}

fn node(key: &str, value: &str, children: Vec<RateLimitDescriptor>) -> RateLimitDescriptor {
    RateLimitDescriptor::new(key, value, None, children)
}

fn leaf(key: &str, value: &str, rate_limit: Option<RateLimitPolicy>) -> RateLimitDescriptor {
    RateLimitDescriptor::new(key, value, rate_limit, Vec::new())
}

/// What Envoy Gateway's translator sends for a BackendTrafficPolicy with
/// two rules on one route: per client IP (`clientSelectors: sourceCIDR
/// 0.0.0.0/0 type Distinct`, `per_client` an hour) and per value of the
/// `x-user-id` header (`Distinct`, `per_user` an hour); plus a shared
/// policy's domain (`<policy>-<namespace>`) with a header that must match
/// exactly, and a rule without a match.
fn envoy_gateway_config(per_client: u32, per_user: u32) -> Vec<RateLimitConfig> {
    let listener = RateLimitConfig {
        name: DOMAIN.into(),
        domain: DOMAIN.into(),
        descriptors: vec![node(
            ROUTE,
            ROUTE,
            vec![
                node(
                    "masked_remote_address",
                    "0.0.0.0/0",
                    vec![leaf(
                        "remote_address",
                        "",
                        limit(Some(Unit::Hour), per_client),
                    )],
                ),
                leaf("rule-1-match-0", "", limit(Some(Unit::Hour), per_user)),
            ],
        )],
    };
    let shared = RateLimitConfig {
        name: "shared-default".into(),
        domain: "shared-default".into(),
        descriptors: vec![node(
            "shared/default",
            "shared/default",
            vec![
                leaf(
                    "rule-0-match-0",
                    "rule-0-match-0",
                    limit(Some(Unit::Hour), 1),
                ),
                leaf("rule-1-match--1", "", limit(Some(Unit::Hour), 1000)),
            ],
        )],
    };
    vec![listener, shared]
}

struct Service {
    _child: Served,
    http: u16,
    grpc: u16,
    _lines: std::sync::mpsc::Receiver<String>,
}

impl Service {
    async fn start(redis: &RedisServer, dir: &TempDir, extra: &[(&str, &str)]) -> Service {
        let (http, grpc) = (free_port(), free_port());
        let (http_s, grpc_s, url) = (http.to_string(), grpc.to_string(), redis.url());
        // Envoy Gateway's environment, where a test does not say otherwise.
        let mut vars = vec![
            ("HOST", "127.0.0.1"),
            ("PORT", http_s.as_str()),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", grpc_s.as_str()),
            ("WORKERS", "1"),
            ("LOG_LEVEL", "info"),
            ("REDIS_URL", url.as_str()),
            ("REDIS_TIMEOUT_MS", "1000"),
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_NODE_ID", NODE),
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("USE_STATSD", "false"),
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "200ms"),
            ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "1s"),
        ];
        vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        vars.extend_from_slice(extra);
        let mut child = Served(
            binary(dir, &vars)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let lines = log_lines(&mut child);
        let service = Service {
            _child: child,
            http,
            grpc,
            _lines: lines,
        };
        service.wait_for_http().await;
        service
    }

    async fn wait_for_http(&self) {
        let started = Instant::now();
        while reqwest::get(self.url("/livez")).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "never up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc))
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn healthcheck(&self) -> u16 {
        reqwest::get(self.url("/healthcheck"))
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn ask(
    c: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    entries: &[(&str, &str)],
    hits: u32,
) -> RateLimitResponse {
    c.should_rate_limit(RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![descriptor(entries)],
        hits_addend: hits,
    })
    .await
    .unwrap()
    .into_inner()
}

fn codes(r: &RateLimitResponse) -> Vec<Code> {
    r.statuses
        .iter()
        .map(|s| Code::try_from(s.code).unwrap())
        .collect()
}

/// Polls until the control plane has seen a request matching `what`.
async fn seen(plane: &ControlPlane, what: &str, test: impl Fn(&Seen) -> bool) -> Seen {
    let started = Instant::now();
    loop {
        if let Some(s) = plane.seen().into_iter().find(|s| test(s)) {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never seen: {what}; seen {:?}",
            plane.seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn acked(version: &'static str) -> impl Fn(&Seen) -> bool {
    move |s: &Seen| s.version == version && !s.nonce.is_empty() && s.error.is_none()
}

/// A client IP per attempt and tag, so a retried scenario counts afresh.
fn ip(attempt: u32, n: u32) -> String {
    format!("10.{}.{}.{n}", std::process::id() % 250, attempt)
}

/// Asks `n` times as one client of the per-client rule: the codes.
async fn per_client(c: &mut RateLimitServiceClient<Channel>, ip: &str, n: usize) -> Vec<Code> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = ask(
            c,
            DOMAIN,
            &[
                (ROUTE, ROUTE),
                ("masked_remote_address", "0.0.0.0/0"),
                ("remote_address", ip),
            ],
            0,
        )
        .await;
        out.extend(codes(&r));
    }
    out
}

use Code::{Ok as Fine, OverLimit as Over};

#[tokio::test]
async fn envoy_gateway_limits_arrive_over_mutual_tls_update_live_and_bad_versions_are_nacked() {
    let redis = RedisServer::start().await;
    let pki = Pki::new("xds-mtls");
    let server = pki.issue("xds-server", &["envoy-gateway"]);
    let client = pki.issue("xds-client", &["envoy-ratelimit"]);
    let mut plane = ControlPlane::start(Some(Tls {
        server,
        client_ca: pki.ca.clone(),
    }))
    .await;
    plane.set(NODE, "1", envoy_gateway_config(2, 3));
    let dir = TempDir::new("xds-mtls");
    let url = format!("127.0.0.1:{}", plane.port);
    let service = Service::start(
        &redis,
        &dir,
        &[
            ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", client.cert_str()),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", client.key_str()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", pki.ca_str()),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "envoy-gateway"),
            ("CONFIG_GRPC_XDS_NODE_METADATA", "cluster:eg,zone=a"),
        ],
    )
    .await;
    seen(&plane, "the ACK of version 1", acked("1")).await;
    let mut c = service.client().await;

    // Per client: two an hour each, the third refused, another client free.
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            let a = ip(attempt, 1);
            assert_eq!(per_client(c, &a, 3).await, [Fine, Fine, Over]);
            assert_eq!(per_client(c, &ip(attempt, 2), 1).await, [Fine]);
            // Per header value: three an hour.
            let user = format!("user-{attempt}");
            let mut got = Vec::new();
            for _ in 0..4 {
                let r = ask(c, DOMAIN, &[(ROUTE, ROUTE), ("rule-1-match-0", &user)], 0).await;
                got.extend(codes(&r));
            }
            assert_eq!(got, [Fine, Fine, Fine, Over]);
        }
    })
    .await;
    // A descriptor the configuration does not have is answered OK.
    let r = ask(&mut c, DOMAIN, &[(ROUTE, ROUTE), ("unknown", "x")], 0).await;
    assert_eq!(codes(&r), [Fine]);

    // Version 2 applies to the next request.
    plane.set(NODE, "2", envoy_gateway_config(4, 3));
    seen(&plane, "the ACK of version 2", acked("2")).await;
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            let a = ip(attempt, 3);
            assert_eq!(per_client(c, &a, 5).await, [Fine, Fine, Fine, Fine, Over]);
        }
    })
    .await;

    // Version 3 is invalid (no unit): NACKed with the reason and the
    // version in force; version 2 stays.
    let mut bad = envoy_gateway_config(9, 9);
    bad[0].descriptors[0].descriptors[1].rate_limit = limit(None, 9);
    plane.set(NODE, "3", bad);
    let nack = seen(&plane, "a NACK", |s| s.error.is_some()).await;
    assert_eq!(nack.version, "2", "a NACK names the version in force");
    let reason = nack.error.unwrap();
    assert!(
        reason.contains("invalid rate limit unit 'UNKNOWN'"),
        "{reason}"
    );
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            assert_eq!(
                per_client(c, &ip(attempt, 4), 5).await,
                [Fine, Fine, Fine, Fine, Over],
                "version 2 still in force"
            );
        }
    })
    .await;
    let metrics = service.metrics().await;
    assert!(
        metrics.contains("ratelimit_xds_config_version_info{version=\"2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ratelimit_xds_responses_total{result=\"nack\"} 1"));
    assert!(metrics.contains("ratelimit_xds_connected 1"));
    let received = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ratelimit_xds_config_last_received_timestamp_seconds "))
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert!(received > 1_700_000_000);

    // The control plane goes away: the rules in force stay.
    plane.stop().await;
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            assert_eq!(
                per_client(c, &ip(attempt, 5), 5).await,
                [Fine, Fine, Fine, Fine, Over]
            );
        }
    })
    .await;
    assert_eq!(service.healthcheck().await, 200);
    // It comes back with version 4: the client reconnects (asking with the
    // version in force) and applies it.
    let streams = plane.streams();
    plane.set(NODE, "4", envoy_gateway_config(1, 3));
    plane.restart().await;
    seen(&plane, "the ACK of version 4", acked("4")).await;
    assert!(plane.streams() > streams);
    let first_after = plane
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.nonce.is_empty())
        .unwrap();
    assert_eq!(
        first_after.version, "2",
        "reconnects ask with the version in force"
    );
    assert_eq!(first_after.node, NODE);
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            assert_eq!(per_client(c, &ip(attempt, 6), 2).await, [Fine, Over]);
        }
    })
    .await;
    drop(service);
}

#[tokio::test]
async fn envoy_gateway_descriptor_shapes_get_the_answers_its_users_expect() {
    let redis = RedisServer::start().await;
    let plane = ControlPlane::start(None).await;
    let mut config = envoy_gateway_config(2, 3);
    // Any algorithm per rule, through the descriptor's metadata (a control
    // plane of one's own; Envoy Gateway sends none): GCRA for the
    // response-phase token budget below.
    let mut metadata = Struct::default();
    metadata.fields.insert(
        "algorithm".into(),
        Value {
            kind: Some(Kind::StringValue("gcra".into())),
        },
    );
    config[0].descriptors.push(RateLimitDescriptor {
        metadata: Some(metadata),
        ..leaf("tokens", "tokens", limit(Some(Unit::Hour), 100))
    });
    // A shadow rule (BackendTrafficPolicy `shadowMode: true`).
    config[0].descriptors.push(RateLimitDescriptor {
        shadow_mode: true,
        ..leaf("shadowed", "shadowed", limit(Some(Unit::Hour), 1))
    });
    plane.set(NODE, "1", config);
    let dir = TempDir::new("xds-shapes");
    let url = format!("127.0.0.1:{}", plane.port);
    let service = Service::start(
        &redis,
        &dir,
        &[("CONFIG_GRPC_XDS_SERVER_URL", url.as_str())],
    )
    .await;
    seen(&plane, "the ACK of version 1", acked("1")).await;
    let mut c = service.client().await;
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            // Shared policy, exact header match: one an hour for everyone
            // (the counter is per policy, not per route); the rule without
            // a match counts apart.
            let exact = [
                ("shared/default", "shared/default"),
                ("rule-0-match-0", "rule-0-match-0"),
            ];
            let first = codes(&ask(c, "shared-default", &exact, 0).await);
            let second = codes(&ask(c, "shared-default", &exact, 0).await);
            if attempt == 0 {
                assert_eq!((first, second.clone()), (vec![Fine], vec![Over]));
            }
            assert_eq!(second, [Over]);
            let catch_all = [
                ("shared/default", "shared/default"),
                ("rule-1-match--1", ""),
            ];
            assert_eq!(
                codes(&ask(c, "shared-default", &catch_all, 0).await),
                [Fine]
            );
        }
    })
    .await;
    // Costs: a request-phase check (hits 0, is anything left?) and a
    // response-phase charge of what the backend reported (hits_addend).
    let tokens = [("tokens", "tokens")];
    let peek = ask(&mut c, DOMAIN, &tokens, 0).await;
    assert_eq!(codes(&peek), [Fine]);
    let charge = ask(&mut c, DOMAIN, &tokens, 60).await;
    assert_eq!(codes(&charge), [Fine]);
    // (GCRA rounds down what is back: 40, or 39 a moment later.)
    assert!((39..=40).contains(&charge.statuses[0].limit_remaining));
    // 60 more do not fit: refused, and not counted (the rest still left).
    let over = ask(&mut c, DOMAIN, &tokens, 60).await;
    assert_eq!(codes(&over), [Over]);
    let left = charge.statuses[0].limit_remaining;
    let after = ask(&mut c, DOMAIN, &tokens, left).await;
    assert_eq!(codes(&after), [Fine]);
    // The over-limit answer says when to retry (GCRA: when 1 token is back).
    let wait = ask(&mut c, DOMAIN, &tokens, 1).await;
    assert_eq!(codes(&wait), [Over]);
    let until = wait.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((1..=3600).contains(&until), "{until}");
    // Shadow: over the limit, yet OK overall.
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            let c = &mut c;
            assert!(attempt < 5);
            let r1 = ask(c, DOMAIN, &[("shadowed", "shadowed")], 0).await;
            let r2 = ask(c, DOMAIN, &[("shadowed", "shadowed")], 0).await;
            assert_eq!(r1.overall_code, Fine as i32);
            assert_eq!(r2.overall_code, Fine as i32, "shadow rules never refuse");
        }
    })
    .await;
    let metrics = service.metrics().await;
    assert!(
        metrics.contains("ratelimit_service_rate_limit_shadow_mode{domain=\"default/eg/http\",key1=\"shadowed_shadowed\",key2=\"\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn empty_snapshots_are_healthy_and_health_waits_for_configuration_unless_forced() {
    let redis = RedisServer::start().await;
    let plane = ControlPlane::start(None).await;
    let url = format!("127.0.0.1:{}", plane.port);
    // Forced: healthy before any configuration, nothing limited.
    let dir = TempDir::new("xds-force");
    let forced = Service::start(
        &redis,
        &dir,
        &[
            ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
            ("CONFIG_GRPC_XDS_NODE_ID", "forced"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ],
    )
    .await;
    assert_eq!(forced.healthcheck().await, 200);
    let mut c = forced.client().await;
    assert_eq!(
        codes(&ask(&mut c, DOMAIN, &[(ROUTE, ROUTE)], 0).await),
        [Fine]
    );
    // Not forced: unhealthy until the first configuration, here an empty
    // snapshot (no policy yet), which is a valid state.
    let dir = TempDir::new("xds-wait");
    let waiting = Service::start(
        &redis,
        &dir,
        &[
            ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
            ("CONFIG_GRPC_XDS_NODE_ID", "waiting"),
        ],
    )
    .await;
    seen(&plane, "the waiting node's first request", |s| {
        s.node == "waiting"
    })
    .await;
    assert_eq!(waiting.healthcheck().await, 500);
    plane.set("waiting", "empty-1", Vec::new());
    seen(&plane, "the ACK of the empty snapshot", |s| {
        s.node == "waiting" && s.version == "empty-1" && s.error.is_none()
    })
    .await;
    let w = &waiting;
    support::eventually(
        "healthy",
        move || async move { w.healthcheck().await == 200 },
    )
    .await;
    let mut c = waiting.client().await;
    assert_eq!(
        codes(&ask(&mut c, DOMAIN, &[(ROUTE, ROUTE)], 0).await),
        [Fine]
    );
    // A snapshot for one node never reaches another.
    assert!(!plane
        .seen()
        .iter()
        .any(|s| s.node == "forced" && !s.nonce.is_empty()));
}

#[tokio::test]
async fn a_server_that_resets_every_stream_is_not_called_in_a_loop() {
    let redis = RedisServer::start().await;
    let plane = ControlPlane::start(None).await;
    plane.reset_after_response(true);
    plane.set(NODE, "1", envoy_gateway_config(2, 3));
    let url = format!("127.0.0.1:{}", plane.port);
    let dir = TempDir::new("xds-loop");
    let service = Service::start(
        &redis,
        &dir,
        &[
            ("CONFIG_GRPC_XDS_SERVER_URL", url.as_str()),
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "300ms"),
            ("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "0"),
        ],
    )
    .await;
    // Reset before its ACK can arrive, the client has applied version 1
    // when it reconnects asking with it.
    seen(&plane, "a reconnection with version 1", |s| {
        s.version == "1" && s.nonce.is_empty()
    })
    .await;
    let (start, streams) = (Instant::now(), plane.streams());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (elapsed, opened) = (start.elapsed(), plane.streams() - streams);
    // At most one stream per 300 ms waited (envoyproxy/ratelimit's bug
    // opened thousands a second), and it does keep reconnecting.
    let bound = (elapsed.as_millis() / 300) as usize + 1;
    eprintln!("streams opened against a resetting server: {opened} in {elapsed:?} (bound {bound})");
    assert!(opened <= bound, "{opened} streams in {elapsed:?}");
    assert!(
        opened >= 3,
        "{opened} streams in {elapsed:?}: it must reconnect"
    );
    assert_eq!(service.healthcheck().await, 200);
    // A server that is gone: attempts back off (doubling to the 1 s cap).
    drop(plane);
    let metrics = service.metrics().await;
    let failed_before = failed(&metrics);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed_after = failed(&service.metrics().await);
    eprintln!(
        "failed connections to a stopped server: {} in 3 s",
        failed_after - failed_before
    );
    assert!(
        failed_after - failed_before <= 10,
        "{} failed connections in 3 s",
        failed_after - failed_before
    );
    assert!(failed_after > failed_before, "it keeps trying");
}

fn failed(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ratelimit_xds_connects_total{result=\"failed\"} "))
        .map_or(0, |v| v.parse().unwrap())
}

#[test]
fn bad_xds_settings_stop_the_start_naming_the_setting() {
    let pki = Pki::new("xds-bad");
    let expired = pki.issue_until("expired", &["envoy-ratelimit"], 2021);
    let good = pki.issue("good", &["envoy-ratelimit"]);
    let other = pki.issue("other", &["envoy-ratelimit"]);
    let dir = TempDir::new("xds-bad");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway")],
            "CONFIG_GRPC_XDS_SERVER_URL",
        ),
        (
            vec![
                ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
                ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", expired.cert_str()),
                ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", expired.key_str()),
                ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", pki.ca_str()),
            ],
            "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
        ),
        (
            vec![
                ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
                ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", good.cert_str()),
                ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", other.key_str()),
                ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", pki.ca_str()),
            ],
            "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
        ),
        (
            vec![
                ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
                ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/nonexistent/ca.pem"),
            ],
            "CONFIG_GRPC_XDS_SERVER_TLS_CACERT",
        ),
        (
            vec![("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "soon")],
            "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
        ),
    ];
    for (vars, setting) in cases {
        let mut all = vec![
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("PORT", "0"),
            ("GRPC_PORT", "0"),
        ];
        all.extend(vars);
        let output = binary(&dir, &all).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting}: started");
        assert!(stderr.contains(setting), "{setting}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The container of Envoy Gateway's rendered Deployment
/// (deploy/envoy-gateway/envoy-ratelimit-deployment.yaml).
fn rendered_container() -> serde_yaml::Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/envoy-gateway/envoy-ratelimit-deployment.yaml"),
    )
    .unwrap();
    let deployment: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

fn rendered_env(container: &serde_yaml::Value) -> Vec<(String, String)> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `/bin/ratelimit` as the image has it: the binary under that name.
fn as_ratelimit(dir: &TempDir) -> std::path::PathBuf {
    let link = dir.path().join("ratelimit");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_rate-limiter"), &link).unwrap();
    link
}

#[tokio::test]
async fn envoy_gateways_deployment_as_rendered_works_with_only_the_image_changed() {
    let container = rendered_container();
    // The Deployment as Envoy Gateway renders it: its command, ports and
    // probes, and our image (the one envoy-gateway.yaml names).
    assert_eq!(container["command"][0].as_str(), Some("/bin/ratelimit"));
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/envoy-gateway/envoy-gateway.yaml"),
    )
    .unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
    let eg: serde_yaml::Value =
        serde_yaml::from_str(config["data"]["envoy-gateway.yaml"].as_str().unwrap()).unwrap();
    let image = &eg["provider"]["kubernetes"]["rateLimitDeployment"]["container"]["image"];
    assert_eq!(container["image"], *image);
    assert_eq!(eg["rateLimit"]["backend"]["type"].as_str(), Some("Redis"));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some("/healthcheck")
        );
        assert_eq!(container[probe]["httpGet"]["port"].as_u64(), Some(8080));
    }
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8081, 19001]);

    let redis = RedisServer::start().await;
    let pki = Pki::new("eg-deploy");
    // The Secret Envoy Gateway mounts at /certs: one pair for the gRPC
    // listener and the xDS client, and the CA.
    let pod = pki.issue(
        "tls",
        &[
            "envoy-ratelimit.envoy-gateway-system.svc.cluster.local",
            "localhost",
        ],
    );
    let controller = pki.issue("envoy-gateway", &["localhost"]);
    let envoy = pki.issue("envoy", &["envoy"]);
    let plane = ControlPlane::start(Some(Tls {
        server: controller,
        client_ca: pki.ca.clone(),
    }))
    .await;
    let (xds_url, redis_url) = (
        format!("localhost:{}", plane.port),
        format!("127.0.0.1:{}", redis.port),
    );
    let (http, grpc, prometheus) = (free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = rendered_env(&container)
        .into_iter()
        .map(|(name, value)| {
            let value = match value.as_str() {
                "/certs/tls.crt" => pod.cert_str().to_owned(),
                "/certs/tls.key" => pod.key_str().to_owned(),
                "/certs/ca.crt" => pki.ca_str().to_owned(),
                "envoy-gateway:18001" => xds_url.clone(),
                ":19001" => format!(":{prometheus}"),
                _ if name == "REDIS_URL" => redis_url.clone(),
                _ => value,
            };
            (name, value)
        })
        .collect();
    let dir = TempDir::new("eg-deploy");
    let ratelimit = as_ratelimit(&dir);
    let command = |extra: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(&ratelimit);
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null());
        cmd
    };
    // envoyproxy/ratelimit's ports where the Deployment sets none.
    let settings = command(&[]).arg("settings").output().unwrap();
    let printed = String::from_utf8_lossy(&settings.stdout);
    assert!(
        settings.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&settings.stderr)
    );
    for expected in [
        "PORT=8080 ",
        "GRPC_PORT=8081 ",
        "CONFIG_TYPE=GRPC_XDS_SOTW ",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(expected)),
            "{expected}: {printed}"
        );
    }
    // Served (on free ports here, and dual stack as Istio's sample sets it,
    // where the machine has IPv6 at all).
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let (any, hosts): (&str, &[&str]) = if ipv6 {
        ("::", &["127.0.0.1", "[::1]"])
    } else {
        eprintln!("no IPv6 loopback here: dual stack not checked");
        ("0.0.0.0", &["127.0.0.1"])
    };
    let mut child = Served(
        command(&[
            ("PORT", http.to_string()),
            ("GRPC_PORT", grpc.to_string()),
            ("HOST", any.into()),
            ("GRPC_HOST", any.into()),
            ("WORKERS", "1".into()),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let _lines = log_lines(&mut child);
    // Healthy before any configuration (FORCE_START_WITHOUT_INITIAL_CONFIG),
    // over IPv4 and IPv6.
    for host in hosts {
        let url = format!("http://{host}:{http}/healthcheck");
        support::eventually(&format!("{url} answers 200"), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status().as_u16() == 200) }
        })
        .await;
    }
    // Envoy's side: mutual TLS to the gRPC port (GRPC_SERVER_TLS_CA_CERT).
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let connect = |identity: Option<&support::certs::Pair>, host: &str| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
            .domain_name("localhost");
        if let Some(pair) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&pair.cert).unwrap(),
                std::fs::read(&pair.key).unwrap(),
            ));
        }
        Endpoint::from_shared(format!("https://{host}:{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let mut c = RateLimitServiceClient::new(
        connect(Some(&envoy), hosts[hosts.len() - 1])
            .connect()
            .await
            .unwrap(),
    );
    assert_eq!(
        codes(&ask(&mut c, DOMAIN, &[(ROUTE, ROUTE)], 0).await),
        [Fine]
    );
    // Without a client certificate: no answer.
    let anonymous = match connect(None, "127.0.0.1").connect().await {
        Ok(channel) => RateLimitServiceClient::new(channel)
            .should_rate_limit(RateLimitRequest {
                domain: DOMAIN.into(),
                descriptors: vec![descriptor(&[(ROUTE, ROUTE)])],
                hits_addend: 0,
            })
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!anonymous, "the gRPC port requires Envoy's certificate");
    // The limits arrive over xDS (mutual TLS to the controller) and apply.
    plane.set(NODE, "1", envoy_gateway_config(2, 3));
    seen(&plane, "the ACK of version 1", acked("1")).await;
    within_one_window(3600, |attempt| {
        let mut c = c.clone();
        async move {
            assert_eq!(
                per_client(&mut c, &ip(attempt, 7), 3).await,
                [Fine, Fine, Over]
            );
        }
    })
    .await;
    // Prometheus on PROMETHEUS_ADDR, with envoyproxy/ratelimit's names and
    // labels (Envoy Gateway's dashboards read them); nothing else there.
    let metrics = reqwest::get(format!("http://127.0.0.1:{prometheus}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ratelimit_service_rate_limit_total_hits{domain=\"default/eg/http\"",
        "ratelimit_service_rate_limit_over_limit{domain=\"default/eg/http\"",
        "ratelimit_service_rate_limit_within_limit{domain=\"default/eg/http\"",
        "ratelimit_xds_config_version_info{version=\"1\"} 1",
    ] {
        assert!(metrics.contains(name), "{name}: {metrics}");
    }
    let other = reqwest::get(format!("http://127.0.0.1:{prometheus}/admin/top"))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
}

/// Envoy Gateway's HPA runs several replicas: each takes the configuration
/// from the controller, and their counts are one (Redis), so a client's
/// requests spread over them meet one exact limit.
#[tokio::test]
async fn replicas_take_the_same_configuration_and_count_as_one() {
    let redis = RedisServer::start().await;
    let plane = ControlPlane::start(None).await;
    plane.set(NODE, "1", envoy_gateway_config(3, 3));
    let url = format!("127.0.0.1:{}", plane.port);
    let (dir_a, dir_b) = (TempDir::new("xds-replica-a"), TempDir::new("xds-replica-b"));
    let a = Service::start(
        &redis,
        &dir_a,
        &[("CONFIG_GRPC_XDS_SERVER_URL", url.as_str())],
    )
    .await;
    let b = Service::start(
        &redis,
        &dir_b,
        &[("CONFIG_GRPC_XDS_SERVER_URL", url.as_str())],
    )
    .await;
    let started = Instant::now();
    while plane
        .seen()
        .iter()
        .filter(|s| s.version == "1" && !s.nonce.is_empty())
        .count()
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "both replicas ACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    within_one_window(3600, |attempt| {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            let client = ip(attempt, 8);
            let mut got = Vec::new();
            for n in 0..5 {
                let c = if n % 2 == 0 { &mut ca } else { &mut cb };
                got.extend(per_client(c, &client, 1).await);
            }
            assert_eq!(got, [Fine, Fine, Fine, Over, Over]);
        }
    })
    .await;
    let _ = (&mut ca, &mut cb);
}
