//! The state one running service shares between its front ends and its
//! background tasks: the limiter over the Redis store, the caller
//! identification, and the settings the handlers read. Above the limiter and
//! the store, below the front ends, the reload task and the wiring.

use crate::config::LogFormat;
use crate::identity::Identifier;
use crate::limiter::Limiter;
use crate::redis::RedisStore;

/// The limiter the service runs: counters in Redis.
pub type AppLimiter = Limiter<RedisStore>;

/// What every handler shares.
pub struct AppState {
    pub limiter: AppLimiter,
    pub identifier: Identifier,
    /// The header that carries API keys (API_KEY_HEADER).
    pub api_key_header: actix_web::http::header::HeaderName,
    pub environment: String,
    pub log_format: LogFormat,
    /// `/admin` exists only when this is set.
    pub admin_token: Option<String>,
    /// How long a client may take to send a request body.
    pub body_timeout: std::time::Duration,
    /// Peers that may read the operator's pages without the admin token.
    pub operator_networks: Vec<ipnet::IpNet>,
    /// Who may call `POST /json`.
    pub json_api: crate::config::JsonApi,
    /// OpenTelemetry traces, when configured (OTEL_*).
    pub tracing: Option<std::sync::Arc<crate::traces::Tracing>>,
}
