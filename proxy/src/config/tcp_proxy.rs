//! `envoy.filters.network.tcp_proxy` → [`TcpProxyConfig`].

use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};

use super::{duration, ConfigError};

/// Envoy closes idle TCP proxy connections after an hour by default.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct TcpProxyConfig {
    pub stat_prefix: Arc<str>,
    /// `(cluster, weight)`; one entry for a plain `cluster`.
    pub clusters: Vec<(Arc<str>, u32)>,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    /// `access_log`: one line per proxied connection, when it closes.
    pub access_logs: crate::access_log::AccessLogs,
}

impl TcpProxyConfig {
    pub fn compile(p: &TcpProxy) -> Result<TcpProxyConfig, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "stat_prefix is required"));
        }
        let clusters = match &p.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
                vec![(Arc::from(c.as_str()), 1)]
            }
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) if !w.clusters.is_empty() => w
                .clusters
                .iter()
                .map(|c| (Arc::from(c.name.as_str()), c.weight))
                .collect(),
            _ => {
                return Err(ConfigError::new(
                    "cluster",
                    "a cluster or weighted_clusters is required",
                ))
            }
        };
        Ok(TcpProxyConfig {
            stat_prefix: Arc::from(p.stat_prefix.as_str()),
            clusters,
            idle_timeout: duration::timeout(
                p.idle_timeout.as_ref(),
                Some(DEFAULT_IDLE_TIMEOUT),
                "idle_timeout",
            )?,
            max_connect_attempts: p.max_connect_attempts.unwrap_or(1).max(1),
            access_logs: crate::access_log::AccessLogs::compile(&p.access_log, "access_log")?,
        })
    }

    pub fn pick_cluster(&self, random: u64) -> &Arc<str> {
        let total: u64 = self.clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return &self.clusters[0].0;
        }
        let mut r = random % total;
        for (name, w) in &self.clusters {
            if r < u64::from(*w) {
                return name;
            }
            r -= u64::from(*w);
        }
        &self.clusters[0].0
    }
}
