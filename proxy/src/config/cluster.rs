//! Envoy `Cluster` protos → [`ClusterConfig`].

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use xds_protos::envoy::config::cluster::v3::{cluster, Cluster};
use xds_protos::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use xds_protos::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};

use super::address::{host_port, HostPort};
use super::{config_source, duration, ConfigError};

const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// A validated cluster. `proto` is kept for `/config_dump`; `fingerprint` lets an
/// update keep the runtime state (pools, LB) of a cluster that did not change.
#[derive(Debug)]
pub struct ClusterConfig {
    pub name: Arc<str>,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    /// The cluster's `UpstreamTlsContext`, if its connections use TLS.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    pub breakers: super::resilience::Breakers,
    pub outlier: Option<super::resilience::Outlier>,
    pub health_check: Option<super::resilience::HealthCheckConfig>,
    pub lb: super::resilience::LbOptions,
    /// The App Mesh virtual node behind this cluster (`trellis.appmesh`
    /// metadata), for per-peer stats.
    pub appmesh_virtual_node: Option<Arc<str>>,
    pub proto: Cluster,
    pub fingerprint: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum Discovery {
    Static(Vec<EndpointConfig>),
    StrictDns(Vec<EndpointConfig>),
    LogicalDns(Vec<EndpointConfig>),
    /// Endpoints arrive over EDS.
    Eds(Eds),
    /// `ORIGINAL_DST`: one host per original destination of the downstream
    /// connection (or of an explicit-proxy request), created on first use.
    OriginalDst,
}

/// Where an EDS cluster's endpoints come from.
#[derive(Debug, Clone)]
pub struct Eds {
    /// The name its ClusterLoadAssignment is asked for by.
    pub service: String,
    /// How long the cluster warms without them (`None`: for ever).
    pub initial_fetch_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub address: HostPort,
    pub weight: u32,
    /// `endpoint.hostname`, which `auto_host_rewrite` sends upstream.
    pub hostname: Option<String>,
    /// `endpoint.health_check_config.port_value`: where active health
    /// checks go instead of the traffic port.
    pub health_check_port: Option<u16>,
    /// `endpoint.health_check_config.hostname`: the Host (or gRPC
    /// authority) of this endpoint's health checks instead of the cluster's.
    pub health_check_host: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The same protocol the downstream request arrived with.
    Downstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[allow(deprecated)] // dns_refresh_rate and http2_protocol_options are still what users write.
impl ClusterConfig {
    pub fn compile(proto: &Cluster) -> Result<ClusterConfig, ConfigError> {
        if proto.name.is_empty() {
            return Err(ConfigError::new("name", "a cluster needs a name"));
        }
        let kind = match &proto.cluster_discovery_type {
            None => cluster::DiscoveryType::Static,
            Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
                .map_err(|_| ConfigError::new("type", format!("unknown discovery type {t}")))?,
            Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
                return Err(ConfigError::new(
                    "cluster_type",
                    "custom cluster types are not supported by trellis",
                ))
            }
        };
        let endpoints = || -> Result<Vec<EndpointConfig>, ConfigError> {
            match &proto.load_assignment {
                Some(la) => endpoints(la).map_err(|e| e.at("load_assignment")),
                None => Ok(Vec::new()),
            }
        };
        let discovery = match kind {
            cluster::DiscoveryType::Static => {
                let eps = endpoints()?;
                if let Some((i, ep)) = eps
                    .iter()
                    .enumerate()
                    .find(|(_, e)| e.address.ip().is_none())
                {
                    return Err(ConfigError::new(
                        format!("load_assignment.endpoints.lb_endpoints[{i}]"),
                        format!("'{}' is not an IP address; a STATIC cluster needs IPs (use STRICT_DNS)", ep.address.host),
                    ));
                }
                Discovery::Static(eps)
            }
            cluster::DiscoveryType::StrictDns => Discovery::StrictDns(endpoints()?),
            cluster::DiscoveryType::LogicalDns => {
                let eps = endpoints()?;
                if eps.len() != 1 {
                    return Err(ConfigError::new(
                        "load_assignment",
                        "a LOGICAL_DNS cluster takes exactly one endpoint",
                    ));
                }
                Discovery::LogicalDns(eps)
            }
            cluster::DiscoveryType::Eds => {
                let eds = proto.eds_cluster_config.as_ref();
                let service = eds
                    .map(|c| c.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| proto.name.clone());
                let initial_fetch_timeout = config_source::ads(
                    eds.and_then(|c| c.eds_config.as_ref()),
                    "eds_cluster_config.eds_config",
                )?;
                Discovery::Eds(Eds {
                    service,
                    initial_fetch_timeout,
                })
            }
            cluster::DiscoveryType::OriginalDst => {
                if proto.load_assignment.is_some() {
                    return Err(ConfigError::new(
                        "load_assignment",
                        "an ORIGINAL_DST cluster takes its hosts from connections, not from endpoints",
                    ));
                }
                Discovery::OriginalDst
            }
        };
        let lb = cluster::LbPolicy::try_from(proto.lb_policy);
        // As Envoy: ORIGINAL_DST picks its host itself, so CLUSTER_PROVIDED is the
        // only policy it takes, and no other cluster type takes CLUSTER_PROVIDED.
        let original_dst = matches!(discovery, Discovery::OriginalDst);
        if original_dst != (lb == Ok(cluster::LbPolicy::ClusterProvided)) {
            return Err(ConfigError::new(
                "lb_policy",
                "CLUSTER_PROVIDED is required by, and only valid for, type ORIGINAL_DST",
            ));
        }
        let lb_policy = match lb {
            // Never consulted: the original-destination host is picked directly.
            Ok(cluster::LbPolicy::ClusterProvided) => LbPolicy::RoundRobin,
            Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
            Ok(cluster::LbPolicy::RingHash) => LbPolicy::RingHash,
            Ok(cluster::LbPolicy::Maglev) => LbPolicy::Maglev,
            Ok(other) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    format!("{} is not supported by trellis yet", other.as_str_name()),
                ))
            }
            Err(_) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    "unknown load balancing policy",
                ))
            }
        };
        let connect_timeout = match &proto.connect_timeout {
            Some(d) => duration::to_std(d, "connect_timeout")?,
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        let dns_refresh_rate = match &proto.dns_refresh_rate {
            Some(d) => duration::to_std(d, "dns_refresh_rate")?.max(Duration::from_millis(1)),
            None => DEFAULT_DNS_REFRESH,
        };
        let dns_family = match proto.dns_lookup_family {
            0 => DnsFamily::Auto,
            1 => DnsFamily::V4Only,
            2 => DnsFamily::V6Only,
            3 => DnsFamily::V4Preferred,
            4 => DnsFamily::All,
            n => {
                return Err(ConfigError::new(
                    "dns_lookup_family",
                    format!("unknown value {n}"),
                ))
            }
        };
        let protocol = protocol(proto)?;
        let health_check = super::resilience::health_checks(proto)?;
        if proto.close_connections_on_host_health_failure {
            return Err(ConfigError::new(
                "close_connections_on_host_health_failure",
                "is not supported by trellis: connections to a host that fails its \
                 health check close only as they finish",
            ));
        }
        // Envoy refuses the same: gRPC health checks are HTTP/2 streams.
        if protocol == UpstreamProtocol::Http1
            && health_check
                .as_ref()
                .is_some_and(|h| matches!(h.kind, super::resilience::CheckKind::Grpc { .. }))
        {
            return Err(ConfigError::new(
                "health_checks[0].grpc_health_check",
                "the cluster must speak HTTP/2 (http2_protocol_options) for gRPC health checks",
            ));
        }
        Ok(ClusterConfig {
            appmesh_virtual_node: crate::stats::appmesh::metadata_name(
                proto.metadata.as_ref(),
                "virtual_node",
            ),
            name: Arc::from(proto.name.as_str()),
            discovery,
            connect_timeout,
            lb_policy,
            protocol,
            dns_refresh_rate,
            dns_family,
            tls: crate::tls::upstream_transport_socket(proto.transport_socket.as_ref())
                .map_err(|e| e.at("transport_socket"))?,
            breakers: super::resilience::breakers(proto)?,
            outlier: super::resilience::outlier(proto)?,
            health_check,
            lb: super::resilience::lb_options(proto)?,
            proto: proto.clone(),
            fingerprint: proto.encode_to_vec(),
        })
    }
}

