//! The HTTP/1.1 server: authenticate, route, run the operation off the async
//! threads (SQLite commits block on fsync), reply.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use super::credentials::Credentials;
use super::errors::{error_response, json_response};
use super::router::{build_input, render_output, Router};
use super::sigv4::{self, RequestParts};
use crate::error::ApiError;
use crate::ops::AppMesh;
use crate::service_model::ServiceModel;
use crate::tokens::TokenKey;
use crate::xds::registry::Registry;
use crate::xds::translate::{Instance, Owner};

/// App Mesh specs are small; this bounds memory per request.
const MAX_BODY: usize = 1 << 20;

pub struct ApiState {
    appmesh: AppMesh,
    /// `None` only with `--no-auth`.
    credentials: Option<Credentials>,
    router: Router,
    /// The xDS server's proxies and instances, for `/trellis/v1/`.
    registry: Arc<Registry>,
    /// For `GET /trellis/v1/ca`.
    ca: Option<CaInfo>,
    /// What node tokens are derived from.
    token_key: Arc<TokenKey>,
}

/// What `GET /trellis/v1/ca` answers, for `trellis-control bootstrap`: the
/// mesh's trust bundle (certificates only, nothing secret) and whether the
/// xDS port's certificate chains to it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaInfo {
    pub trust_domain: String,
    pub bundle: String,
    pub xds_tls: XdsTlsKind,
}

/// Where the xDS port's certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsTlsKind {
    /// Issued by the mesh CA: the bundle verifies it.
    Mesh,
    /// The operator's own: clients need the operator's CA.
    Operator,
    /// `--xds-plaintext`.
    Off,
}

impl ApiState {
    pub fn new(
        appmesh: AppMesh,
        credentials: Option<Credentials>,
        registry: Arc<Registry>,
        token_key: Arc<TokenKey>,
    ) -> ApiState {
        ApiState {
            appmesh,
            credentials,
            router: Router::from_model(ServiceModel::get()),
            registry,
            ca: None,
            token_key,
        }
    }

    pub fn with_ca(mut self, ca: CaInfo) -> ApiState {
        self.ca = Some(ca);
        self
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == "/metrics" && method == Method::GET {
        // Unauthenticated, as Prometheus scrapes: counts only, no state.
        return metrics_response(state.registry.metrics().render());
    }
    let (op, result) = match dispatch(state, req).await {
        Ok((op, status, body)) => (op, Ok((status, body))),
        Err((op, e)) => (op, Err(e)),
    };
    let resp = match &result {
        Ok((status, body)) => json_response(*status, body, &request_id),
        Err(e) => error_response(e, &request_id),
    };
    let label = op
        .clone()
        .unwrap_or_else(|| operation_label(state, &method, &path));
    state
        .registry
        .metrics()
        .api_request(&label, resp.status().as_u16());
    tracing::info!(
        %method,
        %path,
        op = op.as_deref().unwrap_or("-"),
        status = resp.status().as_u16(),
        error = result.as_ref().err().map(|e| e.kind.type_name()).unwrap_or(""),
        ms = started.elapsed().as_millis() as u64,
        request_id,
        "api request"
    );
    resp
}

/// The operation a request asked for, for metrics, when dispatch did not get
/// as far as naming it (a refused signature, a bad path): the App Mesh
/// operation its method and path resolve to, a `/trellis/v1/` endpoint, or
/// `unknown`, so that made-up paths cannot grow the label set.
fn operation_label(state: &ApiState, method: &Method, path: &str) -> String {
    if let Ok(matched) = state.router.resolve(method, path) {
        return matched.op.to_string();
    }
    let known_method = [Method::GET, Method::POST, Method::DELETE].contains(method);
    match path {
        "/trellis/v1/proxies" | "/trellis/v1/instances" | "/trellis/v1/tokens" if known_method => {
            format!("{method} {path}")
        }
        _ => "unknown".into(),
    }
}

fn metrics_response(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

type Dispatched = Result<(Option<String>, u16, serde_json::Value), (Option<String>, ApiError)>;

async fn dispatch(state: &ApiState, req: Request<Incoming>) -> Dispatched {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err((
                None,
                ApiError::bad_request("The request body is too large or was cut off"),
            ));
        }
    };
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");
    if let Some(credentials) = &state.credentials {
        let payload_hash = sigv4::sha256_hex(&body);
        let request = RequestParts {
            method: parts.method.as_str(),
            raw_path,
            raw_query,
            headers: &parts.headers,
            payload_hash: &payload_hash,
        };
        sigv4::verify(&request, credentials, SystemTime::now()).map_err(|e| (None, e))?;
    }
    if raw_path.starts_with("/trellis/v1/") {
        if raw_path == "/trellis/v1/tokens" {
            let store = state.appmesh.store().clone();
            let method = parts.method.clone();
            let key = state.token_key.clone();
            return tokio::task::spawn_blocking(move || {
                token_endpoint(&store, &key, &method, &body)
            })
            .await
            .map_err(|_| (None, ApiError::internal("the token operation panicked")))?
            .map_err(|e| (None, e));
        }
        if raw_path == "/trellis/v1/ca" && parts.method == Method::GET {
            return match &state.ca {
                Some(ca) => Ok((None, 200, json!(ca))),
                None => Err((
                    None,
                    ApiError::new(crate::error::ErrorKind::NotFound, "This server has no CA"),
                )),
            };
        }
        if raw_path == "/trellis/v1/pod-selectors" {
            let appmesh = state.appmesh.clone();
            let method = parts.method.clone();
            return tokio::task::spawn_blocking(move || pod_selectors(&appmesh, &method, &body))
                .await
                .map_err(|_| {
                    (
                        None,
                        ApiError::internal("the pod selector operation panicked"),
                    )
                })?
                .map_err(|e| (None, e));
        }
        // Registering an instance commits to the store: off the async threads.
        let (registry, method, path) = (
            state.registry.clone(),
            parts.method.clone(),
            raw_path.to_string(),
        );
        return tokio::task::spawn_blocking(move || extension(&registry, &method, &path, &body))
            .await
            .map_err(|_| (None, ApiError::internal("the trellis operation panicked")))?
            .map_err(|e| (None, e));
    }
    let model = ServiceModel::get();
    let matched = state
        .router
        .resolve(&parts.method, raw_path)
        .map_err(|e| (None, e))?;
    let op = matched.op.to_string();
    let input =
        build_input(model, &matched, raw_query, &body).map_err(|e| (Some(op.clone()), e))?;
    let appmesh = state.appmesh.clone();
    let op_for_call = op.clone();
    let output = tokio::task::spawn_blocking(move || appmesh.call(&op_for_call, &input))
        .await
        .map_err(|_| {
            (
                Some(op.clone()),
                ApiError::internal("the operation panicked"),
            )
        })?
        .map_err(|e| (Some(op.clone()), e))?;
    let (status, body) = render_output(model, &op, output);
    Ok((Some(op), status, body))
}

