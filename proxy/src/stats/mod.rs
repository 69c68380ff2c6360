//! Counters and gauges, Envoy-named. Updating one is a relaxed atomic add: no
//! lock on the request path. The store holds weak references to stat scopes so
//! the admin API can render them; scopes die with their cluster or listener.

pub mod appmesh;
mod help;
mod render;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::tls::SslStats;

pub use render::{render_json, render_prometheus, render_text};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A latency histogram in whole milliseconds, as Envoy records them. One
/// relaxed atomic add per bucket hit, plus count and sum: no lock, no
/// allocation, so recording costs the same on every worker.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last slot is above every bound.
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// A histogram read at one instant: cumulative bucket counts, count, sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; BUCKETS_MS.len()],
    pub count: u64,
    pub sum_ms: u64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        // Bounds are sorted; a linear scan over 19 floats beats a search here.
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms as f64 <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; BUCKETS_MS.len()];
        let mut total = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *c = total;
        }
        let rest = self.buckets[BUCKETS_MS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            // Read from the buckets, so `+Inf` always equals the count.
            count: total + rest,
            sum_ms: self.sum_ms.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// The `q` quantile, interpolated within its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = 0.0;
        let mut below = 0;
        for (bound, &cum) in BUCKETS_MS.iter().zip(&self.cumulative) {
            if cum as f64 >= rank && cum > below {
                let within = (rank - below as f64) / (cum - below) as f64;
                return Some(lower + (bound - lower) * within.clamp(0.0, 1.0));
            }
            lower = *bound;
            below = cum;
        }
        Some(BUCKETS_MS[BUCKETS_MS.len() - 1])
    }
}

/// Per-status-code counters, as Envoy keeps `upstream_rq_200` beside `upstream_rq_2xx`.
#[derive(Debug)]
pub struct CodeCounters {
    classes: [Counter; 5],
    codes: Box<[Counter]>,
}

impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters {
            classes: Default::default(),
            codes: (100..600).map(|_| Counter::default()).collect(),
        }
    }
}

impl CodeCounters {
    pub fn record(&self, status: u16) {
        if (100..600).contains(&status) {
            self.classes[usize::from(status / 100 - 1)].inc();
            self.codes[usize::from(status - 100)].inc();
        }
    }

    fn visit(&self, prefix: &str, scope: &Scope, v: &mut dyn Visitor) {
        for (i, c) in self.classes.iter().enumerate() {
            v.counter(scope, &format!("{prefix}_{}xx", i + 1), c.get());
        }
        for (i, c) in self.codes.iter().enumerate() {
            let n = c.get();
            if n > 0 {
                v.counter(scope, &format!("{prefix}_{}", i + 100), n);
            }
        }
    }
}

/// Where a stat lives: `cluster.NAME.`, `http.PREFIX.`, `listener.ADDR.`, `server.`.
#[derive(Debug, Clone)]
pub struct Scope {
    pub kind: &'static str,
    /// The Prometheus label Envoy's tag extraction gives the scope's name.
    pub tag: Option<(&'static str, Arc<str>)>,
    /// More labels, for scopes named by several values (an App Mesh peer);
    /// their values join the text name in order. A label with an empty key
    /// is a literal segment of the name, not a Prometheus label.
    pub labels: Vec<(&'static str, Arc<str>)>,
}

impl Scope {
    pub fn new(kind: &'static str, tag: Option<(&'static str, Arc<str>)>) -> Scope {
        Scope {
            kind,
            tag,
            labels: Vec::new(),
        }
    }

    pub fn labelled(kind: &'static str, labels: Vec<(&'static str, Arc<str>)>) -> Scope {
        Scope {
            kind,
            tag: None,
            labels,
        }
    }
}

pub trait Visitor {
    fn counter(&mut self, scope: &Scope, name: &str, value: u64);
    fn gauge(&mut self, scope: &Scope, name: &str, value: i64);
    /// Visitors that only sum counters or gauges need not look at these.
    fn histogram(&mut self, _scope: &Scope, _name: &str, _value: &HistogramSnapshot) {}
}

/// A block of stats that can list itself.
pub trait StatSource: Send + Sync {
    fn visit(&self, v: &mut dyn Visitor);
}

#[derive(Default)]
pub struct Store {
    sources: Mutex<Vec<Weak<dyn StatSource>>>,
    /// Labels on every Prometheus series, from the node's identity.
    node_labels: Vec<(String, String)>,
    /// The node has an App Mesh identity (labelled or not).
    mesh_node: bool,
}

