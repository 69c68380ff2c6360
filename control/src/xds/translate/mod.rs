//! App Mesh resources → Envoy xDS resources, as a pure function of a store
//! snapshot, the proxy's ports and the instance registry.
//!
//! Resources are built as proto3 JSON and turned into protobuf through the
//! Envoy descriptor pool ([`encode`]): the JSON is what the golden tests pin,
//! and the pool refuses any field name that Envoy's API does not have.
//!
//! What is emitted, and why (App Mesh's Envoy received much the same):
//! - a virtual node gets an inbound listener on its ingress port that hands
//!   each App Mesh listener's traffic to the local app on 127.0.0.1, and an
//!   outbound listener on its egress port with one virtual host per backend
//!   virtual service;
//! - `connectionPool` and `healthCheck` shape the local (ingress) cluster,
//!   `outlierDetection` the clusters that *clients* use to reach the node,
//!   since only clients can eject a misbehaving host;
//! - virtual node and virtual gateway TLS (listener `tls`, client policies)
//!   becomes transport sockets ([`tls`]); see
//!   `control/README.md`.

mod cluster;
mod gateway;
mod node;
mod routes;
mod tls;
mod trace_export;

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::model::{Kind, ResourceKey};
use crate::store::Snapshot;

use super::spec::{
    GatewayRouteSpec, Logging, MeshSpec, RouteSpec, VirtualGatewaySpec, VirtualNodeSpec,
    VirtualRouterSpec, VirtualServiceSpec,
};

pub use cluster::{Instance, Instances, Owner, Sidecar};
pub use trace_export::{TraceExport, COLLECTOR_CLUSTER};

/// Where a proxy listens, from its node metadata (see [`Ports::from_node`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    pub ingress: u32,
    pub egress: u32,
    /// The address listeners bind; `0.0.0.0` for a sidecar that takes
    /// traffic from other hosts, `127.0.0.1` on a single machine.
    pub listener_address: String,
    /// App Mesh listener port → a port of its own on the proxy, for
    /// listeners after the first when nothing intercepts traffic (see
    /// [`Ports::intercepted`]).
    pub listener_ingress: BTreeMap<u32, u32>,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            ingress: DEFAULT_INGRESS_PORT,
            egress: DEFAULT_EGRESS_PORT,
            listener_address: "0.0.0.0".into(),
            listener_ingress: BTreeMap::new(),
        }
    }
}

pub const DEFAULT_INGRESS_PORT: u32 = 15000;
pub const DEFAULT_EGRESS_PORT: u32 = 15001;

/// Node metadata keys that `trellis-control bootstrap` writes and the
/// translation reads.
pub const META_INGRESS_PORT: &str = "trellis.ingress_port";
pub const META_EGRESS_PORT: &str = "trellis.egress_port";
pub const META_LISTENER_ADDRESS: &str = "trellis.listener_address";
/// `PORT=PROXY_PORT,...`: see [`Ports::listener_ingress`].
pub const META_LISTENER_INGRESS_PORTS: &str = "trellis.listener_ingress_ports";

/// `8081=15010,8082=15011` → {8081: 15010, 8082: 15011}; the error names
/// the first malformed item.
pub fn parse_listener_ingress(text: &str) -> Result<BTreeMap<u32, u32>, String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
    };
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once('=')
                .and_then(|(a, b)| Some((port(a)?, port(b)?)))
                .ok_or_else(|| format!("{item:?}: expected LISTENER_PORT=PROXY_PORT"))
        })
        .collect()
}

