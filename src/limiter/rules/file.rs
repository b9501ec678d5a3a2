//! The TOML rules file (`RATE_LIMIT_CONFIG`, see `rules.example.toml`):
//! read, validated whole, every error naming the file, the policy (or
//! override) and the key.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use toml::Value;

use super::http::RouteMatch;
use super::{check_override, OverrideAction, RulesError, ScopedPolicy};
use crate::identity::{Identity, Strategy};
use crate::limiter::request::Entry;
use crate::policy::{parse_window, Algorithm, Policy};
use std::sync::Arc;

/// What a valid file holds: its policies, and its overrides by subject.
pub(super) type Parsed = (Vec<ScopedPolicy>, HashMap<Entry, OverrideAction>);

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

pub(super) struct Parser<'a> {
    pub(super) origin: &'a str,
}

impl Parser<'_> {
    fn error(&self, place: impl Into<String>, problem: impl Into<String>) -> RulesError {
        RulesError {
            origin: self.origin.to_owned(),
            place: place.into(),
            problem: problem.into(),
        }
    }

    pub(super) fn parse(&self, text: &str) -> Result<Parsed, RulesError> {
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
        Ok((policies, overrides))
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
            let policy = Policy::new(name, algorithm, limit, window, cost)
                .map_err(|err| field.bad(err.key(), err.to_string()))?
                .with_shadow(shadow)
                .with_per_client_ip(per_client_ip);
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
    ) -> Result<HashMap<Entry, OverrideAction>, RulesError> {
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
            let id = Identity::parse(strategy, raw_id)
                .map_err(|err| field.bad("id", err.to_string()))?
                .id;
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
            check_override(policies, strategy.as_str(), &action)
                .map_err(|(key, problem)| field.bad(key, problem))?;
            if out
                .insert((strategy.as_str().to_owned(), id), action)
                .is_some()
            {
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
        self.string(key)?
            .map(|text| text.parse().map_err(|e: String| self.bad(key, e)))
            .transpose()
    }
}
