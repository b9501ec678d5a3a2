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
            state.limiter.replace_rules(rules);
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
                _ = ticker.tick() => {
                    reload_if_changed(&path, &mut last, &state);
                }
                Some(()) = recv(&mut hangup) => {
                    log::info!("rules: SIGHUP received, reloading {}", path.display());
                    // A SIGHUP rereads the file even when it looks unchanged.
                    last = None;
                    reload_if_changed(&path, &mut last, &state);
                }
            }
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
            let Some(verifier) = state.identifier.jwt() else {
                return;
            };
            match verifier.reload_jwks() {
                Ok(true) => log::info!("jwt: reloaded the JWKS file (keys rotated)"),
                Ok(false) => {}
                Err(err) => log::error!("jwt: the keys in force stay: {err}"),
            }
        }
    });
}
