//! Interception for real: two "pods" as network namespaces joined by a veth
//! pair (IPv4 and IPv6), each with `trellis-proxy init` rules and a sidecar
//! running as the ignored uid. An unmodified client calls the server pod's IP
//! and port; the call must pass both sidecars over mTLS, never loop, and
//! ignored ports and CIDRs must bypass. One setup, many checks, then SIGTERM
//! drains both sidecars with requests in flight. A second pair of pods runs
//! App Mesh-mode sidecars fed by trellis-control.
//!
//! Needs root (CI runs as root) and iptables. Where network namespaces
//! cannot be created the test fails, unless `TRELLIS_ALLOW_SKIP=1` says a
//! skip is expected (then it prints SKIP).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use trellis_tests::process::workspace_bin;
use trellis_tests::tls::{Ca, Leaf};

const SIDECAR_UID: &str = "1337";
const APP_PORT: u16 = 8080;
const IGNORED_PORT: u16 = 8081;
/// An opaque TCP echo (not HTTP) in the server pod.
const TCP_PORT: u16 = 8082;
/// A server-first protocol: the app speaks before the client does.
const BANNER_PORT: u16 = 8083;
/// HTTPS straight from the app (TLS the sidecar passes through by SNI).
const TLS_PORT: u16 = 8443;
const TLS_NAME: &str = "tls.test";
const CLIENT_ID: &str = "spiffe://trellis.test/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://trellis.test/ns/default/sa/server";

/// The "applications": `PORT` answers every GET with the pod name, path,
/// x-forwarded-proto and the peer it saw (`/slow` after 1.5 s);
/// `tcp:PORT` echoes a line; `banner:PORT` speaks first;
/// `tls:PORT:CERT:KEY` is the HTTP app over TLS.
const ECHO_APP: &str = r#"
import http.server, socketserver, ssl, sys, threading, time
pod = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1.5)
        body = ("%s %s %s %s" % (pod, self.path, self.headers.get("x-forwarded-proto", "-"),
                                 self.client_address[0])).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True
