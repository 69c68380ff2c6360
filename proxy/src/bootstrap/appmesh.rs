//! App Mesh mode: no bootstrap file, the environment App Mesh's Envoy image
//! read instead. `APPMESH_RESOURCE_ARN` names the virtual node or gateway,
//! `TRELLIS_XDS_ADDR` the control plane; the bootstrap built from them is the
//! one `trellis-control bootstrap` prints, so both paths meet the same
//! control plane the same way: over TLS, trusting `TRELLIS_XDS_CA` (PEM) or
//! `TRELLIS_XDS_CA_FILE`, or in clear text only when `TRELLIS_XDS_PLAINTEXT`
//! says so.

use serde_json::{json, Map, Value};

/// Node metadata keys trellis-control reads (its `translate::META_*`).
const META_INGRESS_PORT: &str = "trellis.ingress_port";
const META_EGRESS_PORT: &str = "trellis.egress_port";
const META_LISTENER_ADDRESS: &str = "trellis.listener_address";
const META_LISTENER_INGRESS_PORTS: &str = "trellis.listener_ingress_ports";

/// `TRELLIS_LISTENER_INGRESS_PORTS`, `8081=15010,8082=15011`: the virtual
/// node's listener on 8081 is also served on 15010, and so on (how
/// listeners after the first are reached without interception). Returns
/// the list normalised.
fn listener_ingress(value: &str) -> Result<String, AppMeshEnvError> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=').map(|(a, b)| (port(a), port(b))) {
            Some((Some(a), Some(b))) => out.push(format!("{a}={b}")),
            _ => {
                return Err(AppMeshEnvError::Bad {
                    var: "TRELLIS_LISTENER_INGRESS_PORTS",
                    value: value.to_string(),
                    why: "expected LISTENER_PORT=PROXY_PORT items separated by commas",
                })
            }
        }
    }
    Ok(out.join(","))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppMeshEnvError {
    #[error("APPMESH_RESOURCE_ARN {0:?}: expected mesh/MESH/virtualNode/NAME or mesh/MESH/virtualGateway/NAME, or a full App Mesh ARN ending so")]
    Arn(String),
    #[error("TRELLIS_XDS_ADDR is required with APPMESH_RESOURCE_ARN (host:port of trellis-control's xDS)")]
    MissingXds,
    #[error("{var} {value:?}: {why}")]
    Bad {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("TRELLIS_XDS_TOKEN_FILE {path}: {why}")]
    TokenFile { path: String, why: String },
    #[error("TRELLIS_XDS_CA or TRELLIS_XDS_CA_FILE is required with APPMESH_RESOURCE_ARN: trellis-control serves xDS over TLS (TRELLIS_XDS_PLAINTEXT=1 for one started with --xds-plaintext)")]
    MissingTrust,
}

/// How the proxy trusts the xDS server.
enum XdsTrust {
    /// PEM CA certificates, inline.
    Inline(String),
    File(String),
    Plaintext,
}

fn xds_trust(env: &dyn Fn(&str) -> Option<String>) -> Result<XdsTrust, AppMeshEnvError> {
    let plaintext = match env("TRELLIS_XDS_PLAINTEXT").as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(AppMeshEnvError::Bad {
                var: "TRELLIS_XDS_PLAINTEXT",
                value: other.to_string(),
                why: "expected 1, true, 0 or false",
            })
        }
    };
    match (env("TRELLIS_XDS_CA"), env("TRELLIS_XDS_CA_FILE"), plaintext) {
        (Some(_), _, true) | (_, Some(_), true) => Err(AppMeshEnvError::Bad {
            var: "TRELLIS_XDS_PLAINTEXT",
            value: "1".into(),
            why: "contradicts TRELLIS_XDS_CA / TRELLIS_XDS_CA_FILE",
        }),
        (Some(pem), _, false) => Ok(XdsTrust::Inline(pem)),
        (None, Some(path), false) => Ok(XdsTrust::File(path)),
        (None, None, true) => Ok(XdsTrust::Plaintext),
        (None, None, false) => Err(AppMeshEnvError::MissingTrust),
    }
}

