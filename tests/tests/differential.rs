//! Differential tests: one bootstrap with a broad route configuration, the
//! same requests through stock Envoy and through trellis-proxy, and every
//! observable difference reported in one table (see `trellis_tests::diff`).
//!
//! Envoy is required: without it these tests fail with install instructions.
//! With `TRELLIS_TEST_PROXY=envoy` the candidate is a second Envoy, which
//! checks that the comparison ignores only what legitimately varies.
//!
//! Every case states what Envoy must do (status, answering upstream); those
//! expectations were checked against Envoy 1.40, and comments mark where its
//! behaviour is surprising.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_tests::config::{cluster, http_proxy_with_route_config};
use trellis_tests::diff::{compare, Case};
use trellis_tests::process::{proxy_under_test, require_envoy, testing_envoy, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{loopback, refused_address, within};

/// Route-configuration-level header mutations (12-space indent).
const ROUTE_CONFIG_EXTRA: &str = r#"            request_headers_to_add:
            - header: { key: x-rc-req, value: rc }
            - header: { key: x-prec, value: route_config }
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            request_headers_to_remove: [x-strip-rc]
            response_headers_to_add:
            - header: { key: x-rc-resp, value: rc }
            response_headers_to_remove: [x-rm-rc]
"#;

/// Virtual hosts for domain matching, then `main.test` with one route per
/// feature, then the catch-all.
const VHOSTS: &str = r#"          - name: exact
            domains: ["exact.example", "exact.example:8080"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: exact }
          - name: suffix_long
            domains: ["*.deep.example"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: suffix_long }
          - name: suffix
            domains: ["*.example"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: suffix }
          - name: prefix
            domains: ["prefix.*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: prefix }
          - name: port
            domains: ["port.test:9000"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: port }
          - name: main
            domains: ["main.test", "main.test:8080"]
            request_headers_to_add:
            - header: { key: x-vh-req, value: vh }
            - header: { key: x-prec, value: vhost }
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            request_headers_to_remove: [x-strip-vh]
            response_headers_to_add:
            - header: { key: x-vh-resp, value: vh }
            response_headers_to_remove: [x-rm-vh]
            routes:
            - match: { path: "/exact/path" }
              route: { cluster: r_path }
            - match: { prefix: "/CaseInsensitive/", case_sensitive: false }
              route: { cluster: r_case }
            - match: { safe_regex: { regex: "/regex/[0-9]+" } }
              route: { cluster: r_regex }
            - match: { path_separated_prefix: "/sep" }
              route: { cluster: r_sep }
            - match: { prefix: "/hdr", headers: [{ name: x-exact, string_match: { exact: "yes" } }] }
              route: { cluster: hdr_exact }
            - match: { prefix: "/hdr", headers: [{ name: x-pre, string_match: { prefix: "ab" } }] }
              route: { cluster: hdr_prefix }
            - match: { prefix: "/hdr", headers: [{ name: x-suf, string_match: { suffix: "yz" } }] }
              route: { cluster: hdr_suffix }
            - match: { prefix: "/hdr", headers: [{ name: x-con, string_match: { contains: "mid" } }] }
              route: { cluster: hdr_contains }
            - match: { prefix: "/hdr", headers: [{ name: x-re, string_match: { safe_regex: { regex: "v[0-9]+" } } }] }
              route: { cluster: hdr_regex }
            - match: { prefix: "/hdr", headers: [{ name: x-present, present_match: true }] }
              route: { cluster: hdr_present }
            - match: { prefix: "/hdr", headers: [{ name: x-range, range_match: { start: 10, end: 20 } }] }
              route: { cluster: hdr_range }
            - match:
                prefix: "/hdr"
                headers:
                - { name: x-inv, string_match: { exact: "bad" }, invert_match: true }
                - { name: x-inv-enable, present_match: true }
              route: { cluster: hdr_invert }
            - match: { prefix: "/hdr" }
              route: { cluster: hdr_none }
            - match: { prefix: "/q", query_parameters: [{ name: debug, string_match: { exact: "1" } }] }
              route: { cluster: q_exact }
            - match: { prefix: "/q", query_parameters: [{ name: flag, present_match: true }] }
              route: { cluster: q_present }
            - match: { prefix: "/q" }
              route: { cluster: q_none }
            - match: { prefix: "/g", grpc: {} }
              route: { cluster: grpc }
            - match: { prefix: "/g" }
              route: { cluster: grpc_none }
            - match: { prefix: "/weighted" }
              route:
                weighted_clusters:
                  clusters:
                  - name: w_a
                    weight: 100
                    request_headers_to_add:
                    - header: { key: x-weighted, value: a }
                  - { name: w_b, weight: 0 }
            - match: { prefix: "/wb" }
              route:
                weighted_clusters:
                  clusters:
                  - { name: w_a, weight: 0 }
                  - { name: w_b, weight: 100 }
            - match: { prefix: "/ch" }
              route: { cluster_header: x-cluster }
            - match: { prefix: "/pr/" }
              route: { cluster: rewrite, prefix_rewrite: "/new/" }
            - match: { prefix: "/pr2" }
              route: { cluster: rewrite, prefix_rewrite: "/" }
            - match: { prefix: "/pr3/" }
              route: { cluster: rewrite, prefix_rewrite: "/" }
            - match: { prefix: "/pr4" }
              route: { cluster: rewrite, prefix_rewrite: "/v2" }
            - match: { path_separated_prefix: "/ps" }
              route: { cluster: rewrite, prefix_rewrite: "/other" }
            - match: { prefix: "/PRCASE/", case_sensitive: false }
              route: { cluster: rewrite, prefix_rewrite: "/lower/" }
            - match: { prefix: "/rr/" }
              route:
                cluster: rewrite
                regex_rewrite: { pattern: { regex: "^/rr/([^/]+)/(.*)$" }, substitution: "/\\2/\\1" }
            - match: { prefix: "/rrall/" }
              route:
                cluster: rewrite
                regex_rewrite: { pattern: { regex: "o" }, substitution: "0" }
            - match: { prefix: "/hrl" }
              route: { cluster: rewrite, host_rewrite_literal: rewritten.example }
            - match: { prefix: "/ahr" }
              route: { cluster: auto, auto_host_rewrite: true }
            - match: { prefix: "/nohost" }
              route: { cluster: rewrite, auto_host_rewrite: true }
            - match: { prefix: "/hrh" }
              route: { cluster: rewrite, host_rewrite_header: x-new-host }
            - match: { prefix: "/mut" }
              route: { cluster: headers }
              request_headers_to_add:
              - header: { key: x-route-req, value: route }
              - header: { key: x-prec, value: route }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - header: { key: x-append, value: route }
                append_action: APPEND_IF_EXISTS_OR_ADD
              - header: { key: x-add-absent, value: route }
                append_action: ADD_IF_ABSENT
              request_headers_to_remove: [x-strip-route]
              response_headers_to_add:
              - header: { key: x-route-resp, value: route }
              - header: { key: content-type, value: text/overridden }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              response_headers_to_remove: [x-rm-route]
            - match: { prefix: "/redir/scheme" }
              redirect: { scheme_redirect: https }
            - match: { prefix: "/redir/https" }
              redirect: { https_redirect: true }
            - match: { prefix: "/redir/host" }
              redirect: { host_redirect: elsewhere.example }
            - match: { prefix: "/redir/port" }
              redirect: { port_redirect: 8443 }
            - match: { prefix: "/redir/pathq" }
              redirect: { path_redirect: "/new/path?fixed=1" }
            - match: { prefix: "/redir/path" }
              redirect: { path_redirect: "/new/path" }
            - match: { prefix: "/redir/prefix/" }
              redirect: { prefix_rewrite: "/moved/" }
            - match: { prefix: "/redir/regex/" }
              redirect: { regex_rewrite: { pattern: { regex: "^/redir/regex/(.*)$" }, substitution: "/r/\\1" } }
            - match: { prefix: "/redir/strip" }
              redirect: { host_redirect: elsewhere.example, strip_query: true }
            - match: { prefix: "/redir/301" }
              redirect: { path_redirect: "/r", response_code: MOVED_PERMANENTLY }
            - match: { prefix: "/redir/302" }
              redirect: { path_redirect: "/r", response_code: FOUND }
            - match: { prefix: "/redir/303" }
              redirect: { path_redirect: "/r", response_code: SEE_OTHER }
            - match: { prefix: "/redir/307" }
              redirect: { path_redirect: "/r", response_code: TEMPORARY_REDIRECT }
            - match: { prefix: "/redir/308" }
              redirect: { path_redirect: "/r", response_code: PERMANENT_REDIRECT }
            - match: { prefix: "/redir/all" }
              redirect:
                scheme_redirect: https
                host_redirect: all.example
                port_redirect: 444
                path_redirect: "/all"
                strip_query: true
                response_code: TEMPORARY_REDIRECT
            - match: { path: "/direct/ok" }
              direct_response: { status: 200, body: { inline_string: "ok" } }
            - match: { path: "/direct/teapot" }
              direct_response: { status: 418, body: { inline_string: "teapot" } }
              response_headers_to_add:
              - header: { key: x-direct, value: "yes" }
            - match: { path: "/direct/empty" }
              direct_response: { status: 503 }
            - match: { path: "/direct/204" }
              direct_response: { status: 204 }
            - match: { prefix: "/empty" }
              route: { cluster: empty }
            - match: { prefix: "/dead" }
              route: { cluster: dead }
            - match: { prefix: "/timeout" }
              route: { cluster: rewrite, timeout: 0.2s, prefix_rewrite: "/delay/2000" }
            - match: { prefix: "/upstream-status/" }
              route: { cluster: rewrite, prefix_rewrite: "/status/" }
            - match: { prefix: "/t0" }
              route: { cluster: main, timeout: 0s }
            - match: { prefix: "/t3" }
              route: { cluster: main, timeout: 3s }
            - match: { prefix: "/xfh" }
              route: { cluster: rewrite, host_rewrite_literal: rewritten.example, append_x_forwarded_host: true }
            - match: { prefix: "/method", headers: [{ name: ":method", string_match: { exact: "POST" } }] }
              route: { cluster: method_post }
            - match: { prefix: "/method" }
              route: { cluster: method_other }
            - match: { prefix: "/std" }
              route: { cluster: main }
          - name: any
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: any }
"#;

/// Clusters backed by an echo upstream of the same name.
const ECHO_CLUSTERS: &[&str] = &[
    "exact",
    "suffix_long",
    "suffix",
    "prefix",
    "port",
    "any",
    "main",
    "r_path",
    "r_case",
    "r_regex",
    "r_sep",
    "hdr_exact",
    "hdr_prefix",
    "hdr_suffix",
    "hdr_contains",
    "hdr_regex",
    "hdr_present",
    "hdr_range",
    "hdr_invert",
    "hdr_none",
    "q_exact",
    "q_present",
    "q_none",
    "grpc",
    "grpc_none",
    "w_a",
    "w_b",
    "rewrite",
    "headers",
    "method_post",
    "method_other",
];

/// Both proxies on the same bootstrap (only the listener port differs) in
/// front of the same upstreams.
struct Pair {
    // Held so the processes live (and are killed) with the pair.
    _reference: ProxyProcess,
    _candidate: ProxyProcess,
    reference_addr: SocketAddr,
    candidate_addr: SocketAddr,
    _upstreams: Vec<Echo>,
    // Keeps the "dead" cluster's port bound (and refusing) for the run.
    _refusing: socket2::Socket,
}

/// A STATIC cluster whose endpoint has a hostname, which is what
/// `auto_host_rewrite` rewrites the Host to.
fn cluster_with_hostname(name: &str, addr: SocketAddr, hostname: &str) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            hostname: {hostname}\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
        addr.ip(),
        addr.port()
    )
}

