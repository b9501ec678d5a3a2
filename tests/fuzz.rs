//! Property tests over arbitrary bytes for every parser a client or an
//! operator feeds: forwarding headers, API keys, the rules file, override
//! JSON, and the key encoding. None may panic; the key encoding must be
//! injective and keep each identity inside its one hash tag. (cargo-fuzz
//! needs a nightly compiler; proptest runs on stable, in every test run.)

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use rate_limiter::identity::{ForwardedHeader, Identifier, RequestParts, Strategy as IdStrategy};
use rate_limiter::limiter::overrides::OverrideSpec;
use rate_limiter::limiter::{Algorithm, Policy, Rules};
use rate_limiter::redis::counter_key;

fn identifier(header: ForwardedHeader) -> Identifier {
    Identifier::new(
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        256,
        header,
    )
}

/// Header bytes as a client can send them, with the separators and
/// tokens the parsers look for made likely.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"for=".to_vec()),
        Just(b"For=\"[".to_vec()),
        Just(b", ".to_vec()),
        Just(b";".to_vec()),
        Just(b"unknown".to_vec()),
        Just(b"10.0.0.7".to_vec()),
        Just(b"2001:db8::1".to_vec()),
        Just(b"]:80\"".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(token, 0..8).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn identification_never_panics_and_untrusted_peers_are_themselves(
        api_key in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        xff in prop::collection::vec(header_bytes(), 0..3),
        forwarded in prop::collection::vec(header_bytes(), 0..3),
        peer_octet in any::<u8>(),
        trusted in any::<bool>(),
        header in prop_oneof![Just(ForwardedHeader::XForwardedFor), Just(ForwardedHeader::Forwarded)],
    ) {
        let peer_ip: IpAddr = if trusted {
            format!("10.0.0.{peer_octet}").parse().unwrap()
        } else {
            format!("192.0.2.{peer_octet}").parse().unwrap()
        };
        let xff: Vec<&[u8]> = xff.iter().map(Vec::as_slice).collect();
        let forwarded: Vec<&[u8]> = forwarded.iter().map(Vec::as_slice).collect();
        let parts = RequestParts {
            api_key: api_key.as_deref(),
            bearer: None,
            x_forwarded_for: &xff,
            forwarded: &forwarded,
            peer: Some(SocketAddr::new(peer_ip, 4000)),
        };
        let ident = identifier(header);
        if let Ok(caller) = ident.caller(&parts) {
            match caller.identity.strategy {
                IdStrategy::User | IdStrategy::Jwt => {
                    let key = &caller.identity.id;
                    prop_assert!(!key.is_empty() && key.len() <= 256);
                    prop_assert!(!key.chars().any(char::is_control));
                }
                IdStrategy::Ip => {
                    let ip: IpAddr = caller.identity.id.parse().unwrap();
                    if !trusted {
                        prop_assert_eq!(ip, peer_ip, "an untrusted peer is the client");
                    }
                }
            }
        }
    }

    #[test]
    fn rules_files_never_panic(text in "\\PC{0,400}") {
        let _ = Rules::parse("fuzz.toml", &text);
    }

    /// The example file with a stretch of it replaced by arbitrary text:
    /// valid TOML with odd values, and broken TOML, both reach the checks.
    #[test]
    fn mutated_example_rules_never_panic(
        start in 0usize..4000,
        len in 0usize..40,
        insert in "\\PC{0,40}",
    ) {
        let example = include_str!("../rules.example.toml");
        let start = start.min(example.len());
        let end = (start + len).min(example.len());
        if example.is_char_boundary(start) && example.is_char_boundary(end) {
            let text = format!("{}{insert}{}", &example[..start], &example[end..]);
            let _ = Rules::parse("fuzz.toml", &text);
        }
    }

    #[test]
    fn override_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(spec) = serde_json::from_slice::<OverrideSpec>(&bytes) {
            let _ = spec.action();
        }
    }

    #[test]
    fn override_fields_never_panic(
        limit in prop::option::of(any::<u32>()),
        window in prop::option::of("\\PC{0,12}"),
        until in prop::option::of(any::<u64>()),
        unlimited in prop::option::of(any::<bool>()),
        blocked in prop::option::of(any::<bool>()),
    ) {
        let spec = OverrideSpec { limit, window, policy: None, unlimited, blocked, until };
        let json = serde_json::to_string(&spec).unwrap();
        let back: OverrideSpec = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &spec);
        let _ = spec.action();
        let _ = spec.active_at(std::time::SystemTime::now());
    }

    /// Two different identifiers never share a key, and an identifier never
    /// leaves its hash tag (no brace, and exactly the one ':' of the tag).
    #[test]
    fn key_encoding_is_injective_and_contained(a in "\\PC{1,40}", b in "\\PC{1,40}") {
        let policy = Policy::new(
            "user",
            Algorithm::FixedWindow,
            NonZeroU32::new(5).unwrap(),
            Duration::from_secs(60),
            1,
        )
        .unwrap();
        let ka = counter_key(&("user".into(), a.clone()), &policy);
        let kb = counter_key(&("user".into(), b.clone()), &policy);
        prop_assert_eq!(ka == kb, a == b);
        for key in [&ka, &kb] {
            let inner = key
                .strip_prefix("rate:{")
                .and_then(|k| k.strip_suffix("}:60"))
                .unwrap();
            prop_assert!(!inner.contains(['{', '}']), "{}", key);
            prop_assert_eq!(inner.matches(':').count(), 1, "{}", key);
        }
    }
}