/// The xDS cluster's `UpstreamTlsContext`, as `trellis-control bootstrap`
/// writes it: ALPN h2, only the given CAs trusted, and the dialled host
/// required among the server's SANs (an IP as IP SAN, a name as DNS SAN and SNI).
fn xds_tls(host: &str, trusted_ca: Value) -> Value {
    let (san_type, name) = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ("IP_ADDRESS", ip.to_string()),
        Err(_) => ("DNS", host.to_string()),
    };
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": trusted_ca,
                "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
            },
        },
    });
    if san_type == "DNS" {
        ctx["sni"] = json!(name);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

/// The node id (`mesh/M/virtualNode/N`) and the name, from a full ARN or
/// the short form.
fn node_id(arn: &str) -> Result<(String, String), AppMeshEnvError> {
    let bad = || AppMeshEnvError::Arn(arn.to_string());
    let resource = match arn.strip_prefix("arn:") {
        // arn:PARTITION:appmesh:REGION:ACCOUNT:mesh/...
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            match parts.as_slice() {
                [_, "appmesh", _, _, resource] => *resource,
                _ => return Err(bad()),
            }
        }
        None => arn,
    };
    let parts: Vec<&str> = resource.split('/').collect();
    match parts.as_slice() {
        ["mesh", mesh, kind @ ("virtualNode" | "virtualGateway"), name]
            if !mesh.is_empty() && !name.is_empty() =>
        {
            Ok((format!("mesh/{mesh}/{kind}/{name}"), name.to_string()))
        }
        _ => Err(bad()),
    }
}

fn port(
    env: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: u16,
) -> Result<u16, AppMeshEnvError> {
    match env(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(AppMeshEnvError::Bad {
                var,
                value: v,
                why: "expected a port number 1-65535",
            }),
    }
}

