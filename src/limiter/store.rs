//! Where counters live: the [`Store`] trait the Redis layer implements, and
//! what it answers. The limiter never builds a Redis command.

use std::future::Future;
use std::time::Duration;

use super::request::Entry;
use crate::policy::{Policy, Quota};

/// One counter of a check: `policy` counted for `subject`, taking `cost`
/// units (0: read without writing; negative: a refund).
#[derive(Debug, Clone)]
pub struct Counter<'a> {
    pub subject: &'a Entry,
    pub policy: &'a Policy,
    pub cost: i64,
    /// A concurrency policy's lease id (acquired, renewed or released).
    pub lease: Option<std::borrow::Cow<'a, str>>,
}

/// What the store answers for one check of several policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReply {
    /// Every policy allowed, and every policy was charged.
    pub allowed: bool,
    /// One per policy, in the order asked.
    pub quotas: Vec<Quota>,
    /// Per policy: concurrency leases found expired without release (the
    /// holder died or forgot); 0 for the rate algorithms.
    pub expired: Vec<u32>,
}

/// A quota slice taken from a counter ([`Store::take_slice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceTaken {
    /// Units taken (0: fewer than needed were left).
    pub granted: u64,
    /// The counter after the take: `remaining` is what is left in the
    /// store; `retry_after`, when nothing was granted, is until the units
    /// needed are there.
    pub quota: Quota,
    /// Which life of the counter the slice belongs to: a slice is given
    /// back only into the counter it was taken from, never into one made
    /// again after a reset.
    pub epoch: i64,
}

/// Why the store could not answer. Backend-neutral: the Redis layer maps its
/// own errors onto these kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the store: {0}")]
    Connection(String),
    /// The store refused the credentials (a wrong password, an ACL user
    /// without the permission a command needs).
    #[error("the store refused the credentials (REDIS_PASSWORD, REDIS_USERNAME or the URL's; an ACL user needs EVALSHA, SCRIPT, HGET, HGETALL, HSET, HDEL, DEL, GET, TIME): {0}")]
    Auth(String),
    #[error("the store refused the script: {0}")]
    Script(String),
    #[error("store error: {0}")]
    Other(String),
    /// The circuit breaker is open: the store failed repeatedly and is not
    /// asked again until its cool-down ends.
    #[error("circuit breaker open: the store failed repeatedly and is given a rest")]
    CircuitOpen,
}

impl StoreError {
    /// A short, stable name for headers and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Connection(_) => "connection",
            StoreError::Auth(_) => "auth",
            StoreError::Script(_) => "script",
            StoreError::Other(_) => "other",
            StoreError::CircuitOpen => "circuit_open",
        }
    }
}

/// Where counters live. The Redis layer implements it; the limiter never
/// builds a Redis command.
pub trait Store: Send + Sync + 'static {
    /// Checks every counter in one atomic step and charges each its cost
    /// if all allow; if any enforced one denies, none is charged. Counters of
    /// different subjects may live apart (a Redis Cluster keeps each subject
    /// in its own slot): a store then checks them subject by subject, in
    /// order, and documents what that gives up.
    fn check(
        &self,
        counters: &[Counter<'_>],
    ) -> impl Future<Output = Result<StoreReply, StoreError>> + Send;

    /// Takes a slice of what is left of `counter` (its cost is ignored): at
    /// least `need` units or none, at most `want`, and at most 1/`share` of
    /// what is left unless that is below `need`. `now_ms` replaces the
    /// store's clock (tests only).
    fn take_slice(
        &self,
        counter: &Counter<'_>,
        need: u64,
        want: u64,
        share: u64,
        now_ms: Option<u64>,
    ) -> impl Future<Output = Result<SliceTaken, StoreError>> + Send;

    /// Gives `units` of a slice back to `counter`, if it is still the
    /// counter of `epoch` and, for `until_ms` > 0, the store's clock is
    /// before it (a fixed window's end). Returns the units given back.
    fn give_slice(
        &self,
        counter: &Counter<'_>,
        units: u64,
        epoch: i64,
        until_ms: u64,
        now_ms: Option<u64>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Round-trip time of a trivial call, for health checks.
    fn ping(&self) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// Deletes `counters`; returns how many existed.
    fn reset(
        &self,
        counters: &[Counter<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The overrides every instance shares, as raw (identity key, JSON)
    /// pairs: the limiter decodes each entry on its own, so one bad entry
    /// cannot hide the others.
    fn load_overrides(&self) -> impl Future<Output = Result<Vec<RawOverride>, StoreError>> + Send;

    /// Stores an override, unless the store holds `max` others already
    /// (then `false`).
    fn save_override(
        &self,
        key: &str,
        json: &str,
        max: usize,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A number that changes with every change to the overrides (`None`:
    /// never changed).
    fn overrides_version(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Whether there was one to delete.
    fn delete_override(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the override under `key` only if it still holds exactly
    /// `json` (an expired override, unless an admin replaced it meanwhile).
    fn delete_override_if(
        &self,
        key: &[u8],
        json: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Tells every instance that the counters of the identity stored as
    /// `key` (see `overrides::storage_key`) were reset.
    fn publish_reset(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores one instance's heavy hitters (JSON) for `slot` (window,
    /// window number and kind, e.g. `1m:29512345:denied`), for `ttl_ms`.
    fn publish_top(
        &self,
        slot: &str,
        instance: &str,
        json: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every instance's heavy hitters for `slot`, raw.
    fn load_top(&self, slot: &str)
        -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// The resets published after sequence number `after`.
    fn resets_since(&self, after: u64)
        -> impl Future<Output = Result<ResetLog, StoreError>> + Send;
}

/// One stored override as the store holds it: (identity key, JSON), raw.
pub type RawOverride = (Vec<u8>, Vec<u8>);

/// Resets published by any instance, as [`Store::resets_since`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetLog {
    /// The sequence number of the latest reset (0: none ever).
    pub latest: u64,
    /// The identities (storage keys) reset after the sequence asked for.
    pub keys: Vec<Vec<u8>>,
    /// False when older entries were trimmed before they could be read: the
    /// reader must then forget every cached denial.
    pub complete: bool,
}
