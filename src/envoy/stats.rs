//! envoyproxy/ratelimit's per-rule metrics: hits within, over and near
//! each limit, labelled by the rule's path (or the request's values with
//! `detailed_metric`).

use std::borrow::Cow;

use super::Rls;
use crate::limiter::Descriptor;
use crate::policy::Label;

/// How a descriptor's hits count in envoyproxy/ratelimit's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    /// Within its limit, with what is left of it.
    Within { remaining: u32, limit: u32 },
    /// Over an enforced limit.
    Over,
    /// Over a shadow-mode limit (allowed).
    ShadowOver,
}

impl Rls {
    /// envoyproxy/ratelimit's per-rule counts (in hits) for one descriptor.
    pub(super) fn count(&self, domain: &str, label: &Label, d: &Descriptor, verdict: Counted) {
        let Ok(hits) = u64::try_from(d.hits) else {
            return; // a refund counts nothing
        };
        let metrics = &self.state.limiter.metrics().envoy;
        // detailed_metric: the request's values at each level.
        let level = |i: usize| {
            d.entries
                .get(i)
                .map(|(k, v)| format!("{k}_{v}"))
                .unwrap_or_default()
        };
        let (key1, key2) = if label.detailed {
            (Cow::Owned(level(0)), Cow::Owned(level(1)))
        } else {
            (
                Cow::Borrowed(label.key1.as_str()),
                Cow::Borrowed(label.key2.as_str()),
            )
        };
        let labels = metrics.labels(domain, &key1, &key2, label.detailed);
        metrics.total_hits.with_label_values(&labels).inc_by(hits);
        let (remaining, limit) = match verdict {
            Counted::Within { remaining, limit } => (remaining, limit),
            over => {
                metrics.over_limit.with_label_values(&labels).inc_by(hits);
                if over == Counted::ShadowOver {
                    metrics.shadow_mode.with_label_values(&labels).inc_by(hits);
                }
                return;
            }
        };
        metrics.within_limit.with_label_values(&labels).inc_by(hits);
        // After this hit `limit - remaining` are used; past the near-limit
        // share of the limit, the hits beyond it are near_limit ones.
        let near = (f64::from(limit) * self.settings.near_limit_ratio.0).floor() as u64;
        let after = u64::from(limit.saturating_sub(remaining));
        if after > near {
            let before = after.saturating_sub(hits);
            let count = if before >= near { hits } else { after - near };
            metrics.near_limit.with_label_values(&labels).inc_by(count);
        }
    }
}
