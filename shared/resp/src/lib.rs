//! RESP codec for what a Redis master sends its replicas: the command stream (arrays of
//! bulks, plus the bare newlines masters use as keepalives), the replies seen during the
//! handshake, and the framing of the snapshot transfer ([`handshake`]). Decoding is
//! incremental and zero-copy — bytes can arrive in any pieces, decoded strings are slices
//! of the received buffer — and every frame reports exactly how many bytes it took, because
//! replication offsets count bytes and one byte off loses or repeats a write.
//!
//! It is not a client: no I/O, no connection or reply handling, no RESP3 types (a master
//! never sends them to a replica), and no understanding of what commands mean (that is
//! `redis-sync-command`). Malformed input yields a [`RespError`] naming the byte offset, and
//! a length claimed by the peer is never used to reserve memory before the bytes arrive.

mod decode;
mod error;
mod frame;
pub mod handshake;

pub use decode::{Decoded, Decoder, Limits, parse};
pub use error::{Limit, RespError};
pub use frame::{Frame, command_len, encode_command, encode_frame};
