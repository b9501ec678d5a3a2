//! Which policies apply to which caller and route: the built-in `user` and
//! `ip` policies from the settings, or a TOML rules file
//! (`RATE_LIMIT_CONFIG`, see `rules.example.toml`) with per-identifier
//! overrides.
//!
//! The file is validated whole before it is used: every error names the
//! file, the policy (or override) and the key, and a file with an error is
//! never half applied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Value;

use super::{Algorithm, Policy};
use crate::config::Settings;
use crate::identity::{Identity, Strategy};
use crate::policy::parse_window;

/// The route of a request, as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// The routes a policy applies to: one path, with one method or any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteMatch {
    method: Option<String>,
    path: String,
}

impl RouteMatch {
    fn parse(text: &str) -> Result<Self, String> {
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

    fn matches(&self, route: &Route<'_>) -> bool {
        self.path == route.path
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(route.method))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ScopedPolicy {
    policy: Arc<Policy>,
    strategy: Option<Strategy>,
    route: Option<RouteMatch>,
}

impl ScopedPolicy {
    fn applies(&self, identity: &Identity, route: &Route<'_>) -> bool {
        self.strategy.is_none_or(|s| s == identity.strategy)
            && self.route.as_ref().is_none_or(|r| r.matches(route))
    }
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

/// How the rules treat one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Unlimited,
    Blocked,
    /// Check these, all at once.
    Limited(Vec<Arc<Policy>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    policies: Vec<ScopedPolicy>,
    overrides: HashMap<(Strategy, String), OverrideAction>,
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
                policy: Arc::new(Policy {
                    name: name.to_owned(),
                    algorithm: settings.algorithm,
                    limit: limits.limit,
                    window: limits.window,
                    cost: 1,
                    shadow: settings.shadow,
                    per_client_ip,
                }),
                strategy: (!per_client_ip).then_some(strategy),
                route: None,
            }
        };
        Rules {
            policies: vec![
                policy("user", Strategy::User, settings.user_limit),
                policy("ip", Strategy::Ip, settings.ip_limit),
            ],
            overrides: HashMap::new(),
        }
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
        Parser { origin }.parse(text)
    }

    /// Every policy in shadow mode (RATE_LIMIT_SHADOW=true).
    pub fn all_shadow(mut self) -> Self {
        for scoped in &mut self.policies {
            Arc::make_mut(&mut scoped.policy).shadow = true;
        }
        self
    }

    /// The policies of the file, with their names, for display.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| p.policy.as_ref())
    }

    pub fn resolve(&self, identity: &Identity, route: &Route<'_>) -> Resolution {
        self.resolve_with(identity, route, None)
    }

    /// As [`Rules::resolve`], with `dynamic` (an override set through the
    /// admin API) taking precedence over the file's.
    pub fn resolve_with(
        &self,
        identity: &Identity,
        route: &Route<'_>,
        dynamic: Option<&OverrideAction>,
    ) -> Resolution {
        let action = dynamic.or_else(|| {
            if self.overrides.is_empty() {
                None
            } else {
                self.overrides
                    .get(&(identity.strategy, identity.id.clone()))
            }
        });
        let applicable = self.policies.iter().filter(|p| p.applies(identity, route));
        let policies: Vec<Arc<Policy>> = match action {
            Some(OverrideAction::Unlimited) => return Resolution::Unlimited,
            Some(OverrideAction::Blocked) => return Resolution::Blocked,
            None => applicable.map(|p| p.policy.clone()).collect(),
            Some(OverrideAction::Limit {
                policy,
                limit,
                window,
            }) => applicable
                .map(|p| {
                    if policy.as_ref().is_none_or(|name| *name == p.policy.name) {
                        let mut changed = Policy::clone(&p.policy);
                        changed.limit = *limit;
                        changed.window = window.unwrap_or(changed.window);
                        Arc::new(changed)
                    } else {
                        p.policy.clone()
                    }
                })
                .collect(),
        };
        if policies.is_empty() {
            Resolution::Unlimited
        } else {
            Resolution::Limited(policies)
        }
    }
}

