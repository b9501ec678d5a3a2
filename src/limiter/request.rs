//! A check request: what every front end builds, and all the core sees of a
//! request. A domain names a set of rules; each descriptor is an ordered
//! list of key/value entries (`[("user", "k1")]`,
//! `[("client", "acme"), ("tier", "gold")]`) matched against that domain's
//! rule tree, with the hits it takes. The last entry of a descriptor is its
//! subject: whose counters its limits use (and, in Redis, the hash tag that
//! keeps them in one Cluster slot).

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::policy::Unit;

/// One key/value entry of a descriptor. Keys are mostly fixed words
/// (`user`, `route`), so they are borrowed when they can be: a request
/// allocates only what varies.
pub type Entry = (Cow<'static, str>, String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    pub entries: Vec<Entry>,
    /// Units taken under each limit, times the limit's cost: 1 by default,
    /// 0 for a peek that charges nothing, negative for a refund (units given
    /// back, never below an empty counter).
    pub hits: i64,
    /// A limit the caller sets for this descriptor (Envoy's `limit`): it
    /// replaces the rules' limits for it, in a domain the rules know.
    pub limit: Option<LimitOverride>,
}

/// Envoy's per-descriptor limit: `requests_per_unit` per `unit`, counted
/// in a fixed window (0: always over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

impl Descriptor {
    /// A descriptor taking one hit.
    pub fn new(entries: Vec<Entry>) -> Self {
        Descriptor {
            entries,
            hits: 1,
            limit: None,
        }
    }

    /// Whose counters its limits use: the last entry.
    pub fn subject(&self) -> Option<&Entry> {
        self.entries.last()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckRequest {
    pub domain: Cow<'static, str>,
    pub descriptors: Vec<Descriptor>,
}

/// An entry with a fixed key.
pub fn entry(key: &'static str, value: &str) -> Entry {
    (Cow::Borrowed(key), value.to_owned())
}

/// Characters kept as they are in a [`path_subject`]; every other byte is
/// percent-encoded, so the encoding is injective.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

/// The subject of a descriptor outside the HTTP domain: the domain as its
/// key, and its whole path (`k1=v1/k2=v2`, each part percent-encoded) as
/// its value, so two descriptors share counters only when their domain, keys
/// and values (or `share_threshold` patterns) all agree.
pub fn path_subject<'a>(
    domain: &str,
    keys: impl Iterator<Item = &'a str>,
    values: impl Iterator<Item = &'a str>,
) -> Entry {
    let mut path = String::new();
    for (key, value) in keys.zip(values) {
        if !path.is_empty() {
            path.push('/');
        }
        path.extend(utf8_percent_encode(key, PATH_SAFE));
        path.push('=');
        path.extend(utf8_percent_encode(value, PATH_SAFE));
    }
    (Cow::Owned(domain.to_owned()), path)
}
