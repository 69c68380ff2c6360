//! The ADS protocol end to end: a proxy configured only over xDS, driven by
//! the test's server through adds, changes, removals, NACKs, warming and a
//! control-plane restart, with real traffic to real upstreams checked at
//! each step. Every scenario runs in four variants: {Envoy, trellis} ×
//! {state of the world, delta}. Envoy is the reference: a scenario that
//! passes on Envoy and fails on trellis is a trellis bug.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use trellis_tests::client;
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;
use trellis_tests::xds_server::*;
use trellis_tests::{eventually, free_port};

/// Every scenario finishes well within this, or fails.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a pushed change may take to show in traffic.
const CONVERGE: Duration = Duration::from_secs(15);

async fn run<F, Fut>(proxy: Proxy, delta: bool, scenario: F)
where
    F: FnOnce(Proxy, bool) -> Fut,
    Fut: Future<Output = ()>,
{
    if proxy.bin().is_none() {
        eprintln!("skipped: no Envoy binary (set ENVOY_BIN)");
        return;
    }
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario(proxy, delta))
        .await
        .expect("the scenario finishes in time");
}

/// One test per proxy and protocol variant.
macro_rules! variants {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test]
            async fn envoy_sotw() {
                run(Proxy::Envoy, false, super::$scenario).await
            }
            #[tokio::test]
            async fn envoy_delta() {
                run(Proxy::Envoy, true, super::$scenario).await
            }
            #[tokio::test]
            async fn trellis_sotw() {
                run(Proxy::Trellis, false, super::$scenario).await
            }
            #[tokio::test]
            async fn trellis_delta() {
                run(Proxy::Trellis, true, super::$scenario).await
            }
        }
    )*};
}

variants!(
    adds_changes_and_removals,
    invalid_updates_are_nacked_and_change_nothing,
    warming_and_readiness,
    control_plane_restart,
    valid_beside_invalid_in_one_update,
    control_plane_returns_with_changes,
    listener_that_cannot_bind,
    changed_listener_warms_again,
    fetch_timeouts_per_subscription,
    removed_listener_drains,
    clusters_keep_what_an_update_does_not_touch,
);

/// What one request saw: status, the upstream that answered, the route tag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    upstream: Option<String>,
    tag: Option<String>,
}

async fn get(port: u16, path: &str) -> Option<Seen> {
    let r = client::get(&format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    Some(Seen {
        status: r.status,
        upstream: r.header("x-upstream").map(str::to_string),
        tag: r.header(ROUTE_TAG_HEADER).map(str::to_string),
    })
}

/// Waits until `path` on `port` is answered by `upstream` under route tag `tag`.
async fn served_by(port: u16, path: &str, upstream: &str, tag: &str) {
    let what = format!("{path} on :{port} served by {upstream} under tag {tag}");
    eventually(CONVERGE, &what, || async {
        let s = get(port, path).await?;
        (s.status == 200
            && s.upstream.as_deref() == Some(upstream)
            && s.tag.as_deref() == Some(tag))
        .then_some(())
    })
    .await;
}

/// Asserts `n` requests in a row are answered by `upstream` under `tag`:
/// the config in force did not move.
async fn steadily_served_by(port: u16, path: &str, upstream: &str, tag: &str, n: usize) {
    for i in 0..n {
        let s = get(port, path).await;
        let want = Seen {
            status: 200,
            upstream: Some(upstream.to_string()),
            tag: Some(tag.to_string()),
        };
        assert_eq!(s.as_ref(), Some(&want), "request {i} to :{port}{path}");
    }
}

/// Whether `/config_dump` shows a resource named `name` at `version`.
async fn dumped_at(p: &ProxyProcess, name: &str, version: &str) -> bool {
    let dump: serde_json::Value =
        serde_json::from_str(&p.admin_get("/config_dump").await.body_text())
            .expect("/config_dump is JSON");
    fn walk(v: &serde_json::Value, name: &str, version: &str) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let here = m.get("version_info").and_then(|x| x.as_str()) == Some(version)
                    && serde_json::to_string(v)
                        .map(|s| {
                            s.contains(&format!("\"name\":\"{name}\""))
                                || s.contains(&format!("\"cluster_name\":\"{name}\""))
                        })
                        .unwrap_or(false);
                here || m.values().any(|x| walk(x, name, version))
            }
            serde_json::Value::Array(a) => a.iter().any(|x| walk(x, name, version)),
            _ => false,
        }
    }
    walk(&dump, name, version)
}

/// The common starting point: EDS cluster `a` → `echo_a`, listener `main`
/// on `port` with routes `r1`: `/` → `a`, tag `t1`. Returns the version.
fn base_config(xds: &XdsServer, port: u16, echo_a: SocketAddr) -> String {
    xds.set_cluster(&eds_cluster("a"));
    xds.set_endpoints(&load_assignment("a", &[echo_a]));
    xds.set_listener(&http_listener("main", port, "r1"));
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t1"));
    xds.push()
}

async fn acked_all(xds: &XdsServer, version: &str) {
    for t in [
        CLUSTER,
        CLUSTER_LOAD_ASSIGNMENT,
        LISTENER,
        ROUTE_CONFIGURATION,
    ] {
        xds.wait_ack(t, version).await;
    }
}

