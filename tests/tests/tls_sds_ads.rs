//! SDS over ADS: a listener whose certificate is a `Secret` resource. The
//! proxy subscribes to it by name, serves it, rotates to a new version on
//! the next handshake, and NACKs a malformed one while keeping the last
//! good certificate. Runs on trellis (both protocol variants) and, when
//! installed, on Envoy as the reference.

use std::time::Duration;

use trellis_tests::tls::{client_config, https_get, Ca, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::xds_server::*;
use trellis_tests::{eventually, free_port, loopback, within};
use xds_protos::envoy::config::core::v3::{
    data_source::Specifier, transport_socket, DataSource, TransportSocket,
};
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{
    secret, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
};
use xds_protos::type_url::{
    CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, SECRET,
};

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.to_string())),
        ..Default::default()
    })
}

fn cert_secret(name: &str, chain: &str, key: &str) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

async fn serves(port: u16, ca: &Ca, cert: &Issued) {
    eventually(
        Duration::from_secs(15),
        "the listener presents the secret's certificate",
        || async {
            let r = https_get(
                loopback(port),
                "svc.test",
                client_config(&ca.pem, None, &[]),
                "/",
            )
            .await
            .ok()?;
            (r.status == 200 && r.server_cert == cert.der).then_some(())
        },
    )
    .await;
}

async fn scenario(proxy: Proxy, delta: bool) {
    if proxy.bin().is_none() {
        eprintln!("skipped: {proxy:?} not installed");
        return;
    }
    let xds = XdsServer::start().await;
    let launch = Launch::new(proxy, &xds, delta).expect("binary present");
    let ca = Ca::new("trellis test CA");
    let v1 = ca.issue(&Leaf::new(&["svc.test"], &[]));
    let echo = Echo::start("a").await;
    let port = free_port();

    let mut listener = http_listener("main", port, "r1");
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: "server_cert".into(),
                sds_config: Some(ads_source()),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    listener.filter_chains[0].transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&tls))),
    });
    xds.set_cluster(&eds_cluster("a"));
    xds.set_endpoints(&load_assignment("a", &[echo.addr]));
    xds.set_listener(&listener);
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t1"));
    xds.set_any(
        SECRET,
        "server_cert",
        pack(&cert_secret("server_cert", &v1.cert_pem, &v1.key_pem)),
    );
    let version = xds.push();
    let _p = launch.start().await;
    for t in [
        CLUSTER,
        CLUSTER_LOAD_ASSIGNMENT,
        LISTENER,
        ROUTE_CONFIGURATION,
        SECRET,
    ] {
        xds.wait_ack(t, &version).await;
    }
    serves(port, &ca, &v1).await;

    // Rotation: the next handshake presents the new certificate.
    let v2 = ca.issue(&Leaf::new(&["svc.test"], &[]));
    xds.set_any(
        SECRET,
        "server_cert",
        pack(&cert_secret("server_cert", &v2.cert_pem, &v2.key_pem)),
    );
    let version = xds.push();
    xds.wait_ack(SECRET, &version).await;
    serves(port, &ca, &v2).await;

    // A malformed key is NACKed; the last good certificate stays in force.
    xds.set_any(
        SECRET,
        "server_cert",
        pack(&cert_secret("server_cert", &v2.cert_pem, "garbage")),
    );
    let version = xds.push();
    let nack = xds.wait_nack(SECRET, &version).await;
    eprintln!("{proxy:?} NACK: {nack:?}");
    if proxy == Proxy::Trellis {
        // trellis names the secret and the field, and never echoes key bytes.
        let (_, message) = nack.error_detail.clone().expect("error_detail");
        assert!(message.contains("server_cert"), "{message}");
        assert!(message.contains("private_key"), "{message}");
        assert!(!message.contains("garbage"), "{message}");
    }
    serves(port, &ca, &v2).await;
}

#[tokio::test]
async fn trellis_sotw() {
    within(
        Duration::from_secs(120),
        "SDS over ADS",
        scenario(Proxy::Trellis, false),
    )
    .await;
}

#[tokio::test]
async fn trellis_delta() {
    within(
        Duration::from_secs(120),
        "SDS over ADS",
        scenario(Proxy::Trellis, true),
    )
    .await;
}

#[tokio::test]
async fn envoy_sotw() {
    within(
        Duration::from_secs(120),
        "SDS over ADS",
        scenario(Proxy::Envoy, false),
    )
    .await;
}
