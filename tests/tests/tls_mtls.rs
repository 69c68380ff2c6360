//! TLS and mTLS on listeners and clusters: two trellis-proxy processes
//! talking mTLS, refusals with their reasons, SNI and transport-protocol
//! chain selection, ALPN, a third-party client, and bad key material.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_tests::process::{proxy_under_test, run_to_exit, testing_envoy, ProxyProcess};
use trellis_tests::tls::{client_config, https_get, Ca, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::{free_port, loopback, within};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

const FRONTEND: &str = "spiffe://trellis.test/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://trellis.test/ns/default/sa/backend";

/// An HTTP connection manager whose one route does `action`.
fn hcm(stat: &str, action: Value) -> Value {
    let mut route = json!({ "match": { "prefix": "/" } });
    if let (Some(r), Some(a)) = (route.as_object_mut(), action.as_object()) {
        r.extend(a.clone());
    }
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat,
            "route_config": { "name": "r", "virtual_hosts": [
                { "name": "all", "domains": ["*"], "routes": [route] }
            ]},
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}]
        }
    })
}

fn to_cluster(name: &str) -> Value {
    json!({ "route": { "cluster": name } })
}

fn reply(body: &str) -> Value {
    json!({ "direct_response": { "status": 200, "body": { "inline_string": body } } })
}

fn cert_files(dir: &Path, name: &str, issued: &Issued) -> Value {
    let (crt, key) = issued.write(dir, name);
    json!({ "certificate_chain": { "filename": crt }, "private_key": { "filename": key } })
}

/// A `DownstreamTlsContext` transport socket.
fn downstream_tls(common: Value, require_client_cert: bool) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": require_client_cert,
        "common_tls_context": common,
    }})
}

fn upstream_tls(common: Value, sni: &str) -> Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS, "sni": sni, "common_tls_context": common,
    }})
}

fn uri_san(exact: &str) -> Value {
    json!([{ "san_type": "URI", "matcher": { "exact": exact } }])
}

fn listener(port: u16, chains: Vec<Value>, extra: Value) -> Value {
    let mut l = json!({
        "name": format!("l{port}"),
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": chains,
    });
    if let (Some(l), Some(e)) = (l.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    l
}

fn cluster(name: &str, addr: SocketAddr, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port() } } } }
        ]}]}
    });
    if let (Some(c), Some(t)) = (c.as_object_mut(), tls) {
        c.insert("transport_socket".into(), t);
    }
    c
}

fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>, secrets: Vec<Value>) -> String {
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": listeners, "clusters": clusters, "secrets": secrets },
    })
    .to_string()
}

/// Proxy B: TLS in on `port`, client certificate required and its URI SAN
/// must be `allowed`; forwards to `upstream`.
async fn backend_proxy(
    dir: &Path,
    ca: &Ca,
    port: u16,
    allowed: &str,
    upstream: SocketAddr,
) -> ProxyProcess {
    let server = ca.issue(&Leaf::new(&["backend.test"], &[BACKEND]));
    let common = json!({
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificates": [cert_files(dir, "backend", &server)],
        "validation_context": {
            "trusted_ca": { "filename": ca.write(dir, "ca") },
            "match_typed_subject_alt_names": uri_san(allowed),
        },
    });
    let mut filter = hcm("backend", to_cluster("app"));
    // The verified client identity, as access logs see it.
    filter["typed_config"]["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": dir.join("access.log"),
            "log_format": { "text_format_source": {
                "inline_string": "%REQ(:PATH)% %DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME%\n" } },
        },
    }]);
    let mut chain = json!({ "filters": [filter] });
    chain["transport_socket"] = downstream_tls(common, true);
    // Handshake refusals, with their reasons, are logged at debug (as Envoy
    // logs them): anyone can cause them, and `ssl.*` counts them.
    ProxyProcess::start_logged_at(
        &bootstrap(
            // tls_inspector: Envoy's requested server name (the SNI in the log)
            // is what the inspector read.
            vec![listener(
                port,
                vec![chain],
                json!({ "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": { "@type": TLS_INSPECTOR } }] }),
            )],
            vec![cluster("app", upstream, None)],
            vec![],
        ),
        "debug",
    )
    .await
}

#[tokio::test]
async fn two_proxies_talk_mtls_end_to_end() {
    within(Duration::from_secs(60), "mTLS end to end", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let app = Echo::start("app").await;
        let b_port = free_port();
        let b = backend_proxy(dir.path(), &ca, b_port, FRONTEND, app.addr).await;

        // Proxy A: plaintext in, mTLS out with the frontend's identity,
        // verifying that B is the backend.
        let a_port = free_port();
        let client = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let common = json!({
            "tls_certificates": [cert_files(dir.path(), "frontend", &client)],
            "validation_context": {
                "trusted_ca": { "filename": ca.write(dir.path(), "ca") },
                "match_typed_subject_alt_names": uri_san(BACKEND),
            },
        });
        let a = ProxyProcess::start_logged(&bootstrap(
            vec![listener(
                a_port,
                vec![json!({ "filters": [hcm("frontend", to_cluster("backend"))] })],
                json!({}),
            )],
            vec![cluster(
                "backend",
                loopback(b_port),
                Some(upstream_tls(common, "backend.test")),
            )],
            vec![],
        ))
        .await;

        for i in 0..5 {
            let r = trellis_tests::client::get(&format!("http://127.0.0.1:{a_port}/hello/{i}"))
                .await
                .expect("request through A and B");
            assert_eq!(r.status, 200, "A log:\n{}\nB log:\n{}", a.log(), b.log());
            let seen = r.echoed();
            assert_eq!(seen["path"], format!("/hello/{i}"));
        }
        assert_eq!(app.count(), 5);
        let log_path = dir.path().join("access.log");
        // Envoy flushes access logs every 10 s.
        trellis_tests::eventually(Duration::from_secs(15), "B's access log", || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move { log.contains(&format!("/hello/4 {FRONTEND} backend.test\n")).then_some(()) }
        })
        .await;
        assert_eq!(b.stat("http.backend.downstream_rq_http2_total").await, 0);

        // An HTTP/2 cluster offers `h2` by ALPN (no alpn_protocols set), as
        // Envoy does, and B serves it as HTTP/2.
        let a2_port = free_port();
        let common = json!({
            "tls_certificates": [cert_files(dir.path(), "frontend", &client)],
            "validation_context": { "trusted_ca": { "filename": ca.write(dir.path(), "ca") } },
        });
        let mut h2_cluster = cluster("backend", loopback(b_port), Some(upstream_tls(common, "backend.test")));
        h2_cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} } } });
        let _a2 = ProxyProcess::start(&bootstrap(
            vec![listener(a2_port, vec![json!({ "filters": [hcm("frontend", to_cluster("backend"))] })], json!({}))],
            vec![h2_cluster],
            vec![],
        ))
        .await;
        let r = trellis_tests::client::get(&format!("http://127.0.0.1:{a2_port}/over-h2"))
            .await
            .expect("request over an h2 mTLS hop");
        assert_eq!(r.status, 200, "B log:\n{}", b.log());
        assert_eq!(b.stat("http.backend.downstream_rq_http2_total").await, 1);
    })
    .await;
}

