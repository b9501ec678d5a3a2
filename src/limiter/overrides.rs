//! Overrides set at run time through the admin API: another limit,
//! `unlimited` or `blocked` for one identity, optionally until a given time.
//! They are stored in the store (Redis) so that every instance applies them;
//! each instance rereads them every [`REFRESH_INTERVAL`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::request::Entry;
use super::rules::OverrideAction;
use crate::identity::{Identity, Strategy};
use crate::policy::parse_window;

/// How stale an instance's copy of the overrides may be.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Overrides the store holds at most: a new one past it is refused. Every
/// instance holds them all in memory and rereads them when they change.
pub const MAX_OVERRIDES: usize = 10_000;

/// Longest storage key of an override (an identity, or an Envoy
/// descriptor's path), in bytes.
pub const MAX_KEY_BYTES: usize = 2048;

/// However unchanged the version, the whole set is reread this often (an
/// instance of an older version may have written without bumping it, and
/// expired overrides are removed on a full read).
pub const FULL_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The latest `until` accepted: 9999-12-31T23:59:59Z.
pub const MAX_UNTIL: u64 = 253_402_300_799;

/// One override, as the admin API takes it and as it is stored (JSON).
/// The OpenAPI schema is derived here too, so the documented body is the
/// stored one by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    /// Another limit, for `policy` or (without it) every policy that applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, example = 1000, minimum = 1, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
    /// With `limit`: another window, e.g. "1m", "1h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "1m")]
    pub window: Option<String>,
    /// With `limit`: the one policy it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Never limited (answered without Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlimited: Option<bool>,
    /// Always refused with 403 (answered without Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
    /// Unix seconds after which the override no longer applies (at most
    /// the end of the year 9999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 1795910400, maximum = 253402300799_u64)]
    pub until: Option<u64>,
}

impl OverrideSpec {
    /// What it does, or why it is not a valid override.
    pub fn action(&self) -> Result<OverrideAction, String> {
        if self.until.is_some_and(|u| u > MAX_UNTIL) {
            return Err(format!(
                "until must be at most {MAX_UNTIL} (the end of 9999)"
            ));
        }
        let unlimited = self.unlimited.unwrap_or(false);
        let blocked = self.blocked.unwrap_or(false);
        match (self.limit, unlimited, blocked) {
            (Some(limit), false, false) => {
                let limit = std::num::NonZeroU32::new(limit)
                    .ok_or_else(|| "limit must be at least 1".to_owned())?;
                let window = self
                    .window
                    .as_deref()
                    .map(parse_window)
                    .transpose()
                    .map_err(|e| format!("window: {e}"))?;
                Ok(OverrideAction::Limit {
                    policy: self.policy.clone(),
                    limit,
                    window,
                })
            }
            (None, true, false) | (None, false, true) => {
                if self.window.is_some() || self.policy.is_some() {
                    return Err("window and policy go with limit only".into());
                }
                Ok(if unlimited {
                    OverrideAction::Unlimited
                } else {
                    OverrideAction::Blocked
                })
            }
            (None, false, false) => {
                Err("give one of: limit, \"unlimited\": true, \"blocked\": true".into())
            }
            _ => Err("give only one of: limit, \"unlimited\": true, \"blocked\": true".into()),
        }
    }

    /// How long it has left at `now`; `None` when it has no end.
    pub fn remaining_at(&self, now: SystemTime) -> Option<Duration> {
        let until = UNIX_EPOCH + Duration::from_secs(self.until?);
        Some(until.duration_since(now).unwrap_or_default())
    }

    /// Still in force at `now`?
    pub fn active_at(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.until.is_none_or(|until| until > now)
    }
}

/// The field under which a subject's override is stored: `<key>:<value>`,
/// e.g. `user:<API key>`.
pub fn storage_key(subject: &Entry) -> String {
    format!("{}:{}", subject.0, subject.1)
}

/// The subject of a storage key, if it names one the admin API sets
/// (`user` or `ip`).
pub fn subject_of(key: &str) -> Option<Entry> {
    let (strategy, id) = key.split_once(':')?;
    // A descriptor of an Envoy domain (see `request::path_subject`).
    if super::request::is_path_subject(strategy) {
        super::request::parse_path(id)?;
        return Some((strategy.to_owned().into(), id.to_owned()));
    }
    let strategy: Strategy = strategy.parse().ok()?;
    Some((strategy.as_str().into(), id.to_owned()))
}

/// A subject as it may appear in a log line (API keys redacted).
pub fn redacted(subject: &Entry) -> String {
    match subject.0.parse::<Strategy>() {
        Ok(strategy @ (Strategy::User | Strategy::Jwt)) => Identity {
            strategy,
            id: subject.1.clone(),
        }
        .redacted(),
        _ => format!("{}:{}", subject.0, subject.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<OverrideSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn one_action_per_override() {
        assert!(matches!(
            spec(r#"{"limit": 5, "window": "1m"}"#).unwrap().action(),
            Ok(OverrideAction::Limit { window: Some(w), .. }) if w == Duration::from_secs(60)
        ));
        assert_eq!(
            spec(r#"{"unlimited": true}"#).unwrap().action(),
            Ok(OverrideAction::Unlimited)
        );
        assert_eq!(
            spec(r#"{"blocked": true, "until": 1}"#).unwrap().action(),
            Ok(OverrideAction::Blocked)
        );
        assert!(spec(r#"{"limit": 5, "blocked": true}"#)
            .unwrap()
            .action()
            .is_err());
        assert!(spec(r#"{"limit": 0}"#).unwrap().action().is_err());
        assert!(spec(r#"{}"#).unwrap().action().is_err());
        assert!(spec(r#"{"limit": 5, "window": "soon"}"#)
            .unwrap()
            .action()
            .is_err());
        assert!(
            spec(r#"{"limt": 5}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn until_ends_it() {
        let s = spec(r#"{"blocked": true, "until": 100}"#).unwrap();
        assert!(s.active_at(UNIX_EPOCH + Duration::from_secs(99)));
        assert!(!s.active_at(UNIX_EPOCH + Duration::from_secs(100)));
    }

    #[test]
    fn storage_keys_round_trip() {
        let subject: Entry = ("user".into(), "a:b".into());
        assert_eq!(subject_of(&storage_key(&subject)), Some(subject));
        assert_eq!(subject_of("tenant:x"), None);
    }
}
