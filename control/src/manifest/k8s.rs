//! App Mesh controller manifests (`appmesh.k8s.aws/v1beta2`) translated to
//! API inputs the way the controller does it: `awsName` defaults, references
//! by Kubernetes name (`virtualNodeRef`, ...) or ARN resolved to App Mesh
//! names, inline routes split out, and the mesh taken from `meshRef` or from
//! the namespace labels that `namespaceSelector` matches.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{Document, ManifestError, Source};
use crate::inject::{LabelSelector, PodBinding};
use crate::model::{Arn, Kind};

const API_GROUP: &str = "appmesh.k8s.aws/";
const API_VERSION: &str = "appmesh.k8s.aws/v1beta2";

/// Kubernetes-only members of each kind's spec; the controller uses them to
/// pick pods and namespaces, App Mesh never sees them.
fn k8s_only(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Mesh => &["awsName", "namespaceSelector", "meshOwner"],
        Kind::VirtualNode => &["awsName", "meshRef", "podSelector"],
        Kind::VirtualRouter => &["awsName", "meshRef", "routes"],
        Kind::VirtualService => &["awsName", "meshRef"],
        Kind::VirtualGateway => &[
            "awsName",
            "meshRef",
            "podSelector",
            "namespaceSelector",
            "gatewayRouteSelector",
        ],
        Kind::GatewayRoute => &["awsName", "meshRef", "virtualGatewayRef"],
        Kind::Route => &["name"],
    }
}

struct Object<'a> {
    file: &'a Path,
    index: usize,
    kind: Kind,
    name: String,
    namespace: String,
    labels: Map<String, Value>,
    spec: &'a Value,
}

impl Object<'_> {
    fn fail(&self, message: impl Into<String>) -> ManifestError {
        ManifestError::new(
            self.file,
            Some(self.index),
            Some(format!("{} {}", self.kind.type_name(), self.name)),
            message,
        )
    }

    /// The App Mesh name the controller gives this object.
    fn aws_name(&self) -> String {
        if let Some(n) = self.spec["awsName"].as_str() {
            return n.to_string();
        }
        default_aws_name(self.kind, &self.name, &self.namespace)
    }
}

fn default_aws_name(kind: Kind, name: &str, namespace: &str) -> String {
    match kind {
        Kind::Mesh | Kind::Route => name.to_string(),
        Kind::VirtualService => format!("{name}.{namespace}"),
        _ => format!("{name}_{namespace}"),
    }
}

fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let Some(wanted) = selector["matchLabels"].as_object() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

struct Context<'a> {
    objects: Vec<Object<'a>>,
    namespace_labels: BTreeMap<String, Map<String, Value>>,
    default_mesh: Option<&'a str>,
}

impl<'a> Context<'a> {
    fn find(&self, kind: Kind, name: &str, namespace: &str) -> Option<&Object<'a>> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name && o.namespace == namespace)
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object<'a>> {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// The App Mesh name behind a `*Ref` (`{name, namespace}`).
    fn resolve_ref(
        &self,
        kind: Kind,
        reference: &Value,
        from: &Object<'_>,
        path: &str,
    ) -> Result<String, ManifestError> {
        let name = reference["name"]
            .as_str()
            .ok_or_else(|| from.fail(format!("{path}.name: required field is missing")))?;
        let namespace = reference["namespace"].as_str().unwrap_or(&from.namespace);
        Ok(match self.find(kind, name, namespace) {
            Some(target) => target.aws_name(),
            None => default_aws_name(kind, name, namespace),
        })
    }

    fn mesh_of(&self, obj: &Object<'_>) -> Result<String, ManifestError> {
        if let Some(name) = obj.spec["meshRef"]["name"].as_str() {
            return Ok(self
                .of_kind(Kind::Mesh)
                .find(|m| m.name == name)
                .map_or_else(|| name.to_string(), Object::aws_name));
        }
        if let Some(labels) = self.namespace_labels.get(&obj.namespace) {
            let selected: Vec<&Object<'_>> = self
                .of_kind(Kind::Mesh)
                .filter(|m| selector_matches(&m.spec["namespaceSelector"], labels))
                .collect();
            if let [mesh] = selected.as_slice() {
                return Ok(mesh.aws_name());
            }
        }
        let meshes: Vec<&Object<'_>> = self.of_kind(Kind::Mesh).collect();
        if let [mesh] = meshes.as_slice() {
            return Ok(mesh.aws_name());
        }
        self.default_mesh.map(str::to_string).ok_or_else(|| {
            obj.fail(format!(
                "spec.meshRef: not set, and no single Mesh in the files selects namespace {} \
                 (pass --mesh to name the mesh)",
                obj.namespace
            ))
        })
    }

