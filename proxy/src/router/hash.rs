//! A route's `hash_policy`, compiled: the key RING_HASH and MAGLEV clusters
//! place a request by (header, cookie, query parameter or source IP).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};
use xds_protos::envoy::config::route::v3::route_action::{
    hash_policy::PolicySpecifier, HashPolicy,
};

use super::convert::{reject_if, unsupported};
use crate::config::ConfigError;
use crate::upstream::lb::hash_bytes;

#[derive(Debug)]
enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Peer,
}

#[derive(Debug)]
struct Policy {
    source: Source,
    terminal: bool,
}

#[derive(Debug, Default)]
pub struct HashPolicies(Vec<Policy>);

impl HashPolicies {
    pub(crate) fn compile(list: &[HashPolicy]) -> Result<HashPolicies, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, p)| compile_one(p).map_err(|e| e.at(format!("hash_policy[{i}]"))))
            .collect::<Result<_, _>>()
            .map(HashPolicies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Envoy's combination: each policy that yields a value folds it in as
    /// `rotl(hash, 1) ^ value`; a terminal policy that yields one ends the
    /// list. `None` when no policy yields anything (the LB then picks at
    /// random).
    pub fn hash(&self, headers: &HeaderMap, query: Option<&str>, peer: IpAddr) -> Option<u64> {
        let mut out: Option<u64> = None;
        for p in &self.0 {
            let v = match &p.source {
                Source::Header(h) => {
                    let mut joined = Vec::new();
                    for v in headers.get_all(h) {
                        joined.extend_from_slice(v.as_bytes());
                    }
                    headers.contains_key(h).then(|| hash_bytes(&joined))
                }
                Source::Cookie(name) => cookie(headers, name).map(|v| hash_bytes(v.as_bytes())),
                Source::Query(name) => query
                    .and_then(|q| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix(name.as_str())?.strip_prefix('='))
                    })
                    .map(|v| hash_bytes(v.as_bytes())),
                Source::Peer => Some(hash_bytes(peer.to_string().as_bytes())),
            };
            if let Some(v) = v {
                out = Some(out.map_or(v, |h| h.rotate_left(1) ^ v));
                if p.terminal {
                    break;
                }
            }
        }
        out
    }
}

fn compile_one(p: &HashPolicy) -> Result<Policy, ConfigError> {
    let source = match &p.policy_specifier {
        Some(PolicySpecifier::Header(h)) => {
            reject_if(h.regex_rewrite.is_some(), "header.regex_rewrite")?;
            Source::Header(
                HeaderName::from_bytes(h.header_name.as_bytes()).map_err(|e| {
                    ConfigError::new("header.header_name", format!("invalid header name: {e}"))
                })?,
            )
        }
        Some(PolicySpecifier::Cookie(c)) => {
            // With a ttl Envoy generates the cookie when absent; not yet here.
            reject_if(c.ttl.is_some(), "cookie.ttl")?;
            if c.name.is_empty() {
                return Err(ConfigError::new("cookie.name", "must not be empty"));
            }
            Source::Cookie(c.name.clone())
        }
        Some(PolicySpecifier::QueryParameter(q)) => {
            if q.name.is_empty() {
                return Err(ConfigError::new(
                    "query_parameter.name",
                    "must not be empty",
                ));
            }
            Source::Query(q.name.clone())
        }
        Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => Source::Peer,
        Some(PolicySpecifier::ConnectionProperties(_)) => {
            return Err(ConfigError::new(
                "connection_properties.source_ip",
                "must be true",
            ))
        }
        Some(PolicySpecifier::FilterState(_)) => return Err(unsupported("filter_state")),
        None => return Err(ConfigError::new("", "a policy specifier is required")),
    };
    Ok(Policy {
        source,
        terminal: p.terminal,
    })
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header,
    };

    fn policies() -> HashPolicies {
        HashPolicies::compile(&[
            HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(Header {
                    header_name: "x-user".into(),
                    ..Default::default()
                })),
                terminal: true,
            },
            HashPolicy {
                policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                    name: "session".into(),
                    ..Default::default()
                })),
                terminal: false,
            },
            HashPolicy {
                policy_specifier: Some(PolicySpecifier::ConnectionProperties(
                    ConnectionProperties { source_ip: true },
                )),
                terminal: false,
            },
        ])
        .unwrap()
    }

    #[test]
    fn header_is_terminal_then_cookie_and_ip_combine() {
        let p = policies();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        assert_eq!(p.hash(&h, None, ip), Some(hash_bytes(b"alice")));
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; session=s1".parse().unwrap());
        let both = p.hash(&h, None, ip);
        assert_eq!(
            both,
            Some(hash_bytes(b"s1").rotate_left(1) ^ hash_bytes(b"10.0.0.1"))
        );
        assert_eq!(HashPolicies::default().hash(&h, None, ip), None);
    }
}
