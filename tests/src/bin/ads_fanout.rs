//! Control-plane fan-out benchmark (`bench/run --scenarios fanout`): a real
//! `trellis-control` with N virtual nodes and one simulated ADS client per
//! node (state of the world, one gRPC connection each, ACKing every
//! response), then route updates through the App Mesh API, timed from the
//! request to the last affected client's ACK. Also: how many clients were
//! pushed (only the affected ones should be) and the control plane's RSS.
//!
//! Layout: S services, each a virtual router with one route splitting
//! between two target nodes; the other N − 2S nodes are clients with two
//! backends, `svc-0` (every client) and one of the others (a share of the
//! clients). Updating `svc-0`'s route reaches every client; updating
//! another's reaches its share only.
//!
//! Prints one JSON object (figures) on stdout; progress on stderr.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_tests::{client, free_port};
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_protos::envoy::service::discovery::v3::DiscoveryRequest;
use xds_protos::type_url;

const MESH: &str = "bench";

/// Set once the figures are in: clients then see the control plane go away,
/// which is no error.
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Args {
    control: PathBuf,
    nodes: usize,
    services: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        control: PathBuf::from("target/release/trellis-control"),
        nodes: 1000,
        services: 10,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--control-bin" => out.control = value.into(),
            "--nodes" => out.nodes = value.parse()?,
            "--services" => out.services = value.parse()?,
            "--rounds" => out.rounds = value.parse()?,
            other => bail!(
                "unknown flag {other}; have --control-bin PATH --nodes N --services S --rounds R"
            ),
        }
    }
    if out.services < 2 || out.nodes <= 2 * out.services {
        bail!("need --services >= 2 and --nodes > 2 x --services");
    }
    Ok(out)
}

fn route(service: usize, weight_a: u32) -> Value {
    json!({"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
        {"virtualNode": format!("t-{service}-a"), "weight": weight_a},
        {"virtualNode": format!("t-{service}-b"), "weight": 100 - weight_a},
    ]}}})
}

fn client_name(i: usize) -> String {
    format!("n-{i:04}")
}

/// CLI input JSON documents for `serve --load`; returns the node names,
/// targets first.
fn write_mesh(dir: &std::path::Path, a: &Args) -> anyhow::Result<Vec<String>> {
    let listener = json!([{"portMapping": {"port": 8080, "protocol": "http"}}]);
    let mut docs = vec![json!({"meshName": MESH, "spec": {}})];
    let mut nodes = Vec::new();
    for s in 0..a.services {
        for side in ["a", "b"] {
            let name = format!("t-{s}-{side}");
            docs.push(
                json!({"meshName": MESH, "virtualNodeName": name, "spec": {"listeners": listener}}),
            );
            nodes.push(name);
        }
        docs.push(json!({"meshName": MESH, "virtualRouterName": format!("r-{s}"), "spec": {"listeners": listener}}));
        docs.push(json!({"meshName": MESH, "virtualRouterName": format!("r-{s}"), "routeName": "route", "spec": route(s, 50)}));
        docs.push(
            json!({"meshName": MESH, "virtualServiceName": format!("svc-{s}"),
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": format!("r-{s}")}}}}),
        );
    }
    for i in 0..a.nodes - 2 * a.services {
        let other = 1 + i % (a.services - 1);
        let backends = json!([
            {"virtualService": {"virtualServiceName": "svc-0"}},
            {"virtualService": {"virtualServiceName": format!("svc-{other}")}},
        ]);
        docs.push(json!({"meshName": MESH, "virtualNodeName": client_name(i),
            "spec": {"listeners": listener, "backends": backends}}));
        nodes.push(client_name(i));
    }
    for (i, doc) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:05}.json")), doc.to_string())?;
    }
    Ok(nodes)
}

/// What one simulated proxy saw.
#[derive(Default)]
struct Seen {
    responses: AtomicU64,
    rds_acks: AtomicU64,
    /// Nanoseconds since the benchmark's epoch.
    last_rds_ack: AtomicU64,
}

/// Connection attempts that failed before a client was configured.
static RETRIES: AtomicU64 = AtomicU64::new(0);

