//! The rules: a tree per domain (see [`tree`]) of limits, built from the
//! built-in `user` and `ip` limits of the settings or from a TOML rules file
//! ([`file`], `RATE_LIMIT_CONFIG`), with the file's per-identity overrides.
//! Both speak of strategies and routes; [`http`] is the convention that
//! turns them into the tree of the `http` domain, and an HTTP caller into
//! a check request that the tree answers.
//!
//! A file is validated whole before it is used: every error names the file,
//! the policy (or override) and the key, and a file with an error is never
//! half applied.

pub mod erl;
mod file;
pub mod http;
pub mod tree;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::request::{path_subject, CheckRequest, Descriptor, Entry, LimitOverride};
use crate::config::Settings;
use crate::identity::Strategy;
use crate::policy::{Algorithm, Label, Policy};
use http::RouteMatch;
pub use http::{Route, Shapes};
pub use tree::Limit;
use tree::Node;

/// A policy of the HTTP domain with the callers and routes it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScopedPolicy {
    policy: Arc<Policy>,
    strategy: Option<Strategy>,
    route: Option<RouteMatch>,
    /// The host the request was sent to (a `*` glob allowed), lower case.
    host: Option<String>,
}

/// What an override does to one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideAction {
    /// Allow-list: never limited, answered without Redis.
    Unlimited,
    /// Deny-list: always refused, answered without Redis.
    Blocked,
    /// Another limit (and optionally window) for one policy, or for every
    /// policy that applies.
    Limit {
        policy: Option<String>,
        limit: NonZeroU32,
        window: Option<Duration>,
    },
}

impl OverrideAction {
    /// `policy` as this override changes it (a `Limit` for it), if it does.
    pub fn apply(&self, policy: &Arc<Policy>) -> Arc<Policy> {
        match self {
            OverrideAction::Limit {
                policy: name,
                limit,
                window,
            } if name.as_ref().is_none_or(|n| *n == policy.name()) => {
                // Judged valid when it was set (and again at each reload);
                // should it not be, the policy stays as it is.
                match policy.with_limit(*limit, window.unwrap_or(policy.window())) {
                    Ok(changed) => Arc::new(changed),
                    Err(_) => policy.clone(),
                }
            }
            _ => policy.clone(),
        }
    }
}

/// One limit a request's descriptor matched, as the overrides leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The index of the descriptor in the request.
    pub descriptor: usize,
    pub policy: Arc<Policy>,
    /// Whose counter: for a descriptor outside the HTTP domain its domain
    /// and whole path (see [`path_subject`]); `None`: the descriptor's last
    /// entry.
    pub subject: Option<Arc<Entry>>,
}

/// What the rules say of one descriptor before any counter is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// No limit: no rule matched, the domain is unknown, or another matched
    /// rule `replaces` this one.
    None,
    /// `unlimited: true` (or an allow-list override): never counted.
    Unlimited,
    /// `requests_per_unit: 0`: always over, never counted; `shadow` when
    /// that is only reported.
    Banned { label: Label, shadow: bool },
    /// Its limits are among the items.
    Limited,
}

/// How the rules and overrides treat one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A descriptor's subject is blocked: the whole request is refused.
    Blocked,
    /// Check these, in the rules' order (none: unlimited); the answer holds
    /// at most `valid_for` (until an override it depends on ends).
    Limited {
        items: Vec<Item>,
        valid_for: Option<Duration>,
        /// One per descriptor.
        marks: Vec<Mark>,
        /// A descriptor is banned (an enforced `requests_per_unit: 0`): the
        /// request is over the limit whatever its counters say.
        banned: bool,
    },
}

/// An override in force, with the time it has left (`None`: no end).
pub type ActiveOverride = (OverrideAction, Option<Duration>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The HTTP domain's policies in file order, for display and checks.
    policies: Vec<ScopedPolicy>,
    /// The file's overrides, by subject entry.
    overrides: HashMap<Entry, OverrideAction>,
    /// The rule tree of each domain.
    domains: HashMap<String, Node>,
    /// The envoyproxy/ratelimit configuration (its domains), kept through
    /// reloads of the HTTP rules.
    erl: Arc<erl::Config>,
    shapes: Shapes,
    /// RATE_LIMIT_SHADOW: every limit is reported, none enforced (the
    /// policies are shadow ones; this covers what is made per request: bans
    /// and callers' own limits).
    shadow: bool,
}

