//! Serving one downstream connection: codec choice, limits, graceful drain.
//! HTTP/1.1 runs on our own codec (`h1::server`); HTTP/2, by prior
//! knowledge or after the preface on an AUTO listener, on hyper's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{ready, Either};
use futures::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::admit::{Refusal, RequestCount};
use super::coalesce::{Coalesce, PollCount};
use super::h1::server::{self as h1, Ended};
use super::h2_guard::{self, H2Guard};
use super::Hcm;
use crate::body::{self, Body};
use crate::config::hcm::Codec;
use crate::drain::Watch;
use crate::io::{Activity, Prefixed, Tracked};

/// Facts about the downstream connection that requests need.
#[derive(Debug)]
pub struct ConnInfo {
    /// `%CONNECTION_ID%`.
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where iptables redirected the connection from (listener `original_dst`).
    pub original_dst: Option<SocketAddr>,
    /// Set while the connection drains: HTTP/1.1 answers close it.
    pub closing: Arc<AtomicBool>,
    pub scheme: &'static str,
    /// Set when the connection arrived over TLS: the verified peer identity
    /// (URI SAN), SNI and ALPN.
    pub tls: Option<Arc<crate::tls::PeerInfo>>,
    /// Requests served, against `max_requests_per_connection`.
    pub requests: RequestCount,
}

