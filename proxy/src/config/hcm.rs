//! `envoy.filters.network.http_connection_manager` → [`HcmConfig`].

use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, RouteSpecifier, ServerHeaderTransformation, StripPortMode,
    },
    http_filter, HttpConnectionManager,
};

use super::{config_source, duration, ConfigError};
use crate::router::RouteTable;

const ROUTER_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// Envoy's defaults, so a bootstrap that leaves them out behaves the same here.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Envoy waits for a request head for ever unless told otherwise; an edge
/// proxy must not, so trellis bounds it when the field is absent.
const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct HcmConfig {
    pub stat_prefix: Arc<str>,
    pub codec: Codec,
    pub routes: RouteSource,
    pub websocket: bool,
    /// `upgrade_configs: [{upgrade_type: CONNECT}]`: CONNECT requests may be
    /// terminated and tunnelled (explicit-proxy egress).
    pub connect: bool,
    pub idle_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    /// `common_http_protocol_options.max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
    pub http2: Http2Limits,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<http::HeaderValue>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub server_name: http::HeaderValue,
    pub server_header: ServerHeader,
    pub strip_port: StripPort,
    pub merge_slashes: bool,
    pub normalize_path: bool,
    /// `internal_address_config.cidr_ranges`: the clients trusted as internal.
    pub internal_ranges: Vec<super::address::Cidr>,
    /// `access_log`: written when each request's response has been sent.
    pub access_logs: Arc<crate::access_log::AccessLogs>,
    /// `tracing.provider`: spans go to this OTLP collector.
    pub tracing: Option<crate::tracing_ctx::TracingConfig>,
    /// The HTTP filters before the router, in chain order.
    pub filters: Vec<crate::filters::HttpFilter>,
}

/// `http2_protocol_options` for downstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    /// PING and SETTINGS frames a peer may send in one second.
    pub max_control_frames: u32,
}

impl Http2Limits {
    /// Envoy allows 2^31-1 streams and 256 MiB windows per stream and
    /// connection; trellis bounds what one client can make it hold (each
    /// open stream may pin a header list of up to `max_request_headers_kb`).
    pub const DEFAULT: Http2Limits = Http2Limits {
        max_concurrent_streams: 100,
        initial_stream_window_size: 1 << 20,
        initial_connection_window_size: 4 << 20,
        max_control_frames: 1000,
    };

