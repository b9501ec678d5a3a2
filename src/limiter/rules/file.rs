//! The TOML rules file (`RATE_LIMIT_CONFIG`, see `rules.example.toml`).
//!
//! Read in two steps: serde derives the shape of the file (every table
//! `deny_unknown_fields`, so a misspelt key is an error; serde_path_to_error
//! says where a value of the wrong type or an unknown key sits), then one
//! validation pass turns the typed tables into policies and overrides. Every
//! error names the file, the policy (or override) and the key, and a file
//! with an error is never half applied.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::action::check_override;
use super::http::RouteMatch;
use super::{OverrideAction, RulesError, ScopedPolicy};
use crate::identity::{Identity, Strategy};
use crate::limiter::request::Entry;
use crate::policy::{parse_window, Algorithm, FailureMode, Policy};

/// What a valid file holds: its policies, and its overrides by subject.
pub(super) type Parsed = (Vec<ScopedPolicy>, HashMap<Entry, OverrideAction>);

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesToml {
    #[serde(default)]
    policy: Vec<PolicyToml>,
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideToml>,
}

/// A `[[policy]]` table. Required keys are `Option`s too, so that a missing
/// one is reported by the validation pass with the policy's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    name: Option<String>,
    algorithm: Option<String>,
    limit: Option<i64>,
    window: Option<WindowToml>,
    cost: Option<i64>,
    strategy: Option<String>,
    route: Option<String>,
    shadow: Option<bool>,
    /// A debit policy: every positive hit charged, even past the limit.
    debit: Option<bool>,
    /// Spent from quota slices (see `limiter::slices`).
    slices: Option<bool>,
    /// A concurrency policy's lease time-to-live.
    lease: Option<WindowToml>,
    per: Option<String>,
    failure_mode: Option<String>,
    host: Option<String>,
}

/// An `[[override]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideToml {
    strategy: Option<String>,
    id: Option<String>,
    limit: Option<i64>,
    window: Option<WindowToml>,
    policy: Option<String>,
    unlimited: Option<bool>,
    blocked: Option<bool>,
}

/// A window: a duration with a unit (`"1s"`, `"15m"`, `"1h"`, `"1d"`,
/// `"250ms"`) or a whole number of seconds.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration such as \"1s\", \"15m\", \"1h\", or a whole number of seconds"
)]
enum WindowToml {
    Seconds(i64),
    Text(String),
}

impl WindowToml {
    fn parse(&self) -> Result<Duration, String> {
        match self {
            WindowToml::Seconds(n) => parse_window(&n.to_string()),
            WindowToml::Text(text) => parse_window(text),
        }
    }
}

pub(super) struct Parser<'a> {
    pub(super) origin: &'a str,
}

/// Errors of one table, each naming it (`policy "burst"`, `override #2
/// (user "k")`) and the key.
struct Place<'a> {
    parser: &'a Parser<'a>,
    label: String,
}