/// Each bad client certificate is refused by B, which logs why.
#[tokio::test]
async fn bad_client_certificates_are_refused_with_the_reason() {
    within(Duration::from_secs(60), "refusals", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let other_ca = Ca::new("some other CA");
        let app = Echo::start("app").await;
        let port = free_port();
        let b = backend_proxy(dir.path(), &ca, port, FRONTEND, app.addr).await;
        let hour = time::Duration::hours(1);
        let cases: Vec<(&str, Issued, &str)> = vec![
            (
                "expired",
                ca.issue(&Leaf::new(&[], &[FRONTEND]).valid(-hour * 48, -hour)),
                "expired",
            ),
            (
                "not yet valid",
                ca.issue(&Leaf::new(&[], &[FRONTEND]).valid(hour, hour * 48)),
                "not valid yet",
            ),
            (
                "wrong CA",
                other_ca.issue(&Leaf::new(&[], &[FRONTEND])),
                "UnknownIssuer",
            ),
            (
                "wrong SAN",
                ca.issue(&Leaf::new(
                    &[],
                    &["spiffe://trellis.test/ns/default/sa/intruder"],
                )),
                "no subject alternative name matches",
            ),
        ];
        for (what, cert, logged) in cases {
            let cfg = client_config(&ca.pem, Some(&cert), &["http/1.1"]);
            let r = https_get(loopback(port), "backend.test", cfg, "/").await;
            assert!(
                r.is_err() || r.as_ref().is_ok_and(|r| r.status != 200),
                "{what}: accepted: {r:?}"
            );
            // The reasons are trellis's own log lines; Envoy words them differently.
            if !testing_envoy() {
                trellis_tests::eventually(
                    Duration::from_secs(5),
                    &format!("a log line for {what}"),
                    || {
                        let log = b.log();
                        async move { log.contains(logged).then_some(()) }
                    },
                )
                .await;
            }
        }
        // No certificate at all is refused too; a good one still works.
        let r = https_get(
            loopback(port),
            "backend.test",
            client_config(&ca.pem, None, &[]),
            "/",
        )
        .await;
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|r| r.status != 200),
            "no cert accepted"
        );
        let good = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let r = https_get(
            loopback(port),
            "backend.test",
            client_config(&ca.pem, Some(&good), &[]),
            "/",
        )
        .await
        .expect("a good client certificate is accepted");
        assert_eq!(r.status, 200);
        assert_eq!(app.count(), 1);
        // Each refusal is counted by why, under Envoy's names.
        let ssl = |name: &str| format!("listener.127.0.0.1_{port}.ssl.{name}");
        for (stat, n) in [
            ("fail_verify_error", 3),
            ("fail_verify_san", 1),
            ("fail_verify_no_cert", 1),
            // Envoy counts certificate refusals only as fail_verify_*.
            ("connection_error", 0),
        ] {
            assert_eq!(b.stat(&ssl(stat)).await, n, "{stat}");
        }
        assert!(b.stat(&ssl("handshake")).await >= 1);
    })
    .await;
}

/// Proxy A refuses an upstream whose certificate has the wrong SAN: 503.
#[tokio::test]
async fn upstream_with_the_wrong_identity_is_refused() {
    within(Duration::from_secs(60), "upstream SAN", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let app = Echo::start("app").await;
        let b_port = free_port();
        let _b = backend_proxy(dir.path(), &ca, b_port, FRONTEND, app.addr).await;
        let a_port = free_port();
        let client = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let common = json!({
            "tls_certificates": [cert_files(dir.path(), "frontend", &client)],
            "validation_context": {
                "trusted_ca": { "filename": ca.write(dir.path(), "ca") },
                "match_typed_subject_alt_names": uri_san("spiffe://trellis.test/ns/default/sa/someone-else"),
            },
        });
        let a = ProxyProcess::start_logged(&bootstrap(
            vec![listener(a_port, vec![json!({ "filters": [hcm("frontend", to_cluster("backend"))] })], json!({}))],
            vec![cluster("backend", loopback(b_port), Some(upstream_tls(common, "backend.test")))],
            vec![],
        ))
        .await;
        let r = trellis_tests::client::get(&format!("http://127.0.0.1:{a_port}/"))
            .await
            .expect("A answers");
        assert_eq!(r.status, 503);
        assert!(testing_envoy() || a.log().contains("no subject alternative name matches"), "{}", a.log());
        assert_eq!(app.count(), 0);
    })
    .await;
}

