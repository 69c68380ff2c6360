//! The stats of circuit breaking, outlier detection and health checking, in
//! a block of their own beside `ClusterStats` (same `cluster.NAME.` scope),
//! so these features stay out of the shared stats module. The one gauge
//! `ClusterStats` already has, `outlier_detection.ejections_active`, is
//! driven from there.

use std::sync::{Arc, Mutex, Weak};

use super::breaker::Breaker;

use crate::stats::{Counter, Gauge, Scope, StatSource, Visitor};

#[derive(Debug)]
pub struct ResilienceStats {
    pub scope: Scope,
    pub upstream_cx_overflow: Counter,
    /// `max_requests` refused the request (Envoy's name, verified 1.40).
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq_retry_overflow: Counter,
    /// A retriable answer came back on the last try the policy allows.
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_pending_total: Counter,
    pub ejections_enforced_total: Counter,
    pub ejections_overflow: Counter,
    pub ejections_enforced_consecutive_5xx: Counter,
    pub ejections_detected_consecutive_5xx: Counter,
    pub ejections_enforced_consecutive_gateway_failure: Counter,
    pub ejections_detected_consecutive_gateway_failure: Counter,
    pub hc_attempt: Counter,
    pub hc_success: Counter,
    pub hc_failure: Counter,
    pub hc_network_failure: Counter,
    pub hc_healthy: Gauge,
    /// The breaker of the cluster's current config, for its `_open` gauges.
    breaker: Mutex<Weak<Breaker>>,
}

impl ResilienceStats {
    pub fn new(name: Arc<str>) -> ResilienceStats {
        ResilienceStats {
            scope: Scope::new("cluster", Some(("envoy_cluster_name", name))),
            upstream_cx_overflow: Counter::default(),
            upstream_rq_active_overflow: Counter::default(),
            upstream_rq_retry_overflow: Counter::default(),
            upstream_rq_retry_limit_exceeded: Counter::default(),
            upstream_rq_pending_total: Counter::default(),
            ejections_enforced_total: Counter::default(),
            ejections_overflow: Counter::default(),
            ejections_enforced_consecutive_5xx: Counter::default(),
            ejections_detected_consecutive_5xx: Counter::default(),
            ejections_enforced_consecutive_gateway_failure: Counter::default(),
            ejections_detected_consecutive_gateway_failure: Counter::default(),
            hc_attempt: Counter::default(),
            hc_success: Counter::default(),
            hc_failure: Counter::default(),
            hc_network_failure: Counter::default(),
            hc_healthy: Gauge::default(),
            breaker: Mutex::new(Weak::new()),
        }
    }

    /// Reports `b`'s limits from now on (a new config brings a new breaker).
    pub fn watch_breaker(&self, b: &Arc<Breaker>) {
        if let Ok(mut w) = self.breaker.lock() {
            *w = Arc::downgrade(b);
        }
    }
}

impl StatSource for ResilienceStats {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = &self.scope;
        v.counter(s, "upstream_cx_overflow", self.upstream_cx_overflow.get());
        v.counter(
            s,
            "upstream_rq_active_overflow",
            self.upstream_rq_active_overflow.get(),
        );
        v.counter(
            s,
            "upstream_rq_retry_overflow",
            self.upstream_rq_retry_overflow.get(),
        );
        v.counter(
            s,
            "upstream_rq_retry_limit_exceeded",
            self.upstream_rq_retry_limit_exceeded.get(),
        );
        v.counter(
            s,
            "upstream_rq_pending_total",
            self.upstream_rq_pending_total.get(),
        );
        let od = [
            ("ejections_enforced_total", &self.ejections_enforced_total),
            ("ejections_overflow", &self.ejections_overflow),
            (
                "ejections_enforced_consecutive_5xx",
                &self.ejections_enforced_consecutive_5xx,
            ),
            (
                "ejections_detected_consecutive_5xx",
                &self.ejections_detected_consecutive_5xx,
            ),
            (
                "ejections_enforced_consecutive_gateway_failure",
                &self.ejections_enforced_consecutive_gateway_failure,
            ),
            (
                "ejections_detected_consecutive_gateway_failure",
                &self.ejections_detected_consecutive_gateway_failure,
            ),
        ];
        for (name, c) in od {
            v.counter(s, &format!("outlier_detection.{name}"), c.get());
        }
        v.counter(s, "health_check.attempt", self.hc_attempt.get());
        v.counter(s, "health_check.success", self.hc_success.get());
        v.counter(s, "health_check.failure", self.hc_failure.get());
        v.counter(
            s,
            "health_check.network_failure",
            self.hc_network_failure.get(),
        );
        v.gauge(s, "health_check.healthy", self.hc_healthy.get());
        let breaker = self.breaker.lock().ok().and_then(|w| w.upgrade());
        if let Some(b) = breaker {
            for (name, open) in b.open() {
                v.gauge(
                    s,
                    &format!("circuit_breakers.default.{name}"),
                    i64::from(open),
                );
            }
        }
    }
}
