//! The `rate-limiter` binary itself: start-up errors for bad settings, and a
//! clean start, serve and stop on SIGTERM.

mod support;

use std::time::Duration;

use support::binary::{binary, log_lines, serve, signal, wait_for_port};
use support::{RedisServer, TempDir};

#[test]
fn each_bad_setting_stops_the_start_with_one_line_naming_it() {
    let dir = TempDir::new("badcfg");
    let cases = [
        ("PORT", "abc"),
        ("RATE_LIMIT_USER_LIMIT", "0"),
        ("RATE_LIMIT_IP_WINDOW", "forever"),
        ("REDIS_TIMEOUT_MS", "-1"),
        ("RATE_LIMIT_FAILURE_MODE", "sometimes"),
        ("TRUSTED_PROXIES", "300.1.1.1"),
        ("REDIS_URL", "mysql://localhost"),
    ];
    for (name, value) in cases {
        let out = binary(&dir, &[(name, value)])
            .output()
            .expect("run the binary");
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with(&format!("rate-limiter: invalid setting {name}=")),
            "{stderr}"
        );
    }
}

/// Regression (issue 19, items 18 and 22): `--help`, `-h`, `--version`
/// and typos started the whole service on 0.0.0.0; start-up errors echoed
/// secrets.
#[test]
fn arguments_are_usage_version_or_refused_and_errors_hide_secrets() {
    let dir = TempDir::new("args");
    for arg in ["--help", "-h"] {
        let out = binary(&dir, &[]).arg(arg).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{arg}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: rate-limiter"));
    }
    for arg in ["--version", "-V"] {
        let out = binary(&dir, &[]).arg(arg).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{arg}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("rate-limiter {}", env!("CARGO_PKG_VERSION"))
        );
    }
    for arg in ["--hepl", "serve", "-p"] {
        let out = binary(&dir, &[]).arg(arg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
    }
    for (name, value) in [
        ("ADMIN_TOKEN", "hunter2-short"),
        ("REDIS_URL", "mysql://app:hunter2@db/0"),
    ] {
        let out = binary(&dir, &[(name, value)]).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(name) && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }
}

#[test]
fn settings_are_read_from_a_dotenv_file() {
    let dir = TempDir::new("dotenv");
    std::fs::write(dir.path().join(".env"), "PORT=notaport\n").unwrap();
    let out = binary(&dir, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid setting PORT=\"notaport\""));

    std::fs::write(dir.path().join(".env"), "THIS IS NOT AN ENV FILE\n").unwrap();
    let out = binary(&dir, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read .env"));
}

/// `rate-limiter settings` prints every declared setting with the value in
/// force (the environment over `.env` over the default), secrets redacted,
/// and refuses a bad one as the service would.
#[test]
fn the_settings_subcommand_prints_every_setting_in_force() {
    let dir = TempDir::new("settings");
    std::fs::write(
        dir.path().join(".env"),
        "PORT=9100\nADMIN_TOKEN=dotenv-secret-0123456789\nLOG_LEVEL=debug\n",
    )
    .unwrap();
    let out = binary(
        &dir,
        &[
            ("LOG_LEVEL", "warn"),
            ("REDIS_URL", "redis://app:hunter2@redis.internal:6379/0"),
        ],
    )
    .arg("settings")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("hunter2") && !text.contains("dotenv-secret"),
        "{text}"
    );
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    assert!(line("PORT").starts_with("PORT=9100 ") && line("PORT").ends_with("# set"));
    assert!(
        line("LOG_LEVEL").starts_with("LOG_LEVEL=warn "),
        "the environment wins over .env"
    );
    assert!(line("ADMIN_TOKEN").starts_with("ADMIN_TOKEN=<redacted, 24 bytes>"));
    assert!(line("REDIS_URL").contains("redis://app:<redacted>@redis.internal:6379/0"));
    assert!(line("HOST").starts_with("HOST=0.0.0.0 ") && line("HOST").ends_with("# default"));
    let names = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(names, rate_limiter::config::list::SETTINGS.len());

    let out = binary(&dir, &[("PORT", "http")])
        .arg("settings")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid setting PORT=\"http\""));
    let help = binary(&dir, &[]).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("rate-limiter settings"));
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let dir = TempDir::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = binary(
        &dir,
        &[("HOST", "127.0.0.1"), ("PORT", &port), ("REDIS_PORT", "1")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("HOST and PORT"), "{stderr}");
}

