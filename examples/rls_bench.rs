//! Load for the gRPC front end (scripts/bench.sh's `grpc` case): CONCURRENCY
//! calls in flight on one HTTP/2 connection per 16 of them, each asking
//! ShouldRateLimit for one of KEYS descriptors `(user, bench-<n>)` of DOMAIN,
//! for DURATION seconds. Prints "req/s p50 p99 errors" (latencies in ms
//! with a unit, as wrk prints them).
//!
//!   cargo run --release --example rls_bench -- 127.0.0.1:8081 [CONCURRENCY] [SECONDS] [KEYS] [DOMAIN]
//!
//! RLS_BENCH_CA=ca.pem: over TLS, trusting that CA, for the name
//! `localhost` (the `grpc-tls` case).

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::transport::Channel;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let address = arg(0, "127.0.0.1:8081");
    let concurrency: usize = arg(1, "64").parse().expect("CONCURRENCY");
    let seconds: f64 = arg(2, "10").trim_end_matches('s').parse().expect("SECONDS");
    let keys: u64 = arg(3, "10000").parse().expect("KEYS");
    let domain = arg(4, "bench");

    let tls = std::env::var("RLS_BENCH_CA").ok().map(|ca| {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(ca).expect("RLS_BENCH_CA"),
            ))
            .domain_name("localhost")
    });
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(16) {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Channel::from_shared(format!("{scheme}://{address}")).expect("an address");
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).expect("TLS");
        }
        channels.push(endpoint.connect().await.expect("connect"));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers = (0..concurrency).map(|w| {
        let mut client = RateLimitServiceClient::new(channels[w % channels.len()].clone());
        let domain = domain.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            while Instant::now() < deadline {
                // xorshift: a different key each call, no shared state.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let request = RateLimitRequest {
                    domain: domain.clone(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: "user".into(),
                            value: format!("bench-{}", state % keys),
                        }],
                        ..Default::default()
                    }],
                    hits_addend: 0,
                };
                let sent = Instant::now();
                match client.should_rate_limit(request).await {
                    Ok(r) if r.get_ref().overall_code == Code::Ok as i32 => {
                        latencies.push(sent.elapsed().as_micros() as u64)
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in futures::future::join_all(workers).await {
        let (l, e) = worker.expect("a worker");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or("?".to_owned(), |us| format!("{:.2}ms", *us as f64 / 1000.0))
    };
    let total = latencies.len() as u64 + errors;
    println!(
        "{:.0} {} {} {}",
        total as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        errors
    );
}
