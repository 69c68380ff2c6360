//! App Mesh resources as trellis holds them: a kind, an identity inside a
//! mesh, a model-validated spec and the metadata App Mesh reports.

mod kind;
mod references;
mod resource;

pub use kind::Kind;
pub use references::{references, unsupported_feature, Reference};
pub use resource::{Arn, Metadata, Resource, ResourceKey, Tag};