impl Ports {
    /// Reads the ports from a node's metadata, numbers or strings; missing or
    /// malformed values fall back to the defaults (App Mesh's 15000/15001).
    pub fn from_metadata(meta: &serde_json::Map<String, Value>) -> Ports {
        let port = |key: &str, default: u32| {
            meta.get(key)
                .and_then(|v| match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                })
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=65535).contains(n))
                .unwrap_or(default)
        };
        Ports {
            ingress: port(META_INGRESS_PORT, DEFAULT_INGRESS_PORT),
            egress: port(META_EGRESS_PORT, DEFAULT_EGRESS_PORT),
            listener_address: meta
                .get(META_LISTENER_ADDRESS)
                .and_then(Value::as_str)
                .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
                .unwrap_or("0.0.0.0")
                .to_string(),
            listener_ingress: meta
                .get(META_LISTENER_INGRESS_PORTS)
                .and_then(Value::as_str)
                .and_then(|s| parse_listener_ingress(s).ok())
                .unwrap_or_default(),
        }
    }

    /// Whether traffic for the app's ports is redirected to the ingress
    /// port (`trellis-proxy init`), which only a proxy that listens beyond
    /// loopback can receive from other hosts. Without it each App Mesh
    /// listener needs a port of its own on the proxy.
    pub fn intercepted(&self) -> bool {
        self.listener_address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback())
    }

    /// How a proxy with these ports serves its node's listeners, for its
    /// registered instance.
    pub fn sidecar(&self) -> Sidecar {
        Sidecar {
            intercepted: self.intercepted(),
            listener_ingress: self.listener_ingress.clone(),
        }
    }
}

/// What a node id names: `mesh/M/virtualNode/N` or `mesh/M/virtualGateway/G`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub mesh: String,
    pub gateway: bool,
    pub name: String,
}

impl NodeId {
    /// Also takes a full ARN, whose resource part is the node id.
    pub fn parse(id: &str) -> Option<NodeId> {
        let path = match id.strip_prefix("arn:") {
            Some(_) => id.splitn(6, ':').nth(5)?,
            None => id,
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["mesh", mesh, kind, name] if !mesh.is_empty() && !name.is_empty() => {
                let gateway = match *kind {
                    "virtualNode" => false,
                    "virtualGateway" => true,
                    _ => return None,
                };
                Some(NodeId {
                    mesh: mesh.to_string(),
                    gateway,
                    name: name.to_string(),
                })
            }
            _ => None,
        }
    }

    pub fn render(&self) -> String {
        let kind = if self.gateway {
            "virtualGateway"
        } else {
            "virtualNode"
        };
        format!("mesh/{}/{kind}/{}", self.mesh, self.name)
    }
}

/// The four resource types of one proxy, by name, as proto3 JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    pub listeners: BTreeMap<String, Value>,
    pub routes: BTreeMap<String, Value>,
    pub clusters: BTreeMap<String, Value>,
    pub endpoints: BTreeMap<String, Value>,
}

