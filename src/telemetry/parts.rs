//! The metrics of the xDS client, of concurrency policies and of quota
//! slices, registered in the application's registry.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// Concurrency policies, by policy (its name; for an Envoy rule, its stats
/// key): bounded by the configuration.
pub struct ConcurrencyMetrics {
    /// Leases granted by this instance.
    pub acquired: IntCounterVec,
    /// Leases released through this instance (a release of a lease
    /// already gone is not one).
    pub released: IntCounterVec,
    /// Leases found expired without release (a holder died or forgot):
    /// the leak counter to alert on.
    pub expired: IntCounterVec,
    /// Acquired minus released minus expired, as this instance saw them:
    /// the sum over instances is the fleet's requests in flight.
    pub in_flight: IntGaugeVec,
    /// The policy's limit (in flight at once, per subject).
    pub limit: IntGaugeVec,
}

impl ConcurrencyMetrics {
    /// Counts what one store reply says about a concurrency policy.
    pub fn observe(&self, policy: &str, limit: u32, cost: i64, granted: bool, expired: u32) {
        self.limit
            .with_label_values(&[policy])
            .set(i64::from(limit));
        let in_flight = self.in_flight.with_label_values(&[policy]);
        if expired > 0 {
            self.expired
                .with_label_values(&[policy])
                .inc_by(u64::from(expired));
            in_flight.sub(i64::from(expired));
        }
        if cost > 0 && granted {
            self.acquired.with_label_values(&[policy]).inc();
            in_flight.inc();
        } else if cost < 0 && granted {
            self.released.with_label_values(&[policy]).inc();
            in_flight.dec();
        }
    }
}

/// Quota slices, by policy (bounded by the configuration, as above).
/// Local decisions per Redis call is
/// `rate(ratelimit_slice_decisions_total[1m]) / rate(ratelimit_slice_calls_total[1m])`.
pub struct SliceMetrics {
    /// result: taken | empty (slice takes asked of Redis).
    pub calls: IntCounterVec,
    /// what: taken | spent | returned | lost (units: taken from Redis,
    /// spent on requests, given back, and dropped unspent: a reset, or a
    /// window that ended before they could go back).
    pub units: IntCounterVec,
    /// result: allowed | denied (decisions made from a slice, without
    /// Redis).
    pub decisions: IntCounterVec,
}

impl SliceMetrics {
    pub fn new(registry: &Registry) -> Self {
        SliceMetrics {
            calls: counter_vec(
                registry,
                "ratelimit_slice_calls_total",
                "Quota slices asked of Redis, by policy and result (taken, or empty: none left).",
                &["policy", "result"],
            ),
            units: counter_vec(
                registry,
                "ratelimit_slice_units_total",
                "Units of quota slices, by policy and what became of them (taken, spent, returned, lost).",
                &["policy", "what"],
            ),
            decisions: counter_vec(
                registry,
                "ratelimit_slice_decisions_total",
                "Decisions made from a quota slice without Redis, by policy and result.",
                &["policy", "result"],
            ),
        }
    }
}

/// The xDS client's state: what configuration is in force, since when,
/// and how the connection fares.
pub struct XdsMetrics {
    /// 1 while a stream to the xDS server is open.
    pub connected: IntGauge,
    /// result: connected | failed (connection attempts).
    pub connects: IntCounterVec,
    /// result: ack | nack (discovery responses answered).
    pub responses: IntCounterVec,
    /// When a configuration was last received, in Unix seconds.
    pub last_received: IntGauge,
    /// version: the version in force (one series, 1).
    pub version: IntGaugeVec,
}

impl XdsMetrics {
    pub fn new(registry: &Registry) -> Self {
        XdsMetrics {
            connected: gauge(
                registry,
                "ratelimit_xds_connected",
                "1 while a stream to the xDS server is open, else 0.",
            ),
            connects: counter_vec(
                registry,
                "ratelimit_xds_connects_total",
                "Connection attempts to the xDS server, by result.",
                &["result"],
            ),
            responses: counter_vec(
                registry,
                "ratelimit_xds_responses_total",
                "Discovery responses from the xDS server, by answer (ack, nack).",
                &["result"],
            ),
            last_received: gauge(
                registry,
                "ratelimit_xds_config_last_received_timestamp_seconds",
                "When the xDS server last sent a configuration, in Unix seconds.",
            ),
            version: gauge_vec(
                registry,
                "ratelimit_xds_config_version_info",
                "The version of the xDS configuration in force (one series, value 1).",
                &["version"],
            ),
        }
    }
}

impl ConcurrencyMetrics {
    pub fn new(registry: &Registry) -> Self {
        ConcurrencyMetrics {
            acquired: counter_vec(
                registry,
                "ratelimit_concurrency_acquired_total",
                "Concurrency leases granted by this instance, by policy.",
                &["policy"],
            ),
            released: counter_vec(
                registry,
                "ratelimit_concurrency_released_total",
                "Concurrency leases released through this instance, by policy.",
                &["policy"],
            ),
            expired: counter_vec(
                registry,
                "ratelimit_concurrency_leases_expired_total",
                "Concurrency leases that expired without release (their holder died or forgot), by policy.",
                &["policy"],
            ),
            in_flight: gauge_vec(
                registry,
                "ratelimit_concurrency_in_flight",
                "Requests in flight under a concurrency policy as this instance saw them (sum over instances).",
                &["policy"],
            ),
            limit: gauge_vec(
                registry,
                "ratelimit_concurrency_limit",
                "A concurrency policy's limit: requests in flight at once, per subject.",
                &["policy"],
            ),
        }
    }
}
