//! The egress listener as an explicit proxy (`http_proxy=` clients: absolute-form
//! requests and CONNECT tunnels, to an ORIGINAL_DST cluster), and `wait-ready`.
//! Loopback only.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_tests::process::{workspace_bin, ProxyProcess};
use trellis_tests::upstream::{Echo, TcpEcho};

/// Envoy's way to say it: CONNECT allowed on the HCM, a `connect_matcher`
/// route that terminates CONNECT, and an ORIGINAL_DST cluster.
fn egress(port: u16) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: egress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          upgrade_configs:
          - upgrade_type: CONNECT
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route:
                  cluster: passthrough
                  upgrade_configs:
                  - upgrade_type: CONNECT
                    connect_config: {{}}
              - match: {{ prefix: / }}
                route: {{ cluster: passthrough }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#
    )
}

fn curl(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn stat(proxy: &ProxyProcess, name: &str) -> u64 {
    let stats = proxy.admin_get("/stats").await.body_text();
    stats
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

// Multi-threaded: curl runs as a blocking child while the echo serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_and_connect_through_the_egress_listener() {
    let echo = Echo::start("app").await;
    let bin = workspace_bin("trellis-proxy");
    let (proxy, port) = ProxyProcess::start_on_free_port(&bin, egress, &[]).await;
    let proxy_url = format!("http://127.0.0.1:{port}");
    let target = format!("http://{}/via-proxy", echo.addr);

    // http_proxy=...: curl sends `GET http://127.0.0.1:N/via-proxy` (absolute-form).
    let env = [("http_proxy", proxy_url.as_str()), ("no_proxy", "")];
    let (ok, body) = curl(&[&target], &env);
    assert!(ok, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["upstream"], "app", "{body}");
    assert_eq!(v["path"], "/via-proxy", "{body}");
    assert_eq!(echo.count(), 1);
    assert_eq!(
        stat(&proxy, "cluster.passthrough.upstream_rq_total").await,
        1
    );

    // CONNECT (curl --proxytunnel): a byte tunnel to the named host and port.
    let tunnelled = format!("http://{}/tunnelled", echo.addr);
    let (ok, body) = curl(&["--proxytunnel", "-x", &proxy_url, &tunnelled], &[]);
    assert!(ok, "{body}");
    assert!(body.contains("\"path\":\"/tunnelled\""), "{body}");
    assert_eq!(echo.count(), 2);

    // CONNECT carries opaque bytes too.
    let tcp = TcpEcho::start().await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", tcp.addr);
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
    let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    s.write_all(b"\x00\x01opaque")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut back = [0u8; 8];
    s.read_exact(&mut back)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&back, b"\x00\x01opaque");

    // A plain request to the egress port names no destination: 503, never a
    // connection back to the proxy itself.
    let direct = format!("{proxy_url}/");
    let (_, code) = curl(&["-o", "/dev/null", "-w", "%{http_code}", &direct], &[]);
    assert_eq!(code, "503");
}

#[tokio::test]
async fn wait_ready_exits_0_when_ready_and_1_on_timeout() {
    let bin = workspace_bin("trellis-proxy");
    let (proxy, _) = ProxyProcess::start_on_free_port(&bin, egress, &[]).await;
    let admin = proxy.admin.to_string();
    let out = Command::new(&bin)
        .args(["wait-ready", "--admin", &admin, "--timeout", "10"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");

    let (refused, _held) = trellis_tests::refused_address();
    let started = Instant::now();
    let out = Command::new(&bin)
        .args([
            "wait-ready",
            "--admin",
            &refused.to_string(),
            "--timeout",
            "1",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
