//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), as the
//! App Mesh controller read a VirtualNode's `podSelector`: parsed once when
//! the manifest is loaded, so a bad operator is a load error that names the
//! field, never a webhook surprise.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A parsed selector. Empty selects every pod (as `LabelSelectorAsSelector`
/// does in Kubernetes); a virtual node without one selects none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What is wrong with a selector, with the path of the offending field
/// relative to the selector (`matchExpressions[1].operator`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SelectorError {
    pub path: String,
    pub message: String,
}

fn fail(path: impl Into<String>, message: impl Into<String>) -> SelectorError {
    SelectorError {
        path: path.into(),
        message: message.into(),
    }
}

impl LabelSelector {
    /// Parses the Kubernetes JSON form; unknown members are errors, since a
    /// misspelt `matchLabel` would otherwise select every pod.
    pub fn parse(value: &Value) -> Result<LabelSelector, SelectorError> {
        let map = value
            .as_object()
            .ok_or_else(|| fail("", "expected an object"))?;
        let mut selector = LabelSelector::default();
        for (key, v) in map {
            match key.as_str() {
                "matchLabels" => {
                    let labels = v
                        .as_object()
                        .ok_or_else(|| fail("matchLabels", "expected an object"))?;
                    for (k, lv) in labels {
                        let text = lv
                            .as_str()
                            .ok_or_else(|| fail(format!("matchLabels.{k}"), "expected a string"))?;
                        selector.match_labels.insert(k.clone(), text.to_string());
                    }
                }
                "matchExpressions" => {
                    let items = v
                        .as_array()
                        .ok_or_else(|| fail("matchExpressions", "expected a list"))?;
                    for (i, item) in items.iter().enumerate() {
                        selector
                            .match_expressions
                            .push(Requirement::parse(item, &format!("matchExpressions[{i}]"))?);
                    }
                }
                other => {
                    return Err(fail(
                        other,
                        "unknown field; a selector has matchLabels and matchExpressions",
                    ))
                }
            }
        }
        Ok(selector)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn parse(value: &Value, path: &str) -> Result<Requirement, SelectorError> {
        let map = value
            .as_object()
            .ok_or_else(|| fail(path, "expected an object"))?;
        if let Some(k) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "key" | "operator" | "values"))
        {
            return Err(fail(format!("{path}.{k}"), "unknown field"));
        }
        let key = map
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| fail(format!("{path}.key"), "required string is missing"))?;
        let operator = match map.get("operator").and_then(Value::as_str) {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            Some(other) => {
                return Err(fail(
                    format!("{path}.operator"),
                    format!("'{other}' is not In, NotIn, Exists or DoesNotExist"),
                ))
            }
            None => {
                return Err(fail(
                    format!("{path}.operator"),
                    "required string is missing",
                ))
            }
        };
        let values = match map.get("values") {
            None | Some(Value::Null) => BTreeSet::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| fail(format!("{path}.values[{i}]"), "expected a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(fail(format!("{path}.values"), "expected a list")),
        };
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values && values.is_empty() {
            return Err(fail(
                format!("{path}.values"),
                "In and NotIn need at least one value",
            ));
        }
        if !needs_values && !values.is_empty() {
            return Err(fail(
                format!("{path}.values"),
                "Exists and DoesNotExist take no values",
            ));
        }
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let s = LabelSelector::parse(&json!({
            "matchLabels": {"app": "cart"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web", "api"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "version", "operator": "Exists"}
            ]
        }))
        .unwrap();
        let pod = labels(&[("app", "cart"), ("tier", "api"), ("version", "v2")]);
        assert!(s.matches(&pod));
        let mut other = pod.clone();
        other.insert("canary".into(), "true".into());
        assert!(!s.matches(&other));
        let mut zone_b = pod.clone();
        zone_b.insert("zone".into(), "b".into());
        assert!(!s.matches(&zone_b));
        assert!(!s.matches(&labels(&[
            ("app", "cart"),
            ("tier", "db"),
            ("version", "1")
        ])));
        assert!(!s.matches(&labels(&[("app", "cart"), ("tier", "web")])));
    }

    #[test]
    fn the_empty_selector_selects_everything() {
        let s = LabelSelector::parse(&json!({})).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn mistakes_name_the_field() {
        let e = |v: Value| LabelSelector::parse(&v).unwrap_err().to_string();
        assert_eq!(
            e(json!({"matchLabel": {"app": "x"}})),
            "matchLabel: unknown field; a selector has matchLabels and matchExpressions"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "Is", "values": ["x"]}]})),
            "matchExpressions[0].operator: 'Is' is not In, NotIn, Exists or DoesNotExist"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "matchExpressions[0].values: In and NotIn need at least one value"
        );
        assert_eq!(
            e(json!({"matchLabels": {"app": 3}})),
            "matchLabels.app: expected a string"
        );
    }

    #[test]
    fn round_trips_through_its_stored_form() {
        let s = LabelSelector::parse(&json!({
            "matchLabels": {"app": "cart"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]
        }))
        .unwrap();
        let stored = serde_json::to_string(&s).unwrap();
        let back: LabelSelector = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, s);
    }
}
