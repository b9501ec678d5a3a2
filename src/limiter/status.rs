//! Reading without counting: where an identity or a request stands under
//! every policy that may count it (the status endpoint and the admin API).

use std::sync::Arc;

use super::check::{item_counters, outcome};
use super::*;

impl<S: Store> Limiter<S> {
    /// The override in force for `subject`: the admin API's, else the
    /// rules file's.
    pub(super) fn override_action(
        &self,
        rules: &Rules,
        subject: &Entry,
    ) -> Option<rules::OverrideAction> {
        self.dynamic_action(subject)
            .map(|(action, _)| action)
            .or_else(|| rules.file_override(subject).cloned())
    }

    /// Every counter of the HTTP domain that `subjects` (an identity's, see
    /// [`rules::http::subjects`]) may have: each policy counted under one of
    /// them, whatever route or host it is scoped to, with each subject's
    /// override applied (and, with `unchanged`, also as the rules say).
    pub(super) fn identity_items(
        &self,
        rules: &Rules,
        subjects: &[Entry],
        unchanged: bool,
    ) -> Vec<Item> {
        let mut items = Vec::new();
        for subject in subjects {
            let action = self.override_action(rules, subject);
            let shared = Arc::new(subject.clone());
            for policy in rules.http_policies_for(&subject.0) {
                let item = |policy: Arc<Policy>| Item {
                    descriptor: 0,
                    policy,
                    subject: Some(shared.clone()),
                };
                let applied = action.as_ref().map(|a| a.apply(policy));
                match applied {
                    Some(changed) if !Arc::ptr_eq(&changed, policy) => {
                        if unchanged {
                            items.push(item(policy.clone()));
                        }
                        items.push(item(changed));
                    }
                    _ => items.push(item(policy.clone())),
                }
            }
        }
        items
    }

    /// Where an identity stands under every policy that may count it,
    /// without counting anything: blocked or allow-listed by an override,
    /// or each counter as it is.
    pub async fn identity_status(&self, subjects: &[Entry]) -> Result<Standing, StoreError> {
        let rules = self.rules.load_full();
        match subjects
            .first()
            .and_then(|s| self.override_action(&rules, s))
        {
            Some(rules::OverrideAction::Blocked) => return Ok(Standing::Blocked),
            Some(rules::OverrideAction::Unlimited) => return Ok(Standing::Unlimited),
            _ => {}
        }
        let items = self.identity_items(&rules, subjects, false);
        if items.is_empty() {
            return Ok(Standing::Unlimited);
        }
        let reply = self.guarded(&item_counters(&items)).await?;
        Ok(Standing::Limited(outcome(items, reply.quotas, true)))
    }

    /// Where `request` stands, without counting anything.
    pub async fn status(&self, request: &CheckRequest) -> Result<Standing, StoreError> {
        let items = match self.resolve(request) {
            Resolution::Blocked => return Ok(Standing::Blocked),
            Resolution::Limited { items, .. } if items.is_empty() => {
                return Ok(Standing::Unlimited)
            }
            Resolution::Limited { banned: true, .. } => return Ok(Standing::Blocked),
            Resolution::Limited { items, .. } => items,
        };
        let reply = self
            .guarded(&Self::counters(request, &items, false))
            .await?;
        Ok(Standing::Limited(outcome(items, reply.quotas, true)))
    }
}
