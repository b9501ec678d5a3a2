//! envoyproxy/ratelimit's configuration, read exactly as it reads it: a
//! directory of YAML files (`RUNTIME_ROOT`, `RUNTIME_SUBDIRECTORY`,
//! `RUNTIME_APPDIRECTORY`, `RUNTIME_WATCH_ROOT`, `RUNTIME_IGNOREDOTFILES`),
//! one domain per file (`MERGE_DOMAIN_CONFIG` merges them), validated with
//! its error messages, compiled to one rule tree per domain.
//!
//! Every file it accepts loads here unchanged. Our extensions are extra
//! keys: `algorithm`, `unit_multiplier`, `window`, `debit`, `lease` and
//! `slices` in a `rate_limit`, and
//! `rate_limits` (a list) for several limits on one descriptor.
//!
//! Layout: two loaders feed one compiler. `files` finds and reads the
//! files as envoyproxy/ratelimit does; `xds` turns the `RateLimitConfig`
//! resources of an xDS server into the same YAML roots; `yaml` reads a
//! `rate_limit` and checks the keys; this module builds the rule trees
//! from the roots ([`compile_roots`]).

mod files;
pub mod xds;
mod yaml;

pub use files::{check_dir, files, read};

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use super::tree::{Limit, Node, Rule, ValueMatch};
use super::RulesError;
use crate::config::RuntimeSettings;
use crate::policy::{Algorithm, Label, Policy};
use yaml::{field_bool, field_string, list, mapping, parse_limit, scalar, validate_keys};

/// The policy name of the first limit of a rule (the others are `erl-2`,
/// `erl-3`...): with the domain, the path, the window and the algorithm it
/// names the counter, so a descriptor's `limit` of the same unit shares the
/// rule's counter, as in envoyproxy/ratelimit.
pub const POLICY_NAME: &str = "erl";

/// The domains of a configuration directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub domains: HashMap<String, Node>,
    /// The file keys loaded, in load order (`config.basic.yaml`).
    pub files: Vec<String>,
    /// One line per limit, `<stats key>: unit=<UNIT> requests_per_unit=<n>,
    /// shadow_mode: <bool>, quota_mode: <bool>`, as `/rlconfig` shows it.
    pub dump: Vec<String>,
    /// ENVOY_KEY_FORMAT=ratelimit: fixed windows of one unit (and Envoy's
    /// per-descriptor limits) are counted under envoyproxy/ratelimit's own
    /// keys, with this CACHE_KEY_PREFIX.
    pub ratelimit_key_prefix: Option<String>,
}

impl Config {
    /// The same configuration counting under envoyproxy/ratelimit's keys
    /// with `prefix` (see [`Config::ratelimit_key_prefix`]).
    pub fn with_ratelimit_keys(mut self, prefix: &str) -> Self {
        for tree in self.domains.values_mut() {
            tree.map_policies(&mut |policy: &Policy| {
                let label = policy.label()?;
                let one_unit = label.unit.seconds() * 1000 == policy.window_ms();
                (policy.algorithm() == Algorithm::FixedWindow && one_unit).then(|| {
                    Policy::clone(policy).with_label(Label {
                        ratelimit_key_prefix: Some(prefix.to_owned()),
                        ..label.clone()
                    })
                })
            });
        }
        self.ratelimit_key_prefix = Some(prefix.to_owned());
        self
    }
}

/// Files read: (key, text) each.
pub type Texts = Vec<(String, String)>;

/// Validates and compiles files given as (key, YAML text) with the
/// settings' merge and key format.
pub fn compile(
    files: &[(String, String)],
    settings: &RuntimeSettings,
) -> Result<Config, RulesError> {
    let config = parse(files, settings.merge_domains)?;
    Ok(with_key_format(
        config,
        settings.ratelimit_key_prefix.as_deref(),
    ))
}

