//! Generates the gRPC code (`prompting.v1`, see `proto/prompting/v1/miner.proto`).
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so building needs no system install;
//! set `PROTOC` to use another `protoc` instead.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let proto = proto_root.join("prompting/v1/miner.proto");

    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &[proto_root])?;
    Ok(())
}
