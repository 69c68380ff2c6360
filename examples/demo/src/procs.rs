//! The demo's child processes: trellis-control and one trellis-proxy per
//! sidecar and gateway. Their logs go to files in the work dir, so the
//! terminal shows the demo's own figures; they are stopped with SIGTERM (a
//! graceful drain) and killed if they linger, or by the kernel if the demo
//! itself dies.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::client::Http;

pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
        work: &Path,
    ) -> anyhow::Result<Proc> {
        let log = work.join(format!("{name}.log"));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        // A group of its own: Ctrl-C in a terminal signals the demo only, so
        // the load stops before the proxies drain, in that order.
        cmd.process_group(0);
        // SAFETY: prctl(2) is async-signal-safe; it only asks the kernel to
        // stop the child if the demo itself dies without cleaning up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Proc {
            name: name.to_string(),
            log,
            child,
        })
    }

    /// Fails if the process already exited, naming its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs a trellis-control subcommand to completion; its stdout.
pub async fn run(bin: &Path, args: &[String]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .context("trellis-control did not finish in 30 s")?
    .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `url` until it answers 200, or fails after `limit`.
pub async fn wait_ok(
    http: &Http,
    url: &str,
    host: Option<&str>,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok((status, _)) = http.get(url, host).await {
            if status.is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not answer 200 within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
