//! Prometheus metrics, one registry per running application (so tests that
//! start several in one process never share counters).
//!
//! Label values are always drawn from small, fixed sets (strategy, policy
//! name from the configuration, decision, error kind, route pattern, status):
//! no label ever holds an API key, an IP or any other per-client value.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// strategy, policy, decision: allowed | denied | shadow_denied |
    /// degraded | local_allowed | local_denied | blocked | unlimited
    pub decisions: IntCounterVec,
    /// strategy, policy: allowed with less than 20 % of the limit left.
    pub near_limit: IntCounterVec,
    pub redis_latency: Histogram,
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
        Metrics {
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
