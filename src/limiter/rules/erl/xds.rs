//! The xDS form of envoyproxy/ratelimit's configuration: the
//! `ratelimit.config.ratelimit.v3.RateLimitConfig` resources an xDS server
//! (Envoy Gateway's) sends, one per domain, turned into the same YAML roots
//! the files give, so that one compiler validates both with the same
//! messages and builds the same rule trees.
//!
//! The messages are declared here with prost's derive from the field
//! numbers envoyproxy/ratelimit publishes (`api/ratelimit/config/ratelimit/
//! v3/rls_conf.proto`): five small messages do not justify `protoc` on the
//! build machine or a copied generated file, and no crate ships them.
//! `metadata` is a `google.protobuf.Struct` (envoy-types has it).

use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use serde_yaml::{Mapping, Value};

use super::{compile_roots, with_key_format, Config};
use crate::limiter::rules::RulesError;
use crate::policy::Unit;

/// The resource type URL of the configuration.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// Rate limit configuration for a single domain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitConfig {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(message, repeated, tag = "3")]
    pub descriptors: Vec<RateLimitDescriptor>,
}

/// A descriptor: a key, an optional value, a policy, nested descriptors.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(message, optional, tag = "3")]
    pub rate_limit: Option<RateLimitPolicy>,
    #[prost(message, repeated, tag = "4")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(bool, tag = "5")]
    pub shadow_mode: bool,
    #[prost(bool, tag = "6")]
    pub detailed_metric: bool,
    #[prost(bool, tag = "7")]
    pub quota_mode: bool,
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<Struct>,
}

/// A limit: `requests_per_unit` per `unit`, or unlimited.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitPolicy {
    /// Numbered as Envoy's units ([`Unit`]'s codes); 0 is UNKNOWN.
    #[prost(int32, tag = "1")]
    pub unit: i32,
    #[prost(uint32, tag = "2")]
    pub requests_per_unit: u32,
    #[prost(bool, tag = "3")]
    pub unlimited: bool,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub replaces: Vec<RateLimitReplace>,
}

/// The name of a policy another replaces.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitReplace {
    #[prost(string, tag = "1")]
    pub name: String,
}

impl RateLimitPolicy {
    /// `requests_per_unit` per `unit` (None: UNKNOWN, which fails
    /// validation unless the policy is unlimited).
    pub fn per(unit: Option<Unit>, requests_per_unit: u32) -> Self {
        RateLimitPolicy {
            unit: unit.map_or(0, |u| u as i32),
            requests_per_unit,
            ..Default::default()
        }
    }
}

impl RateLimitDescriptor {
    /// A descriptor of `key` (and `value`, empty for any), with its limit
    /// and the descriptors below it.
    pub fn new(
        key: &str,
        value: &str,
        rate_limit: Option<RateLimitPolicy>,
        descriptors: Vec<RateLimitDescriptor>,
    ) -> Self {
        RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit,
            descriptors,
            ..Default::default()
        }
    }
}

/// Our extension keys a descriptor's `metadata` may carry for its
/// `rate_limit` (the proto has no field for them): `algorithm`, `window`,
/// `unit_multiplier`, `debit`, `lease`, `slices`, as in the YAML form.
const EXTENSION_KEYS: [&str; 6] = [
    "algorithm",
    "window",
    "unit_multiplier",
    "debit",
    "lease",
    "slices",
];

/// The YAML root of one resource, as envoyproxy/ratelimit converts it.
pub fn to_yaml(config: &RateLimitConfig) -> Mapping {
    let mut root = Mapping::new();
    root.insert("domain".into(), config.domain.clone().into());
    root.insert("descriptors".into(), descriptors(&config.descriptors));
    root
}

