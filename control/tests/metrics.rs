//! trellis-control's own `/metrics`, on the real binary: the counts agree
//! with the API requests, ADS streams, pushes, ACKs and NACKs done here, and
//! `promtool check metrics` finds nothing wrong with the exposition.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use support::Server;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_protos::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use xds_protos::google::rpc::Status;
use xds_protos::type_url::{CLUSTER, LISTENER};

/// A plain, unsigned HTTP/1.1 request: `(status, body)`.
fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn promtool(exposition: &str) -> String {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool exits");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The status that ends a stream the server refused.
async fn next_status(mut rx: tonic::Streaming<DiscoveryResponse>) -> tonic::Status {
    match tokio::time::timeout(Duration::from_secs(5), rx.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected the stream to be refused, got {other:?}"),
    }
}

async fn next(rx: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await
        .expect("a response within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_api_requests_streams_pushes_and_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--xds-plaintext"]);
    let c = server.client();
    c.call("CreateMesh", &json!({"meshName": "a"}))
        .await
        .expect("create");
    c.call("CreateMesh", &json!({"meshName": "a"}))
        .await
        .expect_err("a conflict");
    c.call("DescribeMesh", &json!({"meshName": "nope"}))
        .await
        .expect_err("not found");
    for _ in 0..3 {
        c.call("ListMeshes", &json!({})).await.expect("list");
    }
    let addr = server.addr;
    let (status, _) = tokio::task::spawn_blocking(move || raw(addr, "GET", "/v20190125/meshes"))
        .await
        .expect("join");
    assert_eq!(status, 403, "unsigned");
    let (status, _) = tokio::task::spawn_blocking(move || raw(addr, "GET", "/made/up/path"))
        .await
        .expect("join");
    assert_eq!(status, 403, "unsigned, unknown path");

    let url = format!("http://{}", server.xds);
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect to ADS");
    let node = Node {
        id: "mesh/a/virtualNode/x".into(),
        ..Default::default()
    };
    let subscribe = |token: Option<&str>| {
        let (tx, rx) = mpsc::channel(8);
        for type_url in [CLUSTER, LISTENER] {
            tx.try_send(DiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.into(),
                ..Default::default()
            })
            .expect("subscribe");
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().expect("ascii");
            request.metadata_mut().insert("authorization", value);
        }
        (tx, request)
    };
    // By default a stream must prove its node: without a token it is
    // refused (and counted, and logged) before anything is served.
    let (_refused_tx, request) = subscribe(None);
    let refused = match client.stream_aggregated_resources(request).await {
        Ok(stream) => next_status(stream.into_inner()).await,
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let token = c
        .trellis(
            http::Method::POST,
            "/trellis/v1/tokens",
            json!({"meshName": "a", "virtualNodeName": "x", "reuse": true})
                .to_string()
                .into_bytes(),
        )
        .await
        .expect("a token");
    let token = token["token"].as_str().expect("token text").to_string();
    let (tx, request) = subscribe(Some(&token));
    let mut rx = client
        .stream_aggregated_resources(request)
        .await
        .expect("sotw stream")
        .into_inner();
    for _ in 0..2 {
        let resp = next(&mut rx).await;
        let nack = resp.type_url == LISTENER;
        tx.send(DiscoveryRequest {
            version_info: if nack {
                String::new()
            } else {
                resp.version_info
            },
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail: nack.then(|| Status {
                code: 3,
                message: "refused on purpose".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("answer");
    }
    let (dtx, drx) = mpsc::channel(8);
    dtx.send(DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("delta subscribe");
    let mut delta = tonic::Request::new(ReceiverStream::new(drx));
    let bearer = format!("Bearer {token}").parse().expect("ascii");
    delta.metadata_mut().insert("authorization", bearer);
    let mut drx = client
        .delta_aggregated_resources(delta)
        .await
        .expect("delta stream")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), drx.message())
        .await
        .expect("a delta response")
        .expect("ok");

    // Answers are recorded when the server reads them: poll until they are.
    let mut text = String::new();
    for _ in 0..100 {
        text = tokio::task::spawn_blocking(move || raw(addr, "GET", "/metrics").1)
            .await
            .expect("join");
        if text.contains("trellis_control_xds_nacks_total{type=\"lds\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = "trellis_control_api_requests_total";
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"CreateMesh\",code=\"200\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"CreateMesh\",code=\"409\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"DescribeMesh\",code=\"404\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"ListMeshes\",code=\"200\"}}")
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"ListMeshes\",code=\"403\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{api}{{operation=\"unknown\",code=\"403\"}}")
        ),
        1.0
    );
    let xds = "trellis_control_xds";
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_connected_proxies{{stream=\"sotw\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_connected_proxies{{stream=\"delta\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("{xds}_pushes_total{{type=\"cds\"}}")),
        2.0,
        "one per stream"
    );
    assert_eq!(
        sample(&text, &format!("{xds}_pushes_total{{type=\"lds\"}}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("{xds}_acks_total{{type=\"cds\"}}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("{xds}_nacks_total{{type=\"cds\"}}")),
        0.0
    );
    assert_eq!(
        sample(&text, &format!("{xds}_nacks_total{{type=\"lds\"}}")),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_push_ack_seconds_count{{type=\"cds\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_push_ack_seconds_count{{type=\"lds\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_push_ack_seconds_bucket{{type=\"cds\",le=\"+Inf\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{xds}_streams_refused_total{{reason=\"missing\"}}")
        ),
        1.0
    );
    let log = std::fs::read_to_string(&server.log).expect("server log");
    assert!(log.contains("refused an ADS stream"), "{log}");
    let findings = promtool(&text);
    assert!(findings.trim().is_empty(), "promtool: {findings}\n{text}");

    drop((tx, rx, dtx, drx, client));
    let mut closed = false;
    for _ in 0..100 {
        let text = tokio::task::spawn_blocking(move || raw(addr, "GET", "/metrics").1)
            .await
            .expect("join");
        if sample(
            &text,
            &format!("{xds}_connected_proxies{{stream=\"sotw\"}}"),
        ) == 0.0
            && sample(
                &text,
                &format!("{xds}_connected_proxies{{stream=\"delta\"}}"),
            ) == 0.0
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "streams that ended are no longer counted");
}
