//! A SigV4-signing App Mesh client over HTTP, for `trellis-control apply`:
//! it goes through the running server so its checks and its watch channel
//! see every change, instead of writing behind its back into the database.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

use super::credentials::KeyPair;
use super::encoding;
use super::sigv4::{self, Unsigned};
use crate::error::{ApiError, ErrorKind};
use crate::service_model::{Location, ServiceModel};

pub struct Client {
    authority: String,
    key: KeyPair,
    region: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

struct Wire {
    method: Method,
    path: String,
    query: String,
    body: Vec<u8>,
}

/// Lays an input object out as the REST-JSON request the model describes.
fn to_wire(model: &ServiceModel, op: &str, input: &Value) -> Result<Wire, ApiError> {
    let operation = model
        .operation(op)
        .ok_or_else(|| ApiError::new(ErrorKind::UnknownOperation, op.to_string()))?;
    let shape = model
        .input_shape(operation)
        .ok_or_else(|| ApiError::internal("operation without input shape"))?;
    let mut path = operation.http.request_uri.clone();
    let mut query = Vec::new();
    let mut body = Map::new();
    for (name, member) in &shape.members {
        let Some(value) = input.get(name).filter(|v| !v.is_null()) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match member.location {
            Some(Location::Uri) => {
                let label = format!("{{{}}}", member.wire_name(name));
                path = path.replace(&label, &encoding::encode(&text, false));
            }
            Some(Location::Querystring) => query.push(format!(
                "{}={}",
                encoding::encode(member.wire_name(name), false),
                encoding::encode(&text, false)
            )),
            Some(Location::Header) => {}
            None => {
                body.insert(name.clone(), value.clone());
            }
        }
    }
    if path.contains('{') {
        return Err(ApiError::bad_request(format!(
            "{op}: a path parameter is missing"
        )));
    }
    let body = if body.is_empty() && operation.http.method == "GET" {
        Vec::new()
    } else {
        Value::Object(body).to_string().into_bytes()
    };
    Ok(Wire {
        method: operation
            .http
            .method
            .parse()
            .map_err(|_| ApiError::internal("bad method"))?,
        path,
        query: query.join("&"),
        body,
    })
}

impl Client {
    /// `authority` is the `host:port` of the API.
    pub fn new(authority: String, key: KeyPair, region: String) -> Client {
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Client {
            authority,
            key,
            region,
            http,
        }
    }

    pub async fn call(&self, op: &str, input: &Value) -> Result<Value, ApiError> {
        let model = ServiceModel::get();
        let wire = to_wire(model, op, input)?;
        let body = self
            .send(&wire.method, &wire.path, &wire.query, wire.body.clone(), op)
            .await?;
        let payload = model
            .operation(op)
            .and_then(|o| model.output_shape(o))
            .and_then(|s| s.payload.clone());
        Ok(match payload {
            Some(member) => {
                let mut out = Map::new();
                out.insert(member, body);
                Value::Object(out)
            }
            None => body,
        })
    }

    /// A signed call of one of trellis's own endpoints under `/trellis/v1/`.
    pub async fn trellis(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Value, ApiError> {
        self.send(&method, path, "", body, path).await
    }

    /// Signs, sends, and reads a JSON reply or the error it carries.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: Vec<u8>,
        what: &str,
    ) -> Result<Value, ApiError> {
        let uri = if query.is_empty() {
            format!("http://{}{}", self.authority, path)
        } else {
            format!("http://{}{}?{}", self.authority, path, query)
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| ApiError::bad_request(format!("cannot build request {uri}: {e}")))?;
        let unsigned = Unsigned {
            method: method.as_str(),
            raw_path: path,
            raw_query: query,
            body: &body,
        };
        sigv4::sign(
            &unsigned,
            req.headers_mut(),
            &self.key,
            &self.region,
            SystemTime::now(),
        )?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ApiError::internal(format!("cannot reach {}: {e}", self.authority)))?;
        let status = resp.status();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_string());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::internal(format!("reading the reply failed: {e}")))?
            .to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::internal(format!("the reply to {what} is not JSON")))?
        };
        if !status.is_success() {
            let kind = error_type
                .as_deref()
                .and_then(ErrorKind::from_type_name)
                .unwrap_or(ErrorKind::InternalServerError);
            let message = body["message"].as_str().unwrap_or("no message").to_string();
            return Err(ApiError::new(kind, message));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lays_out_path_query_and_body() {
        let model = ServiceModel::get();
        let wire = to_wire(
            model,
            "CreateRoute",
            &json!({"meshName": "m x", "virtualRouterName": "r", "routeName": "a", "spec": {}}),
        )
        .unwrap();
        assert_eq!(wire.path, "/v20190125/meshes/m%20x/virtualRouter/r/routes");
        assert_eq!(wire.method, Method::PUT);
        let body: Value = serde_json::from_slice(&wire.body).unwrap();
        assert_eq!(body, json!({"routeName": "a", "spec": {}}));
        let wire = to_wire(model, "ListMeshes", &json!({"limit": 2})).unwrap();
        assert_eq!((wire.query.as_str(), wire.body.len()), ("limit=2", 0));
    }
}
