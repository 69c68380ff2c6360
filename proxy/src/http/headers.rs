//! Header rules every proxied request and response goes through, as Envoy
//! applies them: hop-by-hop removal, x-forwarded-*, x-request-id.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::hcm::HcmConfig;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
pub static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers, including those the `Connection`
/// header names. `te: trailers` survives: gRPC over HTTP/2 needs it.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(s) = conn.to_str() {
            for name in s.split(',').map(str::trim) {
                if name.eq_ignore_ascii_case("upgrade") && keep_upgrade {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    if n != header::TE || !keep_upgrade {
                        h.remove(n);
                    }
                }
            }
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Only addresses in `internal_address_config` are internal: Envoy 1.40
/// treats every client as external unless configured otherwise.
pub fn is_internal(cfg: &HcmConfig, ip: IpAddr) -> bool {
    cfg.internal_ranges.iter().any(|r| r.contains(ip))
}

/// Applies `x-forwarded-for`, `x-forwarded-proto` and `x-request-id` rules.
/// Returns whether the request is internal.
pub fn forwarded(
    cfg: &HcmConfig,
    h: &mut HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
) -> bool {
    let internal;
    if cfg.use_remote_address {
        // As in Envoy: a client that brings its own X-Forwarded-For speaks
        // for someone else, so only a direct internal peer is internal.
        internal = !h.contains_key(&X_FORWARDED_FOR) && is_internal(cfg, peer.ip());
        if !internal {
            strip_envoy_headers(h);
        }
        // A peer on loopback is this host itself; Envoy then records the
        // host's own address, so upstreams see a routable one.
        let client = if peer.ip().is_loopback() {
            local_address().unwrap_or(peer.ip())
        } else {
            peer.ip()
        };
        if !cfg.skip_xff_append {
            let ip = client.to_string();
            let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        if !internal {
            if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
                h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    } else {
        internal = trusted_client_is_internal(cfg, h, peer.ip());
        if !internal {
            strip_envoy_headers(h);
        }
        if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
        }
    }
    if internal {
        h.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    }
    let regenerate = !internal && cfg.use_remote_address && !cfg.preserve_external_request_id;
    if cfg.generate_request_id && (regenerate || !h.contains_key(&X_REQUEST_ID)) {
        h.insert(X_REQUEST_ID.clone(), request_id());
    }
    internal
}

/// The host's first non-loopback address (IPv4 first), found once.
fn local_address() -> Option<IpAddr> {
    static ADDR: std::sync::OnceLock<Option<IpAddr>> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let ifaces = if_addrs::get_if_addrs().ok()?;
        let ips: Vec<IpAddr> = ifaces
            .iter()
            .filter(|i| !i.is_loopback())
            .map(|i| i.ip())
            .collect();
        ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
    })
}

/// Without `use_remote_address`, the client address is the trusted entry of
/// `x-forwarded-for` (the peer when the header is absent).
fn trusted_client_is_internal(cfg: &HcmConfig, h: &HeaderMap, peer: IpAddr) -> bool {
    let Some(xff) = h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else {
        return is_internal(cfg, peer);
    };
    let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
    let idx = entries
        .len()
        .checked_sub(1 + cfg.xff_num_trusted_hops as usize);
    match idx
        .and_then(|i| entries.get(i))
        .and_then(|e| e.parse::<IpAddr>().ok())
    {
        Some(ip) => is_internal(cfg, ip),
        None => false,
    }
}

/// External clients may not steer the proxy with `x-envoy-*` headers.
fn strip_envoy_headers(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// Headers that steer the router are consumed, never sent upstream.
const ENVOY_CONTROLS: [&str; 6] = [
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-upstream-rq-timeout-alt-response",
];

pub fn strip_envoy_controls(h: &mut HeaderMap) {
    for name in ENVOY_CONTROLS {
        h.remove(name);
    }
}

/// A random UUID v4, as Envoy's default request ID extension makes.
pub fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = HEX[usize::from(byte >> 4)];
        s[j + 1] = HEX[usize::from(byte & 0xf)];
        j += 2;
    }
    HeaderValue::from_bytes(&s)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-custom").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let s = id.to_str().unwrap_or_default();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(request_id(), id);
    }
}
