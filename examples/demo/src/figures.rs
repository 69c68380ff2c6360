//! Per-hop figures read from each proxy's admin `/stats`, Envoy's names:
//! requests taken in by each connection manager
//! (`http.PREFIX.downstream_rq_total`; a sidecar's inbound prefix starts
//! with `ingress`, its outbound one with `egress`).

use std::collections::BTreeMap;

use crate::client::Http;

/// One proxy's counters, by Envoy stat name.
pub struct Stats(BTreeMap<String, u64>);

impl Stats {
    pub async fn scrape(http: &Http, admin: u16) -> Option<Stats> {
        let (status, body) = http
            .get(&format!("http://127.0.0.1:{admin}/stats"), None)
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let text = String::from_utf8_lossy(&body);
        let counters = text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect();
        Some(Stats(counters))
    }

    fn sum(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.0.iter().filter(|(k, _)| keep(k)).map(|(_, v)| v).sum()
    }

    /// Requests received on listeners of the given direction.
    pub fn requests_in(&self, prefix: &str) -> u64 {
        self.sum(|k| {
            k.starts_with(&format!("http.{prefix}")) && k.ends_with(".downstream_rq_total")
        })
    }
}
