//! trellis-control: the App Mesh API over durable state, and the xDS server
//! that turns that state into proxy configuration.
//!
//! The seam for xDS: [`store::Store::snapshot`] yields every resource at one
//! revision, and [`store::Store::subscribe`] wakes on every committed write.

#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod error;
pub mod inject;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod served_cert;
pub mod service_model;
pub mod store;
pub mod tokens;
pub mod xds;

pub use error::{ApiError, ErrorKind};
