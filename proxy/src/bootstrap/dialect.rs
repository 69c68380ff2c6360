//! What Envoy's YAML loader accepts beyond proto3 JSON, applied to the tree with the
//! descriptors as a guide, so that the decoder that follows can stay stock prost-reflect.
//!
//! Envoy converts YAML scalars with yaml-cpp, which reads `yes`/`on`/`True` as booleans,
//! and its JSON parser takes `"true"` for a bool; prost-reflect wants a real boolean.
//! An `@type` missing from the pool is reported here, as an unsupported extension,
//! because prost-reflect would only say "message not found"; a bad duration too,
//! because "failed to parse duration" does not tell a user who wrote `5m` what to write.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_yaml::Value;

use crate::config::ConfigError;

pub fn apply(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    message(tree, desc)
}

fn message(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    match desc.full_name() {
        "google.protobuf.Any" => return any(tree, desc),
        "google.protobuf.BoolValue" => {
            coerce_bool(tree);
            return Ok(());
        }
        "google.protobuf.Duration" => return duration(tree),
        name if name.starts_with("google.protobuf.") => return Ok(()),
        _ => {}
    }
    // Shape errors (a list where a message belongs) are the decoder's to report, with its path.
    let Value::Mapping(map) = tree else {
        return Ok(());
    };
    // `statPrefix` and `stat_prefix` name one field; given both, prost-reflect (and
    // Envoy 1.40) silently drop one value, which trellis refuses to do.
    let mut seen: Vec<(u32, &str)> = Vec::new();
    for (key, value) in map.iter_mut() {
        let Some(name) = key.as_str() else { continue };
        let Some(field) = desc
            .get_field_by_json_name(name)
            .or_else(|| desc.get_field_by_name(name))
        else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == field.number()) {
            return Err(ConfigError::new(
                name,
                format!("the same field as {first}, given twice"),
            ));
        }
        seen.push((field.number(), name));
        field_value(value, &field).map_err(|e| e.at(name))?;
    }
    Ok(())
}

fn field_value(value: &mut Value, field: &FieldDescriptor) -> Result<(), ConfigError> {
    let kind = field.kind();
    if field.is_map() {
        let (Value::Mapping(map), Some(entry)) = (value, kind.as_message()) else {
            return Ok(());
        };
        let value_kind = entry.map_entry_value_field().kind();
        for (key, item) in map.iter_mut() {
            let key = key.as_str().unwrap_or("?");
            single(item, &value_kind).map_err(|e| e.at(key))?;
        }
        Ok(())
    } else if field.is_list() {
        let Value::Sequence(items) = value else {
            return Ok(());
        };
        for (i, item) in items.iter_mut().enumerate() {
            single(item, &kind).map_err(|e| e.at(format!("[{i}]")))?;
        }
        Ok(())
    } else {
        single(value, &kind)
    }
}

fn single(value: &mut Value, kind: &Kind) -> Result<(), ConfigError> {
    match kind {
        Kind::Bool => {
            coerce_bool(value);
            Ok(())
        }
        Kind::Message(desc) => message(value, desc),
        _ => Ok(()),
    }
}

fn any(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    let Some(url) = tree.get("@type").and_then(Value::as_str) else {
        return Ok(());
    };
    let name = url.rsplit_once('/').map_or(url, |(_, name)| name);
    let Some(inner) = desc.parent_pool().get_message_by_name(name) else {
        return Err(ConfigError::new(
            "",
            format!("extension {url} is not supported by trellis"),
        ));
    };
    type_first(tree);
    message(tree, &inner)
}

/// prost-reflect buffers the keys before `@type` outside the path tracker, so an
/// error among them would be reported at the `Any` itself; with `@type` first, none are.
fn type_first(tree: &mut Value) {
    let Value::Mapping(map) = tree else { return };
    if let Some((key, value)) = map.shift_remove_entry("@type") {
        let rest = std::mem::take(map);
        map.insert(key, value);
        map.extend(rest);
    }
}

/// Proto3 JSON's duration: seconds with up to nine decimals and an `s`, nothing else.
fn duration(value: &Value) -> Result<(), ConfigError> {
    const HINT: &str = "expected seconds with an 's' suffix, like \"5s\" or \"0.25s\"";
    let valid = |s: &str| {
        let Some(number) = s.strip_suffix('s') else {
            return false;
        };
        let number = number.strip_prefix('-').unwrap_or(number);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        digits(whole) && digits(fraction) && fraction.len() <= 9
    };
    match value {
        Value::String(s) if !valid(s) => Err(ConfigError::new(
            "",
            format!("invalid duration \"{s}\": {HINT}"),
        )),
        Value::Number(n) => Err(ConfigError::new(
            "",
            format!("invalid duration {n}: {HINT}"),
        )),
        _ => Ok(()),
    }
}

/// yaml-cpp's boolean spellings: y/yes/true/on and their negations, in lower, UPPER or Title case.
fn coerce_bool(value: &mut Value) {
    let Value::String(s) = value else { return };
    let lower = s.to_ascii_lowercase();
    let title = lower
        .get(..1)
        .map(|first| first.to_ascii_uppercase() + &lower[1..]);
    let flexible =
        *s == lower || *s == s.to_ascii_uppercase() || title.as_deref() == Some(s.as_str());
    if !flexible {
        return;
    }
    let parsed = match lower.as_str() {
        "y" | "yes" | "true" | "on" => true,
        "n" | "no" | "false" | "off" => false,
        _ => return,
    };
    *value = Value::Bool(parsed);
}
