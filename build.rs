//! Compiles our own REAPI, ByteStream, longrunning and google.rpc schemas
//! from `proto/` with protox (pure Rust), so the build never needs `protoc`.

use std::error::Error;

const PROTOS: &[&str] = &[
    "build/bazel/semver/semver.proto",
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "google/bytestream/bytestream.proto",
    "google/longrunning/operations.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
    "nativelink_lre/v1/admin.proto",
    "nativelink_lre/v1/metadata.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Blob data as `Bytes`, so chunks are passed along without copies.
        .bytes(".")
        // `status --json` prints the admin messages as they are.
        .type_attribute(".nativelink_lre.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
