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

/// A certificate and its private key, PEM. `Debug` leaves the key out so
/// that it never reaches a log line.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// When to get a new one: half-way through its lifetime, so a missed
    /// renewal still leaves hours to retry.
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// A proxy's identity: its SPIFFE ID and the certificate carrying it.
#[derive(Clone, Debug)]
pub struct Svid {
    pub spiffe_id: String,
    pub cert: KeyedCert,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// The issuing CA's certificate, then any CA trusted alongside it while
    /// a rotation overlaps (`--ca-trust`).
    bundle_pem: String,
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

/// A CA certificate that is a CA, and whose public key is the key's: a
/// mismatch would sign SVIDs that no proxy can verify.
fn check_pair(cert: &Path, cert_pem: &str, key: &Path, pair: &KeyPair) -> Result<(), CaError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |path: &Path, message: String| CaError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(cert, format!("not a PEM certificate: {e}")))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(cert, e.to_string()))?;
    if !parsed.is_ca() {
        return Err(bad(cert, "not a CA certificate".into()));
    }
    if parsed.public_key().subject_public_key.data.as_ref() != pair.public_key_raw() {
        return Err(bad(
            key,
            "is not the private key of the CA certificate".into(),
        ));
    }
    Ok(())
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
                bundle_pem: ca_cert.pem(),
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
        check_pair(cert, &cert_pem, key, &key_pair)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| bad(cert, e))?;
        Ok(Ca {
            issuer,
            bundle_pem: cert_pem.clone(),
            cert_pem,
            trust_domain: trust_domain.to_string(),
            ttl,
        })
    }

    /// Adds the CA certificates of a PEM file to the trust bundle, so that
    /// certificates of another CA (the one being rotated in or out) are
    /// accepted while SVIDs are still issued by this one.
    pub fn trust_also(mut self, path: &Path) -> Result<Ca, CaError> {
        let pem = std::fs::read_to_string(path).map_err(io(path))?;
        let bad = |message: String| CaError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut found = 0;
        for (i, der) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let der = der.map_err(|e| bad(format!("certificate {i}: not PEM: {e}")))?;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| bad(format!("certificate {i}: {e}")))?;
            if !cert.is_ca() {
                return Err(bad(format!("certificate {i} is not a CA certificate")));
            }
            found += 1;
        }
        if found == 0 {
            return Err(bad("no PEM certificate found".into()));
        }
        if !self.bundle_pem.ends_with('\n') {
            self.bundle_pem.push('\n');
        }
        self.bundle_pem.push_str(&pem);
        Ok(self)
    }

    /// The trust bundle, PEM: the issuing CA's certificate, then any CA
    /// trusted alongside it.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The issuing CA's certificate alone, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `spiffe://TD/mesh/M/virtualNode/N` (or `virtualGateway/G`).
    pub fn spiffe_id(&self, id: &NodeId) -> String {
        spiffe_id(&self.trust_domain, id)
    }

    /// A fresh key pair and a certificate for `id`, valid for the SVID
    /// lifetime (backdated a minute for clock skew between hosts).
    pub fn issue(&self, id: &NodeId) -> Result<Svid, CaError> {
        let spiffe = self.spiffe_id(id);
        let sans = vec![SanType::URI(spiffe.clone().try_into()?)];
        let eku = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(Svid {
            cert: self.sign(&id.render(), sans, eku, self.ttl)?,
            spiffe_id: spiffe,
        })
    }

    /// How long SVIDs live.
    pub fn svid_ttl(&self) -> Duration {
        self.ttl
    }

    /// A server certificate for `names` (DNS names, or IP addresses), valid
    /// for `lifetime`: the xDS port's (renewed by its holder at `renew_at`),
    /// or the sidecar injector's when the operator gives none.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<KeyedCert, CaError> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let cn = names.first().map_or("trellis-control", String::as_str);
        self.sign(
            cn,
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            lifetime,
        )
    }

    /// A fresh key pair and a certificate living `lifetime`, backdated a
    /// minute for clock skew between hosts.
    fn sign(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        lifetime: Duration,
    ) -> Result<KeyedCert, CaError> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = eku;
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let ttl = time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(1));
        let issued = time::OffsetDateTime::now_utc();
        params.not_before = issued - time::Duration::minutes(1);
        params.not_after = issued + ttl;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            renew_at: now + lifetime / 2,
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
        assert!(svid
            .cert
            .cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{svid:?}").contains("PRIVATE KEY"));
        let half = svid
            .cert
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