impl ResourceSet {
    /// `(type URL, resources)` pairs, for encoding.
    pub fn by_type(&self) -> [(&'static str, &BTreeMap<String, Value>); 4] {
        use xds_protos::type_url as t;
        [
            (t::LISTENER, &self.listeners),
            (t::ROUTE_CONFIGURATION, &self.routes),
            (t::CLUSTER, &self.clusters),
            (t::CLUSTER_LOAD_ASSIGNMENT, &self.endpoints),
        ]
    }
}

/// Why a resource set could not be encoded: a bug in the translation (it
/// built JSON that Envoy's API does not have), never bad user input.
#[derive(Debug, thiserror::Error)]
#[error("translation produced an invalid {type_url} {name}: {message}")]
pub struct EncodeError {
    pub type_url: String,
    pub name: String,
    pub message: String,
}

/// Protobuf resources ready for the wire: type URL → name → `Any`.
pub type Encoded = BTreeMap<&'static str, BTreeMap<String, prost_types::Any>>;

/// Turns the JSON resources into protobuf `Any`s through the descriptor pool.
pub fn encode(set: &ResourceSet) -> Result<Encoded, EncodeError> {
    let mut out = Encoded::new();
    for (url, resources) in set.by_type() {
        let slot = out.entry(url).or_default();
        for (name, json) in resources {
            slot.insert(name.clone(), encode_one(url, name, json)?);
        }
    }
    Ok(out)
}

/// What each encoded resource was made from: a digest of its JSON.
pub type Prints = BTreeMap<(&'static str, String), [u8; 16]>;

/// [`encode`], reusing from `previous` every resource whose JSON digest is
/// the one in `prints` (which is updated): a stream whose route changed
/// re-encodes its route configuration, not its listeners and clusters.
/// Encoding through the descriptor pool is most of a translation's cost.
pub fn encode_changed(
    set: &ResourceSet,
    previous: &Encoded,
    prints: &mut Prints,
) -> Result<Encoded, EncodeError> {
    use sha2::{Digest, Sha256};
    let mut out = Encoded::new();
    let mut next = Prints::new();
    for (url, resources) in set.by_type() {
        let slot = out.entry(url).or_default();
        let old = previous.get(url);
        for (name, json) in resources {
            let digest = Sha256::digest(json.to_string().as_bytes());
            let mut print = [0u8; 16];
            print.copy_from_slice(&digest[..16]);
            let key = (url, name.clone());
            let reused = match prints.get(&key) {
                Some(p) if *p == print => old.and_then(|o| o.get(name)).cloned(),
                _ => None,
            };
            let any = match reused {
                Some(any) => any,
                None => encode_one(url, name, json)?,
            };
            slot.insert(name.clone(), any);
            next.insert(key, print);
        }
    }
    *prints = next;
    Ok(out)
}

/// One resource of type `url` from proto3 JSON, through the descriptor pool.
pub fn encode_one(url: &str, name: &str, json: &Value) -> Result<prost_types::Any, EncodeError> {
    let err = |message: String| EncodeError {
        type_url: url.to_string(),
        name: name.to_string(),
        message,
    };
    let message = url.rsplit('/').next().unwrap_or(url);
    let desc = xds_protos::descriptor_pool()
        .get_message_by_name(message)
        .ok_or_else(|| err("no such message in the pool".into()))?;
    let msg =
        prost_reflect::DynamicMessage::deserialize(desc, json).map_err(|e| err(e.to_string()))?;
    Ok(prost_types::Any {
        type_url: url.to_string(),
        value: prost::Message::encode_to_vec(&msg),
    })
}

/// What one proxy's translation read: a resource, a mesh's list of routes or
/// nodes, or an owner's instances. A new model that gives every dependency
/// the same fingerprint gives that proxy the same resources, so its stream
/// need not translate again (see [`Deps::unchanged`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Dep {
    Mesh(String),
    Node(String, String),
    Service(String, String),
    Router(String, String),
    /// A router's routes, all of them.
    Routes(String, String),
    Gateway(String, String),
    GatewayRoutes(String, String),
    /// Every virtual node of a mesh (who may call a TLS listener).
    MeshNodes(String),
    /// Every gateway route of a mesh (which gateways may call one).
    MeshGatewayRoutes(String),
    Instances(Owner),
}

/// A proxy's dependencies with their fingerprints when it was translated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deps(BTreeMap<Dep, u64>);

impl Deps {
    /// Whether translating again against `model` and `instances` would read
    /// exactly what the last translation read (and so give the same result).
    pub fn unchanged(&self, model: &Model, instances: &Instances) -> bool {
        self.0
            .iter()
            .all(|(dep, print)| fingerprint(model, instances, dep) == *print)
    }
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    // 0 stands for "absent".
    h.finish().max(1)
}

fn fingerprint(model: &Model, instances: &Instances, dep: &Dep) -> u64 {
    match dep {
        Dep::Instances(owner) => instances.get(owner).map_or(0, hash_of),
        other => model.prints.get(other).copied().unwrap_or(0),
    }
}

/// The App Mesh resources of a snapshot, parsed and indexed by mesh and name.
#[derive(Debug, Default)]
pub struct Model {
    /// Fingerprints of every resource dependency (all but instances).
    prints: std::collections::HashMap<Dep, u64>,
    meshes: BTreeMap<String, MeshSpec>,
    nodes: BTreeMap<(String, String), VirtualNodeSpec>,
    services: BTreeMap<(String, String), VirtualServiceSpec>,
    routers: BTreeMap<(String, String), VirtualRouterSpec>,
    /// By (mesh, router): (route name, spec).
    routes: BTreeMap<(String, String), Vec<(String, RouteSpec)>>,
    gateways: BTreeMap<(String, String), VirtualGatewaySpec>,
    gateway_routes: BTreeMap<(String, String), Vec<(String, GatewayRouteSpec)>>,
}

fn parse<T: serde::de::DeserializeOwned + Default>(key: &ResourceKey, spec: &Value) -> T {
    // Specs were validated against the model when written; one that still
    // does not fit these types is translated as empty, loudly.
    serde_json::from_value(spec.clone()).unwrap_or_else(|e| {
        tracing::warn!(resource = %key.path(), error = %e, "cannot read a spec for xDS; treating it as empty");
        T::default()
    })
}

impl Model {
    pub fn new(snapshot: &Snapshot) -> Model {
        let mut m = Model::default();
        // Lists (a router's routes, a mesh's nodes) fold their members'
        // fingerprints in snapshot order, which is stable.
        let mut lists: BTreeMap<Dep, Vec<(String, u64)>> = BTreeMap::new();
        for r in &snapshot.resources {
            let k = &r.key;
            let id = (k.mesh.clone(), k.name.clone());
            let parent = (k.mesh.clone(), k.parent.clone().unwrap_or_default());
            let print = hash_of(&r.spec.to_string());
            let (m_, n_) = (k.mesh.clone(), k.name.clone());
            let (own, list) = match k.kind {
                Kind::Mesh => (Some(Dep::Mesh(n_)), None),
                Kind::VirtualNode => (Some(Dep::Node(m_.clone(), n_)), Some(Dep::MeshNodes(m_))),
                Kind::VirtualService => (Some(Dep::Service(m_, n_)), None),
                Kind::VirtualRouter => (Some(Dep::Router(m_, n_)), None),
                Kind::Route => (None, Some(Dep::Routes(parent.0.clone(), parent.1.clone()))),
                Kind::VirtualGateway => (Some(Dep::Gateway(m_, n_)), None),
                Kind::GatewayRoute => {
                    let name = format!("{}/{}", parent.1, k.name);
                    lists
                        .entry(Dep::MeshGatewayRoutes(m_))
                        .or_default()
                        .push((name, print));
                    (
                        None,
                        Some(Dep::GatewayRoutes(parent.0.clone(), parent.1.clone())),
                    )
                }
            };
            if let Some(dep) = own {
                m.prints.insert(dep, print);
            }
            if let Some(dep) = list {
                lists.entry(dep).or_default().push((k.name.clone(), print));
            }
            match k.kind {
                Kind::Mesh => {
                    m.meshes.insert(k.name.clone(), parse(k, &r.spec));
                }
                Kind::VirtualNode => {
                    m.nodes.insert(id, parse(k, &r.spec));
                }
                Kind::VirtualService => {
                    m.services.insert(id, parse(k, &r.spec));
                }
                Kind::VirtualRouter => {
                    m.routers.insert(id, parse(k, &r.spec));
                }
                Kind::Route => m
                    .routes
                    .entry(parent)
                    .or_default()
                    .push((k.name.clone(), parse(k, &r.spec))),
                Kind::VirtualGateway => {
                    m.gateways.insert(id, parse(k, &r.spec));
                }
                Kind::GatewayRoute => m
                    .gateway_routes
                    .entry(parent)
                    .or_default()
                    .push((k.name.clone(), parse(k, &r.spec))),
            }
        }
        for (dep, members) in lists {
            m.prints.insert(dep, hash_of(&members));
        }
        m
    }

