//! Every setting the service reads, declared once: its name, type, default,
//! meaning and the envoyproxy/ratelimit setting it mirrors (as that
//! project's `settings.Settings` struct declares its own).
//!
//! The parser (`config::env::Env`) takes defaults, bounds and choices from
//! here and refuses to read a name that is not listed; `.env.example` and
//! the README's settings table are rendered from this list
//! ([`env_example`], [`markdown_table`]) and tests keep both files equal
//! to the rendering. `rate-limiter settings` prints the values in force.

/// What a setting holds; the parser checks it, the docs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// A whole number in `min..=max`.
    Integer { min: u64, max: u64 },
    /// Milliseconds in `min..=max`.
    Millis { min: u64, max: u64 },
    /// Seconds, or a duration with a unit (`90s`, `15m`, `1h`, `1d`).
    Window,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// Free text.
    Text,
    /// Text that is never shown: errors and `rate-limiter settings` print
    /// its length only.
    Secret,
    /// A path to an existing file.
    File,
    /// A path to an existing directory.
    Directory,
    /// A path whose directory exists.
    SocketPath,
    /// An IP address or a host name.
    Host,
    /// A port, `0` picks a free one.
    Port,
    /// Comma-separated addresses or CIDR networks.
    Networks,
    /// Comma-separated `host:port`.
    Addresses,
    /// A URL (a secret's password in it is never shown).
    Url,
    /// An HTTP header name.
    Header,
    /// A number from 0 to 1.
    Ratio,
}

impl Kind {
    /// The type column of the docs.
    pub fn describe(self) -> String {
        match self {
            Kind::Bool => "bool".into(),
            Kind::Integer { min, max } => format!("integer {min}-{max}"),
            Kind::Millis { min, max } => format!("ms {min}-{max}"),
            Kind::Window => "duration".into(),
            Kind::Choice(words) => words.join(" \\| "),
            Kind::Text => "text".into(),
            Kind::Secret => "secret".into(),
            Kind::File => "file".into(),
            Kind::Directory => "directory".into(),
            Kind::SocketPath => "path".into(),
            Kind::Host => "host".into(),
            Kind::Port => "port".into(),
            Kind::Networks => "networks".into(),
            Kind::Addresses => "host:port,...".into(),
            Kind::Url => "URL".into(),
            Kind::Header => "header name".into(),
            Kind::Ratio => "0-1".into(),
        }
    }
}

/// What a setting corresponds to in envoyproxy/ratelimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrors {
    /// Nothing: this service's own.
    Own,
    /// The setting of the same name, with the same meaning.
    Same,
    /// Something close, as described.
    Like(&'static str),
}

/// The part of the service a setting belongs to (the sections of
/// `.env.example` and of the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Http,
    Redis,
    Limits,
    Identity,
    Operations,
    Envoy,
    Xds,
    Traces,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Http => "HTTP listener and logs",
            Group::Redis => "Redis",
            Group::Limits => "Limits",
            Group::Identity => "Identity",
            Group::Operations => "Operations",
            Group::Envoy => "Envoy's rate limit service (RLS v3), as envoyproxy/ratelimit",
            Group::Xds => "Configuration over xDS and Envoy Gateway's Deployment",
            Group::Traces => "OpenTelemetry traces (OTLP), the standard variables",
        }
    }
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub group: Group,
    pub kind: Kind,
    /// The default as it is written in `.env` (empty: unset, and `doc`
    /// says what that means).
    pub default: &'static str,
    pub mirrors: Mirrors,
    /// What it does, in Markdown: one paragraph.
    pub doc: &'static str,
}

impl Setting {
    pub fn is_secret(&self) -> bool {
        self.kind == Kind::Secret
    }
}

const fn s(
    name: &'static str,
    group: Group,
    kind: Kind,
    default: &'static str,
    mirrors: Mirrors,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        group,
        kind,
        default,
        mirrors,
        doc,
    }
}

use Group::*;
use Kind::*;
use Mirrors::{Like, Own, Same};

const MS: Kind = Millis {
    min: 1,
    max: 600_000,
};