async fn pair(vhosts: &str, hcm_extra: &str) -> Pair {
    let envoy = require_envoy();
    let candidate = proxy_under_test();
    let mut upstreams = Vec::new();
    let mut clusters = Vec::new();
    for name in ECHO_CLUSTERS {
        let echo = Echo::start(name).await;
        clusters.push(cluster(name, &[echo.addr], ""));
        upstreams.push(echo);
    }
    let auto = Echo::start("auto").await;
    clusters.push(cluster_with_hostname("auto", auto.addr, "auto.example"));
    upstreams.push(auto);
    clusters.push(cluster("empty", &[], ""));
    let (dead, refusing) = refused_address();
    clusters.push(cluster("dead", &[dead], ""));

    let bootstrap =
        |port| http_proxy_with_route_config(port, ROUTE_CONFIG_EXTRA, vhosts, &clusters, hcm_extra);
    let (reference, rp) = ProxyProcess::start_on_free_port(&envoy, bootstrap, &[]).await;
    let (candidate, cp) = ProxyProcess::start_on_free_port(&candidate, bootstrap, &[]).await;
    Pair {
        _reference: reference,
        _candidate: candidate,
        reference_addr: loopback(rp),
        candidate_addr: loopback(cp),
        _upstreams: upstreams,
        _refusing: refusing,
    }
}

