//! Who is calling: an API key (strategy `user`) or, without one, the client
//! IP (strategy `ip`).
//!
//! This module knows no HTTP framework: the HTTP layer hands it the raw
//! header bytes and the peer address. Forwarding headers are believed only
//! when the peer itself is a trusted proxy; otherwise any client could pick
//! its own identity by sending `X-Forwarded-For`.

mod forwarded;
pub mod jwt;

pub use forwarded::{canonical_ip, ForwardedHeader};

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// How a caller was identified; also the first part of its Redis keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// An API key.
    User,
    /// A verified JWT claim (JWT_CLAIM): a namespace of its own, so a token
    /// whose claim is `tenant-acme` and an API key `tenant-acme` are two
    /// callers with two counters, overrides and admin entries.
    Jwt,
    Ip,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::User => "user",
            Strategy::Jwt => "jwt",
            Strategy::Ip => "ip",
        }
    }

    /// An identified caller (an API key or a verified token), not an
    /// address.
    pub fn is_identified(self) -> bool {
        self != Strategy::Ip
    }
}

/// The one parser of strategy names (rules file, admin API, stored
/// overrides).
impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Strategy::User),
            "jwt" => Ok(Strategy::Jwt),
            "ip" => Ok(Strategy::Ip),
            other => Err(format!(
                "expected \"user\", \"jwt\" or \"ip\", not {other:?}"
            )),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A caller: the strategy and the identifier under it (the API key itself,
/// or the IP address in its canonical text form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub strategy: Strategy,
    pub id: String,
}

impl Identity {
    pub fn user(key: impl Into<String>) -> Self {
        Identity {
            strategy: Strategy::User,
            id: key.into(),
        }
    }

    /// A verified token's claim.
    pub fn jwt(claim: impl Into<String>) -> Self {
        Identity {
            strategy: Strategy::Jwt,
            id: claim.into(),
        }
    }

    pub fn ip(ip: IpAddr) -> Self {
        Identity {
            strategy: Strategy::Ip,
            id: canonical_ip(ip).to_string(),
        }
    }

    /// The identity named by a strategy and an identifier as an operator
    /// writes them (rules file, admin API): an API key that is not empty and
    /// has no control characters, or an IP address (in canonical form).
    pub fn parse(strategy: Strategy, id: &str) -> Result<Self, IdentityParseError> {
        match strategy {
            Strategy::User | Strategy::Jwt if id.is_empty() => Err(IdentityParseError::EmptyKey),
            Strategy::User | Strategy::Jwt if id.chars().any(char::is_control) => {
                Err(IdentityParseError::ControlCharacters)
            }
            Strategy::User | Strategy::Jwt => Ok(Identity {
                strategy,
                id: id.to_owned(),
            }),
            Strategy::Ip => id
                .parse::<IpAddr>()
                .map(Identity::ip)
                .map_err(|_| IdentityParseError::NotAnIp),
        }
    }

    /// The identifier as it may appear in a log line: API keys are secrets,
    /// so only their first four characters and their length are shown.
    pub fn redacted(&self) -> String {
        match self.strategy {
            Strategy::Ip => format!("ip:{}", self.id),
            Strategy::User | Strategy::Jwt => {
                // Escaped: a control character must not split a log line.
                let head: String = self
                    .id
                    .chars()
                    .take(4)
                    .flat_map(|c| {
                        let escaped: Vec<char> = if c.is_control() {
                            c.escape_default().collect()
                        } else {
                            vec![c]
                        };
                        escaped
                    })
                    .collect();
                format!("{}:{head}…({} bytes)", self.strategy, self.id.len())
            }
        }
    }
}

/// A caller as the limiter sees it: the identity its policies count, and
/// its client IP for the policies counted per IP whatever the identity (the
/// defence against a client that invents API keys to get fresh quotas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    /// The client IP, when known (formatted only where a policy counts
    /// it: most callers identified by a key are not).
    pub client_ip: Option<IpAddr>,
}

impl Caller {
    /// A caller known only by its identity (the admin API): an `ip`
    /// identity is its own client IP.
    pub fn from_identity(identity: Identity) -> Self {
        let client_ip = match identity.strategy {
            Strategy::Ip => identity.id.parse().ok(),
            Strategy::User | Strategy::Jwt => None,
        };
        Caller {
            identity,
            client_ip,
        }
    }
}

/// Why a strategy and an identifier name no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityParseError {
    #[error("must not be empty")]
    EmptyKey,
    #[error("must not contain control characters")]
    ControlCharacters,
    #[error("must be an IP address for strategy \"ip\"")]
    NotAnIp,
}

