//! Where a request is really going, for `ORIGINAL_DST` clusters: the target an
//! explicit-proxy client named (`GET http://host:port/...` absolute-form, or
//! `CONNECT host:port`), else the connection's iptables original destination.
//! This is what lets the egress listener also serve `HTTP_PROXY` clients.

use std::net::SocketAddr;

use http::Method;

use super::conn::ConnInfo;
use crate::upstream::OriginalDestination;

/// The destination of this request, resolving a host name if one was given.
pub async fn destination(
    info: &ConnInfo,
    parts: &http::request::Parts,
) -> Option<OriginalDestination> {
    let explicit = parts.method == Method::CONNECT
        || (parts.version < http::Version::HTTP_2 && parts.uri.scheme().is_some());
    if !explicit {
        return info.original_dst.map(OriginalDestination);
    }
    let authority = parts.uri.authority()?;
    let default_port = match parts.uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Some(OriginalDestination(SocketAddr::new(ip, port)));
    }
    let mut addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    addrs.next().map(OriginalDestination)
}
