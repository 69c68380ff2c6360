//! The end-to-end harness: real processes, real sockets on loopback, real
//! clients. Every process a test starts is killed when its handle drops.

pub mod client;
pub mod config;
pub mod control;
pub mod diff;
pub mod grpc;
pub mod h2raw;
pub mod metrics;
pub mod process;
pub mod tls;
pub mod upstream;
pub mod xds_server;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A port nobody listens on right now (the OS picks it, the socket closes).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}

/// An address that refuses connections for as long as the guard lives: the
/// port is bound but never listened on, so no other test can take it.
pub fn refused_address() -> (SocketAddr, socket2::Socket) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    (addr, s)
}

/// An address where connecting hangs until the client gives up, for
/// connect timeouts on loopback: a listener with a backlog of zero that never
/// accepts, its one queue place taken by a connection the guard holds, so the
/// kernel drops every further SYN.
pub fn blackhole_address() -> (SocketAddr, (socket2::Socket, std::net::TcpStream)) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(0).expect("listen");
    let addr = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    let filler = std::net::TcpStream::connect(addr).expect("the one queued connection");
    (addr, (s, filler))
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a whole test body under a time limit, so a proxy that hangs fails
/// the test with a message instead of stalling the suite.
pub async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {limit:?}"))
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
