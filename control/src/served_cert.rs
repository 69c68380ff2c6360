//! A server certificate and key, PEM: issued once, or the operator's files
//! read again every [`RELOAD_EVERY`], so that a rotated pair (cert-manager
//! renewing a Secret, the kubelet swapping the files) is served from the
//! next handshake on. The injector and the xDS port both serve one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}: the certificate and the key do not belong together or cannot be used: {1}")]
    Pair(String, rustls::Error),
}

/// How often watched certificate files are read again for a rotation
/// (cert-manager renewing the Secret, the kubelet swapping the files).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A chain and key, PEM, checked to belong together. `origin` names the
/// files in errors.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    origin: (&str, &str),
) -> Result<Arc<CertifiedKey>, CertError> {
    let bad = |path: &str, message: String| CertError::File {
        path: path.to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(origin.0, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(origin.0, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| bad(origin.1, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| CertError::Pair(format!("{} and {}", origin.0, origin.1), e))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A server certificate: fixed (issued by the mesh CA), or the operator's
/// files, which [`ServedCert::reload`] reads again so that a rotated pair
/// is served from the next handshake on, without a restart.
#[derive(Debug)]
pub struct ServedCert {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<Files>,
    /// Who serves it, for the log: `the injector`, `the xDS port`.
    what: &'static str,
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// The contents `current` was made from.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ServedCert {
    /// A fixed certificate (one the mesh CA issued).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        what: &'static str,
    ) -> Result<ServedCert, CertError> {
        Ok(ServedCert {
            what,
            current: RwLock::new(certified_key(
                chain_pem,
                key_pem,
                ("issued certificate", "issued key"),
            )?),
            files: None,
        })
    }

    /// A certificate chain file and its key file, watched for rotation.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        what: &'static str,
    ) -> Result<ServedCert, CertError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| CertError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let (c, k) = (read(cert)?, read(key)?);
        let current = certified_key(
            &c,
            &k,
            (&cert.display().to_string(), &key.display().to_string()),
        )?;
        Ok(ServedCert {
            what,
            current: RwLock::new(current),
            files: Some(Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                loaded: Mutex::new((c, k)),
            }),
        })
    }

    /// Whether it comes from files that [`ServedCert::reload`] reads.
    pub fn watched(&self) -> bool {
        self.files.is_some()
    }

    /// Serves the files' pair if they changed and are good; a bad pair is
    /// logged and the last good one kept (a half-written rotation is
    /// picked up on a later read).
    pub async fn reload(&self) {
        let Some(files) = &self.files else { return };
        let (Ok(c), Ok(k)) = (
            tokio::fs::read(&files.cert).await,
            tokio::fs::read(&files.key).await,
        ) else {
            return;
        };
        let mut loaded = files.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == c && loaded.1 == k {
            return;
        }
        let origin = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        match certified_key(&c, &k, (&origin.0, &origin.1)) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
                *loaded = (c, k);
                tracing::info!(cert = %origin.0, server = self.what, "serving a new certificate from the files");
            }
            Err(e) => {
                *loaded = (c, k);
                tracing::warn!(error = %e, server = self.what, "kept the last good certificate");
            }
        }
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
