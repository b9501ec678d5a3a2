//! What the admin API takes and answers: its path parameters and response
//! bodies, with their OpenAPI schemas.

use serde::Serialize;
use utoipa::ToSchema;

use crate::http::routes::PolicyStatus;
use crate::limiter::overrides::OverrideSpec;
use crate::limiter::{Entry, OverrideState};

/// The `{strategy}/{id}` of an admin path, as documented.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdentityPath {
    /// `user` or `ip`; anything else is a 400.
    #[param(value_type = StrategyName)]
    pub(super) strategy: String,
    /// The API key (no control characters), or the IP address
    #[param(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")]
    pub(super) id: String,
}

/// The strategies an admin path may name (documentation only: the handler
/// parses the text, so an unknown one gets a 400 with a reason).
#[derive(utoipa::ToSchema)]
#[schema(as = StrategyName)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    User,
    Jwt,
    Ip,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityReport {
    #[schema(example = "user")]
    pub strategy: &'static str,
    #[schema(example = "customer-42")]
    pub identifier: String,
    /// `limited`, `unlimited` or `blocked`.
    #[schema(example = "limited")]
    pub status: &'static str,
    /// The admin override of this identity, if any (see `override_problem`
    /// for whether it is in force).
    #[serde(rename = "override")]
    pub override_spec: Option<OverrideSpec>,
    /// Why the override is not in force (it no longer fits the rules after
    /// a reload); absent when it is, or when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_problem: Option<String>,
    /// Every policy that applies to it on POST /api/resource, read without
    /// counting.
    pub policies: Vec<PolicyStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResetReport {
    /// Counters deleted (those that existed).
    #[schema(example = 2)]
    pub deleted: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideEntry {
    #[schema(example = "user")]
    pub strategy: String,
    #[schema(example = "customer-42")]
    pub identifier: String,
    #[serde(rename = "override")]
    pub override_spec: OverrideSpec,
    /// False when the override no longer fits the rules in force (e.g. a
    /// limit below a policy's new cost): it is then ignored.
    pub in_force: bool,
    /// Why it is not in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl OverrideEntry {
    pub(super) fn new((strategy, identifier): Entry, state: OverrideState) -> Self {
        OverrideEntry {
            strategy: strategy.into_owned(),
            identifier,
            override_spec: state.spec,
            in_force: state.problem.is_none(),
            problem: state.problem,
        }
    }
}