/// Validates and compiles files given as (key, YAML text).
pub fn parse(files: &[(String, String)], merge: bool) -> Result<Config, RulesError> {
    let roots = files
        .iter()
        .map(|(key, text)| {
            yaml::root(text)
                .map(|root| (key.clone(), root))
                .map_err(|problem| RulesError {
                    origin: key.clone(),
                    place: String::new(),
                    problem,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    compile_roots(&roots, merge)
}

/// The one compiler of both loaders (the YAML files and the xDS
/// resources): validates and compiles configurations given as (origin,
/// YAML root), with envoyproxy/ratelimit's messages.
pub fn compile_roots(roots: &[(String, Mapping)], merge: bool) -> Result<Config, RulesError> {
    let mut builder = Builder {
        config: Config::default(),
        seen: HashMap::new(),
        merge,
    };
    for (key, root) in roots {
        builder.root(root).map_err(|problem| RulesError {
            origin: key.clone(),
            place: String::new(),
            problem,
        })?;
        builder.config.files.push(key.clone());
    }
    Ok(builder.config)
}

/// The configuration with the settings' key format.
pub fn with_key_format(config: Config, ratelimit_key_prefix: Option<&str>) -> Config {
    match ratelimit_key_prefix {
        Some(prefix) => config.with_ratelimit_keys(prefix),
        None => config,
    }
}

struct Builder {
    config: Config,
    /// Composite keys per domain (`domain.key_value.key`), for duplicates.
    seen: HashMap<String, HashSet<String>>,
    merge: bool,
}

/// One level of a rule's path as written: key and value.
type Step = (String, ValueMatch);

impl Builder {
    fn root(&mut self, root: &Mapping) -> Result<(), String> {
        validate_keys(root)?;
        let domain = match root.get("domain") {
            None | Some(Value::Null) => String::new(),
            Some(value) => {
                scalar(value).ok_or("error loading config file: domain: expected a string")?
            }
        };
        if domain.is_empty() {
            return Err("config file cannot have empty domain".into());
        }
        if domain == super::http::DOMAIN {
            return Err(format!(
                "domain '{domain}' is reserved for the service's HTTP rules \
                 (RATE_LIMIT_CONFIG and the RATE_LIMIT_* settings); choose another name"
            ));
        }
        if self.config.domains.contains_key(&domain) && !self.merge {
            return Err(format!("duplicate domain '{domain}' in config file"));
        }
        let mut tree = self.config.domains.remove(&domain).unwrap_or_default();
        let mut seen = self.seen.remove(&domain).unwrap_or_default();
        let descriptors = list(root.get("descriptors"), "descriptors")?;
        let result = self.descriptors(&mut tree, &mut seen, &[], &domain, &descriptors);
        self.config.domains.insert(domain.clone(), tree);
        self.seen.insert(domain, seen);
        result
    }

    fn descriptors(
        &mut self,
        tree: &mut Node,
        seen: &mut HashSet<String>,
        parent: &[Step],
        parent_key: &str,
        descriptors: &[Mapping],
    ) -> Result<(), String> {
        for d in descriptors {
            let key = field_string(d, "key")?.unwrap_or_default();
            if key.is_empty() {
                return Err("descriptor has empty key".into());
            }
            let value = field_string(d, "value")?.unwrap_or_default();
            let final_key = if value.is_empty() {
                key.clone()
            } else {
                format!("{key}_{value}")
            };
            let composite = format!("{parent_key}.{final_key}");
            if !seen.insert(composite.clone()) {
                return Err(format!("duplicate descriptor composite key '{composite}'"));
            }
            let share_threshold = field_bool(d, "share_threshold")?;
            if share_threshold && !value.contains('*') {
                return Err(format!(
                    "share_threshold can only be used with wildcard values (containing '*'), \
                     but found key '{final_key}'"
                ));
            }
            if let Some(metadata) = d.get("metadata") {
                if !matches!(metadata, Value::Mapping(_) | Value::Null) {
                    return Err("error parsing metadata: expected a map".into());
                }
            }
            let mut path = parent.to_vec();
            path.push((
                key.clone(),
                if value.is_empty() {
                    ValueMatch::Any
                } else {
                    ValueMatch::of(&value)
                },
            ));
            let shadow = field_bool(d, "shadow_mode")?;
            let quota = field_bool(d, "quota_mode")?;
            let mut rule = Rule {
                stats_key: composite.clone(),
                detailed_metric: field_bool(d, "detailed_metric")?,
                shadow,
                ..Rule::default()
            };
            let limits = match (d.get("rate_limit"), d.get("rate_limits")) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "'{composite}': set rate_limit or rate_limits, not both"
                    ))
                }
                (Some(Value::Null), None) | (None, None) => Vec::new(),
                (Some(one), None) => vec![mapping(one, "rate_limit")?],
                (None, Some(many)) => list(Some(many), "rate_limits")?,
            };
            for (index, limit) in limits.iter().enumerate() {
                let parsed = parse_limit(limit)?;
                if let Some(name) = &parsed.name {
                    rule.name.get_or_insert_with(|| name.clone());
                }
                for replaced in &parsed.replaces {
                    if replaced.is_empty() {
                        return Err("should not have an empty replaces entry".into());
                    }
                    if Some(replaced) == parsed.name.as_ref() {
                        return Err("replaces should not contain name of same descriptor".into());
                    }
                    rule.replaces.push(replaced.clone());
                }
                if parsed.unlimited {
                    rule.unlimited = true;
                    continue;
                }
                let label = Label {
                    name: parsed.name.clone().unwrap_or_default(),
                    requests_per_unit: parsed.requests_per_unit,
                    unit: parsed.unit,
                    stats_key: composite.clone(),
                    key1: path.first().map(level).unwrap_or_default(),
                    key2: path.get(1).map(level).unwrap_or_default(),
                    detailed: rule.detailed_metric,
                    ratelimit_key_prefix: None,
                };
                self.config.dump.push(format!(
                    "{composite}: unit={} requests_per_unit={}, shadow_mode: {shadow}, quota_mode: {quota}",
                    parsed.unit.as_str().to_ascii_uppercase(),
                    parsed.requests_per_unit,
                ));
                let Some(limit) = NonZeroU32::new(parsed.requests_per_unit) else {
                    rule.ban = Some(label);
                    continue;
                };
                let name = if index == 0 {
                    POLICY_NAME.to_owned()
                } else {
                    format!("{POLICY_NAME}-{}", index + 1)
                };
                let policy = Policy::new(name, parsed.algorithm, limit, parsed.window, 1)
                    .map_err(|err| format!("'{composite}': {err}"))?
                    .with_shadow(shadow)
                    .with_quota_mode(quota)
                    .with_debit(parsed.debit)
                    .with_slices(parsed.slices)
                    .map_err(|err| format!("'{composite}': {err}"))?
                    .with_label(label);
                tree.insert(
                    &path,
                    Limit {
                        rank: 0,
                        policy: Arc::new(policy),
                    },
                );
            }
            tree.set_rule(&path, rule, share_threshold);
            let children = list(d.get("descriptors"), "descriptors")?;
            self.descriptors(tree, seen, &path, &composite, &children)?;
        }
        Ok(())
    }
}

