//! Envoy's admin renderings: `name: value` text, its JSON form, and
//! Prometheus exposition with Envoy's tag extraction and a HELP line for
//! every family.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{help::help, HistogramSnapshot, Scope, Store, Visitor, BUCKETS_MS};

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(Box<HistogramSnapshot>),
}

/// One stat as every rendering needs it.
struct Sample {
    text_name: String,
    value: Value,
    family: String,
    labels: Labels,
}

/// Labels a scope adds to every series: its own tag, then the node's
/// (App Mesh mesh and virtual node), set once at start.
struct Collect<'a> {
    samples: Vec<Sample>,
    node_labels: &'a [(String, String)],
}

impl Collect<'_> {
    fn push(&mut self, scope: &Scope, name: &str, value: Value) {
        let mut text = scope.kind.to_string();
        for (_, v) in scope.tag.iter().chain(&scope.labels) {
            text.push('.');
            text.push_str(v);
        }
        text.push('.');
        text.push_str(name);
        let mut labels = Vec::new();
        // A label with no key is a literal segment of the name: it stays in
        // the family (`http.P.rds.R.x` is `envoy_http_rds_x`).
        let mut kind = scope.kind.to_string();
        for (_, v) in scope.labels.iter().filter(|(k, _)| k.is_empty()) {
            kind.push('_');
            kind.push_str(v);
        }
        let (family, extra) = prometheus_family(&kind, name);
        if let Some(l) = extra {
            labels.push(l);
        }
        for (k, v) in scope.tag.iter().chain(&scope.labels) {
            if !k.is_empty() {
                labels.push((k.to_string(), v.to_string()));
            }
        }
        labels.extend(self.node_labels.iter().cloned());
        self.samples.push(Sample {
            text_name: text,
            value,
            family: sanitize(&family),
            labels,
        });
    }
}

impl Visitor for Collect<'_> {
    fn counter(&mut self, scope: &Scope, name: &str, value: u64) {
        self.push(scope, name, Value::Counter(value));
    }
    fn gauge(&mut self, scope: &Scope, name: &str, value: i64) {
        self.push(scope, name, Value::Gauge(value));
    }
    fn histogram(&mut self, scope: &Scope, name: &str, value: &HistogramSnapshot) {
        self.push(scope, name, Value::Histogram(Box::new(value.clone())));
    }
}

/// Envoy's tag extraction for response codes: `upstream_rq_2xx` becomes
/// `upstream_rq_xx{envoy_response_code_class="2"}`, `upstream_rq_503` becomes
/// `upstream_rq{envoy_response_code="503"}`.
fn prometheus_family(kind: &str, name: &str) -> (String, Option<(String, String)>) {
    if let Some(found) = ssl_family(kind, name) {
        return found;
    }
    if let Some((base, code)) = name.rsplit_once('_') {
        let b = code.as_bytes();
        if b.len() == 3 && b[0].is_ascii_digit() && &code[1..] == "xx" && base.ends_with("_rq") {
            return (
                format!("envoy_{kind}_{base}_xx"),
                Some(("envoy_response_code_class".into(), code[..1].into())),
            );
        }
        if b.len() == 3 && b.iter().all(u8::is_ascii_digit) && (base.ends_with("_rq")) {
            return (
                format!("envoy_{kind}_{base}"),
                Some(("envoy_response_code".into(), code.into())),
            );
        }
    }
    (format!("envoy_{kind}_{name}"), None)
}

/// Envoy's tag extraction for what a TLS handshake negotiated:
/// `ssl.versions.TLSv1.3` becomes `ssl_versions{envoy_ssl_version="TLSv1.3"}`;
/// a listener's cipher is tagged `envoy_ssl_cipher`, a cluster's
/// `cipher_suite` (Envoy 1.40's two extractors).
fn ssl_family(kind: &str, name: &str) -> Option<(String, Option<(String, String)>)> {
    let (stem, value) = ["ssl.versions.", "ssl.ciphers.", "ssl.curves."]
        .iter()
        .find_map(|p| Some((*p, name.strip_prefix(p)?)))?;
    let label = match (stem, kind) {
        ("ssl.versions.", _) => "envoy_ssl_version",
        ("ssl.curves.", _) => "envoy_ssl_curve",
        ("ssl.ciphers.", "cluster") => "cipher_suite",
        _ => "envoy_ssl_cipher",
    };
    let family = format!(
        "envoy_{kind}_{}",
        stem.trim_end_matches('.').replace('.', "_")
    );
    Some((family, Some((label.to_string(), value.to_string()))))
}