impl Store {
    /// App Mesh style tags: a node named `mesh/M/virtualNode/N` (or
    /// `virtualGateway/G`, or an ARN ending so) labels every series with
    /// `appmesh_mesh` and `appmesh_virtual_node` (`appmesh_virtual_gateway`),
    /// as the App Mesh Envoy image's stats tags do, so one Prometheus can
    /// tell the proxies of a mesh apart; `tags` false leaves them out
    /// (App Mesh's `ENABLE_ENVOY_STATS_TAGS=0`).
    pub fn for_node(node_id: &str, tags: bool) -> Store {
        let object = appmesh::MeshObject::parse(node_id);
        let mesh_node = object.is_some();
        let node_labels = match object.filter(|_| tags) {
            Some(o) => {
                let key = if o.gateway {
                    "appmesh_virtual_gateway"
                } else {
                    "appmesh_virtual_node"
                };
                vec![
                    ("appmesh_mesh".to_string(), o.mesh),
                    (key.to_string(), o.name),
                ]
            }
            None => Vec::new(),
        };
        Store {
            sources: Mutex::default(),
            node_labels,
            mesh_node,
        }
    }

    /// Whether the node has an App Mesh identity, so per-peer stats apply.
    pub fn is_mesh_node(&self) -> bool {
        self.mesh_node
    }

    pub fn node_labels(&self) -> Vec<(String, String)> {
        self.node_labels.clone()
    }

    pub fn register(&self, source: Weak<dyn StatSource>) {
        if let Ok(mut s) = self.sources.lock() {
            s.retain(|w| w.strong_count() > 0);
            s.push(source);
        }
    }

    pub fn visit(&self, v: &mut dyn Visitor) {
        let live: Vec<Arc<dyn StatSource>> = match self.sources.lock() {
            Ok(s) => s.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for s in live {
            s.visit(v);
        }
    }
}

// === Stat blocks ===

#[derive(Debug)]
pub struct ClusterStats {
    pub scope: Scope,
    pub upstream_rq_total: Counter,
    /// Hosts ejected by outlier detection right now.
    pub outlier_detection_ejections_active: Gauge,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq: CodeCounters,
    pub upstream_cx_total: Counter,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_rq_reset: Counter,
    pub membership_healthy: Gauge,
    pub membership_total: Gauge,
    pub upstream_rq_time: Histogram,
}

impl ClusterStats {
    pub fn new(name: Arc<str>) -> ClusterStats {
        ClusterStats {
            scope: Scope::new("cluster", Some(("envoy_cluster_name", name))),
            upstream_rq_total: Counter::default(),
            outlier_detection_ejections_active: Gauge::default(),
            upstream_rq_active: Gauge::default(),
            upstream_rq_pending_active: Gauge::default(),
            upstream_rq_timeout: Counter::default(),
            upstream_rq_per_try_timeout: Counter::default(),
            upstream_rq_retry: Counter::default(),
            upstream_rq_retry_success: Counter::default(),
            upstream_rq_pending_overflow: Counter::default(),
            upstream_rq: CodeCounters::default(),
            upstream_cx_total: Counter::default(),
            upstream_cx_http1_total: Counter::default(),
            upstream_cx_http2_total: Counter::default(),
            upstream_cx_active: Gauge::default(),
            upstream_cx_connect_fail: Counter::default(),
            upstream_cx_connect_timeout: Counter::default(),
            upstream_cx_destroy: Counter::default(),
            upstream_rq_reset: Counter::default(),
            membership_healthy: Gauge::default(),
            membership_total: Gauge::default(),
            upstream_rq_time: Histogram::default(),
        }
    }
}

impl StatSource for ClusterStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "upstream_rq_total", self.upstream_rq_total.get());
        v.gauge(
            s,
            "outlier_detection.ejections_active",
            self.outlier_detection_ejections_active.get(),
        );
        v.gauge(s, "upstream_rq_active", self.upstream_rq_active.get());
        v.gauge(
            s,
            "upstream_rq_pending_active",
            self.upstream_rq_pending_active.get(),
        );
        v.counter(s, "upstream_rq_timeout", self.upstream_rq_timeout.get());
        v.counter(
            s,
            "upstream_rq_per_try_timeout",
            self.upstream_rq_per_try_timeout.get(),
        );
        v.counter(s, "upstream_rq_retry", self.upstream_rq_retry.get());
        v.counter(
            s,
            "upstream_rq_retry_success",
            self.upstream_rq_retry_success.get(),
        );
        v.counter(
            s,
            "upstream_rq_pending_overflow",
            self.upstream_rq_pending_overflow.get(),
        );
        v.counter(s, "upstream_rq_rx_reset", self.upstream_rq_reset.get());
        self.upstream_rq.visit("upstream_rq", s, v);
        v.counter(s, "upstream_cx_total", self.upstream_cx_total.get());
        v.counter(
            s,
            "upstream_cx_http1_total",
            self.upstream_cx_http1_total.get(),
        );
        v.counter(
            s,
            "upstream_cx_http2_total",
            self.upstream_cx_http2_total.get(),
        );
        v.gauge(s, "upstream_cx_active", self.upstream_cx_active.get());
        v.counter(
            s,
            "upstream_cx_connect_fail",
            self.upstream_cx_connect_fail.get(),
        );
        v.counter(
            s,
            "upstream_cx_connect_timeout",
            self.upstream_cx_connect_timeout.get(),
        );
        v.counter(s, "upstream_cx_destroy", self.upstream_cx_destroy.get());
        v.gauge(s, "membership_healthy", self.membership_healthy.get());
        v.gauge(s, "membership_total", self.membership_total.get());
        v.histogram(s, "upstream_rq_time", &self.upstream_rq_time.snapshot());
    }
}