/// Why a request carries no usable identity. Each is the caller's fault and
/// maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("X-API-Key is {length} bytes long; the longest accepted is {max}")]
    KeyTooLong { length: usize, max: usize },
    #[error("X-API-Key is not valid UTF-8")]
    KeyNotUtf8,
    #[error("X-API-Key contains control characters")]
    KeyHasControlCharacters,
    #[error("the client address is unknown")]
    NoClientAddress,
    /// A bearer token that does not verify (the caller gets 401).
    #[error(transparent)]
    Token(#[from] jwt::TokenError),
}

/// Identifies callers; built once from the settings.
#[derive(Debug, Clone)]
pub struct Identifier {
    trusted_proxies: Vec<IpNet>,
    max_key_length: usize,
    /// Verifies bearer tokens when JWT identities are configured.
    jwt: Option<std::sync::Arc<jwt::JwtVerifier>>,
    header: ForwardedHeader,
}

/// The parts of a request that identification reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The first `X-API-Key` header, raw.
    pub api_key: Option<&'a [u8]>,
    /// The token of `Authorization: Bearer <token>`, raw.
    pub bearer: Option<&'a [u8]>,
    /// Every `X-Forwarded-For` header value, in order.
    pub x_forwarded_for: &'a [&'a [u8]],
    /// Every `Forwarded` header value, in order.
    pub forwarded: &'a [&'a [u8]],
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
}

impl Identifier {
    pub fn new(
        trusted_proxies: Vec<IpNet>,
        max_key_length: usize,
        header: ForwardedHeader,
    ) -> Self {
        Identifier {
            trusted_proxies,
            max_key_length,
            jwt: None,
            header,
        }
    }

    /// The same identifier taking a verified JWT claim as the identity of a
    /// caller that sends `Authorization: Bearer <token>`.
    pub fn with_jwt(mut self, verifier: jwt::JwtVerifier) -> Self {
        self.jwt = Some(std::sync::Arc::new(verifier));
        self
    }

    /// The JWT verifier, when JWT identities are configured.
    pub fn jwt(&self) -> Option<&jwt::JwtVerifier> {
        self.jwt.as_deref()
    }

    /// The caller: its identity, and its client IP.
    pub fn caller(&self, parts: &RequestParts<'_>) -> Result<Caller, IdentityError> {
        let client_ip = self.client_ip(parts);
        let identity = match self.identify_by_credentials(parts)? {
            Some(identity) => identity,
            None => Identity::ip(client_ip.ok_or(IdentityError::NoClientAddress)?),
        };
        Ok(Caller {
            identity,
            client_ip,
        })
    }

    pub fn identify(&self, parts: &RequestParts<'_>) -> Result<Identity, IdentityError> {
        match self.identify_by_credentials(parts)? {
            Some(identity) => Ok(identity),
            None => self
                .client_ip(parts)
                .map(Identity::ip)
                .ok_or(IdentityError::NoClientAddress),
        }
    }

    /// The identity a verified token or an API key names, if the request
    /// carries one.
    fn identify_by_credentials(
        &self,
        parts: &RequestParts<'_>,
    ) -> Result<Option<Identity>, IdentityError> {
        if let (Some(verifier), Some(token)) = (&self.jwt, parts.bearer) {
            let token = std::str::from_utf8(token)
                .map_err(|_| jwt::TokenError::Invalid("not UTF-8".into()))?;
            return Ok(Some(Identity::jwt(verifier.identity(token.trim())?)));
        }
        if let Some(raw) = parts.api_key {
            if let Some(key) = self.api_key(raw)? {
                return Ok(Some(Identity::user(key)));
            }
        }
        Ok(None)
    }

