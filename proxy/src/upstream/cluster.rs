//! A cluster at run time: its compiled config, current endpoints, LB state,
//! circuit breakers and stats.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use super::breaker::Breaker;
use super::endpoint::{Resolved, FAILED_ACTIVE_HC};
use super::lb::EndpointSet;
use super::pool::{ConnectParams, Protocol};
use super::stats::ResilienceStats;
use super::Endpoint;
use crate::config::cluster::{ClusterConfig, EndpointConfig, LbPolicy, UpstreamProtocol};
use crate::stats::ClusterStats;
use crate::tls::ClusterSslStats;

#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    endpoints: ArcSwap<EndpointSet>,
    rr: AtomicUsize,
    pub stats: Arc<ClusterStats>,
    pub rstats: Arc<ResilienceStats>,
    /// `ssl.*` stats, while the cluster originates TLS.
    pub ssl: Option<Arc<ClusterSslStats>>,
    pub breaker: Arc<Breaker>,
    /// Serialises set rebuilds (discovery, health checks, outlier detection:
    /// all off the request path) so none is lost.
    rebuild: Mutex<()>,
    /// Wakes the outlier detector when a host crosses a failure threshold.
    pub(super) outlier_wake: Arc<Notify>,
    /// Hosts made on demand when the cluster is `ORIGINAL_DST`.
    pub(super) original_dst: super::original_dst::OriginalDstHosts,
    /// The EDS assignment installed last, so that every other xDS update,
    /// which hands the same one again, leaves the endpoint set alone.
    assignment: ArcSwapOption<Vec<EndpointConfig>>,
}

/// How one try went, for outlier detection and the LB's failure penalty.
#[derive(Debug, Clone, Copy)]
pub enum TryResult {
    Status(u16),
    /// No response: connect failure, reset or timeout. Envoy counts these
    /// as gateway failures (503/504) when local and remote errors are not split.
    LocalFailure,
}

