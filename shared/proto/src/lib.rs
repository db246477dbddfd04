//! The redis-sync contract, generated from `proto/redis_sync/v1`.
//!
//! Everything that crosses a process boundary is defined there and only there: change
//! events, the ingest API and the task API. This crate adds nothing but the generated
//! types, the gRPC stubs and the descriptor set that gRPC reflection serves. Domain logic
//! lives in the services, not here.

#![allow(missing_docs, clippy::doc_markdown, clippy::large_enum_variant)]

/// `redis_sync.v1`: the only version so far.
pub mod v1 {
    tonic::include_proto!("redis_sync.v1");
}

/// Encoded `FileDescriptorSet` of the contract, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("redis_sync_descriptor");
