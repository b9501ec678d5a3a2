//! A real headless Chromium, driven over the W3C WebDriver protocol through
//! Debian's chromedriver (started on a free loopback port, stopped with the
//! [`Browser`]). The protocol is JSON over HTTP, spoken here with reqwest.
//!
//! chromedriver runs in a process group of its own, with the Chromium it
//! starts: stopping the browser kills the whole group, so a failed test
//! leaves no Chromium running.
//!
//! Why not fantoccini (the well-kept WebDriver client): the dashboard test
//! needs eight commands, one of them Chromium's own `/se/log`, which
//! fantoccini has no call for (a custom command either way); and
//! fantoccini 0.22 brings Mozilla's `webdriver` crate with ICU 1.5 beside
//! the ICU 2 already built for `url`, about thirty more crates to compile on
//! a 2-core CI machine, for what is here a hundred lines over the reqwest
//! the tests already use. Process handling (the group kill) would stay ours
//! in any case.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::{free_port, TempDir};

/// The W3C name of an element reference in a reply.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver's JSON reply to `request`.
async fn reply(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("chromedriver answers")
        .json()
        .await
        .expect("a JSON reply")
}

/// chromedriver and everything it started: killed together when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Browser {
    driver: Driver,
    http: reqwest::Client,
    session: String,
    /// chromedriver's and Chromium's temporary files (the profile
    /// included): removed with the browser, after chromedriver stops.
    _temp: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session of `width` x
    /// `height` that keeps the console log.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        // Chromium puts its profile and a socket in TMPDIR.
        let temp = TempDir::short();
        let driver = Command::new(
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned()),
        )
        .arg(format!("--port={port}"))
        .env("TMPDIR", temp.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Driver)
        .expect("chromedriver (Debian package chromium-driver; ./run_tests.sh installs it)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                format!("--window-size={width},{height}"),
            ],
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            options["binary"] = json!(binary);
        } else if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let created = reply(http.post(format!("{base}/session")).json(&json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        })))
        .await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _temp: temp,
        }
    }

    /// One WebDriver command; its `value`.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = reply(request).await;
        if reply["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT].as_str().expect("an element").to_owned()
    }

    /// `action` (click, clear, value) on the element `id`.
    async fn on_element(&self, id: &str, action: &str, body: Value) {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/{action}"),
            Some(body),
        )
        .await;
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.on_element(&id, "click", json!({})).await;
    }

    /// Clears the input `css` selects and types `text` into it, as a user
    /// does (key events).
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.on_element(&id, "clear", json!({})).await;
        self.on_element(&id, "value", json!({ "text": text })).await;
    }

    /// The text content of the element `css` selects ("" when none).
    pub async fn text(&self, css: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits (up to 15 s) until `check` holds for the text of `css`.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{what}: {css} still says {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser console so far (each entry's level and message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64"))
            .expect("a PNG")
    }

    /// Ends the session (Chromium quits); chromedriver stops with the
    /// browser.
    pub async fn close(self) {
        self.command(reqwest::Method::DELETE, "", None).await;
    }
}
