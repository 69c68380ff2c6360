//! The xDS side of the control plane: App Mesh specs translated into Envoy
//! resources, and the Aggregated Discovery Service that serves them.

pub mod registry;
pub mod server;
pub mod spec;
pub mod tls;
pub mod translate;
