//! The [`Store`] the limiter asks, on Redis: checks through the one script,
//! resets, the shared overrides and the reset log, and the health ping.

use std::time::{Duration, Instant};

use super::keys::{
    counter_key, hash_tag, slice_epoch_key, top_key, OVERRIDES_KEY, OVERRIDES_VERSION_FIELD,
    RESET_KEYS, RESET_LOG_ENTRIES, RESET_LOG_TTL_MS,
};
use super::reply::{non_negative, quota};
use super::{script_policy, scripts, RedisStore, ScriptPolicy};
use crate::limiter::{Counter, RawOverride, ResetLog, SliceTaken, Store, StoreError, StoreReply};

impl RedisStore {
    /// One call of slice.lua on `counter`'s keys: `op`, then need, want,
    /// share, epoch and until (see the script).
    async fn slice_call(
        &self,
        counter: &Counter<'_>,
        op: &str,
        [need, want, share, epoch, until]: [u64; 5],
        now_ms: Option<u64>,
    ) -> Result<Vec<i64>, StoreError> {
        let policy = script_policy(counter);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&scripts::SLICE.sha)
            .arg(2)
            .arg(&policy.key)
            .arg(slice_epoch_key(&policy.key))
            .arg(op)
            .arg(policy.algorithm)
            .arg(policy.limit)
            .arg(policy.window_ms)
            .arg(need)
            .arg(want)
            .arg(share)
            .arg(epoch as i64)
            .arg(until);
        match now_ms {
            Some(now) => cmd.arg(now),
            None => cmd.arg(""),
        };
        let deadline = Instant::now() + self.timeout;
        let (cmd, metrics) = (&cmd, &self.metrics);
        self.call(deadline, |mut conn| async move {
            scripts::evalsha(&mut conn, &scripts::SLICE, cmd, &metrics.script_reloads).await
        })
        .await
    }
}

