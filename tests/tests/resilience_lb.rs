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
        let (a, b) = (Up::start("a").await, Up::start("b").await);
        let port = free_port();
        let _p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster("app", &[&a, &b], "    lb_policy: LEAST_REQUEST\n")],
            "",
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/");
        let even = share(&url, &b, 400).await;
        b.set_delay(100);
        let slow = share(&url, &b, 400).await;
        println!("LEAST_REQUEST share of b: {even:.3} even, {slow:.3} when slow");
        assert!((0.3..0.7).contains(&even), "{even}");
        assert!(slow < 0.2 && slow < even, "{slow}");
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
    assert!(
        stray <= max_stray,
        "{policy}: {stray} keys left healthy hosts"
    );
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
