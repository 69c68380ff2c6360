//! Clusters and their endpoints: the local app behind the ingress listener,
//! and the virtual nodes that egress routes target.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{ads_source, appmesh_metadata, duration_ms, socket_address, Ctx, ResourceSet};
use crate::xds::spec::{HealthCheck, NodeListener, PoolLimits, VirtualNodeSpec};

/// One registered address: a connected proxy's ingress, or an instance
/// registered through `/trellis/v1/instances` for a virtual node or for a
/// Cloud Map service (with the attributes Cloud Map filters on).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Instance {
    pub address: String,
    pub port: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Set for a connected proxy, whose `port` is its ingress port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
}

/// How a connected proxy serves its node's listeners: the first on its
/// ingress port; another on the port the listener is mapped to, else on the
/// listener's own port when traffic is intercepted (redirected to the
/// ingress port, where `original_dst` recovers the port), else not at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Sidecar {
    pub intercepted: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listener_ingress: BTreeMap<u32, u32>,
}

impl Instance {
    pub fn new(address: impl Into<String>, port: u32) -> Instance {
        Instance {
            address: address.into(),
            port,
            attributes: BTreeMap::new(),
            sidecar: None,
        }
    }

    /// Where this instance serves the node listener on `listener` (the
    /// node's first listener being on `first`); `None` when it does not.
    fn port_for(&self, listener: u32, first: Option<u32>) -> Option<u32> {
        let Some(s) = &self.sidecar else {
            return Some(self.port);
        };
        match s.listener_ingress.get(&listener) {
            Some(p) => Some(*p),
            None if first == Some(listener) => Some(self.port),
            None if s.intercepted => Some(listener),
            None => None,
        }
    }

    pub fn same_address(&self, other: &Instance) -> bool {
        self.address == other.address && self.port == other.port
    }
}

/// Whose instances: a virtual node's (its connected proxies and those
/// registered for it), or a Cloud Map service's, which `awsCloudMap` nodes
/// select by namespace, service and attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    VirtualNode { mesh: String, node: String },
    CloudMap { namespace: String, service: String },
}

impl Owner {
    pub fn node(mesh: &str, node: &str) -> Owner {
        Owner::VirtualNode {
            mesh: mesh.to_string(),
            node: node.to_string(),
        }
    }

    pub fn cloud_map(namespace: &str, service: &str) -> Owner {
        Owner::CloudMap {
            namespace: namespace.to_string(),
            service: service.to_string(),
        }
    }
}

/// The instance registry: owner → its instances.
pub type Instances = BTreeMap<Owner, BTreeSet<Instance>>;

const CONNECT_TIMEOUT: &str = "1s";

fn egress_cluster_name(mesh: &str, node: &str, protocol: &str, port: u32) -> String {
    format!("cds_egress_{mesh}_{node}_{protocol}_{port}")
}

/// The backend port of a cluster named by [`egress_cluster_name`].
pub(super) fn egress_port(name: &str) -> Option<u32> {
    name.strip_prefix("cds_egress_")?
        .rsplit('_')
        .next()?
        .parse()
        .ok()
}

fn ingress_cluster_name(mesh: &str, node: &str, protocol: &str, port: u32) -> String {
    format!("cds_ingress_{mesh}_{node}_{protocol}_{port}")
}

fn is_http2(protocol: &str) -> bool {
    matches!(protocol, "http2" | "grpc")
}

/// HTTP/2 to the upstream, the form both Envoy and trellis-proxy read.
pub(super) fn http2_options(cluster: &mut Value) {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": xds_protos::type_url::HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    });
}

/// `connectionPool` → circuit breakers: http1 limits connections and
/// pending requests, http2/grpc limit concurrent requests, tcp connections.
pub(super) fn circuit_breakers(cluster: &mut Value, limits: &PoolLimits) {
    let mut t = serde_json::Map::new();
    if let Some(n) = limits.max_connections {
        t.insert("max_connections".into(), json!(n));
    }
    if let Some(n) = limits.max_pending_requests {
        t.insert("max_pending_requests".into(), json!(n));
    }
    if let Some(n) = limits.max_requests {
        t.insert("max_requests".into(), json!(n));
    }
    if !t.is_empty() {
        cluster["circuit_breakers"] = json!({"thresholds": [Value::Object(t)]});
    }
}