impl Hcm {
    pub async fn serve<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        original_dst: Option<SocketAddr>,
        mut drain: Watch,
        tls: Option<Arc<crate::tls::PeerInfo>>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.config;
        self.stats.downstream_cx_total.inc();
        self.stats.downstream_cx_active.inc();
        let closing = Arc::new(AtomicBool::new(false));
        let info = Arc::new(ConnInfo {
            id: crate::format::next_connection_id(),
            peer,
            local,
            original_dst,
            closing: closing.clone(),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            requests: RequestCount::default(),
        });
        let activity = Activity::default();
        let io = Tracked::new(stream, activity.clone());
        let served = async {
            // Boxed: hyper's HTTP/2 connection state would otherwise sit in
            // every HTTP/1.1 connection's future.
            if cfg.codec == Codec::Http2 {
                return Box::pin(self.serve_h2(io, Bytes::new(), &info, drain)).await;
            }
            let settings = h1::Settings {
                max_headers: cfg.max_headers_count as usize,
                max_header_bytes: cfg.max_request_headers_kb as usize * 1024,
                head_timeout: cfg.request_headers_timeout,
                detect_h2: cfg.codec == Codec::Auto,
                drain_time: self.shared.drain_time,
            };
            let mut shutdown = self.shared.drain.watch();
            let signals = h1::Signals {
                shutdown: &mut shutdown,
                drain: &mut drain,
                closing: &closing,
            };
            let service = |req| {
                // Boxed per request: the future is kilobytes, which an idle
                // keep-alive connection would otherwise hold for nothing.
                // Allocated first and written in place, which spares a copy
                // of those kilobytes through the stack.
                let slot = Box::new_uninit();
                Box::into_pin(Box::write(slot, self.clone().respond(info.clone(), req)))
            };
            match h1::serve(io, &settings, &self.stats, signals, service).await {
                Ok(Ended::Http2(pre, io)) => Box::pin(self.serve_h2(io, pre, &info, drain)).await,
                Ok(Ended::Closed) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "downstream connection failed"),
            }
        };
        // Pinned here and lent to `run`, so the connection's future holds it
        // once rather than as `run`'s argument and again as its pinned copy.
        let served = std::pin::pin!(served);
        if let Some(idle) = cfg.idle_timeout {
            if activity.run(served, idle).await.is_none() {
                self.stats.downstream_cx_idle_timeout.inc();
                tracing::debug!(%peer, "closing idle downstream connection");
            }
        } else {
            served.await;
        }
        self.stats.downstream_cx_active.dec();
    }

    /// One HTTP/1.1 request through admission and the handler. Built from
    /// combinators rather than an `async fn`, so the boxed future holds the
    /// handler's future and a closure, not the request again beside them.
    fn respond(
        self: Arc<Self>,
        info: Arc<ConnInfo>,
        req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send {
        let connect = req.method() == Method::CONNECT;
        let may_switch = connect || req.headers().contains_key(header::UPGRADE);
        let req = match self.prepare(&info, req) {
            Ok(req) => req,
            Err(Refusal::Reply(resp)) => return Either::Right(ready(*resp)),
            // Resets are HTTP/2's: `admit` resets no HTTP/1.1 request.
            Err(Refusal::Reset(_)) => {
                return Either::Right(ready(super::local_reply::reply(
                    StatusCode::BAD_REQUEST,
                    "",
                    false,
                )))
            }
        };
        let hcm = self.clone();
        let conn = info.clone();
        Either::Left(self.handle(info, req).map(move |mut resp| {
            hcm.mark_last(&conn, Version::HTTP_11, &mut resp);
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && resp.status().is_success());
            // If it does not switch, the bytes after a request that may have
            // switched protocols are not read as another request.
            if may_switch && !switched {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }))
    }

    /// Admission and the connection's facts on the request.
    fn prepare<B>(&self, info: &ConnInfo, mut req: Request<B>) -> Result<Request<B>, Refusal> {
        // Per request, for filters and logs that read the peer identity.
        if let Some(tls) = &info.tls {
            req.extensions_mut().insert(tls.clone());
        }
        self.admit(info, &req)?;
        Ok(req)
    }

    /// An HTTP/2 connection on hyper's server; `pre`: bytes already read.
    async fn serve_h2<S>(
        self: &Arc<Self>,
        stream: S,
        pre: Bytes,
        info: &Arc<ConnInfo>,
        mut drain: Watch,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.config;
        let polls = PollCount::default();
        let limits = h2_guard::Limits {
            max_control_frames: cfg.http2.max_control_frames,
            head_timeout: cfg.request_headers_timeout,
            http: self.stats.clone(),
            http2: self.shared.http2.clone(),
        };
        let io = H2Guard::new(
            Coalesce::new(Prefixed::new(pre, stream), polls.clone()),
            Some(limits),
        );
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Twice the limit: h2 answers 431 itself above it, and `admit`
            // resets streams between the two as Envoy's codec does.
            .max_header_list_size(cfg.max_request_headers_kb * 2048)
            .max_concurrent_streams(cfg.http2.max_concurrent_streams)
            .initial_stream_window_size(cfg.http2.initial_stream_window_size)
            .initial_connection_window_size(cfg.http2.initial_connection_window_size)
            .keep_alive_interval(None);
        let hcm = self.clone();
        let conn_info = info.clone();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let hcm = hcm.clone();
            let info = conn_info.clone();
            // Boxed per request, as on HTTP/1.1.
            Box::pin(async move {
                let req = match hcm.prepare(&info, req.map(body::incoming)) {
                    Ok(req) => req,
                    Err(Refusal::Reply(resp)) => return Ok(*resp),
                    Err(Refusal::Reset(reason)) => return Err(h2::Error::from(reason)),
                };
                Ok::<_, h2::Error>(hcm.handle(info, req).await)
            })
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut shutdown = self.shared.drain.watch();
        let drain_time = self.shared.drain_time;
        let served = async {
            tokio::select! {
                _ = conn.as_mut() => return,
                // The process is going away: GOAWAY, finish what is in flight.
                _ = shutdown.signaled() => {}
                // `max_requests_per_connection`: finish what is in flight.
                _ = info.requests.reached.notified() => {}
                // This listener version was replaced: what is left goes at
                // the end of the drain time.
                _ = drain.signaled() => {
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = tokio::time::sleep(drain_time) => {}
                        _ = shutdown.signaled() => {}
                    }
                }
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        };
        polls.count(served).await;
    }
}
