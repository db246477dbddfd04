//! The one error type of the harness.

use std::path::PathBuf;
use std::time::Duration;

use crate::version::RedisVersion;

/// Everything that can go wrong while finding, running or talking to a test server.
///
/// Messages are written for the person reading a failed test: they say what was
/// attempted, what happened, and (for servers) end with the tail of the server's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The `redis-server` binary of a version is not where the harness looks for it.
    #[error(
        "redis-server {version} not found at {}: {reason}; install it with `{install}` \
         (or set {env_var} to the path of a redis-server {version} binary)",
        .path.display()
    )]
    BinaryNotFound {
        version: RedisVersion,
        path: PathBuf,
        reason: String,
        /// The command that installs this version.
        install: &'static str,
        /// The environment variable that overrides the lookup.
        env_var: String,
    },

    /// A binary was found but reports another version than the one asked for.
    #[error(
        "{} reports redis {found}, expected {version}.x; install the right one with `{install}` \
         (or set {env_var} to the path of a redis-server {version} binary)",
        .path.display()
    )]
    WrongVersion {
        version: RedisVersion,
        path: PathBuf,
        found: String,
        install: &'static str,
        env_var: String,
    },

    /// The version does not have a feature the caller asked for (e.g. cluster on 2.8).
    #[error("redis {version} does not support {feature}")]
    Unsupported {
        version: RedisVersion,
        feature: &'static str,
    },

    /// A builder option the harness cannot honour.
    #[error("invalid server configuration: {0}")]
    InvalidConfig(String),

    /// An I/O operation of the harness failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// No free loopback port could be found or kept.
    #[error("no usable loopback port: {0}")]
    NoFreePort(String),

    /// The server exited or never became ready.
    #[error(
        "redis-server {version} on 127.0.0.1:{port} failed to start: {reason}\n\
         --- log tail of {} ---\n{log_tail}",
        .dir.display()
    )]
    StartFailed {
        version: RedisVersion,
        port: u16,
        dir: PathBuf,
        reason: String,
        log_tail: String,
    },

    /// The server process is not running (after `stop`/`kill9`, or it died).
    #[error("redis-server {version} on 127.0.0.1:{port} is not running")]
    NotRunning { version: RedisVersion, port: u16 },

    /// The bytes read from a server are not valid RESP.
    #[error("RESP protocol error: {0}")]
    Protocol(String),

    /// The server answered with an error reply where the harness needed success.
    #[error("`{command}` failed: {message}")]
    ErrorReply { command: String, message: String },

    /// The server answered with a reply of an unexpected shape.
    #[error("`{command}` returned an unexpected reply: {reply}")]
    UnexpectedReply { command: String, reply: String },

    /// An `INFO` field is absent.
    #[error("INFO {section} has no field `{field}`")]
    MissingInfoField { section: String, field: String },

    /// A polled condition did not hold before its deadline.
    #[error("timed out after {waited:?} waiting for {what}; last observation: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },

    /// A cluster operation failed for a reason other than a timeout.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
