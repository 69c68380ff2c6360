//! Whole-table tests: one per matcher kind and action, error paths, scale.
// Deprecated proto fields are still valid input and must be covered.
#![allow(deprecated)]

use super::*;
use crate::format::Context;
use xds_protos::envoy::config::core::v3::{
    data_source::Specifier, header_value_option::HeaderAppendAction, DataSource,
    HeaderValue as HeaderValueProto, HeaderValueOption, RuntimeFractionalPercent,
};
use xds_protos::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::SchemeRewriteSpecifier,
    route_action,
    route_match::{GrpcRouteMatchOptions, PathSpecifier},
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as RetryPolicyProto, RouteAction, RouteMatch,
};
use xds_protos::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use xds_protos::envoy::r#type::v3::{FractionalPercent, Int64Range};

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn direct(m: RouteMatch, body: &str) -> RouteProto {
    RouteProto {
        r#match: Some(m),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 200,
            body: Some(DataSource {
                specifier: Some(Specifier::InlineString(body.into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn forward(m: RouteMatch, a: RouteAction) -> RouteProto {
    RouteProto {
        r#match: Some(m),
        action: Some(route::Action::Route(a)),
        ..Default::default()
    }
}

fn cluster(c: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<RouteProto>) -> VirtualHostProto {
    VirtualHostProto {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn table(routes: Vec<RouteProto>) -> RouteTable {
    RouteTable::compile(&RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![vhost("v", &["*"], routes)],
        ..Default::default()
    })
    .unwrap()
}

fn request(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The body of the direct response taken, or the cluster forwarded to.
fn take(t: &RouteTable, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    take_random(t, path, headers, 0)
}

fn take_random(
    t: &RouteTable,
    path: &str,
    headers: &[(&str, &str)],
    random: u64,
) -> Option<String> {
    let m = t.find_with_random("host", &request(path, headers), random)?;
    Some(match &m.route.action {
        Action::DirectResponse(d) => String::from_utf8(d.body.to_vec()).unwrap(),
        Action::Forward(f) => match &f.cluster {
            ClusterSpecifier::Cluster(c) => c.clone(),
            _ => "other".into(),
        },
        Action::Redirect(_) => "redirect".into(),
    })
}

fn err(rc: RouteConfiguration) -> String {
    RouteTable::compile(&rc).unwrap_err().to_string()
}

#[test]
fn first_match_wins_with_prefix_and_path() {
    let t = table(vec![
        direct(
            RouteMatch {
                path_specifier: Some(PathSpecifier::Path("/exact".into())),
                ..Default::default()
            },
            "path",
        ),
        direct(prefix("/q?a"), "prefix-with-query"),
        direct(prefix("/a"), "a"),
        direct(prefix("/"), "root"),
    ]);
    assert_eq!(t.name(), "rc");
    assert_eq!(
        take(&t, "/exact?x=1", &[]).as_deref(),
        Some("path"),
        "path ignores the query"
    );
    assert_eq!(take(&t, "/exactly", &[]).as_deref(), Some("root"));
    assert_eq!(take(&t, "/abc", &[]).as_deref(), Some("a"));
    assert_eq!(
        take(&t, "/q?a=1", &[]).as_deref(),
        Some("root"),
        "prefixes never see the query"
    );
}

#[test]
fn case_insensitive_prefix_and_path() {
    let mut m = prefix("/CI");
    m.case_sensitive = Some(false);
    let t = table(vec![direct(m, "ci"), direct(prefix("/"), "root")]);
    assert_eq!(take(&t, "/cIxyz", &[]).as_deref(), Some("ci"));
    let t = table(vec![
        direct(prefix("/CI"), "ci"),
        direct(prefix("/"), "root"),
    ]);
    assert_eq!(take(&t, "/cIxyz", &[]).as_deref(), Some("root"));
}

/// Verified against Envoy 1.40: `case_sensitive: false` applies to `path`
/// and `path_separated_prefix` but not to `safe_regex`.
#[test]
fn case_sensitive_applies_to_path_but_not_regex() {
    let ci = |spec: PathSpecifier| RouteMatch {
        path_specifier: Some(spec),
        case_sensitive: Some(false),
        ..Default::default()
    };
    let t = table(vec![
        direct(ci(PathSpecifier::Path("/Exact".into())), "path"),
        direct(
            ci(PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/Rx".into(),
                engine_type: None,
            })),
            "regex",
        ),
        direct(ci(PathSpecifier::PathSeparatedPrefix("/Api".into())), "psp"),
        direct(prefix("/"), "miss"),
    ]);
    for (path, want) in [
        ("/exact?x", "path"),
        ("/EXACT", "path"),
        ("/rx", "miss"),
        ("/Rx", "regex"),
        ("/API/v1", "psp"),
        ("/apiv1", "miss"),
    ] {
        assert_eq!(take(&t, path, &[]).as_deref(), Some(want), "{path}");
    }
}

#[test]
fn safe_regex_is_a_full_match_on_the_path_without_query() {
    let m = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/r/[0-9]+".into(),
            engine_type: None,
        })),
        ..Default::default()
    };
    let t = table(vec![direct(m, "re"), direct(prefix("/"), "root")]);
    assert_eq!(take(&t, "/r/123?x=y", &[]).as_deref(), Some("re"));
    assert_eq!(take(&t, "/r/123/x", &[]).as_deref(), Some("root"));
    assert_eq!(take(&t, "/x/r/123", &[]).as_deref(), Some("root"));
}

#[test]
fn path_separated_prefix() {
    let m = RouteMatch {
        path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/api".into())),
        ..Default::default()
    };
    let t = table(vec![direct(m, "api"), direct(prefix("/"), "root")]);
    assert_eq!(take(&t, "/api", &[]).as_deref(), Some("api"));
    assert_eq!(take(&t, "/api/v1", &[]).as_deref(), Some("api"));
    assert_eq!(take(&t, "/api?x", &[]).as_deref(), Some("api"));
    assert_eq!(take(&t, "/apiv1", &[]).as_deref(), Some("root"));
}

fn header(
    name: &str,
    spec: Option<HeaderMatchSpecifier>,
    invert: bool,
    missing_as_empty: bool,
) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        treat_missing_header_as_empty: missing_as_empty,
        header_match_specifier: spec,
    }
}

