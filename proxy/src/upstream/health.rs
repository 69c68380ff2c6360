//! Active health checking (HTTP/1.1, HTTP/2, gRPC and TCP), one task per
//! cluster. Results only flip a host's `FAILED_ACTIVE_HC` flag and rebuild
//! the LB set; the request path never waits on a check.
//!
//! As in Envoy, checks go to the endpoint's `health_check_config` port when
//! it has one, and run over the cluster's transport socket: a TLS cluster
//! is checked over TLS, offering the ALPN of the check's codec.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::endpoint::{Endpoint, FAILED_ACTIVE_HC};
use super::Cluster;
use crate::config::resilience::{CheckKind, HealthCheckConfig};
use crate::tls::{AlpnFor, ClientStream, ClusterSslStats, UpstreamTls};

/// A reply larger than this is not read further.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, Default)]
struct HostState {
    successes: u32,
    failures: u32,
    /// Until the first result a host's initial "failing" flag is only a
    /// placeholder: one pass makes it healthy, as in Envoy.
    checked: bool,
}

/// The cluster's transport socket, which checks run over.
struct Transport {
    tls: Option<Arc<UpstreamTls>>,
    ssl: Option<Arc<ClusterSslStats>>,
}

pub fn spawn(cluster: &Arc<Cluster>, cfg: HealthCheckConfig) {
    let weak = Arc::downgrade(cluster);
    let transport = Transport {
        tls: cluster.config.tls.clone(),
        ssl: cluster.ssl.clone(),
    };
    tokio::spawn(async move {
        let mut hosts: HashMap<SocketAddr, HostState> = HashMap::new();
        loop {
            let Some(c) = Weak::upgrade(&weak) else {
                return;
            };
            let set = c.endpoints();
            drop(c);
            let results =
                futures::future::join_all(set.endpoints.iter().map(|e| check(e, &cfg, &transport)))
                    .await;
            let Some(c) = Weak::upgrade(&weak) else {
                return;
            };
            let s = &c.rstats;
            let mut changed = false;
            hosts.retain(|a, _| set.endpoints.iter().any(|e| e.addr == *a));
            for (e, result) in set.endpoints.iter().zip(results) {
                s.hc_attempt.inc();
                let h = hosts.entry(e.addr).or_default();
                let failing = e.health_flags() & FAILED_ACTIVE_HC != 0;
                match result {
                    Ok(()) => {
                        s.hc_success.inc();
                        h.failures = 0;
                        h.successes += 1;
                        if failing && (!h.checked || h.successes >= cfg.healthy_threshold) {
                            changed |= e.set_flag(FAILED_ACTIVE_HC, false);
                        }
                    }
                    Err(network) => {
                        s.hc_failure.inc();
                        if network {
                            s.hc_network_failure.inc();
                        }
                        h.successes = 0;
                        h.failures += 1;
                        // As in Envoy, `unhealthy_threshold` counts network
                        // failures; an answer that does not pass (a status
                        // outside expected_statuses, NOT_SERVING) fails the
                        // host at once.
                        if !failing && (!network || h.failures >= cfg.unhealthy_threshold) {
                            changed |= e.set_flag(FAILED_ACTIVE_HC, true);
                        }
                    }
                }
                h.checked = true;
            }
            if changed {
                tracing::info!(cluster = %c.name(), "health check changed host health");
                c.refresh();
            }
            let healthy = set
                .endpoints
                .iter()
                .filter(|e| e.health_flags() & FAILED_ACTIVE_HC == 0)
                .count();
            s.hc_healthy.set(healthy as i64);
            // A cluster that never had traffic is checked at Envoy's
            // `no_traffic_interval`.
            let idle = c.stats.upstream_rq_total.get() == 0;
            drop(c);
            let every = if idle {
                cfg.no_traffic_interval
            } else {
                cfg.interval
            };
            tokio::time::sleep(every + jitter(cfg.interval_jitter)).await;
        }
    });
}

fn jitter(max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(crate::rng::random::<u64>() % ms)
}

/// `Err(true)` for a network failure (no connection, no reply, timeout),
/// `Err(false)` for an answer that does not pass.
async fn check(e: &Endpoint, cfg: &HealthCheckConfig, t: &Transport) -> Result<(), bool> {
    let host = e.health_check_host.as_deref();
    match tokio::time::timeout(cfg.timeout, run(e.health_check_addr, host, &cfg.kind, t)).await {
        Ok(r) => r,
        Err(_) => Err(true),
    }
}

