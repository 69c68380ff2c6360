//! Mesh-wide tracing (`serve --otlp-endpoint`): every HTTP connection
//! manager a proxy is sent carries Envoy's OpenTelemetry tracer, exporting
//! to one OTLP collector that is sent as a cluster of its own. One setting
//! on the control plane gives every hop's spans, trellis-proxy or Envoy.

use serde_json::{json, Value};

use super::{socket_address, NodeId, ResourceSet};

/// The collector's cluster; mesh-derived clusters all start with `cds_`.
pub const COLLECTOR_CLUSTER: &str = "trellis_otlp_collector";

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// OTLP's transports, named as in `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how every proxy exports spans.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExport {
    host: String,
    port: u16,
    protocol: Protocol,
    /// The OTLP/HTTP path: the endpoint's own path + `/v1/traces`.
    path: String,
    /// Envoy's `random_sampling`, in percent.
    sampling: f64,
}

impl TraceExport {
    /// `endpoint` is an OTLP endpoint as in `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`http://HOST:PORT[/BASE]`, or `HOST:PORT`); the default port is
    /// OTLP's for the protocol (4317 gRPC, 4318 HTTP). `protocol` is `grpc`
    /// or `http/protobuf`; `sampling` the percentage of new traces kept.
    pub fn parse(endpoint: &str, protocol: &str, sampling: f64) -> Result<TraceExport, String> {
        let protocol = match protocol.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(format!(
                    "OTLP protocol {other:?} is not supported: expected grpc or http/protobuf"
                ))
            }
        };
        if !(0.0..=100.0).contains(&sampling) {
            return Err(format!(
                "trace sampling {sampling} is not a percentage (0 to 100)"
            ));
        }
        let endpoint = endpoint.trim();
        let with_scheme = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let bad = |why: &str| format!("OTLP endpoint {endpoint:?}: {why}");
        let uri: http::Uri = with_scheme.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("proxies export in clear text: use http://")),
            _ => return Err(bad("expected http://HOST:PORT")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match (authority.port_u16(), &protocol) {
            (Some(0), _) => return Err(bad("port 0")),
            (Some(p), _) => p,
            (None, Protocol::Grpc) => 4317,
            (None, Protocol::HttpProtobuf) => 4318,
        };
        let base = uri.path().trim_end_matches('/');
        Ok(TraceExport {
            host: host.to_string(),
            port,
            protocol,
            path: format!("{base}/v1/traces"),
            sampling,
        })
    }

    /// Adds the tracer to every HTTP connection manager of `set` and the
    /// collector's cluster. Spans carry App Mesh's X-Ray segment name for
    /// the proxy, `MESH/NAME`, as their service name.
    pub fn apply(&self, set: &mut ResourceSet, id: &NodeId) {
        let tracing = self.tracing(&format!("{}/{}", id.mesh, id.name));
        for listener in set.listeners.values_mut() {
            let Some(listener) = listener.as_object_mut() else {
                continue;
            };
            let mut chains: Vec<&mut Value> = Vec::new();
            for (key, v) in listener.iter_mut() {
                match (key.as_str(), v) {
                    ("filter_chains", Value::Array(list)) => chains.extend(list.iter_mut()),
                    ("default_filter_chain", chain) => chains.push(chain),
                    _ => {}
                }
            }
            for chain in chains {
                for filter in chain["filters"].as_array_mut().into_iter().flatten() {
                    if filter["name"] == HCM {
                        filter["typed_config"]["tracing"] = tracing.clone();
                    }
                }
            }
        }
        set.clusters
            .insert(COLLECTOR_CLUSTER.to_string(), self.cluster());
    }

    /// The HCM's `tracing` block.
    fn tracing(&self, service_name: &str) -> Value {
        let mut otel = json!({
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": service_name,
        });
        match self.protocol {
            Protocol::Grpc => {
                otel["grpc_service"] = json!({"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}})
            }
            Protocol::HttpProtobuf => {
                otel["http_service"] = json!({"http_uri": {
                    "uri": format!("http://{}{}", self.authority(), self.path),
                    "cluster": COLLECTOR_CLUSTER,
                    "timeout": "5s",
                }})
            }
        }
        json!({
            "random_sampling": {"value": self.sampling},
            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": otel},
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The collector as a cluster: its address, or its name resolved by
    /// DNS; gRPC needs HTTP/2.
    fn cluster(&self) -> Value {
        let kind = if self.host.parse::<std::net::IpAddr>().is_ok() {
            "STATIC"
        } else {
            "STRICT_DNS"
        };
        let mut c = json!({
            "name": COLLECTOR_CLUSTER,
            "type": kind,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": COLLECTOR_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(&self.host, u32::from(self.port))}}]}],
            },
        });
        if self.protocol == Protocol::Grpc {
            super::cluster::http2_options(&mut c);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_like_otel_exporter_otlp_endpoint() {
        let grpc = TraceExport::parse("http://collector:4317", "grpc", 100.0).expect("valid");
        assert_eq!((grpc.host.as_str(), grpc.port), ("collector", 4317));
        let bare = TraceExport::parse("10.0.0.9", "grpc", 5.0).expect("valid");
        assert_eq!((bare.host.as_str(), bare.port), ("10.0.0.9", 4317));
        let http = TraceExport::parse("http://[::1]/otlp/", "http/protobuf", 100.0).expect("valid");
        assert_eq!((http.host.as_str(), http.port), ("::1", 4318));
        assert_eq!(http.path, "/otlp/v1/traces");
        assert_eq!(http.authority(), "[::1]:4318");
        for (endpoint, protocol, sampling, named) in [
            ("https://collector:4317", "grpc", 100.0, "clear text"),
            ("http://collector:4317", "http/json", 100.0, "http/json"),
            ("http://collector:4317", "grpc", 101.0, "percentage"),
            ("http://:4317", "grpc", 100.0, "OTLP endpoint"),
        ] {
            let e = TraceExport::parse(endpoint, protocol, sampling).expect_err("refused");
            assert!(e.contains(named), "{e} should say {named}");
        }
    }

    #[test]
    fn every_connection_manager_gets_the_tracer_and_the_collector_its_cluster() {
        let mut set = ResourceSet::default();
        let hcm = super::super::hcm("x", "rc", None);
        let tcp = super::super::tcp_proxy("t", &[("c".to_string(), 1)], None, None);
        set.listeners.insert(
            "l".into(),
            json!({"filter_chains": [{"filters": [hcm.clone()]}, {"filters": [tcp]}],
                   "default_filter_chain": {"filters": [hcm]}}),
        );
        let id = NodeId::parse("mesh/m/virtualNode/front").expect("id");
        TraceExport::parse("collector:4317", "grpc", 50.0)
            .expect("valid")
            .apply(&mut set, &id);
        let l = &set.listeners["l"];
        for hcm in [
            &l["filter_chains"][0]["filters"][0],
            &l["default_filter_chain"]["filters"][0],
        ] {
            let t = &hcm["typed_config"]["tracing"];
            assert_eq!(t["random_sampling"]["value"], 50.0);
            let otel = &t["provider"]["typed_config"];
            assert_eq!(otel["service_name"], "m/front");
            assert_eq!(
                otel["grpc_service"]["envoy_grpc"]["cluster_name"],
                COLLECTOR_CLUSTER
            );
        }
        assert!(l["filter_chains"][1]["filters"][0]["typed_config"]
            .get("tracing")
            .is_none());
        let c = &set.clusters[COLLECTOR_CLUSTER];
        assert_eq!(c["type"], "STRICT_DNS");
        assert!(c.get("typed_extension_protocol_options").is_some());
        // Every resource is valid Envoy config.
        super::super::encode(&set).expect("encodes");
    }
}