/// `{"meshName", "virtualNodeName" | "virtualGatewayName", "reuse"}`:
/// whose token, and whether its live one may be handed out again.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenInput {
    mesh_name: String,
    virtual_node_name: Option<String>,
    virtual_gateway_name: Option<String>,
    #[serde(default)]
    reuse: bool,
}

/// `/trellis/v1/tokens`: `POST` returns a node's token: a new one replacing
/// any earlier one, or with `"reuse": true` its live one when it has one;
/// `DELETE` revokes it; `GET` lists the nodes holding one.
fn token_endpoint(
    store: &crate::store::Store,
    key: &TokenKey,
    method: &Method,
    body: &[u8],
) -> Result<(Option<String>, u16, serde_json::Value), ApiError> {
    let internal = |e: rusqlite::Error| ApiError::internal(format!("token store: {e}"));
    if method == Method::GET {
        let list: Vec<serde_json::Value> = crate::tokens::list(store)
            .map_err(internal)?
            .into_iter()
            .map(|(node, at)| json!({"nodeId": node, "createdAt": at}))
            .collect();
        return Ok((None, 200, json!({ "tokens": list })));
    }
    let input: TokenInput = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid token request: {e}")))?;
    let (gateway, name) = match (input.virtual_node_name, input.virtual_gateway_name) {
        (Some(n), None) => (false, n),
        (None, Some(g)) => (true, g),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of virtualNodeName and virtualGatewayName",
            ))
        }
    };
    if input.mesh_name.is_empty()
        || name.is_empty()
        || name.contains('/')
        || input.mesh_name.contains('/')
    {
        return Err(ApiError::bad_request(
            "meshName and the node name must be non-empty names",
        ));
    }
    let id = crate::xds::translate::NodeId {
        mesh: input.mesh_name,
        gateway,
        name,
    };
    match *method {
        Method::POST => {
            let (token, reused) = if input.reuse {
                crate::tokens::issue_or_reuse(store, key, &id).map_err(internal)?
            } else {
                (
                    crate::tokens::issue(store, key, &id).map_err(internal)?,
                    false,
                )
            };
            if reused {
                tracing::info!(node = %id.render(), "handed out a node's live token again");
            } else {
                tracing::info!(node = %id.render(), "issued a node token");
            }
            Ok((
                None,
                200,
                json!({"nodeId": id.render(), "token": token, "reused": reused}),
            ))
        }
        Method::DELETE => {
            if crate::tokens::revoke(store, &id).map_err(internal)? {
                tracing::info!(node = %id.render(), "revoked a node token");
                Ok((None, 200, json!({"nodeId": id.render()})))
            } else {
                Err(ApiError::new(
                    crate::error::ErrorKind::NotFound,
                    format!("No token for {}", id.render()),
                ))
            }
        }
        _ => Err(ApiError::new(
            crate::error::ErrorKind::UnknownOperation,
            format!("No trellis endpoint {method} /trellis/v1/tokens"),
        )),
    }
}

