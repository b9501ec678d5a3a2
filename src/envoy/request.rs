//! A `RateLimitRequest` as the core's check request: the domain, each
//! descriptor's entries, hits and per-descriptor limit, within the bounds
//! that keep a caller's input from becoming huge keys or labels.

use std::borrow::Cow;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use super::RlsError;
use crate::limiter::{CheckRequest, Descriptor, LimitOverride};
use crate::policy::Unit;

/// Descriptors in one request, entries in one descriptor, bytes in a
/// domain, an entry's key and an entry's value: beyond these a request is
/// refused (INVALID_ARGUMENT) rather than turned into huge Redis keys, metric
/// labels or top-offender names. Why these sizes: a domain and a key are
/// names from the configuration (envoyproxy/ratelimit's own are a few dozen
/// bytes); a value is what Envoy read from the request (an address, a
/// header, a path, a claim), and 1 KiB holds any of those a rule matches
/// on. A Redis key holds the domain and the descriptor's entries, so one
/// key stays within a few KiB, not the 8 KiB per entry these were.
pub const MAX_DESCRIPTORS: usize = 256;
pub const MAX_ENTRIES: usize = 64;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 1024;

/// The check request of a `RateLimitRequest`, or why it is malformed.
pub fn check_request(request: &RateLimitRequest) -> Result<CheckRequest, RlsError> {
    let invalid = |m: &str| Err(RlsError::InvalidArgument(m.to_owned()));
    if request.domain.is_empty() {
        return invalid("rate limit domain must not be empty");
    }
    if request.descriptors.is_empty() {
        return invalid("rate limit descriptor list must not be empty");
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return invalid(&format!(
            "at most {MAX_DESCRIPTORS} descriptors per request"
        ));
    }
    if request.domain.len() > MAX_NAME_BYTES {
        return invalid(&format!("the domain is longer than {MAX_NAME_BYTES} bytes"));
    }
    let default_hits = u64::from(request.hits_addend.max(1));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| descriptor(d, default_hits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CheckRequest {
        domain: Cow::Owned(request.domain.clone()),
        descriptors,
    })
}

