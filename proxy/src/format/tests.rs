use super::*;

fn info() -> StreamInfo {
    let mut i = StreamInfo::new(
        "10.0.0.7:5123".parse().unwrap(),
        Some("127.0.0.1:10000".parse().unwrap()),
    );
    i.start = Some(std::time::UNIX_EPOCH + Duration::new(1_795_624_801, 123_456_789));
    i.protocol = Some(http::Version::HTTP_11);
    i.response_code = Some(200);
    i.bytes_received = 3;
    i.bytes_sent = 11;
    i.done = Some(Duration::from_millis(7));
    i.upstream_host = Some("127.0.0.1:8080".parse().unwrap());
    i.upstream_cluster = Some(Arc::from("backend"));
    i
}

fn render(f: &str, ctx: &Context<'_>) -> String {
    Format::parse(f).unwrap().to_string(ctx, false)
}

#[test]
fn default_format_is_byte_exact() {
    let i = info();
    let method = http::Method::GET;
    let uri: http::Uri = "/a?b=1".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert("host", "example.com".parse().unwrap());
    h.insert("user-agent", "curl/8".parse().unwrap());
    h.insert("x-request-id", "abc".parse().unwrap());
    let mut resp = HeaderMap::new();
    resp.insert("x-envoy-upstream-service-time", "4".parse().unwrap());
    let ctx = Context {
        info: &i,
        request: Some(RequestHead {
            method: &method,
            uri: &uri,
            scheme: "http",
            headers: &h,
        }),
        response: Some(&resp),
        trailers: None,
    };
    assert_eq!(
        render(DEFAULT_FORMAT, &ctx),
        "[2026-11-25T16:40:01.123Z] \"GET /a?b=1 HTTP/1.1\" 200 - 3 11 7 4 \"-\" \"curl/8\" \"abc\" \"example.com\" \"127.0.0.1:8080\"\n"
    );
}

#[test]
fn operators_render() {
    let i = info();
    let ctx = Context::new(&i);
    assert_eq!(
        render("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &ctx),
        "10.0.0.7"
    );
    assert_eq!(render("%DOWNSTREAM_REMOTE_ADDRESS%", &ctx), "10.0.0.7:5123");
    assert_eq!(
        render("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", &ctx),
        "127.0.0.1"
    );
    assert_eq!(render("100%% %UPSTREAM_CLUSTER%", &ctx), "100% backend");
    assert_eq!(render("%UPSTREAM_CLUSTER:3%", &ctx), "bac");
    assert_eq!(
        render("%REQ(X-A?X-B)%|%DOWNSTREAM_PEER_URI_SAN%", &ctx),
        "-|-"
    );
    assert_eq!(render("%START_TIME(%s)%", &ctx), "1795624801");
    assert_eq!(render("%REQUESTED_SERVER_NAME%", &ctx), "-");
    let mut conn = info();
    conn.connection_id = 42;
    assert_eq!(render("%CONNECTION_ID%", &Context::new(&conn)), "42");
    assert!(next_connection_id() < next_connection_id());
    let mut tls = info();
    tls.requested_server_name = Some(Arc::from("api.example.com"));
    assert_eq!(
        render("%REQUESTED_SERVER_NAME%", &Context::new(&tls)),
        "api.example.com"
    );
    assert_eq!(
        Format::parse("%REQ(X)%").unwrap().to_string(&ctx, true),
        "",
        "omit_empty_values"
    );
}

#[test]
fn json_keeps_types() {
    let i = info();
    let ctx = Context::new(&i);
    let f = |s: &str| Format::parse(s).unwrap().json(&ctx, false);
    assert_eq!(f("%RESPONSE_CODE%"), serde_json::json!(200));
    assert_eq!(f("%REQ(X)%"), serde_json::Value::Null);
    assert_eq!(f("code %RESPONSE_CODE%"), serde_json::json!("code 200"));
}

#[test]
fn bad_formats_are_refused() {
    for bad in [
        "%NOPE%",
        "%REQ%",
        "%REQ(A?B?C)%",
        "%RESPONSE_CODE",
        "100%",
        "%REQ(x",
        "%DURATION(x)%",
    ] {
        assert!(Format::parse(bad).is_err(), "{bad} parsed");
    }
    let e = Format::parse("a %NOPE%").unwrap_err();
    assert!(e.reason.contains("NOPE"), "{e}");
    assert!(Format::parse("plain").unwrap().literal() == Some("plain"));
    assert!(Format::parse("%REQ(a)%").unwrap().reads_request());
}

#[test]
fn upstream_remote_address_and_grpc_status() {
    let i = info();
    let mut unavailable = info();
    unavailable.response_code = Some(503);
    assert_eq!(
        render(
            "%UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            &Context::new(&i)
        ),
        "127.0.0.1:8080 127.0.0.1"
    );
    let f = "%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)%";
    let uri: http::Uri = "/pkg.Svc/Call".parse().unwrap();
    let mut grpc = HeaderMap::new();
    grpc.insert("content-type", "application/grpc+proto".parse().unwrap());
    let head = |method: &'static http::Method, headers| RequestHead {
        method,
        uri: &uri,
        scheme: "http",
        headers,
    };
    let with = |info, request, response, trailers| Context {
        info,
        request: Some(request),
        response,
        trailers,
    };
    // Not a gRPC request (Envoy checks method and content type): missing.
    assert_eq!(render(f, &Context::new(&i)), "- - -");
    let get = with(&i, head(&http::Method::GET, &grpc), None, None);
    assert_eq!(render(f, &get), "- - -");
    // Inferred from the HTTP status when no grpc-status came back.
    let post = with(&i, head(&http::Method::POST, &grpc), None, None);
    assert_eq!(render(f, &post), "Unknown UNKNOWN 2");
    let post = with(&unavailable, head(&http::Method::POST, &grpc), None, None);
    assert_eq!(render(f, &post), "Unavailable UNAVAILABLE 14");
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", "5".parse().unwrap());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "1".parse().unwrap());
    let post = with(&i, head(&http::Method::POST, &grpc), Some(&headers), None);
    assert_eq!(render(f, &post), "NotFound NOT_FOUND 5");
    let post = with(
        &i,
        head(&http::Method::POST, &grpc),
        Some(&headers),
        Some(&trailers),
    );
    assert_eq!(render(f, &post), "Canceled CANCELLED 1");
    assert!(Format::parse("%GRPC_STATUS(LOUD)%").is_err());
}