/// Each bad server certificate is refused by A (503, nothing reaches the
/// app behind B), and A's log says why: expired, not yet valid, unknown CA,
/// or which SANs it had.
#[tokio::test]
async fn bad_upstream_certificates_are_refused_with_the_reason() {
    within(Duration::from_secs(60), "upstream refusals", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let other_ca = Ca::new("some other CA");
        let hour = time::Duration::hours(1);
        let cases: Vec<(&str, Issued, &str)> = vec![
            (
                "expired",
                ca.issue(&Leaf::new(&[], &[BACKEND]).valid(-hour * 48, -hour)),
                "expired",
            ),
            (
                "not-yet-valid",
                ca.issue(&Leaf::new(&[], &[BACKEND]).valid(hour, hour * 48)),
                "not valid yet",
            ),
            (
                "wrong-ca",
                other_ca.issue(&Leaf::new(&[], &[BACKEND])),
                "UnknownIssuer",
            ),
            (
                "wrong-san",
                ca.issue(&Leaf::new(
                    &[],
                    &["spiffe://trellis.test/ns/default/sa/impostor"],
                )),
                "no subject alternative name matches",
            ),
            ("good", ca.issue(&Leaf::new(&[], &[BACKEND])), ""),
        ];
        // B: one TLS listener per certificate, each answering 200 itself.
        let ports: Vec<u16> = cases.iter().map(|_| free_port()).collect();
        let b_listeners = cases
            .iter()
            .zip(&ports)
            .map(|((name, cert, _), port)| {
                let common = json!({ "tls_certificates": [cert_files(dir.path(), name, cert)] });
                let mut chain = json!({ "filters": [hcm(name, reply("from B"))] });
                chain["transport_socket"] = downstream_tls(common, false);
                listener(*port, vec![chain], json!({}))
            })
            .collect();
        let _b = ProxyProcess::start(&bootstrap(b_listeners, vec![], vec![])).await;
        // A: a route per case, to a cluster verifying B's certificate.
        let client = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let common = json!({
            "tls_certificates": [cert_files(dir.path(), "frontend", &client)],
            "validation_context": {
                "trusted_ca": { "filename": ca.write(dir.path(), "ca") },
                "match_typed_subject_alt_names": uri_san(BACKEND),
            },
        });
        let routes: Vec<Value> = cases
            .iter()
            .map(|(name, _, _)| {
                json!({ "match": { "prefix": format!("/{name}") },
                "route": { "cluster": name } })
            })
            .collect();
        let mut filter = hcm("frontend", to_cluster("good"));
        filter["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = json!(routes);
        let clusters = cases
            .iter()
            .zip(&ports)
            .map(|((name, _, _), port)| {
                cluster(
                    name,
                    loopback(*port),
                    Some(upstream_tls(common.clone(), "backend.test")),
                )
            })
            .collect();
        let a_port = free_port();
        let a = ProxyProcess::start_logged(&bootstrap(
            vec![listener(
                a_port,
                vec![json!({ "filters": [filter] })],
                json!({}),
            )],
            clusters,
            vec![],
        ))
        .await;
        for (name, _, logged) in &cases {
            let r = trellis_tests::client::get(&format!("http://127.0.0.1:{a_port}/{name}"))
                .await
                .expect("A answers");
            if logged.is_empty() {
                assert_eq!(r.status, 200, "{name}");
                assert_eq!(r.body_text(), "from B");
                continue;
            }
            assert_eq!(r.status, 503, "{name}: accepted");
            if !testing_envoy() {
                assert!(a.log().contains(logged), "{name}: {}", a.log());
            }
        }
    })
    .await;
}

/// One port, three certificates: SNI picks the chain (and so the
/// certificate); an unknown name gets the default chain.
#[tokio::test]
async fn sni_selects_among_certificates_with_a_default() {
    within(Duration::from_secs(60), "SNI", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let a = ca.issue(&Leaf::new(&["a.test"], &[]));
        let b = ca.issue(&Leaf::new(&["b.test"], &[]));
        // No chain names c.test: it gets the default chain's certificate.
        let d = ca.issue(&Leaf::new(&["c.test"], &[]));
        let chain = |name: &str, cert: &Issued, sni: Option<&str>| {
            let mut c = json!({
                "filters": [hcm(name, reply(name))],
                "transport_socket": downstream_tls(
                    json!({ "tls_certificates": [cert_files(dir.path(), name, cert)] }), false),
            });
            if let Some(sni) = sni {
                c["filter_chain_match"] = json!({ "server_names": [sni] });
            }
            c
        };
        let port = free_port();
        let mut l = listener(
            port,
            vec![
                chain("a", &a, Some("a.test")),
                chain("b", &b, Some("b.test")),
            ],
            json!({ "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": TLS_INSPECTOR } }] }),
        );
        l["default_filter_chain"] = chain("default", &d, None);
        let _p = ProxyProcess::start(&bootstrap(vec![l], vec![], vec![])).await;
        for (sni, body, cert) in [
            ("a.test", "a", &a),
            ("b.test", "b", &b),
            ("c.test", "default", &d),
        ] {
            let r = https_get(loopback(port), sni, client_config(&ca.pem, None, &[]), "/")
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert_eq!(r.body, body, "{sni}");
            assert_eq!(r.server_cert, cert.der, "{sni}: wrong certificate");
        }
    })
    .await;
}

