//! mTLS across the mesh end to end: trellis-control's CA issues each sidecar
//! its SVID over SDS, listeners are STRICT, and client policies verify the
//! server's SPIFFE ID.
//!
//! Node `client` (sidecar A) calls virtual service `color`, provided by node
//! `blue` (sidecar B in front of app blue, STRICT TLS with mesh-issued
//! identities). Node `intruder` (sidecar C) reaches sidecar B's ingress
//! through a service `shadow` whose node's only instance is that ingress,
//! also over TLS with its own valid SVID; B accepts only the nodes that list
//! its services as backends, so C's requests fail.
//!
//! Every bootstrap reaches xDS over TLS, trusting the CA bundle it got from
//! the API, so node tokens and SVID keys never cross in clear text. Further
//! tests: what a stolen, a revoked token and a proxy not trusting the CA get;
//! the operator's xDS certificate; clear-text xDS only when asked on both
//! sides; and a CA rotation with an overlap, checked with `openssl s_client`
//! presenting a client certificate to a STRICT listener. Another reads both
//! sidecars' metrics: each hop's per-peer series name the other (the
//! caller's verified identity on B, the target service and node on A), so
//! one scrape per proxy draws the service graph, for HTTP requests and TCP
//! connections alike.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::control::Control;
use trellis_tests::process::{workspace_bin, ProxyProcess};
use trellis_tests::tls::Leaf;
use trellis_tests::upstream::{Echo, TcpEcho};
use trellis_tests::{client, eventually, free_port};

/// A bootstrap for `node` with no token flags: xDS over TLS, carrying the
/// node's token (issued on its first bootstrap, the same one after).
async fn bootstrap(control: &Control, node: &str, ports: (u16, u16)) -> String {
    control
        .bootstrap(("--virtual-node", node), ports, &[])
        .await
}

/// The bearer token a bootstrap carries.
fn bearer(config: &str) -> String {
    let doc: Value = serde_yaml::from_str(config).expect("bootstrap YAML");
    let value = doc["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]
        ["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {config}"));
    value
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_string()
}

/// The app that answered a request for `host` through the egress port.
async fn upstream(egress: u16, host: &str) -> Option<String> {
    let r = client::request(
        Method::GET,
        &format!("http://127.0.0.1:{egress}/hello"),
        &[("host", host)],
        "",
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.echoed()["upstream"].as_str().unwrap_or("").to_string())
}

/// Mesh-issued identities (`sds`) on both sides.
fn mesh_tls() -> Value {
    json!({
        "certificate": {"sds": {"secretName": "trellis-svid"}},
        "validation": {"trust": {"sds": {"secretName": "trellis-ca"}}},
    })
}

fn node(name: &str, port: u16, backends: &[&str], strict: bool) -> Value {
    let mut listener = json!({"portMapping": {"port": port, "protocol": "http"}});
    if strict {
        let mut tls = mesh_tls();
        tls["mode"] = json!("STRICT");
        listener["tls"] = tls;
    }
    let mut policy = mesh_tls();
    policy["enforce"] = json!(true);
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": [listener],
        "backends": backends.iter()
            .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
            .collect::<Vec<_>>(),
        "backendDefaults": {"clientPolicy": {"tls": policy}},
    }})
}

fn service(name: &str, provider: &str) -> Value {
    json!({"meshName": "m", "virtualServiceName": name, "spec": {
        "provider": {"virtualNode": {"virtualNodeName": provider}}}})
}

async fn sidecar(proxy: &Path, bootstrap: &str) -> ProxyProcess {
    ProxyProcess::start_with(proxy, bootstrap, &[]).await
}

