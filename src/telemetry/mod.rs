//! Prometheus metrics, one registry per running application (so tests that
//! start several in one process never share counters).
//!
//! Label values are always drawn from small, fixed sets (strategy, policy
//! name from the configuration, decision, error kind, route pattern, status):
//! no label ever holds an API key, an IP or any other per-client value.

mod parts;

pub use parts::{ConcurrencyMetrics, SliceMetrics, XdsMetrics};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// strategy, policy, decision: allowed | denied | shadow_denied |
    /// degraded | local_allowed | local_denied | blocked | unlimited
    pub decisions: IntCounterVec,
    /// strategy, policy: allowed with less than 20 % of the limit left.
    pub near_limit: IntCounterVec,
    pub redis_latency: Histogram,
    /// Checks decided per check-script call (coalescing, REDIS_BATCH_MAX).
    pub redis_checks_per_call: Histogram,
    /// kind: timeout | connection | script | other | circuit_open
    pub redis_errors: IntCounterVec,
    pub breaker_open: IntGauge,
    pub deny_cache_hits: IntCounter,
    pub deny_cache_entries: IntGauge,
    pub script_reloads: IntCounter,
    /// result: success | failure
    pub rules_reloads: IntCounterVec,
    /// route (the matched pattern, or "unmatched"), method, status
    pub http_requests: IntCounterVec,
    /// envoyproxy/ratelimit's metrics, with its names and labels.
    pub envoy: EnvoyMetrics,
    /// listener (`http`, `grpc`): when its certificate in force expires.
    pub tls_certificate_expiry: IntGaugeVec,
    /// 1 when Redis is reached over TLS.
    pub redis_tls: IntGauge,
    /// The xDS client (CONFIG_TYPE=GRPC_XDS_SOTW).
    pub xds: XdsMetrics,
    /// Concurrency policies (requests in flight).
    pub concurrency: ConcurrencyMetrics,
    pub slices: SliceMetrics,
}

/// envoyproxy/ratelimit's metrics under the names of its Prometheus mapper,
/// so dashboards built for it keep working. Labels come from the
/// configuration (the rule's stats key); request values only where a rule
/// asks for them (`detailed_metric`), and then at most [`MAX_DETAILED`]
/// distinct series, the rest counted under `other`.
pub struct EnvoyMetrics {
    /// domain, key1, key2: hits (not requests).
    pub total_hits: IntCounterVec,
    pub over_limit: IntCounterVec,
    pub near_limit: IntCounterVec,
    pub within_limit: IntCounterVec,
    pub shadow_mode: IntCounterVec,
    /// domain (of the configuration, or `other`).
    pub domain_not_found: IntCounterVec,
    /// err_type: redis_error | service_error
    pub errors: IntCounterVec,
    /// grpc_method
    pub total_requests: IntCounterVec,
    pub response_time: prometheus::HistogramVec,
    pub config_load_success: IntCounter,
    pub config_load_error: IntCounter,
    pub global_shadow_mode: IntCounter,
    /// 1 while the Envoy configuration is loaded and in force.
    pub config_loaded: IntGauge,
    detailed: std::sync::Mutex<std::collections::HashSet<(String, String, String)>>,
}

/// Distinct request-valued label sets kept by `detailed_metric` rules.
pub const MAX_DETAILED: usize = 1000;

