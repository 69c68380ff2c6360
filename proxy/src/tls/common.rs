//! What `DownstreamTlsContext` and `UpstreamTlsContext` share: the
//! `CommonTlsContext` (own certificates, trust, ALPN, protocol versions).

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext,
};

use super::material::{certified_key, validation, SecretValue, ServedCert, Validation};
use super::secrets::{resolve, Slot};
use super::verify::Trust;
use super::Role;
use crate::config::ConfigError;

/// A certificate the context presents: fixed at compile time, or the
/// current value of a secret.
pub enum CertSource {
    Fixed(Arc<ServedCert>),
    Sds(Arc<Slot>),
}

impl CertSource {
    /// The certificate, if `pick` takes it.
    fn pick(&self, pick: impl Fn(&ServedCert) -> bool) -> Option<Arc<CertifiedKey>> {
        match self {
            CertSource::Fixed(c) => pick(c).then(|| c.key.clone()),
            CertSource::Sds(slot) => match slot.load().as_deref() {
                Some(SecretValue::Certificate(c)) => pick(c).then(|| c.key.clone()),
                _ => None,
            },
        }
    }
}

/// The certificates of one context. A server chooses among several by SNI
/// the way Envoy does: a certificate naming the server name exactly, then
/// one whose wildcard covers it, else the first. The names are read per
/// certificate when it loads (an SDS certificate can change), and a context
/// holds few, so a scan beats a map here and allocates nothing.
pub struct Certs {
    sources: Vec<CertSource>,
}

impl Certs {
    /// The server certificate for a ClientHello's `sni`.
    pub fn for_sni(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let (Some(sni), true) = (sni, self.sources.len() > 1) {
            let exact = self
                .sources
                .iter()
                .find_map(|s| s.pick(|c| c.names_exactly(sni)));
            // `www.example.com` is covered by `*.example.com`; the label
            // left of the first dot must not be empty.
            let wildcard = || {
                let dot = sni.get(1..)?.find('.')? + 1;
                let suffix = sni.get(dot..).filter(|s| s.len() > 1)?;
                self.sources
                    .iter()
                    .find_map(|s| s.pick(|c| c.names_wildcard(suffix)))
            };
            if let Some(k) = exact.or_else(wildcard) {
                return Some(k);
            }
        }
        self.current()
    }

    /// The first certificate available.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let found = self.sources.iter().find_map(|s| s.pick(|_| true));
        // A context without certificates is asked too (rustls's client asks
        // whatever the server requests): nothing is missing then.
        if found.is_none() && !self.sources.is_empty() {
            let missing = self.sources.iter().filter_map(|s| match s {
                CertSource::Sds(slot) => Some(slot),
                CertSource::Fixed(_) => None,
            });
            for slot in missing {
                if slot.first_miss() {
                    tracing::warn!(secret = %slot.name, "TLS certificate secret not available yet; refusing handshakes until it arrives");
                } else {
                    tracing::debug!(secret = %slot.name, "TLS certificate secret not available yet; refusing the handshake");
                }
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certs({})", self.sources.len())
    }
}

pub struct Common {
    pub certs: Certs,
    pub trust: Option<Trust>,
    pub alpn: Vec<Vec<u8>>,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// The suites and groups `tls_params` leaves this context.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    /// Secrets to subscribe to over ADS.
    pub ads_names: Vec<String>,
}

impl Common {
    pub fn compile(c: &CommonTlsContext, role: Role) -> Result<Common, ConfigError> {
        let unsupported = [
            (
                c.tls_certificate_provider_instance.is_some(),
                "tls_certificate_provider_instance",
            ),
            (
                c.custom_tls_certificate_selector.is_some(),
                "custom_tls_certificate_selector",
            ),
            (c.custom_handshaker.is_some(), "custom_handshaker"),
            (c.key_log.is_some(), "key_log"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(ConfigError::new(*field, "not supported by trellis"));
        }
        let provider =
            super::params::provider(c.tls_params.as_ref()).map_err(|e| e.at("tls_params"))?;
        let versions =
            super::versions(c.tls_params.as_ref(), role).map_err(|e| e.at("tls_params"))?;
        let mut ads_names = Vec::new();
        let mut certs = Vec::new();
        for (i, tc) in c.tls_certificates.iter().enumerate() {
            let k = certified_key(tc).map_err(|e| e.at(format!("tls_certificates[{i}]")))?;
            certs.push(CertSource::Fixed(Arc::new(ServedCert::new(k))));
        }
        for (i, s) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
            let r =
                resolve(s).map_err(|e| e.at(format!("tls_certificate_sds_secret_configs[{i}]")))?;
            if r.ads {
                ads_names.push(r.slot.name.clone());
            }
            certs.push(CertSource::Sds(r.slot));
        }
        let mut sds_trust = |s, path: &str| -> Result<Option<Arc<Slot>>, ConfigError> {
            let r = resolve(s).map_err(|e| e.at(path))?;
            if r.ads {
                ads_names.push(r.slot.name.clone());
            }
            Ok(Some(r.slot))
        };
        let trust = match &c.validation_context_type {
            None => None,
            Some(ValidationContextType::ValidationContext(v)) => {
                let fixed = validation(v).map_err(|e| e.at("validation_context"))?;
                if fixed.roots.is_none() {
                    return Err(ConfigError::new(
                        "validation_context.trusted_ca",
                        "is required to verify peers",
                    ));
                }
                Some(Trust { fixed, sds: None })
            }
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(Trust {
                fixed: Validation::default(),
                sds: sds_trust(s, "validation_context_sds_secret_config")?,
            }),
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                let path = "combined_validation_context";
                let fixed = match &cv.default_validation_context {
                    Some(v) => validation(v)
                        .map_err(|e| e.at(format!("{path}.default_validation_context")))?,
                    None => Validation::default(),
                };
                let Some(s) = &cv.validation_context_sds_secret_config else {
                    return Err(ConfigError::new(
                        format!("{path}.validation_context_sds_secret_config"),
                        "is required",
                    ));
                };
                let sds = sds_trust(s, &format!("{path}.validation_context_sds_secret_config"))?;
                Some(Trust { fixed, sds })
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "validation_context_certificate_provider",
                    "certificate providers are not supported by trellis",
                ))
            }
        };
        Ok(Common {
            certs: Certs { sources: certs },
            trust,
            alpn: c
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            versions,
            provider,
            ads_names,
        })
    }
}
