//! Golden tests: every `tests/xds-golden/*.input.json` (App Mesh resources
//! and registered instances) is translated, encoded to protobuf, decoded
//! again and compared with `*.xds.json`. Set `UPDATE_GOLDEN=1` to rewrite
//! the expectations after a deliberate change, and review the diff.

use std::path::{Path, PathBuf};

use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{json, Value};

use super::*;
use crate::model::{Metadata, Resource};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xds-golden")
}

/// `{"resources": [{"kind", "mesh"?, "parent"?, "name", "spec"}], "instances":
/// [{"mesh"?, "node", "address", "port"} | {"namespace", "service", "attributes"?, "address", "port"}]}`.
pub(super) fn load_case(input: &Value) -> (Snapshot, Instances) {
    let mut resources = Vec::new();
    for r in input["resources"].as_array().into_iter().flatten() {
        let kind = Kind::from_type_name(r["kind"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("bad kind in {r}"));
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let mesh = if kind == Kind::Mesh {
            name.clone()
        } else {
            r["mesh"].as_str().unwrap_or("m").to_string()
        };
        resources.push(Resource {
            key: ResourceKey {
                kind,
                mesh,
                parent: r["parent"].as_str().map(str::to_string),
                name,
            },
            metadata: Metadata {
                arn: String::new(),
                uid: String::new(),
                version: 1,
                created_at: 0.0,
                last_updated_at: 0.0,
                owner: String::new(),
            },
            spec: r["spec"].clone(),
            tags: Vec::new(),
        });
    }
    let mut instances = Instances::new();
    for i in input["instances"].as_array().into_iter().flatten() {
        let text = |k: &str| i[k].as_str().unwrap_or_default().to_string();
        let owner = match i["namespace"].as_str() {
            Some(namespace) => Owner::cloud_map(namespace, &text("service")),
            None => Owner::node(i["mesh"].as_str().unwrap_or("m"), &text("node")),
        };
        let attributes = i["attributes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        instances.entry(owner).or_default().insert(Instance {
            address: text("address"),
            port: i["port"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            attributes,
            // `"sidecar": {"intercepted": B, "listener_ingress": {"P": Q}}`:
            // a connected proxy.
            sidecar: i.get("sidecar").map(|s| Sidecar {
                intercepted: s["intercepted"].as_bool().unwrap_or(false),
                listener_ingress: s["listener_ingress"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, u32::try_from(v.as_u64()?).ok()?)))
                    .collect(),
            }),
        });
    }
    (
        Snapshot {
            revision: 1,
            resources,
        },
        instances,
    )
}

/// What goes on the wire, read back: proof that the JSON is valid Envoy
/// config, in a stable rendering.
fn wire_json(set: &ResourceSet) -> Value {
    let encoded = encode(set).unwrap_or_else(|e| panic!("{e}"));
    let pool = xds_protos::descriptor_pool();
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = serde_json::Map::new();
    for (url, resources) in encoded {
        let name = url.rsplit('/').next().unwrap_or(url);
        let desc = pool
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name}"));
        let items: Vec<Value> = resources
            .values()
            .map(|any| {
                let msg = DynamicMessage::decode(desc.clone(), any.value.as_slice())
                    .unwrap_or_else(|e| panic!("{e}"));
                msg.serialize_with_options(serde_json::value::Serializer, &options)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        if !items.is_empty() {
            out.insert(
                name.rsplit('.').next().unwrap_or(name).to_string(),
                json!(items),
            );
        }
    }
    Value::Object(out)
}

#[test]
fn translation_matches_the_goldens() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    entries.sort();
    for path in entries {
        cases += 1;
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let input: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let (snapshot, instances) = load_case(&input);
        let actual: serde_json::Map<String, Value> = translate_all(&snapshot, &instances)
            .iter()
            .map(|(id, set)| (id.clone(), wire_json(set)))
            .collect();
        let actual = Value::Object(actual);
        let expected_path =
            PathBuf::from(path.to_string_lossy().replace(".input.json", ".xds.json"));
        let rendered = serde_json::to_string_pretty(&actual).unwrap_or_default() + "\n";
        if update {
            std::fs::write(&expected_path, &rendered).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!(
                "{} drifted; rerun with UPDATE_GOLDEN=1 and review. Got:\n{rendered}",
                expected_path.display()
            ));
        }
    }
    assert!(cases > 0, "no golden cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn node_ids_parse_from_paths_and_arns() {
    let id = NodeId::parse("mesh/m/virtualNode/a").unwrap();
    assert_eq!(
        (id.mesh.as_str(), id.gateway, id.name.as_str()),
        ("m", false, "a")
    );
    let id =
        NodeId::parse("arn:aws:appmesh:us-west-2:000000000000:mesh/m/virtualGateway/g").unwrap();
    assert!(id.gateway);
    assert_eq!(id.render(), "mesh/m/virtualGateway/g");
    for bad in [
        "",
        "mesh/m",
        "mesh/m/virtualRouter/r",
        "mesh//virtualNode/a",
    ] {
        assert_eq!(NodeId::parse(bad), None, "{bad}");
    }
}

