//! trellis-proxy: an Envoy-compatible L7 proxy. Config flows in one direction:
//! bootstrap/xDS protos → `config` (validated, compiled) → `snapshot` (immutable,
//! swapped with arc-swap) → the request path: `listener` → `http` → `router` →
//! `upstream` (cluster → endpoint).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod bootstrap;
pub mod config;
pub mod drain;
pub mod filters;
pub mod format;
pub mod http;
pub mod init;
pub mod io;
pub mod listener;
pub mod memory;
pub mod overload;
pub mod reflect;
pub mod rng;
pub mod router;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod tracing_ctx;
pub mod upstream;
pub mod wait_ready;
pub(crate) mod wire;
pub mod xds;
