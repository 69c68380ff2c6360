//! Virtual-host selection by authority, with Envoy's precedence: exact, then
//! the longest `*suffix`, then the longest `prefix*`, then `*`.
//!
//! Lookup cost is bounded by the number of distinct wildcard lengths (at most
//! the longest domain), not by the number of virtual hosts: each length has
//! its own hash map, scanned from longest to shortest, as Envoy does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use crate::config::ConfigError;

#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    exact: HashMap<String, usize>,
    /// Keyed by the length of the literal part; iterated longest first.
    suffixes: BTreeMap<usize, HashMap<String, usize>>,
    prefixes: BTreeMap<usize, HashMap<String, usize>>,
    default: Option<usize>,
}

impl DomainIndex {
    /// Registers `domain` for virtual host `vhost`; the error path is
    /// relative to the virtual host.
    pub(crate) fn insert(
        &mut self,
        domain: &str,
        index: usize,
        vhost: usize,
    ) -> Result<(), ConfigError> {
        let err = |reason: String| Err(ConfigError::new(format!("domains[{index}]"), reason));
        if domain.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return err("domain contains a NUL, CR or LF".into());
        }
        let domain = domain.to_ascii_lowercase();
        let fresh = if domain == "*" {
            if self.default.is_some() {
                return err("only a single wildcard domain `*` is permitted".into());
            }
            self.default = Some(vhost);
            true
        } else if let Some(suffix) = domain.strip_prefix('*') {
            let map = self.suffixes.entry(suffix.len()).or_default();
            map.insert(suffix.to_owned(), vhost).is_none()
        } else if let Some(prefix) = domain.strip_suffix('*') {
            let map = self.prefixes.entry(prefix.len()).or_default();
            map.insert(prefix.to_owned(), vhost).is_none()
        } else {
            self.exact.insert(domain.clone(), vhost).is_none()
        };
        if fresh {
            Ok(())
        } else {
            err(format!(
                "duplicate domain {domain}; domains must be unique across virtual hosts"
            ))
        }
    }

    /// `host` is matched with its port unless `ignore_port` (Envoy's
    /// `ignore_port_in_host_matching`) is set.
    pub(crate) fn find(&self, host: &str, ignore_port: bool) -> Option<usize> {
        let host = if ignore_port { strip_port(host) } else { host };
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(&v) = self.exact.get(host.as_ref()) {
            return Some(v);
        }
        // `>=` is skipped: `*.foo.com` must not match `.foo.com`.
        let shorter = |len: usize| len < host.len();
        let suffix = self
            .suffixes
            .iter()
            .rev()
            .filter(|(&len, _)| shorter(len))
            .find_map(|(&len, map)| host.get(host.len() - len..).and_then(|s| map.get(s)));
        let prefix = || {
            self.prefixes
                .iter()
                .rev()
                .filter(|(&len, _)| shorter(len))
                .find_map(|(&len, map)| host.get(..len).and_then(|p| map.get(p)))
        };
        suffix.or_else(prefix).copied().or(self.default)
    }
}

/// Envoy's `getPortStart`: the last `:` that is not inside an IPv6 literal.
fn strip_port(host: &str) -> &str {
    match (host.rfind(':'), host.rfind(']')) {
        (Some(colon), Some(bracket)) if bracket > colon => host,
        (Some(colon), _) => &host[..colon],
        (None, _) => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(domains: &[&[&str]]) -> DomainIndex {
        let mut idx = DomainIndex::default();
        for (v, ds) in domains.iter().enumerate() {
            for (i, d) in ds.iter().enumerate() {
                idx.insert(d, i, v).unwrap();
            }
        }
        idx
    }

    #[test]
    fn precedence_and_longest_wildcard() {
        let idx = index(&[
            &["example.com"],
            &["*.wild.com"],
            &["*-x.wild.com"],
            &["pre*"],
            &["prefix*"],
            &["*"],
        ]);
        assert_eq!(idx.find("EXAMPLE.com", false), Some(0));
        assert_eq!(idx.find("a.wild.com", false), Some(1));
        assert_eq!(idx.find("a-x.wild.com", false), Some(2));
        assert_eq!(
            idx.find(".wild.com", false),
            Some(5),
            "wildcard must cover a character"
        );
        assert_eq!(idx.find("prefoo", false), Some(3));
        assert_eq!(idx.find("prefixed", false), Some(4));
        assert_eq!(idx.find("pre", false), Some(5));
        assert_eq!(idx.find("other", false), Some(5));
    }

    /// Verified against Envoy 1.40: the port is part of the host unless
    /// `ignore_port_in_host_matching`, so `example.com:80` does not match
    /// `example.com` nor `*.wild.com`, but does match `pre*`.
    #[test]
    fn port_is_part_of_the_host() {
        let idx = index(&[
            &["example.com"],
            &["port.com:8080"],
            &["*.wild.com"],
            &["pre*"],
        ]);
        assert_eq!(idx.find("example.com:80", false), None);
        assert_eq!(idx.find("example.com:80", true), Some(0));
        assert_eq!(idx.find("port.com:8080", false), Some(1));
        assert_eq!(idx.find("port.com", false), None);
        assert_eq!(idx.find("a.wild.com:80", false), None);
        assert_eq!(idx.find("prefoo:90", false), Some(3));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn duplicates_are_rejected_case_insensitively() {
        let mut idx = DomainIndex::default();
        idx.insert("a.com", 0, 0).unwrap();
        let e = idx.insert("A.com", 3, 1).unwrap_err();
        assert_eq!(e.path, "domains[3]");
        idx.insert("*", 0, 0).unwrap();
        assert!(idx.insert("*", 1, 1).is_err());
    }
}
