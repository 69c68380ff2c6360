//! `trellis-demo`: the quickstart. On loopback, with no root and nothing to
//! install: trellis-control with its embedded database, three services
//! (frontend, backend v1 and v2) each behind a trellis-proxy sidecar with
//! mesh-issued mTLS identities, a virtual gateway in front, a light traffic
//! generator, and a canary shift of the backend's route weights through the
//! App Mesh API while traffic flows. Ctrl-C stops everything and cleans up.

mod apps;
mod client;
mod figures;
mod layout;
mod mesh;
mod procs;
mod traffic;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use client::Http;
use figures::Stats;
use layout::Layout;
use procs::Proc;
use traffic::{Counts, Tally};

#[derive(Parser)]
#[command(
    version,
    about = "A demo mesh on loopback: control plane, mTLS sidecars, gateway, canary shift"
)]
struct Args {
    /// Folder holding trellis-proxy and trellis-control [default: this binary's folder]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The App Mesh specs to apply (`cli/` and `canary/` inside)
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/appmesh"))]
    specs: PathBuf,
    /// First of the 100 loopback ports the demo takes
    #[arg(long, default_value_t = 17000)]
    base_port: u16,
    /// Requests per second sent to the gateway
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
    /// Seconds between canary steps
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    step_secs: u64,
    /// Stop after this many seconds instead of waiting for Ctrl-C
    #[arg(long)]
    duration: Option<u64>,
}

/// Everything the demo started, stopped in reverse order.
struct Mesh {
    work: PathBuf,
    control: Option<Proc>,
    proxies: Vec<(Proc, u16)>,
}

impl Mesh {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.control {
            c.check_alive()?;
        }
        for (p, _) in &mut self.proxies {
            p.check_alive()?;
        }
        Ok(())
    }

    async fn stop(mut self) {
        for (p, _) in self.proxies.drain(..) {
            p.stop(Duration::from_secs(3)).await;
        }
        if let Some(c) = self.control.take() {
            c.stop(Duration::from_secs(3)).await;
        }
    }
}

fn bin_dir(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no folder")?
            .to_path_buf(),
    };
    for bin in ["trellis-proxy", "trellis-control"] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} not found in {} (build it, or give --bin-dir)",
                bin,
                dir.display()
            );
        }
    }
    Ok(dir)
}