#[derive(Debug)]
pub struct HttpStats {
    pub scope: Scope,
    pub downstream_rq_total: Counter,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq: CodeCounters,
    pub downstream_rq_timeout: Counter,
    /// `stream_idle_timeout` (or a route's `idle_timeout`) fired.
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_ws_on_non_ws_route: Counter,
    /// Heads not complete within `request_headers_timeout` (408).
    pub downstream_rq_header_timeout: Counter,
    /// Connections closed after `max_requests_per_connection` requests.
    pub downstream_cx_max_requests_reached: Counter,
    /// HTTP/2 connections closed for resetting too many of their streams.
    pub downstream_rq_too_many_premature_resets: Counter,
    /// Connections closed for a codec protocol error (a GOAWAY with an error).
    pub downstream_cx_protocol_error: Counter,
    /// Requests answered 503 by the `stop_accepting_requests` overload action.
    pub downstream_rq_overload_close: Counter,
    pub downstream_cx_total: Counter,
    /// The connection's `idle_timeout` closed it.
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
    pub downstream_rq_time: Arc<Histogram>,
}

impl HttpStats {
    pub fn new(prefix: Arc<str>) -> HttpStats {
        HttpStats {
            scope: Scope::new("http", Some(("envoy_http_conn_manager_prefix", prefix))),
            downstream_rq_total: Counter::default(),
            downstream_rq_http1_total: Counter::default(),
            downstream_rq_http2_total: Counter::default(),
            downstream_rq_active: Gauge::default(),
            downstream_rq: CodeCounters::default(),
            downstream_rq_timeout: Counter::default(),
            downstream_rq_idle_timeout: Counter::default(),
            downstream_rq_ws_on_non_ws_route: Counter::default(),
            downstream_rq_header_timeout: Counter::default(),
            downstream_cx_max_requests_reached: Counter::default(),
            downstream_rq_too_many_premature_resets: Counter::default(),
            downstream_cx_protocol_error: Counter::default(),
            downstream_rq_overload_close: Counter::default(),
            downstream_cx_total: Counter::default(),
            downstream_cx_idle_timeout: Counter::default(),
            downstream_cx_active: Gauge::default(),
            downstream_cx_http1_total: Counter::default(),
            downstream_cx_http2_total: Counter::default(),
            downstream_cx_upgrades_total: Counter::default(),
            no_route: Counter::default(),
            no_cluster: Counter::default(),
            rq_redirect: Counter::default(),
            rq_direct_response: Counter::default(),
            downstream_rq_time: Arc::default(),
        }
    }
}