async fn adds_changes_and_removals(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let launch = Launch::new(proxy, &xds, delta).expect("proxy binary");
    let p = launch.start().await;
    acked_all(&xds, &v1).await;
    served_by(port, "/", "a", "t1").await;
    assert!(
        dumped_at(&p, "main", &v1).await,
        "config_dump shows listener main at {v1}"
    );

    // A route change: same listener, new target and tag.
    xds.set_cluster(&static_cluster("b", &[b.addr]));
    xds.set_route(&route_config("r1", vec![route("/", &[("b", 1)])], "t2"));
    let v2 = xds.push();
    xds.wait_ack(CLUSTER, &v2).await;
    xds.wait_ack(ROUTE_CONFIGURATION, &v2).await;
    served_by(port, "/", "b", "t2").await;
    assert!(
        dumped_at(&p, "r1", &v2).await,
        "config_dump shows routes r1 at {v2}"
    );
    assert!(
        dumped_at(&p, "main", &v1).await,
        "listener main is still at {v1}"
    );

    // Weighted clusters: both upstreams get traffic.
    xds.set_route(&route_config(
        "r1",
        vec![route("/", &[("a", 50), ("b", 50)])],
        "t3",
    ));
    let v3 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v3).await;
    served_by(port, "/", "a", "t3").await;
    served_by(port, "/", "b", "t3").await;

    // A listener change (main now uses routes r3): its stats carry on from
    // where the old version left them, as one series per address.
    let cx = format!("listener.127.0.0.1_{port}.downstream_cx_total");
    let before = p.stat(&cx).await;
    assert!(before >= 1, "{cx} counted the requests so far: {before}");
    xds.set_listener(&http_listener("main", port, "r3"));
    xds.set_route(&route_config("r3", vec![route("/", &[("b", 1)])], "t3b"));
    let v3b = xds.push();
    xds.wait_ack(LISTENER, &v3b).await;
    served_by(port, "/", "b", "t3b").await;
    let after = p.stat(&cx).await;
    assert!(after > before, "{cx} went from {before} to {after}");
    let prom = p.admin_get("/stats/prometheus").await.body_text();
    let series = format!(
        "envoy_listener_downstream_cx_total{{envoy_listener_address=\"127.0.0.1_{port}\"}}"
    );
    assert_eq!(
        prom.matches(&series).count(),
        1,
        "{series} once in:\n{prom}"
    );
    xds.set_listener(&http_listener("main", port, "r1"));
    xds.remove_route("r3");
    let v3c = xds.push();
    xds.wait_ack(LISTENER, &v3c).await;
    served_by(port, "/", "a", "t3").await;

    // An endpoint change: cluster a moves to a new upstream.
    let a2 = Echo::start("a2").await;
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t4"));
    xds.set_endpoints(&load_assignment("a", &[a2.addr]));
    let v4 = xds.push();
    xds.wait_ack(CLUSTER_LOAD_ASSIGNMENT, &v4).await;
    served_by(port, "/", "a2", "t4").await;
    steadily_served_by(port, "/", "a2", "t4", 5).await;

    // A second listener with its own routes, then its removal.
    let port2 = free_port();
    xds.set_listener(&http_listener("second", port2, "r2"));
    xds.set_route(&route_config("r2", vec![route("/", &[("b", 1)])], "u1"));
    let v5 = xds.push();
    xds.wait_ack(LISTENER, &v5).await;
    served_by(port2, "/", "b", "u1").await;
    served_by(port, "/", "a2", "t4").await;
    xds.remove_listener("second");
    xds.remove_route("r2");
    let v6 = xds.push();
    xds.wait_ack(LISTENER, &v6).await;
    eventually(CONVERGE, "the removed listener to stop serving", || async {
        get(port2, "/").await.is_none().then_some(())
    })
    .await;
    served_by(port, "/", "a2", "t4").await;

    // The proxy stopped asking for the removed listener's routes.
    eventually(CONVERGE, "r2 to be unsubscribed", || async {
        let reqs = xds.requests();
        let last_rds = reqs
            .iter()
            .rev()
            .find(|r| r.type_url == ROUTE_CONFIGURATION)?;
        let dropped = if delta {
            reqs.iter().any(|r| {
                r.type_url == ROUTE_CONFIGURATION && r.unsubscribe.contains(&"r2".to_string())
            })
        } else {
            !last_rds.resource_names.contains(&"r2".to_string())
                && last_rds.resource_names.contains(&"r1".to_string())
        };
        dropped.then_some(())
    })
    .await;

    // A path routed to a cluster that is then removed: 503, the rest intact.
    xds.set_route(&route_config(
        "r1",
        vec![route("/b", &[("b", 1)]), route("/", &[("a", 1)])],
        "t5",
    ));
    let v7 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v7).await;
    served_by(port, "/b", "b", "t5").await;
    xds.remove_cluster("b");
    let v8 = xds.push();
    xds.wait_ack(CLUSTER, &v8).await;
    eventually(CONVERGE, "/b to fail once its cluster is gone", || async {
        let s = get(port, "/b").await?;
        (s.status == 503).then_some(())
    })
    .await;
    served_by(port, "/", "a2", "t5").await;

    // Removing the EDS cluster's endpoints resource. Envoy ACKs and keeps
    // the endpoints it has, in both variants: state of the world cannot
    // remove a named resource (a response without it is not a removal),
    // and Envoy's EDS ignores a delta removal. Losing every endpoint takes
    // an empty load assignment.
    xds.remove_endpoints("a");
    let v9 = xds.push();
    xds.wait_ack(CLUSTER_LOAD_ASSIGNMENT, &v9).await;
    steadily_served_by(port, "/", "a2", "t5", 5).await;
    xds.set_endpoints(&load_assignment("a", &[]));
    let v10 = xds.push();
    xds.wait_ack(CLUSTER_LOAD_ASSIGNMENT, &v10).await;
    eventually(CONVERGE, "/ to fail with no endpoints", || async {
        let s = get(port, "/").await?;
        (s.status == 503).then_some(())
    })
    .await;

    assert_eq!(p.stat("cluster_manager.cds.update_rejected").await, 0);
    assert_eq!(p.stat("listener_manager.lds.update_rejected").await, 0);
    assert!(p.stat("cluster_manager.cds.update_success").await >= 3);
    assert!(p.stat("listener_manager.lds.update_success").await >= 3);
    assert_eq!(p.stat("control_plane.connected_state").await, 1);
    let nacks: Vec<_> = xds.requests().into_iter().filter(|r| r.is_nack()).collect();
    assert!(nacks.is_empty(), "no NACKs: {nacks:?}");
    eds_and_rds_stats_are_envoy_named(&p).await;
    // Envoy shows histograms only after its 5 s stats flush; trellis at once.
    if proxy == Proxy::Trellis {
        every_update_is_timed(&p).await;
    }
}