    /// Every proxy identity the model defines, for [`translate_all`].
    pub fn node_ids(&self) -> Vec<NodeId> {
        let nodes = self.nodes.keys().map(|(mesh, name)| NodeId {
            mesh: mesh.clone(),
            gateway: false,
            name: name.clone(),
        });
        let gateways = self.gateways.keys().map(|(mesh, name)| NodeId {
            mesh: mesh.clone(),
            gateway: true,
            name: name.clone(),
        });
        nodes.chain(gateways).collect()
    }
}

/// The resources of one proxy; `None` when the model has no such node or
/// gateway (the proxy then gets empty resource sets, as Envoy expects).
pub fn translate(
    model: &Model,
    id: &NodeId,
    ports: &Ports,
    instances: &Instances,
) -> Option<ResourceSet> {
    translate_tracked(model, id, ports, instances).0
}

/// [`translate`], and what it read, for [`Deps::unchanged`].
pub fn translate_tracked(
    model: &Model,
    id: &NodeId,
    ports: &Ports,
    instances: &Instances,
) -> (Option<ResourceSet>, Deps) {
    let key = (id.mesh.clone(), id.name.clone());
    let deps = RefCell::new(Deps::default());
    let track = |dep: Dep| {
        let print = fingerprint(model, instances, &dep);
        deps.borrow_mut().0.insert(dep, print);
    };
    track(Dep::Mesh(id.mesh.clone()));
    let Some(mesh_spec) = model.meshes.get(&id.mesh) else {
        return (None, deps.into_inner());
    };
    if id.gateway {
        track(Dep::Gateway(key.0.clone(), key.1.clone()));
    } else {
        track(Dep::Node(key.0.clone(), key.1.clone()));
    }
    let ctx = Ctx {
        model,
        mesh: &id.mesh,
        mesh_spec,
        instances,
        ports,
        deps: &deps,
    };
    let set = if id.gateway {
        model
            .gateways
            .get(&key)
            .map(|spec| gateway::translate(&ctx, &id.name, spec))
    } else {
        model
            .nodes
            .get(&key)
            .map(|spec| node::translate(&ctx, &id.name, spec))
    };
    (set, deps.into_inner())
}

/// Every node and gateway of a snapshot with default ports: the pure
/// snapshot → per-node resources function the goldens pin.
pub fn translate_all(snapshot: &Snapshot, instances: &Instances) -> BTreeMap<String, ResourceSet> {
    let model = Model::new(snapshot);
    let ports = Ports::default();
    model
        .node_ids()
        .into_iter()
        .filter_map(|id| Some((id.render(), translate(&model, &id, &ports, instances)?)))
        .collect()
}

/// What every part of one proxy's translation needs. Every read of the
/// model or the instances goes through its accessors, which record it.
struct Ctx<'a> {
    model: &'a Model,
    mesh: &'a str,
    mesh_spec: &'a MeshSpec,
    instances: &'a Instances,
    ports: &'a Ports,
    deps: &'a RefCell<Deps>,
}

