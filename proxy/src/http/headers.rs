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
    // One pass over the names instead of a hashed lookup per hop-by-hop
    // name: most requests and responses carry none, or only `Connection`.
    if !h.keys().any(is_hop_by_hop) {
        if keep_upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(s) = conn.to_str() {
            for name in s.split(',').map(str::trim) {
                if name.eq_ignore_ascii_case("upgrade") && keep_upgrade {
                    continue;
                }
                if name.eq_ignore_ascii_case("te") && keep_upgrade {
                    continue;
                }
                // A `&str` name is looked up without allocating a HeaderName.
                h.remove(name);
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

fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::UPGRADE
        || *n == header::TRANSFER_ENCODING
        || *n == header::TE
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
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
static ENVOY_CONTROLS: [HeaderName; 6] = [
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
];

pub fn strip_envoy_controls(h: &mut HeaderMap) {
    // One pass over the names first: most requests carry no `x-envoy-*`.
    if !h.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return;
    }
    for name in &ENVOY_CONTROLS {
        h.remove(name);
    }
}

/// A duration in whole milliseconds as a header value
/// (`x-envoy-upstream-service-time`, `x-envoy-expected-rq-timeout-ms`).
/// Values under a second and whole seconds up to an hour (route timeouts)
/// come from tables made once, so the common cases allocate nothing.
pub fn millis(d: std::time::Duration) -> HeaderValue {
    const MS: u64 = 1000;
    const SECONDS: u64 = 3600;
    fn table(values: impl Iterator<Item = u64>) -> Vec<HeaderValue> {
        values
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    }
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| table(0..MS));
    static WHOLE: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| table((0..=SECONDS).map(|s| s * MS)));
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let cached = if ms < MS {
        SMALL.get(ms as usize)
    } else if ms % MS == 0 && ms / MS <= SECONDS {
        WHOLE.get((ms / MS) as usize)
    } else {
        None
    };
    cached.cloned().unwrap_or_else(|| HeaderValue::from(ms))
}

/// A random UUID v4, as Envoy's default request ID extension makes.
pub fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = crate::rng::random();
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
    fn millis_from_the_table_and_beyond() {
        use std::time::Duration;
        assert_eq!(millis(Duration::ZERO), "0");
        assert_eq!(millis(Duration::from_micros(7_900)), "7");
        assert_eq!(millis(Duration::from_millis(999)), "999");
        assert_eq!(millis(Duration::from_secs(15)), "15000");
        assert_eq!(millis(Duration::from_millis(15_001)), "15001");
        assert_eq!(millis(Duration::from_secs(7200)), "7200000");
    }

    #[test]
    fn no_hop_by_hop_headers_leaves_the_map_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn connection_names_are_removed_in_any_case_and_te_kept_on_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Custom, TE, bad name"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.get("x-custom").is_none());
        assert!(h.get(header::UPGRADE).is_some());
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }

    #[test]
    fn envoy_controls_go_other_envoy_headers_stay() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-max-retries", HeaderValue::from_static("3"));
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-original-path", HeaderValue::from_static("/a"));
        strip_envoy_controls(&mut h);
        assert!(h.get("x-envoy-max-retries").is_none());
        assert!(h.get("x-envoy-retry-on").is_none());
        assert!(h.get("x-envoy-original-path").is_some());
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