fn with_headers(hs: Vec<HeaderMatcher>) -> RouteTable {
    let mut m = prefix("/");
    m.headers = hs;
    table(vec![direct(m, "hit"), direct(prefix("/"), "miss")])
}

fn hit(t: &RouteTable, headers: &[(&str, &str)]) -> bool {
    take(t, "/", headers).as_deref() == Some("hit")
}

fn string_match(p: MatchPattern) -> Option<HeaderMatchSpecifier> {
    Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
        ignore_case: false,
        match_pattern: Some(p),
    }))
}

/// Expectations verified against Envoy 1.40 (see `matcher.rs`).
#[test]
fn header_present_and_missing_semantics() {
    let t = with_headers(vec![header(
        "x-h",
        Some(HeaderMatchSpecifier::PresentMatch(false)),
        false,
        false,
    )]);
    assert!(hit(&t, &[]));
    assert!(!hit(&t, &[("x-h", "1")]));
    let t = with_headers(vec![header(
        "x-h",
        Some(HeaderMatchSpecifier::PresentMatch(true)),
        true,
        false,
    )]);
    assert!(hit(&t, &[]));
    let t = with_headers(vec![header("x-h", None, false, false)]);
    assert!(!hit(&t, &[]));
    assert!(hit(&t, &[("x-h", "")]));
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Exact("a".into())),
        true,
        false,
    )]);
    assert!(
        !hit(&t, &[]),
        "a missing header never matches a value matcher, inverted or not"
    );
    assert!(hit(&t, &[("x-h", "b")]));
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Exact(String::new())),
        false,
        true,
    )]);
    assert!(hit(&t, &[]));
    let t = with_headers(vec![header(
        "x-h",
        Some(HeaderMatchSpecifier::PresentMatch(true)),
        false,
        true,
    )]);
    assert!(hit(&t, &[]));
}