#[tokio::test]
async fn strict_mtls_between_sidecars_refuses_a_node_not_allowed() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let blue_port = blue.addr.port();
    let (a, b, c) = (
        (free_port(), free_port()),
        (free_port(), free_port()),
        (free_port(), free_port()),
    );
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue_port, &[], true),
            node("client", 9, &["color"], false),
            node("intruder", 9, &["shadow"], false),
            node("blue-shadow", blue_port, &[], false),
            service("color", "blue"),
            service("shadow", "blue-shadow"),
        ])
        .await;
    // blue-shadow's only instance is sidecar B's ingress.
    let ingress_b = b.0.to_string();
    control
        .cli(&[
            "register-instance",
            "--mesh",
            "m",
            "--virtual-node",
            "blue-shadow",
            "--address",
            "127.0.0.1",
            "--port",
            &ingress_b,
        ])
        .await;
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    let sidecar_c = sidecar(&proxy, &bootstrap(&control, "intruder", c).await).await;

    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;
    let before = blue.count();
    // Plain text into B's STRICT ingress is refused.
    let plain = client::get(&format!("http://127.0.0.1:{}/direct", b.0)).await;
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain text must not pass a STRICT listener"
    );
    // The intruder has a valid SVID, but not one B accepts.
    for _ in 0..5 {
        assert_eq!(upstream(c.1, "shadow").await, None);
    }
    assert_eq!(
        blue.count(),
        before,
        "no request of the intruder reached blue"
    );
    // ... and B counted the refusals (Envoy's listener `ssl.fail_verify_san`).
    let refused = format!("listener.127.0.0.1_{}.ssl.fail_verify_san", b.0);
    assert!(sidecar_b.stat(&refused).await >= 5, "{refused}");
    // SVID keys travel only inside the xDS stream: never in the proxy's
    // config dump, the control plane's log or its API.
    let dump = sidecar_b.admin_get("/config_dump").await.body_text();
    assert!(
        dump.contains("trellis-svid") && dump.contains("[redacted]"),
        "{dump}"
    );
    assert!(!dump.contains("PRIVATE KEY"), "a key in /config_dump");
    let status = control.cli(&["status", "--json"]).await;
    assert!(!status.contains("PRIVATE KEY"), "a key in the API");
    assert!(!control.log().contains("PRIVATE KEY"), "a key in the log");

    drop((sidecar_a, sidecar_b, sidecar_c, control));
}

/// A proxy started on `config` does not become ready within three seconds:
/// the control plane refused its stream (or it could not connect at all).
async fn never_ready(proxy: &Path, config: &str) -> bool {
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        ProxyProcess::try_start_with(proxy, config, &[]),
    )
    .await;
    !matches!(r, Ok(Ok(_)))
}

/// The PEM of a dynamic secret in a proxy's `/config_dump`: the
/// certificate chain of `trellis-svid`, or the trusted CAs of `trellis-ca`.
async fn secret_pem(p: &ProxyProcess, name: &str) -> Option<String> {
    let dump: Value = serde_json::from_str(&p.admin_get("/config_dump").await.body_text()).ok()?;
    let secrets = dump["configs"]
        .as_array()?
        .iter()
        .find_map(|c| c["dynamic_active_secrets"].as_array())?;
    let s = &secrets.iter().find(|s| s["name"] == name)?["secret"];
    let pem = s["tls_certificate"]["certificate_chain"]["inline_string"]
        .as_str()
        .or_else(|| s["validation_context"]["trusted_ca"]["inline_string"].as_str())?;
    Some(pem.to_string())
}

/// The common name of the CA that issued a proxy's SVID.
async fn svid_issuer(p: &ProxyProcess) -> Option<String> {
    Some(identity(&secret_pem(p, "trellis-svid").await?).1)
}

/// The URI SANs and the issuer's common name of the first certificate of a PEM.
fn identity(pem: &str) -> (Vec<String>, String) {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    (uris, issuer)
}

/// notAfter - notBefore of the first certificate of a PEM.
fn lifetime(pem: &str) -> Duration {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let v = cert.validity();
    let secs = v.not_after.timestamp() - v.not_before.timestamp();
    Duration::from_secs(u64::try_from(secs).expect("notAfter after notBefore"))
}

/// How `openssl s_client` talks to a port.
enum Probe<'a> {
    /// Handshake only, the server certificate checked for IP SAN 127.0.0.1
    /// (the xDS port).
    Handshake,
    /// Present this certificate and key (a sidecar's SVID has no IP SAN, so
    /// only its chain is checked) and send `request`.
    Request(&'a Path, &'a Path, &'a str),
}

