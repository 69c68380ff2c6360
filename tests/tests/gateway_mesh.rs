//! A virtual gateway end to end, configured only through the App Mesh API:
//! TLS at the edge with file certificates made here, gateway routes into a
//! virtual router, and mTLS from the gateway (its mesh-issued SVID) to
//! STRICT sidecars in front of the apps.
//!
//! client --TLS--> gateway `edge` --mTLS--> sidecar blue  --> app blue
//!                                      \--> sidecar green --> app green
//!
//! The sidecars accept the gateway because its routes reach their services;
//! a second gateway, whose routes reach only a decoy service that happens
//! to resolve to blue's sidecar, is refused there.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_tests::control::Control;
use trellis_tests::process::{workspace_bin, ProxyProcess};
use trellis_tests::tls::{client_config, https_get, Ca, HttpsReply, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, within};

async fn bootstrap(control: &Control, kind: &str, name: &str, ports: (u16, u16)) -> String {
    let (i, e) = (ports.0.to_string(), ports.1.to_string());
    control
        .cli(&[
            "bootstrap",
            "--mesh",
            "m",
            kind,
            name,
            "--xds-addr",
            &control.xds,
            "--admin-port",
            "0",
            "--listener-address",
            "127.0.0.1",
            "--ingress-port",
            &i,
            "--egress-port",
            &e,
        ])
        .await
}

fn mesh_tls() -> Value {
    json!({
        "certificate": {"sds": {"secretName": "trellis-svid"}},
        "validation": {"trust": {"sds": {"secretName": "trellis-ca"}}},
    })
}

/// A node in front of an app on `port`, STRICT with mesh identities.
fn strict_node(name: &str, port: u16) -> Value {
    let mut tls = mesh_tls();
    tls["mode"] = json!("STRICT");
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}, "tls": tls}],
    }})
}

fn file_cert(dir: &Path, name: &str, issued: &Issued) -> Value {
    let (crt, key) = issued.write(dir, name);
    json!({"file": {"certificateChain": crt, "privateKey": key}})
}

/// A gateway with a TLS listener on `port` (and, if `edge_mtls`, a second
/// one on `mtls_port` that requires a client certificate from `edge_ca`
/// naming `partner.example.com`), presenting its SVID to the mesh.
fn gateway(name: &str, listeners: Vec<Value>) -> Value {
    let mut policy = mesh_tls();
    policy["enforce"] = json!(true);
    json!({"meshName": "m", "virtualGatewayName": name, "spec": {
        "listeners": listeners,
        "backendDefaults": {"clientPolicy": {"tls": policy}},
    }})
}

/// `port` names the gateway listener served, which App Mesh requires when
/// the gateway has several.
fn gateway_route(
    gateway: &str,
    name: &str,
    prefix: &str,
    service: &str,
    port: Option<u16>,
) -> Value {
    let mut route = json!({"meshName": "m", "virtualGatewayName": gateway, "gatewayRouteName": name, "spec": {
        "httpRoute": {"match": {"prefix": prefix},
            "action": {"target": {"virtualService": {"virtualServiceName": service}}}}
    }});
    if let Some(port) = port {
        route["spec"]["httpRoute"]["match"]["port"] = json!(port);
    }
    route
}

async fn get(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Issued>,
    path: &str,
) -> anyhow::Result<HttpsReply> {
    https_get(
        addr,
        "shop.example.com",
        client_config(&ca.pem, client, &["h2", "http/1.1"]),
        path,
    )
    .await
}