#[test]
fn header_string_matchers_each_value_on_its_own() {
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Exact("b".into())),
        false,
        false,
    )]);
    assert!(hit(&t, &[("x-h", "a"), ("x-h", "b")]));
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Exact("a".into())),
        true,
        false,
    )]);
    assert!(
        !hit(&t, &[("x-h", "b"), ("x-h", "a")]),
        "inverts the any-value result"
    );
    let range = Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
        start: 1,
        end: 10,
    }));
    let t = with_headers(vec![header("x-h", range.clone(), false, false)]);
    assert!(hit(&t, &[("x-h", "50"), ("x-h", "5")]));
    assert!(!hit(&t, &[("x-h", "5,6")]));
    let t = with_headers(vec![header("x-h", range, true, true)]);
    assert!(
        hit(&t, &[]),
        "missing is empty, empty is not in range, inverted"
    );
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Exact("a,b".into())),
        false,
        false,
    )]);
    assert!(!hit(&t, &[("x-h", "a"), ("x-h", "b")]));
    let t = with_headers(vec![header(
        "X-H",
        string_match(MatchPattern::Prefix("ab".into())),
        false,
        false,
    )]);
    assert!(hit(&t, &[("x-h", "abc")]));
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Suffix("bc".into())),
        false,
        false,
    )]);
    assert!(hit(&t, &[("x-h", "abc")]));
    let t = with_headers(vec![header(
        "x-h",
        string_match(MatchPattern::Contains("b".into())),
        false,
        false,
    )]);
    assert!(hit(&t, &[("x-h", "abc")]));
    assert!(!hit(&t, &[("x-h", "ac")]));
    let re = MatchPattern::SafeRegex(RegexMatcher {
        regex: "a.c".into(),
        engine_type: None,
    });
    let t = with_headers(vec![header("x-h", string_match(re), false, false)]);
    assert!(hit(&t, &[("x-h", "abc")]));
    assert!(!hit(&t, &[("x-h", "abcd")]));
}

#[test]
fn deprecated_header_forms() {
    let t = with_headers(vec![
        header(
            "x-a",
            Some(HeaderMatchSpecifier::ExactMatch("1".into())),
            false,
            false,
        ),
        header(
            "x-b",
            Some(HeaderMatchSpecifier::PrefixMatch("p".into())),
            false,
            false,
        ),
        header(
            "x-c",
            Some(HeaderMatchSpecifier::SuffixMatch("s".into())),
            false,
            false,
        ),
        header(
            "x-d",
            Some(HeaderMatchSpecifier::ContainsMatch("c".into())),
            false,
            false,
        ),
        header(
            "x-e",
            Some(HeaderMatchSpecifier::SafeRegexMatch(RegexMatcher {
                regex: "[0-9]+".into(),
                engine_type: None,
            })),
            false,
            false,
        ),
    ]);
    let all = [
        ("x-a", "1"),
        ("x-b", "pq"),
        ("x-c", "as"),
        ("x-d", "acb"),
        ("x-e", "42"),
    ];
    assert!(hit(&t, &all));
    assert!(!hit(&t, &all[..4]));
}

#[test]
fn header_range_and_pseudo_headers() {
    let t = with_headers(vec![header(
        "x-h",
        Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
            start: 1,
            end: 10,
        })),
        false,
        false,
    )]);
    assert!(hit(&t, &[("x-h", "5")]));
    assert!(
        hit(&t, &[("x-h", " +5 ")]),
        "absl::SimpleAtoi accepts whitespace and a sign"
    );
    assert!(!hit(&t, &[("x-h", "10")]));
    assert!(!hit(&t, &[("x-h", "x")]));
    let t = with_headers(vec![
        header(
            "host",
            string_match(MatchPattern::Exact("host".into())),
            false,
            false,
        ),
        header(
            ":method",
            string_match(MatchPattern::Exact("GET".into())),
            false,
            false,
        ),
        header(
            ":path",
            string_match(MatchPattern::Exact("/".into())),
            false,
            false,
        ),
    ]);
    assert!(hit(&t, &[]));
}