/// PERMISSIVE: TLS and plaintext clients on one port, by transport protocol.
#[tokio::test]
async fn tls_and_plaintext_share_a_port() {
    within(Duration::from_secs(60), "permissive", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let cert = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let port = free_port();
        let tls_chain = json!({
            "filter_chain_match": { "transport_protocol": "tls" },
            "filters": [hcm("tls", reply("over tls"))],
            "transport_socket": downstream_tls(json!({
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [cert_files(dir.path(), "svc", &cert)] }), false),
        });
        let plain_chain = json!({
            "filter_chain_match": { "transport_protocol": "raw_buffer" },
            "filters": [hcm("plain", reply("in plaintext"))],
        });
        let l = listener(
            port,
            vec![tls_chain, plain_chain],
            json!({ "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": TLS_INSPECTOR } }] }),
        );
        let _p = ProxyProcess::start(&bootstrap(vec![l], vec![], vec![])).await;
        for _ in 0..3 {
            let r = trellis_tests::client::get(&format!("http://127.0.0.1:{port}/"))
                .await
                .expect("plaintext");
            assert_eq!(r.body_text(), "in plaintext");
            let r = https_get(
                loopback(port),
                "svc.test",
                client_config(&ca.pem, None, &["h2", "http/1.1"]),
                "/",
            )
            .await
            .expect("tls");
            assert_eq!(r.body, "over tls");
            // HTTP/2 by ALPN.
            assert_eq!(r.alpn.as_deref(), Some("h2"));
            assert_eq!(r.version, http::Version::HTTP_2);
            let r = https_get(
                loopback(port),
                "svc.test",
                client_config(&ca.pem, None, &["http/1.1"]),
                "/",
            )
            .await
            .expect("tls h1");
            assert_eq!(r.alpn.as_deref(), Some("http/1.1"));
            assert_eq!(r.version, http::Version::HTTP_11);
        }
    })
    .await;
}

/// curl, with its own TLS stack, against an mTLS listener.
#[tokio::test]
async fn curl_speaks_mtls_to_a_listener() {
    if which("curl").is_none() {
        eprintln!("curl not installed; skipping");
        return;
    }
    within(Duration::from_secs(60), "curl", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let app = Echo::start("app").await;
        let port = free_port();
        let _b = backend_proxy(dir.path(), &ca, port, FRONTEND, app.addr).await;
        let client = ca.issue(&Leaf::new(&[], &[FRONTEND]));
        let (crt, key) = client.write(dir.path(), "curl-client");
        let ca_file = ca.write(dir.path(), "curl-ca");
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "-o",
                "-",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg("--cacert")
            .arg(&ca_file)
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg("--resolve")
            .arg(format!("backend.test:{port}:127.0.0.1"))
            .arg(format!("https://backend.test:{port}/from-curl"))
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.trim_end().ends_with("200 2"), "{stdout}");
        assert!(stdout.contains("/from-curl"), "{stdout}");
        // Without a client certificate curl is refused.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null"])
            .arg("--cacert")
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("backend.test:{port}:127.0.0.1"))
            .arg(format!("https://backend.test:{port}/"))
            .output()
            .await
            .expect("run curl");
        assert!(!out.status.success());
    })
    .await;
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Malformed key material is a config error naming the field (exit 2),
/// and private keys never reach `/config_dump`.
#[tokio::test]
async fn bad_key_material_is_a_config_error_and_keys_are_redacted() {
    if testing_envoy() {
        // Exit code 2 and the field path in the message are trellis's contract.
        return;
    }
    within(Duration::from_secs(60), "config errors", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let cert = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let other = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let port = free_port();
        let with_cert = |chain: &str, key: &str| {
            let common = json!({ "tls_certificates": [{
                "certificate_chain": { "inline_string": chain },
                "private_key": { "inline_string": key } }] });
            let mut c = json!({ "filters": [hcm("s", reply("ok"))] });
            c["transport_socket"] = downstream_tls(common, false);
            bootstrap(vec![listener(port, vec![c], json!({}))], vec![], vec![])
        };
        let cases = [
            (
                with_cert(
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                    &cert.key_pem,
                ),
                "certificate_chain",
            ),
            (with_cert(&cert.cert_pem, "garbage"), "private_key"),
            (
                with_cert(&cert.cert_pem, &other.key_pem),
                "private_key: does not match",
            ),
        ];
        for (i, (config, field)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.yaml"));
            std::fs::write(&path, config).expect("write");
            let (code, stderr) = run_to_exit(
                &proxy_under_test(),
                &["--mode", "validate", "-c", path.to_str().expect("utf-8")],
            )
            .await;
            assert_eq!(code, Some(2), "{stderr}");
            assert!(
                stderr.contains(
                    "transport_socket.typed_config.common_tls_context.tls_certificates[0]."
                ),
                "{stderr}"
            );
            assert!(stderr.contains(field), "{field}: {stderr}");
            assert!(
                !stderr.contains("PRIVATE KEY"),
                "key material in the error: {stderr}"
            );
        }
        let p = ProxyProcess::start(&with_cert(&cert.cert_pem, &cert.key_pem)).await;
        let dump = p.admin_get("/config_dump").await.body_text();
        assert!(!dump.contains("PRIVATE KEY"), "private key in /config_dump");
        assert!(dump.contains("[redacted]"), "{dump}");
        assert!(
            dump.contains("BEGIN CERTIFICATE"),
            "certificates are not secret"
        );
    })
    .await;
}

/// `tcp_proxy` to a cluster with an `UpstreamTlsContext` originates TLS.
#[tokio::test]
async fn tcp_proxy_originates_tls_upstream() {
    within(Duration::from_secs(60), "tcp_proxy TLS", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let server = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let tls_port = free_port();
        let mut chain = json!({ "filters": [hcm("s", reply("via tcp_proxy and tls"))] });
        chain["transport_socket"] = downstream_tls(
            json!({ "tls_certificates": [cert_files(dir.path(), "svc", &server)] }),
            false,
        );
        let tcp_port = free_port();
        let tcp_chain = json!({ "filters": [{ "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": "tls_upstream" } }] });
        let common = json!({ "validation_context": {
            "trusted_ca": { "filename": ca.write(dir.path(), "ca") } } });
        let _p = ProxyProcess::start(&bootstrap(
            vec![
                listener(tls_port, vec![chain], json!({})),
                listener(tcp_port, vec![tcp_chain], json!({})),
            ],
            vec![cluster("tls_upstream", loopback(tls_port), Some(upstream_tls(common, "svc.test")))],
            vec![],
        ))
        .await;
        let r = trellis_tests::client::get(&format!("http://127.0.0.1:{tcp_port}/"))
            .await
            .expect("through tcp_proxy");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_text(), "via tcp_proxy and tls");
    })
    .await;
}

