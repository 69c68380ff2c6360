//! Text to a generic tree, with the YAML features Envoy's loader has (anchors,
//! `!ignore` keys) and merge keys, which yaml-cpp lacks but users expect of YAML.

use serde_yaml::Value;

use super::Format;
use crate::config::ConfigError;

pub fn read(text: &str, format: Format) -> Result<Value, ConfigError> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| ConfigError::new("", e)),
        Format::Yaml => {
            let mut tree: Value =
                serde_yaml::from_str(text).map_err(|e| ConfigError::new("", e))?;
            drop_ignored(&mut tree);
            tree.apply_merge().map_err(|e| ConfigError::new("", e))?;
            if tree.is_null() {
                // Envoy refuses an empty YAML file too; `{}` is the way to ask for nothing.
                return Err(ConfigError::new("", "the file holds no YAML document"));
            }
            Ok(tree)
        }
    }
}

/// Envoy skips mapping keys tagged `!ignore`; configs use them to hold anchor definitions.
fn drop_ignored(tree: &mut Value) {
    match tree {
        Value::Mapping(map) => {
            map.retain(|key, _| !matches!(key, Value::Tagged(t) if t.tag == "ignore"));
            for value in map.values_mut() {
                drop_ignored(value);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(drop_ignored),
        Value::Tagged(tagged) => drop_ignored(&mut tagged.value),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}
