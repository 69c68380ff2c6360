//! `trellis-control backup`: the data dir's state in a new folder that
//! `serve --data-dir` can run from. The database is copied from one
//! consistent snapshot while the server keeps running; the CA, the node
//! token key and the credentials keep their owner-only modes.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use trellis_control::store::Store;

use super::{BackupArgs, ConfigError};

/// Files beside the database, relative to the data dir.
const FILES: &[&str] = &[
    "credentials",
    "ca/ca.pem",
    "ca/ca-key.pem",
    trellis_control::tokens::TOKEN_KEY_FILE,
];

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    let db = args.data_dir.join("trellis.db");
    if !db.is_file() {
        return Err(ConfigError(format!(
            "--data-dir {}: no trellis.db there",
            args.data_dir.display()
        ))
        .into());
    }
    if args.to.exists() {
        return Err(ConfigError(format!("--to {}: already exists", args.to.display())).into());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.to)
        .with_context(|| format!("cannot create {}", args.to.display()))?;
    Store::backup(&db, &args.to.join("trellis.db"))?;
    for file in FILES {
        copy(&args.data_dir.join(file), &args.to.join(file))?;
    }
    super::out(&format!(
        "backed up {} to {}\n",
        args.data_dir.display(),
        args.to.display()
    ))?;
    Ok(())
}

/// Copies `src` if it exists, keeping its permission bits.
fn copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::metadata(src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    fs::copy(src, dst).with_context(|| format!("cannot copy {}", src.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.permissions().mode()))?;
    Ok(())
}
