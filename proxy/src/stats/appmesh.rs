//! Per-hop App Mesh stats: who called this proxy and whom it called, so one
//! scrape of every proxy in a mesh draws the service graph. With an App Mesh
//! node id (`mesh/M/virtualNode/N`), every series already carries
//! `appmesh_mesh` and `appmesh_virtual_node`; these add the peer:
//!
//! - inbound (`INBOUND` listeners): `appmesh.downstream_rq_*` labelled with
//!   the caller's verified identity (`spiffe://TD/mesh/M/virtualNode/N`) as
//!   `appmesh_downstream_mesh` and `appmesh_downstream_virtual_node` (or
//!   `_virtual_gateway`); callers without one are counted unlabelled;
//! - outbound: `appmesh.upstream_rq_*` labelled
//!   `appmesh_target_virtual_service` and `appmesh_target_virtual_node`,
//!   read from the `trellis.appmesh` filter metadata trellis-control puts
//!   on routes (or virtual hosts), TCP filter chains and clusters.
//!
//! HTTP requests count as `{side}_rq_total`, `{side}_rq_xx` and
//! `{side}_rq_time`; TCP connections (`tcp_proxy` chains) as
//! `{side}_cx_total` when they open and `{side}_cx_rx_bytes_total` /
//! `{side}_cx_tx_bytes_total` when they close, read and written on that
//! side, as Envoy's own `downstream_cx_*` and `upstream_cx_*` counters. A
//! peer shows the family it was seen with.
//!
//! A request finds its block in a map behind an `ArcSwap`: a lock-free read;
//! the lock is taken only to add a peer never seen before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use xds_protos::envoy::config::core::v3::Metadata;

use super::{CodeCounters, Counter, Histogram, Scope, StatSource, Visitor};

/// The filter-metadata namespace that names App Mesh objects.
pub const METADATA_KEY: &str = "trellis.appmesh";

/// Peers tracked per direction; later ones are counted without peer labels,
/// so a flood of identities cannot grow memory without bound.
const MAX_PEERS: usize = 256;

/// `field` of the `trellis.appmesh` filter metadata, when it is a string.
pub fn metadata_name(md: Option<&Metadata>, field: &str) -> Option<Arc<str>> {
    use prost_types::value::Kind;
    let s = md?.filter_metadata.get(METADATA_KEY)?;
    match &s.fields.get(field)?.kind {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(Arc::from(v.as_str())),
        _ => None,
    }
}

/// An App Mesh object named by a node id, an ARN or a SPIFFE id:
/// `.../mesh/M/virtualNode/N` or `.../mesh/M/virtualGateway/G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshObject {
    pub mesh: String,
    pub gateway: bool,
    pub name: String,
}

impl MeshObject {
    pub fn parse(id: &str) -> Option<MeshObject> {
        let tail = id.rsplit_once(':').map_or(id, |(_, t)| t);
        let parts: Vec<&str> = tail.split('/').collect();
        let [.., "mesh", mesh, kind, name] = parts.as_slice() else {
            return None;
        };
        if mesh.is_empty() || name.is_empty() {
            return None;
        }
        let gateway = match *kind {
            "virtualNode" => false,
            "virtualGateway" => true,
            _ => return None,
        };
        Some(MeshObject {
            mesh: mesh.to_string(),
            gateway,
            name: name.to_string(),
        })
    }
}

/// Requests and connections between this proxy and one peer.
#[derive(Debug)]
pub struct PeerStats {
    scope: Scope,
    /// `downstream` or `upstream`.
    side: &'static str,
    rq_total: Counter,
    rq: CodeCounters,
    rq_time: Histogram,
    cx_total: Counter,
    cx_rx_bytes_total: Counter,
    cx_tx_bytes_total: Counter,
}

