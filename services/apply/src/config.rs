//! Configuration of the apply service: flags and environment, validated once at start.

use std::{net::SocketAddr, path::PathBuf};

use redis_sync_service::{CommonArgs, CommonConfig, ConfigError};

/// Command line of `redis-sync-apply`. Every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "redis-sync-apply",
    version,
    about = "Task control plane and writer towards a destination Redis"
)]
pub struct ApplyArgs {
    /// Flags shared with ingest.
    #[command(flatten)]
    pub common: CommonArgs,
    /// File of the embedded task store (created when missing, readable by its owner only).
    #[arg(
        long,
        env = "REDIS_SYNC_STORE_PATH",
        default_value = "./redis-sync-apply.redb"
    )]
    pub store_path: PathBuf,
    /// Default ingest endpoint for tasks that name none, e.g. "http://127.0.0.1:50051".
    #[arg(
        long,
        env = "REDIS_SYNC_INGEST_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub ingest_endpoint: String,
    /// Bearer token that TaskService callers must send ("authorization: Bearer <token>");
    /// unset means no token is required.
    #[arg(long, env = "REDIS_SYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Token apply sends to ingest, when ingest requires one.
    #[arg(long, env = "REDIS_SYNC_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// PEM CA bundle to verify ingest's TLS certificate (for https:// endpoints).
    #[arg(long, env = "REDIS_SYNC_INGEST_CA")]
    pub ingest_ca: Option<PathBuf>,
    /// PEM client certificate presented to ingest (mutual TLS).
    #[arg(long, env = "REDIS_SYNC_INGEST_CLIENT_CERT")]
    pub ingest_client_cert: Option<PathBuf>,
    /// PEM key of --ingest-client-cert.
    #[arg(long, env = "REDIS_SYNC_INGEST_CLIENT_KEY")]
    pub ingest_client_key: Option<PathBuf>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct ApplyConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// Task store file.
    pub store_path: PathBuf,
    /// Default ingest endpoint.
    pub ingest_endpoint: String,
    /// Required bearer token for TaskService, if any.
    pub api_token: Option<String>,
    /// Token sent to ingest, if any.
    pub ingest_token: Option<String>,
    /// TLS towards ingest: CA, client certificate and key (PEM bytes).
    pub ingest_tls: Option<IngestTls>,
}

/// TLS material for connections to ingest.
#[derive(Debug, Clone)]
pub struct IngestTls {
    /// CA bundle.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Checks that an ingest endpoint is an http(s) URL with a host and a port.
pub fn validate_endpoint(setting: &'static str, endpoint: &str) -> Result<(), ConfigError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError::new(
                setting,
                format!("{endpoint:?} must start with http:// or https://"),
            )
        })?;
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::new(
            setting,
            format!("{endpoint:?} must name a host and a port"),
        )),
    }
}

impl ApplyArgs {
    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<ApplyConfig, ConfigError> {
        let common = self.common.validate(
            SocketAddr::from(([127, 0, 0, 1], 50052)),
            SocketAddr::from(([127, 0, 0, 1], 9465)),
        )?;
        validate_endpoint(
            "--ingest-endpoint (REDIS_SYNC_INGEST_ENDPOINT)",
            &self.ingest_endpoint,
        )?;
        if self.store_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "--store-path (REDIS_SYNC_STORE_PATH)",
                "must not be empty",
            ));
        }
        for (setting, token) in [
            ("--api-token (REDIS_SYNC_API_TOKEN)", &self.api_token),
            (
                "--ingest-token (REDIS_SYNC_INGEST_TOKEN)",
                &self.ingest_token,
            ),
        ] {
            if let Some(t) = token
                && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(ConfigError::new(
                    setting,
                    "must be at least 16 characters without spaces or control characters",
                ));
            }
        }
        let ca = self
            .ingest_ca
            .as_deref()
            .map(|p| redis_sync_service::read_pem("--ingest-ca (REDIS_SYNC_INGEST_CA)", p))
            .transpose()?;
        let identity = match (&self.ingest_client_cert, &self.ingest_client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((
                redis_sync_service::read_pem(
                    "--ingest-client-cert (REDIS_SYNC_INGEST_CLIENT_CERT)",
                    c,
                )?,
                redis_sync_service::read_pem(
                    "--ingest-client-key (REDIS_SYNC_INGEST_CLIENT_KEY)",
                    k,
                )?,
            )),
            _ => {
                return Err(ConfigError::new(
                    "--ingest-client-cert (REDIS_SYNC_INGEST_CLIENT_CERT)",
                    "the client certificate and --ingest-client-key go together",
                ));
            }
        };
        let ingest_tls = (ca.is_some() || identity.is_some()).then_some(IngestTls { ca, identity });
        Ok(ApplyConfig {
            common,
            store_path: self.store_path.clone(),
            ingest_endpoint: self.ingest_endpoint.clone(),
            api_token: self.api_token.clone(),
            ingest_token: self.ingest_token.clone(),
            ingest_tls,
        })
    }
}
