use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn w3c_continues_and_injects_a_child() {
    let h = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let t = Trace::start(&h);
    assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        t.parent.map(|p| hex(&p)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(t.sampled);
    let mut out = h.clone();
    t.inject(&mut out);
    assert_eq!(
        out["traceparent"],
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&t.client)).as_str()
    );
}

#[test]
fn b3_and_amzn_are_read_and_updated() {
    let h = headers(&[
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        (
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        ),
    ]);
    let t = Trace::start(&h);
    assert_eq!(hex(&t.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    let mut out = h.clone();
    t.inject(&mut out);
    let client = hex(&t.client);
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
    let amzn = headers(&[(
        "x-amzn-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
    )]);
    let t = Trace::start(&amzn);
    assert_eq!(hex(&t.trace_id), "5759e988bd862e3fe1be46a994272793");
    assert!(!t.sampled);
}

#[test]
fn garbage_starts_a_new_trace() {
    let t = Trace::start(&headers(&[
        ("traceparent", "00-zz-00f067aa0ba902b7-01"),
        ("b3", "-"),
    ]));
    assert!(t.parent.is_none());
    assert_ne!(t.trace_id, [0; 16]);
}
