//! Listeners: bind, accept, choose a filter chain, hand the connection to its
//! terminal filter (HTTP connection manager or TCP proxy).

mod connection_limit;
mod inspect;
mod manager;
mod original_dst;
mod tcp_proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::listener::{ChainConfig, ConnectionFacts, ListenerConfig, Terminal};
use crate::drain::{Drain, Watch};
use crate::http::Hcm;
use crate::overload::{Action, ConnectionPermit, Overload};
use crate::shared::Shared;
use crate::stats::ListenerStats;
use crate::tls::{HandshakeError, PeerInfo, ServerTls};

use connection_limit::ConnectionLimit;
pub use manager::{ListenerManager, Wanted};
pub use tcp_proxy::TcpProxy;

/// A listener's compiled chains with the stats they feed. Swapped whole when
/// the listener's config changes; the socket stays bound, and the connections
/// of the replaced chains drain.
pub struct ActiveListener {
    pub config: Arc<ListenerConfig>,
    chains: Vec<Chain>,
    default_chain: Option<Chain>,
    stats: Arc<ListenerStats>,
    /// Signals this version's connections to finish and close.
    pub drain: Drain,
}

#[derive(Clone)]
struct Chain {
    terminal: Terminus,
    limit: Option<Arc<ConnectionLimit>>,
}

#[derive(Clone)]
enum Terminus {
    Http(Arc<Hcm>),
    Tcp(Arc<TcpProxy>),
}

