//! What a store reports for one identity under one policy, and the
//! client-facing numbers derived from it.

use std::time::Duration;

use super::Algorithm;

/// The state of one identity under one policy, as the store reports it
/// (the common reply of every algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// This policy alone would allow the request.
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the full limit is available again.
    pub reset: Duration,
    /// Until this policy would allow the same request; zero when it does.
    pub retry_after: Duration,
    /// The store's clock at the decision, in ms since the Unix epoch.
    pub now_ms: u64,
}

impl Quota {
    /// When the full limit is back, in Unix seconds (rounded up, so a client
    /// that waits until then is never early).
    pub fn reset_at_unix(&self) -> u64 {
        (self.now_ms + self.reset.as_millis() as u64).div_ceil(1000)
    }

    /// Seconds until the full limit is back, rounded up.
    pub fn reset_secs(&self) -> u64 {
        (self.reset.as_millis() as u64).div_ceil(1000)
    }

    /// `Retry-After` in whole seconds: rounded up, and at least 1, so that a
    /// client honouring it is never refused again for being early.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_millis() as u64).div_ceil(1000).max(1)
    }

    /// The `t` of the IETF `RateLimit` field (draft-ietf-httpapi-ratelimit-
    /// headers-11, section 4.1.2): the effective window, the seconds within
    /// which the caller can use no more than `remaining`, i.e. until the
    /// available quota next grows. Rounded up (a client that waits it out
    /// is never early):
    /// - denied: until the same request fits (= `Retry-After`);
    /// - fixed window: until the window ends (the whole limit comes back);
    /// - token bucket, GCRA: until the next whole unit refills, one emission
    ///   interval (window / limit) when the bucket is full;
    /// - sliding window: the previous window's weight frees units one by one
    ///   as it slides out; the store reports when the estimate is empty, so
    ///   `t` is the mean time per unit until then (exact while only the
    ///   previous window weighs, an estimate otherwise).
    pub fn effective_window_secs(&self, algorithm: Algorithm, window: Duration) -> u64 {
        if !self.allowed {
            return self.retry_after_secs();
        }
        let reset_ms = self.reset.as_millis() as u64;
        let used = u64::from(self.limit.saturating_sub(self.remaining));
        let ms = match algorithm {
            Algorithm::FixedWindow => reset_ms,
            Algorithm::TokenBucket | Algorithm::Gcra => {
                let interval = (window.as_millis() as u64).div_ceil(u64::from(self.limit.max(1)));
                if used == 0 {
                    interval
                } else {
                    reset_ms.saturating_sub((used - 1) * interval)
                }
            }
            Algorithm::SlidingWindow if used == 0 => reset_ms,
            Algorithm::SlidingWindow => reset_ms.div_ceil(used),
            // Slots are not a rate: the lease's time-to-live is the span
            // over which one is surely back.
            Algorithm::Concurrency => window.as_millis() as u64,
        };
        ms.div_ceil(1000).max(1)
    }

    /// Is `self` closer to exhaustion than `other`? Compares the fraction
    /// left (remaining / limit), then the absolute remaining.
    pub fn tighter_than(&self, other: &Quota) -> bool {
        let mine = u64::from(self.remaining) * u64::from(other.limit);
        let theirs = u64::from(other.remaining) * u64::from(self.limit);
        mine < theirs || (mine == theirs && self.remaining < other.remaining)
    }
}
