//! Listeners translated whole: every App Mesh listener of a node, chosen by
//! the port the client dialled; how each sidecar serves each listener;
//! WebSocket upgrades; a gateway listener's health check.

use serde_json::{json, Value};

use super::tests::load_case;
use super::*;

fn set_of(input: Value, id: &str, ports: &Ports) -> ResourceSet {
    let (snapshot, instances) = load_case(&input);
    let model = Model::new(&snapshot);
    let id = NodeId::parse(id).expect("node id");
    translate(&model, &id, ports, &instances).expect("translated")
}

fn listener_node() -> Value {
    json!({"kind": "VirtualNode", "name": "api", "spec": {"listeners": [
        {"portMapping": {"port": 8080, "protocol": "http"},
         "timeout": {"http": {"perRequest": {"unit": "s", "value": 3}}}},
        {"portMapping": {"port": 9090, "protocol": "grpc"},
         "connectionPool": {"grpc": {"maxRequests": 7}},
         "outlierDetection": {"maxServerErrors": 4, "interval": {"unit": "s", "value": 1},
            "baseEjectionDuration": {"unit": "s", "value": 5}, "maxEjectionPercent": 50}},
        {"portMapping": {"port": 5432, "protocol": "tcp"}}
    ]}})
}

fn mesh(extra: Vec<Value>) -> Value {
    let mut resources = vec![
        json!({"kind": "Mesh", "name": "m", "spec": {}}),
        listener_node(),
        json!({"kind": "VirtualService", "name": "api", "spec": {"provider": {"virtualNode": {"virtualNodeName": "api"}}}}),
        json!({"kind": "VirtualNode", "name": "web", "spec": {
            "listeners": [{"portMapping": {"port": 3000, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "api"}}]}}),
    ];
    resources.extend(extra);
    json!({"resources": resources})
}

fn chain_named<'a>(listener: &'a Value, name: &str) -> &'a Value {
    listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no chain {name} in {listener}"))
}

