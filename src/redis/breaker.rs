//! A circuit breaker in front of Redis. After `threshold` failures in a row
//! (timeouts, lost connections) it opens: for `cooldown` every call fails at
//! once instead of waiting out its timeout, so during an outage requests are
//! answered in microseconds by the failure mode. Then one call is let through
//! as a probe: success closes the breaker, failure opens it for another
//! cool-down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Go,
    /// Open, cool-down over: this call is the one probe.
    Probe,
    /// Open: fail at once.
    Reject,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// Mirrors `state.open_until.is_some()` and `state.failures > 0`, so the
    /// healthy path reads one atomic and takes no lock.
    tripped: AtomicBool,
    /// A std Mutex: nothing is awaited while it is held.
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            tripped: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a plain record
        // behind; it is still meaningful.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn admit(&self) -> Admission {
        if !self.tripped.load(Ordering::Acquire) {
            return Admission::Go;
        }
        let mut state = self.lock();
        match state.open_until {
            None => Admission::Go,
            Some(until) if Instant::now() < until => Admission::Reject,
            Some(_) if state.probing => Admission::Reject,
            Some(_) => {
                state.probing = true;
                Admission::Probe
            }
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.tripped.load(Ordering::Acquire) && self.lock().open_until.is_some()
    }

    pub(crate) fn record_success(&self) {
        if !self.tripped.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if state.open_until.is_some() {
            log::info!("redis: circuit breaker closed, Redis answers again");
        }
        *state = State::default();
        self.tripped.store(false, Ordering::Release);
    }

    pub(crate) fn record_failure(&self) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let was_probe = std::mem::take(&mut state.probing);
        if was_probe || (state.open_until.is_none() && state.failures >= self.threshold) {
            if state.open_until.is_none() {
                log::warn!(
                    "redis: circuit breaker open after {} failures in a row; probing every {:?}",
                    state.failures,
                    self.cooldown
                );
            }
            state.open_until = Some(Instant::now() + self.cooldown);
        }
        self.tripped.store(true, Ordering::Release);
    }

    /// A probe that neither succeeded nor failed (e.g. a script error): let
    /// the next call probe.
    pub(crate) fn release_probe(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_probes_once_per_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert_eq!(b.admit(), Admission::Go);
        b.record_failure();
        b.record_failure();
        assert_eq!(b.admit(), Admission::Go, "two failures: still closed");
        b.record_failure();
        assert!(b.is_open());
        assert_eq!(b.admit(), Admission::Reject);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        b.record_failure();
        assert_eq!(b.admit(), Admission::Reject, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        b.record_success();
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admission::Go);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(60));
        b.record_failure();
        b.record_success();
        b.record_failure();
        assert_eq!(b.admit(), Admission::Go);
    }
}
