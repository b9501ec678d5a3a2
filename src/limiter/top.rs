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
//! subjects). A request updates the minute's count only; the hour's is made
//! of its finished minutes, each added when the next begins, so what the
//! hour keeps is what its minutes kept (a subject above `1 / CAPACITY` of
//! each minute's requests). Nothing of it is a metric label.

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

    /// Adds every count of `other` (a finished minute folded into its
    /// hour), bounded as [`Counts::add`] is.
    fn absorb(&mut self, other: Counts) {
        for (subject, (requests, denied)) in other.map {
            let total = self.map.entry(subject).or_default();
            total.0 += requests;
            total.1 += denied;
            if self.map.len() >= 2 * CAPACITY {
                self.prune(CAPACITY);
            }
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
}

/// The `n` largest of `kind` (none at 0) among `counts`, largest first
/// (ties by subject): only those `n` are cloned.
fn largest<'a>(
    counts: impl Iterator<Item = (&'a Entry, (u64, u64))>,
    kind: Kind,
    n: usize,
) -> Vec<(Entry, u64)> {
    let mut all: Vec<(u64, &Entry)> = counts
        .map(|(e, (requests, denied))| match kind {
            Kind::Requests => (requests, e),
            Kind::Denied => (denied, e),
        })
        .filter(|(count, _)| *count > 0)
        .collect();
    let order = |a: &(u64, &Entry), b: &(u64, &Entry)| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
    if all.len() > n {
        all.select_nth_unstable_by(n, order);
        all.truncate(n);
    }
    all.sort_unstable_by(order);
    all.into_iter()
        .map(|(count, e)| (e.clone(), count))
        .collect()
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

/// One shard's counts: the current minute's, and its hour's past minutes
/// (a minute is added to its hour when the next one begins, so a request
/// updates one map, not one per window); and the requests recorded.
#[derive(Debug, Default)]
struct Shard {
    minute: Slot,
    hour: Slot,
    recorded: u64,
}

/// The hour a minute (by index) falls in.
fn hour_of(minute: u64) -> u64 {
    minute * Window::Minute.seconds() / Window::Hour.seconds()
}

impl Shard {
    /// The current minute's counts, the minute before added to its hour.
    fn minute(&mut self, now: u64) -> &mut Counts {
        let index = Window::Minute.index(now);
        if self.minute.index != index {
            let done = std::mem::replace(
                &mut self.minute,
                Slot {
                    index,
                    counts: Counts::default(),
                },
            );
            // A minute of an earlier hour is dropped with its hour.
            if hour_of(done.index) == hour_of(index) {
                self.hour.at(hour_of(done.index)).absorb(done.counts);
            }
        }
        &mut self.minute.counts
    }

    /// The counts that make `window` (of index `index`): the minute's, or
    /// the hour's past minutes and its current one.
    fn counts(&self, window: Window, index: u64) -> impl Iterator<Item = &Counts> {
        let (hour, minute) = match window {
            Window::Minute => (None, (self.minute.index == index).then_some(&self.minute)),
            Window::Hour => (
                (self.hour.index == index).then_some(&self.hour),
                (hour_of(self.minute.index) == index).then_some(&self.minute),
            ),
        };
        hour.into_iter().chain(minute).map(|slot| &slot.counts)
    }
}

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
    pub fn record<'a>(&self, subjects: impl Iterator<Item = &'a Entry>, denied: bool, now: u64) {
        let mut shard = lock(self.shard());
        shard.recorded += 1;
        let minute = shard.minute(now);
        for subject in subjects {
            minute.add(subject, denied);
        }
    }

    /// This thread's shard: threads take numbers in turn, so the workers
    /// of a server get shards of their own as long as there are enough.
    fn shard(&self) -> &Mutex<Shard> {
        &self.shards[SHARD.with(|n| *n) % self.shards.len()]
    }

    /// Requests recorded so far (see [`TopOffenders::record`]).
    pub fn recorded(&self) -> u64 {
        self.shards.iter().map(|shard| lock(shard).recorded).sum()
    }

    /// This instance's largest counts of `window` as it stands at `now`:
    /// the window's index and its [`PUBLISHED`] largest subjects by
    /// requests and by denials, summed over the shards. The shards are
    /// held while they are summed, by reference: only what is published is
    /// cloned.
    pub fn snapshot(&self, window: Window, now: u64) -> Snapshot {
        let index = window.index(now);
        let shards: Vec<_> = self.shards.iter().map(lock).collect();
        let parts: Vec<&Counts> = shards
            .iter()
            .flat_map(|s| s.counts(window, index))
            .collect();
        if let [one] = parts[..] {
            return published(index, || one.map.iter().map(|(e, c)| (e, *c)));
        }
        // Sized once for every subject (the parts mostly share them): growing
        // it rehashed thousands of entries several times per publication.
        let mut sum: HashMap<&Entry, (u64, u64), foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(
                parts.iter().map(|p| p.map.len()).sum(),
                Default::default(),
            );
        for part in parts {
            for (subject, (requests, denied)) in &part.map {
                let total = sum.entry(subject).or_default();
                total.0 += requests;
                total.1 += denied;
            }
        }
        published(index, || sum.iter().map(|(e, c)| (*e, *c)))
    }
}

