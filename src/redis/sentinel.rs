//! Following a Sentinel failover as soon as the sentinels announce it: every
//! sentinel is subscribed to `+switch-master`, and an announcement for our
//! master bumps the pool's generation, which breaks every connection to the
//! old master at once. (Connections also notice by themselves, through a
//! dropped socket or a READONLY reply; this makes it immediate, and covers a
//! demoted master that still answers.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// How the sentinels are reached: their ACL user and password, and TLS.
#[derive(Clone)]
pub(crate) struct SentinelAuth {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls: Option<redis::TlsCertificates>,
}

/// Subscribes to each sentinel, reconnecting forever, in the background.
pub(crate) fn watch_switch_master(
    sentinels: Vec<(String, u16)>,
    master: String,
    auth: SentinelAuth,
    generation: Arc<AtomicU64>,
) {
    for (host, port) in sentinels {
        let (master, auth, generation) = (master.clone(), auth.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                if let Err(err) = listen(&host, port, &master, &auth, &generation).await {
                    log::debug!("sentinel {host}:{port}: {err}; resubscribing in 1 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn listen(
    host: &str,
    port: u16,
    master: &str,
    auth: &SentinelAuth,
    generation: &AtomicU64,
) -> redis::RedisResult<()> {
    let mut redis = RedisConnectionInfo::default();
    if let Some(username) = &auth.username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &auth.password {
        redis = redis.set_password(password);
    }
    let client = match &auth.tls {
        Some(certificates) => {
            let info: ConnectionInfo = ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
            .into_connection_info()?
            .set_redis_settings(redis);
            redis::Client::build_with_tls(info, certificates.clone())?
        }
        None => {
            let info: ConnectionInfo = ConnectionAddr::Tcp(host.to_owned(), port)
                .into_connection_info()?
                .set_redis_settings(redis);
            redis::Client::open(info)?
        }
    };
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload: String = message.get_payload()?;
        if payload.split_whitespace().next() == Some(master) {
            log::warn!("redis: sentinel {host}:{port} announced +switch-master {payload}; reconnecting to the new master");
            generation.fetch_add(1, Ordering::Relaxed);
        }
    }
    Err((redis::ErrorKind::Io, "subscription ended").into())
}
