//! `envoy.filters.network.tcp_proxy`: bytes both ways to a cluster endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::tcp_proxy::TcpProxyConfig;
use crate::drain::Watch;
use crate::io::{Activity, Tracked};
use crate::shared::Shared;
use crate::stats::TcpStats;
use crate::tls::{AlpnFor, ClientStream};
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
    pub async fn serve<S>(&self, mut downstream: S, original: Option<SocketAddr>, _drain: Watch)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
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
                    let _ = s.set_nodelay(true);
                    let stream = match &cluster.config.tls {
                        None => ClientStream::Plain(s),
                        // The cluster's UpstreamTlsContext, bounded like the connect.
                        Some(tls) => {
                            let handshake = tls.connect(s, ep.addr, AlpnFor::Tcp);
                            match tokio::time::timeout(cluster.config.connect_timeout, handshake)
                                .await
                            {
                                Ok(Ok(t)) => t,
                                Ok(Err(_)) | Err(_) => {
                                    cluster.stats.upstream_cx_connect_fail.inc();
                                    continue;
                                }
                            }
                        }
                    };
                    cluster.stats.upstream_cx_total.inc();
                    upstream = Some(stream);
                    break;
                }
                Ok(Err(_)) | Err(_) => cluster.stats.upstream_cx_connect_fail.inc(),
            }
        }
        let Some(mut upstream) = upstream else { return };
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
