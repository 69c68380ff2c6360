//! Envoy's `ssl.*` stats of a TLS listener (`listener.ADDR.ssl.`) or cluster
//! (`cluster.NAME.ssl.`), with Envoy 1.40's names and meanings (checked
//! against a stock Envoy): every handshake is counted once, as completed
//! (with what it negotiated) or failed (by why). Names that depend on the
//! handshake (`ssl.ciphers.X`, `ssl.versions.X`, `ssl.curves.X`) use
//! BoringSSL's spelling and, as in Envoy, appear once they are non-zero.

use std::io;
use std::sync::Arc;

use rustls::{CertificateError, CipherSuite, CommonState, HandshakeKind, NamedGroup};

use crate::stats::{Counter, Scope, StatSource, Visitor};

/// The suites of the `ring` provider, by the names Envoy reports.
const CIPHERS: [(CipherSuite, &str); 9] = [
    (
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_128_GCM_SHA256",
    ),
    (
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        "TLS_AES_256_GCM_SHA384",
    ),
    (
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

/// The key exchange groups of the `ring` provider, by Envoy's names.
const CURVES: [(NamedGroup, &str); 3] = [
    (NamedGroup::X25519, "X25519"),
    (NamedGroup::secp256r1, "P-256"),
    (NamedGroup::secp384r1, "P-384"),
];

const VERSIONS: [(rustls::ProtocolVersion, &str); 2] = [
    (rustls::ProtocolVersion::TLSv1_2, "TLSv1.2"),
    (rustls::ProtocolVersion::TLSv1_3, "TLSv1.3"),
];

/// The counters; the scope they render under is the owner's.
#[derive(Debug, Default)]
pub struct SslStats {
    /// Handshakes completed.
    pub handshake: Counter,
    /// Handshakes that failed for another reason than a refused peer
    /// certificate: an alert from the peer, bytes that are not TLS, no
    /// common parameters. A peer that just closes is not counted.
    pub connection_error: Counter,
    /// Refused: a client certificate was required and none was presented.
    pub fail_verify_no_cert: Counter,
    /// Refused: the certificate did not verify (expired, not yet valid,
    /// unknown CA, bad signature).
    pub fail_verify_error: Counter,
    /// Refused: no subject alternative name matched
    /// `match_typed_subject_alt_names` (App Mesh's allowed callers, or
    /// the backend's expected identity).
    pub fail_verify_san: Counter,
    /// Completed handshakes where the peer presented no certificate.
    pub no_certificate: Counter,
    /// Completed handshakes that resumed an earlier session.
    pub session_reused: Counter,
    versions: [Counter; VERSIONS.len()],
    ciphers: [Counter; CIPHERS.len()],
    curves: [Counter; CURVES.len()],
}

impl SslStats {
    /// A completed handshake, by what it negotiated.
    pub fn record_handshake(&self, conn: &CommonState) {
        self.handshake.inc();
        if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
        if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        if let Some(v) = conn.protocol_version() {
            bump(&self.versions, &VERSIONS, &v);
        }
        if let Some(s) = conn.negotiated_cipher_suite() {
            bump(&self.ciphers, &CIPHERS, &s.suite());
        }
        if let Some(g) = conn.negotiated_key_exchange_group() {
            bump(&self.curves, &CURVES, &g.name());
        }
    }

    /// A failed handshake, counted as Envoy counts it: a refused peer
    /// certificate by why, any other TLS failure as `connection_error`, and
    /// a socket error or a peer that closed mid-handshake not at all (Envoy
    /// leaves those to the connection stats).
    pub fn record_failure(&self, e: &io::Error) {
        use rustls::Error;
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
            return;
        };
        match tls {
            Error::NoCertificatesPresented => self.fail_verify_no_cert.inc(),
            // Only the SAN check (verify.rs) refuses with this one.
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
                self.fail_verify_san.inc()
            }
            Error::InvalidCertificate(_) => self.fail_verify_error.inc(),
            _ => self.connection_error.inc(),
        }
    }

    pub fn visit(&self, s: &Scope, v: &mut dyn Visitor) {
        v.counter(s, "ssl.handshake", self.handshake.get());
        v.counter(s, "ssl.connection_error", self.connection_error.get());
        v.counter(s, "ssl.fail_verify_no_cert", self.fail_verify_no_cert.get());
        v.counter(s, "ssl.fail_verify_error", self.fail_verify_error.get());
        v.counter(s, "ssl.fail_verify_san", self.fail_verify_san.get());
        v.counter(s, "ssl.no_certificate", self.no_certificate.get());
        v.counter(s, "ssl.session_reused", self.session_reused.get());
        named(s, v, "ssl.versions.", &self.versions, &VERSIONS);
        named(s, v, "ssl.ciphers.", &self.ciphers, &CIPHERS);
        named(s, v, "ssl.curves.", &self.curves, &CURVES);
    }
}

#[cfg(test)]
impl SslStats {
    /// Counts one of every negotiated name, so a test sees every family.
    pub(crate) fn count_every_name(&self) {
        for c in self
            .versions
            .iter()
            .chain(&self.ciphers)
            .chain(&self.curves)
        {
            c.inc();
        }
    }
}

