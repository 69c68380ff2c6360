//! A cluster at run time: its compiled config, current endpoints, LB state and stats.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::endpoint::Resolved;
use super::lb::EndpointSet;
use super::pool::{ConnectParams, Protocol};
use super::Endpoint;
use crate::config::cluster::{ClusterConfig, EndpointConfig, UpstreamProtocol};
use crate::stats::ClusterStats;

#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    endpoints: ArcSwap<EndpointSet>,
    rr: AtomicUsize,
    pub stats: Arc<ClusterStats>,
    /// Hosts made on demand when the cluster is `ORIGINAL_DST`.
    pub(super) original_dst: super::original_dst::OriginalDstHosts,
}

impl Cluster {
    pub fn new(config: Arc<ClusterConfig>, stats: Arc<ClusterStats>) -> Cluster {
        Cluster {
            config,
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            rr: AtomicUsize::new(0),
            stats,
            original_dst: Default::default(),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.config.name
    }

    pub fn pick(&self, random: u64) -> Option<Arc<Endpoint>> {
        self.endpoints
            .load()
            .pick(self.config.lb_policy, &self.rr, random)
            .cloned()
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set, keeping the `Endpoint` (and so the pooled
    /// connections) of every address that stays.
    pub fn set_endpoints(&self, resolved: &[Resolved]) {
        let current = self.endpoints.load();
        let eps: Vec<Arc<Endpoint>> = resolved
            .iter()
            .map(|r| {
                current
                    .endpoints
                    .iter()
                    .find(|e| e.addr == r.addr && e.weight == r.weight && e.hostname == r.hostname)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(r)))
            })
            .collect();
        let n = eps.len() as i64;
        self.endpoints.store(Arc::new(EndpointSet::new(eps)));
        self.stats.membership_total.set(n);
        self.stats.membership_healthy.set(n);
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
                })
            })
            .collect();
        self.set_endpoints(&resolved);
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
        }
    }
}
