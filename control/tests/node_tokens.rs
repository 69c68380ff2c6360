//! Node tokens on ADS: once a token exists, a stream must carry its own
//! node's token; another node's token or a revoked one is refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_control::store::Store;
use trellis_control::tokens::{self, Policy, TokenKey};
use trellis_control::xds::registry::Registry;
use trellis_control::xds::server::{serve, Xds};
use trellis_control::xds::translate::NodeId;
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_protos::envoy::service::discovery::v3::DiscoveryRequest;
use xds_protos::type_url::CLUSTER;

fn id(name: &str) -> NodeId {
    NodeId {
        mesh: "m".into(),
        gateway: false,
        name: name.into(),
    }
}

type Responses = tonic::Streaming<xds_protos::envoy::service::discovery::v3::DiscoveryResponse>;

/// Sends `node`'s first request with `token` on a new ADS stream; the
/// server's answer to opening it, and the sender that keeps it open.
async fn start(
    url: &str,
    node: &str,
    token: Option<&str>,
) -> (
    Result<Responses, tonic::Status>,
    mpsc::Sender<DiscoveryRequest>,
) {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("mesh/m/virtualNode/{node}"),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    let opened = client
        .stream_aggregated_resources(request)
        .await
        .map(|s| s.into_inner());
    (opened, tx)
}

/// Opens a stream as `node` with `token`; the gRPC status code of the first
/// reply (`Ok` when the stream is served).
async fn open(url: &str, node: &str, token: Option<&str>) -> tonic::Code {
    let (mut stream, _tx) = match start(url, node, token).await {
        (Ok(s), tx) => (s, tx),
        (Err(status), _) => return status.code(),
    };
    match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
        Ok(Ok(_)) => tonic::Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => panic!("no reply within 3 s"),
    }
}

#[tokio::test]
async fn a_stream_needs_its_own_nodes_token_once_tokens_exist() {
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let key = TokenKey::generate();
    let xds = Xds::start(
        store.clone(),
        Arc::new(Registry::load(store.clone()).expect("registry")),
    )
    .expect("xds")
    .with_token_policy(Policy::Auto);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, xds, std::future::pending()));

    // No token issued yet: streams are served (an upgrade keeps working).
    assert_eq!(open(&url, "a", None).await, tonic::Code::Ok);
    let token = tokens::issue(&store, &key, &id("a")).expect("issue");
    assert_eq!(open(&url, "a", Some(&token)).await, tonic::Code::Ok);
    assert_eq!(open(&url, "a", None).await, tonic::Code::Unauthenticated);
    // A stolen token opens only its own node.
    assert_eq!(
        open(&url, "b", Some(&token)).await,
        tonic::Code::Unauthenticated
    );
    // Revoking the last token does not reopen the mesh to token-less streams.
    assert!(tokens::revoke(&store, &id("a")).expect("revoke"));
    assert_eq!(open(&url, "a", None).await, tonic::Code::Unauthenticated);
    assert_eq!(
        open(&url, "a", Some(&token)).await,
        tonic::Code::Unauthenticated
    );
}

/// Opens a stream as `node` with `token` and reads its first reply; the
/// stream stays open while the returned parts live.
async fn hold(
    url: &str,
    node: &str,
    token: Option<&str>,
) -> (Responses, mpsc::Sender<DiscoveryRequest>) {
    let (opened, tx) = start(url, node, token).await;
    let mut stream = opened.expect("stream");
    tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("a first reply")
        .expect("served");
    (stream, tx)
}

/// Revoking (or replacing) a token ends the stream it opened, so a stolen
/// token stops yielding renewed SVIDs; a stream admitted before any token
/// existed is not cut off by the first token issued.
#[tokio::test]
async fn revoking_a_token_ends_the_stream_it_opened() {
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let key = TokenKey::generate();
    let registry = Arc::new(Registry::load(store.clone()).expect("registry"));
    let xds = Xds::start(store.clone(), registry.clone())
        .expect("xds")
        .with_token_policy(Policy::Auto);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, xds, std::future::pending()));

    let (_old, _old_tx) = hold(&url, "b", None).await;
    let token = tokens::issue(&store, &key, &id("a")).expect("issue");
    let (mut stream, _tx) = hold(&url, "a", Some(&token)).await;
    assert!(tokens::revoke(&store, &id("a")).expect("revoke"));
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends after the revocation");
    assert_eq!(
        ended.expect_err("an error status").code(),
        tonic::Code::Unauthenticated
    );
    // The ended stream leaves the registry just after its status is sent.
    let open = || -> Vec<String> {
        registry
            .proxies()
            .iter()
            .map(|p| p.node_id.clone())
            .collect()
    };
    for _ in 0..100 {
        if open().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        open(),
        ["mesh/m/virtualNode/b"],
        "the token-less stream runs on"
    );

    // Replacing a token revokes the old one too.
    let first = tokens::issue(&store, &key, &id("c")).expect("issue");
    let (mut stream, _tx) = hold(&url, "c", Some(&first)).await;
    tokens::issue(&store, &key, &id("c")).expect("reissue");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends after the token is replaced");
    assert!(ended.is_err());
}