/// `PUT /trellis/v1/pod-selectors`: a VirtualNode manifest's namespace,
/// name and `podSelector` (sent by `trellis-control apply`), which the
/// sidecar injector matches pods against.
fn pod_selectors(
    appmesh: &AppMesh,
    method: &Method,
    body: &[u8],
) -> Result<(Option<String>, u16, serde_json::Value), ApiError> {
    if method != Method::PUT {
        return Err(ApiError::new(
            crate::error::ErrorKind::UnknownOperation,
            format!("No trellis endpoint {method} /trellis/v1/pod-selectors"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid pod selector: {e}")))?;
    let binding = crate::inject::PodBinding::parse(&value)
        .map_err(|e| ApiError::bad_request(format!("Invalid pod selector: {e}")))?;
    let changed = appmesh.put_pod_binding(&binding)?;
    Ok((None, 200, json!({ "changed": changed })))
}

/// `{"meshName", "virtualNodeName", "address", "port"}`: an instance of a
/// virtual node registered by hand, for apps without a connected proxy; or
/// `{"namespaceName", "serviceName", "address", "port", "attributes"}`: an
/// instance of a Cloud Map service, for `awsCloudMap` virtual nodes.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InstanceInput {
    mesh_name: Option<String>,
    virtual_node_name: Option<String>,
    namespace_name: Option<String>,
    service_name: Option<String>,
    address: String,
    port: u32,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

fn instance_input(body: &[u8]) -> Result<(Owner, Instance), ApiError> {
    let input: InstanceInput = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid instance: {e}")))?;
    if input.address.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError::bad_request(format!(
            "address {} is not an IP address",
            input.address
        )));
    }
    if !(1..=65535).contains(&input.port) {
        return Err(ApiError::bad_request("port must be between 1 and 65535"));
    }
    let owner =
        match (
            &input.mesh_name,
            &input.virtual_node_name,
            &input.namespace_name,
            &input.service_name,
        ) {
            (Some(mesh), Some(node), None, None) if input.attributes.is_empty() => {
                Owner::node(mesh, node)
            }
            (Some(_), Some(_), None, None) => {
                return Err(ApiError::bad_request(
                    "attributes belong to Cloud Map instances (namespaceName and serviceName)",
                ))
            }
            (None, None, Some(namespace), Some(service)) => Owner::cloud_map(namespace, service),
            _ => return Err(ApiError::bad_request(
                "an instance needs meshName and virtualNodeName, or namespaceName and serviceName",
            )),
        };
    let instance = Instance {
        address: input.address,
        port: input.port,
        attributes: input.attributes,
        sidecar: None,
    };
    Ok((owner, instance))
}

/// An instance as `GET /trellis/v1/instances` lists it, in the input's shape.
fn instance_json(owner: &Owner, i: &Instance) -> serde_json::Value {
    let mut out = match owner {
        Owner::VirtualNode { mesh, node } => json!({"meshName": mesh, "virtualNodeName": node}),
        Owner::CloudMap { namespace, service } => {
            json!({"namespaceName": namespace, "serviceName": service, "attributes": i.attributes})
        }
    };
    out["address"] = json!(i.address);
    out["port"] = json!(i.port);
    out
}

fn instance_store(e: rusqlite::Error) -> ApiError {
    ApiError::internal(format!("instance store: {e}"))
}

/// trellis's own endpoints under `/trellis/v1/`: the proxies connected to
/// the xDS server (`trellis-control status`), and the instance registry.
fn extension(
    registry: &Registry,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<(Option<String>, u16, serde_json::Value), ApiError> {
    match (method, path) {
        (&Method::GET, "/trellis/v1/proxies") => Ok((None, 200, json!(registry.proxies()))),
        (&Method::GET, "/trellis/v1/instances") => {
            let list: Vec<serde_json::Value> = registry
                .manual_instances()
                .iter()
                .flat_map(|(owner, set)| set.iter().map(move |i| instance_json(owner, i)))
                .collect();
            Ok((None, 200, json!({ "instances": list })))
        }
        (&Method::POST, "/trellis/v1/instances") => {
            let (owner, instance) = instance_input(body)?;
            registry.register(owner, instance).map_err(instance_store)?;
            Ok((None, 200, json!({})))
        }
        (&Method::DELETE, "/trellis/v1/instances") => {
            let (owner, instance) = instance_input(body)?;
            let found = registry
                .deregister(&owner, &instance)
                .map_err(instance_store)?;
            if found {
                Ok((None, 200, json!({})))
            } else {
                Err(ApiError::new(
                    crate::error::ErrorKind::NotFound,
                    "No such registered instance",
                ))
            }
        }
        _ => Err(ApiError::new(
            crate::error::ErrorKind::UnknownOperation,
            format!("No trellis endpoint {method} {path}"),
        )),
    }
}