fn with_query(q: Vec<QueryParameterMatcher>) -> RouteTable {
    let mut m = prefix("/");
    m.query_parameters = q;
    table(vec![direct(m, "hit"), direct(prefix("/"), "miss")])
}

fn query(name: &str, spec: Option<QueryParameterMatchSpecifier>) -> QueryParameterMatcher {
    QueryParameterMatcher {
        name: name.into(),
        query_parameter_match_specifier: spec,
    }
}

#[test]
fn query_parameters() {
    let qhit = |t: &RouteTable, path: &str| take(t, path, &[]).as_deref() == Some("hit");
    let t = with_query(vec![query(
        "a",
        Some(QueryParameterMatchSpecifier::PresentMatch(false)),
    )]);
    assert!(qhit(&t, "/?b=1"));
    assert!(!qhit(&t, "/?a"));
    let t = with_query(vec![query("a", None)]);
    assert!(qhit(&t, "/?a"));
    assert!(!qhit(&t, "/"));
    let exact = |v: &str| {
        Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Exact(v.into())),
        }))
    };
    let t = with_query(vec![query("a", exact(""))]);
    assert!(qhit(&t, "/?a"));
    assert!(qhit(&t, "/?a="));
    let t = with_query(vec![query("a", exact("1"))]);
    assert!(qhit(&t, "/?a=1&a=2"));
    assert!(!qhit(&t, "/?a=2&a=1"), "only the first value counts");
    let t = with_query(vec![query("a", exact("x%20y"))]);
    assert!(qhit(&t, "/?a=x%20y"), "values are not percent-decoded");
}

#[test]
fn grpc_match() {
    let mut m = prefix("/");
    m.grpc = Some(GrpcRouteMatchOptions {});
    let t = table(vec![direct(m, "grpc"), direct(prefix("/"), "other")]);
    let ct = |v: &str| take(&t, "/", &[("content-type", v)]);
    assert_eq!(ct("application/grpc").as_deref(), Some("grpc"));
    assert_eq!(ct("application/grpc+proto").as_deref(), Some("grpc"));
    assert_eq!(ct("application/grpc-web").as_deref(), Some("other"));
    assert_eq!(take(&t, "/", &[]).as_deref(), Some("other"));
}

#[test]
fn runtime_fraction_uses_the_random_value() {
    let mut m = prefix("/");
    m.runtime_fraction = Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 25,
            denominator: 0,
        }),
        runtime_key: "k".into(),
    });
    let t = table(vec![direct(m, "in"), direct(prefix("/"), "out")]);
    assert_eq!(take_random(&t, "/", &[], 24).as_deref(), Some("in"));
    assert_eq!(take_random(&t, "/", &[], 25).as_deref(), Some("out"));
    assert_eq!(take_random(&t, "/", &[], 124).as_deref(), Some("in"));
    let m = t.find_with_random("h", &request("/", &[]), 7).unwrap();
    assert_eq!(m.random, 7);
}

