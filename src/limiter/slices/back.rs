//! Units going back: the unspent units of slices that are done with,
//! given back to their counters by the sweep (and all of them when the
//! instance stops); and slices dropped unspent when their counters are
//! reset.

use std::sync::Arc;

use super::{Slice, Slices};
use crate::limiter::{Counter, Entry, Policy, Store};

/// A subject unused this long is dropped by the sweep.
const IDLE_MS: u64 = 10_000;
/// Give-backs waiting for the sweep, at most (beyond, their units are
/// lost: never more admitted, only fewer). A sweep drains them every
/// [`super::SWEEP_INTERVAL`], and each subject sets aside about one slice
/// per sweep, so twice the subjects is room enough; each holds a subject,
/// so this bounds their bytes with [`super::MAX_CELLS`].
const MAX_PENDING: usize = 2 * super::MAX_CELLS;

/// Units to give back to a counter.
pub(super) struct Give {
    pub(super) subject: Entry,
    pub(super) policy: Arc<Policy>,
    pub(super) units: u64,
    pub(super) epoch: i64,
    pub(super) until_ms: u64,
}

impl Slices {
    /// Queues the unspent units of a slice that is done with.
    pub(super) fn set_aside(&self, subject: &Entry, slice: Slice) {
        if slice.units > 0 {
            self.queue(Give {
                subject: subject.clone(),
                policy: slice.policy,
                units: slice.units,
                epoch: slice.epoch,
                until_ms: slice.until_ms,
            });
        }
    }

    pub(super) fn queue(&self, give: Give) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push(give);
        } else {
            self.lose(&give.policy, give.units);
        }
    }

    fn lose(&self, policy: &Policy, units: u64) {
        self.metrics
            .slices
            .units
            .with_label_values(&[Self::name(policy), "lost"])
            .inc_by(units);
    }

    /// Gives back the unspent units of expired slices (every slice with
    /// `all`: the instance stops) and drops idle subjects.
    pub async fn sweep<S: Store>(&self, store: &S, all: bool) {
        let now = self.clock.now();
        {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.retain(|_, cell| {
                let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
                if all || state.slice.as_ref().is_some_and(|s| now >= s.expires) {
                    if let Some(old) = state.slice.take() {
                        state.last = Some((old.size, old.taken_at, old.spent));
                        self.set_aside(&cell.subject, old);
                    }
                }
                // Held by a request (a take in flight, a hold), or in use.
                Arc::strong_count(cell) > 1
                    || state.slice.is_some()
                    || now.saturating_sub(state.last_used) < IDLE_MS
            });
        }
        let gives = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for give in gives {
            let counter = Counter {
                subject: &give.subject,
                policy: &give.policy,
                cost: 0,
                lease: None,
            };
            let name = Self::name(&give.policy);
            match store
                .give_slice(
                    &counter,
                    give.units,
                    give.epoch,
                    give.until_ms,
                    self.clock.store_now(),
                )
                .await
            {
                Ok(given) => {
                    let units = &self.metrics.slices.units;
                    units.with_label_values(&[name, "returned"]).inc_by(given);
                    if given < give.units {
                        self.lose(&give.policy, give.units - given);
                    }
                }
                Err(err) => {
                    log::debug!("slices: cannot give back {} units: {err}", give.units);
                    self.lose(&give.policy, give.units);
                }
            }
        }
    }

    /// Drops `subject`'s slices without giving them back (its counters
    /// were reset: their units belong to counters that are gone).
    pub fn forget(&self, subject: &Entry) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.retain(|(s, ..), cell| {
            if s != subject {
                return true;
            }
            let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
            state.slice = None;
            state.empty = None;
            false
        });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|g| &g.subject != subject);
    }

    /// Drops every slice (the reset log was lost: any counter may have
    /// been reset).
    pub fn clear(&self) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        for cell in cells.values() {
            let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
            state.slice = None;
            state.empty = None;
        }
        cells.clear();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Subjects sliced now.
    pub fn len(&self) -> usize {
        self.cells.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Units held unspent now, over every slice.
    pub fn held(&self) -> u64 {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .values()
            .map(|c| {
                let state = c.state.lock().unwrap_or_else(|e| e.into_inner());
                state.slice.as_ref().map_or(0, |s| s.units)
            })
            .sum()
    }
}
