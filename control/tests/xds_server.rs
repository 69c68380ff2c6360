//! The ADS server in-process, against a raw gRPC client: Envoy's ACK/NACK
//! rules, pushes only to the proxies a write changes, delta updates, and the
//! per-stream status that `/trellis/v1/proxies` reports.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_control::model::{Kind, Metadata, Resource, ResourceKey};
use trellis_control::store::Store;
use trellis_control::tokens::Policy;
use trellis_control::xds::registry::Registry;
use trellis_control::xds::server::{serve, Xds};
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_protos::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_protos::google::rpc::Status;
use xds_protos::type_url::{CLUSTER, LISTENER};

fn resource(kind: Kind, name: &str, spec: Value) -> Resource {
    let key = if kind == Kind::Mesh {
        ResourceKey::mesh(name)
    } else {
        ResourceKey::in_mesh(kind, "m", name)
    };
    Resource {
        key,
        metadata: Metadata {
            arn: String::new(),
            uid: String::new(),
            version: 1,
            created_at: 0.0,
            last_updated_at: 0.0,
            owner: String::new(),
        },
        spec,
        tags: Vec::new(),
    }
}

fn node_spec(port: u16) -> Value {
    json!({"listeners": [{"portMapping": {"port": port, "protocol": "http"}}]})
}

fn put(store: &Store, r: Resource) {
    store
        .write(|tx| {
            if tx.exists(&r.key)? {
                tx.replace(&r)
            } else {
                tx.insert(&r)
            }
        })
        .expect("write");
}

async fn start() -> (Arc<Store>, Arc<Registry>, String) {
    let store = Arc::new(Store::open_in_memory().expect("store"));
    put(&store, resource(Kind::Mesh, "m", json!({})));
    put(&store, resource(Kind::VirtualNode, "a", node_spec(8080)));
    put(&store, resource(Kind::VirtualNode, "b", node_spec(9090)));
    let registry = Arc::new(Registry::load(store.clone()).expect("registry"));
    // Node tokens are node_tokens.rs's subject: these streams present none.
    let xds = Xds::start(store.clone(), registry.clone())
        .expect("xds")
        .with_token_policy(Policy::Never);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, xds, std::future::pending()));
    (store, registry, format!("http://{addr}"))
}

fn node(name: &str) -> Node {
    Node {
        id: format!("mesh/m/virtualNode/{name}"),
        ..Default::default()
    }
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn connect(url: &str, name: &str) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            node: Some(node(name)),
            type_url: CLUSTER.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        Sotw { tx, rx }
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(1), self.rx.message())
            .await
            .expect("a response within a second")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message())
            .await
            .is_err()
    }

    async fn reply(&self, resp: &DiscoveryResponse, version: &str, error: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                version_info: version.into(),
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail: error.map(|e| Status {
                    code: 3,
                    message: e.into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await
            .expect("send");
    }
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|a| {
            let c: xds_protos::envoy::config::cluster::v3::Cluster =
                xds_protos::any::unpack(a).expect("a cluster");
            c.name
        })
        .collect()
}

fn status_of(registry: &Registry, node: &str) -> Value {
    let all = serde_json::to_value(registry.proxies()).expect("json");
    all.as_array()
        .into_iter()
        .flatten()
        .find(|p| p["node_id"] == node)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn sotw_acks_nacks_and_pushes_only_what_changed() {
    let (store, registry, url) = start().await;
    let mut a = Sotw::connect(&url, "a").await;
    let mut b = Sotw::connect(&url, "b").await;
    let first = a.next().await;
    assert_eq!(names(&first), ["cds_ingress_m_a_http_8080"]);
    a.reply(&first, &first.version_info, None).await;
    let b_first = b.next().await;
    b.reply(&b_first, &b_first.version_info, None).await;
    assert!(a.quiet().await, "an ACK needs no answer");

    // A write that only changes node a reaches a, not b.
    put(&store, resource(Kind::VirtualNode, "a", node_spec(8081)));
    let second = a.next().await;
    assert_eq!(names(&second), ["cds_ingress_m_a_http_8081"]);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    assert!(b.quiet().await, "b's resources did not change");

    // NACK: the proxy keeps the old version and says why; nothing is resent.
    a.reply(&second, &first.version_info, Some("bad cluster"))
        .await;
    assert!(
        a.quiet().await,
        "a NACK is not answered with the same config"
    );
    let s = status_of(&registry, "mesh/m/virtualNode/a");
    let t = &s["types"][CLUSTER];
    assert_eq!(t["acked"], json!(first.version_info));
    assert_eq!(t["sent"], json!(second.version_info));
    assert_eq!(t["nack"]["error"], "bad cluster");
    assert_eq!(t["nack"]["version"], json!(second.version_info));

    // A reply with a stale nonce is ignored; a write that changes nothing
    // for anyone pushes nothing.
    a.reply(&first, &first.version_info, None).await;
    put(&store, resource(Kind::VirtualNode, "c", node_spec(7070)));
    assert!(a.quiet().await);
    assert!(b.quiet().await);

    // The next good update clears the way: ACKed, and status follows.
    put(&store, resource(Kind::VirtualNode, "a", node_spec(8082)));
    let third = a.next().await;
    a.reply(&third, &third.version_info, None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = status_of(&registry, "mesh/m/virtualNode/a");
    assert_eq!(s["types"][CLUSTER]["acked"], json!(third.version_info));

    // A reconnect that already holds the current version gets no resend.
    drop(a);
    let mut client = AggregatedDiscoveryServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(node("a")),
        type_url: CLUSTER.into(),
        version_info: third.version_info.clone(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut again = Sotw {
        tx,
        rx: client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner(),
    };
    assert!(again.quiet().await);
    let s = status_of(&registry, "mesh/m/virtualNode/a");
    assert_eq!(s["types"][CLUSTER]["sent"], json!(third.version_info));
    assert_eq!(s["types"][CLUSTER]["acked"], json!(third.version_info));
    drop(again.tx);
}

#[tokio::test]
async fn delta_sends_changes_and_removals() {
    let (store, registry, url) = start().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("a")),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    tx.send(DeltaDiscoveryRequest {
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let clusters = next(&mut rx).await;
    assert_eq!(clusters.type_url, CLUSTER);
    let got: Vec<&str> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["cds_ingress_m_a_http_8080"]);
    let listeners = next(&mut rx).await;
    assert_eq!(listeners.type_url, LISTENER);
    assert_eq!(listeners.resources.len(), 1);
    for r in [&clusters, &listeners] {
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("ack");
    }
    put(&store, resource(Kind::VirtualNode, "a", node_spec(8081)));
    let mut changed = Vec::new();
    for _ in 0..2 {
        changed.push(next(&mut rx).await);
    }
    let clusters = changed
        .iter()
        .find(|r| r.type_url == CLUSTER)
        .expect("a cluster update");
    let got: Vec<&str> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["cds_ingress_m_a_http_8081"]);
    assert_eq!(clusters.removed_resources, ["cds_ingress_m_a_http_8080"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: clusters.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "nope".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await
    .expect("nack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = status_of(&registry, "mesh/m/virtualNode/a");
    assert_eq!(s["stream"], "delta");
    assert_eq!(s["types"][CLUSTER]["nack"]["error"], "nope");
}

async fn next(rx: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(1), rx.message())
        .await
        .expect("a response within a second")
        .expect("ok")
        .expect("open")
}
