//! A client of the Envoy rate limit service (RLS v3 over gRPC): requests
//! and descriptors built from plain pairs, asked of a running app.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

use super::TestApp;

/// A client of `app`'s gRPC port.
pub async fn client(app: &TestApp) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", app.grpc_port))
        .await
        .expect("connect to the gRPC port")
}

/// A descriptor of `(key, value)` entries.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A request of `domain` with `descriptors`, one hit each.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// The answer to `r`, which must come.
pub async fn ask(
    c: &mut RateLimitServiceClient<Channel>,
    r: RateLimitRequest,
) -> RateLimitResponse {
    c.should_rate_limit(r)
        .await
        .expect("an answer")
        .into_inner()
}
