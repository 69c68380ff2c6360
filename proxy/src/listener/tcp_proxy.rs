//! `envoy.filters.network.tcp_proxy`: bytes both ways to a cluster endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::tcp_proxy::TcpProxyConfig;
use crate::drain::Watch;
use crate::format::{Context, StreamInfo};
use crate::http::ResponseFlags;
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

    /// `downstream` is the accepted socket, or its TLS session; `original`
    /// the redirected-from destination, for `ORIGINAL_DST` clusters.
    pub async fn serve<S>(
        &self,
        downstream: S,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
        drain: Watch,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // Telemetry hook: the connection's facts feed its access log line.
        let mut info = StreamInfo::new(peer, Some(local));
        self.proxy(downstream, original, drain, &mut info).await;
        if !self.config.access_logs.is_empty() {
            info.done = Some(info.started.elapsed());
            self.config.access_logs.log(&Context::new(&info));
        }
    }

    async fn proxy<S>(
        &self,
        mut downstream: S,
        original: Option<SocketAddr>,
        mut drain: Watch,
        info: &mut StreamInfo,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.stats.downstream_cx_total.inc();
        let snapshot = self.shared.snapshot.load_full();
        let name = self.config.pick_cluster(crate::rng::random());
        let Some(cluster) = snapshot.clusters.get(name) else {
            self.stats.downstream_cx_no_route.inc();
            info.flags.set(ResponseFlags::NO_CLUSTER_FOUND);
            return;
        };
        info.upstream_cluster = Some(cluster.name().clone());
        let mut upstream = None;
        for _ in 0..self.config.max_connect_attempts {
            let Some(ep) =
                cluster.pick_for(original.map(OriginalDestination), crate::rng::random())
            else {
                break;
            };
            let connect = TcpStream::connect(ep.addr);
            match tokio::time::timeout(cluster.config.connect_timeout, connect).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    info.upstream_host = Some(ep.addr);
                    info.upstream_local = s.local_addr().ok();
                    let stream = match &cluster.config.tls {
                        None => ClientStream::Plain(s),
                        // The cluster's UpstreamTlsContext, bounded like the connect.
                        Some(tls) => {
                            let ssl = cluster.ssl.as_deref().map(|s| &s.ssl);
                            let handshake = tls.connect(s, ep.addr, AlpnFor::Tcp, ssl);
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
        let Some(mut upstream) = upstream else {
            info.flags.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            return;
        };
        cluster.stats.upstream_cx_active.inc();
        let activity = Activity::default();
        let mut down = Tracked::new(&mut downstream, activity.clone());
        let mut up = Tracked::new(&mut upstream, activity.clone());
        let copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut down, &mut up));
        let copying = async {
            match self.config.idle_timeout {
                Some(idle) => activity.run(copy, idle).await,
                None => Some(copy.await),
            }
        };
        // A removed or changed listener's sessions get the drain time to
        // finish, then are closed, as Envoy closes them with the listener.
        let drained = async {
            drain.signaled().await;
            tokio::time::sleep(self.shared.drain_time).await;
        };
        let copied = tokio::select! {
            c = copying => c,
            _ = drained => None,
        };
        if let Some(Ok((received, sent))) = copied {
            info.bytes_received = received;
            info.bytes_sent = sent;
        }
        cluster.stats.upstream_cx_active.dec();
        cluster.stats.upstream_cx_destroy.inc();
    }
}
