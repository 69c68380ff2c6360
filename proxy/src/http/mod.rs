//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 connections and
//! walks each request through routing to an upstream.

mod admit;
mod coalesce;
mod conn;
mod explicit;
mod flags;
mod forward;
mod h1_guard;
mod h2_guard;
mod handler;
mod head_timer;
mod headers;
mod local_reply;
mod normalize;
mod retry;
mod stream_idle;
mod validate;

use std::sync::Arc;

use crate::config::hcm::HcmConfig;
use crate::shared::Shared;
use crate::stats::HttpStats;

pub use flags::ResponseFlags;

/// One `http_connection_manager` filter instance, shared by its connections.
pub struct Hcm {
    pub config: Arc<HcmConfig>,
    pub stats: Arc<HttpStats>,
    pub shared: Arc<Shared>,
    /// Fault and local rate limit stats, registered only when the chain
    /// has such filters.
    pub filter_stats: Arc<crate::filters::FilterStats>,
    /// Telemetry hook: where this connection manager's spans go.
    pub tracer: Option<Arc<crate::tracing_ctx::otlp::Exporter>>,
    /// Per-peer App Mesh stats; `inbound` also counts callers by identity.
    pub mesh: Option<Arc<crate::stats::appmesh::MeshStats>>,
    pub inbound: bool,
}

impl Hcm {
    /// `inbound`: the listener's `traffic_direction` is `INBOUND`.
    pub fn new(config: Arc<HcmConfig>, shared: Arc<Shared>, inbound: bool) -> Hcm {
        let filter_stats = shared.filter_stats(&config.stat_prefix);
        if !config.filters.is_empty() {
            filter_stats
                .listed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Hcm {
            stats: shared.http_stats(&config.stat_prefix),
            tracer: config
                .tracing
                .as_ref()
                .and_then(|t| crate::tracing_ctx::otlp::Exporter::get(&t.target, &shared)),
            mesh: shared.mesh.clone(),
            inbound,
            config,
            shared,
            filter_stats,
        }
    }
}
