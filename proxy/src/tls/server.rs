//! Downstream TLS: a listener filter chain's `DownstreamTlsContext`.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use xds_protos::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use super::common::{Certs, Common};
use super::stats::SslStats;
use super::verify::{sans, ClientVerifier, SanKind};
use super::Role;
use crate::config::ConfigError;

/// A handshake that has not finished by then is dropped, so a stalled peer
/// cannot hold a connection slot. Envoy has no bound unless the filter
/// chain sets `transport_socket_connect_timeout`, which replaces this one.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A compiled `DownstreamTlsContext`. The rustls config is built once; the
/// certificate and trust inside it follow their secrets.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    ads_names: Vec<String>,
    /// `None`: the chain turned the bound off (`0s`).
    handshake_timeout: Option<Duration>,
}

/// Why a handshake gave no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer failed TLS (counted in `ssl.*`).
    Failed,
    /// Not finished within the handshake timeout: Envoy's
    /// `downstream_cx_transport_socket_connect_timeout`.
    TimedOut,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("ads_secrets", &self.ads_names)
            .finish_non_exhaustive()
    }
}

/// What the handshake established about the downstream peer, for routing,
/// authorization, access logs (`%DOWNSTREAM_PEER_URI_SAN%`) and stats.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The verified client certificate's first URI SAN (a SPIFFE id in a mesh).
    pub uri_san: Option<Arc<str>>,
    /// The client certificate was verified (and so `uri_san` can be trusted).
    pub verified: bool,
    /// The SNI tls_inspector read from the ClientHello, set by the listener
    /// (`%REQUESTED_SERVER_NAME%`; Envoy's requested server name).
    pub server_name: Option<Arc<str>>,
    pub alpn: Option<String>,
}

#[derive(Debug)]
struct Resolver(Certs);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.for_sni(hello.server_name())
    }
}

impl ServerTls {
    pub fn compile(ctx: &DownstreamTlsContext) -> Result<ServerTls, ConfigError> {
        if ctx.require_sni == Some(true) {
            return Err(ConfigError::new("require_sni", "not supported by trellis"));
        }
        if ctx.session_ticket_keys_type.is_some() {
            return Err(ConfigError::new(
                "session_ticket_keys",
                "not supported by trellis",
            ));
        }
        let common = ctx
            .common_tls_context
            .as_ref()
            .ok_or_else(|| ConfigError::new("common_tls_context", "is required"))?;
        let c = Common::compile(common, Role::Server).map_err(|e| e.at("common_tls_context"))?;
        if c.certs.is_empty() {
            return Err(ConfigError::new(
                "common_tls_context.tls_certificates",
                "a TLS listener needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
            ));
        }
        let required = ctx.require_client_certificate.unwrap_or(false);
        let builder = ServerConfig::builder_with_provider(c.provider.clone())
            .with_protocol_versions(&c.versions)
            .map_err(|e| ConfigError::new("common_tls_context.tls_params", e))?;
        let builder = match c.trust {
            Some(trust) => {
                builder.with_client_cert_verifier(Arc::new(ClientVerifier { trust, required }))
            }
            None if required => {
                return Err(ConfigError::new(
                    "require_client_certificate",
                    "needs a validation context to verify client certificates against",
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(c.certs)));
        config.alpn_protocols = c.alpn;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ads_names: c.ads_names,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }

    /// The filter chain's `transport_socket_connect_timeout`.
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> ServerTls {
        self.handshake_timeout = timeout;
        self
    }

    /// Secrets this context expects over ADS.
    pub fn ads_secret_names(&self) -> &[String] {
        &self.ads_names
    }

    /// Runs the server handshake. A failure is logged with its reason (the
    /// peer's certificate was expired, not yet valid, from an unknown CA, or
    /// its SANs did not match), counted in `stats` by kind, and the
    /// connection is dropped. Logged at debug level, as Envoy does: anyone
    /// on the internet can make handshakes fail, and the counters tell.
    pub async fn accept(
        &self,
        stream: TcpStream,
        stats: Option<&SslStats>,
    ) -> Result<(TlsStream<TcpStream>, PeerInfo), HandshakeError> {
        let peer = stream.peer_addr().ok();
        let handshake = self.acceptor.accept(stream);
        let result = match self.handshake_timeout {
            Some(limit) => tokio::time::timeout(limit, handshake).await,
            None => Ok(handshake.await),
        };
        let tls = match result {
            Ok(Ok(s)) => {
                if let Some(st) = stats {
                    st.record_handshake(s.get_ref().1);
                }
                s
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = ?peer, error = %e, "downstream TLS handshake failed");
                if let Some(st) = stats {
                    st.record_failure(&e);
                }
                return Err(HandshakeError::Failed);
            }
            // Not a TLS failure for Envoy either: no `ssl.*` stat moves.
            Err(_) => {
                tracing::debug!(peer = ?peer, "downstream TLS handshake timed out");
                return Err(HandshakeError::TimedOut);
            }
        };
        let conn = tls.get_ref().1;
        let certs = conn.peer_certificates();
        let info = PeerInfo {
            uri_san: certs
                .and_then(|c| c.first())
                .and_then(|c| sans(c).into_iter().find(|(k, _)| *k == SanKind::Uri))
                .map(|(_, v)| Arc::from(v)),
            verified: certs.is_some_and(|c| !c.is_empty()),
            server_name: None,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        };
        Ok((tls, info))
    }
}
