//! Per-hop figures read from each proxy's admin API, Envoy's names:
//! requests taken in by each connection manager
//! (`http.PREFIX.downstream_rq_total`; a sidecar's outbound prefix starts
//! with `egress`), requests counted by the caller's verified mTLS identity
//! (`appmesh.MESH.CALLER.downstream_rq_total`), and the backend route's
//! weights as the frontend's sidecar holds them (`/config_dump`).

use std::collections::BTreeMap;

use serde_json::Value;

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

    /// Requests received by connection managers whose prefix starts so.
    pub fn requests_in(&self, prefix: &str) -> u64 {
        self.sum(|k| {
            k.starts_with(&format!("http.{prefix}")) && k.ends_with(".downstream_rq_total")
        })
    }

    /// Requests whose caller presented the mesh identity of `caller` (a
    /// virtual node or gateway of mesh `demo`): what crossed mTLS.
    pub fn requests_from(&self, caller: &str) -> u64 {
        self.0
            .get(&format!("appmesh.demo.{caller}.downstream_rq_total"))
            .copied()
            .unwrap_or(0)
    }
}

/// The weights (v1, v2) of the route to `backend.demo.local` in force in
/// the proxy whose admin port is given: what the canary step changed.
pub async fn backend_weights(http: &Http, admin: u16) -> Option<(u64, u64)> {
    let (status, body) = http
        .get(&format!("http://127.0.0.1:{admin}/config_dump"), None)
        .await
        .ok()?;
    if !status.is_success() {
        return None;
    }
    let dump: Value = serde_json::from_slice(&body).ok()?;
    let route = dump["configs"]
        .as_array()?
        .iter()
        .filter_map(|c| c["dynamic_route_configs"].as_array())
        .flatten()
        .filter_map(|r| r["route_config"]["virtual_hosts"].as_array())
        .flatten()
        .find(|vh| {
            vh["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == "backend.demo.local"))
        })
        .map(|vh| &vh["routes"][0]["route"])?;
    // Zero-weight targets are left out, and a single one is a plain cluster.
    let targets: Vec<(&str, u64)> = match route["weighted_clusters"]["clusters"].as_array() {
        Some(clusters) => clusters
            .iter()
            .filter_map(|c| Some((c["name"].as_str()?, c["weight"].as_u64()?)))
            .collect(),
        None => vec![(route["cluster"].as_str()?, 1)],
    };
    let total: u64 = targets.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let share = |version: &str| {
        let w: u64 = targets
            .iter()
            .filter(|(name, _)| name.contains(&format!("_backend-{version}_")))
            .map(|(_, w)| w)
            .sum();
        w * 100 / total
    };
    Some((share("v1"), share("v2")))
}
