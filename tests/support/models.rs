//! Reference models of the four algorithms, written from their definitions
//! rather than from the Lua: `retry_after`, `reset` and `remaining` are found
//! by searching (try every later millisecond, every count) instead of by the
//! closed formulas the scripts use. Property tests drive a model and the
//! script with the same requests and require the same answers.

/// What a model answers for one request: the common reply shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub allowed: bool,
    pub remaining: u64,
    pub reset: u64,
    pub retry_after: u64,
}

pub trait Model {
    /// Would `cost` fit at `now`?
    fn fits(&self, now: u64, cost: u64) -> bool;
    /// Takes `cost` at `now` (only called when it fits).
    fn charge(&mut self, now: u64, cost: u64);
    /// Units left at `now` (before any charge).
    fn remaining(&self, now: u64) -> u64;
    /// ms from `now` until the full limit is back.
    fn reset(&self, now: u64) -> u64;
    /// How far ahead a search may need to look.
    fn horizon(&self) -> u64;

    /// One request: the decision, then (if allowed and cost > 0) the charge.
    fn request(&mut self, now: u64, cost: u64) -> Reply {
        if self.fits(now, cost) {
            if cost > 0 {
                self.charge(now, cost);
            }
            Reply {
                allowed: true,
                remaining: self.remaining(now),
                reset: self.reset(now),
                retry_after: 0,
            }
        } else {
            let retry_after = (1..=self.horizon())
                .find(|t| self.fits(now + t, cost))
                .expect("a request within the limit fits eventually");
            Reply {
                allowed: false,
                remaining: self.remaining(now),
                reset: self.reset(now),
                retry_after,
            }
        }
    }
}

/// Smallest t >= 0 (ms) at which `full(now + t)` holds.
fn first_ms(now: u64, horizon: u64, full: impl Fn(u64) -> bool) -> u64 {
    (0..=horizon)
        .find(|t| full(now + t))
        .expect("the limit refills within the horizon")
}

pub struct FixedWindow {
    pub limit: u64,
    pub window: u64,
    start: u64,
    used: u64,
}

impl FixedWindow {
    pub fn new(limit: u64, window: u64) -> Self {
        FixedWindow {
            limit,
            window,
            start: u64::MAX,
            used: 0,
        }
    }

    fn used_at(&self, now: u64) -> u64 {
        if now - now % self.window == self.start {
            self.used
        } else {
            0
        }
    }
}

impl Model for FixedWindow {
    fn fits(&self, now: u64, cost: u64) -> bool {
        self.used_at(now) + cost <= self.limit
    }
    fn charge(&mut self, now: u64, cost: u64) {
        self.used = self.used_at(now) + cost;
        self.start = now - now % self.window;
    }
    fn remaining(&self, now: u64) -> u64 {
        // (A debit may have counted past the limit.)
        self.limit.saturating_sub(self.used_at(now))
    }
    /// By definition the end of the current window, used or not.
    fn reset(&self, now: u64) -> u64 {
        self.window - now % self.window
    }
    fn horizon(&self) -> u64 {
        2 * self.window
    }
}

/// The weighted two-window counter: every fixed window's count is kept.
pub struct SlidingWindow {
    pub limit: u64,
    pub window: u64,
    counts: std::collections::HashMap<u64, u64>,
}

impl SlidingWindow {
    pub fn new(limit: u64, window: u64) -> Self {
        SlidingWindow {
            limit,
            window,
            counts: Default::default(),
        }
    }

    pub fn estimate(&self, now: u64) -> u64 {
        let start = now - now % self.window;
        let current = self.counts.get(&start).copied().unwrap_or(0);
        let previous = start
            .checked_sub(self.window)
            .and_then(|p| self.counts.get(&p).copied())
            .unwrap_or(0);
        let left_of_previous = start + self.window - now;
        previous * left_of_previous / self.window + current
    }
}

impl Model for SlidingWindow {
    fn fits(&self, now: u64, cost: u64) -> bool {
        self.estimate(now) + cost <= self.limit
    }
    fn charge(&mut self, now: u64, cost: u64) {
        *self.counts.entry(now - now % self.window).or_default() += cost;
    }
    fn remaining(&self, now: u64) -> u64 {
        self.limit.saturating_sub(self.estimate(now))
    }
    fn reset(&self, now: u64) -> u64 {
        first_ms(now, self.horizon(), |t| self.estimate(t) == 0)
    }
    fn horizon(&self) -> u64 {
        // A debit's counts decay within the next window too.
        2 * self.window + 1
    }
}

/// Tokens as an exact fraction: `units` / window tokens (below zero after
/// a debit that took more than there was).
pub struct TokenBucket {
    pub limit: u64,
    pub window: u64,
    units: i128,
    at: u64,
}

impl TokenBucket {
    pub fn new(limit: u64, window: u64) -> Self {
        TokenBucket {
            limit,
            window,
            units: i128::from(limit * window),
            at: 0,
        }
    }

    /// Tokens × window at `now`: refilled at `limit` units per ms, capped.
    fn units_at(&self, now: u64) -> i128 {
        let refill = i128::from(now.saturating_sub(self.at)) * i128::from(self.limit);
        (self.units + refill).min(i128::from(self.limit * self.window))
    }
}

impl Model for TokenBucket {
    fn fits(&self, now: u64, cost: u64) -> bool {
        self.units_at(now) >= i128::from(cost * self.window)
    }
    fn charge(&mut self, now: u64, cost: u64) {
        self.units = self.units_at(now) - i128::from(cost * self.window);
        self.at = now;
    }
    fn remaining(&self, now: u64) -> u64 {
        (self.units_at(now).max(0) / i128::from(self.window)) as u64
    }
    fn reset(&self, now: u64) -> u64 {
        first_ms(now, self.horizon(), |t| {
            self.units_at(t) == i128::from(self.limit * self.window)
        })
    }
    fn horizon(&self) -> u64 {
        // A debit's deficit (up to 60 limits in the property tests) refills
        // at the limit per window.
        64 * self.window + 1
    }
}

/// GCRA with the emission interval rounded up to whole microseconds.
pub struct Gcra {
    pub limit: u64,
    pub window: u64,
    tat_us: u64,
}

impl Gcra {
    pub fn new(limit: u64, window: u64) -> Self {
        Gcra {
            limit,
            window,
            tat_us: 0,
        }
    }

    fn interval(&self) -> u64 {
        (self.window * 1000).div_ceil(self.limit)
    }

    fn fits_us(&self, now_us: u64, cost: u64) -> bool {
        self.tat_us.max(now_us) + cost * self.interval() - now_us <= self.limit * self.interval()
    }
}

impl Model for Gcra {
    fn fits(&self, now: u64, cost: u64) -> bool {
        self.fits_us(now * 1000, cost)
    }
    fn charge(&mut self, now: u64, cost: u64) {
        self.tat_us = self.tat_us.max(now * 1000) + cost * self.interval();
    }
    fn remaining(&self, now: u64) -> u64 {
        (0..=self.limit)
            .rev()
            .find(|k| self.fits_us(now * 1000, *k))
            .unwrap_or(0)
    }
    fn reset(&self, now: u64) -> u64 {
        first_ms(now, self.horizon(), |t| self.tat_us <= t * 1000)
    }
    fn horizon(&self) -> u64 {
        // A debit's meter may be far ahead (up to 60 limits in the
        // property tests).
        64 * self.window + 2
    }
}
