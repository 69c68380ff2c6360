//! The command line: flags, logging and exit codes. Errors become one line
//! on stderr; usage and configuration errors exit 2, runtime failures 1.

mod apply;
mod logging;
mod serve;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// An error in what the user gave us (flags, files), as opposed to a
/// failure while running; it exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Parser)]
#[command(name = "trellis-control", version, about)]
struct Cli {
    /// Log as human text or as JSON lines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the App Mesh API (and, later, xDS) from durable state.
    Serve(ServeArgs),
    /// Apply App Mesh Kubernetes manifests or CLI input JSON through the API.
    Apply(ApplyArgs),
}

/// An address as `IP:PORT` or `HOST:PORT`, resolved once at start.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text}: the name resolves to no address"))
}

fn account_id(text: &str) -> Result<String, String> {
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err("an AWS account id is 12 digits".into())
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Where the database and the default credentials file live.
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// Address of the App Mesh API.
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = socket_addr)]
    pub api_addr: SocketAddr,
    /// Address of the xDS server.
    #[arg(long, default_value = "127.0.0.1:18000", value_parser = socket_addr)]
    pub xds_addr: SocketAddr,
    /// Files or folders of App Mesh specs to apply at start.
    #[arg(long)]
    pub load: Vec<PathBuf>,
    /// Mesh for loaded documents that do not name one.
    #[arg(long)]
    pub mesh: Option<String>,
    /// AWS shared-credentials file of the key pairs to accept [default: DATA_DIR/credentials].
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Accept unsigned requests (only on a loopback --api-addr).
    #[arg(long)]
    pub no_auth: bool,
    /// Region in resource ARNs.
    #[arg(long, default_value = "us-west-2")]
    pub region: String,
    /// Account id in resource ARNs and owners.
    #[arg(long, default_value = "000000000000", value_parser = account_id)]
    pub account_id: String,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Files or folders of App Mesh specs.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Address of the App Mesh API.
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = socket_addr)]
    pub api_addr: SocketAddr,
    /// Data dir whose credentials file to sign with, when --credentials is not given.
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// AWS shared-credentials file to sign with [default: DATA_DIR/credentials].
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Region in the signature scope.
    #[arg(long, default_value = "us-west-2")]
    pub region: String,
    /// Mesh for documents that do not name one.
    #[arg(long)]
    pub mesh: Option<String>,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version; a closed stdout (`| head`) is not an error.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("trellis-control: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Apply(args) => apply::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("trellis-control: {e:#}");
            ExitCode::from(code)
        }
    }
}
