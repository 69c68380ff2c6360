//! The HCM's `tracing` block compiled: where spans go (OTLP over gRPC or
//! HTTP/protobuf) and which new traces are sampled.

use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::config::core::v3::grpc_service::TargetSpecifier;
use xds_protos::envoy::config::core::v3::{http_uri::HttpUpstreamType, HttpService};
use xds_protos::envoy::config::trace::v3::{tracing::http::ConfigType, OpenTelemetryConfig};
use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;

use crate::config::{duration, ConfigError};

const OTEL: &str = "envoy.config.trace.v3.OpenTelemetryConfig";
/// Envoy's default `http_uri.timeout` is required; this is used if it is zero.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(1);

/// The HCM's `tracing`: where spans go and which traces are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub target: ExportTarget,
    pub sampling: Sampling,
}

/// One collector and the service name its spans carry. Connection managers
/// with the same target share one export queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExportTarget {
    pub collector_cluster: Arc<str>,
    pub service_name: Arc<str>,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// OTLP/gRPC: `TraceService/Export` (`grpc_service.envoy_grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http_service.http_uri`).
    Http {
        /// Host for the request, from the URI.
        authority: Arc<str>,
        /// The path posted to, e.g. `/v1/traces`.
        path: Arc<str>,
        timeout: Duration,
        /// `request_headers_to_add`, e.g. a collector's API key.
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

/// Envoy's sampling percentages, as fractions in [0, 1]. A request that
/// carries a sampling decision keeps it; these decide new traces only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// `random_sampling`: requests without `x-client-trace-id`.
    pub random: f64,
    /// `client_sampling`: requests with `x-client-trace-id`.
    pub client: f64,
    /// `overall_sampling`: applied on top of either.
    pub overall: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            random: 1.0,
            client: 1.0,
            overall: 1.0,
        }
    }
}

impl Sampling {
    /// Whether a new trace is kept, given a uniform `draw` in [0, 1).
    pub fn decide(&self, client_forced: bool, draw: f64) -> bool {
        let first = if client_forced {
            self.client
        } else {
            self.random
        };
        draw < first * self.overall
    }
}

impl TracingConfig {
    /// `None` when `tracing` is set without a provider: Envoy then only
    /// keeps request ids, which trellis always does.
    pub fn compile(t: &Tracing) -> Result<Option<TracingConfig>, ConfigError> {
        let percent = |field: &str, p: &Option<xds_protos::envoy::r#type::v3::Percent>| {
            let Some(p) = p else { return Ok(1.0) };
            if !(0.0..=100.0).contains(&p.value) {
                return Err(ConfigError::new(
                    format!("{field}.value"),
                    "must be between 0 and 100",
                ));
            }
            Ok(p.value / 100.0)
        };
        let sampling = Sampling {
            random: percent("random_sampling", &t.random_sampling)?,
            client: percent("client_sampling", &t.client_sampling)?,
            overall: percent("overall_sampling", &t.overall_sampling)?,
        };
        let Some(p) = &t.provider else {
            return Ok(None);
        };
        let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
            return Err(ConfigError::new(
                "provider.typed_config",
                "typed_config is required",
            ));
        };
        if any.type_url.rsplit('/').next() != Some(OTEL) {
            return Err(ConfigError::new(
                "provider.typed_config",
                format!("tracer {} is not supported by trellis", any.type_url),
            ));
        }
        let c: OpenTelemetryConfig = xds_protos::any::unpack(any)
            .map_err(|e| ConfigError::new("provider.typed_config", e))?;
        let (collector_cluster, transport) =
            transport(&c).map_err(|e| e.at("provider.typed_config"))?;
        Ok(Some(TracingConfig {
            target: ExportTarget {
                collector_cluster,
                service_name: Arc::from(if c.service_name.is_empty() {
                    "unknown_service:envoy"
                } else {
                    c.service_name.as_str()
                }),
                transport,
            },
            sampling,
        }))
    }
}

fn transport(c: &OpenTelemetryConfig) -> Result<(Arc<str>, Transport), ConfigError> {
    match (&c.grpc_service, &c.http_service) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "http_service",
            "set grpc_service or http_service, not both",
        )),
        (Some(g), None) => match &g.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
                Ok((Arc::from(g.cluster_name.as_str()), Transport::Grpc))
            }
            _ => Err(ConfigError::new(
                "grpc_service",
                "an envoy_grpc cluster_name is required",
            )),
        },
        (None, Some(h)) => http(h).map_err(|e| e.at("http_service")),
        (None, None) => Err(ConfigError::new(
            "grpc_service",
            "a collector is required: grpc_service or http_service",
        )),
    }
}

fn http(h: &HttpService) -> Result<(Arc<str>, Transport), ConfigError> {
    let Some(u) = &h.http_uri else {
        return Err(ConfigError::new("http_uri", "http_uri is required"));
    };
    let cluster = match &u.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.as_str(),
        _ => {
            return Err(ConfigError::new(
                "http_uri.cluster",
                "the collector's cluster is required",
            ))
        }
    };
    let uri: http::Uri = u
        .uri
        .parse()
        .map_err(|e| ConfigError::new("http_uri.uri", format!("not a URI: {e}")))?;
    if uri.scheme_str() == Some("https") {
        return Err(ConfigError::new(
            "http_uri.uri",
            "trellis exports OTLP/HTTP in clear text only",
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err(ConfigError::new(
            "http_uri.uri",
            "an absolute URI with a host is required",
        ));
    };
    let timeout = match &u.timeout {
        Some(d) => duration::to_std(d, "http_uri.timeout")?,
        None => DEFAULT_HTTP_TIMEOUT,
    };
    let mut headers = Vec::new();
    for (i, opt) in h.request_headers_to_add.iter().enumerate() {
        let at = format!("request_headers_to_add[{i}].header");
        let Some(hv) = &opt.header else {
            return Err(ConfigError::new(at, "a header is required"));
        };
        let name = http::HeaderName::from_bytes(hv.key.as_bytes())
            .map_err(|_| ConfigError::new(format!("{at}.key"), "not a header name"))?;
        let value = http::HeaderValue::from_str(&hv.value)
            .map_err(|_| ConfigError::new(format!("{at}.value"), "not a header value"))?;
        headers.push((name, value));
    }
    Ok((
        Arc::from(cluster),
        Transport::Http {
            authority: Arc::from(authority.as_str()),
            path: Arc::from(uri.path_and_query().map_or("/", |p| p.as_str())),
            timeout: if timeout.is_zero() {
                DEFAULT_HTTP_TIMEOUT
            } else {
                timeout
            },
            headers,
        },
    ))
}
