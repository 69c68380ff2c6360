//! DNS for STRICT_DNS and LOGICAL_DNS clusters: resolve before first use, then
//! refresh on `dns_refresh_rate` for as long as the cluster lives.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::endpoint::Resolved;
use super::Cluster;
use crate::config::cluster::{DnsFamily, EndpointConfig};

pub async fn resolve(eps: &[EndpointConfig], family: DnsFamily, first_only: bool) -> Vec<Resolved> {
    let mut out = Vec::new();
    for ep in eps {
        if let Some(addr) = ep.address.ip() {
            out.push(Resolved {
                addr,
                weight: ep.weight,
                hostname: ep.hostname.as_deref().map(Arc::from),
                health_check_port: ep.health_check_port,
                health_check_host: ep.health_check_host.clone(),
            });
            continue;
        }
        let addrs = match tokio::net::lookup_host((ep.address.host.as_str(), ep.address.port)).await
        {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(host = %ep.address.host, error = %e, "DNS resolution failed");
                continue;
            }
        };
        let mut picked = filter(addrs, family);
        if first_only {
            picked.truncate(1);
        }
        let hostname: Arc<str> = Arc::from(ep.hostname.as_deref().unwrap_or(&ep.address.host));
        for addr in picked {
            if !out.iter().any(|o| o.addr == addr) {
                out.push(Resolved {
                    addr,
                    weight: ep.weight,
                    hostname: Some(hostname.clone()),
                    health_check_port: ep.health_check_port,
                    health_check_host: ep.health_check_host.clone(),
                });
            }
        }
    }
    out
}

fn filter(addrs: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv4);
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        // AUTO prefers v6 and falls back to v4, as Envoy does.
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

/// Refreshes a cluster's endpoints until the cluster is dropped.
pub fn spawn_refresh(cluster: Weak<Cluster>, eps: Vec<EndpointConfig>, first_only: bool) {
    tokio::spawn(async move {
        loop {
            let (rate, family) = match cluster.upgrade() {
                Some(c) => (c.config.dns_refresh_rate, c.config.dns_family),
                None => return,
            };
            tokio::time::sleep(rate).await;
            let resolved = resolve(&eps, family, first_only).await;
            let Some(c): Option<Arc<Cluster>> = cluster.upgrade() else {
                return;
            };
            // Keep the last good answer when a lookup fails outright.
            if !resolved.is_empty() {
                c.set_endpoints(&resolved);
            }
        }
    });
}
