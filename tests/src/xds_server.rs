//! A test ADS server (state of the world and delta) that the test drives.
//!
//! The test owns the truth: it sets and removes resources, then `push()`es,
//! and every connected proxy is told. The server never answers on its own
//! initiative beyond what the protocol requires (a first request, a changed
//! subscription), so a test can tell a proxy's re-application from its
//! silence. Every request is recorded with its connection so ACKs and NACKs
//! can be asserted exactly, and the server can be stopped and started again
//! on the same port to play a control-plane restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::{Message, Name};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use xds_protos::envoy::config::cluster::v3::{cluster, Cluster};
use xds_protos::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, HeaderValue, HeaderValueOption, SocketAddress,
};
use xds_protos::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_protos::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_protos::envoy::config::route::v3::{
    route, route_action, route_match, weighted_cluster, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use xds_protos::envoy::extensions::filters::http::router::v3::Router;
use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use xds_protos::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_protos::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
pub use xds_protos::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

use crate::eventually;

/// The response header every route config built here adds, so a response
/// tells which route config version served it.
pub const ROUTE_TAG_HEADER: &str = "x-route-tag";

/// How long the `wait_*` helpers give a proxy to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Wraps a message in an `Any` with the `type.googleapis.com/` URL that
/// Envoy compares resource and response type URLs by. `xds_protos::any::pack`
/// takes prost's `Name::type_url()`, which has no domain (`/envoy...`), and
/// Envoy rejects a resource whose URL differs from the response's.
pub fn pack<M: Message + Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{}", M::full_name()),
        value: msg.encode_to_vec(),
    }
}

/// One request a proxy sent, as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which stream (one per proxy connection) it came on, from 1.
    pub conn: u64,
    pub delta: bool,
    pub type_url: String,
    /// State of the world only; empty on delta streams.
    pub version_info: String,
    pub response_nonce: String,
    /// State of the world: `resource_names`; delta: `resource_names_subscribe`.
    pub resource_names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
    /// `(code, message)` of a NACK.
    pub error_detail: Option<(i32, String)>,
    pub node_id: Option<String>,
}

impl Recorded {
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }
}

/// One response the server sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub conn: u64,
    pub type_url: String,
    /// SotW `version_info`, or delta `system_version_info`.
    pub version: String,
    pub nonce: String,
    pub resources: Vec<String>,
    pub removed: Vec<String>,
}

struct Entry {
    any: prost_types::Any,
    /// `None` until the next `push()` stamps it.
    version: Option<String>,
}

#[derive(Default)]
struct TypeState {
    resources: BTreeMap<String, Entry>,
    /// The version of the last push that changed this type; empty: never set.
    version: String,
    dirty: bool,
}

type SotwTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

enum Tx {
    Sotw(SotwTx),
    Delta(DeltaTx),
}

#[derive(Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// SotW: a first request was seen (and answered or found current).
    started: bool,
    /// Delta: what the proxy holds, `name → version`, as far as we told it.
    known: BTreeMap<String, String>,
}

struct Conn {
    tx: Tx,
    subs: BTreeMap<String, Sub>,
    reader: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    types: BTreeMap<String, TypeState>,
    pushes: u64,
    nonces: u64,
    conns: BTreeMap<u64, Conn>,
    streams: u64,
    requests: Vec<Recorded>,
    sent: Vec<Sent>,
}

fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

