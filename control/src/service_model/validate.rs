//! Generic validation of a JSON value against a model shape, so every
//! constraint App Mesh publishes (required members, lengths, ranges, enums,
//! list sizes, unions) is enforced without a hand-written check per field.

use serde_json::Value;

use super::{ServiceModel, Shape, ShapeType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `spec.listeners[0].portMapping.port`.
    pub path: String,
    pub message: String,
}

/// Checks `value` against shape `shape_name`; `path` prefixes reported fields.
/// Members bound to the URI, query string or headers are checked too, since
/// the router folds them into the same object before validation.
pub fn validate(
    model: &ServiceModel,
    shape_name: &str,
    value: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    let shape = model.shape(shape_name).ok_or_else(|| ValidationError {
        path: path.to_string(),
        message: format!("unknown shape {shape_name}"),
    })?;
    check(model, shape, value, path)
}

pub(super) fn fail(path: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: if path.is_empty() {
            "(request)".to_string()
        } else {
            path.to_string()
        },
        message: message.into(),
    }
}

pub(super) fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_string()
    } else {
        format!("{path}.{member}")
    }
}

fn check(
    model: &ServiceModel,
    shape: &Shape,
    value: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    match shape.shape_type {
        ShapeType::Structure => check_structure(model, shape, value, path),
        ShapeType::List => {
            let items = value
                .as_array()
                .ok_or_else(|| fail(path, "expected a list"))?;
            check_size(shape, items.len() as i64, path, "list length")?;
            let member = shape
                .member
                .as_ref()
                .and_then(|r| model.shape(&r.shape))
                .ok_or_else(|| fail(path, "list shape without member"))?;
            for (i, item) in items.iter().enumerate() {
                check(model, member, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        ShapeType::String => {
            let s = value
                .as_str()
                .ok_or_else(|| fail(path, "expected a string"))?;
            if let Some(allowed) = &shape.enum_values {
                if !allowed.iter().any(|a| a == s) {
                    return Err(fail(
                        path,
                        format!("'{s}' is not one of [{}]", allowed.join(", ")),
                    ));
                }
            }
            check_size(shape, s.chars().count() as i64, path, "length")
        }
        ShapeType::Integer | ShapeType::Long => {
            let n = value
                .as_i64()
                .ok_or_else(|| fail(path, "expected an integer"))?;
            if let Some(min) = shape.min {
                if n < min {
                    return Err(fail(path, format!("{n} is less than the minimum {min}")));
                }
            }
            if let Some(max) = shape.max {
                if n > max {
                    return Err(fail(path, format!("{n} is greater than the maximum {max}")));
                }
            }
            Ok(())
        }
        ShapeType::Boolean => value
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| fail(path, "expected a boolean")),
        ShapeType::Timestamp => value
            .as_f64()
            .map(|_| ())
            .ok_or_else(|| fail(path, "expected a timestamp in epoch seconds")),
    }
}

fn check_size(shape: &Shape, len: i64, path: &str, what: &str) -> Result<(), ValidationError> {
    if let Some(min) = shape.min {
        if len < min {
            return Err(fail(
                path,
                format!("{what} {len} is less than the minimum {min}"),
            ));
        }
    }
    if let Some(max) = shape.max {
        if len > max {
            return Err(fail(
                path,
                format!("{what} {len} is greater than the maximum {max}"),
            ));
        }
    }
    Ok(())
}

fn check_structure(
    model: &ServiceModel,
    shape: &Shape,
    value: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    let obj = value
        .as_object()
        .ok_or_else(|| fail(path, "expected an object"))?;
    for (key, v) in obj {
        let member = shape
            .members
            .get(key)
            .ok_or_else(|| fail(&join(path, key), "unknown field"))?;
        if v.is_null() {
            continue;
        }
        let member_shape = model
            .shape(&member.shape)
            .ok_or_else(|| fail(path, format!("unknown shape {}", member.shape)))?;
        check(model, member_shape, v, &join(path, key))?;
    }
    for required in &shape.required {
        if obj.get(required).is_none_or(Value::is_null) {
            return Err(fail(&join(path, required), "required field is missing"));
        }
    }
    if shape.union {
        let set: Vec<&String> = obj
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k)
            .collect();
        if set.len() != 1 {
            let choices: Vec<&str> = shape.members.keys().map(String::as_str).collect();
            return Err(fail(
                path,
                format!(
                    "exactly one of [{}] must be set, found {}",
                    choices.join(", "),
                    set.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v(shape: &str, value: Value) -> Result<(), ValidationError> {
        validate(ServiceModel::get(), shape, &value, "")
    }

    #[test]
    fn accepts_a_valid_route_spec() {
        let spec = json!({"httpRoute": {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}});
        assert_eq!(v("RouteSpec", spec), Ok(()));
    }

    #[test]
    fn reports_the_path_of_the_bad_field() {
        let spec = json!({"listeners": [{"portMapping": {"port": 70000, "protocol": "http"}}]});
        let err = v("VirtualNodeSpec", spec).unwrap_err();
        assert_eq!(err.path, "listeners[0].portMapping.port");
        let spec = json!({"listeners": [{"portMapping": {"port": 80, "protocol": "udp"}}]});
        assert_eq!(
            v("VirtualNodeSpec", spec).unwrap_err().path,
            "listeners[0].portMapping.protocol"
        );
    }

    #[test]
    fn enforces_required_unknown_and_unions() {
        let err = v("CreateMeshInput", json!({})).unwrap_err();
        assert_eq!(err.path, "meshName");
        let err = v("CreateMeshInput", json!({"meshName": "m", "bogus": 1})).unwrap_err();
        assert_eq!(err.message, "unknown field");
        let err = v(
            "VirtualServiceProvider",
            json!({"virtualNode": {"virtualNodeName": "a"}, "virtualRouter": {"virtualRouterName": "b"}}),
        )
        .unwrap_err();
        assert!(err.message.contains("exactly one"));
        assert!(v("CreateMeshInput", json!({"meshName": ""})).is_err());
    }
}
