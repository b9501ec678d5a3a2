//! The settings parser, against the declared list and every bad value.

use super::*;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

fn single(url: &str) -> RedisTopology {
    RedisTopology::Single { url: url.into() }
}

#[test]
fn envoy_ratelimit_redis_settings_work_unchanged() {
    let topology = |pairs: &[(&str, &str)]| settings(pairs).map(|s| s.redis.topology);
    assert_eq!(
        topology(&[("REDIS_URL", "redis:6379")]).unwrap(),
        single("redis://redis:6379/0")
    );
    assert_eq!(
        topology(&[("REDIS_URL", "10.0.0.1:6380"), ("REDIS_AUTH", "user:p@ss")]).unwrap(),
        single("redis://user:p%40ss@10.0.0.1:6380/0")
    );
    assert_eq!(
        topology(&[
            ("REDIS_URL", "/var/run/redis.sock"),
            ("REDIS_SOCKET_TYPE", "unix")
        ])
        .unwrap(),
        single("unix:///var/run/redis.sock")
    );
    assert_eq!(
        topology(&[
            ("REDIS_TYPE", "SENTINEL"),
            ("REDIS_URL", "mymaster,10.0.0.1:26379,10.0.0.2:26379"),
            ("REDIS_AUTH", "pw"),
            ("REDIS_SENTINEL_AUTH", "spw"),
        ])
        .unwrap(),
        RedisTopology::Sentinel {
            sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)],
            master: "mymaster".into(),
            username: None,
            password: Some("pw".into()),
            sentinel_username: None,
            sentinel_password: Some("spw".into()),
            db: 0,
        }
    );
    assert_eq!(
        topology(&[("REDIS_TYPE", "cluster"), ("REDIS_URL", "a:7000,b:7001")])
            .unwrap()
            .name(),
        "cluster"
    );
    let err = topology(&[("REDIS_TYPE", "ring")]).unwrap_err();
    assert_eq!(err.setting, "REDIS_TYPE");
    let err = topology(&[("REDIS_TYPE", "sentinel"), ("REDIS_URL", "a:1")]).unwrap_err();
    assert_eq!(err.setting, "REDIS_URL");
}

