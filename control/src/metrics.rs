//! trellis-control's own Prometheus metrics: API requests by operation and
//! status code, connected proxies, and per xDS type the pushes, ACKs, NACKs
//! and the time from a push to the proxy's answer. Rendered as Prometheus
//! text on the API port at `GET /metrics`.
//!
//! The control plane is not a hot path: one short lock per API request,
//! relaxed atomics for the xDS counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use xds_protos::type_url;

/// The xDS types by their short names (Istio's and Envoy's stat prefixes).
const TYPES: [(&str, &str); 5] = [
    (type_url::CLUSTER, "cds"),
    (type_url::CLUSTER_LOAD_ASSIGNMENT, "eds"),
    (type_url::LISTENER, "lds"),
    (type_url::ROUTE_CONFIGURATION, "rds"),
    (type_url::SECRET, "sds"),
];

/// Upper bounds of the push → ACK histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket, not cumulative; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }
}

#[derive(Default)]
struct TypeCounters {
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    /// Push sent → ACK or NACK received.
    latency: Histogram,
}

/// Picks one counter of a type's, for rendering.
type Field = fn(&TypeCounters) -> &AtomicU64;

#[derive(Default)]
pub struct Metrics {
    /// (operation, HTTP status) → requests.
    api: Mutex<BTreeMap<(String, u16), u64>>,
    sotw_streams: AtomicI64,
    delta_streams: AtomicI64,
    types: [TypeCounters; TYPES.len()],
    translations: AtomicU64,
    /// Model changes a stream skipped without translating: none of what
    /// its last translation read had changed.
    skipped: AtomicU64,
    /// ADS streams refused for their node token, by [`REFUSALS`].
    refused: [AtomicU64; REFUSALS.len()],
}

/// Why a stream's node token was refused: none presented, or not the node's.
const REFUSALS: [&str; 2] = ["missing", "mismatch"];

impl Metrics {
    fn of(&self, url: &str) -> Option<&TypeCounters> {
        let i = TYPES.iter().position(|(u, _)| *u == url)?;
        self.types.get(i)
    }

    pub fn api_request(&self, operation: &str, status: u16) {
        let mut api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        *api.entry((operation.to_string(), status)).or_default() += 1;
    }

    pub fn stream_opened(&self, delta: bool) {
        self.streams(delta).fetch_add(1, Relaxed);
    }

    pub fn stream_closed(&self, delta: bool) {
        self.streams(delta).fetch_sub(1, Relaxed);
    }

    fn streams(&self, delta: bool) -> &AtomicI64 {
        if delta {
            &self.delta_streams
        } else {
            &self.sotw_streams
        }
    }

    pub fn pushed(&self, url: &str) {
        if let Some(t) = self.of(url) {
            t.pushes.fetch_add(1, Relaxed);
        }
    }

    /// The proxy answered a push after `latency` (`None`: the push was not
    /// timed, as for a reconnecting proxy that already held the version).
    pub fn answered(&self, url: &str, nack: bool, latency: Option<Duration>) {
        let Some(t) = self.of(url) else { return };
        if nack {
            t.nacks.fetch_add(1, Relaxed);
        } else {
            t.acks.fetch_add(1, Relaxed);
        }
        if let Some(d) = latency {
            t.latency.observe(d);
        }
    }