/// `update_duration` (Envoy's name) has one sample per accepted update,
/// in each of Envoy's scopes: CDS and LDS whole, EDS per cluster, RDS per
/// connection manager and route config.
async fn every_update_is_timed(p: &ProxyProcess) {
    let prom = p.admin_get("/stats/prometheus").await.body_text();
    for (scope, family, label) in [
        (
            "cluster_manager.cds",
            "envoy_cluster_manager_cds_update_duration_count",
            "",
        ),
        (
            "listener_manager.lds",
            "envoy_listener_manager_lds_update_duration_count",
            "",
        ),
        (
            "http.main.rds.r1",
            "envoy_http_rds_update_duration_count",
            "envoy_rds_route_config=\"r1\"",
        ),
        (
            "cluster.a",
            "envoy_cluster_update_duration_count",
            "envoy_cluster_name=\"a\"",
        ),
    ] {
        let count = prom
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(label))
            .find_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok());
        let accepted = p.stat(&format!("{scope}.update_success")).await;
        assert!(accepted >= 1, "{scope}: {accepted} updates");
        assert_eq!(count, Some(accepted), "{family} {label} in:\n{prom}");
    }
}

/// EDS and RDS stats where Envoy keeps them: per cluster, and per
/// connection manager and route config, with Envoy's Prometheus labels.
async fn eds_and_rds_stats_are_envoy_named(p: &ProxyProcess) {
    for scope in ["cluster.a", "http.main.rds.r1"] {
        let attempts = p.stat(&format!("{scope}.update_attempt")).await;
        let accepted = p.stat(&format!("{scope}.update_success")).await;
        assert!(
            accepted >= 1 && attempts >= accepted,
            "{scope}: {attempts} attempts, {accepted} accepted"
        );
        assert_ne!(
            p.stat(&format!("{scope}.version")).await,
            0,
            "{scope}.version"
        );
    }
    let prom = p.admin_get("/stats/prometheus").await.body_text();
    let labelled = |family: &str, labels: &[&str]| {
        prom.lines().any(|l| {
            l.strip_prefix(family).is_some_and(|rest| {
                rest.starts_with('{') && labels.iter().all(|x| rest.contains(x))
            })
        })
    };
    assert!(
        labelled("envoy_cluster_version", &["envoy_cluster_name=\"a\""]),
        "the EDS version per cluster in:\n{prom}"
    );
    assert!(
        labelled(
            "envoy_http_rds_update_attempt",
            &[
                "envoy_http_conn_manager_prefix=\"main\"",
                "envoy_rds_route_config=\"r1\""
            ]
        ),
        "RDS attempts per manager and route config in:\n{prom}"
    );
}

/// What a NACK must say: the resource, the field at fault (a path in the
/// resource), and what is wrong.
struct Fault<'a> {
    name: &'a str,
    field: &'a str,
    detail: &'a str,
}

/// Asserts a NACK is an error status carrying the last version accepted
/// (SotW), whose message names what is wrong (`detail`) and, from trellis,
/// the resource and the field at fault. Envoy does not always name either
/// (a PGV or duration error says only what is wrong), so that part is
/// trellis's own.
fn check_nack(nack: &Recorded, proxy: Proxy, delta: bool, held: &str, fault: Fault<'_>) {
    let Fault {
        name,
        field,
        detail,
    } = fault;
    let (code, message) = nack.error_detail.clone().expect("a NACK has error_detail");
    assert_ne!(code, 0, "a NACK's status is an error: {nack:?}");
    if !delta {
        assert_eq!(nack.version_info, held, "a NACK carries the version held");
    }
    assert!(
        message.contains(detail),
        "the NACK says what is wrong ('{detail}'): {message}"
    );
    if proxy == Proxy::Trellis {
        assert!(
            message.contains(&format!("'{name}': {field}")),
            "the NACK names the resource '{name}' and the field {field}: {message}"
        );
    }
    eprintln!("{proxy:?} NACK: {message}");
}

/// A STATIC cluster whose one endpoint is `host`, port 80.
fn static_cluster_at(name: &str, host: &str) -> xds_protos::envoy::config::cluster::v3::Cluster {
    let mut c = static_cluster(name, &[trellis_tests::loopback(80)]);
    set_host(c.load_assignment.as_mut().expect("a load assignment"), host);
    c
}

