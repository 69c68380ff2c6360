//! The subset of Envoy's API that trellis implements, as data, and the walker that
//! holds a config (a bootstrap, or an xDS resource before it is ACKed) against it.
//!
//! Anything set and not listed is refused by name: silently dropping a field would
//! make trellis behave differently from the Envoy the user tested against.

use prost_reflect::{DynamicMessage, FieldDescriptor, MapKey, ReflectMessage, Value};
use xds_protos::type_url;

use super::ConfigError;

/// What trellis does with one field of a message.
#[derive(Debug)]
pub enum Rule {
    /// Implemented; a message value is walked against its own entry.
    Walk,
    /// Implemented, and the contents are free-form data (metadata).
    Opaque,
    /// An enum implemented for these values only.
    Values(&'static [&'static str]),
    /// An `Any` (or a map of them) that selects an extension: only these type URLs.
    Extension(&'static [&'static str]),
}

/// The implemented fields of one message, by proto (snake_case) name.
#[derive(Debug)]
pub struct Entry {
    pub message: &'static str,
    pub fields: &'static [(&'static str, Rule)],
}

/// A message whose contents another module checks as it compiles them, so that
/// the rules and the code that implements them stay side by side.
#[derive(Debug)]
pub struct Delegated {
    pub message: &'static str,
    pub checked_by: &'static str,
}

pub static DELEGATED: &[Delegated] = &[
    Delegated {
        message: "envoy.config.route.v3.RouteConfiguration",
        checked_by: "crate::router",
    },
    Delegated {
        message: "envoy.config.route.v3.HeaderMatcher",
        checked_by: "crate::router",
    },
];

/// A field accepted so that existing configs load, with no effect on trellis;
/// the README lists these with their reasons.
#[derive(Debug)]
pub struct Ignored {
    pub message: &'static str,
    pub field: &'static str,
    pub reason: &'static str,
}

const NETWORK_FILTERS: &[&str] = &[
    type_url::HTTP_CONNECTION_MANAGER,
    type_url::TCP_PROXY,
    super::connection_limit::TYPE_URL,
];
const HTTP_FILTERS: &[&str] = &[
    type_url::ROUTER,
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
];
const LISTENER_FILTERS: &[&str] = &[
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
];
const TRANSPORT_SOCKETS: &[&str] = &[
    type_url::DOWNSTREAM_TLS_CONTEXT,
    type_url::UPSTREAM_TLS_CONTEXT,
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
];
const PROTOCOL_OPTIONS: &[&str] = &[type_url::HTTP_PROTOCOL_OPTIONS];
const ACCESS_LOGGERS: &[&str] = &[
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
];
const TRACERS: &[&str] = &["type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"];
const RESOURCE_MONITORS: &[&str] = &[
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
];

const API_VERSIONS: Rule = Rule::Values(&["V3"]);
const TLS_VERSIONS: Rule = Rule::Values(&["TLS_AUTO", "TLSv1_2", "TLSv1_3"]);

use Rule::{Extension, Opaque, Values, Walk};