fn collect(store: &Store, extra: &dyn Fn(&mut dyn Visitor)) -> Vec<Sample> {
    let node_labels = store.node_labels();
    let mut c = Collect {
        samples: Vec::new(),
        node_labels: &node_labels,
    };
    store.visit(&mut c);
    extra(&mut c);
    c.samples
}

/// Envoy's quantiles in `/stats`, and their names in `supported_quantiles`.
const QUANTILES: [(f64, &str); 10] = [
    (0.0, "P0"),
    (0.25, "P25"),
    (0.5, "P50"),
    (0.75, "P75"),
    (0.9, "P90"),
    (0.95, "P95"),
    (0.99, "P99"),
    (0.995, "P99.5"),
    (0.999, "P99.9"),
    (1.0, "P100"),
];

/// `P0(nan,nan) P25(...)` as Envoy prints a histogram: interval and
/// cumulative values, which are the same here (no flush intervals).
fn quantiles_text(h: &HistogramSnapshot) -> String {
    let mut out = String::new();
    for (i, (q, name)) in QUANTILES.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match h.quantile(*q) {
            Some(v) => {
                let _ = write!(out, "{name}({v},{v})");
            }
            None => {
                let _ = write!(out, "{name}(nan,nan)");
            }
        }
    }
    out
}

fn sorted_filtered(
    store: &Store,
    extra: &dyn Fn(&mut dyn Visitor),
    filter: Option<&regex::Regex>,
) -> Vec<Sample> {
    let mut samples = collect(store, extra);
    samples.retain(|s| filter.is_none_or(|f| f.is_match(&s.text_name)));
    samples.sort_by(|a, b| a.text_name.cmp(&b.text_name));
    samples
}

/// `/stats`: one `name: value` line per stat, sorted, optionally filtered by
/// a regex; histograms after the counters and gauges, as in Envoy.
pub fn render_text(
    store: &Store,
    extra: &dyn Fn(&mut dyn Visitor),
    filter: Option<&regex::Regex>,
) -> String {
    let samples = sorted_filtered(store, extra, filter);
    let mut out = String::new();
    for s in &samples {
        match &s.value {
            Value::Counter(v) => {
                let _ = writeln!(out, "{}: {v}", s.text_name);
            }
            Value::Gauge(v) => {
                let _ = writeln!(out, "{}: {v}", s.text_name);
            }
            Value::Histogram(_) => {}
        }
    }
    for s in &samples {
        if let Value::Histogram(h) = &s.value {
            let _ = writeln!(out, "{}: {}", s.text_name, quantiles_text(h));
        }
    }
    out
}

/// `/stats?format=json`: Envoy's shape, `{"stats": [{"name", "value"}, ...,
/// {"histograms": {"supported_quantiles", "computed_quantiles"}}]}`.
pub fn render_json(
    store: &Store,
    extra: &dyn Fn(&mut dyn Visitor),
    filter: Option<&regex::Regex>,
) -> serde_json::Value {
    let samples = sorted_filtered(store, extra, filter);
    let mut stats = Vec::new();
    let mut computed = Vec::new();
    for s in samples {
        match s.value {
            Value::Counter(v) => stats.push(serde_json::json!({"name": s.text_name, "value": v})),
            Value::Gauge(v) => stats.push(serde_json::json!({"name": s.text_name, "value": v})),
            Value::Histogram(h) => {
                let values: Vec<_> = QUANTILES
                    .iter()
                    .map(|(q, _)| {
                        let v = h.quantile(*q);
                        serde_json::json!({"interval": v, "cumulative": v})
                    })
                    .collect();
                computed.push(serde_json::json!({"name": s.text_name, "values": values}));
            }
        }
    }
    if !computed.is_empty() {
        let supported: Vec<f64> = QUANTILES.iter().map(|(q, _)| q * 100.0).collect();
        stats.push(serde_json::json!({"histograms": {
            "supported_quantiles": supported,
            "computed_quantiles": computed,
        }}));
    }
    serde_json::json!({ "stats": stats })
}

