//! Differential testing: the same requests through stock Envoy (the
//! reference) and through the proxy under test, on the same bootstrap and the
//! same upstreams, comparing what the client and the upstream observed.
//!
//! Each request is reduced to an [`Observation`]: a flat map from an aspect
//! (`status`, `upstream`, `upstream.path`, `upstream.header.x-forwarded-proto`,
//! `response.header.server`, ...) to a value, in which values that
//! legitimately differ between two correct proxies (request ids, timings,
//! dates) are replaced by `<present>`. Two maps that differ are a finding.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What a value becomes when only its presence is comparable.
pub const PRESENT: &str = "<present>";
/// What a missing aspect shows as in a report.
pub const ABSENT: &str = "<absent>";

/// One request and what the reference must do with it.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub method: Method,
    /// Host header (HTTP/1.1) or :authority (HTTP/2).
    pub host: String,
    /// Path and query, exactly as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub h2: bool,
    /// Compare the status only (e.g. connect failures, whose bodies carry
    /// OS- and implementation-specific error text).
    pub status_only: bool,
    /// What Envoy must answer: checked first, so that a case that does not
    /// exercise what its name says fails loudly instead of comparing two
    /// identical but meaningless answers (say, two 404s).
    pub expect_status: u16,
    /// Which upstream (Echo name) must answer on the reference, if any.
    pub expect_upstream: Option<String>,
    /// Aspects compared for presence only (e.g. `response.header.grpc-message`
    /// of a connect failure, whose text names implementation details).
    pub presence_only: Vec<String>,
    /// Aspects where trellis differs from Envoy on purpose (README lists
    /// them): left out of the comparison.
    pub deliberate: Vec<String>,
}

impl Case {
    pub fn get(name: &str, host: &str, path: &str) -> Case {
        Case {
            name: name.to_string(),
            method: Method::GET,
            host: host.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: String::new(),
            h2: false,
            status_only: false,
            expect_status: 200,
            expect_upstream: None,
            presence_only: Vec::new(),
            deliberate: Vec::new(),
        }
    }

    /// Leave `aspect` out: a documented, deliberate difference from Envoy.
    pub fn deliberate(mut self, aspect: &str) -> Case {
        self.deliberate.push(aspect.to_string());
        self
    }