impl Ctx<'_> {
    fn track(&self, dep: Dep) {
        let print = fingerprint(self.model, self.instances, &dep);
        self.deps.borrow_mut().0.insert(dep, print);
    }

    fn key(&self, name: &str) -> (String, String) {
        (self.mesh.to_string(), name.to_string())
    }

    fn node(&self, name: &str) -> Option<&VirtualNodeSpec> {
        let (mesh, name) = self.key(name);
        self.track(Dep::Node(mesh.clone(), name.clone()));
        self.model.nodes.get(&(mesh, name))
    }

    /// Every virtual node of this mesh.
    fn nodes(&self) -> impl Iterator<Item = (&str, &VirtualNodeSpec)> {
        self.track(Dep::MeshNodes(self.mesh.to_string()));
        self.model
            .nodes
            .iter()
            .filter(|((mesh, _), _)| mesh == self.mesh)
            .map(|((_, name), spec)| (name.as_str(), spec))
    }

    /// Every gateway's routes in this mesh, by gateway name.
    fn all_gateway_routes(&self) -> impl Iterator<Item = (&str, &[(String, GatewayRouteSpec)])> {
        self.track(Dep::MeshGatewayRoutes(self.mesh.to_string()));
        self.model
            .gateway_routes
            .iter()
            .filter(|((mesh, _), _)| mesh == self.mesh)
            .map(|((_, gateway), routes)| (gateway.as_str(), routes.as_slice()))
    }

    fn service(&self, name: &str) -> Option<&VirtualServiceSpec> {
        let (mesh, name) = self.key(name);
        self.track(Dep::Service(mesh.clone(), name.clone()));
        self.model.services.get(&(mesh, name))
    }

    fn router(&self, name: &str) -> Option<&VirtualRouterSpec> {
        let (mesh, name) = self.key(name);
        self.track(Dep::Router(mesh.clone(), name.clone()));
        self.model.routers.get(&(mesh, name))
    }

    fn routes(&self, router: &str) -> &[(String, RouteSpec)] {
        let (mesh, router) = self.key(router);
        self.track(Dep::Routes(mesh.clone(), router.clone()));
        self.model
            .routes
            .get(&(mesh, router))
            .map_or(&[], Vec::as_slice)
    }

    fn gateway_routes(&self, gateway: &str) -> &[(String, GatewayRouteSpec)] {
        let (mesh, gateway) = self.key(gateway);
        self.track(Dep::GatewayRoutes(mesh.clone(), gateway.clone()));
        self.model
            .gateway_routes
            .get(&(mesh, gateway))
            .map_or(&[], Vec::as_slice)
    }

    fn instances(&self, owner: Owner) -> impl Iterator<Item = &Instance> {
        let set = self.instances.get(&owner);
        self.track(Dep::Instances(owner));
        set.into_iter().flatten()
    }
}