/// One proxy, retrying as Envoy does (jittered back-off) until its first
/// configuration: a crowd of connecting proxies may overflow the control
/// plane's accept queue, and Envoy simply tries again.
async fn proxy(
    url: String,
    node: String,
    seen: Arc<Seen>,
    epoch: Instant,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut ready = Some(ready);
    for attempt in 0u64.. {
        match stream(&url, &node, &seen, epoch, &mut ready).await {
            Err(e) if ready.is_some() && attempt < 20 => {
                RETRIES.fetch_add(1, Relaxed);
                let jitter = u64::from(node.bytes().map(u32::from).sum::<u32>()) % 400;
                tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
                if attempt == 19 {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
    Ok(())
}

/// One stream: subscribes to the four types (EDS and RDS by wildcard, as a
/// stand-in for the names Envoy would ask for) and ACKs every response.
async fn stream(
    url: &str,
    node: &str,
    seen: &Seen,
    epoch: Instant,
    ready: &mut Option<mpsc::Sender<()>>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string()).await?;
    let (tx, rx) = mpsc::channel(16);
    let subscriptions = [
        (type_url::CLUSTER, vec![]),
        (type_url::CLUSTER_LOAD_ASSIGNMENT, vec!["*".to_string()]),
        (type_url::LISTENER, vec![]),
        (type_url::ROUTE_CONFIGURATION, vec!["*".to_string()]),
    ];
    for (i, (url, names)) in subscriptions.iter().enumerate() {
        tx.send(DiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: format!("mesh/{MESH}/virtualNode/{node}"),
                ..Default::default()
            }),
            type_url: url.to_string(),
            resource_names: names.clone(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut first = [false; 4];
    while let Some(resp) = stream.message().await? {
        seen.responses.fetch_add(1, Relaxed);
        let slot = subscriptions
            .iter()
            .position(|(u, _)| *u == resp.type_url)
            .context("a type not subscribed to")?;
        tx.send(DiscoveryRequest {
            version_info: resp.version_info,
            type_url: resp.type_url,
            resource_names: subscriptions[slot].1.clone(),
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await?;
        if subscriptions[slot].0 == type_url::ROUTE_CONFIGURATION {
            let at = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            seen.last_rds_ack.store(at, Relaxed);
            seen.rds_acks.fetch_add(1, Relaxed);
        }
        first[slot] = true;
        if first.iter().all(|f| *f) {
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
        }
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A counter of the control plane's `/metrics`, summed over its label sets.
async fn metric(api: &str, name: &str) -> f64 {
    let Ok(reply) = client::get(&format!("http://{api}/metrics")).await else {
        return 0.0;
    };
    reply
        .body_text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Round {
    last_ack_ms: f64,
    api_ms: f64,
    pushed: usize,
    expected: usize,
}

/// Updates `service`'s route and waits for every client expected to see it.
async fn update(
    api: &str,
    service: usize,
    weight: u32,
    expected: &[usize],
    seen: &[Arc<Seen>],
    epoch: Instant,
) -> anyhow::Result<Round> {
    let before: Vec<(u64, u64)> = seen
        .iter()
        .map(|s| (s.rds_acks.load(Relaxed), s.responses.load(Relaxed)))
        .collect();
    let body = json!({"spec": route(service, weight)}).to_string();
    let url =
        format!("http://{api}/v20190125/meshes/{MESH}/virtualRouter/r-{service}/routes/route");
    let t0 = epoch.elapsed();
    let reply = client::request(
        Method::PUT,
        &url,
        &[("content-type", "application/json")],
        &body,
    )
    .await?;
    let api_ms = (epoch.elapsed() - t0).as_secs_f64() * 1e3;
    if reply.status != 200 {
        bail!("UpdateRoute: {} {}", reply.status, reply.body_text());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = expected
            .iter()
            .all(|i| seen[*i].rds_acks.load(Relaxed) > before[*i].0);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every affected client got the update within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = expected
        .iter()
        .map(|i| seen[*i].last_rds_ack.load(Relaxed))
        .max()
        .unwrap_or(0);
    let last_ack_ms = (Duration::from_nanos(last).saturating_sub(t0)).as_secs_f64() * 1e3;
    // Anything else pushed shows up within this grace period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushed = seen
        .iter()
        .zip(&before)
        .filter(|(s, b)| s.responses.load(Relaxed) > b.1)
        .count();
    Ok(Round {
        last_ack_ms,
        api_ms,
        pushed,
        expected: expected.len(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("control.log");
    let result = run(&a, dir.path(), &log).await;
    if result.is_err() {
        let kept = std::env::temp_dir().join("ads_fanout-control.log");
        if std::fs::copy(&log, &kept).is_ok() {
            eprintln!("[fanout] trellis-control's log: {}", kept.display());
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("[fanout] trellis-control's last log lines:");
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    result
}

async fn run(a: &Args, dir: &std::path::Path, log: &std::path::Path) -> anyhow::Result<()> {
    let specs = dir.join("specs");
    std::fs::create_dir(&specs)?;
    let nodes = write_mesh(&specs, a)?;
    let api = format!("127.0.0.1:{}", free_port());
    let xds = format!("127.0.0.1:{}", free_port());
    let load_started = Instant::now();
    let mut control = tokio::process::Command::new(&a.control)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--api-addr",
            &api,
            "--xds-addr",
            &xds,
            "--no-auth",
            "--xds-plaintext",
        ])
        .arg("--load")
        .arg(&specs)
        .args(["--require-node-tokens", "never", "--log-format", "json"])
        .env(
            "RUST_LOG",
            std::env::var("FANOUT_CONTROL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", a.control.display()))?;
    let pid = control.id().context("control pid")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while client::get(&format!("http://{api}/metrics")).await.is_err() {
        if Instant::now() > deadline {
            bail!("trellis-control did not open its API");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load_s = load_started.elapsed().as_secs_f64();
    let rss_idle = rss_kib(pid);
    eprintln!(
        "[fanout] {} nodes loaded in {load_s:.1} s; RSS {} MiB; connecting {} clients",
        nodes.len(),
        rss_idle / 1024,
        nodes.len()
    );

    let epoch = Instant::now();
    let seen: Vec<Arc<Seen>> = nodes.iter().map(|_| Arc::default()).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel(nodes.len());
    let connect_started = Instant::now();
    for (node, s) in nodes.iter().zip(&seen) {
        let (url, node, s, ready) = (
            format!("http://{xds}"),
            node.clone(),
            s.clone(),
            ready_tx.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = proxy(url, node.clone(), s, epoch, ready).await {
                if !DONE.load(Relaxed) {
                    eprintln!("[fanout] client {node}: {e}");
                }
            }
        });
    }
    drop(ready_tx);
    for _ in 0..nodes.len() {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("every client configured within 120 s")?
            .context("a client failed")?;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    // Settle: the targets' own registrations reach the clients' EDS; wait
    // until no client has received anything for a second.
    let total = || seen.iter().map(|s| s.responses.load(Relaxed)).sum::<u64>();
    let mut last = total();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total();
        if now == last {
            break;
        }
        last = now;
    }
    let rss_connected = rss_kib(pid);
    eprintln!(
        "[fanout] all {} clients configured in {connect_s:.1} s; RSS {} MiB",
        nodes.len(),
        rss_connected / 1024
    );

    let targets = 2 * a.services;
    let all_clients: Vec<usize> = (targets..nodes.len()).collect();
    let share: Vec<usize> = (targets..nodes.len())
        .filter(|i| (i - targets).is_multiple_of(a.services - 1))
        .collect();
    let pushes_before = metric(&api, "trellis_control_xds_pushes_total").await;
    let mut rounds: Vec<(String, Round)> = Vec::new();
    for r in 0..a.rounds {
        let weight = if r % 2 == 0 { 80 } else { 20 };
        for (label, service, expected) in
            [("every client", 0, &all_clients), ("one share", 1, &share)]
        {
            let round = update(&api, service, weight, expected, &seen, epoch).await?;
            eprintln!(
                "[fanout] round {r} ({label}): last ACK {:.1} ms after the request (API {:.1} ms); {} of {} clients pushed, {} expected",
                round.last_ack_ms,
                round.api_ms,
                round.pushed,
                nodes.len(),
                round.expected
            );
            rounds.push((label.to_string(), round));
        }
    }
    let pushes = metric(&api, "trellis_control_xds_pushes_total").await - pushes_before;
    let rss_after = rss_kib(pid);
    let summary = |label: &str| {
        let rs: Vec<&Round> = rounds
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, r)| r)
            .collect();
        json!({
            "clients_expected": rs.first().map_or(0, |r| r.expected),
            "clients_pushed_max": rs.iter().map(|r| r.pushed).max(),
            "last_ack_ms_median": median(rs.iter().map(|r| r.last_ack_ms).collect()),
            "last_ack_ms_max": rs.iter().map(|r| r.last_ack_ms).fold(0.0, f64::max),
            "api_ms_median": median(rs.iter().map(|r| r.api_ms).collect()),
        })
    };
    let out = json!({
        "nodes": nodes.len(),
        "clients": nodes.len(),
        "services": a.services,
        "rounds": a.rounds,
        "load_s": load_s,
        "connect_s": connect_s,
        "rss_kib_loaded": rss_idle,
        "rss_kib_connected": rss_connected,
        "rss_kib_after": rss_after,
        "pushes_during_updates": pushes,
        "every_client": summary("every client"),
        "one_share": summary("one share"),
        "connect_retries": RETRIES.load(Relaxed),
        "translations": metric(&api, "trellis_control_xds_translations_total").await,
        "translations_skipped": metric(&api, "trellis_control_xds_translations_skipped_total").await,
    });
    println!("{out}");
    DONE.store(true, Relaxed);
    control.kill().await.ok();
    Ok(())
}
