//! What an operator does through the admin API, and what instances share
//! for it: resets of counters, overrides set at run time (another limit,
//! `unlimited` or `blocked` for one subject), and the refresh every second
//! that applies both on every instance.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::request::{CheckRequest, Entry};
use super::store::{Counter, Store, StoreError};
use super::{overrides, rules, top, Limiter, Rules};

/// An admin override as last read from the store, with what it does under
/// the rules in force (or why it no longer fits them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dynamic {
    pub(super) spec: overrides::OverrideSpec,
    pub(super) action: Result<rules::OverrideAction, String>,
}

/// Dynamic overrides by subject.
pub(super) type OverrideMap = HashMap<Entry, Dynamic>;

/// An admin override and whether it is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideState {
    pub spec: overrides::OverrideSpec,
    /// Why it is not in force (it no longer fits the rules), if it is not.
    pub problem: Option<String>,
}

/// Why an admin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("invalid override: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: Store> Limiter<S> {
    /// Deletes every counter an identity may have in the HTTP domain:
    /// `subjects` (see [`rules::http::subjects`]) under every policy that
    /// counts them, whatever route or host it is scoped to, as the rules
    /// say and as each subject's override says (which may change a window
    /// and so the key); returns how many existed. Every instance forgets
    /// its cached denials of the first subject within a second.
    pub async fn reset_identity(&self, subjects: &[Entry]) -> Result<u64, StoreError> {
        let Some(subject) = subjects.first() else {
            return Ok(0);
        };
        let rules = self.rules.load_full();
        let items = self.identity_items(&rules, subjects, true);
        let counters = super::check::item_counters(&items);
        self.delete_counters(&counters, subject).await
    }

    /// Deletes `counters`, forgets `subject`'s cached denials here and
    /// tells every other instance to; how many counters existed.
    async fn delete_counters(
        &self,
        counters: &[Counter<'_>],
        subject: &Entry,
    ) -> Result<u64, StoreError> {
        let deleted = self.store.reset(counters).await?;
        self.denied.forget(subject);
        self.slices.forget(subject);
        self.store
            .publish_reset(&overrides::storage_key(subject))
            .await?;
        Ok(deleted)
    }

    /// Deletes the counters of the descriptors of an Envoy domain, whose
    /// counters are named by `subject`, their domain and whole path: under
    /// the rules' limits and under the override's.
    pub async fn reset_descriptors(
        &self,
        request: &CheckRequest,
        subject: &Entry,
    ) -> Result<u64, StoreError> {
        let rules = self.rules.load();
        let mut items = Vec::new();
        for resolution in [
            rules.resolve(request, |_| None),
            rules.resolve(request, |s| self.dynamic_action(s)),
        ] {
            if let super::Resolution::Limited { items: found, .. } = resolution {
                items.extend(found);
            }
        }
        let counters = super::check::item_counters(&items);
        self.delete_counters(&counters, subject).await
    }

    /// Publishes this instance's heavy hitters for every instance to read
    /// (every second, and before each read).
    pub async fn publish_top(&self) -> Result<(), StoreError> {
        // Nothing new since the last publication: the store holds it
        // (within its TTL of two windows; a new window starts empty).
        let recorded = self.top.recorded();
        if self.top_published.load(Ordering::Relaxed) == recorded {
            return Ok(());
        }
        let now = top::now_secs();
        for window in top::Window::ALL {
            let (index, requests, denied) = self.top.snapshot(window, now);
            for (kind, entries) in [(top::Kind::Requests, requests), (top::Kind::Denied, denied)] {
                if entries.is_empty() {
                    continue;
                }
                let rows: Vec<(&str, &str, u64)> = entries
                    .iter()
                    .map(|((k, v), c)| (&**k, v.as_str(), *c))
                    .collect();
                let json = serde_json::to_string(&rows).unwrap_or_default();
                // Kept for two windows: a read at the start of a window may
                // still want the one before.
                let ttl_ms = window.seconds() * 2 * 1000;
                self.store
                    .publish_top(
                        &top_slot(window, index, kind),
                        &self.instance,
                        &json,
                        ttl_ms,
                    )
                    .await?;
            }
        }
        self.top_published.store(recorded, Ordering::Relaxed);
        Ok(())
    }

    /// The `n` subjects with the most requests (or denials) in the current
    /// `window`, summed over every instance.
    pub async fn top(
        &self,
        window: top::Window,
        kind: top::Kind,
        n: usize,
    ) -> Result<Vec<(Entry, u64)>, StoreError> {
        self.publish_top().await?;
        let index = window.index(top::now_secs());
        let raw = self.store.load_top(&top_slot(window, index, kind)).await?;
        let parts = raw.iter().filter_map(|json| {
            let rows: Vec<(String, String, u64)> = serde_json::from_slice(json).ok()?;
            Some(
                rows.into_iter()
                    .map(|(k, v, c)| ((k.into(), v), c))
                    .collect::<Vec<(Entry, u64)>>(),
            )
        });
        Ok(top::merge(parts, n))
    }

    /// The admin override of `subject`, in force or not (expired ones are
    /// not shown).
    pub fn override_for(&self, subject: &Entry) -> Option<OverrideState> {
        self.dynamic
            .load()
            .get(subject)
            .filter(|d| d.spec.active_at(SystemTime::now()))
            .map(Dynamic::state)
    }

    /// Every unexpired admin override.
    pub fn overrides(&self) -> Vec<(Entry, OverrideState)> {
        let now = SystemTime::now();
        let mut all: Vec<_> = self
            .dynamic
            .load()
            .iter()
            .filter(|(_, d)| d.spec.active_at(now))
            .map(|(subject, d)| (subject.clone(), d.state()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Stores an override for every instance, and applies it here at once.
    pub async fn set_override(
        &self,
        subject: &Entry,
        spec: &overrides::OverrideSpec,
    ) -> Result<(), AdminError> {
        if let Err(problem) = judge(&self.rules.load(), &subject.0, spec.clone()).action {
            return Err(AdminError::Invalid(problem));
        }
        if !spec.active_at(SystemTime::now()) {
            return Err(AdminError::Invalid("until is in the past".into()));
        }
        let json = serde_json::to_string(spec).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let key = overrides::storage_key(subject);
        if key.len() > overrides::MAX_KEY_BYTES {
            return Err(AdminError::Invalid(format!(
                "the identity is longer than {} bytes",
                overrides::MAX_KEY_BYTES
            )));
        }
        if !self
            .store
            .save_override(&key, &json, overrides::MAX_OVERRIDES)
            .await?
        {
            return Err(AdminError::Invalid(format!(
                "{} overrides are stored, the most there may be: delete one first",
                overrides::MAX_OVERRIDES
            )));
        }
        self.refresh_overrides().await?;
        Ok(())
    }

    /// Removes an override everywhere; whether there was one.
    pub async fn delete_override(&self, subject: &Entry) -> Result<bool, StoreError> {
        let existed = self
            .store
            .delete_override(&overrides::storage_key(subject))
            .await?;
        self.refresh_overrides().await?;
        Ok(existed)
    }

    /// Rereads what instances share (every [`overrides::REFRESH_INTERVAL`],
    /// and after each change): the overrides, and the resets published since
    /// the last refresh. Identities whose override changed or whose counters
    /// were reset are dropped from the deny cache, so a raised limit, an
    /// allow-listing or a reset applies on every instance within the
    /// interval. Expired overrides are deleted from the store.
    pub async fn refresh_overrides(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.refresh_resets().await?;
        // The whole set only when it changed (or for a while it has not
        // been read): one field a second otherwise, however many there are.
        let version = self.store.overrides_version().await?;
        {
            let seen = self
                .overrides_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((seen, at)) = *seen {
                if seen == version && at.elapsed() < overrides::FULL_REFRESH_INTERVAL {
                    return Ok(());
                }
            }
        }
        let stored = self.store.load_overrides().await?;
        // In force before it is marked seen: a refresh that finds this
        // version seen may rely on the map being this version's.
        let seen = || {
            *self
                .overrides_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((version, std::time::Instant::now()));
        };
        let rules = self.rules.load();
        let now = SystemTime::now();
        let mut fresh = OverrideMap::with_capacity(stored.len());
        let mut bad = Vec::new();
        for (key, json) in stored {
            let decoded = std::str::from_utf8(&key)
                .ok()
                .and_then(overrides::subject_of)
                .zip(serde_json::from_slice::<overrides::OverrideSpec>(&json).ok());
            let Some((subject, spec)) = decoded else {
                bad.push(key);
                continue;
            };
            if !spec.active_at(now) {
                // Gone for good: remove it, unless an admin replaced it
                // meanwhile (compare and delete).
                if let Err(err) = self.store.delete_override_if(&key, &json).await {
                    log::debug!("overrides: cannot remove an expired one: {err}");
                }
                continue;
            }
            let entry = judge(&rules, &subject.0, spec);
            fresh.insert(subject, entry);
        }
        self.report_bad_entries(bad);
        let old = self.dynamic.load_full();
        if *old == fresh {
            seen();
            return Ok(());
        }
        for (key, entry) in fresh.iter() {
            if old.get(key).is_none_or(|o| o.action != entry.action) {
                if let Err(problem) = &entry.action {
                    log::warn!(
                        "overrides: the override of {} is not in force: {problem}",
                        overrides::redacted(key)
                    );
                }
            }
        }
        let changed = old
            .iter()
            .filter(|(k, v)| fresh.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(fresh.keys().filter(|k| !old.contains_key(*k)));
        for key in changed {
            self.denied.forget(key);
        }
        self.dynamic.store(Arc::new(fresh));
        seen();
        Ok(())
    }

    /// Forgets the cached denials of identities reset on any instance.
    async fn refresh_resets(&self) -> Result<(), StoreError> {
        let seen = *self.resets_seen.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.store.resets_since(seen.unwrap_or(u64::MAX)).await?;
        if let Some(seen) = seen {
            if log.latest < seen || !log.complete {
                // The log was lost (a flushed Redis) or trimmed past us.
                self.denied.clear();
                self.slices.clear();
            } else {
                for key in &log.keys {
                    if let Some(subject) = std::str::from_utf8(key)
                        .ok()
                        .and_then(overrides::subject_of)
                    {
                        self.denied.forget(&subject);
                        self.slices.forget(&subject);
                    }
                }
            }
        }
        *self.resets_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(log.latest);
        Ok(())
    }

    /// Logs each unreadable override entry once (not every second).
    fn report_bad_entries(&self, bad: Vec<Vec<u8>>) {
        let mut reported = self.reported_bad.lock().unwrap_or_else(|e| e.into_inner());
        reported.retain(|k| bad.contains(k));
        for key in bad {
            if reported.insert(key.clone()) {
                log::warn!(
                    "overrides: ignoring an unreadable entry {:?} in the store",
                    String::from_utf8_lossy(&key)
                );
            }
        }
    }
}

impl Dynamic {
    fn state(&self) -> OverrideState {
        OverrideState {
            spec: self.spec.clone(),
            problem: self.action.as_ref().err().cloned(),
        }
    }
}

/// What `spec` does to a subject whose key is `subject_key` (`user`, `ip`)
/// under `rules`, or why it cannot apply.
pub(super) fn judge(rules: &Rules, subject_key: &str, spec: overrides::OverrideSpec) -> Dynamic {
    let action = spec.action().and_then(|action| {
        rules
            .check_override(subject_key, &action)
            .map(|()| action)
            .map_err(|(key, problem)| format!("{key}: {problem}"))
    });
    Dynamic { spec, action }
}

/// Where one window's heavy hitters of one kind are published.
fn top_slot(window: top::Window, index: u64, kind: top::Kind) -> String {
    format!("{}:{index}:{}", window.as_str(), kind.as_str())
}
