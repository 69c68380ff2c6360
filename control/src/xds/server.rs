//! The Aggregated Discovery Service: state of the world and delta, with
//! Envoy's ACK/NACK rules.
//!
//! One task watches the store and the instance registry and publishes a
//! parsed [`Model`] on every change. Each stream translates that model for
//! its own node and ports, and sends a type only when its content hash (the
//! version) moved, so a write reaches exactly the proxies it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::Stream;
use prost_types::Any;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_protos::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_protos::type_url;

use super::registry::{now, Nack, Registry};
use super::translate::{
    encode_changed, encode_one, translate_tracked, Deps, EncodeError, Encoded, Instances, Model,
    NodeId, Ports, Prints, TraceExport,
};
use crate::ca::{Ca, Svid, BUNDLE_SECRET, SVID_SECRET};
use crate::store::Store;
use crate::tokens::{self, Policy};

/// The translation input at one moment: a parsed snapshot and the instances.
pub struct State {
    pub revision: u64,
    pub model: Arc<Model>,
    pub instances: Instances,
}

/// The types this server answers, in the order updates are pushed:
/// secrets before what refers to them, clusters before their endpoints,
/// listeners before their routes.
const TYPES: [&str; 5] = [
    type_url::SECRET,
    type_url::CLUSTER,
    type_url::CLUSTER_LOAD_ASSIGNMENT,
    type_url::LISTENER,
    type_url::ROUTE_CONFIGURATION,
];

/// Types whose empty subscription means "everything" in state of the world.
fn wildcard_type(t: &str) -> bool {
    t == type_url::CLUSTER || t == type_url::LISTENER
}

#[derive(Clone)]
pub struct Xds {
    registry: Arc<Registry>,
    state: watch::Receiver<Arc<State>>,
    /// Issues each proxy its SVID; without it no Secret is served.
    ca: Option<Arc<Ca>>,
    /// Where node tokens are checked, and when they are required.
    store: Arc<Store>,
    policy: Policy,
    /// Mesh-wide tracing, added to every proxy's resources.
    tracing: Option<Arc<TraceExport>>,
}

/// The state after a change: the store parsed again only when its revision
/// moved (an instance registering changes no spec).
fn load_state(
    store: &Store,
    registry: &Registry,
    previous: Option<&State>,
) -> Result<State, rusqlite::Error> {
    let instances = registry.instances();
    if let Some(prev) = previous.filter(|p| p.revision == store.revision()) {
        return Ok(State {
            revision: prev.revision,
            model: prev.model.clone(),
            instances,
        });
    }
    let snapshot = store.snapshot()?;
    Ok(State {
        revision: snapshot.revision,
        model: Arc::new(Model::new(&snapshot)),
        instances,
    })
}

