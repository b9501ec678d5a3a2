//! Hot reload of the rules file: on SIGHUP, and when the file's contents
//! change (checked every [`POLL_INTERVAL`]; polling the contents rather than
//! watching inotify events also follows the symlink swaps with which
//! Kubernetes updates a mounted ConfigMap).
//!
//! A valid file replaces the rules for the next request; requests in flight
//! finish under the rules they started with (an atomic pointer swap, so no
//! request waits or fails). An invalid file is refused with the same message
//! as at start-up, and the rules in force stay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::web;

use crate::app::AppState;
use crate::config::RuntimeSettings;
use crate::limiter::rules::erl;
use crate::limiter::Rules;

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Applied,
    Unchanged,
    Refused(String),
}

/// Reads `path`; applies it if it differs from `last` and is valid.
pub fn reload_if_changed(path: &Path, last: &mut Option<String>, state: &AppState) -> Reloaded {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Reloaded::Refused(format!("{}: cannot read the file: {err}", path.display()))
        }
    };
    if last.as_deref() == Some(text.as_str()) {
        return Reloaded::Unchanged;
    }
    let result = Rules::parse(&path.display().to_string(), &text);
    // Remember the text even when it is refused, so a broken file is
    // reported once, not every second.
    *last = Some(text);
    match result {
        Ok(rules) => {
            let count = rules.policies().count();
            // The Envoy domains are not in this file: they stay (read and
            // written back as one change, see Limiter::update_rules).
            state
                .limiter
                .update_rules(|current| rules.with_erl(current.erl().clone()));
            state
                .limiter
                .metrics()
                .rules_reloads
                .with_label_values(&["success"])
                .inc();
            log::info!("rules: reloaded {} ({count} policies)", path.display());
            Reloaded::Applied
        }
        Err(err) => {
            state
                .limiter
                .metrics()
                .rules_reloads
                .with_label_values(&["failure"])
                .inc();
            log::error!(
                "rules: refused the new {}; the previous rules stay in force: {err}",
                path.display()
            );
            Reloaded::Refused(err.to_string())
        }
    }
}

/// Watches `path` for as long as the runtime that calls this runs (in
/// `main`, the life of the process).
pub fn spawn(path: PathBuf, state: web::Data<AppState>) {
    // Read now, not when the task first runs: the file may change between
    // start-up and the task's first poll, and that change must be seen.
    let mut last = std::fs::read_to_string(&path).ok();
    tokio::spawn(async move {
        let mut hangup = hangup_signal();
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = recv(&mut hangup) => {
                    log::info!("rules: SIGHUP received, reloading {}", path.display());
                    // A SIGHUP rereads the file even when it looks unchanged.
                    last = None;
                }
            }
            // Reading and parsing a file must not hold up the threads that
            // answer requests (a slow disk, a network volume, a huge file):
            // on a blocking thread, which gives back what `last` became.
            let (file, shared, mut taken) = (path.clone(), state.clone(), last.clone());
            last = tokio::task::spawn_blocking(move || {
                reload_if_changed(&file, &mut taken, &shared);
                taken
            })
            .await
            .unwrap_or(last);
        }
    });
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|err| log::warn!("rules: cannot listen for SIGHUP: {err}"))
        .ok()
}

#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs `task` every `period` (the first time at once), for as long as the
/// runtime that calls this runs; a late tick waits rather than bunching up.
pub fn every<F, Fut>(period: Duration, mut task: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            task().await;
        }
    });
}

/// Rereads the JWKS file of JWT identities every [`POLL_INTERVAL`]: rotated
/// keys apply at once, a broken file is refused (logged) and the keys in
/// force stay.
pub fn spawn_jwks(state: web::Data<AppState>) {
    if state.identifier.jwt().and_then(|j| j.jwks_file()).is_none() {
        return;
    }
    every(POLL_INTERVAL, move || {
        let state = state.clone();
        async move {
            // Off the runtime: a file read (see spawn).
            let _ = tokio::task::spawn_blocking(move || {
                let Some(verifier) = state.identifier.jwt() else {
                    return;
                };
                match verifier.reload_jwks() {
                    Ok(true) => log::info!("jwt: reloaded the JWKS file (keys rotated)"),
                    Ok(false) => {}
                    Err(err) => log::error!("jwt: the keys in force stay: {err}"),
                }
            })
            .await;
        }
    });
}

/// The files of an Envoy configuration directory with their contents.
pub type ErlFiles = Vec<(String, String)>;

/// Reads the Envoy configuration directory whole: (key, text) per file.
pub fn read_erl(settings: &RuntimeSettings) -> Result<(ErlFiles, Option<String>), String> {
    erl::read(settings).map_err(|err| err.to_string())
}

/// Says that `config` was loaded (at start-up or on reload): its warning,
/// the metrics, the log line.
pub fn erl_loaded(
    metrics: &crate::telemetry::EnvoyMetrics,
    config: &erl::Config,
    warning: Option<String>,
) {
    if let Some(warning) = warning {
        log::warn!("Envoy configuration: {warning}");
    }
    metrics.config_load_success.inc();
    metrics.config_loaded.set(1);
    log::info!(
        "Envoy configuration: loaded {} domains",
        config.domains.len()
    );
}

/// Applies the Envoy configuration directory if its files changed since
/// `last` and all of them are valid; otherwise the configuration in force
/// stays, and the error names the file and the problem.
pub fn reload_erl_if_changed(
    settings: &RuntimeSettings,
    last: &mut Option<ErlFiles>,
    state: &AppState,
) -> Reloaded {
    let metrics = &state.limiter.metrics().envoy;
    let refused = |message: String| {
        metrics.config_load_error.inc();
        log::error!("Error loading new configuration: {message}");
        Reloaded::Refused(message)
    };
    let (files, warning) = match read_erl(settings) {
        Ok(read) => read,
        Err(message) => {
            // Reported once per distinct failure.
            let marker = vec![(String::new(), message.clone())];
            if last.as_ref() == Some(&marker) {
                return Reloaded::Unchanged;
            }
            *last = Some(marker);
            return refused(message);
        }
    };
    if last.as_ref() == Some(&files) {
        return Reloaded::Unchanged;
    }
    let result = erl::compile(&files, settings);
    *last = Some(files);
    match result {
        Ok(config) => {
            erl_loaded(metrics, &config, warning);
            let config = std::sync::Arc::new(config);
            state
                .limiter
                .update_rules(|current| Rules::clone(current).with_erl(config));
            Reloaded::Applied
        }
        Err(err) => refused(err.to_string()),
    }
}

/// Watches the Envoy configuration directory every [`POLL_INTERVAL`]
/// (both of envoyproxy/ratelimit's watch modes, symlink swaps and
/// Kubernetes ConfigMap updates alike: the files' contents are compared).
pub fn spawn_erl(settings: RuntimeSettings, state: web::Data<AppState>, last: Option<ErlFiles>) {
    let last = std::sync::Arc::new(std::sync::Mutex::new(last));
    every(POLL_INTERVAL, move || {
        let (settings, state, last) = (settings.clone(), state.clone(), last.clone());
        async move {
            // Off the runtime: a directory read (see spawn).
            let _ = tokio::task::spawn_blocking(move || {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                reload_erl_if_changed(&settings, &mut last, &state);
            })
            .await;
        }
    });
}
