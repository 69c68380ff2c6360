//! The virtual nodes a pod can be injected for, read from the store in one
//! transaction, and how a pod finds its own: the `appmesh.k8s.aws/virtualNode`
//! annotation, else the one VirtualNode in its namespace whose `podSelector`
//! matches its labels (the App Mesh controller's rule).

use crate::model::Kind;
use crate::store::Tx;
use crate::xds::spec::VirtualNodeSpec;
use crate::xds::translate::NodeId;

use super::binding::PodBinding;
use super::pod::{Pod, VIRTUAL_NODE};

#[derive(Debug, Clone)]
pub struct Node {
    pub mesh: String,
    pub name: String,
    /// Listener ports: the default `APPMESH_APP_PORTS`.
    pub ports: Vec<u16>,
    pub binding: Option<PodBinding>,
}

impl Node {
    /// `mesh/M/virtualNode/N`: `APPMESH_RESOURCE_ARN` and the proxy's node id.
    pub fn id(&self) -> String {
        self.node_id().render()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId {
            mesh: self.mesh.clone(),
            gateway: false,
            name: self.name.clone(),
        }
    }
}

/// Every virtual node, with its pod binding when a manifest gave one.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    nodes: Vec<Node>,
}

impl MeshView {
    pub fn read(tx: &Tx<'_>) -> rusqlite::Result<MeshView> {
        let mut bindings = tx.pod_bindings()?;
        let nodes = tx
            .all()?
            .into_iter()
            .filter(|r| r.key.kind == Kind::VirtualNode)
            .map(|r| {
                let spec: VirtualNodeSpec = serde_json::from_value(r.spec).unwrap_or_default();
                let ports = spec
                    .listeners
                    .iter()
                    .filter_map(|l| u16::try_from(l.port_mapping.port).ok())
                    .collect();
                let at = bindings
                    .iter()
                    .position(|b| b.mesh_name == r.key.mesh && b.virtual_node_name == r.key.name);
                Node {
                    mesh: r.key.mesh,
                    name: r.key.name,
                    ports,
                    binding: at.map(|i| bindings.swap_remove(i)),
                }
            })
            .collect();
        Ok(MeshView { nodes })
    }

    /// The pod's virtual node: `Ok(None)` when nothing selects it.
    pub fn designate(&self, pod: &Pod, namespace: &str) -> Result<Option<&Node>, String> {
        if let Some(wanted) = pod.annotation(VIRTUAL_NODE) {
            return self.named(wanted.trim(), namespace).map(Some);
        }
        let selected: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| {
                n.binding.as_ref().is_some_and(|b| {
                    b.namespace == namespace
                        && b.pod_selector
                            .as_ref()
                            .is_some_and(|s| s.matches(&pod.labels))
                })
            })
            .collect();
        match selected.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            many => Err(format!(
                "the podSelectors of several virtual nodes match this pod ({}); \
                 narrow them or name one with {VIRTUAL_NODE}",
                many.iter().map(|n| n.id()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// A virtual node by ARN, by `mesh/M/virtualNode/N`, by App Mesh name,
    /// or by the Kubernetes name of its VirtualNode in the pod's namespace.
    fn named(&self, wanted: &str, namespace: &str) -> Result<&Node, String> {
        let found: Vec<&Node> = if wanted.contains('/') {
            let id = NodeId::parse(wanted).filter(|id| !id.gateway).ok_or_else(|| {
                format!("{VIRTUAL_NODE}: '{wanted}' is neither a virtual node name nor mesh/M/virtualNode/N")
            })?;
            self.nodes
                .iter()
                .filter(|n| n.mesh == id.mesh && n.name == id.name)
                .collect()
        } else {
            let by_name: Vec<&Node> = self.nodes.iter().filter(|n| n.name == wanted).collect();
            if by_name.is_empty() {
                self.nodes
                    .iter()
                    .filter(|n| {
                        n.binding
                            .as_ref()
                            .is_some_and(|b| b.namespace == namespace && b.name == wanted)
                    })
                    .collect()
            } else {
                by_name
            }
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("{VIRTUAL_NODE}: no virtual node '{wanted}'")),
            many => Err(format!(
                "{VIRTUAL_NODE}: '{wanted}' names a virtual node in several meshes ({}); \
                 write mesh/M/virtualNode/N",
                many.iter()
                    .map(|n| n.mesh.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}