/// A window's index, and its largest subjects by requests and by denials.
pub type Snapshot = (u64, Vec<(Entry, u64)>, Vec<(Entry, u64)>);

/// What window `index` publishes of the counts `each` yields.
fn published<'a, I>(index: u64, each: impl Fn() -> I) -> Snapshot
where
    I: Iterator<Item = (&'a Entry, (u64, u64))>,
{
    (
        index,
        largest(each(), Kind::Requests, PUBLISHED),
        largest(each(), Kind::Denied, PUBLISHED),
    )
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
    largest(sum.map.iter().map(|(e, c)| (e, *c)), Kind::Requests, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str) -> Entry {
        ("user".into(), id.to_owned())
    }

    /// Whether every shard's count `slot` holds fewer than twice
    /// [`CAPACITY`] subjects.
    fn bounded_counts(top: &TopOffenders, slot: impl Fn(&Shard) -> &Slot) -> bool {
        top.shards
            .iter()
            .all(|s| slot(&s.lock().unwrap()).counts.map.len() < 2 * CAPACITY)
    }

    /// The published largest of `kind` in `window` at `now`.
    fn top_of(top: &TopOffenders, window: Window, kind: Kind, now: u64) -> Vec<(Entry, u64)> {
        let (_, requests, denied) = top.snapshot(window, now);
        match kind {
            Kind::Requests => requests,
            Kind::Denied => denied,
        }
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
        let requests = top_of(&top, Window::Minute, Kind::Requests, now);
        assert_eq!(requests[0], (heavy.clone(), 2000));
        let denied = top_of(&top, Window::Hour, Kind::Denied, now);
        assert_eq!(denied, vec![(heavy, 2000)]);
        // Bounded: never more than twice the capacity (one thread: one
        // shard).
        assert!(bounded_counts(&top, |s| &s.minute));
    }

    /// Regression (issue 19, item 9): 24 KB subjects were kept and
    /// published whole. A value is cut to MAX_SUBJECT_BYTES.
    #[test]
    fn huge_subjects_are_cut() {
        let top = TopOffenders::default();
        let huge = subject(&"é".repeat(12_000));
        top.record(std::iter::once(&huge), true, 5);
        top.record(std::iter::once(&huge), true, 5);
        let denied = top_of(&top, Window::Minute, Kind::Denied, 5);
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
        assert_eq!(top_of(&top, Window::Minute, Kind::Denied, 59).len(), 1);
        assert!(top_of(&top, Window::Minute, Kind::Denied, 60).is_empty());
        assert_eq!(top_of(&top, Window::Hour, Kind::Denied, 60).len(), 1);
        top.record(std::iter::once(&subject("b")), false, 61);
        assert_eq!(
            top_of(&top, Window::Minute, Kind::Requests, 61),
            vec![(subject("b"), 1)]
        );
    }

    /// A minute's counts go into its hour when the next minute begins (a
    /// request updates one map), and an hour's go with it.
    #[test]
    fn the_hour_is_its_minutes() {
        let top = TopOffenders::default();
        let hour = 3600 * 10;
        top.record(std::iter::once(&subject("a")), true, hour + 5);
        top.record(std::iter::once(&subject("a")), false, hour + 65);
        top.record(std::iter::once(&subject("b")), true, hour + 65);
        // The first minute is folded, the second is still the minute's.
        assert_eq!(
            top_of(&top, Window::Minute, Kind::Requests, hour + 65).len(),
            2
        );
        assert_eq!(
            top_of(&top, Window::Hour, Kind::Requests, hour + 65),
            vec![(subject("a"), 2), (subject("b"), 1)]
        );
        // Read later in the hour, before any request folds the minute.
        assert_eq!(
            top_of(&top, Window::Hour, Kind::Denied, hour + 3000),
            vec![(subject("a"), 1), (subject("b"), 1)]
        );
        assert!(top_of(&top, Window::Minute, Kind::Denied, hour + 3000).is_empty());
        // The next hour starts empty, and its first minute drops the last
        // hour's.
        assert!(top_of(&top, Window::Hour, Kind::Requests, hour + 3600).is_empty());
        top.record(std::iter::once(&subject("c")), false, hour + 3601);
        assert_eq!(
            top_of(&top, Window::Hour, Kind::Requests, hour + 3601),
            vec![(subject("c"), 1)]
        );
        // Folding is bounded as counting is: a flood spread over minutes.
        for minute in 0..5 {
            for i in 0..3000 {
                let s = subject(&format!("once-{minute}-{i}"));
                top.record(std::iter::once(&s), false, hour + 3600 + 60 * minute);
            }
        }
        assert!(bounded_counts(&top, |s| &s.hour));
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
        let requests = top_of(&top, Window::Hour, Kind::Requests, 7);
        assert_eq!(requests[0], (subject("shared"), 400));
        assert_eq!(requests.len(), 5);
        let denied = top_of(&top, Window::Minute, Kind::Denied, 7);
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
