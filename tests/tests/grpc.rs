//! gRPC through the proxy: every RPC shape, status trailers, deadlines and
//! the proxy's own gRPC error replies, with a tonic client and server.
//!
//! Runs against trellis-proxy, or against stock Envoy with
//! `TRELLIS_TEST_PROXY=envoy` (which is how the expectations were checked).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use trellis_tests::config::{cluster, http_proxy, H2_UPSTREAM};
use trellis_tests::grpc::pb::{EchoRequest, EchoResponse};
use trellis_tests::grpc::{
    self, connect, decode_grpc_message, raw_grpc_status, raw_message, raw_unary, GrpcEcho,
    FAIL_TRAILER,
};
use trellis_tests::process::{proxy_under_test, ProxyProcess};
use trellis_tests::{eventually, loopback, refused_address, within};

const LIMIT: Duration = Duration::from_secs(60);

/// All gRPC to the h2 cluster `grpc`; `route_extra` is spliced into the route
/// action (YAML flow-map entries).
fn vhosts(route_extra: &str) -> String {
    format!(
        r#"          - name: all
            domains: ["*"]
            routes:
            - match: {{ prefix: "/" }}
              route: {{ cluster: grpc{route_extra} }}
"#
    )
}

async fn proxy_to(upstream: SocketAddr, route_extra: &str) -> (ProxyProcess, SocketAddr) {
    let clusters = [cluster("grpc", &[upstream], H2_UPSTREAM)];
    let (p, port) = ProxyProcess::start_on_free_port(
        &proxy_under_test(),
        |port| http_proxy(port, &vhosts(route_extra), &clusters, ""),
        &[],
    )
    .await;
    (p, loopback(port))
}

fn req(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn unary_round_trip_with_metadata() {
    within(LIMIT, "unary", async {
        let upstream = GrpcEcho::start("grpc-a").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        let mut request = tonic::Request::new(req("hello"));
        request
            .metadata_mut()
            .insert("x-client", "c1".parse().expect("ascii"));
        request.metadata_mut().insert_bin(
            "x-data-bin",
            tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
        );
        let resp = client
            .unary(request)
            .await
            .expect("unary call through the proxy");
        assert_eq!(
            resp.metadata().get("x-upstream").map(|v| v.to_str().ok()),
            Some(Some("grpc-a")),
            "response metadata from the upstream arrives"
        );
        let EchoResponse {
            message, metadata, ..
        } = resp.into_inner();
        assert_eq!(message, "hello");
        let has = |line: &str| metadata.iter().any(|l| l == line);
        let has_name = |name: &str| metadata.iter().any(|l| l.starts_with(&format!("{name}: ")));
        assert!(
            has("x-client: c1"),
            "client metadata reaches the upstream: {metadata:#?}"
        );
        assert!(
            has_name("x-data-bin"),
            "binary metadata reaches the upstream: {metadata:#?}"
        );
        assert!(
            has("te: trailers"),
            "te: trailers survives hop-by-hop stripping: {metadata:#?}"
        );
        assert!(has("content-type: application/grpc"), "{metadata:#?}");
        assert!(has("x-forwarded-proto: http"), "{metadata:#?}");
        assert!(has_name("x-request-id"), "{metadata:#?}");
        assert_eq!(upstream.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn server_streaming_many_messages_in_order() {
    within(LIMIT, "server streaming", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        // 5000 × ~1 KiB: several times any default HTTP/2 window, so flow
        // control on both legs of the proxy has to work.
        const N: u32 = 5000;
        let body = grpc::payload(1024);
        let mut stream = client
            .server_stream(EchoRequest {
                message: body.clone(),
                count: N,
                ..Default::default()
            })
            .await
            .expect("server stream starts")
            .into_inner();
        let mut next = 0;
        while let Some(item) = stream.next().await {
            let item = item.unwrap_or_else(|s| panic!("stream item {next} failed: {s:?}"));
            assert_eq!(item.index, next, "replies arrive in order");
            assert_eq!(item.message.len(), body.len());
            next += 1;
        }
        assert_eq!(next, N, "every reply arrives, then a clean OK end");
    })
    .await;
}

#[tokio::test]
async fn client_streaming_many_messages() {
    within(LIMIT, "client streaming", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        const N: usize = 1000;
        let outbound = futures::stream::iter((0..N).map(|i| req(&i.to_string())));
        let resp = client
            .client_stream(outbound)
            .await
            .expect("client stream call")
            .into_inner();
        assert_eq!(resp.index as usize, N);
        let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(resp.message, expected.join(","));
    })
    .await;
}

#[tokio::test]
async fn bidi_ping_pong_is_not_buffered() {
    within(LIMIT, "bidi", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(req("ping-0")).await.expect("queue first ping");
        let mut inbound = client
            .bidi(ReceiverStream::new(rx))
            .await
            .expect("bidi call starts")
            .into_inner();
        // Each reply must arrive before the next request is sent: a proxy that
        // buffered either direction until end of stream would hang here.
        for i in 0..50u32 {
            if i > 0 {
                tx.send(req(&format!("ping-{i}"))).await.expect("send ping");
            }
            let pong = tokio::time::timeout(Duration::from_secs(5), inbound.next())
                .await
                .unwrap_or_else(|_| panic!("no reply to ping {i} within 5s"))
                .expect("stream still open")
                .expect("reply is OK");
            assert_eq!(
                (pong.index, pong.message.as_str()),
                (i, format!("ping-{i}").as_str())
            );
        }
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), inbound.next())
            .await
            .expect("the stream ends after the client half-closes");
        assert!(end.is_none(), "clean end of stream, got {end:?}");
    })
    .await;
}