/// Whether `action` can apply to the policies of `strategy`: the named
/// policy exists, and the new limit and window make valid policies.
/// Err((key, problem)).
fn check_override(
    policies: &[ScopedPolicy],
    strategy: Strategy,
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
        .filter(|p| name.as_ref().is_none_or(|n| *n == p.policy.name))
        .filter(|p| p.strategy.is_none_or(|s| s == strategy))
        .collect();
    if let Some(name) = name {
        if targets.is_empty() {
            return Err((
                "policy",
                format!("no policy named {name:?} applies to strategy \"{strategy}\""),
            ));
        }
    }
    for target in targets {
        let p = &target.policy;
        Policy::new(
            p.name.clone(),
            p.algorithm,
            *limit,
            window.unwrap_or(p.window),
            p.cost,
        )
        .map_err(|problem| ("limit", format!("for policy {:?}: {problem}", p.name)))?;
    }
    Ok(())
}

impl Rules {
    /// Whether an override set through the admin API fits these rules;
    /// Err((key, problem)).
    pub fn check_override(
        &self,
        strategy: Strategy,
        action: &OverrideAction,
    ) -> Result<(), (&'static str, String)> {
        check_override(&self.policies, strategy, action)
    }
}

const POLICY_KEYS: [&str; 9] = [
    "name",
    "algorithm",
    "limit",
    "window",
    "cost",
    "strategy",
    "route",
    "shadow",
    "per",
];
const OVERRIDE_KEYS: [&str; 7] = [
    "strategy",
    "id",
    "limit",
    "window",
    "policy",
    "unlimited",
    "blocked",
];

struct Parser<'a> {
    origin: &'a str,
}

