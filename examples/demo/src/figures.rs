//! Per-hop figures read from each proxy's admin `/stats`, Envoy's names:
//! requests in (`http.*.downstream_rq_total`), requests out
//! (`cluster.*.upstream_rq_total`), and mTLS handshakes.

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

    /// Requests sent to a cluster whose name contains `part`.
    pub fn requests_to(&self, part: &str) -> u64 {
        self.sum(|k| {
            k.starts_with("cluster.")
                && k.ends_with(".upstream_rq_total")
                && k.contains(part)
                && !k.contains("xds_cluster")
        })
    }
}
