//! Checks on the proxy's Prometheus exposition.

/// `promtool check metrics` findings other than the ones Envoy's names
/// force: counters without `_total`, and the gauge `membership_total`.
pub fn promtool_findings(exposition: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("counter metrics should have \"_total\" suffix"))
        // Envoy's own gauge name, which Envoy and App Mesh dashboards query:
        // the one `_total` gauge, kept for the same reason as the counters.
        .filter(|l| !l.starts_with("envoy_cluster_membership_total non-counter metrics"))
        .map(str::to_string)
        .collect()
}
