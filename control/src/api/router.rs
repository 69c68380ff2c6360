//! Maps REST-JSON requests to operations and back, from the `http` bindings
//! and member locations of the service model.

use http::Method;
use serde_json::{Map, Value};

use super::encoding;
use crate::error::{ApiError, ErrorKind};
use crate::service_model::{Location, ServiceModel, ShapeType};

enum Segment {
    Literal(String),
    Param(String),
}

struct Binding {
    op: String,
    method: Method,
    segments: Vec<Segment>,
}

pub struct Router {
    bindings: Vec<Binding>,
}

fn template_segments(uri: &str) -> Vec<Segment> {
    uri.trim_matches('/')
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Literal(s.to_string()),
            },
        )
        .collect()
}

/// A request matched to an operation, with its decoded URI labels.
pub struct Matched<'a> {
    pub op: &'a str,
    pub labels: Vec<(String, String)>,
}

impl Router {
    pub fn from_model(model: &ServiceModel) -> Router {
        let bindings = model
            .operations
            .values()
            .filter_map(|op| {
                Some(Binding {
                    op: op.name.clone(),
                    method: op.http.method.parse().ok()?,
                    segments: template_segments(&op.http.request_uri),
                })
            })
            .collect();
        Router { bindings }
    }

    pub fn resolve(&self, method: &Method, raw_path: &str) -> Result<Matched<'_>, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorKind::UnknownOperation,
                format!("No App Mesh operation for {method} {raw_path}"),
            )
        };
        let parts: Vec<String> = raw_path
            .trim_matches('/')
            .split('/')
            .map(encoding::decode)
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::bad_request("The request path is not valid percent-encoded UTF-8")
            })?;
        for b in self.bindings.iter().filter(|b| b.method == *method) {
            if b.segments.len() != parts.len() {
                continue;
            }
            let mut labels = Vec::new();
            let matched = b.segments.iter().zip(&parts).all(|(seg, part)| match seg {
                Segment::Literal(l) => l == part,
                Segment::Param(name) => {
                    labels.push((name.clone(), part.clone()));
                    !part.is_empty()
                }
            });
            if matched {
                return Ok(Matched { op: &b.op, labels });
            }
        }
        Err(unknown())
    }
}

/// Builds the operation's input object from URI labels, the query string
/// and the JSON body, converting query values to the member's type.
pub fn build_input(
    model: &ServiceModel,
    matched: &Matched<'_>,
    raw_query: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let operation = model
        .operation(matched.op)
        .ok_or_else(|| ApiError::internal("operation vanished from the model"))?;
    let shape = model
        .input_shape(operation)
        .ok_or_else(|| ApiError::internal("operation without input shape"))?;
    let query = encoding::query_pairs(raw_query)
        .ok_or_else(|| ApiError::bad_request("The query string is not valid percent-encoding"))?;
    let mut input = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ApiError::bad_request(
                    "The request body must be a JSON object",
                ))
            }
        }
    };
    for (name, member) in &shape.members {
        let wire = member.wire_name(name);
        match member.location {
            None => {}
            Some(location) if input.contains_key(name) => {
                return Err(ApiError::bad_request(format!(
                    "{name}: must be sent in the {} of the request, not its body",
                    if location == Location::Uri {
                        "path"
                    } else {
                        "query string"
                    }
                )));
            }
            Some(Location::Uri) => {
                if let Some((_, v)) = matched.labels.iter().find(|(k, _)| k == wire) {
                    input.insert(name.clone(), Value::String(v.clone()));
                }
            }
            Some(Location::Querystring) => {
                let Some((_, raw)) = query.iter().find(|(k, _)| k == wire) else {
                    continue;
                };
                let target = model.shape(&member.shape).map(|s| s.shape_type);
                let value = match target {
                    Some(ShapeType::Integer | ShapeType::Long) => {
                        raw.parse::<i64>().map(Value::from).map_err(|_| {
                            ApiError::bad_request(format!("{wire}: '{raw}' is not an integer"))
                        })?
                    }
                    _ => Value::String(raw.clone()),
                };
                input.insert(name.clone(), value);
            }
            Some(Location::Header) => {}
        }
    }
    Ok(Value::Object(input))
}

/// The HTTP status and JSON body for an operation's output object: the
/// payload member alone when the model names one, else the whole object.
pub fn render_output(model: &ServiceModel, op: &str, output: Value) -> (u16, Value) {
    let Some(operation) = model.operation(op) else {
        return (200, output);
    };
    let body = match model
        .output_shape(operation)
        .and_then(|s| s.payload.as_ref())
    {
        Some(member) => output.get(member).cloned().unwrap_or(Value::Null),
        None => output,
    };
    (operation.http.response_code, body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resolves_labels_and_query_members() {
        let model = ServiceModel::get();
        let router = Router::from_model(model);
        let m = router
            .resolve(
                &Method::GET,
                "/v20190125/meshes/m%201/virtualRouter/r/routes",
            )
            .unwrap();
        assert_eq!(m.op, "ListRoutes");
        let input = build_input(model, &m, "limit=5&nextToken=ab", b"").unwrap();
        assert_eq!(
            input,
            json!({"meshName": "m 1", "virtualRouterName": "r", "limit": 5, "nextToken": "ab"})
        );
        assert!(build_input(model, &m, "limit=x", b"").is_err());
        assert!(router.resolve(&Method::POST, "/v20190125/meshes").is_err());
        let m = router.resolve(&Method::PUT, "/v20190125/meshes").unwrap();
        assert_eq!(m.op, "CreateMesh");
        let (status, body) =
            render_output(model, "DescribeMesh", json!({"mesh": {"meshName": "m"}}));
        assert_eq!((status, body), (200, json!({"meshName": "m"})));
    }
}
