//! State shared by every task of one proxy process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::drain::Drain;
use crate::filters::FilterStats;
use crate::listener::ListenerManager;
use crate::overload::{Overload, OverloadConfig};
use crate::snapshot::Snapshot;
use crate::stats::{
    ConnectionLimitStats, Http2Stats, HttpStats, ListenerStats, StatSource, Store, TcpStats,
};

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    /// Whether an App Mesh node id labels every series with its mesh and
    /// node; off when the node metadata says `trellis.stats_tags: false`.
    pub stats_tags: bool,
}

/// The node metadata key that turns the App Mesh node labels off.
pub const META_STATS_TAGS: &str = "trellis.stats_tags";

impl NodeInfo {
    /// The bootstrap's node, as the server uses it.
    pub fn from_node(node: &xds_protos::envoy::config::core::v3::Node) -> NodeInfo {
        use prost_types::value::Kind;
        let tags = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(META_STATS_TAGS))
            .and_then(|v| match &v.kind {
                Some(Kind::BoolValue(b)) => Some(*b),
                _ => None,
            });
        NodeInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            stats_tags: tags.unwrap_or(true),
        }
    }
}

/// Envoy's server states, numbered as its `server.state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
        }
    }
}

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub store: Store,
    pub drain: Drain,
    pub listeners: ListenerManager,
    /// Set by `POST /healthcheck/fail`; `/ready` then answers 503.
    pub health_failed: AtomicBool,
    /// Set when the process drains to exit (a signal, `/quitquitquit`).
    pub shutting_down: AtomicBool,
    /// Set once the first complete config is applied.
    pub live: AtomicBool,
    pub node: NodeInfo,
    /// Per-peer stats, when the node has an App Mesh identity.
    pub mesh: Option<Arc<crate::stats::appmesh::MeshStats>>,
    pub started: Instant,
    pub concurrency: usize,
    pub drain_time: std::time::Duration,
    /// `http2.*` codec stats of every downstream HTTP/2 connection.
    pub http2: Arc<Http2Stats>,
    /// The bootstrap's `overload_manager`: flags read on accept and per request.
    pub overload: Arc<Overload>,
    http_stats: Mutex<HashMap<Arc<str>, Arc<HttpStats>>>,
    tcp_stats: Mutex<HashMap<Arc<str>, Arc<TcpStats>>>,
    connection_limit_stats: Mutex<HashMap<Arc<str>, Arc<ConnectionLimitStats>>>,
    /// Weak: a listener's stats live while a version of it does.
    listener_stats: Mutex<HashMap<SocketAddr, Weak<ListenerStats>>>,
    filter_stats: Mutex<HashMap<Arc<str>, Weak<FilterStats>>>,
    /// Asked to exit (`/quitquitquit` or a signal).
    pub shutdown: tokio::sync::Notify,
}

impl Shared {
    pub fn new(
        node: NodeInfo,
        concurrency: usize,
        drain_time: std::time::Duration,
        overload: OverloadConfig,
    ) -> Shared {
        let store = Store::for_node(&node.id, node.stats_tags);
        let mesh = store.is_mesh_node().then(|| {
            let m = Arc::new(crate::stats::appmesh::MeshStats::default());
            store.register(Arc::downgrade(&m) as std::sync::Weak<dyn StatSource>);
            m
        });
        let http2 = Arc::new(Http2Stats::default());
        store.register(Arc::downgrade(&http2) as std::sync::Weak<dyn StatSource>);
        let overload = Arc::new(Overload::new(overload));
        store.register(Arc::downgrade(&overload) as std::sync::Weak<dyn StatSource>);
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            store,
            mesh,
            http2,
            overload,
            drain: Drain::default(),
            listeners: ListenerManager::default(),
            health_failed: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            live: AtomicBool::new(false),
            node,
            started: Instant::now(),
            concurrency,
            drain_time,
            http_stats: Mutex::default(),
            tcp_stats: Mutex::default(),
            connection_limit_stats: Mutex::default(),
            listener_stats: Mutex::default(),
            filter_stats: Mutex::default(),
            shutdown: tokio::sync::Notify::new(),
        }
    }

    /// The server's state as Envoy's `/ready`, `/server_info` and
    /// `server.state` tell it. `/drain_listeners` leaves it LIVE, as in
    /// Envoy: only failing health checks or exiting take a proxy out of
    /// rotation.
    pub fn state(&self) -> ServerState {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.live.load(Relaxed) {
            ServerState::PreInitializing
        } else if self.health_failed.load(Relaxed) || self.shutting_down.load(Relaxed) {
            ServerState::Draining
        } else {
            ServerState::Live
        }
    }

    /// Envoy aggregates stats of connection managers that share a stat prefix.
    pub fn http_stats(&self, prefix: &Arc<str>) -> Arc<HttpStats> {
        self.kept(&self.http_stats, prefix, || HttpStats::new(prefix.clone()))
    }

    /// Envoy keeps a listener's stats by address across updates: the new
    /// version counts on where the old one (maybe still draining) left off.
    pub fn listener_stats(&self, addr: SocketAddr) -> Arc<ListenerStats> {
        self.while_used(&self.listener_stats, &addr, || ListenerStats::new(addr))
    }

    /// The HTTP filters' stats of connection managers sharing a stat prefix,
    /// kept across listener updates like `listener_stats`.
    pub fn filter_stats(&self, prefix: &Arc<str>) -> Arc<FilterStats> {
        self.while_used(&self.filter_stats, prefix, || {
            FilterStats::new(prefix.clone())
        })
    }

    pub fn tcp_stats(&self, prefix: &Arc<str>) -> Arc<TcpStats> {
        self.kept(&self.tcp_stats, prefix, || TcpStats::new(prefix.clone()))
    }

    pub fn connection_limit_stats(&self, prefix: &Arc<str>) -> Arc<ConnectionLimitStats> {
        self.kept(&self.connection_limit_stats, prefix, || {
            ConnectionLimitStats::new(prefix.clone())
        })
    }

    /// The stats block under `key`, made and registered on first use and
    /// kept for the process's life.
    fn kept<K, V>(
        &self,
        map: &Mutex<HashMap<K, Arc<V>>>,
        key: &K,
        make: impl FnOnce() -> V,
    ) -> Arc<V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: StatSource + 'static,
    {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| self.registered(make()))
            .clone()
    }

    /// The stats block under `key` while something holds it: the same block
    /// for every holder, gone with the last one.
    fn while_used<K, V>(
        &self,
        map: &Mutex<HashMap<K, Weak<V>>>,
        key: &K,
        make: impl FnOnce() -> V,
    ) -> Arc<V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: StatSource + 'static,
    {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(key).and_then(Weak::upgrade) {
            return s;
        }
        let s = self.registered(make());
        map.insert(key.clone(), Arc::downgrade(&s));
        s
    }

    fn registered<V: StatSource + 'static>(&self, stats: V) -> Arc<V> {
        let s = Arc::new(stats);
        self.store
            .register(Arc::downgrade(&s) as std::sync::Weak<dyn StatSource>);
        s
    }
}
