use std::path::Path;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bootstrap");

fn fixture(name: &str) -> String {
    let path = Path::new(FIXTURES).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_error(text: &str) -> String {
    match parse(text, Format::Yaml) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn front_proxy_yaml_and_json_agree() {
    let yaml = parse(&fixture("front-proxy.yaml"), Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let json = parse(&fixture("front-proxy.json"), Format::Json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(yaml, json);
}

#[test]
fn a_typo_names_its_path() {
    let e = yaml_error("static_resources:\n  clusters:\n  - name: a\n    conect_timeout: 1s\n");
    assert_eq!(
        e,
        "static_resources.clusters[0].conect_timeout: unknown field (did you mean connect_timeout?)"
    );
}

#[test]
fn an_unsupported_envoy_field_names_its_path() {
    let e = yaml_error("static_resources:\n  listeners:\n  - name: l\n    tcp_backlog_size: 10\n");
    assert_eq!(
        e,
        "static_resources.listeners[0].tcp_backlog_size: not supported by trellis"
    );
}

#[test]
fn an_unknown_type_names_the_filter() {
    let text = r#"
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: redis
"#;
    assert_eq!(
        yaml_error(text),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: \
         extension type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy \
         is not supported by trellis"
    );
}

#[test]
fn a_known_but_unsupported_type_names_the_filter() {
    let text = r#"
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
    assert_eq!(
        yaml_error(text),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: \
         extension type.googleapis.com/envoy.extensions.filters.http.router.v3.Router \
         is not supported by trellis"
    );
}

#[test]
fn a_malformed_duration_names_its_path() {
    let e = yaml_error("static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 5m\n");
    assert_eq!(
        e,
        "static_resources.clusters[0].connect_timeout: invalid duration \"5m\": \
         expected seconds with an 's' suffix, like \"5s\" or \"0.25s\""
    );
    let e = yaml_error("static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 5\n");
    assert!(
        e.starts_with("static_resources.clusters[0].connect_timeout: invalid duration 5: "),
        "{e}"
    );
}

#[test]
fn an_empty_yaml_file_is_an_error() {
    assert_eq!(
        yaml_error("# nothing yet\n"),
        "the file holds no YAML document"
    );
    assert!(parse("{}", Format::Json).is_ok());
}

#[test]
fn a_string_for_an_int_names_its_path() {
    let socket = |port: &str| {
        format!("admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n")
    };
    assert_eq!(
        yaml_error(&socket("http")),
        "admin.address.socket_address.port_value: \"http\" is not an integer"
    );
    assert_eq!(
        yaml_error(&socket("-1")),
        "admin.address.socket_address.port_value: -1 is out of range for uint32 (0 to 4294967295)"
    );
    assert!(parse(&socket("\"9901\""), Format::Yaml).is_ok());
}

#[test]
fn a_wrong_enum_name_lists_the_right_ones() {
    assert_eq!(
        yaml_error("static_resources:\n  clusters:\n  - name: a\n    dnsLookupFamily: V4\n"),
        "static_resources.clusters[0].dnsLookupFamily: unknown value V4 \
         (one of: AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL)"
    );
}

#[test]
fn an_unknown_key_far_from_any_field_names_the_message() {
    assert_eq!(
        yaml_error("node: { id: a, bananas: 1 }\n"),
        "node.bananas: unknown field for envoy.config.core.v3.Node"
    );
}

#[test]
fn errors_inside_extensions_keep_their_path() {
    // `@type` last: prost-reflect alone would report these at `typed_config`.
    let text = r#"
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          stat_prefix: x
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              dynamic_stats: maybe
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
"#;
    assert_eq!(
        yaml_error(text),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config\
         .http_filters[0].typed_config.dynamic_stats: invalid type: string \"maybe\", expected a boolean"
    );
}

#[test]
fn an_unsupported_lb_policy_lists_the_supported_ones() {
    let e = yaml_error(
        "static_resources:\n  clusters:\n  - name: a\n    lb_policy: LOAD_BALANCING_POLICY_CONFIG\n",
    );
    assert_eq!(
        e,
        "static_resources.clusters[0].lb_policy: LOAD_BALANCING_POLICY_CONFIG is not supported \
         by trellis (supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, \
         CLUSTER_PROVIDED)"
    );
}

#[test]
fn the_error_line_names_the_file() {
    let dir = std::env::temp_dir().join(format!("trellis-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "node:\n  id: 7\n").unwrap_or_else(|e| panic!("{e}"));
    let e = load(&file).err().map(|e| e.to_string()).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.starts_with(&format!("{}: node.id: ", file.display())),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let file = dir.join("multi-line.yaml");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &file,
        "admin:\n  address:\n    socket_address: { port_value: \"1\\n2\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = load(&file).err().map(|e| e.to_string()).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.ends_with(r#"port_value: "1\n2" is not an integer"#),
        "{e}"
    );

    let missing = load(Path::new("/nonexistent/trellis.yaml"))
        .err()
        .map(|e| e.to_string());
    assert!(missing.is_some_and(|e| e.starts_with("/nonexistent/trellis.yaml: cannot read: ")),);
}

#[test]
fn load_reads_json_by_extension() {
    let path = Path::new(FIXTURES).join("front-proxy.json");
    let yaml = parse(&fixture("front-proxy.yaml"), Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(load(&path).unwrap_or_else(|e| panic!("{e}")), yaml);
}

#[test]
fn yaml_as_envoy_reads_it() {
    let b =
        parse(&fixture("envoy-yaml-dialect.yaml"), Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let admin = b
        .admin
        .and_then(|a| a.address)
        .and_then(|a| a.address)
        .map(|a| format!("{a:?}"))
        .unwrap_or_default();
    assert!(
        admin.contains("127.0.0.1") && admin.contains("9901"),
        "{admin}"
    );
    let resources = b.static_resources.unwrap_or_default();
    let l = &resources.listeners[0];
    assert_eq!(l.bind_to_port, Some(false));
    let socket = format!("{:?}", l.address);
    assert!(
        socket.contains("PortValue(10000)") && socket.contains("ipv4_compat: true"),
        "{socket}"
    );
    let c = &resources.clusters[0];
    assert!(c.close_connections_on_host_health_failure);
    assert!(!c.ignore_health_on_host_removal);
    assert_eq!(c.per_connection_buffer_limit_bytes, Some(32768));
    assert_eq!(
        c.connect_timeout,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
}

#[test]
fn merge_keys_work_though_envoy_lacks_them() {
    let text = "x: &local { address: 127.0.0.1 }\n";
    let with_merge = "admin:\n  address:\n    socket_address: { <<: *local, port_value: 9901 }\n";
    // `x` is no Bootstrap field: merge keys need somewhere to hold the anchor.
    let e = yaml_error(&format!("{text}{with_merge}"));
    assert_eq!(
        e,
        "x: unknown field for envoy.config.bootstrap.v3.Bootstrap"
    );
    let text = format!("!ignore {text}{with_merge}");
    let b = parse(&text, Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let admin = format!("{:?}", b.admin);
    assert!(
        admin.contains("127.0.0.1") && admin.contains("9901"),
        "{admin}"
    );
}

#[test]
fn accepted_and_ignored_fields_load() {
    let text = "node: { id: n, user_agent_name: envoy }\nstats_flush_interval: 5s\n";
    let b = parse(text, Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.node.map(|n| n.id), Some("n".to_string()));
}

#[test]
fn format_comes_from_the_extension_or_the_text() {
    assert_eq!(Format::of(Path::new("a.YML"), "{}"), Format::Yaml);
    assert_eq!(Format::of(Path::new("a.json"), "x: 1"), Format::Json);
    assert_eq!(
        Format::of(Path::new("/dev/stdin"), "  {\"node\": {}}"),
        Format::Json
    );
    assert_eq!(
        Format::of(Path::new("bootstrap.conf"), "node: {}"),
        Format::Yaml
    );
}

#[test]
fn every_fixture_loads() {
    // Each fixture also passes `envoy --mode validate` (Envoy 1.40).
    let dir = std::fs::read_dir(FIXTURES).unwrap_or_else(|e| panic!("{e}"));
    let mut loaded = 0;
    for entry in dir.flatten() {
        load(&entry.path()).unwrap_or_else(|e| panic!("{e}"));
        loaded += 1;
    }
    assert!(loaded >= 3);
}

#[test]
fn an_ads_sidecar_bootstrap_loads() {
    let b = load(&Path::new(FIXTURES).join("appmesh-ads.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.node.map(|n| n.id).as_deref(),
        Some("mesh/demo/virtualNode/colorteller-blue")
    );
    let ads = b.dynamic_resources.and_then(|d| d.ads_config);
    let delta = xds_protos::envoy::config::core::v3::api_config_source::ApiType::DeltaGrpc;
    assert_eq!(ads.map(|a| a.api_type), Some(delta as i32));
}

#[test]
fn two_spellings_of_one_field_are_a_duplicate() {
    assert_eq!(
        yaml_error("static_resources:\n  clusters:\n  - name: a\n    connectTimeout: 1s\n    connect_timeout: 2s\n"),
        "static_resources.clusters[0].connect_timeout: the same field as connectTimeout, given twice"
    );
}
