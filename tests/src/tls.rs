//! TLS helpers for tests: a throwaway CA issuing leaf certificates (rcgen),
//! files for them, and an HTTPS client over rustls that reports what the
//! handshake negotiated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

/// A certificate authority that lives for one test.
pub struct Ca {
    pub pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate to issue: its SANs and validity window.
#[derive(Clone)]
pub struct Leaf {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub ip: Vec<std::net::IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf {
    /// Valid from an hour ago for a day, with these SANs.
    pub fn new(dns: &[&str], uri: &[&str]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        Leaf {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uri: uri.iter().map(|s| s.to_string()).collect(),
            ip: Vec::new(),
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
        }
    }

    /// Adds IP address SANs.
    pub fn ips(mut self, ips: &[std::net::IpAddr]) -> Leaf {
        self.ip.extend_from_slice(ips);
        self
    }

    pub fn valid(mut self, from: time::Duration, to: time::Duration) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + from;
        self.not_after = now + to;
        self
    }
}

/// An issued certificate and its key, PEM, plus the DER to compare against
/// what a server presented.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` under `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (crt, key)
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        Ca {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// Writes the CA certificate as `NAME.crt` under `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.crt"));
        std::fs::write(&p, &self.pem).expect("write ca");
        p
    }

    /// Writes the CA's private key as `NAME.key` under `dir`, for a server
    /// that issues from this CA (`trellis-control serve --ca-key`).
    pub fn write_key(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.key"));
        std::fs::write(&p, self.issuer.key().serialize_pem()).expect("write ca key");
        p
    }

    /// Issues a leaf usable both as a server and as a client certificate.
    pub fn issue(&self, leaf: &Leaf) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            leaf.dns
                .first()
                .or(leaf.uri.first())
                .map_or("leaf", String::as_str),
        );
        for d in &leaf.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into().expect("dns san")));
        }
        for u in &leaf.uri {
            params
                .subject_alt_names
                .push(SanType::URI(u.clone().try_into().expect("uri san")));
        }
        params
            .subject_alt_names
            .extend(leaf.ip.iter().map(|ip| SanType::IpAddress(*ip)));
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A rustls client config trusting `ca_pem`, presenting `client` if given,
/// offering `alpn`.
pub fn client_config(
    ca_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client chain");
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Every connection a full handshake, so each sees the server's current
    // certificate (a resumed session reports the original one).
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// What one HTTPS request saw.
#[derive(Debug)]
pub struct HttpsReply {
    pub status: u16,
    pub body: String,
    pub alpn: Option<String>,
    pub version: http::Version,
    /// The DER of the certificate the server presented.
    pub server_cert: Vec<u8>,
}

/// One GET over a new TLS connection with SNI `sni`; HTTP/2 if ALPN chose it.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> anyhow::Result<HttpsReply> {
    https_get_with(addr, sni, cfg, path, &[]).await
}

/// [`https_get`] with extra request headers.
pub async fn https_get_with(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpsReply> {
    https_request(
        addr,
        sni,
        cfg,
        http::Method::GET,
        path,
        headers,
        Bytes::new(),
    )
    .await
}

/// One POST of a JSON `body` over a new TLS connection, as [`https_get`].
pub async fn https_post(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<HttpsReply> {
    let json = [("content-type", "application/json")];
    https_request(
        addr,
        sni,
        cfg,
        http::Method::POST,
        path,
        &json,
        Bytes::from(body),
    )
    .await
}

async fn https_request(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<HttpsReply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let server_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://{sni}{path}"))
        .header("host", sni);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body))?;
    let fut = async {
        let resp = if alpn.as_deref() == Some("h2") {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await?;
            tokio::spawn(conn);
            let mut req = req;
            *req.version_mut() = http::Version::HTTP_2;
            send.send_request(req).await?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut().remove("host");
            req.headers_mut()
                .insert("host", http::HeaderValue::from_str(sni)?);
            *req.uri_mut() = path.parse()?;
            send.send_request(req).await?
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(HttpsReply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            alpn: alpn.clone(),
            version,
            server_cert: server_cert.clone(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await?
}
