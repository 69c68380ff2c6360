//! The mesh's certificate authority: it issues each proxy a short-lived X.509
//! SVID whose URI SAN is its SPIFFE ID, so mTLS between sidecars proves which
//! virtual node is calling without any AWS service (App Mesh used ACM PCA).
//!
//! The CA is generated on first start and kept in `DATA_DIR/ca/` (the key file
//! mode 0600), or supplied by the operator. Its certificate is the trust
//! bundle every proxy receives.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::xds::translate::NodeId;

/// The SDS secret holding a proxy's own certificate and key: what
/// `certificate.sds.secretName` names when identities are mesh-issued.
pub const SVID_SECRET: &str = "trellis-svid";
/// The SDS secret holding the CA bundle that peers' SVIDs chain to.
pub const BUNDLE_SECRET: &str = "trellis-ca";

/// The default trust domain of SPIFFE IDs.
pub const DEFAULT_TRUST_DOMAIN: &str = "trellis.local";

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{0:?} is not a valid SPIFFE trust domain")]
    TrustDomain(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate and its private key, PEM. `Debug` leaves the key out so that
/// it never reaches a log line.
#[derive(Clone)]
pub struct Svid {
    pub spiffe_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the proxy should get a new one: half-way through its lifetime,
    /// so a missed renewal still leaves hours to retry.
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    trust_domain: String,
    ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
fn check_trust_domain(td: &str) -> Result<(), CaError> {
    let ok = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CaError::TrustDomain(td.to_string()))
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

impl Ca {
    /// Loads `DIR/ca.pem` and `DIR/ca-key.pem`, or creates them (a ten-year
    /// ECDSA P-256 root) when neither exists. The flag says it was created.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<(Ca, bool), CaError> {
        check_trust_domain(trust_domain)?;
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert.exists() || key.exists() {
            return Ok((Ca::load(&cert, &key, trust_domain, ttl)?, false));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "trellis");
        dn.push(DnType::CommonName, format!("trellis CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let ca_cert = params.self_signed(&key_pair)?;
        // The key first: a cert without its key would make the next start fail.
        write_private(&key, &key_pair.serialize_pem())?;
        std::fs::write(&cert, ca_cert.pem()).map_err(io(&cert))?;
        Ok((
            Ca {
                issuer: Issuer::new(params, key_pair),
                cert_pem: ca_cert.pem(),
                trust_domain: trust_domain.to_string(),
                ttl,
            },
            true,
        ))
    }

    /// An operator's CA (`--ca-cert`, `--ca-key`): PEM files.
    pub fn load(cert: &Path, key: &Path, trust_domain: &str, ttl: Duration) -> Result<Ca, CaError> {
        check_trust_domain(trust_domain)?;
        let cert_pem = std::fs::read_to_string(cert).map_err(io(cert))?;
        let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
        let bad = |path: &Path, e: rcgen::Error| CaError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| bad(cert, e))?;
        Ok(Ca {
            issuer,
            cert_pem,
            trust_domain: trust_domain.to_string(),
            ttl,
        })
    }

    /// The trust bundle: the CA certificate, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `spiffe://TD/mesh/M/virtualNode/N` (or `virtualGateway/G`).
    pub fn spiffe_id(&self, id: &NodeId) -> String {
        spiffe_id(&self.trust_domain, id)
    }

    /// A fresh key pair and a certificate for `id`, valid for the SVID
    /// lifetime (backdated a minute for clock skew between hosts).
    pub fn issue(&self, id: &NodeId) -> Result<Svid, CaError> {
        let key_pair = KeyPair::generate()?;
        let spiffe = self.spiffe_id(id);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.render());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(spiffe.clone().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::days(1));
        let issued = time::OffsetDateTime::now_utc();
        params.not_before = issued - time::Duration::minutes(1);
        params.not_after = issued + ttl;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(Svid {
            spiffe_id: spiffe,
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            renew_at: now + self.ttl / 2,
        })
    }
}

/// A serving certificate and its key, PEM; `Debug` leaves the key out.
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

impl Ca {
    /// A server certificate for `names` (DNS names, or IP addresses), valid
    /// for `lifetime`: what the sidecar injector serves when the operator
    /// gives none, trusted through the CA in the webhook's `caBundle`.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCert, CaError> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("trellis-control", String::as_str),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issued = time::OffsetDateTime::now_utc();
        params.not_before = issued - time::Duration::minutes(1);
        params.not_after =
            issued + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(365));
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

/// The SPIFFE ID of a proxy identity in a trust domain.
pub fn spiffe_id(trust_domain: &str, id: &NodeId) -> String {
    format!("spiffe://{trust_domain}/{}", id.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId {
            mesh: "m".into(),
            gateway: false,
            name: "a".into(),
        }
    }

    #[test]
    fn created_once_then_loaded_with_a_private_key_file() -> Result<(), CaError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let ttl = Duration::from_secs(3600);
        let (ca, created) = Ca::load_or_create(dir.path(), DEFAULT_TRUST_DOMAIN, ttl)?;
        assert!(created);
        let key = dir.path().join("ca-key.pem");
        let mode = std::fs::metadata(&key)
            .map_err(io(&key))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = Ca::load_or_create(dir.path(), DEFAULT_TRUST_DOMAIN, ttl)?;
        assert!(!created);
        assert_eq!(ca.bundle_pem(), again.bundle_pem());
        let svid = again.issue(&node())?;
        assert_eq!(
            svid.spiffe_id,
            "spiffe://trellis.local/mesh/m/virtualNode/a"
        );
        assert!(svid.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{svid:?}").contains("PRIVATE KEY"));
        let half = svid
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(half > Duration::from_secs(1700) && half <= Duration::from_secs(1800));
        Ok(())
    }

    #[test]
    fn a_bad_trust_domain_is_refused() {
        let dir = std::env::temp_dir();
        let r = Ca::load_or_create(&dir, "Bad Domain", Duration::from_secs(60));
        assert!(matches!(r, Err(CaError::TrustDomain(_))));
    }
}
