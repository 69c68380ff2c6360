//! Peer certificate verification: chain to the configured trust anchors,
//! then Envoy's `match_typed_subject_alt_names` (any one matcher accepting
//! any one SAN of its type). A refusal is logged with its reason: expired,
//! not yet valid, unknown CA, or which SANs did not match.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::material::{SecretValue, Validation};
use super::secrets::Slot;
use crate::router::string::StringMatcher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Dns,
    Uri,
    Email,
    Ip,
}

#[derive(Debug)]
pub struct SanMatcher {
    pub(crate) kind: SanKind,
    pub(crate) matcher: StringMatcher,
}

/// The subject alternative names of a certificate, as strings by kind.
pub fn sans(cert: &CertificateDer<'_>) -> Vec<(SanKind, String)> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) => Some((SanKind::Dns, s.to_string())),
            GeneralName::URI(s) => Some((SanKind::Uri, s.to_string())),
            GeneralName::RFC822Name(s) => Some((SanKind::Email, s.to_string())),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                    _ => None,
                };
                ip.map(|ip| (SanKind::Ip, ip.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Where a context's trust comes from: its own validation context, and,
/// when it names one, an SDS validation secret whose trust replaces the
/// static one and whose SAN matchers add to the static ones (Envoy's
/// combined validation context).
pub struct Trust {
    pub fixed: Validation,
    pub sds: Option<Arc<Slot>>,
}

impl Trust {
    fn dynamic(&self) -> Result<Option<Arc<Validation>>, Error> {
        let Some(slot) = &self.sds else {
            return Ok(None);
        };
        match slot.load().as_deref() {
            Some(SecretValue::Validation(v)) => Ok(Some(v.clone())),
            _ => {
                if slot.first_miss() {
                    tracing::warn!(secret = %slot.name, "validation context secret not available yet; refusing peers until it arrives");
                } else {
                    tracing::debug!(secret = %slot.name, "validation context secret not available yet; refusing the peer");
                }
                Err(Error::General(format!(
                    "validation context secret '{}' not available",
                    slot.name
                )))
            }
        }
    }

    /// Whether any trust anchors are configured at all (else, as in Envoy,
    /// the upstream's certificate is not verified).
    pub fn verifies(&self) -> bool {
        self.fixed.roots.is_some() || self.sds.is_some()
    }

    /// Checks the SAN matchers and logs a refusal naming what the peer had.
    fn check_sans(
        &self,
        dynamic: Option<&Validation>,
        cert: &CertificateDer<'_>,
    ) -> Result<(), Error> {
        let matchers: Vec<&SanMatcher> = self
            .fixed
            .sans
            .iter()
            .chain(dynamic.iter().flat_map(|d| d.sans.iter()))
            .collect();
        if matchers.is_empty() {
            return Ok(());
        }
        let have = sans(cert);
        let ok = matchers.iter().any(|m| {
            have.iter()
                .any(|(k, v)| *k == m.kind && m.matcher.matches(v.as_bytes()))
        });
        if ok {
            return Ok(());
        }
        let presented: Vec<&str> = have.iter().map(|(_, v)| v.as_str()).collect();
        tracing::warn!(
            peer_sans = ?presented,
            "peer certificate refused: no subject alternative name matches match_typed_subject_alt_names"
        );
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// Downstream: asks for (and with `require_client_certificate`, demands) a
/// client certificate and verifies it.
#[derive(Debug)]
pub struct ClientVerifier {
    pub trust: Trust,
    pub required: bool,
}

impl ClientVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let dynamic = self.trust.dynamic()?;
        let inner = dynamic
            .as_ref()
            .filter(|d| d.roots.is_some())
            .map_or_else(|| self.trust.fixed.client_webpki(), |d| d.client_webpki())
            .ok_or_else(|| Error::General("no trusted CA configured".into()))?;
        inner.verify_client_cert(end_entity, intermediates, now)?;
        self.trust.check_sans(dynamic.as_deref(), end_entity)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Upstream: verifies the server's chain and SANs, never its name against the
/// SNI (Envoy checks names only through SAN matchers). With no trust
/// configured, Envoy accepts any server certificate; so does this.
#[derive(Debug)]
pub struct ServerVerifier {
    pub trust: Trust,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("static_roots", &self.fixed.roots.is_some())
            .field("sans", &self.fixed.sans.len())
            .field("sds", &self.sds.as_ref().map(|s| &s.name))
            .finish()
    }
}

impl ServerVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        if !self.trust.verifies() {
            return Ok(());
        }
        let dynamic = self.trust.dynamic()?;
        let roots = dynamic
            .as_ref()
            .and_then(|d| d.roots.clone())
            .or_else(|| self.trust.fixed.roots.clone())
            .ok_or_else(|| Error::General("no trusted CA configured".into()))?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            super::provider().signature_verification_algorithms.all,
        )?;
        self.trust.check_sans(dynamic.as_deref(), end_entity)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
