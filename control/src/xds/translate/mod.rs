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
//!   becomes transport sockets ([`tls`]); the mesh `egressFilter`
//!   passthrough and Cloud Map attributes are not emitted yet: see
//!   `control/README.md`.

mod cluster;
mod gateway;
mod node;
mod routes;
mod tls;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::model::{Kind, ResourceKey};
use crate::store::Snapshot;

use super::spec::{
    GatewayRouteSpec, Logging, MeshSpec, RouteSpec, VirtualGatewaySpec, VirtualNodeSpec,
    VirtualRouterSpec, VirtualServiceSpec,
};

pub use cluster::{Instance, Instances};

/// Where a proxy listens, from its node metadata (see [`Ports::from_node`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    pub ingress: u32,
    pub egress: u32,
    /// The address listeners bind; `0.0.0.0` for a sidecar that takes
    /// traffic from other hosts, `127.0.0.1` on a single machine.
    pub listener_address: String,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            ingress: DEFAULT_INGRESS_PORT,
            egress: DEFAULT_EGRESS_PORT,
            listener_address: "0.0.0.0".into(),
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

/// The App Mesh resources of a snapshot, parsed and indexed by mesh and name.
#[derive(Debug, Default)]
pub struct Model {
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
        for r in &snapshot.resources {
            let k = &r.key;
            let id = (k.mesh.clone(), k.name.clone());
            let parent = (k.mesh.clone(), k.parent.clone().unwrap_or_default());
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
    let key = (id.mesh.clone(), id.name.clone());
    let ctx = Ctx {
        model,
        mesh: &id.mesh,
        mesh_spec: model.meshes.get(&id.mesh)?,
        instances,
        ports,
    };
    if id.gateway {
        let spec = model.gateways.get(&key)?;
        Some(gateway::translate(&ctx, &id.name, spec))
    } else {
        let spec = model.nodes.get(&key)?;
        Some(node::translate(&ctx, &id.name, spec))
    }
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

/// What every part of one proxy's translation needs.
struct Ctx<'a> {
    model: &'a Model,
    mesh: &'a str,
    mesh_spec: &'a MeshSpec,
    instances: &'a Instances,
    ports: &'a Ports,
}

impl Ctx<'_> {
    fn node(&self, name: &str) -> Option<&VirtualNodeSpec> {
        self.model
            .nodes
            .get(&(self.mesh.to_string(), name.to_string()))
    }

    fn service(&self, name: &str) -> Option<&VirtualServiceSpec> {
        self.model
            .services
            .get(&(self.mesh.to_string(), name.to_string()))
    }

    fn router(&self, name: &str) -> Option<&VirtualRouterSpec> {
        self.model
            .routers
            .get(&(self.mesh.to_string(), name.to_string()))
    }

    fn routes(&self, router: &str) -> &[(String, RouteSpec)] {
        self.model
            .routes
            .get(&(self.mesh.to_string(), router.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    fn gateway_routes(&self, gateway: &str) -> &[(String, GatewayRouteSpec)] {
        self.model
            .gateway_routes
            .get(&(self.mesh.to_string(), gateway.to_string()))
            .map_or(&[], Vec::as_slice)
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

/// A listener whose chains are matched by destination port when there are
/// several (a proxy behind port interception sees the original port); a
/// single chain matches everything.
fn listener(name: &str, address: &str, port: u32, direction: &str, chains: Vec<Chain>) -> Value {
    let several = chains.len() > 1;
    let mut inspect_tls = false;
    let mut out_chains: Vec<Value> = Vec::new();
    for c in chains {
        let mut chain = json!({"name": c.name, "filters": [c.filter]});
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
    let mut out = json!({
        "name": name,
        "address": socket_address(address, port),
        "traffic_direction": direction,
        "filter_chains": chains,
    });
    if inspect_tls {
        out["listener_filters"] = json!([{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }]);
    }
    // Without interception every connection arrives on the listener's own
    // port: the first App Mesh listener takes whatever no chain matched.
    if several && chains.iter().all(|c| c.get("filter_chain_match").is_some()) {
        if let Some(first) = chains.first() {
            let mut default = json!({"name": "default", "filters": first["filters"].clone()});
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

struct Chain {
    tls: tls::Inbound,
    name: String,
    destination_port: Option<u32>,
    filter: Value,
}

#[cfg(test)]
mod tests;
