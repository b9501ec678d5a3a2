//! A distributed rate-limiting service. Every decision is one atomic Lua
//! script run in Redis, so any number of instances share exact limits.
//!
//! # Layout
//!
//! Each module uses only those listed above it (no cycles).
//!
//! - [`policy`]: what a limit is: the algorithms, a [`policy::Policy`]
//!   (limit, window, cost), the quota a store reports, the failure modes and
//!   the one duration parser. Uses nothing else.
//! - [`identity`]: who is calling: an API key or a verified JWT claim
//!   (strategy `user`, [`identity::jwt`]) or the client IP (strategy `ip`),
//!   forwarding headers only from trusted proxies.
//! - [`telemetry`]: the Prometheus metrics of one running application.
//! - [`config`]: typed settings from the environment and `.env`; a bad value
//!   stops the start with a line naming the setting. `config::env` holds the
//!   shared parsers, `config::topology` the Redis settings.
//! - [`limiter`]: the core, backend- and protocol-neutral: check requests
//!   ([`limiter::request`]: a domain, descriptors of key/value entries) in,
//!   decisions ([`limiter::decision`]) out. [`limiter::rules`]: a rule tree
//!   per domain (`tree`), the TOML rules file (`file`) and the built-in
//!   limits compiled to the `http` domain (`http`, which also builds an HTTP
//!   caller's check request). [`limiter::store`]: the `Store` trait the
//!   Redis layer implements. [`limiter::breaker`]: the circuit breaker in
//!   front of the store. [`limiter::admin`]: resets, admin overrides and
//!   the per-second refresh that shares them across instances.
//!   [`limiter::deny_cache`]: denials answered without Redis.
//!   [`limiter::local`]: the `local` failure mode. [`limiter::overrides`]:
//!   the override format.
//! - [`redis`]: the only code that talks to Redis: the pools of multiplexed
//!   connections (`pool`), Sentinel failover (`sentinel`), the Lua scripts of `lua/` (`scripts`), the key
//!   layout ([`redis::keys`]), replies and errors (`reply`), and the
//!   `Store` implementation (`store`).
//! - [`app`]: what a running service shares: the limiter over Redis, the
//!   caller identification, the settings handlers read.
//! - [`reload`]: hot reload of the rules file on SIGHUP and on change.
//! - [`envoy`]: Envoy's rate limit service (RLS v3): the gRPC server and
//!   its health service (`grpc`), envoyproxy/ratelimit's `/json` and
//!   `/healthcheck` (`json`), both answering through one translation of
//!   `RateLimitRequest` to a check request and of the decision back.
//! - [`http`]: the HTTP front ends: routes, reading the caller and route of
//!   a request (`caller`), the rate-limit middleware and its verdict
//!   (`ratelimit`), forward-auth for gateways (`forward_auth`), who may
//!   reach each route: public, decision and operator planes (`planes`), bodies read
//!   within a deadline (`body`), the access log and request ids (`access`),
//!   the admin API (`admin`), JSON errors (`errors`), OpenAPI, Swagger UI
//!   and ReDoc (`docs`). Never builds a Redis command.
//! - [`startup`]: all the wiring; `main` and the tests start the service
//!   through [`startup::Application`].

pub mod app;
pub mod config;
pub mod envoy;
pub mod http;
pub mod identity;
pub mod limiter;
pub mod policy;
pub mod redis;
pub mod reload;
pub mod startup;
pub mod telemetry;
pub mod traces;
