//! The key layout: where each counter, the overrides and the reset log live
//! in Redis, and the encoding that keeps every subject inside its hash tag.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::limiter::request::{parse_path, path_subject_domain};
use crate::limiter::{Algorithm, Entry, Policy};

/// Characters kept as they are in a key; everything else is percent-encoded.
/// `{` and `}` must go (they would move the Cluster hash tag), `:` must go
/// (it separates the parts of a key), and `%` must go so that the encoding
/// is unambiguous: two different identifiers never share a key.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

/// The Redis key of one identity's counter under one policy:
/// `rate:{<strategy>:<id>}:<window>` for the built-in fixed-window policies
/// (`user` and `ip`), and `rate:{<strategy>:<id>}:<window>:<algorithm>:<policy>`
/// for every other. The window is in seconds (or `<n>ms` when it is not a
/// whole number of seconds). Everything inside the braces is the Cluster
/// hash tag, so all keys of one identity share a slot and one script may
/// touch them all. The algorithm is part of the name because each stores a
/// different shape of value.
pub fn counter_key(subject: &Entry, policy: &Policy) -> String {
    if let Some(prefix) = ratelimit_key_prefix(policy) {
        if let Some(key) = ratelimit_key(prefix, subject, policy) {
            return key;
        }
    }
    let window_ms = policy.window().as_millis();
    let (subject_key, subject_value) = subject;
    let mut key = String::with_capacity(
        16 + subject_key.len() + subject_value.len() + policy.name().len() + 32,
    );
    key.push_str("rate:{");
    key.extend(utf8_percent_encode(subject_key, KEY_SAFE));
    key.push(':');
    key.extend(utf8_percent_encode(subject_value, KEY_SAFE));
    key.push_str("}:");
    let mut digits = itoa::Buffer::new();
    if window_ms.is_multiple_of(1000) {
        key.push_str(digits.format(window_ms / 1000));
    } else {
        key.push_str(digits.format(window_ms));
        key.push_str("ms");
    }
    let builtin = policy.algorithm() == Algorithm::FixedWindow && policy.name() == subject.0;
    if !builtin {
        key.push(':');
        key.push_str(policy.algorithm().as_str());
        key.push(':');
        key.push_str(policy.name());
    }
    key
}

/// The CACHE_KEY_PREFIX of a policy counted under envoyproxy/ratelimit's
/// own keys (ENVOY_KEY_FORMAT=ratelimit), if it is one.
pub fn ratelimit_key_prefix(policy: &Policy) -> Option<&str> {
    // A sliced policy needs its epoch beside its counter, in one slot: its
    // keys are ours, with a hash tag.
    if policy.algorithm() != Algorithm::FixedWindow || policy.slices() {
        return None;
    }
    policy.label()?.ratelimit_key_prefix.as_deref()
}

/// Where a sliced counter keeps its epoch (see `lua/slice.lua`): beside
/// it, under the same hash tag.
pub fn slice_epoch_key(counter_key: &str) -> String {
    format!("{counter_key}:slices")
}

/// envoyproxy/ratelimit's key: `<prefix><domain>_<k1>_<v1>_..._<window
/// start>`, the window start in Unix seconds by this host's clock, as it
/// does (unescaped: `("a_b", "c")` and `("a", "b_c")` share a key there, and
/// so here). `None` for a subject that is not an Envoy descriptor's.
fn ratelimit_key(prefix: &str, subject: &Entry, policy: &Policy) -> Option<String> {
    let domain = path_subject_domain(&subject.0)?;
    let entries = parse_path(&subject.1)?;
    let window = policy.window().as_secs().max(1);
    let now = crate::limiter::top::now_secs();
    let mut key = format!("{prefix}{domain}");
    for (k, v) in &entries {
        key.push('_');
        key.push_str(k);
        key.push('_');
        key.push_str(v);
    }
    key.push_str(&format!("_{}", now - now % window));
    Some(key)
}

