//! What the control plane knows about its proxies: every open ADS stream
//! (node, address, versions sent and ACKed per type, the last NACK), and the
//! instances of virtual nodes, from connected proxies and from the API.
//!
//! Instances feed EDS, so a change here wakes the translation like a write.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use super::translate::{Instance, Instances, NodeId, Ports};

/// One type's state on one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The version last sent (state of the world: of the whole set).
    pub sent: Option<String>,
    /// The version the proxy last ACKed.
    pub acked: Option<String>,
    pub nack: Option<Nack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    /// Seconds since the epoch.
    pub at: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub address: String,
    /// `sotw` or `delta`.
    pub stream: &'static str,
    pub ingress_port: u32,
    pub egress_port: u32,
    pub connected_at: f64,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    proxies: BTreeMap<u64, ProxyStatus>,
    /// Registered by hand through `/trellis/v1/instances`.
    manual: Instances,
    /// Registered by connected proxies of virtual nodes, by stream.
    connected: BTreeMap<u64, ((String, String), Instance)>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Bumped whenever the instances change.
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; a panic in one
        // cannot leave half an update behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A new stream from `node`; a virtual node's proxy registers its
    /// ingress (`peer_ip:ingress_port`) as an instance of its node.
    pub fn connect(&self, node: &str, peer_ip: Option<String>, ports: &Ports, delta: bool) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.proxies.insert(
            id,
            ProxyStatus {
                node_id: node.to_string(),
                address: peer_ip.clone().unwrap_or_default(),
                stream: if delta { "delta" } else { "sotw" },
                ingress_port: ports.ingress,
                egress_port: ports.egress,
                connected_at: now(),
                types: BTreeMap::new(),
            },
        );
        let registered = match (NodeId::parse(node), peer_ip) {
            (Some(n), Some(ip)) if !n.gateway => {
                inner.connected.insert(
                    id,
                    (
                        (n.mesh, n.name),
                        Instance {
                            address: ip,
                            port: ports.ingress,
                        },
                    ),
                );
                true
            }
            _ => false,
        };
        drop(inner);
        if registered {
            self.bump();
        }
        id
    }

    pub fn disconnect(&self, id: u64) {
        let mut inner = self.lock();
        inner.proxies.remove(&id);
        let registered = inner.connected.remove(&id).is_some();
        drop(inner);
        if registered {
            self.bump();
        }
    }

    pub fn update(&self, id: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.lock().proxies.get_mut(&id) {
            f(p.types.entry(type_url.to_string()).or_default());
        }
    }

    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut out: Vec<ProxyStatus> = self.lock().proxies.values().cloned().collect();
        out.sort_by(|a, b| (&a.node_id, &a.address).cmp(&(&b.node_id, &b.address)));
        out
    }

    /// Connected and hand-registered instances together.
    pub fn instances(&self) -> Instances {
        let inner = self.lock();
        let mut out = inner.manual.clone();
        for (key, instance) in inner.connected.values() {
            out.entry(key.clone()).or_default().insert(instance.clone());
        }
        out
    }

    /// Hand-registered instances only, for the API.
    pub fn manual_instances(&self) -> Instances {
        self.lock().manual.clone()
    }

    pub fn register(&self, mesh: &str, node: &str, instance: Instance) {
        let added = self
            .lock()
            .manual
            .entry((mesh.to_string(), node.to_string()))
            .or_default()
            .insert(instance);
        if added {
            self.bump();
        }
    }

    pub fn deregister(&self, mesh: &str, node: &str, instance: &Instance) -> bool {
        let mut inner = self.lock();
        let key = (mesh.to_string(), node.to_string());
        let removed = inner
            .manual
            .get_mut(&key)
            .is_some_and(|set| set.remove(instance));
        if inner.manual.get(&key).is_some_and(|s| s.is_empty()) {
            inner.manual.remove(&key);
        }
        drop(inner);
        if removed {
            self.bump();
        }
        removed
    }
}
