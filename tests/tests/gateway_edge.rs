//! trellis-proxy alone at the edge, from a static bootstrap, in front of a
//! plain HTTP service, driven by third-party clients (curl, openssl
//! s_client, h2load):
//!
//! - one TLS port with several certificates chosen by SNI (exact and
//!   wildcard names), and a chain without `server_names` as the default;
//! - one chain whose TLS context holds several certificates, chosen by SNI
//!   against their names (exact, then wildcard, else the first);
//! - HTTP/2 or HTTP/1.1 by ALPN;
//! - TLS passthrough: a chain selected by SNI proxies the still-encrypted
//!   stream to a TCP backend that terminates TLS with its own certificate;
//! - a plain-HTTP port that redirects to HTTPS;
//! - `X-Forwarded-*` at the trust boundary (`use_remote_address`), and
//!   client-sent `x-envoy-*` headers dropped.
//!
//! With `TRELLIS_TEST_PROXY=envoy` the same checks run against stock Envoy.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::process::ProxyProcess;
use trellis_tests::tls::{Ca, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::{eventually, free_port, within};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// A connection manager at the edge whose one route does `action`.
fn edge_hcm(stat: &str, action: Value) -> Value {
    let mut route = json!({ "match": { "prefix": "/" } });
    if let (Some(r), Some(a)) = (route.as_object_mut(), action.as_object()) {
        r.extend(a.clone());
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM,
        "stat_prefix": stat,
        "use_remote_address": true,
        "upgrade_configs": [{ "upgrade_type": "websocket" }],
        "route_config": { "name": stat, "virtual_hosts": [
            { "name": "all", "domains": ["*"], "routes": [route] }
        ]},
        "http_filters": [{ "name": "envoy.filters.http.router",
            "typed_config": { "@type": ROUTER } }],
    }})
}

fn tls_socket(dir: &Path, name: &str, cert: &Issued) -> Value {
    tls_socket_with(dir, &[(name, cert)])
}

/// A TLS context holding every one of `certs`, in order.
fn tls_socket_with(dir: &Path, certs: &[(&str, &Issued)]) -> Value {
    let certs: Vec<Value> = certs
        .iter()
        .map(|(name, cert)| {
            let (crt, key) = cert.write(dir, name);
            json!({ "certificate_chain": { "filename": crt }, "private_key": { "filename": key } })
        })
        .collect();
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": certs,
        },
    }})
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
    "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
        { "endpoint": { "address": { "socket_address": {
            "address": "127.0.0.1", "port_value": port } } } }
    ]}]}})
}

fn listener(name: &str, port: u16, chains: Vec<Value>, inspector: bool) -> Value {
    let mut l = json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": chains,
    });
    if inspector {
        l["listener_filters"] = json!([{ "name": "envoy.filters.listener.tls_inspector",
            "typed_config": { "@type": TLS_INSPECTOR } }]);
    }
    l
}

/// A file access log of the SNI the downstream ClientHello asked for.
fn sni_log(path: &Path) -> Value {
    json!({ "name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": { "text_format_source": { "inline_string": "sni=%REQUESTED_SERVER_NAME%\n" } } } })
}

/// The edge proxy, its app and its certificates.
struct Edge {
    proxy: ProxyProcess,
    _app: Echo,
    dir: tempfile::TempDir,
    /// The TLS port (SNI, passthrough, ALPN).
    https: u16,
    /// The plain-HTTP port that redirects.
    http: u16,
    /// A TLS port whose one chain holds several certificates.
    multi: u16,
    ca: PathBuf,
}