#[tokio::test]
async fn the_binary_serves_and_stops_gracefully_on_sigterm() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("run");
    let mut child = serve(&dir, &redis, &[("LOG_LEVEL", "info")]);

    // The start-up line names the port chosen for PORT=0.
    let rx = log_lines(&mut child);
    let port = wait_for_port(&rx);

    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://127.0.0.1:{port}/api/resource"))
        .header("X-API-Key", "sk_live_secretsecret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    let log: Vec<String> = rx.try_iter().collect();
    let access = log
        .iter()
        .find(|l| l.contains("POST /api/resource"))
        .expect("one access log line per request");
    assert!(access.contains(" 200 "), "{access}");
    assert!(
        log.iter().all(|l| !l.contains("secretsecret")),
        "an API key reached the log: {log:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_rules_file() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("sighup");
    let rules = dir.path().join("rules.toml");
    let write = |limit: u32| {
        std::fs::write(
            &rules,
            format!(
                "[[policy]]\nname = \"p\"\nalgorithm = \"gcra\"\nlimit = {limit}\nwindow = \"1m\"\n"
            ),
        )
        .unwrap()
    };
    write(5);
    let mut child = serve(
        &dir,
        &redis,
        &[("RATE_LIMIT_CONFIG", rules.to_str().unwrap())],
    );
    let lines = log_lines(&mut child);
    let port = wait_for_port(&lines);
    let limit = || async {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/api/resource"))
            .header("X-API-Key", "k")
            .send()
            .await
            .unwrap();
        r.headers()["X-RateLimit-Limit"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(limit().await, "5");

    write(8);
    signal(&child, "-HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen_sighup = false;
    while !seen_sighup {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line");
        seen_sighup = line.contains("SIGHUP received");
        assert!(std::time::Instant::now() < deadline);
    }
    let reloaded = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a log line");
    assert!(reloaded.contains("rules: reloaded"), "{reloaded}");
    assert_eq!(limit().await, "8");

    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_audit_lines_hide_secrets() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("jsonlog");
    let token = "audit-token-abcdefghijklmnop";
    let mut child = serve(
        &dir,
        &redis,
        &[("LOG_FORMAT", "json"), ("ADMIN_TOKEN", token)],
    );
    let lines = log_lines(&mut child);
    let mut seen = Vec::new();
    let port = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a log line");
        let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        seen.push(line);
        if let Some(rest) = value["message"]
            .as_str()
            .and_then(|m| m.split("listening on 127.0.0.1:").nth(1))
        {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().unwrap();
        }
    };
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let r = client
        .post(format!("{base}/api/resource"))
        .header("X-API-Key", "sk_live_topsecretvalue")
        .send()
        .await
        .unwrap();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let r = client
        .put(format!(
            "{base}/admin/overrides/user/sk_live_topsecretvalue"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"limit": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    seen.extend(lines.try_iter());

    let objects: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let access = objects
        .iter()
        .find(|o| o["request_id"] == request_id.as_str())
        .expect("the access line of the request");
    assert_eq!(access["route"], "/api/resource");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["status"], 200);
    assert_eq!(access["strategy"], "user");
    assert_eq!(access["decision"], "allowed");
    assert!(access["latency_ms"].as_f64().unwrap() >= 0.0);
    let audit = objects
        .iter()
        .find(|o| o["target"] == "audit")
        .expect("an audit line");
    let message = audit["message"].as_str().unwrap();
    assert!(
        message.contains("actor=admin action=set_override"),
        "{message}"
    );
    for line in &seen {
        assert!(
            !line.contains(token),
            "the admin token reached the log: {line}"
        );
        assert!(
            !line.contains("topsecretvalue"),
            "an API key reached the log: {line}"
        );
    }
}

#[test]
fn config_check_validates_an_envoy_configuration_directory() {
    let dir = TempDir::new("check");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/ratelimit/config");
    let out = binary(&dir, &[])
        .args(["config", "check", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("all rate limit configs ok"));

    std::fs::write(dir.path().join("a.yaml"), "domain: d\n").unwrap();
    std::fs::write(dir.path().join("b.yaml"), "domain: d\n").unwrap();
    let path = dir.path().display().to_string();
    let out = binary(&dir, &[])
        .args(["config", "check", &path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("b.yaml: duplicate domain 'd' in config file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = binary(&dir, &[])
        .args(["config", "check", &path, "--merge-domain-configs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = binary(&dir, &[])
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_broken_envoy_configuration_stops_the_start_naming_the_file() {
    let dir = TempDir::new("broken-erl");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/x.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    ratelimit: {}\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let out = binary(
        &dir,
        &[
            ("RUNTIME_ROOT", &root),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("REDIS_PORT", "1"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("x.yaml: config error, unknown key 'ratelimit'"),
        "{stderr}"
    );
}
