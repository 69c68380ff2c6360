//! trellis-control as a child process for mesh tests: a temp data dir, a
//! credentials file, and its own CLI (signed like every API call) to drive it.
//! Its log goes to a file, printed when the test fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::process::workspace_bin;
use crate::{client, eventually, free_port};

const CREDENTIALS: &str =
    "[default]\naws_access_key_id = AKIDMESHE2E\naws_secret_access_key = mesh-e2e-secret\n";

pub struct Control {
    /// Held so that the server is killed when the test ends.
    child: Option<Child>,
    pub api: String,
    pub xds: String,
    pub dir: tempfile::TempDir,
}

impl Control {
    /// `serve` with its defaults: xDS over TLS with a mesh-issued certificate.
    pub async fn start() -> Control {
        Control::start_with(tempfile::tempdir().expect("temp dir"), &[]).await
    }

    /// Starts `serve` with `extra` flags, in `dir` (files the flags name
    /// can be written there first).
    pub async fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Control {
        std::fs::write(dir.path().join("credentials"), CREDENTIALS).expect("credentials");
        let mut control = Control {
            child: None,
            api: format!("127.0.0.1:{}", free_port()),
            xds: format!("127.0.0.1:{}", free_port()),
            dir,
        };
        control.restart(extra).await;
        control
    }

    /// Stops the server (if running) and starts it again on the same data
    /// dir and ports with these flags; connected proxies reconnect.
    pub async fn restart(&mut self, extra: &[&str]) {
        if let Some(mut old) = self.child.take() {
            let _ = old.kill().await;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("control log");
        let child = Command::new(workspace_bin("trellis-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--credentials")
            .arg(self.credentials())
            .args(["--api-addr", &self.api, "--xds-addr", &self.xds])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn trellis-control");
        self.child = Some(child);
        let url = format!("http://{}/", self.api);
        let log = self.log_path();
        eventually(Duration::from_secs(20), "the API to answer", || {
            let url = url.clone();
            let log = log.clone();
            async move {
                if client::get(&url).await.is_ok() {
                    return Some(());
                }
                // A server that exits at start would never answer: say why.
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    !text.contains("trellis-control: "),
                    "trellis-control failed: {text}"
                );
                None
            }
        })
        .await;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The mesh CA's certificate, created by the first start.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("ca").join("ca.pem")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("control.log")
    }

    /// What the server logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `trellis-control bootstrap` for the sidecar of `node` (`kind` is
    /// `--virtual-node` or `--virtual-gateway`) in mesh `m`, on loopback, its
    /// admin on a free port; `extra` adds flags (`--delta`, `--issue-token`).
    /// Without `--xds-ca`/`--xds-plaintext` it asks the API for the CA bundle.
    pub async fn bootstrap(
        &self,
        (kind, node): (&str, &str),
        (ingress, egress): (u16, u16),
        extra: &[&str],
    ) -> String {
        let (i, e) = (ingress.to_string(), egress.to_string());
        let mut args = vec![
            "bootstrap",
            "--mesh",
            "m",
            kind,
            node,
            "--xds-addr",
            &self.xds,
        ];
        args.extend(["--admin-port", "0", "--listener-address", "127.0.0.1"]);
        args.extend(["--ingress-port", &i, "--egress-port", &e]);
        args.extend(extra);
        self.cli(&args).await
    }

    pub fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `trellis-control ARGS` against this server: exit status and output.
    pub async fn try_cli(&self, args: &[&str]) -> std::process::Output {
        tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(workspace_bin("trellis-control"))
                .args(args)
                .args(["--api-addr", &self.api])
                .arg("--credentials")
                .arg(self.credentials())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("trellis-control exits in time")
        .expect("trellis-control runs")
    }

    /// `trellis-control ARGS` against this server, its stdout on success.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args).await;
        assert!(
            out.status.success(),
            "trellis-control {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes CLI input JSON documents into a folder and applies it.
    pub async fn apply(&self, docs: &[Value]) {
        let dir = tempfile::tempdir_in(self.dir.path()).expect("temp dir");
        for (i, doc) in docs.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{i:02}.json")), doc.to_string())
                .expect("write spec");
        }
        let path = dir.path().to_string_lossy().into_owned();
        self.cli(&["apply", "-f", &path]).await;
    }

    /// `GET /trellis/v1/proxies` through `trellis-control status --json`.
    pub async fn proxies(&self) -> Value {
        serde_json::from_str(&self.cli(&["status", "--json"]).await).expect("status JSON")
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- trellis-control log ---\n{}", self.log());
        }
    }
}
