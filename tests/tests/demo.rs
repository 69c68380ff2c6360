//! The quickstart demo (`examples/run-demo` runs the `trellis-demo` binary):
//! started for a bounded time, it must carry traffic through the gateway,
//! the frontend's sidecar and both backend sidecars over mTLS, show the
//! canary shift from v1 to v2 with no failed request, and on Ctrl-C (SIGINT
//! to its process group, as a terminal sends it) exit 0 leaving no process,
//! port or temporary folder behind.
//!
//! While it runs, a real Prometheus scrapes it with
//! `examples/observability/prometheus.yml` and its alert rules: every metric
//! and label the Grafana dashboard and the rules use must exist in what the
//! mesh emits, every panel must show data, no alert may fire on the healthy
//! mesh, and a client refused by mTLS must fire the alert meant for it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use trellis_tests::client;
use trellis_tests::eventually;
use trellis_tests::process::workspace_bin;
use trellis_tests::prometheus::{names_in, Prometheus};

/// The ports the demo takes, as offsets from its base port.
const PORT_OFFSETS: &[u16] = &[
    0, 1, 2, 10, 11, 12, 20, 21, 22, 23, 24, 25, 80, 81, 90, 91, 92, 93,
];

/// A base port with the 100 ports above it free right now.
fn free_base() -> u16 {
    let start = 20000 + (std::process::id() % 200) as u16 * 100;
    (0..100u16)
        .map(|i| 20000 + (start - 20000 + i * 100) % 20000)
        .find(|base| (*base..*base + 100).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("a free block of 100 loopback ports")
}

/// The numbers on a demo report line, by label.
fn hops(line: &str) -> Vec<u64> {
    Regex::new(r"in (\d+)")
        .expect("regex")
        .captures_iter(line)
        .map(|c| c[1].parse().expect("number"))
        .collect()
}

/// Removes the demo's work folder if a failed test leaves it behind.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // After the command name in parentheses: state, then ppid.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn observability(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/observability")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example scrape config with the demo's default ports (17000 + N)
/// moved to `base` + N, scraping every second.
fn scrape_config(base: u16) -> String {
    let text = observability("prometheus.yml");
    let ports = Regex::new(r"127\.0\.0\.1:170(\d\d)").expect("regex");
    let found: BTreeSet<u16> = ports
        .captures_iter(&text)
        .map(|c| c[1].parse().expect("two digits"))
        .collect();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [1, 90, 91, 92, 93],
        "prometheus.yml scrapes trellis-control and the demo's four proxies"
    );
    ports
        .replace_all(&text, |c: &regex::Captures| {
            format!(
                "127.0.0.1:{}",
                base + c[1].parse::<u16>().expect("two digits")
            )
        })
        .replace("15s", "1s")
}

fn dashboard_exprs() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(&observability("grafana-dashboard.json")).expect("dashboard JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    assert!(exprs.len() >= 20, "the dashboard has its panels");
    exprs
}

fn alert_exprs() -> Vec<String> {
    let rules: Value = serde_yaml::from_str(&observability("alerts.yml")).expect("alerts.yml");
    let exprs: Vec<String> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect();
    assert!(exprs.len() >= 8, "alerts.yml has its rules");
    exprs
}

