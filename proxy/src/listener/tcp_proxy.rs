//! `envoy.filters.network.tcp_proxy`: bytes both ways to a cluster endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::tcp_proxy::TcpProxyConfig;
use crate::drain::Watch;
use crate::io::{Activity, Tracked};
use crate::shared::Shared;
use crate::stats::TcpStats;
use crate::upstream::OriginalDestination;

pub struct TcpProxy {
    config: Arc<TcpProxyConfig>,
    stats: Arc<TcpStats>,
    shared: Arc<Shared>,
}

impl TcpProxy {
    pub fn new(config: Arc<TcpProxyConfig>, shared: Arc<Shared>) -> TcpProxy {
        TcpProxy {
            stats: shared.tcp_stats(&config.stat_prefix),
            config,
            shared,
        }
    }

    /// `original` is the redirected-from destination, for `ORIGINAL_DST` clusters.
    pub async fn serve(
        &self,
        mut downstream: TcpStream,
        original: Option<SocketAddr>,
        _drain: Watch,
    ) {
        self.stats.downstream_cx_total.inc();
        let snapshot = self.shared.snapshot.load_full();
        let name = self.config.pick_cluster(rand::random());
        let Some(cluster) = snapshot.clusters.get(name) else {
            self.stats.downstream_cx_no_route.inc();
            return;
        };
        let mut upstream = None;
        for _ in 0..self.config.max_connect_attempts {
            let Some(ep) = cluster.pick_for(original.map(OriginalDestination), rand::random())
            else {
                break;
            };
            let connect = TcpStream::connect(ep.addr);
            match tokio::time::timeout(cluster.config.connect_timeout, connect).await {
                Ok(Ok(s)) => {
                    cluster.stats.upstream_cx_total.inc();
                    upstream = Some(s);
                    break;
                }
                Ok(Err(_)) | Err(_) => cluster.stats.upstream_cx_connect_fail.inc(),
            }
        }
        let Some(mut upstream) = upstream else { return };
        let _ = upstream.set_nodelay(true);
        cluster.stats.upstream_cx_active.inc();
        let activity = Activity::default();
        let mut down = Tracked::new(&mut downstream, activity.clone());
        let mut up = Tracked::new(&mut upstream, activity.clone());
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        match self.config.idle_timeout {
            Some(idle) => {
                let _ = activity.run(copy, idle).await;
            }
            None => {
                let _ = copy.await;
            }
        }
        cluster.stats.upstream_cx_active.dec();
        cluster.stats.upstream_cx_destroy.inc();
    }
}
