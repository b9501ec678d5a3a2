//! Resolution: what the rules and overrides make of one check request
//! before any counter is read: the limits each descriptor matched (as the
//! overrides leave them), whose counter each one is, and the descriptors
//! that are unlimited, banned or blocked.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::action::{ActiveOverride, OverrideAction};
use super::tree::{self, Limit, Node};
use super::{erl, http, Rules};
use crate::limiter::request::{path_subject, CheckRequest, Descriptor, Entry, LimitOverride};
use crate::policy::{Algorithm, Label, Policy};

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

impl Rules {
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
}

/// The path subject of a descriptor of `domain`: its values, or the
/// `share_threshold` patterns where it matched one (`shared`).
pub(super) fn path_counter(
    tree: &Node,
    domain: &str,
    descriptor: &Descriptor,
    shared: bool,
) -> Entry {
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
