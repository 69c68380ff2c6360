use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Why a bootstrap file was refused. Display is the single line the binary prints
/// before exiting 2, so characters from the file that would break it are escaped.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    Config {
        file: PathBuf,
        error: ConfigError,
    },
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = match self {
            BootstrapError::Read { file, source } => {
                format!("{}: cannot read: {source}", file.display())
            }
            BootstrapError::Config { file, error } => format!("{}: {error}", file.display()),
        };
        line.chars().try_for_each(|c| {
            if c.is_control() {
                write!(f, "{}", c.escape_default())
            } else {
                write!(f, "{c}")
            }
        })
    }
}
