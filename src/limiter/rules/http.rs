//! The HTTP domain: how the TOML rules file and the built-in limits, which
//! speak of strategies and routes, become a rule tree, and which check
//! request an HTTP caller makes so that the same tree answers it. The one
//! place both sides of that convention live.
//!
//! A policy of strategy `user` sits at `[user=*]`, of strategy `ip` at
//! `[ip=*]`, of no strategy at both; a route `"POST /x"` puts
//! `route="POST /x"` before it, a path `"/x"` (any method) `path="/x"`; a
//! policy counted per client IP (`per = "client_ip"`) sits at
//! `[client_ip=*]` instead of the strategy. A caller sends one descriptor
//! per shape the tree has, its identity (or client IP) last, so every
//! counter of one identity shares its hash tag.

use super::super::request::{entry, CheckRequest, Descriptor, Entry};
use super::tree::ValueMatch;
use super::ScopedPolicy;
use crate::identity::{Caller, Identity, Strategy};

/// The domain of the HTTP front end's rules.
pub const DOMAIN: &str = "http";
const ROUTE: &str = "route";
const PATH: &str = "path";
const HOST: &str = "host";
/// The key of descriptors counted per client IP.
pub const CLIENT_IP: &str = "client_ip";

/// The route of a request, as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The host it was sent to (without a port), when known.
    pub host: Option<&'a str>,
}

/// The routes a policy applies to: one path, with one method or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RouteMatch {
    method: Option<String>,
    path: String,
}

impl RouteMatch {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let (method, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(path), None, None) => (None, path),
            (Some(method), Some(path), None) => (Some(method.to_ascii_uppercase()), path),
            _ => return Err("expected \"METHOD /path\" or \"/path\"".into()),
        };
        if !path.starts_with('/') {
            return Err(format!("the path {path:?} must start with '/'"));
        }
        if let Some(m) = &method {
            if !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("{m:?} is not an HTTP method"));
            }
        }
        Ok(RouteMatch {
            method: method.filter(|m| m != "*" && m != "ANY"),
            path: path.to_owned(),
        })
    }

    /// The first entry of the descriptors this route scope matches. A `*`
    /// in the path is a glob (any run of characters, `/` included).
    fn step(&self) -> (String, ValueMatch) {
        match &self.method {
            Some(method) => (
                ROUTE.to_owned(),
                ValueMatch::of(&format!("{method} {}", self.path)),
            ),
            None => (PATH.to_owned(), ValueMatch::of(&self.path)),
        }
    }
}

/// The keys of the last entry a policy is counted under.
pub(super) fn subject_keys(scoped: &ScopedPolicy) -> Vec<&'static str> {
    if scoped.policy.per_client_ip() {
        vec![CLIENT_IP]
    } else {
        // A `user` policy is every identified caller's: API keys and
        // verified tokens, each counted in its own namespace.
        match scoped.strategy {
            Some(Strategy::User) => vec![Strategy::User.as_str(), Strategy::Jwt.as_str()],
            Some(s) => vec![s.as_str()],
            None => vec![
                Strategy::User.as_str(),
                Strategy::Jwt.as_str(),
                Strategy::Ip.as_str(),
            ],
        }
    }
}

/// Where a policy sits in the tree (one path per subject key): its host,
/// then its route, then its subject.
pub(super) fn paths(scoped: &ScopedPolicy) -> Vec<Vec<(String, ValueMatch)>> {
    subject_keys(scoped)
        .into_iter()
        .map(|key| {
            let mut path: Vec<(String, ValueMatch)> = scoped
                .host
                .iter()
                .map(|h| (HOST.to_owned(), ValueMatch::of(h)))
                .collect();
            path.extend(scoped.route.iter().map(RouteMatch::step));
            path.push((key.to_owned(), ValueMatch::Any));
            path
        })
        .collect()
}

/// Which descriptor shapes the tree of the HTTP domain has, so a request
/// carries only those that can match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shapes {
    pub route: bool,
    pub path: bool,
    pub client_ip: bool,
    pub host: bool,
    /// Some policy limits requests in flight (a request then holds a
    /// lease while it runs).
    pub leases: bool,
}

impl Shapes {
    pub(super) fn of(policies: &[ScopedPolicy]) -> Self {
        let scope = |p: &ScopedPolicy| p.route.as_ref().map(|r| r.method.is_some());
        Shapes {
            route: policies.iter().any(|p| scope(p) == Some(true)),
            path: policies.iter().any(|p| scope(p) == Some(false)),
            client_ip: policies.iter().any(|p| p.policy.per_client_ip()),
            host: policies.iter().any(|p| p.host.is_some()),
            leases: policies
                .iter()
                .any(|p| p.policy.algorithm().is_concurrency()),
        }
    }
}

/// The subjects whose counters are `identity`'s: its own entry, and for an
/// IP address also its per-client-IP entry (what an admin reset deletes).
pub fn subjects(identity: &Identity) -> Vec<Entry> {
    let own = entry(identity.strategy.as_str(), &identity.id);
    match identity.strategy {
        Strategy::Ip => vec![own, entry(CLIENT_IP, &identity.id)],
        Strategy::User | Strategy::Jwt => vec![own],
    }
}