/// `openssl s_client` against `127.0.0.1:port`, trusting `ca`: its exit
/// status and stdout.
async fn s_client(port: u16, ca: &Path, probe: Probe<'_>) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error");
    let request = match probe {
        Probe::Handshake => {
            cmd.args(["-verify_ip", "127.0.0.1"]);
            ""
        }
        Probe::Request(crt, key, request) => {
            cmd.arg("-cert").arg(crt).arg("-key").arg(key);
            request
        }
    };
    if !request.is_empty() {
        // Quiet: only the server's bytes on stdout, read until it closes.
        cmd.arg("-quiet");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client runs (apt-get install openssl)");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(request.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("s_client finishes")
        .expect("s_client output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Node tokens travel over TLS xDS. A stolen token opens a stream only as
/// its own node, and that proxy gets that node's identity and nothing more;
/// a revoked token opens nothing; a proxy that does not trust the control
/// plane's CA, or speaks clear text to its TLS port, never connects.
#[tokio::test]
async fn node_tokens_over_tls_xds() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            // STRICT listeners, so that the sidecars ask for their SVIDs.
            node("blue", blue.addr.port(), &[], true),
            node("intruder", 9, &[], true),
        ])
        .await;
    let ports = || (free_port(), free_port());
    // `bootstrap` without flags writes the node's token; bootstrapping a
    // second replica hands out the same one, so the first stays connected.
    let own = bootstrap(&control, "intruder", ports()).await;
    assert!(own.contains("UpstreamTlsContext"), "{own}");
    let sidecar_c = sidecar(&proxy, &own).await;
    let replica = bootstrap(&control, "intruder", ports()).await;
    assert_eq!(bearer(&replica), bearer(&own));
    let reused = control
        .cli(&[
            "token",
            "issue",
            "--reuse",
            "--mesh",
            "m",
            "--virtual-node",
            "intruder",
        ])
        .await;
    assert_eq!(reused.trim(), bearer(&own));
    let (svid, _) = identity(
        &secret_pem(&sidecar_c, "trellis-svid")
            .await
            .expect("the intruder's SVID"),
    );
    assert_eq!(svid, ["spiffe://trellis.local/mesh/m/virtualNode/intruder"]);
    // The default lifetime: 24 h, backdated a minute for clock skew.
    let pem = secret_pem(&sidecar_c, "trellis-svid").await.expect("SVID");
    assert_eq!(lifetime(&pem), Duration::from_secs(24 * 3600 + 60));

    // Blue's token, stolen by the intruder from the Kubernetes Secret the
    // injector's sidecars of blue read (both name it with
    // tokens::k8s_secret_name; control/tests/inject.rs checks the reference),
    // printed as control/README.md says to create it.
    let secret = control
        .cli(&[
            "token",
            "issue",
            "--reuse",
            "--mesh",
            "m",
            "--virtual-node",
            "blue",
            "--output",
            "k8s-secret",
            "--namespace",
            "shop",
        ])
        .await;
    let secret: Value = serde_yaml::from_str(&secret).expect("a Secret manifest");
    assert_eq!(
        (&secret["kind"], &secret["metadata"]["namespace"]),
        (&json!("Secret"), &json!("shop"))
    );
    assert!(
        secret["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("trellis-token-m-blue-")),
        "{secret}"
    );
    let token = secret["stringData"]["token"].as_str().expect("the token");
    let with = |node: &str, extra: Vec<String>| {
        let control = &control;
        let node = node.to_string();
        async move {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            control
                .bootstrap(("--virtual-node", &node), ports(), &extra)
                .await
        }
    };
    let token_flag = vec!["--token".to_string(), token.to_string()];
    // Under the intruder's own node id it opens nothing.
    let as_intruder = with("intruder", token_flag.clone()).await;
    assert!(
        never_ready(&proxy, &as_intruder).await,
        "another node's token was accepted"
    );
    // Under blue's id it opens blue, and only blue's identity comes with it.
    let as_blue = with("blue", token_flag).await;
    let thief = sidecar(&proxy, &as_blue).await;
    let (svid, _) = identity(&secret_pem(&thief, "trellis-svid").await.expect("an SVID"));
    assert_eq!(svid, ["spiffe://trellis.local/mesh/m/virtualNode/blue"]);

    // Revoked, the token loses the stream it opened, and opens no other.
    control
        .cli(&["token", "revoke", "--mesh", "m", "--virtual-node", "blue"])
        .await;
    eventually(
        Duration::from_secs(10),
        "the thief's stream to end",
        || async {
            let proxies = control.proxies().await;
            let blue = proxies
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["node_id"] == "mesh/m/virtualNode/blue");
            (!blue).then_some(())
        },
    )
    .await;
    drop(thief);
    // A proxy that does not trust the mesh CA; one speaking clear text to
    // the TLS port. Both hold blue's new, valid token, so only TLS can stop
    // them; the old one stays revoked.
    let other_ca = trellis_tests::tls::Ca::new("not the mesh CA");
    let other = other_ca.write(control.dir.path(), "other-ca");
    let fresh = control
        .cli(&["token", "issue", "--mesh", "m", "--virtual-node", "blue"])
        .await;
    let fresh = fresh.trim().to_string();
    let untrusting = with(
        "blue",
        vec![
            "--token".into(),
            fresh.clone(),
            "--xds-ca".into(),
            other.to_string_lossy().into_owned(),
        ],
    )
    .await;
    let plain = with(
        "blue",
        vec!["--token".into(), fresh, "--xds-plaintext".into()],
    )
    .await;
    let (revoked, untrusting, plain) = tokio::join!(
        never_ready(&proxy, &as_blue),
        never_ready(&proxy, &untrusting),
        never_ready(&proxy, &plain),
    );
    assert!(revoked, "a revoked token opened a stream");
    assert!(untrusting, "a proxy not trusting the mesh CA connected");
    assert!(plain, "a clear-text proxy connected to the TLS port");
    let log = control.log();
    assert!(log.contains("refused an ADS stream"), "{log}");
    assert!(log.contains("xDS TLS handshake failed"), "{log}");

    // A third-party TLS client: the xDS port verifies against the mesh CA
    // (IP SAN 127.0.0.1), and not against another CA.
    let xds_port: u16 = control
        .xds
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (ok, out) = s_client(xds_port, &control.ca_path(), Probe::Handshake).await;
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    let (ok, _) = s_client(xds_port, &other, Probe::Handshake).await;
    assert!(!ok, "openssl accepted the xDS certificate with another CA");

    let proxies = control.proxies().await;
    let intruders = proxies
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node_id"] == "mesh/m/virtualNode/intruder")
        .count();
    assert_eq!(intruders, 1, "only the intruder's own sidecar: {proxies}");
    drop((sidecar_c, control));
}

