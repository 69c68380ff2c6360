//! Reading `/stats/prometheus` in tests: `promtool check metrics`, and
//! series looked up by family and labels.

use std::io::Write;

/// `promtool check metrics` findings other than the one the contract allows
/// (Envoy's counter names, without `_total`).
pub fn promtool_findings(exposition: &str) -> Vec<String> {
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
        .map(str::to_string)
        .collect()
}

/// The value of the exact series `series` (name and labels as rendered).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the series of `family` that has exactly `labels`, in any order.
pub fn series(exposition: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(family)?.strip_prefix('{')?;
        let (inside, value) = rest.split_once("} ")?;
        let mut have: Vec<(&str, &str)> = inside
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        let mut want = labels.to_vec();
        have.sort();
        want.sort();
        (have == want).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_match_by_label_set() {
        let text = "x_total{b=\"2\",a=\"1\"} 7\nx_total{a=\"1\"} 3\n";
        assert_eq!(
            series(text, "x_total", &[("a", "1"), ("b", "2")]),
            Some(7.0)
        );
        assert_eq!(series(text, "x_total", &[("a", "1")]), Some(3.0));
        assert_eq!(series(text, "x_total", &[("b", "2")]), None);
    }
}
