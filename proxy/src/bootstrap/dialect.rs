//! A walk over the tree with the descriptors as a guide, before decoding, for what
//! Envoy accepts beyond proto3 JSON and for errors that tell the user what to write,
//! so that the decoder that follows can stay stock prost-reflect.
//!
//! An `@type` missing from the pool is reported here, as an unsupported extension,
//! because prost-reflect would only say "message not found"; an unknown key with
//! the nearest field name, because typos are the commonest bootstrap error.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_yaml::Value;

use super::scalar;
use crate::config::ConfigError;

pub fn apply(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    message(tree, desc)
}

fn message(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    match desc.full_name() {
        "google.protobuf.Any" => return any(tree, desc),
        "google.protobuf.Duration" => return scalar::duration(tree),
        name if name.starts_with("google.protobuf.") => {
            // Wrappers hold their value in a field named `value`, written bare.
            return match desc.get_field_by_name("value") {
                Some(field) if !field.is_list() && !field.is_map() => {
                    scalar::fix(tree, &field.kind())
                }
                _ => Ok(()),
            };
        }
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
            return Err(unknown_field(name, desc));
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
        Kind::Message(desc) => message(value, desc),
        _ => scalar::fix(value, kind),
    }
}

fn any(tree: &mut Value, desc: &MessageDescriptor) -> Result<(), ConfigError> {
    let Value::Mapping(map) = tree else {
        return Ok(());
    };
    // Without an `@type` there is nothing to walk; the decoder says it is missing.
    let Some((key, url)) = map.shift_remove_entry("@type") else {
        return Ok(());
    };
    if let Some(url) = url.as_str() {
        let name = url.rsplit_once('/').map_or(url, |(_, name)| name);
        let Some(inner) = desc.parent_pool().get_message_by_name(name) else {
            return Err(ConfigError::new(
                "",
                format!("extension {url} is not supported by trellis"),
            ));
        };
        message(tree, &inner)?;
    }
    // prost-reflect buffers the keys before `@type` outside the path tracker, so an
    // error among them would be reported at the `Any` itself; with `@type` first, none are.
    if let Value::Mapping(map) = tree {
        let rest = std::mem::take(map);
        map.insert(key, url);
        map.extend(rest);
    }
    Ok(())
}

fn unknown_field(name: &str, desc: &MessageDescriptor) -> ConfigError {
    let nearest = desc
        .fields()
        .map(|f| (edit_distance(name, f.name()), f.name().to_string()))
        .min();
    let reason = match nearest {
        // Within a third of the length: a typo, not a different idea.
        Some((d, f)) if d * 3 <= name.len() => format!("unknown field (did you mean {f}?)"),
        _ => format!("unknown field for {}", desc.full_name()),
    };
    ConfigError::new(name, reason)
}

/// Levenshtein distance, blind to case and `_`, so that a lowerCamel spelling is
/// measured by its letters against the snake_case name.
fn edit_distance(a: &str, b: &str) -> usize {
    let letters = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|&c| c != b'_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (letters(a), letters(b));
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            let best = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(best);
        }
        prev = cur;
    }
    prev[b.len()]
}
