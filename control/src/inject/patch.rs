//! The injected containers and the RFC 6902 JSON Patch that adds them: the
//! init container (`trellis-proxy init`, App Mesh's interception rules from
//! its variables) and the sidecar (`trellis-proxy` in App Mesh mode).

use serde_json::{json, Map, Value};

use super::mesh::Node;
use super::pod::{Options, Pod};
use super::settings::{
    PreStopHook, Quantity, Settings, XdsTrust, DEFAULT_PROXY_UID, EGRESS_PORT, INGRESS_PORT,
    INIT_NAME, SIDECAR_NAME,
};

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `{requests, limits}`, leaving out what is unset.
fn resources(
    cpu_request: Option<&Quantity>,
    memory_request: Option<&Quantity>,
    cpu_limit: Option<&Quantity>,
    memory_limit: Option<&Quantity>,
) -> Value {
    let pair = |cpu: Option<&Quantity>, memory: Option<&Quantity>| {
        let mut m = Map::new();
        if let Some(q) = cpu {
            m.insert("cpu".into(), json!(q.as_str()));
        }
        if let Some(q) = memory {
            m.insert("memory".into(), json!(q.as_str()));
        }
        m
    };
    let mut out = Map::new();
    let requests = pair(cpu_request, memory_request);
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    let limits = pair(cpu_limit, memory_limit);
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

/// The pod's containers and settings, resolved once.
pub struct Plan<'a> {
    pub node: &'a Node,
    pub options: &'a Options,
    pub settings: &'a Settings,
}