fn candidate_name() -> &'static str {
    if testing_envoy() {
        "envoy (2nd)"
    } else {
        "trellis"
    }
}

async fn run(cases: Vec<Case>) {
    run_with("", cases).await;
}

/// [`run`] with HttpConnectionManager options (`hcm_extra`, 10-space indent).
async fn run_with(hcm_extra: &str, cases: Vec<Case>) {
    run_on(VHOSTS, hcm_extra, cases).await;
}

/// [`run`] on other virtual hosts: features that a proxy might reject at
/// load time get a bootstrap of their own, so that rejecting one does not
/// stop every other comparison.
async fn run_on(vhosts: &str, hcm_extra: &str, cases: Vec<Case>) {
    within(Duration::from_secs(120), "differential run", async {
        let p = pair(vhosts, hcm_extra).await;
        compare(&cases, p.reference_addr, p.candidate_addr, candidate_name()).await;
    })
    .await;
}

const M: &str = "main.test";

#[tokio::test]
async fn domains() {
    run(vec![
        Case::get("exact domain", "exact.example", "/").to("exact"),
        Case::get("exact domain, listed port", "exact.example:8080", "/").to("exact"),
        // Envoy matches the Host *with* its port against the domains (no
        // strip_any_host_port here), so an unlisted port falls through every
        // wildcard to "*".
        Case::get("exact domain, unlisted port", "exact.example:9090", "/").to("any"),
        Case::get("domain match ignores case", "EXACT.Example", "/").to("exact"),
        Case::get("longest suffix wildcard wins", "a.deep.example", "/").to("suffix_long"),
        Case::get("suffix wildcard", "foo.example", "/").to("suffix"),
        // "*.example" needs at least one character before ".example".
        Case::get("suffix wildcard needs a label", "example", "/").to("any"),
        Case::get("prefix wildcard", "prefix.anything", "/").to("prefix"),
        // Suffix wildcards beat prefix wildcards.
        Case::get("suffix beats prefix wildcard", "prefix.example", "/").to("suffix"),
        Case::get("domain with port", "port.test:9000", "/").to("port"),
        Case::get("domain with port, no port sent", "port.test", "/").to("any"),
        Case::get("catch-all", "unknown.test", "/").to("any"),
        Case::get("h2 :authority", "exact.example", "/")
            .h2()
            .to("exact"),
        Case::get("h2 :authority with port", "exact.example:8080", "/")
            .h2()
            .to("exact"),
        Case::get("h2 catch-all", "other.test", "/x").h2().to("any"),
    ])
    .await;
}