/// Every setting, in the order of `.env.example`.
pub const SETTINGS: &[Setting] = &[
    // --- HTTP listener and logs ---
    s("HOST", Http, Host, "0.0.0.0", Like("`HOST`"), "Address the HTTP listener binds (the API, forward-auth, `/json`, admin, dashboard, metrics, docs)."),
    s("PORT", Http, Port, "8000", Like("`PORT` (8080)"), "Port of the HTTP listener; `0` picks a free one (logged)."),
    s("WORKERS", Http, Integer { min: 1, max: 1024 }, "", Own, "HTTP worker threads, and as many gRPC server threads; unset: one per CPU core."),
    s("ENVIRONMENT", Http, Text, "development", Own, "Free text, shown by `/health`."),
    s("LOG_LEVEL", Http, Choice(&["off", "error", "warn", "info", "debug", "trace"]), "info", Same, "`info` writes one access line per request; `RUST_LOG` refines it per module."),
    s("RUST_LOG", Http, Text, "", Own, "env_logger filters that refine `LOG_LEVEL` per module, e.g. `rate_limiter=debug`."),
    s("LOG_FORMAT", Http, Choice(&["plain", "json"]), "plain", Like("`LOG_FORMAT=json` (lines use `ts`, `level`, `message`)"), "`plain` text, or `json`: one JSON object per line."),
    s("REQUEST_BODY_TIMEOUT_MS", Http, MS, "5000", Own, "How long a client may take to send a request body; then `408` with a JSON error. Bodies are read whole (at most 64 KB) before the limiter answers, so a 429 keeps the connection open."),
    s("TLS_CERT_FILE", Http, File, "", Own, "Serve `PORT` over TLS with this certificate chain (PEM), so that a gateway on another host asks over TLS and the admin token never crosses the network in the clear. Rewritten files are served to new connections within a second, no restart."),
    s("TLS_KEY_FILE", Http, File, "", Own, "Its private key (PEM)."),
    s("TLS_CLIENT_CA_FILE", Http, File, "", Own, "Mutual TLS on `PORT`: clients must present a certificate signed by these CAs (PEM)."),
    // --- Redis ---
    s("REDIS_URL", Redis, Url, "", Like("`REDIS_URL` in its forms, with `REDIS_TYPE`"), "`redis://[user:password@]host:port[/db]`, `unix:///path`, or envoyproxy/ratelimit's forms (see `REDIS_TYPE`). Set, it wins over `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` and `REDIS_DB` (each of them set otherwise than its default is named in a start-up warning); with `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES` as well the start is refused."),
    s("REDIS_TYPE", Redis, Choice(&["single", "sentinel", "cluster"]), "", Same, "envoyproxy/ratelimit's form (any case): `REDIS_URL` is then `host:port`, a socket path, `master,host:port,...` (sentinel) or `host:port,...` (cluster), with `REDIS_AUTH` and `REDIS_SENTINEL_AUTH`. Also read when `REDIS_URL` has no scheme."),
    s("REDIS_AUTH", Redis, Secret, "", Same, "With envoyproxy/ratelimit's form: `password` or `user:password`."),
    s("REDIS_HOST", Redis, Host, "127.0.0.1", Own, "Redis host, when `REDIS_URL` is unset."),
    s("REDIS_PORT", Redis, Integer { min: 1, max: 65535 }, "6379", Own, "Redis port, when `REDIS_URL` is unset."),
    s("REDIS_PASSWORD", Redis, Secret, "", Own, "Redis password (any characters; encoded into the URL). Also the master's with Sentinel, and every node's with Cluster."),
    s("REDIS_DB", Redis, Integer { min: 0, max: 1_000_000 }, "0", Own, "Database number, when `REDIS_URL` is unset (also with Sentinel)."),
    s("REDIS_SENTINELS", Redis, Addresses, "", Like("`REDIS_TYPE=sentinel`"), "Redis Sentinel instead of one server: the sentinels, `host:port,...`. The service follows failovers by itself."),
    s("REDIS_SENTINEL_MASTER", Redis, Text, "mymaster", Own, "The master's name at the sentinels."),
    s("REDIS_SENTINEL_PASSWORD", Redis, Secret, "", Like("`REDIS_SENTINEL_AUTH`"), "The sentinels' own password (`REDIS_PASSWORD` is the master's)."),
    s("REDIS_SENTINEL_AUTH", Redis, Secret, "", Same, "With envoyproxy/ratelimit's form: the sentinels' password."),
    s("REDIS_CLUSTER_NODES", Redis, Addresses, "", Like("`REDIS_TYPE=cluster`"), "Redis Cluster instead: seed nodes, `host:port,...` (IPv6 as `[::1]:7000`)."),
    s("REDIS_USERNAME", Redis, Text, "", Own, "Redis 6+ ACL user of the data nodes (with `REDIS_PASSWORD`); unset: `default`. A URL's `user:password@` works too, and envoyproxy/ratelimit's `REDIS_AUTH=user:password`."),
    s("REDIS_SENTINEL_USERNAME", Redis, Text, "", Own, "The sentinels' ACL user (with `REDIS_SENTINEL_PASSWORD`)."),
    s("REDIS_TLS", Redis, Bool, "false", Same, "Reach Redis over TLS (a `rediss://` URL does too): the data nodes, the sentinels (see `REDIS_SENTINEL_TLS`) and every node a Cluster announces."),
    s("REDIS_TLS_CACERT", Redis, File, "", Same, "The CAs (PEM) that sign Redis's certificates; unset: the system's roots."),
    s("REDIS_TLS_CLIENT_CERT", Redis, File, "", Same, "This service's certificate (PEM) for mutual TLS, with `REDIS_TLS_CLIENT_KEY`. Checked at start: it parses, matches its key and has not expired."),
    s("REDIS_TLS_CLIENT_KEY", Redis, File, "", Same, "Its private key (PEM)."),
    s("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", Redis, Bool, "false", Same, "Accept a certificate that does not name the address dialled (IP-addressed nodes); the chain is still verified. Logged as a warning; refused with Sentinel."),
    s("REDIS_SENTINEL_TLS", Redis, Bool, "", Own, "TLS to the sentinels themselves; unset: as `REDIS_TLS`."),
    s("REDIS_POOL_SIZE", Redis, Integer { min: 1, max: 1024 }, "1", Like("`REDIS_POOL_SIZE` (10 connections)"), "Multiplexed connections per worker thread; each carries many requests at once (one measured fastest, BENCHMARKS.md)."),
    s("REDIS_BATCH_MAX", Redis, Integer { min: 1, max: 1024 }, "64", Like("`REDIS_PIPELINE_LIMIT`"), "The most checks one call of the check script decides. The checks that wait on a worker's connection while its previous call is out go to Redis as one call, each decided in order and exactly as alone; this divides Redis CPU per decision. `1` sends one call per check."),
    s("REDIS_TIMEOUT_MS", Redis, Millis { min: 1, max: 60_000 }, "100", Like("`REDIS_TIMEOUT` (10s)"), "Bound on every Redis call, connection included. Past it the failure mode decides."),
    s("REDIS_BREAKER_FAILURES", Redis, Integer { min: 1, max: 1_000_000 }, "3", Own, "Failures in a row that open the circuit breaker: requests then stop waiting for Redis and the failure mode answers at once."),
    s("REDIS_BREAKER_COOLDOWN_MS", Redis, MS, "500", Own, "How long the breaker stays open before one request probes Redis again. A probe cancelled mid-call frees its slot at once, and a successful `/health` ping closes the breaker too."),
    // --- Limits ---
    s("RATE_LIMIT_USER_LIMIT", Limits, Integer { min: 1, max: 4_294_967_295 }, "20", Own, "Requests per window for each API key (strategy `user`) and each JWT identity (`jwt`)."),
    s("RATE_LIMIT_USER_WINDOW", Limits, Window, "60", Own, "Seconds, or a duration with a unit: `90s`, `15m`, `1h`, `1d`."),
    s("RATE_LIMIT_IP_LIMIT", Limits, Integer { min: 1, max: 4_294_967_295 }, "20", Own, "Requests per window for each client IP without a key (strategy `ip`)."),
    s("RATE_LIMIT_IP_WINDOW", Limits, Window, "60", Own, "As `RATE_LIMIT_USER_WINDOW`."),
    s("RATE_LIMIT_IP_EVERY_REQUEST", Limits, Bool, "false", Own, "`true`: the `ip` limit applies to every request, counted per client IP, with or without an API key (the defence against invented keys, README \"Identity\")."),
    s("RATE_LIMIT_ALGORITHM", Limits, Choice(&["fixed_window", "sliding_window", "token_bucket", "gcra"]), "fixed_window", Own, "Algorithm of the two built-in limits (README \"Algorithms\")."),
    s("RATE_LIMIT_CONFIG", Limits, File, "", Own, "A TOML rules file (`rules.example.toml`); its policies replace the five limit settings above (each of them set otherwise than its default is named in a start-up warning). Reloaded on SIGHUP and when the file changes."),
    s("RATE_LIMIT_FAILURE_MODE", Limits, Choice(&["open", "closed", "local"]), "open", Like("`REDIS` errors fail open there"), "When Redis cannot answer: `open` allows, uncounted (`X-RateLimit-Degraded`); `closed` answers 503 with `Retry-After: 1`; `local` keeps approximate limits in each instance until Redis returns (DEPLOYMENT.md)."),
    s("RATE_LIMIT_SHADOW", Limits, Bool, "false", Own, "Shadow mode for every policy and every Envoy domain: decisions computed and counted, never enforced (`X-RateLimit-Shadow` says what would have happened)."),
    // --- Identity ---
    s("TRUSTED_PROXIES", Identity, Networks, "", Own, "Addresses or networks (`10.0.0.0/8,127.0.0.1`) of the reverse proxies whose forwarding header is believed, and who may call `/json` and forward-auth. Unset: the TCP peer is the client."),
    s("FORWARDED_HEADER", Identity, Choice(&["X-Forwarded-For", "Forwarded"]), "X-Forwarded-For", Own, "The one header those proxies write (`Forwarded` is RFC 7239's). The other is ignored, so a client cannot pick its identity with it."),
    s("API_KEY_HEADER", Identity, Header, "X-API-Key", Own, "The header that carries API keys; `Authorization` means `Authorization: Bearer <key>` (the scheme in any case)."),
    s("MAX_API_KEY_LENGTH", Identity, Integer { min: 1, max: 4096 }, "256", Own, "Longest API key accepted, in bytes (longer: 400)."),
    s("JWT_CLAIM", Identity, Text, "", Own, "JWT identities: the claim of a verified `Authorization: Bearer <token>` that identifies the caller (e.g. `sub`), counted as strategy `jwt` and limited by the `user` policies. A token that does not verify, or a claim that is not a plain string of at most 256 bytes, gets 401 and is never counted. Needs one of `JWT_SECRET`, `JWT_PUBLIC_KEY_FILE`, `JWT_JWKS_FILE`."),
    s("JWT_SECRET", Identity, Secret, "", Own, "HS256: the shared secret."),
    s("JWT_PUBLIC_KEY_FILE", Identity, File, "", Own, "RS256 or ES256: a PEM public key."),
    s("JWT_JWKS_FILE", Identity, File, "", Own, "A JWKS document; the key is chosen by the token's `kid` and decides the algorithm. Reread every second: rotated keys apply without a restart (a broken file is refused, the keys in force stay)."),
    s("JWT_ISSUER", Identity, Text, "", Own, "Checked against the token's `iss` when set."),
    s("JWT_AUDIENCE", Identity, Text, "", Own, "Checked against the token's `aud` when set."),
    // --- Operations ---
    s("ADMIN_TOKEN", Operations, Secret, "", Own, "Enables `/admin`; every call needs `Authorization: Bearer <token>` (16+ printable characters). Unset: `/admin` is a 404 and the OpenAPI document lists no admin path."),
    s("OPERATOR_NETWORKS", Operations, Networks, "127.0.0.0/8,::1/128", Own, "Peers that may read `/metrics`, `/rlconfig` and `/dashboard/stats` without the admin token (anyone else sends `Authorization: Bearer <ADMIN_TOKEN>` or gets 401); `none` for nobody. README \"Security model\"."),
    // --- Envoy ---
    s("GRPC_HOST", Envoy, Host, "0.0.0.0", Same, "Address of the gRPC listener: `envoy.service.ratelimit.v3.RateLimitService` and the gRPC health service."),
    s("GRPC_PORT", Envoy, Port, "8081", Same, "Its port; `0` picks a free one (logged)."),
    s("GRPC_UDS", Envoy, SocketPath, "", Same, "A Unix socket path: gRPC there instead of the TCP port."),
    s("GRPC_SERVER_USE_TLS", Envoy, Bool, "false", Same, "Serve gRPC over TLS, with the two files below."),
    s("GRPC_SERVER_TLS_CERT", Envoy, File, "", Same, "The gRPC listener's certificate chain (PEM); rewritten files are served to new connections within a second."),
    s("GRPC_SERVER_TLS_KEY", Envoy, File, "", Same, "Its private key (PEM)."),
    s("GRPC_CLIENT_TLS_CACERT", Envoy, File, "", Same, "Mutual TLS: Envoy must present a certificate signed by these CAs (PEM)."),
    s("GRPC_SERVER_TLS_CA_CERT", Envoy, File, "", Like("what Envoy Gateway sets"), "The same as `GRPC_CLIENT_TLS_CACERT` (which wins when both are set)."),
    s("GRPC_CLIENT_TLS_SAN", Envoy, Text, "", Same, "With mutual TLS: the client certificate must name this DNS name or IP address."),
    s("RUNTIME_ROOT", Envoy, Directory, "", Like("`RUNTIME_ROOT` (no default here)"), "envoyproxy/ratelimit's YAML directory, re-read within a second of a change. Unset: no Envoy domains (every descriptor of an unknown domain is answered OK)."),
    s("RUNTIME_SUBDIRECTORY", Envoy, Text, "", Same, "Below `RUNTIME_ROOT`."),
    s("RUNTIME_APPDIRECTORY", Envoy, Text, "config", Same, "Below that: the directory of the YAML files."),
    s("RUNTIME_WATCH_ROOT", Envoy, Bool, "true", Same, "Watch the root rather than the files (for symlink swaps)."),
    s("RUNTIME_IGNOREDOTFILES", Envoy, Bool, "false", Same, "Skip files whose names start with a dot (`true` for a Kubernetes ConfigMap)."),
    s("MERGE_DOMAIN_CONFIG", Envoy, Bool, "false", Same, "Merge files that name the same domain instead of refusing them."),
    s("ENVOY_KEY_FORMAT", Envoy, Choice(&["native", "ratelimit"]), "native", Own, "`ratelimit`: count fixed windows under envoyproxy/ratelimit's own keys and values, so both can share one Redis during a migration."),
    s("CACHE_KEY_PREFIX", Envoy, Text, "", Same, "With `ENVOY_KEY_FORMAT=ratelimit`: the prefix of those keys."),
    s("FORCE_START_WITHOUT_INITIAL_CONFIG", Envoy, Bool, "false", Same, "Start even if `RUNTIME_ROOT` fails to load (the gRPC health service then says NOT_SERVING until a good configuration loads)."),
    s("SHADOW_MODE", Envoy, Bool, "false", Same, "An over-limit answer becomes OK overall (the statuses still say OVER_LIMIT)."),
    s("RLS_HTTP_DOMAIN", Envoy, Bool, "false", Own, "Serve the HTTP API's own `http` domain over gRPC and `/json`. Off, it is answered as an unknown domain (OK, nothing counted): whoever can call those could otherwise charge, refund or name any key's counters."),
    s("JSON_API", Envoy, Choice(&["trusted", "open", "off"]), "trusted", Like("`/json` on `PORT`, open to all"), "Who may call `POST /json` on `PORT`: `trusted` (peers in `TRUSTED_PROXIES`; 403 for others), `open` (anyone, as envoyproxy/ratelimit on its private port), `off` (404)."),
    s("LIMIT_RESPONSE_HEADERS_ENABLED", Envoy, Bool, "false", Same, "Envoy answers carry the three headers below."),
    s("LIMIT_LIMIT_HEADER", Envoy, Header, "RateLimit-Limit", Same, "Name of the limit header."),
    s("LIMIT_REMAINING_HEADER", Envoy, Header, "RateLimit-Remaining", Same, "Name of the remaining header."),
    s("LIMIT_RESET_HEADER", Envoy, Header, "RateLimit-Reset", Same, "Name of the reset header."),
    s("NEAR_LIMIT_RATIO", Envoy, Ratio, "0.8", Same, "From this share of a limit, hits count as `near_limit` in the metrics."),
    // --- Configuration over xDS, Envoy Gateway's Deployment ---
    s("CONFIG_TYPE", Xds, Choice(&["FILE", "GRPC_XDS_SOTW"]), "FILE", Same, "Where the Envoy domains come from: `FILE` (`RUNTIME_ROOT`) or `GRPC_XDS_SOTW`, the `RateLimitConfig` resources of an xDS server (Envoy Gateway's), State of the World on the aggregated discovery service. With xDS, `RUNTIME_ROOT` and the settings below it are ignored (Envoy Gateway sets them to a directory that does not exist)."),
    s("CONFIG_GRPC_XDS_SERVER_URL", Xds, Text, "localhost:18000", Same, "The xDS server, `host:port`."),
    s("CONFIG_GRPC_XDS_NODE_ID", Xds, Text, "default", Same, "The node id sent to it (Envoy Gateway serves `envoy-ratelimit`)."),
    s("CONFIG_GRPC_XDS_NODE_METADATA", Xds, Text, "", Same, "Node metadata, `key1:val1,key2=val2`."),
    s("CONFIG_GRPC_XDS_SERVER_USE_TLS", Xds, Bool, "false", Same, "Reach the xDS server over TLS."),
    s("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", Xds, File, "", Same, "This service's certificate (PEM) for mutual TLS to the xDS server; re-read at every connection."),
    s("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", Xds, File, "", Same, "Its private key (PEM)."),
    s("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", Xds, File, "", Same, "The CAs (PEM) that sign the xDS server's certificate; unset: the system's roots."),
    s("CONFIG_GRPC_XDS_SERVER_TLS_SAN", Xds, Text, "", Same, "The name the xDS server's certificate must carry; unset: the host of `CONFIG_GRPC_XDS_SERVER_URL`."),
    s("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", Xds, Window, "10s", Same, "The wait before reconnecting to the xDS server after the first failure; it doubles with each failure in a row. Every reconnection waits at least this long, so a server that resets the stream at once is not called in a loop."),
    s("XDS_CLIENT_BACKOFF_MAX_INTERVAL", Xds, Window, "60s", Same, "The longest wait between reconnections."),
    s("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", Xds, Ratio, "0.5", Same, "Each wait is spread by up to this share either way, so replicas do not reconnect in step."),
    s("XDS_CLIENT_BACKOFF_JITTER", Xds, Bool, "true", Same, "`false`: waits without the random spread."),
    s("USE_PROMETHEUS", Xds, Bool, "false", Same, "Also serve the metrics on `PROMETHEUS_ADDR` (a listener of its own, for a scraper inside the cluster; `/metrics` on `PORT` stays)."),
    s("PROMETHEUS_ADDR", Xds, Text, ":9090", Same, "`[host]:port` of that listener (Envoy Gateway sets `:19001`)."),
    s("PROMETHEUS_PATH", Xds, Text, "/metrics", Same, "Its path."),
    s("PROMETHEUS_MAPPER_YAML", Xds, Text, "", Like("a statsd-exporter mapping"), "Accepted and ignored: the metrics already carry envoyproxy/ratelimit's Prometheus names and labels (`ratelimit_service_rate_limit_*` with `domain`, `key1`, `key2`)."),
    s("USE_STATSD", Xds, Bool, "false", Like("`USE_STATSD` (default true there)"), "Accepted; `true` is warned about: there is no statsd sink here, Prometheus metrics instead."),
    s("REDIS_SOCKET_TYPE", Xds, Choice(&["tcp", "unix"]), "", Same, "Accepted: the form of `REDIS_URL` (`host:port` or a socket path) already says which."),
    s("TRACING_ENABLED", Xds, Bool, "false", Same, "envoyproxy/ratelimit's tracing switch: on, spans go to `OTEL_EXPORTER_OTLP_ENDPOINT` (or the OTLP default), and the five settings below fill the OpenTelemetry settings left unset."),
    s("TRACING_SERVICE_NAME", Xds, Text, "", Same, "`service.name`, when `OTEL_SERVICE_NAME` is unset."),
    s("TRACING_SERVICE_NAMESPACE", Xds, Text, "", Same, "`service.namespace` of the spans."),
    s("TRACING_SERVICE_INSTANCE_ID", Xds, Text, "", Same, "`service.instance.id` of the spans (Envoy Gateway sets the pod name)."),
    s("TRACING_SAMPLING_RATE", Xds, Ratio, "", Same, "The share of traces kept, when `OTEL_TRACES_SAMPLER` is unset (a parent-based ratio sampler)."),
    s("TRACING_EXPORTER_PROTOCOL", Xds, Choice(&["http", "grpc"]), "", Same, "OTLP over `http` or `grpc`, when `OTEL_EXPORTER_OTLP_PROTOCOL` is unset."),
    // --- Traces ---
    s("OTEL_EXPORTER_OTLP_ENDPOINT", Traces, Url, "", Like("`TRACING_EXPORTER_PROTOCOL` and its endpoint"), "The collector's base URL (HTTP appends `/v1/traces`). Tracing is off unless an endpoint is set or `OTEL_TRACES_EXPORTER=otlp`; then a span per HTTP request and per gRPC call, never a key, token or client address."),
    s("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Traces, Url, "", Own, "The traces URL, used as it is (wins over the base URL)."),
    s("OTEL_EXPORTER_OTLP_PROTOCOL", Traces, Choice(&["grpc", "http/protobuf"]), "", Own, "`grpc` (port 4317) or `http/protobuf` (4318); unset: `http/protobuf`."),
    s("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Traces, Choice(&["grpc", "http/protobuf"]), "", Own, "The same for traces only (wins)."),
    s("OTEL_SERVICE_NAME", Traces, Text, "rate-limiter", Like("`TRACING_SERVICE_NAME`"), "The `service.name` of the spans."),
    s("OTEL_TRACES_SAMPLER", Traces, Choice(&["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"]), "parentbased_always_on", Like("`TRACING_SAMPLING_RATE`"), "Which traces are kept; parent-based ones follow a caller's sampled `traceparent`."),
    s("OTEL_TRACES_SAMPLER_ARG", Traces, Ratio, "1", Own, "The ratio of the `traceidratio` samplers."),
    s("OTEL_TRACES_EXPORTER", Traces, Choice(&["otlp", "none"]), "", Like("`TRACING_ENABLED`"), "`otlp` turns tracing on (to `localhost` when no endpoint is set), `none` off."),
    s("OTEL_SDK_DISABLED", Traces, Bool, "false", Own, "`true` turns tracing off whatever else is set."),
];

/// The setting called `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The groups, in the order of `.env.example` and the README.
pub(super) const GROUPS: [Group; 8] = [
    Group::Http,
    Group::Redis,
    Group::Limits,
    Group::Identity,
    Group::Operations,
    Group::Envoy,
    Group::Xds,
    Group::Traces,
];

pub use super::render::{current, env_example, markdown_table};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_values_hide_secrets() {
        let shown = current(|k| match k {
            "ADMIN_TOKEN" => Some("s3cret-token-0123456789".into()),
            "REDIS_URL" => Some("redis://app:hunter2@redis:6379/0".into()),
            "PORT" => Some("9000".into()),
            _ => None,
        });
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("ADMIN_TOKEN=<redacted, 23 bytes>"),
            "{shown}"
        );
        assert!(shown.contains("REDIS_URL=redis://app:<redacted>@redis:6379/0"));
        let port = shown.lines().find(|l| l.starts_with("PORT=")).unwrap();
        assert!(
            port.starts_with("PORT=9000 ") && port.ends_with("# set"),
            "{port}"
        );
        let host = shown.lines().find(|l| l.starts_with("HOST=")).unwrap();
        assert!(host.ends_with("# default"), "{host}");
        assert_eq!(
            shown.lines().filter(|l| !l.starts_with('#')).count(),
            SETTINGS.len()
        );
    }

    #[test]
    fn names_are_unique_and_documented() {
        let mut names = std::collections::BTreeSet::new();
        for setting in SETTINGS {
            assert!(names.insert(setting.name), "{} listed twice", setting.name);
            assert!(!setting.doc.is_empty(), "{} has no doc", setting.name);
            assert!(
                !setting.doc.contains('\n'),
                "{}: one paragraph",
                setting.name
            );
            if let Kind::Choice(words) = setting.kind {
                assert!(
                    setting.default.is_empty() || words.contains(&setting.default),
                    "{}: default not among the choices",
                    setting.name
                );
            }
            assert!(
                !setting.is_secret() || setting.default.is_empty(),
                "{}: a secret has no default",
                setting.name
            );
        }
    }

    #[test]
    fn comments_wrap_at_78_columns() {
        for line in env_example().lines() {
            assert!(line.len() <= 80 || !line.starts_with('#'), "{line}");
        }
    }
}
