//! `trellis-proxy init` (also `trellis-init`): App Mesh's proxy-init
//! interception rules, from the same `APPMESH_*` variables, so that an
//! unmodified application's TCP traffic passes through the sidecar.
//!
//! Like proxy-init, this shells out to the `iptables` binaries: the rules then
//! land in whichever kernel backend (nf_tables or legacy xtables) the node's
//! other tools use, and `iptables -t nat -S` shows them. Every rule lives in two
//! chains of our own in the nat table (`TRELLIS_INGRESS`, `TRELLIS_EGRESS`),
//! flushed and refilled on every run and jumped to once from `PREROUTING` and
//! `OUTPUT`, so running `init` twice changes nothing and `--clean` removes
//! exactly what `init` added.

mod rules;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

pub use rules::{Family, Settings};

/// Chain that redirects inbound connections to the application's ports.
pub const INGRESS_CHAIN: &str = "TRELLIS_INGRESS";
/// Chain that redirects the pod's outbound connections to the egress listener.
pub const EGRESS_CHAIN: &str = "TRELLIS_EGRESS";

/// Which iptables implementation writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `iptables` as installed (the distribution's default), else nft, else legacy.
    Auto,
    /// `iptables-nft`: the nf_tables kernel API.
    Nft,
    /// `iptables-legacy`: the xtables kernel API.
    Legacy,
}

/// Flags of `trellis-proxy init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub clean: bool,
    /// Which iptables implementation to use.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Print the commands without running them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{var}: '{value}' {why}")]
    BadVariable {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("no iptables binary found on PATH (looked for {0})")]
    NoBinary(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
}

/// Runs `init` with the process environment; prints every rule it applies.
pub fn run(args: &InitArgs) -> ExitCode {
    let settings = match Settings::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trellis-init: {e}");
            return ExitCode::from(2);
        }
    };
    match apply(&settings, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs (or with `clean`, removes) the rules for IPv4, then for IPv6 when
/// an ip6tables binary exists. A kernel without IPv6 NAT is reported and
/// skipped: the pod still gets IPv4 interception, as with proxy-init.
pub fn apply(settings: &Settings, args: &InitArgs) -> Result<(), InitError> {
    let v4 = binary(args.backend, Family::V4)
        .ok_or_else(|| InitError::NoBinary(candidates(args.backend, Family::V4).join(", ")))?;
    run_family(&v4, settings, Family::V4, args)?;
    if let Some(v6) = binary(args.backend, Family::V6) {
        if let Err(e) = run_family(&v6, settings, Family::V6, args) {
            eprintln!("trellis-init: IPv6 rules skipped: {e}");
        }
    }
    Ok(())
}

fn run_family(
    bin: &Path,
    settings: &Settings,
    family: Family,
    args: &InitArgs,
) -> Result<(), InitError> {
    let name = bin
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("iptables");
    if args.clean {
        for cmd in rules::clean() {
            // Removing what is not there is not an error: `--clean` is idempotent too.
            let _ = exec(bin, name, &cmd, args.dry_run);
        }
        return Ok(());
    }
    for chain in [INGRESS_CHAIN, EGRESS_CHAIN] {
        // -N fails when the chain exists (a previous run); -F then empties it.
        let _ = exec(bin, name, &["-t", "nat", "-N", chain], args.dry_run);
    }
    for cmd in rules::install(settings, family) {
        exec(bin, name, &cmd, args.dry_run)?;
    }
    for (parent, chain) in [("PREROUTING", INGRESS_CHAIN), ("OUTPUT", EGRESS_CHAIN)] {
        let jump = ["-p", "tcp", "-j", chain];
        let check: Vec<&str> = ["-t", "nat", "-C", parent]
            .into_iter()
            .chain(jump)
            .collect();
        if args.dry_run || exec_quiet(bin, &check).is_err() {
            let add: Vec<&str> = ["-t", "nat", "-A", parent]
                .into_iter()
                .chain(jump)
                .collect();
            exec(bin, name, &add, args.dry_run)?;
        }
    }
    Ok(())
}

fn exec<S: AsRef<str>>(bin: &Path, name: &str, args: &[S], dry: bool) -> Result<(), InitError> {
    let line: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    println!("{name} {}", line.join(" "));
    if dry {
        return Ok(());
    }
    exec_quiet(bin, &line)
}

fn exec_quiet(bin: &Path, args: &[&str]) -> Result<(), InitError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|source| InitError::Spawn {
            binary: bin.display().to_string(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(InitError::Command {
        command: format!("{} {}", bin.display(), args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn candidates(backend: Backend, family: Family) -> Vec<&'static str> {
    match (backend, family) {
        (Backend::Auto, Family::V4) => vec!["iptables", "iptables-nft", "iptables-legacy"],
        (Backend::Auto, Family::V6) => vec!["ip6tables", "ip6tables-nft", "ip6tables-legacy"],
        (Backend::Nft, Family::V4) => vec!["iptables-nft"],
        (Backend::Nft, Family::V6) => vec!["ip6tables-nft"],
        (Backend::Legacy, Family::V4) => vec!["iptables-legacy"],
        (Backend::Legacy, Family::V6) => vec!["ip6tables-legacy"],
    }
}

/// The first candidate on PATH, or in the sbin directories a non-root PATH lacks.
fn binary(backend: Backend, family: Family) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    candidates(backend, family)
        .into_iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
}
