//! Per-endpoint connection pools: HTTP/1.1 keep-alive connections on an idle
//! stack, and one multiplexed HTTP/2 connection shared by every request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::breaker::Slot;
use super::{Cluster, Endpoint};
use crate::body::{self, Body, BoxError};
use crate::http::h1::client::{self as h1, Conn};
use crate::stats::ClusterStats;
use crate::tls::{AlpnFor, ClientStream, SslStats, UpstreamTls};
use tokio::sync::OwnedSemaphorePermit;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
const MAX_IDLE_H1: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection timeout")]
    Timeout,
    #[error("connection failure: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failure: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake failure: {0}")]
    Tls(std::io::Error),
    /// `max_connections` reached and `max_pending_requests` full.
    #[error("upstream overflow")]
    Overflow,
}

#[derive(Debug)]
pub(super) struct Pool {
    addr: SocketAddr,
    idle_h1: Mutex<Vec<H1Conn>>,
    h2: ArcSwapOption<H2Conn>,
    h2_connect: tokio::sync::Mutex<()>,
    /// Signals a connection put back idle, to requests waiting under
    /// `max_connections`.
    idle_ready: tokio::sync::Notify,
}

/// An HTTP/1.1 connection and the local address it was opened from
/// (`%UPSTREAM_LOCAL_ADDRESS%`). Its slot under `max_connections` and its
/// `upstream_cx_active` count end when it is dropped.
pub struct H1Conn {
    conn: Conn,
    local: Option<SocketAddr>,
    _open: Open,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("local", &self.local)
            .finish()
    }
}

/// An open connection's permit and stats, released on close.
struct Open {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ClusterStats>,
}

impl Drop for Open {
    fn drop(&mut self) {
        closed(&self.stats);
    }
}

/// The shared HTTP/2 connection of an endpoint.
#[derive(Debug)]
pub struct H2Conn {
    sender: http2::SendRequest<Body>,
    local: Option<SocketAddr>,
}

/// What a connection needs from its cluster.
pub struct ConnectParams<'a> {
    pub timeout: Duration,
    pub stats: &'a Arc<ClusterStats>,
    pub cluster: &'a Cluster,
    /// The cluster's `UpstreamTlsContext`, run on every new connection.
    pub tls: Option<&'a Arc<UpstreamTls>>,
    /// Where its handshakes are counted.
    pub ssl: Option<&'a SslStats>,
}

