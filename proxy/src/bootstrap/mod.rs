//! Reading an Envoy v3 bootstrap (YAML or JSON) and checking it against the supported subset.
//!
//! The text goes through the reflection pool rather than serde derives on the prost
//! types, because only the pool knows proto3-JSON (lowerCamel names, `"5s"`
//! durations, enum names, `@type` in `Any`) and can report the field path of an error.

pub mod appmesh;
mod decode;
mod dialect;
mod error;
mod format;
mod scalar;
mod tree;

#[cfg(test)]
mod tests;

use std::path::Path;

use prost::Name;
use xds_protos::envoy::config::bootstrap::v3::Bootstrap;

use crate::config::{supported, ConfigError};

pub use error::BootstrapError;
pub use format::Format;

/// Reads the bootstrap at `path`; every error names the file, as the binary's one-line exit message.
pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let format = Format::of(path, &text);
    parse(&text, format).map_err(|error| BootstrapError::Config {
        file: path.to_path_buf(),
        error,
    })
}

/// Parses bootstrap text and rejects anything outside the subset trellis implements.
pub fn parse(text: &str, format: Format) -> Result<Bootstrap, ConfigError> {
    let message = read_message(text, format, &Bootstrap::full_name())?;
    supported::check(&message)?;
    message
        .transcode_to::<Bootstrap>()
        .map_err(|e| ConfigError::new("", format!("cannot convert to Bootstrap: {e}")))
}

/// Reads YAML or JSON text as any message of the pool, in proto3-JSON with
/// Envoy's spellings: for files other than the bootstrap (SDS files) that
/// hold xDS messages. The caller checks the contents.
pub fn parse_message<M: prost::Message + Name + Default>(
    text: &str,
    format: Format,
) -> Result<M, ConfigError> {
    let name = M::full_name();
    read_message(text, format, &name)?
        .transcode_to::<M>()
        .map_err(|e| ConfigError::new("", format!("cannot convert to {name}: {e}")))
}

fn read_message(
    text: &str,
    format: Format,
    name: &str,
) -> Result<prost_reflect::DynamicMessage, ConfigError> {
    let pool = crate::reflect::pool();
    let desc = pool.get_message_by_name(name).ok_or_else(|| {
        ConfigError::new(
            "",
            format!("message {name} missing from the descriptor pool"),
        )
    })?;
    let mut tree = tree::read(text, format)?;
    dialect::apply(&mut tree, &desc)?;
    decode::message(tree, desc)
}