/// A rules file that cannot be used, with the file, the place and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {place}{problem}")]
pub struct RulesError {
    pub origin: String,
    /// `policy "name": key 'limit': ` and the like; empty for file-level problems.
    pub place: String,
    pub problem: String,
}

impl Rules {
    /// The built-in policies: `user` for callers with an API key and `ip` for
    /// the others, from the RATE_LIMIT_* settings.
    ///
    /// With RATE_LIMIT_IP_EVERY_REQUEST the `ip` policy applies to every
    /// request, counted per client IP, API key or not.
    pub fn builtin(settings: &Settings) -> Self {
        let policy = |name: &str, strategy, limits: crate::config::LimitSettings| {
            let per_client_ip = strategy == Strategy::Ip && settings.ip_every_request;
            ScopedPolicy {
                policy: Arc::new(
                    Policy::new(name, settings.algorithm, limits.limit, limits.window, 1)
                        // The settings were validated: the name is fixed, the
                        // window whole ms, limit × window below 2^53.
                        .expect("the built-in limits are valid policies")
                        .with_shadow(settings.shadow)
                        .with_per_client_ip(per_client_ip),
                ),
                strategy: (!per_client_ip).then_some(strategy),
                route: None,
                host: None,
            }
        };
        Self::compile(
            vec![
                policy("user", Strategy::User, settings.user_limit),
                policy("ip", Strategy::Ip, settings.ip_limit),
            ],
            HashMap::new(),
        )
    }

    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| RulesError {
            origin: origin.clone(),
            place: String::new(),
            problem: format!("cannot read the file: {err}"),
        })?;
        Self::parse(&origin, &text)
    }

    /// Validates rules given as TOML text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, RulesError> {
        let (policies, overrides) = file::Parser { origin }.parse(text)?;
        Ok(Self::compile(policies, overrides))
    }

    /// Builds the tree of the HTTP domain.
    fn compile(policies: Vec<ScopedPolicy>, overrides: HashMap<Entry, OverrideAction>) -> Self {
        let mut tree = Node::default();
        for (rank, scoped) in policies.iter().enumerate() {
            for path in http::paths(scoped) {
                let limit = Limit {
                    rank: rank as u32,
                    policy: scoped.policy.clone(),
                };
                tree.insert(&path, limit);
            }
        }
        Rules {
            shapes: Shapes::of(&policies),
            policies,
            overrides,
            domains: HashMap::from([(http::DOMAIN.to_owned(), tree)]),
            erl: Arc::default(),
            shadow: false,
        }
    }

    /// These rules with `config`'s domains beside the HTTP domain.
    pub fn with_erl(mut self, config: Arc<erl::Config>) -> Self {
        self.erl = config;
        self
    }

    /// The envoyproxy/ratelimit configuration in force.
    pub fn erl(&self) -> &Arc<erl::Config> {
        &self.erl
    }

    /// The tree of `domain`.
    fn tree(&self, domain: &str) -> Option<&Node> {
        if domain == http::DOMAIN {
            self.domains.get(domain)
        } else {
            self.erl.domains.get(domain)
        }
    }

    /// Every policy in shadow mode (RATE_LIMIT_SHADOW=true).
    pub fn all_shadow(mut self) -> Self {
        for scoped in &mut self.policies {
            scoped.policy = Arc::new(Policy::clone(&scoped.policy).with_shadow(true));
        }
        // The Envoy domains' too: RATE_LIMIT_SHADOW is every policy's.
        let mut erl = erl::Config::clone(&self.erl);
        for tree in erl.domains.values_mut() {
            tree.map_policies(&mut |policy| Some(Policy::clone(policy).with_shadow(true)));
        }
        let mut rules = Self::compile(self.policies, self.overrides).with_erl(Arc::new(erl));
        rules.shadow = true;
        rules
    }

    /// The HTTP domain's policies counted under a subject of `key` (`user`,
    /// `jwt`, `ip`, `client_ip`), whatever route or host they are scoped
    /// to: every counter an identity may have.
    pub fn http_policies_for<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Arc<Policy>> {
        self.policies
            .iter()
            .filter(move |scoped| http::subject_keys(scoped).contains(&key))
            .map(|scoped| &scoped.policy)
    }

    /// The policies of the HTTP domain, with their names, for display.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| p.policy.as_ref())
    }

    /// The descriptor shapes an HTTP caller sends (see [`http::request`]).
    pub fn shapes(&self) -> Shapes {
        self.shapes
    }

    /// The limits `descriptor` matches in `domain` (none for an unknown
    /// domain).
    pub fn matching(&self, domain: &str, descriptor: &Descriptor) -> &[Limit] {
        self.tree(domain)
            .map_or(&[][..], |tree| tree.matching(&descriptor.entries))
    }

    /// Whose counters a descriptor of an Envoy domain uses (see
    /// [`path_subject`]); `None` for the HTTP domain or an unknown one.
    pub fn subject(&self, domain: &str, descriptor: &Descriptor) -> Option<Entry> {
        if domain == http::DOMAIN {
            return None;
        }
        let tree = self.tree(domain)?;
        let shared = tree.walk(&descriptor.entries).is_some_and(|w| w.shared);
        Some(path_counter(tree, domain, descriptor, shared))
    }

    /// Whether the rules know `domain`.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.tree(domain).is_some()
    }

    /// The limits of every descriptor of `request`: each descriptor's
    /// matches in the tree (or its own `limit`), less those another match
    /// `replaces`, changed by the override of its subject (`dynamic`, the
    /// admin API's, first; then the file's).
    pub fn resolve(
        &self,
        request: &CheckRequest,
        dynamic: impl Fn(&Entry) -> Option<ActiveOverride>,
    ) -> Resolution {
        let domain: &str = &request.domain;
        let tree = self.tree(domain);
        let walks: Vec<Option<tree::Walk<'_>>> = request
            .descriptors
            .iter()
            .map(|d| tree.and_then(|t| t.walk(&d.entries)))
            .collect();
        let replaced: Vec<&str> = walks
            .iter()
            .flatten()
            .filter_map(|w| w.rule())
            .flat_map(|r| r.replaces.iter().map(String::as_str))
            .collect();
        let mut ranked: Vec<(u32, Item)> = Vec::new();
        let mut marks = Vec::with_capacity(request.descriptors.len());
        let mut banned = false;
        let mut valid_for: Option<Duration> = None;
        for (index, (descriptor, walk)) in request.descriptors.iter().zip(&walks).enumerate() {
            let Some(tree) = tree else {
                marks.push(Mark::None);
                continue;
            };
            let rule = walk.and_then(|w| w.rule());
            let own;
            // A caller's own limit replaces a rule's; where no rule asks for
            // a limit it is ignored, so that callers cannot make up counters
            // (keys of their choosing, alive as long as the unit they name).
            let limits: &[Limit] = match (descriptor.limit.filter(|_| rule.is_some()), walk) {
                (Some(limit), _) => match override_limit(
                    domain,
                    descriptor,
                    limit,
                    rule,
                    self.erl.ratelimit_key_prefix.as_deref(),
                ) {
                    Ok(limit) if self.shadow => {
                        own = [Limit {
                            policy: Arc::new(Policy::clone(&limit.policy).with_shadow(true)),
                            ..limit
                        }];
                        &own
                    }
                    Ok(limit) => {
                        own = [limit];
                        &own
                    }
                    Err(label) => {
                        banned |= !self.shadow;
                        marks.push(Mark::Banned {
                            label: *label,
                            shadow: self.shadow,
                        });
                        continue;
                    }
                },
                (None, None) => {
                    marks.push(Mark::None);
                    continue;
                }
                (None, Some(walk)) => {
                    if let Some(rule) = rule {
                        if rule.name.as_deref().is_some_and(|n| replaced.contains(&n)) {
                            marks.push(Mark::None);
                            continue;
                        }
                        if rule.unlimited {
                            marks.push(Mark::Unlimited);
                            continue;
                        }
                        if let Some(label) = &rule.ban {
                            let shadow = rule.shadow || self.shadow;
                            banned |= !shadow;
                            marks.push(Mark::Banned {
                                label: label.clone(),
                                shadow,
                            });
                            continue;
                        }
                    }
                    walk.limits()
                }
            };
            if limits.is_empty() {
                marks.push(Mark::None);
                continue;
            }
            let subject = (domain != http::DOMAIN).then(|| {
                Arc::new(path_counter(
                    tree,
                    domain,
                    descriptor,
                    walk.is_some_and(|w| w.shared),
                ))
            });
            let Some(key) = subject.as_deref().or(descriptor.subject()) else {
                marks.push(Mark::None);
                continue;
            };
            let action = dynamic(key)
                .or_else(|| self.file_override(key).map(|action| (action.clone(), None)));
            if let Some((_, Some(left))) = &action {
                valid_for = Some(valid_for.map_or(*left, |v| v.min(*left)));
            }
            let item = |policy| Item {
                descriptor: index,
                policy,
                subject: subject.clone(),
            };
            match action.map(|(a, _)| a) {
                Some(OverrideAction::Blocked) => return Resolution::Blocked,
                Some(OverrideAction::Unlimited) => {
                    marks.push(Mark::Unlimited);
                    continue;
                }
                Some(action) => ranked.extend(
                    limits
                        .iter()
                        .map(|l| (l.rank, item(action.apply(&l.policy)))),
                ),
                None => ranked.extend(limits.iter().map(|l| (l.rank, item(l.policy.clone())))),
            }
            marks.push(Mark::Limited);
        }
        // Stable: the limits of one rank keep the order of the descriptors.
        ranked.sort_by_key(|(rank, _)| *rank);
        Resolution::Limited {
            items: ranked.into_iter().map(|(_, item)| item).collect(),
            valid_for,
            marks,
            banned,
        }
    }

    /// The rules file's override for a subject.
    pub fn file_override(&self, subject: &Entry) -> Option<&OverrideAction> {
        if self.overrides.is_empty() {
            None
        } else {
            self.overrides.get(subject)
        }
    }

    /// Whether an override set through the admin API fits these rules, for a
    /// subject whose key is `subject_key` (`user`, `ip`); Err((key, problem)).
    pub fn check_override(
        &self,
        subject_key: &str,
        action: &OverrideAction,
    ) -> Result<(), (&'static str, String)> {
        if super::request::is_path_subject(subject_key) {
            return check_descriptor_override(action);
        }
        check_override(&self.policies, subject_key, action)
    }
}