    fn gateway_of(&self, obj: &Object<'_>) -> Result<String, ManifestError> {
        let reference = &obj.spec["virtualGatewayRef"];
        if !reference.is_null() {
            return self.resolve_ref(
                Kind::VirtualGateway,
                reference,
                obj,
                "spec.virtualGatewayRef",
            );
        }
        let gateways: Vec<&Object<'_>> = self.of_kind(Kind::VirtualGateway).collect();
        let labels = self.namespace_labels.get(&obj.namespace);
        let selected: Vec<&Object<'_>> = gateways
            .iter()
            .copied()
            .filter(|g| {
                labels.is_some_and(|l| selector_matches(&g.spec["namespaceSelector"], l))
                    && (g.spec["gatewayRouteSelector"].is_null()
                        || selector_matches(&g.spec["gatewayRouteSelector"], &obj.labels))
            })
            .collect();
        match (selected.as_slice(), gateways.as_slice()) {
            ([g], _) | ([], [g]) => Ok(g.aws_name()),
            _ => Err(obj.fail(
                "spec.virtualGatewayRef: not set, and no single VirtualGateway in the files selects this route",
            )),
        }
    }

    /// Rewrites controller references into API members: `virtualNodeRef`
    /// or `virtualNodeARN` become `virtualNodeName` (or `virtualNode` inside
    /// a weighted target), and so on for the other kinds.
    fn rewrite(
        &self,
        value: &Value,
        from: &Object<'_>,
        path: &str,
        weighted: bool,
    ) -> Result<Value, ManifestError> {
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, v) in map {
                    let here = format!("{path}.{key}");
                    let reference = [
                        Kind::VirtualNode,
                        Kind::VirtualRouter,
                        Kind::VirtualService,
                        Kind::VirtualGateway,
                    ]
                    .into_iter()
                    .find_map(|k| {
                        let base = k.segment();
                        if *key == format!("{base}Ref") {
                            Some((k, false))
                        } else if *key == format!("{base}ARN") {
                            Some((k, true))
                        } else {
                            None
                        }
                    });
                    match reference {
                        Some((kind, by_arn)) => {
                            let name = if by_arn {
                                let text = v.as_str().unwrap_or_default();
                                Arn::parse(text)
                                    .filter(|a| a.key.kind == kind)
                                    .map(|a| a.key.name)
                                    .ok_or_else(|| {
                                        from.fail(format!(
                                            "{here}: '{text}' is not a {} ARN",
                                            kind.type_name()
                                        ))
                                    })?
                            } else {
                                self.resolve_ref(kind, v, from, &here)?
                            };
                            let member = if weighted && kind == Kind::VirtualNode {
                                "virtualNode".to_string()
                            } else {
                                kind.name_field().to_string()
                            };
                            out.insert(member, json!(name));
                        }
                        None => {
                            let child_weighted = key == "weightedTargets";
                            out.insert(
                                key.clone(),
                                self.rewrite_child(v, from, &here, child_weighted)?,
                            );
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn rewrite_child(
        &self,
        value: &Value,
        from: &Object<'_>,
        path: &str,
        weighted: bool,
    ) -> Result<Value, ManifestError> {
        match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.rewrite(v, from, &format!("{path}[{i}]"), weighted))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => self.rewrite(other, from, path, false),
        }
    }

    fn spec_for(
        &self,
        obj: &Object<'_>,
        kind: Kind,
        spec: &Value,
        path: &str,
    ) -> Result<Value, ManifestError> {
        let mut stripped = spec.clone();
        if let Some(map) = stripped.as_object_mut() {
            for key in k8s_only(kind) {
                map.remove(*key);
            }
        }
        self.rewrite(&stripped, obj, path, false)
    }

    /// A VirtualNode's namespace, name and `podSelector`, for the injector.
    fn pod_binding(&self, obj: &Object<'_>, mesh: &str) -> Result<PodBinding, ManifestError> {
        let pod_selector = match &obj.spec["podSelector"] {
            Value::Null => None,
            v => Some(LabelSelector::parse(v).map_err(|e| {
                let path = if e.path.is_empty() {
                    "spec.podSelector".to_string()
                } else {
                    format!("spec.podSelector.{}", e.path)
                };
                obj.fail(format!("{path}: {}", e.message))
            })?),
        };
        Ok(PodBinding {
            mesh_name: mesh.to_string(),
            virtual_node_name: obj.aws_name(),
            namespace: obj.namespace.clone(),
            name: obj.name.clone(),
            pod_selector,
        })
    }

    fn translate(&self, obj: &Object<'_>) -> Result<Vec<Document>, ManifestError> {
        let doc = |kind: Kind, input: Value| Document {
            file: obj.file.to_path_buf(),
            index: obj.index,
            kind,
            input,
            pods: None,
        };
        let name = obj.aws_name();
        let spec = self.spec_for(obj, obj.kind, obj.spec, "spec")?;
        if obj.kind == Kind::Mesh {
            return Ok(vec![doc(
                Kind::Mesh,
                json!({"meshName": name, "spec": spec}),
            )]);
        }
        let mesh = self.mesh_of(obj)?;
        let mut input = json!({"meshName": mesh, "spec": spec});
        input[obj.kind.name_field()] = json!(name);
        if obj.kind == Kind::GatewayRoute {
            input["virtualGatewayName"] = json!(self.gateway_of(obj)?);
        }
        let mut first = doc(obj.kind, input);
        if obj.kind == Kind::VirtualNode {
            first.pods = Some(self.pod_binding(obj, &mesh)?);
        }
        let mut docs = vec![first];
        if obj.kind == Kind::VirtualRouter {
            let routes = obj.spec["routes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, route) in routes.iter().enumerate() {
                let path = format!("spec.routes[{i}]");
                let route_name = route["name"]
                    .as_str()
                    .ok_or_else(|| obj.fail(format!("{path}.name: required field is missing")))?;
                let spec = self.spec_for(obj, Kind::Route, route, &path)?;
                docs.push(doc(
                    Kind::Route,
                    json!({"meshName": mesh, "virtualRouterName": name, "routeName": route_name, "spec": spec}),
                ));
            }
        }
        Ok(docs)
    }
}

fn object<'a>(
    file: &'a Path,
    index: usize,
    value: &'a Value,
) -> Result<Option<Object<'a>>, ManifestError> {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind_name = value["kind"].as_str().unwrap_or_default();
    if !api_version.starts_with(API_GROUP) {
        return Ok(None);
    }
    let fail = |message: String| {
        ManifestError::new(file, Some(index), Some(kind_name.to_string()), message)
    };
    let kind = Kind::from_type_name(kind_name)
        .filter(|k| *k != Kind::Route)
        .ok_or_else(|| {
            fail(format!(
                "kind: '{kind_name}' is not an App Mesh controller kind"
            ))
        })?;
    if api_version != API_VERSION {
        return Err(fail(format!(
            "apiVersion: {api_version} is not supported; use {API_VERSION}"
        )));
    }
    let name = value["metadata"]["name"]
        .as_str()
        .ok_or_else(|| fail("metadata.name: required field is missing".into()))?;
    static EMPTY: Value = Value::Null;
    let spec = value.get("spec").unwrap_or(&EMPTY);
    if !(spec.is_object() || spec.is_null()) {
        return Err(fail("spec: expected an object".into()));
    }
    Ok(Some(Object {
        file,
        index,
        kind,
        name: name.to_string(),
        namespace: value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string(),
        labels: value["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
        spec,
    }))
}

