//! TLS on the xDS port, so that node tokens and SVID keys never cross the
//! network in clear text. The server certificate is issued by the mesh CA
//! for the xDS address (and renewed at half life), or is the operator's own
//! (its files read again every second, so a rotated pair needs no restart).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::{Ca, KeyedCert};
use crate::served_cert::{ServedCert, RELOAD_EVERY};

/// A client that opens a connection and never finishes the handshake is
/// dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the xDS server's certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdsTlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot issue the xDS server certificate: {0}")]
    Issue(#[from] crate::ca::CaError),
    #[error("the xDS server certificate is unusable: {0}")]
    Key(String),
    #[error(transparent)]
    Files(#[from] crate::served_cert::CertError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, XdsTlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| XdsTlsError::Key(format!("not a PEM certificate list: {e}")))?;
    if chain.is_empty() {
        return Err(XdsTlsError::Key("no PEM certificate found".into()));
    }
    // The parser's error could quote the input: keep key bytes out of it.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| XdsTlsError::Key("not a PEM private key".into()))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|_| XdsTlsError::Key("the key does not match the certificate".into()))?;
    Ok(ck)
}

/// The certificate the xDS port presents.
#[derive(Debug)]
enum Source {
    /// The operator's (`--xds-tls-cert`, `--xds-tls-key`), read again
    /// every second for a rotation.
    Files(Arc<ServedCert>),
    /// Issued by the mesh CA for `names`, replaced at half life.
    Mesh {
        ca: Arc<Ca>,
        names: Vec<String>,
        current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
    },
}

fn issue(ca: &Ca, names: &[String]) -> Result<(Arc<CertifiedKey>, SystemTime), XdsTlsError> {
    let KeyedCert {
        cert_pem,
        key_pem,
        renew_at,
    } = ca.issue_server(names, ca.svid_ttl())?;
    Ok((
        Arc::new(certified(cert_pem.as_bytes(), key_pem.as_bytes())?),
        renew_at,
    ))
}

impl ResolvesServerCert for Source {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            Source::Files(cert) => cert.resolve(hello),
            Source::Mesh { ca, names, current } => {
                let (ck, renew_at) = current.read().ok()?.clone();
                if SystemTime::now() < renew_at {
                    return Some(ck);
                }
                let mut slot = current.write().ok()?;
                // Another handshake may have renewed it while this one waited.
                if SystemTime::now() < slot.1 {
                    return Some(slot.0.clone());
                }
                match issue(ca, names) {
                    Ok(fresh) => {
                        tracing::info!(names = ?names, "renewed the xDS server certificate");
                        *slot = fresh;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the xDS server certificate; retrying in a minute");
                        slot.1 = SystemTime::now() + Duration::from_secs(60);
                    }
                }
                Some(slot.0.clone())
            }
        }
    }
}

/// The TLS side of the xDS server: rustls with ALPN `h2` (gRPC).
#[derive(Clone)]
pub struct XdsTls {
    acceptor: TlsAcceptor,
    /// The operator's files, which the accept loop reads again.
    files: Option<Arc<ServedCert>>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls").finish_non_exhaustive()
    }
}

impl XdsTls {
    /// A certificate from the mesh CA with `names` (DNS names or IPs) as SANs.
    pub fn from_ca(ca: Arc<Ca>, names: Vec<String>) -> Result<XdsTls, XdsTlsError> {
        let current = RwLock::new(issue(&ca, &names)?);
        XdsTls::with(Source::Mesh { ca, names, current })
    }

    /// The operator's certificate chain and key, PEM files, watched for a
    /// rotation.
    pub fn from_files(cert: &Path, key: &Path) -> Result<XdsTls, XdsTlsError> {
        let served = Arc::new(ServedCert::from_files(cert, key, "the xDS port")?);
        let mut tls = XdsTls::with(Source::Files(served.clone()))?;
        tls.files = Some(served);
        Ok(tls)
    }

    fn with(source: Source) -> Result<XdsTls, XdsTlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| XdsTlsError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(source));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(XdsTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            files: None,
        })
    }

    /// Accepts TCP connections and runs each handshake on its own task, so a
    /// slow or silent client never holds up the others; the streams that
    /// complete the handshake come out of the returned channel.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<XdsStream>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut reload = tokio::time::interval(RELOAD_EVERY);
            reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    // The server stopped reading: stop accepting.
                    () = tx.closed() => return,
                    _ = reload.tick(), if self.files.is_some() => {
                        if let Some(files) = &self.files {
                            files.reload().await;
                        }
                        continue;
                    }
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "xDS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (self.acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(XdsStream(tls))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %peer, error = %e, "xDS TLS handshake failed")
                        }
                        Err(_) => tracing::warn!(peer = %peer, "xDS TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// A TLS connection to the xDS port; it reports the TCP peer to tonic, so
/// streams still know the proxy's address.
pub struct XdsStream(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for XdsStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for XdsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for XdsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