/// The check request of `caller` on `route`: per-IP descriptors first (on a
/// Cluster they run first, in their own slot), then the identity's.
pub fn request(caller: &Caller, route: &Route<'_>, shapes: Shapes) -> CheckRequest {
    let identity = entry(caller.identity.strategy.as_str(), &caller.identity.id);
    let client_ip = caller
        .client_ip
        .filter(|_| shapes.client_ip)
        .map(|ip| entry(CLIENT_IP, &crate::identity::Identity::ip(ip).id));
    let host = route
        .host
        .filter(|_| shapes.host)
        .map(|h| entry(HOST, &h.to_ascii_lowercase()));
    let mut descriptors = Vec::with_capacity(6);
    // Each subject goes into this many descriptors: cloned for all but the
    // last, which takes it (most requests have one, and no clone).
    let uses = (1 + usize::from(host.is_some()))
        * (1 + usize::from(shapes.route) + usize::from(shapes.path));
    for subject in client_ip.into_iter().chain(std::iter::once(identity)) {
        let mut subject = Some(subject);
        let mut left = uses;
        let mut take = || {
            left -= 1;
            if left == 0 {
                subject.take()
            } else {
                subject.clone()
            }
            .unwrap_or_default()
        };
        // With and without the host in front, when some rule names one.
        for prefix in std::iter::once(None).chain(host.iter().map(Some)) {
            let with = |mut entries: Vec<Entry>| {
                if let Some(host) = prefix {
                    entries.insert(0, host.clone());
                }
                Descriptor::new(entries)
            };
            if shapes.route {
                let route = entry(ROUTE, &format!("{} {}", route.method, route.path));
                descriptors.push(with(vec![route, take()]));
            }
            if shapes.path {
                descriptors.push(with(vec![entry(PATH, route.path), take()]));
            }
            descriptors.push(with(vec![take()]));
        }
    }
    CheckRequest {
        domain: std::borrow::Cow::Borrowed(DOMAIN),
        descriptors,
    }
}

/// The normal form of a request path, which route rules are matched
/// against (RFC 3986, section 6.2.2): percent-encoded unreserved characters
/// decoded (`%61` is `a`, `%2E` is `.`), other escapes in upper case, dot
/// segments removed (`/a/./b/../c` is `/a/c`), and runs of `/` merged into
/// one (`//a` is `/a`). So every spelling a backend serves as one route is
/// one route here.
///
/// Refused, because no normal form says what a backend makes of them: a
/// malformed escape (`%zz`, a lone `%`), an encoded `/`, `\` or NUL
/// (`%2F`, `%5C`, `%00`; some backends decode them, some do not), a raw
/// `\` (a separator to some servers), a control character, and a path that
/// does not start with `/`.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("the path must start with '/'".into());
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(format!("a malformed percent-escape at byte {i}"));
            };
            let c = (hi * 16 + lo) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c as char);
            } else if matches!(c, b'/' | b'\\' | 0) {
                return Err(format!(
                    "an encoded '/', '\\' or NUL (%{c:02X}) has no one meaning to every backend"
                ));
            } else {
                decoded.push_str(&format!("%{c:02X}"));
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b.is_ascii_control() {
            return Err(format!("a '\\' or control character at byte {i}"));
        }
        // Any other byte (UTF-8 included) as it is: `raw` is a str, and
        // only ASCII bytes were handled above.
        let len = raw[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&raw[i..i + len]);
        i += len;
    }
    // Segments, with empty ones (from `//`) and `.` dropped and `..`
    // taking the one before it (never above the root).
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    // A trailing `/`, `/.` or `/..` leaves a directory: keep its `/`.
    let ends_in_directory =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if path.is_empty() || ends_in_directory {
        path.push('/');
    }
    Ok(path)
}

/// The normal form of a host: lower case, without the trailing dot of a
/// fully qualified name (`API.example.com.` is `api.example.com`).
pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod normal_form {
    use super::normalize_path;

    /// Regression (issue 19, item 3): seven spellings of one route reached
    /// the backend as that route but dodged its rule.
    #[test]
    fn every_spelling_of_a_route_is_one_route() {
        for spelling in [
            "/v1/orders/7",
            "/v1/%6Frders/7",
            "/v1/%6frders/7",
            "//v1/orders/7",
            "/v1//orders/7",
            "/v1/./orders/7",
            "/v1/x/../orders/7",
            "/v1/%2E/orders/7",
            "/v1/%2e%2e/v1/orders/7",
            "/../v1/orders/7",
        ] {
            assert_eq!(
                normalize_path(spelling).unwrap(),
                "/v1/orders/7",
                "{spelling}"
            );
        }
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/a/").unwrap(), "/a/");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize_path("/a%3ab").unwrap(), "/a%3Ab");
        assert_eq!(normalize_path("/café").unwrap(), "/café");
    }

    #[test]
    fn hosts_in_normal_form() {
        use super::normalize_host;
        assert_eq!(normalize_host("API.Example.com."), "api.example.com");
        assert_eq!(normalize_host("api.example.com"), "api.example.com");
    }

    #[test]
    fn what_has_no_normal_form_is_refused() {
        for bad in [
            "relative", "/a%zz", "/a%", "/a%4", "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%00", "/a\\b",
            "/a\tb",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }
}
