//! A distributed rate-limiting service. Every decision is one atomic Lua
//! script run in Redis, so any number of instances share exact limits.
//!
//! # Layout
//!
//! Each module uses only those listed above it (no cycles). Sub-modules in
//! parentheses; every file holds one idea.
//!
//! - [`policy`]: what a limit is: a [`policy::Policy`] (limit, window,
//!   cost); the algorithms and failure modes (`mode`); Envoy's units, a
//!   policy's label and the window parser (`unit`); the quota a store
//!   reports and the client-facing times derived from it, such as the IETF
//!   effective window (`quota`). Uses nothing else.
//! - [`identity`]: who is calling: an API key, a verified JWT claim
//!   ([`identity::jwt`]) or the client IP, read from the forwarding header
//!   of trusted proxies only (`forwarded`).
//! - [`telemetry`]: the Prometheus metrics of one running application
//!   (those of the xDS client and of concurrency policies in `parts`).
//! - [`tls`]: one TLS stack (rustls, ring) for Redis and both listeners:
//!   certificate files checked at start, served certificates that reload
//!   when their files change, mTLS with a pinned client name.
//! - [`config`]: typed settings from the environment and `.env`; a bad value
//!   stops the start with a line naming the setting. [`config::list`]
//!   declares every setting once (type, default, meaning, what it mirrors
//!   in envoyproxy/ratelimit); `env` holds the parsers that read it,
//!   `topology` the Redis settings (TLS included), `envoy` the rate limit
//!   service's, `listeners` the TLS of both listeners, `xds` the
//!   configuration over xDS and Envoy Gateway's Deployment, `traces` the
//!   OpenTelemetry ones; `render` writes `.env.example` and the README's
//!   table from the list.
//! - [`limiter`]: the core, backend- and protocol-neutral: check requests
//!   ([`limiter::request`]: a domain, descriptors of key/value entries) in,
//!   decisions ([`limiter::decision`]) out; deciding in `check`, reading
//!   without counting in `status`. [`limiter::rules`]: a rule tree per
//!   domain (`tree`), resolution of a request against it (`resolve`), what
//!   an override does (`action`), the TOML rules file (`file`), the built-in
//!   limits compiled to the `http` domain (`http`, which also builds an HTTP
//!   caller's check request), and envoyproxy/ratelimit's YAML
//!   ([`limiter::rules::erl`]: two loaders, one compiler: `files` found as
//!   it finds them, `xds` the `RateLimitConfig` resources of an xDS server
//!   turned into the same YAML roots, `yaml` read as it reads them). [`limiter::store`]: the `Store` trait the Redis
//!   layer implements. [`limiter::breaker`]: the circuit breaker in front of
//!   the store. [`limiter::admin`]: resets, admin overrides and the
//!   per-second refresh that shares them across instances.
//!   [`limiter::overrides`]: the override format. [`limiter::deny_cache`]:
//!   denials answered without Redis. [`limiter::local`]: the `local`
//!   failure mode. [`limiter::top`]: the top offenders. [`limiter::slices`]:
//!   quota slices of hot subjects (`back`: the units given back).
//! - [`redis`]: the only code that talks to Redis: the pools of multiplexed
//!   connections (`pool`), one call with its deadline (`call`), coalescing
//!   of checks into one script call (`batch`), Sentinel failover
//!   (`sentinel`), the Lua scripts of `lua/` ([`redis::scripts`]), the key
//!   layout ([`redis::keys`]), replies and errors (`reply`), and the `Store`
//!   implementation (`store`).
//! - [`app`]: what a running service shares: the limiter over Redis, the
//!   caller identification, the settings handlers read.
//! - [`reload`]: hot reload of the rules file on SIGHUP and on change.
//! - [`traces`]: OpenTelemetry spans over OTLP, off unless configured.
//! - [`envoy`]: Envoy's rate limit service (RLS v3): a `RateLimitRequest`
//!   as a check request (`request`), the decision as statuses and headers
//!   (`response`), envoyproxy/ratelimit's metrics (`stats`); served over
//!   gRPC with its health service ([`envoy::grpc`]; TLS handshakes in
//!   `tls`) and as `/json` and `/healthcheck` ([`envoy::json`]); its
//!   domains kept in step with an xDS server ([`envoy::xds`], Envoy
//!   Gateway's controller).
//! - [`http`]: the HTTP front ends: routes (`routes`), reading the caller
//!   and route of a request (`caller`), the rate-limit middleware and its
//!   verdict (`ratelimit`; `headers` the quota headers of a decision and
//!   those of an answer made without Redis), concurrency leases (`leases`: held while
//!   `/api/resource` runs, and `/api/leases`), forward-auth for gateways
//!   (`forward_auth`), who
//!   may reach each route: public, decision and operator planes (`planes`),
//!   bodies read within a deadline (`body`), the access log and request ids
//!   (`access`), the admin API ([`http::admin`]: identities and overrides,
//!   `descriptors`, `top`, `types`), the dashboard (`dashboard`), JSON
//!   errors (`errors`), OpenAPI, Swagger UI and ReDoc (`docs`). Never builds
//!   a Redis command.
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
pub mod tls;
pub mod traces;
