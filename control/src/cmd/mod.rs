//! The command line: flags, logging and exit codes. Errors become one line
//! on stderr; usage and configuration errors exit 2, runtime failures 1.

mod apply;
mod backup;
mod bootstrap;
mod logging;
mod serve;
mod status;

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
pub enum TokenPolicy {
    Auto,
    Always,
    Never,
}

impl From<TokenPolicy> for trellis_control::tokens::Policy {
    fn from(p: TokenPolicy) -> Self {
        use trellis_control::tokens::Policy;
        match p {
            TokenPolicy::Auto => Policy::Auto,
            TokenPolicy::Always => Policy::Always,
            TokenPolicy::Never => Policy::Never,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PreStopHookArg {
    Sleep,
    Exec,
}

impl From<PreStopHookArg> for trellis_control::inject::PreStopHook {
    fn from(h: PreStopHookArg) -> Self {
        use trellis_control::inject::PreStopHook;
        match h {
            PreStopHookArg::Sleep => PreStopHook::Sleep,
            PreStopHookArg::Exec => PreStopHook::Exec,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the App Mesh API and xDS (ADS) from durable state.
    Serve(Box<ServeArgs>),
    /// Apply App Mesh Kubernetes manifests or CLI input JSON through the API.
    Apply(ApplyArgs),
    /// Print an Envoy bootstrap (YAML) for a proxy of a virtual node or gateway.
    Bootstrap(BootstrapArgs),
    /// Show the connected proxies and the versions they ACKed or NACKed.
    Status(StatusArgs),
    /// Register (or with --deregister, remove) an instance of a virtual node
    /// whose app runs without a connected proxy, or of a Cloud Map service
    /// (--namespace, --service, --attribute) for `awsCloudMap` virtual nodes:
    /// EDS serves it to clients.
    RegisterInstance(RegisterArgs),
    /// Copy the data dir (database, CA, token key, credentials) into a new folder,
    /// consistently, while the server runs.
    Backup(BackupArgs),
    /// Issue, revoke or list the per-node tokens ADS streams present.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Issue a node's token (replacing any earlier one, unless --reuse) and
    /// print it, or a Kubernetes Secret holding it.
    Issue(IssueArgs),
    /// Revoke a node's token: its proxy can no longer open a stream.
    Revoke(TokenArgs),
    /// List the nodes holding a token.
    List(StatusArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub mesh: String,
    #[arg(
        long,
        conflicts_with = "virtual_gateway",
        required_unless_present = "virtual_gateway"
    )]
    pub virtual_node: Option<String>,
    #[arg(long)]
    pub virtual_gateway: Option<String>,
    #[command(flatten)]
    pub api: StatusArgs,
}

#[derive(Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub node: TokenArgs,
    /// Print the node's live token when it has one, instead of replacing it.
    #[arg(long)]
    pub reuse: bool,
    /// `token`: the token alone; `k8s-secret`: the Secret injected sidecars
    /// read it from (TRELLIS_XDS_TOKEN), as YAML for `kubectl apply -f -`.
    #[arg(long, value_enum, default_value_t = TokenOutput::Token)]
    pub output: TokenOutput,
    /// Namespace of the node's pods, for `--output k8s-secret`.
    #[arg(long, required_if_eq("output", "k8s-secret"))]
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenOutput {
    Token,
    K8sSecret,
}

impl TokenArgs {
    pub fn node_id(&self) -> trellis_control::xds::translate::NodeId {
        let (gateway, name) = match (&self.virtual_node, &self.virtual_gateway) {
            (_, Some(g)) => (true, g.clone()),
            (Some(n), None) => (false, n.clone()),
            (None, None) => (false, String::new()),
        };
        trellis_control::xds::translate::NodeId {
            mesh: self.mesh.clone(),
            gateway,
            name,
        }
    }
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
    /// AWS shared-credentials file of the key pairs to accept [default: the key pair in
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else DATA_DIR/credentials].
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
    /// PEM certificate of an operator-supplied CA [default: DATA_DIR/ca/ca.pem, created on first start].
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of the --ca-cert CA.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// PEM CA certificates trusted alongside the issuing CA (their SVIDs are
    /// accepted by every proxy) while a CA rotation overlaps.
    #[arg(long)]
    pub ca_trust: Vec<PathBuf>,
    /// Trust domain of the SPIFFE IDs the CA issues.
    #[arg(long, default_value = trellis_control::ca::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Serve xDS in clear text (only on a loopback --xds-addr): node tokens
    /// and SVID keys then cross the connection unencrypted.
    #[arg(long, conflicts_with_all = ["xds_tls_cert", "xds_san"])]
    pub xds_plaintext: bool,
    /// PEM certificate chain for the xDS port [default: issued by the mesh
    /// CA for the --xds-addr IP (every local address when unspecified),
    /// `localhost` and each --xds-san].
    #[arg(long, requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// PEM private key of --xds-tls-cert.
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// Another DNS name or IP address proxies use to reach the xDS port, for
    /// the certificate the mesh CA issues it.
    #[arg(long, conflicts_with = "xds_tls_cert")]
    pub xds_san: Vec<String>,
    /// When ADS streams must carry their node's token: `always`; `auto`
    /// once any token has been issued (upgrades); `never`, which hands any
    /// node's SVID to any proxy that reaches xDS (local experiments only).
    #[arg(long, value_enum, default_value_t = TokenPolicy::Always)]
    pub require_node_tokens: TokenPolicy,
    /// Lifetime of issued SVIDs (`24h`, `90m`, `3600s` or seconds); renewed
    /// at half life. Under a minute only for tests (a warning at start).
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub svid_ttl: std::time::Duration,
    /// OTLP collector that every proxy exports spans to (`http://HOST:PORT`);
    /// tracing is off without one.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport of --otlp-endpoint: `grpc` or `http/protobuf`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc")]
    pub otlp_protocol: String,
    /// Percentage of new traces that are sampled (a request that carries a
    /// sampling decision keeps it).
    #[arg(long, default_value_t = 100.0)]
    pub trace_sampling: f64,
    #[command(flatten)]
    pub injector: InjectorArgs,
}

fn quantity(text: &str) -> Result<trellis_control::inject::Quantity, String> {
    trellis_control::inject::Quantity::parse(text)
}

fn ignored_ip(text: &str) -> Result<trellis_control::inject::IgnoredIp, String> {
    trellis_control::inject::IgnoredIp::parse(text)
}

/// The sidecar injector (a Kubernetes mutating admission webhook). Flag
/// names follow the App Mesh controller's where it had one.
#[derive(Args)]
#[command(next_help_heading = "Sidecar injector")]
pub struct InjectorArgs {
    /// Serve the injector (HTTPS, POST /mutate-v1-pod) on this address.
    #[arg(long, value_parser = socket_addr)]
    pub webhook_addr: Option<SocketAddr>,
    /// PEM certificate chain of the injector [default: one issued by the mesh CA].
    #[arg(long, requires_all = ["webhook_key", "webhook_addr"])]
    pub webhook_cert: Option<PathBuf>,
    /// PEM private key of --webhook-cert.
    #[arg(long, requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// Names (DNS or IP) of the certificate issued by the mesh CA when no
    /// --webhook-cert is given: the Service the API server calls.
    #[arg(long = "webhook-dns-name", default_values_t = [
        "trellis-control.trellis-system.svc".to_string(),
        "localhost".to_string(),
    ])]
    pub webhook_dns_names: Vec<String>,
    /// `TRELLIS_XDS_ADDR` of injected sidecars: how pods reach this server's
    /// xDS (its host is also a name in the xDS certificate the mesh CA issues).
    #[arg(long, default_value = "trellis-control.trellis-system.svc:18000")]
    pub sidecar_xds_addr: String,
    /// PEM CA bundle injected sidecars trust for xDS (`TRELLIS_XDS_CA`):
    /// needed with --xds-tls-cert [default: the mesh CA bundle].
    #[arg(long)]
    pub sidecar_xds_ca: Option<PathBuf>,
    /// Image repository of the injected sidecar.
    #[arg(long, default_value = "ghcr.io/trellis-mesh/trellis-proxy")]
    pub sidecar_image_repository: String,
    /// Image tag of the injected sidecar.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub sidecar_image_tag: String,
    /// Image of the init container [default: the sidecar's].
    #[arg(long)]
    pub init_image: Option<String>,
    /// CPU request of the injected containers (annotation appmesh.k8s.aws/cpuRequest).
    #[arg(long, default_value = "10m", value_parser = quantity)]
    pub sidecar_cpu_requests: trellis_control::inject::Quantity,
    /// Memory request of the injected containers (appmesh.k8s.aws/memoryRequest).
    #[arg(long, default_value = "32Mi", value_parser = quantity)]
    pub sidecar_memory_requests: trellis_control::inject::Quantity,
    /// CPU limit of the injected containers (appmesh.k8s.aws/cpuLimit) [default: none].
    #[arg(long, value_parser = quantity)]
    pub sidecar_cpu_limits: Option<trellis_control::inject::Quantity>,
    /// Memory limit of the injected containers (appmesh.k8s.aws/memoryLimit) [default: none].
    #[arg(long, value_parser = quantity)]
    pub sidecar_memory_limits: Option<trellis_control::inject::Quantity>,
    /// ENVOY_LOG_LEVEL of injected sidecars.
    #[arg(long, default_value = "info", value_parser = ["trace", "debug", "info", "warn", "warning", "error", "critical", "off"])]
    pub sidecar_log_level: String,
    /// Admin port of injected sidecars (ENVOY_ADMIN_ACCESS_PORT), which the probes ask /ready.
    #[arg(long, default_value_t = 9901, value_parser = clap::value_parser!(u16).range(1..))]
    pub envoy_admin_access_port: u16,
    /// Outbound IPs or CIDRs the interception leaves alone (appmesh.k8s.aws/egressIgnoredIPs).
    #[arg(long, default_value = "169.254.169.254", value_delimiter = ',', value_parser = ignored_ip)]
    pub ignored_ips: Vec<trellis_control::inject::IgnoredIp>,
    /// Seconds a stopping sidecar waits before it drains (a preStop sleep; 0: none).
    #[arg(long, default_value_t = 20)]
    pub prestop_delay: u32,
    /// How the preStop hook waits: `sleep` (Kubernetes 1.30+) or `exec`
    /// (runs `sleep` from the sidecar image, for older clusters).
    #[arg(long, value_enum, default_value_t = PreStopHookArg::Sleep)]
    pub prestop_hook: PreStopHookArg,
    /// Start the sidecar first and hold the app until the proxy is ready.
    #[arg(long)]
    pub wait_until_proxy_ready: bool,
    /// Seconds before the sidecar's first readiness probe.
    #[arg(long, default_value_t = 1)]
    pub readiness_probe_initial_delay: u32,
    /// Seconds between the sidecar's readiness probes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub readiness_probe_period: u32,
}

