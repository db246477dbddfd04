//! Reads the RDB snapshots that a Redis or Valkey master sends its replicas, and the
//! DUMP payloads that `RESTORE` takes, so that redis-sync can replay a source's keyspace on
//! a destination. [`RdbParser`] is fed the snapshot in pieces of any size as it arrives
//! (from the socket or the spool file) and yields [`Item`]s: every key with its database,
//! absolute expiry and both a typed [`Value`] and the exact serialised bytes (`dump_body`,
//! which `RESTORE ... ABSTTL` accepts once [`dump::frame`]d); keys bigger than a threshold
//! come as typed [`KeyChunk`]s instead and are never held whole. Every format from RDB 1
//! (Redis 1.x) to RDB 12 (Redis 7.4+) and Valkey's RDB 80+ is read, with the CRC-64
//! verified. It is not a writer (apart from DUMP framing), not a loader into any data
//! structure, and it does no I/O: the caller owns sockets, files and timing. Input is
//! treated as hostile: every failure is a typed [`RdbError`] naming the byte offset, never a
//! panic, and nothing is allocated from a declared length before the bytes are there.

pub mod dump;
pub mod encoding;
mod error;
mod model;
mod parser;
mod reader;
pub mod types;
mod value;

pub use error::RdbError;
pub use model::{
    AuxFields, HashField, Item, KeyChunk, KeyRecord, ParserOptions, Stream, StreamConsumer,
    StreamEntry, StreamGroup, StreamId, StreamMeta, StreamPendingEntry, Value, module_type_name,
};
pub use parser::RdbParser;

use bytes::Bytes;

/// Decodes a whole value from a DUMP body (type byte + serialised value, the trailer
/// already removed by [`dump::unframe`]). `rdb_version` is the version the body was written
/// with; `valkey` says whether the writer was Valkey 9+ (its type 22 differs from Redis's
/// type 22; a version of 80 or more implies it, since DUMP payloads carry no magic).
/// Offsets in errors count from the start of `dump_body`. Unlike the parser, an empty
/// collection is returned as such rather than skipped.
pub fn decode_value(dump_body: &[u8], rdb_version: u32, valkey: bool) -> Result<Value, RdbError> {
    let Some((&rdb_type, body)) = dump_body.split_first() else {
        return Err(RdbError::Truncated {
            offset: 0,
            context: "the type byte",
        });
    };
    let valkey = valkey || rdb_version >= 80;
    // One copy, so that the value's strings can all be slices of it.
    let data = Bytes::copy_from_slice(body);
    // The body is all there: a length claiming more than it holds ends as truncation
    // before anything is allocated for it, so no other limit is needed.
    value::decode_whole(rdb_type, valkey, &data, 1, u64::MAX).map(|(v, _)| v)
}