#[allow(deprecated)]
fn protocol(proto: &Cluster) -> Result<UpstreamProtocol, ConfigError> {
    if proto
        .http2_protocol_options
        .as_ref()
        .is_some_and(|h2| h2.max_outbound_control_frames.is_some())
    {
        return Err(ConfigError::new(
            "http2_protocol_options.max_outbound_control_frames",
            "not supported by trellis for upstream connections",
        ));
    }
    let mut protocol = if proto.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    for (key, any) in &proto.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[\"{key}\"]");
        if key != HTTP_PROTOCOL_OPTIONS_KEY
            && any.type_url != xds_protos::type_url::HTTP_PROTOCOL_OPTIONS
        {
            return Err(ConfigError::new(
                path,
                "extension is not supported by trellis",
            ));
        }
        let opts: HttpProtocolOptions =
            xds_protos::any::unpack(any).map_err(|e| ConfigError::new(path.clone(), e))?;
        // Downstream limits that share these messages with the HCM.
        if let Some(c) = &opts.common_http_protocol_options {
            let set = [
                (
                    "max_requests_per_connection",
                    c.max_requests_per_connection.is_some(),
                ),
                ("idle_timeout", c.idle_timeout.is_some()),
                (
                    "max_connection_duration",
                    c.max_connection_duration.is_some(),
                ),
                ("max_stream_duration", c.max_stream_duration.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
                return Err(ConfigError::new(
                    format!("{path}.common_http_protocol_options.{field}"),
                    "not supported by trellis for upstream connections",
                ));
            }
        }
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(cfg)) =
            &opts.upstream_protocol_options
        {
            if let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = &cfg.protocol_config {
                if h2.max_outbound_control_frames.is_some() {
                    return Err(ConfigError::new(
                        format!("{path}.explicit_http_config.http2_protocol_options.max_outbound_control_frames"),
                        "not supported by trellis for upstream connections",
                    ));
                }
            }
        }
        protocol = match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(cfg)) => match cfg.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(ConfigError::new(
                        format!("{path}.explicit_http_config.http3_protocol_options"),
                        "HTTP/3 upstreams are not supported by trellis",
                    ))
                }
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::Downstream
            }
            Some(UpstreamProtocolOptions::AutoConfig(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.auto_config"),
                    "ALPN-negotiated upstream protocol is not supported by trellis yet",
                ))
            }
            None => protocol,
        };
    }
    Ok(protocol)
}

