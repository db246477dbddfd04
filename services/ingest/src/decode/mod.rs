//! Decoders from spooled bytes to change events: [`snapshot`] for RDB snapshots,
//! [`stream`] for the replication stream. Neither does I/O; the reader feeds them.

pub mod scripts;
pub mod snapshot;
pub mod stream;