#[tokio::test]
async fn path_and_header_and_query_matching() {
    run(vec![
        Case::get("path exact", M, "/exact/path").to("r_path"),
        Case::get("path exact, query ignored", M, "/exact/path?a=1").to("r_path"),
        Case::get("path exact, longer is no match", M, "/exact/path/").expect(404, None),
        Case::get("prefix case-insensitive", M, "/caseinsensitive/x").to("r_case"),
        Case::get("prefix case-insensitive upper", M, "/CASEINSENSITIVE/x").to("r_case"),
        Case::get("safe_regex full match", M, "/regex/123").to("r_regex"),
        Case::get("safe_regex with query", M, "/regex/123?x=y").to("r_regex"),
        Case::get("safe_regex is anchored", M, "/regex/123/x").expect(404, None),
        Case::get("path_separated_prefix exact", M, "/sep").to("r_sep"),
        Case::get("path_separated_prefix segment", M, "/sep/x").to("r_sep"),
        Case::get("path_separated_prefix query", M, "/sep?x=1").to("r_sep"),
        Case::get("path_separated_prefix no partial", M, "/separate").expect(404, None),
        Case::get("header exact", M, "/hdr")
            .header("x-exact", "yes")
            .to("hdr_exact"),
        Case::get("header exact is case-sensitive", M, "/hdr")
            .header("x-exact", "YES")
            .to("hdr_none"),
        Case::get("header prefix", M, "/hdr")
            .header("x-pre", "abc")
            .to("hdr_prefix"),
        Case::get("header suffix", M, "/hdr")
            .header("x-suf", "xyz")
            .to("hdr_suffix"),
        Case::get("header contains", M, "/hdr")
            .header("x-con", "amidst")
            .to("hdr_contains"),
        Case::get("header regex", M, "/hdr")
            .header("x-re", "v42")
            .to("hdr_regex"),
        Case::get("header regex is anchored", M, "/hdr")
            .header("x-re", "xv42")
            .to("hdr_none"),
        Case::get("header present", M, "/hdr")
            .header("x-present", "")
            .to("hdr_present"),
        Case::get("header range inside", M, "/hdr")
            .header("x-range", "15")
            .to("hdr_range"),
        Case::get("header range end exclusive", M, "/hdr")
            .header("x-range", "20")
            .to("hdr_none"),
        Case::get("header range not a number", M, "/hdr")
            .header("x-range", "fifteen")
            .to("hdr_none"),
        Case::get("header invert, other value", M, "/hdr")
            .header("x-inv-enable", "1")
            .header("x-inv", "good")
            .to("hdr_invert"),
        Case::get("header invert, matching value", M, "/hdr")
            .header("x-inv-enable", "1")
            .header("x-inv", "bad")
            .to("hdr_none"),
        // Envoy 1.40 surprise: an absent header fails the matcher even with
        // invert_match (invert applies to the value test, not to presence).
        Case::get("header invert, header absent", M, "/hdr")
            .header("x-inv-enable", "1")
            .to("hdr_none"),
        Case::get("no header matcher applies", M, "/hdr").to("hdr_none"),
        Case::get("query exact", M, "/q?debug=1").to("q_exact"),
        Case::get("query exact among others", M, "/q?x=2&debug=1").to("q_exact"),
        Case::get("query exact, other value", M, "/q?debug=2").to("q_none"),
        Case::get("query present", M, "/q?flag").to("q_present"),
        Case::get("query present, empty value", M, "/q?flag=").to("q_present"),
        Case::get("query absent", M, "/q").to("q_none"),
        Case::get("grpc match", M, "/g")
            .post("")
            .header("content-type", "application/grpc")
            .to("grpc"),
        Case::get("grpc match +proto", M, "/g")
            .post("")
            .header("content-type", "application/grpc+proto")
            .to("grpc"),
        Case::get("grpc match, json", M, "/g")
            .post("{}")
            .header("content-type", "application/json")
            .to("grpc_none"),
        Case::get("grpc match, no content-type", M, "/g").to("grpc_none"),
    ])
    .await;
}

