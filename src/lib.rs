//! A distributed rate-limiting service. Every decision is one atomic Lua
//! script run in Redis, so any number of instances share exact limits.
//!
//! # Layout
//!
//! - [`config`]: typed settings from the environment and `.env`; a bad value
//!   stops the start with a line naming the setting.
//! - [`identity`]: who is calling: `X-API-Key` (strategy `user`) or the client
//!   IP (strategy `ip`), forwarding headers only from trusted proxies.
//! - [`limiter`]: policies, quotas and decisions, and the [`limiter::Store`]
//!   trait. Knows neither HTTP nor Redis. [`limiter::rules`]: which policies
//!   apply to whom (built-in, or a TOML rules file with overrides).
//! - [`redis`]: the only code that talks to Redis: the pool of multiplexed
//!   connections, the Lua scripts of `lua/`, the key layout, error mapping.
//! - [`http`]: routes, the rate-limit middleware, JSON errors, OpenAPI,
//!   Swagger UI and ReDoc. Never builds a Redis command.
//! - [`reload`]: hot reload of the rules file on SIGHUP and on change.
//! - [`telemetry`]: the Prometheus metrics of one running application.
//! - [`startup`]: all the wiring; `main` and the tests start the service
//!   through [`startup::Application`].

pub mod app;
pub mod config;
pub mod http;
pub mod identity;
pub mod limiter;
pub mod policy;
pub mod redis;
pub mod reload;
pub mod startup;
pub mod telemetry;
