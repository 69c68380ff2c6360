//! Certificate rotation through a watched SDS file, under load: every new
//! handshake gets the current certificate, open connections keep working,
//! and no request fails.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::json;
use trellis_tests::process::ProxyProcess;
use trellis_tests::tls::{client_config, https_get, Ca, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::{eventually, free_port, loopback, within};

const FRONTEND: &str = "spiffe://trellis.test/ns/default/sa/frontend";

/// Writes an SDS file with one certificate secret, atomically (write, then
/// rename), as a secret agent would.
fn write_sds(path: &Path, name: &str, cert: &Issued) {
    let body = json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": name,
        "tls_certificate": {
            "certificate_chain": { "inline_string": cert.cert_pem },
            "private_key": { "inline_string": cert.key_pem },
        },
    }]});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).expect("write sds");
    std::fs::rename(&tmp, path).expect("rename sds");
}

fn short_lived(ca: &Ca, dns: &[&str], uri: &[&str]) -> Issued {
    ca.issue(&Leaf::new(dns, uri).valid(time::Duration::seconds(-30), time::Duration::minutes(5)))
}

#[tokio::test]
async fn rotating_certificates_under_load_fails_no_request() {
    within(Duration::from_secs(120), "rotation", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let ca_file = ca.write(dir.path(), "ca");
        let app = Echo::start("app").await;
        let server_sds = dir.path().join("server-sds.json");
        let client_sds = dir.path().join("client-sds.json");
        write_sds(&server_sds, "server_cert", &short_lived(&ca, &["backend.test"], &[]));
        write_sds(&client_sds, "client_cert", &short_lived(&ca, &[], &[FRONTEND]));
        let sds = |path: &Path, name: &str| {
            json!({ "name": name, "sds_config": { "path_config_source": { "path": path } } })
        };
        let hcm = |stat: &str, cluster: &str| json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat,
                "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
            }
        });
        let cluster = |name: &str, port: u16, tls: serde_json::Value| json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }
            ]}]},
            "transport_socket": tls,
        });
        let admin = json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } });

        // B: TLS in, certificate from the SDS file, client certificates required.
        let b_port = free_port();
        let b_cfg = json!({
            "admin": admin,
            // Envoy's SDS needs a node identity.
            "node": { "id": "rotation-test", "cluster": "tests" },
            "static_resources": {
                "listeners": [{
                    "name": "b",
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": b_port } },
                    "filter_chains": [{
                        "filters": [hcm("b", "app")],
                        "transport_socket": { "name": "tls", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [sds(&server_sds, "server_cert")],
                                "validation_context": { "trusted_ca": { "filename": ca_file } },
                            },
                        }},
                    }],
                }],
                "clusters": [cluster("app", app.addr.port(), json!({ "name": "raw", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } }))],
            },
        });
        let b = ProxyProcess::start_logged(&b_cfg.to_string()).await;

        // A: plaintext in, mTLS to B with its client certificate from SDS.
        let a_port = free_port();
        let a_cfg = json!({
            "admin": admin,
            // Envoy's SDS needs a node identity.
            "node": { "id": "rotation-test", "cluster": "tests" },
            "static_resources": {
                "listeners": [{
                    "name": "a",
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": a_port } },
                    "filter_chains": [{ "filters": [hcm("a", "b")] }],
                }],
                "clusters": [cluster("b", b_port, json!({ "name": "tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "backend.test",
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [sds(&client_sds, "client_cert")],
                        "validation_context": { "trusted_ca": { "filename": ca_file } },
                    },
                }}))],
            },
        });
        let a = ProxyProcess::start_logged(&a_cfg.to_string()).await;

        let client_cert = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let cfg = client_config(&ca.pem, Some(&client_cert), &["http/1.1"]);

        // A connection opened before any rotation, kept for the whole test.
        let tcp = tokio::net::TcpStream::connect(loopback(b_port)).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(ServerName::try_from("backend.test").expect("name"), tcp)
            .await
            .expect("handshake");
        let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1");
        tokio::spawn(conn);

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        // Load: through A (pooled connections to B), and straight to B with a
        // new handshake per request.
        let mut loops = Vec::new();
        for through_a in [true, false] {
            let (stop, ok, failed, cfg) = (stop.clone(), ok.clone(), failed.clone(), cfg.clone());
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let good = if through_a {
                        trellis_tests::client::get(&format!("http://127.0.0.1:{a_port}/load"))
                            .await
                            .is_ok_and(|r| r.status == 200)
                    } else {
                        https_get(loopback(b_port), "backend.test", cfg.clone(), "/load")
                            .await
                            .is_ok_and(|r| r.status == 200)
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }

        for round in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let server = short_lived(&ca, &["backend.test"], &[]);
            write_sds(&server_sds, "server_cert", &server);
            write_sds(&client_sds, "client_cert", &short_lived(&ca, &[], &[FRONTEND]));
            // The next handshake presents the new certificate.
            let cfg = cfg.clone();
            let want = server.der.clone();
            let b_log = b.log();
            eventually(Duration::from_secs(10), &format!("round {round}: the new certificate; B log:\n{b_log}"), || {
                let cfg = cfg.clone();
                let want = want.clone();
                async move {
                    let r = https_get(loopback(b_port), "backend.test", cfg, "/").await.ok()?;
                    (r.server_cert == want).then_some(())
                }
            })
            .await;
            // The connection from before every rotation still serves requests.
            let req = http::Request::builder()
                .uri("/kept")
                .header("host", "backend.test")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = kept.send_request(req).await.expect("kept connection still works");
            assert_eq!(resp.status(), 200);
            let _ = resp.into_body().collect().await;
        }
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            let _ = l.await;
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        eprintln!("rotation under load: {ok} requests ok, {failed} failed");
        assert_eq!(failed, 0, "A log:\n{}\nB log:\n{}", a.log(), b.log());
        assert!(ok > 50, "too little load to mean anything: {ok}");
    })
    .await;
}