/// The filter-metadata namespace in which resources name the App Mesh
/// object they stand for, so a proxy's per-peer stats can name it.
const APPMESH_METADATA: &str = "trellis.appmesh";

/// `metadata` naming an App Mesh object: `{"virtual_service": "color"}` on
/// routes and virtual hosts, `{"virtual_node": "blue"}` on clusters.
fn appmesh_metadata(field: &str, name: &str) -> Value {
    json!({"filter_metadata": {APPMESH_METADATA: {field: name}}})
}

/// A protobuf `Duration` in proto3 JSON.
fn duration_ms(ms: u64) -> Value {
    if ms.is_multiple_of(1000) {
        json!(format!("{}s", ms / 1000))
    } else {
        json!(format!("{}.{:03}s", ms / 1000, ms % 1000))
    }
}

fn socket_address(address: &str, port: u32) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

/// ADS as the config source of RDS and EDS.
fn ads_source() -> Value {
    json!({"ads": {}, "resource_api_version": "V3"})
}

/// `logging.accessLog.file` → Envoy's file access logger.
fn access_log(logging: Option<&Logging>) -> Option<Value> {
    let file = logging?.access_log.as_ref()?.file.as_ref()?;
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": file.path,
    });
    if let Some(format) = &file.format {
        if let Some(text) = &format.text {
            let text = if text.ends_with('\n') {
                text.clone()
            } else {
                format!("{text}\n")
            };
            config["log_format"] = json!({"text_format_source": {"inline_string": text}});
        } else if let Some(fields) = &format.json {
            let object: serde_json::Map<String, Value> = fields
                .iter()
                .map(|f| (f.key.clone(), json!(f.value)))
                .collect();
            config["log_format"] = json!({"json_format": object});
        }
    }
    Some(json!([{"name": "envoy.access_loggers.file", "typed_config": config}]))
}

/// An HTTP connection manager that takes its routes from RDS.
fn hcm(stat_prefix: &str, route_config: &str, logging: Option<&Logging>) -> Value {
    let mut config = json!({
        "@type": xds_protos::type_url::HTTP_CONNECTION_MANAGER,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "rds": {"config_source": ads_source(), "route_config_name": route_config},
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": xds_protos::type_url::ROUTER},
        }],
        // App Mesh's Envoy passed WebSocket upgrades on HTTP/1.1 hops.
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    });
    if let Some(log) = access_log(logging) {
        config["access_log"] = log;
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": config})
}

/// A TCP proxy to one cluster or to weighted clusters.
fn tcp_proxy(
    stat_prefix: &str,
    targets: &[(String, u32)],
    idle_ms: Option<u64>,
    logging: Option<&Logging>,
) -> Value {
    let mut config = json!({
        "@type": xds_protos::type_url::TCP_PROXY,
        "stat_prefix": stat_prefix,
    });
    match targets {
        [(one, _)] => config["cluster"] = json!(one),
        many => {
            config["weighted_clusters"] = json!({"clusters": many
                .iter()
                .map(|(name, weight)| json!({"name": name, "weight": weight}))
                .collect::<Vec<_>>()})
        }
    }
    if let Some(ms) = idle_ms {
        config["idle_timeout"] = duration_ms(ms);
    }
    if let Some(log) = access_log(logging) {
        config["access_log"] = log;
    }
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": config})
}

