//! Compiles `proto/echo.proto` (the gRPC tests' own service) with `protox`,
//! because there is no `protoc` on the build machines.

fn main() {
    let fds = protox::compile(["echo.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("compiling proto/echo.proto: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust for proto/echo.proto: {e}"));
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=build.rs");
}
