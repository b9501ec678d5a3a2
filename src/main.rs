use std::process::ExitCode;

use rate_limiter::config::{LogFormat, Settings};
use rate_limiter::http::access::ACCESS_TARGET;
use rate_limiter::startup::Application;

/// mimalloc instead of glibc's malloc: the request path allocates and frees
/// many small objects across threads, where glibc spent ~10 % of the CPU
/// (perf); see BENCHMARKS.md for the measured difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is a configuration error.
    if let Err(err) = dotenvy::dotenv() {
        if !err.not_found() {
            eprintln!("rate-limiter: cannot read .env: {err}");
            return ExitCode::from(2);
        }
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("rate-limiter: {err}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::new();
    logger.filter_level(settings.log_level);
    // RUST_LOG, when set and not empty, refines LOG_LEVEL per module.
    if let Some(filters) = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        logger.parse_filters(&filters);
    }
    if settings.log_format == LogFormat::Json {
        logger.format(|out, record| {
            use std::io::Write;
            // Access lines are JSON objects already; every other line
            // becomes one.
            if record.target() == ACCESS_TARGET {
                return writeln!(out, "{}", record.args());
            }
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(out, "{line}")
        });
    }
    logger.init();

    let host = settings.host.clone();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            log::error!("{err}");
            eprintln!("rate-limiter: {err}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "rate-limiter {} listening on {host}:{}",
        env!("CARGO_PKG_VERSION"),
        app.port()
    );
    match app.run_until_stopped().await {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            log::error!("server error: {err}");
            ExitCode::from(1)
        }
    }
}