class E(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"echo " + self.rfile.readline())
class B(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 banner\n")
class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
def server(spec):
    kind, _, rest = spec.partition(":")
    if kind == "tcp":
        return T(("0.0.0.0", int(rest)), E)
    if kind == "banner":
        return T(("0.0.0.0", int(rest)), B)
    if kind == "tls":
        port, cert, key = rest.split(":")
        s = S(("0.0.0.0", int(port)), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
        return s
    return S(("0.0.0.0", int(kind)), H)
servers = [server(a) for a in sys.argv[2:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// A client app with `N` requests in flight at once; prints one line per
/// request: the status and body, or the error.
const PARALLEL_CLIENT: &str = r#"
import sys, threading, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
res = [None] * n
def go(i):
    try:
        with opener.open(url, timeout=15) as r:
            res[i] = "%d %s" % (r.status, r.read().decode())
    except Exception as e:
        res[i] = "ERR %r" % e
ts = [threading.Thread(target=go, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print("\n".join(res))
"#;

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args.join(" ")))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces and processes, torn down in every outcome.
struct Pods {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

impl Pods {
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    fn ok(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        ok(&all)
    }

    /// Starts a long-running process in `ns`; returns its index in
    /// `children` (`ip netns exec` and `setpriv` exec, so the child's pid is
    /// the process's own).
    fn spawn(&mut self, ns: &str, args: &[&str], stdout: Stdio) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    fn curl(&self, ns: &str, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["curl", "-sS", "--max-time", "5"];
        args.extend_from_slice(extra);
        args.push(url);
        self.exec(ns, &args)
    }

    /// One counter or gauge from the sidecar's admin `/stats` in `ns` (0 if absent).
    fn stat(&self, ns: &str, name: &str) -> u64 {
        let out = self.curl(ns, "http://127.0.0.1:9901/stats", &[]);
        text(&out)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// Polls until `name` in `ns` reaches `want`, for up to 5 s.
    fn wait_stat(&self, ns: &str, name: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.stat(ns, name) < want {
            assert!(
                Instant::now() < deadline,
                "{name} in {ns} never reached {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The namespaces, or why they cannot exist here.
fn create_pods(tag: &str) -> Result<Pods, String> {
    let uid = ok(&["id", "-u"]);
    if uid.trim() != "0" {
        return Err("needs root to create network namespaces".into());
    }
    let pods = Pods {
        names: vec![format!("trl-c-{tag}"), format!("trl-s-{tag}")],
        children: Vec::new(),
    };
    for n in &pods.names {
        let out = run(&["ip", "netns", "add", n]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
    }
    Ok(pods)
}

/// The namespaces; `None` (a visible SKIP) only where they cannot be
/// created and `TRELLIS_ALLOW_SKIP=1` says that is expected, else a failure.
fn pods_or_skip(tag: &str) -> Option<Pods> {
    match create_pods(tag) {
        Ok(p) => Some(p),
        Err(e) if std::env::var("TRELLIS_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIP sidecar_netns (TRELLIS_ALLOW_SKIP=1): {e}");
            None
        }
        Err(e) => panic!(
            "sidecar_netns cannot create network namespaces: {e}; \
             run as root with iproute2, or set TRELLIS_ALLOW_SKIP=1 to skip"
        ),
    }
}

/// Writes `text` to `dir/name`; returns the path.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

const ROUTER: &str = r#"          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// Files one sidecar's TLS context names: its own certificate and the CA.
struct Identity {
    cert: String,
    key: String,
    ca: String,
}

/// `common_tls_context` presenting `me` and requiring a peer whose URI SAN is `peer`.
fn tls_context(me: &Identity, peer: &str, indent: usize) -> String {
    let body = format!(
        r#"common_tls_context:
  tls_certificates:
  - certificate_chain: {{ filename: {} }}
    private_key: {{ filename: {} }}
  validation_context:
    trusted_ca: {{ filename: {} }}
    match_typed_subject_alt_names:
    - san_type: URI
      matcher: {{ exact: "{peer}" }}
"#,
        me.cert, me.key, me.ca
    );
    let pad = " ".repeat(indent);
    body.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The client pod's egress listener on one address family: restores the
/// original destination and sniffs the first bytes (TLS, HTTP/1.1, HTTP/2
/// preface; a server-first protocol times out into opaque TCP).
fn egress_listener(name: &str, address: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: "{address}", port_value: 15001 }} }}
    listener_filters_timeout: 0.3s
    continue_on_listener_filters_timeout: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    - name: envoy.filters.listener.http_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector
    filter_chains:
    - filter_chain_match: {{ transport_protocol: tls, server_names: ["{TLS_NAME}"] }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: egress_tls
          cluster: passthrough
    - filter_chain_match: {{ application_protocols: [http/1.1, h2c] }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: mesh }}
{ROUTER}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: egress_tcp
          cluster: passthrough
"#
    )
}

/// The client pod's sidecar: HTTP goes to the original destination over
/// mTLS (cluster `mesh`), everything else as it came (`passthrough`). One
/// listener per family: an IPv6 listener socket is v6-only.
fn client_sidecar(id: &Identity) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
{}{}  clusters:
  - name: mesh
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{}  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#,
        egress_listener("egress", "0.0.0.0"),
        egress_listener("egress6", "::"),
        tls_context(id, SERVER_ID, 8)
    )
}

/// The server pod's ingress listener on one address family: mTLS on the
/// chain chosen by the ORIGINAL destination port, the client's identity
/// logged.
fn ingress_listener(name: &str, address: &str, id: &Identity, log: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: "{address}", port_value: 15000 }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filter_chain_match: {{ destination_port: {APP_PORT} }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
{}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format:
                text_format_source:
                  inline_string: "%DOWNSTREAM_PEER_URI_SAN% %REQ(:PATH)%\n"
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: local_app }}
{ROUTER}"#,
        tls_context(id, CLIENT_ID, 10)
    )
}

/// The server pod's sidecar: ingress listeners in front of the local app.
fn server_sidecar(id: &Identity, log: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
{}{}  clusters:
  - name: local_app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: local_app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {APP_PORT} }} }} }}