/// Like Envoy, the TLS inspector waits for the client's first bytes: a
/// server-first client is closed when `listener_filters_timeout` passes, or
/// carried on as `raw_buffer` with `continue_on_listener_filters_timeout`.
#[tokio::test]
async fn inspector_timeout_closes_or_continues_as_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(Duration::from_secs(60), "inspector timeout", async {
        // An upstream that speaks first.
        let banner = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let banner_addr = banner.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = banner.accept().await {
                let _ = s.write_all(b"220 hello\r\n").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let tcp_chain = json!({ "filters": [{ "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp", "cluster": "banner" } }] });
        let (closing, continuing) = (free_port(), free_port());
        let inspector = |cont: bool| json!({
            "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": TLS_INSPECTOR } }],
            "listener_filters_timeout": "0.3s",
            "continue_on_listener_filters_timeout": cont,
        });
        let _p = ProxyProcess::start(&bootstrap(
            vec![
                listener(closing, vec![tcp_chain.clone()], inspector(false)),
                listener(continuing, vec![tcp_chain], inspector(true)),
            ],
            vec![cluster("banner", banner_addr, None)],
            vec![],
        ))
        .await;
        let mut buf = [0u8; 64];
        let mut s = tokio::net::TcpStream::connect(loopback(continuing)).await.expect("connect");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the banner arrives after the timeout")
            .expect("read");
        assert_eq!(&buf[..n], b"220 hello\r\n");
        let mut s = tokio::net::TcpStream::connect(loopback(closing)).await.expect("connect");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed after the timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without forwarding");
    })
    .await;
}

/// The `ssl.*` stats one proxy shows after [`ssl_scenario`]: its text stats
/// under the given scopes, with cipher names summed (each TLS stack prefers
/// its own suites) and the stats trellis leaves out dropped (OCSP,
/// certificate hashes and expiry, peer signature algorithms).
async fn ssl_stats(p: &ProxyProcess, scopes: &[String]) -> BTreeMap<String, i64> {
    let text = p.admin_get("/stats").await.body_text();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(scope) = scopes
            .iter()
            .find(|s| name.starts_with(&format!("{s}.ssl.")))
        else {
            continue;
        };
        let stat = &name[scope.len() + 1..];
        let left_out = [
            "ssl.ocsp_",
            "ssl.fail_verify_cert_hash",
            "ssl.certificate.",
            "ssl.sigalgs.",
        ];
        if left_out.iter().any(|p| stat.starts_with(p)) {
            continue;
        }
        let key = if stat.starts_with("ssl.ciphers.") {
            format!("{scope}.ssl.ciphers.*")
        } else {
            name.to_string()
        };
        *out.entry(key).or_default() += value.trim().parse::<i64>().unwrap_or(0);
    }
    out
}