fn listener_filter_names(listener: &Value) -> Vec<&str> {
    listener["listener_filters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect()
}

#[test]
fn an_ipv6_wildcard_listener_address_also_takes_ipv4() {
    let mut ports = Ports::default();
    for (address, compat) in [("::", Some(true)), ("0.0.0.0", None), ("fd00::5", None)] {
        ports.listener_address = address.into();
        let set = set_of(mesh(vec![]), "mesh/m/virtualNode/api", &ports);
        let l = &set.listeners[&format!("lds_ingress_{address}_15000")];
        assert_eq!(l["address"]["socket_address"]["address"], address);
        assert_eq!(
            l["address"]["socket_address"]["ipv4_compat"].as_bool(),
            compat,
            "{address}"
        );
    }
}

#[test]
fn every_listener_gets_a_chain_chosen_by_the_dialled_port() {
    let set = set_of(mesh(vec![]), "mesh/m/virtualNode/api", &Ports::default());
    let ingress = &set.listeners["lds_ingress_0.0.0.0_15000"];
    assert_eq!(
        listener_filter_names(ingress),
        ["envoy.filters.listener.original_dst"],
        "behind interception the chain is picked by the original port"
    );
    for (name, port) in [
        ("ingress_http_8080", 8080),
        ("ingress_grpc_9090", 9090),
        ("ingress_tcp_5432", 5432),
    ] {
        assert_eq!(
            chain_named(ingress, name)["filter_chain_match"]["destination_port"],
            port
        );
    }
    // A connection to the ingress port itself: the first listener.
    assert_eq!(
        ingress["default_filter_chain"]["filters"],
        chain_named(ingress, "ingress_http_8080")["filters"]
    );
    // Each listener its own protocol and policies.
    let grpc = &set.clusters["cds_ingress_m_api_grpc_9090"];
    assert!(grpc["typed_extension_protocol_options"].is_object());
    assert_eq!(grpc["circuit_breakers"]["thresholds"][0]["max_requests"], 7);
    assert!(set.clusters["cds_ingress_m_api_http_8080"]
        .get("typed_extension_protocol_options")
        .is_none());
    assert_eq!(
        set.routes["rds_ingress_http_8080"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
        "3s"
    );
    let tcp = chain_named(ingress, "ingress_tcp_5432");
    assert_eq!(
        tcp["filters"][0]["typed_config"]["cluster"],
        "cds_ingress_m_api_tcp_5432"
    );
}

#[test]
fn without_interception_a_mapped_listener_is_served_on_its_own_port() {
    let ports = Ports {
        listener_address: "127.0.0.1".into(),
        listener_ingress: BTreeMap::from([(9090, 15010), (1234, 15020)]),
        ..Ports::default()
    };
    let set = set_of(mesh(vec![]), "mesh/m/virtualNode/api", &ports);
    let names: Vec<&String> = set.listeners.keys().collect();
    assert_eq!(
        names,
        ["lds_ingress_127.0.0.1_15000", "lds_ingress_127.0.0.1_15010"],
        "a port of no listener of the node binds nothing"
    );
    let own = &set.listeners["lds_ingress_127.0.0.1_15010"];
    assert_eq!(own["address"]["socket_address"]["port_value"], 15010);
    let chains = own["filter_chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 1);
    assert!(chains[0].get("filter_chain_match").is_none());
    assert_eq!(
        chains[0]["filters"][0]["typed_config"]["rds"]["route_config_name"],
        "rds_ingress_grpc_9090"
    );
    // Still reachable on the ingress port through interception's chains.
    chain_named(
        &set.listeners["lds_ingress_127.0.0.1_15000"],
        "ingress_grpc_9090",
    );
}

fn endpoints_of(set: &ResourceSet, cluster: &str) -> Vec<String> {
    set.endpoints[cluster]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["lb_endpoints"].as_array().into_iter().flatten())
        .map(|e| {
            let a = &e["endpoint"]["address"]["socket_address"];
            format!(
                "{}:{}",
                a["address"].as_str().unwrap_or(""),
                a["port_value"]
            )
        })
        .collect()
}

#[test]
fn clients_reach_each_listener_where_each_sidecar_serves_it() {
    let mut input = mesh(vec![]);
    input["instances"] = json!([
        // Behind interception: the listener's own port is redirected.
        {"node": "api", "address": "10.0.0.1", "port": 15000, "sidecar": {"intercepted": true}},
        // On loopback with 9090 mapped to 15010.
        {"node": "api", "address": "127.0.0.1", "port": 15000,
         "sidecar": {"intercepted": false, "listener_ingress": {"9090": 15010}}},
        // On loopback, nothing mapped: only the first listener.
        {"node": "api", "address": "127.0.0.2", "port": 15000, "sidecar": {"intercepted": false}},
        // Registered by hand: its own port, whatever the listener.
        {"node": "api", "address": "10.0.0.9", "port": 7000},
    ]);
    let set = set_of(input, "mesh/m/virtualNode/web", &Ports::default());
    assert_eq!(
        endpoints_of(&set, "cds_egress_m_api_http_8080"),
        [
            "10.0.0.1:15000",
            "10.0.0.9:7000",
            "127.0.0.1:15000",
            "127.0.0.2:15000"
        ]
    );
    assert_eq!(
        endpoints_of(&set, "cds_egress_m_api_grpc_9090"),
        ["10.0.0.1:9090", "10.0.0.9:7000", "127.0.0.1:15010"]
    );
    // The client's routes and clusters per listener of the provider.
    let vhosts = &set.routes["rds_egress_http_15001"]["virtual_hosts"];
    let names: Vec<&str> = vhosts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["api:8080", "api:9090"]);
    let od = &set.clusters["cds_egress_m_api_grpc_9090"]["outlier_detection"];
    assert_eq!(od["consecutive_5xx"], 4);
    assert!(set.clusters["cds_egress_m_api_http_8080"]
        .get("outlier_detection")
        .is_none());
}

/// Every HTTP connection manager in a resource set.
fn hcms(set: &ResourceSet) -> Vec<&Value> {
    set.listeners
        .values()
        .flat_map(|l| l["filter_chains"].as_array().into_iter().flatten())
        .flat_map(|c| c["filters"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .map(|f| &f["typed_config"])
        .collect()
}

fn gateway(listener_hc: Option<Value>) -> Vec<Value> {
    let mut l = json!({"portMapping": {"port": 8443, "protocol": "http"}});
    if let Some(hc) = listener_hc {
        l["healthCheck"] = hc;
    }
    vec![
        json!({"kind": "VirtualGateway", "name": "edge", "spec": {"listeners": [
            l,
            {"portMapping": {"port": 8444, "protocol": "http2"}}
        ]}}),
        json!({"kind": "GatewayRoute", "parent": "edge", "name": "to-api", "spec": {
            "httpRoute": {"match": {"prefix": "/"}, "action": {"target": {
                "virtualService": {"virtualServiceName": "api"}, "port": 8080}}}}}),
        json!({"kind": "VirtualNode", "name": "h2", "spec": {"listeners": [
            {"portMapping": {"port": 7000, "protocol": "http2"}}]}}),
        json!({"kind": "VirtualService", "name": "h2", "spec": {"provider": {"virtualNode": {"virtualNodeName": "h2"}}}}),
        json!({"kind": "GatewayRoute", "parent": "edge", "name": "to-h2", "spec": {
            "http2Route": {"match": {"prefix": "/"}, "action": {"target": {
                "virtualService": {"virtualServiceName": "h2"}}}}}}),
    ]
}

#[test]
fn connection_managers_pass_websocket_upgrades() {
    let input = mesh(gateway(None));
    let mut seen = 0;
    for id in [
        "mesh/m/virtualNode/api",
        "mesh/m/virtualNode/web",
        "mesh/m/virtualGateway/edge",
    ] {
        for hcm in hcms(&set_of(input.clone(), id, &Ports::default())) {
            seen += 1;
            assert_eq!(
                hcm["upgrade_configs"],
                json!([{"upgrade_type": "websocket"}]),
                "{id}"
            );
        }
    }
    // api: 8080 and 9090 (and the default chain is not in filter_chains);
    // web: its ingress and egress; edge: two listeners.
    assert_eq!(seen, 6);
}

#[test]
fn a_gateway_listener_health_check_probes_the_hosts_it_routes_to() {
    let hc = json!({"protocol": "http2", "path": "/healthz", "healthyThreshold": 2,
        "unhealthyThreshold": 3, "intervalMillis": 5000, "timeoutMillis": 2000, "port": 8443});
    let set = set_of(
        mesh(gateway(Some(hc))),
        "mesh/m/virtualGateway/edge",
        &Ports::default(),
    );
    let checks = &set.clusters["cds_egress_m_api_http_8080"]["health_checks"];
    assert_eq!(
        checks,
        &json!([{
            "timeout": "2s", "interval": "5s", "healthy_threshold": 2, "unhealthy_threshold": 3,
            "http_health_check": {"path": "/healthz", "codec_client_type": "HTTP2"},
        }])
    );
    assert!(
        set.clusters["cds_egress_m_h2_http2_7000"]
            .get("health_checks")
            .is_none(),
        "the other listener has no health check"
    );
    let without = set_of(
        mesh(gateway(None)),
        "mesh/m/virtualGateway/edge",
        &Ports::default(),
    );
    assert!(without.clusters["cds_egress_m_api_http_8080"]
        .get("health_checks")
        .is_none());
}

#[test]
fn a_grpc_health_check_needs_an_http2_cluster() {
    let grpc = json!({"protocol": "grpc", "healthyThreshold": 2, "unhealthyThreshold": 2,
        "intervalMillis": 5000, "timeoutMillis": 2000});
    let mut node = listener_node();
    node["spec"]["listeners"][0]["healthCheck"] = grpc.clone();
    node["spec"]["listeners"][1]["healthCheck"] = grpc.clone();
    let input = json!({"resources": [json!({"kind": "Mesh", "name": "m", "spec": {}}), node]});
    let set = set_of(input, "mesh/m/virtualNode/api", &Ports::default());
    assert!(
        set.clusters["cds_ingress_m_api_http_8080"]
            .get("health_checks")
            .is_none(),
        "Envoy refuses a gRPC check on an HTTP/1.1 cluster"
    );
    assert!(
        set.clusters["cds_ingress_m_api_grpc_9090"]["health_checks"][0]
            .get("grpc_health_check")
            .is_some()
    );
    let gw = mesh(gateway(Some(grpc)));
    let set = set_of(gw, "mesh/m/virtualGateway/edge", &Ports::default());
    assert!(set.clusters["cds_egress_m_api_http_8080"]
        .get("health_checks")
        .is_none());
}

/// TCP backends on a shared port, as docs/appmesh-compatibility.md states
/// it: one chain per TCP port, the first backend's (in `backends` order);
/// that chain takes the port from an HTTP backend on it too; and with no
/// HTTP backend, the first TCP chain is the default for a connection made
/// to the egress port itself (no interception).
#[test]
fn tcp_backends_on_a_shared_port_the_first_one_wins() {
    let tcp_node = |name: &str, port: u32| {
        [
            json!({"kind": "VirtualNode", "name": name, "spec": {"listeners": [
                {"portMapping": {"port": port, "protocol": "tcp"}}]}}),
            json!({"kind": "VirtualService", "name": name,
                   "spec": {"provider": {"virtualNode": {"virtualNodeName": name}}}}),
        ]
    };
    let backends = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({"virtualService": {"virtualServiceName": n}}))
            .collect()
    };
    let mut extra: Vec<Value> = [
        tcp_node("db1", 5432),
        tcp_node("db2", 5432),
        tcp_node("db3", 6379),
    ]
    .into_iter()
    .flatten()
    .collect();
    extra.extend([
        json!({"kind": "VirtualNode", "name": "web2", "spec": {"listeners": [
            {"portMapping": {"port": 5432, "protocol": "http"}}]}}),
        json!({"kind": "VirtualService", "name": "web2",
               "spec": {"provider": {"virtualNode": {"virtualNodeName": "web2"}}}}),
        json!({"kind": "VirtualNode", "name": "mixed",
               "spec": {"backends": backends(&["db2", "db1", "web2"])}}),
        json!({"kind": "VirtualNode", "name": "tcponly",
               "spec": {"backends": backends(&["db1", "db3"])}}),
    ]);
    let input = mesh(extra);
    let egress = "lds_egress_0.0.0.0_15001";

    let set = set_of(input.clone(), "mesh/m/virtualNode/mixed", &Ports::default());
    let listener = &set.listeners[egress];
    let names: Vec<&str> = listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["egress_http", "egress_tcp_db2_5432"],
        "db1 gets no chain"
    );
    let tcp = chain_named(listener, "egress_tcp_db2_5432");
    assert_eq!(tcp["filter_chain_match"]["destination_port"], 5432);
    assert_eq!(
        tcp["filters"][0]["typed_config"]["cluster"],
        "cds_egress_m_db2_tcp_5432"
    );
    // The HTTP chain matches every other port; web2's virtual host is there
    // for calls to the egress port itself.
    assert!(chain_named(listener, "egress_http")
        .get("filter_chain_match")
        .is_none());
    assert!(listener.get("default_filter_chain").is_none());
    let vhosts: Vec<&str> = set.routes["rds_egress_http_15001"]["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vhosts, ["web2:5432"]);

    let set = set_of(input, "mesh/m/virtualNode/tcponly", &Ports::default());
    let listener = &set.listeners[egress];
    assert_eq!(
        listener["default_filter_chain"]["filters"],
        chain_named(listener, "egress_tcp_db1_5432")["filters"],
        "without interception the first TCP backend takes everything"
    );
    chain_named(listener, "egress_tcp_db3_6379");
}