/// The operator's certificate on the xDS port: `bootstrap` cannot vouch for
/// it and says to give `--xds-ca`; with it, proxies connect. A rotated pair
/// is served without a restart.
#[tokio::test]
async fn operator_xds_certificate() {
    let proxy = workspace_bin("trellis-proxy");
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = trellis_tests::tls::Ca::new("operator PKI");
    let server = pki.issue(&Leaf::new(&[], &[]).ips(&["127.0.0.1".parse().expect("ip")]));
    let (crt, key) = server.write(dir.path(), "xds");
    let pki_file = pki.write(dir.path(), "pki");
    let (crt, key) = (crt.to_string_lossy(), key.to_string_lossy());
    let control = Control::start_with(
        tempfile::tempdir().expect("temp dir"),
        &["--xds-tls-cert", &crt, "--xds-tls-key", &key],
    )
    .await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("a", 9, &[], false),
        ])
        .await;
    let ports = (free_port(), free_port());
    let out = control
        .try_cli(&[
            "bootstrap",
            "--mesh",
            "m",
            "--virtual-node",
            "a",
            "--xds-addr",
            &control.xds,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--xds-ca"), "{stderr}");
    let pki_path = pki_file.to_string_lossy();
    let config = control
        .bootstrap(("--virtual-node", "a"), ports, &["--xds-ca", &pki_path])
        .await;
    let sidecar = sidecar(&proxy, &config).await;

    // A rotated pair in the same files is served from the next handshake
    // on, without a restart; the connected proxy stays connected.
    let xds_port: u16 = control
        .xds
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let served = || async {
        let (ok, out) = s_client(xds_port, &pki_file, Probe::Handshake).await;
        assert!(ok, "{out}");
        out
    };
    let body = |pem: &str| pem.lines().nth(1).expect("pem").to_string();
    assert!(served().await.contains(&body(&server.cert_pem)));
    let next = pki.issue(&Leaf::new(&[], &[]).ips(&["127.0.0.1".parse().expect("ip")]));
    next.write(dir.path(), "xds");
    eventually(
        Duration::from_secs(10),
        "the rotated certificate",
        || async { served().await.contains(&body(&next.cert_pem)).then_some(()) },
    )
    .await;
    assert!(control
        .log()
        .contains("serving a new certificate from the files"));
    let proxies = control.proxies().await;
    assert_eq!(proxies.as_array().map(Vec::len), Some(1), "{proxies}");
    drop((sidecar, control));
}

/// Clear-text xDS must be asked for on both sides: a bootstrap for a
/// `--xds-plaintext` server without `--xds-plaintext` is refused with the
/// reason; with it, proxies connect.
#[tokio::test]
async fn plaintext_xds_only_when_asked() {
    let proxy = workspace_bin("trellis-proxy");
    let control =
        Control::start_with(tempfile::tempdir().expect("temp dir"), &["--xds-plaintext"]).await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("a", 9, &[], false),
        ])
        .await;
    let out = control
        .try_cli(&[
            "bootstrap",
            "--mesh",
            "m",
            "--virtual-node",
            "a",
            "--xds-addr",
            &control.xds,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--xds-plaintext"), "{stderr}");
    let config = control
        .bootstrap(
            ("--virtual-node", "a"),
            (free_port(), free_port()),
            &["--xds-plaintext"],
        )
        .await;
    assert!(!config.contains("UpstreamTlsContext"));
    let sidecar = sidecar(&proxy, &config).await;
    drop((sidecar, control));
}

/// A CA rotation with an overlap (control/README.md, "CA rotation"): issue from the old CA
/// while trusting the new one, then issue from the new one while trusting
/// the old one, then drop the old one. Traffic between sidecars never stops;
/// during the overlap a peer still holding an old SVID is accepted, after it
/// it is refused.
#[tokio::test]
async fn ca_rotation_with_an_overlap() {
    let proxy = workspace_bin("trellis-proxy");
    let dir = tempfile::tempdir().expect("temp dir");
    let old = trellis_tests::tls::Ca::new("mesh CA old");
    let new = trellis_tests::tls::Ca::new("mesh CA new");
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let (old_crt, old_key) = (
        path(old.write(dir.path(), "old")),
        path(old.write_key(dir.path(), "old")),
    );
    let (new_crt, new_key) = (
        path(new.write(dir.path(), "new")),
        path(new.write_key(dir.path(), "new")),
    );
    let blue = Echo::start("blue").await;
    // Step 1: the old CA issues; the new one is trusted too.
    let mut control = Control::start_with(
        tempfile::tempdir().expect("temp dir"),
        &[
            "--ca-cert",
            &old_crt,
            "--ca-key",
            &old_key,
            "--ca-trust",
            &new_crt,
        ],
    )
    .await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], true),
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    // Bootstraps made now trust both CAs for xDS too.
    let config_b = bootstrap(&control, "blue", b).await;
    assert!(config_b.contains(old.pem.lines().nth(1).expect("pem")));
    assert!(config_b.contains(new.pem.lines().nth(1).expect("pem")));
    let sidecar_b = sidecar(&proxy, &config_b).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    let through = || async { upstream(a.1, "color").await.as_deref() == Some("blue") };
    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        through().await.then_some(())
    })
    .await;
    assert_eq!(
        svid_issuer(&sidecar_b).await.as_deref(),
        Some("mesh CA old")
    );

    // Step 2: the new CA issues; the old one is still trusted.
    control
        .restart(&[
            "--ca-cert",
            &new_crt,
            "--ca-key",
            &new_key,
            "--ca-trust",
            &old_crt,
        ])
        .await;
    for (name, p) in [("B", &sidecar_b), ("A", &sidecar_a)] {
        eventually(
            Duration::from_secs(15),
            &format!("{name} to hold a new SVID"),
            || async { (svid_issuer(p).await.as_deref() == Some("mesh CA new")).then_some(()) },
        )
        .await;
    }
    eventually(Duration::from_secs(15), "blue after the switch", || async {
        through().await.then_some(())
    })
    .await;
    // A client sidecar that has not reconnected yet still holds an old SVID.
    let straggler = old.issue(&Leaf::new(
        &[],
        &["spiffe://trellis.local/mesh/m/virtualNode/client"],
    ));
    let (s_crt, s_key) = straggler.write(dir.path(), "straggler");
    let both = dir.path().join("both.pem");
    std::fs::write(&both, format!("{}{}", old.pem, new.pem)).expect("bundle");
    let request = "GET /hello HTTP/1.1\r\nHost: blue\r\nConnection: close\r\n\r\n";
    let (_, out) = s_client(b.0, &both, Probe::Request(&s_crt, &s_key, request)).await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "an old SVID during the overlap: {out}"
    );
    // B's own certificate now chains to the new CA alone.
    let new_only = dir.path().join("new.crt");
    let (ok, _) = s_client(b.0, &new_only, Probe::Request(&s_crt, &s_key, request)).await;
    assert!(ok, "B's SVID does not verify against the new CA");

    // Step 3: the old CA is gone.
    control
        .restart(&["--ca-cert", &new_crt, "--ca-key", &new_key])
        .await;
    eventually(
        Duration::from_secs(15),
        "B to trust the new CA alone",
        || async {
            let bundle = secret_pem(&sidecar_b, "trellis-ca").await?;
            (!bundle.contains(old.pem.lines().nth(1)?)).then_some(())
        },
    )
    .await;
    let (_, out) = s_client(b.0, &both, Probe::Request(&s_crt, &s_key, request)).await;
    assert!(
        !out.contains("200"),
        "an old SVID after the rotation: {out}"
    );
    eventually(
        Duration::from_secs(15),
        "blue after the rotation",
        || async { through().await.then_some(()) },
    )
    .await;
    drop((sidecar_a, sidecar_b, control));
}

