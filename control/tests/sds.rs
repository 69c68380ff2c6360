//! SDS over ADS: a proxy gets its own SVID (its SPIFFE ID as URI SAN) and the
//! trust bundle, over state of the world and delta, and a new SVID is pushed
//! at half life.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_control::ca::{Ca, BUNDLE_SECRET, SVID_SECRET};
use trellis_control::model::{Kind, Metadata, Resource, ResourceKey};
use trellis_control::store::Store;
use trellis_control::tokens::Policy;
use trellis_control::xds::registry::Registry;
use trellis_control::xds::server::{serve, Xds};
use xds_protos::envoy::config::core::v3::data_source::Specifier;
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_protos::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_protos::type_url::SECRET;

fn resource(key: ResourceKey, spec: serde_json::Value) -> Resource {
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

/// A server whose CA issues SVIDs living `ttl`; returns its URL and bundle.
async fn start(dir: &std::path::Path, ttl: Duration) -> (String, String) {
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let node =
        serde_json::json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]});
    for r in [
        resource(ResourceKey::mesh("m"), serde_json::json!({})),
        resource(ResourceKey::in_mesh(Kind::VirtualNode, "m", "a"), node),
    ] {
        store.write(|tx| tx.insert(&r)).expect("write");
    }
    let (ca, _) = Ca::load_or_create(dir, "example.org", ttl).expect("ca");
    let bundle = ca.bundle_pem().to_string();
    // Node tokens are node_tokens.rs's subject: these streams present none.
    let xds = Xds::start(
        store.clone(),
        Arc::new(Registry::load(store).expect("registry")),
    )
    .expect("xds")
    .with_token_policy(Policy::Never)
    .with_ca(Arc::new(ca));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, xds, std::future::pending()));
    (format!("http://{addr}"), bundle)
}

fn node() -> Node {
    Node {
        id: "mesh/m/virtualNode/a".into(),
        ..Default::default()
    }
}

fn inline(source: Option<&xds_protos::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineString(s)) => s.clone(),
        other => panic!("expected an inline string, got {other:?}"),
    }
}

/// Checks the two secrets; returns the SVID's certificate PEM.
fn check(secrets: &[Secret], bundle: &str) -> String {
    let mut cert = None;
    for s in secrets {
        match (&s.name[..], &s.r#type) {
            (SVID_SECRET, Some(secret::Type::TlsCertificate(t))) => {
                assert!(inline(t.private_key.as_ref()).contains("PRIVATE KEY"));
                cert = Some(inline(t.certificate_chain.as_ref()));
            }
            (BUNDLE_SECRET, Some(secret::Type::ValidationContext(v))) => {
                assert_eq!(inline(v.trusted_ca.as_ref()), bundle);
            }
            other => panic!("unexpected secret {other:?}"),
        }
    }
    let cert = cert.expect("the SVID secret");
    let der = pem_der(&cert);
    // The URI SAN is DER-encoded as an IA5String inside the certificate.
    let uri = b"spiffe://example.org/mesh/m/virtualNode/a";
    assert!(der.windows(uri.len()).any(|w| w == uri), "SPIFFE ID in SAN");
    cert
}

/// The DER body of one PEM block (base64 between the armour lines).
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    decode_base64(&b64)
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | (u32::from(v) << (18 - 6 * i)));
        let take = chunk.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

async fn next(
    rx: &mut tonic::Streaming<xds_protos::envoy::service::discovery::v3::DiscoveryResponse>,
) -> xds_protos::envoy::service::discovery::v3::DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(3), rx.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn sotw_serves_the_svid_and_bundle_and_renews_at_half_life() {
    let dir = tempfile::tempdir().expect("tmp");
    let (url, bundle) = start(dir.path(), Duration::from_secs(2)).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(node()),
        type_url: SECRET.into(),
        resource_names: vec![SVID_SECRET.into(), BUNDLE_SECRET.into()],
        ..Default::default()
    })
    .await
    .expect("send");
    let mut rx = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut rx).await;
    assert_eq!(first.type_url, SECRET);
    let secrets: Vec<Secret> = first
        .resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).expect("a Secret"))
        .collect();
    assert_eq!(secrets.len(), 2);
    let cert = check(&secrets, &bundle);
    tx.send(DiscoveryRequest {
        type_url: SECRET.into(),
        resource_names: vec![SVID_SECRET.into(), BUNDLE_SECRET.into()],
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");
    // A 2 s SVID is renewed after 1 s.
    let renewed = next(&mut rx).await;
    let secrets: Vec<Secret> = renewed
        .resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).expect("a Secret"))
        .collect();
    assert_ne!(check(&secrets, &bundle), cert);
    assert_ne!(renewed.version_info, first.version_info);
}

#[tokio::test]
async fn delta_serves_only_the_requested_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let (url, bundle) = start(dir.path(), Duration::from_secs(3600)).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node()),
        type_url: SECRET.into(),
        resource_names_subscribe: vec![BUNDLE_SECRET.into()],
        ..Default::default()
    })
    .await
    .expect("send");
    let mut rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(3), rx.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!(resp.resources.len(), 1);
    let any = resp.resources[0].resource.as_ref().expect("a resource");
    let secret = Secret::decode(any.value.as_slice()).expect("a Secret");
    assert_eq!(secret.name, BUNDLE_SECRET);
    match secret.r#type {
        Some(secret::Type::ValidationContext(v)) => {
            assert_eq!(inline(v.trusted_ca.as_ref()), bundle)
        }
        other => panic!("expected a validation context, got {other:?}"),
    }
}

/// The handshake with the TLS xDS port of `addr`, trusting `bundle` and
/// checking IP SAN 127.0.0.1: the certificate the server presented.
async fn xds_certificate(addr: std::net::SocketAddr, bundle: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.expect("PEM")).expect("a CA");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("a verified handshake");
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    conn.peer_certificates().expect("a certificate")[0]
        .as_ref()
        .to_vec()
}

/// The xDS port's certificate from the mesh CA verifies for the address
/// proxies dial and is replaced at half its lifetime.
#[tokio::test]
async fn xds_server_certificate_is_issued_and_renewed() {
    use trellis_control::xds::server::serve_tls;
    use trellis_control::xds::tls::XdsTls;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, _) =
        Ca::load_or_create(dir.path(), "example.org", Duration::from_secs(4)).expect("ca");
    let ca = Arc::new(ca);
    let bundle = ca.bundle_pem().to_string();
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let xds = Xds::start(
        store.clone(),
        Arc::new(Registry::load(store).expect("registry")),
    )
    .expect("xds");
    let tls = XdsTls::from_ca(ca, vec!["127.0.0.1".into()]).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_tls(listener, xds, tls, std::future::pending()));
    let first = xds_certificate(addr, &bundle).await;
    assert_eq!(
        xds_certificate(addr, &bundle).await,
        first,
        "kept until half life"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_ne!(xds_certificate(addr, &bundle).await, first, "renewed");
}