#[test]
fn sentinel_and_cluster_topologies() {
    let s = settings(&[
        (
            "REDIS_SENTINELS",
            "10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
        ),
        ("REDIS_PASSWORD", "pw"),
    ])
    .unwrap();
    assert_eq!(
        s.redis.topology,
        RedisTopology::Sentinel {
            sentinels: vec![
                ("10.0.0.1".into(), 26379),
                ("sentinel-b".into(), 26380),
                ("::1".into(), 26381)
            ],
            master: "mymaster".into(),
            username: None,
            password: Some("pw".into()),
            sentinel_username: None,
            sentinel_password: None,
            db: 0,
        }
    );
    let s = settings(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")]).unwrap();
    assert_eq!(s.redis.topology.name(), "cluster");
    let err = settings(&[
        ("REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
        ("REDIS_SENTINELS", "127.0.0.1:26379"),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "REDIS_CLUSTER_NODES");
    for bad in ["nohost", "h:0", "bad host!:1", ","] {
        let err = settings(&[("REDIS_SENTINELS", bad)]).unwrap_err();
        assert_eq!(err.setting, "REDIS_SENTINELS", "{bad}");
    }
}

#[test]
fn defaults_run_a_local_service() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.port, 8000);
    assert_eq!(s.host, "0.0.0.0");
    assert_eq!(s.redis.topology, single("redis://127.0.0.1:6379/0"));
    assert_eq!(s.redis.timeout, Duration::from_millis(100));
    assert_eq!(s.user_limit.limit.get(), 20);
    assert_eq!(s.user_limit.window, Duration::from_secs(60));
    assert_eq!(s.ip_limit.limit.get(), 20);
    assert_eq!(s.failure_mode, FailureMode::Open);
    assert!(s.trusted_proxies.is_empty());
}

#[test]
fn each_bad_value_names_its_setting() {
    let cases: &[(&str, &str)] = &[
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("RATE_LIMIT_USER_LIMIT", "0"),
        ("RATE_LIMIT_IP_LIMIT", "-5"),
        ("RATE_LIMIT_USER_WINDOW", "soon"),
        ("RATE_LIMIT_IP_WINDOW", "0"),
        ("REDIS_TIMEOUT_MS", "0"),
        ("REDIS_POOL_SIZE", "lots"),
        ("REDIS_BATCH_MAX", "0"),
        ("REDIS_PORT", "0"),
        ("REDIS_URL", "http://example"),
        ("RATE_LIMIT_FAILURE_MODE", "maybe"),
        ("TRUSTED_PROXIES", "10.0.0.1,not-an-ip"),
        ("LOG_LEVEL", "loud"),
        ("HOST", "bad host!"),
        ("WORKERS", "0"),
        ("RATE_LIMIT_ALGORITHM", "leaky"),
        ("RATE_LIMIT_CONFIG", "/no/such/rules.toml"),
        ("REDIS_BREAKER_FAILURES", "0"),
        ("REDIS_BREAKER_COOLDOWN_MS", "soon"),
        ("REDIS_CLUSTER_NODES", "127.0.0.1"),
        ("RATE_LIMIT_SHADOW", "perhaps"),
        ("LOG_FORMAT", "xml"),
        ("ADMIN_TOKEN", "short"),
        ("FORWARDED_HEADER", "X-Real-IP"),
        ("REQUEST_BODY_TIMEOUT_MS", "0"),
        ("RATE_LIMIT_IP_EVERY_REQUEST", "sometimes"),
        ("API_KEY_HEADER", "X API Key"),
        ("JWT_CLAIM", "sub"),
        ("JWT_PUBLIC_KEY_FILE", "/no/such/key.pem"),
        ("JSON_API", "public"),
        ("RLS_HTTP_DOMAIN", "maybe"),
    ];
    for (name, value) in cases {
        let err = settings(&[(name, value)]).unwrap_err();
        assert_eq!(err.setting, *name, "{err}");
        assert_eq!(err.value, redact(name, value));
        let line = err.to_string();
        assert!(
            line.starts_with(&format!("invalid setting {name}=")),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}

/// Regression (issue 19, item 22): a too-short admin token and a Redis
/// URL with its password were echoed in the start-up error.
#[test]
fn start_up_errors_redact_secrets() {
    let err = settings(&[("ADMIN_TOKEN", "hunter2")]).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("7 bytes"), "{err}");
    let err = settings(&[("REDIS_URL", "mysql://app:hunter2@db:3306/x")]).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(
        err.to_string().contains("mysql://app:<redacted>@db:3306/x"),
        "{err}"
    );
}

#[test]
fn url_is_built_from_parts_with_an_encoded_password() {
    let s = settings(&[
        ("REDIS_HOST", "redis.internal"),
        ("REDIS_PORT", "6380"),
        ("REDIS_PASSWORD", "p@ss:w/rd"),
        ("REDIS_DB", "2"),
    ])
    .unwrap();
    let RedisTopology::Single { url } = &s.redis.topology else {
        panic!("single")
    };
    assert_eq!(url, "redis://:p%40ss%3Aw%2Frd@redis.internal:6380/2");
    let info = redis::parse_redis_url(url).unwrap();
    assert_eq!(info.host_str(), Some("redis.internal"));
}

#[test]
fn redis_url_wins_over_parts() {
    let s = settings(&[
        ("REDIS_URL", "redis://10.1.2.3:7000/1"),
        ("REDIS_HOST", "ignored"),
        ("REDIS_PASSWORD", "hunter2"),
    ])
    .unwrap();
    assert_eq!(s.redis.topology, single("redis://10.1.2.3:7000/1"));
    // Regression (issue 19, item 23): silently.
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0].starts_with("REDIS_HOST=ignored is ignored"),
        "{:?}",
        s.warnings
    );
    assert!(s.warnings.iter().all(|w| w.contains("REDIS_URL")));
    assert!(!s.warnings.iter().any(|w| w.contains("hunter2")));
}

