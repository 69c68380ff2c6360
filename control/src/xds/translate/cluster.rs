//! Clusters and their endpoints: the local app behind the ingress listener,
//! and the virtual nodes that egress routes target.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{ads_source, appmesh_metadata, duration_ms, socket_address, Ctx, ResourceSet};
use crate::xds::spec::{NodeListener, PoolLimits, VirtualNodeSpec};

/// One registered address of a virtual node: a connected proxy's ingress,
/// or an instance registered by hand through `/trellis/v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Instance {
    pub address: String,
    pub port: u32,
}

/// The instance registry: (mesh, virtual node) → its instances.
pub type Instances = BTreeMap<(String, String), BTreeSet<Instance>>;

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
fn http2_options(cluster: &mut Value) {
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
        c["health_checks"] = json!([check]);
        if let Some(port) = hc.port.filter(|p| *p != pm.port) {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["health_check_config"] = json!({"port_value": port});
        }
    }
    set.clusters.insert(name.clone(), c);
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

/// DNS service discovery → a DNS cluster on the listener port; anything else
/// (Cloud Map, or none) → EDS from the control plane's instance registry.
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
        .and_then(|s| s.ip_preference.clone());
    if let Some(dns) = spec.service_discovery.as_ref().and_then(|s| s.dns.as_ref()) {
        let logical = dns.response_type.as_deref() != Some("ENDPOINTS");
        cluster["type"] = json!(if logical { "LOGICAL_DNS" } else { "STRICT_DNS" });
        cluster["load_assignment"] = json!({
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(&dns.hostname, port)}}]}],
        });
        let family = match dns.ip_preference.clone().or(mesh_ip).as_deref() {
            Some("IPv4_ONLY") => Some("V4_ONLY"),
            Some("IPv6_ONLY") => Some("V6_ONLY"),
            Some("IPv4_PREFERRED") => Some("V4_PREFERRED"),
            Some("IPv6_PREFERRED") => Some("AUTO"),
            _ => None,
        };
        if let Some(f) = family {
            cluster["dns_lookup_family"] = json!(f);
        }
        return;
    }
    cluster["type"] = json!("EDS");
    cluster["eds_cluster_config"] = json!({"eds_config": ads_source(), "service_name": name});
    let instances = ctx
        .instances
        .get(&(ctx.mesh.to_string(), target.to_string()));
    let endpoints: Vec<Value> = instances
        .into_iter()
        .flatten()
        .map(|i| json!({"endpoint": {"address": socket_address(&i.address, i.port)}}))
        .collect();
    let assignment = if endpoints.is_empty() {
        json!({"cluster_name": name})
    } else {
        json!({"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]})
    };
    set.endpoints.insert(name.to_string(), assignment);
}