fn descriptors(list: &[RateLimitDescriptor]) -> Value {
    Value::Sequence(list.iter().map(descriptor).collect())
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut map = Mapping::new();
    map.insert("key".into(), d.key.clone().into());
    if !d.value.is_empty() {
        map.insert("value".into(), d.value.clone().into());
    }
    if let Some(policy) = &d.rate_limit {
        let mut limit = rate_limit(policy);
        if let Some(metadata) = &d.metadata {
            for key in EXTENSION_KEYS {
                if let Some(value) = metadata.fields.get(key) {
                    limit.insert(key.into(), json_value(value));
                }
            }
        }
        map.insert("rate_limit".into(), Value::Mapping(limit));
    }
    if !d.descriptors.is_empty() {
        map.insert("descriptors".into(), descriptors(&d.descriptors));
    }
    for (key, on) in [
        ("shadow_mode", d.shadow_mode),
        ("detailed_metric", d.detailed_metric),
        ("quota_mode", d.quota_mode),
    ] {
        if on {
            map.insert(key.into(), true.into());
        }
    }
    if let Some(metadata) = &d.metadata {
        map.insert("metadata".into(), struct_value(metadata));
    }
    Value::Mapping(map)
}

fn rate_limit(p: &RateLimitPolicy) -> Mapping {
    let mut map = Mapping::new();
    // The enum's name, as the Go conversion writes `Unit.String()`: an
    // unknown number or UNKNOWN fails validation with the same message as
    // a bad unit in a file.
    let unit = Unit::try_from_code(p.unit)
        .map(|u| u.as_str().to_ascii_uppercase())
        .unwrap_or_else(|| {
            if p.unit == 0 {
                "UNKNOWN".to_owned()
            } else {
                p.unit.to_string()
            }
        });
    if !(p.unlimited && p.unit == 0) {
        map.insert("unit".into(), unit.into());
    }
    map.insert("requests_per_unit".into(), p.requests_per_unit.into());
    if p.unlimited {
        map.insert("unlimited".into(), true.into());
    }
    if !p.name.is_empty() {
        map.insert("name".into(), p.name.clone().into());
    }
    if !p.replaces.is_empty() {
        let replaces = p
            .replaces
            .iter()
            .map(|r| {
                let mut m = Mapping::new();
                m.insert("name".into(), r.name.clone().into());
                Value::Mapping(m)
            })
            .collect();
        map.insert("replaces".into(), Value::Sequence(replaces));
    }
    map
}

fn struct_value(s: &Struct) -> Value {
    let mut fields: Vec<_> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Value::Mapping(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k.clone()), json_value(v)))
            .collect(),
    )
}

fn json_value(v: &envoy_types::pb::google::protobuf::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // Whole numbers as integers (a `unit_multiplier` is one).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_value(s),
        Some(Kind::ListValue(l)) => Value::Sequence(l.values.iter().map(json_value).collect()),
    }
}

