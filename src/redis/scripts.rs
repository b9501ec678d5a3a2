//! The Lua script, compiled into the binary from the files in `lua/`.
//!
//! One script decides every check: `lua/check.lua`, with the algorithm
//! modules placed before it, each reached as `ALGORITHMS[<name>]`.
//! Assembling them into one script keeps one file per algorithm while
//! letting a request check policies of different algorithms in one atomic
//! EVALSHA. Redis runs a script's whole body on every call, so each module
//! sits in a loader function that runs only when a call first uses it: a
//! call of fixed windows builds no token bucket.
//!
//! It is loaded with SCRIPT LOAD at start-up and run with EVALSHA by its
//! SHA1. Redis forgets scripts on restart, on failover to a replica that never
//! saw the load, and on SCRIPT FLUSH; EVALSHA then answers NOSCRIPT and
//! `evalsha` loads the script and retries once, so no request fails for it.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisResult, ServerErrorKind};

use crate::limiter::Algorithm;

pub struct LuaScript {
    pub name: &'static str,
    pub source: String,
    pub sha: String,
}

impl LuaScript {
    fn new(name: &'static str, source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_owned();
        LuaScript { name, source, sha }
    }
}

/// The source of each algorithm module, by algorithm.
pub fn module_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::FixedWindow => include_str!("../../lua/fixed_window.lua"),
        Algorithm::SlidingWindow => include_str!("../../lua/sliding_window.lua"),
        Algorithm::TokenBucket => include_str!("../../lua/token_bucket.lua"),
        Algorithm::Gcra => include_str!("../../lua/gcra.lua"),
        Algorithm::Concurrency => include_str!("../../lua/concurrency.lua"),
    }
}

/// The module of envoyproxy/ratelimit's fixed window with its own keys and
/// values (ENVOY_KEY_FORMAT=ratelimit).
pub const RATELIMIT_FIXED_WINDOW: &str = "ratelimit_fixed_window";

/// The algorithm modules, each in a loader run on first use, reached as
/// `ALGORITHMS[<name>]`: what check.lua and slice.lua start with.
fn with_modules(script: &str) -> String {
    let mut source = String::from(
        "local LOADERS = {}\n\
         local ALGORITHMS = setmetatable({}, { __index = function(built, name)\n\
         \x20 local load = LOADERS[name]\n\
         \x20 if not load then return nil end\n\
         \x20 local module = load()\n\
         \x20 rawset(built, name, module)\n\
         \x20 return module\n\
         end })\n",
    );
    let modules = Algorithm::ALL
        .into_iter()
        .chain([Algorithm::Concurrency])
        .map(|a| (a.as_str(), module_source(a)))
        .chain([(
            RATELIMIT_FIXED_WINDOW,
            include_str!("../../lua/ratelimit_fixed_window.lua"),
        )]);
    for (name, module) in modules {
        source.push_str(&format!("LOADERS['{name}'] = function()\n{module}\nend\n"));
    }
    source.push_str(script);
    source
}

pub static CHECK: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("check", with_modules(include_str!("../../lua/check.lua"))));

/// Quota slices: taken from a counter and given back (`lua/slice.lua`).
pub static SLICE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("slice", with_modules(include_str!("../../lua/slice.lua"))));

pub(crate) async fn load<C: ConnectionLike + Send>(
    conn: &mut C,
    script: &LuaScript,
) -> RedisResult<()> {
    // On a Cluster this goes to every node; the reply is then each node's
    // SHA, all equal, so it is not read.
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&script.source)
        .query_async::<redis::Value>(conn)
        .await?;
    Ok(())
}

/// `cmd`, an EVALSHA of `script`, reloading the script and retrying once on
/// NOSCRIPT.
pub(crate) async fn evalsha<C: ConnectionLike + Send>(
    conn: &mut C,
    script: &LuaScript,
    cmd: &redis::Cmd,
    reloads: &prometheus::IntCounter,
) -> RedisResult<Vec<i64>> {
    match cmd.query_async(conn).await {
        Err(err) if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            log::info!(
                "redis: script {} was missing (NOSCRIPT); reloading it",
                script.name
            );
            reloads.inc();
            load(conn, script).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// The admin scripts: small, rarely run, so the redis crate's `Script`
/// (EVALSHA, and EVAL on NOSCRIPT) is enough.
pub static PUBLISH_RESET: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/publish_reset.lua")));
pub static RESETS_SINCE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/resets_since.lua")));
pub static OVERRIDES: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/overrides.lua")));
