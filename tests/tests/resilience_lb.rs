//! Load balancing: LEAST_REQUEST moves traffic off a slow host, RING_HASH
//! and MAGLEV keep keys on their hosts and move only a removed host's share.

mod resilience_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use resilience_common::{bootstrap, client, cluster, send, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{eventually, free_port, within};

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

/// Share of `n` concurrent-ish requests (8 workers) that reach `slow`.
async fn share(url: &str, slow: &Up, n: usize) -> f64 {
    let before = slow.hits();
    let per = n / 8;
    let mut hs = Vec::new();
    for _ in 0..8 {
        let url = url.to_string();
        hs.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..per {
                assert_eq!(send(&c, &url, &[]).await.status, 200);
            }
        }));
    }
    for h in hs {
        h.await.expect("worker");
    }
    (slow.hits() - before) as f64 / (per * 8) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_gives_a_slow_host_a_falling_share() {
    within(Duration::from_secs(60), "least request", async {
        // Three hosts: Envoy draws the two candidates with replacement, so
        // with two hosts a slow one would keep a floor of 25% (both draws it).
        let (a, b, c) = (
            Up::start("a").await,
            Up::start("b").await,
            Up::start("c").await,
        );
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster(
                "app",
                &[&a, &b, &c],
                "    lb_policy: LEAST_REQUEST\n",
            )],
            "",
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/");
        let even = share(&url, &c, 480).await;
        c.set_delay(100);
        let slow = share(&url, &c, 480).await;
        println!("LEAST_REQUEST share of c: {even:.3} even, {slow:.3} when slow");
        assert!((0.2..0.47).contains(&even), "{even}");
        assert!(slow < 0.2 && slow < even * 0.7, "{slow}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_host_does_not_attract_traffic() {
    // A deliberate difference: Envoy 1.40 sends such a host about 47% of
    // the traffic here (it is never busy, so least-request favours it).
    if trellis_tests::process::testing_envoy() {
        return;
    }
    within(Duration::from_secs(60), "fast failing host", async {
        let (a, b, c) = (
            Up::start("a").await,
            Up::start("b").await,
            Up::start("c").await,
        );
        a.set_delay(20);
        b.set_delay(20);
        c.set_failing(true);
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster(
                "app",
                &[&a, &b, &c],
                "    lb_policy: LEAST_REQUEST\n",
            )],
            "",
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/");
        let mut hs = Vec::new();
        for _ in 0..8 {
            let url = url.clone();
            hs.push(tokio::spawn(async move {
                let c = client();
                for _ in 0..60 {
                    send(&c, &url, &[]).await;
                }
            }));
        }
        for h in hs {
            h.await.expect("worker");
        }
        let total = (a.hits() + b.hits() + c.hits()) as f64;
        let failing = c.hits() as f64 / total;
        println!("LEAST_REQUEST share of a host failing in 0 ms: {failing:.3}");
        // Least-active alone would hand it most requests (it is never busy).
        assert!(failing < 0.2, "{failing}");
    })
    .await;
}

fn hashing_vhosts() -> String {
    r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/cookie" }
              route:
                cluster: app
                hash_policy:
                - cookie: { name: session }
            - match: { prefix: "/ip" }
              route:
                cluster: app
                hash_policy:
                - connection_properties: { source_ip: true }
            - match: { prefix: "/" }
              route:
                cluster: app
                hash_policy:
                - header: { header_name: x-key }
"#
    .to_string()
}

const HC: &str = r#"    health_checks:
    - timeout: 0.5s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: { path: /healthz }
"#;

/// `max_stray`: keys of healthy hosts allowed to move (a ring moves none;
/// Maglev promises only minimal disruption).
async fn keys_stay_and_only_the_removed_share_moves(policy: &str, max_stray: usize) {
    let ups = Arc::new([
        Up::start("a").await,
        Up::start("b").await,
        Up::start("c").await,
        Up::start("d").await,
    ]);
    let port = free_port();
    let p = ProxyProcess::start(&bootstrap(
        port,
        &hashing_vhosts(),
        &[cluster(
            "app",
            &[&ups[0], &ups[1], &ups[2], &ups[3]],
            &format!("    lb_policy: {policy}\n{HC}"),
        )],
        "",
    ))
    .await;
    eventually(Duration::from_secs(10), "all hosts healthy", || async {
        (p.stat("cluster.app.membership_healthy").await == 4).then_some(())
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/k");
    let c = client();
    let mut placed: HashMap<String, String> = HashMap::new();
    for k in 0..300 {
        let key = format!("user-{k}");
        let first = send(&c, &url, &[("x-key", &key)]).await.upstream;
        let again = send(&c, &url, &[("x-key", &key)]).await.upstream;
        assert_eq!(first, again, "{policy}: {key} stays on one host");
        placed.insert(key, first.expect("answered"));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for h in placed.values() {
        *counts.entry(h).or_default() += 1;
    }
    assert_eq!(
        counts.len(),
        4,
        "{policy}: every host owns keys: {counts:?}"
    );
    ups[3].set_healthy(false);
    eventually(Duration::from_secs(10), "d marked unhealthy", || async {
        (p.stat("cluster.app.membership_healthy").await == 3).then_some(())
    })
    .await;
    let (mut moved, mut stray) = (0, 0);
    for (key, host) in &placed {
        let now = send(&c, &url, &[("x-key", key)])
            .await
            .upstream
            .expect("answered");
        if host == "d" {
            assert_ne!(now, "d");
            moved += 1;
        } else if &now != host {
            stray += 1;
        }
    }
    assert_eq!(moved, counts["d"]);
    println!("{policy}: {counts:?}; {moved} keys moved off d, {stray} others moved");
    // Envoy 1.40 re-sizes its ring per healthy host count, so some keys of
    // healthy hosts move too (25 of 226 seen); trellis keeps them put.
    if !trellis_tests::process::testing_envoy() {
        assert!(
            stray <= max_stray,
            "{policy}: {stray} keys left healthy hosts"
        );
    }
    // Cookie and source IP policies are sticky too.
    let cookie_url = format!("http://127.0.0.1:{port}/cookie");
    let one = send(&c, &cookie_url, &[("cookie", "session=abc")])
        .await
        .upstream;
    for _ in 0..10 {
        let again = send(&c, &cookie_url, &[("cookie", "x=1; session=abc")]).await;
        assert_eq!(again.upstream, one);
    }
    let ip_url = format!("http://127.0.0.1:{port}/ip");
    let one = send(&c, &ip_url, &[]).await.upstream;
    for _ in 0..10 {
        assert_eq!(send(&client(), &ip_url, &[]).await.upstream, one);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_keys_and_moves_only_the_removed_share() {
    within(Duration::from_secs(60), "ring hash", async {
        keys_stay_and_only_the_removed_share_moves("RING_HASH", 0).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_keeps_keys_and_moves_only_the_removed_share() {
    within(Duration::from_secs(60), "maglev", async {
        keys_stay_and_only_the_removed_share_moves("MAGLEV", 15).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_a_host_other_than_the_one_that_failed() {
    within(Duration::from_secs(60), "retry host avoidance", async {
        let (good, bad) = (Up::start("good").await, Up::start("bad").await);
        bad.set_failing(true);
        // RANDOM draws the failed host again half the time: only stepping
        // off it makes every retry land on the good host. The predicate is
        // written as Istio emits it.
        let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route:
                cluster: app
                retry_policy:
                  retry_on: 5xx
                  num_retries: 1
                  retry_host_predicate:
                  - name: envoy.retry_host_predicates.previous_hosts
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                  host_selection_retry_max_attempts: 1
"#;
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            vhosts,
            &[cluster("app", &[&good, &bad], "    lb_policy: RANDOM\n")],
            "",
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/");
        let c = client();
        let n = 200;
        let mut failed = 0;
        for _ in 0..n {
            if send(&c, &url, &[]).await.status != 200 {
                failed += 1;
            }
        }
        println!("retries to another host: {failed}/{n} failed, bad host hit {}", bad.hits());
        // Envoy re-draws only `host_selection_retry_max_attempts` times, so
        // it lets about 1 request in 8 fail here; trellis then takes any
        // other eligible host.
        if !trellis_tests::process::testing_envoy() {
            assert_eq!(failed, 0);
        }
        assert!(bad.hits() > 0, "the bad host was drawn first some of the time");
    })
    .await;
}

/// A STATIC cluster `app` over `ups` with the given endpoint weights.
fn weighted(ups: &[(&Up, u32)], policy: &str) -> String {
    let mut eps = String::new();
    for (u, w) in ups {
        eps.push_str(&format!(
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n          load_balancing_weight: {w}\n",
            u.addr.ip(),
            u.addr.port()
        ));
    }
    format!(
        "  - name: app\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: {policy}\n    load_assignment:\n      cluster_name: app\n      endpoints:\n      - lb_endpoints:\n{eps}"
    )
}

/// How many of `n` sequential requests each host answered.
async fn spread(port: u16, n: usize) -> HashMap<String, usize> {
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let s = send(&c, &url, &[]).await;
        *seen.entry(s.upstream.expect("answered")).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_each_host_its_weight() {
    within(Duration::from_secs(60), "weighted round robin", async {
        let (a, b) = (Up::start("a").await, Up::start("b").await);
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[weighted(&[(&a, 3), (&b, 1)], "ROUND_ROBIN")],
            "",
        ))
        .await;
        let seen = spread(port, 400).await;
        println!("ROUND_ROBIN 3:1 over 400: {seen:?}");
        // A weighted schedule, not a draw: within a request or two.
        assert!((298..=302).contains(&seen["a"]), "{seen:?}");
        assert_eq!(seen["a"] + seen["b"], 400);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_evenly_and_ignores_weights_like_envoy() {
    within(Duration::from_secs(60), "random", async {
        let (a, b) = (Up::start("a").await, Up::start("b").await);
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[weighted(&[(&a, 3), (&b, 1)], "RANDOM")],
            "",
        ))
        .await;
        let n = 1000;
        let seen = spread(port, n).await;
        println!("RANDOM 3:1 weights over {n}: {seen:?}");
        // Envoy's RANDOM draws a host uniformly, whatever the weights:
        // 500 ± 5 standard deviations (about 79).
        assert!((421..=579).contains(&seen["a"]), "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_moves_only_the_keys_of_a_host_removed_through_eds() {
    use trellis_tests::xds_server as xds;
    use xds_protos::envoy::config::cluster::v3::cluster::LbPolicy;
    use xds_protos::envoy::config::route::v3::{
        route, route_action, route_action::hash_policy, RouteAction,
    };
    within(Duration::from_secs(60), "ring hash EDS removal", async {
        let ups = [
            Up::start("a").await,
            Up::start("b").await,
            Up::start("c").await,
            Up::start("d").await,
        ];
        let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
        let server = xds::XdsServer::start().await;
        let mut cluster = xds::eds_cluster("c");
        cluster.lb_policy = LbPolicy::RingHash as i32;
        server.set_cluster(&cluster);
        server.set_endpoints(&xds::load_assignment("c", &addrs));
        let mut r = xds::route("/", &[("c", 1)]);
        if let Some(route::Action::Route(RouteAction { hash_policy: h, .. })) = &mut r.action {
            h.push(route_action::HashPolicy {
                policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                    header_name: "x-key".into(),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        server.set_route(&xds::route_config("r", vec![r], "t"));
        let port = free_port();
        server.set_listener(&xds::http_listener("main", port, "r"));
        let v0 = server.push();
        let proxy = if trellis_tests::process::testing_envoy() {
            xds::Proxy::Envoy
        } else {
            xds::Proxy::Trellis
        };
        let _p = xds::Launch::new(proxy, &server, false)
            .expect("proxy binary")
            .start()
            .await;
        server.wait_ack(xds::ROUTE_CONFIGURATION, &v0).await;
        let url = format!("http://127.0.0.1:{port}/k");
        let c = client();
        let mut placed: HashMap<String, String> = HashMap::new();
        for k in 0..300 {
            let key = format!("user-{k}");
            let host = send(&c, &url, &[("x-key", &key)]).await.upstream;
            placed.insert(key, host.expect("answered"));
        }
        server.set_endpoints(&xds::load_assignment("c", &addrs[..3]));
        let v1 = server.push();
        server.wait_ack(xds::CLUSTER_LOAD_ASSIGNMENT, &v1).await;
        eventually(Duration::from_secs(10), "d out of the ring", || async {
            let d_keys = placed.iter().filter(|(_, h)| *h == "d");
            for (key, _) in d_keys {
                if send(&c, &url, &[("x-key", key)]).await.upstream.as_deref() == Some("d") {
                    return None;
                }
            }
            Some(())
        })
        .await;
        let mut stray = 0;
        for (key, host) in placed.iter().filter(|(_, h)| *h != "d") {
            let now = send(&c, &url, &[("x-key", key)]).await.upstream;
            if now.as_deref() != Some(host.as_str()) {
                stray += 1;
            }
        }
        let d = placed.values().filter(|h| *h == "d").count();
        println!("RING_HASH EDS removal: {d} keys were on d, {stray} others moved");
        assert!(d > 30, "d owned a share: {d}");
        // Envoy 1.40 re-sizes its ring on removal and moves others' keys too.
        if !trellis_tests::process::testing_envoy() {
            assert_eq!(stray, 0, "no key moved between the hosts that stayed");
        }
    })
    .await;
}