/// Decodes the resources of a discovery response (each an `Any`) and
/// compiles them: the configuration, or the first error, named after the
/// resource (its `name`, else its domain).
pub fn compile(
    resources: &[envoy_types::pb::google::protobuf::Any],
    merge: bool,
    ratelimit_key_prefix: Option<&str>,
) -> Result<Config, RulesError> {
    let mut roots = Vec::with_capacity(resources.len());
    for (index, any) in resources.iter().enumerate() {
        let origin = format!("resource {index}");
        if any.type_url != TYPE_URL {
            return Err(RulesError {
                origin,
                place: String::new(),
                problem: format!("unexpected resource type '{}'", any.type_url),
            });
        }
        let config =
            <RateLimitConfig as prost::Message>::decode(any.value.as_slice()).map_err(|err| {
                RulesError {
                    origin: origin.clone(),
                    place: String::new(),
                    problem: format!("cannot decode RateLimitConfig: {err}"),
                }
            })?;
        let name = if config.name.is_empty() {
            config.domain.clone()
        } else {
            config.name.clone()
        };
        roots.push((name, to_yaml(&config)));
    }
    Ok(with_key_format(
        compile_roots(&roots, merge)?,
        ratelimit_key_prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::request::Entry;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn any(config: &RateLimitConfig) -> Any {
        Any {
            type_url: TYPE_URL.into(),
            value: config.encode_to_vec(),
        }
    }

    fn limit(unit: Option<Unit>, n: u32) -> Option<RateLimitPolicy> {
        Some(RateLimitPolicy::per(unit, n))
    }

    fn leaf(key: &str, value: &str, rate_limit: Option<RateLimitPolicy>) -> RateLimitDescriptor {
        RateLimitDescriptor::new(key, value, rate_limit, Vec::new())
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned().into(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_field_reaches_the_rule_tree() {
        let mut metadata = Struct::default();
        metadata.fields.insert(
            "algorithm".into(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::StringValue("gcra".into())),
            },
        );
        metadata.fields.insert(
            "slices".into(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        let config = RateLimitConfig {
            name: "eg".into(),
            domain: "default/eg/http".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    shadow_mode: true,
                    detailed_metric: true,
                    quota_mode: true,
                    metadata: Some(metadata),
                    ..leaf("route", "r1", limit(Some(Unit::Year), 7))
                },
                RateLimitDescriptor {
                    descriptors: vec![leaf("remote_address", "", limit(Some(Unit::Week), 3))],
                    ..leaf("masked_remote_address", "0.0.0.0/0", None)
                },
            ],
        };
        let compiled = compile(&[any(&config)], false, None).unwrap();
        let tree = &compiled.domains["default/eg/http"];
        let walk = tree.walk(&entries(&[("route", "r1")])).unwrap();
        let policy = &walk.limits()[0].policy;
        assert_eq!(policy.algorithm(), crate::policy::Algorithm::Gcra);
        assert!(policy.slices());
        assert!(policy.shadow());
        assert!(policy.quota_mode());
        let label = policy.label().unwrap();
        assert_eq!((label.requests_per_unit, label.unit), (7, Unit::Year));
        assert!(label.detailed);
        let walk = tree
            .walk(&entries(&[
                ("masked_remote_address", "0.0.0.0/0"),
                ("remote_address", "10.0.0.1"),
            ]))
            .unwrap();
        let label = walk.limits()[0].policy.label().unwrap().clone();
        assert_eq!((label.requests_per_unit, label.unit), (3, Unit::Week));
        assert_eq!(compiled.files, vec!["eg".to_owned()]);
    }

    #[test]
    fn invalid_resources_fail_with_the_files_messages() {
        let bad_unit = RateLimitConfig {
            domain: "d".into(),
            descriptors: vec![leaf("k", "", limit(None, 1))],
            ..Default::default()
        };
        let err = compile(&[any(&bad_unit)], false, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid rate limit unit 'UNKNOWN'"),
            "{err}"
        );
        let no_domain = RateLimitConfig {
            name: "nameless".into(),
            ..Default::default()
        };
        let err = compile(&[any(&no_domain)], false, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("config file cannot have empty domain"),
            "{err}"
        );
        let twice = compile(&[any(&bad_unit.clone()), any(&bad_unit)], false, None);
        assert!(twice.is_err());
        let empty_key = RateLimitConfig {
            domain: "d".into(),
            descriptors: vec![leaf("", "", limit(Some(Unit::Second), 1))],
            ..Default::default()
        };
        let err = compile(&[any(&empty_key)], false, None).unwrap_err();
        assert!(
            err.to_string().contains("descriptor has empty key"),
            "{err}"
        );
        let garbage = Any {
            type_url: TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(compile(&[garbage], false, None).is_err());
        let wrong_type = Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: Vec::new(),
        };
        let err = compile(&[wrong_type], false, None).unwrap_err();
        assert!(
            err.to_string().contains("unexpected resource type"),
            "{err}"
        );
    }

    #[test]
    fn unlimited_and_replaces_convert_as_in_yaml() {
        let config = RateLimitConfig {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                rate_limit: Some(RateLimitPolicy {
                    unlimited: true,
                    name: "free".into(),
                    replaces: vec![RateLimitReplace {
                        name: "other".into(),
                    }],
                    ..Default::default()
                }),
                ..leaf("k", "v", None)
            }],
            ..Default::default()
        };
        let yaml = serde_yaml::to_string(&to_yaml(&config)).unwrap();
        assert!(yaml.contains("unlimited: true"), "{yaml}");
        assert!(!yaml.contains("unit: UNKNOWN"), "{yaml}");
        compile(&[any(&config)], false, None).unwrap();
        // An empty snapshot is a valid configuration: no domain.
        assert!(compile(&[], false, None).unwrap().domains.is_empty());
    }
}
