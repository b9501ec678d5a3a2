//! Coalescing: the checks that wait on one thread's connection go to Redis
//! as one call of the check script.
//!
//! Redis runs scripts on one thread, so what limits a deployment is Redis
//! CPU per decision. A script call has a fixed cost (parsing the command,
//! setting up the call, running the script body, reading the clock) that
//! dwarfs the decision itself (BENCHMARKS.md): deciding the checks that
//! arrived while the previous call was on its way in one call shares that
//! cost among them.
//!
//! How: each thread has a queue per store. A check joins its thread's queue
//! and waits for its reply; the first check that finds no flusher running
//! starts one, a task that takes everything waiting, sends it as one call
//! (on a Cluster: one call per slot, all in flight at once), answers each
//! check, lets the thread's other tasks run and read their sockets once
//! (unless a full call already waits), and goes again until the queue is
//! empty. Under no load a check is alone in its call; under load, the
//! checks that arrived during one round trip, and while its answers went
//! out, share the next.
//!
//! Exactness: check.lua decides a call's checks in order, each one's writes
//! made before the next reads, exactly as separate calls in that order
//! would; all of them in one atomic script.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::keys::hash_tag;
use super::ScriptPolicy;
use crate::limiter::{StoreError, StoreReply};

pub(super) type Reply = Result<StoreReply, StoreError>;

/// The most keys one call takes (unless one check alone has more): a
/// script holds Redis while it runs, so a call of many checks with many
/// policies each must not grow without bound.
const MAX_KEYS_PER_CALL: usize = 4096;

/// One check waiting for its call.
pub(super) struct Job {
    pub policies: Vec<ScriptPolicy>,
    pub now_ms: Option<u64>,
    /// When its caller stops waiting: its call must answer by then (a call
    /// takes the earliest deadline of its checks), and a check still
    /// queued then is answered with a timeout, uncharged. One timer per
    /// call instead of one per check.
    pub deadline: std::time::Instant,
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    /// The Redis Cluster slot of the job's keys (its first key's: a check's
    /// keys share one).
    fn slot(&self) -> u16 {
        self.policies.first().map_or(0, |p| slot(&p.key))
    }
}

/// A key's Redis Cluster slot: CRC16 (XMODEM) of its hash tag, or of the
/// whole key when it has none, modulo 16384 (the Cluster specification).
pub(super) fn slot(key: &str) -> u16 {
    let hashed = match hash_tag(key) {
        Some(tag) if !tag.is_empty() => tag,
        _ => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes()) % 16384
}

/// What check.lua takes of a policy once per call (all but its key): the
/// checks of a call mostly share a few.
#[derive(PartialEq, Eq, Hash)]
struct Spec<'a> {
    algorithm: &'static str,
    limit: u32,
    window_ms: u64,
    cost: i64,
    shadow: bool,
    debit: bool,
    lease: &'a str,
}

/// The distinct policies of a call's checks, in order of first use, and
/// the number (from 1) of each check's policies among them, in order.
fn specs<'a>(checks: &[(&'a [ScriptPolicy], Option<u64>)]) -> (Vec<&'a ScriptPolicy>, Vec<usize>) {
    let mut distinct: Vec<&ScriptPolicy> = Vec::new();
    let mut index: HashMap<Spec<'a>, usize, foldhash::fast::FixedState> = HashMap::default();
    let numbers = checks
        .iter()
        .flat_map(|(policies, _)| policies.iter())
        .map(|p| {
            let spec = Spec {
                algorithm: p.algorithm,
                limit: p.limit,
                window_ms: p.window_ms,
                cost: p.cost,
                shadow: p.shadow,
                debit: p.debit,
                lease: &p.lease,
            };
            *index.entry(spec).or_insert_with(|| {
                distinct.push(p);
                distinct.len()
            })
        })
        .collect();
    (distinct, numbers)
}

