//! `trellis-control bootstrap`: an Envoy v3 bootstrap that points a proxy
//! (trellis-proxy or stock Envoy) at this control plane over ADS.

use serde_json::{json, Value};
use trellis_control::xds::translate::{
    NodeId, META_EGRESS_PORT, META_INGRESS_PORT, META_LISTENER_ADDRESS,
};

use super::{BootstrapArgs, ConfigError};

/// `host:port` split at the last colon, `[v6]:port` unbracketed.
fn split_addr(addr: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError(format!("--xds-addr {addr}: expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

pub fn render(args: &BootstrapArgs) -> Result<String, ConfigError> {
    let (host, port) = split_addr(&args.xds_addr)?;
    let (gateway, name) = match (&args.virtual_node, &args.virtual_gateway) {
        (Some(n), None) => (false, n.clone()),
        (None, Some(g)) => (true, g.clone()),
        _ => {
            return Err(ConfigError(
                "give exactly one of --virtual-node and --virtual-gateway".into(),
            ))
        }
    };
    let id = NodeId {
        mesh: args.mesh.clone(),
        gateway,
        name: name.clone(),
    };
    // An IP needs no resolver; a name is resolved (and re-resolved) by DNS.
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let api_type = if args.delta { "DELTA_GRPC" } else { "GRPC" };
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut metadata = serde_json::Map::new();
    metadata.insert(META_INGRESS_PORT.into(), json!(args.ingress_port));
    metadata.insert(META_EGRESS_PORT.into(), json!(args.egress_port));
    metadata.insert(
        META_LISTENER_ADDRESS.into(),
        json!(args.listener_address.to_string()),
    );
    let doc = json!({
        "node": {"id": id.render(), "cluster": name, "metadata": Value::Object(metadata)},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": args.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [{
            "name": "xds_cluster",
            "type": kind,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "xds_cluster",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
        }]},
    });
    serde_yaml::to_string(&doc).map_err(|e| ConfigError(format!("cannot render YAML: {e}")))
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}
