//! `--cli-input-json` documents: the input of a create-* or update-* call,
//! whose resource kind shows in which `*Name` members it carries.

use std::path::Path;

use serde_json::{json, Value};

use super::{Document, ManifestError};
use crate::model::Kind;

/// Most specific first: a route also names its virtual router.
const DETECTION_ORDER: [Kind; 6] = [
    Kind::GatewayRoute,
    Kind::Route,
    Kind::VirtualGateway,
    Kind::VirtualService,
    Kind::VirtualRouter,
    Kind::VirtualNode,
];

pub fn document(
    file: &Path,
    value: &Value,
    default_mesh: Option<&str>,
) -> Result<Document, ManifestError> {
    let fail = |message: String| ManifestError::new(file, Some(1), None, message);
    let Some(obj) = value.as_object() else {
        return Err(fail(
            "expected a JSON object of `aws appmesh` CLI input".into(),
        ));
    };
    let kind = DETECTION_ORDER
        .into_iter()
        .find(|k| obj.contains_key(k.name_field()))
        .or_else(|| obj.contains_key("meshName").then_some(Kind::Mesh))
        .ok_or_else(|| {
            fail(
                "cannot tell which resource this is: it has none of meshName, virtualNodeName, \
                 virtualRouterName, routeName, virtualServiceName, virtualGatewayName, \
                 gatewayRouteName (the script it came from passed them on the command line; add them to the file)"
                    .into(),
            )
        })?;
    let mut input = value.clone();
    if !obj.contains_key("meshName") {
        let mesh =
            default_mesh.ok_or_else(|| {
                fail(format!(
                "meshName: required field is missing for {} {} (the script it came from passed \
                 --mesh-name; add meshName to the file or pass --mesh)",
                kind.type_name(),
                obj.get(kind.name_field()).and_then(Value::as_str).unwrap_or("?")
            ))
            })?;
        input["meshName"] = json!(mesh);
    }
    Ok(Document {
        file: file.to_path_buf(),
        index: 1,
        kind,
        input,
        pods: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_and_fills_the_mesh() {
        let p = Path::new("f.json");
        let d = document(
            p,
            &json!({"routeName": "r", "virtualRouterName": "vr", "spec": {}}),
            Some("m"),
        )
        .unwrap();
        assert_eq!(d.kind, Kind::Route);
        assert_eq!(d.input["meshName"], "m");
        let err = document(
            p,
            &json!({"routeName": "r", "virtualRouterName": "vr"}),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("meshName"), "{err}");
        assert!(document(p, &json!({"spec": {}}), Some("m")).is_err());
        let d = document(p, &json!({"meshName": "m"}), None).unwrap();
        assert_eq!(d.kind, Kind::Mesh);
    }
}