#[tokio::test]
async fn cluster_selection_and_rewrites() {
    run(vec![
        Case::get("weighted 100/0", M, "/weighted").to("w_a"),
        Case::get("weighted 0/100", M, "/wb").to("w_b"),
        Case::get("cluster_header", M, "/ch")
            .header("x-cluster", "exact")
            .to("exact"),
        // Envoy 1.40: a missing cluster (header absent or unknown name) is
        // a 503 with an empty body (cluster_not_found_response_code).
        Case::get("cluster_header absent", M, "/ch").expect(503, None),
        Case::get("cluster_header unknown", M, "/ch")
            .header("x-cluster", "nope")
            .expect(503, None),
        Case::get("prefix_rewrite", M, "/pr/a/b").to("rewrite"),
        // The documented surprise: "/pr2" → "/" turns "/pr2/x" into "//x".
        Case::get("prefix_rewrite to / keeps the slash", M, "/pr2/x").to("rewrite"),
        Case::get("prefix_rewrite to /, whole prefix", M, "/pr2").to("rewrite"),
        Case::get("prefix_rewrite to /, no separator", M, "/pr2x").to("rewrite"),
        Case::get("prefix_rewrite with trailing slashes", M, "/pr3/x").to("rewrite"),
        Case::get("prefix_rewrite keeps query", M, "/pr4?a=b").to("rewrite"),
        Case::get("prefix_rewrite keeps query, subpath", M, "/pr4/z?a=b&c").to("rewrite"),
        Case::get("path_separated_prefix rewrite", M, "/ps/x").to("rewrite"),
        Case::get("path_separated_prefix rewrite exact", M, "/ps").to("rewrite"),
        Case::get("path_separated_prefix rewrite query", M, "/ps?q=1").to("rewrite"),
        Case::get("case-insensitive prefix rewrite", M, "/prcase/X").to("rewrite"),
        Case::get("regex_rewrite with query", M, "/rr/a/b/c?x=1&y=2").to("rewrite"),
        Case::get("regex_rewrite no match keeps path", M, "/rr/only").to("rewrite"),
        Case::get(
            "regex_rewrite all occurrences, not query",
            M,
            "/rrall/foo/boo?o=o",
        )
        .to("rewrite"),
        Case::get("host_rewrite_literal", M, "/hrl").to("rewrite"),
        Case::get("auto_host_rewrite", M, "/ahr").to("auto"),
        Case::get("auto_host_rewrite, endpoint without hostname", M, "/nohost").to("rewrite"),
        Case::get("host_rewrite_header", M, "/hrh")
            .header("x-new-host", "from-header.example")
            .to("rewrite"),
        Case::get("host_rewrite_header absent", M, "/hrh").to("rewrite"),
        Case::get("rewrite over h2", M, "/pr/h2?q")
            .h2()
            .to("rewrite"),
    ])
    .await;
}