impl Xds {
    /// Reads the first snapshot and starts the task that follows the store
    /// and the registry.
    pub fn start(store: Arc<Store>, registry: Arc<Registry>) -> Result<Xds, rusqlite::Error> {
        let (tx, state) = watch::channel(Arc::new(load_state(&store, &registry, None)?));
        let mut revisions = store.subscribe();
        let mut instances = registry.subscribe();
        let reg = registry.clone();
        let tokens_store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = revisions.changed() => if r.is_err() { break },
                    r = instances.changed() => if r.is_err() { break },
                    () = tx.closed() => break,
                }
                let (store, reg2, prev) = (store.clone(), reg.clone(), tx.borrow().clone());
                match tokio::task::spawn_blocking(move || load_state(&store, &reg2, Some(&prev)))
                    .await
                {
                    Ok(Ok(s)) => {
                        tracing::debug!(revision = s.revision, "xDS model updated");
                        tx.send_replace(Arc::new(s));
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot read the store for xDS"),
                    Err(e) => tracing::error!(error = %e, "the xDS snapshot task failed"),
                }
            }
        });
        Ok(Xds {
            registry,
            state,
            ca: None,
            store: tokens_store,
            policy: Policy::Always,
            tracing: None,
        })
    }

    /// When streams must present their node's token (default
    /// [`Policy::Always`]: no SVID for a proxy that has not proven its node).
    pub fn with_token_policy(mut self, policy: Policy) -> Xds {
        self.policy = policy;
        self
    }

    /// Refuses a stream whose bearer token is not its node's.
    async fn authorize(&self, node_id: &str, token: Option<String>) -> Result<(), Status> {
        let (store, policy, id) = (self.store.clone(), self.policy, node_id.to_string());
        let verdict = tokio::task::spawn_blocking(move || {
            tokens::check(&store, policy, &id, token.as_deref())
        })
        .await
        .map_err(|_| Status::internal("the token check failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read node tokens");
            Status::unavailable("cannot read node tokens")
        })?;
        verdict.map_err(|refusal| {
            self.registry.metrics().refused(refusal.label());
            tracing::warn!(node = %node_id, reason = %refusal, "refused an ADS stream");
            Status::unauthenticated(refusal.to_string())
        })
    }

    /// Every proxy's connection managers export spans as `export` says.
    pub fn with_tracing(mut self, export: TraceExport) -> Xds {
        self.tracing = Some(Arc::new(export));
        self
    }

    /// Serves SDS: each proxy gets its own SVID and the CA's trust bundle.
    pub fn with_ca(mut self, ca: Arc<Ca>) -> Xds {
        self.ca = Some(ca);
        self
    }

    pub fn service(self) -> AggregatedDiscoveryServiceServer<Xds> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// A short content hash: equal resources give equal versions, across
/// restarts of the control plane too.
fn hash<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in parts {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(&h.finalize()[..8])
}

fn resource_version(any: &Any) -> String {
    hash([("", any.value.as_slice())])
}

fn metadata_json(node: &Node) -> serde_json::Map<String, serde_json::Value> {
    use prost_types::value::Kind;
    let mut out = serde_json::Map::new();
    for (k, v) in node.metadata.iter().flat_map(|m| m.fields.iter()) {
        let json = match &v.kind {
            Some(Kind::NumberValue(n)) => serde_json::json!(n.round() as u64),
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            _ => continue,
        };
        out.insert(k.clone(), json);
    }
    out
}

/// The identity of a stream, from the node in its first request.
struct Peer {
    conn: u64,
    node: Option<NodeId>,
    ports: Ports,
    ca: Option<Arc<Ca>>,
    tracing: Option<Arc<TraceExport>>,
    /// This proxy's identity, issued when it connects and renewed at half
    /// life; it lives only in this stream, never in a shared structure.
    svid: Option<Svid>,
    /// The SVID and the trust bundle as SDS resources, encoded once per SVID.
    secrets: BTreeMap<String, Any>,
}

impl Peer {
    fn new(
        registry: &Registry,
        (ca, tracing): (Option<Arc<Ca>>, Option<Arc<TraceExport>>),
        node: &Node,
        addr: Option<SocketAddr>,
        delta: bool,
    ) -> Peer {
        let ports = Ports::from_metadata(&metadata_json(node));
        let conn = registry.connect(&node.id, addr.map(|a| a.ip().to_string()), &ports, delta);
        tracing::info!(node = %node.id, peer = ?addr, delta, "proxy connected");
        let mut peer = Peer {
            conn,
            node: NodeId::parse(&node.id),
            ports,
            ca,
            tracing,
            svid: None,
            secrets: BTreeMap::new(),
        };
        peer.renew();
        peer
    }

    /// Issues a new SVID; on failure the proxy keeps the one it has, and the
    /// next attempt comes a minute later.
    fn renew(&mut self) {
        let (Some(ca), Some(id)) = (&self.ca, &self.node) else {
            return;
        };
        match ca.issue(id) {
            Ok(svid) => {
                tracing::info!(spiffe_id = %svid.spiffe_id, "issued an SVID");
                self.svid = Some(svid);
                match self.encode_secrets() {
                    Ok(secrets) => self.secrets = secrets,
                    Err(e) => tracing::error!(error = %e, "cannot encode the SDS secrets"),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, node = %id.render(), "cannot issue an SVID");
                if let Some(s) = &mut self.svid {
                    s.cert.renew_at = SystemTime::now() + std::time::Duration::from_secs(60);
                }
            }
        }
    }

