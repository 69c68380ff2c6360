use std::path::PathBuf;

use crate::config::ConfigError;

/// Why a bootstrap file was refused; Display is the single line the binary prints before exiting 2.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {error}", file.display())]
    Config { file: PathBuf, error: ConfigError },
}
