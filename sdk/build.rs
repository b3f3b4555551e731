//! Generates the v1 types and gRPC stubs from `proto/`. protoc comes from the
//! `protoc-bin-vendored` crate, so a fresh machine needs no manual install.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["types", "sessions", "templates", "admin", "node_agent"]
        .map(|name| root.join(format!("hearth/v1/{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_client(true)
        // No `XClient::connect` constructors: `NodeAgent.Connect` would clash with one, and
        // every client here is built from a shared `Channel` anyway.
        .build_transport(false)
        .file_descriptor_set_path(out.join("hearth_v1_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
