//! From held resources to a live snapshot: warming, the swap, and listener
//! reconciliation. A cluster waits for its endpoints, a listener for its
//! routes, until they arrive or the initial fetch timeout passes (Envoy's
//! warming); what is not warm yet keeps its previous version in force.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::resources::{rds_names, Held, Kind, Resources};
use crate::config::cluster::{ClusterConfig, Discovery};
use crate::config::listener::ListenerConfig;
use crate::shared::Shared;
use crate::snapshot::{DynamicResource, Snapshot};

/// What warming remembers between applies.
pub struct Warming {
    first_seen: HashMap<(Kind, String), Instant>,
    timeout: Option<Duration>,
    /// Set once every wildcard type answered once, or the fetch timed out.
    pub initial_done: bool,
}

impl Warming {
    pub fn new(timeout: Option<Duration>) -> Warming {
        Warming {
            first_seen: HashMap::new(),
            timeout,
            initial_done: false,
        }
    }

    fn expired(&mut self, kind: Kind, name: &str) -> bool {
        let Some(t) = self.timeout else { return false };
        let seen = *self
            .first_seen
            .entry((kind, name.to_string()))
            .or_insert_with(Instant::now);
        seen.elapsed() >= t
    }
}

/// Builds and swaps in the next snapshot. Returns whether anything is still
/// warming (so the caller re-applies after the fetch timeout).
pub async fn apply(
    shared: &Arc<Shared>,
    statics: &Statics,
    res: &Resources,
    warming: &mut Warming,
) -> Result<bool, String> {
    let previous = shared.snapshot.load_full();
    let mut still_warming = false;

    let mut clusters: Vec<Arc<ClusterConfig>> = statics.clusters.clone();
    for (name, held) in &res.clusters {
        if statics.clusters.iter().any(|c| c.name.as_ref() == name) {
            continue;
        }
        let warm = match &held.value.discovery {
            Discovery::Eds(service) => {
                res.endpoints.contains_key(service) || warming.expired(Kind::Cluster, name)
            }
            _ => true,
        };
        if warm {
            clusters.push(held.value.clone());
        } else if let Some(old) = previous.clusters.get(name) {
            still_warming = true;
            clusters.push(old.config.clone());
        } else {
            still_warming = true;
        }
    }
    let map = previous.clusters.update(clusters, &shared.store).await;
    for cluster in map.iter() {
        if let Discovery::Eds(service) = &cluster.config.discovery {
            if let Some(eps) = res.endpoints.get(service) {
                cluster.set_assignment(&eps.value);
            }
        }
    }

    let mut listeners: Vec<Arc<ListenerConfig>> = statics.listeners.clone();
    for (name, held) in &res.listeners {
        let warm = rds_names(&held.value)
            .iter()
            .all(|r| res.routes.contains_key(r))
            || warming.expired(Kind::Listener, name);
        if warm {
            listeners.push(held.value.clone());
        } else {
            still_warming = true;
            if let Some(old) = previous.listeners.iter().find(|l| l.name.as_ref() == name) {
                listeners.push(old.clone());
            }
        }
    }

    let routes = res
        .routes
        .iter()
        .map(|(k, v)| (Arc::from(k.as_str()), v.value.clone()))
        .collect();
    let mut dynamic = Vec::new();
    dump(&mut dynamic, Kind::Cluster, &res.clusters);
    dump(&mut dynamic, Kind::Endpoint, &res.endpoints);
    dump(&mut dynamic, Kind::Listener, &res.listeners);
    dump(&mut dynamic, Kind::Route, &res.routes);
    dump(&mut dynamic, Kind::Secret, &res.secrets);

    shared.snapshot.store(Arc::new(Snapshot {
        listeners: listeners.clone(),
        clusters: map,
        routes,
        bootstrap: previous.bootstrap.clone(),
        dynamic,
    }));
    shared.listeners.reconcile(shared, &listeners)?;
    if warming.initial_done && !still_warming {
        shared.live.store(true, Ordering::Relaxed);
    }
    Ok(still_warming)
}

fn dump<T>(
    out: &mut Vec<DynamicResource>,
    kind: Kind,
    m: &std::collections::BTreeMap<String, Held<T>>,
) {
    for (name, held) in m {
        out.push(DynamicResource {
            type_url: kind.type_url(),
            name: name.clone(),
            version: held.version.clone(),
            raw: held.raw.clone(),
        });
    }
}

/// The bootstrap's static resources, which xDS adds to but never replaces.
pub struct Statics {
    pub clusters: Vec<Arc<ClusterConfig>>,
    pub listeners: Vec<Arc<ListenerConfig>>,
}
