//! The parts of App Mesh specs that the translation reads, as typed structs.
//!
//! Specs were validated against the service model when they were written, so
//! these types only pick out what matters; unknown members are ignored and
//! every member is optional, so a spec never fails to parse here.

use serde::Deserialize;

/// `{"unit": "s" | "ms", "value": N}`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Duration {
    #[serde(default)]
    pub unit: Option<DurationUnit>,
    #[serde(default)]
    pub value: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum DurationUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
}

impl Duration {
    pub fn millis(&self) -> Option<u64> {
        let v = u64::try_from(self.value?).ok()?;
        match self.unit? {
            DurationUnit::Seconds => v.checked_mul(1000),
            DurationUnit::Millis => Some(v),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshSpec {
    pub egress_filter: Option<EgressFilter>,
    pub service_discovery: Option<MeshServiceDiscovery>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EgressFilter {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshServiceDiscovery {
    pub ip_preference: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortMapping {
    pub port: u32,
    pub protocol: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualNodeSpec {
    pub listeners: Vec<NodeListener>,
    pub backends: Vec<Backend>,
    pub backend_defaults: Option<BackendDefaults>,
    pub service_discovery: Option<ServiceDiscovery>,
    pub logging: Option<Logging>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeListener {
    pub port_mapping: PortMapping,
    pub timeout: Option<ListenerTimeout>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_check: Option<HealthCheck>,
    pub tls: Option<ListenerTls>,
}

/// App Mesh keys listener timeouts and connection pools by protocol; one
/// shape serves both.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PerProtocol<T> {
    pub http: Option<T>,
    pub http2: Option<T>,
    pub grpc: Option<T>,
    pub tcp: Option<T>,
}

impl<T> Default for PerProtocol<T> {
    fn default() -> Self {
        PerProtocol {
            http: None,
            http2: None,
            grpc: None,
            tcp: None,
        }
    }
}

impl<T> PerProtocol<T> {
    pub fn for_protocol(&self, protocol: &str) -> Option<&T> {
        match protocol {
            "http" => self.http.as_ref(),
            "http2" => self.http2.as_ref(),
            "grpc" => self.grpc.as_ref(),
            "tcp" => self.tcp.as_ref(),
            _ => None,
        }
    }
}

pub type ListenerTimeout = PerProtocol<Timeout>;
pub type ConnectionPool = PerProtocol<PoolLimits>;

/// Route and listener timeouts share this shape (tcp only has `idle`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Timeout {
    pub per_request: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolLimits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    pub max_server_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_duration: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheck {
    pub protocol: String,
    pub path: Option<String>,
    pub port: Option<u32>,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub interval_millis: u64,
    pub timeout_millis: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Backend {
    pub virtual_service: Option<BackendService>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendService {
    pub virtual_service_name: String,
    pub client_policy: Option<ClientPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendDefaults {
    pub client_policy: Option<ClientPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientPolicy {
    pub tls: Option<ClientTls>,
}

/// `clientPolicy.tls`: TLS to a backend, on all its ports or on `ports`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTls {
    /// App Mesh's default is `true`.
    pub enforce: Option<bool>,
    pub ports: Vec<u32>,
    pub certificate: Option<TlsCertificate>,
    pub validation: TlsValidation,
}

/// A listener's `tls`: `STRICT`, `PERMISSIVE` or `DISABLED`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerTls {
    pub mode: String,
    pub certificate: TlsCertificate,
    pub validation: Option<TlsValidation>,
}

/// A certificate source; `acm` is refused at the API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsCertificate {
    pub file: Option<FileCertificate>,
    pub sds: Option<SdsSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileCertificate {
    pub certificate_chain: String,
    pub private_key: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SdsSource {
    pub secret_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsValidation {
    pub trust: TlsTrust,
    pub subject_alternative_names: Option<SubjectAlternativeNames>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsTrust {
    pub file: Option<FileTrust>,
    pub sds: Option<SdsSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileTrust {
    pub certificate_chain: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectAlternativeNames {
    #[serde(rename = "match")]
    pub matcher: SanMatch,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SanMatch {
    pub exact: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceDiscovery {
    pub dns: Option<DnsDiscovery>,
    pub aws_cloud_map: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsDiscovery {
    pub hostname: String,
    pub response_type: Option<String>,
    pub ip_preference: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Logging {
    pub access_log: Option<AccessLog>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLog {
    pub file: Option<FileAccessLog>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileAccessLog {
    pub path: String,
    pub format: Option<LoggingFormat>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoggingFormat {
    pub text: Option<String>,
    pub json: Option<Vec<JsonField>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JsonField {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Provider {
    pub virtual_node: Option<ProviderNode>,
    pub virtual_router: Option<ProviderRouter>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderNode {
    pub virtual_node_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderRouter {
    pub virtual_router_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualRouterSpec {
    pub listeners: Vec<RouterListener>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouterListener {
    pub port_mapping: PortMapping,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteSpec {
    pub priority: Option<u32>,
    pub http_route: Option<HttpRoute>,
    pub http2_route: Option<HttpRoute>,
    pub grpc_route: Option<GrpcRoute>,
    pub tcp_route: Option<TcpRoute>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    #[serde(rename = "match")]
    pub matcher: HttpMatch,
    pub action: RouteAction,
    pub retry_policy: Option<RetryPolicy>,
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatch {
    pub prefix: Option<String>,
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query_parameters: Vec<QueryParameter>,
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u32>,
    /// Gateway routes only.
    pub hostname: Option<HostnameMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PathMatch {
    pub exact: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderMatch {
    pub name: String,
    pub invert: Option<bool>,
    #[serde(rename = "match")]
    pub matcher: Option<ValueMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub regex: Option<String>,
    pub range: Option<MatchRange>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MatchRange {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryParameter {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Option<QueryMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryMatch {
    pub exact: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostnameMatch {
    pub exact: Option<String>,
    pub suffix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteAction {
    pub weighted_targets: Vec<WeightedTarget>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WeightedTarget {
    pub virtual_node: String,
    pub weight: u32,
    pub port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    pub max_retries: Option<u32>,
    pub per_retry_timeout: Option<Duration>,
    pub http_retry_events: Vec<String>,
    pub tcp_retry_events: Vec<String>,
    pub grpc_retry_events: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRoute {
    #[serde(rename = "match")]
    pub matcher: GrpcMatch,
    pub action: RouteAction,
    pub retry_policy: Option<RetryPolicy>,
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcMatch {
    pub service_name: Option<String>,
    pub method_name: Option<String>,
    pub metadata: Vec<HeaderMatch>,
    pub port: Option<u32>,
    /// Gateway routes only.
    pub hostname: Option<HostnameMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matcher: Option<TcpMatch>,
    pub action: RouteAction,
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpMatch {
    pub port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualGatewaySpec {
    pub listeners: Vec<GatewayListener>,
    pub backend_defaults: Option<BackendDefaults>,
    pub logging: Option<Logging>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayListener {
    pub port_mapping: PortMapping,
    pub connection_pool: Option<ConnectionPool>,
    pub health_check: Option<HealthCheck>,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayRouteSpec {
    pub priority: Option<u32>,
    pub http_route: Option<GatewayHttpRoute>,
    pub http2_route: Option<GatewayHttpRoute>,
    pub grpc_route: Option<GatewayGrpcRoute>,
}

impl GatewayRouteSpec {
    /// The virtual service this gateway route sends traffic to.
    pub fn target_service(&self) -> Option<&str> {
        let action = self
            .http_route
            .as_ref()
            .or(self.http2_route.as_ref())
            .map(|h| &h.action)
            .or(self.grpc_route.as_ref().map(|g| &g.action))?;
        Some(&action.target.virtual_service.virtual_service_name)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayHttpRoute {
    #[serde(rename = "match")]
    pub matcher: HttpMatch,
    pub action: GatewayAction,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayGrpcRoute {
    #[serde(rename = "match")]
    pub matcher: GrpcMatch,
    pub action: GatewayAction,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayAction {
    pub target: GatewayTarget,
    pub rewrite: Option<GatewayRewrite>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayTarget {
    pub virtual_service: BackendService,
    pub port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayRewrite {
    pub prefix: Option<PrefixRewrite>,
    pub path: Option<PathRewrite>,
    pub hostname: Option<HostnameRewrite>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrefixRewrite {
    pub default_prefix: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PathRewrite {
    pub exact: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostnameRewrite {
    pub default_target_hostname: Option<String>,
}
