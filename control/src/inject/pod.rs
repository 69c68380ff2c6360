//! The parts of a pod the injector reads, and App Mesh's per-pod
//! annotations parsed into options. Anything malformed is an error naming
//! the field or annotation, and the pod is then left as it is.

use std::collections::BTreeMap;

use serde_json::Value;

use super::settings::{parse_ports, IgnoredIp, Quantity};

pub const INJECT: &str = "appmesh.k8s.aws/sidecarInjectorWebhook";
pub const VIRTUAL_NODE: &str = "appmesh.k8s.aws/virtualNode";
const PORTS: &str = "appmesh.k8s.aws/ports";
const EGRESS_IGNORED_PORTS: &str = "appmesh.k8s.aws/egressIgnoredPorts";
const EGRESS_IGNORED_IPS: &str = "appmesh.k8s.aws/egressIgnoredIPs";
const IGNORED_UID: &str = "appmesh.k8s.aws/ignoredUID";
const CPU_REQUEST: &str = "appmesh.k8s.aws/cpuRequest";
const MEMORY_REQUEST: &str = "appmesh.k8s.aws/memoryRequest";
const CPU_LIMIT: &str = "appmesh.k8s.aws/cpuLimit";
const MEMORY_LIMIT: &str = "appmesh.k8s.aws/memoryLimit";
const SECRET_MOUNTS: &str = "appmesh.k8s.aws/secretMounts";
const VOLUME_MOUNTS: &str = "appmesh.k8s.aws/volumeMounts";
const SIDECAR_ENV: &str = "appmesh.k8s.aws/sidecarEnv";

/// The pod of an admission request.
#[derive(Debug)]
pub struct Pod {
    /// `metadata.name`, or `generateName` followed by `*` for pods of a
    /// ReplicaSet, which are named after admission.
    pub display_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<String>,
    /// `None` when the pod has no such list: the patch must create it.
    pub init_containers: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
}

fn string_map(value: &Value, path: &str) -> Result<BTreeMap<String, String>, String> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| format!("{path}.{k}: expected a string"))
            })
            .collect(),
        _ => Err(format!("{path}: expected an object")),
    }
}

/// The `name` of each item of a list of named objects.
fn names(value: &Value, path: &str) -> Result<Option<Vec<String>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item["name"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{path}[{i}].name: required string is missing"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(format!("{path}: expected a list")),
    }
}

impl Pod {
    /// Reads `request.object`; errors name the field.
    pub fn parse(object: &Value) -> Result<Pod, String> {
        if !object.is_object() {
            return Err("request.object: expected a Pod object".into());
        }
        let meta = &object["metadata"];
        let display_name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}*"),
            _ => "(unnamed)".to_string(),
        };
        let spec = &object["spec"];
        let containers = names(&spec["containers"], "spec.containers")?
            .ok_or("spec.containers: required list is missing")?;
        Ok(Pod {
            display_name,
            labels: string_map(&meta["labels"], "metadata.labels")?,
            annotations: string_map(&meta["annotations"], "metadata.annotations")?,
            containers,
            init_containers: names(&spec["initContainers"], "spec.initContainers")?,
            volumes: names(&spec["volumes"], "spec.volumes")?,
        })
    }

    /// Whether a previous pass (or another tool) already injected trellis.
    pub fn injected(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c == super::settings::SIDECAR_NAME)
            || self
                .init_containers
                .iter()
                .flatten()
                .any(|c| c == super::settings::INIT_NAME)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// The pod's `appmesh.k8s.aws/sidecarInjectorWebhook` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    In,
    Out,
    /// No annotation: the namespace's default decides.
    Default,
}

pub fn opt(pod: &Pod) -> Result<Opt, String> {
    match pod.annotation(INJECT) {
        None => Ok(Opt::Default),
        Some(v) if v.eq_ignore_ascii_case("enabled") => Ok(Opt::In),
        Some(v) if v.eq_ignore_ascii_case("disabled") => Ok(Opt::Out),
        Some(v) => Err(format!("{INJECT}: '{v}' is neither enabled nor disabled")),
    }
}

/// A `name:path` pair of the mount annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub name: String,
    pub path: String,
}

