//! Small conversions shared by the compilers: proto durations, the
//! "not supported" error, and enum values that must be known.

use std::time::Duration;

use crate::config::ConfigError;

/// Converts a proto duration; Envoy refuses negative or out-of-range ones
/// rather than clamping, and so do we.
fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ConfigError::new(
            field,
            "duration must be non-negative and normalized",
        ));
    }
    u64::try_from(d.seconds)
        .map(|s| Duration::new(s, d.nanos.unsigned_abs()))
        .map_err(|_| ConfigError::new(field, "duration out of range"))
}

/// Optional duration field: `Ok(None)` when unset.
pub(crate) fn opt_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(field, d)).transpose()
}

pub(crate) fn unsupported(field: &str) -> ConfigError {
    ConfigError::new(field, "is not supported by trellis")
}

/// Fails when a field trellis does not implement is set, so a config never
/// silently means something other than what its author wrote.
pub(crate) fn reject_if(set: bool, field: &str) -> Result<(), ConfigError> {
    if set {
        Err(unsupported(field))
    } else {
        Ok(())
    }
}