    /// When this stream's SVID is due for renewal, if it has one.
    fn renew_at(&self) -> Option<SystemTime> {
        self.svid.as_ref().map(|s| s.cert.renew_at)
    }

    /// The SDS resources: this proxy's SVID and the trust bundle.
    fn encode_secrets(&self) -> Result<BTreeMap<String, Any>, EncodeError> {
        let (Some(ca), Some(svid)) = (&self.ca, &self.svid) else {
            return Ok(BTreeMap::new());
        };
        let certificate = serde_json::json!({
            "name": SVID_SECRET,
            "tls_certificate": {
                "certificate_chain": {"inline_string": svid.cert.cert_pem},
                "private_key": {"inline_string": svid.cert.key_pem},
            },
        });
        let bundle = serde_json::json!({
            "name": BUNDLE_SECRET,
            "validation_context": {"trusted_ca": {"inline_string": ca.bundle_pem()}},
        });
        let mut out = BTreeMap::new();
        for (name, json) in [(SVID_SECRET, certificate), (BUNDLE_SECRET, bundle)] {
            out.insert(name.to_string(), encode_one(type_url::SECRET, name, &json)?);
        }
        Ok(out)
    }

    /// This proxy's resources in `state` and what they were made from,
    /// re-encoding only the resources whose JSON changed since `previous`.
    fn resources(
        &self,
        state: &State,
        previous: &Encoded,
        prints: &mut Prints,
    ) -> (Result<Encoded, EncodeError>, Deps) {
        let (set, deps) = match &self.node {
            Some(id) => translate_tracked(&state.model, id, &self.ports, &state.instances),
            None => (None, Deps::default()),
        };
        let mut set = set.unwrap_or_default();
        if let (Some(export), Some(id)) = (&self.tracing, &self.node) {
            export.apply(&mut set, id);
        }
        let encoded = encode_changed(&set, previous, prints).map(|mut encoded| {
            encoded.insert(type_url::SECRET, self.secrets.clone());
            encoded
        });
        (encoded, deps)
    }
}

/// The `authorization: Bearer TOKEN` of a stream, from the bootstrap's
/// `initial_metadata`.
fn bearer_token<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    tokens::bearer(value).map(str::to_string)
}