/// The per-pod settings App Mesh read from annotations; `None` means the
/// injector's default.
#[derive(Debug, Default)]
pub struct Options {
    pub app_ports: Option<Vec<u16>>,
    pub egress_ignored_ports: Option<Vec<u16>>,
    pub egress_ignored_ips: Option<Vec<IgnoredIp>>,
    pub proxy_uid: Option<u32>,
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
    /// Secrets mounted read-only into the sidecar (file-based TLS certificates).
    pub secret_mounts: Vec<Mount>,
    /// Volumes of the pod mounted read-only into the sidecar.
    pub volume_mounts: Vec<Mount>,
    /// Extra environment of the sidecar (`K=V, K2=V2`).
    pub sidecar_env: Vec<(String, String)>,
}

/// A DNS label, as Kubernetes requires of volume names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn pairs(text: &str, separator: char, format: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let mut parts = item.split(separator);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.trim().is_empty() && !b.trim().is_empty() => {
                    Ok((a.trim().to_string(), b.trim().to_string()))
                }
                _ => Err(format!("'{}' is not {format}", item.trim())),
            }
        })
        .collect()
}

fn mounts(text: &str, volume_names: bool) -> Result<Vec<Mount>, String> {
    pairs(text, ':', "name:mountPath")?
        .into_iter()
        .map(|(name, path)| {
            if volume_names && !is_dns_label(&name) {
                return Err(format!("'{name}' cannot name a volume (a DNS label)"));
            }
            if !path.starts_with('/') {
                return Err(format!("'{path}' is not an absolute path"));
            }
            Ok(Mount { name, path })
        })
        .collect()
}

impl Options {
    pub fn parse(pod: &Pod) -> Result<Options, String> {
        let get = |key: &'static str| pod.annotation(key);
        let with = |key: &'static str, e: String| format!("{key}: {e}");
        let quantity = |key: &'static str| {
            get(key)
                .map(|v| Quantity::parse(v.trim()).map_err(|e| with(key, e)))
                .transpose()
        };
        let ports = |key: &'static str| {
            get(key)
                .map(|v| parse_ports(v).map_err(|e| with(key, e)))
                .transpose()
        };
        let secret_mounts = get(SECRET_MOUNTS)
            .map(|v| mounts(v, true).map_err(|e| with(SECRET_MOUNTS, e)))
            .transpose()?
            .unwrap_or_default();
        let volume_mounts = get(VOLUME_MOUNTS)
            .map(|v| mounts(v, false).map_err(|e| with(VOLUME_MOUNTS, e)))
            .transpose()?
            .unwrap_or_default();
        for m in &volume_mounts {
            if !pod.volumes.iter().flatten().any(|v| *v == m.name) {
                return Err(with(
                    VOLUME_MOUNTS,
                    format!("the pod has no volume '{}'", m.name),
                ));
            }
        }
        for m in &secret_mounts {
            if pod.volumes.iter().flatten().any(|v| *v == m.name) {
                return Err(with(
                    SECRET_MOUNTS,
                    format!("the pod already has a volume named '{}'", m.name),
                ));
            }
        }
        Ok(Options {
            app_ports: ports(PORTS)?,
            egress_ignored_ports: ports(EGRESS_IGNORED_PORTS)?,
            egress_ignored_ips: get(EGRESS_IGNORED_IPS)
                .map(|v| IgnoredIp::parse_list(v).map_err(|e| with(EGRESS_IGNORED_IPS, e)))
                .transpose()?,
            proxy_uid: get(IGNORED_UID)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| with(IGNORED_UID, format!("'{v}' is not a user id")))
                })
                .transpose()?,
            cpu_request: quantity(CPU_REQUEST)?,
            memory_request: quantity(MEMORY_REQUEST)?,
            cpu_limit: quantity(CPU_LIMIT)?,
            memory_limit: quantity(MEMORY_LIMIT)?,
            secret_mounts,
            volume_mounts,
            sidecar_env: get(SIDECAR_ENV)
                .map(|v| pairs(v, '=', "NAME=value").map_err(|e| with(SIDECAR_ENV, e)))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}
