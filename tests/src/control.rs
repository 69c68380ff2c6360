//! trellis-control as a child process for mesh tests: a temp data dir, a
//! credentials file, and its own CLI (signed like every API call) to drive it.

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
    _child: Child,
    pub api: String,
    pub xds: String,
    pub dir: tempfile::TempDir,
}

impl Control {
    pub async fn start() -> Control {
        Control::start_with(tempfile::tempdir().expect("temp dir"), &[]).await
    }

    /// Starts `serve` with `extra` flags, in `dir` (files the flags name
    /// can be written there first).
    pub async fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Control {
        std::fs::write(dir.path().join("credentials"), CREDENTIALS).expect("credentials");
        let api = format!("127.0.0.1:{}", free_port());
        let xds = format!("127.0.0.1:{}", free_port());
        let child = Command::new(workspace_bin("trellis-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--credentials")
            .arg(dir.path().join("credentials"))
            .args(["--api-addr", &api, "--xds-addr", &xds])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn trellis-control");
        let url = format!("http://{api}/");
        eventually(Duration::from_secs(20), "the API to answer", || {
            let url = url.clone();
            async move { client::get(&url).await.ok().map(|_| ()) }
        })
        .await;
        Control {
            _child: child,
            api,
            xds,
            dir,
        }
    }

    pub fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `trellis-control ARGS` against this server, its stdout on success.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(
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
        .expect("trellis-control runs");
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