/// The non-zero counters of a table, as `PREFIX` + name.
fn named<K>(
    s: &Scope,
    v: &mut dyn Visitor,
    prefix: &str,
    counters: &[Counter],
    table: &[(K, &str)],
) {
    for (c, (_, name)) in counters.iter().zip(table) {
        let n = c.get();
        if n > 0 {
            v.counter(s, &format!("{prefix}{name}"), n);
        }
    }
}

/// Increments the counter of `key` in a table parallel to `counters`.
fn bump<K: PartialEq>(counters: &[Counter], table: &[(K, &str)], key: &K) {
    if let Some(i) = table.iter().position(|(k, _)| k == key) {
        counters[i].inc();
    }
}

/// A cluster's `ssl.*` stats, registered on their own: they exist while the
/// cluster has an `UpstreamTlsContext`, and survive its updates by name.
#[derive(Debug)]
pub struct ClusterSslStats {
    scope: Scope,
    pub ssl: SslStats,
}

impl ClusterSslStats {
    pub fn new(cluster: Arc<str>) -> ClusterSslStats {
        ClusterSslStats {
            scope: Scope::new("cluster", Some(("envoy_cluster_name", cluster))),
            ssl: SslStats::default(),
        }
    }
}

impl StatSource for ClusterSslStats {
    fn visit(&self, v: &mut dyn Visitor) {
        self.ssl.visit(&self.scope, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{HistogramSnapshot, Scope};

    #[derive(Default)]
    struct Names(Vec<(String, u64)>);

    impl Visitor for Names {
        fn counter(&mut self, _: &Scope, name: &str, value: u64) {
            self.0.push((name.to_string(), value));
        }
        fn gauge(&mut self, _: &Scope, _: &str, _: i64) {}
        fn histogram(&mut self, _: &Scope, _: &str, _: &HistogramSnapshot) {}
    }

    fn failure(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn failures_are_counted_by_envoys_reason() {
        let s = SslStats::default();
        s.record_failure(&failure(rustls::Error::NoCertificatesPresented));
        s.record_failure(&failure(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        )));
        s.record_failure(&failure(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        s.record_failure(&failure(rustls::Error::InvalidCertificate(
            CertificateError::Expired,
        )));
        s.record_failure(&failure(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        s.record_failure(&io::Error::from(io::ErrorKind::UnexpectedEof));
        s.record_failure(&io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(s.fail_verify_no_cert.get(), 1);
        assert_eq!(s.fail_verify_san.get(), 1);
        assert_eq!(s.fail_verify_error.get(), 2);
        assert_eq!(
            s.connection_error.get(),
            1,
            "socket errors are not TLS errors"
        );
        assert_eq!(s.handshake.get(), 0);
    }

    /// A TLS 1.2 handshake in memory, the client offering `group` only;
    /// returns both ends.
    fn handshake(group: NamedGroup) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let cert = rcgen::generate_simple_self_signed(vec!["svc.test".into()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("key");
        let provider = crate::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let mut only = (*provider).clone();
        only.kx_groups.retain(|g| g.name() == group);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(only))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("svc.test").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client writes");
            s.read_tls(&mut &buf[..]).expect("server reads");
            s.process_new_packets().expect("server handshakes");
            buf.clear();
            s.write_tls(&mut buf).expect("server writes");
            c.read_tls(&mut &buf[..]).expect("client reads");
            c.process_new_packets().expect("client handshakes");
        }
        (c, s)
    }

    #[test]
    fn completed_handshakes_are_counted_by_what_they_negotiated() {
        let (client, server) = handshake(NamedGroup::secp256r1);
        let (up, down) = (SslStats::default(), SslStats::default());
        up.record_handshake(&client);
        down.record_handshake(&server);
        let mut names = Names::default();
        down.visit(&Scope::new("listener", None), &mut names);
        let have = |n: &str| names.0.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(have("ssl.handshake"), Some(1));
        assert_eq!(have("ssl.no_certificate"), Some(1), "the client sent none");
        assert_eq!(have("ssl.session_reused"), Some(0));
        assert_eq!(have("ssl.versions.TLSv1.2"), Some(1));
        assert_eq!(have("ssl.curves.P-256"), Some(1));
        assert_eq!(have("ssl.ciphers.ECDHE-ECDSA-AES256-GCM-SHA384"), Some(1));
        assert_eq!(have("ssl.versions.TLSv1.3"), None);
        assert_eq!(up.handshake.get(), 1);
        assert_eq!(up.no_certificate.get(), 0, "the server presented one");
    }

    #[test]
    fn negotiated_names_appear_once_seen() {
        let s = SslStats::default();
        bump(&s.ciphers, &CIPHERS, &CipherSuite::TLS13_AES_256_GCM_SHA384);
        bump(&s.versions, &VERSIONS, &rustls::ProtocolVersion::TLSv1_2);
        bump(&s.curves, &CURVES, &NamedGroup::secp256r1);
        let mut names = Names::default();
        s.visit(&Scope::new("listener", None), &mut names);
        let seen: Vec<&str> = names.0.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "ssl.handshake",
            "ssl.session_reused",
            "ssl.ciphers.TLS_AES_256_GCM_SHA384",
            "ssl.versions.TLSv1.2",
            "ssl.curves.P-256",
        ] {
            assert!(seen.contains(&want), "{want} missing from {seen:?}");
        }
        assert!(
            !seen.contains(&"ssl.versions.TLSv1.3"),
            "zero dynamic stats are hidden"
        );
    }
}
