//! `/config_dump`: the resources in force, as Envoy's admin.v3 ConfigDump JSON.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{json, Value};

use crate::shared::Shared;

/// Protos → JSON through the reflection pool, with Envoy's snake_case names.
fn to_json<M: Message + prost::Name>(msg: &M) -> Value {
    any_to_json(&M::type_url(), &msg.encode_to_vec())
}

fn any_to_json(type_url: &str, bytes: &[u8]) -> Value {
    let pool = crate::reflect::pool();
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let Some(desc) = pool.get_message_by_name(name) else {
        return Value::Null;
    };
    let Ok(dynamic) = DynamicMessage::decode(desc, bytes) else {
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
        m.insert("@type".into(), Value::String(type_url.to_string()));
    }
    v
}

pub fn render(s: &Shared) -> Value {
    // Held for the whole dump, so every resource's conversion shares one decode.
    let _pool = crate::reflect::pool();
    let snap = s.snapshot.load();
    let mut configs = Vec::new();
    if let Some(b) = &snap.bootstrap {
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": to_json(b.as_ref()),
        }));
    }
    let dynamic = |type_url: &str, key: &str| -> Vec<Value> {
        snap.dynamic
            .iter()
            .filter(|d| d.type_url == type_url)
            .map(|d| {
                let mut v = serde_json::Map::new();
                v.insert("name".into(), Value::String(d.name.clone()));
                v.insert("version_info".into(), Value::String(d.version.clone()));
                v.insert(key.into(), any_to_json(d.type_url, &d.raw));
                Value::Object(v)
            })
            .collect()
    };
    let is_dynamic = |name: &str, type_url: &str| {
        snap.dynamic
            .iter()
            .any(|d| d.type_url == type_url && d.name == name)
    };
    let mut clusters: Vec<_> = snap
        .clusters
        .iter()
        .filter(|c| !is_dynamic(c.name(), xds_protos::type_url::CLUSTER))
        .collect();
    clusters.sort_by(|a, b| a.name().cmp(b.name()));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "static_clusters": clusters.iter().map(|c| json!({"cluster": to_json(&c.config.proto)})).collect::<Vec<_>>(),
        "dynamic_active_clusters": dynamic(xds_protos::type_url::CLUSTER, "cluster"),
    }));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        "dynamic_endpoint_configs": dynamic(xds_protos::type_url::CLUSTER_LOAD_ASSIGNMENT, "endpoint_config"),
    }));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": snap
            .listeners
            .iter()
            .filter(|l| !is_dynamic(&l.name, xds_protos::type_url::LISTENER))
            .map(|l| json!({"listener": to_json(&l.proto)}))
            .collect::<Vec<_>>(),
        "dynamic_listeners": dynamic(xds_protos::type_url::LISTENER, "listener")
            .into_iter()
            .map(|mut v| {
                let name = v.get("name").cloned().unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.remove("name");
                }
                json!({"name": name, "active_state": v})
            })
            .collect::<Vec<_>>(),
    }));
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        "dynamic_route_configs": dynamic(xds_protos::type_url::ROUTE_CONFIGURATION, "route_config"),
    }));
    let static_secrets: Vec<Value> = snap
        .bootstrap
        .iter()
        .flat_map(|b| b.static_resources.iter())
        .flat_map(|sr| sr.secrets.iter())
        .map(|secret| json!({ "name": secret.name, "secret": to_json(secret) }))
        .collect();
    configs.push(json!({
        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "static_secrets": static_secrets,
        "dynamic_active_secrets": dynamic(xds_protos::type_url::SECRET, "secret"),
    }));
    let mut dump = json!({ "configs": configs });
    redact(&mut dump, false);
    dump
}

/// Envoy's redaction of sensitive fields: everything under a `private_key`
/// (or `password`) is replaced, strings by `[redacted]` and bytes by its
/// base64, so key material never leaves through the admin API.
fn redact(v: &mut Value, sensitive: bool) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let inside = sensitive || k == "private_key" || k == "password";
                if inside && k == "inline_bytes" && child.is_string() {
                    *child = Value::String("W3JlZGFjdGVkXQ==".into());
                } else {
                    redact(child, inside);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| redact(c, sensitive)),
        Value::String(s) if sensitive => *s = "[redacted]".into(),
        _ => {}
    }
}