async fn edge() -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("edge test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let a = ca.issue(&Leaf::new(&["a.example.com"], &[]));
    let wildcard = ca.issue(&Leaf::new(&["*.b.example.com"], &[]));
    let default = ca.issue(&Leaf::new(&["default.example.com"], &[]));
    let pass = ca.issue(&Leaf::new(&["pass.example.com"], &[]));
    let app = Echo::start("app").await;
    let (https, http, backend, multi) = (free_port(), free_port(), free_port(), free_port());
    let to_app = json!({ "route": { "cluster": "app" } });
    let sni = |names: &[&str]| json!({ "server_names": names });
    let front = listener(
        "https",
        https,
        vec![
            json!({ "filter_chain_match": sni(&["a.example.com"]),
                "filters": [edge_hcm("edge_a", to_app.clone())],
                "transport_socket": tls_socket(dir.path(), "a", &a) }),
            json!({ "filter_chain_match": sni(&["*.b.example.com"]),
                "filters": [edge_hcm("edge_b", to_app.clone())],
                "transport_socket": tls_socket(dir.path(), "b", &wildcard) }),
            // Not terminated here: the backend holds pass.example.com's key.
            json!({ "filter_chain_match": sni(&["pass.example.com"]),
                "filters": [{ "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": TCP_PROXY, "stat_prefix": "passthrough", "cluster": "tls_backend",
                    "access_log": [sni_log(&dir.path().join("passthrough.log"))] } }] }),
            // No server_names: every other name, and none.
            json!({ "filters": [edge_hcm("edge_default", to_app.clone())],
                "transport_socket": tls_socket(dir.path(), "default", &default) }),
        ],
        true,
    );
    let redirect = listener(
        "http",
        http,
        vec![json!({ "filters": [edge_hcm("edge_http", json!({
            "redirect": { "https_redirect": true, "port_redirect": https } }))] })],
        false,
    );
    // The TLS backend behind the passthrough chain.
    let mut backend_hcm = edge_hcm(
        "backend",
        json!({ "direct_response": {
            "status": 200, "body": { "inline_string": "passthrough backend" } } }),
    );
    backend_hcm["typed_config"]["access_log"] = json!([sni_log(&dir.path().join("backend.log"))]);
    let tls_backend = listener(
        "tls_backend",
        backend,
        vec![json!({
            "filters": [backend_hcm],
            "transport_socket": tls_socket(dir.path(), "pass", &pass) })],
        false,
    );
    // The wildcard comes before the exact name it also covers: exact wins.
    let multi_certs = [
        (
            "m_first",
            &ca.issue(&Leaf::new(&["first.m.example.com"], &[])),
        ),
        (
            "m_one",
            &ca.issue(&Leaf::new(&["one.m.example.com", "uno.m.example.com"], &[])),
        ),
        ("m_wild", &ca.issue(&Leaf::new(&["*.w.m.example.com"], &[]))),
        ("m_x", &ca.issue(&Leaf::new(&["x.w.m.example.com"], &[]))),
    ];
    let multi_listener = listener(
        "multi",
        multi,
        vec![json!({ "filters": [edge_hcm("edge_multi", to_app.clone())],
            "transport_socket_connect_timeout": "0.5s",
            "transport_socket": tls_socket_with(dir.path(), &multi_certs) })],
        false,
    );
    let bootstrap = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [front, redirect, tls_backend, multi_listener],
            "clusters": [static_cluster("app", app.addr.port()), static_cluster("tls_backend", backend)],
        },
    });
    let proxy = ProxyProcess::start(&bootstrap.to_string()).await;
    Edge {
        proxy,
        _app: app,
        dir,
        https,
        http,
        multi,
        ca: ca_file,
    }
}

/// Runs a third-party client, which CI installs (`.ci/run`).
async fn run(bin: &str, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{bin} did not finish in 30s"))
    .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); .ci/run installs it"));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `curl --resolve NAME:PORT:127.0.0.1 ARGS https://NAME:PORT/PATH`, with