/// Translates every App Mesh object in `sources`; other kinds are skipped,
/// but `Namespace` labels are kept to find each object's mesh.
pub fn documents(
    sources: &[&Source],
    default_mesh: Option<&str>,
) -> Result<Vec<Document>, ManifestError> {
    let mut objects = Vec::new();
    let mut namespace_labels = BTreeMap::new();
    for source in sources {
        for (i, value) in source.docs.iter().enumerate() {
            if value.is_null() {
                continue;
            }
            if !value.is_object() {
                return Err(ManifestError::new(
                    &source.file,
                    Some(i + 1),
                    None,
                    "expected a Kubernetes object",
                ));
            }
            if value["kind"] == "Namespace" {
                if let Some(name) = value["metadata"]["name"].as_str() {
                    let labels = value["metadata"]["labels"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    namespace_labels.insert(name.to_string(), labels);
                }
                continue;
            }
            if let Some(obj) = object(&source.file, i + 1, value)? {
                objects.push(obj);
            }
        }
    }
    let ctx = Context {
        objects,
        namespace_labels,
        default_mesh,
    };
    let mut out = Vec::new();
    for obj in &ctx.objects {
        out.extend(ctx.translate(obj)?);
    }
    Ok(out)
}

/// Used by tests to build sources without files.
#[cfg(test)]
fn source(file: &str, yaml: &str) -> Source {
    use serde::Deserialize;
    let docs = serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect();
    Source {
        file: std::path::PathBuf::from(file),
        docs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {mesh: shop-mesh}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: Mesh
metadata: {name: shop-mesh}
spec:
  namespaceSelector:
    matchLabels: {mesh: shop-mesh}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: cart, namespace: shop}
spec:
  podSelector: {matchLabels: {app: cart}}
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  serviceDiscovery: {dns: {hostname: cart.shop.svc.cluster.local}}
  backends:
    - virtualService: {virtualServiceRef: {name: db}}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: {name: cart-router, namespace: shop}
spec:
  listeners: [{portMapping: {port: 8080, protocol: http}}]
  routes:
    - name: all
      httpRoute:
        match: {prefix: /}
        action:
          weightedTargets: [{virtualNodeRef: {name: cart}, weight: 1}]
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  awsName: cart.shop.svc.cluster.local
  provider:
    virtualRouter: {virtualRouterRef: {name: cart-router}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: cart}
"#;

    #[test]
    fn translates_like_the_controller() {
        let src = source("app.yaml", APP);
        let docs = documents(&[&src], None).unwrap();
        let kinds: Vec<Kind> = docs.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Mesh,
                Kind::VirtualNode,
                Kind::VirtualRouter,
                Kind::Route,
                Kind::VirtualService
            ]
        );
        let vn = &docs[1].input;
        let pods = docs[1]
            .pods
            .as_ref()
            .expect("a VirtualNode keeps its pod binding");
        assert_eq!(
            (pods.mesh_name.as_str(), pods.virtual_node_name.as_str()),
            ("shop-mesh", "cart_shop")
        );
        assert_eq!(
            (pods.namespace.as_str(), pods.name.as_str()),
            ("shop", "cart")
        );
        let selector = pods.pod_selector.as_ref().expect("podSelector");
        assert_eq!(
            selector.match_labels.get("app").map(String::as_str),
            Some("cart")
        );
        assert!(docs[2].pods.is_none());
        assert_eq!(vn["meshName"], "shop-mesh");
        assert_eq!(vn["virtualNodeName"], "cart_shop");
        assert!(vn["spec"].get("podSelector").is_none());
        assert_eq!(
            vn["spec"]["backends"][0]["virtualService"]["virtualServiceName"],
            "db.shop"
        );
        let route = &docs[3].input;
        assert_eq!(route["virtualRouterName"], "cart-router_shop");
        assert_eq!(route["routeName"], "all");
        assert_eq!(
            route["spec"]["httpRoute"]["action"]["weightedTargets"][0]["virtualNode"],
            "cart_shop"
        );
        assert_eq!(
            docs[4].input["spec"]["provider"]["virtualRouter"]["virtualRouterName"],
            "cart-router_shop"
        );
    }

    #[test]
    fn a_bad_pod_selector_is_a_load_error_naming_the_field() {
        let src = source(
            "x.yaml",
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: a, namespace: n}\n\
             spec:\n  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [a]}]\n",
        );
        let err = documents(&[&src], Some("m")).err().unwrap().to_string();
        assert_eq!(
            err,
            "x.yaml: document 1 (VirtualNode a): spec.podSelector.matchExpressions[0].operator: \
             'Equals' is not In, NotIn, Exists or DoesNotExist"
        );
    }

    #[test]
    fn a_missing_mesh_is_reported_with_file_and_document() {
        let src = source(
            "x.yaml",
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: a, namespace: n}\nspec: {}\n",
        );
        let err = documents(&[&src], None).err().unwrap().to_string();
        assert!(
            err.starts_with("x.yaml: document 1 (VirtualNode a): spec.meshRef"),
            "{err}"
        );
        let docs = documents(&[&src], Some("m")).unwrap();
        assert_eq!(docs[0].input["meshName"], "m");
    }
}