/// Resolves at `at`; never without one (a stream with no SVID to renew).
async fn renewal(at: Option<SystemTime>) {
    match at {
        Some(at) => {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// Unregisters the stream when its task ends, however it ends.
struct Disconnect(Arc<Registry>, u64);

impl Drop for Disconnect {
    fn drop(&mut self) {
        self.0.disconnect(self.1);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What state of the world and delta streams share once the proxy has said
/// who it is: its identity, its current resources, and the bookkeeping of
/// pushes and their answers (status, metrics).
struct Conn {
    peer: Peer,
    registry: Arc<Registry>,
    current: Encoded,
    /// What `current` was translated from; `None` forces a translation.
    deps: Option<Deps>,
    /// Fingerprints of the JSON behind `current`, to re-encode only changes.
    prints: Prints,
    nonces: u64,
    /// By type: the nonce last sent and when, to time its answer.
    in_flight: BTreeMap<String, (String, Instant)>,
}

impl Conn {
    fn new(peer: Peer, registry: Arc<Registry>, state: &State) -> Conn {
        let mut conn = Conn {
            peer,
            registry,
            current: Encoded::default(),
            deps: None,
            prints: Prints::new(),
            nonces: 0,
            in_flight: BTreeMap::new(),
        };
        conn.refresh(state);
        conn
    }

    /// Translates `state` for this proxy unless nothing its resources were
    /// made from has changed; false when it skipped.
    fn refresh(&mut self, state: &State) -> bool {
        let metrics = self.registry.metrics();
        if let Some(deps) = &self.deps {
            if deps.unchanged(&state.model, &state.instances) {
                metrics.skipped();
                return false;
            }
        }
        metrics.translated();
        let (encoded, deps) = self.peer.resources(state, &self.current, &mut self.prints);
        self.deps = Some(deps);
        match encoded {
            Ok(current) => {
                self.current = current;
                true
            }
            Err(e) => {
                // A translation bug must not take the proxy down: it keeps
                // what it has until something it depends on changes again.
                tracing::error!(error = %e, "cannot encode xDS resources");
                false
            }
        }
    }

    /// Books a response of `type_url` at `version`: a fresh nonce, the
    /// version sent in the status, a push in the metrics.
    fn sent(&mut self, type_url: &str, version: &str) -> String {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        self.registry.update(self.peer.conn, type_url, |s| {
            s.sent = Some(version.to_string())
        });
        self.registry.metrics().pushed(type_url);
        self.in_flight
            .insert(type_url.to_string(), (nonce.clone(), Instant::now()));
        nonce
    }

    /// The proxy's answer to the response with `nonce` (the last one of its
    /// type): an ACK of `version`, or a NACK of it with `error`.
    fn answered(
        &mut self,
        type_url: &str,
        nonce: &str,
        version: &str,
        error: Option<&xds_protos::google::rpc::Status>,
    ) {
        let latency = match self.in_flight.get(type_url) {
            Some((n, at)) if n == nonce => Some(at.elapsed()),
            _ => None,
        };
        if latency.is_some() {
            self.in_flight.remove(type_url);
        }
        self.registry
            .metrics()
            .answered(type_url, error.is_some(), latency);
        self.registry
            .update(self.peer.conn, type_url, |t| match error {
                Some(e) => {
                    tracing::warn!(type_url, version, error = %e.message, "proxy NACKed an update");
                    t.nack = Some(Nack {
                        version: version.to_string(),
                        error: e.message.clone(),
                        at: now(),
                    });
                }
                None => t.acked = Some(version.to_string()),
            });
    }
}

/// One of the two ADS protocol variants, over the [`Conn`] they share.
trait Variant: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const DELTA: bool;

    fn node(req: &Self::Request) -> Option<&Node>;
    /// Answers a request (subscription, ACK or NACK).
    fn request(&mut self, conn: &mut Conn, req: Self::Request) -> Vec<Self::Response>;
    /// Pushes whatever changed in `conn.current` since it was last sent.
    fn push_changed(&mut self, conn: &mut Conn) -> Vec<Self::Response>;
}

impl Xds {
    /// Drives one ADS stream of either variant: authenticates its first
    /// request, registers the proxy, then answers requests, follows the model
    /// and renews the SVID until the proxy goes away.
    fn stream<V: Variant>(&self, request: Request<Streaming<V::Request>>) -> BoxStream<V::Response>
    where
        Streaming<V::Request>: Send,
    {
        let addr = request.remote_addr();
        let token = bearer_token(&request);
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let xds = self.clone();
        let mut tokens = self.store.subscribe_tokens();
        tokio::spawn(async move {
            let mut state = xds.state.clone();
            let mut node_id: Option<String> = None;
            let mut variant = V::default();
            let mut conn: Option<Conn> = None;
            let mut guard = None;
            loop {
                let out = tokio::select! {
                    msg = input.message() => match msg {
                        Ok(Some(req)) => {
                            if conn.is_none() {
                                let Some(node) = V::node(&req) else {
                                    let _ = tx.send(Err(Status::invalid_argument("the first request must carry a node"))).await;
                                    break;
                                };
                                if let Err(status) = xds.authorize(&node.id, token.clone()).await {
                                    let _ = tx.send(Err(status)).await;
                                    break;
                                }
                                node_id = Some(node.id.clone());
                                // Key generation and signing are CPU work: off the
                                // async threads, so a crowd of reconnecting proxies
                                // does not starve the accept loop.
                                let (registry, node) = (xds.registry.clone(), node.clone());
                                let issuers = (xds.ca.clone(), xds.tracing.clone());
                                let issued = tokio::task::spawn_blocking(move || Peer::new(&registry, issuers, &node, addr, V::DELTA)).await;
                                let Ok(peer) = issued else {
                                    let _ = tx.send(Err(Status::internal("cannot set up the stream"))).await;
                                    break;
                                };
                                guard = Some(Disconnect(xds.registry.clone(), peer.conn));
                                let current = state.borrow_and_update().clone();
                                conn = Some(Conn::new(peer, xds.registry.clone(), &current));
                            }
                            match &mut conn {
                                Some(c) => variant.request(c, req),
                                None => Vec::new(),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, delta = V::DELTA, "ADS stream ended");
                            break;
                        }
                    },
                    changed = state.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let Some(c) = &mut conn else { continue };
                        let current = state.borrow_and_update().clone();
                        if c.refresh(&current) {
                            variant.push_changed(c)
                        } else {
                            Vec::new()
                        }
                    }
                    // A token was issued or revoked: if this stream's token
                    // is no longer its node's, the stream ends. (A stream
                    // admitted without one, before any token existed, runs
                    // on: issuing the first token cuts no proxy off.)
                    changed = tokens.changed(), if node_id.is_some() && token.is_some() => {
                        if changed.is_err() {
                            break;
                        }
                        let id = node_id.as_deref().unwrap_or_default();
                        if let Err(status) = xds.authorize(id, token.clone()).await {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                        Vec::new()
                    }
                    () = renewal(conn.as_ref().and_then(|c| c.peer.renew_at())) => {
                        let Some(c) = &mut conn else { continue };
                        c.peer.renew();
                        c.deps = None;
                        let current = state.borrow().clone();
                        c.refresh(&current);
                        variant.push_changed(c)
                    }
                };
                for resp in out {
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            drop(guard);
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Xds {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.stream::<Sotw>(request)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.stream::<Delta>(request)))
    }
}

// === state of the world ===

#[derive(Default)]
struct SotwType {
    /// Requested names; empty with a wildcard type means all.
    names: Vec<String>,
    sent_version: Option<String>,
    nonce: String,
}

#[derive(Default)]
struct Sotw {
    types: BTreeMap<String, SotwType>,
}

/// The resources a subscription selects and their version.
fn select(current: &Encoded, type_url: &str, names: &[String]) -> (String, Vec<Any>) {
    let wildcard = names.iter().any(|n| n == "*") || (names.is_empty() && wildcard_type(type_url));
    let selected: Vec<(&String, &Any)> = current
        .get(type_url)
        .into_iter()
        .flatten()
        .filter(|(name, _)| wildcard || names.contains(name))
        .collect();
    let version = hash(
        selected
            .iter()
            .map(|(n, a)| (n.as_str(), a.value.as_slice())),
    );
    (
        version,
        selected.into_iter().map(|(_, a)| a.clone()).collect(),
    )
}

impl Sotw {
    fn response(&mut self, conn: &mut Conn, type_url: &str) -> Option<DiscoveryResponse> {
        let t = self.types.get_mut(type_url)?;
        let (version, resources) = select(&conn.current, type_url, &t.names);
        let nonce = conn.sent(type_url, &version);
        t.sent_version = Some(version.clone());
        t.nonce = nonce.clone();
        Some(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const DELTA: bool = false;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn request(&mut self, conn: &mut Conn, req: DiscoveryRequest) -> Vec<DiscoveryResponse> {
        let ty = req.type_url.clone();
        if !TYPES.contains(&ty.as_str()) {
            // Unknown types: nothing to serve, and an empty answer would
            // wipe what the proxy has.
            return Vec::new();
        }
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != t.nonce {
                // A reply to an older response: superseded, per the xDS protocol.
                return Vec::new();
            }
            let version = match &req.error_detail {
                // A NACK names the version the proxy still runs; the
                // refused one is the one last sent.
                Some(_) => t.sent_version.clone().unwrap_or_default(),
                None => req.version_info.clone(),
            };
            conn.answered(
                &ty,
                &req.response_nonce,
                &version,
                req.error_detail.as_ref(),
            );
        }
        let names_changed = t.names != req.resource_names;
        t.names = req.resource_names;
        let (version, _) = select(&conn.current, &ty, &t.names);
        let send = if first {
            req.version_info != version
        } else {
            names_changed || t.sent_version.as_ref() != Some(&version)
        };
        if first && !send {
            // The proxy already holds exactly this (a reconnect).
            t.sent_version = Some(version.clone());
            conn.registry.update(conn.peer.conn, &ty, |s| {
                s.sent = Some(version.clone());
                s.acked = Some(version.clone());
            });
        }
        if send {
            self.response(conn, &ty).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    fn push_changed(&mut self, conn: &mut Conn) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for ty in TYPES {
            let Some(t) = self.types.get(ty) else {
                continue;
            };
            let (version, _) = select(&conn.current, ty, &t.names);
            if t.sent_version.as_ref() != Some(&version) {
                out.extend(self.response(conn, ty));
            }
        }
        out
    }
}

// === delta ===

#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds, by name: the version last sent.
    sent: BTreeMap<String, String>,
    nonce: String,
    nonce_version: String,
}

#[derive(Default)]
struct Delta {
    types: BTreeMap<String, DeltaType>,
}

impl Delta {
    /// The difference between what the proxy holds and what it should;
    /// `None` when there is none (unless `always`, for a first request).
    fn response(
        &mut self,
        conn: &mut Conn,
        ty: &str,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let t = self.types.get_mut(ty)?;
        let all = conn.current.get(ty);
        let wanted: BTreeMap<&String, &Any> = all
            .into_iter()
            .flatten()
            .filter(|(name, _)| t.wildcard || t.names.contains(*name))
            .collect();
        let mut resources = Vec::new();
        for (name, any) in &wanted {
            let version = resource_version(any);
            if t.sent.get(*name) != Some(&version) {
                t.sent.insert((*name).clone(), version.clone());
                resources.push(Resource {
                    name: (*name).clone(),
                    version,
                    resource: Some((*any).clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = t
            .sent
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .cloned()
            .collect();
        for n in &removed {
            t.sent.remove(n);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        let version = hash(wanted.iter().map(|(n, a)| (n.as_str(), a.value.as_slice())));
        t.nonce = conn.sent(ty, &version);
        t.nonce_version = version.clone();
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: ty.to_string(),
            removed_resources: removed,
            nonce: t.nonce.clone(),
            ..Default::default()
        })
    }
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const DELTA: bool = true;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn request(
        &mut self,
        conn: &mut Conn,
        req: DeltaDiscoveryRequest,
    ) -> Vec<DeltaDiscoveryResponse> {
        let ty = req.type_url.clone();
        if !TYPES.contains(&ty.as_str()) {
            return Vec::new();
        }
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty.clone()).or_default();
        if first {
            t.wildcard = wildcard_type(&ty) && req.resource_names_subscribe.is_empty();
            t.sent = req.initial_resource_versions.into_iter().collect();
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                t.wildcard = true;
            } else {
                t.names.insert(name);
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.names.remove(name);
                t.sent.remove(name);
            }
        }
        if !req.response_nonce.is_empty() && req.response_nonce == t.nonce {
            let version = t.nonce_version.clone();
            conn.answered(
                &ty,
                &req.response_nonce,
                &version,
                req.error_detail.as_ref(),
            );
        }
        self.response(conn, &ty, first).into_iter().collect()
    }

    fn push_changed(&mut self, conn: &mut Conn) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for ty in TYPES {
            if self.types.contains_key(ty) {
                out.extend(self.response(conn, ty, false));
            }
        }
        out
    }
}

/// Serves ADS in clear text on `listener` until `shutdown` resolves: for a
/// loopback address (`--xds-plaintext`) and in-process tests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    xds: Xds,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(xds.service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// [`serve`] over TLS.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    xds: Xds,
    tls: super::tls::XdsTls,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(xds.service())
        .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
        .await
}
