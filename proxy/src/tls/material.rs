//! Key material from config: `DataSource`s read and parsed into what rustls
//! takes, and `Secret` resources compiled. Every failure is a [`ConfigError`]
//! naming the field, so a bad certificate is refused at load (exit 2 or NACK),
//! never found at the first handshake. Errors never quote key bytes.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use xds_protos::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{
    secret, subject_alt_name_matcher::SanType, CertificateValidationContext, Secret, TlsCertificate,
};

use super::verify::{SanKind, SanMatcher};
use crate::config::ConfigError;
use crate::router::string::StringMatcher;

/// What a `Secret` holds once compiled.
#[derive(Clone)]
pub enum SecretValue {
    Certificate(Arc<ServedCert>),
    Validation(Arc<Validation>),
}

impl std::fmt::Debug for SecretValue {
    /// Key material is never printed, so this names the kind only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Certificate(_) => f.write_str("Certificate"),
            SecretValue::Validation(_) => f.write_str("Validation"),
        }
    }
}

/// A compiled `CertificateValidationContext`: trust anchors (absent when
/// only SAN matchers are given, as in a combined context's default part) and
/// the SANs a peer must present one of.
#[derive(Debug, Default)]
pub struct Validation {
    pub roots: Option<Arc<RootCertStore>>,
    pub sans: Vec<SanMatcher>,
    /// The webpki client verifier over `roots`, built at the first handshake
    /// that needs it and then shared.
    client_webpki: OnceLock<Option<Arc<dyn ClientCertVerifier>>>,
}

impl Validation {
    /// The chain verifier for client certificates; `None` without roots.
    pub fn client_webpki(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.client_webpki
            .get_or_init(|| {
                let roots = self.roots.clone()?;
                WebPkiClientVerifier::builder_with_provider(roots, super::provider())
                    .build()
                    .ok()
            })
            .clone()
    }
}

/// Reads a `DataSource`: a file, inline bytes or an inline string.
fn read(ds: Option<&DataSource>, field: &str) -> Result<Vec<u8>, ConfigError> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => std::fs::read(f)
            .map_err(|e| ConfigError::new(format!("{field}.filename"), format!("{f}: {e}"))),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::EnvironmentVariable(_)) => Err(ConfigError::new(
            format!("{field}.environment_variable"),
            "not supported by trellis",
        )),
        None => Err(ConfigError::new(field, "is required")),
    }
}

fn certificates(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(field, format!("not a PEM certificate list: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(field, "no PEM certificate found"));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| ConfigError::new(field, format!("certificate {i} is malformed: {e}")))?;
    }
    Ok(certs)
}

/// A certificate with its key, and the names it is chosen by when a server
/// context holds several: its DNS SANs or, without any, its subject's
/// common name (as Envoy reads them). Read once, when the certificate loads,
/// so choosing by SNI allocates nothing.
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    names: Box<[Box<str>]>,
}

impl ServedCert {
    pub fn new(key: Arc<CertifiedKey>) -> ServedCert {
        let names = key
            .cert
            .first()
            .map(|leaf| served_names(leaf))
            .unwrap_or_default();
        ServedCert { key, names }
    }

    /// The certificate names `sni` exactly (names are case-insensitive).
    pub fn names_exactly(&self, sni: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(sni))
    }

    /// A wildcard name covers `suffix`: `*.example.com` for `.example.com`.
    pub fn names_wildcard(&self, suffix: &str) -> bool {
        self.names.iter().any(|n| {
            n.strip_prefix('*')
                .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
        })
    }
}

/// The DNS SANs of a leaf certificate, or its subject CN when it has no SAN
/// extension.
fn served_names(leaf: &CertificateDer<'_>) -> Box<[Box<str>]> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Box::default();
    };
    if let Ok(Some(ext)) = parsed.subject_alternative_name() {
        return ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(s) => Some(Box::from(*s)),
                _ => None,
            })
            .collect();
    }
    parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(Box::from)
        .collect()
}