fn descriptor(d: &RateLimitDescriptor, default_hits: u64) -> Result<Descriptor, RlsError> {
    let invalid = |m: String| Err(RlsError::InvalidArgument(m));
    if d.entries.len() > MAX_ENTRIES {
        return invalid(format!("at most {MAX_ENTRIES} entries per descriptor"));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    for e in &d.entries {
        if e.key.is_empty() {
            return invalid("a descriptor entry has an empty key".into());
        }
        if e.key.len() > MAX_NAME_BYTES || e.value.len() > MAX_VALUE_BYTES {
            return invalid(format!(
                "a descriptor entry's key is longer than {MAX_NAME_BYTES} bytes or its value longer than {MAX_VALUE_BYTES}"
            ));
        }
        entries.push((Cow::Owned(e.key.clone()), e.value.clone()));
    }
    // Present and 0 is a check that takes nothing; far beyond any limit is
    // as good as u32::MAX.
    let hits = d.hits_addend.as_ref().map_or(default_hits, |h| h.value);
    let hits = i64::from(u32::try_from(hits).unwrap_or(u32::MAX));
    let limit = match &d.limit {
        None => None,
        Some(limit) => {
            let Some(unit) = Unit::from_override_code(limit.unit) else {
                return invalid(
                    "a descriptor's limit needs a unit: SECOND, MINUTE, HOUR, DAY, MONTH or YEAR"
                        .into(),
                );
            };
            Some(LimitOverride {
                requests_per_unit: limit.requests_per_unit,
                unit,
            })
        }
    };
    // A trailing `request_id` entry names the request's concurrency lease
    // (acquired by its positive hit, released by its negative one); it is
    // not part of what the rules match.
    let lease = match entries.last() {
        Some((key, _)) if key == LEASE_ENTRY && entries.len() > 1 => {
            entries.pop().map(|(_, id)| id)
        }
        _ => None,
    };
    Ok(Descriptor {
        entries,
        hits: if d.is_negative_hits { -hits } else { hits },
        limit,
        lease,
        leases: crate::limiter::LeaseMode::All,
    })
}

/// The descriptor entry whose value names a concurrency lease (Envoy's
/// `request_headers: { header_name: x-request-id, descriptor_key: request_id }`).
pub const LEASE_ENTRY: &str = "request_id";

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::google::protobuf::UInt64Value;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors,
            hits_addend,
        }
    }

    fn invalid(r: &RateLimitRequest) -> String {
        match check_request(r) {
            Err(RlsError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn entries_and_hits_map_to_a_check_request() {
        let mut refund = descriptor(&[("api_key", "k1")]);
        refund.is_negative_hits = true;
        let mut own = descriptor(&[("api_key", "k1"), ("path", "/v1")]);
        own.hits_addend = Some(UInt64Value { value: 7 });
        let mut peek = descriptor(&[("a", "")]);
        peek.hits_addend = Some(UInt64Value { value: 0 });
        let mut huge = descriptor(&[("a", "b")]);
        huge.hits_addend = Some(UInt64Value { value: u64::MAX });
        let check = check_request(&request(vec![refund, own, peek, huge], 3)).unwrap();
        assert_eq!(check.domain, "edge");
        let hits: Vec<i64> = check.descriptors.iter().map(|d| d.hits).collect();
        assert_eq!(hits, [-3, 7, 0, i64::from(u32::MAX)]);
        assert_eq!(check.descriptors[1].entries[1].0, "path");
        assert_eq!(check.descriptors[1].entries[1].1, "/v1");
        assert_eq!(
            check.descriptors[2].entries[0].1, "",
            "an empty value is a value"
        );
        // hits_addend 0 means one hit.
        let one = check_request(&request(vec![descriptor(&[("a", "b")])], 0)).unwrap();
        assert_eq!(one.descriptors[0].hits, 1);
    }

    #[test]
    fn a_descriptors_limit_needs_a_unit() {
        let mut d = descriptor(&[("a", "b")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 42,
            unit: 3,
        });
        let check = check_request(&request(vec![d.clone()], 1)).unwrap();
        let limit = check.descriptors[0].limit.unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (42, Unit::Hour));
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 42,
            unit: 0,
        });
        assert!(invalid(&request(vec![d], 1)).contains("needs a unit"));
    }

    #[test]
    fn malformed_or_oversized_requests_are_invalid_arguments() {
        let ok = || descriptor(&[("a", "b")]);
        let mut no_domain = request(vec![ok()], 1);
        no_domain.domain.clear();
        assert!(invalid(&no_domain).contains("domain"));
        assert!(invalid(&request(vec![], 1)).contains("descriptor list"));
        assert!(invalid(&request(vec![ok(); MAX_DESCRIPTORS + 1], 1)).contains("descriptors"));
        let mut long_domain = request(vec![ok()], 1);
        long_domain.domain = "d".repeat(MAX_NAME_BYTES + 1);
        assert!(invalid(&long_domain).contains("domain"));
        assert!(invalid(&request(vec![descriptor(&[("", "v")])], 1)).contains("empty key"));
        let long_key = "k".repeat(MAX_NAME_BYTES + 1);
        assert!(invalid(&request(vec![descriptor(&[(&long_key, "v")])], 1)).contains("longer"));
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        assert!(invalid(&request(vec![descriptor(&[("k", &long_value)])], 1)).contains("longer"));
        let many = vec![("k", "v"); MAX_ENTRIES + 1];
        assert!(invalid(&request(vec![descriptor(&many)], 1)).contains("entries"));
        // At the bounds: accepted.
        let key = "k".repeat(MAX_NAME_BYTES);
        let value = "v".repeat(MAX_VALUE_BYTES);
        let edge = vec![(key.as_str(), value.as_str()); MAX_ENTRIES];
        assert!(check_request(&request(vec![descriptor(&edge)], 1)).is_ok());
    }
}
