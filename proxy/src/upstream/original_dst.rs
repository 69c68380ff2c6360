//! The hosts of an `ORIGINAL_DST` cluster: one [`Endpoint`] (and so one
//! connection pool) per original destination, made on first use, so that a
//! sidecar's egress traffic reuses connections to each destination it sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::endpoint::{Endpoint, Resolved};
use super::Cluster;
use crate::config::cluster::Discovery;

/// Where a request is really going, as the listener's `original_dst` filter
/// or an explicit-proxy request (absolute-form, CONNECT) said. Carried in the
/// request's extensions from the connection manager to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDestination(pub SocketAddr);

/// Above this many hosts, hosts with no request in flight are forgotten (Envoy
/// sweeps them on `cleanup_interval`; a size bound needs no timer).
const MAX_IDLE_HOSTS: usize = 1024;

#[derive(Debug, Default)]
pub struct OriginalDstHosts {
    hosts: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
}

impl OriginalDstHosts {
    fn get(&self, addr: SocketAddr) -> Arc<Endpoint> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = hosts.get(&addr) {
            return ep.clone();
        }
        if hosts.len() >= MAX_IDLE_HOSTS {
            hosts.retain(|_, ep| ep.active_requests() > 0 || Arc::strong_count(ep) > 1);
        }
        // Healthy from the start: an original destination is never health-checked.
        let resolved = Resolved {
            addr,
            weight: 1,
            hostname: None,
            health_check_port: None,
            health_check_host: None,
        };
        let ep = Arc::new(Endpoint::new(&resolved, 0));
        hosts.insert(addr, ep.clone());
        ep
    }
}

impl Cluster {
    /// Whether requests must say where they go (see [`OriginalDestination`]);
    /// the connection manager resolves explicit-proxy targets only then.
    pub fn is_original_dst(&self) -> bool {
        matches!(self.config.discovery, Discovery::OriginalDst)
    }

    /// The endpoint for a request: an `ORIGINAL_DST` cluster connects to the
    /// destination (none known: no host, so no loop back into the proxy);
    /// every other cluster asks its load balancer.
    pub fn pick_for(
        &self,
        destination: Option<OriginalDestination>,
        random: u64,
    ) -> Option<Arc<Endpoint>> {
        if self.is_original_dst() {
            return destination.map(|d| self.original_dst.get(d.0));
        }
        self.pick(random)
    }
}
