//! Redis replies and errors, mapped onto the limiter's terms.

use std::time::Duration;

use redis::RedisError;

use super::pool;
use crate::limiter::{Quota, StoreError, StoreReply};

pub(super) fn parse_reply(reply: &[i64], policies: usize) -> Result<StoreReply, StoreError> {
    if reply.len() != 2 + 6 * policies {
        return Err(StoreError::Script(format!(
            "check.lua returned {} values for {policies} policies, expected {}",
            reply.len(),
            2 + 6 * policies
        )));
    }
    let now_ms = non_negative(reply[1]);
    let expired = reply[2..]
        .chunks_exact(6)
        .map(|q| non_negative(q[5]).min(u64::from(u32::MAX)) as u32)
        .collect();
    let quotas = reply[2..]
        .chunks_exact(6)
        .map(|q| {
            quota(
                q[0] == 1,
                non_negative(q[1]) as u32,
                [q[2], q[3], q[4]],
                now_ms,
            )
        })
        .collect();
    Ok(StoreReply {
        allowed: reply[0] == 1,
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
