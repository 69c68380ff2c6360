//! App Mesh listeners translated whole, end to end through the API, the
//! control plane and real proxies on loopback (no interception):
//!
//! - virtual node `multi` has two listeners, `http` on app one's port and
//!   `http2` on app two's; its sidecar serves the second on a port of its
//!   own (`--listener-ingress-port`), and client `web`'s sidecar reaches
//!   each listener by the port in the Host (`multi:PORT`);
//! - a WebSocket upgrade passes a gateway and `multi`'s sidecar to app one;
//! - the gateway listener's `healthCheck` keeps it from a host whose
//!   health check fails, though that host answers requests.
//!
//! Run once with trellis-proxy and once with stock Envoy.

mod resilience_common;

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use resilience_common::Up;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::control::Control;
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, within};

fn node(name: &str, listeners: Value, backends: Value) -> Value {
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": listeners, "backends": backends}})
}

fn service(name: &str) -> Value {
    json!({"meshName": "m", "virtualServiceName": name, "spec": {
        "provider": {"virtualNode": {"virtualNodeName": name}}}})
}

fn gateway_route(name: &str, prefix: &str, service: &str) -> Value {
    json!({"meshName": "m", "virtualGatewayName": "edge", "gatewayRouteName": name, "spec": {
        "httpRoute": {"match": {"prefix": prefix}, "action": {"target": {
            "virtualService": {"virtualServiceName": service}}}}}})
}

/// Which app answered `Host: host` through the egress port, and over which
/// HTTP version it was reached.
async fn through_egress(egress: u16, host: &str) -> Option<(String, String)> {
    let r = client::request(
        Method::GET,
        &format!("http://127.0.0.1:{egress}/x"),
        &[("host", host)],
        "",
    )
    .await
    .ok()?;
    let e = (r.status == 200).then(|| r.echoed())?;
    Some((
        e["upstream"].as_str()?.to_string(),
        e["version"].as_str()?.to_string(),
    ))
}

/// A WebSocket handshake on `port`, then bytes through the tunnel.
async fn websocket(port: u16) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(loopback(port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(head);
    }
    s.write_all(b"ping through the mesh")
        .await
        .map_err(|e| e.to_string())?;
    let mut got = [0u8; 21];
    s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

async fn scenario(proxy: PathBuf) {
    let control = Control::start().await;
    let (one, two) = (Echo::start("one").await, Echo::start("two").await);
    let (p1, p2) = (one.addr.port(), two.addr.port());
    let (healthy, failing) = (Up::start("healthy").await, Up::start("failing").await);
    failing.set_healthy(false);
    let gw_port = free_port();
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node(
                "multi",
                json!([
                    {"portMapping": {"port": p1, "protocol": "http"}},
                    {"portMapping": {"port": p2, "protocol": "http2"}},
                ]),
                json!([]),
            ),
            service("multi"),
            node(
                "web",
                json!([{"portMapping": {"port": 9, "protocol": "http"}}]),
                json!([{"virtualService": {"virtualServiceName": "multi"}}]),
            ),
            node(
                "pool",
                json!([{"portMapping": {"port": 80, "protocol": "http"}}]),
                json!([]),
            ),
            service("pool"),
            json!({"meshName": "m", "virtualGatewayName": "edge", "spec": {"listeners": [{
                "portMapping": {"port": gw_port, "protocol": "http"},
                "healthCheck": {"protocol": "http", "path": "/healthz", "healthyThreshold": 2,
                    "unhealthyThreshold": 2, "intervalMillis": 5000, "timeoutMillis": 2000},
            }]}}),
            gateway_route("ws", "/ws", "multi"),
            gateway_route("pool", "/pool", "pool"),
        ])
        .await;
    // Two hosts of `pool` without sidecars: one fails its health check.
    for up in [&healthy, &failing] {
        let port = up.addr.port().to_string();
        control
            .cli(&[
                "register-instance",
                "--mesh",
                "m",
                "--virtual-node",
                "pool",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
            ])
            .await;
    }

    let (m_in, m_out, m_second) = (free_port(), free_port(), free_port());
    let second = format!("{p2}={m_second}");
    let multi_config = control
        .bootstrap(
            ("--virtual-node", "multi"),
            (m_in, m_out),
            &["--listener-ingress-port", &second],
        )
        .await;
    assert!(
        multi_config.contains(&second),
        "the mapping is in the node metadata: {multi_config}"
    );
    let _multi = ProxyProcess::start_with(&proxy, &multi_config, &[]).await;
    let (w_in, w_out) = (free_port(), free_port());
    let web_config = control
        .bootstrap(("--virtual-node", "web"), (w_in, w_out), &[])
        .await;
    let _web = ProxyProcess::start_with(&proxy, &web_config, &[]).await;
    let edge_config = control
        .bootstrap(
            ("--virtual-gateway", "edge"),
            (free_port(), free_port()),
            &[],
        )
        .await;
    let _edge = ProxyProcess::start_with(&proxy, &edge_config, &[]).await;

    // Each listener through the client's sidecar, by the port in the Host.
    let first = format!("multi:{p1}");
    let other = format!("multi:{p2}");
    let (app, version) = eventually(Duration::from_secs(10), "multi's first listener", || {
        through_egress(w_out, &first)
    })
    .await;
    assert_eq!((app.as_str(), version.as_str()), ("one", "HTTP/1.1"));
    let (app, version) = eventually(Duration::from_secs(10), "multi's second listener", || {
        through_egress(w_out, &other)
    })
    .await;
    assert_eq!(
        (app.as_str(), version.as_str()),
        ("two", "HTTP/2.0"),
        "the second listener's own protocol to its app"
    );
    let (app, _) = through_egress(w_out, "multi").await.expect("bare name");
    assert_eq!(app, "one", "the bare service name is its first port");
    // Straight into the sidecar: the ingress port is the first listener,
    // the mapped port the second.
    for (port, expected) in [(m_in, "one"), (m_second, "two")] {
        let r = client::get(&format!("http://127.0.0.1:{port}/direct"))
            .await
            .expect("multi's sidecar answers");
        assert_eq!(r.echoed()["upstream"], expected, "port {port}");
    }

    // A WebSocket through the gateway and multi's sidecar to app one.
    let echoed = eventually(Duration::from_secs(10), "a WebSocket upgrade", || async {
        within(Duration::from_secs(5), "the upgrade", websocket(gw_port))
            .await
            .ok()
    })
    .await;
    assert_eq!(echoed, "ping through the mesh");

    // The gateway's health check: the failing host gets no request.
    eventually(
        Duration::from_secs(10),
        "the gateway to reach pool",
        || async {
            let r = client::get(&format!("http://127.0.0.1:{gw_port}/pool/a"))
                .await
                .ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
    for _ in 0..20 {
        let r = client::get(&format!("http://127.0.0.1:{gw_port}/pool/a"))
            .await
            .expect("gateway answers");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("healthy"));
    }
    assert_eq!(failing.hits(), 0, "the failing host got no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_websocket_and_gateway_health_with_trellis_proxy() {
    within(
        Duration::from_secs(90),
        "the listeners scenario on trellis-proxy",
        scenario(workspace_bin("trellis-proxy")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_websocket_and_gateway_health_with_envoy() {
    within(
        Duration::from_secs(90),
        "the listeners scenario on Envoy",
        scenario(require_envoy()),
    )
    .await;
}
