//! The Drover contract shared by every component: the generated protobuf and
//! gRPC code (`pb`), the YAML pipeline spec and its validation (`spec`).

pub mod events;
pub mod naming;
pub mod spec;

/// Generated from `proto/drover/v1/*.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("drover.v1");

    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drover_descriptor");
}
