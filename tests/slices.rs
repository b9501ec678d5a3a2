//! Quota slices (`slices = true`): a hot subject's decisions made mostly
//! without Redis, never admitting more than the limit.
//!
//! The model tests run several limiters (instances) against one real Redis
//! on a simulated clock (theirs and the script's), with random arrivals and
//! crashes, and compare with an exact counter. The process tests run the
//! binary three times.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rate_limiter::config::RedisSettings;
use rate_limiter::limiter::slices::{Clock, SWEEP_INTERVAL};
use rate_limiter::limiter::{CheckRequest, Decision, Descriptor, FailureMode, Limiter, Rules};
use rate_limiter::redis::RedisStore;
use rate_limiter::telemetry::Metrics;
use support::{unique_key, RedisServer};

/// A small deterministic generator (xorshift64*): the runs are
/// reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..n
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rules(algorithm: &str, limit: u32, window: &str) -> Rules {
    Rules::parse(
        "slices.toml",
        &format!(
            "[[policy]]\nname = \"hot\"\nalgorithm = \"{algorithm}\"\nlimit = {limit}\n\
             window = \"{window}\"\nstrategy = \"user\"\nslices = true\n"
        ),
    )
    .expect("rules")
}

/// One simulated instance: a limiter of its own (its own store, its own
/// slices) on the shared simulated clock.
async fn instance(
    redis: &RedisServer,
    rules: &Rules,
    clock: &Arc<AtomicU64>,
) -> Limiter<RedisStore> {
    let store = RedisStore::connect(&RedisSettings::single(redis.url(), Duration::from_secs(5)))
        .await
        .expect("store");
    Limiter::new(
        store,
        rules.clone(),
        FailureMode::Closed,
        false,
        Arc::new(Metrics::new()),
    )
    .with_slice_clock(Clock::Manual(clock.clone()))
}

fn request(user: &str) -> CheckRequest {
    CheckRequest {
        domain: "http".into(),
        descriptors: vec![Descriptor::new(vec![("user".into(), user.to_owned())])],
    }
}

fn allowed(decision: &Decision) -> bool {
    match decision {
        Decision::Allowed(_) => true,
        Decision::Denied(_) => false,
        other => panic!("unexpected decision {other:?}"),
    }
}

/// What one model run saw.
struct Run {
    /// Per window: arrivals, admitted, units lost to crashes.
    windows: Vec<(u64, u64, u64)>,
    /// Over every instance that ran: the largest slice.
    largest: u64,
    instances: u64,
    decisions: u64,
    redis_calls: u64,
}

const WINDOW_MS: u64 = 10_000;

/// Random arrivals at `n` instances for `windows` windows of a fixed
/// window of `limit` per 10 s, some windows overloaded, with crashes.
async fn model_run(
    redis: &RedisServer,
    algorithm: &str,
    seed: u64,
    n: usize,
    limit: u32,
    windows: u64,
) -> Run {
    const TICK_MS: u64 = 5;
    let rules = rules(algorithm, limit, "10s");
    // A simulated clock, at a window start (shared by the script).
    let start = 1_900_000_000_000u64;
    let clock = Arc::new(AtomicU64::new(start));
    let user = unique_key("model");
    let mut rng = Rng(seed);
    let mut live = Vec::new();
    for _ in 0..n {
        live.push(instance(redis, &rules, &clock).await);
    }
    let mut largest = 0;
    let mut instances = n as u64;
    let mut run = vec![(0u64, 0u64, 0u64); windows as usize];
    let calls_before = redis.evalsha_calls().await;
    let mut decisions = 0;
    let mut now = start;
    while now < start + windows * WINDOW_MS {
        now += TICK_MS;
        clock.store(now, Ordering::Relaxed);
        let w = ((now - start) / WINDOW_MS) as usize;
        if w >= run.len() {
            break;
        }
        if (now - start).is_multiple_of(SWEEP_INTERVAL.as_millis() as u64) {
            for limiter in &live {
                limiter.sweep_slices(false).await;
            }
        }
        // A crash now and then: the instance's slices are never given back.
        if rng.below(1000) == 0 {
            let i = rng.below(n as u64) as usize;
            let crashed = std::mem::replace(&mut live[i], instance(redis, &rules, &clock).await);
            run[w].2 += crashed.slices().held();
            largest = largest.max(crashed.slices().largest());
            instances += 1;
        }
        // Load varies by window (1.5x the limit in two of three, 0.7x in
        // the third) and by instance (the first takes half of it).
        let per_window = if w % 3 != 2 {
            3 * limit / 2
        } else {
            7 * limit / 10
        };
        for (i, limiter) in live.iter().enumerate() {
            let share = if i == 0 { 500 } else { 500 / (n as u64 - 1) };
            // Per mille per tick.
            let p = u64::from(per_window) * share * TICK_MS / WINDOW_MS;
            let arrivals = u64::from(rng.below(1000) < p);
            for _ in 0..arrivals {
                run[w].0 += 1;
                decisions += 1;
                if allowed(&limiter.check(&request(&user)).await.unwrap()) {
                    run[w].1 += 1;
                }
            }
        }
    }
    for limiter in &live {
        largest = largest.max(limiter.slices().largest());
    }
    Run {
        windows: run,
        largest,
        instances,
        decisions,
        redis_calls: redis.evalsha_calls().await - calls_before,
    }
}