impl State {
    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("n{}", self.nonces)
    }

    /// State of the world: the full set (wildcard) or the names asked for.
    fn sotw_respond(&mut self, conn: u64, type_url: &str) {
        let nonce = self.next_nonce();
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(sub) = c.subs.get(type_url) else {
            return;
        };
        let ts = self.types.get(type_url);
        let version = ts.map(|t| t.version.clone()).unwrap_or_default();
        let mut names = Vec::new();
        let mut resources = Vec::new();
        if let Some(ts) = ts {
            for (name, e) in &ts.resources {
                if e.version.is_some() && (sub.wildcard || sub.names.contains(name)) {
                    names.push(name.clone());
                    resources.push(e.any.clone());
                }
            }
        }
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        if let Tx::Sotw(tx) = &c.tx {
            if tx.send(Ok(resp)).is_ok() {
                self.sent.push(Sent {
                    conn,
                    type_url: type_url.to_string(),
                    version,
                    nonce,
                    resources: names,
                    removed: Vec::new(),
                });
            }
        }
    }

    /// Delta: whatever differs from what the proxy is known to hold.
    fn delta_respond(&mut self, conn: u64, type_url: &str) {
        let empty = TypeState::default();
        let ts = self.types.get(type_url).unwrap_or(&empty);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(sub) = c.subs.get(type_url) else {
            return;
        };
        let mut resources = Vec::new();
        let mut names = Vec::new();
        let mut known = sub.known.clone();
        for (name, e) in &ts.resources {
            let Some(v) = &e.version else { continue };
            if !(sub.wildcard || sub.names.contains(name)) {
                continue;
            }
            if known.get(name) != Some(v) {
                known.insert(name.clone(), v.clone());
                names.push(name.clone());
                resources.push(Resource {
                    name: name.clone(),
                    version: v.clone(),
                    resource: Some(e.any.clone()),
                    ..Default::default()
                });
            }
        }
        let mut removed = Vec::new();
        for name in sub.known.keys() {
            let present = ts.resources.get(name).is_some_and(|e| e.version.is_some());
            if !present {
                removed.push(name.clone());
                known.remove(name);
            }
        }
        if resources.is_empty() && removed.is_empty() {
            return;
        }
        let version = ts.version.clone();
        let nonce = self.next_nonce();
        let c = self.conns.get_mut(&conn).expect("connection checked above");
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        if let Tx::Delta(tx) = &c.tx {
            if tx.send(Ok(resp)).is_ok() {
                c.subs.get_mut(type_url).expect("sub checked above").known = known;
                self.sent.push(Sent {
                    conn,
                    type_url: type_url.to_string(),
                    version,
                    nonce,
                    resources: names,
                    removed,
                });
            }
        }
    }

    fn on_sotw(&mut self, conn: u64, r: DiscoveryRequest) {
        self.requests.push(Recorded {
            conn,
            delta: false,
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.response_nonce.clone(),
            resource_names: r.resource_names.clone(),
            unsubscribe: Vec::new(),
            initial_resource_versions: BTreeMap::new(),
            error_detail: r.error_detail.as_ref().map(|s| (s.code, s.message.clone())),
            node_id: r.node.as_ref().map(|n| n.id.clone()),
        });
        let current = self
            .types
            .get(&r.type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let sub = c.subs.entry(r.type_url.clone()).or_default();
        let names: BTreeSet<String> = r
            .resource_names
            .iter()
            .filter(|n| n.as_str() != "*")
            .cloned()
            .collect();
        let wildcard = r.resource_names.iter().any(|n| n == "*")
            || (r.resource_names.is_empty() && is_wildcard_type(&r.type_url));
        let respond = if !sub.started {
            // A proxy that already holds the current version needs nothing.
            !current.is_empty() && r.version_info != current
        } else {
            names != sub.names || wildcard != sub.wildcard
        };
        sub.started = true;
        sub.names = names;
        sub.wildcard = wildcard;
        if respond && !current.is_empty() {
            self.sotw_respond(conn, &r.type_url);
        }
    }

    fn on_delta(&mut self, conn: u64, r: DeltaDiscoveryRequest) {
        self.requests.push(Recorded {
            conn,
            delta: true,
            type_url: r.type_url.clone(),
            version_info: String::new(),
            response_nonce: r.response_nonce.clone(),
            resource_names: r.resource_names_subscribe.clone(),
            unsubscribe: r.resource_names_unsubscribe.clone(),
            initial_resource_versions: r
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            error_detail: r.error_detail.as_ref().map(|s| (s.code, s.message.clone())),
            node_id: r.node.as_ref().map(|n| n.id.clone()),
        });
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let first = !c.subs.contains_key(&r.type_url);
        let sub = c.subs.entry(r.type_url.clone()).or_default();
        if first {
            sub.wildcard = r.resource_names_subscribe.is_empty() && is_wildcard_type(&r.type_url);
            sub.known = r
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        for n in &r.resource_names_subscribe {
            if n == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(n.clone());
            }
        }
        for n in &r.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(n);
                sub.known.remove(n);
            }
        }
        self.delta_respond(conn, &r.type_url);
    }

    fn push_type(&mut self, type_url: &str) {
        let conns: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.subs.contains_key(type_url))
            .map(|(id, c)| (*id, matches!(c.tx, Tx::Delta(_))))
            .collect();
        for (id, delta) in conns {
            if delta {
                self.delta_respond(id, type_url);
            } else {
                self.sotw_respond(id, type_url);
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Service {
    fn open(&self, tx: Tx) -> u64 {
        let mut s = self.0.lock();
        s.streams += 1;
        let id = s.streams;
        s.conns.insert(
            id,
            Conn {
                tx,
                subs: BTreeMap::new(),
                reader: None,
            },
        );
        id
    }

    fn set_reader(&self, id: u64, reader: JoinHandle<()>) {
        if let Some(c) = self.0.lock().conns.get_mut(&id) {
            c.reader = Some(reader);
        } else {
            reader.abort();
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.open(Tx::Sotw(tx));
        let shared = self.0.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(r)) = incoming.next().await {
                shared.lock().on_sotw(id, r);
            }
            shared.lock().conns.remove(&id);
        });
        self.set_reader(id, reader);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.open(Tx::Delta(tx));
        let shared = self.0.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(r)) = incoming.next().await {
                shared.lock().on_delta(id, r);
            }
            shared.lock().conns.remove(&id);
        });
        self.set_reader(id, reader);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The test's ADS server. Dropping it stops it.