enum Family {
    Scalar(&'static str, Vec<(Labels, i128)>),
    Histogram(Vec<(Labels, HistogramSnapshot)>),
}

/// `/stats/prometheus`: families grouped, each with HELP and TYPE lines.
pub fn render_prometheus(store: &Store, extra: &dyn Fn(&mut dyn Visitor)) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for s in collect(store, extra) {
        let entry = |kind| Family::Scalar(kind, Vec::new());
        match s.value {
            Value::Counter(v) => {
                if let Family::Scalar(_, series) =
                    families.entry(s.family).or_insert_with(|| entry("counter"))
                {
                    series.push((s.labels, i128::from(v)));
                }
            }
            Value::Gauge(v) => {
                // A gauge Envoy named `..._total` (`membership_total`) keeps
                // its name for dashboards; typed untyped, since Prometheus
                // reserves the suffix for counters.
                let kind = if s.family.ends_with("_total") {
                    "untyped"
                } else {
                    "gauge"
                };
                if let Family::Scalar(_, series) =
                    families.entry(s.family).or_insert_with(|| entry(kind))
                {
                    series.push((s.labels, i128::from(v)));
                }
            }
            Value::Histogram(h) => {
                if let Family::Histogram(series) = families
                    .entry(s.family)
                    .or_insert_with(|| Family::Histogram(Vec::new()))
                {
                    series.push((s.labels, *h));
                }
            }
        }
    }
    let mut out = String::new();
    for (family, f) in families {
        let _ = writeln!(out, "# HELP {family} {}", help(&family));
        match f {
            Family::Scalar(kind, mut series) => {
                series.sort();
                let _ = writeln!(out, "# TYPE {family} {kind}");
                for (labels, value) in series {
                    line(&mut out, &family, "", &labels, None);
                    let _ = writeln!(out, " {value}");
                }
            }
            Family::Histogram(mut series) => {
                series.sort_by(|a, b| a.0.cmp(&b.0));
                let _ = writeln!(out, "# TYPE {family} histogram");
                for (labels, h) in series {
                    for (bound, cum) in BUCKETS_MS.iter().zip(h.cumulative) {
                        line(
                            &mut out,
                            &family,
                            "_bucket",
                            &labels,
                            Some(&bound.to_string()),
                        );
                        let _ = writeln!(out, " {cum}");
                    }
                    line(&mut out, &family, "_bucket", &labels, Some("+Inf"));
                    let _ = writeln!(out, " {}", h.count);
                    line(&mut out, &family, "_sum", &labels, None);
                    let _ = writeln!(out, " {}", h.sum_ms);
                    line(&mut out, &family, "_count", &labels, None);
                    let _ = writeln!(out, " {}", h.count);
                }
            }
        }
    }
    out
}