"#,
        ingress_listener("ingress", "0.0.0.0", id, log),
        ingress_listener("ingress6", "::", id, log)
    )
}

/// Addresses of the two pods; the server also answers on an address the
/// client ignores (`APPMESH_EGRESS_IGNORED_IP`).
struct Net {
    client: String,
    server: String,
    server_ip: String,
    ignored_ip: String,
    server_ip6: String,
    client_ip: String,
}

fn wire(pods: &Pods, tag: &str) -> Net {
    let (client, server) = (pods.names[0].clone(), pods.names[1].clone());
    let (veth_c, veth_s) = (format!("trlc{tag}"), format!("trls{tag}"));
    // Addresses exist inside the two namespaces only.
    let octet = std::process::id() % 200 + 20;
    let net = Net {
        client_ip: format!("10.{octet}.0.1"),
        server_ip: format!("10.{octet}.0.2"),
        ignored_ip: format!("10.{octet}.0.3"),
        server_ip6: format!("fd00:7e:{octet:x}::2"),
        client,
        server,
    };
    ok(&[
        "ip", "link", "add", &veth_c, "type", "veth", "peer", "name", &veth_s,
    ]);
    ok(&["ip", "link", "set", &veth_c, "netns", &net.client]);
    ok(&["ip", "link", "set", &veth_s, "netns", &net.server]);
    let client_ip6 = format!("fd00:7e:{octet:x}::1");
    for (ns, dev, v4, v6) in [
        (&net.client, &veth_c, vec![&net.client_ip], &client_ip6),
        (
            &net.server,
            &veth_s,
            vec![&net.server_ip, &net.ignored_ip],
            &net.server_ip6,
        ),
    ] {
        for ip in v4 {
            pods.ok(ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
        }
        // nodad: usable at once, without duplicate address detection.
        let cidr6 = format!("{v6}/64");
        pods.ok(
            ns,
            &["ip", "-6", "addr", "add", &cidr6, "dev", dev, "nodad"],
        );
        pods.ok(ns, &["ip", "link", "set", dev, "up"]);
        pods.ok(ns, &["ip", "link", "set", "lo", "up"]);
    }
    net
}

/// `trellis-proxy init` in `ns` with `env`; asserts it succeeded and printed its rules.
fn init(bin: &str, ns: &str, backend: &str, env: &[(&str, &str)]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, bin, "init", "--backend", backend])
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let printed = text(&out);
    assert!(
        out.status.success(),
        "init --backend {backend} in {ns}: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("TRELLIS_EGRESS"),
        "init prints its rules: {printed}"
    );
}

/// `iptables -S` of the nat table with `tool` in `ns`.
fn nat_rules(pods: &Pods, ns: &str, tool: &str) -> String {
    pods.ok(ns, &[tool, "-t", "nat", "-S"])
}