    /// Compare `aspect` for presence only.
    pub fn presence_only(mut self, aspect: &str) -> Case {
        self.presence_only.push(aspect.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn post(mut self, body: &str) -> Case {
        self.method = Method::POST;
        self.body = body.to_string();
        self
    }

    pub fn h2(mut self) -> Case {
        self.h2 = true;
        self
    }

    pub fn status_only(mut self) -> Case {
        self.status_only = true;
        self
    }

    /// The reference must answer 200 from `upstream`.
    pub fn to(self, upstream: &str) -> Case {
        self.expect(200, Some(upstream))
    }

    pub fn expect(mut self, status: u16, upstream: Option<&str>) -> Case {
        self.expect_status = status;
        self.expect_upstream = upstream.map(str::to_string);
        self
    }
}

/// aspect → normalised value.
pub type Observation = BTreeMap<String, String>;

/// Response headers whose values legitimately differ between runs.
const VOLATILE_RESPONSE: &[&str] = &["date", "x-envoy-upstream-service-time"];

/// Sends `case` to a proxy at `addr` over a fresh connection and records what
/// the client and (through the echo upstream) the upstream saw.
pub async fn observe(addr: SocketAddr, case: &Case) -> Observation {
    let mut obs = Observation::new();
    let reply = match tokio::time::timeout(Duration::from_secs(15), send(addr, case)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            obs.insert("error".into(), format!("{e:#}"));
            return obs;
        }
        Err(_) => {
            obs.insert("error".into(), "no response within 15s".into());
            return obs;
        }
    };
    obs.insert("status".into(), reply.status.as_u16().to_string());
    if case.status_only {
        return obs;
    }
    let echoed: Option<serde_json::Value> = reply
        .headers
        .contains_key("x-upstream")
        .then(|| serde_json::from_slice(&reply.body).ok())
        .flatten();
    for name in reply.headers.keys() {
        let values: Vec<String> = reply
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let volatile = VOLATILE_RESPONSE.contains(&name.as_str())
            // The echo body embeds request ids, so its length may differ.
            || (name == "content-length" && echoed.is_some());
        let value = if volatile {
            PRESENT.to_string()
        } else {
            values.join(", ")
        };
        obs.insert(format!("response.header.{name}"), value);
    }
    if let Some(v) = reply.headers.get("x-upstream") {
        obs.insert(
            "upstream".into(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    match &echoed {
        Some(seen) => {
            for key in ["method", "path", "version", "body_len"] {
                obs.insert(format!("upstream.{key}"), json_text(&seen[key]));
            }
            let client_sent_id = case
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-request-id"));
            if let Some(headers) = seen["headers"].as_object() {
                for (name, value) in headers {
                    let value = if name == "x-request-id" && !client_sent_id {
                        PRESENT.to_string()
                    } else {
                        json_text(value)
                    };
                    obs.insert(format!("upstream.header.{name}"), value);
                }
            }
        }
        None => {
            obs.insert("body".into(), String::from_utf8_lossy(&reply.body).into());
        }
    }
    if let Some(trailers) = &reply.trailers {
        for (name, v) in trailers {
            obs.insert(
                format!("trailer.{name}"),
                String::from_utf8_lossy(v.as_bytes()).into(),
            );
        }
    }
    for aspect in &case.presence_only {
        if let Some(v) = obs.get_mut(aspect) {
            *v = PRESENT.to_string();
        }
    }
    for aspect in &case.deliberate {
        obs.remove(aspect);
    }
    obs
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Raw {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

/// One request on its own connection, with hyper's low-level client so the
/// Host / :authority is exactly the case's (not the proxy's address, which
/// differs between the two proxies) and no pool hides connection behaviour.
async fn send(addr: SocketAddr, case: &Case) -> anyhow::Result<Raw> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let io = TokioIo::new(stream);
    let body = Full::new(Bytes::copy_from_slice(case.body.as_bytes()));
    let resp = if case.h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let uri: Uri = format!("http://{}{}", case.host, case.path).parse()?;
        let mut req = Request::builder().method(case.method.clone()).uri(uri);
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        sender.send_request(req.body(body)?).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(case.method.clone())
            .uri(case.path.as_str())
            .header(http::header::HOST, case.host.as_str());
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        sender.send_request(req.body(body)?).await?
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Raw {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// One aspect on which the two proxies disagree.
#[derive(Debug, Clone)]
pub struct Difference {
    pub case: String,
    pub aspect: String,
    pub reference: String,
    pub candidate: String,
}

/// Aspects that still mean something when the two answers are different
/// kinds of answer (an error, or another status).
const HEADLINE: &[&str] = &["error", "status", "upstream", "body"];

/// Every aspect on which `candidate` differs from `reference`. When the
/// status differs (or one side failed) only the headline aspects are listed:
/// twenty rows of `<absent>` headers would bury the one that matters.
pub fn differences(
    case: &str,
    reference: &Observation,
    candidate: &Observation,
) -> Vec<Difference> {
    let kind_differs = ["error", "status"]
        .iter()
        .any(|k| reference.get(*k) != candidate.get(*k));
    let keys: BTreeSet<&String> = reference
        .keys()
        .chain(candidate.keys())
        .filter(|k| !kind_differs || HEADLINE.contains(&k.as_str()))
        .collect();
    keys.into_iter()
        .filter_map(|k| {
            let r = reference.get(k).map(String::as_str).unwrap_or(ABSENT);
            let c = candidate.get(k).map(String::as_str).unwrap_or(ABSENT);
            (r != c).then(|| Difference {
                case: case.to_string(),
                aspect: k.clone(),
                reference: r.to_string(),
                candidate: c.to_string(),
            })
        })
        .collect()
}

/// Where the reference itself does not do what a case expects: the case is
/// wrong (or Envoy changed), and comparing against it would prove nothing.
pub fn expectation_failures(case: &Case, reference: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    let status = reference
        .get("status")
        .map(String::as_str)
        .unwrap_or(ABSENT);
    if status != case.expect_status.to_string() {
        out.push(format!(
            "{}: Envoy answered {status}, the case expects {} ({reference:?})",
            case.name, case.expect_status
        ));
    }
    if let Some(want) = &case.expect_upstream {
        let got = reference
            .get("upstream")
            .map(String::as_str)
            .unwrap_or(ABSENT);
        if got != want {
            out.push(format!(
                "{}: upstream {got} answered on Envoy, the case expects {want}",
                case.name
            ));
        }
    }
    out
}

/// A fixed-width table of differences, one row each, for a failure message.
pub fn table(rows: &[Difference], reference: &str, candidate: &str) -> String {
    fn clip(s: &str) -> String {
        let s = s.replace('\n', "\\n");
        if s.chars().count() > 60 {
            format!("{}…", s.chars().take(59).collect::<String>())
        } else {
            s
        }
    }
    let header = ["case", "aspect", reference, candidate];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|d| {
            [
                clip(&d.case),
                clip(&d.aspect),
                clip(&d.reference),
                clip(&d.candidate),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: [&str; 4]| {
        let mut s = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count()));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    out.push_str(&widths.map(|w| "-".repeat(w)).join("-+-"));
    out.push('\n');
    for row in &cells {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3]]));
    }
    out
}

/// Differences counted by aspect, most frequent first: one missing header
/// shows up in every case, and this says so in one line.
pub fn summary(diffs: &[Difference]) -> String {
    let mut by_aspect: BTreeMap<&str, usize> = BTreeMap::new();
    for d in diffs {
        *by_aspect.entry(d.aspect.as_str()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = by_aspect.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = String::from("\nby aspect:\n");
    for (aspect, n) in counts {
        out.push_str(&format!("  {n:>4} × {aspect}\n"));
    }
    out
}

/// Runs every case against both proxies (reference first) and panics with
/// all expectation failures and differences at once. `TRELLIS_DIFF_DUMP=1`
/// prints everything the reference did, to review or write new cases.
pub async fn compare(
    cases: &[Case],
    reference: SocketAddr,
    candidate: SocketAddr,
    candidate_name: &str,
) {
    let mut wrong_cases = Vec::new();
    let mut diffs = Vec::new();
    let dump = std::env::var_os("TRELLIS_DIFF_DUMP").is_some();
    for case in cases {
        let r = observe(reference, case).await;
        let c = observe(candidate, case).await;
        if dump {
            eprintln!(
                "== {} ({} {} host={}{})",
                case.name,
                case.method,
                case.path,
                case.host,
                if case.h2 { ", h2" } else { "" }
            );
            for (k, v) in &r {
                eprintln!("   {k}: {v}");
            }
        }
        wrong_cases.extend(expectation_failures(case, &r));
        diffs.extend(differences(&case.name, &r, &c));
    }
    let mut msg = String::new();
    if !wrong_cases.is_empty() {
        msg.push_str(&format!(
            "{} case(s) where Envoy itself does not do what the case expects (fix the case):\n  {}\n\n",
            wrong_cases.len(),
            wrong_cases.join("\n  ")
        ));
    }
    if !diffs.is_empty() {
        let cases_hit: BTreeSet<&str> = diffs.iter().map(|d| d.case.as_str()).collect();
        msg.push_str(&format!(
            "{} difference(s) in {} of {} case(s), envoy vs {candidate_name}:\n{}",
            diffs.len(),
            cases_hit.len(),
            cases.len(),
            table(&diffs, "envoy", candidate_name)
        ));
        msg.push_str(&summary(&diffs));
    }
    assert!(msg.is_empty(), "\n{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(pairs: &[(&str, &str)]) -> Observation {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lists_changed_missing_and_extra_aspects() {
        let r = obs(&[
            ("status", "200"),
            ("upstream.path", "/new/x"),
            ("upstream.header.x-forwarded-proto", "http"),
        ]);
        let c = obs(&[
            ("status", "200"),
            ("upstream.path", "/x"),
            ("upstream.header.keep-alive", "timeout=5"),
        ]);
        let d = differences("rewrite", &r, &c);
        let rows: Vec<(&str, &str, &str)> = d
            .iter()
            .map(|d| {
                (
                    d.aspect.as_str(),
                    d.reference.as_str(),
                    d.candidate.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("upstream.header.keep-alive", ABSENT, "timeout=5"),
                ("upstream.header.x-forwarded-proto", "http", ABSENT),
                ("upstream.path", "/new/x", "/x"),
            ]
        );
        let t = table(&d, "envoy", "trellis");
        assert!(t.starts_with("case    | aspect"), "{t}");
        assert!(t.contains("rewrite | upstream.path"), "{t}");
    }

    #[test]
    fn a_different_status_reports_only_headline_aspects() {
        let r = obs(&[("status", "200"), ("upstream", "a"), ("upstream.path", "/")]);
        let c = obs(&[("status", "404"), ("body", "")]);
        let aspects: Vec<String> = differences("x", &r, &c)
            .into_iter()
            .map(|d| d.aspect)
            .collect();
        assert_eq!(aspects, ["body", "status", "upstream"]);
    }

    #[test]
    fn identical_observations_have_no_differences() {
        let r = obs(&[("status", "200"), ("response.header.date", PRESENT)]);
        assert!(differences("x", &r, &r.clone()).is_empty());
    }
}
