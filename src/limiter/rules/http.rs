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
        match scoped.strategy {
            Some(s) => vec![s.as_str()],
            None => vec![Strategy::User.as_str(), Strategy::Ip.as_str()],
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
}

impl Shapes {
    pub(super) fn of(policies: &[ScopedPolicy]) -> Self {
        let scope = |p: &ScopedPolicy| p.route.as_ref().map(|r| r.method.is_some());
        Shapes {
            route: policies.iter().any(|p| scope(p) == Some(true)),
            path: policies.iter().any(|p| scope(p) == Some(false)),
            client_ip: policies.iter().any(|p| p.policy.per_client_ip()),
            host: policies.iter().any(|p| p.host.is_some()),
        }
    }
}

/// The subjects whose counters are `identity`'s: its own entry, and for an
/// IP address also its per-client-IP entry (what an admin reset deletes).
pub fn subjects(identity: &Identity) -> Vec<Entry> {
    let own = entry(identity.strategy.as_str(), &identity.id);
    match identity.strategy {
        Strategy::Ip => vec![own, entry(CLIENT_IP, &identity.id)],
        Strategy::User => vec![own],
    }
}

/// The check request of `caller` on `route`: per-IP descriptors first (on a
/// Cluster they run first, in their own slot), then the identity's.
pub fn request(caller: &Caller, route: &Route<'_>, shapes: Shapes) -> CheckRequest {
    let identity = entry(caller.identity.strategy.as_str(), &caller.identity.id);
    let client_ip = caller
        .client_ip
        .as_ref()
        .filter(|_| shapes.client_ip)
        .map(|ip| entry(CLIENT_IP, &ip.id));
    let host = route
        .host
        .filter(|_| shapes.host)
        .map(|h| entry(HOST, &h.to_ascii_lowercase()));
    let mut descriptors = Vec::with_capacity(6);
    for subject in client_ip.into_iter().chain(std::iter::once(identity)) {
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
                descriptors.push(with(vec![route, subject.clone()]));
            }
            if shapes.path {
                descriptors.push(with(vec![entry(PATH, route.path), subject.clone()]));
            }
            descriptors.push(with(vec![subject.clone()]));
        }
    }
    CheckRequest {
        domain: std::borrow::Cow::Borrowed(DOMAIN),
        descriptors,
    }
}
