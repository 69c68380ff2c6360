//! What the control plane knows about its proxies: every open ADS stream
//! (node, address, versions sent and ACKed per type, the last NACK), and the
//! instances of virtual nodes, from connected proxies and from the API.
//!
//! Instances feed EDS, so a change here wakes the translation like a write.
//! Hand-registered instances are written to the store before the API
//! answers, and read back at start, so a registration survives a restart
//! (or a kill -9) like any other acknowledged write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use super::translate::{Instance, Instances, NodeId, Owner, Ports};
use crate::metrics::Metrics;
use crate::store::Store;

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
    /// Registered by hand through `/trellis/v1/instances`: a copy of the
    /// store's `instances` table.
    manual: Instances,
    /// Registered by connected proxies of virtual nodes, by stream.
    connected: BTreeMap<u64, (Owner, Instance)>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Where hand-registered instances are kept.
    store: Arc<Store>,
    /// Serialises hand registrations, so that the store and `manual` see
    /// them in the same order; held across the commit, unlike `inner`,
    /// which ADS streams take on every ACK.
    writes: Mutex<()>,
    /// Bumped whenever the instances change.
    changed: watch::Sender<u64>,
    /// The control plane's own metrics, shared by the API and xDS servers.
    metrics: Metrics,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Registry {
    /// A registry holding the instances registered by hand in `store`.
    pub fn load(store: Arc<Store>) -> Result<Registry, rusqlite::Error> {
        let manual = store.read(|tx| tx.instances())?;
        Ok(Registry {
            inner: Mutex::new(Inner {
                manual,
                ..Inner::default()
            }),
            store,
            writes: Mutex::new(()),
            changed: watch::channel(0).0,
            metrics: Metrics::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; a panic in one
        // cannot leave half an update behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A new stream from `node`; a virtual node's proxy registers its
    /// ingress (`peer_ip:ingress_port`) as an instance of its node.
    pub fn connect(&self, node: &str, peer_ip: Option<String>, ports: &Ports, delta: bool) -> u64 {
        self.metrics.stream_opened(delta);
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
                        Owner::node(&n.mesh, &n.name),
                        Instance {
                            sidecar: Some(ports.sidecar()),
                            ..Instance::new(ip, ports.ingress)
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
        if let Some(p) = inner.proxies.remove(&id) {
            self.metrics.stream_closed(p.stream == "delta");
        }
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

    /// Adds an instance, or replaces the attributes of the one registered at
    /// the same address and port (as re-registering a Cloud Map instance
    /// does); committed to the store before it is served.
    pub fn register(&self, owner: Owner, instance: Instance) -> Result<(), rusqlite::Error> {
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let changed = self.store.write(|tx| tx.put_instance(&owner, &instance))?;
        if changed {
            let mut inner = self.lock();
            let set = inner.manual.entry(owner).or_default();
            set.retain(|i| !i.same_address(&instance));
            set.insert(instance);
            drop(inner);
            self.bump();
        }
        Ok(())
    }

    /// Removes the instance at `instance`'s address and port, whatever its
    /// attributes, from the store and then from what is served; false when
    /// there was none.
    pub fn deregister(&self, owner: &Owner, instance: &Instance) -> Result<bool, rusqlite::Error> {
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let removed = self
            .store
            .write(|tx| tx.delete_instance(owner, &instance.address, instance.port))?;
        if removed {
            let mut inner = self.lock();
            if let Some(set) = inner.manual.get_mut(owner) {
                set.retain(|i| !i.same_address(instance));
                if set.is_empty() {
                    inner.manual.remove(owner);
                }
            }
            drop(inner);
            self.bump();
        }
        Ok(removed)
    }
}
