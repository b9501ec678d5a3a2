//! The client IP behind trusted proxies: the one forwarding header they
//! write (`X-Forwarded-For` or RFC 7239 `Forwarded`), walked from the right
//! past the trusted hops, and addresses in one canonical form.

use std::net::{IpAddr, SocketAddr};

use super::{Identifier, RequestParts};

/// The one forwarding header the trusted proxies write
/// (setting FORWARDED_HEADER). The other is ignored: if both were read, a
/// client behind a proxy that writes only one of them could choose its
/// identity by sending the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, ...`
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>, for=<proxy1>, ...`
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(ForwardedHeader::XForwardedFor)
        } else if s.eq_ignore_ascii_case("forwarded") {
            Ok(ForwardedHeader::Forwarded)
        } else {
            Err("expected `X-Forwarded-For` or `Forwarded`".into())
        }
    }
}

impl Identifier {
    /// Whether the TCP peer is a trusted proxy (whose headers are believed).
    pub fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.is_trusted(p.ip()))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client IP. Behind trusted proxies it is the right-most address
    /// in the forwarding chain that is not itself a trusted proxy: entries to
    /// its left were written by the client and prove nothing.
    pub(super) fn client_ip(&self, parts: &RequestParts<'_>) -> Option<IpAddr> {
        let peer = canonical_ip(parts.peer?.ip());
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let chain: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => list_items(parts.x_forwarded_for)
                .map(|item| parse_node(item.trim_matches('"')))
                .collect(),
            // An element without `for=`, or with one we cannot read
            // (`unknown`, an obfuscated name), is an unreadable hop: it
            // stops the walk like a bad X-Forwarded-For item.
            ForwardedHeader::Forwarded => list_items(parts.forwarded)
                .map(|element| forwarded_for(element).flatten())
                .collect(),
        };
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            match hop {
                // An unreadable hop: we cannot see past it, so the last
                // address we could trust the origin of is the answer.
                None => break,
                Some(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
            }
        }
        Some(client)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as a dual-stack listener
/// reports IPv4 peers) are the IPv4 address: one client, one identity.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The comma-separated items of several header values, in order.
fn list_items<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a str> + 'a {
    values
        .iter()
        .flat_map(|v| std::str::from_utf8(v).unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `::1`,
/// `[::1]`, `[::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

/// The `for=` of one RFC 7239 `Forwarded` element: `None` when the element
/// has no `for=`, `Some(None)` when it has one we cannot read (`unknown`,
/// an obfuscated name), `Some(Some(ip))` otherwise.
fn forwarded_for(element: &str) -> Option<Option<IpAddr>> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))
    })
}
