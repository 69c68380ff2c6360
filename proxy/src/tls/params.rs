//! `tls_params.cipher_suites` and `ecdh_curves`: Envoy's BoringSSL names
//! mapped onto the suites and groups of the `ring` provider. A list narrows
//! and orders what a context offers; a name trellis does not offer is an
//! error naming it, never a silently different handshake.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, NamedGroup};
use xds_protos::envoy::extensions::transport_sockets::tls::v3::TlsParameters;

use crate::config::ConfigError;

/// The TLS 1.2 suites trellis offers, by BoringSSL name; their IANA names
/// are accepted too, as BoringSSL accepts them.
const SUITES: [(&str, CipherSuite); 6] = [
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The groups trellis offers, by the names BoringSSL accepts for them.
const GROUPS: [(&str, NamedGroup); 6] = [
    ("X25519", NamedGroup::X25519),
    ("x25519", NamedGroup::X25519),
    ("P-256", NamedGroup::secp256r1),
    ("prime256v1", NamedGroup::secp256r1),
    ("P-384", NamedGroup::secp384r1),
    ("secp384r1", NamedGroup::secp384r1),
];

/// The provider a context with these parameters uses: the shared default
/// unless a cipher or curve list narrows it.
pub(super) fn provider(params: Option<&TlsParameters>) -> Result<Arc<CryptoProvider>, ConfigError> {
    let default = super::provider();
    let Some(p) = params else {
        return Ok(default);
    };
    if !p.signature_algorithms.is_empty() {
        return Err(ConfigError::new(
            "signature_algorithms",
            "is fixed to rustls's defaults (ECDSA, Ed25519, RSA-PSS and RSA PKCS#1 with SHA-2)",
        ));
    }
    if p.cipher_suites.is_empty() && p.ecdh_curves.is_empty() {
        return Ok(default);
    }
    let mut provider = (*default).clone();
    if !p.cipher_suites.is_empty() {
        let wanted = cipher_suites(&p.cipher_suites)?;
        // TLS 1.3's suites are not configurable, in Envoy either: they stay.
        let mut suites: Vec<_> = default
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        suites.extend(wanted.iter().filter_map(|w| {
            default
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *w)
                .copied()
        }));
        provider.cipher_suites = suites;
    }
    if !p.ecdh_curves.is_empty() {
        let wanted = groups(&p.ecdh_curves)?;
        provider.kx_groups = wanted
            .iter()
            .filter_map(|w| default.kx_groups.iter().find(|g| g.name() == *w).copied())
            .collect();
    }
    Ok(Arc::new(provider))
}

/// Envoy joins the entries with `:`; an entry may hold several names and
/// BoringSSL's equal-preference groups (`[A|B]`), which keep their order here.
fn cipher_suites(entries: &[String]) -> Result<Vec<CipherSuite>, ConfigError> {
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let names = entry
            .split(':')
            .flat_map(|n| n.trim_start_matches('[').trim_end_matches(']').split('|'));
        for name in names {
            let at = format!("cipher_suites[{i}]");
            let suite = SUITES
                .iter()
                .find(|(openssl, suite)| *openssl == name || suite.as_str() == Some(name))
                .map(|(_, s)| *s)
                .ok_or_else(|| ConfigError::new(at, not_offered_suite(name)))?;
            if !out.contains(&suite) {
                out.push(suite);
            }
        }
    }
    Ok(out)
}

fn not_offered_suite(name: &str) -> String {
    let offered: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
    if name.starts_with("TLS_AES_") || name.starts_with("TLS_CHACHA20_") {
        return format!(
            "{name} is a TLS 1.3 suite; TLS 1.3's suites are not configurable (as in Envoy)"
        );
    }
    format!(
        "{name:?} is not a cipher suite trellis offers; it offers forward-secret AEAD suites only: {}",
        offered.join(", ")
    )
}

fn groups(names: &[String]) -> Result<Vec<NamedGroup>, ConfigError> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let group = GROUPS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, g)| *g)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("ecdh_curves[{i}]"),
                    format!(
                        "{name:?} is not a curve trellis offers; it offers X25519, P-256 and P-384"
                    ),
                )
            })?;
        if !out.contains(&group) {
            out.push(group);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(suites: &[&str], curves: &[&str]) -> TlsParameters {
        TlsParameters {
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            ecdh_curves: curves.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn lists_narrow_and_order_tls12_suites_and_groups() {
        let p = provider(Some(&params(
            &[
                "[ECDHE-ECDSA-CHACHA20-POLY1305|ECDHE-ECDSA-AES128-GCM-SHA256]",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            &["P-384", "X25519"],
        )))
        .expect("valid lists");
        let tls12: Vec<CipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]
        );
        let tls13 = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .count();
        assert_eq!(tls13, 3, "TLS 1.3's suites are not narrowed");
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::secp384r1, NamedGroup::X25519]);
    }

    #[test]
    fn without_lists_the_shared_default_is_used() {
        let shared = super::super::provider();
        for p in [None, Some(&params(&[], &[]))] {
            assert!(Arc::ptr_eq(&provider(p).expect("default"), &shared));
        }
    }

    #[test]
    fn names_trellis_does_not_offer_are_errors_naming_the_entry() {
        let cases: [(&[&str], &[&str], &str, &str); 5] = [
            (
                &["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"],
                &[],
                "cipher_suites[1]",
                "\"ECDHE-RSA-AES128-SHA\" is not a cipher suite trellis offers",
            ),
            (&["NOT-A-CIPHER"], &[], "cipher_suites[0]", "NOT-A-CIPHER"),
            (
                &["TLS_AES_128_GCM_SHA256"],
                &[],
                "cipher_suites[0]",
                "TLS 1.3's suites are not configurable",
            ),
            (
                &[],
                &["X25519", "P-521"],
                "ecdh_curves[1]",
                "\"P-521\" is not a curve",
            ),
            (&[], &["BOGUS"], "ecdh_curves[0]", "BOGUS"),
        ];
        for (suites, curves, field, reason) in cases {
            let err = provider(Some(&params(suites, curves))).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(field), "{text}");
            assert!(text.contains(reason), "{text}");
        }
        let signed = TlsParameters {
            signature_algorithms: vec!["ecdsa_secp256r1_sha256".into()],
            ..Default::default()
        };
        let err = provider(Some(&signed)).expect_err("refused");
        assert!(err.to_string().contains("signature_algorithms"), "{err}");
    }
}
