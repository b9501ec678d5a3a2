//! A test xDS control plane for rate limit configuration, playing Envoy
//! Gateway's (go-control-plane's snapshot cache, State of the World, on the
//! aggregated discovery service, mutual TLS):
//!
//! - one snapshot per node id: a version and the `RateLimitConfig`
//!   resources (one per domain); a node without a snapshot waits;
//! - a response carries the version, a fresh nonce, the type URL and every
//!   resource; a snapshot is sent on a stream when its version differs from
//!   the last one sent there (first request, or a change);
//! - every request is recorded (node, version, nonce, error detail), so a
//!   test sees ACKs and NACKs;
//! - it can end every open stream, answer each stream once then reset it
//!   (the misbehaving server of envoyproxy/ratelimit's hot-loop bug), and
//!   stop and start again on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use prost::Message;
use rate_limiter::limiter::rules::erl::xds::{RateLimitConfig, TYPE_URL};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::certs::Pair;

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub node: String,
    pub version: String,
    pub nonce: String,
    /// A NACK's `error_detail.message`.
    pub error: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// node id -> (version, resources)
    snapshots: Mutex<HashMap<String, (String, Vec<RateLimitConfig>)>>,
    seen: Mutex<Vec<Seen>>,
    streams: AtomicUsize,
    nonce: AtomicU64,
    reset_after_response: AtomicBool,
    /// Bumped on every snapshot change; streams resend when it moves.
    changed: Mutex<Option<watch::Sender<u64>>>,
    /// Bumped to end every open stream.
    resets: Mutex<Option<watch::Sender<u64>>>,
}

impl Shared {
    fn bump(cell: &Mutex<Option<watch::Sender<u64>>>) {
        if let Some(tx) = cell.lock().unwrap().as_ref() {
            tx.send_modify(|v| *v += 1);
        }
    }
    fn subscribe(cell: &Mutex<Option<watch::Sender<u64>>>) -> watch::Receiver<u64> {
        cell.lock()
            .unwrap()
            .get_or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// The TLS of the control plane: its certificate, and the CA its clients'
/// certificates must chain to (client certificates required).
#[derive(Clone)]
pub struct Tls {
    pub server: Pair,
    pub client_ca: std::path::PathBuf,
}

pub struct ControlPlane {
    pub port: u16,
    shared: Arc<Shared>,
    tls: Option<Tls>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts on a free loopback port.
    pub async fn start(tls: Option<Tls>) -> Self {
        let mut plane = ControlPlane {
            port: 0,
            shared: Arc::new(Shared::default()),
            tls,
            stop: None,
            task: None,
        };
        plane.serve().await;
        plane
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .expect("bind the control plane");
        self.port = listener.local_addr().unwrap().port();
        let mut builder = Server::builder();
        if let Some(tls) = &self.tls {
            let identity = Identity::from_pem(
                std::fs::read(&tls.server.cert).unwrap(),
                std::fs::read(&tls.server.key).unwrap(),
            );
            let ca = Certificate::from_pem(std::fs::read(&tls.client_ca).unwrap());
            builder = builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(identity)
                        .client_ca_root(ca)
                        .client_auth_optional(false),
                )
                .unwrap();
        }
        let (stop, stopped) = oneshot::channel();
        let service = AggregatedDiscoveryServiceServer::new(Ads(self.shared.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        self.task = Some(tokio::spawn(async move {
            let _ = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        }));
        self.stop = Some(stop);
    }

    /// Sets the snapshot of `node` (the streams of that node get it).
    pub fn set(&self, node: &str, version: &str, resources: Vec<RateLimitConfig>) {
        self.shared
            .snapshots
            .lock()
            .unwrap()
            .insert(node.to_owned(), (version.to_owned(), resources));
        Shared::bump(&self.shared.changed);
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> usize {
        self.shared.streams.load(Ordering::SeqCst)
    }

    /// From now on, each stream is reset right after its first response.
    pub fn reset_after_response(&self, on: bool) {
        self.shared.reset_after_response.store(on, Ordering::SeqCst);
    }

    /// Ends every open stream with UNAVAILABLE.
    pub fn reset_streams(&self) {
        Shared::bump(&self.shared.resets);
    }

    /// Stops serving (open streams end), keeping the snapshots and the port.
    pub async fn stop(&mut self) {
        self.reset_streams();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.serve().await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Ads(Arc<Shared>);

type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Outgoing<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Outgoing<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let shared = self.0.clone();
        shared.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut changed = Shared::subscribe(&shared.changed);
            let mut resets = Shared::subscribe(&shared.resets);
            let mut node: Option<String> = None;
            let mut sent: Option<String> = None;
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(request)) => {
                            let id = request.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                            shared.seen.lock().unwrap().push(Seen {
                                node: id.clone(),
                                version: request.version_info.clone(),
                                nonce: request.response_nonce.clone(),
                                error: request.error_detail.as_ref().map(|e| e.message.clone()),
                            });
                            if request.type_url != TYPE_URL {
                                continue;
                            }
                            node.get_or_insert(id);
                        }
                        _ => return,
                    },
                    _ = changed.changed() => {}
                    _ = resets.changed() => {
                        let _ = tx.send(Err(Status::unavailable("stream reset by the test"))).await;
                        return;
                    }
                }
                let Some(node) = &node else { continue };
                let snapshot = shared.snapshots.lock().unwrap().get(node).cloned();
                let Some((version, resources)) = snapshot else {
                    continue;
                };
                if sent.as_ref() == Some(&version) {
                    continue;
                }
                let nonce = shared.nonce.fetch_add(1, Ordering::SeqCst) + 1;
                let response = DiscoveryResponse {
                    version_info: version.clone(),
                    resources: resources
                        .iter()
                        .map(|r| Any {
                            type_url: TYPE_URL.into(),
                            value: r.encode_to_vec(),
                        })
                        .collect(),
                    type_url: TYPE_URL.into(),
                    nonce: nonce.to_string(),
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                sent = Some(version);
                if shared.reset_after_response.load(Ordering::SeqCst) {
                    let _ = tx
                        .send(Err(Status::unavailable("reset after the response")))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("State of the World only"))
    }
}
