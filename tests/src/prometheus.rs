//! A real Prometheus server (Debian's `prometheus`) scraping processes under
//! test, so dashboards and alert rules are checked against what a running
//! mesh really emits, evaluated by the engine that will run them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::client;

pub struct Prometheus {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    _child: Child,
}

impl Prometheus {
    /// Starts Prometheus on `config` (prometheus.yml text), with `files`
    /// (name, text) written beside it (the rule files it names), and waits
    /// until it is ready.
    pub async fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write a rule file");
        }
        let addr = crate::loopback(crate::free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (apt-get install prometheus)");
        let prom = Prometheus {
            addr,
            dir,
            _child: child,
        };
        crate::eventually(Duration::from_secs(30), "Prometheus to be ready", || {
            let url = format!("http://{addr}/-/ready");
            async move {
                client::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ())
            }
        })
        .await;
        prom
    }

    /// The `data` of a successful `GET /api/v1/PATH`.
    pub async fn api(&self, path: &str) -> Value {
        let reply = client::get(&format!("http://{}/api/v1/{path}", self.addr))
            .await
            .expect("Prometheus answers");
        let doc: Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", reply.body_text()));
        assert_eq!(doc["status"], "success", "{path}: {doc}");
        doc["data"].clone()
    }

    /// An instant query's result vector; a query Prometheus refuses panics
    /// with its error.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", encode(expr))).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every metric name Prometheus has stored from its scrapes.
    pub async fn metric_names(&self) -> BTreeSet<String> {
        strings(&self.api("label/__name__/values").await)
    }

    /// Every label name on the stored series.
    pub async fn label_names(&self) -> BTreeSet<String> {
        strings(&self.api("labels").await)
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metric names and the label names a PromQL expression uses (label
/// names from matchers and from `by`/`without`/`on`/`ignoring`/`group_*`
/// clauses), so each can be looked up in what a scrape produced.
pub fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("regex");
    let matchers = Regex::new(r"\{([^}]*)\}").expect("regex");
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
        .expect("regex");
    let label = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").expect("regex");
    let ident = Regex::new(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*").expect("regex");
    let ranges = Regex::new(r"\[[^\]]*\]").expect("regex");

    let text = strings.replace_all(expr, "\"\"");
    let mut labels = BTreeSet::new();
    for m in matchers.captures_iter(&text) {
        labels.extend(label.captures_iter(&m[1]).map(|c| c[1].to_string()));
    }
    for g in grouping.captures_iter(&text) {
        labels.extend(
            g[1].split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    let text = matchers.replace_all(&text, " ");
    let text = grouping.replace_all(&text, " ");
    let text = ranges.replace_all(&text, " ");
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let metrics = ident
        .find_iter(&text)
        // A name followed by `(` is a function or an aggregation.
        .filter(|m| !text[m.end()..].trim_start().starts_with('('))
        .map(|m| m.as_str())
        .filter(|m| !KEYWORDS.contains(m) && !matches!(*m, "Inf" | "NaN"))
        .map(str::to_string)
        .collect();
    (metrics, labels)
}

#[cfg(test)]
mod tests {
    use super::names_in;

    #[test]
    fn metric_and_label_names_of_an_expression() {
        let (metrics, labels) = names_in(
            r#"1 - sum by (le, cluster) (rate(a_bucket{code="5", x=~"y|z"}[5m])) / on(cluster) group_left b_total + bool c offset 5m"#,
        );
        assert_eq!(
            metrics.into_iter().collect::<Vec<_>>(),
            ["a_bucket", "b_total", "c"]
        );
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            ["cluster", "code", "le", "x"]
        );
    }
}
