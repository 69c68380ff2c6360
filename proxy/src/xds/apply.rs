//! From held resources to a live snapshot: warming, the swap, and listener
//! reconciliation. A cluster waits for its endpoints, a listener for its
//! routes, until they arrive or the initial fetch timeout passes (Envoy's
//! warming); what is not warm yet keeps its previous version in force.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::resources::{rds_names, rds_of, Held, Kind, Resources};
use crate::config::cluster::{ClusterConfig, Discovery};
use crate::config::hcm::Rds;
use crate::config::listener::ListenerConfig;
use crate::listener::Wanted;
use crate::router::RouteTable;
use crate::shared::Shared;
use crate::snapshot::{DynamicResource, Snapshot};
use crate::upstream::ClusterMap;

/// What a resource waits for: its kind and name, and the names of what it
/// waits on (a listener's route configs, an EDS cluster's service), so that
/// a resource changed to wait on something else warms again from the start.
type Awaiting = (Kind, String, String);

/// What warming remembers between applies.
#[derive(Default)]
pub struct Warming {
    /// When each resource that is still warming started to wait. An entry
    /// lives only while its resource keeps waiting: one that warmed, was
    /// removed or changed what it waits on starts afresh next time.
    first_seen: HashMap<Awaiting, Instant>,
    /// What was found waiting during the apply under way.
    waiting: HashSet<Awaiting>,
    /// The soonest a resource found waiting stops waiting, this apply.
    next_expiry: Option<Instant>,
    /// The wildcard types (CDS, LDS) that answered once or whose initial
    /// fetch timed out: the first complete config needs all of them.
    pub initial: BTreeSet<Kind>,
    /// The generations of the held clusters and endpoints that the cluster
    /// map in force was built from, if none of them was warming then: while
    /// both stay the same (a route or listener update), the map is reused.
    clusters_built: Option<(u64, u64)>,
}

impl Warming {
    /// Whether `name`, waiting on `on`, has waited out `timeout`, the
    /// initial fetch timeout of what it waits on (`None`: it waits for ever).
    fn expired(&mut self, kind: Kind, name: &str, on: &str, timeout: Option<Duration>) -> bool {
        let Some(t) = timeout else { return false };
        let key = (kind, name.to_string(), on.to_string());
        let seen = *self
            .first_seen
            .entry(key.clone())
            .or_insert_with(Instant::now);
        self.waiting.insert(key);
        let expiry = seen + t;
        if Instant::now() >= expiry {
            return true;
        }
        self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
        false
    }

    /// Forgets what no longer waits (when the cluster map in force is
    /// reused, no cluster waits). Returns how long until the next resource
    /// stops waiting, if one will.
    fn settle(&mut self) -> Option<Duration> {
        let waiting = std::mem::take(&mut self.waiting);
        self.first_seen.retain(|k, _| waiting.contains(k));
        self.next_expiry
            .take()
            .map(|e| e.saturating_duration_since(Instant::now()))
    }
}

