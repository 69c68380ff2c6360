//! protobuf `Duration` → `std::time::Duration`, refusing negative values.

use std::time::Duration;

use super::ConfigError;

pub fn to_std(d: &prost_types::Duration, path: &str) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(path, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration where `0s` means "disabled", as in most Envoy timeouts.
pub fn timeout(
    d: Option<&prost_types::Duration>,
    default: Option<Duration>,
    path: &str,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = to_std(d, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}
