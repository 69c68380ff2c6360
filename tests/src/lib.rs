//! The end-to-end harness: real processes, real sockets on loopback, real
//! clients. Every process a test starts is killed when its handle drops.

pub mod client;
pub mod config;
pub mod control;
pub mod diff;
pub mod grpc;
pub mod h2raw;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod rss;
pub mod tls;
pub mod upstream;
pub mod xds_server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A port nobody listens on right now, for a child process to bind.
///
/// Picked below the kernel's ephemeral range (32768 and up), where outgoing
/// connections and port-0 binds take theirs: a port the OS handed out would
/// be free when checked, yet could be taken by any connection opened before
/// the child binds it. Each pick in this process is a different port.
pub fn free_port() -> u16 {
    const FIRST: u32 = 24_000;
    const COUNT: u32 = 8_700;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    // Test binaries run one after another, but the Python suites' servers
    // or a left-over process may hold ports: start each process elsewhere.
    let start = *START.get_or_init(|| std::process::id().wrapping_mul(7_919) % COUNT);
    (0..COUNT)
        .map(|_| FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT)
        .find(|&port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok())
        .map(|port| port as u16)
        .expect("loopback has free ports below the ephemeral range")
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
