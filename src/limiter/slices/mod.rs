//! Quota slices: a hot subject's decisions made without Redis, never
//! admitting more than the limit (README "Hot keys: quota slices").
//!
//! A policy with `slices = true` is spent differently: an instance takes a
//! slice of what is left of the counter in one script call
//! (`lua/slice.lua`: the counter counts the slice as spent), spends it on
//! its own requests, takes the next when it runs out, and gives back what it
//! did not spend (`back`) when the slice expires ([`LIFETIME_MS`], or a
//! fixed window's end), when the policy's limit changes, or at stop.
//!
//! Exact from above: Redis counts every unit taken and an instance admits
//! only units it took, so all instances together never admit more than the
//! counter allows, also when one crashes (its slice is spent, as far as
//! Redis knows). A fixed window's unit is never spent after the window's
//! end (the slice expires then by the instance's monotonic clock, measured
//! from before the call), nor given back into the next (the script refuses).
//!
//! The bound: a request may be refused that an exact counter would admit
//! while other instances hold unspent units, at most their slices' units,
//! for at most [`LIFETIME_MS`] plus a sweep ([`SWEEP_INTERVAL`]); a crashed
//! instance's until its window ends (a bucket refills it); after an empty
//! take, local refusals for at most [`EMPTY_MS`]. Slices are sized to
//! about [`TARGET_MS`] of the instance's own rate (growing at most fourfold
//! per take) and at most 1/[`SHARE`] of the remainder, so the last units go
//! in slices of one. At most [`MAX_CELLS`] subjects are sliced at once
//! (others are decided exactly), and twice as many give-backs wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Algorithm, Counter, Entry, Policy, Quota, SliceTaken, StoreError};
use crate::telemetry::Metrics;

mod back;
use back::Give;

/// How long a slice may be spent before its unspent units go back.
pub const LIFETIME_MS: u64 = 1000;
/// A slice is sized to last about this long at the instance's own rate.
pub const TARGET_MS: u64 = 100;
/// A slice is never more than this fraction of what is left (but the units
/// one request needs).
pub const SHARE: u64 = 8;
/// The most units one slice asks for.
const MAX_WANT: u64 = 1 << 24;
/// After a take found too few units, refuse locally this long at most.
pub const EMPTY_MS: u64 = 100;
/// How often expired slices are given back and idle subjects dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Subjects sliced at once, at most.
pub const MAX_CELLS: usize = 10_000;

