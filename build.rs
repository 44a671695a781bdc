//! Compiles `proto/` with protox (pure Rust, no system protoc) and writes the
//! descriptor set that gRPC reflection serves.
//!
//! Also sets `cfg(postgres_tests)` when `CONNECTIONS_TEST_POSTGRES_URL` is
//! set: without it the integration tests' `postgres` variants are compiled as
//! ignored, so `cargo test` reports them as ignored rather than passed.
//! (libtest cannot skip at run time; changing the variable rebuilds the crate.)

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "connections/v1/types.proto",
    "connections/v1/admin_service.proto",
    "connections/v1/connection_service.proto",
    "connections/v1/event_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo:rerun-if-env-changed=CONNECTIONS_TEST_POSTGRES_URL");
    if env::var_os("CONNECTIONS_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=postgres_tests");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set; reflection needs it.
    fs::write(
        out_dir.join("connections_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
