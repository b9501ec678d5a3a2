//! All wiring in one place: Redis store, limiter, HTTP server. `main` and the
//! tests both start the service through [`Application::build`], so tests run
//! exactly what production runs.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::app::AppState;
use crate::config::Settings;
use crate::http;
use crate::identity::jwt::JwtVerifier;
use crate::identity::Identifier;
use crate::limiter::breaker::Breaker;
use crate::limiter::overrides::REFRESH_INTERVAL;
use crate::limiter::{Limiter, Rules, RulesError};
use crate::redis::{RedisSetupError, RedisStore};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("invalid rules file (setting RATE_LIMIT_CONFIG): {0}")]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Jwt(#[from] crate::identity::jwt::JwtSetupError),
    #[error("cannot listen on {address} (settings HOST and PORT): {source}")]
    Bind { address: String, source: io::Error },
    #[error(
        "cannot listen on {address} (settings GRPC_HOST and GRPC_PORT, or GRPC_UDS): {source}"
    )]
    GrpcBind { address: String, source: io::Error },
    #[error(transparent)]
    Tracing(#[from] crate::traces::TracingError),
    #[error("invalid setting {setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    #[error("invalid Envoy configuration (settings RUNTIME_ROOT and RUNTIME_*; FORCE_START_WITHOUT_INITIAL_CONFIG=true starts without it): {0}")]
    EnvoyConfig(String),
}

pub struct Application {
    port: u16,
    grpc_port: u16,
    server: Server,
    /// Stops the gRPC server when the HTTP server stops.
    grpc_stop: Option<tokio::sync::watch::Sender<bool>>,
    /// Flushed at shutdown.
    tracing: Option<Arc<crate::traces::Tracing>>,
    /// The metrics listener of USE_PROMETHEUS, stopped with the server.
    prometheus: Option<actix_web::dev::ServerHandle>,
    state: web::Data<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        crate::tls::install_crypto_provider();
        let tls_error = |(setting, problem)| StartupError::Setting { setting, problem };
        // The listeners' certificates, checked before anything starts.
        let http_tls = settings
            .http_tls
            .as_ref()
            .map(|tls| crate::tls::server_config(tls, &[]))
            .transpose()
            .map_err(tls_error)?;
        let grpc_tls = settings
            .envoy
            .grpc_tls
            .as_ref()
            .map(|tls| crate::tls::server_config(tls, &[b"h2"]))
            .transpose()
            .map_err(tls_error)?;
        if settings
            .redis
            .tls
            .as_ref()
            .is_some_and(|t| t.skip_hostname_verification)
        {
            log::warn!("redis: REDIS_TLS_SKIP_HOSTNAME_VERIFICATION: Redis's certificate is not checked against the address dialled");
        }
        // The xDS client's certificate and CAs, checked now.
        if let Some(tls) = settings.envoy.xds.as_ref().and_then(|x| x.tls.as_ref()) {
            crate::tls::client_config(tls).map_err(tls_error)?;
        }
        let rules = match &settings.rules_path {
            Some(path) => Rules::load(path)?,
            None => Rules::builtin(&settings),
        };
        let metrics = Arc::new(Metrics::new());
        // envoyproxy/ratelimit's YAML directory, if there is one: read
        // before anything starts, so a broken one stops the start.
        let mut erl_files = None;
        let rules = match &settings.envoy.runtime {
            None => {
                // Over xDS the service is ready once the first
                // configuration arrives, or at once with
                // FORCE_START_WITHOUT_INITIAL_CONFIG (an empty
                // configuration: nothing limited).
                let ready = settings.envoy.xds.as_ref().is_none_or(|x| x.force_start);
                metrics.envoy.config_loaded.set(i64::from(ready));
                rules
            }
            Some(runtime) => {
                let loaded = crate::reload::read_erl(runtime).and_then(|(files, warning)| {
                    let config = crate::limiter::rules::erl::compile(&files, runtime)
                        .map_err(|e| e.to_string())?;
                    Ok((files, warning, config))
                });
                match loaded {
                    Ok((files, warning, config)) => {
                        crate::reload::erl_loaded(&metrics.envoy, &config, warning);
                        erl_files = Some(files);
                        rules.with_erl(Arc::new(config))
                    }
                    Err(err) if settings.envoy.force_start => {
                        metrics.envoy.config_load_error.inc();
                        log::error!("Error loading new configuration: {err}; starting without it (FORCE_START_WITHOUT_INITIAL_CONFIG)");
                        rules
                    }
                    Err(err) => return Err(StartupError::EnvoyConfig(err)),
                }
            }
        };
        metrics
            .redis_tls
            .set(i64::from(settings.redis.tls.is_some()));
        let mut certs = Vec::new();
        for (listener, tls) in [("http", &http_tls), ("grpc", &grpc_tls)] {
            if let Some((_, cert)) = tls {
                certs.push((listener, cert.clone()));
            }
        }
        crate::tls::watch(certs, metrics.clone());
        let store = RedisStore::connect_with_metrics(&settings.redis, metrics.clone()).await?;
        let redis = &settings.redis;
        let limiter = Limiter::new(
            store,
            rules,
            settings.failure_mode,
            settings.shadow,
            metrics,
        )
        .with_breaker(Breaker::new(
            redis.breaker_failures,
            redis.breaker_cooldown,
            // A probe unanswered for twice the call timeout is presumed lost.
            redis.breaker_cooldown.max(redis.timeout * 2),
        ));
        let mut identifier = Identifier::new(
            settings.trusted_proxies.clone(),
            settings.max_api_key_length,
            settings.forwarded_header,
        );
        // Parsed once: a name looked up as a string is parsed (and, not
        // being a standard header, allocated) on every request.
        let api_key_header =
            actix_web::http::header::HeaderName::from_bytes(settings.api_key_header.as_bytes())
                .map_err(|err| StartupError::Setting {
                    setting: "API_KEY_HEADER",
                    problem: err.to_string(),
                })?;
        if let Some(jwt) = &settings.jwt {
            identifier = identifier.with_jwt(JwtVerifier::new(jwt.clone())?);
        }
        let tracing = match &settings.traces {
            Some(traces) => {
                log::info!(
                    "traces: OTLP {} to {}, service {}",
                    traces.protocol.as_str(),
                    traces.endpoint,
                    traces.service_name
                );
                Some(Arc::new(crate::traces::Tracing::start(traces)?))
            }
            None => None,
        };
        let state = web::Data::new(AppState {
            limiter,
            identifier,
            api_key_header,
            environment: settings.environment.clone(),
            log_format: settings.log_format,
            admin_token: settings.admin_token.clone(),
            operator_networks: settings.operator_networks.clone(),
            json_api: settings.envoy.json_api,
            body_timeout: settings.body_timeout,
            tracing,
        });
        let admin = settings.admin_token.is_some();

