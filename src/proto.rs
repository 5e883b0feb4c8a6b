//! Generated protobuf and gRPC code. The module tree mirrors the proto
//! packages because the generated code refers to other packages by
//! relative `super::` paths.

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
    }
}

pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Our own messages.
pub mod nativelink_lre {
    pub mod v1 {
        tonic::include_proto!("nativelink_lre.v1");
    }
}

/// The REAPI v2 package, which nearly every module uses.
pub use build::bazel::remote::execution::v2 as reapi;
pub use google::bytestream;

/// Packs a message into `google.protobuf.Any`.
pub fn any(type_name: &str, msg: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: msg.encode_to_vec(),
    }
}