impl PeerStats {
    fn new(side: &'static str, labels: Vec<(&'static str, Arc<str>)>) -> PeerStats {
        PeerStats {
            scope: Scope::labelled("appmesh", labels),
            side,
            rq_total: Counter::default(),
            rq: CodeCounters::default(),
            rq_time: Histogram::default(),
            cx_total: Counter::default(),
            cx_rx_bytes_total: Counter::default(),
            cx_tx_bytes_total: Counter::default(),
        }
    }

    fn record(&self, status: u16, time: Duration) {
        self.rq_total.inc();
        self.rq.record(status);
        self.rq_time.record(time);
    }

    /// A TCP connection with this peer opened.
    pub fn connected(&self) {
        self.cx_total.inc();
    }

    /// A TCP connection with this peer closed: bytes read from it and
    /// written to it.
    pub fn closed(&self, rx: u64, tx: u64) {
        self.cx_rx_bytes_total.add(rx);
        self.cx_tx_bytes_total.add(tx);
    }

    fn visit(&self, v: &mut dyn Visitor) {
        let side = self.side;
        let cx_total = self.cx_total.get();
        if cx_total > 0 {
            v.counter(&self.scope, &format!("{side}_cx_total"), cx_total);
            for (name, c) in [
                ("cx_rx_bytes_total", &self.cx_rx_bytes_total),
                ("cx_tx_bytes_total", &self.cx_tx_bytes_total),
            ] {
                v.counter(&self.scope, &format!("{side}_{name}"), c.get());
            }
        }
        let rq_total = self.rq_total.get();
        if rq_total == 0 && cx_total > 0 {
            return;
        }
        v.counter(&self.scope, &format!("{side}_rq_total"), rq_total);
        self.rq.visit(&format!("{side}_rq"), &self.scope, v);
        v.histogram(
            &self.scope,
            &format!("{side}_rq_time"),
            &self.rq_time.snapshot(),
        );
    }
}

type Targets = HashMap<Arc<str>, HashMap<Arc<str>, Arc<PeerStats>>>;

/// The per-peer stats of one proxy with an App Mesh identity.
#[derive(Debug)]
pub struct MeshStats {
    /// Keyed by the caller's URI SAN; "" for callers without a known one.
    downstream: ArcSwap<HashMap<Arc<str>, Arc<PeerStats>>>,
    /// Keyed by target virtual service, then virtual node.
    upstream: ArcSwap<Targets>,
    /// Held only to add a peer.
    adding: Mutex<()>,
    anonymous: Arc<PeerStats>,
}

impl Default for MeshStats {
    fn default() -> Self {
        MeshStats {
            downstream: ArcSwap::default(),
            upstream: ArcSwap::default(),
            adding: Mutex::new(()),
            anonymous: Arc::new(PeerStats::new("downstream", Vec::new())),
        }
    }
}

impl MeshStats {
    /// Counts a request answered to a caller, named by its verified URI SAN.
    pub fn downstream(&self, uri_san: Option<&str>, status: u16, time: Duration) {
        self.downstream_peer(uri_san).record(status, time);
    }

    /// The block of a caller named by its verified URI SAN.
    pub fn downstream_peer(&self, uri_san: Option<&str>) -> Arc<PeerStats> {
        let Some(san) = uri_san else {
            return self.anonymous.clone();
        };
        if let Some(p) = self.downstream.load().get(san) {
            return p.clone();
        }
        self.add_downstream(san)
    }

    fn add_downstream(&self, san: &str) -> Arc<PeerStats> {
        let _g = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.downstream.load();
        if let Some(p) = current.get(san) {
            return p.clone();
        }
        let Some(peer) = MeshObject::parse(san).filter(|_| current.len() < MAX_PEERS) else {
            return self.anonymous.clone();
        };
        let kind = if peer.gateway {
            "appmesh_downstream_virtual_gateway"
        } else {
            "appmesh_downstream_virtual_node"
        };
        let stats = Arc::new(PeerStats::new(
            "downstream",
            vec![
                ("appmesh_downstream_mesh", Arc::from(peer.mesh.as_str())),
                (kind, Arc::from(peer.name.as_str())),
            ],
        ));
        let mut next = HashMap::clone(&current);
        next.insert(Arc::from(san), stats.clone());
        self.downstream.store(Arc::new(next));
        stats
    }

    /// Counts a request sent to a virtual service and answered by one of
    /// its virtual nodes, with its final status and time upstream.
    pub fn upstream(&self, service: &Arc<str>, node: &Arc<str>, status: u16, time: Duration) {
        if let Some(p) = self.upstream.load().get(service).and_then(|m| m.get(node)) {
            return p.record(status, time);
        }
        if let Some(p) = self.add_upstream(service, node) {
            p.record(status, time);
        }
    }

    /// The block of a virtual node reached through a virtual service;
    /// `None` once [`MAX_PEERS`] targets are tracked.
    pub fn upstream_peer(&self, service: &Arc<str>, node: &Arc<str>) -> Option<Arc<PeerStats>> {
        if let Some(p) = self.upstream.load().get(service).and_then(|m| m.get(node)) {
            return Some(p.clone());
        }
        self.add_upstream(service, node)
    }

