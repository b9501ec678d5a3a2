//! A circuit breaker in front of the store (Redis), in the core so that
//! every front end shares it. After `threshold` failures in a row
//! (timeouts, lost connections) it opens: for `cooldown` every call fails at
//! once instead of waiting out its timeout, so during an outage requests are
//! answered in microseconds by the failure mode. Then one call is let through
//! as a probe: success closes the breaker, failure opens it for another
//! cool-down. A successful health check closes it too.
//!
//! The probe is cancellation-safe: [`Breaker::admit`] hands out a
//! [`Permit`], and a probe permit dropped without a verdict (its request was
//! cancelled mid-call, e.g. the client reset the connection) frees the probe
//! slot. As a second line of defence a probe outstanding for longer than
//! `probe_ttl` is presumed lost and another one is admitted: the breaker can
//! never stay open for good.
//!
//! Every method that depends on time has an `_at(now)` form, so the tests
//! drive the clock instead of sleeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
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
    /// When the outstanding probe was admitted.
    probing_since: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    probe_ttl: Duration,
    /// Mirrors `state.open_until.is_some()` and `state.failures > 0`, so the
    /// healthy path reads one atomic and takes no lock.
    tripped: AtomicBool,
    /// A std Mutex: nothing is awaited while it is held.
    state: Mutex<State>,
}

/// The right to make one call. A probe permit dropped before
/// [`Permit::success`] or [`Permit::failure`] releases the probe slot.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    admission: Admission,
    settled: bool,
}

impl Permit<'_> {
    pub fn admission(&self) -> Admission {
        self.admission
    }

    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record_failure_at(Instant::now());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Neither success nor failure (cancelled, or an answer that says
        // nothing about Redis's health, such as a script error): let the
        // next call probe.
        if !self.settled && self.admission == Admission::Probe {
            self.breaker.release_probe();
        }
    }
}

impl Default for Breaker {
    /// The defaults of REDIS_BREAKER_FAILURES and REDIS_BREAKER_COOLDOWN_MS.
    fn default() -> Self {
        Breaker::new(3, Duration::from_millis(500), Duration::from_secs(1))
    }
}

impl Breaker {
    /// `probe_ttl`: how long a probe may stay unanswered before another one
    /// is let through (at least the call timeout).
    pub fn new(threshold: u32, cooldown: Duration, probe_ttl: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            probe_ttl,
            tripped: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a plain record
        // behind; it is still meaningful.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self) -> Permit<'_> {
        let admission = if self.tripped.load(Ordering::Acquire) {
            self.admit_at(Instant::now())
        } else {
            Admission::Go
        };
        Permit {
            breaker: self,
            admission,
            settled: false,
        }
    }

    fn admit_at(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match state.open_until {
            None => Admission::Go,
            Some(until) if now < until => Admission::Reject,
            Some(_) => match state.probing_since {
                Some(since) if now.saturating_duration_since(since) < self.probe_ttl => {
                    Admission::Reject
                }
                _ => {
                    state.probing_since = Some(now);
                    Admission::Probe
                }
            },
        }
    }

    pub fn is_open(&self) -> bool {
        self.tripped.load(Ordering::Acquire) && self.lock().open_until.is_some()
    }

    /// Redis answered (a guarded call, or a health check).
    pub fn record_success(&self) {
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

    fn record_failure_at(&self, now: Instant) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let was_probe = state.probing_since.take().is_some();
        if was_probe || (state.open_until.is_none() && state.failures >= self.threshold) {
            if state.open_until.is_none() {
                log::warn!(
                    "redis: circuit breaker open after {} failures in a row; probing every {:?}",
                    state.failures,
                    self.cooldown
                );
            }
            state.open_until = Some(now + self.cooldown);
        }
        self.tripped.store(true, Ordering::Release);
    }

    fn release_probe(&self) {
        self.lock().probing_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_millis(50);

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(threshold, COOLDOWN, Duration::from_secs(10))
    }

    #[test]
    fn opens_after_the_threshold_then_probes_once_per_cooldown() {
        let b = breaker(3);
        let t0 = Instant::now();
        assert_eq!(b.admit_at(t0), Admission::Go);
        b.record_failure_at(t0);
        b.record_failure_at(t0);
        assert_eq!(b.admit_at(t0), Admission::Go, "two failures: still closed");
        b.record_failure_at(t0);
        assert!(b.is_open());
        assert_eq!(b.admit_at(t0 + COOLDOWN / 2), Admission::Reject);
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.admit_at(t1), Admission::Probe);
        assert_eq!(b.admit_at(t1), Admission::Reject, "one probe at a time");
        b.record_failure_at(t1);
        assert_eq!(
            b.admit_at(t1 + COOLDOWN / 2),
            Admission::Reject,
            "a failed probe reopens"
        );
        assert_eq!(b.admit_at(t1 + COOLDOWN), Admission::Probe);
        b.record_success();
        assert!(!b.is_open());
        assert_eq!(b.admit().admission(), Admission::Go);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let now = Instant::now();
        b.record_failure_at(now);
        b.record_success();
        b.record_failure_at(now);
        assert_eq!(b.admit_at(now), Admission::Go);
    }

    /// Regression (issue 9, item 1): a probe whose call was cancelled left
    /// the probe flag set, and the breaker rejected every call for good.
    #[test]
    fn breaker_probe_cancelled_mid_call_frees_the_probe() {
        let b = breaker(1);
        b.record_failure_at(Instant::now() - COOLDOWN * 2);
        let permit = b.admit();
        assert_eq!(permit.admission(), Admission::Probe);
        drop(permit); // the request future was dropped mid-call
        let next = b.admit();
        assert_eq!(next.admission(), Admission::Probe, "a new probe goes out");
        next.success();
        assert!(!b.is_open());
    }

    #[test]
    fn breaker_lost_probe_expires() {
        let b = Breaker::new(1, COOLDOWN, Duration::from_secs(1));
        let t0 = Instant::now();
        b.record_failure_at(t0);
        assert_eq!(b.admit_at(t0 + COOLDOWN), Admission::Probe);
        // Never answered, never dropped (a stuck task).
        assert_eq!(b.admit_at(t0 + COOLDOWN * 2), Admission::Reject);
        assert_eq!(
            b.admit_at(t0 + COOLDOWN + Duration::from_secs(1)),
            Admission::Probe
        );
    }
}
