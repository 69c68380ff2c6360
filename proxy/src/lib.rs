//! trellis-proxy: an Envoy-compatible L7 proxy. Config flows in one direction:
//! bootstrap/xDS protos → `config` (validated, compiled) → `snapshot` (immutable,
//! swapped with arc-swap) → the request path: `listener` → `http` → `router` →
//! `upstream` (cluster → endpoint).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod config;
pub mod router;