    fn add_upstream(&self, service: &Arc<str>, node: &Arc<str>) -> Option<Arc<PeerStats>> {
        let _g = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.upstream.load();
        if let Some(p) = current.get(service).and_then(|m| m.get(node)) {
            return Some(p.clone());
        }
        if current.values().map(HashMap::len).sum::<usize>() >= MAX_PEERS {
            return None;
        }
        let stats = Arc::new(PeerStats::new(
            "upstream",
            vec![
                ("appmesh_target_virtual_service", service.clone()),
                ("appmesh_target_virtual_node", node.clone()),
            ],
        ));
        let mut next = Targets::clone(&current);
        next.entry(service.clone())
            .or_default()
            .insert(node.clone(), stats.clone());
        self.upstream.store(Arc::new(next));
        Some(stats)
    }
}

impl StatSource for MeshStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.anonymous.visit(v);
        for p in self.downstream.load().values() {
            p.visit(v);
        }
        for targets in self.upstream.load().values() {
            for p in targets.values() {
                p.visit(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_from_node_ids_arns_and_spiffe_ids() {
        let node = MeshObject {
            mesh: "m".into(),
            gateway: false,
            name: "blue".into(),
        };
        assert_eq!(
            MeshObject::parse("mesh/m/virtualNode/blue"),
            Some(node.clone())
        );
        assert_eq!(
            MeshObject::parse("spiffe://trellis.local/mesh/m/virtualNode/blue"),
            Some(node)
        );
        let gw = MeshObject::parse("arn:aws:appmesh:us-west-2:1:mesh/m/virtualGateway/gw").unwrap();
        assert!(gw.gateway);
        assert_eq!(MeshObject::parse("spiffe://td/ns/default/sa/x"), None);
        assert_eq!(MeshObject::parse("mesh//virtualNode/x"), None);
    }

    type Labels = Vec<(&'static str, String)>;

    /// Every counter visited: name, labels, value.
    #[derive(Default)]
    struct Seen(Vec<(String, Labels, u64)>);

    impl Visitor for Seen {
        fn counter(&mut self, scope: &Scope, name: &str, value: u64) {
            let labels = scope
                .labels
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect();
            self.0.push((name.to_string(), labels, value));
        }
        fn gauge(&mut self, _: &Scope, _: &str, _: i64) {}
    }

    #[test]
    fn peers_get_blocks_of_their_own() {
        let m = MeshStats::default();
        let blue = "spiffe://td/mesh/m/virtualNode/client";
        for _ in 0..3 {
            m.downstream(Some(blue), 200, Duration::from_millis(1));
        }
        m.downstream(None, 503, Duration::ZERO);
        m.downstream(Some("spiffe://td/other"), 200, Duration::ZERO);
        let (svc, node) = (Arc::from("color"), Arc::from("blue"));
        m.upstream(&svc, &node, 503, Duration::from_millis(2));
        let mut seen = Seen::default();
        m.visit(&mut seen);
        let find = |name: &str, label: Option<(&str, &str)>| {
            seen.0
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && match label {
                            Some((k, v)) => l.iter().any(|(lk, lv)| *lk == k && lv == v),
                            None => l.is_empty(),
                        }
                })
                .map(|(_, _, v)| *v)
        };
        assert_eq!(
            find(
                "downstream_rq_total",
                Some(("appmesh_downstream_virtual_node", "client"))
            ),
            Some(3)
        );
        assert_eq!(
            find("downstream_rq_total", None),
            Some(2),
            "unknown callers"
        );
        assert_eq!(
            find(
                "upstream_rq_5xx",
                Some(("appmesh_target_virtual_service", "color"))
            ),
            Some(1)
        );
    }

    #[test]
    fn tcp_peers_count_connections_and_bytes_not_requests() {
        let m = MeshStats::default();
        let caller = m.downstream_peer(Some("spiffe://td/mesh/m/virtualNode/client"));
        caller.connected();
        caller.closed(10, 20);
        let (svc, node) = (Arc::from("db"), Arc::from("pg"));
        let target = m.upstream_peer(&svc, &node).expect("room for a peer");
        target.connected();
        target.closed(20, 10);
        let mut seen = Seen::default();
        m.visit(&mut seen);
        let names = |label: &str| {
            let mut n: Vec<(String, u64)> = seen
                .0
                .iter()
                .filter(|(_, l, _)| l.iter().any(|(k, _)| *k == label))
                .map(|(n, _, v)| (n.clone(), *v))
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names("appmesh_downstream_virtual_node"),
            [
                ("downstream_cx_rx_bytes_total".to_string(), 10),
                ("downstream_cx_total".to_string(), 1),
                ("downstream_cx_tx_bytes_total".to_string(), 20),
            ]
        );
        assert_eq!(
            names("appmesh_target_virtual_node"),
            [
                ("upstream_cx_rx_bytes_total".to_string(), 20),
                ("upstream_cx_total".to_string(), 1),
                ("upstream_cx_tx_bytes_total".to_string(), 10),
            ]
        );
    }
}