#[tokio::test]
async fn error_status_message_and_trailers_arrive_intact() {
    within(LIMIT, "error trailers", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        // Non-ASCII, '%' and newlines: grpc-message is percent-encoded on the
        // wire and must not be re-encoded or decoded by the proxy.
        let text = "quota exceeded: 100% of «café»\nretry later";

        // Unary failure: tonic sends a trailers-only response (grpc-status in
        // the HEADERS frame, with END_STREAM).
        let err = client
            .unary(EchoRequest {
                message: text.into(),
                fail_code: Code::ResourceExhausted as i32,
                ..Default::default()
            })
            .await
            .expect_err("the server fails the call");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(err.message(), text);
        assert_eq!(
            err.metadata().get(FAIL_TRAILER).map(|v| v.to_str().ok()),
            Some(Some("trailer-value")),
            "custom trailer metadata next to grpc-status: {err:?}"
        );

        // Streaming failure: data first, then real trailers.
        let mut stream = client
            .server_stream(EchoRequest {
                message: text.into(),
                count: 3,
                fail_code: Code::FailedPrecondition as i32,
                ..Default::default()
            })
            .await
            .expect("stream starts")
            .into_inner();
        for i in 0..3 {
            let item = stream.next().await.expect("item").expect("item is OK");
            assert_eq!(item.index, i);
        }
        let err = stream
            .next()
            .await
            .expect("the stream ends with a status")
            .expect_err("the status is not OK");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(err.message(), text);
        assert_eq!(
            err.metadata().get(FAIL_TRAILER).map(|v| v.to_str().ok()),
            Some(Some("trailer-value")),
            "{err:?}"
        );
        assert!(stream.next().await.is_none());

        // On the wire, without tonic's interpretation: HTTP 200, and the
        // upstream's trailers-only reply stays in the response headers.
        let raw = raw_unary(
            front,
            &EchoRequest {
                message: text.into(),
                fail_code: Code::ResourceExhausted as i32,
                ..Default::default()
            },
            &[],
        )
        .await
        .expect("raw gRPC call");
        assert_eq!(raw.status, 200);
        let (code, message) = raw_grpc_status(&raw).expect("grpc-status on the wire");
        assert_eq!(code, Code::ResourceExhausted as i32);
        assert_eq!(decode_grpc_message(&message), text);
    })
    .await;
}

/// `max_stream_duration.grpc_timeout_header_max: 0s` makes `grpc-timeout` the
/// route timeout (0 = uncapped).
const HONOUR_GRPC_TIMEOUT: &str = ", max_stream_duration: { grpc_timeout_header_max: 0s }";

#[tokio::test]
async fn grpc_timeout_is_honoured_when_the_route_asks() {
    within(LIMIT, "grpc deadline", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, HONOUR_GRPC_TIMEOUT).await;
        let slow = EchoRequest {
            message: "slow".into(),
            delay_ms: 5000,
            ..Default::default()
        };
        // Raw HTTP/2: tonic's channel would enforce grpc-timeout itself and
        // race the proxy; here only the proxy can end the call early.
        let started = Instant::now();
        let reply = raw_unary(front, &slow, &[("grpc-timeout", "300m")])
            .await
            .expect("the proxy answers");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "the proxy ended the call at the deadline, took {took:?}"
        );
        // Envoy 1.40 surprised here: it is not the router's timeout ("upstream
        // request timeout", HTTP 504 → grpc-status 14) that fires but the HCM
        // stream-duration timer, whose local reply is HTTP 200, trailers-only,
        // grpc-status 4 (DEADLINE_EXCEEDED), grpc-message "downstream duration
        // timeout", and no x-envoy-upstream-service-time header.
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/grpc"),
            "{reply:?}"
        );
        let (code, message) = raw_grpc_status(&reply).expect("grpc-status in the reply");
        assert_eq!(
            (code, decode_grpc_message(&message).as_str()),
            (Code::DeadlineExceeded as i32, "downstream duration timeout"),
            "{reply:?}"
        );
        // The proxy resets the upstream stream, so the server sees the cancel.
        eventually(
            Duration::from_secs(10),
            "the upstream call to be cancelled",
            || {
                let n = upstream.cancelled();
                async move { (n >= 1).then_some(()) }
            },
        )
        .await;

        // A request without grpc-timeout falls back to the route timeout
        // (15s default) and succeeds even though it is slower than 300ms.
        let ok = raw_unary(
            front,
            &EchoRequest {
                message: "no deadline".into(),
                delay_ms: 600,
                ..Default::default()
            },
            &[],
        )
        .await
        .expect("the proxy answers");
        assert_eq!(raw_grpc_status(&ok), Some((0, String::new())), "{ok:?}");
    })
    .await;
}