impl Store for RedisStore {
    /// One script call for every counter, except on a Cluster when the
    /// counters have several subjects (a request of an API key that is also
    /// limited per client IP; an Envoy request with several descriptors):
    /// each subject's keys live in their own slot (as does each key in
    /// envoyproxy/ratelimit's format, which has no hash tag), so each
    /// slot's counters run in their own call, in the request's order. Then a subject that allowed stays charged when a later one
    /// denies (for the HTTP front end: one request counted against the
    /// client IP, whose descriptors come first), and once one denies the
    /// rest are only read. Within each subject the check stays atomic and
    /// all-or-nothing.
    async fn check(&self, counters: &[Counter<'_>]) -> Result<StoreReply, StoreError> {
        let policies: Vec<ScriptPolicy> = counters.iter().map(script_policy).collect();
        // What decides a key's Cluster slot: its hash tag (a subject's), or
        // the whole key when it has none (envoyproxy/ratelimit's format).
        let slot_of = |p: &ScriptPolicy| hash_tag(&p.key).map_or(p.key.clone(), str::to_owned);
        // (Only a Cluster splits: one server or Sentinel never computes a
        // slot.)
        let split = self.cluster && {
            let first = policies.first().map(slot_of);
            policies.iter().any(|p| Some(slot_of(p)) != first)
        };
        if !split {
            return self.check_policies(policies, None).await;
        }
        let mut slots: Vec<String> = Vec::new();
        for policy in &policies {
            let slot = slot_of(policy);
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        let mut quotas = vec![None; policies.len()];
        let mut expired = vec![0; policies.len()];
        let mut allowed = true;
        for slot in slots {
            let (indices, mut group): (Vec<usize>, Vec<ScriptPolicy>) = policies
                .iter()
                .enumerate()
                .filter(|(_, p)| slot_of(p) == slot)
                .map(|(i, p)| (i, p.clone()))
                .unzip();
            if !allowed {
                // Already denied: read the rest without charging it (a
                // debit is charged all the same; a lease is not taken).
                for p in group.iter_mut().filter(|p| !p.debit) {
                    p.cost = 0;
                    p.lease.clear();
                }
            }
            let reply = self.check_policies(group, None).await?;
            allowed &= reply.allowed;
            for ((i, quota), gone) in indices.into_iter().zip(reply.quotas).zip(reply.expired) {
                quotas[i] = Some(quota);
                expired[i] = gone;
            }
        }
        Ok(StoreReply {
            allowed,
            quotas: quotas.into_iter().flatten().collect(),
            expired,
        })
    }

    async fn reset(&self, counters: &[Counter<'_>]) -> Result<u64, StoreError> {
        let mut keys: Vec<String> = Vec::with_capacity(counters.len());
        for c in counters {
            let key = counter_key(c.subject, c.policy);
            // A sliced counter's epoch goes with it: a slice taken before
            // the reset is then never given back into the new counter.
            if c.policy.slices() {
                keys.push(slice_epoch_key(&key));
            }
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.timeout;
        // One DEL per subject: a subject's keys share a hash tag, so each is
        // a single-slot command on a Cluster too.
        let mut deleted = 0;
        // A key without a hash tag (envoyproxy/ratelimit's format) is a
        // group of its own.
        fn tag_of(key: &str) -> &str {
            hash_tag(key).unwrap_or(key)
        }
        let mut tags: Vec<&str> = keys.iter().map(|k| tag_of(k)).collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            let group: Vec<&String> = keys.iter().filter(|k| tag_of(k) == tag).collect();
            deleted += self
                .call(deadline, |mut conn| async move {
                    redis::cmd("DEL")
                        .arg(&group)
                        .query_async::<u64>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(deleted)
    }

    async fn take_slice(
        &self,
        counter: &Counter<'_>,
        need: u64,
        want: u64,
        share: u64,
        now_ms: Option<u64>,
    ) -> Result<SliceTaken, StoreError> {
        let reply = self
            .slice_call(counter, "take", [need, want, share, 0, 0], now_ms)
            .await?;
        let [granted, now, remaining, reset, retry_after, epoch] = reply[..] else {
            return Err(StoreError::Script(format!(
                "slice.lua returned {} values for a take, expected 6",
                reply.len()
            )));
        };
        Ok(SliceTaken {
            granted: non_negative(granted),
            quota: quota(
                granted > 0,
                counter.policy.limit().get(),
                [remaining, reset, retry_after],
                non_negative(now),
            ),
            epoch,
        })
    }

    async fn give_slice(
        &self,
        counter: &Counter<'_>,
        units: u64,
        epoch: i64,
        until_ms: u64,
        now_ms: Option<u64>,
    ) -> Result<u64, StoreError> {
        let reply = self
            .slice_call(
                counter,
                "give",
                [units, 0, 0, epoch as u64, until_ms],
                now_ms,
            )
            .await?;
        Ok(reply.first().map_or(0, |&given| non_negative(given)))
    }

    async fn load_overrides(&self) -> Result<Vec<RawOverride>, StoreError> {
        let deadline = Instant::now() + self.timeout;
        // Raw bytes: a field or value that is not UTF-8 is the limiter's to
        // skip, not a failed call.
        let mut all = self
            .call(deadline, |mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(OVERRIDES_KEY)
                    .query_async::<Vec<(Vec<u8>, Vec<u8>)>>(&mut conn)
                    .await
            })
            .await?;
        all.retain(|(field, _)| field != OVERRIDES_VERSION_FIELD.as_bytes());
        Ok(all)
    }

    async fn overrides_version(&self) -> Result<Option<u64>, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut conn| async move {
            redis::cmd("HGET")
                .arg(OVERRIDES_KEY)
                .arg(OVERRIDES_VERSION_FIELD)
                .query_async::<Option<u64>>(&mut conn)
                .await
        })
        .await
    }

    async fn delete_override_if(&self, key: &[u8], json: &[u8]) -> Result<bool, StoreError> {
        self.write_override("del_if", key, json, 0).await
    }

    async fn publish_reset(&self, key: &str) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut conn| async move {
            scripts::PUBLISH_RESET
                .key(&RESET_KEYS[..])
                .arg(key)
                .arg(RESET_LOG_ENTRIES)
                .arg(RESET_LOG_TTL_MS)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn publish_top(
        &self,
        slot: &str,
        instance: &str,
        json: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let key = &top_key(slot);
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut conn| async move {
            redis::pipe()
                .atomic()
                .hset(key, instance, json)
                .ignore()
                .pexpire(key, ttl_ms as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn load_top(&self, slot: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = &top_key(slot);
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut conn| async move {
            redis::cmd("HVALS")
                .arg(key)
                .query_async::<Vec<Vec<u8>>>(&mut conn)
                .await
        })
        .await
    }

    async fn resets_since(&self, after: u64) -> Result<ResetLog, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let (latest, trimmed, keys) = self
            .call(deadline, |mut conn| async move {
                scripts::RESETS_SINCE
                    .key(&RESET_KEYS[..])
                    .arg(after)
                    .invoke_async::<(u64, u64, Vec<Vec<u8>>)>(&mut conn)
                    .await
            })
            .await?;
        Ok(ResetLog {
            latest,
            keys,
            complete: after >= trimmed,
        })
    }

    async fn save_override(&self, key: &str, json: &str, max: usize) -> Result<bool, StoreError> {
        self.write_override("set", key.as_bytes(), json.as_bytes(), max)
            .await
    }

    async fn delete_override(&self, key: &str) -> Result<bool, StoreError> {
        self.write_override("del", key.as_bytes(), b"", 0).await
    }

    /// PING on a Cluster (every node); ROLE elsewhere, because a demoted
    /// master still answers PING but can take no write: a server that is not
    /// a master is reported (and its connection replaced).
    async fn ping(&self) -> Result<Duration, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let started = Instant::now();
        let cluster = self.cluster;
        let role = self
            .call(deadline, |mut conn| async move {
                if cluster {
                    redis::cmd("PING").query_async::<()>(&mut conn).await?;
                    return Ok(None);
                }
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                let role = match role.first() {
                    Some(redis::Value::BulkString(bytes)) => {
                        String::from_utf8_lossy(bytes).into_owned()
                    }
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    _ => String::new(),
                };
                if role != "master" {
                    // Reported through the error path, so the connection is
                    // marked broken and the next one asks the sentinels.
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                        "connected to a server that is not a master",
                        role,
                    )));
                }
                Ok(Some(role))
            })
            .await;
        match role {
            Ok(_) => Ok(started.elapsed()),
            Err(err) => Err(err),
        }
    }
}

impl RedisStore {
    /// One change to the overrides hash through `lua/overrides.lua` (which
    /// bumps its version): whether it was made.
    async fn write_override(
        &self,
        operation: &str,
        key: &[u8],
        value: &[u8],
        max: usize,
    ) -> Result<bool, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut conn| async move {
            scripts::OVERRIDES
                .key(OVERRIDES_KEY)
                .arg(operation)
                .arg(key)
                .arg(value)
                .arg(max)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(|n| n > 0)
    }
}
