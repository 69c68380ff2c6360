//! The App Mesh REST-JSON API over HTTP, its SigV4 authentication, and the
//! signing client `apply` uses.

pub mod client;
pub mod credentials;
mod encoding;
mod errors;
pub mod router;
pub mod server;
pub mod sigv4;
