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
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Shards at most: one per thread that records, up to this many.
const MAX_SHARDS: usize = 16;

/// The next thread's shard number (see [`TopOffenders::shard`]).
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number, taken on its first request.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

/// One shard's counts: the minute's, the hour's, and the requests recorded.
type Shard = (Slot, Slot, u64);

/// Every instance's heavy hitters: the minute's and the hour's, in one
/// shard per worker thread (as many as the machine has cores, at most
/// [`MAX_SHARDS`]), so a request takes its own thread's lock and touches
/// its own thread's maps, never another core's; the shards are summed when
/// read (once a second, to publish). Each shard is bounded as one count
/// is ([`CAPACITY`]).
#[derive(Debug)]
pub struct TopOffenders {
    /// Each with the requests it recorded (what is published is rewritten
    /// only when their sum moved: an idle instance writes nothing).
    shards: Box<[Mutex<Shard>]>,
}

impl Default for TopOffenders {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        TopOffenders {
            shards: (0..cores.clamp(1, MAX_SHARDS))
                .map(|_| Mutex::default())
                .collect(),
        }
    }
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
        let mut shard = lock(self.shard());
        let (minute, hour, recorded) = &mut *shard;
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

    /// This thread's shard: threads take numbers in turn, so the workers
    /// of a server get shards of their own as long as there are enough.
    fn shard(&self) -> &Mutex<Shard> {
        &self.shards[SHARD.with(|n| *n) % self.shards.len()]
    }

    /// Requests recorded so far (see [`TopOffenders::record`]).
    pub fn recorded(&self) -> u64 {
        self.shards.iter().map(|shard| lock(shard).2).sum()
    }

    /// This instance's largest counts of `window` as it stands at `now`:
    /// the window's index and the [`PUBLISHED`] largest subjects of `kind`,
    /// summed over the shards.
    pub fn snapshot(&self, window: Window, kind: Kind, now: u64) -> (u64, Vec<(Entry, u64)>) {
        let index = window.index(now);
        let mut sum = Counts::default();
        for shard in &self.shards {
            let shard = lock(shard);
            let slot = match window {
                Window::Minute => &shard.0,
                Window::Hour => &shard.1,
            };
            if slot.index != index {
                continue;
            }
            for (subject, (requests, denied)) in &slot.counts.map {
                let total = sum.map.entry(subject.clone()).or_default();
                total.0 += requests;
                total.1 += denied;
            }
        }
        (index, sum.top(kind, PUBLISHED))
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
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
        // Bounded: never more than twice the capacity (one thread: one
        // shard).
        assert!(top
            .shards
            .iter()
            .all(|s| s.lock().unwrap().0.counts.map.len() < 2 * CAPACITY));
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
    fn the_threads_shards_are_summed() {
        let top = std::sync::Arc::new(TopOffenders::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let top = top.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        top.record(std::iter::once(&subject("shared")), t == 0, 7);
                    }
                    top.record(std::iter::once(&subject(&format!("own-{t}"))), true, 7);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(top.recorded(), 404);
        let (_, requests) = top.snapshot(Window::Hour, Kind::Requests, 7);
        assert_eq!(requests[0], (subject("shared"), 400));
        assert_eq!(requests.len(), 5);
        let (_, denied) = top.snapshot(Window::Minute, Kind::Denied, 7);
        assert_eq!(denied[0], (subject("shared"), 100));
        assert_eq!(denied.iter().map(|(_, n)| n).sum::<u64>(), 104);
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