fn line(out: &mut String, family: &str, suffix: &str, labels: &Labels, le: Option<&str>) {
    out.push_str(family);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out.push('}');
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_become_labels() {
        assert_eq!(
            prometheus_family("cluster", "upstream_rq_2xx"),
            (
                "envoy_cluster_upstream_rq_xx".to_string(),
                Some(("envoy_response_code_class".into(), "2".into()))
            )
        );
        assert_eq!(
            prometheus_family("cluster", "upstream_rq_503"),
            (
                "envoy_cluster_upstream_rq".to_string(),
                Some(("envoy_response_code".into(), "503".into()))
            )
        );
        assert_eq!(
            prometheus_family("cluster", "upstream_rq_total").0,
            "envoy_cluster_upstream_rq_total"
        );
    }

    #[test]
    fn negotiated_tls_parameters_become_labels() {
        let fam = |kind, name| prometheus_family(kind, name);
        assert_eq!(
            fam("listener", "ssl.versions.TLSv1.3"),
            (
                "envoy_listener_ssl_versions".to_string(),
                Some(("envoy_ssl_version".into(), "TLSv1.3".into()))
            )
        );
        assert_eq!(
            fam("cluster", "ssl.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256").1,
            Some((
                "cipher_suite".into(),
                "ECDHE-ECDSA-AES128-GCM-SHA256".into()
            ))
        );
        assert_eq!(
            fam("listener", "ssl.ciphers.TLS_AES_128_GCM_SHA256").1,
            Some(("envoy_ssl_cipher".into(), "TLS_AES_128_GCM_SHA256".into()))
        );
        assert_eq!(
            fam("cluster", "ssl.curves.P-256"),
            (
                "envoy_cluster_ssl_curves".to_string(),
                Some(("envoy_ssl_curve".into(), "P-256".into()))
            )
        );
        assert_eq!(fam("listener", "ssl.handshake").1, None);
    }

    #[test]
    fn every_family_has_help() {
        use super::super::{ClusterStats, HttpStats, ListenerStats, StatSource, TcpStats};
        use std::sync::{Arc, Weak};
        let store = Store::default();
        let c = Arc::new(ClusterStats::new(Arc::from("c")));
        let h = Arc::new(HttpStats::new(Arc::from("h")));
        let l = Arc::new(ListenerStats::new("127.0.0.1:1".parse().unwrap()));
        l.tls.store(true, std::sync::atomic::Ordering::Relaxed);
        let t = Arc::new(TcpStats::new(Arc::from("t")));
        let ssl = Arc::new(crate::tls::ClusterSslStats::new(Arc::from("c")));
        let m = Arc::new(super::super::appmesh::MeshStats::default());
        c.upstream_rq.record(200);
        h.downstream_rq.record(503);
        ssl.ssl.count_every_name();
        l.ssl.count_every_name();
        let d = std::time::Duration::ZERO;
        m.downstream(Some("spiffe://td/mesh/m/virtualNode/a"), 503, d);
        m.upstream(&Arc::from("svc"), &Arc::from("node"), 200, d);
        for s in [
            Arc::downgrade(&ssl) as Weak<dyn StatSource>,
            Arc::downgrade(&c) as Weak<dyn StatSource>,
            Arc::downgrade(&h) as Weak<dyn StatSource>,
            Arc::downgrade(&l) as Weak<dyn StatSource>,
            Arc::downgrade(&t) as Weak<dyn StatSource>,
            Arc::downgrade(&m) as Weak<dyn StatSource>,
        ] {
            store.register(s);
        }
        let out = render_prometheus(&store, &crate::access_log::visit_stats);
        let placeholder = help("envoy_no_such_stat");
        for family in out.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap();
            assert_ne!(help(name), placeholder, "{name} has no HELP text");
        }
    }

    #[test]
    fn a_gauge_named_total_is_untyped() {
        use std::sync::Arc;
        let store = Store::default();
        let c = Arc::new(super::super::ClusterStats::new(Arc::from("web")));
        store.register(Arc::downgrade(&c) as std::sync::Weak<dyn super::super::StatSource>);
        c.membership_total.set(2);
        let out = render_prometheus(&store, &|_| {});
        assert!(
            out.contains("# TYPE envoy_cluster_membership_total untyped\n"),
            "{out}"
        );
        assert!(out.contains("envoy_cluster_membership_total{envoy_cluster_name=\"web\"} 2\n"));
        assert!(out.contains("# TYPE envoy_cluster_membership_healthy gauge\n"));
    }

    #[test]
    fn histograms_render_as_prometheus_histograms() {
        use std::sync::Arc;
        let store = Store::default();
        let c = Arc::new(super::super::ClusterStats::new(Arc::from("web")));
        store.register(Arc::downgrade(&c) as std::sync::Weak<dyn super::super::StatSource>);
        c.upstream_rq_time
            .record(std::time::Duration::from_millis(3));
        let out = render_prometheus(&store, &|_| {});
        assert!(out.contains("# TYPE envoy_cluster_upstream_rq_time histogram\n"));
        assert!(out.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"web\",le=\"5\"} 1\n"
        ));
        assert!(
            out.contains("envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"web\"} 1\n")
        );
        let text = render_text(&store, &|_| {}, None);
        assert!(text.contains("cluster.web.upstream_rq_time: P0("), "{text}");
    }
}
