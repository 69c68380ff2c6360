//! A kill -9 at any moment loses no acknowledged write: several writers
//! hammer the API, the server is SIGKILLed mid-stream, and after a restart
//! every write that got a 200 is there.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    server
        .client()
        .call("CreateMesh", &json!({"meshName": "durable"}))
        .await
        .expect("mesh");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = server.client();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("vn-{w}-{i}");
                let input = json!({"meshName": "durable", "virtualNodeName": name, "spec": {}});
                match client.call("CreateVirtualNode", &input).await {
                    Ok(_) => acked.lock().expect("lock").push(name),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 10,
        "too few writes before the kill: {}",
        acked.len()
    );

    let server = Server::start(&data, &[]);
    let client = server.client();
    let mut stored = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut input = json!({"meshName": "durable", "limit": 100});
        if let Some(t) = &token {
            input["nextToken"] = json!(t);
        }
        let page = client.call("ListVirtualNodes", &input).await.expect("list");
        for vn in page["virtualNodes"].as_array().into_iter().flatten() {
            stored.push(
                vn["virtualNodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "lost {} acknowledged writes: {lost:?}",
        lost.len()
    );
}
