//! Serving one downstream connection: codec choice, limits, graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::admit::{Admission, RequestCount};
use super::coalesce::{Coalesce, PollCount};
use super::h1_guard::H1Guard;
use super::h2_guard::{self, H2Guard};
use super::head_timer::HeadTimer;
use super::Hcm;
use crate::config::hcm::Codec;
use crate::drain::Watch;
use crate::io::{Activity, Tracked};

/// Facts about the downstream connection that requests need.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where iptables redirected the connection from (listener `original_dst`).
    pub original_dst: Option<SocketAddr>,
    /// Set while the connection drains: HTTP/1.1 answers close it.
    pub closing: Arc<std::sync::atomic::AtomicBool>,
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
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let info = Arc::new(ConnInfo {
            peer,
            local,
            original_dst,
            closing: closing.clone(),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            requests: RequestCount::default(),
        });
        let activity = Activity::default();
        let h1 = cfg.codec != Codec::Http2;
        let polls = PollCount::default();
        let stream = Coalesce::new(stream, polls.clone());
        let h2_limits = (cfg.codec != Codec::Http1).then(|| h2_guard::Limits {
            max_control_frames: cfg.http2.max_control_frames,
            http: self.stats.clone(),
            http2: self.shared.http2.clone(),
        });
        let head_timer = cfg
            .request_headers_timeout
            .filter(|_| h1)
            .map(|t| HeadTimer::new(t, self.stats.clone()));
        let io = TokioIo::new(
            H1Guard::new(
                H2Guard::new(Tracked::new(stream, activity.clone()), h2_limits),
                h1,
            )
            .with_head_timer(head_timer),
        );

        let mut builder = auto::Builder::new(TokioExecutor::new());
        match cfg.codec {
            Codec::Auto => {}
            Codec::Http1 => builder = builder.http1_only(),
            Codec::Http2 => builder = builder.http2_only(),
        }
        // hyper counts the whole head against this buffer; leave room for the
        // request line so the limit applies to headers as Envoy's does.
        let max_head = (cfg.max_request_headers_kb as usize * 1024 + 8 * 1024).max(8192);
        builder
            .http1()
            .timer(TokioTimer::new())
            // The HTTP/1 guard times heads as Envoy does (see `head_timer`).
            .header_read_timeout(None)
            .max_buf_size(max_head)
            .max_headers(cfg.max_headers_count as usize)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            // Twice the limit: h2 answers 431 itself above it, and `admit`
            // resets streams between the two as Envoy's codec does.
            .max_header_list_size(cfg.max_request_headers_kb * 2048)
            .max_concurrent_streams(cfg.http2.max_concurrent_streams)
            .initial_stream_window_size(cfg.http2.initial_stream_window_size)
            .initial_connection_window_size(cfg.http2.initial_connection_window_size)
            .keep_alive_interval(None);

        let info_conn = info.clone();
        let hcm = self.clone();
        let svc = service_fn(move |req| {
            let hcm = hcm.clone();
            let info = info.clone();
            // Boxed per request: hyper keeps room for the service's future
            // for the connection's whole life, and this one is kilobytes,
            // which an idle keep-alive connection would hold for nothing.
            let fut = async move {
                let mut req = req;
                // Per request, for filters and logs that read the peer identity.
                if let Some(tls) = &info.tls {
                    req.extensions_mut().insert(tls.clone());
                }
                // The guard stops reading HTTP/1 framing after a request that
                // may switch protocols; if it does not switch, no further
                // request may be read on this connection.
                match hcm.admit(&info, &req) {
                    Admission::Serve => {}
                    Admission::Reply(resp) => return Ok(resp),
                    Admission::Reset(reason) => return Err(h2::Error::from(reason)),
                }
                let connect = req.method() == Method::CONNECT;
                let version = req.version();
                let may_switch = version <= Version::HTTP_11
                    && (connect || req.headers().contains_key(header::UPGRADE));
                let mut resp = hcm.handle(&info, req).await;
                hcm.mark_last(&info, version, &mut resp);
                let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    || (connect && resp.status().is_success());
                if may_switch && !switched {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, h2::Error>(resp)
            };
            Box::pin(fut)
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let idle = cfg.idle_timeout;
        let mut shutdown = self.shared.drain.watch();
        let drain_time = self.shared.drain_time;
        let requests_done = info_conn.clone();
        let served = async {
            tokio::select! {
                r = conn.as_mut() => return r,
                // The process is going away: close idle connections now,
                // answer what is in flight with `Connection: close` / GOAWAY.
                _ = shutdown.signaled() => {}
                // `max_requests_per_connection`: finish what is in flight.
                _ = requests_done.requests.reached.notified() => {}
                // This listener version was replaced: the next HTTP/1.1
                // answer says `Connection: close`, so a keep-alive client
                // moves to the new version between requests instead of
                // racing a close; whatever is left idle goes at the end of
                // the drain time.
                _ = drain.signaled() => {
                    closing.store(true, std::sync::atomic::Ordering::Relaxed);
                    tokio::select! {
                        r = conn.as_mut() => return r,
                        _ = tokio::time::sleep(drain_time) => {}
                        _ = shutdown.signaled() => {}
                    }
                }
            }
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        };
        let served = polls.count(served);
        let outcome = match idle {
            Some(idle) => {
                let r = activity.run(served, idle).await;
                if r.is_none() {
                    self.stats.downstream_cx_idle_timeout.inc();
                    tracing::debug!(%peer, "closing idle downstream connection");
                }
                r
            }
            None => Some(served.await),
        };
        if let Some(Err(e)) = outcome {
            self.count_codec_error(e.as_ref());
        }
        self.stats.downstream_cx_active.dec();
    }

    /// hyper answers malformed and oversized HTTP/1 heads (400, 431) itself;
    /// Envoy counts those as protocol errors and 4xx responses.
    fn count_codec_error(&self, e: &(dyn std::error::Error + 'static)) {
        let Some(e) = e.downcast_ref::<hyper::Error>() else {
            return;
        };
        if e.is_parse_too_large() {
            self.stats.downstream_rq.record(431);
        } else if e.is_parse() {
            self.stats.downstream_rq.record(400);
        } else {
            return;
        }
        self.stats.downstream_cx_protocol_error.inc();
    }
}
