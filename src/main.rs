use std::process::ExitCode;

use rate_limiter::config::{LogFormat, Settings};
use rate_limiter::http::access::ACCESS_TARGET;
use rate_limiter::startup::Application;

/// mimalloc instead of glibc's malloc: the request path allocates and frees
/// many small objects across threads, where glibc spent ~10 % of the CPU
/// (perf); see BENCHMARKS.md for the measured difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `rate-limiter config check DIR [--merge-domain-configs]`: validates a
/// directory of envoyproxy/ratelimit YAML files offline, as its
/// `config_check_cmd` does.
fn config_check(args: &[String]) -> ExitCode {
    let (mut dir, mut merge) = (None, false);
    for arg in args {
        match arg.as_str() {
            "--merge-domain-configs" | "-merge_domain_configs" => merge = true,
            _ if dir.is_none() => dir = Some(std::path::PathBuf::from(arg)),
            _ => dir = None,
        }
    }
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        eprintln!("usage: rate-limiter config check DIR [--merge-domain-configs]  (DIR: a directory of envoyproxy/ratelimit YAML files)");
        return ExitCode::from(2);
    };
    match rate_limiter::limiter::rules::erl::check_dir(&dir, merge) {
        Ok(config) => {
            println!(
                "all rate limit configs ok ({} files, {} domains)",
                config.files.len(),
                config.domains.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error loading rate limit configs: {err}");
            ExitCode::from(1)
        }
    }
}

/// `rate-limiter settings`: what `rate-limiter` would run with.
fn print_settings() -> ExitCode {
    if let Err(code) = load_dotenv() {
        return code;
    }
    if let Err(err) = Settings::from_env() {
        eprintln!("rate-limiter: {err}");
        return ExitCode::from(2);
    }
    print!(
        "{}",
        rate_limiter::config::list::current(|name| std::env::var(name).ok())
    );
    ExitCode::SUCCESS
}

/// Loads `.env` into the environment: a missing one is normal, a malformed
/// one a configuration error.
fn load_dotenv() -> Result<(), ExitCode> {
    match dotenvy::dotenv() {
        Err(err) if !err.not_found() => {
            eprintln!("rate-limiter: cannot read .env: {err}");
            Err(ExitCode::from(2))
        }
        _ => Ok(()),
    }
}

const USAGE: &str = "\
usage: rate-limiter                 run the service (settings from the environment and .env;
                                    see .env.example and the README's Settings)
       rate-limiter settings        check the settings and print each one in force
                                    (secrets redacted), marked set or default
       rate-limiter config check DIR [--merge-domain-configs]
                                    validate a directory of envoyproxy/ratelimit YAML files
       rate-limiter --help | -h     this text
       rate-limiter --version | -V  the version";

/// Run as `/bin/ratelimit` (Envoy Gateway's command for its rate limit
/// Deployment, where only the image is ours), the HTTP port defaults to
/// envoyproxy/ratelimit's 8080, where that Deployment's probes ask for
/// `/healthcheck`. Called before any thread starts.
fn ratelimit_defaults() {
    let invoked = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&invoked).file_name();
    if name != Some(std::ffi::OsStr::new("ratelimit")) {
        return;
    }
    // A PORT in .env still wins (a malformed .env is reported later).
    let _ = dotenvy::dotenv();
    if std::env::var_os("PORT").is_none() {
        std::env::set_var("PORT", "8080");
    }
}

fn main() -> ExitCode {
    ratelimit_defaults();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(run())
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("config") if args.get(1).map(String::as_str) == Some("check") => {
            return config_check(&args[2..]);
        }
        Some("settings") if args.len() == 1 => return print_settings(),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V" | "version") => {
            println!("rate-limiter {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        // A typo must not start the whole service on 0.0.0.0.
        Some(other) => {
            eprintln!("rate-limiter: unknown argument {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if let Err(code) = load_dotenv() {
        return code;
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
    if let Some(filters) = &settings.rust_log {
        logger.parse_filters(filters);
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
    for warning in &settings.warnings {
        log::warn!("{warning}");
    }

    let host = settings.host.clone();
    let (grpc_host, grpc_uds) = (
        settings.envoy.grpc_host.clone(),
        settings.envoy.grpc_uds.clone(),
    );
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            log::error!("{err}");
            eprintln!("rate-limiter: {err}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "rate-limiter {} listening on {host}:{} (Envoy rate limit service: {})",
        env!("CARGO_PKG_VERSION"),
        app.port(),
        match &grpc_uds {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("{grpc_host}:{}", app.grpc_port()),
        }
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
