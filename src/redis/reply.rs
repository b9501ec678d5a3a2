//! Redis replies and errors, mapped onto the limiter's terms.

use std::time::Duration;

use redis::RedisError;

use super::{pool, ScriptPolicy};
use crate::limiter::{Quota, StoreError, StoreReply};

/// One check's part of a check.lua reply, read off the front of `rest`:
/// per policy a word (code + 16 x remaining) and `reset`, then
/// `retry_after` and the expired leases when the code says they follow
/// (see the script); read with the limits the check passed and the clock
/// its decision used.
pub(super) fn parse_reply(
    rest: &mut &[i64],
    policies: &[ScriptPolicy],
    now_ms: u64,
) -> Result<StoreReply, StoreError> {
    let mut quotas = Vec::with_capacity(policies.len());
    let mut expired = Vec::with_capacity(policies.len());
    // A check's code says whether the check is allowed (the same in each
    // of its policies); a check of no policies is.
    let mut allowed = true;
    for (i, policy) in policies.iter().enumerate() {
        let short = || {
            StoreError::Script(format!(
                "check.lua's reply ends within policy {} of {}",
                i + 1,
                policies.len()
            ))
        };
        let [word, reset, tail @ ..] = *rest else {
            return Err(short());
        };
        let word = non_negative(*word);
        let (code, remaining) = (word & 15, word >> 4);
        let (retry_after, tail) = follows(code & 4 != 0, tail).ok_or_else(short)?;
        let (leases, tail) = follows(code & 8 != 0, tail).ok_or_else(short)?;
        *rest = tail;
        if i == 0 {
            allowed = code & 2 == 2;
        }
        let remaining = remaining.min(u64::from(u32::MAX)) as i64;
        quotas.push(quota(
            code & 1 == 1,
            policy.limit,
            [remaining, *reset, retry_after],
            now_ms,
        ));
        expired.push(non_negative(leases).min(u64::from(u32::MAX)) as u32);
    }
    Ok(StoreReply {
        allowed,
        quotas,
        expired,
    })
}

/// The optional value at the front of `tail` when the code says it
/// `present`s (else 0), and what follows it; `None` when it is missing.
fn follows(present: bool, tail: &[i64]) -> Option<(i64, &[i64])> {
    match (present, tail) {
        (false, tail) => Some((0, tail)),
        (true, [value, tail @ ..]) => Some((*value, tail)),
        (true, []) => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u32) -> ScriptPolicy {
        ScriptPolicy {
            key: "k".into(),
            algorithm: "fixed_window",
            limit,
            window_ms: 1000,
            cost: 1,
            shadow: false,
            debit: false,
            lease: String::new(),
        }
    }

    /// Two integers for a policy that allows, more when `retry_after` or
    /// expired leases follow; each check reads its own part off the front.
    #[test]
    fn replies_are_read_policy_by_policy() {
        let policies = [policy(10), policy(5)];
        // Check 1: allowed (7 left, reset 900); denied by the second
        // policy (retry 300, 2 leases expired). Check 2 follows.
        let reply = [1 + 16 * 7, 900, 4 + 8, 400, 300, 2, 3 + 16 * 9, 100];
        let mut rest = &reply[..];
        let first = parse_reply(&mut rest, &policies, 5).unwrap();
        assert!(!first.allowed);
        assert_eq!(first.expired, vec![0, 2]);
        let q = &first.quotas;
        assert!(q[0].allowed && !q[1].allowed);
        assert_eq!((q[0].remaining, q[0].reset.as_millis()), (7, 900));
        assert_eq!((q[1].remaining, q[1].retry_after.as_millis()), (0, 300));
        let second = parse_reply(&mut rest, &policies[..1], 5).unwrap();
        assert!(second.allowed);
        assert_eq!(second.quotas[0].remaining, 9);
        assert!(rest.is_empty());
    }

    #[test]
    fn a_short_reply_is_a_script_error() {
        for reply in [&[3][..], &[3 + 4, 10], &[3 + 8, 10], &[3 + 4 + 8, 10, 5]] {
            let mut rest = reply;
            let err = parse_reply(&mut rest, &[policy(1)], 0).unwrap_err();
            assert!(matches!(err, StoreError::Script(_)), "{reply:?}: {err:?}");
        }
    }
}