/// Points the first endpoint of `la` at `host` (an invalid one, for NACKs).
fn set_host(la: &mut xds_protos::envoy::config::endpoint::v3::ClusterLoadAssignment, host: &str) {
    use xds_protos::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
    use xds_protos::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    if let Some(HostIdentifier::Endpoint(e)) = &mut la.endpoints[0].lb_endpoints[0].host_identifier
    {
        e.address = Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: host.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                ..Default::default()
            })),
        });
    }
}

async fn invalid_updates_are_nacked_and_change_nothing(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    acked_all(&xds, &v1).await;
    served_by(port, "/", "a", "t1").await;

    // CDS: a STATIC cluster whose endpoint is not an IP address.
    xds.set_cluster(&static_cluster_at("bad-cluster", "not-an-ip.invalid"));
    let v2 = xds.push();
    let nack = xds.wait_nack(CLUSTER, &v2).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "bad-cluster",
            field: "load_assignment.endpoints",
            detail: "not-an-ip.invalid",
        },
    );
    xds.set_route(&route_config(
        "r1",
        vec![route("/b", &[("b", 1)]), route("/", &[("a", 1)])],
        "t2",
    ));
    let v3 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v3).await;
    served_by(port, "/", "a", "t2").await;
    assert!(p.stat("cluster_manager.cds.update_rejected").await >= 1);

    // The fix is accepted, and the cluster it adds serves.
    xds.remove_cluster("bad-cluster");
    xds.set_cluster(&static_cluster("b", &[b.addr]));
    let v4 = xds.push();
    xds.wait_ack(CLUSTER, &v4).await;
    served_by(port, "/b", "b", "t2").await;

    // LDS: a listener whose HCM has no routes at all.
    let port_bad = free_port();
    xds.set_listener(&hcm_listener("bad-listener", port_bad, None));
    let v5 = xds.push();
    let nack = xds.wait_nack(LISTENER, &v5).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "bad-listener",
            field: "filter_chains[0].filters[0]",
            detail: "",
        },
    );
    steadily_served_by(port, "/", "a", "t2", 5).await;
    assert!(get(port_bad, "/").await.is_none(), "no rejected listener");
    assert!(p.stat("listener_manager.lds.update_rejected").await >= 1);
    xds.remove_listener("bad-listener");
    let port2 = free_port();
    xds.set_listener(&http_listener("second", port2, "r1"));
    let v6 = xds.push();
    xds.wait_ack(LISTENER, &v6).await;
    served_by(port2, "/", "a", "t2").await;

    // EDS: an endpoint that is not an IP address.
    let mut la = load_assignment("a", &[b.addr]);
    set_host(&mut la, "not-an-ip.invalid");
    xds.set_endpoints(&la);
    let v7 = xds.push();
    let nack = xds.wait_nack(CLUSTER_LOAD_ASSIGNMENT, &v7).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "a",
            field: "endpoints[0].lb_endpoints[0].endpoint.address",
            detail: "not-an-ip.invalid",
        },
    );
    assert!(p.stat(EDS_REJECTED).await >= 1, "{}", EDS_REJECTED);
    steadily_served_by(port, "/", "a", "t2", 5).await;
    xds.set_endpoints(&load_assignment("a", &[b.addr]));
    let v8 = xds.push();
    xds.wait_ack(CLUSTER_LOAD_ASSIGNMENT, &v8).await;
    served_by(port, "/", "b", "t2").await;

    // RDS: two virtual hosts both claiming every domain.
    let mut rc = route_config("r1", vec![route("/", &[("a", 1)])], "t9");
    let mut twin = rc.virtual_hosts[0].clone();
    twin.name = "all-again".to_string();
    rc.virtual_hosts.push(twin);
    xds.set_route(&rc);
    let v9 = xds.push();
    let nack = xds.wait_nack(ROUTE_CONFIGURATION, &v9).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v3,
        Fault {
            name: "r1",
            field: "virtual_hosts[1].domains",
            detail: "single wildcard domain",
        },
    );
    assert!(p.stat(RDS_REJECTED).await >= 1, "{}", RDS_REJECTED);
    steadily_served_by(port, "/", "b", "t2", 5).await;
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t10"));
    let v10 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v10).await;
    served_by(port, "/", "b", "t10").await;

    // Every NACK came with the last accepted version, never the rejected one.
    for r in xds.requests().iter().filter(|r| r.is_nack()) {
        assert!(
            !delta || r.version_info.is_empty(),
            "delta requests carry no version_info: {r:?}"
        );
        assert!(
            ![v2.as_str(), v5.as_str(), v7.as_str(), v9.as_str()]
                .contains(&r.version_info.as_str()),
            "a NACK claims the rejected version: {r:?}"
        );
    }
}

