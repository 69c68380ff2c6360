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

/// `trellis-control backup` copies a running server's data dir while writes
/// continue; a server started on the copy has every write acknowledged
/// before the backup began, the same CA and the same credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let client = server.client();
    client
        .call("CreateMesh", &json!({"meshName": "kept"}))
        .await
        .expect("mesh");
    for i in 0..20 {
        let input = json!({"meshName": "kept", "virtualNodeName": format!("vn-{i}"), "spec": {}});
        client
            .call("CreateVirtualNode", &input)
            .await
            .expect("node");
    }
    // Writes keep going while the backup runs.
    let writer = {
        let client = server.client();
        tokio::spawn(async move {
            for i in 20..60 {
                let input =
                    json!({"meshName": "kept", "virtualNodeName": format!("vn-{i}"), "spec": {}});
                if client.call("CreateVirtualNode", &input).await.is_err() {
                    break;
                }
            }
        })
    };
    let to = dir.path().join("backup");
    let out = tokio::process::Command::new(support::BIN)
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&to)
        .output()
        .await
        .expect("run backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    writer.await.expect("writer");
    // A second backup into the same folder is refused, naming it.
    let again = std::process::Command::new(support::BIN)
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&to)
        .output()
        .expect("run backup");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    for file in ["credentials", "ca/ca.pem", "ca/ca-key.pem"] {
        assert_eq!(
            std::fs::read(data.join(file)).expect("original"),
            std::fs::read(to.join(file)).expect("copy"),
            "{file} differs"
        );
    }
    let key_mode = std::fs::metadata(to.join("ca/ca-key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "the CA key copy is readable by others");

    drop(server);
    let restored = Server::start(&to, &[]);
    let page = restored
        .client()
        .call(
            "ListVirtualNodes",
            &json!({"meshName": "kept", "limit": 100}),
        )
        .await
        .expect("list");
    let names: Vec<&str> = page["virtualNodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["virtualNodeName"].as_str())
        .collect();
    for i in 0..20 {
        assert!(
            names.contains(&format!("vn-{i}").as_str()),
            "vn-{i} missing"
        );
    }
}