/// Per-hop App Mesh series of a sidecar, by family and peer labels.
async fn peer_count(p: &ProxyProcess, family: &str, labels: &[(&str, &str)]) -> f64 {
    let text = p.admin_get("/stats/prometheus").await.body_text();
    trellis_tests::metrics::series(&text, family, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn both_hops_name_each_other_in_their_metrics() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], true),
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;

    let own_a = [("appmesh_mesh", "m"), ("appmesh_virtual_node", "client")];
    let target = [
        own_a[0],
        own_a[1],
        ("appmesh_target_virtual_service", "color"),
        ("appmesh_target_virtual_node", "blue"),
    ];
    let caller = [
        ("appmesh_mesh", "m"),
        ("appmesh_virtual_node", "blue"),
        ("appmesh_downstream_mesh", "m"),
        ("appmesh_downstream_virtual_node", "client"),
    ];
    let five = |l: &[(&'static str, &'static str)]| {
        let mut l = l.to_vec();
        l.push(("envoy_response_code_class", "5"));
        l
    };
    let count = || async {
        (
            peer_count(&sidecar_a, "envoy_appmesh_upstream_rq_total", &target).await,
            peer_count(&sidecar_a, "envoy_appmesh_upstream_rq_xx", &five(&target)).await,
            peer_count(&sidecar_b, "envoy_appmesh_downstream_rq_total", &caller).await,
            peer_count(&sidecar_b, "envoy_appmesh_downstream_rq_xx", &five(&caller)).await,
        )
    };
    let before = count().await;
    // 500, which App Mesh's default retry policy does not retry (a 503
    // would be tried three times and counted so).
    for path in ["/a", "/b", "/c", "/d", "/e", "/status/500", "/status/500"] {
        let r = client::request(
            Method::GET,
            &format!("http://127.0.0.1:{}{path}", a.1),
            &[("host", "color")],
            "",
        )
        .await
        .expect("request through both sidecars");
        assert_eq!(
            r.status,
            if path.starts_with("/status") {
                500
            } else {
                200
            }
        );
    }
    let after = count().await;
    assert_eq!(
        (
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3
        ),
        (7.0, 2.0, 7.0, 2.0),
        "A counts 7 requests to color/blue, B 7 from client; 2 of them 5xx"
    );
    for p in [&sidecar_a, &sidecar_b] {
        let text = p.admin_get("/stats/prometheus").await.body_text();
        let findings = trellis_tests::metrics::promtool_findings(&text);
        assert!(findings.is_empty(), "promtool: {findings:#?}");
    }
    drop((sidecar_a, sidecar_b, control));
}