/// The local app behind one App Mesh listener of this node.
pub(super) fn ingress(
    set: &mut ResourceSet,
    mesh: &str,
    node: &str,
    listener: &NodeListener,
) -> String {
    let pm = &listener.port_mapping;
    let name = ingress_cluster_name(mesh, node, &pm.protocol, pm.port);
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address("127.0.0.1", pm.port)}}]}],
        },
    });
    if is_http2(&pm.protocol) {
        http2_options(&mut c);
    }
    if let Some(limits) = listener
        .connection_pool
        .as_ref()
        .and_then(|p| p.for_protocol(&pm.protocol))
    {
        circuit_breakers(&mut c, limits);
    }
    if let Some(hc) = &listener.health_check {
        add_health_check(&mut c, hc);
        if let Some(port) = hc.port.filter(|p| *p != pm.port) {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["health_check_config"] = json!({"port_value": port});
        }
    }
    set.clusters.insert(name.clone(), c);
    name
}

/// Puts [`health_check`] on `cluster`, except a `grpc` check on a cluster
/// that does not speak HTTP/2: Envoy refuses that cluster (gRPC health
/// checks are HTTP/2 streams), so the check is left out, with a warning.
pub(super) fn add_health_check(cluster: &mut Value, hc: &HealthCheck) {
    if hc.protocol == "grpc" && cluster.get("typed_extension_protocol_options").is_none() {
        tracing::warn!(
            cluster = %cluster["name"],
            "a grpc health check on a cluster that is not HTTP/2 is left out"
        );
        return;
    }
    cluster["health_checks"] = json!([health_check(hc)]);
}

/// App Mesh's `healthCheck` → one Envoy health check: `http` and `http2`
/// (the same over an HTTP/2 codec) ask `path`, `grpc` asks
/// `grpc.health.v1.Health/Check`, `tcp` only connects.
fn health_check(hc: &HealthCheck) -> Value {
    let mut check = json!({
        "timeout": duration_ms(hc.timeout_millis),
        "interval": duration_ms(hc.interval_millis),
        "healthy_threshold": hc.healthy_threshold,
        "unhealthy_threshold": hc.unhealthy_threshold,
    });
    match hc.protocol.as_str() {
        "http" | "http2" => {
            let mut http = json!({"path": hc.path.clone().unwrap_or_else(|| "/".into())});
            if hc.protocol == "http2" {
                http["codec_client_type"] = json!("HTTP2");
            }
            check["http_health_check"] = http;
        }
        "grpc" => check["grpc_health_check"] = json!({}),
        _ => check["tcp_health_check"] = json!({}),
    }
    check
}

/// The mesh `egressFilter` ALLOW_ALL's way out: an `ORIGINAL_DST` cluster,
/// which connects to wherever the app dialled (the connection's original
/// destination, or an explicit-proxy request's target).
pub(super) fn passthrough(set: &mut ResourceSet, mesh: &str) -> String {
    let name = format!("cds_egress_{mesh}_passthrough");
    set.clusters.insert(
        name.clone(),
        json!({
            "name": name,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": CONNECT_TIMEOUT,
        }),
    );
    name
}

/// The cluster that reaches `target`'s listener on `port` (its only listener
/// when `port` is `None`); `None` when the target has no such listener.
pub(super) fn egress(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    target: &str,
    port: Option<u32>,
) -> Option<String> {
    let spec = ctx.node(target)?;
    let listener = match port {
        Some(p) => spec.listeners.iter().find(|l| l.port_mapping.port == p)?,
        None => spec.listeners.first()?,
    };
    let pm = &listener.port_mapping;
    let name = egress_cluster_name(ctx.mesh, target, &pm.protocol, pm.port);
    if set.clusters.contains_key(&name) {
        return Some(name);
    }
    let mut c = json!({
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT,
        "metadata": appmesh_metadata("virtual_node", target),
    });
    discovery(ctx, set, &mut c, &name, target, spec, pm.port);
    if is_http2(&pm.protocol) {
        http2_options(&mut c);
    }
    if let Some(od) = &listener.outlier_detection {
        let mut o = json!({
            // Only server errors count, as in App Mesh; gateway errors are
            // a subset of them in Envoy and are left at their default.
            "enforcing_success_rate": 0,
        });
        if let Some(n) = od.max_server_errors {
            o["consecutive_5xx"] = json!(n);
        }
        if let Some(ms) = od.interval.and_then(|d| d.millis()) {
            o["interval"] = duration_ms(ms);
        }
        if let Some(ms) = od.base_ejection_duration.and_then(|d| d.millis()) {
            o["base_ejection_time"] = duration_ms(ms);
        }
        if let Some(p) = od.max_ejection_percent {
            o["max_ejection_percent"] = json!(p);
        }
        c["outlier_detection"] = o;
    }
    set.clusters.insert(name.clone(), c);
    Some(name)
}