impl Pool {
    pub(super) fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle_h1: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_connect: tokio::sync::Mutex::new(()),
            idle_ready: tokio::sync::Notify::new(),
        }
    }

    /// Closes one idle connection, which frees its permit.
    pub(super) fn drop_one_idle(&self) -> bool {
        self.pop_idle().is_some()
    }

    fn pop_idle(&self) -> Option<H1Conn> {
        self.idle_h1.lock().ok()?.pop()
    }

    fn put_idle(&self, conn: H1Conn) {
        if let Ok(mut idle) = self.idle_h1.lock() {
            if idle.len() < MAX_IDLE_H1 {
                idle.push(conn);
                self.idle_ready.notify_one();
            }
        }
    }

    /// A permit under the cluster's `max_connections`. When none is free the
    /// request waits for one, or — HTTP/1.1 — for a connection of this host
    /// going idle (`None`: try the idle stack again).
    async fn permit(
        &self,
        p: &ConnectParams<'_>,
        idle_wakes: bool,
    ) -> Option<OwnedSemaphorePermit> {
        let sem = &p.cluster.breaker.connections;
        if let Ok(permit) = sem.clone().try_acquire_owned() {
            return Some(permit);
        }
        p.cluster.rstats.upstream_cx_overflow.inc();
        p.cluster.evict_idle();
        tokio::select! {
            permit = sem.clone().acquire_owned() => permit.ok(),
            _ = self.idle_ready.notified(), if idle_wakes => None,
        }
    }

    /// A new connection, TLS when the cluster says so, and its local address.
    async fn tcp(
        &self,
        p: &ConnectParams<'_>,
        alpn: AlpnFor,
    ) -> Result<(ClientStream, Option<SocketAddr>), ConnectError> {
        let connect = TcpStream::connect(self.addr);
        let stream = match tokio::time::timeout(p.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                p.stats.upstream_cx_connect_fail.inc();
                return Err(e.into());
            }
            Err(_) => {
                p.stats.upstream_cx_connect_fail.inc();
                p.stats.upstream_cx_connect_timeout.inc();
                return Err(ConnectError::Timeout);
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        p.stats.upstream_cx_total.inc();
        p.stats.upstream_cx_active.inc();
        match p.tls {
            None => Ok((ClientStream::Plain(stream), local)),
            Some(tls) => match tls.connect(stream, self.addr, alpn, p.ssl).await {
                Ok(s) => Ok((s, local)),
                Err(e) => {
                    p.stats.upstream_cx_connect_fail.inc();
                    closed(p.stats);
                    Err(ConnectError::Tls(e))
                }
            },
        }
    }

    async fn connect_h1(
        &self,
        p: &ConnectParams<'_>,
        permit: OwnedSemaphorePermit,
    ) -> Result<H1Conn, ConnectError> {
        let (stream, local) = self.tcp(p, AlpnFor::Http1).await?;
        p.stats.upstream_cx_http1_total.inc();
        Ok(H1Conn {
            conn: Conn::new(stream),
            local,
            _open: Open {
                _permit: permit,
                stats: p.stats.clone(),
            },
        })
    }

    /// The shared HTTP/2 connection, when there is one still open.
    fn live_h2(&self) -> Option<(http2::SendRequest<Body>, Option<SocketAddr>)> {
        let c = self.h2.load();
        let c = c.as_deref().filter(|c| !c.sender.is_closed())?;
        Some((c.sender.clone(), c.local))
    }

    /// Opens the host's HTTP/2 connection, or waits for the one being
    /// opened. Like an HTTP/1.1 request without a ready connection, the
    /// request is pending meanwhile, under `max_pending_requests` (as in
    /// Envoy, whose first request on a cold pool is pending too).
    async fn shared_h2(
        &self,
        p: &ConnectParams<'_>,
    ) -> Result<(http2::SendRequest<Body>, Option<SocketAddr>), ConnectError> {
        let _pending = pending(p)?;
        let _guard = self.h2_connect.lock().await;
        if let Some(c) = self.live_h2() {
            return Ok(c);
        }
        let permit = loop {
            if let Some(permit) = self.permit(p, false).await {
                break permit;
            }
        };
        let (stream, local) = self.tcp(p, AlpnFor::Http2).await?;
        p.stats.upstream_cx_http2_total.inc();
        let stats = p.stats.clone();
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(None)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        let (sender, conn) = match builder.handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => {
                closed(&stats);
                return Err(e.into());
            }
        };
        tokio::spawn(async move {
            let _ = conn.await;
            closed(&stats);
            drop(permit);
        });
        self.h2.store(Some(Arc::new(H2Conn {
            sender: sender.clone(),
            local,
        })));
        Ok((sender, local))
    }
}

/// Takes a request off `upstream_rq_pending_active` however it leaves.
/// A place among the cluster's pending requests (`max_pending_requests`),
/// counted as Envoy counts it, or an overflow.
fn pending<'a>(p: &ConnectParams<'a>) -> Result<(Slot<'a>, PendingGauge<'a>), ConnectError> {
    let Some(slot) = p.cluster.breaker.pending() else {
        p.stats.upstream_rq_pending_overflow.inc();
        return Err(ConnectError::Overflow);
    };
    p.cluster.rstats.upstream_rq_pending_total.inc();
    p.stats.upstream_rq_pending_active.inc();
    Ok((slot, PendingGauge(p.stats)))
}

struct PendingGauge<'a>(&'a ClusterStats);