    /// A key, or `None` for an empty (all-whitespace) header, which counts as absent.
    fn api_key<'a>(&self, raw: &'a [u8]) -> Result<Option<&'a str>, IdentityError> {
        // The length is checked before anything else touches the bytes: an
        // 8 KB key must cost no more than a short one.
        if raw.len() > self.max_key_length {
            return Err(IdentityError::KeyTooLong {
                length: raw.len(),
                max: self.max_key_length,
            });
        }
        let key = std::str::from_utf8(raw).map_err(|_| IdentityError::KeyNotUtf8)?;
        let key = key.trim_matches([' ', '\t']);
        if key.chars().any(char::is_control) {
            return Err(IdentityError::KeyHasControlCharacters);
        }
        Ok(Some(key).filter(|k| !k.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(trusted: &[&str]) -> Identifier {
        identifier_reading(trusted, ForwardedHeader::XForwardedFor)
    }

    fn identifier_reading(trusted: &[&str], header: ForwardedHeader) -> Identifier {
        Identifier::new(
            trusted.iter().map(|s| s.parse().unwrap()).collect(),
            256,
            header,
        )
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(s.parse().unwrap(), 5000))
    }

    #[test]
    fn an_api_key_wins_over_the_address() {
        let id = identifier(&[])
            .identify(&RequestParts {
                api_key: Some(b" key-1 "),
                peer: peer("10.0.0.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id, Identity::user("key-1"));
    }

    #[test]
    fn an_empty_key_falls_back_to_the_address() {
        let id = identifier(&[])
            .identify(&RequestParts {
                api_key: Some(b"   "),
                peer: peer("10.0.0.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id, Identity::ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn hostile_keys_are_refused_with_a_reason() {
        let ident = identifier(&[]);
        let long = vec![b'a'; 8192];
        let cases: [(&[u8], IdentityError); 3] = [
            (
                &long,
                IdentityError::KeyTooLong {
                    length: 8192,
                    max: 256,
                },
            ),
            (b"\xff\xfe", IdentityError::KeyNotUtf8),
            (b"a\x01b", IdentityError::KeyHasControlCharacters),
        ];
        for (key, expected) in cases {
            let err = ident
                .identify(&RequestParts {
                    api_key: Some(key),
                    peer: peer("10.0.0.1"),
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(err, expected);
        }
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let xff: &[&[u8]] = &[b"1.1.1.1"];
        let id = identifier(&["10.0.0.0/8"])
            .identify(&RequestParts {
                x_forwarded_for: xff,
                peer: peer("192.168.1.9"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id.id, "192.168.1.9");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        // The client forged 6.6.6.6; the first trusted proxy saw 2.2.2.2.
        let xff: &[&[u8]] = &[b"6.6.6.6, 2.2.2.2", b"10.0.0.5"];
        let id = identifier(&["10.0.0.0/8"])
            .identify(&RequestParts {
                x_forwarded_for: xff,
                peer: peer("10.0.0.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id.id, "2.2.2.2");
    }

    #[test]
    fn forwarded_header_is_read_when_configured() {
        let fwd: &[&[u8]] = &[b"for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.7"];
        let id = identifier_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded)
            .identify(&RequestParts {
                forwarded: fwd,
                peer: peer("10.0.0.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id.id, "2001:db8::1");
    }

    /// Regression (issue 9, item 8): `for=unknown` hops were skipped, so
    /// the client's own `for=` entry to their left became its identity.
    #[test]
    fn forwarded_unknown_hop_stops_the_walk() {
        let ident = identifier_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        for header in [
            &b"for=6.6.6.6, for=unknown"[..],
            b"for=6.6.6.6, for=_hidden",
            b"for=6.6.6.6, proto=https",
        ] {
            let fwd: &[&[u8]] = &[header];
            let id = ident
                .identify(&RequestParts {
                    forwarded: fwd,
                    peer: peer("10.0.0.1"),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(id.id, "10.0.0.1", "{}", String::from_utf8_lossy(header));
        }
    }

    /// Regression (issue 9, item 8): with both headers, X-Forwarded-For
    /// always won, so behind a proxy writing only `Forwarded` a client chose
    /// its identity. Only the configured header is read.
    #[test]
    fn forwarded_header_setting_ignores_the_other_header() {
        let xff: &[&[u8]] = &[b"6.6.6.6"];
        let fwd: &[&[u8]] = &[b"for=2.2.2.2"];
        let parts = RequestParts {
            x_forwarded_for: xff,
            forwarded: fwd,
            peer: peer("10.0.0.1"),
            ..Default::default()
        };
        let forwarded = identifier_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(forwarded.identify(&parts).unwrap().id, "2.2.2.2");
        let xff_only = identifier_reading(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        assert_eq!(xff_only.identify(&parts).unwrap().id, "6.6.6.6");
        let only_forwarded = RequestParts {
            x_forwarded_for: &[],
            ..parts
        };
        assert_eq!(
            xff_only.identify(&only_forwarded).unwrap().id,
            "10.0.0.1",
            "Forwarded is ignored when X-Forwarded-For is the configured header"
        );
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk() {
        let xff: &[&[u8]] = &[b"3.3.3.3, garbage"];
        let id = identifier(&["10.0.0.0/8"])
            .identify(&RequestParts {
                x_forwarded_for: xff,
                peer: peer("10.0.0.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id.id, "10.0.0.1");
    }

    #[test]
    fn mapped_ipv4_is_plain_ipv4() {
        let id = identifier(&[])
            .identify(&RequestParts {
                peer: peer("::ffff:192.0.2.1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(id.id, "192.0.2.1");
    }

    /// Regression (issue 9, item 15): a control character in an admin
    /// path id split the audit log line.
    #[test]
    fn redaction_escapes_control_characters() {
        let id = Identity::user("a\nb\rc");
        let shown = id.redacted();
        assert!(!shown.contains(['\n', '\r']), "{shown}");
        assert!(shown.starts_with("user:a\\nb\\r"), "{shown}");
    }

    #[test]
    fn redaction_hides_most_of_a_key() {
        let id = Identity::user("sk_live_abcdefgh");
        assert_eq!(id.redacted(), "user:sk_l…(16 bytes)");
        assert!(!id.redacted().contains("abcdefgh"));
    }
}