pub struct XdsServer {
    port: u16,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(());
            r.task.abort();
        }
        for (_, c) in std::mem::take(&mut self.shared.lock().conns) {
            if let Some(r) = c.reader {
                r.abort();
            }
        }
    }
}

impl XdsServer {
    /// Starts on a free loopback port, holding nothing.
    pub async fn start() -> XdsServer {
        let mut s = XdsServer {
            port: crate::free_port(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
            }),
            running: None,
        };
        s.restart().await;
        s
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        crate::loopback(self.port)
    }

    /// (Re)binds the same port and serves, keeping every resource and
    /// version: a restarted control plane that remembers its state.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "the xDS server is already running");
        let addr = self.addr();
        // The port was just freed (by us, or by free_port): it can take a
        // moment before the kernel lets it be bound again.
        let listener = eventually(
            Duration::from_secs(10),
            "the xDS port to bind",
            || async move { tokio::net::TcpListener::bind(addr).await.ok() },
        )
        .await;
        let (shutdown, rx) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Service(self.shared.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        self.running = Some(Running { shutdown, task });
    }

    /// Stops serving: every stream ends with UNAVAILABLE, the connections
    /// are told to go away, and the port is closed. State is kept.
    pub async fn stop(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        let _ = r.shutdown.send(());
        let conns = std::mem::take(&mut self.shared.lock().conns);
        for (_, c) in conns {
            match c.tx {
                Tx::Sotw(tx) => {
                    let _ = tx.send(Err(Status::unavailable("control plane stopping")));
                }
                Tx::Delta(tx) => {
                    let _ = tx.send(Err(Status::unavailable("control plane stopping")));
                }
            }
            if let Some(reader) = c.reader {
                reader.abort();
            }
        }
        let mut task = r.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Adds or replaces a resource; sent at the next `push()`. An identical
    /// resource changes nothing (its version stays, delta does not resend).
    pub fn set_any(&self, type_url: &str, name: &str, any: prost_types::Any) {
        let mut s = self.shared.lock();
        let ts = s.types.entry(type_url.to_string()).or_default();
        if ts.resources.get(name).is_some_and(|e| e.any == any) {
            return;
        }
        ts.resources
            .insert(name.to_string(), Entry { any, version: None });
        ts.dirty = true;
    }

    pub fn remove(&self, type_url: &str, name: &str) {
        let mut s = self.shared.lock();
        let ts = s.types.entry(type_url.to_string()).or_default();
        if ts.resources.remove(name).is_some() {
            ts.dirty = true;
        }
    }

    /// Marks a type as changed without changing it, so the next push sends
    /// it (a state of the world response with nothing in it, for example).
    pub fn touch(&self, type_url: &str) {
        self.shared
            .lock()
            .types
            .entry(type_url.to_string())
            .or_default()
            .dirty = true;
    }

    pub fn set_listener(&self, l: &Listener) {
        self.set_any(LISTENER, &l.name, pack(l));
    }
    pub fn set_route(&self, r: &RouteConfiguration) {
        self.set_any(ROUTE_CONFIGURATION, &r.name, pack(r));
    }
    pub fn set_cluster(&self, c: &Cluster) {
        self.set_any(CLUSTER, &c.name, pack(c));
    }
    pub fn set_endpoints(&self, la: &ClusterLoadAssignment) {
        self.set_any(CLUSTER_LOAD_ASSIGNMENT, &la.cluster_name, pack(la));
    }
    pub fn remove_listener(&self, name: &str) {
        self.remove(LISTENER, name);
    }
    pub fn remove_route(&self, name: &str) {
        self.remove(ROUTE_CONFIGURATION, name);
    }
    pub fn remove_cluster(&self, name: &str) {
        self.remove(CLUSTER, name);
    }
    pub fn remove_endpoints(&self, name: &str) {
        self.remove(CLUSTER_LOAD_ASSIGNMENT, name);
    }

    /// Stamps every change since the last push with a new version `vN` and
    /// sends it to every subscribed stream. Returns the version.
    pub fn push(&self) -> String {
        let mut s = self.shared.lock();
        s.pushes += 1;
        let version = format!("v{}", s.pushes);
        let mut dirty = Vec::new();
        for (url, ts) in s.types.iter_mut() {
            if !ts.dirty {
                continue;
            }
            ts.dirty = false;
            ts.version = version.clone();
            for e in ts.resources.values_mut() {
                if e.version.is_none() {
                    e.version = Some(version.clone());
                }
            }
            dirty.push(url.clone());
        }
        // Envoy's order: clusters before endpoints before listeners before routes.
        dirty.sort_by_key(|u| {
            [
                CLUSTER,
                CLUSTER_LOAD_ASSIGNMENT,
                LISTENER,
                ROUTE_CONFIGURATION,
            ]
            .iter()
            .position(|t| t == u)
            .unwrap_or(9)
        });
        for url in dirty {
            s.push_type(&url);
        }
        version
    }

    /// The version the server holds for a type ("" if never pushed).
    pub fn version_of(&self, type_url: &str) -> String {
        self.shared
            .lock()
            .types
            .get(type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// Streams opened so far (a reconnect opens a new one).
    pub fn streams(&self) -> u64 {
        self.shared.lock().streams
    }

    /// Streams open now.
    pub fn live_streams(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// The request answering a response of `type_url` stamped `version`
    /// (an ACK, or a NACK: see [`Recorded::is_nack`]); `None` while unanswered.
    pub fn answer(&self, type_url: &str, version: &str) -> Option<Recorded> {
        let s = self.shared.lock();
        let nonces: BTreeSet<&str> = s
            .sent
            .iter()
            .filter(|x| x.type_url == type_url && x.version == version)
            .map(|x| x.nonce.as_str())
            .collect();
        s.requests
            .iter()
            .find(|r| r.type_url == type_url && nonces.contains(r.response_nonce.as_str()))
            .cloned()
    }

    /// Waits for the ACK of `version` of `type_url`; panics on a NACK.
    pub async fn wait_ack(&self, type_url: &str, version: &str) -> Recorded {
        let what = format!("an ACK of {type_url} {version}");
        let r = eventually(ANSWER_TIMEOUT, &what, || async {
            self.answer(type_url, version)
        })
        .await;
        assert!(!r.is_nack(), "{version} of {type_url} was NACKed: {r:?}");
        r
    }

    /// Waits for the NACK of `version` of `type_url`; panics on an ACK.
    pub async fn wait_nack(&self, type_url: &str, version: &str) -> Recorded {
        let what = format!("a NACK of {type_url} {version}");
        let r = eventually(ANSWER_TIMEOUT, &what, || async {
            self.answer(type_url, version)
        })
        .await;
        assert!(
            r.is_nack(),
            "{version} of {type_url} was ACKed, expected a NACK: {r:?}"
        );
        r
    }

    /// Waits until the proxy has asked for resource `name` of `type_url`.
    pub async fn wait_subscribed(&self, type_url: &str, name: &str) {
        let what = format!("a subscription to {type_url} {name}");
        eventually(ANSWER_TIMEOUT, &what, || async {
            self.shared
                .lock()
                .requests
                .iter()
                .any(|r| r.type_url == type_url && r.resource_names.iter().any(|n| n == name))
                .then_some(())
        })
        .await
    }

    /// Waits until a stream numbered above `after` has sent a request of
    /// `type_url`; returns its first such request (the re-subscription).
    pub async fn wait_resubscribe(&self, type_url: &str, after: u64) -> Recorded {
        let what = format!("a new stream's first {type_url} request");
        eventually(ANSWER_TIMEOUT, &what, || async {
            self.shared
                .lock()
                .requests
                .iter()
                .find(|r| r.conn > after && r.type_url == type_url)
                .cloned()
        })
        .await
    }
}

// === the proxy under test ===

/// Which proxy a scenario drives: the same bootstrap and server run both,
/// so a scenario that passes on Envoy and fails on trellis is trellis's bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Envoy,
    Trellis,
}

impl Proxy {
    /// `None` when Envoy is not installed: the scenario is skipped.
    pub fn bin(self) -> Option<std::path::PathBuf> {
        match self {
            Proxy::Envoy => crate::process::envoy_bin(),
            Proxy::Trellis => Some(crate::process::workspace_bin("trellis-proxy")),
        }
    }
}

/// A proxy whose config comes from `xds`, with its admin port fixed ahead
/// of time so `/ready` can be watched before it turns LIVE.
pub struct Launch {
    pub bin: std::path::PathBuf,
    pub bootstrap: String,
    pub admin: SocketAddr,
}

impl Launch {
    pub fn new(proxy: Proxy, xds: &XdsServer, delta: bool) -> Option<Launch> {
        let bin = proxy.bin()?;
        let admin_port = crate::free_port();
        Some(Launch {
            bin,
            bootstrap: ads_bootstrap(xds.port(), admin_port, delta),
            admin: crate::loopback(admin_port),
        })
    }

    /// Starts the proxy and waits for `/ready` (the server must already
    /// hold a complete config).
    pub async fn start(&self) -> crate::process::ProxyProcess {
        crate::process::ProxyProcess::start_with(&self.bin, &self.bootstrap, &[]).await
    }

    /// Starts the proxy in the background: the handle resolves once `/ready`
    /// says LIVE, which the test brings about by pushing config.
    pub fn spawn(&self) -> JoinHandle<crate::process::ProxyProcess> {
        let bin = self.bin.clone();
        let bootstrap = self.bootstrap.clone();
        tokio::spawn(async move {
            crate::process::ProxyProcess::start_with(&bin, &bootstrap, &[]).await
        })
    }

    /// `/ready`'s status, `None` while the admin port does not answer.
    pub async fn ready_status(&self) -> Option<u16> {
        crate::client::get(&format!("http://{}/ready", self.admin))
            .await
            .ok()
            .map(|r| r.status)
    }
}

// === resource builders ===

pub fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// An HTTP listener on 127.0.0.1:`port` whose routes come over RDS.
pub fn http_listener(name: &str, port: u16, route_config: &str) -> Listener {
    hcm_listener(
        name,
        port,
        Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: route_config.to_string(),
        })),
    )
}

