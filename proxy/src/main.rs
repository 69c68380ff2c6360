//! The `trellis-proxy` binary: flags, logging, runtime, and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};
use trellis_proxy::{bootstrap, init, server, shared::NodeInfo, wait_ready};

#[derive(Parser)]
#[command(
    name = "trellis-proxy",
    version,
    about = "An Envoy-compatible L7 proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Envoy v3 bootstrap file (YAML or JSON).
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, env = "ENVOY_CONCURRENCY")]
    concurrency: Option<usize>,
    /// How long a drain waits for open connections to finish.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// trace, debug, info, warn, error, critical or off.
    #[arg(
        short = 'l',
        long = "log-level",
        env = "ENVOY_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Log as human text or as JSON lines.
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Overrides `node.id` in the bootstrap.
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Overrides `node.cluster` in the bootstrap.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Writes the admin address actually bound (useful with port 0).
    #[arg(long = "admin-address-path", value_name = "FILE")]
    admin_address_path: Option<PathBuf>,
    /// `validate` checks the config and exits, as `envoy --mode validate`.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    mode: Mode,
}

/// Sidecar helpers; without one, the proxy runs.
#[derive(Subcommand)]
enum Sub {
    /// Install (or with --clean remove) App Mesh's interception rules.
    Init(init::InitArgs),
    /// Wait until the admin /ready answers 200 (exit 1 on timeout).
    WaitReady(wait_ready::WaitReadyArgs),
}

/// `trellis-init` (a link to this binary, as the injector names the init
/// container's command) is `trellis-proxy init`.
#[derive(Parser)]
#[command(
    name = "trellis-init",
    version,
    about = "Install App Mesh's interception rules"
)]
struct InitCli {
    #[command(flatten)]
    args: init::InitArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Serve,
    Validate,
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("trellis-init")) {
        return init::run(&InitCli::parse().args);
    }
    let cli = Cli::parse();
    match &cli.command {
        Some(Sub::Init(a)) => return init::run(a),
        Some(Sub::WaitReady(a)) => return wait_ready::run(a),
        None => {}
    }
    let (source, loaded) = match &cli.config_path {
        Some(path) => (
            path.display().to_string(),
            bootstrap::load(path).map_err(|e| e.to_string()),
        ),
        // App Mesh mode: the environment of App Mesh's Envoy image.
        None => match bootstrap::appmesh::bootstrap_json(&|k| std::env::var(k).ok()) {
            Ok(Some(text)) => (
                "APPMESH_RESOURCE_ARN".to_string(),
                bootstrap::parse(&text, bootstrap::Format::Json)
                    .map_err(|e| format!("App Mesh mode: {e}")),
            ),
            Ok(None) => {
                eprintln!(
                    "trellis-proxy: a bootstrap is required: -c FILE, or APPMESH_RESOURCE_ARN and TRELLIS_XDS_ADDR"
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("trellis-proxy: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut bootstrap = match loaded {
        Ok(b) => b,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let node = bootstrap.node.get_or_insert_with(Default::default);
    if let Some(id) = &cli.service_node {
        node.id = id.clone();
    }
    if let Some(c) = &cli.service_cluster {
        node.cluster = c.clone();
    }
    let node = NodeInfo::from_node(node);
    let config = match server::StaticConfig::compile(&bootstrap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trellis-proxy: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.mode == Mode::Validate {
        println!("configuration '{source}' OK");
        return ExitCode::SUCCESS;
    }
    // The bootstrap's parse freed the reflection pool and its own scratch
    // (most of the heap so far); hand those pages back before serving.
    release_memory();

    let set_log_level = match init_logging(&cli.log_level, cli.log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("trellis-proxy: --log-level: {e}");
            return ExitCode::from(2);
        }
    };
    let concurrency = cli
        .concurrency
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One worker runs on a single-threaded runtime: no work-stealing queues or
    // cross-thread wake-ups. Measured with bench/run (h1, one core): 9.8 µs of
    // CPU per request against 13.8 µs for a one-worker multi-thread runtime.
    let mut builder = if concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(concurrency);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = server::Options {
        node,
        concurrency,
        drain_time: Duration::from_secs(cli.drain_time_s),
        admin_address_path: cli.admin_address_path,
        set_log_level,
        release_memory: Some(release_memory),
    };
    match runtime.block_on(server::run(bootstrap, config, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("trellis-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the free pages in glibc's arenas to the system: without it, the
/// memory of connections that have closed stays with the process.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap under its arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Envoy's level names mapped onto tracing's ("critical" is "error").
fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let l = match level {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => level,
        "warning" => "warn",
        "critical" => "error",
        other => return Err(format!("unknown level '{other}'")),
    };
    EnvFilter::try_new(l).map_err(|e| e.to_string())
}

fn init_logging(
    level: &str,
    format: LogFormat,
) -> Result<trellis_proxy::admin::SetLogLevel, String> {
    let (filter, handle) = reload::Layer::new(filter_for(level)?);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
    Ok(Arc::new(move |level: &str| {
        let f = filter_for(level)?;
        handle.reload(f).map_err(|e| e.to_string())
    }))
}
