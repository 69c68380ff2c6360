//! Where a request is really going, for `ORIGINAL_DST` clusters: the target an
//! explicit-proxy client named (`GET http://host:port/...` absolute-form, or
//! `CONNECT host:port`), else the connection's iptables original destination.
//! This is what lets the egress listener also serve `HTTP_PROXY` clients.
//!
//! CONNECT is terminated here (Envoy's route `upgrade_configs: [{upgrade_type:
//! CONNECT, connect_config: {}}]`): the proxy connects to the endpoint, answers
//! 200 and splices bytes. HTTP/1.1 only; HTTP/2 CONNECT is not terminated.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;

use super::conn::ConnInfo;
use super::local_reply::{self, reply};
use crate::body::{self, Body};
use crate::upstream::{Cluster, OriginalDestination};

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

/// Terminates a CONNECT routed to `cluster` (`enabled`: the connection manager
/// allows CONNECT upgrades; else 403, as for a disallowed WebSocket).
pub async fn connect(
    enabled: bool,
    cluster: &Arc<Cluster>,
    parts: &mut http::request::Parts,
) -> Response<Body> {
    if !enabled || parts.version >= http::Version::HTTP_2 {
        return reply(StatusCode::FORBIDDEN, "", false);
    }
    let destination = parts.extensions.get::<OriginalDestination>().copied();
    let Some(endpoint) = cluster.pick_for(destination, crate::rng::random()) else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            local_reply::NO_HEALTHY_UPSTREAM,
            false,
        );
    };
    let Some(downstream) = parts.extensions.remove::<super::h1::server::OnUpgrade>() else {
        return reply(StatusCode::BAD_REQUEST, "", false);
    };
    let connect = TcpStream::connect(endpoint.addr);
    let mut upstream = match tokio::time::timeout(cluster.config.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            cluster.stats.upstream_cx_connect_fail.inc();
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                local_reply::CONNECT_FAILURE,
                false,
            );
        }
    };
    cluster.stats.upstream_cx_total.inc();
    cluster.stats.upstream_rq_total.inc();
    let _ = upstream.set_nodelay(true);
    let stats = cluster.stats.clone();
    tokio::spawn(async move {
        let Some(mut down) = downstream.wait().await else {
            return;
        };
        stats.upstream_cx_active.inc();
        let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
        stats.upstream_cx_active.dec();
        stats.upstream_cx_destroy.inc();
    });
    Response::new(body::empty())
}
