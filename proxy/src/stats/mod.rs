//! Counters and gauges, Envoy-named. Updating one is a relaxed atomic add: no
//! lock on the request path. The store holds weak references to stat scopes so
//! the admin API can render them; scopes die with their cluster or listener.

mod render;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use render::{render_prometheus, render_text};

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
}

impl Scope {
    pub fn new(kind: &'static str, tag: Option<(&'static str, Arc<str>)>) -> Scope {
        Scope { kind, tag }
    }
}

pub trait Visitor {
    fn counter(&mut self, scope: &Scope, name: &str, value: u64);
    fn gauge(&mut self, scope: &Scope, name: &str, value: i64);
}

/// A block of stats that can list itself.
pub trait StatSource: Send + Sync {
    fn visit(&self, v: &mut dyn Visitor);
}

#[derive(Default)]
pub struct Store {
    sources: Mutex<Vec<Weak<dyn StatSource>>>,
}

impl Store {
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
    pub upstream_rq_active: Gauge,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq: CodeCounters,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_rq_reset: Counter,
    pub membership_healthy: Gauge,
    pub membership_total: Gauge,
}

impl ClusterStats {
    pub fn new(name: Arc<str>) -> ClusterStats {
        ClusterStats {
            scope: Scope::new("cluster", Some(("envoy_cluster_name", name))),
            upstream_rq_total: Counter::default(),
            upstream_rq_active: Gauge::default(),
            upstream_rq_pending_active: Gauge::default(),
            upstream_rq_timeout: Counter::default(),
            upstream_rq_per_try_timeout: Counter::default(),
            upstream_rq_retry: Counter::default(),
            upstream_rq_retry_success: Counter::default(),
            upstream_rq_pending_overflow: Counter::default(),
            upstream_rq: CodeCounters::default(),
            upstream_cx_total: Counter::default(),
            upstream_cx_active: Gauge::default(),
            upstream_cx_connect_fail: Counter::default(),
            upstream_cx_connect_timeout: Counter::default(),
            upstream_cx_destroy: Counter::default(),
            upstream_rq_reset: Counter::default(),
            membership_healthy: Gauge::default(),
            membership_total: Gauge::default(),
        }
    }
}

impl StatSource for ClusterStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "upstream_rq_total", self.upstream_rq_total.get());
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
    pub downstream_rq_ws_on_non_ws_route: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
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
            downstream_rq_ws_on_non_ws_route: Counter::default(),
            downstream_cx_total: Counter::default(),
            downstream_cx_active: Gauge::default(),
            downstream_cx_http1_total: Counter::default(),
            downstream_cx_http2_total: Counter::default(),
            downstream_cx_upgrades_total: Counter::default(),
            no_route: Counter::default(),
            no_cluster: Counter::default(),
            rq_redirect: Counter::default(),
            rq_direct_response: Counter::default(),
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
            "downstream_rq_ws_on_non_ws_route",
            self.downstream_rq_ws_on_non_ws_route.get(),
        );
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
    }
}

#[derive(Debug)]
pub struct ListenerStats {
    pub scope: Scope,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub no_filter_chain_match: Counter,
}

impl ListenerStats {
    pub fn new(addr: std::net::SocketAddr) -> ListenerStats {
        // Envoy names listener scopes by address with ':' folded to '_'.
        let name = addr.to_string().replace([':'], "_").replace(['[', ']'], "");
        ListenerStats {
            scope: Scope::new(
                "listener",
                Some(("envoy_listener_address", Arc::from(name.as_str()))),
            ),
            downstream_cx_total: Counter::default(),
            downstream_cx_active: Gauge::default(),
            no_filter_chain_match: Counter::default(),
        }
    }
}

impl StatSource for ListenerStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "downstream_cx_total", self.downstream_cx_total.get());
        v.gauge(s, "downstream_cx_active", self.downstream_cx_active.get());
        v.counter(s, "no_filter_chain_match", self.no_filter_chain_match.get());
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
