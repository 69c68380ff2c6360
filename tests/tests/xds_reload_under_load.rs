//! Hot reload under load: 16 HTTP/1.1 keep-alive clients send a bounded
//! stream of requests for about 20 s while the control plane makes 100
//! updates (route weights, endpoints, cluster changes, clusters added and
//! removed, a path re-pointed). Not one request may fail, and every update
//! must be ACKed and seen in traffic before the next one, so a proxy that
//! drops, stalls or skips an update fails here.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use trellis_tests::upstream::Echo;
use trellis_tests::xds_server::*;
use trellis_tests::{client, eventually, free_port};

const CLIENTS: usize = 16;
/// A bound on each client's requests, whatever the timing.
const MAX_REQUESTS_PER_CLIENT: u64 = 50_000;
const UPDATES: usize = 100;
/// Pacing: 100 updates over about 20 s.
const UPDATE_EVERY: Duration = Duration::from_millis(200);
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(10);
const PATHS: [&str; 4] = ["/", "/c0", "/x", "/extra"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw() {
    run(Proxy::Envoy, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta() {
    run(Proxy::Envoy, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_sotw() {
    run(Proxy::Trellis, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_delta() {
    run(Proxy::Trellis, true).await
}

/// Listener updates under load: every update also replaces the listener
/// itself (a new listener-level stat prefix), so the proxy swaps listeners
/// and drains the old one's keep-alive connections while they are busy.
mod listener_replaced {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_sotw() {
        run_with(Proxy::Envoy, false, Listeners::Replaced).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_delta() {
        run_with(Proxy::Envoy, true, Listeners::Replaced).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trellis_sotw() {
        run_with(Proxy::Trellis, false, Listeners::Replaced).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trellis_delta() {
        run_with(Proxy::Trellis, true, Listeners::Replaced).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listeners {
    Kept,
    Replaced,
}

/// Fewer, slower updates when each one replaces the listener: a drain is
/// heavier than a route swap.
const LISTENER_UPDATES: usize = 25;
const LISTENER_UPDATE_EVERY: Duration = Duration::from_millis(400);

async fn run(proxy: Proxy, delta: bool) {
    run_with(proxy, delta, Listeners::Kept).await
}

async fn run_with(proxy: Proxy, delta: bool, listeners: Listeners) {
    if proxy.bin().is_none() {
        eprintln!("skipped: no Envoy binary (set ENVOY_BIN)");
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, scenario(proxy, delta, listeners))
        .await
        .expect("the reload scenario finishes in time");
}

/// The config at one update: what each path must be served by.
#[derive(Clone, Debug)]
struct Plan {
    tag: String,
    /// Weight of c0 on `/` (c1 gets the rest).
    weight: u32,
    /// Which echo the EDS cluster c0 points at (0 or 1).
    c0_endpoint: usize,
    /// Which echo the static cluster c1 points at (0 or 1).
    c1_endpoint: usize,
    /// Where `/x` goes: "c0" or "c1".
    x_to: &'static str,
    /// The cluster `/extra` goes to, and its echo.
    extra: (String, usize),
    /// Extra clusters still defined (unrouted ones wait before removal).
    extras: Vec<(String, usize)>,
}

impl Plan {
    fn c0(&self) -> String {
        format!("c0-{}", self.c0_endpoint)
    }
    fn c1(&self) -> String {
        format!("c1-{}", self.c1_endpoint)
    }
    fn extra_name(&self) -> String {
        format!("extra-{}", self.extra.1)
    }

    /// The upstreams that may answer `path` under this plan.
    fn expected(&self, path: &str) -> BTreeSet<String> {
        match path {
            "/" => {
                let mut s = BTreeSet::new();
                if self.weight > 0 {
                    s.insert(self.c0());
                }
                if self.weight < 100 {
                    s.insert(self.c1());
                }
                s
            }
            "/c0" => [self.c0()].into(),
            "/x" if self.x_to == "c0" => [self.c0()].into(),
            "/x" => [self.c1()].into(),
            _ => [self.extra_name()].into(),
        }
    }

    fn apply(&self, xds: &XdsServer, echoes: &Echoes) {
        xds.set_endpoints(&load_assignment("c0", &[echoes.c0[self.c0_endpoint].addr]));
        xds.set_cluster(&static_cluster("c1", &[echoes.c1[self.c1_endpoint].addr]));
        for (name, e) in &self.extras {
            xds.set_cluster(&static_cluster(name, &[echoes.extra[*e].addr]));
        }
        xds.set_route(&route_config(
            "r1",
            vec![
                route("/c0", &[("c0", 1)]),
                route("/x", &[(self.x_to, 1)]),
                route("/extra", &[(&self.extra.0, 1)]),
                route("/", &[("c0", self.weight), ("c1", 100 - self.weight)]),
            ],
            &self.tag,
        ));
    }

    /// Update `i` (from 1): a new tag, plus one of four kinds of change.
    fn next(&self, i: usize, xds: &XdsServer) -> Plan {
        let mut p = self.clone();
        p.tag = format!("u{i}");
        match i % 4 {
            0 => p.weight = [10, 50, 90, 30, 70][i % 5],
            1 => p.c0_endpoint ^= 1,
            2 => {
                // A new cluster takes `/extra`; the one it replaced stays
                // defined (unrouted) until the next such update removes it,
                // so no route ever points at a removed cluster.
                let name = format!("extra{i}");
                let e = (i / 4) % 2;
                let keep = p.extra.clone();
                for (old, _) in p.extras.drain(..) {
                    if old != keep.0 {
                        xds.remove_cluster(&old);
                    }
                }
                p.extras = vec![keep, (name.clone(), e)];
                p.extra = (name, e);
                p.c1_endpoint ^= 1;
            }
            _ => p.x_to = if p.x_to == "c0" { "c1" } else { "c0" },
        }
        p
    }
}

struct Echoes {
    c0: [Echo; 2],
    c1: [Echo; 2],
    extra: [Echo; 2],
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
    tags: Mutex<BTreeSet<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failures.lock().expect("failures lock");
        if f.len() < 10 {
            f.push(what);
        }
    }
}

/// One keep-alive client: its own connection pool, requests back to back.
/// A request the pool sent on a connection the proxy was closing is not
/// sent again behind the test's back: it counts as failed.
async fn load_client(n: usize, port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .retry_canceled_requests(false)
        .build_http();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < MAX_REQUESTS_PER_CLIENT {
        let path = PATHS[(n + i as usize) % PATHS.len()];
        i += 1;
        let uri = format!("http://127.0.0.1:{port}{path}");
        let req = http::Request::get(&uri)
            .body(Empty::new())
            .expect("a valid request");
        let resp = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tally.fail(format!("{path}: {e:?}"));
                continue;
            }
            Err(_) => {
                tally.fail(format!("{path}: no answer in 10 s"));
                continue;
            }
        };
        let status = resp.status();
        let tag = resp
            .headers()
            .get(ROUTE_TAG_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await;
        match (status.as_u16(), tag, body) {
            (200, Some(tag), Ok(_)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.tags.lock().expect("tags lock").insert(tag);
            }
            (s, tag, body) => tally.fail(format!(
                "{path}: status {s}, tag {tag:?}, body {:?}",
                body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            )),
        }
    }
}

/// Whether one fresh request to `path` is served under `plan`.
async fn probe(port: u16, path: &str, plan: &Plan) -> Option<()> {
    let r = client::get(&format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let upstream = r.header("x-upstream")?.to_string();
    (r.status == 200
        && r.header(ROUTE_TAG_HEADER) == Some(plan.tag.as_str())
        && plan.expected(path).contains(&upstream))
    .then_some(())
}

async fn converged(port: u16, plan: &Plan) {
    for path in PATHS {
        let what = format!("{path} served under {plan:?}");
        eventually(CONVERGE, &what, || probe(port, path, plan)).await;
    }
}

async fn scenario(proxy: Proxy, delta: bool, listeners: Listeners) {
    let (updates, every) = match listeners {
        Listeners::Kept => (UPDATES, UPDATE_EVERY),
        Listeners::Replaced => (LISTENER_UPDATES, LISTENER_UPDATE_EVERY),
    };
    let echoes = Echoes {
        c0: [Echo::start("c0-0").await, Echo::start("c0-1").await],
        c1: [Echo::start("c1-0").await, Echo::start("c1-1").await],
        extra: [Echo::start("extra-0").await, Echo::start("extra-1").await],
    };
    let xds = XdsServer::start().await;
    let port = free_port();
    let mut plan = Plan {
        tag: "u0".to_string(),
        weight: 50,
        c0_endpoint: 0,
        c1_endpoint: 0,
        x_to: "c0",
        extra: ("extra0".to_string(), 0),
        extras: vec![("extra0".to_string(), 0)],
    };
    xds.set_cluster(&eds_cluster("c0"));
    xds.set_listener(&http_listener("main", port, "r1"));
    plan.apply(&xds, &echoes);
    let v0 = xds.push();
    let p = Launch::new(proxy, &xds, delta)
        .expect("proxy binary")
        .start()
        .await;
    xds.wait_ack(ROUTE_CONFIGURATION, &v0).await;
    converged(port, &plan).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(load_client(n, port, stop.clone(), tally.clone())))
        .collect();

    let mut tick = tokio::time::interval(every);
    let mut versions = Vec::new();
    for i in 1..=updates {
        tick.tick().await;
        plan = plan.next(i, &xds);
        plan.apply(&xds, &echoes);
        if listeners == Listeners::Replaced {
            let mut l = http_listener("main", port, "r1");
            l.stat_prefix = format!("main{i}");
            xds.set_listener(&l);
        }
        let v = xds.push();
        xds.wait_ack(ROUTE_CONFIGURATION, &v).await;
        converged(port, &plan).await;
        versions.push(v);
    }
    // The final state holds steadily.
    for _ in 0..5 {
        for path in PATHS {
            probe(port, path, &plan)
                .await
                .unwrap_or_else(|| panic!("{path} not served under the final {plan:?}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a load client finishes");
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let failures = tally.first_failures.lock().expect("failures lock").clone();
    let tags = tally.tags.lock().expect("tags lock").len();
    eprintln!("{proxy:?} delta={delta} {listeners:?}: {ok} requests ok, {failed} failed, {tags} route tags seen by the load");
    assert_eq!(failed, 0, "failed requests, first ones: {failures:#?}");
    assert!(ok > 1000, "the load ran: {ok} requests");
    // Every update was accepted, none rejected.
    let nacks: Vec<_> = xds.requests().into_iter().filter(|r| r.is_nack()).collect();
    assert!(nacks.is_empty(), "no NACKs under load: {nacks:?}");
    for t in [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION] {
        let v = xds.version_of(t);
        xds.wait_ack(t, &v).await;
    }
    assert_eq!(xds.version_of(ROUTE_CONFIGURATION), versions[updates - 1]);
    assert_eq!(p.stat("cluster_manager.cds.update_rejected").await, 0);
}