#[test]
fn ports_come_from_metadata_with_defaults() {
    let meta = json!({META_INGRESS_PORT: 20000, META_EGRESS_PORT: "20001", META_LISTENER_ADDRESS: "127.0.0.1"});
    let p = Ports::from_metadata(meta.as_object().unwrap());
    assert_eq!(
        (p.ingress, p.egress, p.listener_address.as_str()),
        (20000, 20001, "127.0.0.1")
    );
    assert!(
        !p.intercepted(),
        "a loopback proxy is not behind interception"
    );
    assert!(Ports::default().intercepted());
    let meta = json!({META_LISTENER_INGRESS_PORTS: "9090=15010, 8081=15011"});
    let p = Ports::from_metadata(meta.as_object().unwrap());
    assert_eq!(
        p.listener_ingress,
        BTreeMap::from([(9090, 15010), (8081, 15011)])
    );
    assert!(parse_listener_ingress("9090:15010").is_err());
    assert!(parse_listener_ingress("9090=0").is_err());
    let bad = json!({META_INGRESS_PORT: 0, META_EGRESS_PORT: "x", META_LISTENER_ADDRESS: "nope", META_LISTENER_INGRESS_PORTS: "x=1"});
    assert_eq!(
        Ports::from_metadata(bad.as_object().unwrap()),
        Ports::default()
    );
}

fn golden_inputs() -> Vec<Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"))
        })
        .collect()
}

/// A stream skips a model change when [`Deps::unchanged`] says so; that is
/// only safe if translating again would give the same resources. For every
/// golden fixture, every proxy, and every single change (a resource removed,
/// an owner's instances removed, an instance added to an owner): whenever
/// the check says unchanged, the translation must indeed be the same. And
/// the check must not be trivially false: some changes are skipped.
#[test]
fn unchanged_dependencies_mean_unchanged_resources() {
    let ports = Ports::default();
    let (mut skipped, mut retranslated) = (0, 0);
    for input in golden_inputs() {
        let (snapshot, instances) = load_case(&input);
        let model = Model::new(&snapshot);
        let mut changes: Vec<(Snapshot, Instances)> = Vec::new();
        for i in 0..snapshot.resources.len() {
            let mut resources = snapshot.resources.clone();
            resources.remove(i);
            changes.push((
                Snapshot {
                    revision: 2,
                    resources,
                },
                instances.clone(),
            ));
        }
        let mut owners: Vec<Owner> = instances.keys().cloned().collect();
        owners.push(Owner::node("m", "nobody"));
        for owner in owners {
            let mut fewer = instances.clone();
            fewer.remove(&owner);
            let mut more = instances.clone();
            more.entry(owner)
                .or_default()
                .insert(Instance::new("192.0.2.1", 1234));
            changes.push((snapshot.clone(), fewer));
            changes.push((snapshot.clone(), more));
        }
        for id in model.node_ids() {
            let (before, deps) = translate_tracked(&model, &id, &ports, &instances);
            for (snap, inst) in &changes {
                let changed_model = Model::new(snap);
                if deps.unchanged(&changed_model, inst) {
                    skipped += 1;
                    let after = translate(&changed_model, &id, &ports, inst);
                    assert_eq!(
                        after,
                        before,
                        "{}: skipped a change that alters its resources",
                        id.render()
                    );
                } else {
                    retranslated += 1;
                }
            }
        }
    }
    assert!(
        skipped > 0 && retranslated > 0,
        "{skipped} skipped, {retranslated} retranslated"
    );
}

/// `encode_changed` re-encodes only resources whose JSON changed: an
/// unchanged one keeps its previous bytes (here a marker no encoder would
/// produce), a changed one is encoded afresh, a removed one is gone.
#[test]
fn encode_changed_reuses_unchanged_resources() {
    use xds_protos::type_url::CLUSTER;
    let cluster = |name: &str, timeout: &str| json!({"name": name, "type": "STATIC", "connect_timeout": timeout});
    let mut set = ResourceSet::default();
    for name in ["a", "b", "c"] {
        set.clusters.insert(name.into(), cluster(name, "1s"));
    }
    let mut prints = Prints::new();
    let mut first = encode_changed(&set, &Encoded::new(), &mut prints).expect("encode");
    assert_eq!(first, encode(&set).expect("encode"));
    let marker = prost_types::Any {
        type_url: CLUSTER.into(),
        value: b"marker".to_vec(),
    };
    first
        .get_mut(CLUSTER)
        .expect("clusters")
        .insert("a".into(), marker.clone());
    set.clusters.insert("b".into(), cluster("b", "2s"));
    set.clusters.remove("c");
    let second = encode_changed(&set, &first, &mut prints).expect("encode");
    let clusters = &second[CLUSTER];
    assert_eq!(
        clusters["a"], marker,
        "unchanged: reused, not encoded again"
    );
    assert_eq!(
        clusters["b"],
        encode_one(CLUSTER, "b", &cluster("b", "2s")).expect("encode")
    );
    assert!(!clusters.contains_key("c"));
    assert_eq!(prints.len(), 2);
}
