//! The App Mesh 2019-01-25 service model (the JSON botocore ships), embedded so
//! that routing, validation and serialisation follow the same source of truth
//! as the clients instead of hand-typed copies of 333 shapes.

mod rules;
mod validate;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

pub use rules::check_rules;
pub use validate::{validate, ValidationError};

const MODEL_JSON: &str = include_str!("../../service-model/appmesh-2019-01-25.service.json");

#[derive(Debug, Deserialize)]
pub struct ServiceModel {
    pub operations: BTreeMap<String, Operation>,
    pub shapes: BTreeMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub name: String,
    pub http: HttpBinding,
    pub input: Option<ShapeRef>,
    pub output: Option<ShapeRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBinding {
    pub method: String,
    pub request_uri: String,
    pub response_code: u16,
}

#[derive(Debug, Deserialize)]
pub struct ShapeRef {
    pub shape: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeType {
    Structure,
    String,
    List,
    Boolean,
    Long,
    Integer,
    Timestamp,
}

#[derive(Debug, Deserialize)]
pub struct Shape {
    #[serde(rename = "type")]
    pub shape_type: ShapeType,
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    #[serde(default)]
    pub required: Vec<String>,
    pub member: Option<ShapeRef>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    #[serde(rename = "enum")]
    pub enum_values: Option<Vec<String>>,
    #[serde(default)]
    pub union: bool,
    pub payload: Option<String>,
    pub error: Option<ErrorBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBinding {
    pub http_status_code: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Uri,
    Querystring,
    Header,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub shape: String,
    pub location: Option<Location>,
    pub location_name: Option<String>,
    #[serde(default)]
    pub idempotency_token: bool,
}

impl Member {
    /// The name on the wire, which differs from the member name for bound
    /// members (e.g. query `limit`).
    pub fn wire_name<'a>(&'a self, member_name: &'a str) -> &'a str {
        self.location_name.as_deref().unwrap_or(member_name)
    }
}

impl ServiceModel {
    /// Parsed once: the embedded text is a build input, so a parse failure is
    /// a build defect caught by the unit tests, not a runtime condition.
    pub fn get() -> &'static ServiceModel {
        static MODEL: OnceLock<ServiceModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            serde_json::from_str(MODEL_JSON).expect("embedded App Mesh service model is valid")
        })
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }

    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations.get(name)
    }

    pub fn input_shape(&self, op: &Operation) -> Option<&Shape> {
        op.input.as_ref().and_then(|r| self.shape(&r.shape))
    }

    pub fn output_shape(&self, op: &Operation) -> Option<&Shape> {
        op.output.as_ref().and_then(|r| self.shape(&r.shape))
    }

    pub fn error_status(&self, error_type: &str) -> Option<u16> {
        self.shape(error_type)
            .and_then(|s| s.error.as_ref())
            .map(|e| e.http_status_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_has_all_operations_and_resolvable_shapes() {
        let m = ServiceModel::get();
        assert_eq!(m.operations.len(), 38);
        for shape in m.shapes.values() {
            for member in shape.members.values() {
                assert!(m.shape(&member.shape).is_some(), "{}", member.shape);
            }
            if let Some(r) = &shape.member {
                assert!(m.shape(&r.shape).is_some());
            }
        }
    }
}