/// An HTTP listener whose HCM has the given route specifier (`None` makes
/// an invalid one, for NACK tests).
pub fn hcm_listener(
    name: &str,
    port: u16,
    routes: Option<http_connection_manager::RouteSpecifier>,
) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: routes,
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket(crate::loopback(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener on 127.0.0.1:`port` that proxies TCP to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Listener {
    let tcp = TcpProxy {
        stat_prefix: name.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket(crate::loopback(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&tcp))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One route: a path prefix to weighted clusters (one cluster: a plain
/// `cluster` action).
pub fn route(prefix: &str, clusters: &[(&str, u32)]) -> Route {
    let specifier = match clusters {
        [(one, _)] => route_action::ClusterSpecifier::Cluster(one.to_string()),
        many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name: name.to_string(),
                    weight: Some(*weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(specifier),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route config with one catch-all virtual host holding `routes`; every
/// response it serves carries `x-route-tag: tag`.
pub fn route_config(name: &str, routes: Vec<Route>, tag: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: ROUTE_TAG_HEADER.to_string(),
                value: tag.to_string(),
                ..Default::default()
            }),
            // OVERWRITE_IF_EXISTS_OR_ADD: one value, whatever came before.
            append_action: 2,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A cluster whose endpoints come over EDS under its own name.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A STATIC cluster over `endpoints`.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(load_assignment(name, endpoints)),
        ..Default::default()
    }
}

pub fn load_assignment(name: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(*a)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A bootstrap whose listeners and clusters all come over ADS from
/// 127.0.0.1:`ads_port`, admin on 127.0.0.1:`admin_port` (fixed, so a test
/// can watch `/ready` before the proxy is ready). The same text runs Envoy
/// and trellis-proxy.
pub fn ads_bootstrap(ads_port: u16, admin_port: u16, delta: bool) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node:
  id: trellis-test
  cluster: trellis-test
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  lds_config:
    ads: {{}}
    resource_api_version: V3
  cds_config:
    ads: {{}}
    resource_api_version: V3
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {ads_port} }}
"#
    )
}