/// Below this an SVID lifetime is for tests only (`serve` warns): renewal at
/// half life must leave proxies time to fetch the new SVID.
pub const SVID_TTL_WARN: std::time::Duration = std::time::Duration::from_secs(60);

/// `24h`, `90m`, `30s` or a bare number of seconds; at least 2 seconds, so
/// renewal at half life never spins.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text}: expected a duration such as 24h, 90m or 3600s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text}: the unit must be s, m or h")),
    };
    if secs < 2 {
        return Err(format!("{text}: an SVID must live at least 2s"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Files or folders of App Mesh specs.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Address of the App Mesh API.
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = socket_addr)]
    pub api_addr: SocketAddr,
    /// Data dir whose credentials file to sign with, when neither --credentials nor
    /// the environment gives a key pair.
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// AWS shared-credentials file to sign with [default: the key pair in
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else DATA_DIR/credentials].
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Region in the signature scope.
    #[arg(long, default_value = "us-west-2")]
    pub region: String,
    /// Mesh for documents that do not name one.
    #[arg(long)]
    pub mesh: Option<String>,
}

#[derive(Args)]
pub struct BootstrapArgs {
    /// The mesh of the virtual node or gateway.
    #[arg(long)]
    pub mesh: String,
    /// The virtual node this proxy is the sidecar of.
    #[arg(
        long,
        conflicts_with = "virtual_gateway",
        required_unless_present = "virtual_gateway"
    )]
    pub virtual_node: Option<String>,
    /// The virtual gateway this proxy is.
    #[arg(long)]
    pub virtual_gateway: Option<String>,
    /// Address of trellis-control's xDS server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_addr: String,
    /// Port of the proxy's admin API on 127.0.0.1.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Port of the inbound listener (App Mesh's APPMESH_ENVOY_INGRESS_PORT).
    #[arg(long, default_value_t = 15000, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_port: u16,
    /// Port of the outbound listener (App Mesh's APPMESH_ENVOY_EGRESS_PORT).
    #[arg(long, default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
    pub egress_port: u16,
    /// Address the pushed listeners bind: 0.0.0.0 for a sidecar reached from
    /// other hosts, 127.0.0.1 when everything runs on one machine.
    #[arg(long, default_value = "0.0.0.0")]
    pub listener_address: std::net::IpAddr,
    /// LISTENER_PORT=PROXY_PORT: the proxy also serves the virtual node's
    /// listener on LISTENER_PORT on PROXY_PORT. Without interception (a
    /// loopback --listener-address) that is how a listener after the first
    /// is reached; repeat for each.
    #[arg(long, value_name = "LISTENER_PORT=PROXY_PORT")]
    pub listener_ingress_port: Vec<String>,
    /// Use delta (incremental) xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// Ask the API for a new token for this node instead of its live one;
    /// the node's earlier token stops working (and ends its streams).
    #[arg(long, conflicts_with_all = ["token", "no_token"])]
    pub issue_token: bool,
    /// Put this node token in the bootstrap [default: the node's token from
    /// the API (--api-addr, signed with --credentials or
    /// DATA_DIR/credentials), issued if it has none].
    #[arg(long, conflicts_with = "no_token")]
    pub token: Option<String>,
    /// Write no token: only for a server started with
    /// `--require-node-tokens never` (local experiments).
    #[arg(long)]
    pub no_token: bool,
    /// PEM CA bundle the proxy trusts for the xDS server's certificate,
    /// written inline into the bootstrap [default: the mesh CA bundle, from
    /// the API's GET /trellis/v1/ca].
    #[arg(long, conflicts_with = "xds_plaintext")]
    pub xds_ca: Option<PathBuf>,
    /// Connect to xDS in clear text, for a server started with --xds-plaintext.
    #[arg(long)]
    pub xds_plaintext: bool,
    #[command(flatten)]
    pub api: StatusArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Address of the App Mesh API.
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = socket_addr)]
    pub api_addr: SocketAddr,
    /// Data dir whose credentials file to sign with, when neither --credentials nor
    /// the environment gives a key pair.
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// AWS shared-credentials file to sign with [default: the key pair in
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else DATA_DIR/credentials].
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Region in the signature scope.
    #[arg(long, default_value = "us-west-2")]
    pub region: String,
    /// Print the raw JSON of GET /trellis/v1/proxies.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BackupArgs {
    /// The data dir to back up.
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// A folder to create (it must not exist yet); `serve --data-dir` on it restores.
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args)]
pub struct RegisterArgs {
    #[arg(long, requires = "virtual_node", required_unless_present = "namespace")]
    pub mesh: Option<String>,
    #[arg(long, requires = "mesh")]
    pub virtual_node: Option<String>,
    /// Cloud Map namespace of the instance (instead of --mesh/--virtual-node).
    #[arg(long, requires = "service", conflicts_with = "mesh")]
    pub namespace: Option<String>,
    /// Cloud Map service of the instance.
    #[arg(long, requires = "namespace")]
    pub service: Option<String>,
    /// A Cloud Map instance attribute, KEY=VALUE (repeatable); `awsCloudMap`
    /// nodes select instances having all of theirs.
    #[arg(long = "attribute", value_parser = key_value, requires = "namespace")]
    pub attributes: Vec<(String, String)>,
    /// The instance's IP address.
    #[arg(long)]
    pub address: std::net::IpAddr,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Remove the instance instead.
    #[arg(long)]
    pub deregister: bool,
    #[command(flatten)]
    pub api: StatusArgs,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Writes a command's output; a reader that went away (`| head`) ends it
/// quietly, as Unix tools do, instead of panicking in `println!`.
/// The key pair a client command signs with: `--credentials`, else
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else `DATA_DIR/credentials`
/// (the order `serve` picks the pairs it accepts in).
fn signing_key(
    credentials: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> Result<trellis_control::api::credentials::KeyPair, ConfigError> {
    use trellis_control::api::credentials::Credentials;
    let creds = match credentials {
        Some(path) => Credentials::load(path),
        None => match Credentials::from_env(|name| std::env::var(name).ok()) {
            Ok(Some(creds)) => Ok(creds),
            Ok(None) => Credentials::load(&data_dir.join("credentials")),
            Err(e) => Err(e),
        },
    };
    creds
        .map(|c| c.preferred().clone())
        .map_err(|e| ConfigError(e.to_string()))
}

fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
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
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines.next().unwrap_or("invalid arguments").to_string();
            // "the following required arguments were not provided:" names
            // them on the next line; keep the message to one line.
            if line.ends_with(':') {
                if let Some(next) = lines.next() {
                    line = format!("{line} {next}");
                }
            }
            eprintln!("trellis-control: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Apply(args) => apply::run(args),
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Status(args) => status::run(args),
        Command::RegisterInstance(args) => status::register(args),
        Command::Backup(args) => backup::run(args),
        Command::Token { action } => status::token(action),
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