impl Place<'_> {
    fn bad(&self, key: &str, problem: impl Into<String>) -> RulesError {
        self.parser
            .error(format!("{}: key '{key}': ", self.label), problem)
    }

    fn missing(&self, key: &str) -> RulesError {
        self.parser
            .error(format!("{}: ", self.label), format!("missing key '{key}'"))
    }
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
        // Syntax first: its own message, and the tables to name in the
        // errors of the typed pass.
        let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
            self.error("", format!("not valid TOML: {}", err.message()))
        })?;
        let file: RulesToml = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|err| {
            let path: Vec<String> = err.path().iter().map(|s| s.to_string()).collect();
            self.at(&table, &path, err.into_inner().message().to_owned())
        })?;
        let policies = self.policies(file.policy)?;
        let overrides = self.overrides(file.overrides, &policies)?;
        Ok((policies, overrides))
    }

    /// An error of the typed pass at `path` (`policy`, `0`, `limt`).
    fn at(&self, table: &toml::Table, path: &[String], problem: String) -> RulesError {
        match path {
            [what, index, key, ..] if what == "policy" || what == "override" => {
                let i: usize = index.trim_matches(['[', ']']).parse().unwrap_or(0);
                let item = table
                    .get(what.as_str())
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.get(i))
                    .and_then(|v| v.as_table());
                let text = |k: &str| item.and_then(|t| t.get(k)).and_then(|v| v.as_str());
                let label = if what == "policy" {
                    policy_label(i, text("name"))
                } else {
                    override_label(i, text("strategy"), text("id"))
                };
                self.error(format!("{label}: key '{key}': "), problem)
            }
            [key, ..] => self.error(format!("key '{key}': "), problem),
            [] => self.error("", problem),
        }
    }

    fn policies(&self, tables: Vec<PolicyToml>) -> Result<Vec<ScopedPolicy>, RulesError> {
        if tables.is_empty() {
            return Err(self.error(
                "",
                "no [[policy]] table: a rules file needs at least one policy",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(tables.len());
        for (i, table) in tables.into_iter().enumerate() {
            let place = Place {
                parser: self,
                label: policy_label(i, table.name.as_deref()),
            };
            out.push(self.policy(&place, table, i, &mut seen)?);
        }
        Ok(out)
    }

    fn policy(
        &self,
        place: &Place<'_>,
        table: PolicyToml,
        i: usize,
        seen: &mut HashMap<String, usize>,
    ) -> Result<ScopedPolicy, RulesError> {
        let name = table.name.ok_or_else(|| place.missing("name"))?;
        if let Some(first) = seen.insert(name.clone(), i + 1) {
            return Err(place.bad(
                "name",
                format!("duplicate name, already used by policy #{first}"),
            ));
        }
        let algorithm = table
            .algorithm
            .ok_or_else(|| place.missing("algorithm"))?
            .parse::<Algorithm>()
            .map_err(|e| place.bad("algorithm", e))?;
        let limit = limit(place, "limit", table.limit)?.ok_or_else(|| place.missing("limit"))?;
        // A concurrency policy's span is its lease's time-to-live.
        let window = match (algorithm.is_concurrency(), table.window, table.lease) {
            (true, None, Some(lease)) => lease.parse().map_err(|e| place.bad("lease", e))?,
            (true, _, None) => return Err(place.missing("lease")),
            (true, Some(_), Some(_)) => {
                return Err(place.bad("window", "a concurrency policy has a lease, not a window"))
            }
            (false, _, Some(_)) => {
                return Err(place.bad("lease", "only algorithm = \"concurrency\" takes a lease"))
            }
            (false, window, None) => window
                .ok_or_else(|| place.missing("window"))?
                .parse()
                .map_err(|e| place.bad("window", e))?,
        };
        let cost = match table.cost {
            None => 1,
            Some(c) => u32::try_from(c)
                .map_err(|_| place.bad("cost", "must be a whole number, 0 or more"))?,
        };
        let strategy = table
            .strategy
            .map(|s| s.parse::<Strategy>().map_err(|e| place.bad("strategy", e)))
            .transpose()?;
        let route = table
            .route
            .map(|r| RouteMatch::parse(&r).map_err(|e| place.bad("route", e)))
            .transpose()?;
        let per_client_ip = match table.per.as_deref() {
            None | Some("caller") => false,
            Some("client_ip") => true,
            Some(other) => {
                return Err(place.bad(
                    "per",
                    format!("expected \"caller\" or \"client_ip\", not {other:?}"),
                ))
            }
        };
        if per_client_ip && strategy.is_some() {
            return Err(place.bad(
                "per",
                "a policy counted per client IP applies to every caller: remove `strategy`",
            ));
        }
        let failure_mode = table
            .failure_mode
            .map(|m| {
                m.parse::<FailureMode>()
                    .map_err(|e| place.bad("failure_mode", e))
            })
            .transpose()?;
        let policy = Policy::new(name, algorithm, limit, window, cost)
            .map_err(|err| place.bad(err.key(), err.to_string()))?
            .with_shadow(table.shadow.unwrap_or(false))
            .with_debit(table.debit.unwrap_or(false))
            .with_slices(table.slices.unwrap_or(false))
            .map_err(|err| place.bad(err.key(), err.to_string()))?
            .with_per_client_ip(per_client_ip)
            .with_failure_mode(failure_mode);
        let host = table
            .host
            .map(|h| {
                let ok = !h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b));
                if ok {
                    Ok(h.to_ascii_lowercase())
                } else {
                    Err(place.bad(
                        "host",
                        "expected a host name such as \"api.example.com\" or \"*.example.com\"",
                    ))
                }
            })
            .transpose()?;
        Ok(ScopedPolicy {
            policy: Arc::new(policy),
            strategy,
            route,
            host,
        })
    }

    fn overrides(
        &self,
        tables: Vec<OverrideToml>,
        policies: &[ScopedPolicy],
    ) -> Result<HashMap<Entry, OverrideAction>, RulesError> {
        let mut out = HashMap::new();
        for (i, table) in tables.into_iter().enumerate() {
            let place = Place {
                parser: self,
                label: override_label(i, table.strategy.as_deref(), table.id.as_deref()),
            };
            let strategy: Strategy = table
                .strategy
                .ok_or_else(|| place.missing("strategy"))?
                .parse()
                .map_err(|e: String| place.bad("strategy", e))?;
            let raw_id = table.id.ok_or_else(|| place.missing("id"))?;
            let id = Identity::parse(strategy, &raw_id)
                .map_err(|err| place.bad("id", err.to_string()))?
                .id;
            let limit = limit(&place, "limit", table.limit)?;
            let window = table
                .window
                .map(|w| w.parse().map_err(|e| place.bad("window", e)))
                .transpose()?;
            let action = match (
                table.unlimited.unwrap_or(false),
                table.blocked.unwrap_or(false),
                limit,
            ) {
                (true, false, None) => OverrideAction::Unlimited,
                (false, true, None) => OverrideAction::Blocked,
                (false, false, Some(limit)) => OverrideAction::Limit {
                    policy: table.policy,
                    limit,
                    window,
                },
                (false, false, None) => {
                    return Err(place.missing("limit (or unlimited = true, or blocked = true)"))
                }
                _ => {
                    return Err(place.bad(
                        if limit.is_some() { "limit" } else { "blocked" },
                        "choose one of limit, unlimited = true, blocked = true",
                    ))
                }
            };
            check_override(policies, strategy.as_str(), &action)
                .map_err(|(key, problem)| place.bad(key, problem))?;
            if out.insert((strategy.as_str().into(), id), action).is_some() {
                return Err(place.bad("id", "a second override for the same identity"));
            }
        }
        Ok(out)
    }
}

fn policy_label(i: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("policy \"{name}\""),
        None => format!("policy #{}", i + 1),
    }
}

fn override_label(i: usize, strategy: Option<&str>, id: Option<&str>) -> String {
    match (strategy, id) {
        (Some(s), Some(id)) => format!("override #{} ({s} {id:?})", i + 1),
        _ => format!("override #{}", i + 1),
    }
}

/// A limit: a whole number from 1 to 2^32 - 1.
fn limit(
    place: &Place<'_>,
    key: &str,
    value: Option<i64>,
) -> Result<Option<NonZeroU32>, RulesError> {
    match value {
        None => Ok(None),
        Some(n) if n <= 0 => Err(place.bad(key, format!("must be at least 1, not {n}"))),
        Some(n) => u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Some)
            .ok_or_else(|| place.bad(key, "must be at most 4294967295")),
    }
}
