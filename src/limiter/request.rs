//! A check request: what every front end builds, and all the core sees of a
//! request. A domain names a set of rules; each descriptor is an ordered
//! list of key/value entries (`[("user", "k1")]`,
//! `[("client", "acme"), ("tier", "gold")]`) matched against that domain's
//! rule tree, with the hits it takes. The last entry of a descriptor is its
//! subject: whose counters its limits use (and, in Redis, the hash tag that
//! keeps them in one Cluster slot).

use std::borrow::Cow;

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
}

impl Descriptor {
    /// A descriptor taking one hit.
    pub fn new(entries: Vec<Entry>) -> Self {
        Descriptor { entries, hits: 1 }
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
