//! What the limiter decides: an [`Outcome`] (every counter of a request
//! with its quota, and a decision per descriptor) inside a [`Decision`].
//! Being limited is a normal outcome ([`Decision::Denied`]), not an error;
//! [`LimiterError`] is only for a store that cannot answer while the
//! failure mode is `closed`.

use std::sync::Arc;
use std::time::Duration;

use super::local;
use super::store::StoreError;
use crate::policy::{Policy, Quota};

/// The policies checked for one request, each with its quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub quotas: Vec<(Arc<Policy>, Quota)>,
    /// For each of `quotas`, the index of the request's descriptor it
    /// belongs to.
    pub descriptors: Vec<usize>,
    /// Index into `quotas` of the one to report in `X-RateLimit-*`: when
    /// denied, the denying policy that frees up last; otherwise the policy
    /// closest to exhaustion.
    pub reported: usize,
}

impl Outcome {
    /// `reported` is chosen among the enforced policies (shadow ones decide
    /// nothing a client sees); only when every policy is a shadow one (global
    /// shadow mode) among all of them, for the status endpoints.
    pub(super) fn new(
        quotas: Vec<(Arc<Policy>, Quota)>,
        descriptors: Vec<usize>,
        allowed: bool,
    ) -> Self {
        let any_enforced = quotas.iter().any(|(p, _)| !p.shadow());
        let candidates = || {
            quotas
                .iter()
                .enumerate()
                .filter(move |(_, (p, _))| !any_enforced || !p.shadow())
        };
        let mut reported = candidates().next().map_or(0, |(i, _)| i);
        for (i, (_, q)) in candidates() {
            let best = &quotas[reported].1;
            let better = if allowed {
                q.tighter_than(best)
            } else {
                match (q.allowed, best.allowed) {
                    (false, true) => true,
                    (true, false) => false,
                    _ => q.retry_after > best.retry_after,
                }
            };
            if better {
                reported = i;
            }
        }
        Outcome {
            quotas,
            descriptors,
            reported,
        }
    }

    /// The decision for each of `count` descriptors: `None` for one that no
    /// limit matched; otherwise whether its enforced limits allow, and the
    /// quota of the one closest to exhaustion (or, denied, the one that
    /// frees up last).
    pub fn per_descriptor(&self, count: usize) -> Vec<Option<(bool, Quota)>> {
        self.per_descriptor_reported(count)
            .into_iter()
            .map(|d| d.map(|(allowed, i)| (allowed, self.quotas[i].1)))
            .collect()
    }

    /// As [`Outcome::per_descriptor`], with the index in `quotas` of the
    /// policy reported for each descriptor.
    pub fn per_descriptor_reported(&self, count: usize) -> Vec<Option<(bool, usize)>> {
        let mut out: Vec<Option<(bool, usize)>> = vec![None; count];
        for (i, ((policy, quota), &d)) in self.quotas.iter().zip(&self.descriptors).enumerate() {
            let Some(slot) = out.get_mut(d) else { continue };
            let denies = !quota.allowed && !policy.shadow();
            *slot = Some(match *slot {
                None => (!denies, i),
                Some((allowed, best)) => {
                    let best_quota = &self.quotas[best].1;
                    let allowed = allowed && !denies;
                    let pick = if allowed {
                        quota.tighter_than(best_quota)
                    } else {
                        denies && quota.retry_after >= best_quota.retry_after
                    };
                    (allowed, if pick { i } else { best })
                }
            });
        }
        out
    }

    pub fn reported(&self) -> (&Policy, &Quota) {
        let (policy, quota) = &self.quotas[self.reported];
        (policy, quota)
    }

    /// The reported policy if it is enforced: what `X-RateLimit-*` shows.
    pub fn enforced_reported(&self) -> Option<(&Policy, &Quota)> {
        Some(self.reported()).filter(|(p, _)| !p.shadow())
    }

    /// The enforced policies with their quotas.
    pub fn enforced(&self) -> impl Iterator<Item = (&Policy, &Quota)> {
        self.quotas
            .iter()
            .filter(|(p, _)| !p.shadow())
            .map(|(p, q)| (p.as_ref(), q))
    }

