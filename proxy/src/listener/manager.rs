//! The set of bound listeners, reconciled against each config snapshot: new
//! listeners bind, changed ones swap their chains in place (old connections
//! drain), removed ones stop accepting and drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{bind, spawn, ActiveListener};
use crate::config::listener::ListenerConfig;
use crate::drain::Drain;
use crate::shared::Shared;

struct Entry {
    address: SocketAddr,
    active: Arc<ArcSwap<ActiveListener>>,
    stop: Drain,
}

#[derive(Default)]
pub struct ListenerManager {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
}

impl ListenerManager {
    /// Binds every new address first, so a listener that cannot bind fails the
    /// update before anything else changes.
    pub fn reconcile(
        &self,
        shared: &Arc<Shared>,
        configs: &[Arc<ListenerConfig>],
    ) -> Result<(), String> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::new();
        for c in configs {
            // As in Envoy 1.40, a changed `ipv4_compat` alone keeps the
            // bound socket, and so its v6-only option.
            let rebind = match entries.get(&c.name) {
                Some(e) => e.address != c.address,
                None => true,
            };
            if rebind {
                let socket = bind(c.address, c.ipv4_compat).map_err(|e| {
                    format!("listener '{}': cannot bind {}: {e}", c.name, c.address)
                })?;
                fresh.push((c.clone(), socket));
            }
        }
        let keep: std::collections::HashSet<&Arc<str>> = configs.iter().map(|c| &c.name).collect();
        let removed: Vec<Arc<str>> = entries
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for name in removed {
            if let Some(e) = entries.remove(&name) {
                tracing::info!(%name, "listener removed; draining");
                e.stop.start();
                e.active.load().drain.start();
            }
        }
        for c in configs {
            if let Some(e) = entries.get(&c.name) {
                if e.address == c.address && e.active.load().config.fingerprint != c.fingerprint {
                    tracing::info!(name = %c.name, "listener updated");
                    let old = e
                        .active
                        .swap(Arc::new(ActiveListener::new(c.clone(), shared)));
                    old.drain.start();
                }
            }
        }
        for (c, socket) in fresh {
            if let Some(old) = entries.remove(&c.name) {
                old.stop.start();
                old.active.load().drain.start();
            }
            tracing::info!(name = %c.name, address = %c.address, "listener started");
            let active = Arc::new(ArcSwap::from_pointee(ActiveListener::new(
                c.clone(),
                shared,
            )));
            let stop = Drain::default();
            spawn(
                socket,
                active.clone(),
                stop.watch(),
                shared.overload.clone(),
            );
            entries.insert(
                c.name.clone(),
                Entry {
                    address: c.address,
                    active,
                    stop,
                },
            );
        }
        Ok(())
    }

    /// Stops accepting everywhere and drains every connection.
    pub fn drain_all(&self) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for e in entries.values() {
            e.stop.start();
            e.active.load().drain.start();
        }
    }
}
