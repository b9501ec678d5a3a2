//! Who is being limited: a bounded heavy-hitters count of the subjects
//! (API keys, client IPs, Envoy descriptors) by requests and by denials, per
//! minute and per hour, in every instance, published to the store every
//! second and merged across instances on read.
//!
//! Each count keeps at most [`CAPACITY`] subjects. It grows to twice that
//! and is then pruned to the [`CAPACITY`] largest, so a subject seen often
//! enough to matter stays (one seen more than `1 / CAPACITY` of the time
//! is never pruned), memory stays bounded, and the work per request is one
//! hash-map update (pruning, a partial sort, runs once per [`CAPACITY`] new
//! subjects). Nothing of it is a metric label.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::request::Entry;

/// Subjects each count keeps.
pub const CAPACITY: usize = 2000;

/// Subjects each instance publishes per window and kind (the merged view
/// is made of every instance's largest).
pub const PUBLISHED: usize = 200;

/// Longest subject value kept, in bytes: a longer one is cut there (at a
/// character boundary) and marked with `…`, so a flood of huge made-up
/// values costs no more than short ones, here and in what is published.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// `subject`, or its value cut to [`MAX_SUBJECT_BYTES`].
fn bounded(subject: &Entry) -> std::borrow::Cow<'_, Entry> {
    let (key, value) = subject;
    if key.len() + value.len() <= MAX_SUBJECT_BYTES {
        return std::borrow::Cow::Borrowed(subject);
    }
    let room = MAX_SUBJECT_BYTES.saturating_sub(key.len().min(MAX_SUBJECT_BYTES / 2));
    let mut end = room.min(value.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let key = if key.len() > MAX_SUBJECT_BYTES / 2 {
        let mut k = MAX_SUBJECT_BYTES / 2;
        while !key.is_char_boundary(k) {
            k -= 1;
        }
        std::borrow::Cow::Owned(format!("{}…", &key[..k]))
    } else {
        key.clone()
    };
    std::borrow::Cow::Owned((key, format!("{}…", &value[..end])))
}

/// A window of the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
}

impl Window {
    pub const ALL: [Window; 2] = [Window::Minute, Window::Hour];

    pub fn seconds(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3600,
        }
    }

    /// As the admin API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::Hour => "1h",
        }
    }

    /// The number of the window `now` (Unix seconds) falls in.
    pub fn index(self, now: u64) -> u64 {
        now / self.seconds()
    }
}

/// What a count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Requests,
    Denied,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Denied => "denied",
        }
    }
}

/// One bounded count of subjects: (requests, denials) each. A denial is a
/// request too, so pruning by requests never drops a subject with more
/// denials than one it keeps.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// Keyed by what clients choose, so its hash is seeded at random (and
    /// its size bounded, see [`CAPACITY`]).
    map: HashMap<Entry, (u64, u64), foldhash::fast::RandomState>,
}

impl Counts {
    fn add(&mut self, subject: &Entry, denied: bool) {
        let subject = &*bounded(subject);
        let denials = u64::from(denied);
        if let Some((requests, denied)) = self.map.get_mut(subject) {
            *requests += 1;
            *denied += denials;
            return;
        }
        self.map.insert(subject.clone(), (1, denials));
        if self.map.len() >= 2 * CAPACITY {
            self.prune(CAPACITY);
        }
    }

    /// Keeps at most the `keep` largest by requests: those above the
    /// `keep`-th largest count (ties at it go, so a flood of subjects seen
    /// once leaves none of them behind).
    fn prune(&mut self, keep: usize) {
        if self.map.len() <= keep {
            return;
        }
        let mut counts: Vec<u64> = self.map.values().map(|c| c.0).collect();
        let (_, threshold, _) = counts.select_nth_unstable_by(keep, |a, b| b.cmp(a));
        let threshold = *threshold;
        self.map.retain(|_, count| count.0 > threshold);
    }

