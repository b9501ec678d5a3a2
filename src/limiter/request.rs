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
    /// The id of the concurrency lease this descriptor acquires (hits > 0),
    /// renews (0) or releases (< 0); concurrency policies only. None with
    /// hits > 0: a fresh lease (released without its id, as the one that
    /// expires first).
    pub lease: Option<String>,
    /// Which of its policies count.
    pub leases: LeaseMode,
}

/// How a descriptor's concurrency policies count, against its others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LeaseMode {
    /// Every policy counts its hits (concurrency ones take, renew or give
    /// back a lease).
    #[default]
    All,
    /// Concurrency policies are only read (is a slot free?): a front end
    /// that will never release (forward-auth) must not take one.
    ReadLeases,
    /// Only the concurrency policies count (a release or renewal of a
    /// lease); the others are read.
    OnlyLeases,
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
            lease: None,
            leases: LeaseMode::All,
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

/// The subject of a descriptor outside the HTTP domain: `@` and the domain
/// (percent-encoded) as its key, and its whole path (`k1=v1/k2=v2`, each
/// part percent-encoded) as its value, so two descriptors share counters
/// only when their domain, keys and values (or `share_threshold` patterns)
/// all agree. The `@` keeps it apart from the HTTP domain's subjects
/// (`user`, `ip`), also where overrides are stored.
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
    (
        Cow::Owned(format!("@{}", utf8_percent_encode(domain, PATH_SAFE))),
        path,
    )
}

/// Whether `key` is the key of a [`path_subject`].
pub fn is_path_subject(key: &str) -> bool {
    key.starts_with('@')
}

/// The entries of a descriptor path as [`path_subject`] writes it
/// (`k1=v1/k2=v2`, parts percent-encoded); `None` if it is not one (an
/// empty key, a part without `=`).
pub fn parse_path(path: &str) -> Option<Vec<Entry>> {
    // Bytes that are not UTF-8 read as U+FFFD, as everywhere else.
    let decode = |part: &str| {
        Some(
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned(),
        )
    };
    path.split('/')
        .map(|part| {
            let (key, value) = part.split_once('=')?;
            let key = decode(key).filter(|k| !k.is_empty())?;
            Some((Cow::Owned(key), decode(value)?))
        })
        .collect()
}

/// The domain of a [`path_subject`]'s key.
pub fn path_subject_domain(key: &str) -> Option<String> {
    let encoded = key.strip_prefix('@')?;
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}