#[test]
fn forward_action_defaults_and_rewrite() {
    let mut a = cluster("backend");
    a.prefix_rewrite = "/".into();
    a.retry_policy = Some(RetryPolicyProto {
        retry_on: "5xx".into(),
        ..Default::default()
    });
    let t = table(vec![
        forward(prefix("/p/"), a),
        forward(prefix("/"), cluster("root")),
    ]);
    let m = t
        .find_with_random("h", &request("/p/foo?q=1", &[]), 0)
        .unwrap();
    let Action::Forward(f) = &m.route.action else {
        panic!("not a forward")
    };
    assert!(matches!(&f.cluster, ClusterSpecifier::Cluster(c) if c == "backend"));
    assert_eq!(f.rewrite_path("/p/foo?q=1").as_deref(), Some("/foo?q=1"));
    assert_eq!(f.timeout, Some(std::time::Duration::from_secs(15)));
    assert_eq!(f.idle_timeout, None);
    assert_eq!(
        f.cluster_not_found_status,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(f.retry_policy.as_ref().unwrap().retries_on(RetryOn::FiveXx));
    let Action::Forward(root) = &t.virtual_hosts()[0].routes[1].action else {
        panic!()
    };
    assert_eq!(root.rewrite_path("/x"), None);
    assert!(root.retry_policy.is_none());
}

#[test]
fn forward_timeouts_and_virtual_host_retry_policy() {
    let mut a = cluster("c");
    a.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    a.idle_timeout = Some(prost_types::Duration {
        seconds: 3,
        nanos: 0,
    });
    a.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
        "new".into(),
    ));
    a.max_stream_duration = Some(route_action::MaxStreamDuration {
        grpc_timeout_header_max: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    let mut vh = vhost("v", &["*"], vec![forward(prefix("/"), a)]);
    vh.retry_policy = Some(RetryPolicyProto {
        retry_on: "reset".into(),
        num_retries: Some(3),
        ..Default::default()
    });
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![vh],
        ..Default::default()
    })
    .unwrap();
    let Action::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    assert_eq!(f.timeout, None, "0s disables the timeout");
    assert_eq!(f.idle_timeout, Some(std::time::Duration::from_secs(3)));
    assert!(matches!(&f.host_rewrite, Some(HostRewrite::Literal(h)) if h == "new"));
    assert_eq!(
        f.grpc_timeout_header_max,
        Some(std::time::Duration::from_secs(5))
    );
    let retry = f.retry_policy.as_ref().unwrap();
    assert!(retry.retries_on(RetryOn::Reset));
    assert_eq!(retry.num_retries, 3);
}