impl Parser<'_> {
    fn error(&self, place: impl Into<String>, problem: impl Into<String>) -> RulesError {
        RulesError {
            origin: self.origin.to_owned(),
            place: place.into(),
            problem: problem.into(),
        }
    }

    fn parse(&self, text: &str) -> Result<Rules, RulesError> {
        let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
            self.error("", format!("not valid TOML: {}", err.message()))
        })?;
        for key in table.keys() {
            if key != "policy" && key != "override" {
                return Err(self.error(
                    "",
                    format!("unknown key '{key}' (expected [[policy]] and [[override]] tables)"),
                ));
            }
        }
        let policies = self.policies(table.get("policy"))?;
        let overrides = self.overrides(table.get("override"), &policies)?;
        Ok(Rules {
            policies,
            overrides,
        })
    }

    fn tables<'v>(
        &self,
        value: Option<&'v Value>,
        what: &str,
    ) -> Result<Vec<&'v toml::Table>, RulesError> {
        match value {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_table().ok_or_else(|| {
                        self.error(
                            format!("{what} #{}: ", i + 1),
                            format!("expected a [[{what}]] table"),
                        )
                    })
                })
                .collect(),
            Some(_) => {
                Err(self.error("", format!("'{what}' must be written as [[{what}]] tables")))
            }
        }
    }

    fn policies(&self, value: Option<&Value>) -> Result<Vec<ScopedPolicy>, RulesError> {
        let tables = self.tables(value, "policy")?;
        if tables.is_empty() {
            return Err(self.error(
                "",
                "no [[policy]] table: a rules file needs at least one policy",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(tables.len());
        for (i, table) in tables.into_iter().enumerate() {
            let label = match table.get("name").and_then(Value::as_str) {
                Some(name) => format!("policy \"{name}\""),
                None => format!("policy #{}", i + 1),
            };
            let field = Field {
                parser: self,
                label: &label,
                table,
            };
            field.only(&POLICY_KEYS)?;
            let name = field.string("name")?.ok_or_else(|| field.missing("name"))?;
            if let Some(first) = seen.insert(name.to_owned(), i + 1) {
                return Err(field.bad(
                    "name",
                    format!("duplicate name, already used by policy #{first}"),
                ));
            }
            let algorithm = match field.string("algorithm")? {
                Some(text) => text
                    .parse::<Algorithm>()
                    .map_err(|e| field.bad("algorithm", e))?,
                None => return Err(field.missing("algorithm")),
            };
            let limit = field
                .limit("limit")?
                .ok_or_else(|| field.missing("limit"))?;
            let window = field
                .window("window")?
                .ok_or_else(|| field.missing("window"))?;
            let cost = match field.integer("cost")? {
                None => 1,
                Some(c) if (0..=u32::MAX as i64).contains(&c) => c as u32,
                Some(_) => return Err(field.bad("cost", "must be a whole number, 0 or more")),
            };
            let strategy = field.strategy("strategy")?;
            let route = match field.string("route")? {
                Some(text) => Some(RouteMatch::parse(text).map_err(|e| field.bad("route", e))?),
                None => None,
            };
            let shadow = field.boolean("shadow")?.unwrap_or(false);
            let per_client_ip = match field.string("per")? {
                None | Some("caller") => false,
                Some("client_ip") => true,
                Some(other) => {
                    return Err(field.bad(
                        "per",
                        format!("expected \"caller\" or \"client_ip\", not {other:?}"),
                    ))
                }
            };
            if per_client_ip && strategy.is_some() {
                return Err(field.bad(
                    "per",
                    "a policy counted per client IP applies to every caller: remove `strategy`",
                ));
            }
            let mut policy =
                Policy::new(name, algorithm, limit, window, cost).map_err(|problem| {
                    let key = if problem.contains("name") {
                        "name"
                    } else if problem.contains("cost") {
                        "cost"
                    } else {
                        "limit"
                    };
                    field.bad(key, problem)
                })?;
            policy.shadow = shadow;
            policy.per_client_ip = per_client_ip;
            out.push(ScopedPolicy {
                policy: Arc::new(policy),
                strategy,
                route,
            });
        }
        Ok(out)
    }

    fn overrides(
        &self,
        value: Option<&Value>,
        policies: &[ScopedPolicy],
    ) -> Result<HashMap<(Strategy, String), OverrideAction>, RulesError> {
        let mut out = HashMap::new();
        for (i, table) in self.tables(value, "override")?.into_iter().enumerate() {
            let label = match (
                table.get("strategy").and_then(Value::as_str),
                table.get("id").and_then(Value::as_str),
            ) {
                (Some(s), Some(id)) => format!("override #{} ({s} {id:?})", i + 1),
                _ => format!("override #{}", i + 1),
            };
            let field = Field {
                parser: self,
                label: &label,
                table,
            };
            field.only(&OVERRIDE_KEYS)?;
            let strategy = field
                .strategy("strategy")?
                .ok_or_else(|| field.missing("strategy"))?;
            let raw_id = field.string("id")?.ok_or_else(|| field.missing("id"))?;
            let id = match strategy {
                Strategy::User if raw_id.is_empty() => {
                    return Err(field.bad("id", "must not be empty"))
                }
                Strategy::User => raw_id.to_owned(),
                Strategy::Ip => {
                    Identity::ip(raw_id.parse::<IpAddr>().map_err(|_| {
                        field.bad("id", "must be an IP address for strategy \"ip\"")
                    })?)
                    .id
                }
            };
            let unlimited = field.boolean("unlimited")?.unwrap_or(false);
            let blocked = field.boolean("blocked")?.unwrap_or(false);
            let limit = field.limit("limit")?;
            let window = field.window("window")?;
            let policy = field.string("policy")?.map(str::to_owned);
            let action = match (unlimited, blocked, limit) {
                (true, false, None) => OverrideAction::Unlimited,
                (false, true, None) => OverrideAction::Blocked,
                (false, false, Some(limit)) => OverrideAction::Limit {
                    policy,
                    limit,
                    window,
                },
                (false, false, None) => {
                    return Err(field.missing("limit (or unlimited = true, or blocked = true)"))
                }
                _ => {
                    return Err(field.bad(
                        if limit.is_some() { "limit" } else { "blocked" },
                        "choose one of limit, unlimited = true, blocked = true",
                    ))
                }
            };
            check_override(policies, strategy, &action)
                .map_err(|(key, problem)| field.bad(key, problem))?;
            if out.insert((strategy, id), action).is_some() {
                return Err(field.bad("id", "a second override for the same identity"));
            }
        }
        Ok(out)
    }
}

/// Typed access to the keys of one table, with errors that name the place.
struct Field<'a> {
    parser: &'a Parser<'a>,
    label: &'a str,
    table: &'a toml::Table,
}

impl Field<'_> {
    fn bad(&self, key: &str, problem: impl Into<String>) -> RulesError {
        self.parser
            .error(format!("{}: key '{key}': ", self.label), problem)
    }

    fn missing(&self, key: &str) -> RulesError {
        self.parser
            .error(format!("{}: ", self.label), format!("missing key '{key}'"))
    }

    fn only(&self, allowed: &[&str]) -> Result<(), RulesError> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(self.bad(
                key,
                format!("unknown key (expected one of {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, RulesError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.bad(key, "must be a string")),
        }
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, RulesError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => Ok(Some(*n)),
            Some(_) => Err(self.bad(key, "must be a whole number")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, RulesError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "must be true or false")),
        }
    }

    fn limit(&self, key: &str) -> Result<Option<NonZeroU32>, RulesError> {
        match self.integer(key)? {
            None => Ok(None),
            Some(n) if n <= 0 => Err(self.bad(key, format!("must be at least 1, not {n}"))),
            Some(n) => u32::try_from(n)
                .ok()
                .and_then(NonZeroU32::new)
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be at most 4294967295")),
        }
    }

    /// A duration string (`"1s"`, `"15m"`, `"1h"`, `"1d"`, `"250ms"`) or a
    /// whole number of seconds.
    fn window(&self, key: &str) -> Result<Option<Duration>, RulesError> {
        let text = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Integer(n)) => n.to_string(),
            Some(_) => {
                return Err(self.bad(key, "must be a duration such as \"1s\", \"15m\", \"1h\""))
            }
        };
        parse_window(&text).map(Some).map_err(|e| self.bad(key, e))
    }

    fn strategy(&self, key: &str) -> Result<Option<Strategy>, RulesError> {
        match self.string(key)? {
            None => Ok(None),
            Some("user") => Ok(Some(Strategy::User)),
            Some("ip") => Ok(Some(Strategy::Ip)),
            Some(other) => {
                Err(self.bad(key, format!("expected \"user\" or \"ip\", not {other:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: Route<'static> = Route {
        method: "POST",
        path: "/api/resource",
    };

    fn names(resolution: &Resolution) -> Vec<String> {
        match resolution {
            Resolution::Limited(p) => p
                .iter()
                .map(|p| format!("{}={}", p.name, p.limit))
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
            names(&rules.resolve(&user, &ROUTE)),
            ["all=100", "users=10", "posts=5"]
        );
        assert_eq!(names(&rules.resolve(&ip, &ROUTE)), ["all=100", "posts=5"]);
        let get = Route {
            method: "GET",
            path: "/api/resource",
        };
        assert_eq!(names(&rules.resolve(&ip, &get)), ["all=100"]);
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
        let resolve = |id: Identity| rules.resolve(&id, &ROUTE);
        assert_eq!(
            names(&resolve(Identity::user("partner"))),
            ["minute=10", "hour=1000"]
        );
        assert_eq!(
            names(&resolve(Identity::user("everything"))),
            ["minute=7", "hour=7"]
        );
        assert_eq!(resolve(Identity::user("internal")), Resolution::Unlimited);
        assert_eq!(
            resolve(Identity::ip("203.0.113.9".parse().unwrap())),
            Resolution::Blocked
        );
        assert_eq!(
            names(&resolve(Identity::user("other"))),
            ["minute=10", "hour=100"]
        );
        if let Resolution::Limited(p) = resolve(Identity::user("everything")) {
            assert_eq!(p[0].window, Duration::from_secs(120));
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
        match rules.resolve(&Identity::user("k"), &ROUTE) {
            Resolution::Limited(p) => {
                assert_eq!((p[0].name.as_str(), p[0].limit.get()), ("user", 7));
                assert_eq!(p[0].algorithm, Algorithm::Gcra);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            names(&rules.resolve(&Identity::ip("10.0.0.1".parse().unwrap()), &ROUTE)),
            ["ip=20"]
        );
    }
}
