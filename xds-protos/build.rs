//! Compiles the subset of Envoy's v3 API that trellis speaks, from the .proto
//! files shipped inside the `envoy-types` crate, with `protox` (no protoc).

use std::path::{Path, PathBuf};

const ENVOY_TYPES_DIR: &str = "envoy-types-0.7.7";

/// Root files; protox pulls in everything they import.
const ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/cluster/v3/cds.proto",
    "envoy/service/endpoint/v3/eds.proto",
    "envoy/service/listener/v3/lds.proto",
    "envoy/service/route/v3/rds.proto",
    "envoy/service/secret/v3/sds.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/extensions/resource_monitors/fixed_heap/v3/fixed_heap.proto",
    "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.proto",
    "envoy/extensions/filters/network/connection_limit/v3/connection_limit.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
];

fn main() {
    let root = proto_root();
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();

    // One compiler per root: protox resolves relative names against every file
    // it has loaded, so unrelated packages (filters.common vs common) collide.
    let mut fds = prost_types::FileDescriptorSet::default();
    let mut seen = std::collections::HashSet::new();
    for root_file in ROOTS {
        let mut compiler = protox::Compiler::new(&includes).expect("protox include paths");
        compiler.include_imports(true).include_source_info(false);
        compiler
            .open_file(root_file)
            .unwrap_or_else(|e| panic!("compiling {root_file}: {e}"));
        for file in compiler.file_descriptor_set().file {
            if seen.insert(file.name.clone()) {
                fds.file.push(file);
            }
        }
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .expect("write descriptors");

    let mut config = prost_build::Config::new();
    config.include_file("_includes.rs");
    config.disable_comments(["."]);
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile_fds_with_config(fds, config)
        .unwrap_or_else(|e| panic!("generating Rust for Envoy protos: {e}"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRELLIS_ENVOY_PROTO_DIR");
}

/// Where cargo unpacked `envoy-types` (a build-dependency, so it is present).
fn proto_root() -> PathBuf {
    if let Ok(dir) = std::env::var("TRELLIS_ENVOY_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo"));
    let mut candidates = Vec::new();
    if let Ok(rd) = std::fs::read_dir(cargo_home.join("registry/src")) {
        for entry in rd.flatten() {
            candidates.push(entry.path().join(ENVOY_TYPES_DIR).join("proto"));
        }
    }
    candidates.push(Path::new("../vendor").join("envoy-types").join("proto"));
    candidates
        .into_iter()
        .find(|p| p.join("data-plane-api").is_dir())
        .unwrap_or_else(|| {
            panic!("cannot find the protos of {ENVOY_TYPES_DIR}; set TRELLIS_ENVOY_PROTO_DIR")
        })
}