async fn warming_and_readiness(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let launch = Launch::new(proxy, &xds, delta).expect("proxy binary");
    let starting = launch.spawn();

    // Nothing from the control plane yet: alive, not ready.
    let first = eventually(CONVERGE, "/ready to answer", || launch.ready_status()).await;
    assert_eq!(first, 503, "/ready before any config");
    eventually(CONVERGE, "a CDS subscription", || async {
        xds.requests()
            .iter()
            .any(|r| r.type_url == CLUSTER)
            .then_some(())
    })
    .await;

    // Clusters and listeners arrive, but the EDS cluster has no endpoints:
    // it warms, and /ready stays 503. Envoy does not even ask for listeners
    // until its clusters are warm (it would wait out the 15 s initial fetch
    // timeout), so the listener is only asserted on after the endpoints.
    xds.set_cluster(&eds_cluster("a"));
    xds.set_listener(&http_listener("main", port, "r1"));
    let v1 = xds.push();
    xds.wait_ack(CLUSTER, &v1).await;
    xds.wait_subscribed(CLUSTER_LOAD_ASSIGNMENT, "a").await;
    assert_eq!(
        launch.ready_status().await,
        Some(503),
        "/ready while a cluster warms"
    );
    let early = get(port, "/").await;
    assert!(early.is_none(), "no traffic while warming: {early:?}");

    // The endpoints arrive; the listener is taken but waits for its routes.
    xds.set_endpoints(&load_assignment("a", &[a.addr]));
    let v2 = xds.push();
    xds.wait_ack(CLUSTER_LOAD_ASSIGNMENT, &v2).await;
    xds.wait_ack(LISTENER, &v1).await;
    xds.wait_subscribed(ROUTE_CONFIGURATION, "r1").await;
    assert_eq!(
        launch.ready_status().await,
        Some(503),
        "/ready while the listener waits for routes"
    );
    assert!(get(port, "/").await.is_none(), "no listener without routes");

    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t1"));
    let v3 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v3).await;
    let p = starting.await.expect("the proxy starts and turns LIVE");
    assert_eq!(launch.ready_status().await, Some(200));
    served_by(port, "/", "a", "t1").await;

    // After LIVE, a new listener warms on its own while the first serves.
    let port2 = free_port();
    xds.set_listener(&http_listener("second", port2, "r2"));
    let v4 = xds.push();
    xds.wait_ack(LISTENER, &v4).await;
    xds.wait_subscribed(ROUTE_CONFIGURATION, "r2").await;
    let early = get(port2, "/").await;
    assert!(
        early.as_ref().is_none_or(|s| s.status != 200),
        "the warming listener served: {early:?}"
    );
    steadily_served_by(port, "/", "a", "t1", 3).await;
    xds.set_route(&route_config("r2", vec![route("/", &[("a", 1)])], "u1"));
    let v5 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v5).await;
    served_by(port2, "/", "a", "u1").await;
    assert_eq!(launch.ready_status().await, Some(200));
    drop(p);
}

async fn control_plane_restart(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let mut xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    acked_all(&xds, &v1).await;
    served_by(port, "/", "a", "t1").await;
    let before = xds.streams();
    let stats_before = update_counts(&p).await;

    xds.stop().await;
    eventually(CONVERGE, "connected_state 0", || async {
        (p.stat("control_plane.connected_state").await == 0).then_some(())
    })
    .await;
    // The last good config keeps serving while the control plane is away.
    steadily_served_by(port, "/", "a", "t1", 10).await;

    xds.restart().await;
    let cds = xds.wait_resubscribe(CLUSTER, before).await;
    let lds = xds.wait_resubscribe(LISTENER, before).await;
    let eds = xds.wait_resubscribe(CLUSTER_LOAD_ASSIGNMENT, before).await;
    let rds = xds.wait_resubscribe(ROUTE_CONFIGURATION, before).await;
    for (r, name) in [(&cds, "a"), (&lds, "main"), (&eds, "a"), (&rds, "r1")] {
        assert!(!r.is_nack(), "a re-subscription is no NACK: {r:?}");
        if delta {
            assert_eq!(
                r.initial_resource_versions.get(name).map(String::as_str),
                Some(v1.as_str()),
                "delta re-subscription declares what it holds: {r:?}"
            );
        } else {
            assert_eq!(
                r.version_info, v1,
                "SotW re-subscription carries the version held: {r:?}"
            );
        }
    }
    for (r, name) in [(&eds, "a"), (&rds, "r1")] {
        assert!(
            r.resource_names.contains(&name.to_string()),
            "re-subscribes to {name} by name: {r:?}"
        );
    }
    eventually(CONVERGE, "connected_state 1", || async {
        (p.stat("control_plane.connected_state").await == 1).then_some(())
    })
    .await;
    steadily_served_by(port, "/", "a", "t1", 5).await;
    // Nothing changed, so nothing was sent, and nothing was re-applied.
    let resent: Vec<_> = xds.sent().into_iter().filter(|s| s.conn > before).collect();
    assert!(
        resent.is_empty(),
        "nothing to send after the restart: {resent:?}"
    );
    assert_eq!(
        update_counts(&p).await,
        stats_before,
        "no update re-applied"
    );

    // The new stream carries the next change.
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t2"));
    let v2 = xds.push();
    let ack = xds.wait_ack(ROUTE_CONFIGURATION, &v2).await;
    assert!(ack.conn > before, "acked on the new stream");
    served_by(port, "/", "a", "t2").await;
}

/// The counters that move only when an update is applied or rejected.
async fn update_counts(p: &ProxyProcess) -> Vec<(&'static str, i64)> {
    let mut v = Vec::new();
    for n in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        v.push((n, p.stat(n).await));
    }
    v
}

