//! App Mesh's rules that the model's shapes cannot state (its documentation
//! does), checked on an input that already passed `validate`. Each rule is
//! keyed by shape, so it holds wherever the shape appears: a `Duration` in a
//! route timeout and in outlier detection, an `HttpPathMatch` in routes and
//! gateway routes. Refusing these inputs keeps the translation from
//! silently dropping or guessing at them.

use serde_json::Value;

use super::validate::{fail, join};
use super::{ServiceModel, ShapeType, ValidationError};

/// `httpRetryEvents` values App Mesh documents; the model leaves the
/// member a free string.
const HTTP_RETRY_EVENTS: [&str; 4] = [
    "server-error",
    "gateway-error",
    "client-error",
    "stream-error",
];

/// Walks `value` as shape `shape_name` and applies every rule on the way;
/// `path` prefixes reported fields, as for `validate`.
pub fn check_rules(
    model: &ServiceModel,
    shape_name: &str,
    value: &Value,
    path: &str,
) -> Result<(), ValidationError> {
    let Some(shape) = model.shape(shape_name) else {
        return Ok(());
    };
    rule(shape_name, value, path)?;
    match shape.shape_type {
        ShapeType::Structure => {
            for (key, v) in value.as_object().into_iter().flatten() {
                if let Some(member) = shape.members.get(key) {
                    check_rules(model, &member.shape, v, &join(path, key))?;
                }
            }
        }
        ShapeType::List => {
            if let Some(member) = &shape.member {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    check_rules(model, &member.shape, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn rule(shape: &str, v: &Value, path: &str) -> Result<(), ValidationError> {
    match shape {
        "Duration" => duration(v, path),
        "HttpRetryPolicy" => retry_policy(v, path, &["httpRetryEvents", "tcpRetryEvents"]),
        "GrpcRetryPolicy" => retry_policy(
            v,
            path,
            &["grpcRetryEvents", "httpRetryEvents", "tcpRetryEvents"],
        ),
        "GrpcRouteMatch" => grpc_match(v, path),
        "HttpRouteMatch" | "HttpGatewayRouteMatch" => http_match(v, path),
        "HttpPathMatch" => path_match(v, path),
        "LoggingFormat" => logging_format(v, path),
        "Listener" | "VirtualGatewayListener" => {
            health_check_port(v, path)?;
            own_protocol(v, path, "timeout")?;
            own_protocol(v, path, "connectionPool")
        }
        _ => Ok(()),
    }
}

/// Access log formats are parsed by the proxy's own parser: a command
/// operator trellis-proxy does not know would make every proxy NACK the
/// listener, so it is refused here, naming the field and the operator.
fn logging_format(v: &Value, path: &str) -> Result<(), ValidationError> {
    let check = |field: String, text: &str| {
        trellis_proxy::format::Format::parse(text)
            .map(drop)
            .map_err(|e| fail(&field, e.reason))
    };
    if let Some(text) = v["text"].as_str() {
        check(join(path, "text"), text)?;
    }
    for (i, field) in v["json"].as_array().into_iter().flatten().enumerate() {
        if let Some(value) = field["value"].as_str() {
            check(format!("{path}.json[{i}].value"), value)?;
        }
    }
    Ok(())
}

fn is_set(v: &Value, member: &str) -> bool {
    !v[member].is_null()
}

/// Both members are optional in the model, but a duration without its unit
/// or its value has no meaning (the unit enum itself is the model's).
fn duration(v: &Value, path: &str) -> Result<(), ValidationError> {
    if !is_set(v, "value") {
        return Err(fail(&join(path, "value"), "a duration needs its value"));
    }
    if !is_set(v, "unit") {
        return Err(fail(
            &join(path, "unit"),
            "a duration needs its unit, s or ms",
        ));
    }
    Ok(())
}

/// App Mesh: "Specify at least one value for at least one of the types of
/// RetryEvents", and `httpRetryEvents` holds only its four documented names.
fn retry_policy(v: &Value, path: &str, kinds: &[&str]) -> Result<(), ValidationError> {
    if !kinds.iter().any(|k| is_set(v, k)) {
        return Err(fail(
            path,
            format!(
                "at least one of [{}] must be set: a retry policy retries on its events",
                kinds.join(", ")
            ),
        ));
    }
    let events = v["httpRetryEvents"].as_array().into_iter().flatten();
    for (i, event) in events.enumerate() {
        let name = event.as_str().unwrap_or_default();
        if !HTTP_RETRY_EVENTS.contains(&name) {
            return Err(fail(
                &format!("{path}.httpRetryEvents[{i}]"),
                format!("'{name}' is not one of [{}]", HTTP_RETRY_EVENTS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A method is matched only within a named service (`/SERVICE/METHOD`).
fn grpc_match(v: &Value, path: &str) -> Result<(), ValidationError> {
    if is_set(v, "methodName") && !is_set(v, "serviceName") {
        return Err(fail(
            &join(path, "methodName"),
            "needs serviceName: App Mesh matches a method only within a named service",
        ));
    }
    Ok(())
}

/// Envoy matches a path one way: a prefix or a whole path, not both. With
/// neither, App Mesh matched every path (prefix `/`), as trellis does.
fn http_match(v: &Value, path: &str) -> Result<(), ValidationError> {
    if is_set(v, "prefix") && is_set(v, "path") {
        return Err(fail(path, "set prefix or path, not both"));
    }
    if let Some(prefix) = v["prefix"].as_str() {
        if !prefix.starts_with('/') {
            return Err(fail(
                &join(path, "prefix"),
                format!("'{prefix}' must start with /"),
            ));
        }
    }
    Ok(())
}

fn path_match(v: &Value, path: &str) -> Result<(), ValidationError> {
    let set = ["exact", "regex"].iter().filter(|m| is_set(v, m)).count();
    if set != 1 {
        return Err(fail(
            path,
            format!("exactly one of [exact, regex] must be set, found {set}"),
        ));
    }
    Ok(())
}

/// The model: "This port must match the port defined in the PortMapping for
/// the listener."
fn health_check_port(v: &Value, path: &str) -> Result<(), ValidationError> {
    let (Some(port), Some(own)) = (
        v["healthCheck"]["port"].as_i64(),
        v["portMapping"]["port"].as_i64(),
    ) else {
        return Ok(());
    };
    if port != own {
        return Err(fail(
            &format!("{path}.healthCheck.port"),
            format!("{port} is not the listener's port {own}: App Mesh checks a listener on its own port"),
        ));
    }
    Ok(())
}

/// Listener `timeout` and `connectionPool` are keyed by protocol; App Mesh
/// said the block "should match the port mapping protocol", and only that
/// one could ever apply.
fn own_protocol(v: &Value, path: &str, member: &str) -> Result<(), ValidationError> {
    let Some(protocol) = v["portMapping"]["protocol"].as_str() else {
        return Ok(());
    };
    let blocks = v[member].as_object().into_iter().flatten();
    for (key, block) in blocks {
        if key != protocol && !block.is_null() {
            return Err(fail(
                &format!("{path}.{member}.{key}"),
                format!("the listener speaks {protocol}: only a {protocol} block applies"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(shape: &str, value: Value) -> Result<(), ValidationError> {
        let model = ServiceModel::get();
        super::super::validate(model, shape, &value, "spec").expect("fits the model");
        check_rules(model, shape, &value, "spec")
    }

    fn refused(shape: &str, value: Value) -> ValidationError {
        check(shape, value).expect_err("refused")
    }

    fn http(m: Value, extra: Value) -> Value {
        let mut route = json!({"match": m,
            "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            route[k] = v.clone();
        }
        json!({"httpRoute": route})
    }

    fn grpc(m: Value, extra: Value) -> Value {
        let mut route = json!({"match": m,
            "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            route[k] = v.clone();
        }
        json!({"grpcRoute": route})
    }

    #[test]
    fn grpc_method_needs_its_service() {
        let e = refused("RouteSpec", grpc(json!({"methodName": "Get"}), json!({})));
        assert_eq!(e.path, "spec.grpcRoute.match.methodName");
        assert!(e.message.contains("serviceName"), "{e}");
        assert_eq!(
            check(
                "RouteSpec",
                grpc(json!({"serviceName": "s", "methodName": "Get"}), json!({}))
            ),
            Ok(())
        );
    }

    #[test]
    fn retry_events_are_app_meshs_and_at_least_one() {
        let policy = |p: Value| http(json!({"prefix": "/"}), json!({"retryPolicy": p}));
        let timeout = json!({"unit": "ms", "value": 100});
        let e = refused(
            "RouteSpec",
            policy(json!({"maxRetries": 2, "perRetryTimeout": timeout,
                "httpRetryEvents": ["server-error", "5xx"]})),
        );
        assert_eq!(e.path, "spec.httpRoute.retryPolicy.httpRetryEvents[1]");
        assert!(e.message.contains("'5xx' is not one of"), "{e}");
        let e = refused(
            "RouteSpec",
            policy(json!({"maxRetries": 2, "perRetryTimeout": timeout})),
        );
        assert_eq!(e.path, "spec.httpRoute.retryPolicy");
        assert!(e.message.contains("httpRetryEvents, tcpRetryEvents"), "{e}");
        let e = refused(
            "RouteSpec",
            grpc(
                json!({}),
                json!({"retryPolicy": {"maxRetries": 1, "perRetryTimeout": timeout}}),
            ),
        );
        assert!(e.message.contains("grpcRetryEvents"), "{e}");
        assert_eq!(
            check(
                "RouteSpec",
                grpc(
                    json!({}),
                    json!({"retryPolicy": {"maxRetries": 1, "perRetryTimeout": timeout,
                        "grpcRetryEvents": ["unavailable"]}})
                )
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "RouteSpec",
                policy(json!({"maxRetries": 2, "perRetryTimeout": timeout,
                    "tcpRetryEvents": ["connection-error"]}))
            ),
            Ok(())
        );
    }

    #[test]
    fn durations_need_unit_and_value() {
        let e = refused(
            "RouteSpec",
            http(
                json!({"prefix": "/"}),
                json!({"timeout": {"perRequest": {"value": 5}}}),
            ),
        );
        assert_eq!(e.path, "spec.httpRoute.timeout.perRequest.unit");
        let e = refused(
            "VirtualNodeSpec",
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "tcp"},
                "timeout": {"tcp": {"idle": {"unit": "s"}}}}]}),
        );
        assert_eq!(e.path, "spec.listeners[0].timeout.tcp.idle.value");
    }

    #[test]
    fn access_log_formats_use_operators_the_proxy_knows() {
        let logging = |format: Value| json!({"logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": format}}}});
        let e = refused(
            "VirtualNodeSpec",
            logging(json!({"text": "%START_TIME% %NOT_AN_OPERATOR%"})),
        );
        assert_eq!(e.path, "spec.logging.accessLog.file.format.text");
        assert!(e.message.contains("NOT_AN_OPERATOR"), "{e}");
        let e = refused(
            "VirtualGatewaySpec",
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [
                    {"key": "code", "value": "%RESPONSE_CODE%"},
                    {"key": "bad", "value": "%REQ(X"}]}}}}}),
        );
        assert_eq!(e.path, "spec.logging.accessLog.file.format.json[1].value");
        assert!(e.message.contains("REQ"), "{e}");
        assert_eq!(
            check(
                "VirtualNodeSpec",
                logging(json!({"text": "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%"}))
            ),
            Ok(())
        );
    }

    #[test]
    fn one_path_criterion_at_a_time() {
        let e = refused(
            "RouteSpec",
            http(json!({"prefix": "/a", "path": {"exact": "/b"}}), json!({})),
        );
        assert_eq!(e.path, "spec.httpRoute.match");
        let e = refused(
            "GatewayRouteSpec",
            json!({"httpRoute": {"match": {"path": {"exact": "/a", "regex": "/b.*"}},
                "action": {"target": {"virtualService": {"virtualServiceName": "s"}}}}}),
        );
        assert_eq!(e.path, "spec.httpRoute.match.path");
        let e = refused("RouteSpec", http(json!({"path": {}}), json!({})));
        assert!(e.message.contains("found 0"), "{e}");
        let e = refused("RouteSpec", http(json!({"prefix": "api"}), json!({})));
        assert_eq!(e.path, "spec.httpRoute.match.prefix");
        assert_eq!(
            check(
                "RouteSpec",
                http(json!({"headers": [{"name": "x"}]}), json!({}))
            ),
            Ok(())
        );
    }

    #[test]
    fn health_checks_use_the_listener_port() {
        let listener = |port: u16| {
            json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "healthCheck": {"protocol": "http", "port": port, "healthyThreshold": 2,
                    "unhealthyThreshold": 2, "intervalMillis": 5000, "timeoutMillis": 2000}}]})
        };
        let e = refused("VirtualNodeSpec", listener(8081));
        assert_eq!(e.path, "spec.listeners[0].healthCheck.port");
        assert!(e.message.contains("8080"), "{e}");
        assert_eq!(check("VirtualNodeSpec", listener(8080)), Ok(()));
        assert!(check("VirtualGatewaySpec", listener(9000)).is_err());
    }

    #[test]
    fn listener_blocks_are_of_the_listeners_protocol() {
        let e = refused(
            "VirtualNodeSpec",
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
                "connectionPool": {"http2": {"maxRequests": 5}}}]}),
        );
        assert_eq!(e.path, "spec.listeners[0].connectionPool.http2");
        let e = refused(
            "VirtualNodeSpec",
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "grpc"},
                "timeout": {"tcp": {"idle": {"unit": "s", "value": 1}}}}]}),
        );
        assert_eq!(e.path, "spec.listeners[0].timeout.tcp");
        let e = refused(
            "VirtualGatewaySpec",
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "grpc"},
                "connectionPool": {"http": {"maxConnections": 5}}}]}),
        );
        assert!(e.message.contains("speaks grpc"), "{e}");
        assert_eq!(
            check(
                "VirtualNodeSpec",
                json!({"listeners": [{"portMapping": {"port": 80, "protocol": "http2"},
                    "connectionPool": {"http2": {"maxRequests": 5}},
                    "timeout": {"http2": {"idle": {"unit": "s", "value": 1}}}}]})
            ),
            Ok(())
        );
    }
}