#[test]
fn redirect_action() {
    let r = RouteProto {
        r#match: Some(prefix("/")),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let t = table(vec![r]);
    let m = t
        .find_with_random("redir:80", &request("/x?a=1", &[]), 0)
        .unwrap();
    let Action::Redirect(r) = &m.route.action else {
        panic!()
    };
    assert_eq!(
        r.location("http", "redir:80", "/x?a=1"),
        (
            http::StatusCode::MOVED_PERMANENTLY,
            "https://redir/x?a=1".into()
        )
    );
}

#[test]
fn direct_response_action() {
    let t = table(vec![direct(prefix("/"), "body")]);
    let m = t.find_with_random("h", &request("/", &[]), 0).unwrap();
    let Action::DirectResponse(d) = &m.route.action else {
        panic!()
    };
    assert_eq!(d.status, http::StatusCode::OK);
    assert_eq!(d.body, "body");
}

fn add(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValueProto {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// Verified against Envoy 1.40: by default the route configuration's value
/// wins because it is applied last.
#[test]
fn header_mutation_order() {
    let build = |most_specific: bool| {
        let mut r = direct(prefix("/"), "x");
        r.response_headers_to_add = vec![add("x-order", "route")];
        let mut vh = vhost("v", &["*"], vec![r]);
        vh.response_headers_to_add = vec![add("x-order", "vh")];
        RouteTable::compile(&RouteConfiguration {
            virtual_hosts: vec![vh],
            response_headers_to_add: vec![add("x-order", "rc")],
            most_specific_header_mutations_wins: most_specific,
            ..Default::default()
        })
        .unwrap()
    };
    for (most_specific, want) in [(false, "rc"), (true, "route")] {
        let t = build(most_specific);
        let m = t.find_with_random("h", &request("/", &[]), 0).unwrap();
        let mut h = HeaderMap::new();
        m.apply_response_headers(&mut h, &Context::new(&stream_info()));
        assert_eq!(h["x-order"], want);
        let mut h = HeaderMap::new();
        m.apply_request_headers(&mut h, &Context::new(&stream_info()));
        assert!(h.is_empty());
    }
}

/// Mirrors a bootstrap run against Envoy 1.40, whose response carried
/// exactly: `x-ow: o2`, `x-mix: over`, `x-absent: a`, `x-absent: b`,
/// `x-mix: append`, `x-keep: `, `x-vh-added: rc`.
#[test]
fn header_mutations_across_levels_match_envoy() {
    use HeaderAppendAction as A;
    let opt = |k: &str, v: &str, a: A| HeaderValueOption {
        append_action: a as i32,
        ..add(k, v)
    };
    let mut keep = opt("x-keep", "", A::AppendIfExistsOrAdd);
    keep.keep_empty_value = true;
    let mut r = direct(prefix("/"), "x");
    r.response_headers_to_remove = vec!["x-absent".into()];
    r.response_headers_to_add = vec![
        opt("x-absent", "a", A::AddIfAbsent),
        opt("x-absent", "b", A::AddIfAbsent),
        opt("x-ow", "o1", A::OverwriteIfExistsOrAdd),
        opt("x-ow", "o2", A::OverwriteIfExistsOrAdd),
        opt("x-mix", "append", A::AppendIfExistsOrAdd),
        opt("x-mix", "over", A::OverwriteIfExistsOrAdd),
        opt("x-oie", "v", A::OverwriteIfExists),
        opt("x-empty", "", A::AppendIfExistsOrAdd),
        keep,
        opt("x-route-added", "r", A::AppendIfExistsOrAdd),
    ];
    let mut vh = vhost("v", &["*"], vec![r]);
    vh.response_headers_to_add = vec![opt("x-vh-added", "vh", A::AppendIfExistsOrAdd)];
    vh.response_headers_to_remove = vec!["x-route-added".into()];
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![vh],
        response_headers_to_add: vec![opt("x-vh-added", "rc", A::OverwriteIfExists)],
        ..Default::default()
    })
    .unwrap();
    let m = t.find_with_random("h", &request("/", &[]), 0).unwrap();
    let mut h = HeaderMap::new();
    m.apply_response_headers(&mut h, &Context::new(&stream_info()));
    let all = |name: &str| {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-ow"), ["o2"]);
    assert_eq!(all("x-mix"), ["over", "append"]);
    assert_eq!(all("x-absent"), ["a", "b"]);
    assert_eq!(all("x-keep"), [""]);
    assert_eq!(all("x-vh-added"), ["rc"]);
    assert!(h.get("x-oie").is_none() && h.get("x-empty").is_none());
    assert!(h.get("x-route-added").is_none());
    assert_eq!(h.len(), 7);
}

#[test]
fn domains_select_virtual_hosts() {
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![
            vhost(
                "exact",
                &["example.com"],
                vec![direct(prefix("/"), "exact")],
            ),
            vhost("default", &["*"], vec![direct(prefix("/"), "default")]),
        ],
        ignore_port_in_host_matching: true,
        ..Default::default()
    })
    .unwrap();
    let name = |host: &str| {
        t.find(host, &request("/", &[]))
            .map(|m| m.virtual_host.name.as_str())
    };
    assert_eq!(name("EXAMPLE.COM:8080"), Some("exact"));
    assert_eq!(name("other"), Some("default"));
}

#[test]
fn vhost_header_replaces_the_authority_for_selection() {
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![
            vhost("m", &["m"], vec![direct(prefix("/"), "m")]),
            vhost("default", &["*"], vec![direct(prefix("/"), "default")]),
        ],
        vhost_header: "x-vhost".into(),
        ..Default::default()
    })
    .unwrap();
    let name = |headers: &[(&str, &str)]| {
        t.find("m", &request("/", headers))
            .map(|m| m.virtual_host.name.as_str())
    };
    assert_eq!(name(&[("x-vhost", "M")]), Some("m"));
    assert_eq!(name(&[("x-vhost", "other")]), Some("default"));
    assert_eq!(name(&[]), None, "absent vhost_header selects nothing");
}

#[test]
fn no_virtual_host_or_route() {
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![vhost("v", &["a"], vec![direct(prefix("/x"), "x")])],
        ..Default::default()
    })
    .unwrap();
    assert!(t.find("b", &request("/x", &[])).is_none());
    assert!(t.find("a", &request("/y", &[])).is_none());
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("a:443")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(
        t.find("a", &connect).is_none(),
        "path-less requests match no prefix"
    );
}

