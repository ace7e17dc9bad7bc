//! The Drover contract shared by every component: the generated protobuf and
//! gRPC code (`pb`), the YAML pipeline spec and its validation (`spec`).

/// This build: the workspace version and the commit it was built from.
pub fn version() -> pb::VersionInfo {
    pb::VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: env!("DROVER_COMMIT").to_string(),
    }
}

pub mod duration;
pub mod events;
pub mod naming;
pub mod nats_auth;
pub mod nats_connect;
pub mod spec;

/// Generated from `proto/drover/v1/*.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("drover.v1");

    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drover_descriptor");
}