/// A response with a valid new cluster beside an invalid one. Envoy's CDS
/// takes each cluster on its own, and so does trellis: the response is
/// NACKed (with the version held), yet the valid cluster is added and
/// serves at once. It must: in delta the server has already sent it and
/// will not again, so a proxy that dropped it would never get it back.
async fn valid_beside_invalid_in_one_update(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let _p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    acked_all(&xds, &v1).await;
    xds.set_route(&route_config(
        "r1",
        vec![route("/b", &[("b", 1)]), route("/", &[("a", 1)])],
        "t2",
    ));
    let v2 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v2).await;
    served_by(port, "/", "a", "t2").await;

    xds.set_cluster(&static_cluster_at("bad-cluster", "not-an-ip.invalid"));
    xds.set_cluster(&static_cluster("b", &[b.addr]));
    let v3 = xds.push();
    let nack = xds.wait_nack(CLUSTER, &v3).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "bad-cluster",
            field: "load_assignment.endpoints",
            detail: "not-an-ip.invalid",
        },
    );
    // Both proxies keep the valid cluster of a rejected response, so a
    // delta server that counts it as delivered is right to.
    served_by(port, "/b", "b", "t2").await;
    served_by(port, "/", "a", "t2").await;

    xds.remove_cluster("bad-cluster");
    let v4 = xds.push();
    xds.wait_ack(CLUSTER, &v4).await;
    served_by(port, "/b", "b", "t2").await;
}

/// Where rejected endpoints are counted: per cluster, as Envoy does.
const EDS_REJECTED: &str = "cluster.a.update_rejected";

/// Where rejected routes are counted: per connection manager stat prefix
/// and route config, as Envoy does.
const RDS_REJECTED: &str = "http.main.rds.r1.update_rejected";

/// The control plane comes back holding changes made while it was down: a
/// route changed and a cluster removed. Re-subscribing with what it holds,
/// the proxy must be told exactly that (SotW: the full new state; delta:
/// the changed route and the cluster in `removed_resources`).
async fn control_plane_returns_with_changes(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let mut xds = XdsServer::start().await;
    let port = free_port();
    base_config(&xds, port, a.addr);
    xds.set_cluster(&static_cluster("b", &[b.addr]));
    xds.set_route(&route_config(
        "r1",
        vec![route("/b", &[("b", 1)]), route("/", &[("a", 1)])],
        "t1",
    ));
    let v1 = xds.push();
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    for t in [CLUSTER, ROUTE_CONFIGURATION] {
        xds.wait_ack(t, &v1).await;
    }
    served_by(port, "/b", "b", "t1").await;
    let before = xds.streams();

    xds.stop().await;
    eventually(CONVERGE, "connected_state 0", || async {
        (p.stat("control_plane.connected_state").await == 0).then_some(())
    })
    .await;
    xds.remove_cluster("b");
    xds.set_route(&route_config(
        "r1",
        vec![route("/b", &[("b", 1)]), route("/", &[("a", 1)])],
        "t2",
    ));
    let v2 = xds.push();
    steadily_served_by(port, "/b", "b", "t1", 5).await;

    xds.restart().await;
    let cds = xds.wait_ack(CLUSTER, &v2).await;
    assert!(cds.conn > before, "the change came on the new stream");
    xds.wait_ack(ROUTE_CONFIGURATION, &v2).await;
    let sent: Vec<_> = xds
        .sent()
        .into_iter()
        .filter(|s| s.conn > before && s.type_url == CLUSTER)
        .collect();
    let told = &sent[0];
    if delta {
        assert_eq!(told.removed, vec!["b".to_string()], "{told:?}");
        assert!(told.resources.is_empty(), "a is current: {told:?}");
    } else {
        assert_eq!(told.resources, vec!["a".to_string()], "{told:?}");
    }
    served_by(port, "/", "a", "t2").await;
    eventually(CONVERGE, "/b to fail once cluster b is gone", || async {
        (get(port, "/b").await?.status == 503).then_some(())
    })
    .await;
    // Nothing unchanged was sent again.
    let resent: Vec<_> = xds
        .sent()
        .into_iter()
        .filter(|s| {
            s.conn > before && (s.type_url == LISTENER || s.type_url == CLUSTER_LOAD_ASSIGNMENT)
        })
        .collect();
    assert!(resent.is_empty(), "unchanged types resent: {resent:?}");
}

/// A listener whose address cannot be bound is refused on its own, as
/// Envoy refuses it: the NACK names it, the version is not taken, the rest
/// of the update stands, and later updates of every type go through.
async fn listener_that_cannot_bind(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    acked_all(&xds, &v1).await;
    served_by(port, "/", "a", "t1").await;
    let accepted = p.stat("listener_manager.lds.update_success").await;

    // An address another process holds, beside a listener that is fine.
    // Below the ephemeral range: once it is let go, no outgoing connection
    // can take it as its source port before the proxy binds it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("hold a port");
    let taken_port = taken.local_addr().expect("held address").port();
    let port2 = free_port();
    xds.set_listener(&http_listener("blocked", taken_port, "r1"));
    xds.set_listener(&http_listener("second", port2, "r1"));
    let v2 = xds.push();
    let nack = xds.wait_nack(LISTENER, &v2).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "blocked",
            field: "address",
            detail: "cannot bind",
        },
    );
    served_by(port2, "/", "a", "t1").await;
    steadily_served_by(port, "/", "a", "t1", 3).await;
    assert_eq!(
        p.stat("listener_manager.lds.update_success").await,
        accepted,
        "a refused update is no success"
    );
    assert!(p.stat("listener_manager.lds.update_rejected").await >= 1);

    // The refused listener holds nothing back: routes change, and the
    // listeners that stood serve them.
    xds.set_route(&route_config("r1", vec![route("/", &[("a", 1)])], "t2"));
    let v3 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v3).await;
    served_by(port, "/", "a", "t2").await;
    served_by(port2, "/", "a", "t2").await;

    // Two listeners trading addresses in one update: each address is held
    // by the other, so Envoy refuses both ("duplicate address") and so does
    // trellis; both go on serving where they were.
    xds.remove_listener("blocked");
    xds.set_listener(&http_listener("main", port2, "r1"));
    xds.set_listener(&http_listener("second", port, "r1"));
    let v4 = xds.push();
    let nack = xds.wait_nack(LISTENER, &v4).await;
    check_nack(
        &nack,
        proxy,
        delta,
        &v1,
        Fault {
            name: "main",
            field: "address",
            detail: "",
        },
    );
    steadily_served_by(port, "/", "a", "t2", 3).await;
    steadily_served_by(port2, "/", "a", "t2", 3).await;

    // Put back as they were, and the held port freed: all accepted.
    xds.set_listener(&http_listener("main", port, "r1"));
    xds.set_listener(&http_listener("second", port2, "r1"));
    drop(taken);
    xds.set_listener(&http_listener("blocked", taken_port, "r1"));
    let v5 = xds.push();
    xds.wait_ack(LISTENER, &v5).await;
    served_by(taken_port, "/", "a", "t2").await;
    assert_eq!(p.admin_get("/ready").await.status, 200);

    // One listener removed and another added at its address in one update:
    // the address passes from the one to the other.
    xds.remove_listener("second");
    xds.set_listener(&http_listener("third", port2, "r3"));
    xds.set_route(&route_config("r3", vec![route("/", &[("a", 1)])], "t3"));
    let v6 = xds.push();
    xds.wait_ack(LISTENER, &v6).await;
    served_by(port2, "/", "a", "t3").await;
    steadily_served_by(port, "/", "a", "t2", 3).await;
}

