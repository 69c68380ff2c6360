//! Upstream TLS: a cluster's `UpstreamTlsContext`, applied to each new
//! connection by the pool.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use xds_protos::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;

use super::common::{Certs, Common};
use super::material::Validation;
use super::stats::SslStats;
use super::verify::{ServerVerifier, Trust};
use super::Role;
use crate::config::ConfigError;

/// A compiled `UpstreamTlsContext`.
pub struct UpstreamTls {
    /// With the configured ALPN list; used as is when that list is set.
    connector: TlsConnector,
    /// When `alpn_protocols` is empty, Envoy offers the pool's own protocol
    /// (`http/1.1` or `h2`), which servers such as gRPC's require: these
    /// connectors do that.
    by_protocol: Option<(TlsConnector, TlsConnector)>,
    /// `sni`; without it no SNI is sent (the endpoint's IP stands in).
    sni: Option<ServerName<'static>>,
    ads_names: Vec<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("ads_secrets", &self.ads_names)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ClientCert(Certs);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

impl UpstreamTls {
    pub fn compile(ctx: &UpstreamTlsContext) -> Result<UpstreamTls, ConfigError> {
        if ctx.auto_host_sni || ctx.auto_sni_san_validation {
            return Err(ConfigError::new(
                "auto_host_sni",
                "not supported by trellis; set sni",
            ));
        }
        if ctx.allow_renegotiation {
            return Err(ConfigError::new(
                "allow_renegotiation",
                "not supported by trellis",
            ));
        }
        let c = match &ctx.common_tls_context {
            Some(common) => {
                Common::compile(common, Role::Client).map_err(|e| e.at("common_tls_context"))?
            }
            None => Common::compile(&Default::default(), Role::Client)?,
        };
        let sni =
            if ctx.sni.is_empty() {
                None
            } else {
                Some(ServerName::try_from(ctx.sni.clone()).map_err(|e| {
                    ConfigError::new("sni", format!("not a valid server name: {e}"))
                })?)
            };
        let trust = c.trust.unwrap_or(Trust {
            fixed: Validation::default(),
            sds: None,
        });
        let mut config = ClientConfig::builder_with_provider(c.provider.clone())
            .with_protocol_versions(&c.versions)
            .map_err(|e| ConfigError::new("common_tls_context.tls_params", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier { trust }))
            .with_client_cert_resolver(Arc::new(ClientCert(c.certs)));
        config.enable_sni = sni.is_some();
        let by_protocol = c.alpn.is_empty().then(|| {
            let with = |p: &[u8]| {
                let mut cfg = config.clone();
                cfg.alpn_protocols = vec![p.to_vec()];
                TlsConnector::from(Arc::new(cfg))
            };
            (with(b"http/1.1"), with(b"h2"))
        });
        config.alpn_protocols = c.alpn;
        Ok(UpstreamTls {
            by_protocol,
            connector: TlsConnector::from(Arc::new(config)),
            sni,
            ads_names: c.ads_names,
        })
    }

    /// Secrets this context expects over ADS.
    pub fn ads_secret_names(&self) -> &[String] {
        &self.ads_names
    }

    /// The client handshake on a fresh connection to `addr`, for the user
    /// named: it decides the ALPN offered when the context sets none. The
    /// outcome is counted in the cluster's `ssl.*` stats.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        user: AlpnFor,
        stats: Option<&SslStats>,
    ) -> io::Result<ClientStream> {
        let connector = match (&self.by_protocol, user) {
            (Some((h1, _)), AlpnFor::Http1) => h1,
            (Some((_, h2)), AlpnFor::Http2) => h2,
            _ => &self.connector,
        };
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = connector.connect(name, stream).await.inspect_err(|e| {
            tracing::warn!(upstream = %addr, error = %e, "upstream TLS handshake failed");
            if let Some(st) = stats {
                st.record_failure(e);
            }
        })?;
        if let Some(st) = stats {
            st.record_handshake(tls.get_ref().1);
        }
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

/// Who a connection is for: an HTTP/1.1 pool, an HTTP/2 pool, or the TCP
/// proxy (which, like Envoy's, offers only the configured ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlpnFor {
    Http1,
    Http2,
    Tcp,
}

/// An upstream connection, TLS or not, as one type for the pool's codecs.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
