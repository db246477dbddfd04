//! Test harness of redis-sync: runs real `redis-server` processes of every supported
//! version on loopback so integration tests exercise Redis's own behaviour instead of
//! a mock. It finds the binaries ([`server_binary`]; a missing one is an error naming
//! the command that installs it, never a silent skip), starts standalone servers
//! ([`RedisServer`]) and clusters ([`RedisCluster`]) on free ports in their own
//! scratch directories, waits until they are ready, and kills them when the test ends,
//! panics, or its process dies. A small blocking RESP client ([`Client`], [`Reply`])
//! serves setup and assertions, independent of the project's own protocol code.
//!
//! This crate is for tests only (dev-dependency); production code must not use it.
//! It blocks, it panics on programming errors in tests, and it trusts its servers.
//!
//! ```no_run
//! use redis_sync_testkit::{RedisServer, RedisVersion};
//!
//! let server = RedisServer::builder(RedisVersion::V7_0)
//!     .config("maxmemory-policy", "noeviction")
//!     .start()?;
//! assert!(server.cmd_str(&["SET", "k", "v"])?.is_ok());
//! assert_eq!(server.info_stat("sync_full")?, 0);
//! # Ok::<(), redis_sync_testkit::HarnessError>(())
//! ```

mod cluster;
mod error;
mod process;
mod resp;
mod server;
mod version;

pub use cluster::{
    CLUSTER_NODE_TIMEOUT_MS, ClusterNode, RedisCluster, SLOT_COUNT, crc16, key_slot,
};
pub use error::{HarnessError, Result};
pub use process::wait_until;
pub use resp::{Client, DEFAULT_TIMEOUT, Info, Reply};
pub use server::{DEFAULT_START_TIMEOUT, KEEP_DIRS_ENV, RedisServer, ServerBuilder};
pub use version::{RedisVersion, server_binary};
