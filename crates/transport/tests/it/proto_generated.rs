//! The committed gRPC code (`src/grpc/generated/`) is what `tonic-prost-build` makes of
//! `proto/prompting/v1/miner.proto`, so building the crate needs no `protoc`. After changing
//! the proto (or upgrading tonic), regenerate with
//! `PROMPTING_UPDATE_GENERATED=1 cargo test -p prompting-transport proto`.

use std::path::Path;

#[test]
fn generated_grpc_code_is_up_to_date() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_root = manifest.join("../../proto");
    let proto = proto_root.join("prompting/v1/miner.proto");
    let out = tempfile::tempdir().expect("temporary directory");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The client connects through `tonic::transport::Endpoint` itself.
        .build_transport(false)
        .client_mod_attribute("prompting.v1", r#"#[cfg(feature = "client")]"#)
        .server_mod_attribute("prompting.v1", r#"#[cfg(feature = "server")]"#)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_with_config(config, &[proto], &[proto_root])
        .expect("protoc and tonic-prost-build");
    let fresh = std::fs::read_to_string(out.path().join("prompting.v1.rs")).expect("generated");
    let committed_path = manifest.join("src/grpc/generated/prompting.v1.rs");
    if std::env::var_os("PROMPTING_UPDATE_GENERATED").is_some() {
        std::fs::write(&committed_path, &fresh).expect("write the generated code");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run PROMPTING_UPDATE_GENERATED=1 cargo test -p prompting-transport proto",
        committed_path.display()
    );
}
