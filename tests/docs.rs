//! The documents against the code: `.env.example` and the README's settings
//! table are the renderings of `config::list::SETTINGS`; the README's
//! endpoint table lists every route the code registers, each answering as
//! the table says who may call it.
//!
//! `UPDATE_DOCS=1 cargo test --test docs` rewrites `.env.example` and the
//! README's settings table from the list (the endpoint table is written by
//! hand: it says what each route is for).

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use rate_limiter::config::list;
use reqwest::{Method, StatusCode};
use support::{rls, spawn_app, RedisServer};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn updating() -> bool {
    std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1")
}

/// The text between `<!-- name:begin -->` and `<!-- name:end -->`.
fn section<'a>(text: &'a str, name: &str) -> (usize, usize, &'a str) {
    let begin = format!("<!-- {name}:begin -->\n");
    let end = format!("<!-- {name}:end -->");
    let start = text
        .find(&begin)
        .unwrap_or_else(|| panic!("README.md has no {begin:?}"))
        + begin.len();
    let stop = start
        + text[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("README.md has no {end:?}"));
    (start, stop, &text[start..stop])
}

#[test]
fn env_example_is_the_declared_list() {
    let rendered = list::env_example();
    if updating() {
        std::fs::write(root().join(".env.example"), &rendered).unwrap();
    }
    let file = read(".env.example");
    assert!(
        file == rendered,
        ".env.example differs from src/config/list.rs: run UPDATE_DOCS=1 cargo test --test docs"
    );
    // Every setting a line, none only in a comment.
    let assigned: BTreeSet<&str> = file
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let declared: BTreeSet<&str> = list::SETTINGS.iter().map(|s| s.name).collect();
    assert_eq!(assigned, declared);
    // A name in a comment that looks like a setting (a prefix settings
    // use, e.g. REDIS_, JWT_) must be one.
    let prefixes: BTreeSet<&str> = declared
        .iter()
        .filter_map(|n| n.split_once('_').map(|(p, _)| p))
        .collect();
    // (A choice's value, e.g. CONFIG_TYPE's GRPC_XDS_SOTW, is no name.)
    let values: BTreeSet<&str> = list::SETTINGS
        .iter()
        .filter_map(|s| match s.kind {
            list::Kind::Choice(words) => Some(words.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    for line in file.lines().filter(|l| l.starts_with('#')) {
        let words =
            line.split(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()));
        for word in words.filter(|w| w.contains('_') && !values.contains(w)) {
            let prefix = word.split('_').next().unwrap_or_default();
            assert!(
                !prefixes.contains(prefix) || declared.contains(word),
                "{word} is named in a comment of .env.example but is no setting"
            );
        }
    }
}

#[test]
fn readme_settings_table_is_the_declared_list() {
    let readme = read("README.md");
    let (start, stop, table) = section(&readme, "settings");
    let rendered = list::markdown_table();
    if updating() && table != rendered {
        let updated = format!("{}{}{}", &readme[..start], rendered, &readme[stop..]);
        std::fs::write(root().join("README.md"), updated).unwrap();
        return;
    }
    assert!(
        table == rendered,
        "README.md's settings table differs from src/config/list.rs: run UPDATE_DOCS=1 cargo test --test docs"
    );
}

/// One row of the README's endpoint table.
#[derive(Debug)]
struct Endpoint {
    listener: String,
    methods: Vec<String>,
    path: String,
    who: String,
}

fn endpoints() -> Vec<Endpoint> {
    let readme = read("README.md");
    let (_, _, table) = section(&readme, "endpoints");
    table
        .lines()
        .skip(2)
        .filter(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<String> = line
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect();
            Endpoint {
                listener: cells[1].clone(),
                methods: cells[2]
                    .split(", ")
                    .map(|m| m.trim_matches('`').to_owned())
                    .collect(),
                path: cells[3].clone(),
                who: cells[4]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect()
}

/// The route literals registered in `src/http` (the admin scope's relative
/// to `/admin`), with `{_:.*}` written `{file}` as the table does.
fn registered_routes() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    let calls = [
        "web::resource(\"",
        "get_only(\"",
        "cfg.route(\"",
        ".route(\"/",
        "SwaggerUi::new(\"",
        ".url(\"",
        "Redoc::with_url(\"",
    ];
    let mut files = vec![
        root().join("src/http/mod.rs"),
        root().join("src/http/docs.rs"),
    ];
    files.push(root().join("src/http/admin/mod.rs"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let admin = file.ends_with("admin/mod.rs");
        for call in calls {
            for (i, _) in text.match_indices(call) {
                let rest = &text[i + call.len()..];
                let rest = rest.strip_prefix('/').map_or(rest, |r| r);
                let literal = &rest[..rest.find('"').unwrap()];
                let path = format!("/{}", literal.trim_start_matches('/'));
                if path == "/" {
                    continue;
                }
                let path = path.replace("{_:.*}", "{file}");
                routes.insert(if admin { format!("/admin{path}") } else { path });
            }
        }
    }
    routes
}

#[test]
fn endpoint_table_lists_every_registered_route() {
    let table: BTreeSet<String> = endpoints()
        .into_iter()
        .filter(|e| e.listener == "PORT")
        .map(|e| e.path)
        .collect();
    let code = registered_routes();
    assert!(code.len() >= 20, "the scan found the routes: {code:?}");
    assert_eq!(
        table, code,
        "README.md's endpoint table against src/http's routes"
    );
}

/// A path of the table made callable: parameters filled in, and the
/// descriptor the descriptor routes ask about.
fn concrete(path: &str) -> String {
    let path = path
        .replace("{strategy}", "user")
        .replace("{id}", "docs-probe")
        .replace("{domain}", "edge")
        .replace("{file}", "index.html");
    if path.starts_with("/admin/descriptors/") {
        format!("{path}?descriptor=api_key=docs-probe")
    } else {
        path
    }
}

/// Each row answers as the table says: the route exists with its methods,
/// and a caller outside its plane is refused while one inside is served.
#[tokio::test]
async fn endpoint_table_says_who_may_call_each_route() {
    let redis = RedisServer::start().await;
    const TOKEN: &str = "docs-admin-token-0123456789";
    // Loopback is neither an operator network nor a trusted proxy here, so
    // every refusal a plane makes shows.
    let envoy = root().join("deploy/envoy").display().to_string();
    let common = [
        ("ADMIN_TOKEN", TOKEN),
        ("RUNTIME_ROOT", envoy.as_str()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
    ];
    let outsider = spawn_app(
        &redis,
        &[&common[..], &[("OPERATOR_NETWORKS", "none")]].concat(),
    )
    .await;
    let insider = spawn_app(
        &redis,
        &[&common[..], &[("TRUSTED_PROXIES", "127.0.0.1")]].concat(),
    )
    .await;
    let rows = endpoints();
    assert!(rows.iter().any(|e| e.listener == "GRPC_PORT"));
    for row in rows.iter().filter(|e| e.listener == "PORT") {
        let path = concrete(&row.path);
        for method in &row.methods {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let send = |app: &support::TestApp, token: bool| {
                let mut request = app
                    .client
                    .request(method.clone(), app.url(&path))
                    .header("X-Forwarded-Uri", "/docs-probe")
                    .header("Content-Type", "application/json");
                if method == Method::POST || method == Method::PUT {
                    request = request.body(match path.as_str() {
                        "/json" => r#"{"domain":"edge","descriptors":[{"entries":[{"key":"api_key","value":"docs-probe"}]}]}"#,
                        _ if path.starts_with("/admin") => r#"{"limit":5,"window":"1h"}"#,
                        _ => "{}",
                    });
                }
                if token {
                    request = request.bearer_auth(TOKEN);
                }
                request.send()
            };
            let (outside, inside) = match row.who.as_str() {
                "public" => (send(&outsider, false).await, send(&outsider, false).await),
                "decision" => (send(&outsider, false).await, send(&insider, false).await),
                "operator" | "admin" => (send(&outsider, false).await, send(&outsider, true).await),
                other => panic!("{path}: unknown plane {other}"),
            };
            let (outside, inside) = (outside.unwrap().status(), inside.unwrap().status());
            let what = format!("{method} {path} ({})", row.who);
            // Served: a success or a redirect (to /docs/).
            assert!(
                inside.is_success() || inside.is_redirection(),
                "{what}: {inside} for a caller of its plane"
            );
            let refused = match row.who.as_str() {
                "public" => !matches!(outside.as_u16(), 401 | 403),
                "decision" => outside == StatusCode::FORBIDDEN,
                _ => outside == StatusCode::UNAUTHORIZED,
            };
            assert!(refused, "{what}: an outsider got {outside}");
        }
    }
    // The gRPC rows: each method answers on GRPC_PORT.
    let mut client = rls::client(&outsider).await;
    let answer = rls::ask(
        &mut client,
        rls::request("edge", vec![rls::descriptor(&[("k", "v")])]),
    )
    .await;
    assert_eq!(answer.overall_code, 1, "OK for an unknown domain");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", outsider.grpc_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for row in rows.iter().filter(|e| e.listener == "GRPC_PORT") {
        match row.path.as_str() {
            "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" => {}
            "grpc.health.v1.Health/Check" => {
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "ratelimit".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(status.status, 1, "SERVING");
            }
            "grpc.health.v1.Health/Watch" => {
                let mut stream = health
                    .watch(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(stream.message().await.unwrap().unwrap().status, 1);
            }
            other => panic!("a gRPC row this test does not know: {other}"),
        }
    }
}

/// GitHub's anchor of a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every `](#anchor)` link of the README names one of its headings, and
/// the table of contents lists every top-level section.
#[test]
fn readme_links_reach_its_headings() {
    let readme = read("README.md");
    let mut in_code = false;
    let mut headings = BTreeSet::new();
    let mut sections = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        if let Some(title) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            headings.insert(anchor(title));
            if line.starts_with("## ") {
                sections.push(anchor(title));
            }
        }
    }
    for (i, _) in readme.match_indices("](#") {
        let rest = &readme[i + 3..];
        let target = &rest[..rest.find(')').unwrap()];
        assert!(
            headings.contains(target),
            "README.md links to #{target}, a heading it lacks"
        );
    }
    let (_, contents) = readme.split_once("## Contents").unwrap();
    let contents = &contents[..contents.find("\n## ").unwrap()];
    for section in sections
        .iter()
        .filter(|s| !["find-your-way", "contents"].contains(&s.as_str()))
    {
        assert!(
            contents.contains(&format!("](#{section})")),
            "the table of contents lacks ## {section}"
        );
    }
}

/// The key examples of the README are the keys the code writes.
#[test]
fn readme_key_examples_are_the_keys_the_code_writes() {
    use rate_limiter::policy::{Algorithm, Policy};
    use std::num::NonZeroU32;
    use std::time::Duration;
    let readme = read("README.md");
    let subject = ("user".into(), "demo-key".to_owned());
    let policy = |algorithm| {
        Policy::new(
            "user",
            algorithm,
            NonZeroU32::new(20).unwrap(),
            Duration::from_secs(60),
            1,
        )
        .unwrap()
    };
    for algorithm in [Algorithm::FixedWindow, Algorithm::Gcra] {
        let key = rate_limiter::redis::keys::counter_key(&subject, &policy(algorithm));
        assert!(
            readme.contains(&format!("'{key}'")),
            "README.md shows no example of the key {key}"
        );
    }
    // Every example of a key in a redis-cli line is one of those forms.
    for line in readme.lines().filter(|l| l.starts_with("redis-cli")) {
        for quoted in line.split('\'').skip(1).step_by(2) {
            assert!(quoted.starts_with("rate:"), "{line}: {quoted}");
        }
    }
}

/// `src/lib.rs`'s layout list names every module of the crate.
#[test]
fn the_layout_list_names_every_module() {
    let lib = read("src/lib.rs");
    let (layout, _) = lib.split_once("pub mod").unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if ["lib", "main", "mod", "tests"].contains(&stem.as_str()) {
                continue;
            }
            let named = layout.contains(&format!("`{stem}`"))
                || layout.contains(&format!("[`{stem}`]"))
                || layout.contains(&format!("::{stem}`]"));
            if !named {
                missing.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    for dir in [
        "config", "envoy", "http", "identity", "limiter", "policy", "redis",
    ] {
        assert!(layout.contains(&format!("[`{dir}`]")), "{dir}");
    }
    assert!(
        missing.is_empty(),
        "src/lib.rs's layout does not name {missing:?}"
    );
}

/// No source file holds more than 400 lines before its unit tests: a file
/// that grows past it holds more than one idea.
#[test]
fn no_source_file_is_over_400_lines_of_code() {
    let mut stack = vec![root().join("src")];
    let mut long = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // A module's unit tests in a file of their own are test code.
            if path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.lines().take_while(|l| *l != "#[cfg(test)]").count();
            if code > 400 {
                long.push(format!(
                    "{} ({code})",
                    path.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(long.is_empty(), "over 400 lines of code: {long:?}");
}
