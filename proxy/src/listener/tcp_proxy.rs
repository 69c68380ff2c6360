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
use crate::stats::appmesh::PeerStats;
use crate::stats::TcpStats;
use crate::tls::{AlpnFor, ClientStream, PeerInfo};
use crate::upstream::OriginalDestination;

pub struct TcpProxy {
    config: Arc<TcpProxyConfig>,
    stats: Arc<TcpStats>,
    shared: Arc<Shared>,
    /// Counts callers by identity in the per-peer App Mesh stats.
    inbound: bool,
    /// The virtual service this chain reaches, for the per-peer App Mesh
    /// stats (see [`crate::config::listener::ChainConfig::appmesh_service`]).
    appmesh_service: Option<Arc<str>>,
}

impl TcpProxy {
    pub fn new(
        config: Arc<TcpProxyConfig>,
        shared: Arc<Shared>,
        inbound: bool,
        appmesh_service: Option<Arc<str>>,
    ) -> TcpProxy {
        TcpProxy {
            stats: shared.tcp_stats(&config.stat_prefix),
            config,
            shared,
            inbound,
            appmesh_service,
        }
    }

    /// `downstream` is the accepted socket, or its TLS session (`tls`, what
    /// its handshake learnt of the peer; for TLS passed through, only the
    /// ClientHello's SNI); `original` the redirected-from
    /// destination, for `ORIGINAL_DST` clusters.
    pub async fn serve<S>(
        &self,
        downstream: S,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
        drain: Watch,
        tls: Option<&PeerInfo>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        // Telemetry hook: the connection's facts feed its access log line.
        let mut info = StreamInfo::new(peer, Some(local));
        info.connection_id = crate::format::next_connection_id();
        info.downstream_peer_uri_san = tls.filter(|t| t.verified).and_then(|t| t.uri_san.clone());
        info.requested_server_name = tls.and_then(|t| t.server_name.clone());
        let caller = match (&self.shared.mesh, self.inbound) {
            (Some(mesh), true) => {
                let p = mesh.downstream_peer(info.downstream_peer_uri_san.as_deref());
                p.connected();
                Some(p)
            }
            _ => None,
        };
        self.proxy(downstream, original, drain, &mut info).await;
        if let Some(p) = caller {
            p.closed(info.bytes_received, info.bytes_sent);
        }
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
            info.upstream_attempts += 1;
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
        let target = self.target(cluster.config.appmesh_virtual_node.as_ref());
        if let Some(t) = &target {
            t.connected();
        }
        let activity = Activity::default();
        let mut down = Tracked::new(&mut downstream, activity.clone());
        let mut up = Tracked::new(&mut upstream, activity.clone());
        {
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
            tokio::select! {
                _ = copying => {}
                _ = drained => {}
            }
        }
        // Counted as read, so a reset, an idle timeout or a drain still
        // reports the bytes that crossed.
        info.bytes_received = down.bytes_read();
        info.bytes_sent = up.bytes_read();
        if let Some(t) = target {
            t.closed(info.bytes_sent, info.bytes_received);
        }
        cluster.stats.upstream_cx_active.dec();
        cluster.stats.upstream_cx_destroy.inc();
    }

    /// The per-peer block of the virtual node `node` behind this chain's
    /// virtual service, when both are known.
    fn target(&self, node: Option<&Arc<str>>) -> Option<Arc<PeerStats>> {
        let mesh = self.shared.mesh.as_ref()?;
        mesh.upstream_peer(self.appmesh_service.as_ref()?, node?)
    }
}
