//! Hostile and malformed HTTP/1.1: rejected with 4xx, never forwarded.

use std::time::Duration;

use trellis_tests::client::raw;
use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;
use trellis_tests::{free_port, loopback};

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

async fn setup(hcm_extra: &str) -> (ProxyProcess, Echo, std::net::SocketAddr) {
    let app = Echo::start("app").await;
    let port = free_port();
    let p = ProxyProcess::start(&http_proxy(
        port,
        CATCH_ALL,
        &[cluster("app", &[app.addr], "")],
        hcm_extra,
    ))
    .await;
    (p, app, loopback(port))
}

fn status_of(reply: &str) -> Option<u16> {
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_never_reach_upstream() {
    let (_p, app, addr) = setup("").await;
    let cases: &[&[u8]] = &[
        // Conflicting duplicate Content-Length.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        // Bad chunk size.
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        // obs-fold.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        // Bare CR inside a header value.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
    ];
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let reply = raw(addr, case, Duration::from_secs(3)).await;
        if status_of(&reply) != Some(400) {
            wrong.push(format!(
                "case {i}: expected 400, got {:?}",
                reply.lines().next()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(app.count(), 0, "a malformed request reached the upstream");
}

#[tokio::test]
async fn content_length_with_chunked_gets_400() {
    let (_p, app, addr) = setup("").await;
    let reply = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&reply), Some(400), "{reply:?}");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_p, app, addr) = setup("          max_request_headers_kb: 2\n").await;
    let big = "a".repeat(4096);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let reply = raw(addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&reply), Some(431), "{reply:?}");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (_p, _app, addr) = setup("          request_headers_timeout: 0.3s\n").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn garbage_does_not_kill_the_proxy() {
    let (_p, app, addr) = setup("").await;
    for junk in [
        &b"\x00\x01\x02\xff\xfe"[..],
        b"GET\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let _ = raw(addr, junk, Duration::from_millis(500)).await;
    }
    let r = trellis_tests::client::get(&format!("http://{addr}/"))
        .await
        .expect("still serving");
    assert_eq!(r.status, 200);
    assert_eq!(app.count(), 1);
}

/// Writes `parts` with a pause between them, so the proxy reads them apart,
/// and returns everything the proxy sent until it closed.
async fn raw_parts(addr: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for part in parts {
        let _ = s.write_all(part).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "connection still open: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_heads_split_across_reads_get_400() {
    let (_p, app, addr) = setup("").await;
    let reply = raw_parts(
        addr,
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Enc",
            b"oding: chunked\r\nContent-Le",
            b"ngth: 4\r\n",
            b"\r\n0\r\n\r\n",
        ],
    )
    .await;
    assert_eq!(status_of(&reply), Some(400), "{reply:?}");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn bad_chunk_size_after_the_head_closes_the_connection() {
    let (_p, _app, addr) = setup("").await;
    let reply = raw_parts(
        addr,
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
        ],
    )
    .await;
    assert_ne!(status_of(&reply), Some(200), "{reply:?}");
}

#[tokio::test]
async fn no_request_is_read_after_an_upgrade_that_did_not_happen() {
    let (_p, app, addr) = setup("").await;
    // Not a websocket handshake (no `Connection: upgrade`), so it is proxied
    // as a plain request; what follows it must not be read as a request.
    let reply = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\
          POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&reply), Some(200), "{reply:?}");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply:?}");
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn slow_request_body_gets_408_after_request_timeout() {
    let (p, _app, addr) = setup("          request_timeout: 0.3s\n").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pid = p.child.id().expect("proxy running");
    let watch = trellis_tests::rss::RssWatch::start(pid);
    // 20 clients that promise a body and send only part of it.
    let slow = (0..20).map(|_| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .expect("write");
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the proxy answers and closes")
            .expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    });
    // Meanwhile a well-behaved client is served.
    let url = format!("http://{addr}/ok");
    let (replies, other) = tokio::join!(
        futures::future::join_all(slow),
        trellis_tests::client::get(&url)
    );
    watch.finish("20 slow request bodies");
    assert_eq!(other.expect("another client is served").status, 200);
    for reply in replies {
        assert_eq!(status_of(&reply), Some(408), "{reply}");
    }
    assert_eq!(p.stat("http.ingress_http.downstream_rq_timeout").await, 20);
}
