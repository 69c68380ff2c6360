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
            || u64::from(enforcing) <= crate::rng::random::<u64>() % 100
        {
            continue;
        }
        // Envoy's cap: the ejection may not take the ejected share past
        // `max_ejection_percent`, but one host may always go (even at 0%).
        let ejected = c.stats.outlier_detection_ejections_active.get().max(0) as usize;
        let within = (ejected + 1) * 100 <= total * od.max_ejection_percent as usize;
        if total == 0 || !(ejected == 0 || within) {
            s.ejections_overflow.inc();
            continue;
        }
        let h = hosts.entry(e.addr).or_default();
        h.ejected_at = Some(Instant::now());
        h.multiplier += 1;
        if e.set_flag(FAILED_OUTLIER_CHECK, true) {
            c.stats.outlier_detection_ejections_active.inc();
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
            c.stats.outlier_detection_ejections_active.dec();
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
                        c.stats.outlier_detection_ejections_active.dec();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::ClusterConfig;
    use crate::stats::ClusterStats;
    use crate::upstream::endpoint::Resolved;
    use crate::upstream::stats::ResilienceStats;
    use crate::upstream::TryResult;
    use std::time::Duration;
    use xds_protos::envoy::config::cluster::v3::{Cluster as ClusterProto, OutlierDetection};

    fn ms(ms: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    fn cluster(hosts: u16) -> Arc<Cluster> {
        cluster_with(
            hosts,
            OutlierDetection {
                consecutive_5xx: Some(3),
                interval: ms(100),
                base_ejection_time: ms(200),
                max_ejection_percent: Some(50),
                ..Default::default()
            },
        )
    }

    fn cluster_with(hosts: u16, od: OutlierDetection) -> Arc<Cluster> {
        let proto = ClusterProto {
            name: "c".into(),
            outlier_detection: Some(od),
            ..Default::default()
        };
        let config = Arc::new(ClusterConfig::compile(&proto).expect("valid cluster"));
        let c = Arc::new(Cluster::new(
            config,
            Arc::new(ClusterStats::new("c".into())),
            Arc::new(ResilienceStats::new("c".into())),
            None,
        ));
        let eps: Vec<Resolved> = (0..hosts)
            .map(|i| Resolved {
                addr: ([127, 0, 0, 1], 2000 + i).into(),
                weight: 1,
                hostname: None,
                health_check_port: None,
                health_check_host: None,
            })
            .collect();
        c.set_endpoints(&eps);
        c
    }

    async fn fail(c: &Cluster, i: usize, n: usize) {
        answer(c, i, n, 500).await
    }

    async fn answer(c: &Cluster, i: usize, n: usize, status: u16) {
        let ep = c.endpoints().endpoints[i].clone();
        for _ in 0..n {
            c.report(&ep, TryResult::Status(status));
        }
        // Let the detector task run.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fn ejected(c: &Cluster, i: usize) -> bool {
        c.endpoints().endpoints[i].health_flags() & FAILED_OUTLIER_CHECK != 0
    }

    /// How long host `i` stays ejected (polled every 5 ms of the paused,
    /// auto-advancing test clock).
    async fn ejected_for(c: &Cluster, i: usize) -> Duration {
        let start = Instant::now();
        while ejected(c, i) {
            assert!(start.elapsed() < Duration::from_secs(10), "never released");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_repeat_ejections_and_percent_is_capped() {
        let c = cluster(4);
        let od = c.config.outlier.clone().expect("configured");
        spawn(&c, od);
        tokio::task::yield_now().await;
        fail(&c, 0, 2).await;
        assert!(!ejected(&c, 0), "below the threshold");
        fail(&c, 0, 1).await;
        assert!(ejected(&c, 0));
        assert_eq!(c.endpoints().healthy, 3);
        let first = ejected_for(&c, 0).await;
        // Released at the first detector tick after the base time.
        let ms = Duration::from_millis;
        assert!(first >= ms(200) && first <= ms(300), "{first:?}");
        // Ejected again at once: twice the base time.
        fail(&c, 0, 3).await;
        assert!(ejected(&c, 0));
        let second = ejected_for(&c, 0).await;
        assert!(second >= ms(400) && second <= ms(500), "{second:?}");
        // 50% of 4 hosts: a second host may go, a third may not.
        fail(&c, 0, 3).await;
        fail(&c, 1, 3).await;
        fail(&c, 2, 3).await;
        assert!(ejected(&c, 0) && ejected(&c, 1) && !ejected(&c, 2));
        assert_eq!(c.stats.outlier_detection_ejections_active.get(), 2);
        assert_eq!(c.rstats.ejections_overflow.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_gateway_failures_alone_eject_when_enforced() {
        let c = cluster_with(
            4,
            OutlierDetection {
                consecutive_5xx: Some(1000),
                consecutive_gateway_failure: Some(3),
                enforcing_consecutive_gateway_failure: Some(100),
                interval: ms(100),
                ..Default::default()
            },
        );
        spawn(&c, c.config.outlier.clone().expect("configured"));
        tokio::task::yield_now().await;
        // 500 is a 5xx but no gateway failure: far below consecutive_5xx.
        answer(&c, 0, 10, 500).await;
        assert!(!ejected(&c, 0));
        answer(&c, 1, 2, 502).await;
        assert!(!ejected(&c, 1), "below the threshold");
        answer(&c, 1, 1, 504).await;
        assert!(ejected(&c, 1));
        let s = &c.rstats;
        assert_eq!(s.ejections_enforced_consecutive_gateway_failure.get(), 1);
        assert_eq!(s.ejections_enforced_consecutive_5xx.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_always_lets_one_host_go_as_in_envoy() {
        let od = |pct| OutlierDetection {
            consecutive_5xx: Some(3),
            interval: ms(100),
            base_ejection_time: ms(2_000),
            max_ejection_percent: Some(pct),
            ..Default::default()
        };
        let c = cluster_with(2, od(0));
        spawn(&c, c.config.outlier.clone().expect("configured"));
        tokio::task::yield_now().await;
        fail(&c, 0, 3).await;
        fail(&c, 1, 3).await;
        assert!(ejected(&c, 0) && !ejected(&c, 1), "0% still ejects one");
        assert_eq!(c.rstats.ejections_overflow.get(), 1);
        // 50% of 3: a second ejection would make 67%.
        let c = cluster_with(3, od(50));
        spawn(&c, c.config.outlier.clone().expect("configured"));
        tokio::task::yield_now().await;
        fail(&c, 0, 3).await;
        fail(&c, 1, 3).await;
        assert!(ejected(&c, 0) && !ejected(&c, 1));
    }
}
