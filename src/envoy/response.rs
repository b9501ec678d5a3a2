//! The core's decision as Envoy's answer: a status per descriptor (its
//! limit, what remains, when it resets) and the headers Envoy adds to the
//! client's response.

use std::borrow::Cow;
use std::fmt::Write;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::{Counted, Rls};
use crate::limiter::{Descriptor, Outcome};
use crate::policy::{Label, Policy, Quota, Unit};

/// `limit_remaining` of an unlimited descriptor.
pub(super) const UNLIMITED_REMAINING: u32 = u32::MAX;

impl Rls {
    /// The status of a descriptor the store answered for: the policy
    /// reported for it (its tightest, or the one denying longest), and its
    /// effective window.
    pub(super) fn limited_status(
        &self,
        domain: &str,
        outcome: &Outcome,
        index: usize,
        allowed: bool,
        d: &Descriptor,
    ) -> (DescriptorStatus, u64) {
        let (policy, quota) = &outcome.quotas[index];
        let label = label_of(policy);
        let over = !quota.allowed;
        let verdict = match (over, policy.shadow()) {
            (false, _) => Counted::Within {
                remaining: quota.remaining,
                limit: quota.limit,
            },
            (true, false) => Counted::Over,
            (true, true) => Counted::ShadowOver,
        };
        self.count(domain, &label, d, verdict);
        let status = DescriptorStatus {
            code: if allowed { Code::Ok } else { Code::OverLimit } as i32,
            current_limit: Some(current_limit(&label)),
            limit_remaining: if over { 0 } else { quota.remaining },
            duration_until_reset: Some(seconds(reset_secs(quota))),
            quota: None,
        };
        let t = quota.effective_window_secs(policy.algorithm(), policy.window());
        (status, t)
    }

    /// LIMIT_RESPONSE_HEADERS_ENABLED's three headers, from the status with
    /// the least remaining; and on OVER_LIMIT `Retry-After` and the IETF
    /// `RateLimit-Policy` / `RateLimit` fields. `windows` holds each
    /// status's effective window (draft-ietf-httpapi-ratelimit-headers-11's
    /// `t`): for an over-limit one, the wait until it allows again.
    pub(super) fn headers(
        &self,
        statuses: &[DescriptorStatus],
        windows: &[u64],
        over: bool,
    ) -> Vec<HeaderValue> {
        let mut headers = Vec::new();
        let limited = || {
            statuses
                .iter()
                .zip(windows)
                .filter(|(s, _)| s.current_limit.is_some())
        };
        let reset = |s: &DescriptorStatus| s.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
        if let Some(names) = &self.settings.limit_headers {
            let closest = limited()
                .min_by_key(|(s, _)| (s.code != Code::OverLimit as i32, s.limit_remaining));
            if let Some((s, _)) = closest {
                let limit = s.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
                headers.push(header(&names.limit, limit.to_string()));
                headers.push(header(&names.remaining, s.limit_remaining.to_string()));
                headers.push(header(&names.reset, reset(s).to_string()));
            }
        }
        if over {
            // Long enough that every over-limit descriptor allows again.
            let retry_after = statuses
                .iter()
                .zip(windows)
                .filter(|(s, _)| s.code == Code::OverLimit as i32)
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(1)
                .max(1);
            headers.push(header("retry-after", retry_after.to_string()));
            let (mut policy, mut state) = (String::new(), String::new());
            for (i, (s, t)) in limited().enumerate() {
                let Some(limit) = &s.current_limit else {
                    continue;
                };
                let sep = if i > 0 { ", " } else { "" };
                let name = sf_string(&limit.name, i);
                let window = Unit::try_from_code(limit.unit).map_or(1, Unit::seconds);
                let _ = write!(
                    policy,
                    "{sep}{name};q={};w={window}",
                    limit.requests_per_unit
                );
                let _ = write!(state, "{sep}{name};r={};t={t}", s.limit_remaining);
            }
            if !policy.is_empty() {
                headers.push(header("ratelimit-policy", policy));
                headers.push(header("ratelimit", state));
            }
        }
        headers
    }
}

/// The label of a policy: its rule's, or one made up for a policy of the
/// HTTP domain asked about through Envoy.
fn label_of(policy: &Policy) -> Cow<'_, Label> {
    match policy.label() {
        Some(label) => Cow::Borrowed(label),
        None => Cow::Owned(Label {
            name: policy.name().to_owned(),
            requests_per_unit: policy.limit().get(),
            unit: Unit::base_of(policy.window()),
            stats_key: format!("http.{}", policy.name()),
            key1: policy.name().to_owned(),
            key2: String::new(),
            detailed: false,
            ratelimit_key_prefix: None,
        }),
    }
}

pub(super) fn current_limit(label: &Label) -> RateLimit {
    RateLimit {
        name: label.name.clone(),
        requests_per_unit: label.requests_per_unit,
        unit: label.unit as i32,
    }
}

pub(super) fn ok_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

pub(super) fn seconds(seconds: u64) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Whole seconds until the quota is full again, at least 1 (a window that
/// ends in 300 ms is reported as 1 s, never 0).
fn reset_secs(quota: &Quota) -> u64 {
    quota.reset_secs().max(1)
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    }
}

/// A limit's name as an sf-string (`"name"`), or `"limit-<i>"` when it has
/// none.
fn sf_string(name: &str, index: usize) -> String {
    if name.is_empty() {
        return format!("\"limit-{}\"", index + 1);
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::time::Duration;

    use crate::policy::Algorithm;

    #[test]
    fn limit_names_become_sf_strings() {
        assert_eq!(sf_string("per_key", 0), "\"per_key\"");
        assert_eq!(sf_string("", 1), "\"limit-2\"");
        assert_eq!(sf_string("a\"b\\c", 0), "\"a\\\"b\\\\c\"");
        // Only printable ASCII can be in an sf-string.
        assert_eq!(sf_string("tab\there é", 0), "\"tabhere \"");
    }

    #[test]
    fn a_policy_of_the_http_domain_gets_a_label_of_its_own() {
        let policy = Policy::new(
            "user",
            Algorithm::Gcra,
            NonZeroU32::new(20).unwrap(),
            Duration::from_secs(3600),
            1,
        )
        .unwrap();
        let label = label_of(&policy);
        assert_eq!(label.name, "user");
        assert_eq!(label.unit, Unit::Hour);
        assert_eq!(label.stats_key, "http.user");
        let limit = current_limit(&label);
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("user", 20, Unit::Hour as i32)
        );
    }

    #[test]
    fn durations_are_whole_seconds_at_least_one() {
        assert_eq!(seconds(u64::MAX).seconds, i64::MAX);
        let quota = Quota {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset: Duration::from_millis(300),
            retry_after: Duration::ZERO,
            now_ms: 0,
        };
        assert_eq!(reset_secs(&quota), 1, "300 ms is reported as 1 s, never 0");
        assert_eq!(ok_status().code, Code::Ok as i32);
    }
}
