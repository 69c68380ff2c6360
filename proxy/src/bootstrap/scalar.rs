//! Single values: what Envoy's reader accepts and prost-reflect does not, and
//! errors that say what to write instead of what a Rust parser tripped on.

use prost_reflect::Kind;
use serde_yaml::Value;

use crate::config::ConfigError;

pub fn fix(value: &mut Value, kind: &Kind) -> Result<(), ConfigError> {
    match kind {
        Kind::Bool => {
            coerce_bool(value);
            Ok(())
        }
        Kind::Enum(desc) => {
            let Value::String(name) = value else {
                return Ok(());
            };
            if desc.get_value_by_name(name).is_some()
                || desc.full_name() == "google.protobuf.NullValue"
            {
                return Ok(());
            }
            let names: Vec<String> = desc.values().map(|v| v.name().to_string()).collect();
            Err(ConfigError::new(
                "",
                format!("unknown value {name} (one of: {})", names.join(", ")),
            ))
        }
        _ => integer(value, kind),
    }
}

/// Proto3 JSON's duration: seconds with up to nine decimals and an `s`, nothing else.
pub fn duration(value: &Value) -> Result<(), ConfigError> {
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

/// Integers may be numbers or decimal strings (proto3 JSON writes 64-bit ones so);
/// either way the range is the field's, which prost-reflect reports only as
/// "out of range integral type conversion attempted".
fn integer(value: &Value, kind: &Kind) -> Result<(), ConfigError> {
    let (min, max, type_name): (i128, i128, &str) = match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => (i32::MIN.into(), i32::MAX.into(), "int32"),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => (i64::MIN.into(), i64::MAX.into(), "int64"),
        Kind::Uint32 | Kind::Fixed32 => (0, u32::MAX.into(), "uint32"),
        Kind::Uint64 | Kind::Fixed64 => (0, u64::MAX.into(), "uint64"),
        _ => return Ok(()),
    };
    let number = match value {
        Value::String(s) => s.parse::<i128>().ok(),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            // Saturating, which keeps huge floats out of range below.
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i128)),
        // Other shapes are the decoder's to report.
        _ => return Ok(()),
    };
    let shown = match value {
        Value::String(s) => format!("\"{s}\""),
        other => {
            serde_yaml::to_string(other).map_or_else(|_| "value".into(), |s| s.trim().to_string())
        }
    };
    match number {
        None => Err(ConfigError::new("", format!("{shown} is not an integer"))),
        Some(n) if n < min || n > max => Err(ConfigError::new(
            "",
            format!("{shown} is out of range for {type_name} ({min} to {max})"),
        )),
        Some(_) => Ok(()),
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