#[tokio::test]
async fn a_tls_gateway_routes_into_a_strict_mesh() {
    within(Duration::from_secs(120), "gateway into the mesh", async {
        let proxy = workspace_bin("trellis-proxy");
        let control = Control::start().await;
        let dir = control.dir.path().to_path_buf();
        let edge_ca = Ca::new("edge CA");
        let server = edge_ca.issue(&Leaf::new(&["shop.example.com"], &[]));
        let partner = edge_ca.issue(&Leaf::new(&["partner.example.com"], &[]));
        let stranger = edge_ca.issue(&Leaf::new(&["stranger.example.com"], &[]));
        let ca_file = edge_ca.write(&dir, "edge-ca");

        let blue = Echo::start("blue").await;
        let green = Echo::start("green").await;
        let (gw_port, mtls_port, decoy_port) = (free_port(), free_port(), free_port());
        let (sb, sg) = ((free_port(), free_port()), (free_port(), free_port()));
        let listener = |port: u16, validation: Option<Value>| {
            let mut tls = json!({"mode": "STRICT", "certificate": file_cert(&dir, "shop", &server)});
            if let Some(v) = validation {
                tls["validation"] = v;
            }
            json!({"portMapping": {"port": port, "protocol": "http"}, "tls": tls})
        };
        control
            .apply(&[
                json!({"meshName": "m", "spec": {}}),
                strict_node("blue", blue.addr.port()),
                strict_node("green", green.addr.port()),
                json!({"meshName": "m", "virtualNodeName": "decoy", "spec": {
                    "listeners": [{"portMapping": {"port": blue.addr.port(), "protocol": "http"}}]}}),
                json!({"meshName": "m", "virtualRouterName": "r", "spec": {
                    "listeners": [{"portMapping": {"port": blue.addr.port(), "protocol": "http"}}]}}),
                json!({"meshName": "m", "virtualRouterName": "r", "routeName": "canary", "spec": {
                    "priority": 1,
                    "httpRoute": {"match": {"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "1"}}]},
                        "action": {"weightedTargets": [{"virtualNode": "green", "weight": 1, "port": green.addr.port()}]}}}}),
                json!({"meshName": "m", "virtualRouterName": "r", "routeName": "rest", "spec": {
                    "priority": 2,
                    "httpRoute": {"match": {"prefix": "/"},
                        "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}}}}),
                json!({"meshName": "m", "virtualServiceName": "shop.m", "spec": {
                    "provider": {"virtualRouter": {"virtualRouterName": "r"}}}}),
                json!({"meshName": "m", "virtualServiceName": "decoy.m", "spec": {
                    "provider": {"virtualNode": {"virtualNodeName": "decoy"}}}}),
                gateway("edge", vec![
                    listener(gw_port, None),
                    listener(mtls_port, Some(json!({
                        "trust": {"file": {"certificateChain": ca_file}},
                        "subjectAlternativeNames": {"match": {"exact": ["partner.example.com"]}},
                    }))),
                ]),
                gateway_route("edge", "shop", "/shop", "shop.m", Some(gw_port)),
                gateway_route("edge", "shop-partners", "/shop", "shop.m", Some(mtls_port)),
                gateway("sneaky", vec![json!({"portMapping": {"port": decoy_port, "protocol": "http"}})]),
                gateway_route("sneaky", "decoy", "/", "decoy.m", None),
            ])
            .await;
        let _blue_sidecar =
            ProxyProcess::start_with(&proxy, &bootstrap(&control, "--virtual-node", "blue", sb).await, &[]).await;
        let _green_sidecar =
            ProxyProcess::start_with(&proxy, &bootstrap(&control, "--virtual-node", "green", sg).await, &[]).await;
        // decoy's only instance is blue's sidecar.
        let ingress = sb.0.to_string();
        control
            .cli(&["register-instance", "--mesh", "m", "--virtual-node", "decoy",
                "--address", "127.0.0.1", "--port", &ingress])
            .await;
        let gateway_ports = (free_port(), free_port());
        let _edge = ProxyProcess::start_with(
            &proxy,
            &bootstrap(&control, "--virtual-gateway", "edge", gateway_ports).await,
            &[],
        )
        .await;
        let _sneaky = ProxyProcess::start_with(
            &proxy,
            &bootstrap(&control, "--virtual-gateway", "sneaky", (free_port(), free_port())).await,
            &[],
        )
        .await;

        // /shop/items: the gateway strips /shop, sets the Host to the
        // service, and the router's catch-all sends it to blue.
        let reply = eventually(Duration::from_secs(20), "blue through the gateway", || async {
            get(loopback(gw_port), &edge_ca, None, "/shop/items?q=1")
                .await
                .ok()
                .filter(|r| r.status == 200)
        })
        .await;
        let seen: Value = serde_json::from_str(&reply.body).expect("echo JSON");
        assert_eq!(seen["upstream"], "blue", "{seen}");
        assert_eq!(seen["path"], "/items?q=1", "{seen}");
        assert_eq!(seen["headers"]["host"], "shop.m", "{seen}");
        // The router's header route, through the same gateway route.
        let r = trellis_tests::tls::https_get_with(
            loopback(gw_port),
            "shop.example.com",
            client_config(&edge_ca.pem, None, &["http/1.1"]),
            "/shop",
            &[("x-canary", "1")],
        )
        .await
        .expect("canary");
        let seen: Value = serde_json::from_str(&r.body).expect("echo JSON");
        assert_eq!((r.status, seen["upstream"].as_str()), (200, Some("green")), "{seen}");
        assert_eq!(seen["path"], "/", "{seen}");
        // Outside the gateway route's prefix: the gateway's own 404.
        let r = get(loopback(gw_port), &edge_ca, None, "/elsewhere").await.expect("404");
        assert_eq!(r.status, 404);

        // mTLS at the edge: the partner's certificate is accepted, others
        // (wrong SAN, none) are refused in the handshake.
        let r = get(loopback(mtls_port), &edge_ca, Some(&partner), "/shop/x")
            .await
            .expect("partner");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(get(loopback(mtls_port), &edge_ca, Some(&stranger), "/shop/x").await.is_err());
        assert!(get(loopback(mtls_port), &edge_ca, None, "/shop/x").await.is_err());

        // The sneaky gateway reaches blue's sidecar with a valid SVID, but
        // none of its routes reach blue's services: refused.
        let before = blue.count();
        for _ in 0..3 {
            let r = client::get(&format!("http://127.0.0.1:{decoy_port}/")).await;
            let status = r.map(|r| r.status).unwrap_or(0);
            assert_ne!(status, 200, "the decoy route reached blue");
        }
        assert_eq!(blue.count(), before, "blue was reached by a gateway not allowed");
    })
    .await;
}