    /// Until every enforced policy that denies allows again (shadow
    /// policies never make a client wait); zero when none denies.
    pub fn retry_after(&self) -> Duration {
        self.enforced()
            .filter(|(_, q)| !q.allowed)
            .map(|(_, q)| q.retry_after)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// `Retry-After` for a denied request, in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after().as_millis() as u64)
            .div_ceil(1000)
            .max(1)
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Outcome),
    Denied(Outcome),
    /// No policy applies to this caller and route, or the caller is on the
    /// allow-list: answered without Redis.
    Unlimited,
    /// The caller is on the deny-list: refused without Redis.
    Blocked,
    /// The store could not answer and the failure mode is `open`: the
    /// request goes through uncounted.
    Degraded {
        error: StoreError,
        policies: Vec<Arc<Policy>>,
    },
    /// The store could not answer and the failure mode is `local`: this
    /// instance decided alone, approximately.
    Local {
        error: StoreError,
        verdict: local::LocalVerdict,
        policies: Vec<Arc<Policy>>,
    },
}

/// Where a caller stands, read without counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Limited(Outcome),
    Unlimited,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The store could not answer and the failure mode is `closed`.
    #[error("rate limiter unavailable: {0}")]
    Unavailable(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;
    use std::num::NonZeroU32;

    fn quota(remaining: u32, limit: u32, retry_ms: u64) -> Quota {
        Quota {
            allowed: retry_ms == 0,
            limit,
            remaining,
            reset: Duration::from_millis(1000),
            retry_after: Duration::from_millis(retry_ms),
            now_ms: 0,
        }
    }

    fn policy(name: &str) -> Arc<Policy> {
        Arc::new(
            Policy::new(
                name,
                Algorithm::FixedWindow,
                NonZeroU32::new(10).unwrap(),
                Duration::from_secs(1),
                1,
            )
            .unwrap(),
        )
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        assert_eq!(quota(0, 10, 1).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 999).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 1000).retry_after_secs(), 1);
        assert_eq!(quota(0, 10, 1001).retry_after_secs(), 2);
        assert_eq!(quota(0, 10, 0).retry_after_secs(), 1);
    }

    #[test]
    fn reset_is_an_absolute_second_never_early() {
        let q = |now_ms, reset_ms| Quota {
            now_ms,
            reset: Duration::from_millis(reset_ms),
            ..quota(0, 10, 0)
        };
        assert_eq!(q(1_000_000, 500).reset_at_unix(), 1001);
        assert_eq!(q(1_000_000, 1000).reset_at_unix(), 1001);
        assert_eq!(q(1_000_001, 59_999).reset_at_unix(), 1060);
    }

    #[test]
    fn the_reported_policy_is_the_closest_to_exhaustion() {
        // 5 of 10 left is tighter than 90 of 100.
        let o = Outcome::new(
            vec![
                (policy("a"), quota(90, 100, 0)),
                (policy("b"), quota(5, 10, 0)),
            ],
            vec![0, 1],
            true,
        );
        assert_eq!(o.reported().0.name(), "b");
        // When denied, the denying policy that frees up last.
        let o = Outcome::new(
            vec![
                (policy("a"), quota(0, 10, 2000)),
                (policy("b"), quota(3, 10, 0)),
                (policy("c"), quota(0, 10, 9000)),
            ],
            vec![0, 0, 2],
            false,
        );
        assert_eq!(o.reported().0.name(), "c");
        assert_eq!(o.retry_after_secs(), 9);
        // Per descriptor: the first denied by "a", the second matched
        // nothing, the third denied by "c".
        let per = o.per_descriptor(3);
        assert_eq!(
            per[0].map(|(allowed, q)| (allowed, q.retry_after)),
            Some((false, Duration::from_millis(2000)))
        );
        assert_eq!(per[1], None);
        assert_eq!(per[2].map(|(allowed, _)| allowed), Some(false));
    }

    #[test]
    fn policies_refuse_what_the_scripts_cannot_count() {
        let limit = NonZeroU32::new(5).unwrap();
        let window = Duration::from_secs(60);
        assert!(Policy::new("ok-name_1", Algorithm::Gcra, limit, window, 1).is_ok());
        assert!(Policy::new("bad name", Algorithm::Gcra, limit, window, 1).is_err());
        assert!(Policy::new("", Algorithm::Gcra, limit, window, 1).is_err());
        assert!(Policy::new("x", Algorithm::Gcra, limit, window, 6).is_err());
        assert!(Policy::new("x", Algorithm::Gcra, limit, Duration::from_micros(1500), 1).is_err());
        let huge = NonZeroU32::new(u32::MAX).unwrap();
        assert!(Policy::new(
            "x",
            Algorithm::Gcra,
            huge,
            Duration::from_secs(86400 * 30),
            1
        )
        .is_err());
    }
}