#[test]
fn ten_thousand_virtual_hosts() {
    let n = 10_000;
    let mut vhs: Vec<VirtualHostProto> = (0..n)
        .map(|i| {
            let domains = [
                format!("host{i}.example.com"),
                format!("*.w{i}.example.com"),
                format!("p{i}-*"),
            ];
            let body = i.to_string();
            VirtualHostProto {
                name: format!("v{i}"),
                domains: domains.to_vec(),
                routes: vec![direct(prefix("/"), &body)],
                ..Default::default()
            }
        })
        .collect();
    vhs.push(vhost(
        "default",
        &["*"],
        vec![direct(prefix("/"), "default")],
    ));
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vhs,
        ..Default::default()
    })
    .unwrap();
    let req = request("/", &[]);
    for i in 0..n {
        let want = format!("v{i}");
        for host in [
            format!("host{i}.example.com"),
            format!("a.W{i}.example.com"),
            format!("p{i}-x"),
        ] {
            let m = t.find_with_random(&host, &req, 0).unwrap();
            assert_eq!(m.virtual_host.name, want, "{host}");
        }
    }
    assert_eq!(
        t.find_with_random("nope", &req, 0)
            .unwrap()
            .virtual_host
            .name,
        "default"
    );
}

#[test]
fn error_paths_are_relative_to_the_route_configuration() {
    let bad_regex = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "[a".into(),
            engine_type: None,
        })),
        ..Default::default()
    };
    let rc = RouteConfiguration {
        virtual_hosts: vec![
            vhost("a", &["a"], vec![direct(prefix("/"), "a")]),
            vhost(
                "b",
                &["b"],
                vec![
                    direct(prefix("/"), "0"),
                    direct(prefix("/"), "1"),
                    direct(bad_regex, "2"),
                ],
            ),
        ],
        ..Default::default()
    };
    let e = err(rc);
    assert!(
        e.starts_with("virtual_hosts[1].routes[2].match.safe_regex.regex: invalid regex: "),
        "{e}"
    );

    let rc = RouteConfiguration {
        virtual_hosts: vec![
            vhost("a", &["a", "*"], vec![]),
            vhost("b", &["x", "A"], vec![]),
        ],
        ..Default::default()
    };
    assert!(err(rc).starts_with("virtual_hosts[1].domains[1]: duplicate domain a"));

    let mut m = prefix("/");
    m.headers = vec![header(
        "x",
        string_match(MatchPattern::Contains(String::new())),
        false,
        false,
    )];
    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["a"], vec![direct(m, "")])],
        ..Default::default()
    };
    assert_eq!(
        err(rc),
        "virtual_hosts[0].routes[0].match.headers[0].string_match.contains: must not be empty"
    );

    let mut a = cluster("c");
    a.hedge_policy = Some(Default::default());
    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["a"], vec![forward(prefix("/"), a)])],
        ..Default::default()
    };
    assert_eq!(
        err(rc),
        "virtual_hosts[0].routes[0].route.hedge_policy: is not supported by trellis"
    );

    let mut a = cluster("c");
    a.retry_policy = Some(RetryPolicyProto {
        retry_on: "envoy-ratelimited".into(),
        ..Default::default()
    });
    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["a"], vec![forward(prefix("/"), a)])],
        ..Default::default()
    };
    assert!(err(rc).starts_with("virtual_hosts[0].routes[0].route.retry_policy.retry_on: "));

    let mut vh = vhost("a", &["a"], vec![]);
    vh.request_headers_to_add = vec![add(":path", "x")];
    let rc = RouteConfiguration {
        virtual_hosts: vec![vh],
        ..Default::default()
    };
    assert!(err(rc).starts_with("virtual_hosts[0].request_headers_to_add[0].header.key: "));

    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["a"], vec![])],
        response_headers_to_remove: vec!["host".into()],
        ..Default::default()
    };
    assert!(err(rc).starts_with("response_headers_to_remove[0]: "));

    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost(
            "a",
            &["a"],
            vec![RouteProto {
                r#match: Some(prefix("/")),
                ..Default::default()
            }],
        )],
        ..Default::default()
    };
    assert_eq!(
        err(rc),
        "virtual_hosts[0].routes[0]: one of route, redirect or direct_response is required"
    );

    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &[], vec![])],
        ..Default::default()
    };
    assert_eq!(
        err(rc),
        "virtual_hosts[0].domains: at least one domain is required"
    );

    let rc = RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["a"], vec![])],
        internal_only_headers: vec!["x".into()],
        ..Default::default()
    };
    assert_eq!(
        err(rc),
        "internal_only_headers: is not supported by trellis"
    );
}