#[tokio::test]
async fn header_mutations_and_proxy_headers() {
    run(vec![
        Case::get("standard headers", M, "/std").to("main"),
        Case::get("standard headers, h2", M, "/std").h2().to("main"),
        Case::get("POST with a body", M, "/std")
            .post("hello")
            .to("main"),
        Case::get("POST with a body, h2", M, "/std")
            .post("hello")
            .h2()
            .to("main"),
        Case::get("client x-forwarded-for", M, "/std")
            .header("x-forwarded-for", "1.2.3.4")
            .to("main"),
        Case::get("client x-forwarded-proto", M, "/std")
            .header("x-forwarded-proto", "https")
            .to("main"),
        Case::get("client x-request-id", M, "/std")
            .header("x-request-id", "client-chosen-id")
            .to("main"),
        // Envoy 1.40 (no use_remote_address): the client's
        // x-envoy-upstream-rq-timeout-ms is removed and not honoured
        // (x-envoy-expected-rq-timeout-ms stays 15000), and no
        // x-forwarded-for is added; a client's x-forwarded-for and
        // x-forwarded-proto pass through unchanged.
        Case::get("client x-envoy-upstream-rq-timeout-ms", M, "/std")
            .header("x-envoy-upstream-rq-timeout-ms", "1234")
            .to("main"),
        // Envoy 1.40 removes connection, keep-alive, proxy-connection, the
        // headers Connection names, te other than "trailers", and an upgrade
        // header without "connection: upgrade".
        Case::get("hop-by-hop headers", M, "/std")
            .header("connection", "keep-alive, x-drop")
            .header("x-drop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-keep", "1")
            .to("main"),
        // Envoy 1.40 drops the upstream's keep-alive, proxy-connection and
        // upgrade (on a 200) response headers, and replaces its server header
        // with "envoy" (server_header_transformation OVERWRITE).
        Case::get("upstream hop-by-hop and server response headers", M, "/std")
            .header("x-respond-keep-alive", "timeout=5")
            .header("x-respond-proxy-connection", "keep-alive")
            .header("x-respond-upgrade", "foo")
            .header("x-respond-server", "upstream-server")
            .header("x-respond-x-kept", "1")
            .to("main"),
        Case::get("te: trailers", M, "/std")
            .header("te", "trailers")
            .to("main"),
        Case::get("te: gzip", M, "/std")
            .header("te", "gzip")
            .to("main"),
        // Deliberate: hyper treats any `Upgrade` as a possible protocol
        // switch and stops the smuggling guard, so trellis closes the
        // connection after an answer that did not switch.
        Case::get("upgrade without connection: upgrade", M, "/std")
            .header("upgrade", "foo")
            .deliberate("response.header.connection")
            .to("main"),
        Case::get("header mutations, plain", M, "/mut").to("headers"),
        // Envoy 1.40: route-config mutations apply last, so its x-prec
        // ("route_config") beats the vhost's and the route's; APPEND gives
        // "client, route" (two header lines); ADD_IF_ABSENT keeps "client".
        Case::get("header mutations vs client headers", M, "/mut")
            .header("x-append", "client")
            .header("x-add-absent", "client")
            .header("x-prec", "client")
            .header("x-strip-route", "1")
            .header("x-strip-vh", "1")
            .header("x-strip-rc", "1")
            .header("x-keep", "1")
            .header("x-respond-x-rm-route", "1")
            .header("x-respond-x-rm-vh", "1")
            .header("x-respond-x-rm-rc", "1")
            .header("x-respond-x-keep-resp", "1")
            .to("headers"),
        Case::get("header mutations, h2", M, "/mut")
            .header("x-append", "client")
            .h2()
            .to("headers"),
        Case::get("weighted cluster adds headers", M, "/weighted").to("w_a"),
        Case::get("route timeout 0s: no expected-timeout header", M, "/t0").to("main"),
        Case::get("route timeout 3s", M, "/t3").to("main"),
        Case::get("append_x_forwarded_host", M, "/xfh").to("rewrite"),
        Case::get(":method matcher, POST", M, "/method")
            .post("x")
            .to("method_post"),
        Case::get(":method matcher, GET", M, "/method").to("method_other"),
        Case::get("upstream status passes through", M, "/upstream-status/503")
            .expect(503, Some("rewrite")),
        Case::get("upstream 404 passes through", M, "/upstream-status/404")
            .expect(404, Some("rewrite")),
    ])
    .await;
}

