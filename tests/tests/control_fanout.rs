//! The control-plane fan-out benchmark tool (`bench/run --scenarios
//! fanout`), small: it must run against the real trellis-control, and a
//! route update must reach exactly the clients that use the route, with one
//! push each (no timing is asserted; figures belong to the benchmark).

use std::time::Duration;

use serde_json::Value;
use trellis_tests::process::workspace_bin;

#[tokio::test]
async fn route_updates_push_exactly_the_affected_clients() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ads_fanout"))
        .arg("--control-bin")
        .arg(workspace_bin("trellis-control"))
        .args(["--nodes", "40", "--services", "3", "--rounds", "2"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("ads_fanout finishes within 2 minutes")
        .expect("ads_fanout runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ads_fanout failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    // 40 nodes: 6 targets, 34 clients; every client uses svc-0, the clients
    // with an even index svc-1.
    let every = &figures["every_client"];
    assert_eq!(every["clients_expected"], 34, "{figures}");
    assert_eq!(every["clients_pushed_max"], 34, "{figures}");
    let share = &figures["one_share"];
    assert_eq!(share["clients_expected"], 17, "{figures}");
    assert_eq!(share["clients_pushed_max"], 17, "only the share: {figures}");
    assert_eq!(
        figures["pushes_during_updates"].as_f64(),
        Some(2.0 * (34.0 + 17.0)),
        "one route push per affected client per round: {figures}"
    );
    assert!(figures["rss_kib_connected"].as_u64() > Some(0));
}