/// Lowers the bootstrap's CDS and LDS initial fetch timeouts to `t`.
fn with_fetch_timeouts(bootstrap: &str, t: &str) -> String {
    bootstrap.replace(
        "    ads: {}\n",
        &format!("    ads: {{}}\n    initial_fetch_timeout: {t}\n"),
    )
}

/// A listener that warmed once and then changes to routes the control
/// plane does not have yet warms again: its last version serves on until
/// the new routes arrive. The bootstrap's fetch timeouts (1 s) have long
/// passed by then; the route source's own (Envoy's default, 15 s) has not.
async fn changed_listener_warms_again(proxy: Proxy, delta: bool) {
    let a = Echo::start("a").await;
    let xds = XdsServer::start().await;
    let port = free_port();
    let v1 = base_config(&xds, port, a.addr);
    let mut launch = Launch::new(proxy, &xds, delta).expect("proxy binary");
    launch.bootstrap = with_fetch_timeouts(&launch.bootstrap, "1s");
    let _p = launch.start().await;
    acked_all(&xds, &v1).await;
    served_by(port, "/", "a", "t1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    xds.set_listener(&http_listener("main", port, "r2"));
    let v2 = xds.push();
    xds.wait_ack(LISTENER, &v2).await;
    xds.wait_subscribed(ROUTE_CONFIGURATION, "r2").await;
    steadily_served_by(port, "/", "a", "t1", 5).await;

    xds.set_route(&route_config("r2", vec![route("/", &[("a", 1)])], "t2"));
    let v3 = xds.push();
    xds.wait_ack(ROUTE_CONFIGURATION, &v3).await;
    served_by(port, "/", "a", "t2").await;
}

/// Each subscription waits by its own `initial_fetch_timeout`: with the
/// bootstrap's CDS and LDS waiting for ever (0), an EDS cluster whose
/// endpoints never come and a listener whose routes never come are used
/// once their own sources' timeouts (1 s) pass, and the proxy goes LIVE.
async fn fetch_timeouts_per_subscription(proxy: Proxy, delta: bool) {
    use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::RouteSpecifier, Rds,
    };
    let one_second = prost_types::Duration {
        seconds: 1,
        nanos: 0,
    };
    let xds = XdsServer::start().await;
    let port = free_port();
    let mut cluster = eds_cluster("e");
    if let Some(source) = cluster
        .eds_cluster_config
        .as_mut()
        .and_then(|c| c.eds_config.as_mut())
    {
        source.initial_fetch_timeout = Some(one_second);
    }
    xds.set_cluster(&cluster);
    let mut source = ads_source();
    source.initial_fetch_timeout = Some(one_second);
    xds.set_listener(&hcm_listener(
        "main",
        port,
        Some(RouteSpecifier::Rds(Rds {
            config_source: Some(source),
            route_config_name: "never".to_string(),
        })),
    ));
    xds.push();
    let mut launch = Launch::new(proxy, &xds, delta).expect("proxy binary");
    launch.bootstrap = with_fetch_timeouts(&launch.bootstrap, "0s");
    let _p = launch.start().await;
    // The listener serves, with no routes: 404.
    let what = "the listener without its routes to answer 404";
    eventually(CONVERGE, what, || async {
        (get(port, "/").await?.status == 404).then_some(())
    })
    .await;

    // With no control plane answering at all, the bootstrap's own timeouts
    // bring the proxy LIVE with nothing.
    let silent = XdsServer::start().await;
    let mut launch = Launch::new(proxy, &silent, delta).expect("proxy binary");
    launch.bootstrap = with_fetch_timeouts(&launch.bootstrap, "1s");
    let _q = launch.start().await;
}