impl StatSource for HttpStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "downstream_rq_total", self.downstream_rq_total.get());
        v.counter(
            s,
            "downstream_rq_http1_total",
            self.downstream_rq_http1_total.get(),
        );
        v.counter(
            s,
            "downstream_rq_http2_total",
            self.downstream_rq_http2_total.get(),
        );
        v.gauge(s, "downstream_rq_active", self.downstream_rq_active.get());
        self.downstream_rq.visit("downstream_rq", s, v);
        v.counter(s, "downstream_rq_timeout", self.downstream_rq_timeout.get());
        v.counter(
            s,
            "downstream_rq_idle_timeout",
            self.downstream_rq_idle_timeout.get(),
        );
        v.counter(
            s,
            "downstream_cx_idle_timeout",
            self.downstream_cx_idle_timeout.get(),
        );
        v.counter(
            s,
            "downstream_rq_ws_on_non_ws_route",
            self.downstream_rq_ws_on_non_ws_route.get(),
        );
        for (name, c) in [
            (
                "downstream_rq_header_timeout",
                &self.downstream_rq_header_timeout,
            ),
            (
                "downstream_cx_max_requests_reached",
                &self.downstream_cx_max_requests_reached,
            ),
            (
                "downstream_rq_too_many_premature_resets",
                &self.downstream_rq_too_many_premature_resets,
            ),
            (
                "downstream_cx_protocol_error",
                &self.downstream_cx_protocol_error,
            ),
            (
                "downstream_rq_overload_close",
                &self.downstream_rq_overload_close,
            ),
        ] {
            v.counter(s, name, c.get());
        }
        v.counter(s, "downstream_cx_total", self.downstream_cx_total.get());
        v.gauge(s, "downstream_cx_active", self.downstream_cx_active.get());
        v.counter(
            s,
            "downstream_cx_http1_total",
            self.downstream_cx_http1_total.get(),
        );
        v.counter(
            s,
            "downstream_cx_http2_total",
            self.downstream_cx_http2_total.get(),
        );
        v.counter(
            s,
            "downstream_cx_upgrades_total",
            self.downstream_cx_upgrades_total.get(),
        );
        v.counter(s, "no_route", self.no_route.get());
        v.counter(s, "no_cluster", self.no_cluster.get());
        v.counter(s, "rq_redirect", self.rq_redirect.get());
        v.counter(s, "rq_direct_response", self.rq_direct_response.get());
        v.histogram(s, "downstream_rq_time", &self.downstream_rq_time.snapshot());
    }
}

#[derive(Debug)]
pub struct ListenerStats {
    pub scope: Scope,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub no_filter_chain_match: Counter,
    /// Listed once a version of the listener terminated TLS.
    pub ssl: SslStats,
    pub tls: std::sync::atomic::AtomicBool,
    /// Connections closed at once: the global connection limit was reached.
    pub downstream_global_cx_overflow: Counter,
    /// Connections closed at once by `reject_incoming_connections`.
    pub downstream_cx_overload_reject: Counter,
    /// TLS handshakes not done within the chain's handshake timeout.
    pub downstream_cx_transport_socket_connect_timeout: Counter,
}

impl ListenerStats {
    pub fn new(addr: std::net::SocketAddr) -> ListenerStats {
        // Envoy names listener scopes by address with ':' folded to '_',
        // brackets kept: `0.0.0.0_15001`, `[__]_15001`.
        let name = addr.to_string().replace(':', "_");
        ListenerStats {
            scope: Scope::new(
                "listener",
                Some(("envoy_listener_address", Arc::from(name.as_str()))),
            ),
            downstream_cx_total: Counter::default(),
            downstream_cx_active: Gauge::default(),
            no_filter_chain_match: Counter::default(),
            ssl: SslStats::default(),
            tls: std::sync::atomic::AtomicBool::new(false),
            downstream_global_cx_overflow: Counter::default(),
            downstream_cx_overload_reject: Counter::default(),
            downstream_cx_transport_socket_connect_timeout: Counter::default(),
        }
    }
}

impl StatSource for ListenerStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "downstream_cx_total", self.downstream_cx_total.get());
        v.gauge(s, "downstream_cx_active", self.downstream_cx_active.get());
        v.counter(s, "no_filter_chain_match", self.no_filter_chain_match.get());
        v.counter(
            s,
            "downstream_global_cx_overflow",
            self.downstream_global_cx_overflow.get(),
        );
        v.counter(
            s,
            "downstream_cx_overload_reject",
            self.downstream_cx_overload_reject.get(),
        );
        v.counter(
            s,
            "downstream_cx_transport_socket_connect_timeout",
            self.downstream_cx_transport_socket_connect_timeout.get(),
        );
        if self.tls.load(std::sync::atomic::Ordering::Relaxed) {
            self.ssl.visit(s, v);
        }
    }
}

/// `connection_limit.PREFIX.*`, shared by the filters with that prefix.
#[derive(Debug)]
pub struct ConnectionLimitStats {
    pub scope: Scope,
    pub active_connections: Gauge,
    pub limited_connections: Counter,
}

impl ConnectionLimitStats {
    pub fn new(prefix: Arc<str>) -> ConnectionLimitStats {
        ConnectionLimitStats {
            scope: Scope::new(
                "connection_limit",
                Some(("envoy_connection_limit_prefix", prefix)),
            ),
            active_connections: Gauge::default(),
            limited_connections: Counter::default(),
        }
    }
}

