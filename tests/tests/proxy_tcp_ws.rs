//! Raw TCP through `tcp_proxy`, and WebSocket upgrades through the HCM.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::{Echo, TcpEcho};
use trellis_tests::{free_port, loopback};

#[tokio::test]
async fn tcp_proxy_carries_bytes_both_ways() {
    let echo = TcpEcho::start().await;
    let port = free_port();
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_echo
          cluster: echo
  clusters:
{}"#,
        cluster("echo", &[echo.addr], "")
    );
    let _p = ProxyProcess::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(loopback(port))
        .await
        .expect("connect");
    let payload = vec![7u8; 256 * 1024];
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.expect("write");
    };
    let read = async {
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).await.expect("read back");
        got
    };
    let (_, got) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("echo in time");
    assert_eq!(got, payload);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let app = Echo::start("app").await;
    let port = free_port();
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;
    let config = http_proxy(
        port,
        vhosts,
        &[cluster("app", &[app.addr], "")],
        "          upgrade_configs:\n          - upgrade_type: websocket\n",
    );
    let _p = ProxyProcess::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(loopback(port))
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-the-tunnel")
        .await
        .expect("write frame");
    let mut got = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&got, b"ping-through-the-tunnel");
}

#[tokio::test]
async fn websocket_without_upgrade_config_is_refused() {
    let app = Echo::start("app").await;
    let port = free_port();
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;
    let _p = ProxyProcess::start(&http_proxy(
        port,
        vhosts,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    let reply = trellis_tests::client::raw(
        loopback(port),
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert_eq!(app.count(), 0);
}

/// Echoes one message through the listener at `addr`, or says why not.
async fn echo_through(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .map_err(|_| "no echo in time".to_string())?
        .map_err(|e| e.to_string())?;
    (&got == b"ping")
        .then_some(())
        .ok_or_else(|| format!("echoed {got:?}"))
}

/// As Envoy: `::` with `ipv4_compat` also takes IPv4 clients; without it
/// the socket is v6-only, and 127.0.0.1 on that port finds nothing.
#[tokio::test]
async fn ipv4_compat_lets_an_ipv6_wildcard_listener_take_ipv4_clients() {
    let echo = TcpEcho::start().await;
    let (compat, v6only) = (free_port(), free_port());
    let listener = |name: &str, port: u16, compat: bool| {
        format!(
            r#"  - name: {name}
    address: {{ socket_address: {{ address: "::", port_value: {port}, ipv4_compat: {compat} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: echo
"#
        )
    };
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
{}{}  clusters:
{}"#,
        listener("compat", compat, true),
        listener("v6only", v6only, false),
        cluster("echo", &[echo.addr], "")
    );
    let _p = ProxyProcess::start(&config).await;
    let v4 = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = |port| std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    for port in [compat, v6only] {
        echo_through(v6(port)).await.expect("IPv6 client on ::1");
    }
    echo_through(v4(compat))
        .await
        .expect("IPv4 client on an ipv4_compat listener");
    assert!(
        echo_through(v4(v6only)).await.is_err(),
        "a v6-only listener took an IPv4 client"
    );
}

/// A connection the idle timeout closes still logs the bytes that crossed
/// it, as Envoy does.
#[tokio::test]
async fn an_idle_closed_connection_logs_its_bytes() {
    let echo = TcpEcho::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("tcp.log");
    let port = free_port();
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_echo
          cluster: echo
          idle_timeout: 0.2s
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: "%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n" }} }}
  clusters:
{}"#,
        log.display(),
        cluster("echo", &[echo.addr], "")
    );
    let _p = ProxyProcess::start(&config).await;
    let mut s = tokio::net::TcpStream::connect(loopback(port))
        .await
        .expect("connect");
    s.write_all(b"hello").await.expect("write");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.expect("echo");
    // Held open and quiet until the proxy closes it.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .expect("read to the end");
    let line = trellis_tests::eventually(Duration::from_secs(5), "the log line", || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.ends_with('\n'))
    })
    .await;
    assert_eq!(line, "5 5 1\n");
}
