//! Active health checking (HTTP and TCP), one task per cluster. Results only
//! flip a host's `FAILED_ACTIVE_HC` flag and rebuild the LB set; the request
//! path never waits on a check.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::endpoint::FAILED_ACTIVE_HC;
use super::Cluster;
use crate::config::resilience::{CheckKind, HealthCheckConfig};

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

pub fn spawn(cluster: &Arc<Cluster>, cfg: HealthCheckConfig) {
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut hosts: HashMap<SocketAddr, HostState> = HashMap::new();
        loop {
            let Some(c) = Weak::upgrade(&weak) else {
                return;
            };
            let set = c.endpoints();
            drop(c);
            let results =
                futures::future::join_all(set.endpoints.iter().map(|e| check(e.addr, &cfg))).await;
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
                        if !failing && h.failures >= cfg.unhealthy_threshold {
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
            drop(c);
            tokio::time::sleep(cfg.interval + jitter(cfg.interval_jitter)).await;
        }
    });
}

fn jitter(max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random::<u64>() % ms)
}

/// `Err(true)` for a network failure (no connection, no reply, timeout),
/// `Err(false)` for an answer that does not pass.
async fn check(addr: SocketAddr, cfg: &HealthCheckConfig) -> Result<(), bool> {
    match tokio::time::timeout(cfg.timeout, run(addr, &cfg.kind)).await {
        Ok(r) => r,
        Err(_) => Err(true),
    }
}

async fn run(addr: SocketAddr, kind: &CheckKind) -> Result<(), bool> {
    let mut s = TcpStream::connect(addr).await.map_err(|_| true)?;
    match kind {
        CheckKind::Http {
            host,
            path,
            expected,
        } => {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Envoy/HC\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.map_err(|_| true)?;
            let mut buf = Vec::with_capacity(256);
            let status = loop {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.map_err(|_| true)?;
                if n == 0 {
                    return Err(true);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    break parse_status(&buf[..end]).ok_or(false)?;
                }
                if buf.len() > MAX_REPLY {
                    return Err(false);
                }
            };
            if expected.iter().any(|(lo, hi)| (*lo..*hi).contains(&status)) {
                Ok(())
            } else {
                Err(false)
            }
        }
        CheckKind::Tcp { send, receive } => {
            if !send.is_empty() {
                s.write_all(send).await.map_err(|_| true)?;
            }
            let mut buf = Vec::new();
            while !contains_in_order(&buf, receive) {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.map_err(|_| true)?;
                if n == 0 || buf.len() > MAX_REPLY {
                    return Err(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        }
    }
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