/// The EVALSHA of check.lua deciding `checks` (of `nkeys` keys in all), in
/// order: the keys, each distinct policy once, then each check's policies
/// by number. A check of one policy by the server's clock is its policy's
/// number alone; any other is '*', its clock, its count, the numbers.
pub(super) fn check_command(checks: &[(&[ScriptPolicy], Option<u64>)], nkeys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&super::scripts::CHECK.sha).arg(nkeys);
    for p in checks.iter().flat_map(|(p, _)| p.iter()) {
        cmd.arg(&p.key);
    }
    let (specs, numbers) = specs(checks);
    cmd.arg(specs.len());
    for p in &specs {
        cmd.arg(p.algorithm)
            .arg(p.limit)
            .arg(p.window_ms)
            .arg(p.cost)
            .arg(u8::from(p.shadow) + 2 * u8::from(p.debit))
            .arg(&p.lease);
    }
    let mut numbers = numbers.into_iter();
    for (policies, now_ms) in checks {
        if policies.len() != 1 || now_ms.is_some() {
            cmd.arg("*");
            match now_ms {
                Some(now) => cmd.arg(now),
                None => cmd.arg(""),
            };
            cmd.arg(policies.len());
        }
        for number in numbers.by_ref().take(policies.len()) {
            cmd.arg(number);
        }
    }
    cmd
}

/// A thread's checks waiting for a call, and whether a flusher is on them.
#[derive(Default)]
pub(super) struct Queue(Mutex<State>);

#[derive(Default)]
struct State {
    waiting: Vec<Job>,
    flushing: bool,
}

impl Queue {
    /// Adds a check. True when no flusher is running: the caller starts one.
    pub fn push(&self, job: Job) -> bool {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting.push(job);
        !std::mem::replace(&mut state.flushing, true)
    }

