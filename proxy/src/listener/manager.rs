//! The set of bound listeners, reconciled against each config snapshot: new
//! listeners bind, changed ones swap their chains in place (old connections
//! drain), removed ones stop accepting and drain.
//!
//! Sockets are bound when a listener is accepted ([`ListenerManager::reserve`]),
//! not when it goes live after warming, so that a listener whose address
//! cannot be bound is refused on its own, as Envoy refuses it, and never
//! reaches the config in force.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use super::{bind, bind_only, listen, spawn, ActiveListener};
use crate::config::listener::ListenerConfig;
use crate::drain::Drain;
use crate::shared::Shared;

struct Entry {
    address: SocketAddr,
    /// Its accept loop owns the socket: once stopped (removed, or
    /// `/drain_listeners`), the socket closes, unless handed on first.
    socket: Weak<TcpListener>,
    active: Arc<ArcSwap<ActiveListener>>,
    stop: Drain,
}

/// A socket held for a listener that is not serving at that address yet.
struct Reserved {
    address: SocketAddr,
    socket: Held,
}

enum Held {
    /// Bound, not listening: connections are refused while it warms.
    Bound(socket2::Socket),
    /// A removed listener's, handed on.
    Listening(Arc<TcpListener>),
}

impl Held {
    fn listen(self) -> std::io::Result<Arc<TcpListener>> {
        match self {
            Held::Bound(s) => listen(s).map(Arc::new),
            Held::Listening(l) => Ok(l),
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    reserved: HashMap<Arc<str>, Reserved>,
}

/// A listener the proxy holds, and where it binds.
pub struct Wanted {
    pub name: Arc<str>,
    pub address: SocketAddr,
    /// See [`ListenerConfig::ipv4_compat`].
    pub ipv4_compat: bool,
}

/// A listener whose address could not be had: `(name, why)`.
pub type Refused = (Arc<str>, String);

#[derive(Default)]
pub struct ListenerManager {
    inner: Mutex<Inner>,
}

impl ListenerManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure every listener in `wanted` (the whole set the proxy holds,
    /// warm or not) has its socket: the one it serves on, one reserved for
    /// it, or a new one bound now. The socket of a listener that is no longer
    /// wanted is handed on to a new listener at its address, as Envoy hands
    /// on a draining listener's socket. An address another wanted listener
    /// holds, or one the system will not bind, refuses that listener alone.
    /// Reservations of listeners no longer wanted are released.
    pub fn reserve(&self, wanted: &[Wanted]) -> Vec<Refused> {
        let mut inner = self.lock();
        let Inner { entries, reserved } = &mut *inner;
        let wanted_names: HashSet<&Arc<str>> = wanted.iter().map(|w| &w.name).collect();
        let mut previous = std::mem::take(reserved);
        let mut refused = Vec::new();
        for Wanted {
            name,
            address,
            ipv4_compat,
        } in wanted
        {
            if entries.get(name).is_some_and(|e| e.address == *address) {
                continue;
            }
            if let Some(r) = previous.remove(name).filter(|r| r.address == *address) {
                reserved.insert(name.clone(), r);
                continue;
            }
            let holder = entries.iter().find(|(_, e)| e.address == *address);
            let handed_on = holder
                .filter(|(other, _)| !wanted_names.contains(other))
                .and_then(|(_, e)| e.socket.upgrade());
            let socket = match (holder, handed_on) {
                (_, Some(socket)) => Ok(Held::Listening(socket)),
                (Some((other, _)), None) if wanted_names.contains(other) => Err(format!(
                    "Listener '{name}': address: {address} is in use by listener '{other}'"
                )),
                _ => bind_only(*address, *ipv4_compat)
                    .map(Held::Bound)
                    .map_err(|e| format!("Listener '{name}': address: cannot bind {address}: {e}")),
            };
            match socket {
                Ok(socket) => {
                    reserved.insert(
                        name.clone(),
                        Reserved {
                            address: *address,
                            socket,
                        },
                    );
                }
                Err(e) => refused.push((name.clone(), e)),
            }
        }
        refused
    }

    /// Brings the listeners in force to `configs`. A new address takes the
    /// socket reserved for it, or binds now (static listeners at start-up);
    /// a listener that cannot bind is left out, the others go on, and the
    /// error names it.
    pub fn reconcile(
        &self,
        shared: &Arc<Shared>,
        configs: &[Arc<ListenerConfig>],
    ) -> Result<(), String> {
        let mut inner = self.lock();
        let Inner { entries, reserved } = &mut *inner;
        let keep: HashSet<&Arc<str>> = configs.iter().map(|c| &c.name).collect();
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for c in configs {
            // As in Envoy 1.40, a changed `ipv4_compat` alone keeps the
            // bound socket, and so its v6-only option.
            if entries.get(&c.name).is_some_and(|e| e.address == c.address) {
                continue;
            }
            let handed_on = entries
                .iter()
                .find(|(n, e)| e.address == c.address && !keep.contains(n))
                .and_then(|(_, e)| e.socket.upgrade());
            let socket = match reserved.remove(&c.name) {
                Some(r) if r.address == c.address => r.socket.listen().map_err(|e| {
                    format!("listener '{}': cannot listen on {}: {e}", c.name, c.address)
                }),
                _ => match handed_on {
                    Some(s) => Ok(s),
                    None => bind(c.address, c.ipv4_compat).map(Arc::new).map_err(|e| {
                        format!("listener '{}': cannot bind {}: {e}", c.name, c.address)
                    }),
                },
            };
            match socket {
                Ok(socket) => fresh.push((c.clone(), socket)),
                Err(e) => errors.push(e),
            }
        }
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
                socket.clone(),
                active.clone(),
                stop.watch(),
                shared.overload.clone(),
            );
            entries.insert(
                c.name.clone(),
                Entry {
                    address: c.address,
                    socket: Arc::downgrade(&socket),
                    active,
                    stop,
                },
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stops accepting everywhere and drains every connection.
    pub fn drain_all(&self) {
        let inner = self.lock();
        for e in inner.entries.values() {
            e.stop.start();
            e.active.load().drain.start();
        }
    }
}