impl Plan<'_> {
    fn uid(&self) -> u32 {
        self.options.proxy_uid.unwrap_or(DEFAULT_PROXY_UID)
    }

    fn resources(&self) -> Value {
        let (o, d) = (self.options, &self.settings.resources);
        resources(
            o.cpu_request.as_ref().or(d.cpu_request.as_ref()),
            o.memory_request.as_ref().or(d.memory_request.as_ref()),
            o.cpu_limit.as_ref().or(d.cpu_limit.as_ref()),
            o.memory_limit.as_ref().or(d.memory_limit.as_ref()),
        )
    }

    /// Runs as root with NET_ADMIN and NET_RAW: iptables needs both, and
    /// nothing else in the pod gets them.
    pub fn init_container(&self) -> Value {
        let app_ports = self
            .options
            .app_ports
            .as_deref()
            .unwrap_or(&self.node.ports);
        let ignored_ports = self
            .options
            .egress_ignored_ports
            .as_deref()
            .unwrap_or(&self.settings.egress_ignored_ports);
        let ignored_ips: Vec<&str> = self
            .options
            .egress_ignored_ips
            .as_deref()
            .unwrap_or(&self.settings.egress_ignored_ips)
            .iter()
            .map(|ip| ip.as_str())
            .collect();
        json!({
            "name": INIT_NAME,
            "image": self.settings.init_image,
            "command": ["trellis-proxy", "init"],
            "env": [
                env("APPMESH_APP_PORTS", join(app_ports)),
                env("APPMESH_ENVOY_INGRESS_PORT", INGRESS_PORT.to_string()),
                env("APPMESH_ENVOY_EGRESS_PORT", EGRESS_PORT.to_string()),
                env("APPMESH_IGNORE_UID", self.uid().to_string()),
                env("APPMESH_EGRESS_IGNORED_IP", ignored_ips.join(",")),
                env("APPMESH_EGRESS_IGNORED_PORTS", join(ignored_ports)),
            ],
            "resources": self.resources(),
            "securityContext": {
                "runAsUser": 0,
                "runAsNonRoot": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
            },
        })
    }

    /// The admin `/ready` check, run inside the sidecar: the admin API is
    /// bound to 127.0.0.1, out of the kubelet's reach over the network.
    fn ready_probe(&self, initial_delay: u32, period: u32, failures: u32) -> Value {
        json!({
            "exec": {"command": [
                "trellis-proxy", "wait-ready",
                "--admin", format!("127.0.0.1:{}", self.settings.admin_port),
                "--timeout", "1",
            ]},
            "initialDelaySeconds": initial_delay,
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "successThreshold": 1,
            "failureThreshold": failures,
        })
    }

    pub fn sidecar(&self) -> Value {
        let s = self.settings;
        let mut env_vars = vec![
            env("APPMESH_RESOURCE_ARN", self.node.id()),
            env("TRELLIS_XDS_ADDR", s.xds_addr.as_str()),
            env("ENVOY_ADMIN_ACCESS_PORT", s.admin_port.to_string()),
            env("ENVOY_LOG_LEVEL", s.log_level.as_str()),
            env("APPMESH_ENVOY_INGRESS_PORT", INGRESS_PORT.to_string()),
            env("APPMESH_ENVOY_EGRESS_PORT", EGRESS_PORT.to_string()),
            match &s.xds_trust {
                XdsTrust::Bundle(pem) => env("TRELLIS_XDS_CA", pem.as_str()),
                XdsTrust::Plaintext => env("TRELLIS_XDS_PLAINTEXT", "1"),
            },
        ];
        if s.node_tokens {
            // The node's Secret, which `trellis-control token issue --output
            // k8s-secret` prints; without it the pod does not start.
            env_vars.push(json!({
                "name": "TRELLIS_XDS_TOKEN",
                "valueFrom": {"secretKeyRef": {
                    "name": crate::tokens::k8s_secret_name(&self.node.node_id()),
                    "key": crate::tokens::K8S_SECRET_KEY,
                }},
            }));
        }
        let managed: Vec<String> = env_vars
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect();
        // As in App Mesh, the annotation cannot override what the injector sets.
        env_vars.extend(
            self.options
                .sidecar_env
                .iter()
                .filter(|(k, _)| !managed.contains(k))
                .map(|(k, v)| env(k, v.as_str())),
        );
        let mut sidecar = json!({
            "name": SIDECAR_NAME,
            "image": s.sidecar_image,
            "command": ["trellis-proxy"],
            "env": env_vars,
            "resources": self.resources(),
            "securityContext": {"runAsUser": self.uid()},
            "readinessProbe": self.ready_probe(
                s.readiness_probe_initial_delay_s,
                s.readiness_probe_period_s,
                3,
            ),
            // Once LIVE, /ready stays 200 until the drain: a failing check
            // means a proxy that no longer answers at all.
            "livenessProbe": self.ready_probe(30, 10, 6),
        });
        let mut lifecycle = Map::new();
        if s.prestop_delay_s > 0 {
            let wait = match s.prestop_hook {
                PreStopHook::Sleep => json!({"sleep": {"seconds": s.prestop_delay_s}}),
                PreStopHook::Exec => json!({"exec": {"command": [
                    "sleep", s.prestop_delay_s.to_string(),
                ]}}),
            };
            lifecycle.insert("preStop".into(), wait);
        }
        if s.wait_until_proxy_ready {
            lifecycle.insert(
                "postStart".into(),
                json!({"exec": {"command": [
                    "trellis-proxy", "wait-ready",
                    "--admin", format!("127.0.0.1:{}", s.admin_port),
                    "--timeout", "180",
                ]}}),
            );
        }
        if !lifecycle.is_empty() {
            sidecar["lifecycle"] = Value::Object(lifecycle);
        }
        let mounts: Vec<Value> = self
            .options
            .secret_mounts
            .iter()
            .chain(&self.options.volume_mounts)
            .map(|m| json!({"name": m.name, "mountPath": m.path, "readOnly": true}))
            .collect();
        if !mounts.is_empty() {
            sidecar["volumeMounts"] = Value::Array(mounts);
        }
        sidecar
    }

    /// The operations that add both containers (and the secret volumes) to
    /// `pod`: lists the pod lacks are created, others appended to, so the
    /// app's own init containers run before interception starts.
    pub fn patch(&self, pod: &Pod) -> Vec<Value> {
        let mut ops = Vec::new();
        let add_to = |ops: &mut Vec<Value>, list: &str, exists: bool, items: Vec<Value>| {
            if items.is_empty() {
                return;
            }
            if exists {
                for item in items {
                    ops.push(
                        json!({"op": "add", "path": format!("/spec/{list}/-"), "value": item}),
                    );
                }
            } else {
                ops.push(json!({"op": "add", "path": format!("/spec/{list}"), "value": items}));
            }
        };
        add_to(
            &mut ops,
            "initContainers",
            pod.init_containers.is_some(),
            vec![self.init_container()],
        );
        if self.settings.wait_until_proxy_ready {
            // First in the list: the kubelet starts containers in order and
            // waits for each postStart hook.
            ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": self.sidecar()}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": self.sidecar()}));
        }
        let volumes: Vec<Value> = self
            .options
            .secret_mounts
            .iter()
            .map(|m| json!({"name": m.name, "secret": {"secretName": m.name}}))
            .collect();
        add_to(&mut ops, "volumes", pod.volumes.is_some(), volumes);
        ops
    }
}