/// The request path must not panic on any input: every matcher kind and
/// action against hosts and paths with odd ports, brackets, multi-byte
/// characters and stray query/fragment markers.
#[test]
fn odd_inputs_do_not_panic() {
    let regex = |r: &str| RegexMatcher {
        regex: r.into(),
        engine_type: None,
    };
    let mut ci = prefix("/É");
    ci.case_sensitive = Some(false);
    let mut with_all = prefix("");
    with_all.headers = vec![
        header(
            "x-h",
            Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
                start: i64::MIN,
                end: i64::MAX,
            })),
            true,
            true,
        ),
        header(
            ":authority",
            string_match(MatchPattern::Suffix("é".into())),
            false,
            true,
        ),
    ];
    with_all.query_parameters = vec![query("é", None)];
    let mut rewrite = cluster("c");
    rewrite.prefix_rewrite = "/r".into();
    let mut regex_rewrite = cluster("c");
    regex_rewrite.regex_rewrite = Some(RegexMatchAndSubstitute {
        pattern: Some(regex("x*")),
        substitution: r"\0-".into(),
    });
    let routes = vec![
        direct(ci, "ci"),
        direct(with_all, "all"),
        forward(
            RouteMatch {
                path_specifier: Some(PathSpecifier::SafeRegex(regex("/é.*"))),
                ..Default::default()
            },
            rewrite,
        ),
        forward(
            RouteMatch {
                path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/éé".into())),
                ..Default::default()
            },
            regex_rewrite,
        ),
        RouteProto {
            r#match: Some(prefix("/")),
            action: Some(route::Action::Redirect(RedirectAction {
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
                port_redirect: 1,
                ..Default::default()
            })),
            ..Default::default()
        },
    ];
    let t = RouteTable::compile(&RouteConfiguration {
        virtual_hosts: vec![vhost("a", &["*.é", "é*", "[::1]:80", "*"], routes)],
        ignore_port_in_host_matching: true,
        ..Default::default()
    })
    .unwrap();
    let hosts = [
        "", ":", "[", "]", "[:", "]:", "[::1]:", "é", "é:é", "x.é", "éé", ":80", "É.É",
    ];
    let paths = [
        "/",
        "/É",
        "/é",
        "/ée",
        "/éé",
        "/éé/",
        "/?é",
        "/?é=é&é",
        "/#?",
        "/é?x#y",
        "*",
    ];
    let mut seen = 0;
    for host in hosts {
        for path in paths {
            let Ok(uri) = http::Uri::try_from(path) else {
                continue;
            };
            let mut req = request("/", &[("x-h", "é")]);
            req.uri = uri;
            for random in [0, 1, u64::MAX] {
                let Some(m) = t.find_with_random(host, &req, random) else {
                    continue;
                };
                seen += 1;
                let mut h = HeaderMap::new();
                m.apply_request_headers(&mut h, &Context::new(&stream_info()));
                match &m.route.action {
                    Action::Forward(f) => drop(f.rewrite_path(path)),
                    Action::Redirect(r) => drop(r.location("http", host, path)),
                    Action::DirectResponse(d) => drop(d.location("http", host, path)),
                }
            }
        }
    }
    assert!(seen > 0);
}

#[test]
fn route_table_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<RouteTable>();
    check::<Matched<'static>>();
}

fn stream_info() -> crate::format::StreamInfo {
    crate::format::StreamInfo::new(std::net::SocketAddr::from(([127, 0, 0, 1], 1)), None)
}