async fn start(
    args: &Args,
    layout: &Layout,
    bins: &Path,
    mesh: &mut Mesh,
    http: &Http,
) -> anyhow::Result<()> {
    let control_bin = bins.join("trellis-control");
    let proxy_bin = bins.join("trellis-proxy");
    let data = mesh.work.join("data");
    let (api, xds) = (
        format!("127.0.0.1:{}", layout.api),
        format!("127.0.0.1:{}", layout.xds),
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    mesh.control = Some(Proc::spawn(
        "trellis-control",
        &control_bin,
        &s(&[
            "serve",
            "--data-dir",
            &data.to_string_lossy(),
            "--api-addr",
            &api,
            "--xds-addr",
            &xds,
        ]),
        &[],
        &mesh.work,
    )?);
    wait_port(layout.api, Duration::from_secs(20)).await?;

    let specs = mesh.work.join("specs");
    mesh::prepare(&args.specs, layout, &specs)?;
    let applied = procs::run(
        &control_bin,
        &s(&[
            "apply",
            "-f",
            &specs.to_string_lossy(),
            "--api-addr",
            &api,
            "--data-dir",
            &data.to_string_lossy(),
        ]),
    )
    .await?;
    println!("App Mesh resources applied through the API:");
    for line in applied.lines() {
        println!("  {line}");
    }

    apps::backend(layout.backend_v1.app, "v1").await?;
    apps::backend(layout.backend_v2.app, "v2").await?;
    apps::frontend(layout.frontend.app, layout.frontend.egress, http.clone()).await?;

    let nodes = [
        ("virtualNode", "frontend", layout.frontend),
        ("virtualNode", "backend-v1", layout.backend_v1),
        ("virtualNode", "backend-v2", layout.backend_v2),
        (
            "virtualGateway",
            "gateway",
            layout::Sidecar {
                app: layout.gateway,
                ingress: args.base_port + 80,
                egress: args.base_port + 81,
                admin: layout.gateway_admin,
            },
        ),
    ];
    for (kind, name, ports) in nodes {
        // Each proxy proves its node with the node's token.
        let flag = if kind == "virtualNode" {
            "--virtual-node"
        } else {
            "--virtual-gateway"
        };
        let token = procs::run(
            &control_bin,
            &s(&[
                "token",
                "issue",
                "--reuse",
                "--mesh",
                "demo",
                flag,
                name,
                "--api-addr",
                &api,
                "--data-dir",
                &data.to_string_lossy(),
            ]),
        )
        .await?;
        // App Mesh mode: the variables App Mesh's Envoy image read, no file;
        // xDS over TLS, trusting the CA trellis-control made in its data dir.
        let env = [
            ("TRELLIS_XDS_TOKEN", token.trim().to_string()),
            ("APPMESH_RESOURCE_ARN", format!("mesh/demo/{kind}/{name}")),
            ("TRELLIS_XDS_ADDR", xds.clone()),
            (
                "TRELLIS_XDS_CA_FILE",
                data.join("ca")
                    .join("ca.pem")
                    .to_string_lossy()
                    .into_owned(),
            ),
            ("ENVOY_ADMIN_ACCESS_PORT", ports.admin.to_string()),
            ("APPMESH_ENVOY_INGRESS_PORT", ports.ingress.to_string()),
            ("APPMESH_ENVOY_EGRESS_PORT", ports.egress.to_string()),
            ("TRELLIS_LISTENER_ADDRESS", "127.0.0.1".to_string()),
        ];
        let args = s(&["--concurrency", "1", "--drain-time-s", "1"]);
        let proc = Proc::spawn(
            &format!("proxy-{name}"),
            &proxy_bin,
            &args,
            &env,
            &mesh.work,
        )?;
        mesh.proxies.push((proc, ports.admin));
    }

    for (p, admin) in &mesh.proxies {
        procs::wait_ok(
            http,
            &format!("http://127.0.0.1:{admin}/ready"),
            None,
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("{} never became ready; see {}", p.name, p.log.display()))?;
    }
    procs::wait_ok(
        http,
        &format!("http://127.0.0.1:{}/", layout.gateway),
        None,
        Duration::from_secs(30),
    )
    .await
    .context("the gateway never routed a request through the mesh")?;
    Ok(())
}

async fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn banner(layout: &Layout, work: &Path) {
    let a = |p: u16| format!("http://127.0.0.1:{p}");
    println!();
    println!("The demo mesh is up. Where to look:");
    println!(
        "  gateway            {}/            (curl it)",
        a(layout.gateway)
    );
    println!(
        "  App Mesh API       {}   (SigV4: any region, the key pair in the credentials file):",
        a(layout.api)
    );
    println!(
        "      export AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION=us-west-2",
        work.join("data").join("credentials").display()
    );
    println!(
        "      aws appmesh describe-route --mesh-name demo --virtual-router-name backend --route-name backend --endpoint-url {}",
        a(layout.api)
    );
    println!("  xDS (ADS, TLS)     127.0.0.1:{}", layout.xds);
    for (name, admin) in [
        ("gateway", layout.gateway_admin),
        ("frontend", layout.frontend.admin),
        ("backend-v1", layout.backend_v1.admin),
        ("backend-v2", layout.backend_v2.admin),
    ] {
        println!(
            "  {name:<18} admin {}/   metrics {}/stats/prometheus",
            a(admin),
            a(admin)
        );
    }
    println!("  logs               {}", work.display());
    println!();
}

/// One line of live figures: the route weights the frontend's sidecar
/// holds, the load's outcome, then each hop's counters (by verified mTLS
/// caller where the hop is mTLS).
async fn report(http: &Http, layout: &Layout, elapsed: u64, window: Counts, total: Counts) {
    let weights = figures::backend_weights(http, layout.frontend.admin).await;
    let gw = Stats::scrape(http, layout.gateway_admin).await;
    let fe = Stats::scrape(http, layout.frontend.admin).await;
    let v1 = Stats::scrape(http, layout.backend_v1.admin).await;
    let v2 = Stats::scrape(http, layout.backend_v2.admin).await;
    let n = |s: &Option<Stats>, f: &dyn Fn(&Stats) -> u64| s.as_ref().map_or(0, f);
    let weights = weights.map_or("  ?/?  ".to_string(), |(a, b)| format!("{a:>3}/{b:<3}"));
    println!(
        "[{elapsed:>4}s] weights v1/v2 {weights} | last 2s: v1 {:>3} v2 {:>3} failed {} ({:>3.0}% v2) | total ok {} failed {}",
        window.v1,
        window.v2,
        window.failed,
        window.v2_percent(),
        total.ok(),
        total.failed,
    );
    println!(
        "        hops: gateway in {} -> frontend sidecar in {} (mTLS from gateway) out {} -> backend-v1 sidecar in {} / backend-v2 sidecar in {} (mTLS from frontend)",
        n(&gw, &|s| s.requests_in("")),
        n(&fe, &|s| s.requests_from("gateway")),
        n(&fe, &|s| s.requests_in("egress")),
        n(&v1, &|s| s.requests_from("frontend")),
        n(&v2, &|s| s.requests_from("frontend")),
    );
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let layout = Layout::new(args.base_port)?;
    layout.check_free()?;
    let bins = bin_dir(&args)?;
    let steps = mesh::steps(&args.specs)?;
    let work = std::env::temp_dir().join(format!("trellis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let http = Http::new();
    let mut mesh = Mesh {
        work: work.clone(),
        control: None,
        proxies: Vec::new(),
    };
    println!("Starting trellis-control, three services with mTLS sidecars and a gateway...");
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let started = tokio::select! {
        r = start(&args, &layout, &bins, &mut mesh, &http) => Some(r),
        _ = &mut ctrl_c => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            mesh.stop().await;
            return Err(e.context(format!(
                "the demo did not start (logs kept in {})",
                work.display()
            )));
        }
        None => {
            mesh.stop().await;
            let _ = std::fs::remove_dir_all(&work);
            println!("Interrupted while starting; cleaned up.");
            return Ok(true);
        }
    }
    banner(&layout, &work);

    let tally = Arc::new(Tally::default());
    let load = traffic::start(
        http.clone(),
        format!("http://127.0.0.1:{}/", layout.gateway),
        args.rate,
        tally.clone(),
    );
    let started = Instant::now();
    let stop_at = args.duration.map(|d| started + Duration::from_secs(d));
    let mut next_step = 0usize;
    let mut last = Counts::default();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let outcome = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = mesh.check_alive() {
            break Err(e);
        }
        let elapsed = started.elapsed().as_secs();
        let now = tally.counts();
        report(&http, &layout, elapsed, now.since(last), now).await;
        last = now;
        if let Some(step) = steps.get(next_step) {
            if elapsed >= args.step_secs * (next_step as u64 + 1) {
                let path = step.file.to_string_lossy().into_owned();
                let api = format!("127.0.0.1:{}", layout.api);
                let data = work.join("data").to_string_lossy().into_owned();
                let applied = procs::run(
                    &bins.join("trellis-control"),
                    &[
                        "apply",
                        "-f",
                        &path,
                        "--api-addr",
                        &api,
                        "--data-dir",
                        &data,
                    ]
                    .map(String::from),
                )
                .await;
                match applied {
                    Ok(_) => println!(
                        "        canary: route weights now v1/v2 {}/{} (UpdateRoute through the App Mesh API: {})",
                        step.weights.0, step.weights.1, path
                    ),
                    Err(e) => break Err(e),
                }
                next_step += 1;
            }
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break Ok(());
        }
    };
    load.abort();
    // Answers still in flight when the load stops belong to the run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = tally.counts();
    println!();
    println!(
        "Stopping: {} requests answered (v1 {}, v2 {}), {} failed.",
        total.ok(),
        total.v1,
        total.v2,
        total.failed
    );
    if let Ok(Some(e)) = tally.last_error.lock().map(|l| l.clone()) {
        println!("Last failure: {e}");
    }
    mesh.stop().await;
    outcome?;
    let _ = std::fs::remove_dir_all(&work);
    println!("Cleaned up.");
    Ok(total.failed == 0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("trellis-demo: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
