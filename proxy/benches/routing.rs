//! Route tables at scale, with no benchmark framework (nothing to build on a
//! loaded CI box): the time to pick a route with 10 and with 10,000 routes,
//! and the time to compile a RouteConfiguration as RDS delivers it, whole
//! and with one route changed against the previous version. Run with
//! `cargo bench -p trellis-proxy --bench routing [-- lookup|compile|smoke]`;
//! `bench/run --scenarios config` runs it too and puts its output in the
//! report.
//!
//! Tables have the shape App Mesh gives them: one virtual host per virtual
//! service (with and without the port), ten routes each with a prefix,
//! weighted clusters, a timeout and a retry policy, every fifth one also
//! matching a header; the cluster names cycle over 1,000. The "one virtual
//! host" tables put every route in one host, as a virtual gateway does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use trellis_proxy::router::{EncodedRouteConfig, RouteTable};
use xds_protos::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route, route_action, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight, HeaderMatcher, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use xds_protos::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

const CLUSTERS: usize = 1000;
const ROUTES_PER_HOST: usize = 10;

/// Runs `f` for about `budget` (at least 3 times) and returns ns per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(1));
    let batch = (Duration::from_millis(10).as_nanos() / once.as_nanos()).clamp(1, 1000) as u64;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n < 3 {
        for _ in 0..batch {
            f();
        }
        n += batch;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn report(name: &str, ns: f64) {
    if ns >= 1e6 {
        println!("{name:<64} {:>10.2} ms/op", ns / 1e6);
    } else if ns >= 1e3 {
        println!("{name:<64} {:>10.2} µs/op", ns / 1e3);
    } else {
        println!("{name:<64} {ns:>10.1} ns/op");
    }
}

fn cluster(n: usize) -> String {
    format!("cluster-{}", n % CLUSTERS)
}

/// Route `j` of virtual host `i`; `tag` changes its first cluster, to play
/// the one changed route of an update.
fn route(i: usize, j: usize, tag: &str) -> Route {
    let headers = if j % 5 == 4 {
        vec![HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("true".into())),
                ignore_case: false,
            })),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    let weighted = |name: String, weight: u32| ClusterWeight {
        name,
        weight: Some(weight),
        ..Default::default()
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(format!("/svc{i}/api{j}"))),
            headers,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters: vec![
                        weighted(format!("{}{tag}", cluster(i * 7 + j)), 90),
                        weighted(cluster(i * 7 + j + 1), 10),
                    ],
                    ..Default::default()
                },
            )),
            timeout: Some(prost_types::Duration {
                seconds: 15,
                nanos: 0,
            }),
            retry_policy: Some(RetryPolicy {
                retry_on: "5xx,gateway-error,reset".into(),
                num_retries: Some(2),
                per_try_timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn host(i: usize) -> String {
    format!("svc{i}.mesh.local")
}

/// `hosts` virtual hosts of `per_host` routes each.
fn config(hosts: usize, per_host: usize) -> RouteConfiguration {
    RouteConfiguration {
        name: "egress".into(),
        virtual_hosts: (0..hosts)
            .map(|i| VirtualHost {
                name: format!("{}:8080", host(i)),
                domains: vec![host(i), format!("{}:8080", host(i))],
                routes: (0..per_host).map(|j| route(i, j, "")).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn encode(rc: &RouteConfiguration) -> Bytes {
    Bytes::from(rc.encode_to_vec())
}

/// Decode and compile, as an RDS update does.
fn compile(bytes: &Bytes, previous: Option<&RouteTable>) -> RouteTable {
    let rc = EncodedRouteConfig::decode(bytes.clone()).expect("decodes");
    RouteTable::compile_encoded(&rc, previous).expect("compiles")
}

fn request(path: &str) -> http::request::Parts {
    let req = http::Request::builder()
        .uri(path)
        .body(())
        .expect("request");
    req.into_parts().0
}

fn lookup(scale: &Scale, label: &str, t: &RouteTable, authority: &str, path: &str) {
    let req = request(path);
    assert!(t.find_with_random(authority, &req, 0).is_some(), "{label}");
    report(
        label,
        measure(scale.budget.min(Duration::from_millis(300)), || {
            black_box(t.find_with_random(black_box(authority), &req, 0));
        }),
    );
}

/// Table sizes and time per case: the benchmark's, or a smoke check's
/// (`-- smoke`: small tables, a few milliseconds per case; `scripts/test`
/// runs it so the benchmark keeps working).
struct Scale {
    sizes: [usize; 3],
    budget: Duration,
}

/// 10000 → "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    // Cargo passes `--bench`; `smoke` shrinks the run; any other argument
    // picks sections by name.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scale = if args.iter().any(|a| a == "smoke") {
        Scale {
            sizes: [10, 100, 1_000],
            budget: Duration::from_millis(5),
        }
    } else {
        Scale {
            sizes: [10, 1_000, 10_000],
            budget: Duration::from_millis(1500),
        }
    };
    let picked: Vec<&String> = args.iter().filter(|a| *a != "smoke").collect();
    let want =
        |section: &str| picked.is_empty() || picked.iter().any(|p| section.contains(p.as_str()));
    if want("lookup") {
        lookups(&scale);
    }
    if want("compile") {
        compiles(&scale);
    }
}

fn lookups(scale: &Scale) {
    println!("# route lookup (App Mesh shape: 10 routes per virtual host)");
    for routes in scale.sizes {
        let hosts = routes / ROUTES_PER_HOST;
        let t = compile(&encode(&config(hosts, ROUTES_PER_HOST)), None);
        let last = hosts - 1;
        lookup(
            scale,
            &format!("lookup, {routes} routes, last host, its last route"),
            &t,
            &format!("{}:8080", host(last)),
            &format!("/svc{last}/api8/items?id=1"),
        );
    }
    println!("# route lookup (one virtual host, as a virtual gateway)");
    for routes in scale.sizes {
        let t = compile(&encode(&config(1, routes)), None);
        let last = routes - 2;
        lookup(
            scale,
            &format!("lookup, {routes} routes in one host, first route"),
            &t,
            &host(0),
            "/svc0/api0/items",
        );
        lookup(
            scale,
            &format!("lookup, {routes} routes in one host, route {last}"),
            &t,
            &host(0),
            &format!("/svc0/api{last}/items"),
        );
    }
}

fn compiles(scale: &Scale) {
    println!("# compile (decode + compile, as an RDS update)");
    for routes in scale.sizes {
        let bytes = encode(&config(routes / ROUTES_PER_HOST, ROUTES_PER_HOST));
        report(
            &format!("full compile, {routes} routes ({} KiB)", bytes.len() / 1024),
            measure(scale.budget, || drop(black_box(compile(&bytes, None)))),
        );
    }
    let largest = scale.sizes[2];
    for (hosts, per_host) in [(largest / ROUTES_PER_HOST, ROUTES_PER_HOST), (1, largest)] {
        let mut rc = config(hosts, per_host);
        let previous = compile(&encode(&rc), None);
        let (i, j) = (hosts / 2, per_host / 2);
        rc.virtual_hosts[i].routes[j] = route(i, j, "-v2");
        let changed = encode(&rc);
        let shape = if hosts == 1 {
            format!("{} routes in one host", thousands(per_host))
        } else {
            format!("{hosts} hosts × {per_host} routes")
        };
        report(
            &format!("full compile, {shape}"),
            measure(scale.budget, || drop(black_box(compile(&changed, None)))),
        );
        report(
            &format!("one changed route, {shape}, against the previous"),
            measure(scale.budget, || {
                drop(black_box(compile(&changed, Some(&previous))));
            }),
        );
    }
}
