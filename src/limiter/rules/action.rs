//! Overrides as the rules apply them: what an override does to a policy,
//! and whether an override can apply to the policies of its subject.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::{erl, http, Rules, ScopedPolicy};
use crate::limiter::request::{self, Entry};
use crate::policy::{Algorithm, Policy};

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

/// An override in force, with the time it has left (`None`: no end).
pub type ActiveOverride = (OverrideAction, Option<Duration>);

impl Rules {
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
        if request::is_path_subject(subject_key) {
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
pub(super) fn check_override(
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