    pub fn translated(&self) {
        self.translations.fetch_add(1, Relaxed);
    }

    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Relaxed);
    }

    /// A stream refused for its token; `reason` is one of [`REFUSALS`].
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let api = self.api.lock().unwrap_or_else(|p| p.into_inner()).clone();
        family(
            &mut out,
            "trellis_control_api_requests_total",
            "counter",
            "App Mesh API and /trellis/v1 requests, by operation and HTTP status code.",
        );
        for ((op, code), n) in &api {
            let _ = writeln!(
                out,
                "trellis_control_api_requests_total{{operation=\"{}\",code=\"{code}\"}} {n}",
                escape(op)
            );
        }
        family(
            &mut out,
            "trellis_control_xds_connected_proxies",
            "gauge",
            "Open ADS streams, by protocol variant (sotw or delta).",
        );
        for (stream, n) in [("sotw", &self.sotw_streams), ("delta", &self.delta_streams)] {
            let _ = writeln!(
                out,
                "trellis_control_xds_connected_proxies{{stream=\"{stream}\"}} {}",
                n.load(Relaxed)
            );
        }
        let counters: [(&str, &str, Field); 3] = [
            (
                "trellis_control_xds_pushes_total",
                "xDS responses sent to proxies, by type.",
                |t| &t.pushes,
            ),
            (
                "trellis_control_xds_acks_total",
                "xDS responses proxies ACKed, by type.",
                |t| &t.acks,
            ),
            (
                "trellis_control_xds_nacks_total",
                "xDS responses proxies NACKed (refused), by type.",
                |t| &t.nacks,
            ),
        ];
        for (name, help, get) in counters {
            family(&mut out, name, "counter", help);
            for ((_, short), t) in TYPES.iter().zip(&self.types) {
                let _ = writeln!(out, "{name}{{type=\"{short}\"}} {}", get(t).load(Relaxed));
            }
        }
        let name = "trellis_control_xds_push_ack_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "Time from sending an xDS response to the proxy's ACK or NACK of it, by type.",
        );
        for ((_, short), t) in TYPES.iter().zip(&self.types) {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += t.latency.counts[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{type=\"{short}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += t.latency.counts[BUCKETS.len()].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{type=\"{short}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = t.latency.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{type=\"{short}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{type=\"{short}\"}} {cumulative}");
        }
        for (name, help, value) in [
            (
                "trellis_control_xds_translations_total",
                "Per-proxy translations of the mesh model into xDS resources.",
                &self.translations,
            ),
            (
                "trellis_control_xds_translations_skipped_total",
                "Model changes a proxy's stream skipped because nothing its resources depend on changed.",
                &self.skipped,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
        let name = "trellis_control_xds_streams_refused_total";
        family(
            &mut out,
            name,
            "counter",
            "ADS streams refused for their node token, by reason (missing, or mismatch: not the node's or revoked).",
        );
        for (reason, n) in REFUSALS.iter().zip(&self.refused) {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", n.load(Relaxed));
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.api_request("CreateMesh", 200);
        m.api_request("CreateMesh", 200);
        m.api_request("Bad\"Op", 400);
        m.stream_opened(false);
        m.stream_opened(true);
        m.stream_closed(true);
        m.pushed(type_url::CLUSTER);
        m.answered(type_url::CLUSTER, false, Some(Duration::from_millis(3)));
        m.answered(type_url::CLUSTER, true, Some(Duration::from_secs(60)));
        m.refused("missing");
        let text = m.render();
        for line in [
            "trellis_control_api_requests_total{operation=\"CreateMesh\",code=\"200\"} 2",
            "trellis_control_api_requests_total{operation=\"Bad\\\"Op\",code=\"400\"} 1",
            "trellis_control_xds_connected_proxies{stream=\"sotw\"} 1",
            "trellis_control_xds_connected_proxies{stream=\"delta\"} 0",
            "trellis_control_xds_pushes_total{type=\"cds\"} 1",
            "trellis_control_xds_acks_total{type=\"cds\"} 1",
            "trellis_control_xds_nacks_total{type=\"cds\"} 1",
            "trellis_control_xds_push_ack_seconds_bucket{type=\"cds\",le=\"0.0025\"} 0",
            "trellis_control_xds_push_ack_seconds_bucket{type=\"cds\",le=\"0.005\"} 1",
            "trellis_control_xds_push_ack_seconds_bucket{type=\"cds\",le=\"30\"} 1",
            "trellis_control_xds_push_ack_seconds_bucket{type=\"cds\",le=\"+Inf\"} 2",
            "trellis_control_xds_push_ack_seconds_count{type=\"cds\"} 2",
            "trellis_control_xds_streams_refused_total{reason=\"missing\"} 1",
            "trellis_control_xds_streams_refused_total{reason=\"mismatch\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
