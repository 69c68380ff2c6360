use super::*;

fn request(pairs: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get("/orders?id=7").header("host", "shop");
    for (k, v) in pairs {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn start(pairs: &[(&str, &str)]) -> Trace {
    Trace::start(&request(pairs), "http", &Sampling::default())
}

/// The headers one attempt of `t` sends upstream.
fn attempt(t: &mut Trace, incoming: &HeaderMap) -> (HeaderMap, String) {
    let mut out = incoming.clone();
    t.begin_attempt(&mut out);
    let client = hex(&t.last_client().unwrap());
    (out, client)
}

#[test]
fn w3c_continues_and_each_attempt_is_a_child() {
    let req = request(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let mut t = Trace::start(&req, "http", &Sampling::default());
    assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        t.parent.map(|p| hex(&p)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(t.sampled);
    let (first, one) = attempt(&mut t, &req.headers);
    t.end_attempt(None, Some(503), ResponseFlags::default());
    let (second, two) = attempt(&mut t, &req.headers);
    assert_ne!(one, two, "a retry is a span of its own");
    assert_eq!(
        first["traceparent"],
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{one}-01").as_str()
    );
    assert_eq!(
        second["traceparent"],
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{two}-01").as_str()
    );
    assert_eq!(t.attempts.len(), 2);
    assert_eq!(t.attempts[0].status, Some(503));
    assert!(t.attempts[0].end.is_some() && t.attempts[1].end.is_none());
}

#[test]
fn b3_and_amzn_are_read_and_updated() {
    let pairs = [
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        (
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        ),
    ];
    let req = request(&pairs);
    let mut t = start(&pairs);
    assert_eq!(hex(&t.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    let (out, client) = attempt(&mut t, &req.headers);
    assert!(out["b3"]
        .to_str()
        .unwrap()
        .starts_with(&format!("80f198ee56343ba864fe8b2a57d3eff7-{client}-1-")));
    assert_eq!(out["x-b3-spanid"], client.as_str());
    assert_eq!(out["x-b3-parentspanid"], hex(&t.server).as_str());
    assert_eq!(
        out["x-amzn-trace-id"],
        format!("Root=1-80f198ee-56343ba864fe8b2a57d3eff7;Parent={client};Sampled=1").as_str()
    );
    let t = start(&[(
        "x-amzn-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
    )]);
    assert_eq!(hex(&t.trace_id), "5759e988bd862e3fe1be46a994272793");
    assert!(!t.sampled);
}

#[test]
fn garbage_starts_a_new_trace() {
    let t = start(&[("traceparent", "00-zz-00f067aa0ba902b7-01"), ("b3", "-")]);
    assert!(t.parent.is_none());
    assert_ne!(t.trace_id, [0; 16]);
}

#[test]
fn the_callers_decision_wins_and_new_traces_follow_the_percentages() {
    let never = Sampling {
        random: 0.0,
        client: 1.0,
        overall: 1.0,
    };
    let sampled_parent = request(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    assert!(Trace::start(&sampled_parent, "http", &never).sampled);
    let unsampled = request(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-sampled", "0"),
    ]);
    assert!(!Trace::start(&unsampled, "http", &Sampling::default()).sampled);
    // B3 without a decision defers to ours.
    let deferred = request(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
    assert!(!Trace::start(&deferred, "http", &never).sampled);
    assert!(!Trace::start(&request(&[]), "http", &never).sampled);
    // `x-client-trace-id` takes client_sampling; overall applies to both.
    let forced = request(&[("x-client-trace-id", "abc")]);
    assert!(Trace::start(&forced, "http", &never).sampled);
    assert!(never.decide(true, 0.99));
    let half = Sampling {
        random: 1.0,
        client: 1.0,
        overall: 0.5,
    };
    assert!(half.decide(false, 0.49) && !half.decide(false, 0.5));
}

#[test]
fn unsampled_traces_propagate_but_record_no_spans() {
    let req = request(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    )]);
    let mut t = Trace::start(&req, "http", &Sampling::default());
    let (out, client) = attempt(&mut t, &req.headers);
    assert_eq!(
        out["traceparent"],
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{client}-00").as_str()
    );
    assert!(t.attempts.is_empty());
}

#[test]
fn spans_carry_the_request_the_peer_and_each_try() {
    let (exporter, mut rx) = otlp::Exporter::to_channel("mesh/m/virtualNode/blue");
    let mut t = start(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let upstream: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    t.begin_attempt(&mut HeaderMap::new());
    t.end_attempt(
        Some(upstream),
        None,
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
    );
    t.begin_attempt(&mut HeaderMap::new());
    t.end_attempt(Some(upstream), Some(200), ResponseFlags::default());
    let mut info = crate::format::StreamInfo::new("10.0.0.7:5000".parse().unwrap(), None);
    info.protocol = Some(http::Version::HTTP_11);
    info.response_code = Some(200);
    info.route_name = Some("r1".into());
    info.upstream_cluster = Some("backend".into());
    info.upstream_host = Some(upstream);
    info.downstream_peer_uri_san = Some("spiffe://td/mesh/m/virtualNode/client".into());
    export(&exporter, &t, &info);
    let attr = |s: &otlp::Span, k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
            .map(|v| match v {
                otlp::any_value::Value::StringValue(s) => s,
                otlp::any_value::Value::IntValue(i) => i.to_string(),
            })
    };
    let tries = [rx.try_recv().unwrap(), rx.try_recv().unwrap()];
    let server = rx.try_recv().unwrap();
    assert!(rx.try_recv().is_err());
    assert_eq!(server.kind, otlp::SPAN_KIND_SERVER);
    for (k, v) in [
        ("peer.identity", "spiffe://td/mesh/m/virtualNode/client"),
        ("peer.address", "10.0.0.7"),
        ("node_id", "mesh/m/virtualNode/blue"),
        ("http.method", "GET"),
        ("http.url", "http://shop/orders?id=7"),
        ("http.protocol", "HTTP/1.1"),
        ("route_name", "r1"),
        ("http.status_code", "200"),
        ("upstream_cluster", "backend"),
        ("upstream_address", "127.0.0.1:9000"),
    ] {
        assert_eq!(attr(&server, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(attr(&tries[0], "response_flags").as_deref(), Some("UF"));
    assert_eq!(tries[0].status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(attr(&tries[1], "http.status_code").as_deref(), Some("200"));
    assert_eq!(attr(&tries[1], "upstream.attempt").as_deref(), Some("2"));
    for s in &tries {
        assert_eq!(s.kind, otlp::SPAN_KIND_CLIENT);
        assert_eq!(s.parent_span_id, t.server.to_vec());
    }
}
