//! Configuration of the ingest service: flags and environment, validated once at start.

use std::{net::SocketAddr, path::PathBuf};

use redis_sync_service::{CommonArgs, CommonConfig, ConfigError};

/// Command line of `redis-sync-ingest`. Every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "redis-sync-ingest",
    version,
    about = "Replica of a source Redis that serves its changes over gRPC"
)]
pub struct IngestArgs {
    /// Flags shared with apply.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory for the spool (snapshots and replication stream kept until acknowledged).
    #[arg(long, env = "REDIS_SYNC_SPOOL_DIR", default_value = "./spool")]
    pub spool_dir: PathBuf,
    /// Largest total spool size in bytes per subscriber; reaching it fails the subscription.
    #[arg(long, env = "REDIS_SYNC_SPOOL_MAX_BYTES", default_value_t = 16 * 1024 * 1024 * 1024)]
    pub spool_max_bytes: u64,
    /// Keys whose serialised value is bigger than this are streamed as typed chunks.
    #[arg(long, env = "REDIS_SYNC_CHUNK_THRESHOLD_BYTES", default_value_t = 1024 * 1024)]
    pub chunk_threshold_bytes: u64,
    /// Most events in one batch sent to a subscriber.
    #[arg(long, env = "REDIS_SYNC_MAX_BATCH_EVENTS", default_value_t = 512)]
    pub max_batch_events: usize,
    /// Bearer token that IngestService callers (apply's --ingest-token) must send
    /// ("authorization: Bearer <token>"); unset means no token is required.
    #[arg(long, env = "REDIS_SYNC_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool cap per subscriber.
    pub spool_max_bytes: u64,
    /// Chunking threshold.
    pub chunk_threshold_bytes: u64,
    /// Batch size cap.
    pub max_batch_events: usize,
    /// Required bearer token for IngestService, if any.
    pub auth_token: Option<String>,
}

impl IngestArgs {
    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<IngestConfig, ConfigError> {
        let common = self.common.validate(
            SocketAddr::from(([127, 0, 0, 1], 50051)),
            SocketAddr::from(([127, 0, 0, 1], 9464)),
        )?;
        if self.spool_max_bytes < 16 * 1024 * 1024 {
            return Err(ConfigError::new(
                "--spool-max-bytes (REDIS_SYNC_SPOOL_MAX_BYTES)",
                format!("{} is below the minimum of 16 MiB", self.spool_max_bytes),
            ));
        }
        if self.chunk_threshold_bytes < 1024 {
            return Err(ConfigError::new(
                "--chunk-threshold-bytes (REDIS_SYNC_CHUNK_THRESHOLD_BYTES)",
                "must be at least 1024",
            ));
        }
        if !(1..=100_000).contains(&self.max_batch_events) {
            return Err(ConfigError::new(
                "--max-batch-events (REDIS_SYNC_MAX_BATCH_EVENTS)",
                "must be between 1 and 100000",
            ));
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "--spool-dir (REDIS_SYNC_SPOOL_DIR)",
                "must not be empty",
            ));
        }
        redis_sync_service::validate_token(
            "--auth-token (REDIS_SYNC_AUTH_TOKEN)",
            self.auth_token.as_deref(),
        )?;
        Ok(IngestConfig {
            common,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            chunk_threshold_bytes: self.chunk_threshold_bytes,
            max_batch_events: self.max_batch_events,
            auth_token: self.auth_token.clone(),
        })
    }
}
