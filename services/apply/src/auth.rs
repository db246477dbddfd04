//! The API token: when `--api-token` is set, TaskService callers must send
//! `authorization: Bearer <token>`. Health and reflection stay open so probes and
//! grpcurl's discovery work without it. The check itself is the shared
//! [`redis_sync_service::RequireToken`] (ingest guards its service with it too).

pub use redis_sync_service::RequireToken;

/// The interceptor guarding TaskService: requires `token` when it is `Some`.
pub fn api_token(token: Option<&str>) -> RequireToken {
    RequireToken::new(token).described_as("API token")
}
