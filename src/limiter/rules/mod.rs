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

mod action;
pub mod erl;
mod file;
pub mod http;
mod resolve;
pub mod tree;

pub use action::{ActiveOverride, OverrideAction};
pub use resolve::{Item, Mark, Resolution};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::request::{Descriptor, Entry};
use crate::config::Settings;
use crate::identity::Strategy;
use crate::policy::Policy;
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
    /// [`path_subject`](crate::limiter::request::path_subject)); `None` for the HTTP domain or an unknown one.
    pub fn subject(&self, domain: &str, descriptor: &Descriptor) -> Option<Entry> {
        if domain == http::DOMAIN {
            return None;
        }
        let tree = self.tree(domain)?;
        let shared = tree.walk(&descriptor.entries).is_some_and(|w| w.shared);
        Some(resolve::path_counter(tree, domain, descriptor, shared))
    }

    /// Whether the rules know `domain`.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.tree(domain).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Caller, Identity};
    use crate::policy::Algorithm;
    use std::num::NonZeroU32;
    use std::time::Duration;

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
            client_ip: Some("10.0.0.1".parse().unwrap()),
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
