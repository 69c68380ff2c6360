//! A kill -9 at any moment loses no acknowledged write and leaves no
//! half-applied one: several writers hammer the API, the server is
//! SIGKILLed mid-stream, and after a restart every write that got a 200 is
//! there, whole.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::Server;
use trellis_control::api::client::Client;
use trellis_control::ErrorKind;

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

/// One writer's node `vn-W-I`: created on port 1000+I with tags and a
/// clientToken, then updated to port 2000+I with another clientToken.
fn create_input(w: usize, i: usize) -> Value {
    json!({
        "meshName": "whole",
        "virtualNodeName": format!("vn-{w}-{i}"),
        "clientToken": format!("create-{w}-{i}"),
        "spec": {"listeners": [{"portMapping": {"port": 1000 + i, "protocol": "http"}}]},
        "tags": [{"key": "writer", "value": w.to_string()}, {"key": "seq", "value": i.to_string()}],
    })
}

fn update_input(w: usize, i: usize) -> Value {
    json!({
        "meshName": "whole",
        "virtualNodeName": format!("vn-{w}-{i}"),
        "clientToken": format!("update-{w}-{i}"),
        "spec": {"listeners": [{"portMapping": {"port": 2000 + i, "protocol": "http"}}]},
    })
}

fn port(node: &Value) -> u64 {
    node["spec"]["listeners"][0]["portMapping"]["port"]
        .as_u64()
        .unwrap_or(0)
}

/// What each writer got a 200 for: `(w, i, created, updated)`.
type Acks = Arc<Mutex<Vec<(usize, usize, bool, bool)>>>;

async fn write_until_refused(client: Client, w: usize, acks: Acks) {
    for i in 0.. {
        let created = client
            .call("CreateVirtualNode", &create_input(w, i))
            .await
            .is_ok();
        let updated = created
            && client
                .call("UpdateVirtualNode", &update_input(w, i))
                .await
                .is_ok();
        acks.lock().expect("lock").push((w, i, created, updated));
        if !updated {
            break;
        }
    }
}

/// Writers create nodes with tags and clientTokens and update them with
/// other tokens; after a kill -9 and a restart each node is whole: its
/// version matches its spec (1 with the created port, 2 with the updated
/// one), its tags are all there, and each applied write's idempotency record
/// is there (a retry with its token replays the reply) while an unapplied
/// one's is not (a retry applies it now).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_write_is_half_applied_after_kill_9() {
    const WRITERS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    server
        .client()
        .call("CreateMesh", &json!({"meshName": "whole"}))
        .await
        .expect("mesh");
    let acks: Acks = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write_until_refused(server.client(), w, acks.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for w in writers {
        w.await.expect("writer");
    }
    let acks = acks.lock().expect("lock").clone();
    assert!(
        acks.iter().filter(|a| a.3).count() >= WRITERS,
        "too few writes before the kill: {acks:?}"
    );

    let server = Server::start(&data, &[]);
    let client = server.client();
    for &(w, i, created, updated) in &acks {
        let name = format!("vn-{w}-{i}");
        let described = client
            .call(
                "DescribeVirtualNode",
                &json!({"meshName": "whole", "virtualNodeName": name}),
            )
            .await;
        let node = match described {
            Ok(d) => d["virtualNode"].clone(),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::NotFound, "{name}: {e}");
                assert!(!created, "{name}: an acknowledged create was lost");
                // Neither the node nor its token's record: a retry creates it.
                let retried = client
                    .call("CreateVirtualNode", &create_input(w, i))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: retrying the create: {e}"));
                assert_eq!(retried["virtualNode"]["metadata"]["version"], 1);
                continue;
            }
        };
        let version = node["metadata"]["version"].as_u64().expect("version");
        let expected_port = match version {
            1 => 1000 + i as u64,
            2 => 2000 + i as u64,
            v => panic!("{name}: version {v} after one create and one update"),
        };
        assert_eq!(
            port(&node),
            expected_port,
            "{name}: version {version} with another spec"
        );
        assert!(
            !updated || version == 2,
            "{name}: an acknowledged update was lost"
        );
        let tags = client
            .call(
                "ListTagsForResource",
                &json!({"resourceArn": node["metadata"]["arn"]}),
            )
            .await
            .expect("tags");
        let mut tags: Vec<(String, String)> = tags["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or_default().into(),
                    t["value"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        tags.sort();
        assert_eq!(
            tags,
            [
                ("seq".to_string(), i.to_string()),
                ("writer".to_string(), w.to_string())
            ],
            "{name}: tags"
        );
        // The create's record is there: its retry replays the first reply.
        let replay = client
            .call("CreateVirtualNode", &create_input(w, i))
            .await
            .unwrap_or_else(|e| panic!("{name}: the create's token was not recorded: {e}"));
        assert_eq!(
            replay["virtualNode"]["metadata"]["uid"],
            node["metadata"]["uid"]
        );
        assert_eq!(replay["virtualNode"]["metadata"]["version"], 1);
        // The update's record is there exactly when the update is.
        let update = client
            .call("UpdateVirtualNode", &update_input(w, i))
            .await
            .unwrap_or_else(|e| panic!("{name}: retrying the update: {e}"));
        assert_eq!(update["virtualNode"]["metadata"]["version"], 2, "{name}");
        let after = client
            .call(
                "DescribeVirtualNode",
                &json!({"meshName": "whole", "virtualNodeName": name}),
            )
            .await
            .expect("describe");
        assert_eq!(
            after["virtualNode"]["metadata"]["version"], 2,
            "{name}: a replayed update applied again"
        );
    }
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