/// App Mesh's `ipPreference` → Envoy's `dns_lookup_family`.
fn lookup_family(preference: Option<&str>) -> Option<&'static str> {
    match preference? {
        "IPv4_ONLY" => Some("V4_ONLY"),
        "IPv6_ONLY" => Some("V6_ONLY"),
        "IPv4_PREFERRED" => Some("V4_PREFERRED"),
        "IPv6_PREFERRED" => Some("AUTO"),
        _ => None,
    }
}

/// Whether an instance address fits an `ipPreference`: the `*_ONLY` ones
/// drop the other family; the preferred ones keep both, as each registered
/// instance has one address and nothing to prefer it over.
fn fits(preference: Option<&str>, address: &str) -> bool {
    let v4 = address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_ipv4());
    match preference {
        Some("IPv4_ONLY") => v4,
        Some("IPv6_ONLY") => !v4,
        _ => true,
    }
}

/// DNS service discovery → a DNS cluster on the listener port; anything else
/// → EDS from the control plane's instance registry: the node's own
/// instances (its connected proxies, and those registered for it), and for
/// `awsCloudMap` the instances registered for that namespace and service
/// whose attributes include every attribute the spec asks for.
fn discovery(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    cluster: &mut Value,
    name: &str,
    target: &str,
    spec: &VirtualNodeSpec,
    port: u32,
) {
    let mesh_ip = ctx
        .mesh_spec
        .service_discovery
        .as_ref()
        .and_then(|s| s.ip_preference.as_deref());
    let sd = spec.service_discovery.as_ref();
    if let Some(dns) = sd.and_then(|s| s.dns.as_ref()) {
        let logical = dns.response_type.as_deref() != Some("ENDPOINTS");
        cluster["type"] = json!(if logical { "LOGICAL_DNS" } else { "STRICT_DNS" });
        cluster["load_assignment"] = json!({
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(&dns.hostname, port)}}]}],
        });
        if let Some(f) = lookup_family(dns.ip_preference.as_deref().or(mesh_ip)) {
            cluster["dns_lookup_family"] = json!(f);
        }
        return;
    }
    cluster["type"] = json!("EDS");
    cluster["eds_cluster_config"] = json!({"eds_config": ads_source(), "service_name": name});
    let mut selected: BTreeSet<&Instance> = ctx.instances(Owner::node(ctx.mesh, target)).collect();
    let cloud_map = sd.and_then(|s| s.aws_cloud_map.as_ref());
    if let Some(cm) = cloud_map {
        let owner = Owner::cloud_map(&cm.namespace_name, &cm.service_name);
        let matching = ctx.instances(owner).filter(|i| {
            cm.attributes
                .iter()
                .all(|a| i.attributes.get(&a.key) == Some(&a.value))
        });
        selected.extend(matching);
    }
    let preference = cloud_map.and_then(|cm| cm.ip_preference.as_deref().or(mesh_ip));
    let first = spec.listeners.first().map(|l| l.port_mapping.port);
    let endpoints: Vec<Value> = selected
        .into_iter()
        .filter(|i| fits(preference, &i.address))
        .filter_map(|i| {
            let port = i.port_for(port, first)?;
            Some(json!({"endpoint": {"address": socket_address(&i.address, port)}}))
        })
        .collect();
    let assignment = if endpoints.is_empty() {
        json!({"cluster_name": name})
    } else {
        json!({"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]})
    };
    set.endpoints.insert(name.to_string(), assignment);
}
