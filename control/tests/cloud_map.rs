//! Cloud Map service discovery end to end, on the real binary: `awsCloudMap`
//! virtual nodes are accepted by the API, instances registered for their
//! Cloud Map service with `trellis-control register-instance --namespace
//! --service --attribute` reach clients over EDS when their attributes match,
//! and leave it when deregistered.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Server, BIN};
use tokio::sync::mpsc;
use xds_protos::envoy::config::core::v3::{address, Node};
use xds_protos::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_protos::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_protos::type_url::CLUSTER_LOAD_ASSIGNMENT;

const CLUSTER: &str = "cds_egress_m_color_http_9080";

/// `trellis-control register-instance ...` against `server`, signed with its
/// credentials file.
async fn cli(server: &Server, args: &[&str]) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("register-instance")
        .args(args)
        .arg("--api-addr")
        .arg(server.addr.to_string())
        .arg("--data-dir")
        .arg(&server.data_dir);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "register-instance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The endpoints of a ClusterLoadAssignment response, as `ip:port`.
fn endpoints(resp: &DiscoveryResponse) -> Vec<String> {
    let mut out = Vec::new();
    for any in &resp.resources {
        let cla: ClusterLoadAssignment = xds_protos::any::unpack(any).expect("a load assignment");
        assert_eq!(cla.cluster_name, CLUSTER);
        for ep in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(address::Address::SocketAddress(sa)) = ep
                .host_identifier
                .as_ref()
                .and_then(|h| match h {
                    xds_protos::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e) => e.address.as_ref(),
                    _ => None,
                })
                .and_then(|a| a.address.as_ref())
            else {
                panic!("an endpoint without a socket address")
            };
            let port = match sa.port_specifier {
                Some(
                    xds_protos::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                        p,
                    ),
                ) => p,
                _ => 0,
            };
            out.push(format!("{}:{port}", sa.address));
        }
    }
    out.sort();
    out
}

struct Eds {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Eds {
    /// An ADS stream of node `front`, subscribed to `color`'s endpoints.
    async fn subscribe(server: &Server) -> Eds {
        let first = DiscoveryRequest {
            node: Some(Node {
                id: "mesh/m/virtualNode/front".into(),
                ..Default::default()
            }),
            resource_names: vec![CLUSTER.into()],
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            ..Default::default()
        };
        let (tx, rx) = support::ads_stream(server, first).await;
        Eds { tx, rx }
    }

    /// The next EDS response, ACKed.
    async fn next(&mut self) -> Vec<String> {
        let resp = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("an EDS push within 5 s")
            .expect("stream ok")
            .expect("stream open");
        self.tx
            .send(DiscoveryRequest {
                version_info: resp.version_info.clone(),
                resource_names: vec![CLUSTER.into()],
                type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ACK");
        endpoints(&resp)
    }
}

/// Mesh `m`: `awsCloudMap` nodes `color` (instances with `version=v1`) and
/// `front`, whose backend is `color`'s virtual service.
async fn create_mesh(c: &trellis_control::api::client::Client) {
    let color = json!({
        "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "color",
            "attributes": [{"key": "version", "value": "v1"}]}},
    });
    let front = json!({
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "front"}},
        "backends": [{"virtualService": {"virtualServiceName": "color.m.local"}}],
    });
    for (op, input) in [
        ("CreateMesh", json!({"meshName": "m"})),
        (
            "CreateVirtualNode",
            json!({"meshName": "m", "virtualNodeName": "color", "spec": color}),
        ),
        (
            "CreateVirtualNode",
            json!({"meshName": "m", "virtualNodeName": "front", "spec": front}),
        ),
        (
            "CreateVirtualService",
            json!({"meshName": "m", "virtualServiceName": "color.m.local",
                   "spec": {"provider": {"virtualNode": {"virtualNodeName": "color"}}}}),
        ),
    ] {
        c.call(op, &input)
            .await
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_map_instances_flow_from_the_registry_to_eds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("data"),
        &["--xds-plaintext", "--require-node-tokens", "never"],
    );
    let c = server.client();
    create_mesh(&c).await;
    let described = c
        .call(
            "DescribeVirtualNode",
            &json!({"meshName": "m", "virtualNodeName": "color"}),
        )
        .await
        .expect("describe");
    assert_eq!(
        described["virtualNode"]["spec"]["serviceDiscovery"]["awsCloudMap"]["attributes"][0]
            ["value"],
        "v1"
    );

    let cloud_map = ["--namespace", "apps.local", "--service", "color"];
    let v1 = [&cloud_map[..], &["--attribute", "version=v1"]].concat();
    let v2 = [&cloud_map[..], &["--attribute", "version=v2"]].concat();
    cli(
        &server,
        &[&v1[..], &["--address", "127.0.0.11", "--port", "9080"]].concat(),
    )
    .await;
    cli(
        &server,
        &[&v2[..], &["--address", "127.0.0.12", "--port", "9080"]].concat(),
    )
    .await;
    let listed = c
        .trellis(http::Method::GET, "/trellis/v1/instances", Vec::new())
        .await
        .expect("list instances");
    assert!(
        listed["instances"].as_array().expect("a list").contains(
            &json!({"namespaceName": "apps.local", "serviceName": "color",
                "attributes": {"version": "v1"}, "address": "127.0.0.11", "port": 9080})
        ),
        "{listed}"
    );

    let mut eds = Eds::subscribe(&server).await;
    assert_eq!(
        eds.next().await,
        ["127.0.0.11:9080"],
        "only the v1 instance"
    );

    cli(
        &server,
        &[&v1[..], &["--address", "127.0.0.13", "--port", "9080"]].concat(),
    )
    .await;
    assert_eq!(eds.next().await, ["127.0.0.11:9080", "127.0.0.13:9080"]);
    // Re-registering with other attributes moves an instance out of the set.
    cli(
        &server,
        &[&v2[..], &["--address", "127.0.0.11", "--port", "9080"]].concat(),
    )
    .await;
    assert_eq!(eds.next().await, ["127.0.0.13:9080"]);
    cli(
        &server,
        &[
            &cloud_map[..],
            &["--address", "127.0.0.13", "--port", "9080", "--deregister"],
        ]
        .concat(),
    )
    .await;
    assert!(eds.next().await.is_empty(), "deregistered");
}