/// The same Prometheus series, `family{labels}` → value, cipher names as `*`
/// (summed), for the series that name one of `scopes`.
fn ssl_series(prom: &str, scopes: &[&str]) -> BTreeMap<String, f64> {
    let cipher = regex::Regex::new(r#"(cipher_suite|envoy_ssl_cipher)="[^"]*""#).expect("regex");
    let mut out = BTreeMap::new();
    for line in prom.lines() {
        if !(line.starts_with("envoy_listener_ssl_") || line.starts_with("envoy_cluster_ssl_")) {
            continue;
        }
        if !scopes.iter().any(|s| line.contains(&format!("=\"{s}\""))) {
            continue;
        }
        if ["ocsp", "cert_hash", "certificate", "sigalgs"]
            .iter()
            .any(|x| line.contains(x))
        {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series = cipher.replace(series, r#"$1="*""#).into_owned();
        *out.entry(series).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// One proxy (`bin`) through every TLS case: on an mTLS listener a good
/// client twice (the second resumes its session), a client certificate from
/// another CA, one with a SAN that is not allowed, none, and plaintext; a
/// TLS listener without client certificates; and four clusters towards the
/// mTLS listener: a good one, one expecting another SAN, one trusting
/// another CA, one without a client certificate. Returns the proxy and the
/// stat scopes of the two listeners and four clusters.
async fn ssl_scenario(
    bin: &Path,
    dir: &Path,
    ca: &Ca,
    other_ca: &Ca,
) -> (ProxyProcess, Vec<String>) {
    let (mtls, open, plain) = (free_port(), free_port(), free_port());
    let server = ca.issue(&Leaf::new(&["backend.test"], &[BACKEND]));
    let server_files = cert_files(dir, "backend", &server);
    let ca_file = ca.write(dir, "ca");
    let mut mtls_chain = json!({ "filters": [hcm("mtls", reply("ok"))] });
    mtls_chain["transport_socket"] = downstream_tls(
        json!({
            "tls_certificates": [server_files.clone()],
            "validation_context": {
                "trusted_ca": { "filename": ca_file },
                "match_typed_subject_alt_names": uri_san(FRONTEND),
            },
        }),
        true,
    );
    let mut open_chain = json!({ "filters": [hcm("open", reply("ok"))] });
    open_chain["transport_socket"] =
        downstream_tls(json!({ "tls_certificates": [server_files] }), false);
    let routes: Vec<Value> = ["good", "badsan", "badca", "nocert"]
        .iter()
        .map(|c| json!({ "match": { "prefix": format!("/{c}") }, "route": { "cluster": c } }))
        .collect();
    let mut out = hcm("out", reply("unused"));
    out["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = json!(routes);
    let client = ca.issue(&Leaf::new(&[], &[FRONTEND]));
    let client_files = cert_files(dir, "frontend", &client);
    let upstream = |name: &str, trust: &Path, san: &str, cert: bool| {
        let mut common = json!({ "validation_context": {
            "trusted_ca": { "filename": trust },
            "match_typed_subject_alt_names": uri_san(san),
        }});
        if cert {
            common["tls_certificates"] = json!([client_files.clone()]);
        }
        cluster(
            name,
            loopback(mtls),
            Some(upstream_tls(common, "backend.test")),
        )
    };
    let other_ca_file = other_ca.write(dir, "other-ca");
    let config = bootstrap(
        vec![
            listener(mtls, vec![mtls_chain], json!({})),
            listener(open, vec![open_chain], json!({})),
            listener(plain, vec![json!({ "filters": [out] })], json!({})),
        ],
        vec![
            upstream("good", &ca_file, BACKEND, true),
            upstream(
                "badsan",
                &ca_file,
                "spiffe://trellis.test/ns/default/sa/other",
                true,
            ),
            upstream("badca", &other_ca_file, BACKEND, true),
            upstream("nocert", &ca_file, BACKEND, false),
        ],
        vec![],
    );
    let p = ProxyProcess::start_with(bin, &config, &[]).await;

    let mut resuming = (*client_config(&ca.pem, Some(&client), &["http/1.1"])).clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let resuming = std::sync::Arc::new(resuming);
    for _ in 0..2 {
        let r = https_get(loopback(mtls), "backend.test", resuming.clone(), "/").await;
        assert_eq!(r.expect("a good client certificate").status, 200);
    }
    let refused = [
        Some(other_ca.issue(&Leaf::new(&[], &[FRONTEND]))),
        Some(ca.issue(&Leaf::new(
            &[],
            &["spiffe://trellis.test/ns/default/sa/intruder"],
        ))),
        None,
    ];
    for cert in &refused {
        let cfg = client_config(&ca.pem, cert.as_ref(), &["http/1.1"]);
        let r = https_get(loopback(mtls), "backend.test", cfg, "/").await;
        assert!(
            r.is_err() || r.is_ok_and(|r| r.status != 200),
            "a bad client was served"
        );
    }
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        trellis_tests::client::get(&format!("http://127.0.0.1:{mtls}/")),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(ref r)) if r.status == 200),
        "plaintext was served"
    );
    let r = https_get(
        loopback(open),
        "backend.test",
        client_config(&ca.pem, None, &[]),
        "/",
    )
    .await;
    assert_eq!(r.expect("TLS without a client certificate").status, 200);
    for (path, status) in [
        ("good", 200),
        ("badsan", 503),
        ("badca", 503),
        ("nocert", 503),
    ] {
        let r = trellis_tests::client::get(&format!("http://127.0.0.1:{plain}/{path}"))
            .await
            .expect("the plaintext listener answers");
        assert_eq!(r.status, status, "/{path}");
    }
    let mut scopes = vec![
        format!("listener.127.0.0.1_{mtls}"),
        format!("listener.127.0.0.1_{open}"),
    ];
    scopes.extend(["good", "badsan", "badca", "nocert"].map(|c| format!("cluster.{c}")));
    (p, scopes)
}

/// Envoy's `ssl.*` stats, listener and cluster, move for the same cases in
/// trellis as in a stock Envoy on the same bootstrap, in `/stats` and in
/// `/stats/prometheus` (tag extraction included), and promtool is clean.
#[tokio::test]
async fn ssl_stats_count_each_case_as_envoy_does() {
    within(Duration::from_secs(90), "ssl stats", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let other_ca = Ca::new("some other CA");
        let envoy_bin = trellis_tests::process::require_envoy();
        let trellis_bin = trellis_tests::process::workspace_bin("trellis-proxy");
        let (envoy, e_scopes) = ssl_scenario(&envoy_bin, dir.path(), &ca, &other_ca).await;
        let (trellis, t_scopes) = ssl_scenario(&trellis_bin, dir.path(), &ca, &other_ca).await;
        // The two ran on different ports: name both `M` (mTLS) and `O` (open).
        let rename = |m: BTreeMap<String, i64>, scopes: &[String]| -> BTreeMap<String, i64> {
            m.into_iter()
                .map(|(k, v)| {
                    (
                        k.replace(&scopes[0], "listener.M")
                            .replace(&scopes[1], "listener.O"),
                        v,
                    )
                })
                .collect()
        };
        // What Envoy must show, so that the comparison means something:
        // each case moved its own counter.
        let expected: BTreeMap<String, i64> = [
            ("listener.M.ssl.handshake", 3),
            ("listener.M.ssl.session_reused", 1),
            ("listener.M.ssl.fail_verify_error", 1),
            ("listener.M.ssl.fail_verify_san", 1),
            // The client without a certificate, and cluster `nocert`.
            ("listener.M.ssl.fail_verify_no_cert", 2),
            // Plaintext, and the alerts of clusters `badsan` and `badca`.
            ("listener.M.ssl.connection_error", 3),
            ("listener.M.ssl.no_certificate", 0),
            ("listener.M.ssl.versions.TLSv1.3", 2),
            // A cluster's default maximum is TLS 1.2.
            ("listener.M.ssl.versions.TLSv1.2", 1),
            ("listener.M.ssl.curves.X25519", 3),
            ("listener.M.ssl.ciphers.*", 3),
            ("listener.O.ssl.handshake", 1),
            ("listener.O.ssl.no_certificate", 1),
            ("cluster.good.ssl.handshake", 1),
            ("cluster.good.ssl.versions.TLSv1.2", 1),
            ("cluster.badsan.ssl.fail_verify_san", 1),
            ("cluster.badca.ssl.fail_verify_error", 1),
            ("cluster.nocert.ssl.connection_error", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Refusals are counted by the server a moment after the client saw them.
        let reference =
            trellis_tests::eventually(Duration::from_secs(10), "Envoy's ssl stats", || async {
                let m = rename(ssl_stats(&envoy, &e_scopes).await, &e_scopes);
                expected
                    .iter()
                    .all(|(k, v)| m.get(k).copied().unwrap_or(0) == *v)
                    .then_some(m)
            })
            .await;
        let mut seen = BTreeMap::new();
        for _ in 0..100 {
            seen = rename(ssl_stats(&trellis, &t_scopes).await, &t_scopes);
            if seen == reference {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let differ: Vec<String> = reference
            .keys()
            .chain(seen.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| reference.get(*k) != seen.get(*k))
            .map(|k| {
                format!(
                    "{k}: envoy {:?}, trellis {:?}",
                    reference.get(k),
                    seen.get(k)
                )
            })
            .collect();
        assert!(
            differ.is_empty(),
            "ssl stats differ:\n{}",
            differ.join("\n")
        );

        // Prometheus: the same families, tags and values, and promtool clean.
        let prom_scopes = |s: &[String]| -> Vec<String> {
            s.iter()
                .map(|x| {
                    x.trim_start_matches("listener.")
                        .trim_start_matches("cluster.")
                        .to_string()
                })
                .collect()
        };
        let normalise = |prom: &str, scopes: &[String]| -> BTreeMap<String, f64> {
            let names = prom_scopes(scopes);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            ssl_series(prom, &refs)
                .into_iter()
                .map(|(k, v)| (k.replace(&names[0], "M").replace(&names[1], "O"), v))
                .collect()
        };
        let e_prom = envoy.admin_get("/stats/prometheus").await.body_text();
        let t_prom = trellis.admin_get("/stats/prometheus").await.body_text();
        let (e_series, t_series) = (normalise(&e_prom, &e_scopes), normalise(&t_prom, &t_scopes));
        assert!(
            e_series.contains_key(
                "envoy_cluster_ssl_ciphers{cipher_suite=\"*\",envoy_cluster_name=\"good\"}"
            ),
            "{e_series:#?}"
        );
        assert_eq!(
            t_series, e_series,
            "Prometheus ssl series, trellis vs envoy"
        );
        let findings = trellis_tests::metrics::promtool_findings(&t_prom);
        assert!(findings.is_empty(), "promtool: {findings:#?}");
    })
    .await;
}

/// One port, one certificate, two chains chosen by the ALPN the client
/// offers (`tls_inspector`): `h2` and `http/1.1`; a client offering none
/// gets the default chain.
#[tokio::test]
async fn alpn_selects_the_filter_chain() {
    within(Duration::from_secs(60), "ALPN", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let cert = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let chain = |name: &str, alpn: &[&str], offered: &[&str]| {
            let mut c = json!({
                "filters": [hcm(name, reply(name))],
                "transport_socket": downstream_tls(json!({
                    "alpn_protocols": offered,
                    "tls_certificates": [cert_files(dir.path(), name, &cert)] }), false),
            });
            if !alpn.is_empty() {
                c["filter_chain_match"] = json!({ "application_protocols": alpn });
            }
            c
        };
        let port = free_port();
        let mut l = listener(
            port,
            vec![
                chain("h2 chain", &["h2"], &["h2"]),
                chain("h1 chain", &["http/1.1"], &["http/1.1"]),
            ],
            json!({ "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector",
                "typed_config": { "@type": TLS_INSPECTOR } }] }),
        );
        l["default_filter_chain"] = chain("default chain", &[], &[]);
        let _p = ProxyProcess::start(&bootstrap(vec![l], vec![], vec![])).await;
        for (offered, body, version) in [
            (&["h2"][..], "h2 chain", http::Version::HTTP_2),
            (&["http/1.1"][..], "h1 chain", http::Version::HTTP_11),
            (&[][..], "default chain", http::Version::HTTP_11),
        ] {
            let r = https_get(
                loopback(port),
                "svc.test",
                client_config(&ca.pem, None, offered),
                "/",
            )
            .await
            .unwrap_or_else(|e| panic!("{offered:?}: {e}"));
            assert_eq!(r.body, body, "{offered:?}");
            assert_eq!(r.version, version, "{offered:?}");
        }
    })
    .await;
}

/// `openssl s_client ARGS` against `127.0.0.1:port`, trusting `ca`:
/// whether the handshake completed, and what it printed.
async fn openssl_handshake(port: u16, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(ca)
            .args(["-servername", "svc.test", "-verify_return_error"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("s_client finishes")
    .expect("openssl s_client runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success() && text.contains("Verify return code: 0"),
        text,
    )
}

/// A TLS listener for svc.test, with `tls_params` when given, and openssl
/// handshakes against it: each case's arguments and the cipher the
/// handshake must agree on (a prefix; `None`: refused).
async fn handshakes_against(tls_params: Option<Value>, cases: &[(&[&str], Option<&str>)]) {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("trellis test CA");
    let cert = ca.issue(&Leaf::new(&["svc.test"], &[]));
    let ca_file = ca.write(dir.path(), "ca");
    let port = free_port();
    let mut common = json!({ "tls_certificates": [cert_files(dir.path(), "svc", &cert)] });
    if let Some(params) = tls_params {
        common["tls_params"] = params;
    }
    let mut chain = json!({ "filters": [hcm("s", reply("ok"))] });
    chain["transport_socket"] = downstream_tls(common, false);
    let _p = ProxyProcess::start(&bootstrap(
        vec![listener(port, vec![chain], json!({}))],
        vec![],
        vec![],
    ))
    .await;
    for (args, cipher) in cases {
        let (ok, out) = openssl_handshake(port, &ca_file, args).await;
        assert_eq!(ok, cipher.is_some(), "{args:?}: {out}");
        if let Some(cipher) = cipher {
            assert!(
                out.contains(&format!("Cipher is {cipher}")),
                "{args:?}: {out}"
            );
        }
    }
}

/// TLS 1.2 and 1.3 only, modern suites only: openssl offering TLS 1.1, or
/// TLS 1.2 with CBC suites alone, is refused; TLS 1.2 with AEAD suites and
/// TLS 1.3 are served.
#[tokio::test]
async fn old_protocols_and_weak_suites_are_refused() {
    if which("openssl").is_none() {
        eprintln!("openssl not installed; skipping");
        return;
    }
    // SECLEVEL=0 lets the client offer what it would not by default,
    // so that a refusal is the server's.
    let cbc_only = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:AES128-SHA:AES256-SHA:@SECLEVEL=0";
    let cases: [(&[&str], Option<&str>); 5] = [
        (&["-tls1_3"], Some("TLS_AES_")),
        (&["-tls1_2"], Some("ECDHE-ECDSA-")),
        (&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], None),
        (&["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"], None),
        (&["-tls1_2", "-cipher", cbc_only], None),
    ];
    within(
        Duration::from_secs(60),
        "TLS versions",
        handshakes_against(None, &cases),
    )
    .await;
}

/// `tls_params.cipher_suites` and `ecdh_curves` narrow what a listener
/// offers, as in Envoy: a client offering only a suite or curve left out is
/// refused, and with the listed ones the handshake uses them.
#[tokio::test]
async fn cipher_and_curve_lists_narrow_what_a_listener_offers() {
    if which("openssl").is_none() {
        eprintln!("openssl not installed; skipping");
        return;
    }
    let params = json!({
        "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
        "ecdh_curves": ["P-384"],
    });
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["-tls1_2"], Some("ECDHE-ECDSA-AES256-GCM-SHA384")),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            Some("ECDHE-ECDSA-AES256-GCM-SHA384"),
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            None,
        ),
        (&["-tls1_2", "-curves", "X25519"], None),
        (&["-tls1_3", "-curves", "X25519"], None),
        (&["-tls1_3", "-curves", "P-384"], Some("TLS_AES_")),
    ];
    within(
        Duration::from_secs(60),
        "tls_params lists",
        handshakes_against(Some(params), &cases),
    )
    .await;
}

/// TLS 1.0/1.1, and cipher suites trellis does not offer (CBC, RSA key
/// exchange), in config are errors naming the field (exit 2), not silently
/// weaker or different settings.
#[tokio::test]
async fn old_protocol_versions_and_weak_cipher_suites_in_config_are_errors() {
    if testing_envoy() {
        // Envoy accepts both; refusing them is trellis's contract.
        return;
    }
    within(Duration::from_secs(60), "tls_params", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let cert = ca.issue(&Leaf::new(&["svc.test"], &[]));
        let port = free_port();
        let with_params = |params: Value| {
            let common = json!({
                "tls_params": params,
                "tls_certificates": [cert_files(dir.path(), "svc", &cert)] });
            let mut c = json!({ "filters": [hcm("s", reply("ok"))] });
            c["transport_socket"] = downstream_tls(common, false);
            bootstrap(vec![listener(port, vec![c], json!({}))], vec![], vec![])
        };
        let cases = [
            (
                json!({ "tls_minimum_protocol_version": "TLSv1_1" }),
                "tls_params.tls_minimum_protocol_version: TLSv1_1 is not supported",
            ),
            (
                json!({ "tls_maximum_protocol_version": "TLSv1_0" }),
                "tls_params.tls_maximum_protocol_version: TLSv1_0 is not supported",
            ),
            (
                json!({ "cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA"] }),
                "tls_params.cipher_suites[1]: \"AES128-SHA\" is not a cipher suite trellis offers",
            ),
        ];
        for (i, (params, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("params{i}.json"));
            std::fs::write(&path, with_params(params.clone())).expect("write");
            let (code, stderr) = run_to_exit(
                &proxy_under_test(),
                &["--mode", "validate", "-c", path.to_str().expect("utf-8")],
            )
            .await;
            assert_eq!(code, Some(2), "{params}: {stderr}");
            assert!(stderr.contains(want), "{params}: {stderr}");
            assert!(stderr.contains("common_tls_context.tls_params"), "{stderr}");
        }
    })
    .await;
}