/// Endpoints of a `ClusterLoadAssignment`, flattened over localities.
pub fn endpoints(la: &ClusterLoadAssignment) -> Result<Vec<EndpointConfig>, ConfigError> {
    let mut out = Vec::new();
    for (li, locality) in la.endpoints.iter().enumerate() {
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let ep = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    return Err(ConfigError::new(
                        format!("{path}.endpoint_name"),
                        "named endpoints are not supported by trellis",
                    ))
                }
                None => {
                    return Err(ConfigError::new(
                        format!("{path}.endpoint"),
                        "an endpoint is required",
                    ))
                }
            };
            let address = host_port(ep.address.as_ref(), &format!("{path}.endpoint.address"))?;
            let weight = lb.load_balancing_weight.unwrap_or(1);
            if weight == 0 {
                return Err(ConfigError::new(
                    format!("{path}.load_balancing_weight"),
                    "weight must be at least 1",
                ));
            }
            let hostname = (!ep.hostname.is_empty()).then(|| ep.hostname.clone());
            let health_check_port = match ep.health_check_config.as_ref().map(|h| h.port_value) {
                None | Some(0) => None,
                Some(p) => Some(u16::try_from(p).map_err(|_| {
                    ConfigError::new(
                        format!("{path}.endpoint.health_check_config.port_value"),
                        "must be a port number 1-65535",
                    )
                })?),
            };
            let health_check_host = ep
                .health_check_config
                .as_ref()
                .filter(|h| !h.hostname.is_empty())
                .map(|h| Arc::from(h.hostname.as_str()));
            out.push(EndpointConfig {
                address,
                weight,
                hostname,
                health_check_port,
                health_check_host,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_health_check_needs_http2_and_a_check_port_is_kept() {
        let hc = |checker: &str| -> Cluster {
            let json = serde_json::json!({
                "name": "c", "type": "STATIC", "connect_timeout": "1s",
                "health_checks": [{"timeout": "1s", "interval": "1s", "healthy_threshold": 1, "unhealthy_threshold": 1, checker: if checker == "http_health_check" { serde_json::json!({"path": "/"}) } else { serde_json::json!({}) }}],
                "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}},
                    "health_check_config": {"port_value": 8081}}}]}]},
            });
            from_json(json)
        };
        let e = ClusterConfig::compile(&hc("grpc_health_check")).expect_err("refused");
        assert!(e.to_string().contains("grpc_health_check"), "{e}");
        let ok = ClusterConfig::compile(&hc("http_health_check")).expect("an HTTP check");
        let Discovery::Static(eps) = &ok.discovery else {
            panic!("static")
        };
        assert_eq!(eps[0].health_check_port, Some(8081));
    }

    fn from_json(json: serde_json::Value) -> Cluster {
        let desc = xds_protos::descriptor_pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .expect("Cluster");
        prost_reflect::DynamicMessage::deserialize(desc, json)
            .expect("valid JSON")
            .transcode_to()
            .expect("Cluster")
    }

    fn cluster(kind: cluster::DiscoveryType, lb: cluster::LbPolicy) -> Cluster {
        Cluster {
            name: "c".to_string(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
            lb_policy: lb as i32,
            ..Default::default()
        }
    }

    #[test]
    fn original_dst_requires_cluster_provided_and_only_it() {
        use cluster::{DiscoveryType as D, LbPolicy as L};
        let ok = ClusterConfig::compile(&cluster(D::OriginalDst, L::ClusterProvided))
            .expect("ORIGINAL_DST + CLUSTER_PROVIDED");
        assert!(matches!(ok.discovery, Discovery::OriginalDst));
        for (d, l) in [
            (D::OriginalDst, L::RoundRobin),
            (D::Static, L::ClusterProvided),
        ] {
            let e = ClusterConfig::compile(&cluster(d, l)).expect_err("mismatch");
            assert!(e.to_string().contains("CLUSTER_PROVIDED"), "{e}");
        }
    }

    #[test]
    fn upstream_options_trellis_does_not_apply_are_refused_by_name() {
        let with = |opts: serde_json::Value| -> Cluster {
            let json = serde_json::json!({
                "name": "c", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {}},
                        "common_http_protocol_options": opts,
                    }
                },
            });
            from_json(json)
        };
        for field in [
            "idle_timeout",
            "max_connection_duration",
            "max_stream_duration",
        ] {
            let e = ClusterConfig::compile(&with(serde_json::json!({ field: "5s" })))
                .expect_err("refused");
            assert!(
                e.to_string()
                    .contains(&format!("common_http_protocol_options.{field}")),
                "{e}"
            );
        }
        let mut c = with(serde_json::json!({}));
        ClusterConfig::compile(&c).expect("no common options set");
        c.close_connections_on_host_health_failure = true;
        let e = ClusterConfig::compile(&c).expect_err("refused");
        assert!(
            e.to_string()
                .contains("close_connections_on_host_health_failure"),
            "{e}"
        );
    }
}