/// the status and HTTP version on a last line.
async fn curl_https(e: &Edge, name: &str, args: &[&str], path: &str) -> (String, String) {
    let resolve = format!("{name}:{}:127.0.0.1", e.https);
    let url = format!("https://{name}:{}{path}", e.https);
    let ca = e.ca.to_string_lossy().into_owned();
    let mut all = vec![
        "-sS",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    all.extend_from_slice(args);
    all.push(&url);
    let out = run("curl", &all).await;
    assert!(out.status.success(), "curl {url}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (body.to_string(), last.to_string())
}

#[tokio::test]
async fn curl_gets_the_certificate_sni_asks_for_over_http1_and_http2() {
    within(Duration::from_secs(60), "curl over TLS", async {
        let e = edge().await;
        // curl verifies the certificate against the name it asked for, so
        // a 200 proves the chain SNI selected.
        for (name, flag, version) in [
            ("a.example.com", "--http1.1", "1.1"),
            ("a.example.com", "--http2", "2"),
            ("x.b.example.com", "--http2", "2"),
        ] {
            let (body, last) = curl_https(&e, name, &[flag], "/hello").await;
            assert_eq!(last, format!("200 {version}"), "{name} {flag}");
            let seen: Value = serde_json::from_str(&body).expect("echo JSON");
            assert_eq!(seen["path"], "/hello");
            assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_edge_is_the_trust_boundary_for_forwarded_and_envoy_headers() {
    within(Duration::from_secs(60), "headers at the edge", async {
        let e = edge().await;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = format!("traceparent: {traceparent}");
        let (body, last) = curl_https(
            &e,
            "a.example.com",
            &[
                "-H",
                "x-forwarded-for: 203.0.113.9",
                "-H",
                "x-forwarded-proto: http",
                "-H",
                "x-envoy-retry-on: 5xx",
                "-H",
                "x-envoy-internal: true",
                "-H",
                "x-envoy-original-path: /admin",
                "-H",
                "x-request-id: chosen-by-client",
                "-H",
                &tp,
            ],
            "/",
        )
        .await;
        assert!(last.starts_with("200"), "{last}");
        let seen: Value = serde_json::from_str(&body).expect("echo JSON");
        let h = &seen["headers"];
        // The client's XFF is kept and the peer appended; the scheme is
        // what the edge saw, not what the client claimed.
        let xff = h["x-forwarded-for"].as_str().unwrap_or("");
        assert!(
            xff.starts_with("203.0.113.9,") && xff.len() > "203.0.113.9,".len(),
            "{seen}"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "{seen}");
        assert_eq!(h["x-envoy-external-address"], "127.0.0.1", "{seen}");
        for stripped in [
            "x-envoy-retry-on",
            "x-envoy-internal",
            "x-envoy-original-path",
        ] {
            assert!(
                h.get(stripped).is_none(),
                "{stripped} reached the app: {seen}"
            );
        }
        // An external client cannot pick the request id; trace context
        // passes through untouched.
        assert_ne!(h["x-request-id"], "chosen-by-client", "{seen}");
        assert_eq!(h["traceparent"], traceparent, "{seen}");
    })
    .await;
}

/// What `openssl s_client -servername NAME` was shown on the SNI port.
async fn served_subject(e: &Edge, name: &str, alpn: &str) -> String {
    served_subject_on(e, e.https, name, alpn).await
}

/// What `openssl s_client -servername NAME` was shown on `port`.
async fn served_subject_on(e: &Edge, port: u16, name: &str, alpn: &str) -> String {
    let connect = format!("127.0.0.1:{port}");
    let ca = e.ca.to_string_lossy().into_owned();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            name,
            "-CAfile",
            &ca,
            "-alpn",
            alpn,
        ],
    )
    .await;
    let all = text(&out);
    assert!(all.contains("Verify return code: 0 (ok)"), "{name}: {all}");
    all
}

#[tokio::test]
async fn openssl_s_client_sees_the_certificate_chosen_by_sni_with_a_default() {
    within(Duration::from_secs(60), "openssl s_client", async {
        let e = edge().await;
        for (name, subject) in [
            ("a.example.com", "CN = a.example.com"),
            ("x.b.example.com", "CN = *.b.example.com"),
            // No chain names it: the chain without server_names.
            ("unknown.example.com", "CN = default.example.com"),
            // Passed through, still encrypted, to the backend's certificate.
            ("pass.example.com", "CN = pass.example.com"),
        ] {
            let all = served_subject(&e, name, "h2,http/1.1").await;
            assert!(all.contains(&format!("subject={subject}")), "{name}: {all}");
        }
        let all = served_subject(&e, "a.example.com", "h2,http/1.1").await;
        assert!(all.contains("ALPN protocol: h2"), "{all}");
        let all = served_subject(&e, "a.example.com", "http/1.1").await;
        assert!(all.contains("ALPN protocol: http/1.1"), "{all}");
    })
    .await;
}

#[tokio::test]
async fn one_tls_context_with_several_certificates_serves_the_one_sni_names() {
    within(Duration::from_secs(60), "certificates by SNI", async {
        let e = edge().await;
        for (name, subject) in [
            ("one.m.example.com", "CN = one.m.example.com"),
            // Any DNS SAN selects, not only the first.
            ("uno.m.example.com", "CN = one.m.example.com"),
            // An exact name beats a wildcard listed before it.
            ("x.w.m.example.com", "CN = x.w.m.example.com"),
            ("y.w.m.example.com", "CN = *.w.m.example.com"),
            // A wildcard covers one label only: the first certificate.
            ("a.y.w.m.example.com", "CN = first.m.example.com"),
            ("other.example.com", "CN = first.m.example.com"),
        ] {
            let all = served_subject_on(&e, e.multi, name, "h2").await;
            let shown = format!("subject={subject}");
            // s_client verifies against the CA only, so the default
            // certificate for an unnamed host still verifies.
            assert!(all.contains(&shown), "{name}: {all}");
        }
    })
    .await;
}

/// Clients that connect and never finish a handshake are cut off after the
/// chain's `transport_socket_connect_timeout`, and counted; the port still
/// serves.
#[tokio::test]
async fn stalled_handshakes_time_out_and_are_counted() {
    within(Duration::from_secs(60), "handshake timeout", async {
        let e = edge().await;
        let stalled = (0..20).map(|i| async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", e.multi))
                .await
                .expect("connect");
            // Half of them send the start of a ClientHello record, then stall.
            if i % 2 == 0 {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
            }
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
                .await
                .is_ok()
        });
        let cut = futures::future::join_all(stalled).await;
        assert!(
            cut.iter().all(|c| *c),
            "a stalled handshake was left open: {cut:?}"
        );
        let stat = format!(
            "listener.127.0.0.1_{}.downstream_cx_transport_socket_connect_timeout",
            e.multi
        );
        assert_eq!(e.proxy.stat(&stat).await, 20);
        let all = served_subject_on(&e, e.multi, "one.m.example.com", "h2").await;
        assert!(all.contains("subject=CN = one.m.example.com"), "{all}");
    })
    .await;
}

#[tokio::test]
async fn tls_passthrough_by_sni_reaches_the_backend_that_terminates() {
    within(Duration::from_secs(60), "passthrough", async {
        let e = edge().await;
        for flag in ["--http1.1", "--http2"] {
            let (body, last) = curl_https(&e, "pass.example.com", &[flag], "/").await;
            assert!(last.starts_with("200"), "{flag}: {last}");
            assert_eq!(body, "passthrough backend");
        }
        // The requested server name is what tls_inspector read, as in Envoy:
        // the passthrough chain's listener has one; the backend, which ends
        // TLS without one, has none (Envoy writes access logs every 10 s).
        for (log, line) in [
            ("passthrough.log", "sni=pass.example.com\n"),
            ("backend.log", "sni=-\n"),
        ] {
            let path = e.dir.path().join(log);
            eventually(Duration::from_secs(15), log, || {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                async move { (text == line.repeat(2)).then_some(()) }
            })
            .await;
        }
    })
    .await;
}

#[tokio::test]
async fn plain_http_is_redirected_to_https() {
    within(Duration::from_secs(60), "https redirect", async {
        let e = edge().await;
        let resolve_http = format!("a.example.com:{}:127.0.0.1", e.http);
        let url = format!("http://a.example.com:{}/p/q?x=1", e.http);
        let out = run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "--resolve",
                &resolve_http,
                &url,
            ],
        )
        .await;
        assert_eq!(
            text(&out),
            format!("301 https://a.example.com:{}/p/q?x=1", e.https)
        );
        // Followed, the redirect lands on the app over TLS.
        let resolve_https = format!("a.example.com:{}:127.0.0.1", e.https);
        let ca = e.ca.to_string_lossy().into_owned();
        let out = run(
            "curl",
            &[
                "-sS",
                "-L",
                "--cacert",
                &ca,
                "--resolve",
                &resolve_http,
                "--resolve",
                &resolve_https,
                &url,
            ],
        )
        .await;
        let seen: Value = serde_json::from_str(&text(&out)).expect("echo JSON");
        assert_eq!(seen["path"], "/p/q?x=1", "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    })
    .await;
}

#[tokio::test]
async fn h2load_over_tls_completes_every_request() {
    within(Duration::from_secs(60), "h2load over TLS", async {
        let e = edge().await;
        let connect = format!("127.0.0.1:{}", e.https);
        let url = format!("https://a.example.com:{}/", e.https);
        let out = run(
            "h2load",
            &[
                "-n",
                "300",
                "-c",
                "3",
                "-m",
                "10",
                "--connect-to",
                &connect,
                &url,
            ],
        )
        .await;
        let all = text(&out);
        assert!(all.contains("Application protocol: h2"), "{all}");
        assert!(
            all.contains("requests: 300 total, 300 started, 300 done, 300 succeeded"),
            "{all}"
        );
        assert!(all.contains("status codes: 300 2xx"), "{all}");
    })
    .await;
}
