//! `trellis-control bootstrap`: an Envoy v3 bootstrap that points a proxy
//! (trellis-proxy or stock Envoy) at this control plane over ADS.

use anyhow::Context;
use serde_json::{json, Value};
use trellis_control::xds::translate::{
    parse_listener_ingress, NodeId, META_EGRESS_PORT, META_INGRESS_PORT, META_LISTENER_ADDRESS,
    META_LISTENER_INGRESS_PORTS,
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

/// The xDS cluster's `UpstreamTlsContext`: trust `bundle` only, and require
/// the address the proxy dials among the server certificate's SANs (Envoy
/// checks names only through SAN matchers).
fn xds_tls(host: &str, bundle: &str) -> Value {
    let (san_type, name) = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ("IP_ADDRESS", ip.to_string()),
        Err(_) => ("DNS", host.to_string()),
    };
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"inline_string": bundle},
                "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
            },
        },
    });
    if san_type == "DNS" {
        ctx["sni"] = json!(name);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

/// The bootstrap; `token` goes into the ADS gRPC service's
/// `initial_metadata`, which Envoy sends on every stream it opens; with
/// `xds_bundle` the xDS connection is TLS, verified against that bundle.
pub fn render(
    args: &BootstrapArgs,
    token: Option<&str>,
    xds_bundle: Option<&str>,
) -> Result<String, ConfigError> {
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
    let listener_ingress = parse_listener_ingress(&args.listener_ingress_port.join(","))
        .map_err(|e| ConfigError(format!("--listener-ingress-port {e}")))?;
    if !listener_ingress.is_empty() {
        let text: Vec<String> = listener_ingress
            .iter()
            .map(|(l, p)| format!("{l}={p}"))
            .collect();
        metadata.insert(META_LISTENER_INGRESS_PORTS.into(), json!(text.join(",")));
    }
    let mut grpc = json!({"envoy_grpc": {"cluster_name": "xds_cluster"}});
    if let Some(t) = token {
        grpc["initial_metadata"] =
            json!([{"key": "authorization", "value": format!("Bearer {t}")}]);
    }
    let mut xds_cluster = json!({
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
    });
    if let Some(bundle) = xds_bundle {
        xds_cluster["transport_socket"] = xds_tls(&host, bundle);
    }
    let doc = json!({
        "node": {"id": id.render(), "cluster": name, "metadata": Value::Object(metadata)},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": args.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [grpc],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [xds_cluster]},
    });
    serde_yaml::to_string(&doc).map_err(|e| ConfigError(format!("cannot render YAML: {e}")))
}

/// A PEM file with at least one certificate, as text.
pub(super) fn read_bundle(path: &std::path::Path, flag: &str) -> Result<String, ConfigError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |m: String| ConfigError(format!("{flag} {}: {m}", path.display()));
    let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate list: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(pem)
}

/// The bundle `GET /trellis/v1/ca` serves, when the xDS port's certificate
/// chains to it.
fn fetch_bundle(reply: &Value) -> anyhow::Result<String> {
    match reply["xdsTls"].as_str() {
        Some("mesh") => reply["bundle"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the API returned no CA bundle")),
        Some("operator") => Err(ConfigError(
            "the xDS server presents the operator's certificate (--xds-tls-cert): give its CA with --xds-ca FILE".into(),
        )
        .into()),
        Some("off") => Err(ConfigError(
            "the xDS server serves clear text (--xds-plaintext): bootstrap with --xds-plaintext".into(),
        )
        .into()),
        _ => Err(anyhow::anyhow!("unexpected reply from GET /trellis/v1/ca: {reply}")),
    }
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    // Files first: a bad one is reported before the API is asked anything.
    let given_bundle = match &args.xds_ca {
        Some(path) => Some(read_bundle(path, "--xds-ca")?),
        None => None,
    };
    // The API is asked only for what the flags do not give.
    let needs_api =
        (args.token.is_none() && !args.no_token) || (args.xds_ca.is_none() && !args.xds_plaintext);
    let api = if needs_api {
        Some(super::status::client(&args.api).context(
            "bootstrap asks the API for the node's token and the xDS CA \
             (or give --token or --no-token, and --xds-ca or --xds-plaintext)",
        )?)
    } else {
        None
    };
    let call = |method: http::Method, path: &str, body: Vec<u8>| -> anyhow::Result<Value> {
        let (runtime, client) = api
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no API client"))?;
        runtime
            .block_on(client.trellis(method, path, body))
            .map_err(|e| anyhow::anyhow!("{path} on {}: {e}", args.api.api_addr))
    };
    // By default the node's live token, so that every replica of a node
    // bootstraps with the same one; issued when it has none.
    let token = match (&args.token, args.no_token) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => {
            let body = super::status::token_body(
                &args.mesh,
                args.virtual_node.as_deref(),
                args.virtual_gateway.as_deref(),
                !args.issue_token,
            );
            let reply = call(http::Method::POST, "/trellis/v1/tokens", body)
                .context("cannot get the node's token (or give --token TOKEN)")?;
            let token = reply["token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the API returned no token"))?;
            Some(token.to_string())
        }
    };
    let bundle = match (given_bundle, args.xds_plaintext) {
        (_, true) => None,
        (Some(pem), false) => Some(pem),
        (None, false) => {
            let reply = call(http::Method::GET, "/trellis/v1/ca", Vec::new())
                .context("cannot fetch the CA bundle for TLS to xDS (or give --xds-ca FILE)")?;
            Some(fetch_bundle(&reply)?)
        }
    };
    super::out(&render(&args, token.as_deref(), bundle.as_deref())?)?;
    Ok(())
}