impl ActiveListener {
    pub fn new(config: Arc<ListenerConfig>, shared: &Arc<Shared>) -> ActiveListener {
        let inbound = config.proto.traffic_direction
            == xds_protos::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let chain = |c: &ChainConfig| Chain {
            terminal: match &c.terminal {
                Terminal::Http(h) => {
                    Terminus::Http(Arc::new(Hcm::new(h.clone(), shared.clone(), inbound)))
                }
                Terminal::Tcp(t) => Terminus::Tcp(Arc::new(TcpProxy::new(
                    t.clone(),
                    shared.clone(),
                    inbound,
                    c.appmesh_service.clone(),
                ))),
            },
            limit: c
                .connection_limit
                .clone()
                .map(|l| Arc::new(ConnectionLimit::new(l, shared))),
        };
        let tls = config
            .filter_chains
            .iter()
            .chain(config.default_chain.as_ref())
            .any(|c| c.tls.is_some());
        let stats = shared.listener_stats(config.address);
        if tls {
            stats.tls.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        ActiveListener {
            chains: config.filter_chains.iter().map(chain).collect(),
            default_chain: config.default_chain.as_ref().map(chain),
            config,
            stats,
            drain: Drain::default(),
        }
    }

    /// The chain for these facts, with its TLS context if it terminates TLS.
    fn select(&self, facts: &ConnectionFacts<'_>) -> Option<(Chain, Option<Arc<ServerTls>>)> {
        let chosen = self.config.select(facts)?;
        let tls = chosen.tls.clone();
        if let Some(i) = self
            .config
            .filter_chains
            .iter()
            .position(|c| std::ptr::eq(c, chosen))
        {
            return self.chains.get(i).cloned().map(|c| (c, tls));
        }
        self.default_chain.clone().map(|c| (c, tls))
    }
}

/// Binds and listens like Envoy: SO_REUSEADDR, and IPv6 sockets v6-only
/// unless `ipv4_compat` (then `::` takes IPv4 clients too, as
/// `::ffff:a.b.c.d`).
pub fn bind(addr: SocketAddr, ipv4_compat: bool) -> std::io::Result<TcpListener> {
    listen(bind_only(addr, ipv4_compat)?)
}

/// Binds without listening: the address is held, and connections to it are
/// refused until [`listen`] (a warming listener's socket, as Envoy's).
fn bind_only(addr: SocketAddr, ipv4_compat: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!ipv4_compat)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listen(socket: Socket) -> std::io::Result<TcpListener> {
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `stop` is signalled, then closes the socket. The overload
/// manager may pause accepting, or have new connections closed at once.
fn spawn(
    socket: Arc<TcpListener>,
    active: Arc<ArcSwap<ActiveListener>>,
    mut stop: Watch,
    overload: Arc<Overload>,
) {
    tokio::spawn(async move {
        loop {
            if overload.is_active(Action::StopAcceptingConnections) {
                tokio::select! {
                    _ = overload.until_inactive(Action::StopAcceptingConnections) => continue,
                    _ = stop.signaled() => return,
                }
            }
            let (stream, peer) = tokio::select! {
                r = socket.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = stop.signaled() => return,
            };
            if overload.is_active(Action::StopAcceptingConnections) {
                // Taken from the backlog just as the action fired: it waits
                // with the ones still there.
                tokio::select! {
                    _ = overload.until_inactive(Action::StopAcceptingConnections) => {}
                    _ = stop.signaled() => return,
                }
            }
            let listener = active.load_full();
            if overload.is_active(Action::RejectIncomingConnections) {
                listener.stats.downstream_cx_overload_reject.inc();
                continue;
            }
            let Some(permit) = overload.admit_connection() else {
                listener.stats.downstream_global_cx_overflow.inc();
                continue;
            };
            handle(listener, stream, peer, permit);
        }
    });
}

fn handle(
    listener: Arc<ActiveListener>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    listener.stats.downstream_cx_total.inc();
    let drain = listener.drain.watch();
    tokio::spawn(async move {
        // Listener filters: original_dst, then tls_inspector, then http_inspector
        // (only for plaintext) run before chain choice.
        let filters = listener.config.filters;
        let original = filters
            .original_dst
            .then(|| original_dst::original_destination(&stream, local))
            .flatten();
        let hello = match listener.config.tls_inspector {
            // Boxed, as the TLS handshake below: a connection's task is only
            // as large as the path it is on.
            Some(cfg) => match Box::pin(crate::tls::inspect(&stream, cfg.timeout)).await {
                crate::tls::Inspection::Tls(h) => Some(h),
                crate::tls::Inspection::Plaintext => None,
                crate::tls::Inspection::Closed => return,
                crate::tls::Inspection::TimedOut if cfg.continue_on_timeout => None,
                crate::tls::Inspection::TimedOut => {
                    tracing::debug!(%peer, "closing: no ClientHello within listener_filters_timeout");
                    return;
                }
            },
            None => None,
        };
        let mut alpn: Vec<&str> = hello
            .iter()
            .flat_map(|h| h.alpn.iter().map(String::as_str))
            .collect();
        if filters.http_inspector && hello.is_none() {
            alpn.extend(Box::pin(inspect::application_protocols(&stream)).await);
        }
        let facts = ConnectionFacts {
            destination_port: original.unwrap_or(local).port(),
            server_name: hello.as_ref().and_then(|h| h.server_name.as_deref()),
            transport_protocol: if hello.is_some() { "tls" } else { "raw_buffer" },
            application_protocols: &alpn,
        };
        let Some((chain, tls)) = listener.select(&facts) else {
            listener.stats.no_filter_chain_match.inc();
            return;
        };
        // Envoy's requested server name is what tls_inspector read, whether
        // TLS ends here or passes through; without the inspector, none.
        let requested_server_name: Option<Arc<str>> =
            hello.and_then(|h| h.server_name).map(Arc::from);
        let _limited = match &chain.limit {
            Some(limit) => match limit.admit() {
                Some(permit) => Some(permit),
                None => {
                    limit.refuse().await;
                    return;
                }
            },
            None => None,
        };
        listener.stats.downstream_cx_active.inc();
        // Each way of serving is boxed: inline, every connection's task would
        // be as large as the largest of them (HTTP over TLS), whichever it runs.
        match tls {
            // The whole TLS path in one box: what its handshake returns would
            // otherwise take room in every connection's task, plaintext ones too.
            Some(tls) => {
                let stats = &listener.stats;
                let ssl = &stats.ssl;
                let terminal = chain.terminal;
                Box::pin(async move {
                    let (stream, mut info) = match tls.accept(stream, Some(ssl)).await {
                        Ok(accepted) => accepted,
                        Err(HandshakeError::TimedOut) => {
                            stats.downstream_cx_transport_socket_connect_timeout.inc();
                            return;
                        }
                        Err(HandshakeError::Failed) => return,
                    };
                    info.server_name = requested_server_name;
                    let info = Arc::new(info);
                    match terminal {
                        Terminus::Http(hcm) => {
                            Box::pin(hcm.serve(stream, peer, local, original, drain, Some(info)))
                                .await
                        }
                        Terminus::Tcp(tcp) => {
                            Box::pin(tcp.serve(stream, peer, local, original, drain, Some(&info)))
                                .await
                        }
                    }
                })
                .await
            }
            None => match chain.terminal {
                Terminus::Http(hcm) => {
                    Box::pin(hcm.serve(stream, peer, local, original, drain, None)).await
                }
                Terminus::Tcp(tcp) => {
                    let sni = requested_server_name.map(|n| PeerInfo {
                        server_name: Some(n),
                        ..PeerInfo::default()
                    });
                    Box::pin(tcp.serve(stream, peer, local, original, drain, sni.as_ref())).await
                }
            },
        }
        listener.stats.downstream_cx_active.dec();
        drop(permit);
        crate::memory::connection_closed();
    });
}
