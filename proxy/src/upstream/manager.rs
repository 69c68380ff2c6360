//! The set of clusters in force. Rebuilt per config update, reusing the
//! runtime state of every cluster whose config did not change.

use std::collections::HashMap;
use std::sync::Arc;

use super::stats::ResilienceStats;
use super::{dns, health, outlier, Cluster};
use crate::config::cluster::{ClusterConfig, Discovery};
use crate::stats::{ClusterStats, StatSource, Store};
use crate::tls::ClusterSslStats;

#[derive(Debug, Default)]
pub struct ClusterMap {
    clusters: HashMap<Arc<str>, Arc<Cluster>>,
}

impl ClusterMap {
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Builds the next map from `configs`: unchanged clusters are carried over
    /// as they are; new or changed ones start fresh (stats kept by name), and DNS
    /// clusters are resolved before the map is returned, so none is used cold.
    pub async fn update(&self, configs: Vec<Arc<ClusterConfig>>, store: &Store) -> ClusterMap {
        let mut clusters = HashMap::with_capacity(configs.len());
        for config in configs {
            if let Some(old) = self.clusters.get(&config.name) {
                // The same `Arc` when xDS kept the compiled resource.
                if Arc::ptr_eq(&old.config, &config) || old.config.fingerprint == config.fingerprint
                {
                    clusters.insert(config.name.clone(), old.clone());
                    continue;
                }
            }
            let (stats, rstats) = match self.clusters.get(&config.name) {
                Some(old) => (old.stats.clone(), old.rstats.clone()),
                None => {
                    let s = Arc::new(ClusterStats::new(config.name.clone()));
                    let weak: std::sync::Weak<dyn StatSource> = Arc::downgrade(&s) as _;
                    store.register(weak);
                    let r = Arc::new(ResilienceStats::new(config.name.clone()));
                    let weak: std::sync::Weak<dyn StatSource> = Arc::downgrade(&r) as _;
                    store.register(weak);
                    (s, r)
                }
            };
            // A replaced cluster's ejections go with its hosts' flags.
            stats.outlier_detection_ejections_active.set(0);
            // `ssl.*` stats exist while the cluster originates TLS, kept by name.
            let old_ssl = self.clusters.get(&config.name).and_then(|o| o.ssl.clone());
            let ssl = config.tls.as_ref().map(|_| {
                old_ssl.unwrap_or_else(|| {
                    let s = Arc::new(ClusterSslStats::new(config.name.clone()));
                    store.register(Arc::downgrade(&s) as std::sync::Weak<dyn StatSource>);
                    s
                })
            });
            let cluster = Arc::new(Cluster::new(config.clone(), stats, rstats, ssl));
            match &config.discovery {
                Discovery::Static(eps) => cluster.set_static_endpoints(eps),
                Discovery::StrictDns(eps) | Discovery::LogicalDns(eps) => {
                    let first_only = matches!(config.discovery, Discovery::LogicalDns(_));
                    let resolved = dns::resolve(eps, config.dns_family, first_only).await;
                    cluster.set_endpoints(&resolved);
                    dns::spawn_refresh(Arc::downgrade(&cluster), eps.clone(), first_only);
                }
                Discovery::Eds(_) | Discovery::OriginalDst => {}
            }
            if let Some(od) = &config.outlier {
                outlier::spawn(&cluster, od.clone());
            }
            if let Some(hc) = &config.health_check {
                health::spawn(&cluster, hc.clone());
            }
            clusters.insert(config.name.clone(), cluster);
        }
        ClusterMap { clusters }
    }
}