fn promtool(args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alerts Prometheus holds active (pending or firing), as
/// (name, instance, state).
async fn active_alerts(prom: &Prometheus) -> Vec<(String, String, String)> {
    let data = prom.api("alerts").await;
    data["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (
                        s(&x["labels"]["alertname"]),
                        s(&x["labels"]["instance"]),
                        s(&x["state"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn check_observability(prom: &Prometheus, base: u16) {
    eventually(
        Duration::from_secs(30),
        "every scrape target up",
        || async {
            let targets = prom.api("targets").await;
            let active = targets["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (active.len() == 5 && active.iter().all(|t| t["health"] == "up")).then_some(())
        },
    )
    .await;

    // Every name the dashboard and the rules use is one the mesh emits.
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    let (metrics, labels) = (prom.metric_names().await, prom.label_names().await);
    for expr in dashboard.iter().chain(&alerts) {
        let (m, l) = names_in(expr);
        let unknown_metrics: Vec<_> = m.difference(&metrics).collect();
        let unknown_labels: Vec<_> = l.difference(&labels).collect();
        assert!(
            unknown_metrics.is_empty() && unknown_labels.is_empty(),
            "`{expr}` uses metrics {unknown_metrics:?} and labels {unknown_labels:?} the demo mesh never emits"
        );
    }
    // Every panel shows data (rates need two scrapes).
    for expr in &dashboard {
        eventually(
            Duration::from_secs(20),
            &format!("data for the panel query `{expr}`"),
            || async { (!prom.query(expr).await.is_empty()).then_some(()) },
        )
        .await;
    }
    // Every rule evaluates, and none fires on a healthy mesh.
    eventually(
        Duration::from_secs(20),
        "every alert rule evaluated without error",
        || async {
            let groups = prom.api("rules").await;
            let rules: Vec<Value> = groups["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            if let Some(bad) = rules.iter().find(|r| r["health"] == "err") {
                panic!("alert rule fails to evaluate: {bad}");
            }
            (rules.len() == alerts.len() && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    )
    .await;
    let active = active_alerts(prom).await;
    assert!(
        active.is_empty(),
        "alerts on the healthy demo mesh: {active:?}"
    );

    // A client without a certificate is refused by the frontend's STRICT
    // listener, and the alert for refused peers fires for that proxy.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", base + 20)])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("openssl s_client finishes")
    .expect("openssl runs");
    let frontend = format!("127.0.0.1:{}", base + 91);
    eventually(
        Duration::from_secs(20),
        "TrellisMtlsPeersRefused firing for the frontend's sidecar",
        || async {
            active_alerts(prom)
                .await
                .iter()
                .any(|(name, instance, state)| {
                    name == "TrellisMtlsPeersRefused" && *instance == frontend && state == "firing"
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_demo_meshes_shifts_and_exits_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/observability");
    promtool(&["check", "rules", &dir.join("alerts.yml").to_string_lossy()]);
    promtool(&[
        "check",
        "config",
        &dir.join("prometheus.yml").to_string_lossy(),
    ]);

    let proxy = workspace_bin("trellis-proxy");
    let bins = proxy.parent().expect("bin dir").to_path_buf();
    let base = free_base();
    let mut demo = Command::new(workspace_bin("trellis-demo"))
        .arg("--bin-dir")
        .arg(&bins)
        .args([
            "--base-port",
            &base.to_string(),
            "--step-secs",
            "3",
            "--rate",
            "25",
        ])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start trellis-demo");
    let pid = demo.id().expect("demo pid");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut work = RemoveOnDrop(None);
    let mut prom: Option<Prometheus> = None;
    let mut reports_after_shift = 0;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("demo output") {
            println!("{line}");
            if let Some(path) = line.trim().strip_prefix("logs ") {
                work.0 = Some(PathBuf::from(path.trim()));
                // The mesh is up: scrape it while the canary runs.
                let config = scrape_config(base);
                prom = Some(
                    Prometheus::start(&config, &[("alerts.yml", &observability("alerts.yml"))])
                        .await,
                );
            }
            if line.contains("weights v1/v2   0/100") {
                reports_after_shift += 1;
            }
            seen.push(line);
            if reports_after_shift == 2 {
                return;
            }
        }
        panic!("the demo stopped before the canary finished");
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the demo reaches the end of its canary in time");
    let dir = work.0.clone().expect("the demo names its work folder");
    assert!(
        dir.is_dir(),
        "{} missing while the demo runs",
        dir.display()
    );

    let prom = prom.expect("Prometheus started");
    if tokio::time::timeout(Duration::from_secs(120), check_observability(&prom, base))
        .await
        .is_err()
    {
        panic!(
            "observability checks timed out; Prometheus log:\n{}",
            prom.log()
        );
    }
    drop(prom);

    // The frontend's sidecar takes only mTLS: plain text is refused.
    let plain = client::get(&format!("http://127.0.0.1:{}/", base + 20)).await;
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "the frontend sidecar's STRICT listener answered plain text"
    );

    let started = children(pid);
    assert!(
        started.len() >= 5,
        "trellis-control and four proxies run under the demo: {started:?}"
    );
    // SAFETY: kill(2) on the process group of our own child.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGINT);
    }
    let rest = async {
        while let Some(line) = lines.next_line().await.expect("demo output") {
            println!("{line}");
            seen.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("the demo stops after SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(10), demo.wait())
        .await
        .expect("the demo exits")
        .expect("exit status");
    assert!(status.success(), "the demo exited with {status}");

    let text = seen.join("\n");
    for step in ["90/10", "50/50", "0/100"] {
        assert!(
            text.contains(&format!("canary: route weights now v1/v2 {step}")),
            "no canary step {step}:\n{text}"
        );
    }
    // Every hop carried traffic: gateway, then the frontend and both
    // backends counting requests by their caller's verified mTLS identity.
    let last = seen
        .iter()
        .rev()
        .find(|l| l.contains("hops:"))
        .expect("a hops line");
    let counts = hops(last);
    assert_eq!(counts.len(), 4, "gateway, frontend, v1, v2 in {last}");
    assert!(
        counts.iter().all(|n| *n > 0),
        "a hop saw no request: {last}"
    );
    // After the frontend's sidecar took 0/100, only v2 answers.
    let final_window = seen
        .iter()
        .rev()
        .find(|l| l.contains("weights v1/v2   0/100"))
        .expect("a report after the shift");
    assert!(
        final_window.contains("v1   0 v2"),
        "v1 still served after 0/100: {final_window}"
    );
    assert!(
        text.contains(" 0 failed.") && text.contains("Cleaned up."),
        "{text}"
    );

    // Nothing it started is left: processes, ports, files.
    eventually(
        Duration::from_secs(10),
        "the demo's processes to be gone",
        || {
            let left: Vec<u32> = started
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    for offset in PORT_OFFSETS {
        let port = base + offset;
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still held after the demo exited"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