/// A TLS server (rustls, not the proxy under test) that answers every
/// request with the SNI its client sent, `-` for none.
async fn sni_recorder(cert: &Issued) -> SocketAddr {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                let sni = start
                    .client_hello()
                    .server_name()
                    .unwrap_or("-")
                    .to_string();
                let Ok(mut tls) = start.into_stream(config).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{sni}",
                    sni.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// The cluster's `sni` is what the upstream sees in the ClientHello.
#[tokio::test]
async fn upstream_sni_is_sent() {
    within(Duration::from_secs(60), "upstream SNI", async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("trellis test CA");
        let server = ca.issue(&Leaf::new(&["backend.test"], &[]));
        let upstream = sni_recorder(&server).await;
        let port = free_port();
        let common = json!({
            "validation_context": { "trusted_ca": { "filename": ca.write(dir.path(), "ca") } },
        });
        let _p = ProxyProcess::start(&bootstrap(
            vec![listener(
                port,
                vec![json!({ "filters": [hcm("front", to_cluster("backend"))] })],
                json!({}),
            )],
            vec![cluster(
                "backend",
                upstream,
                Some(upstream_tls(common, "backend.test")),
            )],
            vec![],
        ))
        .await;
        let r = trellis_tests::client::get(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("the proxy answers");
        assert_eq!((r.status, r.body_text()), (200, "backend.test".to_string()));
    })
    .await;
}
