//! Envoy's two admin renderings: `name: value` text and Prometheus exposition.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Scope, Store, Visitor};

type Labels = Vec<(String, String)>;

/// One stat as both renderings need it.
struct Sample {
    text_name: String,
    counter: bool,
    value: i128,
    family: String,
    labels: Labels,
}

struct Collect(Vec<Sample>);

impl Collect {
    fn push(&mut self, scope: &Scope, name: &str, counter: bool, value: i128) {
        let text = match &scope.tag {
            Some((_, v)) => format!("{}.{}.{}", scope.kind, v, name),
            None => format!("{}.{}", scope.kind, name),
        };
        let mut labels = Vec::new();
        let (family, extra) = prometheus_family(scope.kind, name);
        if let Some(l) = extra {
            labels.push(l);
        }
        if let Some((k, v)) = &scope.tag {
            labels.push((k.to_string(), v.to_string()));
        }
        self.0.push(Sample {
            text_name: text,
            counter,
            value,
            family,
            labels,
        });
    }
}

impl Visitor for Collect {
    fn counter(&mut self, scope: &Scope, name: &str, value: u64) {
        self.push(scope, name, true, i128::from(value));
    }
    fn gauge(&mut self, scope: &Scope, name: &str, value: i64) {
        self.push(scope, name, false, i128::from(value));
    }
}

/// Envoy's tag extraction for response codes: `upstream_rq_2xx` becomes
/// `upstream_rq_xx{envoy_response_code_class="2"}`, `upstream_rq_503` becomes
/// `upstream_rq{envoy_response_code="503"}`.
fn prometheus_family(kind: &str, name: &str) -> (String, Option<(String, String)>) {
    if let Some((base, code)) = name.rsplit_once('_') {
        let b = code.as_bytes();
        if b.len() == 3 && b[0].is_ascii_digit() && &code[1..] == "xx" {
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

fn collect(store: &Store, extra: &dyn Fn(&mut dyn Visitor)) -> Collect {
    let mut c = Collect(Vec::new());
    store.visit(&mut c);
    extra(&mut c);
    c
}

/// `/stats`: one `name: value` line per stat, sorted, optionally filtered by a regex.
pub fn render_text(
    store: &Store,
    extra: &dyn Fn(&mut dyn Visitor),
    filter: Option<&regex::Regex>,
) -> String {
    let mut c = collect(store, extra);
    c.0.sort_by(|a, b| a.text_name.cmp(&b.text_name));
    let mut out = String::new();
    for Sample {
        text_name: name,
        value,
        ..
    } in c.0
    {
        if filter.is_none_or(|f| f.is_match(&name)) {
            let _ = writeln!(out, "{name}: {value}");
        }
    }
    out
}

/// `/stats/prometheus`: families grouped, with HELP and TYPE lines.
pub fn render_prometheus(store: &Store, extra: &dyn Fn(&mut dyn Visitor)) -> String {
    let c = collect(store, extra);
    let mut families: BTreeMap<String, (bool, Vec<(Labels, i128)>)> = BTreeMap::new();
    for Sample {
        counter,
        value,
        family,
        labels,
        ..
    } in c.0
    {
        let family = sanitize(&family);
        families
            .entry(family)
            .or_insert((counter, Vec::new()))
            .1
            .push((labels, value));
    }
    let mut out = String::new();
    for (family, (counter, mut series)) in families {
        series.sort();
        let kind = if counter { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {family} Envoy stat {family}");
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (labels, value) in series {
            out.push_str(&family);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
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
}