/// A fresh handshake into a STRICT listener as `crt`/`key`, sending one
/// request: whether it was answered 200, and the certificate it served.
async fn served(port: u16, ca: &Path, crt: &Path, key: &Path) -> (bool, String) {
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-ign_eof"])
        .arg("-cert")
        .arg(crt)
        .arg("-key")
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client runs");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let request = "GET /hello HTTP/1.1\r\nHost: blue\r\nConnection: close\r\n\r\n";
        let _ = stdin.write_all(request.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("s_client finishes")
        .expect("s_client output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cert = text
        .split_once("-----BEGIN CERTIFICATE-----")
        .and_then(|(_, rest)| rest.split_once("-----END CERTIFICATE-----"))
        .map(|(body, _)| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n"))
        .unwrap_or_default();
    (out.status.success() && text.contains("HTTP/1.1 200"), cert)
}

/// SVIDs renewed under load, with the mesh's own certificates: `--svid-ttl
/// 4s` (renewed every 2 s) in trust domain `example.test`. A bounded load
/// runs through sidecar A into B while fresh handshakes go straight into
/// B's STRICT listener; no request fails, and B serves new certificates.
#[tokio::test]
async fn svids_renew_under_load_without_a_failed_request() {
    let proxy = workspace_bin("trellis-proxy");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = trellis_tests::tls::Ca::new("mesh CA");
    let (ca_crt, ca_key) = (ca.write(dir.path(), "ca"), ca.write_key(dir.path(), "ca"));
    let blue = Echo::start("blue").await;
    let control = Control::start_with(
        tempfile::tempdir().expect("temp dir"),
        &[
            "--ca-cert",
            &ca_crt.to_string_lossy(),
            "--ca-key",
            &ca_key.to_string_lossy(),
            "--svid-ttl",
            "4s",
            "--trust-domain",
            "example.test",
        ],
    )
    .await;
    assert!(control
        .log()
        .contains("--svid-ttl under a minute is for tests"));
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], true),
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;
    let caller = ca.issue(&Leaf::new(
        &[],
        &["spiffe://example.test/mesh/m/virtualNode/client"],
    ));
    let (caller_crt, caller_key) = caller.write(dir.path(), "caller");

    let mut certs = std::collections::BTreeSet::new();
    let (mut answered, mut failed) = (0, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // At least three certificates served: two renewals under load.
    while certs.len() < 3 && std::time::Instant::now() < deadline {
        let burst = futures::future::join_all((0..8).map(|_| upstream(a.1, "color"))).await;
        for r in burst {
            match r.as_deref() {
                Some("blue") => answered += 1,
                other => failed.push(format!("through A: {other:?}")),
            }
        }
        let (ok, cert) = served(b.0, &ca_crt, &caller_crt, &caller_key).await;
        if ok {
            answered += 1;
            certs.insert(cert);
        } else {
            failed.push("a fresh handshake into B".into());
        }
    }
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(
        certs.len() >= 3,
        "B served {} certificates in 20 s ({answered} requests)",
        certs.len()
    );
    let last = certs.iter().next().expect("a certificate");
    assert_eq!(
        identity(last).0,
        ["spiffe://example.test/mesh/m/virtualNode/blue"]
    );
    assert_eq!(lifetime(last), Duration::from_secs(4 + 60));
    drop((sidecar_a, sidecar_b, control));
}

/// PERMISSIVE through the control plane: B's one port takes a plaintext
/// client and, through sidecar A, an mTLS one.
#[tokio::test]
async fn a_permissive_node_serves_plaintext_and_mtls_clients() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let mut permissive = node("blue", blue.addr.port(), &[], true);
    permissive["spec"]["listeners"][0]["tls"]["mode"] = json!("PERMISSIVE");
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            permissive,
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;
    let plain = client::get(&format!("http://127.0.0.1:{}/direct", b.0))
        .await
        .expect("plaintext into B");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.echoed()["upstream"], "blue");
    // A's requests arrived over TLS, with A's verified identity.
    let handshakes = format!("listener.127.0.0.1_{}.ssl.handshake", b.0);
    assert!(sidecar_b.stat(&handshakes).await >= 1, "{handshakes}");
    drop((sidecar_a, sidecar_b, control));
}

