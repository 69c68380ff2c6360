//! Outlier detection (consecutive 5xx and consecutive gateway failures), run
//! as one task per cluster. The request path only counts failures on the
//! host (atomics) and wakes this task when a threshold is crossed; ejecting,
//! the `max_ejection_percent` cap and timed un-ejection all happen here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use tokio::time::{Instant, MissedTickBehavior};

use super::endpoint::FAILED_OUTLIER_CHECK;
use super::Cluster;
use crate::config::resilience::Outlier;

#[derive(Debug, Default)]
struct HostState {
    ejected_at: Option<Instant>,
    /// Grows with each ejection and shrinks by one per interval spent
    /// healthy, so a host that keeps failing stays out longer each time.
    multiplier: u32,
}

pub fn spawn(cluster: &Arc<Cluster>, od: Outlier) {
    let wake = cluster.outlier_wake.clone();
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut hosts: HashMap<SocketAddr, HostState> = HashMap::new();
        let mut tick = tokio::time::interval(od.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let sweep = tokio::select! {
                _ = wake.notified() => false,
                _ = tick.tick() => true,
            };
            let Some(c) = Weak::upgrade(&weak) else {
                return;
            };
            let mut changed = eject(&c, &od, &mut hosts);
            if sweep {
                changed |= uneject(&c, &od, &mut hosts);
            }
            if changed {
                c.refresh();
            }
        }
    });
}

fn eject(c: &Cluster, od: &Outlier, hosts: &mut HashMap<SocketAddr, HostState>) -> bool {
    let set = c.endpoints();
    let total = set.endpoints.len();
    let s = &c.rstats;
    let mut changed = false;
    for e in &set.endpoints {
        if !e.ejection_pending.swap(false, Relaxed) {
            continue;
        }
        let five = e.consecutive_5xx.swap(0, Relaxed) >= od.consecutive_5xx;
        let gateway = e.consecutive_gateway.swap(0, Relaxed) >= od.consecutive_gateway_failure;
        // Envoy checks gateway failures first: a run of 503s is both.
        let enforcing = if gateway {
            s.ejections_detected_consecutive_gateway_failure.inc();
            od.enforcing_consecutive_gateway_failure
        } else if five {
            s.ejections_detected_consecutive_5xx.inc();
            od.enforcing_consecutive_5xx
        } else {
            continue;
        };
        let (enforcing, kind_gateway) = if gateway && enforcing == 0 && five {
            s.ejections_detected_consecutive_5xx.inc();
            (od.enforcing_consecutive_5xx, false)
        } else {
            (enforcing, gateway)
        };
        if e.health_flags() & FAILED_OUTLIER_CHECK != 0
            || u64::from(enforcing) <= rand::random::<u64>() % 100
        {
            continue;
        }
        let ejected = s.ejections_active.get().max(0) as usize;
        if total == 0 || ejected * 100 >= total * od.max_ejection_percent as usize {
            s.ejections_overflow.inc();
            continue;
        }
        let h = hosts.entry(e.addr).or_default();
        h.ejected_at = Some(Instant::now());
        h.multiplier += 1;
        if e.set_flag(FAILED_OUTLIER_CHECK, true) {
            s.ejections_active.inc();
            s.ejections_enforced_total.inc();
            if kind_gateway {
                s.ejections_enforced_consecutive_gateway_failure.inc();
            } else {
                s.ejections_enforced_consecutive_5xx.inc();
            }
            tracing::info!(cluster = %c.name(), host = %e.addr, "outlier ejected");
            changed = true;
        }
    }
    changed
}

fn uneject(c: &Cluster, od: &Outlier, hosts: &mut HashMap<SocketAddr, HostState>) -> bool {
    let set = c.endpoints();
    let now = Instant::now();
    let mut changed = false;
    // Hosts gone from discovery take their ejections with them.
    hosts.retain(|addr, h| {
        let present = set.endpoints.iter().any(|e| e.addr == *addr);
        if !present && h.ejected_at.is_some() {
            c.rstats.ejections_active.dec();
        }
        present
    });
    for e in &set.endpoints {
        let Some(h) = hosts.get_mut(&e.addr) else {
            continue;
        };
        match h.ejected_at {
            Some(at) => {
                let limit = od
                    .base_ejection_time
                    .saturating_mul(h.multiplier)
                    .min(od.max_ejection_time.max(od.base_ejection_time));
                if now.duration_since(at) >= limit {
                    h.ejected_at = None;
                    e.consecutive_5xx.store(0, Relaxed);
                    e.consecutive_gateway.store(0, Relaxed);
                    if e.set_flag(FAILED_OUTLIER_CHECK, false) {
                        c.rstats.ejections_active.dec();
                        tracing::info!(cluster = %c.name(), host = %e.addr, "outlier un-ejected");
                        changed = true;
                    }
                }
            }
            None => h.multiplier = h.multiplier.saturating_sub(1),
        }
    }
    changed
}