#[test]
fn sidecars_intercept_between_two_pods() {
    let tag = format!("{}", std::process::id() % 100_000);
    let Some(mut pods) = pods_or_skip(&tag) else {
        return;
    };
    let net = wire(&pods, &tag);
    let (client, server) = (net.client.clone(), net.server.clone());

    let bin = workspace_bin("trellis-proxy").display().to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir_path = dir.path().display().to_string();
    // The sidecars run as uid 1337 and must read their configs and certs.
    ok(&["chmod", "755", &dir_path]);
    let ca = Ca::new("trellis netns mesh");
    let ca_path = ca.write(dir.path(), "ca").display().to_string();
    let identity = |name: &str, leaf: &Leaf| {
        let (cert, key) = ca.issue(leaf).write(dir.path(), name);
        Identity {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            ca: ca_path.clone(),
        }
    };
    let client_id = identity("client", &Leaf::new(&[], &[CLIENT_ID]));
    let server_id = identity("server", &Leaf::new(&[], &[SERVER_ID]));
    let app_tls = identity("app", &Leaf::new(&[TLS_NAME], &[]));
    let access_log = write(dir.path(), "server-access.log", "");
    ok(&["chown", SIDECAR_UID, &access_log]);
    let client_cfg = write(dir.path(), "client.yaml", &client_sidecar(&client_id));
    let server_cfg = write(
        dir.path(),
        "server.yaml",
        &server_sidecar(&server_id, &access_log),
    );

    // init, as the pods' init containers would run it; nft named explicitly.
    let ignored = IGNORED_PORT.to_string();
    let app = APP_PORT.to_string();
    let ignored_cidr = format!("{}/32", net.ignored_ip);
    let client_env = [
        ("APPMESH_EGRESS_IGNORED_PORTS", ignored.as_str()),
        ("APPMESH_EGRESS_IGNORED_IP", ignored_cidr.as_str()),
    ];
    let server_env = [("APPMESH_APP_PORTS", app.as_str())];
    init(&bin, &client, "nft", &client_env);
    init(&bin, &server, "nft", &server_env);
    // A second run changes nothing (idempotent): the same rule set.
    let before = nat_rules(&pods, &client, "iptables-nft");
    init(&bin, &client, "nft", &client_env);
    assert_eq!(
        before,
        nat_rules(&pods, &client, "iptables-nft"),
        "init twice must leave the same rules"
    );

    let as_sidecar = [
        "setpriv",
        "--reuid",
        SIDECAR_UID,
        "--regid",
        SIDECAR_UID,
        "--clear-groups",
    ];
    let mut sidecars = Vec::new();
    for (ns, cfg) in [(&server, &server_cfg), (&client, &client_cfg)] {
        let mut args: Vec<&str> = as_sidecar.to_vec();
        args.extend([
            bin.as_str(),
            "-c",
            cfg.as_str(),
            "--concurrency",
            "1",
            "--drain-time-s",
            "10",
        ]);
        sidecars.push(pods.spawn(ns, &args, Stdio::null()));
    }
    let tcp_arg = format!("tcp:{TCP_PORT}");
    let banner_arg = format!("banner:{BANNER_PORT}");
    let tls_arg = format!("tls:{TLS_PORT}:{}:{}", app_tls.cert, app_tls.key);
    let app_args = [
        "python3",
        "-c",
        ECHO_APP,
        "server-pod",
        &app,
        &ignored,
        &tcp_arg,
        &banner_arg,
        &tls_arg,
    ];
    pods.spawn(&server, &app_args, Stdio::null());

    // wait-ready: the app entrypoint's way to wait for its sidecar.
    for ns in [&client, &server] {
        let out = pods.exec(
            ns,
            &[
                &bin,
                "wait-ready",
                "--admin",
                "127.0.0.1:9901",
                "--timeout",
                "15",
            ],
        );
        assert!(out.status.success(), "wait-ready in {ns}: {out:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let app_url = format!("http://{}:{APP_PORT}/hello", net.server_ip);
    let reply = loop {
        // The python app may still be starting: the sidecars answer 503 until then.
        let out = pods.curl(&client, &app_url, &[]);
        if out.stdout.starts_with(b"server-pod") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reply.status.success(), "client call failed: {reply:?}");
    // Passed the client's egress sidecar (x-forwarded-proto is added by an
    // HCM) and reached the app from its own sidecar, not from the client pod.
    assert_eq!(text(&reply), "server-pod /hello http 127.0.0.1");
    mtls_between_sidecars(&pods, &net, &access_log);

    // No loop: the sidecar's own upstream connection (uid 1337) was not sent
    // back to its egress listener, so it counted exactly the client's requests.
    let egress_rq = pods.stat(&client, "http.egress.downstream_rq_total");
    assert_eq!(
        egress_rq,
        pods.stat(&client, "cluster.mesh.upstream_rq_total"),
        "egress requests == requests sent upstream (no loop)"
    );

    bypasses(&pods, &net);
    assert_eq!(
        pods.stat(&client, "http.egress.downstream_rq_total"),
        egress_rq,
        "bypassed calls never reached the egress HCM"
    );
    protocols(&pods, &net, &ca_path);
    ipv6(&pods, &net);

    // --clean removes every rule and both chains.
    for ns in [&client, &server] {
        let out = pods.exec(ns, &[&bin, "init", "--backend", "nft", "--clean"]);
        assert!(out.status.success(), "init --clean in {ns}: {out:?}");
        let rules = nat_rules(&pods, ns, "iptables-nft");
        assert!(
            !rules.contains("TRELLIS"),
            "rules left after --clean in {ns}: {rules}"
        );
        let again = pods.exec(ns, &[&bin, "init", "--backend", "nft", "--clean"]);
        assert!(again.status.success(), "--clean twice is fine");
    }
    // Without rules the client reaches the app directly.
    let out = pods.curl(&client, &app_url, &[]);
    assert_eq!(
        text(&out),
        format!("server-pod /hello - {}", net.client_ip),
        "{out:?}"
    );

    // The legacy backend intercepts the same way.
    init(&bin, &client, "legacy", &client_env);
    init(&bin, &server, "legacy", &server_env);
    let rules = nat_rules(&pods, &client, "iptables-legacy");
    assert!(
        rules.contains("-A OUTPUT -p tcp -j TRELLIS_EGRESS"),
        "{rules}"
    );
    let rules6 = nat_rules(&pods, &client, "ip6tables-legacy");
    assert!(
        rules6.contains("-A TRELLIS_EGRESS -d ::1/128 -j RETURN"),
        "{rules6}"
    );
    let legacy_url = format!("http://{}:{APP_PORT}/legacy", net.server_ip);
    let egress_rq = pods.stat(&client, "http.egress.downstream_rq_total");
    let out = pods.curl(&client, &legacy_url, &[]);
    assert_eq!(
        text(&out),
        "server-pod /legacy http 127.0.0.1",
        "legacy rules carry traffic through both sidecars: {out:?}"
    );
    assert_eq!(
        pods.stat(&client, "http.egress.downstream_rq_total"),
        egress_rq + 1,
        "the legacy call went through the egress sidecar"
    );

    drain_on_sigterm(&mut pods, &net, &sidecars);

    for ns in [&client, &server] {
        let out = pods.exec(ns, &[&bin, "init", "--backend", "legacy", "--clean"]);
        assert!(out.status.success(), "legacy --clean in {ns}: {out:?}");
        let rules = nat_rules(&pods, ns, "iptables-legacy");
        assert!(!rules.contains("TRELLIS"), "legacy rules left: {rules}");
    }
}

/// The hop between the sidecars is mTLS, each side checking the other's
/// URI SAN, and a client without a certificate is refused.
fn mtls_between_sidecars(pods: &Pods, net: &Net, access_log: &str) {
    let (client, server) = (&net.client, &net.server);
    assert!(pods.stat(client, "cluster.mesh.ssl.handshake") >= 1);
    assert!(pods.stat(server, "listener.0.0.0.0_15000.ssl.handshake") >= 1);
    assert!(pods.stat(server, "http.ingress.downstream_rq_total") >= 1);
    assert!(pods.stat(server, "cluster.local_app.upstream_rq_total") >= 1);
    // Access log lines reach the file within a fraction of a second.
    let want = format!("{CLIENT_ID} /hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(access_log).unwrap_or_default();
        if log.lines().any(|l| l == want) || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        log.lines().any(|l| l == want),
        "the server sidecar saw the client sidecar's identity: {log:?}"
    );
    // Bypassing the client sidecar (its uid) with plain HTTP or TLS without
    // a client certificate: the server sidecar refuses both.
    let before = pods.stat(server, "http.ingress.downstream_rq_total");
    let plain = format!("http://{}:{APP_PORT}/plain", net.server_ip);
    let https = format!("https://{}:{APP_PORT}/nocert", net.server_ip);
    for (url, extra) in [(&plain, &[][..]), (&https, &["-k"][..])] {
        let mut args = vec![
            "setpriv",
            "--reuid",
            SIDECAR_UID,
            "curl",
            "-sS",
            "--max-time",
            "5",
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let out = pods.exec(client, &args);
        assert!(
            !text(&out).starts_with("server-pod"),
            "{url} without the client's certificate: {out:?}"
        );
    }
    assert_eq!(
        pods.stat(server, "http.ingress.downstream_rq_total"),
        before
    );
}

/// Ignored ports and ignored CIDRs leave the client pod without its sidecar
/// (the app sees the client pod's address, no egress counter moves).
fn bypasses(pods: &Pods, net: &Net) {
    let client = &net.client;
    let ignored_url = format!("http://{}:{IGNORED_PORT}/direct", net.server_ip);
    let out = pods.curl(client, &ignored_url, &[]);
    assert_eq!(
        text(&out),
        format!("server-pod /direct - {}", net.client_ip),
        "no sidecar touched the ignored port: {out:?}"
    );
    // Opaque TCP to an ignored address: the egress default chain never sees it.
    let tcp_before = pods.stat(client, "tcp.egress_tcp.downstream_cx_total");
    let line = tcp_line(pods, client, &net.ignored_ip, TCP_PORT, Some("to ignored"));
    assert_eq!(line, "echo to ignored\n");
    assert_eq!(
        pods.stat(client, "tcp.egress_tcp.downstream_cx_total"),
        tcp_before,
        "APPMESH_EGRESS_IGNORED_IP bypasses the sidecar"
    );
    // The same port on the server's main address is intercepted.
    let line = tcp_line(pods, client, &net.server_ip, TCP_PORT, Some("hello tcp"));
    assert_eq!(line, "echo hello tcp\n");
    assert_eq!(
        pods.stat(client, "tcp.egress_tcp.downstream_cx_total"),
        tcp_before + 1
    );
}

/// Opens a TCP connection from `ns` with bash, optionally sends a line,
/// and returns the first line read back.
fn tcp_line(pods: &Pods, ns: &str, ip: &str, port: u16, send: Option<&str>) -> String {
    let send = send.map_or(String::new(), |s| format!("printf '{s}\\n' >&3; "));
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}; {send}head -n1 <&3");
    text(&pods.exec(ns, &["timeout", "5", "bash", "-c", &script]))
}

/// Protocol detection on intercepted connections: the HTTP/2 preface, a TLS
/// ClientHello routed by SNI, and a server-first protocol that falls to
/// opaque TCP when the inspectors time out.
fn protocols(pods: &Pods, net: &Net, ca: &str) {
    let client = &net.client;
    let h2_url = format!("http://{}:{APP_PORT}/h2", net.server_ip);
    let out = pods.curl(
        client,
        &h2_url,
        &["--http2-prior-knowledge", "-w", " %{http_version}"],
    );
    assert_eq!(
        text(&out),
        "server-pod /h2 http 127.0.0.1 2",
        "h2c prior knowledge through the sidecars: {out:?}"
    );

    let tls_url = format!("https://{TLS_NAME}:{TLS_PORT}/tls");
    let resolve = format!("{TLS_NAME}:{TLS_PORT}:{}", net.server_ip);
    let out = pods.curl(client, &tls_url, &["--cacert", ca, "--resolve", &resolve]);
    assert_eq!(
        text(&out),
        format!("server-pod /tls - {}", net.client_ip),
        "TLS passed through by SNI, end to end with the app: {out:?}"
    );
    assert_eq!(pods.stat(client, "tcp.egress_tls.downstream_cx_total"), 1);

    let tcp_before = pods.stat(client, "tcp.egress_tcp.downstream_cx_total");
    let line = tcp_line(pods, client, &net.server_ip, BANNER_PORT, None);
    assert_eq!(
        line, "220 banner\n",
        "server-first protocol through the sidecar"
    );
    assert_eq!(
        pods.stat(client, "tcp.egress_tcp.downstream_cx_total"),
        tcp_before + 1
    );
}

/// IPv6: both pods' ip6tables rules redirect, and each sidecar recovers the
/// v6 original destination.
fn ipv6(pods: &Pods, net: &Net) {
    let url = format!("http://[{}]:{APP_PORT}/v6", net.server_ip6);
    let out = pods.curl(&net.client, &url, &["-6", "-g"]);
    assert_eq!(
        text(&out),
        "server-pod /v6 http 127.0.0.1",
        "IPv6 through both sidecars: {out:?}"
    );
    assert!(pods.stat(&net.client, "listener.[__]_15001.downstream_cx_total") >= 1);
    assert!(pods.stat(&net.server, "listener.[__]_15000.downstream_cx_total") >= 1);
}

/// SIGTERM to both sidecars while the client app has requests in flight:
/// every one of them completes, then the sidecars exit 0.
fn drain_on_sigterm(pods: &mut Pods, net: &Net, sidecars: &[usize]) {
    const IN_FLIGHT: u64 = 6;
    let url = format!("http://{}:{APP_PORT}/slow", net.server_ip);
    let n = IN_FLIGHT.to_string();
    let app = pods.spawn(
        &net.client,
        &["python3", "-c", PARALLEL_CLIENT, &url, &n],
        Stdio::piped(),
    );
    pods.wait_stat(&net.client, "http.egress.downstream_rq_active", IN_FLIGHT);
    pods.wait_stat(&net.server, "http.ingress.downstream_rq_active", IN_FLIGHT);
    for &i in sidecars {
        let pid = pods.children[i].id().to_string();
        ok(&["kill", "-TERM", &pid]);
    }
    let child = pods.children.remove(app);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let lines = text(&out);
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("200 ")).count() as u64,
        IN_FLIGHT,
        "every request in flight at SIGTERM completed: {lines}"
    );
    for &i in sidecars {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = pods.children[i].try_wait().unwrap_or(None) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar did not exit after drain"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "sidecar exit after SIGTERM: {status}");
    }
}

