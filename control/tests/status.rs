//! `trellis-control status` through the real CLI against the real server:
//! a proxy that ACKs shows SYNCED, one that NACKs shows NACKED with its
//! error under the table.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Server, BIN};
use tokio::sync::mpsc;
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_protos::google::rpc::Status;
use xds_protos::type_url::CLUSTER;

/// A state-of-the-world stream of `node` subscribed to every cluster.
struct Proxy {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Proxy {
    async fn connect(server: &Server, node: &str) -> Proxy {
        let first = DiscoveryRequest {
            node: Some(Node {
                id: node.into(),
                ..Default::default()
            }),
            type_url: CLUSTER.into(),
            ..Default::default()
        };
        let (tx, rx) = support::ads_stream(server, first).await;
        Proxy { tx, rx }
    }

    /// Answers the next cluster push: an ACK, or a NACK with `error`.
    async fn answer(&mut self, error: Option<&str>) {
        let resp = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a CDS push within 5 s")
            .expect("stream ok")
            .expect("stream open");
        self.tx
            .send(DiscoveryRequest {
                version_info: if error.is_some() {
                    String::new()
                } else {
                    resp.version_info.clone()
                },
                type_url: CLUSTER.into(),
                response_nonce: resp.nonce.clone(),
                error_detail: error.map(|e| Status {
                    code: 3,
                    message: e.into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await
            .expect("answer");
    }
}

/// `trellis-control status` (the table), signed with the server's key.
fn status(server: &Server) -> String {
    let out = std::process::Command::new(BIN)
        .args(["status", "--api-addr", &server.addr.to_string()])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(node))
        .unwrap_or_else(|| panic!("no row for {node} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_nack_and_its_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("data"),
        &["--xds-plaintext", "--require-node-tokens", "never"],
    );
    let c = server.client();
    c.call("CreateMesh", &json!({"meshName": "m"}))
        .await
        .expect("mesh");
    for name in ["good", "bad"] {
        let spec = json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
                          "serviceDiscovery": {"dns": {"hostname": format!("{name}.local")}}});
        c.call(
            "CreateVirtualNode",
            &json!({"meshName": "m", "virtualNodeName": name, "spec": spec}),
        )
        .await
        .expect("node");
    }
    let mut good = Proxy::connect(&server, "mesh/m/virtualNode/good").await;
    let mut bad = Proxy::connect(&server, "mesh/m/virtualNode/bad").await;
    good.answer(None).await;
    bad.answer(Some(
        "cluster cds_ingress_m_bad_http_8080: refused for the test",
    ))
    .await;

    // The answers reach the registry asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let table = loop {
        let table = status(&server);
        if table.contains("NACKED") && table.contains("SYNCED") || Instant::now() > deadline {
            break table;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NODE", "ADDRESS", "STREAM", "CDS", "EDS", "LDS", "RDS"],
        "{table}"
    );
    let bad_row = row(&table, "mesh/m/virtualNode/bad");
    assert!(
        bad_row.contains("sotw") && bad_row.contains("NACKED (none)"),
        "{table}"
    );
    let good_row = row(&table, "mesh/m/virtualNode/good");
    assert!(
        good_row.contains("SYNCED (") && !good_row.contains("NACKED"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l
            == "mesh/m/virtualNode/bad CDS NACK: cluster cds_ingress_m_bad_http_8080: refused for the test"),
        "{table}"
    );
    assert!(!table.contains("virtualNode/good CDS NACK"), "{table}");
}
