//! `/config_dump`: the resources in force, as Envoy's admin.v3 ConfigDump JSON.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{json, Value};

use crate::shared::Shared;

/// Protos → JSON through the reflection pool, with Envoy's snake_case names.
fn to_json<M: Message + prost::Name>(msg: &M) -> Value {
    let pool = xds_protos::descriptor_pool();
    let Some(desc) = pool.get_message_by_name(&M::full_name()) else {
        return Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) else {
        return Value::Null;
    };
    let opts = SerializeOptions::new().use_proto_field_name(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    if dynamic.serialize_with_options(&mut ser, &opts).is_err() {
        return Value::Null;
    }
    let mut v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("@type".into(), Value::String(M::type_url()));
    }
    v
}

pub fn render(s: &Shared) -> Value {
    let snap = s.snapshot.load();
    let mut configs = Vec::new();
    if let Some(b) = &snap.bootstrap {
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": to_json(b.as_ref()),
        }));
    }
    let mut clusters: Vec<_> = snap.clusters.iter().collect();
    clusters.sort_by(|a, b| a.name().cmp(b.name()));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "static_clusters": clusters.iter().map(|c| json!({"cluster": to_json(&c.config.proto)})).collect::<Vec<_>>(),
    }));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": snap.listeners.iter().map(|l| json!({"listener": to_json(&l.proto)})).collect::<Vec<_>>(),
    }));
    json!({ "configs": configs })
}