/// An App Mesh `file` certificate the proxy cannot load (missing, then
/// not PEM) reaches it over LDS: the proxy NACKs naming the field, and
/// the listener it had keeps serving.
#[tokio::test]
async fn a_bad_file_certificate_is_nacked_and_the_last_good_listener_serves() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], false),
        ])
        .await;
    let b = (free_port(), free_port());
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let direct = || async {
        client::get(&format!("http://127.0.0.1:{}/direct", b.0))
            .await
            .is_ok_and(|r| r.status == 200)
    };
    eventually(Duration::from_secs(15), "blue in plaintext", || async {
        direct().await.then_some(())
    })
    .await;
    let garbage = control.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = control.dir.path().join("missing.pem");
    let mut last_error = String::new();
    for (path, why) in [(&missing, "missing"), (&garbage, "not PEM")] {
        let mut bad = node("blue", blue.addr.port(), &[], false);
        let path = path.to_string_lossy();
        bad["spec"]["listeners"][0]["tls"] = json!({
            "mode": "STRICT",
            "certificate": {"file": {"certificateChain": path, "privateKey": path}},
        });
        control.apply(&[bad]).await;
        let previous = last_error.clone();
        let error = eventually(Duration::from_secs(15), "an LDS NACK", || async {
            let proxies = control.proxies().await;
            proxies.as_array()?.iter().find_map(|p| {
                p["types"].as_object()?.iter().find_map(|(t, s)| {
                    (t.contains("Listener") || t == "lds")
                        .then(|| s["nack"]["error"].as_str().map(str::to_string))
                        .flatten()
                        .filter(|e| *e != previous)
                })
            })
        })
        .await;
        last_error = error.clone();
        assert!(
            error.contains("certificate_chain") && error.contains("tls_certificates[0]"),
            "{why}: {error}"
        );
        assert!(
            direct().await,
            "{why}: the last good listener stopped serving"
        );
    }
    drop((sidecar_b, control));
}