/// Without `max_stream_duration` Envoy neither enforces nor rewrites
/// `grpc-timeout`: it is an ordinary header for the upstream to honour (ours
/// deliberately does not), and the route timeout (15s default) applies.
#[tokio::test]
async fn grpc_timeout_is_forwarded_not_enforced_without_max_stream_duration() {
    within(LIMIT, "grpc deadline not enforced", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let reply = raw_unary(
            front,
            &EchoRequest {
                message: "slowish".into(),
                delay_ms: 800,
                ..Default::default()
            },
            &[("grpc-timeout", "200m")],
        )
        .await
        .expect("the proxy answers");
        assert_eq!(
            raw_grpc_status(&reply),
            Some((0, String::new())),
            "{reply:?}"
        );
        let seen = raw_message(&reply).expect("an EchoResponse in the body");
        assert!(
            seen.metadata.iter().any(|l| l == "grpc-timeout: 200m"),
            "grpc-timeout reaches the upstream unchanged: {:#?}",
            seen.metadata
        );
    })
    .await;
}

#[tokio::test]
async fn upstream_down_is_unavailable() {
    within(LIMIT, "upstream down", async {
        // Bound but not listening: refuses connections, and no other test
        // can take the port meanwhile.
        let (dead, _guard) = refused_address();
        let (_p, front) = proxy_to(dead, "").await;
        let mut client = connect(front).await;
        let err = client
            .unary(req("anyone?"))
            .await
            .expect_err("nobody listens upstream");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().starts_with("upstream connect error"),
            "{err:?}"
        );

        // On the wire: Envoy's local reply to a gRPC request is HTTP 200,
        // trailers-only, grpc-status 14 — not an HTTP 503.
        let reply = raw_unary(front, &req("anyone?"), &[])
            .await
            .expect("the proxy answers");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/grpc"),
            "{reply:?}"
        );
        assert!(reply.body.is_empty(), "{reply:?}");
        let (code, message) = reply
            .header("grpc-status")
            .map(|c| (c, reply.header("grpc-message").unwrap_or("")))
            .expect("grpc-status in the (trailers-only) headers");
        assert_eq!(code, "14", "{reply:?}");
        assert!(
            decode_grpc_message(message).starts_with("upstream connect error"),
            "{reply:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_calls_share_one_connection() {
    within(LIMIT, "concurrent unary calls", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        // One tonic channel = one HTTP/2 connection: 200 calls in flight at
        // once are 200 concurrent streams the proxy must keep apart.
        let client = connect(front).await;
        const N: usize = 200;
        let calls = (0..N).map(|i| {
            let mut client = client.clone();
            async move {
                let r = client
                    .unary(EchoRequest {
                        message: format!("call-{i}"),
                        delay_ms: (i % 7) as u32 * 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
                (i, r.into_inner().message)
            }
        });
        for (i, message) in futures::future::join_all(calls).await {
            assert_eq!(message, format!("call-{i}"), "replies are not mixed up");
        }
        assert_eq!(upstream.calls(), N as u64);
    })
    .await;
}

#[tokio::test]
async fn large_messages_both_ways() {
    within(LIMIT, "large messages", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        // 3 MiB each way (tonic's default limit is 4 MiB): one message far
        // larger than the 64 KiB initial HTTP/2 windows.
        let big = grpc::payload(3 * 1024 * 1024);
        let reply = client
            .unary(req(&big))
            .await
            .expect("large unary call")
            .into_inner();
        assert_eq!(reply.message.len(), big.len());
        assert!(reply.message == big, "payload arrives unchanged");
    })
    .await;
}

#[tokio::test]
async fn client_cancellation_reaches_the_upstream() {
    within(LIMIT, "client cancel", async {
        let upstream = GrpcEcho::start("grpc").await;
        let (_p, front) = proxy_to(upstream.addr, "").await;
        let mut client = connect(front).await;
        let mut stream = client
            .server_stream(EchoRequest {
                message: "tick".into(),
                count: 100_000,
                delay_ms: 5,
                ..Default::default()
            })
            .await
            .expect("stream starts")
            .into_inner();
        for i in 0..3 {
            let item = stream.next().await.expect("item").expect("item is OK");
            assert_eq!(item.index, i);
        }
        assert_eq!(upstream.cancelled(), 0);
        // Dropping the stream resets it (RST_STREAM CANCEL); the proxy must
        // reset the upstream stream too, or the server streams forever.
        drop(stream);
        eventually(
            Duration::from_secs(10),
            "the upstream stream to be cancelled",
            || {
                let n = upstream.cancelled();
                async move { (n >= 1).then_some(()) }
            },
        )
        .await;
    })
    .await;
}
