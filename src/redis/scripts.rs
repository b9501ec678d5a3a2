//! The Lua scripts, one static per file in `lua/`, compiled into the binary.
//!
//! Each is loaded with SCRIPT LOAD at start-up and run with EVALSHA by its
//! SHA1. Redis forgets scripts on restart, on failover to a replica that never
//! saw the load, and on SCRIPT FLUSH; EVALSHA then answers NOSCRIPT and
//! [`evalsha`] loads the script and retries once, so no request fails for it.

use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, ServerErrorKind};

pub struct LuaScript {
    pub name: &'static str,
    pub source: &'static str,
    sha: LazyLock<String>,
}

impl LuaScript {
    pub fn sha(&self) -> &str {
        &self.sha
    }
}

macro_rules! lua_script {
    ($name:literal) => {
        LuaScript {
            name: $name,
            source: include_str!(concat!("../../lua/", $name, ".lua")),
            sha: LazyLock::new(|| {
                redis::Script::new(include_str!(concat!("../../lua/", $name, ".lua")))
                    .get_hash()
                    .to_owned()
            }),
        }
    };
}

pub static FIXED_WINDOW: LuaScript = lua_script!("fixed_window");

/// Every script, for loading at start-up.
pub static ALL: [&LuaScript; 1] = [&FIXED_WINDOW];

pub(crate) async fn load(conn: &mut MultiplexedConnection, script: &LuaScript) -> RedisResult<()> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script.source)
        .query_async(conn)
        .await?;
    debug_assert_eq!(sha, script.sha());
    Ok(())
}

/// EVALSHA, reloading the script and retrying once on NOSCRIPT.
pub(crate) async fn evalsha(
    conn: &mut MultiplexedConnection,
    script: &LuaScript,
    keys: &[&str],
    args: &[u64],
    now_ms: Option<u64>,
) -> RedisResult<Vec<i64>> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.sha()).arg(keys.len()).arg(keys).arg(args);
    if let Some(now) = now_ms {
        cmd.arg(now);
    }
    match cmd.query_async(conn).await {
        Err(err) if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            log::info!(
                "redis: script {} was missing (NOSCRIPT); reloading it",
                script.name
            );
            load(conn, script).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}