/// `host`: the endpoint's own Host for its checks, over the cluster's.
async fn run(
    addr: SocketAddr,
    host: Option<&str>,
    kind: &CheckKind,
    t: &Transport,
) -> Result<(), bool> {
    let tcp = TcpStream::connect(addr).await.map_err(|_| true)?;
    let alpn = match kind {
        CheckKind::Http { http2: false, .. } => AlpnFor::Http1,
        CheckKind::Http { http2: true, .. } | CheckKind::Grpc { .. } => AlpnFor::Http2,
        CheckKind::Tcp { .. } => AlpnFor::Tcp,
    };
    let s = match &t.tls {
        None => ClientStream::Plain(tcp),
        Some(tls) => {
            let ssl = t.ssl.as_deref().map(|s| &s.ssl);
            tls.connect(tcp, addr, alpn, ssl).await.map_err(|_| true)?
        }
    };
    match kind {
        CheckKind::Grpc { service, authority } => grpc(s, service, host.unwrap_or(authority)).await,
        CheckKind::Http {
            host: cluster_host,
            path,
            expected,
            http2,
        } => {
            let host = host.unwrap_or(cluster_host);
            let status = if *http2 {
                h2_status(s, host, path).await?
            } else {
                h1_status(s, host, path).await?
            };
            if expected.iter().any(|(lo, hi)| (*lo..*hi).contains(&status)) {
                Ok(())
            } else {
                Err(false)
            }
        }
        CheckKind::Tcp { send, receive } => tcp_check(s, send, receive).await,
    }
}

/// The status of `GET path` over HTTP/1.1 on a connection closed after it.
async fn h1_status<S>(mut s: S, host: &str, path: &str) -> Result<u16, bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Envoy/HC\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(|_| true)?;
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.map_err(|_| true)?;
        if n == 0 {
            return Err(true);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status(&buf[..end]).ok_or(false);
        }
        if buf.len() > MAX_REPLY {
            return Err(false);
        }
    }
}

/// The status of `GET path` as the one stream of a fresh HTTP/2
/// connection (prior knowledge, or ALPN `h2` over TLS).
async fn h2_status(s: ClientStream, host: &str, path: &str) -> Result<u16, bool> {
    use http_body_util::Empty;
    let req = http::Request::get(format!("http://{host}{path}"))
        .header(http::header::USER_AGENT, "Envoy/HC")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|_| false)?;
    let (mut sender, driver) = h2_connect(s).await?;
    let result = sender.send_request(req).await.map_err(|_| true);
    driver.abort();
    Ok(result?.status().as_u16())
}

type H2Sender<B> = hyper::client::conn::http2::SendRequest<B>;

/// An HTTP/2 client connection and the task that drives it.
async fn h2_connect<B>(s: ClientStream) -> Result<(H2Sender<B>, tokio::task::JoinHandle<()>), bool>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(s);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|_| true)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

async fn tcp_check<S>(mut s: S, send: &[u8], receive: &[Vec<u8>]) -> Result<(), bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !send.is_empty() {
        s.write_all(send).await.map_err(|_| true)?;
    }
    let mut buf = Vec::new();
    while !contains_in_order(&buf, receive) {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.map_err(|_| true)?;
        // Envoy counts a TCP check that ends unmatched as a network failure.
        if n == 0 || buf.len() > MAX_REPLY {
            return Err(true);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

fn contains_in_order(buf: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut rest = buf;
    for b in blocks {
        if b.is_empty() {
            continue;
        }
        match rest.windows(b.len()).position(|w| w == b.as_slice()) {
            Some(i) => rest = &rest[i + b.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_jitter_stays_below_its_bound_and_spreads() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(20);
        let waits: Vec<Duration> = (0..2_000).map(|_| jitter(max)).collect();
        assert!(waits.iter().all(|w| *w < max));
        for ms in 0..20 {
            assert!(
                waits.contains(&Duration::from_millis(ms)),
                "no wait of {ms} ms in 2000 draws"
            );
        }
    }

    #[test]
    fn status_lines_and_payloads() {
        assert_eq!(parse_status(b"HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"garbage"), None);
        assert!(contains_in_order(
            b"xxPONGyyOK",
            &[b"PONG".to_vec(), b"OK".to_vec()]
        ));
        assert!(!contains_in_order(
            b"OKxxPONG",
            &[b"PONG".to_vec(), b"OK".to_vec()]
        ));
        assert!(contains_in_order(b"", &[]));
    }
}

/// One `grpc.health.v1.Health/Check` call on a fresh HTTP/2 connection.
async fn grpc(s: ClientStream, service: &str, authority: &str) -> Result<(), bool> {
    use http_body_util::{BodyExt, Full};
    let (mut sender, driver) = h2_connect(s).await?;
    let request = grpc_health_request(service);
    let req = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(bytes::Bytes::from(request)))
        .map_err(|_| false)?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|_| true)?;
        if resp.status() != http::StatusCode::OK {
            return Err(false);
        }
        let header_status = resp.headers().get("grpc-status").cloned();
        let body = resp.into_body().collect().await.map_err(|_| true)?;
        let trailer_status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
        let ok = header_status
            .or(trailer_status)
            .is_some_and(|v| v.as_bytes() == b"0");
        (ok && serving(&body.to_bytes())).then_some(()).ok_or(false)
    }
    .await;
    driver.abort();
    result
}

/// A gRPC frame holding `HealthCheckRequest { service }`.
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() && service.len() < 128 {
        msg.push(0x0a);
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// Whether a `HealthCheckResponse` frame says SERVING (field 1 = 1).
fn serving(frame: &[u8]) -> bool {
    frame.len() >= 5 && frame[0] == 0 && frame[5..].windows(2).any(|w| w == [0x08, 0x01])
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn health_frames() {
        assert_eq!(grpc_health_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_health_request("a"), vec![0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!serving(&[0, 0, 0, 0, 0]));
    }
}