    fn compile(
        o: Option<&xds_protos::envoy::config::core::v3::Http2ProtocolOptions>,
    ) -> Result<Http2Limits, ConfigError> {
        let d = Http2Limits::DEFAULT;
        let Some(o) = o else { return Ok(d) };
        let window = |v: Option<u32>, default: u32, field: &str| match v {
            None => Ok(default),
            Some(w) if (65_535..=2_147_483_647).contains(&w) => Ok(w),
            Some(_) => Err(ConfigError::new(
                format!("http2_protocol_options.{field}"),
                "must be between 65535 and 2147483647",
            )),
        };
        let positive = |v: Option<u32>, default: u32, field: &str| match v {
            None => Ok(default),
            Some(n) if (1..=2_147_483_647).contains(&n) => Ok(n),
            Some(_) => Err(ConfigError::new(
                format!("http2_protocol_options.{field}"),
                "must be between 1 and 2147483647",
            )),
        };
        Ok(Http2Limits {
            max_concurrent_streams: positive(
                o.max_concurrent_streams,
                d.max_concurrent_streams,
                "max_concurrent_streams",
            )?,
            initial_stream_window_size: window(
                o.initial_stream_window_size,
                d.initial_stream_window_size,
                "initial_stream_window_size",
            )?,
            initial_connection_window_size: window(
                o.initial_connection_window_size,
                d.initial_connection_window_size,
                "initial_connection_window_size",
            )?,
            max_control_frames: positive(
                o.max_outbound_control_frames,
                d.max_control_frames,
                "max_outbound_control_frames",
            )?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Whether the port of the request's host is dropped before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    None,
    /// Only when it is the listener's own port.
    Matching,
    Any,
}

#[derive(Debug)]
pub enum RouteSource {
    Static(Arc<RouteTable>),
    /// A RouteConfiguration delivered over RDS.
    Rds(Rds),
}

/// A route configuration the listener waits for over ADS.
#[derive(Debug)]
pub struct Rds {
    pub name: Arc<str>,
    /// How long the listener warms without it (`None`: for ever).
    pub initial_fetch_timeout: Option<Duration>,
}

impl HcmConfig {
    pub fn compile(h: &HttpConnectionManager) -> Result<HcmConfig, ConfigError> {
        if h.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "stat_prefix is required"));
        }
        let codec = match CodecType::try_from(h.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            Ok(CodecType::Http3) => {
                return Err(ConfigError::new(
                    "codec_type",
                    "HTTP/3 is not supported by trellis",
                ))
            }
            Err(_) => return Err(ConfigError::new("codec_type", "unknown codec type")),
        };
        let routes = match &h.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
                RouteTable::compile(rc).map_err(|e| e.at("route_config"))?,
            )),
            Some(RouteSpecifier::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(ConfigError::new(
                        "rds.route_config_name",
                        "a route config name is required",
                    ));
                }
                RouteSource::Rds(Rds {
                    name: Arc::from(rds.route_config_name.as_str()),
                    initial_fetch_timeout: config_source::ads(
                        rds.config_source.as_ref(),
                        "rds.config_source",
                    )?,
                })
            }
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(ConfigError::new(
                    "scoped_routes",
                    "scoped routes are not supported by trellis",
                ))
            }
            None => {
                return Err(ConfigError::new(
                    "route_config",
                    "route_config or rds is required",
                ))
            }
        };
        let filters = http_filters(h)?;
        let mut websocket = false;
        let mut connect = false;
        for (i, u) in h.upgrade_configs.iter().enumerate() {
            if u.upgrade_type.eq_ignore_ascii_case("CONNECT") && u.filters.is_empty() {
                connect = u.enabled.unwrap_or(true);
                continue;
            }
            if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                return Err(ConfigError::new(
                    format!("upgrade_configs[{i}].upgrade_type"),
                    format!("upgrade '{}' is not supported by trellis", u.upgrade_type),
                ));
            }
            if !u.filters.is_empty() {
                return Err(ConfigError::new(
                    format!("upgrade_configs[{i}].filters"),
                    "per-upgrade filter chains are not supported by trellis",
                ));
            }
            websocket = u.enabled.unwrap_or(true);
        }
        let common = h.common_http_protocol_options.as_ref();
        let idle_timeout = duration::timeout(
            common.and_then(|c| c.idle_timeout.as_ref()),
            Some(DEFAULT_IDLE_TIMEOUT),
            "common_http_protocol_options.idle_timeout",
        )?;
        let max_headers_count = common.and_then(|c| c.max_headers_count).unwrap_or(100);
        if max_headers_count == 0 {
            return Err(ConfigError::new(
                "common_http_protocol_options.max_headers_count",
                "must be at least 1",
            ));
        }
        // 0 is "no limit", as Envoy reads it.
        let max_requests_per_connection = common
            .and_then(|c| c.max_requests_per_connection)
            .filter(|n| *n > 0);
        let max_request_headers_kb = h
            .max_request_headers_kb
            .unwrap_or(DEFAULT_MAX_REQUEST_HEADERS_KB);
        if !(1..=8192).contains(&max_request_headers_kb) {
            return Err(ConfigError::new(
                "max_request_headers_kb",
                "must be between 1 and 8192",
            ));
        }
        let server_header =
            match ServerHeaderTransformation::try_from(h.server_header_transformation) {
                Ok(ServerHeaderTransformation::Overwrite) => ServerHeader::Overwrite,
                Ok(ServerHeaderTransformation::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
                Ok(ServerHeaderTransformation::PassThrough) => ServerHeader::PassThrough,
                Err(_) => {
                    return Err(ConfigError::new(
                        "server_header_transformation",
                        "unknown value",
                    ))
                }
            };
        let header_value = |v: &str, path: &str| {
            http::HeaderValue::from_str(v)
                .map_err(|_| ConfigError::new(path, "not a valid header value"))
        };
        let tracing = match &h.tracing {
            Some(t) => {
                crate::tracing_ctx::TracingConfig::compile(t).map_err(|e| e.at("tracing"))?
            }
            None => None,
        };
        let access_logs = Arc::new(crate::access_log::AccessLogs::compile(
            &h.access_log,
            "access_log",
        )?);
        Ok(HcmConfig {
            access_logs,
            tracing,
            stat_prefix: Arc::from(h.stat_prefix.as_str()),
            codec,
            routes,
            websocket,
            connect,
            idle_timeout,
            stream_idle_timeout: duration::timeout(
                h.stream_idle_timeout.as_ref(),
                Some(DEFAULT_STREAM_IDLE_TIMEOUT),
                "stream_idle_timeout",
            )?,
            request_timeout: duration::timeout(
                h.request_timeout.as_ref(),
                None,
                "request_timeout",
            )?,
            request_headers_timeout: duration::timeout(
                h.request_headers_timeout.as_ref(),
                Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
                "request_headers_timeout",
            )?,
            drain_timeout: duration::timeout(
                h.drain_timeout.as_ref(),
                Some(DEFAULT_DRAIN_TIMEOUT),
                "drain_timeout",
            )?
            .unwrap_or(Duration::ZERO),
            max_request_headers_kb,
            max_headers_count,
            max_requests_per_connection,
            http2: Http2Limits::compile(h.http2_protocol_options.as_ref())?,
            use_remote_address: h.use_remote_address.unwrap_or(false),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            skip_xff_append: h.skip_xff_append,
            via: if h.via.is_empty() {
                None
            } else {
                Some(header_value(&h.via, "via")?)
            },
            generate_request_id: h.generate_request_id.unwrap_or(true),
            preserve_external_request_id: h.preserve_external_request_id,
            always_set_request_id_in_response: h.always_set_request_id_in_response,
            server_name: header_value(
                if h.server_name.is_empty() {
                    "envoy"
                } else {
                    &h.server_name
                },
                "server_name",
            )?,
            server_header,
            strip_port: match (&h.strip_port_mode, h.strip_matching_host_port) {
                (Some(StripPortMode::StripAnyHostPort(true)), _) => StripPort::Any,
                (_, true) => StripPort::Matching,
                _ => StripPort::None,
            },
            merge_slashes: h.merge_slashes,
            normalize_path: h.normalize_path.unwrap_or(false),
            internal_ranges: match &h.internal_address_config {
                Some(c) => c
                    .cidr_ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        super::address::Cidr::compile(r)
                            .map_err(|e| e.at(format!("internal_address_config.cidr_ranges[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            filters,
        })
    }
}

/// The router, last as Envoy requires, after any fault and local rate limit
/// filters.
fn http_filters(h: &HttpConnectionManager) -> Result<Vec<crate::filters::HttpFilter>, ConfigError> {
    let mut out = Vec::new();
    if h.http_filters.is_empty() {
        return Err(ConfigError::new(
            "http_filters",
            "the router filter is required",
        ));
    }
    let last = h.http_filters.len() - 1;
    for (i, f) in h.http_filters.iter().enumerate() {
        let path = format!("http_filters[{i}]");
        let type_url = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.config_discovery"),
                    "filter config discovery is not supported by trellis",
                ))
            }
            None if f.name == "envoy.filters.http.router" => ROUTER_FILTER,
            None => {
                return Err(ConfigError::new(
                    format!("{path}.typed_config"),
                    "typed_config is required",
                ))
            }
        };
        if let (true, Some(http_filter::ConfigType::TypedConfig(any))) =
            (type_url != ROUTER_FILTER, &f.config_type)
        {
            match crate::filters::HttpFilter::compile(&f.name, any) {
                Some(Ok(filter)) if i != last => {
                    out.push(filter);
                    continue;
                }
                Some(Ok(_)) => {
                    return Err(ConfigError::new(
                        path,
                        "the router filter must be the last HTTP filter",
                    ))
                }
                Some(Err(e)) => return Err(e.at(format!("{path}.typed_config"))),
                None => {}
            }
        }
        if type_url != ROUTER_FILTER {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                format!("HTTP filter {type_url} is not supported by trellis"),
            ));
        }
        if i != last {
            return Err(ConfigError::new(
                path,
                "the router filter must be the last HTTP filter",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

    fn minimal() -> HttpConnectionManager {
        HttpConnectionManager {
            stat_prefix: "t".into(),
            route_specifier: Some(RouteSpecifier::RouteConfig(Default::default())),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The limits trellis bounds where Envoy does not (README, Hardening):
    /// a change of any of them must be deliberate.
    #[test]
    fn hardening_defaults_are_bounded() {
        let c = HcmConfig::compile(&minimal()).expect("a minimal HCM compiles");
        assert_eq!(c.request_headers_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            (
                c.http2.max_concurrent_streams,
                c.http2.initial_stream_window_size,
                c.http2.initial_connection_window_size,
                c.http2.max_control_frames,
            ),
            (100, 1 << 20, 4 << 20, 1000)
        );
        assert_eq!((c.max_request_headers_kb, c.max_headers_count), (60, 100));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.stream_idle_timeout, Some(Duration::from_secs(300)));
        // `0s` turns the head timer off, as in Envoy.
        let off = HttpConnectionManager {
            request_headers_timeout: Some(prost_types::Duration::default()),
            ..minimal()
        };
        let c = HcmConfig::compile(&off).expect("compiles");
        assert_eq!(c.request_headers_timeout, None);
    }
}
