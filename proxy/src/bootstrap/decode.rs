//! The tree to a `DynamicMessage` with proto3-JSON rules, naming the field path of any error.

use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde::de::DeserializeSeed;
use serde_yaml::Value;

use crate::config::ConfigError;

pub fn message(tree: Value, desc: MessageDescriptor) -> Result<DynamicMessage, ConfigError> {
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(tree, &mut track);
    desc.deserialize(tracked).map_err(|e| {
        let path = track.path().to_string();
        // serde_path_to_error spells the root ".": the error then needs no path prefix.
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e)
    })
}
