//! Envoy's xDS stats: `control_plane.connected_state` and, per type,
//! `update_attempt`, `update_success`, `update_rejected`, `version` and the
//! `update_duration` histogram.

use std::sync::Arc;

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

#[derive(Debug, Default)]
pub struct XdsStats {
    pub connected_state: Gauge,
    cds: TypeStats,
    eds: TypeStats,
    lds: TypeStats,
    rds: TypeStats,
    sds: TypeStats,
}

impl XdsStats {
    pub fn of(&self, kind: Kind) -> &TypeStats {
        match kind {
            Kind::Cluster => &self.cds,
            Kind::Endpoint => &self.eds,
            Kind::Listener => &self.lds,
            Kind::Route => &self.rds,
            Kind::Secret => &self.sds,
        }
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
            ("cluster_manager.eds", &self.eds),
            ("listener_manager.lds", &self.lds),
            ("http.rds", &self.rds),
            ("sds", &self.sds),
        ] {
            let scope = Scope::new(kind, None);
            v.counter(&scope, "update_attempt", s.update_attempt.get());
            v.counter(&scope, "update_success", s.update_success.get());
            v.counter(&scope, "update_rejected", s.update_rejected.get());
            v.gauge(&scope, "version", s.version.get());
            v.histogram(&scope, "update_duration", &s.update_duration.snapshot());
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