#[tokio::test]
async fn redirects_and_direct_responses() {
    run(vec![
        Case::get("scheme redirect", M, "/redir/scheme?q=1").expect(301, None),
        Case::get(
            "scheme redirect with port",
            "main.test:8080",
            "/redir/scheme",
        )
        .expect(301, None),
        Case::get("https redirect", M, "/redir/https").expect(301, None),
        Case::get("https redirect with port", "main.test:8080", "/redir/https").expect(301, None),
        Case::get("host redirect", M, "/redir/host?q=1").expect(301, None),
        // Envoy 1.40: host_redirect drops the request's port (→
        // "http://elsewhere.example/redir/host"), while scheme/https
        // redirects keep it ("https://main.test:8080/...").
        Case::get(
            "host redirect drops the port",
            "main.test:8080",
            "/redir/host",
        )
        .expect(301, None),
        Case::get("port redirect", M, "/redir/port").expect(301, None),
        Case::get(
            "port redirect replaces port",
            "main.test:8080",
            "/redir/port",
        )
        .expect(301, None),
        Case::get("path redirect", M, "/redir/path?q=1").expect(301, None),
        Case::get("path redirect with its own query", M, "/redir/pathq?q=1").expect(301, None),
        Case::get("prefix redirect", M, "/redir/prefix/a/b?q=1").expect(301, None),
        Case::get("regex redirect", M, "/redir/regex/a/b?q=1").expect(301, None),
        Case::get("strip_query", M, "/redir/strip?q=1&r=2").expect(301, None),
        Case::get("redirect 301", M, "/redir/301").expect(301, None),
        Case::get("redirect 302", M, "/redir/302").expect(302, None),
        Case::get("redirect 303", M, "/redir/303").expect(303, None),
        Case::get("redirect 307", M, "/redir/307").expect(307, None),
        Case::get("redirect 308", M, "/redir/308").expect(308, None),
        Case::get("redirect, everything", M, "/redir/all?q=1").expect(307, None),
        Case::get("redirect over h2", M, "/redir/host?q=1")
            .h2()
            .expect(301, None),
        Case::get("direct 200 with body", M, "/direct/ok").expect(200, None),
        Case::get("direct 418 with body and header", M, "/direct/teapot").expect(418, None),
        Case::get("direct 503 without body", M, "/direct/empty").expect(503, None),
        Case::get("direct 204", M, "/direct/204").expect(204, None),
        Case::get("direct over h2", M, "/direct/teapot")
            .h2()
            .expect(418, None),
    ])
    .await;
}

#[tokio::test]
async fn local_replies() {
    run(vec![
        // Envoy 1.40: the no-route 404 has an empty body and none of the
        // route-config response_headers_to_add (x-rc-resp), unlike every
        // other local reply here (503s, 504, redirects, direct responses).
        Case::get("no route", M, "/nothing/here").expect(404, None),
        Case::get("no route, h2", M, "/nothing/here")
            .h2()
            .expect(404, None),
        Case::get("empty cluster", M, "/empty").expect(503, None),
        Case::get("connect failure", M, "/dead")
            .status_only()
            .expect(503, None),
        Case::get("route timeout", M, "/timeout").expect(504, None),
        // Envoy 1.40: gRPC local replies are HTTP 200 + trailers-only:
        // no route → grpc-status 12 (no grpc-message); empty cluster,
        // connect failure and route timeout → 14 (the router's 504 maps to
        // UNAVAILABLE, not DEADLINE_EXCEEDED); an upstream's own non-gRPC
        // 503 passes through untouched.
        grpc("gRPC no route", "/nothing/here").expect(200, None),
        grpc("gRPC empty cluster", "/empty").expect(200, None),
        grpc("gRPC connect failure", "/dead")
            .presence_only("response.header.grpc-message")
            .expect(200, None),
        grpc("gRPC route timeout", "/timeout").expect(200, None),
        // Envoy 1.40 surprise: even direct responses and redirects become
        // gRPC local replies for gRPC requests: HTTP 200, grpc-status 2
        // (UNKNOWN), grpc-message = the direct body ("teapot"); the redirect
        // keeps its location header but is no longer a 3xx.
        grpc("gRPC direct response", "/direct/teapot").expect(200, None),
        grpc("gRPC redirect", "/redir/host").expect(200, None),
        grpc("gRPC upstream 503", "/upstream-status/503").expect(503, Some("rewrite")),
    ])
    .await;
}

/// A gRPC-shaped request (h2, POST, application/grpc): Envoy turns its local
/// replies to these into HTTP 200 with grpc-status.
fn grpc(name: &str, path: &str) -> Case {
    Case::get(name, M, path)
        .post("\0\0\0\0\0")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .h2()
}

/// Connection-manager options that change what the proxy adds and how it
/// matches: use_remote_address (XFF, internal/external), server_name, via,
/// strip_any_host_port, merge_slashes, normalize_path.
const HCM_OPTIONS: &str = r#"          use_remote_address: true
          server_name: trellis-diff
          via: diff-via
          strip_any_host_port: true
          merge_slashes: true
          normalize_path: true
"#;

