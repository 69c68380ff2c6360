//! The Kubernetes sidecar injector: a mutating admission webhook that adds
//! trellis-proxy and its init container to pods the way the App Mesh
//! controller added Envoy. Opt-in per namespace (the webhook configuration's
//! `namespaceSelector` on `appmesh.k8s.aws/sidecarInjectorWebhook`), per pod
//! (the same annotation), the virtual node named by
//! `appmesh.k8s.aws/virtualNode` or picked by VirtualNode `podSelector`.
//!
//! [`admit`] is pure: request body, [`MeshView`] and [`Settings`] in,
//! AdmissionReview out. [`server`] is the HTTPS edge around it.

mod binding;
mod mesh;
mod patch;
mod pod;
mod review;
mod selector;
pub mod server;
mod settings;

pub use binding::PodBinding;
pub use mesh::{MeshView, Node};
pub use review::{admit, Admission, NamespaceDefault};
pub use selector::{LabelSelector, Operator, Requirement, SelectorError};
pub use settings::{
    parse_ports, IgnoredIp, PreStopHook, Quantity, Resources, Settings, XdsTrust,
    DEFAULT_PROXY_UID, EGRESS_PORT, INGRESS_PORT, INIT_NAME, SIDECAR_NAME,
};