/// YAML text as an operator (or a broken deploy) can leave it in the Envoy
/// configuration directory: the pieces the loader looks for, shuffled, and
/// random bytes.
fn erl_yaml() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("domain: d\n".to_owned()),
        Just("descriptors:\n".to_owned()),
        Just("  - key: k\n".to_owned()),
        Just("    value: \"a*b\"\n".to_owned()),
        Just("    rate_limit: { unit: minute, requests_per_unit: 5 }\n".to_owned()),
        Just("    rate_limits: [ { unit: second, requests_per_unit: 0 }, { unlimited: true } ]\n".to_owned()),
        Just("    replaces: [ { name: x } ]\n".to_owned()),
        Just("    share_threshold: true\n".to_owned()),
        Just("    descriptors:\n".to_owned()),
        Just("      - { key: s, rate_limit: { unit: year, requests_per_unit: 4294967295, algorithm: gcra, window: 1ms } }\n".to_owned()),
        Just("    unit_multiplier: 99999999999\n".to_owned()),
        Just("- [\n".to_owned()),
        Just("{ 1.5: ~ }\n".to_owned()),
        "[ -~\n]{0,20}",
    ];
    prop::collection::vec(token, 0..12).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_envoy_config_loader_never_panics(
        first in erl_yaml(),
        second in erl_yaml(),
        merge in any::<bool>(),
        entries in prop::collection::vec(("[a-z]{1,3}", "[a-z*]{0,4}"), 0..4),
    ) {
        let files = [("config.a.yaml".to_owned(), first), ("config.b.yaml".to_owned(), second)];
        match rate_limiter::limiter::rules::erl::parse(&files, merge) {
            Ok(config) => {
                // Whatever loaded can be matched against any descriptor.
                let entries: Vec<rate_limiter::limiter::Entry> = entries
                    .into_iter()
                    .map(|(k, v)| (k.into(), v))
                    .collect();
                for tree in config.domains.values() {
                    let _ = tree.walk(&entries);
                    let _ = tree.counter_values(&entries);
                }
            }
            // Every refusal names the file it is about.
            Err(err) => prop_assert!(err.to_string().starts_with("config.")),
        }
    }

    #[test]
    fn descriptor_paths_round_trip(
        domain in "\\PC{1,8}",
        entries in prop::collection::vec(("\\PC{1,6}", "\\PC{0,6}"), 1..4),
    ) {
        use rate_limiter::limiter::request::{parse_path, path_subject, path_subject_domain};
        let (key, path) = path_subject(
            &domain,
            entries.iter().map(|(k, _)| k.as_str()),
            entries.iter().map(|(_, v)| v.as_str()),
        );
        prop_assert_eq!(path_subject_domain(&key), Some(domain));
        let parsed: Vec<(String, String)> = parse_path(&path)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v))
            .collect();
        prop_assert_eq!(parsed, entries);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rate_limit_requests_are_checked_or_refused_never_a_panic(
        domain in "\\PC{0,10}",
        descriptors in prop::collection::vec(
            (
                prop::collection::vec(("\\PC{0,5}", "\\PC{0,5}"), 0..4),
                prop::option::of((any::<u32>(), -2i32..10)),
                prop::option::of(any::<u64>()),
                any::<bool>(),
            ),
            0..5,
        ),
        hits in any::<u32>(),
    ) {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
        use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
        use envoy_types::pb::google::protobuf::UInt64Value;
        let request = RateLimitRequest {
            domain: domain.clone(),
            hits_addend: hits,
            descriptors: descriptors
                .iter()
                .map(|(entries, limit, own_hits, negative)| RateLimitDescriptor {
                    entries: entries
                        .iter()
                        .map(|(k, v)| Entry { key: k.clone(), value: v.clone() })
                        .collect(),
                    limit: limit.map(|(n, unit)| RateLimitOverride { requests_per_unit: n, unit }),
                    hits_addend: own_hits.map(|value| UInt64Value { value }),
                    is_negative_hits: *negative,
                })
                .collect(),
        };
        match rate_limiter::envoy::check_request(&request) {
            Ok(check) => {
                prop_assert!(!domain.is_empty());
                prop_assert_eq!(check.descriptors.len(), descriptors.len());
                for (d, (_, _, own, negative)) in check.descriptors.iter().zip(&descriptors) {
                    let expected = own.unwrap_or(u64::from(hits.max(1))).min(u64::from(u32::MAX)) as i64;
                    prop_assert_eq!(d.hits, if *negative { -expected } else { expected });
                }
            }
            Err(rate_limiter::envoy::RlsError::InvalidArgument(_)) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
