//! What a spec points at, so writes can insist that targets exist and
//! deletes can refuse while something still points at a resource.

use serde_json::Value;

use super::{Kind, ResourceKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub target: ResourceKey,
    /// Where in the spec the reference sits, for error messages.
    pub field: String,
}

/// References that must resolve: route targets, service providers and
/// gateway route targets. Virtual node backends are left out on purpose:
/// App Mesh lets a node name a backend service before that service exists.
pub fn references(key: &ResourceKey, spec: &Value) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut push = |kind: Kind, name: Option<&str>, field: String| {
        if let Some(name) = name {
            out.push(Reference {
                target: ResourceKey::in_mesh(kind, &key.mesh, name),
                field,
            });
        }
    };
    match key.kind {
        Kind::Route => {
            for route in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
                let targets = spec[route]["action"]["weightedTargets"].as_array();
                for (i, t) in targets.into_iter().flatten().enumerate() {
                    push(
                        Kind::VirtualNode,
                        t["virtualNode"].as_str(),
                        format!("spec.{route}.action.weightedTargets[{i}].virtualNode"),
                    );
                }
            }
        }
        Kind::VirtualService => {
            let provider = &spec["provider"];
            push(
                Kind::VirtualNode,
                provider["virtualNode"]["virtualNodeName"].as_str(),
                "spec.provider.virtualNode.virtualNodeName".into(),
            );
            push(
                Kind::VirtualRouter,
                provider["virtualRouter"]["virtualRouterName"].as_str(),
                "spec.provider.virtualRouter.virtualRouterName".into(),
            );
        }
        Kind::GatewayRoute => {
            for route in ["httpRoute", "http2Route", "grpcRoute"] {
                push(
                    Kind::VirtualService,
                    spec[route]["action"]["target"]["virtualService"]["virtualServiceName"]
                        .as_str(),
                    format!("spec.{route}.action.target.virtualService.virtualServiceName"),
                );
            }
        }
        Kind::Mesh | Kind::VirtualNode | Kind::VirtualRouter | Kind::VirtualGateway => {}
    }
    out
}

/// Features that only exist inside AWS. Accepting them would store a spec
/// that no trellis proxy can ever serve, so they are refused up front with
/// the field that asks for them. (Cloud Map service discovery is served from
/// trellis's own instance registry, so it is not among them.)
pub fn unsupported_feature(spec: &Value, path: &str) -> Option<(String, &'static str)> {
    match spec {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{path}.{k}");
            match k.as_str() {
                "acm" => Some((
                    here,
                    "AWS Certificate Manager (ACM) certificates are not available outside AWS; use file or sds certificates",
                )),
                _ => unsupported_feature(v, &here),
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| unsupported_feature(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_route_targets_and_providers() {
        let key = ResourceKey {
            kind: Kind::Route,
            mesh: "m".into(),
            parent: Some("r".into()),
            name: "x".into(),
        };
        let spec = json!({"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}});
        let refs = references(&key, &spec);
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs[0].target,
            ResourceKey::in_mesh(Kind::VirtualNode, "m", "a")
        );
        let key = ResourceKey::in_mesh(Kind::VirtualService, "m", "s");
        let spec = json!({"provider": {"virtualRouter": {"virtualRouterName": "r"}}});
        assert_eq!(references(&key, &spec)[0].target.kind, Kind::VirtualRouter);
    }

    #[test]
    fn flags_aws_only_features_with_their_path() {
        let spec =
            json!({"listeners": [{"tls": {"certificate": {"acm": {"certificateArn": "x"}}}}]});
        let (path, _) = unsupported_feature(&spec, "spec").unwrap();
        assert_eq!(path, "spec.listeners[0].tls.certificate.acm");
        assert_eq!(
            unsupported_feature(&json!({"serviceDiscovery": {"dns": {}}}), "spec"),
            None
        );
        let cloud_map = json!({"serviceDiscovery": {"awsCloudMap": {"namespaceName": "n", "serviceName": "s"}}});
        assert_eq!(unsupported_feature(&cloud_map, "spec"), None);
    }
}
