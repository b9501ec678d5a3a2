//! Redis replies and errors, mapped onto the limiter's terms.

use std::time::Duration;

use redis::RedisError;

use super::{pool, ScriptPolicy};
use crate::limiter::{Quota, StoreError, StoreReply};

/// One check's part of a check.lua reply: four values per policy (code,
/// remaining, reset, retry_after; see the script), read with the limits
/// the check passed and the clock its decision used.
pub(super) fn parse_reply(
    reply: &[i64],
    policies: &[ScriptPolicy],
    now_ms: u64,
) -> Result<StoreReply, StoreError> {
    if reply.len() != 4 * policies.len() {
        return Err(StoreError::Script(format!(
            "check.lua returned {} values for {} policies, expected {}",
            reply.len(),
            policies.len(),
            4 * policies.len()
        )));
    }
    let codes = || reply.chunks_exact(4).map(|q| non_negative(q[0]));
    let expired = codes()
        .map(|code| (code >> 2).min(u64::from(u32::MAX)) as u32)
        .collect();
    let quotas = reply
        .chunks_exact(4)
        .zip(policies)
        .map(|(q, p)| quota(q[0] & 1 == 1, p.limit, [q[1], q[2], q[3]], now_ms))
        .collect();
    Ok(StoreReply {
        // A check's code says whether the check is allowed (the same in
        // each of its policies); a check of no policies is.
        allowed: codes().next().is_none_or(|code| code & 2 == 2),
        quotas,
        expired,
    })
}

/// A script's integer as the unsigned number it stands for (never below 0).
pub(super) fn non_negative(v: i64) -> u64 {
    v.max(0) as u64
}

/// A quota from a script's reply: `remaining`, `reset` (ms) and
/// `retry_after` (ms), each read as [`non_negative`].
pub(super) fn quota(
    allowed: bool,
    limit: u32,
    [remaining, reset, retry_after]: [i64; 3],
    now_ms: u64,
) -> Quota {
    Quota {
        allowed,
        limit,
        remaining: non_negative(remaining).min(u64::from(u32::MAX)) as u32,
        reset: Duration::from_millis(non_negative(reset)),
        retry_after: Duration::from_millis(non_negative(retry_after)),
        now_ms,
    }
}

/// Whether `err` says the credentials were refused (a wrong password, no
/// password where one is required, an ACL user without a permission).
pub(super) fn is_auth_error(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

pub(super) fn map_error(err: &RedisError) -> StoreError {
    if is_auth_error(err) {
        StoreError::Auth(err.to_string())
    } else if err.is_timeout() {
        StoreError::Timeout(Duration::ZERO)
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        StoreError::Connection(err.to_string())
    } else if matches!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            | redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
    ) {
        StoreError::Script(err.to_string())
    } else if pool::breaks_connection(err) {
        StoreError::Connection(err.to_string())
    } else {
        StoreError::Other(err.to_string())
    }
}