    /// Everything waiting, grouped into calls: at most `max` checks and
    /// [`MAX_KEYS_PER_CALL`] keys each, and, on a Cluster, one slot each;
    /// checks keep their order within a call. None when nothing waits: the
    /// flusher then stops (and the next check starts another). Checks whose
    /// caller stopped waiting (a closed connection) are dropped here, and
    /// those past their deadline answered `late`, both uncharged.
    pub fn take(
        &self,
        max: usize,
        cluster: bool,
        late: impl Fn() -> Reply,
    ) -> Option<Vec<Vec<Job>>> {
        let jobs = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if state.waiting.is_empty() {
                state.flushing = false;
                return None;
            }
            std::mem::take(&mut state.waiting)
        };
        // (slot, keys, checks) of each call.
        let mut calls: Vec<(u16, usize, Vec<Job>)> = Vec::new();
        let now = std::time::Instant::now();
        for job in jobs {
            if job.reply.is_closed() {
                continue;
            }
            if job.deadline <= now {
                let _ = job.reply.send(late());
                continue;
            }
            let slot = if cluster { job.slot() } else { 0 };
            let keys = job.policies.len();
            match calls.iter_mut().rev().find(|(s, k, call)| {
                *s == slot && call.len() < max && k + keys <= MAX_KEYS_PER_CALL
            }) {
                Some((_, k, call)) => {
                    *k += keys;
                    call.push(job);
                }
                None => calls.push((slot, keys, vec![job])),
            }
        }
        Some(calls.into_iter().map(|(_, _, call)| call).collect())
    }

    /// How many checks wait.
    pub fn waiting(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .len()
    }

    /// A flusher that ends without `take` saying so (its task was dropped):
    /// the next check starts a new one.
    pub fn abandon(&self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.flushing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn late() -> Reply {
        Err(StoreError::Timeout(std::time::Duration::ZERO))
    }

    fn job(key: &str) -> (Job, oneshot::Receiver<Reply>) {
        job_of(key, 1)
    }

    /// A check of `policies` counters of one subject.
    fn job_of(key: &str, policies: usize) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let policy = ScriptPolicy {
            key: key.to_owned(),
            algorithm: "fixed_window",
            limit: 1,
            window_ms: 1000,
            cost: 1,
            shadow: false,
            debit: false,
            lease: String::new(),
        };
        (
            Job {
                policies: vec![policy; policies],
                now_ms: None,
                deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
                reply: tx,
            },
            rx,
        )
    }

    #[test]
    fn a_call_holds_a_bounded_number_of_keys() {
        let queue = Queue::default();
        let mut receivers = Vec::new();
        for (key, policies) in [("a", 3000), ("b", 1000), ("c", 200), ("d", 5000)] {
            let (job, rx) = job_of(key, policies);
            queue.push(job);
            receivers.push(rx);
        }
        let calls = queue.take(64, false, late).unwrap();
        let keys: Vec<usize> = calls
            .iter()
            .map(|c| c.iter().map(|j| j.policies.len()).sum())
            .collect();
        // a + b fill the first call; c goes with them no more; d, larger
        // than the bound alone, has a call of its own.
        assert_eq!(keys, [4000, 200, 5000]);
    }

    /// A check still queued at its deadline is answered as late, and goes
    /// to no call (uncharged); the others go on.
    #[test]
    fn a_check_past_its_deadline_is_answered_late_and_never_sent() {
        let queue = Queue::default();
        let (mut stale, mut stale_rx) = job("a");
        stale.deadline = std::time::Instant::now();
        let (fresh, _fresh_rx) = job("b");
        queue.push(stale);
        queue.push(fresh);
        let calls = queue.take(64, false, late).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 1);
        assert_eq!(calls[0][0].policies[0].key, "b");
        assert!(matches!(
            stale_rx.try_recv(),
            Ok(Err(StoreError::Timeout(_)))
        ));
    }

    /// Each distinct policy goes once; a check's policies are numbered
    /// by it, the key and only the key left out of what makes them one.
    #[test]
    fn a_calls_policies_go_once_each() {
        let (a, _) = job_of("rate:{a}:x", 2);
        let (b, _) = job_of("rate:{b}:x", 1);
        let (mut c, _) = job_of("rate:{c}:x", 1);
        c.policies[0].lease = "lease-1".into();
        let (mut d, _) = job_of("rate:{d}:x", 1);
        d.policies[0].cost = -1;
        let checks: Vec<(&[ScriptPolicy], Option<u64>)> = [&a, &b, &c, &d]
            .iter()
            .map(|j| (&j.policies[..], None))
            .collect();
        let (distinct, numbers) = specs(&checks);
        assert_eq!(numbers, [1, 1, 1, 2, 3]);
        assert_eq!(distinct.len(), 3);
        assert_eq!(distinct[1].lease, "lease-1");
        assert_eq!(distinct[2].cost, -1);
    }

    /// A common check (one policy, the server's clock) is one argument;
    /// one with its own clock, or of several policies, the general form.
    #[test]
    fn a_common_check_is_its_policys_number_alone() {
        let (a, _) = job_of("rate:{a}:x", 1);
        let (b, _) = job_of("rate:{b}:x", 2);
        let (c, _) = job_of("rate:{c}:x", 1);
        let checks = [
            (&a.policies[..], None),
            (&b.policies[..], None),
            (&c.policies[..], Some(7)),
        ];
        let cmd = check_command(&checks, 4);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => panic!("check.lua's arguments are plain values"),
            })
            .collect();
        let policy = ["fixed_window", "1", "1000", "1", "0", ""];
        let mut expected = vec!["EVALSHA", &super::super::scripts::CHECK.sha, "4"];
        expected.extend(["rate:{a}:x", "rate:{b}:x", "rate:{b}:x", "rate:{c}:x", "1"]);
        expected.extend(policy);
        expected.extend(["1", "*", "", "2", "1", "1", "*", "7", "1", "1"]);
        assert_eq!(args, expected);
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}")); // empty tag: whole key
    }

    #[test]
    fn the_first_check_starts_a_flusher_and_the_rest_join_it() {
        let queue = Queue::default();
        let mut receivers = Vec::new();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let (job, rx) = job(key);
            assert_eq!(queue.push(job), i == 0, "only the first starts one");
            receivers.push(rx);
        }
        let calls = queue.take(2, false, late).expect("three wait");
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1], "at most max per call, in order");
        assert_eq!(calls[0][0].policies[0].key, "a");
        assert!(
            queue.take(2, false, late).is_none(),
            "nothing left: the flusher stops"
        );
        let (next, _rx) = job("d");
        assert!(queue.push(next), "so the next check starts another");
    }

    #[test]
    fn on_a_cluster_each_call_holds_one_slot_and_gone_callers_are_dropped() {
        let queue = Queue::default();
        let (a1, _r1) = job("rate:{a}:x");
        let (b, _r2) = job("rate:{b}:x");
        let (a2, _r3) = job("rate:{a}:y");
        let (gone, r4) = job("rate:{a}:z");
        drop(r4);
        for j in [a1, b, a2, gone] {
            queue.push(j);
        }
        let calls = queue.take(64, true, late).expect("waiting");
        let keys: Vec<Vec<&str>> = calls
            .iter()
            .map(|c| c.iter().map(|j| j.policies[0].key.as_str()).collect())
            .collect();
        assert_eq!(keys, [vec!["rate:{a}:x", "rate:{a}:y"], vec!["rate:{b}:x"]]);
    }
}