impl StatSource for ConnectionLimitStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.gauge(s, "active_connections", self.active_connections.get());
        v.counter(s, "limited_connections", self.limited_connections.get());
    }
}

/// Envoy's process-wide `http2.` codec stats of downstream connections.
#[derive(Debug)]
pub struct Http2Stats {
    pub scope: Scope,
    /// RST_STREAM frames received.
    pub rx_reset: Counter,
    /// RST_STREAM frames sent.
    pub tx_reset: Counter,
    /// Requests reset for carrying more than `max_headers_count` headers.
    pub header_overflow: Counter,
    /// Requests reset for headers over `max_request_headers_kb`.
    pub header_list_size_too_large: Counter,
    /// Connections closed for sending more PING and SETTINGS frames than
    /// `max_outbound_control_frames` in one second.
    pub outbound_control_flood: Counter,
}

impl Default for Http2Stats {
    fn default() -> Self {
        Http2Stats {
            scope: Scope::new("http2", None),
            rx_reset: Counter::default(),
            tx_reset: Counter::default(),
            header_overflow: Counter::default(),
            header_list_size_too_large: Counter::default(),
            outbound_control_flood: Counter::default(),
        }
    }
}

impl StatSource for Http2Stats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "rx_reset", self.rx_reset.get());
        v.counter(s, "tx_reset", self.tx_reset.get());
        v.counter(s, "header_overflow", self.header_overflow.get());
        v.counter(
            s,
            "header_list_size_too_large",
            self.header_list_size_too_large.get(),
        );
        v.counter(
            s,
            "outbound_control_flood",
            self.outbound_control_flood.get(),
        );
    }
}

#[derive(Debug)]
pub struct TcpStats {
    pub scope: Scope,
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub upstream_flush_total: Counter,
}

impl TcpStats {
    pub fn new(prefix: Arc<str>) -> TcpStats {
        TcpStats {
            scope: Scope::new("tcp", Some(("envoy_tcp_prefix", prefix))),
            downstream_cx_total: Counter::default(),
            downstream_cx_no_route: Counter::default(),
            upstream_flush_total: Counter::default(),
        }
    }
}

impl StatSource for TcpStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "downstream_cx_total", self.downstream_cx_total.get());
        v.counter(
            s,
            "downstream_cx_no_route",
            self.downstream_cx_no_route.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_mesh_node_ids_become_labels() {
        let s = Store::for_node("mesh/shop/virtualNode/cart", true);
        assert_eq!(
            s.node_labels(),
            [
                ("appmesh_mesh".to_string(), "shop".to_string()),
                ("appmesh_virtual_node".to_string(), "cart".to_string())
            ]
        );
        let s = Store::for_node("arn:aws:appmesh:us-west-2:1:mesh/m/virtualGateway/gw", true);
        assert_eq!(s.node_labels()[1].0, "appmesh_virtual_gateway");
        assert!(Store::for_node("plain-node", true).node_labels().is_empty());
        let untagged = Store::for_node("mesh/shop/virtualNode/cart", false);
        assert!(untagged.node_labels().is_empty());
        assert!(untagged.is_mesh_node(), "per-peer stats stay");
    }

    #[test]
    fn listener_scopes_are_named_like_envoy() {
        let name = |a: &str| {
            let s = ListenerStats::new(a.parse().unwrap_or_else(|e| panic!("{a}: {e}")));
            s.scope.tag.map(|(_, v)| v.to_string())
        };
        assert_eq!(name("0.0.0.0:15001").as_deref(), Some("0.0.0.0_15001"));
        assert_eq!(name("[::]:15001").as_deref(), Some("[__]_15001"));
        assert_eq!(name("[::1]:80").as_deref(), Some("[__1]_80"));
    }

    #[test]
    fn histogram_buckets_follow_envoy() {
        let h = Histogram::default();
        for ms in [0, 1, 3, 7, 7000, 4_000_000] {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum_ms, 4_007_011);
        assert_eq!(s.cumulative[0], 1, "0 ms is at most 0.5");
        assert_eq!(s.cumulative[1], 2, "1 ms is at most 1");
        assert_eq!(s.cumulative[2], 3);
        assert_eq!(s.cumulative[3], 4);
        assert_eq!(s.cumulative[12], 5, "7000 ms is at most 10000");
        assert_eq!(
            s.cumulative[18], 5,
            "above the last bound counts only in +Inf"
        );
        let p50 = s.quantile(0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        assert_eq!(Histogram::default().snapshot().quantile(0.5), None);
    }
}