/// Whether `action` can apply to an Envoy descriptor: it changes every
/// limit of the descriptor (no policy name), to a limit and window every
/// algorithm can count. Err((key, problem)).
fn check_descriptor_override(action: &OverrideAction) -> Result<(), (&'static str, String)> {
    let OverrideAction::Limit {
        policy,
        limit,
        window,
    } = action
    else {
        return Ok(());
    };
    if policy.is_some() {
        return Err((
            "policy",
            "a descriptor's override changes all of its limits: name no policy".into(),
        ));
    }
    let window = window.ok_or((
        "window",
        "a descriptor's override needs a window (its limits may have different ones)".to_owned(),
    ))?;
    for algorithm in Algorithm::ALL {
        Policy::new(erl::POLICY_NAME, algorithm, *limit, window, 1)
            .map_err(|problem| ("limit", problem.to_string()))?;
    }
    Ok(())
}

/// Whether `action` can apply to the policies counted under `subject_key`:
/// the named policy exists, and the new limit and window make valid
/// policies. Err((key, problem)).
fn check_override(
    policies: &[ScopedPolicy],
    subject_key: &str,
    action: &OverrideAction,
) -> Result<(), (&'static str, String)> {
    let OverrideAction::Limit {
        policy: name,
        limit,
        window,
    } = action
    else {
        return Ok(());
    };
    let targets: Vec<&ScopedPolicy> = policies
        .iter()
        .filter(|p| name.as_ref().is_none_or(|n| *n == p.policy.name()))
        .filter(|p| http::subject_keys(p).contains(&subject_key))
        .collect();
    if let Some(name) = name {
        if targets.is_empty() {
            return Err((
                "policy",
                format!("no policy named {name:?} applies to strategy \"{subject_key}\""),
            ));
        }
    }
    for target in targets {
        let p = &target.policy;
        Policy::new(
            p.name(),
            p.algorithm(),
            *limit,
            window.unwrap_or(p.window()),
            p.cost(),
        )
        .map_err(|problem| ("limit", format!("for policy {:?}: {problem}", p.name())))?;
    }
    Ok(())
}

