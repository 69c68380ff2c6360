//! `trellis-proxy wait-ready`: blocks until the admin `/ready` answers 200, so an
//! application entrypoint or a Kubernetes `postStart` hook can hold the app
//! back until its sidecar has config (App Mesh users did this with curl loops).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Flags of `trellis-proxy wait-ready`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitReadyArgs {
    /// The admin address (default: 127.0.0.1:$ENVOY_ADMIN_ACCESS_PORT, else 9901).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Seconds to wait before giving up (exit 1).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// How often `/ready` is asked: fast enough not to delay the app noticeably.
const POLL: Duration = Duration::from_millis(200);

pub fn run(args: &WaitReadyArgs) -> ExitCode {
    let admin = match args.admin {
        Some(a) => a,
        None => {
            let port = std::env::var("ENVOY_ADMIN_ACCESS_PORT")
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or(9901);
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let Ok(limit) = Duration::try_from_secs_f64(args.timeout) else {
        eprintln!(
            "trellis-proxy: --timeout: '{}' is not a duration in seconds",
            args.timeout
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + limit;
    runtime.block_on(async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(Ok(200)) = tokio::time::timeout(left.max(POLL), status(admin)).await {
                println!("ready");
                return ExitCode::SUCCESS;
            }
            if Instant::now() + POLL >= deadline {
                eprintln!(
                    "trellis-proxy: {admin}/ready not 200 after {}s",
                    args.timeout
                );
                return ExitCode::FAILURE;
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// The status code of `GET /ready`, read from the status line.
async fn status(admin: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf).await?;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let code = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    code.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status line"))
}