/// Regression (issue 19, item 23): REDIS_SENTINELS beat REDIS_URL
/// silently (the README said the URL wins); limit settings were ignored
/// under RATE_LIMIT_CONFIG without a word.
#[test]
fn settings_that_override_each_other_are_refused_or_named() {
    for other in ["REDIS_SENTINELS", "REDIS_CLUSTER_NODES"] {
        let err = settings(&[
            ("REDIS_URL", "redis://10.1.2.3:7000/1"),
            (other, "10.0.0.1:26379"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "REDIS_URL");
        assert!(err.problem.contains(other), "{err}");
    }
    let rules = std::env::temp_dir().join(format!("rules-{}.toml", std::process::id()));
    std::fs::write(&rules, "").unwrap();
    let s = settings(&[
        ("RATE_LIMIT_CONFIG", rules.to_str().unwrap()),
        ("RATE_LIMIT_USER_LIMIT", "500"),
    ])
    .unwrap();
    let _ = std::fs::remove_file(&rules);
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("RATE_LIMIT_USER_LIMIT")
            && s.warnings[0].contains("RATE_LIMIT_CONFIG")
    );
}

#[test]
fn windows_take_seconds_or_units() {
    assert_eq!(parse_window("60"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_window("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_window("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_window("1d"), Ok(Duration::from_secs(86400)));
    assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
    assert!(parse_window("0s").is_err());
    assert!(parse_window("1us").is_err());
    assert!(parse_window("-1").is_err());
}

#[test]
fn trusted_proxies_take_addresses_and_networks() {
    let s = settings(&[("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,::1")]).unwrap();
    assert_eq!(s.trusted_proxies.len(), 3);
    assert!(s.trusted_proxies[1].contains(&"10.2.3.4".parse::<IpAddr>().unwrap()));
}

#[test]
fn empty_values_mean_default() {
    let s = settings(&[("PORT", ""), ("REDIS_URL", "  ")]).unwrap();
    assert_eq!(s.port, 8000);
    assert_eq!(s.redis.topology, single("redis://127.0.0.1:6379/0"));
}

/// Every declared setting is read by the parser in some configuration,
/// and the parser reads nothing undeclared (`Env` panics on that).
#[test]
fn the_parser_reads_every_declared_setting() {
    let read = std::cell::RefCell::new(BTreeSet::new());
    let dir = env!("CARGO_MANIFEST_DIR");
    let configurations: [&[(&str, &str)]; 6] = [
        &[],
        &[("REDIS_SENTINELS", "127.0.0.1:26379")],
        &[
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", "m,127.0.0.1:26379"),
        ],
        &[
            ("RUNTIME_ROOT", dir),
            ("ENVOY_KEY_FORMAT", "ratelimit"),
            ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ],
        &[("RATE_LIMIT_CONFIG", "rules.example.toml")],
        &[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("TRACING_ENABLED", "true"),
            ("USE_PROMETHEUS", "true"),
        ],
    ];
    for pairs in configurations {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        let lookup = |k: &str| {
            read.borrow_mut().insert(k.to_owned());
            map.get(k).map(|v| (*v).to_owned())
        };
        // (cargo runs unit tests in the package's directory.)
        Settings::from_lookup(lookup).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
    }
    let declared: BTreeSet<String> = list::SETTINGS.iter().map(|s| s.name.to_owned()).collect();
    assert_eq!(read.into_inner(), declared);
}

/// Each declared default, given explicitly, changes nothing: the defaults
/// the docs show are the ones in force.
#[test]
fn declared_defaults_are_the_defaults_in_force() {
    let defaults: HashMap<&str, &str> =
        list::SETTINGS.iter().map(|s| (s.name, s.default)).collect();
    let explicit = Settings::from_lookup(|k| defaults.get(k).map(|v| (*v).to_owned())).unwrap();
    assert_eq!(explicit, settings(&[]).unwrap());
    assert_eq!(
        settings(&[]).unwrap().redis.batch_max,
        topology::DEFAULT_BATCH_MAX
    );
}

#[test]
#[should_panic(expected = "not declared")]
fn reading_an_undeclared_setting_is_a_bug() {
    let _ = env::Env(&|_| None).get("NO_SUCH_SETTING");
}

#[test]
fn choices_take_any_case_and_name_the_choices() {
    assert_eq!(
        settings(&[("JSON_API", "OPEN")]).unwrap().envoy.json_api,
        JsonApi::Open
    );
    let err = settings(&[("LOG_FORMAT", "yaml")]).unwrap_err();
    assert_eq!(err.setting, "LOG_FORMAT");
    assert_eq!(err.problem, "expected one of plain, json");
}

#[test]
fn redis_tls_and_acl_users() {
    // A rediss:// URL is TLS with the system's roots.
    let s = settings(&[("REDIS_URL", "rediss://app:pw@redis.example:6380/0")]).unwrap();
    assert_eq!(s.redis.tls, Some(RedisTls::default()));
    // REDIS_TLS turns a URL built from parts into rediss://, with the user.
    let s = settings(&[
        ("REDIS_TLS", "true"),
        ("REDIS_HOST", "redis.example"),
        ("REDIS_USERNAME", "app"),
        ("REDIS_PASSWORD", "p:w"),
    ])
    .unwrap();
    assert_eq!(
        s.redis.topology,
        single("rediss://app:p%3Aw@redis.example:6379/0")
    );
    // envoyproxy/ratelimit's REDIS_AUTH=user:password, a password with ':'.
    let s = settings(&[
        ("REDIS_TYPE", "cluster"),
        ("REDIS_URL", "a:7000"),
        ("REDIS_AUTH", "app:p:w"),
        ("REDIS_TLS", "true"),
    ])
    .unwrap();
    assert_eq!(
        s.redis.topology,
        RedisTopology::Cluster {
            nodes: vec![("a".into(), 7000)],
            username: Some("app".into()),
            password: Some("p:w".into()),
        }
    );
    assert!(s.redis.tls.is_some() && s.redis.sentinel_tls);
    // TLS files without TLS, a lone certificate, a socket, Sentinel with
    // the hostname opt-out: each named.
    for (pairs, setting) in [
        (vec![("REDIS_TLS_CACERT", "Cargo.toml")], "REDIS_TLS_CACERT"),
        (
            vec![
                ("REDIS_TLS", "true"),
                ("REDIS_TLS_CLIENT_CERT", "Cargo.toml"),
            ],
            "REDIS_TLS_CLIENT_KEY",
        ),
        (
            vec![
                ("REDIS_TLS", "true"),
                ("REDIS_URL", "unix:///run/redis.sock"),
            ],
            "REDIS_TLS",
        ),
        (
            vec![
                ("REDIS_TLS", "true"),
                ("REDIS_SENTINELS", "127.0.0.1:26379"),
                ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"),
            ],
            "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
        ),
        (vec![("REDIS_SENTINEL_TLS", "true")], "REDIS_SENTINEL_TLS"),
        (
            vec![
                ("REDIS_TLS", "true"),
                ("REDIS_TLS_CACERT", "/no/such/ca.pem"),
            ],
            "REDIS_TLS_CACERT",
        ),
        // Not a certificate at all.
        (
            vec![("REDIS_TLS", "true"), ("REDIS_TLS_CACERT", "Cargo.toml")],
            "REDIS_TLS_CACERT",
        ),
        (
            vec![("GRPC_SERVER_USE_TLS", "true")],
            "GRPC_SERVER_TLS_CERT",
        ),
        (vec![("TLS_CERT_FILE", "Cargo.toml")], "TLS_KEY_FILE"),
        (
            vec![("TLS_CLIENT_CA_FILE", "Cargo.toml")],
            "TLS_CLIENT_CA_FILE",
        ),
    ] {
        let err = settings(&pairs).unwrap_err();
        assert_eq!(err.setting, setting, "{pairs:?}: {err}");
    }
}