/// What a listener does with a connection no chain matches.
enum Fallback {
    /// With several chains, the first one takes it (a proxy without
    /// interception sees only its own port); a single chain matches all.
    FirstChain,
    /// This chain takes it, and every other chain keeps its port match.
    Chain(Value),
}

/// A listener whose chains are matched by destination port (a proxy behind
/// port interception sees the original port, through `original_dst`).
fn listener(
    name: &str,
    address: &str,
    port: u32,
    direction: &str,
    chains: Vec<Chain>,
    fallback: Fallback,
) -> Value {
    let several = chains.len() > 1 || matches!(fallback, Fallback::Chain(_));
    let mut inspect_tls = false;
    let mut out_chains: Vec<Value> = Vec::new();
    for c in chains {
        let mut chain = json!({"name": c.name, "filters": [c.filter]});
        if let Some(md) = c.metadata {
            chain["metadata"] = md;
        }
        if let (true, Some(p)) = (several, c.destination_port) {
            chain["filter_chain_match"] = json!({"destination_port": p});
        }
        match c.tls {
            tls::Inbound::Plain => out_chains.push(chain),
            tls::Inbound::Strict(socket) => {
                chain["transport_socket"] = socket;
                out_chains.push(chain);
            }
            // Envoy picks the chain by the protocol the TLS inspector saw.
            tls::Inbound::Permissive(socket) => {
                inspect_tls = true;
                let mut secure = chain.clone();
                secure["name"] = json!(format!("{}_tls", c.name));
                secure["filter_chain_match"]["transport_protocol"] = json!("tls");
                secure["transport_socket"] = socket;
                chain["filter_chain_match"]["transport_protocol"] = json!("raw_buffer");
                out_chains.push(secure);
                out_chains.push(chain);
            }
        }
    }
    let chains = out_chains;
    let mut bind = socket_address(address, port);
    // `::` takes IPv4 as well, as a dual-stack pod's redirected traffic needs.
    if address
        .parse::<std::net::Ipv6Addr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        bind["socket_address"]["ipv4_compat"] = json!(true);
    }
    let mut out = json!({
        "name": name,
        "address": bind,
        "traffic_direction": direction,
        "filter_chains": chains,
    });
    if inspect_tls {
        out["listener_filters"] = json!([{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }]);
    }
    if let Fallback::Chain(default) = fallback {
        out["default_filter_chain"] = default;
        return out;
    }
    // Without interception every connection arrives on the listener's own
    // port: the first App Mesh listener takes whatever no chain matched.
    if several && chains.iter().all(|c| c.get("filter_chain_match").is_some()) {
        if let Some(first) = chains.first() {
            let mut default = json!({"name": "default", "filters": first["filters"].clone()});
            if let Some(md) = first.get("metadata") {
                default["metadata"] = md.clone();
            }
            // A STRICT first listener stays TLS-only on the default chain;
            // a PERMISSIVE one (whose first chain is TLS) too, as the
            // inspector cannot pick a default.
            if let Some(socket) = first.get("transport_socket") {
                default["transport_socket"] = socket.clone();
            }
            out["default_filter_chain"] = default;
        }
    }
    out
}

/// Puts `envoy.filters.listener.original_dst` first among a listener's
/// filters: behind interception, chains match the port the client dialled
/// and an `ORIGINAL_DST` cluster connects to the address it dialled.
fn original_dst(listener: &mut Value) {
    let filter = json!({
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
    });
    match listener["listener_filters"].as_array_mut() {
        Some(filters) => filters.insert(0, filter),
        None => listener["listener_filters"] = json!([filter]),
    }
}

#[derive(Clone)]
struct Chain {
    tls: tls::Inbound,
    name: String,
    destination_port: Option<u32>,
    filter: Value,
    /// The chain's `metadata`: a TCP egress chain names its virtual service
    /// there, as a virtual host does for HTTP.
    metadata: Option<Value>,
}

#[cfg(test)]
mod listener_tests;
#[cfg(test)]
mod tests;