/// A certificate chain and its private key, checked to belong together.
pub fn certified_key(c: &TlsCertificate) -> Result<Arc<CertifiedKey>, ConfigError> {
    if c.private_key_provider.is_some() {
        return Err(ConfigError::new(
            "private_key_provider",
            "not supported by trellis",
        ));
    }
    if c.password.is_some() {
        return Err(ConfigError::new(
            "password",
            "encrypted private keys are not supported by trellis",
        ));
    }
    let chain = certificates(
        &read(c.certificate_chain.as_ref(), "certificate_chain")?,
        "certificate_chain",
    )?;
    let key_pem = read(c.private_key.as_ref(), "private_key")?;
    // The parser's error could echo input; say only what kind of failure it was.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        ConfigError::new(
            "private_key",
            "not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| ConfigError::new("private_key", "unsupported or malformed private key"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        ConfigError::new(
            "private_key",
            "does not match the certificate_chain's first certificate",
        )
    })?;
    Ok(Arc::new(ck))
}

/// Compiles a validation context. `trusted_ca` is optional here because a
/// combined context's default part may carry SAN matchers only.
pub fn validation(v: &CertificateValidationContext) -> Result<Validation, ConfigError> {
    #[allow(deprecated)]
    let unsupported = [
        (
            v.verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (
            v.verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (
            v.match_subject_alt_names.is_empty(),
            "match_subject_alt_names",
        ),
        (v.crl.is_none(), "crl"),
        (!v.allow_expired_certificate, "allow_expired_certificate"),
        (v.trust_chain_verification == 0, "trust_chain_verification"),
        (
            v.custom_validator_config.is_none(),
            "custom_validator_config",
        ),
        (v.system_root_certs.is_none(), "system_root_certs"),
        (
            v.ca_certificate_provider_instance.is_none(),
            "ca_certificate_provider_instance",
        ),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(ok, _)| !ok) {
        return Err(ConfigError::new(*field, "not supported by trellis"));
    }
    let roots = match &v.trusted_ca {
        Some(ds) => {
            let pem = read(Some(ds), "trusted_ca")?;
            let mut store = RootCertStore::empty();
            for (i, c) in certificates(&pem, "trusted_ca")?.into_iter().enumerate() {
                store.add(c).map_err(|e| {
                    ConfigError::new("trusted_ca", format!("certificate {i} is not a CA: {e}"))
                })?;
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    let sans = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = format!("match_typed_subject_alt_names[{i}]");
            let kind = match SanType::try_from(m.san_type) {
                Ok(SanType::Dns) => SanKind::Dns,
                Ok(SanType::Uri) => SanKind::Uri,
                Ok(SanType::Email) => SanKind::Email,
                Ok(SanType::IpAddress) => SanKind::Ip,
                _ => {
                    return Err(ConfigError::new(
                        format!("{path}.san_type"),
                        "must be DNS, URI, EMAIL or IP_ADDRESS",
                    ))
                }
            };
            let matcher = m
                .matcher
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{path}.matcher"), "is required"))?;
            let matcher =
                StringMatcher::compile(matcher).map_err(|e| e.at(format!("{path}.matcher")))?;
            Ok(SanMatcher { kind, matcher })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Validation {
        roots,
        sans,
        client_webpki: OnceLock::new(),
    })
}

/// Compiles a `Secret` resource: a certificate or a validation context.
pub fn compile_secret(s: &Secret) -> Result<SecretValue, ConfigError> {
    if s.name.is_empty() {
        return Err(ConfigError::new("name", "a secret needs a name"));
    }
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => Ok(SecretValue::Certificate(Arc::new(
            ServedCert::new(certified_key(c).map_err(|e| e.at("tls_certificate"))?),
        ))),
        Some(secret::Type::ValidationContext(v)) => {
            let v = validation(v).map_err(|e| e.at("validation_context"))?;
            if v.roots.is_none() {
                return Err(ConfigError::new(
                    "validation_context.trusted_ca",
                    "is required",
                ));
            }
            Ok(SecretValue::Validation(Arc::new(v)))
        }
        Some(_) => Err(ConfigError::new(
            "type",
            "only tls_certificate and validation_context secrets are supported by trellis",
        )),
        None => Err(ConfigError::new(
            "",
            "tls_certificate or validation_context is required",
        )),
    }
}