    /// The `n` largest of `kind` (none at 0), largest first.
    fn top(&self, kind: Kind, n: usize) -> Vec<(Entry, u64)> {
        let mut all: Vec<(Entry, u64)> = self
            .map
            .iter()
            .map(|(e, (requests, denied))| {
                let count = match kind {
                    Kind::Requests => *requests,
                    Kind::Denied => *denied,
                };
                (e.clone(), count)
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// The counts of one window.
#[derive(Debug, Default)]
struct Slot {
    index: u64,
    counts: Counts,
}

impl Slot {
    fn at(&mut self, index: u64) -> &mut Counts {
        if self.index != index {
            *self = Slot {
                index,
                counts: Counts::default(),
            };
        }
        &mut self.counts
    }
}

/// Every instance's heavy hitters: the minute's and the hour's, behind one
/// lock (one lock per request).
#[derive(Debug, Default)]
pub struct TopOffenders {
    /// The minute's and the hour's counts, and the requests recorded so far
    /// (what is published is rewritten only when that moved: an idle
    /// instance writes nothing), behind the one lock a request takes.
    slots: Mutex<(Slot, Slot, u64)>,
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl TopOffenders {
    /// Counts one request of `subjects`, denied or not, at `now` (Unix
    /// seconds).
    pub fn record<'a>(
        &self,
        subjects: impl Iterator<Item = &'a Entry> + Clone,
        denied: bool,
        now: u64,
    ) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (minute, hour, recorded) = &mut *slots;
        *recorded += 1;
        let minute = minute.at(Window::Minute.index(now));
        for subject in subjects.clone() {
            minute.add(subject, denied);
        }
        let hour = hour.at(Window::Hour.index(now));
        for subject in subjects {
            hour.add(subject, denied);
        }
    }

    /// Requests recorded so far (see [`TopOffenders::record`]).
    pub fn recorded(&self) -> u64 {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).2
    }

    /// This instance's largest counts of `window` as it stands at `now`:
    /// the window's index and the [`PUBLISHED`] largest subjects of `kind`.
    pub fn snapshot(&self, window: Window, kind: Kind, now: u64) -> (u64, Vec<(Entry, u64)>) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match window {
            Window::Minute => &slots.0,
            Window::Hour => &slots.1,
        };
        let index = window.index(now);
        if slot.index != index {
            return (index, Vec::new());
        }
        (index, slot.counts.top(kind, PUBLISHED))
    }
}

/// Sums the counts of several instances and keeps the `n` largest.
pub fn merge(parts: impl IntoIterator<Item = Vec<(Entry, u64)>>, n: usize) -> Vec<(Entry, u64)> {
    let mut sum = Counts::default();
    for part in parts {
        for (subject, count) in part {
            sum.map.entry(subject).or_default().0 += count;
        }
    }
    sum.top(Kind::Requests, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str) -> Entry {
        ("user".into(), id.to_owned())
    }

    #[test]
    fn heavy_hitters_survive_a_flood_of_one_time_subjects() {
        let top = TopOffenders::default();
        let now = 1_000_000;
        let heavy = subject("heavy");
        for i in 0..20_000 {
            top.record(std::iter::once(&subject(&format!("once-{i}"))), false, now);
            if i % 10 == 0 {
                top.record(std::iter::once(&heavy), true, now);
            }
        }
        let (_, requests) = top.snapshot(Window::Minute, Kind::Requests, now);
        assert_eq!(requests[0], (heavy.clone(), 2000));
        let (_, denied) = top.snapshot(Window::Hour, Kind::Denied, now);
        assert_eq!(denied, vec![(heavy, 2000)]);
        // Bounded: never more than twice the capacity.
        assert!(top.slots.lock().unwrap().0.counts.map.len() < 2 * CAPACITY);
    }

    /// Regression (issue 19, item 9): 24 KB subjects were kept and
    /// published whole. A value is cut to MAX_SUBJECT_BYTES.
    #[test]
    fn huge_subjects_are_cut() {
        let top = TopOffenders::default();
        let huge = subject(&"é".repeat(12_000));
        top.record(std::iter::once(&huge), true, 5);
        top.record(std::iter::once(&huge), true, 5);
        let (_, denied) = top.snapshot(Window::Minute, Kind::Denied, 5);
        assert_eq!(denied.len(), 1);
        let ((key, value), count) = &denied[0];
        assert_eq!((key.as_ref(), *count), ("user", 2));
        assert!(
            value.len() <= MAX_SUBJECT_BYTES + '…'.len_utf8(),
            "{}",
            value.len()
        );
        assert!(value.ends_with('…'));
        assert_eq!(top.recorded(), 2);
    }

    #[test]
    fn windows_roll_over() {
        let top = TopOffenders::default();
        top.record(std::iter::once(&subject("a")), true, 59);
        assert_eq!(top.snapshot(Window::Minute, Kind::Denied, 59).1.len(), 1);
        assert!(top.snapshot(Window::Minute, Kind::Denied, 60).1.is_empty());
        assert_eq!(top.snapshot(Window::Hour, Kind::Denied, 60).1.len(), 1);
        top.record(std::iter::once(&subject("b")), false, 61);
        assert_eq!(
            top.snapshot(Window::Minute, Kind::Requests, 61).1,
            vec![(subject("b"), 1)]
        );
    }

    #[test]
    fn merging_sums_instances() {
        let merged = merge(
            [
                vec![(subject("a"), 5), (subject("b"), 1)],
                vec![(subject("b"), 7)],
            ],
            1,
        );
        assert_eq!(merged, vec![(subject("b"), 8)]);
    }
}
