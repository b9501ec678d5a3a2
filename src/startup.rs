//! All wiring in one place: Redis store, limiter, HTTP server. `main` and the
//! tests both start the service through [`Application::build`], so tests run
//! exactly what production runs.

use std::io;
use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::{Condition, Logger};
use actix_web::{web, App, HttpServer};

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::identity::Identifier;
use crate::limiter::{Limiter, Rules, RulesError};
use crate::redis::{RedisSetupError, RedisStore};

/// The limiter the service runs: counters in Redis.
pub type AppLimiter = Limiter<RedisStore>;

/// One line per request. The peer address, not a forwarded one, and no
/// request headers: an API key must never reach a log in full.
const ACCESS_LOG_FORMAT: &str = r#"%a "%r" %s %b %Dms degraded=%{X-RateLimit-Degraded}o"#;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("invalid rules file (setting RATE_LIMIT_CONFIG): {0}")]
    Rules(#[from] RulesError),
    #[error("cannot listen on {address} (settings HOST and PORT): {source}")]
    Bind { address: String, source: io::Error },
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let rules = match &settings.rules_path {
            Some(path) => Rules::load(path)?,
            None => Rules::builtin(&settings),
        };
        let store = RedisStore::connect(&settings.redis).await?;
        let limiter = Limiter::new(store, rules, settings.failure_mode);
        let state = web::Data::new(AppState {
            limiter,
            identifier: Identifier::new(
                settings.trusted_proxies.clone(),
                settings.max_api_key_length,
            ),
            environment: settings.environment.clone(),
        });

        let address = format!("{}:{}", settings.host, settings.port);
        let bind_error = |source| StartupError::Bind {
            address: address.clone(),
            source,
        };
        let listener = TcpListener::bind(&address).map_err(bind_error)?;
        let reload_state = state.clone();
        let port = listener.local_addr().map_err(bind_error)?.port();

        // actix's Logger renders its format for every request even when the
        // line is then filtered out: only mount it when it will be written.
        let access_log =
            log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(Condition::new(access_log, Logger::new(ACCESS_LOG_FORMAT)))
                .configure(http::configure)
        })
        .shutdown_timeout(5)
        .listen(listener)
        .map_err(bind_error)?;
        if let Some(workers) = settings.workers {
            server = server.workers(workers);
        }
        let server = server.run();
        if let Some(path) = settings.rules_path.clone() {
            crate::reload::spawn(path, reload_state);
        }
        Ok(Application { port, server })
    }

    /// Stops the server from elsewhere (tests; `main` relies on signals).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// The port actually bound (useful with PORT=0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        self.server.await
    }
}
