//! TLS for listeners and clusters, from Envoy's `DownstreamTlsContext` and
//! `UpstreamTlsContext`, on rustls with the `ring` provider.
//!
//! Certificates and trust come inline, from files, or by name from a secret
//! ([`secrets`]): static in the bootstrap, over ADS, or from a watched SDS
//! file. Secret-backed material sits behind arc-swap inside the certificate
//! resolvers and verifiers, so a rotation reaches the next handshake without
//! rebuilding any config, and open connections are not touched.

mod client;
mod common;
mod inspector;
mod material;
mod params;
pub mod secrets;
mod server;
mod stats;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

pub use client::{AlpnFor, ClientStream, UpstreamTls};
pub use inspector::{inspect, ClientHelloFacts, Inspection};
pub use server::{HandshakeError, PeerInfo, ServerTls, DEFAULT_HANDSHAKE_TIMEOUT};
pub use stats::{ClusterSslStats, SslStats};

/// The default crypto provider: `ring`, with rustls's default (modern, AEAD
/// and forward-secret only) cipher suites and groups; `tls_params` may
/// narrow a context's ([`params`]).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Which end of the handshake a context is for: their defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// Envoy's `tls_params` protocol range, limited to what trellis allows:
/// TLS 1.2 and 1.3. `TLS_AUTO` means 1.2 as minimum and, as in Envoy, 1.3
/// as maximum for a listener but 1.2 for a cluster.
fn versions(
    params: Option<&xds_protos::envoy::extensions::transport_sockets::tls::v3::TlsParameters>,
    role: Role,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, crate::config::ConfigError> {
    let auto_max = match role {
        Role::Server => 3,
        Role::Client => 2,
    };
    use crate::config::ConfigError;
    use xds_protos::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
    let level = |v: i32, field: &str, auto: u8| -> Result<u8, ConfigError> {
        match TlsProtocol::try_from(v) {
            Ok(TlsProtocol::TlsAuto) => Ok(auto),
            Ok(TlsProtocol::TlSv12) => Ok(2),
            Ok(TlsProtocol::TlSv13) => Ok(3),
            _ => Err(ConfigError::new(
                field,
                "only TLSv1_2 and TLSv1_3 are supported by trellis",
            )),
        }
    };
    let (min, max) = match params {
        Some(p) => (
            level(
                p.tls_minimum_protocol_version,
                "tls_minimum_protocol_version",
                2,
            )?,
            level(
                p.tls_maximum_protocol_version,
                "tls_maximum_protocol_version",
                auto_max,
            )?,
        ),
        None => (2, auto_max),
    };
    if min > max {
        return Err(ConfigError::new(
            "tls_minimum_protocol_version",
            "is above tls_maximum_protocol_version",
        ));
    }
    let mut out = Vec::new();
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if min <= 2 {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}

const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// The `typed_config` of a `transport_socket`, if it is TLS of type `url`;
/// `None` for no socket or `raw_buffer`.
fn transport_socket_any<'a>(
    ts: Option<&'a xds_protos::envoy::config::core::v3::TransportSocket>,
    url: &str,
) -> Result<Option<&'a prost_types::Any>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    use xds_protos::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ts) = ts else { return Ok(None) };
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(ConfigError::new("typed_config", "typed_config is required")),
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if any.type_url != url {
        return Err(ConfigError::new(
            "typed_config",
            format!(
                "transport socket {} is not supported here (expected {url})",
                any.type_url
            ),
        ));
    }
    Ok(Some(any))
}

/// Compiles a filter chain's `transport_socket` (a `DownstreamTlsContext`),
/// its handshakes bounded by `handshake_timeout`.
pub fn downstream_transport_socket(
    ts: Option<&xds_protos::envoy::config::core::v3::TransportSocket>,
    handshake_timeout: Option<std::time::Duration>,
) -> Result<Option<Arc<ServerTls>>, crate::config::ConfigError> {
    let Some(any) = transport_socket_any(ts, xds_protos::type_url::DOWNSTREAM_TLS_CONTEXT)? else {
        return Ok(None);
    };
    let ctx = xds_protos::any::unpack(any)
        .map_err(|e| crate::config::ConfigError::new("typed_config", e))?;
    Ok(Some(Arc::new(
        ServerTls::compile(&ctx)
            .map_err(|e| e.at("typed_config"))?
            .with_handshake_timeout(handshake_timeout),
    )))
}

/// Compiles a cluster's `transport_socket` (an `UpstreamTlsContext`).
pub fn upstream_transport_socket(
    ts: Option<&xds_protos::envoy::config::core::v3::TransportSocket>,
) -> Result<Option<Arc<UpstreamTls>>, crate::config::ConfigError> {
    let Some(any) = transport_socket_any(ts, xds_protos::type_url::UPSTREAM_TLS_CONTEXT)? else {
        return Ok(None);
    };
    let ctx = xds_protos::any::unpack(any)
        .map_err(|e| crate::config::ConfigError::new("typed_config", e))?;
    Ok(Some(Arc::new(
        UpstreamTls::compile(&ctx).map_err(|e| e.at("typed_config"))?,
    )))
}
