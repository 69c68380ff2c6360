//! Harness for the end-to-end tests: the real `trellis-control` binary on a
//! free port with its own data dir, and a signing client pointed at it.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use trellis_control::api::client::Client;
use trellis_control::api::credentials::Credentials;

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-control");

/// A free loopback address for a child server to bind, picked below the
/// kernel's ephemeral range (32768 and up): a port the OS hands out there
/// could be taken by an outgoing connection before the child binds it.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 14_000;
    const COUNT: u32 = 9_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    (0..COUNT)
        .map(|_| FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT)
        .find_map(|port| {
            TcpListener::bind(("127.0.0.1", port as u16))
                .ok()
                .and_then(|l| l.local_addr().ok())
        })
        .expect("a free loopback port below the ephemeral range")
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The ADS address (`--xds-addr`).
    pub xds: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `serve` on a free port and waits until it accepts connections.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with these environment variables; AWS keys in the
    /// test's own environment are never passed on.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let addr = free_addr();
        let xds = free_addr();
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--api-addr")
            .arg(addr.to_string())
            .arg("--xds-addr")
            .arg(xds.to_string())
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            // wait_ready reads the log for the line that says it listens.
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start trellis-control");
        let mut server = Server {
            child: Some(child),
            addr,
            xds,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        server.wait_ready();
        server
    }

    /// Ready when this server logged that it listens and the port answers:
    /// a port that answers alone might be another process's.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("trellis-control exited ({status}) before it was ready: {log}");
            }
            if log.contains("App Mesh API listening") && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "server did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn client(&self) -> Client {
        let creds = Credentials::load(&self.data_dir.join("credentials")).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("credentials: {e}; server log: {log}")
        });
        Client::new(
            self.addr.to_string(),
            creds.preferred().clone(),
            "us-west-2".into(),
        )
    }

    fn signal(&mut self, sig: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
        child.wait().expect("wait for server")
    }

    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL)
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A state-of-the-world ADS stream to `server`, opened with `first`.
pub async fn ads_stream(
    server: &Server,
    first: xds_protos::envoy::service::discovery::v3::DiscoveryRequest,
) -> (
    tokio::sync::mpsc::Sender<xds_protos::envoy::service::discovery::v3::DiscoveryRequest>,
    tonic::Streaming<xds_protos::envoy::service::discovery::v3::DiscoveryResponse>,
) {
    use xds_protos::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.xds))
        .await
        .expect("connect to ADS");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(first).await.expect("subscribe");
    let rx = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ADS stream")
        .into_inner();
    (tx, rx)
}