impl EnvoyMetrics {
    /// The labels of a rule's counts: `detailed` ones (from request values)
    /// only while fewer than [`MAX_DETAILED`] exist, else `other`.
    pub fn labels<'a>(
        &self,
        domain: &'a str,
        key1: &'a str,
        key2: &'a str,
        detailed: bool,
    ) -> [&'a str; 3] {
        if detailed {
            let labels = (domain.to_owned(), key1.to_owned(), key2.to_owned());
            let mut seen = self.detailed.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&labels) {
                if seen.len() >= MAX_DETAILED {
                    return [domain, "other", "other"];
                }
                seen.insert(labels);
            }
        }
        [domain, key1, key2]
    }

    /// Whether these labels are a `detailed_metric` rule's (request values)
    /// or the `other` they overflow into.
    pub fn is_detailed(&self, domain: &str, key1: &str, key2: &str) -> bool {
        (key1 == "other" && key2 == "other")
            || self
                .detailed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(domain.to_owned(), key1.to_owned(), key2.to_owned()))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let decisions = counter_vec(
            "ratelimit_requests_total",
            "Rate-limited requests by strategy, policy and decision.",
            &["strategy", "policy", "decision"],
        );
        let near_limit = counter_vec(
            "ratelimit_near_limit_total",
            "Allowed requests that left less than 20% of a policy's limit.",
            &["strategy", "policy"],
        );
        let redis_errors = counter_vec(
            "ratelimit_redis_errors_total",
            "Failed Redis calls by kind.",
            &["kind"],
        );
        let rules_reloads = counter_vec(
            "ratelimit_rules_reloads_total",
            "Reloads of the rules file by result.",
            &["result"],
        );
        let http_requests = counter_vec(
            "http_requests_total",
            "HTTP requests by route pattern, method and status.",
            &["route", "method", "status"],
        );
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimit_redis_call_duration_seconds",
                "Duration of Redis calls (check script, health ping), failures included.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(redis_latency.clone()))
            .expect("unique metric");
        let redis_checks_per_call = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimit_redis_checks_per_call",
                "Checks decided by one call of the check script: the checks waiting on one \
                 connection are coalesced (REDIS_BATCH_MAX).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(redis_checks_per_call.clone()))
            .expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let rule = |name: &str, help: &str| {
            counter_vec(
                &format!("ratelimit_service_rate_limit_{name}"),
                help,
                &["domain", "key1", "key2"],
            )
        };
        let response_time = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ratelimit_service_response_time_seconds",
                "Time to answer ShouldRateLimit.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["grpc_method"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(response_time.clone()))
            .expect("unique metric");
        let envoy = EnvoyMetrics {
            total_hits: rule("total_hits", "Hits checked, by rule."),
            over_limit: rule("over_limit", "Hits over the limit, by rule."),
            near_limit: rule(
                "near_limit",
                "Hits within the limit past NEAR_LIMIT_RATIO of it, by rule.",
            ),
            within_limit: rule("within_limit", "Hits within the limit, by rule."),
            shadow_mode: rule(
                "shadow_mode",
                "Hits over a shadow-mode limit (allowed), by rule.",
            ),
            domain_not_found: counter_vec(
                "ratelimit_service_rate_limit_domain_not_found",
                "Descriptors of a domain the configuration does not have.",
                &["domain"],
            ),
            errors: counter_vec(
                "ratelimit_service_should_rate_limit_error",
                "ShouldRateLimit calls that failed, by cause.",
                &["err_type"],
            ),
            total_requests: counter_vec(
                "ratelimit_service_total_requests",
                "ShouldRateLimit calls.",
                &["grpc_method"],
            ),
            response_time,
            config_load_success: counter(
                "ratelimit_service_config_load_success",
                "Loads of the Envoy configuration that succeeded.",
            ),
            config_load_error: counter(
                "ratelimit_service_config_load_error",
                "Loads of the Envoy configuration that failed (the previous one stays).",
            ),
            global_shadow_mode: counter(
                "ratelimit_service_global_shadow_mode",
                "Over-limit answers turned into OK by SHADOW_MODE.",
            ),
            config_loaded: gauge(
                "ratelimit_service_config_loaded",
                "1 while an Envoy configuration is in force.",
            ),
            detailed: Default::default(),
        };
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "ratelimit_tls_certificate_expiry_timestamp_seconds",
                "When the certificate a listener serves expires, in Unix seconds (alert on it minus time()).",
            ),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_certificate_expiry.clone()))
            .expect("unique metric");
        let xds = XdsMetrics::new(&registry);
        let concurrency = ConcurrencyMetrics::new(&registry);
        let slices = SliceMetrics::new(&registry);
        Metrics {
            envoy,
            xds,
            concurrency,
            slices,
            tls_certificate_expiry,
            redis_tls: gauge(
                "ratelimit_redis_tls",
                "1 when Redis is reached over TLS, else 0.",
            ),
            breaker_open: gauge(
                "ratelimit_redis_breaker_open",
                "1 while the Redis circuit breaker is open, else 0.",
            ),
            deny_cache_entries: gauge(
                "ratelimit_deny_cache_entries",
                "Identities currently remembered as denied.",
            ),
            deny_cache_hits: counter(
                "ratelimit_deny_cache_hits_total",
                "Denials answered from the in-process deny cache, without Redis.",
            ),
            script_reloads: counter(
                "ratelimit_script_reloads_total",
                "Times the Lua script was loaded again after a NOSCRIPT reply.",
            ),
            decisions,
            near_limit,
            redis_latency,
            redis_checks_per_call,
            redis_errors,
            rules_reloads,
            http_requests,
            registry,
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