/// Envoy 1.40 surprises here, on loopback:
/// - use_remote_address appends to x-forwarded-for not 127.0.0.1 but the
///   machine's first non-loopback address (Envoy substitutes its "local
///   address" for a loopback peer; 192.0.2.2 on the machine this was written
///   on), while x-envoy-external-address is 127.0.0.1;
/// - loopback peers are *external* (no internal_address_config), so client
///   x-envoy-* headers are stripped, x-envoy-internal is not set, and a
///   client's x-forwarded-proto: https is overwritten with http;
/// - via is added to both the upstream request and the response, and
///   server_name replaces the server header on local replies too.
#[tokio::test]
async fn connection_manager_options() {
    run_with(
        HCM_OPTIONS,
        vec![
            Case::get("use_remote_address", M, "/std").to("main"),
            Case::get("use_remote_address, h2", M, "/std")
                .h2()
                .to("main"),
            Case::get("use_remote_address, client XFF", M, "/std")
                .header("x-forwarded-for", "1.2.3.4")
                .to("main"),
            Case::get("use_remote_address, client XFP", M, "/std")
                .header("x-forwarded-proto", "https")
                .to("main"),
            Case::get("use_remote_address, client envoy headers", M, "/std")
                .header("x-envoy-upstream-rq-timeout-ms", "1234")
                .header("x-envoy-internal", "true")
                .to("main"),
            // At the edge, trace context from the client passes through,
            // while x-envoy-* (force-trace included) is dropped.
            Case::get("use_remote_address, client trace headers", M, "/std")
                .header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .header("tracestate", "vendor=1")
                .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
                .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
                .header(
                    "x-amzn-trace-id",
                    "Root=1-5759e988-bd862e3fe1be46a994272793",
                )
                .header("x-client-trace-id", "client-chosen")
                .header("x-envoy-force-trace", "true")
                .header("x-envoy-decorator-operation", "spoofed")
                .header("x-envoy-downstream-service-cluster", "spoofed")
                .to("main"),
            // An external client's request id is replaced (by a random one:
            // only its presence compares).
            Case::get("use_remote_address, client request id", M, "/std")
                .header("x-request-id", "chosen-by-client")
                .presence_only("upstream.header.x-request-id")
                .to("main"),
            Case::get("strip_any_host_port", "exact.example:9090", "/").to("exact"),
            Case::get("strip_any_host_port, h2", "port.test:9000", "/")
                .h2()
                .to("any"),
            Case::get("merge_slashes", M, "/std//a///b").to("main"),
            Case::get("normalize_path dot segments", M, "/std/a/../b/./c").to("main"),
            Case::get("normalize_path encoded dots", M, "/std/a/%2e%2e/b").to("main"),
            Case::get("normalize_path keeps query", M, "/std//x/../y?a=/../b").to("main"),
            Case::get("normalized path picks the route", M, "/nothing/../std/x").to("main"),
            Case::get("server_name on local replies", M, "/nothing").expect(404, None),
            Case::get("via on redirects", M, "/redir/host").expect(301, None),
        ],
    )
    .await;
}

/// `use_remote_address` with loopback declared internal: the other side of
/// the trust boundary.
const HCM_INTERNAL: &str = r#"          use_remote_address: true
          internal_address_config:
            cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }]
"#;

/// Envoy 1.40 with an internal client: x-envoy-internal is set, the
/// client's x-envoy-* headers that do not steer the router stay, its
/// x-request-id and trace context are kept; a relayed request (XFF sent)
/// is external.
#[tokio::test]
async fn internal_clients_keep_their_envoy_headers() {
    run_with(
        HCM_INTERNAL,
        vec![
            Case::get("internal client", M, "/std").to("main"),
            Case::get("internal client, envoy and trace headers", M, "/std")
                .header("x-envoy-decorator-operation", "op")
                .header("x-envoy-internal", "false")
                .header("x-request-id", "chosen-by-client")
                .header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .to("main"),
            // A peer that relays someone else's request (it sends XFF) is
            // not itself the client: external, even from an internal address.
            Case::get("internal peer relaying a client", M, "/std")
                .header("x-envoy-decorator-operation", "op")
                .header("x-envoy-force-trace", "true")
                .header("x-request-id", "chosen-by-client")
                .header("x-forwarded-for", "10.1.2.3")
                .presence_only("upstream.header.x-request-id")
                .to("main"),
        ],
    )
    .await;
}

/// Header values with command operators (substitution formatters).
const FORMATTER_VHOSTS: &str = r#"          - name: main
            domains: ["main.test"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: headers }
              request_headers_to_add:
              - header: { key: x-client-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }
              - header: { key: x-from-request, value: "%REQ(x-in)%" }
              - header: { key: x-literal, value: "100%%" }
              response_headers_to_add:
              - header: { key: x-protocol, value: "%PROTOCOL%" }
"#;

#[tokio::test]
async fn header_value_command_operators() {
    run_on(
        FORMATTER_VHOSTS,
        "",
        vec![
            Case::get("command operators", M, "/")
                .header("x-in", "copied")
                .to("headers"),
            Case::get("command operators, h2", M, "/")
                .h2()
                .to("headers"),
        ],
    )
    .await;
}