        let address = format!("{}:{}", settings.host, settings.port);
        let bind_error = |source| StartupError::Bind {
            address: address.clone(),
            source,
        };
        let listener = TcpListener::bind(&address).map_err(bind_error)?;
        let reload_state = state.clone();
        let tracing = state.tracing.clone();
        let rls = crate::envoy::Rls::new(state.clone(), settings.envoy.clone());
        let rls_data = web::Data::new(rls.clone());
        let port = listener.local_addr().map_err(bind_error)?.port();

        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(rls_data.clone())
                .wrap(from_fn(http::docs::security_headers))
                .wrap(from_fn(http::errors::json_errors))
                .wrap(from_fn(http::access::access))
                .configure(|cfg| http::configure(cfg, admin))
        })
        .shutdown_timeout(5);
        let mut server = match &http_tls {
            Some((config, _)) => server.listen_rustls_0_23(listener, (**config).clone()),
            None => server.listen(listener),
        }
        .map_err(bind_error)?;
        if let Some(workers) = settings.workers {
            server = server.workers(workers);
        }
        let server = server.run();

        let (grpc_listener, grpc_port) = grpc_listener(&settings.envoy)?;
        let (grpc_stop, stopped) = tokio::sync::watch::channel(false);
        let grpc_tls = grpc_tls.map(|(config, _)| config);
        // As many threads as the HTTP server has workers.
        let grpc_threads = settings.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        crate::envoy::grpc::spawn(rls, grpc_listener, grpc_tls, grpc_threads, stopped).map_err(
            |source| StartupError::GrpcBind {
                address: format!("{}:{}", settings.envoy.grpc_host, settings.envoy.grpc_port),
                source,
            },
        )?;
        if let Some(runtime) = settings.envoy.runtime.clone() {
            crate::reload::spawn_erl(runtime, reload_state.clone(), erl_files);
        }
        if let Some(xds) = settings.envoy.xds.clone() {
            crate::envoy::xds::spawn(xds, reload_state.clone());
        }
        let prometheus = match &settings.envoy.prometheus {
            Some(prometheus) => Some(prometheus_server(prometheus, reload_state.clone())?),
            None => None,
        };
        if let Some(path) = settings.rules_path.clone() {
            crate::reload::spawn(path, reload_state.clone());
        }
        crate::reload::spawn_jwks(reload_state.clone());
        spawn_override_refresh(reload_state.clone());
        let sweep_state = reload_state.clone();
        crate::reload::every(crate::limiter::slices::SWEEP_INTERVAL, move || {
            let state = sweep_state.clone();
            async move { state.limiter.sweep_slices(false).await }
        });
        Ok(Application {
            state: reload_state,
            port,
            grpc_port,
            server,
            grpc_stop: Some(grpc_stop),
            tracing,
            prometheus,
        })
    }

    /// Stops the server from elsewhere (tests; `main` relies on signals).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// The port actually bound (useful with PORT=0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The gRPC port actually bound (useful with GRPC_PORT=0).
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// Serves until SIGINT or SIGTERM (or [`Application::handle`]'s stop),
    /// then finishes in-flight requests; the gRPC server stops with it.
    pub async fn run_until_stopped(mut self) -> io::Result<()> {
        let result = self.server.await;
        // What this instance's quota slices did not spend goes back.
        self.state.limiter.sweep_slices(true).await;
        if let Some(prometheus) = self.prometheus.take() {
            prometheus.stop(true).await;
        }
        if let Some(stop) = self.grpc_stop.take() {
            let _ = stop.send(true);
        }
        if let Some(tracing) = self.tracing.take() {
            // The spans still buffered go out (the SDK's export blocks).
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        }
        result
    }
}

