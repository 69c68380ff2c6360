//! Bootstrap YAML builders for tests, front-proxy style.

use std::net::SocketAddr;

/// A STATIC cluster over `endpoints`; `extra` is spliced into the cluster (YAML, 4-space indent).
pub fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut eps = String::new();
    for e in endpoints {
        eps.push_str(&format!(
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
            e.ip(),
            e.port()
        ));
    }
    let lb = if endpoints.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{eps}")
    };
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{lb}"
    )
}

/// A bootstrap with one HTTP listener on `port` whose virtual hosts (YAML list
/// items, 10-space indent) are `vhosts`, plus `clusters` (from [`cluster`]).
pub fn http_proxy(port: u16, vhosts: &str, clusters: &[String], hcm_extra: &str) -> String {
    http_proxy_with_route_config(port, "", vhosts, clusters, hcm_extra)
}

/// [`http_proxy`] plus `route_config_extra`: RouteConfiguration fields
/// (YAML, 12-space indent) such as route-config-level header mutations.
pub fn http_proxy_with_route_config(
    port: u16,
    route_config_extra: &str,
    vhosts: &str,
    clusters: &[String],
    hcm_extra: &str,
) -> String {
    // `virtual_hosts:` sits at 12 spaces, so its items need at least 12: the
    // callers' 10-space items are shifted (YAML rejects them otherwise).
    let vhosts = indent(vhosts, 2);
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm_extra}          route_config:
            name: local_route
{route_config_extra}            virtual_hosts:
{vhosts}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#,
        clusters = clusters.concat()
    )
}

/// Cluster options (for [`cluster`]'s `extra`) that make the proxy speak
/// prior-knowledge HTTP/2 to the upstream, as gRPC upstreams need.
pub const H2_UPSTREAM: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#;

/// Shifts every non-empty line of a YAML fragment right by `by` spaces.
pub fn indent(yaml: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    yaml.lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}