/// The path subject of a descriptor of `domain`: its values, or the
/// `share_threshold` patterns where it matched one (`shared`).
fn path_counter(tree: &Node, domain: &str, descriptor: &Descriptor, shared: bool) -> Entry {
    let values = if shared {
        tree.counter_values(&descriptor.entries)
    } else {
        descriptor
            .entries
            .iter()
            .map(|e| std::borrow::Cow::Borrowed(e.1.as_str()))
            .collect()
    };
    path_subject(
        domain,
        descriptor.entries.iter().map(|e| &*e.0),
        values.iter().map(|v| &**v),
    )
}

/// The limit of a descriptor that brings its own (Envoy's `limit`): a fixed
/// window of its unit, named like the rule it matched (so both share a
/// counter when their units agree), or `Err` with the label of a limit of 0
/// (always over).
fn override_limit(
    domain: &str,
    descriptor: &Descriptor,
    limit: LimitOverride,
    rule: Option<&tree::Rule>,
    prefix: Option<&str>,
) -> Result<Limit, Box<Label>> {
    // Metrics name the rule it matched, or the descriptor's keys: never its
    // values (envoyproxy/ratelimit's unbounded series, its #275).
    let keys = || descriptor.entries.iter().map(|e| e.0.to_string());
    let stats_key = match rule {
        Some(rule) => rule.stats_key.clone(),
        None => std::iter::once(domain.to_owned())
            .chain(keys())
            .collect::<Vec<_>>()
            .join("."),
    };
    let mut levels = stats_key
        .strip_prefix(domain)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|rest| rest.split('.').map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_else(|| keys().collect());
    levels.resize(2, String::new());
    let label = Label {
        name: String::new(),
        requests_per_unit: limit.requests_per_unit,
        unit: limit.unit,
        stats_key,
        key2: levels.pop().unwrap_or_default(),
        key1: levels.pop().unwrap_or_default(),
        detailed: false,
        ratelimit_key_prefix: prefix.map(str::to_owned),
    };
    let window = Duration::from_secs(limit.unit.seconds());
    let policy = NonZeroU32::new(limit.requests_per_unit)
        .and_then(|n| Policy::new(erl::POLICY_NAME, Algorithm::FixedWindow, n, window, 1).ok());
    match policy {
        Some(policy) => Ok(Limit {
            rank: 0,
            policy: Arc::new(policy.with_label(label)),
        }),
        // 0, or too large to count exactly: refused like a ban.
        None => Err(Box::new(label)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Caller, Identity};
    use crate::policy::Algorithm;

    const ROUTE: Route<'static> = Route {
        method: "POST",
        path: "/api/resource",
        host: None,
    };

    impl Rules {
        /// What the HTTP front end's request of `identity` on `route`
        /// resolves to, without admin overrides.
        fn resolve_http(&self, identity: &Identity, route: &Route<'_>) -> Resolution {
            let caller = Caller::from_identity(identity.clone());
            self.resolve(&http::request(&caller, route, self.shapes()), |_| None)
        }
    }

    fn names(resolution: &Resolution) -> Vec<String> {
        match resolution {
            Resolution::Limited { items, .. } => items
                .iter()
                .map(|i| format!("{}={}", i.policy.name(), i.policy.limit()))
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn policies_apply_by_strategy_and_route() {
        let rules = Rules::parse(
            "t.toml",
            r#"
            [[policy]]
            name = "all"
            algorithm = "gcra"
            limit = 100
            window = "1h"

            [[policy]]
            name = "users"
            algorithm = "token_bucket"
            limit = 10
            window = "1s"
            strategy = "user"

            [[policy]]
            name = "posts"
            algorithm = "sliding_window"
            limit = 5
            window = 60
            route = "POST /api/resource"

            [[policy]]
            name = "elsewhere"
            algorithm = "fixed_window"
            limit = 5
            window = "1m"
            route = "/other"
            "#,
        )
        .unwrap();
        let user = Identity::user("k");
        let ip = Identity::ip("10.0.0.1".parse().unwrap());
        assert_eq!(
            names(&rules.resolve_http(&user, &ROUTE)),
            ["all=100", "users=10", "posts=5"]
        );
        assert_eq!(
            names(&rules.resolve_http(&ip, &ROUTE)),
            ["all=100", "posts=5"]
        );
        let get = Route {
            method: "GET",
            path: "/api/resource",
            host: None,
        };
        assert_eq!(names(&rules.resolve_http(&ip, &get)), ["all=100"]);
    }

    #[test]
    fn overrides_change_limits_or_bypass_or_block() {
        let rules = Rules::parse(
            "t.toml",
            r#"
            [[policy]]
            name = "minute"
            algorithm = "fixed_window"
            limit = 10
            window = "1m"
            [[policy]]
            name = "hour"
            algorithm = "fixed_window"
            limit = 100
            window = "1h"

            [[override]]
            strategy = "user"
            id = "partner"
            limit = 1000
            policy = "hour"
            [[override]]
            strategy = "user"
            id = "everything"
            limit = 7
            window = "2m"
            [[override]]
            strategy = "user"
            id = "internal"
            unlimited = true
            [[override]]
            strategy = "ip"
            id = "::ffff:203.0.113.9"
            blocked = true
            "#,
        )
        .unwrap();
        let resolve = |id: Identity| rules.resolve_http(&id, &ROUTE);
        assert_eq!(
            names(&resolve(Identity::user("partner"))),
            ["minute=10", "hour=1000"]
        );
        assert_eq!(
            names(&resolve(Identity::user("everything"))),
            ["minute=7", "hour=7"]
        );
        assert!(matches!(
            resolve(Identity::user("internal")),
            Resolution::Limited { items, marks, .. }
                if items.is_empty() && marks.contains(&Mark::Unlimited)
        ));
        assert_eq!(
            resolve(Identity::ip("203.0.113.9".parse().unwrap())),
            Resolution::Blocked
        );
        assert_eq!(
            names(&resolve(Identity::user("other"))),
            ["minute=10", "hour=100"]
        );
        if let Resolution::Limited { items, .. } = resolve(Identity::user("everything")) {
            assert_eq!(items[0].policy.window(), Duration::from_secs(120));
        }
    }

    #[test]
    fn builtin_rules_limit_users_and_ips_separately() {
        let settings = Settings::from_lookup(|k| match k {
            "RATE_LIMIT_USER_LIMIT" => Some("7".into()),
            "RATE_LIMIT_ALGORITHM" => Some("gcra".into()),
            _ => None,
        })
        .unwrap();
        let rules = Rules::builtin(&settings);
        match rules.resolve_http(&Identity::user("k"), &ROUTE) {
            Resolution::Limited { items, .. } => {
                let p = &items[0].policy;
                assert_eq!((p.name(), p.limit().get()), ("user", 7));
                assert_eq!(p.algorithm(), Algorithm::Gcra);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            names(&rules.resolve_http(&Identity::ip("10.0.0.1".parse().unwrap()), &ROUTE)),
            ["ip=20"]
        );
    }

    /// An admin override attaches to a descriptor's subject: it changes the
    /// limits of the descriptors that end with that subject, and no other.
    #[test]
    fn resolver_applies_an_override_to_its_descriptor_only() {
        let rules = Rules::parse(
            "t.toml",
            r#"
            [[policy]]
            name = "per-key"
            algorithm = "gcra"
            limit = 10
            window = "1m"
            strategy = "user"

            [[policy]]
            name = "per-ip"
            algorithm = "gcra"
            limit = 100
            window = "1m"
            per = "client_ip"
            "#,
        )
        .unwrap();
        let caller = Caller {
            identity: Identity::user("k"),
            client_ip: Some(Identity::ip("10.0.0.1".parse().unwrap())),
        };
        let request = http::request(&caller, &ROUTE, rules.shapes());
        let vip: Entry = ("user".into(), "k".into());
        let raised = OverrideAction::Limit {
            policy: None,
            limit: NonZeroU32::new(5000).unwrap(),
            window: None,
        };
        let with = |action: OverrideAction, left| {
            rules.resolve(&request, |s| (s == &vip).then(|| (action.clone(), left)))
        };
        assert_eq!(
            names(&with(raised.clone(), None)),
            ["per-key=5000", "per-ip=100"],
            "the per-IP descriptor keeps its limit"
        );
        assert_eq!(
            names(&with(OverrideAction::Unlimited, None)),
            ["per-ip=100"]
        );
        assert_eq!(with(OverrideAction::Blocked, None), Resolution::Blocked);
        let left = Duration::from_secs(30);
        assert!(matches!(
            with(raised, Some(left)),
            Resolution::Limited { valid_for: Some(v), .. } if v == left
        ));
        // Each limit is counted for its descriptor's subject.
        let Resolution::Limited { items, .. } = rules.resolve(&request, |_| None) else {
            panic!("limited")
        };
        let subjects: Vec<&Entry> = items
            .iter()
            .map(|i| request.descriptors[i.descriptor].subject().unwrap())
            .collect();
        assert_eq!(
            subjects,
            [
                &("user".into(), "k".to_owned()),
                &("client_ip".into(), "10.0.0.1".to_owned())
            ]
        );
    }
}
