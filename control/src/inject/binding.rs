//! The Kubernetes side of a VirtualNode manifest that App Mesh itself never
//! stored: its namespace, its Kubernetes name and its `podSelector`. The
//! controller used them to pick each pod's virtual node; trellis keeps them
//! beside the resource (`trellis-control apply` sends them to
//! `PUT /trellis/v1/pod-selectors`) so that the injector can do the same.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::selector::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodBinding {
    pub mesh_name: String,
    pub virtual_node_name: String,
    /// The VirtualNode object's namespace: only pods there are matched.
    pub namespace: String,
    /// The VirtualNode object's Kubernetes name (`metadata.name`).
    pub name: String,
    /// `None` selects no pod (the annotation can still name the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

impl PodBinding {
    /// Parses the API body; the selector strictly, as manifests are.
    pub fn parse(value: &Value) -> Result<PodBinding, String> {
        let text = |field: &str| {
            value[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("{field}: required string is missing"))
        };
        let pod_selector = match value.get("podSelector") {
            None | Some(Value::Null) => None,
            Some(v) => Some(LabelSelector::parse(v).map_err(|e| format!("podSelector.{e}"))?),
        };
        Ok(PodBinding {
            mesh_name: text("meshName")?,
            virtual_node_name: text("virtualNodeName")?,
            namespace: text("namespace")?,
            name: text("name")?,
            pod_selector,
        })
    }
}