/// The local clock, in ms: monotonic in production; set by hand in the
/// model tests (where it is also the store's clock).
#[derive(Clone)]
pub enum Clock {
    Real(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now(&self) -> u64 {
        match self {
            Clock::Real(start) => start.elapsed().as_millis() as u64,
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// The store's clock to use: its own, or the simulated one.
    fn store_now(&self) -> Option<u64> {
        match self {
            Clock::Real(_) => None,
            Clock::Manual(ms) => Some(ms.load(Ordering::Relaxed)),
        }
    }
}

/// Which counter a slice is of: the subject and the policy's name,
/// algorithm and window (its key in the store).
type CellKey = (Entry, String, Algorithm, u64);

/// One sliced counter, as this instance holds it.
struct Cell {
    subject: Entry,
    state: Mutex<State>,
    /// Held while a slice is being taken: one take per counter at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    slice: Option<Slice>,
    /// The last slice's size, when it was taken, and what it spent.
    last: Option<(u64, u64, u64)>,
    /// A take found too few units: refuse locally until then (local ms),
    /// with this answer (and when it was given).
    empty: Option<(u64, Quota, Arc<Policy>, u64)>,
    last_used: u64,
}

struct Slice {
    policy: Arc<Policy>,
    units: u64,
    spent: u64,
    size: u64,
    epoch: i64,
    /// Local ms after which it may not be spent.
    expires: u64,
    /// The store's ms after which it may not be given back (0: never).
    until_ms: u64,
    /// The counter as the take left it, and when (local ms).
    quota: Quota,
    taken_at: u64,
}

impl Slice {
    /// What the counter looks like from here: what is left in the store
    /// plus what this slice still holds.
    fn view(&self, now: u64) -> Quota {
        let elapsed = now.saturating_sub(self.taken_at);
        Quota {
            allowed: true,
            remaining: (u64::from(self.quota.remaining) + self.units).min(u64::from(u32::MAX))
                as u32,
            reset: self
                .quota
                .reset
                .saturating_sub(Duration::from_millis(elapsed)),
            retry_after: Duration::ZERO,
            now_ms: self.quota.now_ms + elapsed,
            ..self.quota
        }
    }
}

/// Units a request took from a slice: given back to the slice if the
/// request is refused by another of its policies.
pub struct Hold {
    cell: Arc<Cell>,
    units: u64,
    /// The slice's: where the units go back if it is gone.
    policy: Arc<Policy>,
    epoch: i64,
    until_ms: u64,
}

/// A sliced policy's answer for one request.
pub struct Spent {
    pub quota: Quota,
    /// The units taken (none when refused).
    pub hold: Option<Hold>,
}

/// Every slice this instance holds.
pub struct Slices {
    cells: Mutex<HashMap<CellKey, Arc<Cell>>>,
    pending: Mutex<Vec<Give>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// The most units one slice held (the bound the model tests check).
    largest: AtomicU64,
}

impl Slices {
    pub fn new(clock: Clock, metrics: Arc<Metrics>) -> Self {
        Slices {
            cells: Mutex::default(),
            pending: Mutex::default(),
            clock,
            metrics,
            largest: AtomicU64::new(0),
        }
    }

    /// The most units one slice taken by this instance held.
    pub fn largest(&self) -> u64 {
        self.largest.load(Ordering::Relaxed)
    }

    fn name(policy: &Policy) -> &str {
        policy.label().map_or(policy.name(), |l| &l.stats_key)
    }

    /// The cell of `counter`'s counter; None when [`MAX_CELLS`] are held.
    fn cell(&self, counter: &Counter<'_>) -> Option<Arc<Cell>> {
        let key: CellKey = (
            counter.subject.clone(),
            counter.policy.name().to_owned(),
            counter.policy.algorithm(),
            counter.policy.window_ms(),
        );
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = cells.get(&key) {
            return Some(cell.clone());
        }
        if cells.len() >= MAX_CELLS {
            return None;
        }
        let cell = Arc::new(Cell {
            subject: counter.subject.clone(),
            state: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        });
        cells.insert(key, cell.clone());
        Some(cell)
    }

    /// Spends `counter.cost` units (> 0) of its slice, first taking a slice
    /// with `take(need, want, store clock)` (a call of
    /// [`super::Store::take_slice`]) if this one cannot pay. None: too many
    /// subjects are sliced; decide this one exactly.
    pub async fn spend<F, Fut>(
        &self,
        counter: &Counter<'_>,
        take: F,
    ) -> Result<Option<Spent>, StoreError>
    where
        F: FnOnce(u64, u64, Option<u64>) -> Fut,
        Fut: std::future::Future<Output = Result<SliceTaken, StoreError>>,
    {
        let policy = counter.policy;
        let Some(cell) = self.cell(counter) else {
            return Ok(None);
        };
        let need = counter.cost.max(1) as u64;
        if let Some(spent) = self.local(&cell, policy, need) {
            return Ok(Some(spent));
        }
        let _taking = cell.fetching.lock().await;
        // Another request may have taken one meanwhile.
        if let Some(spent) = self.local(&cell, policy, need) {
            return Ok(Some(spent));
        }
        let sent = self.clock.now();
        let want = {
            let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = state.slice.take() {
                state.last = Some((old.size, old.taken_at, old.spent));
                self.set_aside(&cell.subject, old);
            }
            match state.last {
                Some((size, taken_at, spent)) => {
                    let lasted = sent.saturating_sub(taken_at).max(1);
                    (spent.saturating_mul(TARGET_MS) / lasted).clamp(1, size.saturating_mul(4))
                }
                None => 1,
            }
            .clamp(need, MAX_WANT.max(need))
        };
        let name = Self::name(policy);
        let taken = take(need, want, self.clock.store_now()).await?;
        let policy = Arc::new(policy.clone());
        let metrics = &self.metrics.slices;
        let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_used = sent;
        if taken.granted < need {
            metrics.calls.with_label_values(&[name, "empty"]).inc();
            let wait = (taken.quota.retry_after.as_millis() as u64).clamp(1, EMPTY_MS);
            state.empty = Some((sent + wait, taken.quota, policy, sent));
            return Ok(Some(Spent {
                quota: taken.quota,
                hold: None,
            }));
        }
        metrics.calls.with_label_values(&[name, "taken"]).inc();
        self.largest.fetch_max(taken.granted, Ordering::Relaxed);
        metrics
            .units
            .with_label_values(&[name, "taken"])
            .inc_by(taken.granted);
        metrics
            .units
            .with_label_values(&[name, "spent"])
            .inc_by(need);
        let reset = taken.quota.reset.as_millis() as u64;
        let fixed = policy.algorithm() == Algorithm::FixedWindow;
        let slice = Slice {
            policy: policy.clone(),
            units: taken.granted - need,
            spent: need,
            size: taken.granted,
            epoch: taken.epoch,
            // A fixed window's units die with it: measured from before the
            // call, so the slice expires no later than the window by any
            // clock.
            expires: sent
                + if fixed {
                    reset.min(LIFETIME_MS)
                } else {
                    LIFETIME_MS
                },
            until_ms: if fixed { taken.quota.now_ms + reset } else { 0 },
            quota: taken.quota,
            taken_at: sent,
        };
        let quota = slice.view(sent);
        state.empty = None;
        state.slice = Some(slice);
        Ok(Some(Spent {
            quota,
            hold: Some(Hold {
                cell: cell.clone(),
                units: need,
                policy: policy.clone(),
                epoch: taken.epoch,
                until_ms: state.slice.as_ref().map_or(0, |s| s.until_ms),
            }),
        }))
    }

    /// The answer of `cell`'s slice for `need` units under `policy`, if it
    /// can give one without the store.
    fn local(&self, cell: &Arc<Cell>, policy: &Policy, need: u64) -> Option<Spent> {
        let now = self.clock.now();
        let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_used = now;
        let name = Self::name(policy);
        if let Some(slice) = &mut state.slice {
            if now < slice.expires && slice.policy.limit() == policy.limit() && slice.units >= need
            {
                slice.units -= need;
                slice.spent += need;
                let metrics = &self.metrics.slices;
                metrics
                    .units
                    .with_label_values(&[name, "spent"])
                    .inc_by(need);
                metrics
                    .decisions
                    .with_label_values(&[name, "allowed"])
                    .inc();
                return Some(Spent {
                    quota: slice.view(now),
                    hold: Some(Hold {
                        cell: cell.clone(),
                        units: need,
                        policy: slice.policy.clone(),
                        epoch: slice.epoch,
                        until_ms: slice.until_ms,
                    }),
                });
            }
            return None;
        }
        match &state.empty {
            Some((until, quota, taken_under, at))
                if now < *until && taken_under.limit() == policy.limit() =>
            {
                let elapsed = Duration::from_millis(now - at);
                self.metrics
                    .slices
                    .decisions
                    .with_label_values(&[name, "denied"])
                    .inc();
                Some(Spent {
                    quota: Quota {
                        reset: quota.reset.saturating_sub(elapsed),
                        retry_after: quota
                            .retry_after
                            .saturating_sub(elapsed)
                            .max(Duration::from_millis(1)),
                        now_ms: quota.now_ms + elapsed.as_millis() as u64,
                        ..*quota
                    },
                    hold: None,
                })
            }
            _ => None,
        }
    }

    /// Gives `hold`'s units back to its slice (its request was refused by
    /// another policy), or to the store when that slice is gone.
    pub fn unspend(&self, hold: Hold) {
        let now = self.clock.now();
        let mut state = hold.cell.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slice) = &mut state.slice {
            // The same life of the counter and, for a fixed window, the
            // same window: a unit of one window is never spent in the next.
            if slice.epoch == hold.epoch && slice.until_ms == hold.until_ms && now < slice.expires {
                slice.units += hold.units;
                slice.spent = slice.spent.saturating_sub(hold.units);
                return;
            }
        }
        drop(state);
        self.queue(Give {
            subject: hold.cell.subject.clone(),
            policy: hold.policy,
            units: hold.units,
            epoch: hold.epoch,
            until_ms: hold.until_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use std::num::NonZeroU32;

    fn policy() -> Policy {
        Policy::new(
            "hot",
            Algorithm::FixedWindow,
            NonZeroU32::new(1000).unwrap(),
            Duration::from_secs(10),
            1,
        )
        .unwrap()
        .with_slices(true)
        .unwrap()
    }

    /// A take from a counter with `left` units, its window ending `reset`
    /// ms after `now`.
    fn taken(granted: u64, now: u64, reset: u64) -> SliceTaken {
        SliceTaken {
            granted,
            quota: Quota {
                allowed: granted > 0,
                limit: 1000,
                remaining: 500,
                reset: Duration::from_millis(reset),
                retry_after: Duration::ZERO,
                now_ms: now,
            },
            epoch: 7,
        }
    }

    /// A unit held by a request its other policy refused goes back to its
    /// slice; but not into the next window's slice (it belongs to its own
    /// window), and not after its slice expired: then it waits to be given
    /// back to the store, which refuses it past the window's end.
    #[tokio::test]
    async fn a_held_unit_goes_back_only_into_its_own_window() {
        let clock = Arc::new(AtomicU64::new(1_000));
        let slices = Slices::new(Clock::Manual(clock.clone()), Arc::new(Metrics::new()));
        let policy = policy();
        let subject: Entry = ("user".into(), "k".into());
        let counter = Counter {
            subject: &subject,
            policy: &policy,
            cost: 1,
            lease: None,
        };
        // A slice of 10 in a window ending 50 ms from now.
        let spent = slices
            .spend(&counter, |_, _, _| async { Ok(taken(10, 1_000, 50)) })
            .await
            .unwrap()
            .unwrap();
        let hold = spent.hold.unwrap();
        assert_eq!(slices.held(), 9);
        slices.unspend(hold);
        assert_eq!(slices.held(), 10, "back into its slice");

        let hold = slices
            .spend(&counter, |_, _, _| async { unreachable!("the slice pays") })
            .await
            .unwrap()
            .unwrap()
            .hold
            .unwrap();
        // The window ends: the next request takes a slice of the next one.
        clock.store(1_060, Ordering::Relaxed);
        slices
            .spend(&counter, |_, _, _| async { Ok(taken(4, 1_060, 10_000)) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slices.held(), 3);
        slices.unspend(hold);
        assert_eq!(slices.held(), 3, "not into the next window's slice");
        let pending = slices.pending.lock().unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|g| (g.units, g.until_ms))
                .collect::<Vec<_>>(),
            [(9, 1_050), (1, 1_050)],
            "the old slice's rest and the held unit wait to go back, until the old window's end"
        );
    }
}
