//! Policies, units, windows and quotas: the values every other module
//! builds on.

use super::*;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_policy_is_valid_or_says_which_key_is_wrong() {
    let ok = Policy::new("per-key_1", Algorithm::Gcra, nz(10), secs(60), 2).unwrap();
    assert_eq!(
        (ok.name(), ok.limit().get(), ok.window_ms(), ok.cost()),
        ("per-key_1", 10, 60_000, 2)
    );
    let cases: [(Result<Policy, PolicyError>, &str); 5] = [
        (Policy::new("", Algorithm::Gcra, nz(1), secs(1), 1), "name"),
        (
            Policy::new("a b", Algorithm::Gcra, nz(1), secs(1), 1),
            "name",
        ),
        (
            Policy::new("w", Algorithm::Gcra, nz(1), Duration::from_micros(1500), 1),
            "window",
        ),
        (Policy::new("c", Algorithm::Gcra, nz(5), secs(1), 6), "cost"),
        (
            Policy::new(
                "big",
                Algorithm::TokenBucket,
                nz(u32::MAX),
                secs(366 * 86_400),
                1,
            ),
            "limit",
        ),
    ];
    for (result, key) in cases {
        assert_eq!(result.unwrap_err().key(), key);
    }
    // A fixed window counts up to its limit only: no product to overflow.
    assert!(Policy::new(
        "big",
        Algorithm::FixedWindow,
        nz(u32::MAX),
        secs(366 * 86_400),
        1
    )
    .is_ok());
    let name = "x".repeat(65);
    assert!(Policy::new(name, Algorithm::Gcra, nz(1), secs(1), 1).is_err());
}

#[test]
fn with_limit_keeps_everything_else() {
    let p = Policy::new("p", Algorithm::SlidingWindow, nz(10), secs(60), 3)
        .unwrap()
        .with_shadow(true)
        .with_per_client_ip(true);
    let q = p.with_limit(nz(100), secs(3600)).unwrap();
    assert_eq!(
        (q.limit().get(), q.window(), q.cost()),
        (100, secs(3600), 3)
    );
    assert!(q.shadow() && q.per_client_ip());
    assert_eq!(q.algorithm(), Algorithm::SlidingWindow);
    assert_eq!(p.with_limit(nz(2), secs(1)).unwrap_err().key(), "cost");
}

#[test]
fn algorithms_and_failure_modes_parse_their_names() {
    for algorithm in Algorithm::ALL {
        assert_eq!(algorithm.as_str().parse::<Algorithm>().unwrap(), algorithm);
        assert_eq!(algorithm.to_string(), algorithm.as_str());
    }
    assert!("leaky".parse::<Algorithm>().is_err());
    for mode in [FailureMode::Open, FailureMode::Closed, FailureMode::Local] {
        assert_eq!(
            mode.as_str().to_uppercase().parse::<FailureMode>().unwrap(),
            mode
        );
    }
    assert!(FailureMode::Closed.strictness() > FailureMode::Local.strictness());
    assert!(FailureMode::Local.strictness() > FailureMode::Open.strictness());
}

#[test]
fn units_have_envoys_numbers_and_lengths() {
    for (code, unit, seconds) in [
        (1, Unit::Second, 1),
        (2, Unit::Minute, 60),
        (3, Unit::Hour, 3600),
        (4, Unit::Day, 86_400),
        (5, Unit::Month, 30 * 86_400),
        (6, Unit::Year, 365 * 86_400),
        (7, Unit::Week, 7 * 86_400),
    ] {
        assert_eq!(Unit::try_from_code(code), Some(unit));
        assert_eq!(unit.seconds(), seconds);
        assert_eq!(Unit::parse(unit.as_str()), Some(unit));
        assert_eq!(Unit::base_of(secs(seconds)), unit);
    }
    assert_eq!(Unit::try_from_code(0), None);
    assert_eq!(Unit::try_from_code(8), None);
    assert_eq!(Unit::base_of(secs(90)), Unit::Second);
    assert_eq!(Unit::base_of(secs(7200)), Unit::Hour);
}

#[test]
fn windows_are_seconds_or_durations_within_a_year() {
    assert_eq!(parse_window("60"), Ok(secs(60)));
    assert_eq!(parse_window("15m"), Ok(secs(900)));
    assert_eq!(parse_window("1d"), Ok(secs(86_400)));
    assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
    for bad in ["0", "0s", "1500us", "400d", "soon", ""] {
        assert!(parse_window(bad).is_err(), "{bad}");
    }
}

fn quota(allowed: bool, limit: u32, remaining: u32, reset_ms: u64, retry_ms: u64) -> Quota {
    Quota {
        allowed,
        limit,
        remaining,
        reset: Duration::from_millis(reset_ms),
        retry_after: Duration::from_millis(retry_ms),
        now_ms: 1_000_000_500,
    }
}

#[test]
fn quota_times_round_up_so_a_client_is_never_early() {
    let q = quota(false, 10, 0, 1_001, 1);
    assert_eq!(q.reset_secs(), 2);
    assert_eq!(q.reset_at_unix(), 1_000_002);
    assert_eq!(q.retry_after_secs(), 1, "at least one second");
    assert_eq!(quota(false, 10, 0, 0, 2_500).retry_after_secs(), 3);
    assert!(quota(true, 10, 1, 0, 0).tighter_than(&quota(true, 100, 50, 0, 0)));
    assert!(!quota(true, 100, 50, 0, 0).tighter_than(&quota(true, 10, 5, 0, 0)));
    assert!(quota(true, 100, 50, 0, 0).tighter_than(&quota(true, 200, 100, 0, 0)));
}

/// `t` of draft-ietf-httpapi-ratelimit-headers-11: within `t` seconds the
/// caller can use no more than `r`.
#[test]
fn the_effective_window_is_until_the_available_quota_grows() {
    let minute = secs(60);
    // Denied, every algorithm: until the request fits, as Retry-After.
    for algorithm in Algorithm::ALL {
        let denied = quota(false, 10, 0, 50_000, 5_200);
        assert_eq!(denied.effective_window_secs(algorithm, minute), 6);
    }
    // A fixed window gives everything back when it ends.
    let fixed = quota(true, 10, 3, 41_200, 0);
    assert_eq!(
        fixed.effective_window_secs(Algorithm::FixedWindow, minute),
        42
    );
    // A bucket of 10 per minute refills one unit every 6 s. 3 used, full in
    // 15.5 s: the next unit is back in 15.5 - 2 x 6 = 3.5 s.
    for algorithm in [Algorithm::TokenBucket, Algorithm::Gcra] {
        let bucket = quota(true, 10, 7, 15_500, 0);
        assert_eq!(bucket.effective_window_secs(algorithm, minute), 4);
        // Full: a unit spent now is back after one emission interval.
        let full = quota(true, 10, 10, 0, 0);
        assert_eq!(full.effective_window_secs(algorithm, minute), 6);
        // Faster than one a second: the next unit within the second.
        let fast = quota(true, 1000, 990, 10, 0);
        assert_eq!(fast.effective_window_secs(algorithm, secs(1)), 1);
    }
    // A sliding window frees 4 units over the 20 s until it is empty.
    let sliding = quota(true, 10, 6, 20_000, 0);
    assert_eq!(
        sliding.effective_window_secs(Algorithm::SlidingWindow, minute),
        5
    );
    let empty = quota(true, 10, 10, 0, 0);
    assert_eq!(
        empty.effective_window_secs(Algorithm::SlidingWindow, minute),
        1
    );
}