impl Cluster {
    pub fn new(
        config: Arc<ClusterConfig>,
        stats: Arc<ClusterStats>,
        rstats: Arc<ResilienceStats>,
        ssl: Option<Arc<ClusterSslStats>>,
    ) -> Cluster {
        let breaker = Arc::new(Breaker::new(config.breakers.clone()));
        rstats.watch_breaker(&breaker);
        Cluster {
            breaker,
            config,
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            rr: AtomicUsize::new(0),
            stats,
            original_dst: Default::default(),
            assignment: ArcSwapOption::empty(),
            rstats,
            ssl,
            rebuild: Mutex::new(()),
            outlier_wake: Arc::new(Notify::new()),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.config.name
    }

    /// A pick without a hash key (TCP proxy, xDS): random for hash policies.
    pub fn pick(&self, random: u64) -> Option<Arc<Endpoint>> {
        self.pick_hashed(random, None)
    }

    /// `hash` is the route's hash-policy value, for RING_HASH and MAGLEV.
    /// Other policies give a host with recent failures a chance to be passed
    /// over for a second pick, in proportion to its penalty.
    pub fn pick_hashed(&self, random: u64, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let policy = self.config.lb_policy;
        let opts = &self.config.lb;
        let first = set.pick(policy, opts, &self.rr, random, hash)?;
        let consistent = matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev);
        let penalty = u64::from(first.penalty());
        if consistent || penalty == 0 || (random >> 40) % (penalty + 8) >= penalty {
            return Some(first.clone());
        }
        let again = set.pick(policy, opts, &self.rr, random.rotate_left(17), hash)?;
        Some(if again.penalty() < first.penalty() {
            again.clone()
        } else {
            first.clone()
        })
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set, keeping the `Endpoint` (and so the pooled
    /// connections and health) of every address that stays. New hosts of a
    /// health-checked cluster start as failing until their first check passes.
    pub fn set_endpoints(&self, resolved: &[Resolved]) {
        let _guard = self.rebuild.lock();
        let current = self.endpoints.load();
        let initial = if self.config.health_check.is_some() {
            FAILED_ACTIVE_HC
        } else {
            0
        };
        let eps: Vec<Arc<Endpoint>> = resolved
            .iter()
            .map(|r| {
                current
                    .endpoints
                    .iter()
                    .find(|e| {
                        e.addr == r.addr
                            && e.weight == r.weight
                            && e.hostname == r.hostname
                            && e.health_check_addr.port()
                                == r.health_check_port.unwrap_or(r.addr.port())
                            && e.health_check_host == r.health_check_host
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(r, initial)))
            })
            .collect();
        self.install(eps);
    }

    /// Rebuilds the LB set after a health flag changed.
    pub(super) fn refresh(&self) {
        let _guard = self.rebuild.lock();
        let eps = self.endpoints.load().endpoints.clone();
        self.install(eps);
    }

    fn install(&self, eps: Vec<Arc<Endpoint>>) {
        let n = eps.len() as i64;
        let set = EndpointSet::new(eps, self.config.lb_policy, &self.config.lb);
        let healthy = set.healthy as i64;
        self.endpoints.store(Arc::new(set));
        self.stats.membership_total.set(n);
        self.stats.membership_healthy.set(healthy);
    }

    /// Installs an EDS assignment, unless it is the one already installed.
    pub fn set_assignment(&self, eps: &Arc<Vec<EndpointConfig>>) {
        let previous = self.assignment.swap(Some(eps.clone()));
        if previous.is_some_and(|p| Arc::ptr_eq(&p, eps)) {
            return;
        }
        self.set_static_endpoints(eps);
    }

    /// Static endpoints (IP literals) need no resolution.
    pub fn set_static_endpoints(&self, eps: &[EndpointConfig]) {
        let resolved: Vec<_> = eps
            .iter()
            .filter_map(|e| {
                e.address.ip().map(|addr| Resolved {
                    addr,
                    weight: e.weight,
                    hostname: e.hostname.as_deref().map(Arc::from),
                    health_check_port: e.health_check_port,
                    health_check_host: e.health_check_host.clone(),
                })
            })
            .collect();
        self.set_endpoints(&resolved);
    }

    /// Records a try's result on its host: atomics only; crossing an outlier
    /// threshold wakes the detector, which decides off the request path.
    pub fn report(&self, ep: &Endpoint, result: TryResult) {
        use std::sync::atomic::Ordering::Relaxed;
        let (failed, gateway) = match result {
            TryResult::Status(s) => (s >= 500, matches!(s, 502..=504)),
            TryResult::LocalFailure => (true, true),
        };
        if failed {
            ep.note_failure();
        } else {
            ep.note_success();
        }
        let Some(od) = &self.config.outlier else {
            return;
        };
        if !failed {
            ep.consecutive_5xx.store(0, Relaxed);
            ep.consecutive_gateway.store(0, Relaxed);
            return;
        }
        let c5 = ep.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        let gw = if gateway {
            ep.consecutive_gateway.fetch_add(1, Relaxed) + 1
        } else {
            ep.consecutive_gateway.store(0, Relaxed);
            0
        };
        let crossed = c5 >= od.consecutive_5xx || gw >= od.consecutive_gateway_failure;
        if crossed && !ep.ejection_pending.swap(true, Relaxed) {
            self.outlier_wake.notify_one();
        }
    }

    pub fn protocol(&self, downstream: http::Version) -> Protocol {
        match self.config.protocol {
            UpstreamProtocol::Http1 => Protocol::Http1,
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Downstream if downstream == http::Version::HTTP_2 => Protocol::Http2,
            UpstreamProtocol::Downstream => Protocol::Http1,
        }
    }

    pub fn connect_params(&self) -> ConnectParams<'_> {
        ConnectParams {
            timeout: self.config.connect_timeout,
            stats: &self.stats,
            tls: self.config.tls.as_ref(),
            ssl: self.ssl.as_deref().map(|s| &s.ssl),
            cluster: self,
        }
    }

    /// Closes one idle HTTP/1.1 connection of any host, so a request that
    /// needs a new connection under `max_connections` is not starved by
    /// connections parked idle at other hosts.
    pub(super) fn evict_idle(&self) {
        for e in &self.endpoints.load().endpoints {
            if e.pool.drop_one_idle() {
                return;
            }
        }
    }
}
