//! Interception for real: two "pods" as network namespaces joined by a veth
//! pair, each with `trellis-proxy init` rules and a sidecar running as the
//! ignored uid. An unmodified client calls the server pod's IP and port; the
//! call must pass both sidecars, never loop, and ignored ports must bypass.
//!
//! Needs root (CI runs as root) and iptables; skips with a message where
//! network namespaces cannot be created.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use trellis_tests::process::workspace_bin;

const SIDECAR_UID: &str = "1337";
const APP_PORT: u16 = 8080;
const IGNORED_PORT: u16 = 8081;
/// An opaque TCP echo (not HTTP) in the server pod.
const TCP_PORT: u16 = 8082;

/// The echo "application": answers every GET with the pod name and path.
const ECHO_APP: &str = r#"
import http.server, socketserver, sys, threading
pod = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s %s" % (pod, self.path, self.headers.get("x-forwarded-proto", "-"))).encode()
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
class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
servers = [T(("0.0.0.0", int(p[4:])), E) if p.startswith("tcp:") else S(("0.0.0.0", int(p)), H)
           for p in sys.argv[2:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
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

    fn spawn(&mut self, ns: &str, args: &[&str], env: &[(&str, &str)]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        self.children.push(child);
    }

    fn curl(&self, ns: &str, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["curl", "-sS", "--max-time", "5"];
        args.extend_from_slice(extra);
        args.push(url);
        self.exec(ns, &args)
    }

    /// One counter from the sidecar's admin `/stats` in `ns` (0 if absent).
    fn stat(&self, ns: &str, name: &str) -> u64 {
        let out = self.curl(ns, "http://127.0.0.1:9901/stats", &[]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }
}

/// The namespaces, or why they cannot exist here.
fn create_pods(tag: &str) -> Result<Pods, String> {
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

fn sidecar_config(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

const ROUTER: &str = r#"          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// The client pod's sidecar: an egress listener that restores the original
/// destination, sniffs HTTP, and sends everything to an ORIGINAL_DST cluster.
fn client_sidecar() -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
  - name: egress
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    - name: envoy.filters.listener.http_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector
    filter_chains:
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
                route: {{ cluster: passthrough }}
{ROUTER}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: egress_tcp
          cluster: passthrough
  clusters:
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#
    )
}

/// The server pod's sidecar: an ingress listener in front of the local app,
/// with a chain chosen by the ORIGINAL destination port.
fn server_sidecar() -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15000 }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filter_chain_match: {{ destination_port: {APP_PORT} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: local_app }}
{ROUTER}  clusters:
  - name: local_app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: local_app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {APP_PORT} }} }} }}
"#
    )
}