/// One level of a stats key: `key`, or `key_value` (the pattern for a
/// wildcard).
fn level((key, value): &Step) -> String {
    match value {
        ValueMatch::Any => key.clone(),
        ValueMatch::Exact(v) | ValueMatch::Wildcard(v) => format!("{key}_{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::request::Entry;
    use crate::policy::Unit;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, String> {
        parse(&[("config.test.yaml".into(), text.into())], false).map_err(|e| e.to_string())
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned().into(), (*v).to_owned()))
            .collect()
    }

    const BASIC: &str = include_str!("../../../../tests/fixtures/erl/basic.yaml");

    /// (requests_per_unit, unit, name, stats key) of what `pairs` matches.
    fn matched(config: &Config, pairs: &[(&str, &str)]) -> Option<(u32, Unit, String, String)> {
        let tree = &config.domains["test-domain"];
        let walk = tree.walk(&entries(pairs))?;
        let limit = walk.limits().first()?;
        let label = limit.policy.label()?;
        Some((
            label.requests_per_unit,
            label.unit,
            label.name.clone(),
            label.stats_key.clone(),
        ))
    }

    #[test]
    fn basic_config_matches_like_envoys_ratelimit() {
        let c = load(BASIC).unwrap();
        assert_eq!(matched(&c, &[("key1", "something")]), None);
        assert_eq!(matched(&c, &[("key1", "value1")]), None);
        let m = matched(&c, &[("key1", "value1"), ("subkey1", "something")]).unwrap();
        assert_eq!(
            (m.0, m.1, m.3.as_str()),
            (5, Unit::Second, "test-domain.key1_value1.subkey1")
        );
        let m = matched(&c, &[("key1", "value1"), ("subkey1", "subvalue1")]).unwrap();
        assert_eq!(
            (m.0, m.3.as_str()),
            (10, "test-domain.key1_value1.subkey1_subvalue1")
        );
        let m = matched(&c, &[("key2", "something")]).unwrap();
        assert_eq!(
            (m.0, m.1, m.3.as_str()),
            (20, Unit::Minute, "test-domain.key2")
        );
        assert_eq!(matched(&c, &[("key2", "value2")]).unwrap().0, 30);
        assert_eq!(matched(&c, &[("key2", "value3")]), None);
        assert_eq!(
            matched(&c, &[("key2", "value2"), ("subkey", "subvalue")]),
            None
        );
        assert_eq!(
            matched(&c, &[("key5", "value5"), ("subkey5", "subvalue")]),
            None
        );
        assert_eq!(matched(&c, &[("key5", "value5")]).unwrap().0, 15);
        assert_eq!(
            matched(&c, &[("key5", "value5"), ("subkey5", "subvalue5")])
                .unwrap()
                .0,
            25
        );
        let m = matched(&c, &[("key4", "foo")]).unwrap();
        assert_eq!(
            (m.0, m.1, m.2.as_str(), m.3.as_str()),
            (1, Unit::Day, "key4_rate_limit", "test-domain.key4")
        );
        let tree = &c.domains["test-domain"];
        let walk = tree.walk(&entries(&[("key6", "foo")])).unwrap();
        assert!(walk.rule().unwrap().unlimited && walk.limits().is_empty());
        let walk = tree.walk(&entries(&[("key7", "x")])).unwrap();
        assert!(walk.rule().unwrap().detailed_metric);
        assert!(c.dump.contains(
            &"test-domain.key2_value2: unit=MINUTE requests_per_unit=30, shadow_mode: false, quota_mode: false".to_owned()
        ));
    }

    #[test]
    fn validation_messages_are_envoys() {
        let cases: &[(&str, &str)] = &[
            ("domain: \"\"\n", "config file cannot have empty domain"),
            ("", "config file cannot have empty domain"),
            ("domain: d\ndescriptors:\n  - key: \"\"\n", "descriptor has empty key"),
            (
                "domain: d\ndescriptors:\n  - {key: k1, value: v1}\n  - {key: k1, value: v1}\n",
                "duplicate descriptor composite key 'd.k1_v1'",
            ),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: foo, requests_per_unit: 1}}\n",
                "invalid rate limit unit 'foo'",
            ),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {requests_per_unit: 1}}\n",
                "invalid rate limit unit ''",
            ),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, unlimited: true}}\n",
                "should not specify rate limit unit when unlimited",
            ),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {name: a, unit: second, requests_per_unit: 1, replaces: [{name: a}]}}\n",
                "replaces should not contain name of same descriptor",
            ),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: }]}}\n",
                "should not have an empty replaces entry",
            ),
            ("domain: d\ndescriptors:\n  - key: k\n    ratelimit: {}\n", "config error, unknown key 'ratelimit'"),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requestsperunit: 1}}\n",
                "config error, unknown key 'requestsperunit'",
            ),
            ("domain: d\n0.25: x\n", "config error, key is not of type string: 0.25"),
            ("domain: d\ndescriptors:\n  - a\n", "config error, yaml file contains list of type other than map: a"),
            ("domain: d\ndescriptors:\n  - {key: k, value: 1.5}\n", "error checking config"),
            (
                "domain: d\ndescriptors:\n  - {key: files, value: pdf, share_threshold: true}\n",
                "share_threshold can only be used with wildcard values (containing '*'), but found key 'files_pdf'",
            ),
            ("domain: d\ndescriptors:\n  - {key: k, metadata: 3}\n", "error parsing metadata"),
            ("domain: d\ndescriptors: [\n", "error loading config file: "),
            (
                "domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: -1}}\n",
                "error loading config file: requests_per_unit",
            ),
        ];
        for (text, message) in cases {
            let err = load(text).unwrap_err();
            assert!(
                err.starts_with(&format!("config.test.yaml: {message}")),
                "{text:?}: got {err:?}, want {message:?}"
            );
        }
        let two = [
            (
                "config.a.yaml".to_owned(),
                "domain: test-domain\n".to_owned(),
            ),
            (
                "config.b.yaml".to_owned(),
                "domain: test-domain\n".to_owned(),
            ),
        ];
        assert_eq!(
            parse(&two, false).unwrap_err().to_string(),
            "config.b.yaml: duplicate domain 'test-domain' in config file"
        );
        assert!(parse(&two, true).is_ok(), "MERGE_DOMAIN_CONFIG merges");
    }

    #[test]
    fn merged_domains_still_refuse_duplicate_keys() {
        let files = [
            ("config.a.yaml".to_owned(), "domain: d\ndescriptors:\n  - {key: a, rate_limit: {unit: second, requests_per_unit: 1}}\n".to_owned()),
            ("config.b.yaml".to_owned(), "domain: d\ndescriptors:\n  - {key: b, rate_limit: {unit: second, requests_per_unit: 2}}\n".to_owned()),
        ];
        let c = parse(&files, true).unwrap();
        let tree = &c.domains["d"];
        assert!(!tree.matching(&entries(&[("a", "x")])).is_empty());
        assert!(!tree.matching(&entries(&[("b", "x")])).is_empty());
        let dup = [
            files[0].clone(),
            ("config.c.yaml".to_owned(), files[0].1.clone()),
        ];
        assert_eq!(
            parse(&dup, true).unwrap_err().to_string(),
            "config.c.yaml: duplicate descriptor composite key 'd.a'"
        );
    }

    #[test]
    fn extensions_several_limits_algorithms_and_windows() {
        let c = load(
            r#"
domain: test-domain
descriptors:
  - key: user
    rate_limits:
      - { unit: second, requests_per_unit: 10, algorithm: gcra }
      - { unit: minute, unit_multiplier: 5, requests_per_unit: 100 }
      - { unit: second, window: 30s, requests_per_unit: 50, algorithm: sliding_window }
"#,
        )
        .unwrap();
        let limits = c.domains["test-domain"].matching(&entries(&[("user", "u")]));
        let shapes: Vec<(Algorithm, u64, u32, Unit)> = limits
            .iter()
            .map(|l| {
                (
                    l.policy.algorithm(),
                    l.policy.window().as_secs(),
                    l.policy.limit().get(),
                    l.policy.label().unwrap().unit,
                )
            })
            .collect();
        assert_eq!(
            shapes,
            [
                (Algorithm::Gcra, 1, 10, Unit::Second),
                (Algorithm::FixedWindow, 300, 100, Unit::Minute),
                (Algorithm::SlidingWindow, 30, 50, Unit::Second),
            ]
        );
        let names: Vec<&str> = limits.iter().map(|l| l.policy.name()).collect();
        assert_eq!(names, ["erl", "erl-2", "erl-3"]);
        assert!(load("domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky}}\n").is_err());
        assert!(load("domain: http\n").unwrap_err().contains("reserved"));
    }

    fn runtime(root: &Path, sub: &str, app: &str, watch_root: bool, dot: bool) -> RuntimeSettings {
        RuntimeSettings {
            root: root.to_owned(),
            subdirectory: sub.into(),
            appdirectory: app.into(),
            watch_root,
            ignore_dotfiles: dot,
            merge_domains: false,
            ratelimit_key_prefix: None,
        }
    }

    #[test]
    fn files_are_found_as_envoys_ratelimit_finds_them() {
        let dir = std::env::temp_dir().join(format!("erl-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let app = dir.join("current/ratelimit/config");
        std::fs::create_dir_all(app.join("nested")).unwrap();
        std::fs::write(app.join("a.yaml"), "domain: a\n").unwrap();
        std::fs::write(app.join("nested/b.yml"), "domain: b\n").unwrap();
        std::fs::write(dir.join("current/ratelimit/other.yaml"), "domain: c\n").unwrap();
        let keys = |s: &RuntimeSettings| -> Vec<String> {
            files(s).unwrap().0.into_iter().map(|(k, _)| k).collect()
        };
        // Mode A: keys keep the app directory and must start with it.
        let a = runtime(&dir.join("current"), "ratelimit", "config", true, false);
        assert_eq!(keys(&a), ["config.a.yaml", "config.nested.b.yml"]);
        // Mode B: the app directory is the root of the keys.
        let b = runtime(&dir.join("current"), "ratelimit", "config", false, false);
        assert_eq!(keys(&b), ["a.yaml", "nested.b.yml"]);
        // Mode A without a subdirectory reads nothing, and says so.
        let (none, warning) =
            files(&runtime(&dir.join("current"), "", "config", true, false)).unwrap();
        assert!(none.is_empty() && warning.unwrap().contains("RUNTIME_SUBDIRECTORY"));
        // A ConfigMap: ..data is skipped with RUNTIME_IGNOREDOTFILES.
        let cm = dir.join("cm/config");
        std::fs::create_dir_all(cm.join("..2026_11_28")).unwrap();
        std::fs::write(cm.join("..2026_11_28/rl.yaml"), "domain: a\n").unwrap();
        std::os::unix::fs::symlink("..2026_11_28", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/rl.yaml", cm.join("rl.yaml")).unwrap();
        let k8s = runtime(&dir.join("cm"), "", "config", false, true);
        assert_eq!(keys(&k8s), ["rl.yaml"]);
        assert!(load_ok(&k8s));
        let without = runtime(&dir.join("cm"), "", "config", false, false);
        assert_eq!(keys(&without), ["..2026_11_28.rl.yaml", "rl.yaml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn load_ok(s: &RuntimeSettings) -> bool {
        read(s).and_then(|(texts, _)| compile(&texts, s)).is_ok()
    }
}