impl Drop for PendingGauge<'_> {
    fn drop(&mut self) {
        self.0.upstream_rq_pending_active.dec();
    }
}

fn closed(stats: &ClusterStats) {
    stats.upstream_cx_active.dec();
    stats.upstream_cx_destroy.inc();
}

/// A connection ready for one request.
pub enum Pooled {
    H1(H1Conn, Arc<Endpoint>),
    H2(http2::SendRequest<Body>, Option<SocketAddr>),
}

impl Endpoint {
    /// A pooled connection ready now: the common case, which needs no
    /// checkout future.
    pub fn ready_now(self: &Arc<Self>, proto: Protocol) -> Option<Pooled> {
        match proto {
            Protocol::Http2 => self.pool.live_h2().map(|(s, local)| Pooled::H2(s, local)),
            Protocol::Http1 => loop {
                let mut s = self.pool.pop_idle()?;
                if s.conn.is_usable() {
                    return Some(Pooled::H1(s, self.clone()));
                }
            },
        }
    }

    /// A ready connection: a reused idle one when possible, else a new one.
    pub async fn checkout(
        self: &Arc<Self>,
        proto: Protocol,
        p: &ConnectParams<'_>,
    ) -> Result<Pooled, ConnectError> {
        match proto {
            // The connect paths are boxed: their futures (TCP, TLS and HTTP
            // handshakes) would otherwise sit inline in every request's
            // future, though most requests reuse a pooled connection.
            Protocol::Http2 => {
                let (sender, local) = match self.pool.live_h2() {
                    Some(c) => c,
                    None => Box::pin(self.pool.shared_h2(p)).await?,
                };
                Ok(Pooled::H2(sender, local))
            }
            Protocol::Http1 => loop {
                while let Some(mut s) = self.pool.pop_idle() {
                    if s.conn.is_usable() {
                        return Ok(Pooled::H1(s, self.clone()));
                    }
                }
                // As in Envoy, a request with no ready connection is pending
                // (bounded by `max_pending_requests`) until it has one, be
                // it new or freed.
                let _pending = pending(p)?;
                if let Some(permit) = Box::pin(self.pool.permit(p, true)).await {
                    return Ok(Pooled::H1(
                        Box::pin(self.pool.connect_h1(p, permit)).await?,
                        self.clone(),
                    ));
                }
            },
        }
    }
}

impl Pooled {
    /// The local address of the connection, `%UPSTREAM_LOCAL_ADDRESS%`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Pooled::H1(c, _) => c.local,
            Pooled::H2(_, local) => *local,
        }
    }

    pub fn send(self, req: http::Request<Body>) -> Sending {
        match self {
            Pooled::H2(mut s, _) => Sending::H2(Box::pin(async move {
                s.ready().await?;
                Ok(s.send_request(req).await?.map(body::incoming))
            })),
            Pooled::H1(conn, endpoint) => Sending::H1(h1::send(Leased { conn, endpoint }, req)),
        }
    }
}

/// A request on its way: HTTP/1.1 inline, HTTP/2 (hyper's client) boxed so
/// its larger future does not sit in every HTTP/1.1 request's.
#[allow(clippy::large_enum_variant)] // the large one is the hot one, kept inline
pub enum Sending {
    H1(h1::Sending<Leased>),
    H2(Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>),
}

impl Future for Sending {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::H1(s) => Pin::new(s).poll(cx).map_err(Into::into),
            Sending::H2(s) => s.as_mut().poll(cx),
        }
    }
}

/// An HTTP/1.1 connection out of its endpoint's pool for one exchange.
pub struct Leased {
    conn: H1Conn,
    endpoint: Arc<Endpoint>,
}

impl h1::Lease for Leased {
    fn conn(&mut self) -> &mut Conn {
        &mut self.conn.conn
    }

    fn recycle(self) {
        self.endpoint.pool.put_idle(self.conn);
    }

    fn into_conn(self) -> Conn {
        self.conn.conn
    }
}