/// A removed listener stops taking connections, but what it serves gets
/// the drain time (5 s in these tests): an HTTP request in flight finishes,
/// and a TCP proxy session goes on until the drain time ends, then is
/// closed, as Envoy closes it.
async fn removed_listener_drains(proxy: Proxy, delta: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Echo::start("a").await;
    let t = trellis_tests::upstream::TcpEcho::start().await;
    let xds = XdsServer::start().await;
    let port = free_port();
    base_config(&xds, port, a.addr);
    let (port_h, port_t) = (free_port(), free_port());
    xds.set_cluster(&static_cluster("t", &[t.addr]));
    xds.set_listener(&http_listener("side", port_h, "r1"));
    xds.set_listener(&tcp_listener("tcp", port_t, "t"));
    let v1 = xds.push();
    let _p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    xds.wait_ack(CLUSTER, &v1).await;
    xds.wait_ack(LISTENER, &v1).await;
    served_by(port_h, "/", "a", "t1").await;

    let mut session = tokio::net::TcpStream::connect(trellis_tests::loopback(port_t))
        .await
        .expect("connect to the TCP listener");
    async fn round(session: &mut tokio::net::TcpStream, msg: &[u8]) {
        let mut back = vec![0u8; msg.len()];
        session.write_all(msg).await.expect("write");
        session.read_exact(&mut back).await.expect("echoed");
        assert_eq!(back, msg);
    }
    round(&mut session, b"before").await;
    let seen = a.count();
    let slow = tokio::spawn(get(port_h, "/delay/1500"));
    eventually(CONVERGE, "the slow request upstream", || async {
        (a.count() > seen).then_some(())
    })
    .await;

    xds.remove_listener("side");
    xds.remove_listener("tcp");
    let v2 = xds.push();
    xds.wait_ack(LISTENER, &v2).await;
    round(&mut session, b"during").await;
    let done = slow.await.expect("the request task");
    assert_eq!(
        done.map(|s| s.status),
        Some(200),
        "the request in flight on the removed listener finished"
    );
    eventually(CONVERGE, "the removed listener to refuse", || async {
        get(port_h, "/").await.is_none().then_some(())
    })
    .await;
    let closed = tokio::time::timeout(CONVERGE, async {
        let mut buf = [0u8; 64];
        while let Ok(n) = session.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the TCP session on the removed listener is closed after the drain time"
    );
    served_by(port, "/", "a", "t1").await;
}

/// Hot reload rebuilds only what changed: across an update that adds an
/// unrelated cluster, an unchanged cluster keeps its upstream connections
/// (`upstream_cx_total` does not move) and its health state (no new health
/// check, the same hosts healthy). A removed cluster lets the request in
/// flight to it finish.
async fn clusters_keep_what_an_update_does_not_touch(proxy: Proxy, delta: bool) {
    use xds_protos::envoy::config::core::v3::{health_check, HealthCheck};
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let h = Echo::start("h").await;
    let (refused, _guard) = trellis_tests::refused_address();
    let xds = XdsServer::start().await;
    let port = free_port();
    base_config(&xds, port, a.addr);
    xds.set_cluster(&static_cluster("b", &[b.addr]));
    let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    let mut checked = static_cluster("h", &[h.addr, refused]);
    checked.health_checks = vec![HealthCheck {
        timeout: secs(1),
        interval: secs(60),
        unhealthy_threshold: Some(1),
        healthy_threshold: Some(1),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/".to_string(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    xds.set_cluster(&checked);
    xds.set_route(&route_config(
        "r1",
        vec![route("/delay", &[("b", 1)]), route("/", &[("a", 1)])],
        "t1",
    ));
    let v1 = xds.push();
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    xds.wait_ack(CLUSTER, &v1).await;
    xds.wait_ack(ROUTE_CONFIGURATION, &v1).await;
    steadily_served_by(port, "/", "a", "t1", 5).await;
    let pool = p.stat("cluster.a.upstream_cx_total").await;
    assert!(pool >= 1, "cluster a has connections: {pool}");
    let checked_once = "cluster h's first health checks";
    eventually(CONVERGE, checked_once, || async {
        (p.stat("cluster.h.membership_healthy").await == 1
            && p.stat("cluster.h.health_check.attempt").await >= 2)
            .then_some(())
    })
    .await;
    let attempts = p.stat("cluster.h.health_check.attempt").await;

    xds.set_cluster(&static_cluster("c", &[b.addr]));
    let v2 = xds.push();
    xds.wait_ack(CLUSTER, &v2).await;
    steadily_served_by(port, "/", "a", "t1", 5).await;
    assert_eq!(
        p.stat("cluster.a.upstream_cx_total").await,
        pool,
        "cluster a kept its connections"
    );
    assert_eq!(p.stat("cluster.h.membership_healthy").await, 1);
    assert_eq!(
        p.stat("cluster.h.health_check.attempt").await,
        attempts,
        "cluster h kept its health state without checking again"
    );

    // A request in flight to a cluster that is removed finishes.
    served_by(port, "/delay/0", "b", "t1").await;
    let seen = b.count();
    let slow = tokio::spawn(get(port, "/delay/1500"));
    eventually(CONVERGE, "the slow request upstream", || async {
        (b.count() > seen).then_some(())
    })
    .await;
    xds.remove_cluster("b");
    let v3 = xds.push();
    xds.wait_ack(CLUSTER, &v3).await;
    let done = slow.await.expect("the request task");
    assert_eq!(
        done.map(|s| (s.status, s.upstream)),
        Some((200, Some("b".to_string()))),
        "the request in flight to the removed cluster finished"
    );
    eventually(CONVERGE, "/delay to fail once b is gone", || async {
        (get(port, "/delay/0").await?.status == 503).then_some(())
    })
    .await;
}