pub static SUPPORTED: &[Entry] = &[
    // Bootstrap
    Entry {
        message: "envoy.config.bootstrap.v3.Bootstrap",
        fields: &[
            ("node", Walk),
            ("admin", Walk),
            ("static_resources", Walk),
            ("dynamic_resources", Walk),
            ("overload_manager", Walk),
        ],
    },
    // Overload manager (see `crate::overload`)
    Entry {
        message: "envoy.config.overload.v3.OverloadManager",
        fields: &[
            ("refresh_interval", Walk),
            ("resource_monitors", Walk),
            ("actions", Walk),
        ],
    },
    Entry {
        message: "envoy.config.overload.v3.ResourceMonitor",
        fields: &[("name", Walk), ("typed_config", Extension(RESOURCE_MONITORS))],
    },
    Entry {
        message: "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
        fields: &[("max_heap_size_bytes", Walk)],
    },
    Entry {
        message: "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        fields: &[("max_active_downstream_connections", Walk)],
    },
    Entry {
        message: "envoy.config.overload.v3.OverloadAction",
        fields: &[("name", Walk), ("triggers", Walk)],
    },
    Entry {
        message: "envoy.config.overload.v3.Trigger",
        fields: &[("name", Walk), ("threshold", Walk)],
    },
    Entry {
        message: "envoy.config.overload.v3.ThresholdTrigger",
        fields: &[("value", Walk)],
    },
    Entry {
        message: "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        fields: &[("listeners", Walk), ("clusters", Walk), ("secrets", Walk)],
    },
    Entry {
        message: "envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
        fields: &[("ads_config", Walk), ("lds_config", Walk), ("cds_config", Walk)],
    },
    Entry {
        message: "envoy.config.bootstrap.v3.Admin",
        fields: &[("address", Walk), ("access_log_path", Walk), ("access_log", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.Node",
        fields: &[
            ("id", Walk),
            ("cluster", Walk),
            ("metadata", Opaque),
            ("locality", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.Locality",
        fields: &[("region", Walk), ("zone", Walk), ("sub_zone", Walk)],
    },
    // xDS sources
    Entry {
        message: "envoy.config.core.v3.PathConfigSource",
        fields: &[("path", Walk), ("poll_interval", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.ApiConfigSource",
        fields: &[
            ("api_type", Values(&["GRPC", "DELTA_GRPC"])),
            ("transport_api_version", API_VERSIONS),
            ("grpc_services", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.ConfigSource",
        fields: &[
            ("ads", Walk),
            ("path_config_source", Walk),
            ("resource_api_version", API_VERSIONS),
            ("initial_fetch_timeout", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.GrpcService",
        fields: &[
            ("envoy_grpc", Walk),
            ("timeout", Walk),
            ("initial_metadata", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.GrpcService.EnvoyGrpc",
        fields: &[("cluster_name", Walk), ("authority", Walk)],
    },
    // Addresses
    Entry {
        message: "envoy.config.core.v3.Address",
        fields: &[("socket_address", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.SocketAddress",
        fields: &[
            ("address", Walk),
            ("port_value", Walk),
            ("protocol", Values(&["TCP"])),
            ("ipv4_compat", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.CidrRange",
        fields: &[("address_prefix", Walk), ("prefix_len", Walk)],
    },
    // Listeners
    Entry {
        message: "envoy.config.listener.v3.Listener",
        fields: &[
            ("name", Walk),
            ("address", Walk),
            ("filter_chains", Walk),
            ("default_filter_chain", Walk),
            ("listener_filters", Walk),
            ("listener_filters_timeout", Walk),
            ("continue_on_listener_filters_timeout", Walk),
            ("use_original_dst", Walk),
            ("per_connection_buffer_limit_bytes", Walk),
            ("traffic_direction", Walk),
            ("stat_prefix", Walk),
            ("bind_to_port", Walk),
            ("enable_reuse_port", Walk),
        ],
    },
    Entry {
        message: "envoy.config.listener.v3.FilterChain",
        fields: &[
            ("filter_chain_match", Walk),
            ("filters", Walk),
            ("transport_socket", Walk),
            ("transport_socket_connect_timeout", Walk),
            ("name", Walk),
            ("metadata", Opaque),
        ],
    },
    Entry {
        message: "envoy.config.listener.v3.FilterChainMatch",
        fields: &[
            ("server_names", Walk),
            ("transport_protocol", Walk),
            ("application_protocols", Walk),
            ("destination_port", Walk),
            ("prefix_ranges", Walk),
            ("source_prefix_ranges", Walk),
        ],
    },
    Entry {
        message: "envoy.config.listener.v3.Filter",
        fields: &[("name", Walk), ("typed_config", Extension(NETWORK_FILTERS))],
    },
    Entry {
        message: "envoy.config.listener.v3.ListenerFilter",
        fields: &[("name", Walk), ("typed_config", Extension(LISTENER_FILTERS))],
    },
    Entry {
        message: "envoy.config.core.v3.TransportSocket",
        fields: &[("name", Walk), ("typed_config", Extension(TRANSPORT_SOCKETS))],
    },
    Entry {
        message: "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        fields: &[("stat_prefix", Walk), ("max_connections", Walk), ("delay", Walk)],
    },
    // Access logs
    Entry {
        message: "envoy.config.accesslog.v3.AccessLog",
        fields: &[("name", Walk), ("typed_config", Extension(ACCESS_LOGGERS))],
    },
    Entry {
        message: "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        fields: &[
            ("path", Walk),
            ("log_format", Walk),
            ("format", Walk),
            ("json_format", Walk),
            ("typed_json_format", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        fields: &[("log_format", Walk)],
    },
    Entry {
        message: "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        fields: &[("log_format", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.SubstitutionFormatString",
        fields: &[
            ("text_format", Walk),
            ("text_format_source", Walk),
            ("json_format", Walk),
            ("omit_empty_values", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.DataSource",
        fields: &[("filename", Walk), ("inline_string", Walk), ("inline_bytes", Walk)],
    },
    // HTTP connection manager
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        fields: &[
            ("stat_prefix", Walk),
            ("codec_type", Values(&["AUTO", "HTTP1", "HTTP2"])),
            ("route_config", Walk),
            ("rds", Walk),
            ("http_filters", Walk),
            ("upgrade_configs", Walk),
            ("common_http_protocol_options", Walk),
            ("http_protocol_options", Walk),
            ("http2_protocol_options", Walk),
            ("stream_idle_timeout", Walk),
            ("request_timeout", Walk),
            ("request_headers_timeout", Walk),
            ("drain_timeout", Walk),
            ("delayed_close_timeout", Walk),
            ("max_request_headers_kb", Walk),
            ("use_remote_address", Walk),
            ("xff_num_trusted_hops", Walk),
            ("skip_xff_append", Walk),
            ("via", Walk),
            ("generate_request_id", Walk),
            ("preserve_external_request_id", Walk),
            ("always_set_request_id_in_response", Walk),
            ("server_name", Walk),
            ("server_header_transformation", Walk),
            ("access_log", Walk),
            ("tracing", Walk),
            ("normalize_path", Walk),
            ("merge_slashes", Walk),
            ("path_with_escaped_slashes_action", Walk),
            ("forward_client_cert_details", Walk),
            ("set_current_client_cert_details", Walk),
            ("internal_address_config", Walk),
            ("strip_any_host_port", Walk),
            ("strip_matching_host_port", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        fields: &[("config_source", Walk), ("route_config_name", Walk)],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        fields: &[("name", Walk), ("typed_config", Extension(HTTP_FILTERS))],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        fields: &[("upgrade_type", Walk), ("enabled", Walk)],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
        fields: &[
            ("provider", Walk),
            ("client_sampling", Walk),
            ("random_sampling", Walk),
            ("overall_sampling", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        fields: &[("unix_sockets", Walk), ("cidr_ranges", Walk)],
    },
    Entry {
        message: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        fields: &[
            ("subject", Walk),
            ("cert", Walk),
            ("chain", Walk),
            ("dns", Walk),
            ("uri", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.HttpProtocolOptions",
        fields: &[
            ("idle_timeout", Walk),
            ("max_headers_count", Walk),
            ("max_requests_per_connection", Walk),
            ("max_stream_duration", Walk),
            ("headers_with_underscores_action", Walk),
            ("max_connection_duration", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.Http1ProtocolOptions",
        fields: &[("accept_http_10", Walk), ("default_host_for_http_10", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.Http2ProtocolOptions",
        fields: &[
            ("max_concurrent_streams", Walk),
            ("initial_stream_window_size", Walk),
            ("initial_connection_window_size", Walk),
            ("allow_connect", Walk),
            ("max_outbound_control_frames", Walk),
        ],
    },
    // Tracing
    Entry {
        message: "envoy.config.trace.v3.Tracing.Http",
        fields: &[("name", Walk), ("typed_config", Extension(TRACERS))],
    },
    Entry {
        message: "envoy.config.trace.v3.OpenTelemetryConfig",
        fields: &[
            ("grpc_service", Walk),
            ("http_service", Walk),
            ("service_name", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.HttpService",
        fields: &[("http_uri", Walk), ("request_headers_to_add", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HttpUri",
        fields: &[("uri", Walk), ("cluster", Walk), ("timeout", Walk)],
    },
    // HTTP filters
    Entry {
        message: "envoy.extensions.filters.http.fault.v3.HTTPFault",
        fields: &[
            ("delay", Walk),
            ("abort", Walk),
            ("headers", Walk),
            ("upstream_cluster", Walk),
            ("max_active_faults", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.filters.common.fault.v3.FaultDelay",
        fields: &[("fixed_delay", Walk), ("header_delay", Walk), ("percentage", Walk)],
    },
    Entry {
        message: "envoy.extensions.filters.http.fault.v3.FaultAbort",
        fields: &[
            ("http_status", Walk),
            ("grpc_status", Walk),
            ("header_abort", Walk),
            ("percentage", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        fields: &[
            ("stat_prefix", Walk),
            ("status", Walk),
            ("token_bucket", Walk),
            ("filter_enabled", Walk),
            ("filter_enforced", Walk),
            ("response_headers_to_add", Walk),
            ("local_rate_limit_per_downstream_connection", Walk),
        ],
    },
    Entry {
        message: "envoy.type.v3.TokenBucket",
        fields: &[("max_tokens", Walk), ("tokens_per_fill", Walk), ("fill_interval", Walk)],
    },
    Entry {
        message: "envoy.type.v3.HttpStatus",
        fields: &[("code", Walk)],
    },
    Entry {
        message: "envoy.type.v3.FractionalPercent",
        fields: &[("numerator", Walk), ("denominator", Walk)],
    },
    Entry {
        message: "envoy.type.v3.Percent",
        fields: &[("value", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.RuntimeFractionalPercent",
        fields: &[("default_value", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HeaderValueOption",
        fields: &[("header", Walk), ("append_action", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HeaderValue",
        fields: &[("key", Walk), ("value", Walk)],
    },
    // TCP proxy
    Entry {
        message: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        fields: &[
            ("stat_prefix", Walk),
            ("cluster", Walk),
            ("weighted_clusters", Walk),
            ("idle_timeout", Walk),
            ("access_log", Walk),
            ("max_connect_attempts", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        fields: &[("clusters", Walk)],
    },
    Entry {
        message: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        fields: &[("name", Walk), ("weight", Walk)],
    },
    // Clusters
    Entry {
        message: "envoy.config.cluster.v3.Cluster",
        fields: &[
            ("name", Walk),
            (
                "type",
                Values(&["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"]),
            ),
            ("eds_cluster_config", Walk),
            ("connect_timeout", Walk),
            (
                "lb_policy",
                Values(&[
                    "ROUND_ROBIN",
                    "LEAST_REQUEST",
                    "RANDOM",
                    "RING_HASH",
                    "MAGLEV",
                    "CLUSTER_PROVIDED",
                ]),
            ),
            ("load_assignment", Walk),
            ("typed_extension_protocol_options", Extension(PROTOCOL_OPTIONS)),
            ("http2_protocol_options", Walk),
            ("circuit_breakers", Walk),
            ("outlier_detection", Walk),
            ("health_checks", Walk),
            ("dns_lookup_family", Walk),
            ("dns_refresh_rate", Walk),
            ("respect_dns_ttl", Walk),
            ("transport_socket", Walk),
            ("common_lb_config", Walk),
            ("least_request_lb_config", Walk),
            ("ring_hash_lb_config", Walk),
            ("maglev_lb_config", Walk),
            ("per_connection_buffer_limit_bytes", Walk),
            ("upstream_connection_options", Walk),
            ("ignore_health_on_host_removal", Walk),
            ("close_connections_on_host_health_failure", Walk),
            ("metadata", Opaque),
        ],
    },
    Entry {
        message: "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        fields: &[("eds_config", Walk), ("service_name", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        fields: &[("healthy_panic_threshold", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        fields: &[("choice_count", Walk), ("active_request_bias", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.RuntimeDouble",
        fields: &[("default_value", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        fields: &[
            ("minimum_ring_size", Walk),
            ("maximum_ring_size", Walk),
            ("hash_function", Values(&["XX_HASH"])),
        ],
    },
    Entry {
        message: "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        fields: &[("table_size", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.CircuitBreakers",
        fields: &[("thresholds", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        fields: &[
            ("priority", Walk),
            ("max_connections", Walk),
            ("max_pending_requests", Walk),
            ("max_requests", Walk),
            ("max_retries", Walk),
            ("retry_budget", Walk),
        ],
    },
    Entry {
        message: "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
        fields: &[("budget_percent", Walk), ("min_retry_concurrency", Walk)],
    },
    Entry {
        message: "envoy.config.cluster.v3.OutlierDetection",
        fields: &[
            ("consecutive_5xx", Walk),
            ("consecutive_gateway_failure", Walk),
            ("interval", Walk),
            ("base_ejection_time", Walk),
            ("max_ejection_time", Walk),
            ("max_ejection_percent", Walk),
            ("enforcing_consecutive_5xx", Walk),
            ("enforcing_consecutive_gateway_failure", Walk),
            ("enforcing_success_rate", Walk),
            ("success_rate_minimum_hosts", Walk),
            ("success_rate_request_volume", Walk),
            ("success_rate_stdev_factor", Walk),
        ],
    },
    Entry {
        message: "envoy.config.cluster.v3.UpstreamConnectionOptions",
        fields: &[("tcp_keepalive", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.TcpKeepalive",
        fields: &[
            ("keepalive_probes", Walk),
            ("keepalive_time", Walk),
            ("keepalive_interval", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.HealthCheck",
        fields: &[
            ("timeout", Walk),
            ("interval", Walk),
            ("no_traffic_interval", Walk),
            ("interval_jitter", Walk),
            ("unhealthy_threshold", Walk),
            ("healthy_threshold", Walk),
            ("http_health_check", Walk),
            ("tcp_health_check", Walk),
            ("grpc_health_check", Walk),
        ],
    },
    Entry {
        message: "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
        fields: &[
            ("host", Walk),
            ("path", Walk),
            ("expected_statuses", Walk),
            ("codec_client_type", Values(&["HTTP1", "HTTP2"])),
        ],
    },
    Entry {
        message: "envoy.type.v3.Int64Range",
        fields: &[("start", Walk), ("end", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
        fields: &[("send", Walk), ("receive", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HealthCheck.Payload",
        fields: &[("text", Walk), ("binary", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
        fields: &[("service_name", Walk), ("authority", Walk)],
    },
    // Endpoints
    Entry {
        message: "envoy.config.endpoint.v3.ClusterLoadAssignment",
        fields: &[("cluster_name", Walk), ("endpoints", Walk), ("policy", Walk)],
    },
    Entry {
        message: "envoy.config.endpoint.v3.LocalityLbEndpoints",
        fields: &[("locality", Walk), ("lb_endpoints", Walk)],
    },
    Entry {
        message: "envoy.config.endpoint.v3.LbEndpoint",
        fields: &[
            ("endpoint", Walk),
            ("health_status", Walk),
            ("load_balancing_weight", Walk),
        ],
    },
    Entry {
        message: "envoy.config.endpoint.v3.Endpoint",
        fields: &[("address", Walk), ("hostname", Walk), ("health_check_config", Walk)],
    },
    Entry {
        message: "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig",
        fields: &[("port_value", Walk), ("hostname", Walk)],
    },
    // Upstream HTTP
    Entry {
        message: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        fields: &[
            ("explicit_http_config", Walk),
            ("use_downstream_protocol_config", Walk),
            ("common_http_protocol_options", Walk),
            ("upstream_http_protocol_options", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        fields: &[("http_protocol_options", Walk), ("http2_protocol_options", Walk)],
    },
    Entry {
        message: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        fields: &[("http_protocol_options", Walk), ("http2_protocol_options", Walk)],
    },
    Entry {
        message: "envoy.config.core.v3.UpstreamHttpProtocolOptions",
        fields: &[("auto_sni", Walk), ("auto_san_validation", Walk)],
    },
    // TLS
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        fields: &[("common_tls_context", Walk), ("require_client_certificate", Walk)],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        fields: &[("common_tls_context", Walk), ("sni", Walk)],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        fields: &[
            ("tls_params", Walk),
            ("tls_certificates", Walk),
            ("tls_certificate_sds_secret_configs", Walk),
            ("validation_context", Walk),
            ("validation_context_sds_secret_config", Walk),
            ("combined_validation_context", Walk),
            ("alpn_protocols", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        fields: &[
            ("default_validation_context", Walk),
            ("validation_context_sds_secret_config", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        fields: &[
            ("tls_minimum_protocol_version", TLS_VERSIONS),
            ("tls_maximum_protocol_version", TLS_VERSIONS),
            ("cipher_suites", Walk),
            ("ecdh_curves", Walk),
        ],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        fields: &[("certificate_chain", Walk), ("private_key", Walk)],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        fields: &[
            ("trusted_ca", Walk),
            ("match_typed_subject_alt_names", Walk),
            ("trust_chain_verification", Values(&["VERIFY_TRUST_CHAIN"])),
        ],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        fields: &[
            ("san_type", Values(&["EMAIL", "DNS", "URI", "IP_ADDRESS"])),
            ("matcher", Walk),
        ],
    },
    Entry {
        message: "envoy.type.matcher.v3.StringMatcher",
        fields: &[
            ("exact", Walk),
            ("prefix", Walk),
            ("suffix", Walk),
            ("contains", Walk),
            ("safe_regex", Walk),
            ("ignore_case", Walk),
        ],
    },
    Entry {
        message: "envoy.type.matcher.v3.RegexMatcher",
        fields: &[("regex", Walk)],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        fields: &[("name", Walk), ("sds_config", Walk)],
    },
    Entry {
        message: "envoy.extensions.transport_sockets.tls.v3.Secret",
        fields: &[
            ("name", Walk),
            ("tls_certificate", Walk),
            ("validation_context", Walk),
        ],
    },
];

pub static IGNORED: &[Ignored] = &[
    Ignored {
        message: "envoy.config.bootstrap.v3.Bootstrap",
        field: "layered_runtime",
        reason: "trellis has no runtime overrides; every default applies",
    },
    Ignored {
        message: "envoy.config.bootstrap.v3.Bootstrap",
        field: "stats_config",
        reason: "stat names and tags are fixed: Envoy's names with App Mesh's tags",
    },
    Ignored {
        message: "envoy.config.bootstrap.v3.Bootstrap",
        field: "stats_flush_interval",
        reason: "it paces stats sinks, which trellis lacks; the admin API reads live values",
    },
    Ignored {
        message: "envoy.config.core.v3.Node",
        field: "user_agent_name",
        reason: "trellis reports its own name to the control plane",
    },
    Ignored {
        message: "envoy.config.core.v3.Node",
        field: "user_agent_version",
        reason: "trellis reports its own version to the control plane",
    },
    Ignored {
        message: "envoy.config.core.v3.Node",
        field: "user_agent_build_version",
        reason: "trellis reports its own version to the control plane",
    },
    Ignored {
        message: "envoy.config.bootstrap.v3.Admin",
        field: "profile_path",
        reason: "the admin API has no CPU profiler",
    },
    Ignored {
        message: "envoy.config.core.v3.ApiConfigSource",
        field: "set_node_on_first_message_only",
        reason: "it only trims the node from later requests; a control plane reads the first",
    },
    Ignored {
        message: "envoy.config.listener.v3.Listener",
        field: "connection_balance_config",
        reason: "it only evens connections out across worker threads, which trellis schedules its own way",
    },
    Ignored {
        message: "envoy.config.listener.v3.Listener",
        field: "metadata",
        reason: "only extensions that trellis lacks read listener metadata",
    },
    Ignored {
        message: "envoy.config.endpoint.v3.LbEndpoint",
        field: "metadata",
        reason: "only subset load balancing reads it, and lb_subset_config is refused",
    },
    Ignored {
        message: "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        field: "overprovisioning_factor",
        reason: "it shapes priority and locality spill-over, which trellis does not do",
    },
    Ignored {
        message: "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        field: "update_merge_window",
        reason: "it only delays and batches host-set updates; their outcome is the same",
    },
    Ignored {
        message: "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        field: "track_remaining",
        reason: "it adds remaining-capacity gauges, a stats-only change",
    },
    Ignored {
        message: "envoy.config.core.v3.RuntimeFractionalPercent",
        field: "runtime_key",
        reason: "trellis has no runtime; default_value applies",
    },
    Ignored {
        message: "envoy.extensions.filters.http.router.v3.Router",
        field: "dynamic_stats",
        reason: "it only toggles some router statistics",
    },
    Ignored {
        message: "envoy.type.matcher.v3.RegexMatcher",
        field: "google_re2",
        reason: "a deprecated program-size limit for RE2; trellis's regex engine has none",
    },
    Ignored {
        message: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        field: "max_session_keys",
        reason: "it only sizes the TLS session-resumption cache",
    },
];

/// Refuses, by its path, the first field that is set and that trellis would not
/// honour, so that a bootstrap fails at start and an xDS resource is NACKed whole
/// instead of being applied with a piece silently missing.
pub fn check(msg: &DynamicMessage) -> Result<(), ConfigError> {
    if let Some(unknown) = msg.unknown_fields().next() {
        return Err(ConfigError::new(
            format!("#{}", unknown.number()),
            "field number unknown to trellis (from a newer Envoy API?)",
        ));
    }
    let desc = msg.descriptor();
    let message = desc.full_name();
    if is_leaf(message) || DELEGATED.iter().any(|d| d.message == message) {
        return Ok(());
    }
    let entry = SUPPORTED.iter().find(|e| e.message == message);
    for (field, value) in msg.fields() {
        let name = field.name();
        let rule = entry.and_then(|e| e.fields.iter().find(|(f, _)| *f == name));
        match rule {
            Some((_, rule)) => field_value(&field, value, rule).map_err(|e| e.at(name))?,
            None if is_ignored(message, name) => {}
            None => return Err(ConfigError::new(name, "not supported by trellis")),
        }
    }
    Ok(())
}

/// Durations, wrappers and `Struct` hold plain values; `Any` is left to its `Extension` rule.
fn is_leaf(message: &str) -> bool {
    message.starts_with("google.protobuf.") && message != "google.protobuf.Any"
}

fn is_ignored(message: &str, field: &str) -> bool {
    IGNORED
        .iter()
        .any(|i| i.message == message && i.field == field)
}

fn field_value(field: &FieldDescriptor, value: &Value, rule: &Rule) -> Result<(), ConfigError> {
    match value {
        Value::List(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            single(field, item, rule).map_err(|e| e.at(format!("[{i}]")))
        }),
        Value::Map(entries) => {
            // Sorted, so that the error reported first does not depend on hash order.
            let mut entries: Vec<(String, &Value)> =
                entries.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.into_iter().try_for_each(|(key, item)| {
                single(field, item, rule).map_err(|e| e.at(format!("[{key}]")))
            })
        }
        _ => single(field, value, rule),
    }
}

fn single(field: &FieldDescriptor, value: &Value, rule: &Rule) -> Result<(), ConfigError> {
    match (rule, value) {
        (Rule::Opaque, _) => Ok(()),
        (Rule::Walk, Value::Message(m)) => check(m),
        (Rule::Walk, _) => Ok(()),
        (Rule::Values(allowed), Value::EnumNumber(n)) => enum_value(field, *n, allowed),
        (Rule::Extension(urls), Value::Message(any)) => extension(any, urls),
        (Rule::Values(_) | Rule::Extension(_), _) => Err(ConfigError::new(
            "",
            "trellis's table of supported fields expects another type here",
        )),
    }
}

fn enum_value(field: &FieldDescriptor, number: i32, allowed: &[&str]) -> Result<(), ConfigError> {
    let name = field
        .kind()
        .as_enum()
        .and_then(|e| e.get_value(number))
        .map_or_else(|| number.to_string(), |v| v.name().to_string());
    if allowed.contains(&name.as_str()) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "",
            format!(
                "{name} is not supported by trellis (supported: {})",
                allowed.join(", ")
            ),
        ))
    }
}

/// Unpacks the `Any` with the pool it came from, so that a resource decoded with
/// another pool is checked the same way.
fn extension(packed: &DynamicMessage, urls: &[&str]) -> Result<(), ConfigError> {
    let any: prost_types::Any = packed
        .transcode_to()
        .map_err(|e| ConfigError::new("", format!("not an Any: {e}")))?;
    let unsupported = || {
        ConfigError::new(
            "",
            format!("extension {} is not supported by trellis", any.type_url),
        )
    };
    // Like Envoy, only the message name after the last `/` counts, not the domain.
    let name = message_name(&any.type_url);
    if !urls.iter().any(|url| message_name(url) == name) {
        return Err(unsupported());
    }
    let desc = packed
        .descriptor()
        .parent_pool()
        .get_message_by_name(name)
        .ok_or_else(unsupported)?;
    let inner = DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| ConfigError::new("", format!("cannot decode {}: {e}", any.type_url)))?;
    check(&inner)
}

fn message_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

fn key_text(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::{Kind, MessageDescriptor};

    use super::*;

    fn descriptor(name: &str) -> MessageDescriptor {
        xds_protos::descriptor_pool()
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("no message {name}"))
    }

    fn from_json(name: &str, json: &str) -> DynamicMessage {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(descriptor(name), &mut de).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(msg: &DynamicMessage) -> String {
        check(msg).err().map(|e| e.to_string()).unwrap_or_default()
    }

    const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";

    #[test]
    fn the_table_names_real_fields_with_fitting_rules() {
        let pool = xds_protos::descriptor_pool();
        for (i, entry) in SUPPORTED.iter().enumerate() {
            assert!(
                SUPPORTED[..i].iter().all(|e| e.message != entry.message),
                "{} listed twice",
                entry.message
            );
            let desc = descriptor(entry.message);
            for (name, rule) in entry.fields {
                let field = desc
                    .get_field_by_name(name)
                    .unwrap_or_else(|| panic!("no field {}.{name}", entry.message));
                let kind = if field.is_map() {
                    field
                        .kind()
                        .as_message()
                        .map(|m| m.map_entry_value_field().kind())
                        .unwrap_or_else(|| panic!("{name}"))
                } else {
                    field.kind()
                };
                match rule {
                    Rule::Values(values) => {
                        let e = kind
                            .as_enum()
                            .unwrap_or_else(|| panic!("{name} is no enum"));
                        for v in *values {
                            assert!(e.get_value_by_name(v).is_some(), "{name}: no value {v}");
                        }
                    }
                    Rule::Extension(urls) => {
                        assert!(
                            matches!(&kind, Kind::Message(m) if m.full_name() == "google.protobuf.Any"),
                            "{name} is no Any"
                        );
                        for url in *urls {
                            assert!(
                                pool.get_message_by_name(message_name(url)).is_some(),
                                "{url}"
                            );
                        }
                    }
                    Rule::Walk | Rule::Opaque => {}
                }
            }
        }
        for delegated in DELEGATED {
            descriptor(delegated.message);
            assert!(SUPPORTED.iter().all(|e| e.message != delegated.message));
        }
        for ignored in IGNORED {
            let desc = descriptor(ignored.message);
            assert!(
                desc.get_field_by_name(ignored.field).is_some(),
                "no field {}.{}",
                ignored.message,
                ignored.field
            );
            assert!(!ignored.reason.is_empty());
            let supported = SUPPORTED
                .iter()
                .filter(|e| e.message == ignored.message)
                .any(|e| e.fields.iter().any(|(f, _)| *f == ignored.field));
            assert!(!supported, "{}.{} is both", ignored.message, ignored.field);
        }
    }

    #[test]
    fn every_walked_message_with_fields_has_an_entry() {
        // A walked message without an entry refuses all its fields: right for
        // ClusterLoadAssignment.Policy, a table slip anywhere else.
        let deliberate = ["envoy.config.endpoint.v3.ClusterLoadAssignment.Policy"];
        let mut missing = Vec::new();
        for entry in SUPPORTED {
            let desc = descriptor(entry.message);
            for (name, rule) in entry.fields {
                let Some(field) = desc.get_field_by_name(name) else {
                    continue;
                };
                let (Rule::Walk, Kind::Message(m)) = (rule, field.kind()) else {
                    continue;
                };
                let known = is_leaf(m.full_name())
                    || DELEGATED.iter().any(|d| d.message == m.full_name())
                    || m.fields().len() == 0
                    || SUPPORTED.iter().any(|e| e.message == m.full_name())
                    || deliberate.contains(&m.full_name());
                if !known {
                    missing.push(format!("{}.{name}: {}", entry.message, m.full_name()));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn an_unsupported_field_is_named() {
        // Present though empty: in Envoy that turns subset load balancing on.
        let c = from_json(CLUSTER, r#"{"name": "a", "lbSubsetConfig": {}}"#);
        assert_eq!(error(&c), "lb_subset_config: not supported by trellis");
    }

    #[test]
    fn defaults_are_not_set_fields() {
        let c = from_json(
            CLUSTER,
            r#"{"name": "a", "transport_socket": {"name": "tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "allow_renegotiation": false}}}"#,
        );
        assert_eq!(error(&c), "");
        let c = from_json(
            CLUSTER,
            r#"{"name": "a", "transport_socket": {"name": "tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "allow_renegotiation": true}}}"#,
        );
        assert_eq!(
            error(&c),
            "transport_socket.typed_config.allow_renegotiation: not supported by trellis"
        );
    }

    #[test]
    fn maps_of_extensions_are_walked_by_key() {
        let c = from_json(
            CLUSTER,
            r#"{"name": "a", "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "auto_config": {}}}}"#,
        );
        assert_eq!(
            error(&c),
            "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]\
             .auto_config: not supported by trellis"
        );
    }

    #[test]
    fn an_extension_outside_its_point_is_refused() {
        let c = from_json(
            CLUSTER,
            r#"{"name": "a", "typed_extension_protocol_options": {"x": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}"#,
        );
        assert_eq!(
            error(&c),
            "typed_extension_protocol_options[x]: extension \
             type.googleapis.com/envoy.extensions.filters.http.router.v3.Router is not supported by trellis"
        );
    }

    #[test]
    fn repeated_enums_are_checked_per_item() {
        let l = from_json(
            "envoy.config.listener.v3.Listener",
            r#"{"name": "l", "address": {"socket_address": {"address": "::", "port_value": 53, "protocol": "UDP"}}}"#,
        );
        assert_eq!(
            error(&l),
            "address.socket_address.protocol: UDP is not supported by trellis (supported: TCP)"
        );
    }

    #[test]
    fn unknown_field_numbers_from_the_wire_are_refused() {
        let mut bytes = xds_protos::envoy::config::listener::v3::Listener {
            name: "l".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 999, varint 1: a field from an API newer than trellis's protos.
        bytes.extend_from_slice(&[0xb8, 0x3e, 0x01]);
        let l = DynamicMessage::decode(
            descriptor("envoy.config.listener.v3.Listener"),
            bytes.as_slice(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            error(&l),
            "#999: field number unknown to trellis (from a newer Envoy API?)"
        );
    }

    #[test]
    fn route_config_is_left_to_the_router() {
        let hcm = from_json(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            r#"{"stat_prefix": "x", "route_config": {"virtual_hosts": [{"name": "v",
                "domains": ["*"], "rate_limits": [{"stage": 1}]}]}}"#,
        );
        assert_eq!(error(&hcm), "");
        // An RDS resource, checked alone, is the router's too.
        let rc = from_json(
            "envoy.config.route.v3.RouteConfiguration",
            r#"{"name": "r", "vhds": {}}"#,
        );
        assert_eq!(error(&rc), "");
    }
}
