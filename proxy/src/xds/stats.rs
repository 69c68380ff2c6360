//! Envoy's xDS stats: `control_plane.connected_state`; per type
//! `update_attempt`, `update_success`, `update_rejected`, `version` and the
//! `update_duration` histogram, where Envoy keeps them: CDS and LDS in
//! `cluster_manager.cds` and `listener_manager.lds`, EDS per cluster
//! (`cluster.<name>.`), RDS per HTTP connection manager and route config
//! (`http.<stat_prefix>.rds.<route_config>.`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::resources::Kind;
use crate::stats::{Counter, Gauge, Histogram, Scope, StatSource, Visitor};

#[derive(Debug, Default)]
pub struct TypeStats {
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_rejected: Counter,
    /// A hash of the accepted `version_info`, as Envoy reports it.
    pub version: Gauge,
    /// Time to validate, compile and swap in an accepted update, in ms.
    pub update_duration: Histogram,
}

impl TypeStats {
    fn visit(&self, scope: &Scope, v: &mut dyn Visitor) {
        v.counter(scope, "update_attempt", self.update_attempt.get());
        v.counter(scope, "update_success", self.update_success.get());
        v.counter(scope, "update_rejected", self.update_rejected.get());
        v.gauge(scope, "version", self.version.get());
        v.histogram(scope, "update_duration", &self.update_duration.snapshot());
    }
}

/// `(HCM stat prefix, route config name)`.
pub type RdsScope = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
pub struct XdsStats {
    pub connected_state: Gauge,
    cds: Arc<TypeStats>,
    lds: Arc<TypeStats>,
    sds: Arc<TypeStats>,
    /// By cluster name.
    eds: Mutex<BTreeMap<Arc<str>, Arc<TypeStats>>>,
    rds: Mutex<BTreeMap<RdsScope, Arc<TypeStats>>>,
}

impl XdsStats {
    /// The stats of a type counted as a whole (CDS, LDS, SDS).
    pub fn of(&self, kind: Kind) -> Option<Arc<TypeStats>> {
        match kind {
            Kind::Cluster => Some(self.cds.clone()),
            Kind::Listener => Some(self.lds.clone()),
            Kind::Secret => Some(self.sds.clone()),
            Kind::Endpoint | Kind::Route => None,
        }
    }

    /// `cluster.<name>.update_*`: the EDS updates of one cluster.
    pub fn eds(&self, cluster: &str) -> Arc<TypeStats> {
        let mut m = self.eds.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(Arc::from(cluster)).or_default().clone()
    }

    /// `http.<prefix>.rds.<route_config>.update_*`.
    pub fn rds(&self, scope: &RdsScope) -> Arc<TypeStats> {
        let mut m = self.rds.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(scope.clone()).or_default().clone()
    }

    /// Drops the EDS stats of clusters no longer held.
    pub fn retain_eds(&self, clusters: &BTreeSet<&str>) {
        let mut m = self.eds.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| clusters.contains(k.as_ref()));
    }

    /// Drops the RDS stats of route configs no listener takes any more.
    pub fn retain_rds(&self, scopes: &BTreeSet<RdsScope>) {
        let mut m = self.rds.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| scopes.contains(k));
    }
}

pub fn version_hash(v: &str) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    (h.finish() >> 1) as i64
}

impl StatSource for XdsStats {
    fn visit(&self, v: &mut dyn Visitor) {
        v.gauge(
            &Scope::new("control_plane", None),
            "connected_state",
            self.connected_state.get(),
        );
        for (kind, s) in [
            ("cluster_manager.cds", &self.cds),
            ("listener_manager.lds", &self.lds),
            ("sds", &self.sds),
        ] {
            s.visit(&Scope::new(kind, None), v);
        }
        let eds = self.eds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (cluster, s) in eds {
            s.visit(
                &Scope::new("cluster", Some(("envoy_cluster_name", cluster))),
                v,
            );
        }
        let rds = self.rds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((prefix, route_config), s) in rds {
            // The literal `rds` segment joins the name and the family, not
            // the labels: `envoy_http_rds_update_attempt{...}` as in Envoy.
            let scope = Scope {
                kind: "http",
                tag: Some(("envoy_http_conn_manager_prefix", prefix)),
                labels: vec![
                    ("", Arc::from("rds")),
                    ("envoy_rds_route_config", route_config),
                ],
            };
            s.visit(&scope, v);
        }
    }
}

pub fn register(shared: &crate::shared::Shared) -> Arc<XdsStats> {
    let s = Arc::new(XdsStats::default());
    shared
        .store
        .register(Arc::downgrade(&s) as std::sync::Weak<dyn StatSource>);
    s
}