/// Rereads the overrides set through the admin API (by any instance) every
/// [`REFRESH_INTERVAL`], for as long as the runtime that calls this runs.
fn spawn_override_refresh(state: web::Data<AppState>) {
    crate::reload::every(REFRESH_INTERVAL, move || {
        let state = state.clone();
        async move {
            if let Err(err) = state.limiter.refresh_overrides().await {
                log::debug!("overrides: cannot refresh: {err}");
            }
            if let Err(err) = state.limiter.publish_top().await {
                log::debug!("top offenders: cannot publish: {err}");
            }
        }
    });
}

/// The gRPC listener: GRPC_UDS when set (a stale socket file is replaced),
/// else GRPC_HOST:GRPC_PORT; with the TCP port bound (0 for a socket).
fn grpc_listener(
    settings: &crate::config::EnvoySettings,
) -> Result<(crate::envoy::grpc::Listener, u16), StartupError> {
    use crate::envoy::grpc::Listener;
    if let Some(path) = &settings.grpc_uds {
        let error = |source| StartupError::GrpcBind {
            address: path.display().to_string(),
            source,
        };
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path).map_err(error)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(error)?;
        return Ok((Listener::Unix(listener), 0));
    }
    let address = format!("{}:{}", settings.grpc_host, settings.grpc_port);
    let error = |source| StartupError::GrpcBind {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(&address).map_err(error)?;
    let port = listener.local_addr().map_err(error)?.port();
    Ok((Listener::Tcp(listener), port))
}

/// USE_PROMETHEUS: the metrics on PROMETHEUS_ADDR at PROMETHEUS_PATH, as
/// envoyproxy/ratelimit serves them (a port for the scraper inside the
/// cluster, where Envoy Gateway's Deployment declares it). Nothing else is
/// served there.
fn prometheus_server(
    settings: &crate::config::PrometheusSettings,
    state: web::Data<AppState>,
) -> Result<actix_web::dev::ServerHandle, StartupError> {
    let bind_error = |source| StartupError::Bind {
        address: settings.address.clone(),
        source,
    };
    let listener = TcpListener::bind(&settings.address).map_err(bind_error)?;
    let path = settings.path.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(&path, web::get().to(http::routes::metrics))
    })
    .workers(1)
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(bind_error)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(err) = server.await {
            log::error!("metrics listener (PROMETHEUS_ADDR) error: {err}");
        }
    });
    Ok(handle)
}