/// The same two pods with App Mesh-mode sidecars (`APPMESH_RESOURCE_ARN`,
/// no config file) fed by trellis-control, which runs in the server pod:
/// the client node's backend policy and the server node's STRICT listener
/// make the hop mTLS, from App Mesh specs alone.
#[test]
fn app_mesh_sidecars_fed_by_trellis_control() {
    let tag = format!("{}m", std::process::id() % 100_000);
    let Some(mut pods) = pods_or_skip(&tag) else {
        return;
    };
    let net = wire(&pods, &tag);
    let (client, server) = (net.client.clone(), net.server.clone());
    let proxy = workspace_bin("trellis-proxy").display().to_string();
    let control = workspace_bin("trellis-control").display().to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ok(&["chmod", "755", &dir.path().display().to_string()]);
    let ca = Ca::new("trellis netns app mesh");
    let ca_path = ca.write(dir.path(), "ca").display().to_string();
    let file_cert = |name: &str, uri: &str| {
        let (cert, key) = ca.issue(&Leaf::new(&[], &[uri])).write(dir.path(), name);
        serde_json::json!({"file": {
            "certificateChain": cert.display().to_string(),
            "privateKey": key.display().to_string(),
        }})
    };
    let validation = |peer: &str| {
        serde_json::json!({
            "trust": {"file": {"certificateChain": ca_path}},
            "subjectAlternativeNames": {"match": {"exact": [peer]}},
        })
    };
    let docs = [
        serde_json::json!({"meshName": "m", "spec": {}}),
        serde_json::json!({"meshName": "m", "virtualNodeName": "server", "spec": {
            "listeners": [{
                "portMapping": {"port": APP_PORT, "protocol": "http"},
                "tls": {"mode": "STRICT", "certificate": file_cert("server", SERVER_ID),
                        "validation": validation(CLIENT_ID)},
            }],
            "serviceDiscovery": {"dns": {"hostname": net.server_ip}},
        }}),
        serde_json::json!({"meshName": "m", "virtualServiceName": "server.m.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "server"}}}}),
        serde_json::json!({"meshName": "m", "virtualNodeName": "client", "spec": {
            "backends": [{"virtualService": {"virtualServiceName": "server.m.local"}}],
            "backendDefaults": {"clientPolicy": {"tls": {
                "certificate": file_cert("client", CLIENT_ID),
                "validation": validation(SERVER_ID),
            }}},
        }}),
    ];
    let mut serve = vec![
        control.clone(),
        "serve".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--no-auth".into(),
        "--api-addr".into(),
        "127.0.0.1:18001".into(),
        "--xds-addr".into(),
        "0.0.0.0:18000".into(),
        // The xDS certificate the mesh CA issues names the client's way in.
        "--xds-san".into(),
        net.server_ip.clone(),
        "--require-node-tokens".into(),
        "never".into(),
    ];
    for (i, doc) in docs.iter().enumerate() {
        serve.push("--load".into());
        serve.push(write(dir.path(), &format!("{i}.json"), &doc.to_string()));
    }
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    pods.spawn(&server, &serve, Stdio::null());
    // The sidecars trust the mesh CA for xDS; it exists once serve started.
    let mesh_ca = dir.path().join("data/ca/ca.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mesh_ca.exists() {
        assert!(Instant::now() < deadline, "trellis-control made no CA");
        std::thread::sleep(Duration::from_millis(50));
    }
    let xds_ca = dir.path().join("xds-ca.pem").display().to_string();
    ok(&["cp", &mesh_ca.display().to_string(), &xds_ca]);
    ok(&["chmod", "644", &xds_ca]);

    let app = APP_PORT.to_string();
    init(&proxy, &client, "auto", &[]);
    init(&proxy, &server, "auto", &[("APPMESH_APP_PORTS", &app)]);
    pods.spawn(
        &server,
        &["python3", "-c", ECHO_APP, "server-pod", &app],
        Stdio::null(),
    );
    let xds = [
        (&client, "client", format!("{}:18000", net.server_ip)),
        (&server, "server", "127.0.0.1:18000".to_string()),
    ];
    for (ns, node, addr) in &xds {
        let arn = format!("APPMESH_RESOURCE_ARN=mesh/m/virtualNode/{node}");
        let xds_addr = format!("TRELLIS_XDS_ADDR={addr}");
        let xds_trust = format!("TRELLIS_XDS_CA_FILE={xds_ca}");
        let args = [
            "setpriv",
            "--reuid",
            SIDECAR_UID,
            "--regid",
            SIDECAR_UID,
            "--clear-groups",
            "env",
            &arn,
            &xds_addr,
            &xds_trust,
            "ENVOY_ADMIN_ACCESS_PORT=9901",
            &proxy,
            "--concurrency",
            "1",
        ];
        pods.spawn(ns, &args, Stdio::null());
    }
    for (ns, _, _) in &xds {
        let out = pods.exec(ns, &[&proxy, "wait-ready", "--timeout", "20"]);
        assert!(out.status.success(), "wait-ready in {ns}: {out:?}");
    }
    let resolve = format!("server.m.local:{APP_PORT}:{}", net.server_ip);
    let url = format!("http://server.m.local:{APP_PORT}/appmesh");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let out = pods.curl(&client, &url, &["--resolve", &resolve]);
        if out.stdout.starts_with(b"server-pod") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        text(&reply),
        "server-pod /appmesh http 127.0.0.1",
        "through both App Mesh-mode sidecars: {reply:?}"
    );
    assert!(pods.stat(&server, "listener.0.0.0.0_15000.ssl.handshake") >= 1);
    // STRICT: without the client sidecar (its uid), no certificate, no answer.
    let direct = format!("https://{}:{APP_PORT}/nocert", net.server_ip);
    let out = pods.exec(
        &client,
        &[
            "setpriv",
            "--reuid",
            SIDECAR_UID,
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "5",
            &direct,
        ],
    );
    assert!(!text(&out).starts_with("server-pod"), "{out:?}");
}
