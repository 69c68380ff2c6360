//! Access log lines from stock Envoy and from trellis on the same bootstrap
//! and the same requests: Envoy's default format, a text format and a JSON
//! format must come out the same, once the timestamp and the timings (which
//! legitimately differ) are masked. Needs Envoy: set `ENVOY_BIN`.

use std::path::Path;
use std::time::Duration;

use http::Method;
use trellis_tests::config::{cluster, http_proxy, indent};
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, within};

const TEXT: &str = "%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %ROUTE_NAME% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %REQ(X-MISSING)% %REQ(X-MISSING?USER-AGENT)% %REQ(USER-AGENT):4% %RESP(CONTENT-TYPE)% %UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% %UPSTREAM_REQUEST_ATTEMPT_COUNT% 100%%\\n";

fn bootstrap(port: u16, echo: std::net::SocketAddr, dir: &Path) -> String {
    let logs = format!(
        r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {default}
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {text}
    log_format:
      text_format_source:
        inline_string: "{TEXT}"
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {json}
    log_format:
      json_format:
        code: "%RESPONSE_CODE%"
        method: "%REQ(:METHOD)%"
        path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
        missing: "%REQ(X-MISSING)%"
        mixed: "code=%RESPONSE_CODE% missing=%REQ(X-MISSING)%"
        bytes: "%BYTES_SENT%"
        flags: "%RESPONSE_FLAGS%"
        grpc: "%GRPC_STATUS(NUMBER)%"
        attempts: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"
        upstream: "%UPSTREAM_REMOTE_ADDRESS%"
        nested:
          cluster: "%UPSTREAM_CLUSTER%"
          protocol: "%PROTOCOL%"
"#,
        default = dir.join("default.log").display(),
        text = dir.join("text.log").display(),
        json = dir.join("json.log").display(),
    );
    let vhosts = r#"- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/retried/" }
    name: retried
    route:
      cluster: echo
      prefix_rewrite: "/status/"
      retry_policy: { retry_on: 5xx, num_retries: 2 }
  - match: { prefix: "/direct" }
    name: direct
    direct_response: { status: 204 }
  - match: { prefix: "/rw/" }
    name: rewritten
    route: { cluster: echo, prefix_rewrite: "/" }
  - match: { prefix: "/" }
    name: plain
    route: { cluster: echo }
"#;
    http_proxy(
        port,
        &indent(vhosts, 10),
        &[cluster("echo", &[echo], "")],
        &indent(&logs, 10),
    )
}

async fn lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(15), "access log lines", || async {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

/// Runs the requests through one proxy and returns its three logs.
async fn run(bin: &Path, echo: &Echo) -> [Vec<String>; 3] {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _p = ProxyProcess::start_with(bin, &bootstrap(port, echo.addr, dir.path()), &[]).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let ua = [("user-agent", "difftest/1.0"), ("x-request-id", "fixed-id")];
    let cases: [(Method, &str, &str); 6] = [
        (Method::GET, "/a?q=1", ""),
        (Method::POST, "/b", "hello"),
        (Method::GET, "/status/503", ""),
        (Method::GET, "/rw/c", ""),
        // Three tries upstream; and none.
        (Method::GET, "/retried/503", ""),
        (Method::GET, "/direct", ""),
    ];
    let n = cases.len();
    for (m, path, body) in cases {
        client::request(m, &url(path), &ua, body)
            .await
            .expect("request");
    }
    let out = [
        lines(&dir.path().join("default.log"), n).await,
        lines(&dir.path().join("text.log"), n).await,
        lines(&dir.path().join("json.log"), n).await,
    ];
    out
}

/// Masks what differs between two correct proxies: the timestamp, the
/// durations, and the listener's port (each proxy has its own).
fn mask_default(line: &str, port_re: &regex::Regex) -> String {
    let re =
        regex::Regex::new(r#"^\[[^\]]+\] ("[^"]*") (\d+) (\S+) (\d+) (\d+) \d+ (\d+|-) (.*)$"#)
            .expect("regex");
    let masked = re.replace(line, |c: &regex::Captures| {
        let service_time = if &c[6] == "-" { "-" } else { "<ms>" };
        format!(
            "[<ts>] {} {} {} {} {} <ms> {service_time} {}",
            &c[1], &c[2], &c[3], &c[4], &c[5], &c[7]
        )
    });
    port_re
        .replace_all(&masked, "127.0.0.1:<port>")
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_match_envoy() {
    within(Duration::from_secs(120), "access log differential", async {
        let envoy = require_envoy();
        let echo = Echo::start("echo").await;
        let reference = run(&envoy, &echo).await;
        let ours = run(&workspace_bin("trellis-proxy"), &echo).await;
        // The listener ports differ; the echo upstream is shared.
        let port_re = regex::Regex::new(r"127\.0\.0\.1:\d+").expect("regex");
        let keep_echo = |s: &str| s.replace(&echo.addr.to_string(), "<echo>");
        for (i, (e, t)) in reference[0].iter().zip(&ours[0]).enumerate() {
            assert_eq!(
                mask_default(&keep_echo(t), &port_re),
                mask_default(&keep_echo(e), &port_re),
                "default format, line {i}"
            );
        }
        for (i, (e, t)) in reference[1].iter().zip(&ours[1]).enumerate() {
            assert_eq!(
                port_re.replace_all(&keep_echo(t), "127.0.0.1:<port>"),
                port_re.replace_all(&keep_echo(e), "127.0.0.1:<port>"),
                "text format, line {i}"
            );
        }
        for (i, (e, t)) in reference[2].iter().zip(&ours[2]).enumerate() {
            let e: serde_json::Value = serde_json::from_str(e).expect("Envoy JSON");
            let t: serde_json::Value = serde_json::from_str(t).expect("trellis JSON");
            assert_eq!(t, e, "json format, line {i}");
        }
        // Equal to Envoy's, and what the cases make: one try each, three
        // for the retried 503, none for the direct response.
        let attempts: Vec<&str> = ours[1]
            .iter()
            .map(|l| l.rsplit(' ').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(attempts, ["1", "1", "1", "1", "3", "0"], "{:?}", ours[1]);
    })
    .await;
}
