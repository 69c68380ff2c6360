//! Serving one downstream connection: codec choice, limits, graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::Hcm;
use crate::config::hcm::Codec;
use crate::drain::Watch;
use crate::io::{Activity, Tracked};

/// Facts about the downstream connection that requests need.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub scheme: &'static str,
}

impl Hcm {
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, mut drain: Watch) {
        let cfg = &self.config;
        self.stats.downstream_cx_total.inc();
        self.stats.downstream_cx_active.inc();
        let info = Arc::new(ConnInfo {
            peer,
            scheme: "http",
        });
        let activity = Activity::default();
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));

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
            .header_read_timeout(cfg.request_headers_timeout)
            .max_buf_size(max_head)
            .max_headers(cfg.max_headers_count as usize)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(cfg.max_request_headers_kb * 1024)
            .max_concurrent_streams(1024)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(None);

        let hcm = self.clone();
        let svc = service_fn(move |req| {
            let hcm = hcm.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(hcm.handle(&info, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let idle = cfg.idle_timeout;
        let served = async {
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => {
                    // HTTP/1.1 answers in flight with `Connection: close`; HTTP/2 sends GOAWAY.
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            }
        };
        match idle {
            Some(idle) => {
                if activity.run(served, idle).await.is_none() {
                    tracing::debug!(%peer, "closing idle downstream connection");
                }
            }
            None => {
                let _ = served.await;
            }
        }
        self.stats.downstream_cx_active.dec();
    }
}
