//! The dashboard in a real headless Chromium (Debian's chromium and
//! chromium-driver): it renders, its numbers move with traffic, the console
//! stays clean, nothing comes from outside the service, it fits a phone,
//! and the admin actions typed into it work (checked through the API).
//! Its stats endpoint names no identity.

mod support;

use serde_json::{json, Value};
use support::webdriver::Browser;
use support::{eventually, spawn_app, unique_key, RedisServer};

const TOKEN: &str = "dashboard-admin-token-0123456789";

fn number(text: &str) -> Option<u64> {
    text.replace([',', '.', '\u{a0}', ' '], "").parse().ok()
}

#[tokio::test]
async fn the_dashboard_shows_the_service_live_and_its_admin_actions_work() {
    let redis = RedisServer::start().await;
    // A token bucket of 5 a day: what is used stays used for hours, so no
    // window edge can refill it in the middle of the test.
    let app = spawn_app(
        &redis,
        &[
            ("ADMIN_TOKEN", TOKEN),
            ("RATE_LIMIT_USER_LIMIT", "5"),
            ("RATE_LIMIT_USER_WINDOW", "1d"),
            ("RATE_LIMIT_ALGORITHM", "token_bucket"),
        ],
    )
    .await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&app.url("/dashboard")).await;

    // It renders: live numbers, Redis up, the rules.
    browser
        .wait_text("#health", "Redis is up", |t| t == "healthy")
        .await;
    let before = number(
        &browser
            .wait_text("#total", "a decision count", |t| number(t).is_some())
            .await,
    )
    .unwrap();
    assert_eq!(browser.text("#redis-topology").await, "single");
    assert_eq!(browser.text("#rules-version").await, "#1");

    // Traffic: 5 allowed and 3 denied for one client, 4 allowed for another.
    let abuser = unique_key("dash-abuser");
    let other = unique_key("dash-other");
    for _ in 0..8 {
        app.post_resource(Some(&abuser)).await;
    }
    for _ in 0..4 {
        app.post_resource(Some(&other)).await;
    }
    browser
        .wait_text("#total", "the count moves with traffic", |t| {
            number(t).is_some_and(|n| n >= before + 12)
        })
        .await;
    browser
        .wait_text("#by-policy tbody", "a row of denials", |t| {
            t.contains("denied")
        })
        .await;

    // The top offenders need the token, typed in (never in the URL).
    assert!(browser.text("#top-table tbody").await.is_empty());
    browser.type_into("#token", TOKEN).await;
    browser.click("#token-form button[type=submit]").await;
    // The top offenders are counted per minute: should a minute begin
    // meanwhile, the abuser's next (denied) requests count in it.
    let started = std::time::Instant::now();
    while !browser.text("#top-table tbody").await.contains(&abuser) {
        assert!(
            started.elapsed().as_secs() < 15,
            "the abuser is not among the top offenders: {}",
            browser.text("#top-note").await
        );
        assert_eq!(app.post_resource(Some(&abuser)).await.status(), 429);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let place: Value = browser
        .execute(
            "return { href: location.href, local: localStorage.length, cookie: document.cookie, \
             field: document.getElementById('token').value };",
            json!([]),
        )
        .await;
    assert!(!place["href"].as_str().unwrap().contains(TOKEN), "{place}");
    assert_eq!(place["local"], 0, "nothing kept beyond the tab");
    assert_eq!(place["cookie"], "");
    assert_eq!(place["field"], "", "the field is emptied once used");

    // Look the abuser up: every policy, nothing left.
    browser.type_into("#lookup-id", &abuser).await;
    browser.click("#lookup-form button[type=submit]").await;
    browser
        .wait_text("#identity-name", "the identity shown", |t| {
            t.contains(&abuser)
        })
        .await;
    let remaining = || async {
        browser
            .execute(
                "return [...document.querySelectorAll('#identity-policies tbody tr')] \
                 .map(r => r.cells[4].textContent);",
                json!([]),
            )
            .await
    };
    assert_eq!(remaining().await, json!(["0"]));

    // Reset it: its limit is back, as the admin API says too.
    browser.click("#reset").await;
    browser
        .wait_text("#admin-message", "reset done", |t| t.starts_with("Reset:"))
        .await;
    // What the admin API says of the abuser: status and body.
    let ask = |what: &'static str| {
        let request = app.admin(
            TOKEN,
            reqwest::Method::GET,
            &format!("/admin/{what}/user/{abuser}"),
        );
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (_, report) = ask("identities").await;
    assert_eq!(report["policies"][0]["remaining"], 5, "{report}");
    eventually("the page shows 5 left", || async {
        remaining().await == json!(["5"])
    })
    .await;

    // Set an override, then remove it.
    browser.type_into("#override-limit", "100").await;
    browser.type_into("#override-window", "1m").await;
    browser.click("#override-form button[type=submit]").await;
    browser
        .wait_text("#admin-message", "override set", |t| {
            t.starts_with("Override set")
        })
        .await;
    let (status, stored) = ask("overrides").await;
    assert_eq!(status, 200);
    assert_eq!(stored["override"], json!({"limit": 100, "window": "1m"}));
    browser
        .wait_text("#identity-override", "the override shown", |t| {
            t.contains("100")
        })
        .await;
    browser.click("#remove-override").await;
    browser
        .wait_text("#admin-message", "override removed", |t| {
            t.starts_with("Override removed")
        })
        .await;
    assert_eq!(ask("overrides").await.0, 404);

    // Nothing came from anywhere but the service; the console is clean.
    let loaded: Value = browser
        .execute(
            "return [location.origin, performance.getEntriesByType('resource').map(e => e.name), \
             [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)];",
            json!([]),
        )
        .await;
    let origin = loaded[0].as_str().unwrap();
    let urls: Vec<&str> = loaded[1]
        .as_array()
        .unwrap()
        .iter()
        .chain(loaded[2].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        urls.iter().any(|u| u.ends_with("/dashboard/app.js")),
        "{urls:?}"
    );
    for url in &urls {
        assert!(
            url.starts_with(origin) || url.starts_with("data:"),
            "{url} is not from the service"
        );
    }
    let console = browser.console().await;
    let problems: Vec<_> = console
        .iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(problems.is_empty(), "console: {problems:?}");

    // A screenshot for the README (target/dashboard.png).
    browser.execute("window.scrollTo(0, 0);", json!([])).await;
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/dashboard.png"),
        browser.screenshot().await,
    )
    .unwrap();

    // A phone: nothing wider than the screen.
    browser.resize(390, 844).await;
    let fits: Value = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            json!([]),
        )
        .await;
    assert_eq!(fits, true, "the page scrolls sideways on a phone");
    browser.close().await;
}

