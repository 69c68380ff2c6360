//! TEMP STUB
#![allow(unused)]
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct BootstrapError;
pub fn load(
    p: &Path,
) -> Result<xds_protos::envoy::config::bootstrap::v3::Bootstrap, BootstrapError> {
    todo!()
}
