//! `envoy.filters.listener.original_dst`: the address a connection was sent to
//! before iptables `REDIRECT` rewrote it, read with `SO_ORIGINAL_DST`
//! (`IP6T_SO_ORIGINAL_DST` for IPv6). socket2 exposes both as safe calls, so
//! the crate keeps `forbid(unsafe_code)`.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination, or `None` when the connection was not redirected
/// (the kernel has no conntrack NAT entry for it: ENOENT).
pub fn original_destination(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = if local.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    let addr = addr.ok()?.as_socket()?;
    // REDIRECT of a connection to the listener's own address is no redirect.
    (addr != local).then_some(addr)
}