/// Never more admitted than the limit in any window, also across crashes;
/// and never many fewer than an exact counter admits: the shortfall in a
/// window is at most what crashed instances held, plus what the live ones
/// may hold at the window's end and have just given back (a slice each,
/// each at most the largest taken).
#[tokio::test]
async fn sliced_fixed_windows_are_exact_from_above_across_crashes() {
    let redis = RedisServer::start().await;
    let limit = 1000;
    let n = 4;
    let mut worst = 0;
    for seed in [0x5eed_u64, 0xdead_beef, 0x1234_5678_9abc] {
        let run = model_run(&redis, "fixed_window", seed, n, limit, 6).await;
        let bound_live = 2 * n as u64 * run.largest;
        for (w, &(arrivals, admitted, lost)) in run.windows.iter().enumerate() {
            assert!(
                admitted <= u64::from(limit),
                "seed {seed:#x}, window {w}: {admitted} admitted, limit {limit}"
            );
            let exact = arrivals.min(u64::from(limit));
            let shortfall = exact - admitted.min(exact);
            assert!(
                shortfall <= lost + bound_live,
                "seed {seed:#x}, window {w}: {arrivals} arrivals, {admitted} admitted, \
                 exact {exact}, {lost} lost to crashes, bound {}",
                lost + bound_live
            );
            worst = worst.max(shortfall);
        }
        assert!(
            run.instances > n as u64,
            "seed {seed:#x}: some instance crashed"
        );
        assert!(
            run.redis_calls * 3 < run.decisions,
            "seed {seed:#x}: {} Redis calls for {} decisions",
            run.redis_calls,
            run.decisions
        );
        eprintln!(
            "seed {seed:#x}: windows (arrivals, admitted, lost) {:?}; largest slice {}; \
             {} decisions, {} Redis calls ({:.1} decisions per call); {} instances",
            run.windows,
            run.largest,
            run.decisions,
            run.redis_calls,
            run.decisions as f64 / run.redis_calls.max(1) as f64,
            run.instances
        );
    }
    eprintln!("worst shortfall against an exact counter: {worst}");
}

/// A token bucket and GCRA, sliced: a slice is tokens taken out of the
/// bucket, so over any span the instances together admit no more than the
/// burst plus what refills meanwhile; under a load of 1.5x, nearly that.
#[tokio::test]
async fn sliced_buckets_never_admit_more_than_burst_plus_refill() {
    let redis = RedisServer::start().await;
    let (limit, windows, n) = (500u32, 4u64, 3);
    for algorithm in ["token_bucket", "gcra"] {
        let run = model_run(&redis, algorithm, 0xb0c4e7, n, limit, windows).await;
        let admitted: u64 = run.windows.iter().map(|w| w.1).sum();
        let lost: u64 = run.windows.iter().map(|w| w.2).sum();
        // A full bucket, then `limit` per window for the run's length.
        let most = u64::from(limit) * (windows + 1);
        assert!(
            admitted <= most,
            "{algorithm}: {admitted} admitted, at most {most}"
        );
        let arrivals: u64 = run.windows.iter().map(|w| w.0).sum();
        let floor = most.min(arrivals) - lost - 2 * n as u64 * run.largest * windows;
        assert!(
            admitted + u64::from(limit) / 10 >= floor,
            "{algorithm}: {admitted} admitted of {arrivals}, expected about {most} (floor {floor})"
        );
        eprintln!(
            "{algorithm}: {arrivals} arrivals, {admitted} admitted (at most {most}), {lost} lost \
             to crashes; {:.1} decisions per Redis call",
            run.decisions as f64 / run.redis_calls.max(1) as f64
        );
    }
}