/// Sends `n` bytes over a fresh connection to `port` and reads them back.
async fn tcp_echo(port: u16, n: usize) -> Option<()> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let sent = vec![b'x'; n];
    s.write_all(&sent).await.ok()?;
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .ok()?
        .ok()?;
    (got == sent).then_some(())
}

#[tokio::test]
async fn tcp_hops_name_each_other_in_their_metrics() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let echo = TcpEcho::start().await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    let mut blue = node("blue", echo.addr.port(), &[], true);
    blue["spec"]["listeners"][0]["portMapping"]["protocol"] = json!("tcp");
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            blue,
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a).await).await;
    eventually(Duration::from_secs(15), "TCP echo over mTLS", || {
        tcp_echo(a.1, 4)
    })
    .await;

    let target = [
        ("appmesh_mesh", "m"),
        ("appmesh_virtual_node", "client"),
        ("appmesh_target_virtual_service", "color"),
        ("appmesh_target_virtual_node", "blue"),
    ];
    let caller = [
        ("appmesh_mesh", "m"),
        ("appmesh_virtual_node", "blue"),
        ("appmesh_downstream_mesh", "m"),
        ("appmesh_downstream_virtual_node", "client"),
    ];
    // Connections, bytes written and read on A (to color/blue) and on B
    // (from client).
    let count = || async {
        let a = &sidecar_a;
        let b = &sidecar_b;
        [
            peer_count(a, "envoy_appmesh_upstream_cx_total", &target).await,
            peer_count(a, "envoy_appmesh_upstream_cx_tx_bytes_total", &target).await,
            peer_count(a, "envoy_appmesh_upstream_cx_rx_bytes_total", &target).await,
            peer_count(b, "envoy_appmesh_downstream_cx_total", &caller).await,
            peer_count(b, "envoy_appmesh_downstream_cx_rx_bytes_total", &caller).await,
            peer_count(b, "envoy_appmesh_downstream_cx_tx_bytes_total", &caller).await,
        ]
    };
    // Bytes are counted when a connection closes: wait for the probes'.
    let settled = |c: [f64; 6]| {
        c[0] > 0.0
            && c[3] > 0.0
            && c[1..3].iter().all(|v| *v == 4.0 * c[0])
            && c[4..6].iter().all(|v| *v == 4.0 * c[3])
    };
    let before = eventually(Duration::from_secs(10), "probes counted", || async {
        let c = count().await;
        settled(c).then_some(c)
    })
    .await;
    for _ in 0..3 {
        tcp_echo(a.1, 1000)
            .await
            .expect("echo through both sidecars");
    }
    // A counts 3 connections to color/blue, B 3 from client, 1000 bytes
    // each way each.
    let want = [3.0, 3000.0, 3000.0, 3.0, 3000.0, 3000.0];
    eventually(Duration::from_secs(10), "3 connections counted", || async {
        let c = count().await;
        let delta: Vec<f64> = c.iter().zip(before).map(|(c, b)| c - b).collect();
        (delta == want).then_some(())
    })
    .await;
    for (p, family, labels) in [
        (&sidecar_a, "envoy_appmesh_upstream_rq_total", &target),
        (&sidecar_b, "envoy_appmesh_downstream_rq_total", &caller),
    ] {
        let text = p.admin_get("/stats/prometheus").await.body_text();
        assert_eq!(
            trellis_tests::metrics::series(&text, family, labels),
            None,
            "a TCP peer has no request series"
        );
        let findings = trellis_tests::metrics::promtool_findings(&text);
        assert!(findings.is_empty(), "promtool: {findings:#?}");
    }
    drop((sidecar_a, sidecar_b, control));
}