/// `host:port` split at the last colon, `[v6]:port` unbracketed.
fn split_addr(addr: &str) -> Result<(String, u16), AppMeshEnvError> {
    let bad = || AppMeshEnvError::Bad {
        var: "TRELLIS_XDS_ADDR",
        value: addr.to_string(),
        why: "expected HOST:PORT",
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The bootstrap (as JSON) for App Mesh mode, or `None` when
/// `APPMESH_RESOURCE_ARN` is not set.
pub fn bootstrap_json(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, AppMeshEnvError> {
    let Some(arn) = env("APPMESH_RESOURCE_ARN") else {
        return Ok(None);
    };
    let (id, name) = node_id(arn.trim())?;
    let xds = env("TRELLIS_XDS_ADDR").ok_or(AppMeshEnvError::MissingXds)?;
    let (host, xds_port) = split_addr(xds.trim())?;
    let admin = port(env, "ENVOY_ADMIN_ACCESS_PORT", 9901)?;
    let ingress = port(env, "APPMESH_ENVOY_INGRESS_PORT", 15000)?;
    let egress = port(env, "APPMESH_ENVOY_EGRESS_PORT", 15001)?;
    let listen = env("TRELLIS_LISTENER_ADDRESS").unwrap_or_else(|| "0.0.0.0".into());
    if listen.parse::<std::net::IpAddr>().is_err() {
        return Err(AppMeshEnvError::Bad {
            var: "TRELLIS_LISTENER_ADDRESS",
            value: listen,
            why: "expected an IP address",
        });
    }
    let token = match (env("TRELLIS_XDS_TOKEN"), env("TRELLIS_XDS_TOKEN_FILE")) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| AppMeshEnvError::TokenFile {
                    path: path.clone(),
                    why: e.to_string(),
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };

    let mut ads = json!({"ads": {}, "resource_api_version": "V3"});
    if let Some(t) = env("ENVOY_INITIAL_FETCH_TIMEOUT") {
        let secs: u64 = t.trim().parse().map_err(|_| AppMeshEnvError::Bad {
            var: "ENVOY_INITIAL_FETCH_TIMEOUT",
            value: t.clone(),
            why: "expected whole seconds",
        })?;
        ads["initial_fetch_timeout"] = json!(format!("{secs}s"));
    }
    let mut grpc = json!({"envoy_grpc": {"cluster_name": "xds_cluster"}});
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        grpc["initial_metadata"] =
            json!([{"key": "authorization", "value": format!("Bearer {t}")}]);
    }
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let mut cluster = json!({
        "name": "xds_cluster",
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "xds_cluster",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": xds_port}}}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    });
    match xds_trust(env)? {
        XdsTrust::Inline(pem) => {
            cluster["transport_socket"] = xds_tls(&host, json!({"inline_string": pem}))
        }
        XdsTrust::File(path) => {
            cluster["transport_socket"] = xds_tls(&host, json!({"filename": path}))
        }
        XdsTrust::Plaintext => {}
    }
    let mut metadata = Map::new();
    metadata.insert(META_INGRESS_PORT.into(), json!(ingress));
    metadata.insert(META_EGRESS_PORT.into(), json!(egress));
    metadata.insert(META_LISTENER_ADDRESS.into(), json!(listen));
    // App Mesh's image added its mesh and node stats tags only with
    // ENABLE_ENVOY_STATS_TAGS=1; trellis adds them unless it is 0.
    match env("ENABLE_ENVOY_STATS_TAGS").as_deref().map(str::trim) {
        None | Some("" | "1" | "true") => {}
        Some("0" | "false") => {
            metadata.insert(crate::shared::META_STATS_TAGS.into(), json!(false));
        }
        Some(other) => {
            return Err(AppMeshEnvError::Bad {
                var: "ENABLE_ENVOY_STATS_TAGS",
                value: other.to_string(),
                why: "expected 1 or 0",
            })
        }
    }
    if let Some(v) = env("TRELLIS_LISTENER_INGRESS_PORTS") {
        let ports = listener_ingress(&v)?;
        if !ports.is_empty() {
            metadata.insert(META_LISTENER_INGRESS_PORTS.into(), json!(ports));
        }
    }
    let doc = json!({
        "node": {"id": id, "cluster": name, "metadata": Value::Object(metadata)},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [cluster]},
    });
    Ok(Some(doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{parse, Format};

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_full_arn_and_the_short_form_name_the_same_node() {
        for arn in [
            "arn:aws:appmesh:us-west-2:111122223333:mesh/shop/virtualNode/cart",
            "mesh/shop/virtualNode/cart",
        ] {
            let text = bootstrap_json(&env(&[
                ("APPMESH_RESOURCE_ARN", arn),
                ("TRELLIS_XDS_ADDR", "127.0.0.1:18000"),
                ("TRELLIS_XDS_PLAINTEXT", "1"),
            ]))
            .expect("valid env")
            .expect("App Mesh mode");
            let b = parse(&text, Format::Json).expect("a bootstrap the proxy accepts");
            let node = b.node.expect("node");
            assert_eq!(node.id, "mesh/shop/virtualNode/cart");
            assert_eq!(node.cluster, "cart");
        }
    }

    #[test]
    fn ports_token_ca_and_fetch_timeout_come_from_the_environment() {
        let text = bootstrap_json(&env(&[
            ("APPMESH_RESOURCE_ARN", "mesh/m/virtualGateway/edge"),
            ("TRELLIS_XDS_ADDR", "control.mesh.svc:18000"),
            ("ENVOY_ADMIN_ACCESS_PORT", "9902"),
            ("APPMESH_ENVOY_INGRESS_PORT", "16000"),
            ("APPMESH_ENVOY_EGRESS_PORT", "16001"),
            (
                "TRELLIS_LISTENER_INGRESS_PORTS",
                " 8081=15010, 9090 = 15011",
            ),
            ("ENVOY_INITIAL_FETCH_TIMEOUT", "7"),
            ("TRELLIS_XDS_TOKEN", "secret-token"),
            ("TRELLIS_XDS_CA_FILE", "/etc/trellis/ca.pem"),
        ]))
        .expect("valid env")
        .expect("App Mesh mode");
        parse(&text, Format::Json).expect("a bootstrap the proxy accepts");
        let doc: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(doc["node"]["id"], "mesh/m/virtualGateway/edge");
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["port_value"],
            9902
        );
        assert_eq!(doc["node"]["metadata"][META_INGRESS_PORT], 16000);
        assert_eq!(doc["node"]["metadata"][META_EGRESS_PORT], 16001);
        assert_eq!(
            doc["node"]["metadata"][META_LISTENER_INGRESS_PORTS],
            "8081=15010,9090=15011"
        );
        assert_eq!(
            doc["dynamic_resources"]["lds_config"]["initial_fetch_timeout"],
            "7s"
        );
        let grpc = &doc["dynamic_resources"]["ads_config"]["grpc_services"][0];
        assert_eq!(grpc["initial_metadata"][0]["value"], "Bearer secret-token");
        let cluster = &doc["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STRICT_DNS");
        let tls = &cluster["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "control.mesh.svc");
        let common = &tls["common_tls_context"];
        assert_eq!(common["alpn_protocols"], json!(["h2"]));
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"],
            "/etc/trellis/ca.pem"
        );
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0],
            json!({"san_type": "DNS", "matcher": {"exact": "control.mesh.svc"}})
        );
    }

    #[test]
    fn xds_trust_is_an_inline_bundle_a_file_or_explicit_plaintext() {
        let base = [
            ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
            ("TRELLIS_XDS_ADDR", "10.0.0.5:18000"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let vars: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            bootstrap_json(&env(&vars)).map(|t| {
                let doc: Value = serde_json::from_str(&t.expect("App Mesh mode")).expect("JSON");
                doc["static_resources"]["clusters"][0]["transport_socket"].clone()
            })
        };
        let inline = with(&[("TRELLIS_XDS_CA", "-----BEGIN CERTIFICATE-----\n")]).expect("valid");
        let ctx = &inline["typed_config"];
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["trusted_ca"]["inline_string"],
            "-----BEGIN CERTIFICATE-----\n"
        );
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
                ["san_type"],
            "IP_ADDRESS"
        );
        assert!(ctx.get("sni").is_none(), "no SNI for an IP");
        assert_eq!(with(&[("TRELLIS_XDS_PLAINTEXT", "true")]), Ok(Value::Null));
        assert_eq!(with(&[]), Err(AppMeshEnvError::MissingTrust));
        assert!(with(&[
            ("TRELLIS_XDS_PLAINTEXT", "1"),
            ("TRELLIS_XDS_CA_FILE", "/ca.pem")
        ])
        .is_err());
        assert!(with(&[("TRELLIS_XDS_PLAINTEXT", "yes")]).is_err());
    }

    #[test]
    fn enable_envoy_stats_tags_0_turns_the_node_labels_off() {
        let node = |tags: Option<&str>| {
            let mut vars = vec![
                ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
                ("TRELLIS_XDS_ADDR", "127.0.0.1:18000"),
                ("TRELLIS_XDS_PLAINTEXT", "1"),
            ];
            vars.extend(tags.map(|t| ("ENABLE_ENVOY_STATS_TAGS", t)));
            let text = bootstrap_json(&env(&vars))
                .expect("valid env")
                .expect("App Mesh mode");
            let b = parse(&text, Format::Json).expect("a bootstrap the proxy accepts");
            crate::shared::NodeInfo::from_node(&b.node.expect("node"))
        };
        assert!(node(None).stats_tags);
        assert!(node(Some("1")).stats_tags);
        assert!(!node(Some("0")).stats_tags);
        let e = bootstrap_json(&env(&[
            ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
            ("TRELLIS_XDS_ADDR", "127.0.0.1:18000"),
            ("TRELLIS_XDS_PLAINTEXT", "1"),
            ("ENABLE_ENVOY_STATS_TAGS", "yes"),
        ]))
        .expect_err("refused");
        assert!(e.to_string().contains("ENABLE_ENVOY_STATS_TAGS"), "{e}");
    }

    #[test]
    fn without_the_arn_there_is_no_app_mesh_mode() {
        assert_eq!(
            bootstrap_json(&env(&[("TRELLIS_XDS_ADDR", "x:1")])),
            Ok(None)
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("APPMESH_RESOURCE_ARN", "mesh/m/virtualRouter/r")],
                "APPMESH_RESOURCE_ARN",
            ),
            (
                &[("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n")],
                "TRELLIS_XDS_ADDR is required",
            ),
            (
                &[
                    ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
                    ("TRELLIS_XDS_ADDR", "nohost"),
                ],
                "TRELLIS_XDS_ADDR \"nohost\"",
            ),
            (
                &[
                    ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
                    ("TRELLIS_XDS_ADDR", "h:1"),
                    ("TRELLIS_XDS_PLAINTEXT", "1"),
                    ("APPMESH_ENVOY_INGRESS_PORT", "0"),
                ],
                "APPMESH_ENVOY_INGRESS_PORT",
            ),
            (
                &[
                    ("APPMESH_RESOURCE_ARN", "mesh/m/virtualNode/n"),
                    ("TRELLIS_XDS_ADDR", "h:1"),
                    ("TRELLIS_XDS_PLAINTEXT", "1"),
                    ("TRELLIS_LISTENER_INGRESS_PORTS", "8081:15010"),
                ],
                "TRELLIS_LISTENER_INGRESS_PORTS",
            ),
        ];
        for (vars, expected) in cases {
            let e = bootstrap_json(&env(vars)).expect_err("refused");
            assert!(
                e.to_string().contains(expected),
                "{e} should name {expected}"
            );
        }
    }
}