/// The hash of every instance's heavy hitters for one slot (`1m:<window
/// number>:denied`...), one field per instance: one hash tag, one Cluster
/// slot.
pub fn top_key(slot: &str) -> String {
    format!("rate:{{top}}:{slot}")
}

/// The hash of the overrides set through the admin API, shared by every
/// instance: field `<strategy>:<id>`, value the override as JSON. It never
/// expires; an override's own `until` ends it.
pub const OVERRIDES_KEY: &str = "rate:overrides";
/// The field of [`OVERRIDES_KEY`] that counts its changes (no identity's
/// storage key starts with `~`).
pub const OVERRIDES_VERSION_FIELD: &str = "~version";

/// The log of admin resets (see `lua/publish_reset.lua`): one hash tag, one
/// Cluster slot.
pub const RESET_KEYS: [&str; 3] = [
    "rate:{admin}:resets",
    "rate:{admin}:resets:seq",
    "rate:{admin}:resets:trimmed",
];

/// Resets remembered for instances that fall behind; one that misses more
/// clears its whole deny cache instead.
pub(super) const RESET_LOG_ENTRIES: u32 = 10_000;

/// How long the reset log outlives its last write.
pub(super) const RESET_LOG_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The hash tag of a key: what its braces hold.
pub(super) fn hash_tag(key: &str) -> Option<&str> {
    let start = key.find('{')? + 1;
    let end = start + key[start..].find('}')?;
    Some(&key[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use std::time::Duration;

    fn user(id: impl Into<String>) -> Entry {
        ("user".into(), id.into())
    }

    fn ip(addr: std::net::IpAddr) -> Entry {
        ("ip".into(), Identity::ip(addr).id)
    }
    use std::num::NonZeroU32;

    fn policy(window: Duration) -> Policy {
        Policy::new(
            "user",
            Algorithm::FixedWindow,
            NonZeroU32::new(5).unwrap(),
            window,
            1,
        )
        .unwrap()
    }

    #[test]
    fn keys_carry_one_hash_tag_per_identity() {
        let key = counter_key(&user("abc"), &policy(Duration::from_secs(60)));
        assert_eq!(key, "rate:{user:abc}:60");
        let ip_policy = Policy::new(
            "ip",
            Algorithm::FixedWindow,
            NonZeroU32::new(5).unwrap(),
            Duration::from_millis(1500),
            1,
        )
        .unwrap();
        let key = counter_key(&ip("::1".parse().unwrap()), &ip_policy);
        assert_eq!(key, "rate:{ip:%3A%3A1}:1500ms");
    }

    #[test]
    fn hostile_identifiers_cannot_escape_the_hash_tag() {
        for id in ["a}b", "{x}", "a:b", "*", "%7D", "ключ", "a b"] {
            let key = counter_key(&user(id), &policy(Duration::from_secs(60)));
            let inner = key
                .strip_prefix("rate:{")
                .and_then(|k| k.strip_suffix("}:60"))
                .unwrap();
            assert!(!inner.contains(['{', '}']), "{key}");
            assert_eq!(inner.matches(':').count(), 1, "{key}");
        }
        let a = counter_key(&user("%7D"), &policy(Duration::from_secs(60)));
        let b = counter_key(&user("}"), &policy(Duration::from_secs(60)));
        assert_ne!(a, b);
    }

    #[test]
    fn other_policies_name_their_algorithm_and_policy() {
        let p = Policy::new(
            "burst",
            Algorithm::TokenBucket,
            NonZeroU32::new(5).unwrap(),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        assert_eq!(
            counter_key(&user("k"), &p),
            "rate:{user:k}:1:token_bucket:burst"
        );
        // The built-in name on the other strategy is not the built-in key.
        let user = policy(Duration::from_secs(60));
        assert_eq!(
            counter_key(&ip("10.0.0.1".parse().unwrap()), &user),
            "rate:{ip:10.0.0.1}:60:fixed_window:user"
        );
    }
}
