//! From held resources to a live snapshot: warming, the swap, and listener
//! reconciliation. A cluster waits for its endpoints, a listener for its
//! routes, until they arrive or the initial fetch timeout passes (Envoy's
//! warming); what is not warm yet keeps its previous version in force.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::resources::{rds_names, Held, Kind, Resources};
use crate::config::cluster::{ClusterConfig, Discovery};
use crate::config::listener::ListenerConfig;
use crate::shared::Shared;
use crate::snapshot::{DynamicResource, Snapshot};
use crate::upstream::ClusterMap;

/// What warming remembers between applies.
pub struct Warming {
    first_seen: HashMap<(Kind, String), Instant>,
    timeout: Option<Duration>,
    /// Set once every wildcard type answered once, or the fetch timed out.
    pub initial_done: bool,
    /// The generations of the held clusters and endpoints that the cluster
    /// map in force was built from, if none of them was warming then: while
    /// both stay the same (a route or listener update), the map is reused.
    clusters_built: Option<(u64, u64)>,
}

impl Warming {
    pub fn new(timeout: Option<Duration>) -> Warming {
        Warming {
            first_seen: HashMap::new(),
            timeout,
            initial_done: false,
            clusters_built: None,
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

    let generations = (
        res.generation(Kind::Cluster),
        res.generation(Kind::Endpoint),
    );
    let clusters = if warming.clusters_built == Some(generations) {
        previous.clusters.clone()
    } else {
        let (map, warm) = clusters(shared, statics, res, warming, &previous).await;
        warming.clusters_built = warm.then_some(generations);
        still_warming |= !warm;
        Arc::new(map)
    };

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
    dump(&mut dynamic, &res.clusters);
    dump(&mut dynamic, &res.endpoints);
    dump(&mut dynamic, &res.listeners);
    dump(&mut dynamic, &res.routes);
    dump(&mut dynamic, &res.secrets);

    shared.snapshot.store(Arc::new(Snapshot {
        listeners: listeners.clone(),
        clusters,
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

fn dump<T>(out: &mut Vec<Arc<DynamicResource>>, m: &BTreeMap<String, Held<T>>) {
    out.extend(m.values().map(|h| h.dump.clone()));
}

/// The next cluster map: unchanged clusters carried over, EDS clusters
/// given their endpoints. Returns whether every cluster is warm.
async fn clusters(
    shared: &Arc<Shared>,
    statics: &Statics,
    res: &Resources,
    warming: &mut Warming,
    previous: &Snapshot,
) -> (ClusterMap, bool) {
    let mut warm = true;
    let mut clusters: Vec<Arc<ClusterConfig>> = statics.clusters.clone();
    for (name, held) in &res.clusters {
        if statics.clusters.iter().any(|c| c.name.as_ref() == name) {
            continue;
        }
        let ready = match &held.value.discovery {
            Discovery::Eds(service) => {
                res.endpoints.contains_key(service) || warming.expired(Kind::Cluster, name)
            }
            _ => true,
        };
        if ready {
            clusters.push(held.value.clone());
        } else if let Some(old) = previous.clusters.get(name) {
            warm = false;
            clusters.push(old.config.clone());
        } else {
            warm = false;
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
    (map, warm)
}

/// The bootstrap's static resources, which xDS adds to but never replaces.
pub struct Statics {
    pub clusters: Vec<Arc<ClusterConfig>>,
    pub listeners: Vec<Arc<ListenerConfig>>,
}