/// Without ADMIN_TOKEN the page still shows the service, and says that the
/// admin API is off instead of offering its actions.
#[tokio::test]
async fn without_an_admin_token_the_page_says_the_admin_api_is_off() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[]).await;
    let browser = Browser::start(1024, 800).await;
    browser.goto(&app.url("/dashboard")).await;
    browser
        .wait_text("#health", "Redis is up", |t| t == "healthy")
        .await;
    browser
        .wait_text("#admin-message", "the admin API is off", |t| {
            t.contains("ADMIN_TOKEN")
        })
        .await;
    let disabled: Value = browser
        .execute(
            "return [...document.querySelectorAll('#admin button, #admin input')].every(e => e.disabled);",
            json!([]),
        )
        .await;
    assert_eq!(disabled, true, "no admin action is offered");
    assert!(browser
        .text("#top-note")
        .await
        .contains("ADMIN_TOKEN unset"));
    let console = browser.console().await;
    assert!(
        console.iter().all(|(level, _)| level != "SEVERE"),
        "console: {console:?}"
    );
    browser.close().await;
}

/// The stats behind the page carry counts, never an identity, and say when
/// the admin API is off.
#[tokio::test]
async fn the_stats_name_no_identity() {
    let redis = RedisServer::start().await;
    let app = spawn_app(&redis, &[("RATE_LIMIT_USER_LIMIT", "2")]).await;
    let key = unique_key("dash-secret");
    for _ in 0..3 {
        app.post_resource(Some(&key)).await;
    }
    let response = app.get("/dashboard/stats").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(&key), "{text}");
    let stats: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["admin"], false);
    assert_eq!(stats["redis"]["status"], "up");
    let counts = |decision: &str| {
        stats["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["strategy"] == "user" && d["decision"] == decision)
            .map(|d| d["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((counts("allowed"), counts("denied")), (2, 1), "{stats}");
    // The page and its assets: embedded, each with its type and a policy
    // that lets nothing else in.
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    }
}
