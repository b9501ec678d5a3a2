//! The OpenAPI document is the truth: Schemathesis (`st run`, every check,
//! positive and negative data, stateful links) against the running service,
//! once with the admin API and once without it. `./run_tests.sh` installs
//! Schemathesis in `.venv-tools/`; see `tests/schemathesis.toml` for the one
//! thing the schema cannot state.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{spawn_app, RedisServer};

const TOKEN: &str = "schemathesis-admin-token-01";

fn schemathesis() -> PathBuf {
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin/st");
    assert!(
        st.is_file(),
        "Schemathesis is not installed at {}: ./run_tests.sh installs it \
         (python3 -m venv .venv-tools && .venv-tools/bin/pip install schemathesis)",
        st.display()
    );
    st
}

/// Runs `st run` against `base`; panics with its report unless it is clean
/// and tested every operation of the document.
async fn run_schemathesis(base: String, admin: bool) {
    let doc: serde_json::Value = reqwest::get(format!("{base}/api-docs/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let st = schemathesis();
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(st);
        command
            .arg("--config-file")
            .arg(config)
            .arg("run")
            .arg(format!("{base}/api-docs/openapi.json"))
            .args(["--checks", "all"])
            .args(["--max-examples", "40"])
            // Fixed: a CI run checks the same cases every time.
            .args(["--seed", "20261128"])
            // One worker: with two threads CPython 3.11 sometimes fails inside
            // Schemathesis itself ("AST constructor recursion depth mismatch").
            .args(["--workers", "1"])
            // No examples remembered between runs: each run is the same.
            .args(["--generation-database", "none"])
            .arg("--no-shrink")
            .env("NO_COLOR", "1")
            .env("SCHEMATHESIS_TELEMETRY", "false");
        if admin {
            command.args(["--header", &format!("Authorization: Bearer {TOKEN}")]);
        }
        command.output().expect("run st")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Schemathesis found problems (admin: {admin}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It tested something: every operation of the document.
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "expected {operations} operations tested:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_the_truth_with_the_admin_api() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("ADMIN_TOKEN", TOKEN)]).await;
    run_schemathesis(app.address.clone(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_the_truth_without_the_admin_api() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    // Without ADMIN_TOKEN the document lists no admin path, and there is none.
    let doc: serde_json::Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| !p.starts_with("/admin")), "{paths:?}");
    assert_eq!(app.get("/admin/overrides").await.status(), 404);
    run_schemathesis(app.address.clone(), false).await;
}