/// The instances `GET /trellis/v1/instances` lists, sorted by address.
async fn listed(server: &Server) -> Vec<serde_json::Value> {
    let listed = server
        .client()
        .trellis(http::Method::GET, "/trellis/v1/instances", Vec::new())
        .await
        .expect("list instances");
    let mut list = listed["instances"].as_array().expect("a list").clone();
    list.sort_by_key(|i| i["address"].as_str().unwrap_or_default().to_string());
    list
}

/// A 200 from register-instance means durable: instances of both kinds,
/// with their attributes, are served over EDS again after a kill -9 and a
/// restart, and a deregistration acknowledged before the next kill stays
/// done.
#[tokio::test(flavor = "multi_thread")]
async fn registered_instances_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(
        &data,
        &["--xds-plaintext", "--require-node-tokens", "never"],
    );
    create_mesh(&server.client()).await;
    let cloud_map = ["--namespace", "apps.local", "--service", "color"];
    for (attribute, address) in [
        ("version=v1", "127.0.0.11"),
        ("version=v1", "127.0.0.12"),
        ("version=v2", "127.0.0.13"),
    ] {
        let args = [
            &cloud_map[..],
            &[
                "--attribute",
                attribute,
                "--address",
                address,
                "--port",
                "9080",
            ],
        ]
        .concat();
        cli(&server, &args).await;
    }
    cli(
        &server,
        &[
            "--mesh",
            "m",
            "--virtual-node",
            "front",
            "--address",
            "127.0.0.14",
            "--port",
            "8080",
        ],
    )
    .await;
    let before = listed(&server).await;
    assert_eq!(before.len(), 4, "{before:?}");
    server.kill9();

    let mut server = Server::start(
        &data,
        &["--xds-plaintext", "--require-node-tokens", "never"],
    );
    assert_eq!(
        listed(&server).await,
        before,
        "the registry after a restart"
    );
    let mut eds = Eds::subscribe(&server).await;
    assert_eq!(eds.next().await, ["127.0.0.11:9080", "127.0.0.12:9080"]);
    cli(
        &server,
        &[
            &cloud_map[..],
            &["--address", "127.0.0.12", "--port", "9080", "--deregister"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(eds.next().await, ["127.0.0.11:9080"]);
    drop(eds);
    server.kill9();

    let server = Server::start(
        &data,
        &["--xds-plaintext", "--require-node-tokens", "never"],
    );
    let mut eds = Eds::subscribe(&server).await;
    assert_eq!(
        eds.next().await,
        ["127.0.0.11:9080"],
        "the deregistration held"
    );
    assert_eq!(listed(&server).await.len(), 3);
}