/// Builds and swaps in the next snapshot. Returns how long until a warming
/// resource's fetch times out, if one will: the caller applies again then.
pub async fn apply(
    shared: &Arc<Shared>,
    statics: &Statics,
    res: &Resources,
    warming: &mut Warming,
    wildcards: &[Kind],
) -> Option<Duration> {
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

    let mut routes: HashMap<Arc<str>, Arc<RouteTable>> = res
        .routes
        .iter()
        .map(|(k, v)| (Arc::from(k.as_str()), v.value.clone()))
        .collect();
    let mut listeners: Vec<Arc<ListenerConfig>> = statics.listeners.clone();
    for (name, held) in &res.listeners {
        let missing: Vec<&Rds> = rds_of(&held.value)
            .filter(|r| !res.routes.contains_key(r.name.as_ref()))
            .collect();
        // Each route subscription times out on its own; the listener is
        // warm once every one it waits on arrived or timed out.
        let timeout = missing
            .iter()
            .map(|r| r.initial_fetch_timeout)
            .try_fold(Duration::ZERO, |a, t| t.map(|t| a.max(t)));
        // Keyed by every route config it takes, so that one arriving does
        // not restart the wait for the others.
        let on: Vec<&str> = rds_of(&held.value).map(|r| r.name.as_ref()).collect();
        let warm =
            missing.is_empty() || warming.expired(Kind::Listener, name, &on.join(","), timeout);
        if warm {
            listeners.push(held.value.clone());
        } else {
            still_warming = true;
            if let Some(old) = previous.listeners.iter().find(|l| l.name.as_ref() == name) {
                // The version in force serves on, with the routes it has,
                // until the new one is warm.
                for r in rds_names(old) {
                    if let Some(table) = previous.routes.get(r.as_str()) {
                        routes
                            .entry(Arc::from(r.as_str()))
                            .or_insert_with(|| table.clone());
                    }
                }
                listeners.push(old.clone());
            }
        }
    }
    let next_expiry = warming.settle();

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
    // Every held listener's socket was claimed when it was accepted, so this
    // fails only if the system took an address back; that is no fault of
    // the update at hand.
    if let Err(e) = shared.listeners.reconcile(shared, &listeners) {
        tracing::warn!(error = %e, "a listener could not start");
    }
    let initial_done = wildcards.iter().all(|k| warming.initial.contains(k));
    if initial_done && !still_warming {
        shared.live.store(true, Ordering::Relaxed);
    }
    next_expiry
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
            Discovery::Eds(eds) => {
                res.endpoints.contains_key(&eds.service)
                    || warming.expired(Kind::Cluster, name, &eds.service, eds.initial_fetch_timeout)
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
        if let Discovery::Eds(eds) = &cluster.config.discovery {
            if let Some(eps) = res.endpoints.get(&eds.service) {
                cluster.set_assignment(&eps.value);
            }
        }
    }
    (map, warm)
}

/// What the held listeners were before an LDS update: their last good
/// versions and the version of the last accepted response.
pub struct HeldListeners {
    listeners: BTreeMap<String, Held<ListenerConfig>>,
    version: Option<String>,
}

impl HeldListeners {
    pub fn of(res: &Resources) -> HeldListeners {
        HeldListeners {
            listeners: res.listeners.clone(),
            version: res.versions.get(&Kind::Listener).cloned(),
        }
    }
}

/// Gives every held listener its socket, bound now if its address is new.
/// A listener that cannot have its address is put back to its last good
/// version (or dropped if it had none) and named in the error, and the
/// response's version is not taken: the other listeners of the update stand,
/// as Envoy refuses a listener that cannot bind on its own.
pub fn claim_addresses(
    shared: &Shared,
    statics: &Statics,
    res: &mut Resources,
    before: HeldListeners,
) -> Result<(), String> {
    let wanted = |res: &Resources| -> Vec<Wanted> {
        statics
            .listeners
            .iter()
            .chain(res.listeners.values().map(|h| &h.value))
            .map(|l| Wanted {
                name: l.name.clone(),
                address: l.address,
                ipv4_compat: l.ipv4_compat,
            })
            .collect()
    };
    let refused = shared.listeners.reserve(&wanted(res));
    if refused.is_empty() {
        return Ok(());
    }
    for (name, _) in &refused {
        match before.listeners.get(name.as_ref()) {
            Some(old) => res.listeners.insert(name.to_string(), old.clone()),
            None => res.listeners.remove(name.as_ref()),
        };
    }
    match before.version {
        Some(v) => res.versions.insert(Kind::Listener, v),
        None => res.versions.remove(&Kind::Listener),
    };
    // The restored versions held their sockets before: this claims them back.
    for (name, e) in shared.listeners.reserve(&wanted(res)) {
        tracing::warn!(%name, error = %e, "a listener's last good version lost its address");
    }
    Err(refused
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("; "))
}

/// The bootstrap's static resources, which xDS adds to but never replaces.
pub struct Statics {
    pub clusters: Vec<Arc<ClusterConfig>>,
    pub listeners: Vec<Arc<ListenerConfig>>,
}
