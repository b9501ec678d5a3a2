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
    let store = redis.store().await;
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

/// Three instances of the binary, one Redis, one subject limited to 500 an
/// hour (GCRA: no window edge; it refills one unit every 7.2 s), sliced:
/// 1,000 requests at once, spread over the three.
#[tokio::test]
async fn three_instances_admit_at_most_the_limit_of_one_hot_subject() {
    use support::binary::{log_lines, serve, signal, wait_for_port};
    let redis = RedisServer::start().await;
    let dir = support::TempDir::new("slices-fleet");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[policy]]\nname = \"hot\"\nalgorithm = \"gcra\"\nlimit = 500\nwindow = \"1h\"\n\
         strategy = \"user\"\nslices = true\n",
    )
    .unwrap();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let mut child = serve(
            &dir,
            &redis,
            &[("RATE_LIMIT_CONFIG", rules.to_str().unwrap())],
        );
        let lines = log_lines(&mut child);
        ports.push(wait_for_port(&lines));
        children.push(child);
    }
    let client = reqwest::Client::new();
    let key = unique_key("fleet");
    let burst = |count: usize| {
        let (client, key, ports) = (&client, &key, &ports);
        futures::future::join_all((0..count).map(move |i| async move {
            client
                .post(format!("http://127.0.0.1:{}/api/resource", ports[i % 3]))
                .header("X-API-Key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }))
    };
    let calls = redis.evalsha_calls().await;
    let statuses = burst(1000).await;
    let calls = redis.evalsha_calls().await - calls;
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        statuses.iter().filter(|&&s| s != 200 && s != 429).count(),
        0,
        "{statuses:?}"
    );
    // At most the limit (plus a unit refilled while the test runs); at
    // least the limit less the slices the instances still hold, each at
    // most an eighth of what was left when taken.
    assert!(admitted <= 501, "{admitted} admitted");
    assert!(admitted >= 500 - 3 * 500 / 8, "{admitted} admitted");
    eprintln!("1,000 requests at once: {admitted} admitted, {calls} Redis calls");

    // What the instances held goes back within a second (and a sweep): the
    // rest of the limit is then admitted, and nothing beyond it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let more = burst(300).await.iter().filter(|&&s| s == 200).count();
    let total = admitted + more;
    assert!((499..=501).contains(&total), "{admitted} + {more} admitted");

    // A stopping instance gives back what it holds: the first takes
    // slices for a second subject and stops at once (before any slice
    // expires); the second then admits exactly the rest.
    let second = unique_key("stop");
    let post = |port: u16, key: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://127.0.0.1:{port}/api/resource"))
                .header("X-API-Key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..40 {
        assert_eq!(post(ports[0], second.clone()).await, 200);
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{}/metrics", ports[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let units = |what: &str| {
        let name = format!("ratelimit_slice_units_total{{policy=\"hot\",what=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let held = units("taken") - units("spent") - units("returned") - units("lost");
    assert!(held > 0, "the first instance holds units: {metrics}");
    signal(&children[0], "-TERM");
    assert!(children[0].wait().unwrap().success());
    let mut rest = 0;
    for _ in 0..3 {
        let answers = futures::future::join_all((0..200).map(|_| post(ports[1], second.clone())));
        rest += answers.await.iter().filter(|&&s| s == 200).count();
    }
    assert!(
        (459..=461).contains(&rest),
        "40 admitted by the stopped instance ({held} units held at stop), {rest} after"
    );
    for child in &mut children[1..] {
        signal(child, "-TERM");
        assert!(child.wait().unwrap().success());
    }
}

/// A slice is given back only into the counter it was taken from: after
/// a reset (which deletes the counter and its epoch), a give-back of a
/// slice taken before is refused, and the new counter stays whole.
#[tokio::test]
async fn a_slice_taken_before_a_reset_never_goes_back_into_the_new_counter() {
    use rate_limiter::limiter::{Counter, Store};
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let rules = rules("gcra", 100, "1h");
    let policy = rules.policies().next().unwrap().clone();
    let subject = ("user".into(), unique_key("epoch"));
    let counter = Counter {
        subject: &subject,
        policy: &policy,
        cost: 0,
        lease: None,
    };
    let taken = store.take_slice(&counter, 1, 40, 2, None).await.unwrap();
    assert_eq!(taken.granted, 40, "at most half of 100: {taken:?}");
    assert_eq!(taken.quota.remaining, 60);
    // Given back before a reset: it counts again.
    assert_eq!(
        store
            .give_slice(&counter, 10, taken.epoch, 0, None)
            .await
            .unwrap(),
        10
    );
    let again = store.take_slice(&counter, 1, 1, 1, None).await.unwrap();
    assert_eq!((again.quota.remaining, again.epoch), (69, taken.epoch));
    // Reset: the counter and its epoch go; the old slice's units stay out.
    store.reset(std::slice::from_ref(&counter)).await.unwrap();
    assert_eq!(
        store
            .give_slice(&counter, 30, taken.epoch, 0, None)
            .await
            .unwrap(),
        0
    );
    let fresh = store.take_slice(&counter, 1, 1, 1, None).await.unwrap();
    assert_eq!(
        fresh.quota.remaining, 99,
        "the new counter is whole, not 129"
    );
    assert_ne!(fresh.epoch, taken.epoch);
    // A fixed window's units never go back after the window's end.
    let rules = rules_fixed();
    let policy = rules.policies().next().unwrap().clone();
    let counter = Counter {
        policy: &policy,
        ..counter
    };
    let start = 1_900_000_000_000u64;
    let taken = store
        .take_slice(&counter, 1, 5, 1, Some(start))
        .await
        .unwrap();
    let end = start + taken.quota.reset.as_millis() as u64;
    assert_eq!(
        store
            .give_slice(&counter, 5, taken.epoch, end, Some(end))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .give_slice(&counter, 5, taken.epoch, end, Some(end - 1))
            .await
            .unwrap(),
        5
    );
}

fn rules_fixed() -> Rules {
    rules("fixed_window", 100, "10s")
}

/// Admin resets and overrides reach a sliced policy on every instance
/// within about a second (the refresh of the reset log and of the
/// overrides; a slice lives a second at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_overrides_reach_sliced_policies_on_every_instance() {
    const TOKEN: &str = "slices-admin-token-0123456789";
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(
        "[[policy]]\nname = \"hot\"\nalgorithm = \"gcra\"\nlimit = 20\nwindow = \"1h\"\n\
         strategy = \"user\"\nslices = true\n",
    );
    let settings = [("ADMIN_TOKEN", TOKEN)];
    let a = support::spawn_app_with_rules(&redis, &rules, &settings).await;
    let b = support::spawn_app_with_rules(&redis, &rules, &settings).await;
    let key = unique_key("admin");
    let mut admitted = 0;
    for _ in 0..30 {
        admitted += usize::from(b.post_resource(Some(&key)).await.status() == 200);
    }
    assert_eq!(admitted, 20);

    // Reset on a: b admits again, and the two together exactly 20 more
    // (what b held before the reset is not given back into the new counter).
    let r = a
        .admin(
            TOKEN,
            reqwest::Method::DELETE,
            &format!("/admin/identities/user/{key}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    support::eventually("b admits after the reset", || async {
        b.post_resource(Some(&key)).await.status() == 200
    })
    .await;
    eprintln!("reset seen by b after {:?}", started.elapsed());
    let mut after = 1;
    for i in 0..60 {
        let app = if i % 2 == 0 { &a } else { &b };
        after += usize::from(app.post_resource(Some(&key)).await.status() == 200);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        after += usize::from(app.post_resource(Some(&key)).await.status() == 200);
    }
    assert_eq!(after, 20, "exactly the limit after the reset");

    // An override reaches b's sliced decisions (GCRA keeps the spent
    // limit's debt in time, so the answer is still a refusal, now under
    // the override's limit).
    let r = a
        .admin(
            TOKEN,
            reqwest::Method::PUT,
            &format!("/admin/overrides/user/{key}"),
        )
        .json(&serde_json::json!({"limit": 50, "window": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    support::eventually("b applies the override", || async {
        let r = b.post_resource(Some(&key)).await;
        support::header_u64(&r, "X-RateLimit-Limit") == 50
    })
    .await;
    eprintln!("override seen by b after {:?}", started.elapsed());
}

/// `slices = true` in a rules file, `slices: true` in a YAML `rate_limit`;
/// refused, naming the key, where a slice has no meaning (a sliding
/// window, a concurrency policy, a debit).
#[test]
fn slices_is_a_key_of_the_rules_file_and_of_the_yaml() {
    let policy = |algorithm: &str, extra: &str| {
        Rules::parse(
            "rules.toml",
            &format!(
                "[[policy]]\nname = \"p\"\nalgorithm = \"{algorithm}\"\nlimit = 100\n\
                 {extra}slices = true\n"
            ),
        )
        .map(|r| r.policies().next().unwrap().slices())
    };
    for algorithm in ["fixed_window", "token_bucket", "gcra"] {
        assert_eq!(policy(algorithm, "window = \"1h\"\n"), Ok(true));
    }
    for (algorithm, extra) in [
        ("sliding_window", "window = \"1h\"\n"),
        ("gcra", "window = \"1h\"\ndebit = true\n"),
        ("concurrency", "lease = \"30s\"\n"),
    ] {
        let err = policy(algorithm, extra).unwrap_err().to_string();
        assert!(err.contains("slices"), "{algorithm}: {err}");
    }
    let yaml = |limit: &str| {
        rate_limiter::limiter::rules::erl::parse(
            &[(
                "config.hot.yaml".into(),
                format!("domain: hot\ndescriptors:\n  - key: user\n    rate_limit: {limit}\n"),
            )],
            false,
        )
    };
    assert!(yaml("{ unit: hour, requests_per_unit: 5, slices: true }").is_ok());
    let err = yaml("{ unit: hour, requests_per_unit: 5, slices: true, algorithm: sliding_window }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sliding window cannot be sliced"), "{err}");
    let err = yaml("{ unit: hour, requests_per_unit: 5, slices: often }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slices"), "{err}");
}

/// A request with a sliced policy and an unsliced one: when the unsliced
/// one refuses, the units the sliced one took from its slice go back to it,
/// so refused requests cost the sliced budget nothing. (Here the unsliced
/// policy limits one route; the caller's other route shows what is left of
/// the sliced budget.)
#[tokio::test]
async fn units_of_a_request_another_policy_refuses_go_back_to_the_slice() {
    let redis = RedisServer::start().await;
    let rules = support::RulesFile::new(
        "[[policy]]\nname = \"hot\"\nalgorithm = \"gcra\"\nlimit = 10\nwindow = \"1h\"\n\
         strategy = \"user\"\nslices = true\n\n\
         [[policy]]\nname = \"orders\"\nalgorithm = \"gcra\"\nlimit = 1\nwindow = \"1h\"\n\
         strategy = \"user\"\nroute = \"POST /v1/orders\"\n",
    );
    let app =
        support::spawn_app_with_rules(&redis, &rules, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let key = unique_key("refused");
    let ask = |method: &'static str, uri: &'static str| {
        let request = app
            .client
            .get(app.url("/v1/forward-auth"))
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", uri)
            .header("X-API-Key", &key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(ask("POST", "/v1/orders").await);
    }
    assert_eq!(orders, [200, 429, 429, 429, 429], "orders: one an hour");
    // The hot budget lost only the one admitted order: nine more requests
    // elsewhere, and then it is spent.
    let mut admitted = 0;
    for _ in 0..12 {
        admitted += usize::from(ask("GET", "/v1/catalog").await == 200);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..4 {
        admitted += usize::from(ask("GET", "/v1/catalog").await == 200);
    }
    assert_eq!(admitted, 9, "the refused orders took nothing of the 10");
}

/// A flood of made-up subjects under a sliced policy: at most
/// `MAX_CELLS` are sliced at once (a request of any other is decided
/// exactly, by Redis), and the sweep drops the idle ones, so what the
/// slices hold does not grow with client input.
#[tokio::test]
async fn sliced_subjects_are_bounded_and_idle_ones_dropped() {
    use rate_limiter::limiter::slices::{Slices, MAX_CELLS};
    use rate_limiter::limiter::{Counter, Quota, SliceTaken};
    let redis = RedisServer::start().await;
    let store = redis.store().await;
    let clock = Arc::new(AtomicU64::new(1_000));
    let slices = Slices::new(Clock::Manual(clock.clone()), Arc::new(Metrics::new()));
    let rules = rules("gcra", 100, "1h");
    let policy = rules.policies().next().unwrap().clone();
    // Each take grants exactly the unit asked: nothing is left to give back.
    let take = |need: u64, _want: u64, now: Option<u64>| async move {
        Ok(SliceTaken {
            granted: need,
            quota: Quota {
                allowed: true,
                limit: 100,
                remaining: 50,
                reset: Duration::from_secs(60),
                retry_after: Duration::ZERO,
                now_ms: now.unwrap_or_default(),
            },
            epoch: 1,
        })
    };
    for i in 0..MAX_CELLS + 100 {
        let subject = ("user".into(), format!("flood-{i}"));
        let counter = Counter {
            subject: &subject,
            policy: &policy,
            cost: 1,
            lease: None,
        };
        let spent = slices.spend(&counter, take).await.unwrap();
        assert_eq!(spent.is_some(), i < MAX_CELLS, "subject {i}");
    }
    assert_eq!(slices.len(), MAX_CELLS);
    // Past their slices' life and idle: the sweep drops them all.
    clock.store(1_000 + 20_000, Ordering::Relaxed);
    slices.sweep(&store, false).await;
    assert!(slices.is_empty(), "{} subjects left", slices.len());
}