#[test]
fn sidecars_intercept_between_two_pods() {
    let uid = ok(&["id", "-u"]);
    if uid.trim() != "0" {
        eprintln!("SKIP sidecar_netns: needs root to create network namespaces");
        return;
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let mut pods = match create_pods(&tag) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP sidecar_netns: cannot create network namespaces: {e}");
            return;
        }
    };
    let (client, server) = (pods.names[0].clone(), pods.names[1].clone());
    let (veth_c, veth_s) = (format!("trlc{tag}"), format!("trls{tag}"));
    // Addresses exist inside the two namespaces only.
    let octet = (std::process::id() % 200 + 20).to_string();
    let client_ip = format!("10.{octet}.0.1");
    let server_ip = format!("10.{octet}.0.2");
    ok(&[
        "ip", "link", "add", &veth_c, "type", "veth", "peer", "name", &veth_s,
    ]);
    ok(&["ip", "link", "set", &veth_c, "netns", &client]);
    ok(&["ip", "link", "set", &veth_s, "netns", &server]);
    for (ns, dev, ip) in [
        (&client, &veth_c, &client_ip),
        (&server, &veth_s, &server_ip),
    ] {
        let cidr = format!("{ip}/24");
        assert!(pods
            .exec(ns, &["ip", "addr", "add", &cidr, "dev", dev])
            .status
            .success());
        assert!(pods
            .exec(ns, &["ip", "link", "set", dev, "up"])
            .status
            .success());
        assert!(pods
            .exec(ns, &["ip", "link", "set", "lo", "up"])
            .status
            .success());
    }

    let bin = workspace_bin("trellis-proxy");
    let bin = bin.display().to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The sidecars run as uid 1337 and must read their configs.
    ok(&["chmod", "755", &dir.path().display().to_string()]);
    let client_cfg = sidecar_config(dir.path(), "client.yaml", &client_sidecar());
    let server_cfg = sidecar_config(dir.path(), "server.yaml", &server_sidecar());

    // init, as the pods' init containers would run it.
    let ignored = IGNORED_PORT.to_string();
    let app = APP_PORT.to_string();
    let client_env = [("APPMESH_EGRESS_IGNORED_PORTS", ignored.as_str())];
    let server_env = [("APPMESH_APP_PORTS", app.as_str())];
    for (ns, env) in [(&client, &client_env), (&server, &server_env)] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, &bin, "init"])
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "init in {ns}: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed.contains("TRELLIS_EGRESS"),
            "init prints its rules: {printed}"
        );
    }
    // A second run changes nothing (idempotent): the same rule set.
    let before = ok(&[
        "ip", "netns", "exec", &client, "iptables", "-t", "nat", "-S",
    ]);
    let again = Command::new("ip")
        .args(["netns", "exec", &client, &bin, "init"])
        .envs(client_env)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.status.success());
    let after = ok(&[
        "ip", "netns", "exec", &client, "iptables", "-t", "nat", "-S",
    ]);
    assert_eq!(before, after, "init twice must leave the same rules");

    let as_sidecar = [
        "setpriv",
        "--reuid",
        SIDECAR_UID,
        "--regid",
        SIDECAR_UID,
        "--clear-groups",
    ];
    for (ns, cfg) in [(&server, &server_cfg), (&client, &client_cfg)] {
        let mut args: Vec<&str> = as_sidecar.to_vec();
        args.extend([bin.as_str(), "-c", cfg.as_str(), "--concurrency", "1"]);
        pods.spawn(ns, &args, &[]);
    }
    let echo = ECHO_APP.to_string();
    let tcp_arg = format!("tcp:{TCP_PORT}");
    let app_args = [
        "python3",
        "-c",
        &echo,
        "server-pod",
        &app,
        &ignored,
        &tcp_arg,
    ];
    pods.spawn(&server, &app_args, &[]);

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
    let app_url = format!("http://{server_ip}:{APP_PORT}/hello");
    let reply = loop {
        // The python app may still be starting: the sidecars answer 503 until then.
        let out = pods.curl(&client, &app_url, &[]);
        if out.stdout.starts_with(b"server-pod") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = String::from_utf8_lossy(&reply.stdout).into_owned();
    assert!(reply.status.success(), "client call failed: {reply:?}");
    assert!(body.starts_with("server-pod /hello"), "{body}");
    // Passed the client's egress sidecar (x-forwarded-proto is added by an HCM) ...
    assert!(
        body.ends_with(" http"),
        "a sidecar handled the request: {body}"
    );
    let egress_rq = pods.stat(&client, "http.egress.downstream_rq_total");
    assert!(egress_rq >= 1, "client sidecar egress saw the call");
    assert!(pods.stat(&client, "cluster.passthrough.upstream_rq_total") >= 1);
    // ... and the server's ingress sidecar, on the chain for the original port.
    assert!(pods.stat(&server, "http.ingress.downstream_rq_total") >= 1);
    assert!(pods.stat(&server, "cluster.local_app.upstream_rq_total") >= 1);
    // No loop: the sidecar's own upstream connection (uid 1337) was not sent
    // back to its egress listener, so it counted exactly the client's requests.
    let calls = pods.stat(&client, "cluster.passthrough.upstream_rq_total");
    assert_eq!(
        egress_rq, calls,
        "egress requests == requests sent upstream (no loop)"
    );

    // An ignored port bypasses the client sidecar (and the server has no rule for it).
    let ignored_url = format!("http://{server_ip}:{IGNORED_PORT}/direct");
    let out = pods.curl(&client, &ignored_url, &[]);
    let direct = String::from_utf8_lossy(&out.stdout);
    assert!(direct.starts_with("server-pod /direct"), "{out:?}");
    assert!(
        direct.ends_with(" -"),
        "no sidecar touched the ignored port: {direct}"
    );
    assert_eq!(
        pods.stat(&client, "http.egress.downstream_rq_total"),
        egress_rq
    );

    // Opaque TCP (no HTTP in the first bytes) takes the egress default chain:
    // tcp_proxy to the ORIGINAL_DST cluster.
    let script =
        format!("exec 3<>/dev/tcp/{server_ip}/{TCP_PORT}; printf 'hello tcp\\n' >&3; head -n1 <&3");
    let out = pods.exec(&client, &["timeout", "5", "bash", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo hello tcp\n",
        "{out:?}"
    );
    assert_eq!(pods.stat(&client, "tcp.egress_tcp.downstream_cx_total"), 1);

    // --clean removes every rule and both chains.
    for ns in [&client, &server] {
        let out = pods.exec(ns, &[&bin, "init", "--clean"]);
        assert!(out.status.success(), "init --clean in {ns}: {out:?}");
        let rules = ok(&["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S"]);
        assert!(
            !rules.contains("TRELLIS"),
            "rules left after --clean in {ns}: {rules}"
        );
        let again = pods.exec(ns, &[&bin, "init", "--clean"]);
        assert!(again.status.success(), "--clean twice is fine");
    }
    // IPv6 got the same chains while installed (ip6tables is present here).
    // The legacy backend, chosen explicitly, installs and cleans the same way.
    let legacy = |args: &[&str]| {
        let mut all = vec![bin.as_str(), "init", "--backend", "legacy"];
        all.extend_from_slice(args);
        pods.exec(&client, &all)
    };
    let out = legacy(&[]);
    assert!(out.status.success(), "init --backend legacy: {out:?}");
    let rules = ok(&[
        "ip",
        "netns",
        "exec",
        &client,
        "iptables-legacy",
        "-t",
        "nat",
        "-S",
    ]);
    assert!(
        rules.contains("-A OUTPUT -p tcp -j TRELLIS_EGRESS"),
        "{rules}"
    );
    let rules6 = ok(&[
        "ip",
        "netns",
        "exec",
        &client,
        "ip6tables-legacy",
        "-t",
        "nat",
        "-S",
    ]);
    assert!(
        rules6.contains("-A TRELLIS_EGRESS -d ::1/128 -j RETURN"),
        "{rules6}"
    );
    assert!(legacy(&["--clean"]).status.success());
    let rules = ok(&[
        "ip",
        "netns",
        "exec",
        &client,
        "iptables-legacy",
        "-t",
        "nat",
        "-S",
    ]);
    assert!(!rules.contains("TRELLIS"), "legacy rules left: {rules}");

    // Without rules the client now reaches the app directly.
    let out = pods.curl(&client, &app_url, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with(" -"),
        "{out:?}"
    );
}
