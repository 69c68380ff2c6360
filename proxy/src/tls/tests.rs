//! Secrets over ADS as the xDS client applies them: accepted, published to
//! the contexts that name them, and NACKed with the field when malformed.

use prost::Message;
use xds_protos::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{
    secret, SdsSecretConfig, Secret, TlsCertificate,
};

use super::material::SecretValue;
use super::secrets;
use crate::xds::resources::{Kind, Resources, Update};

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.to_string())),
        ..Default::default()
    })
}

fn secret_any(name: &str, chain: &str, key: &str) -> prost_types::Any {
    let s = Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    };
    prost_types::Any {
        type_url: xds_protos::type_url::SECRET.to_string(),
        value: s.encode_to_vec(),
    }
}

/// A secret by name, from ADS.
fn ads_reference(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(xds_protos::envoy::config::core::v3::ConfigSource {
            config_source_specifier: Some(
                xds_protos::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                    Default::default(),
                ),
            ),
            ..Default::default()
        }),
    }
}

fn update(any: prost_types::Any) -> Update {
    Update {
        kind: Kind::Secret,
        version_info: "1".into(),
        resources: vec![(String::new(), any)],
        removed: Vec::new(),
        replace_all: false,
    }
}

#[test]
fn ads_secrets_are_published_or_nacked_naming_the_field() {
    let cert = rcgen::generate_simple_self_signed(vec!["svc.test".to_string()]).expect("cert");
    let (chain, key) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let reference = ads_reference("ads_cert");
    let slot = secrets::resolve(&reference).expect("an ADS reference resolves before arrival");
    assert!(slot.ads);
    assert!(slot.slot.load().is_none());

    let mut res = Resources::default();
    res.apply(update(secret_any("ads_cert", &chain, &key)))
        .result
        .expect("a good secret is accepted");
    assert!(matches!(
        slot.slot.load().as_deref(),
        Some(SecretValue::Certificate(_))
    ));

    let e = res
        .apply(update(secret_any("ads_cert", &chain, "not a key")))
        .result
        .expect_err("a bad key is NACKed");
    assert!(
        e.contains("Secret 'ads_cert': tls_certificate.private_key"),
        "{e}"
    );
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    let e = res
        .apply(update(secret_any("ads_cert", "garbage", &key)))
        .result
        .expect_err("a bad certificate is NACKed");
    assert!(
        e.contains("Secret 'ads_cert': tls_certificate.certificate_chain"),
        "{e}"
    );
    // The accepted version stays in force.
    assert_eq!(res.secrets.len(), 1);
}

#[test]
fn a_missing_secret_is_a_first_miss_once() {
    let reference = ads_reference("never_sent");
    let slot = secrets::resolve(&reference).expect("ADS reference").slot;
    assert!(slot.load().is_none());
    assert!(slot.first_miss(), "the first handshake to miss it warns");
    for _ in 0..3 {
        assert!(!slot.first_miss(), "later ones do not");
    }
}
