//! The edges both redis-sync services share: the flags every binary takes, serving gRPC
//! with health checks, reflection and TLS, and shutting down on SIGTERM or SIGINT.
//!
//! Nothing here knows about Redis or tasks; it is the plumbing that lets a service be
//! written as "a function of a listener and a shutdown future", so tests run services
//! in-process on `127.0.0.1:0`.

pub mod auth;

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

pub use auth::{RequireToken, require_token, validate_token};

use redis_sync_telemetry::LogFormat;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Flags and environment variables that both services take.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "REDIS_SYNC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the HTTP server for Prometheus `/metrics` and `/healthz`; "off" disables it.
    #[arg(long, env = "REDIS_SYNC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log format on stderr: "pretty" or "json". Filter with RUST_LOG.
    #[arg(long, env = "REDIS_SYNC_LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
    /// PEM certificate chain for serving gRPC over TLS (needs --tls-key).
    #[arg(long, env = "REDIS_SYNC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "REDIS_SYNC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate signed by it (mutual TLS).
    #[arg(long, env = "REDIS_SYNC_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// A configuration value that cannot work, named by its flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    /// The flag (and its environment variable).
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A new error about `setting`.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// The validated form of [`CommonArgs`].
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics listen address, `None` when disabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// TLS for the gRPC server, when configured.
    pub tls: Option<ServerTlsConfig>,
}

impl CommonArgs {
    /// Validates the flags, reading TLS files now so a bad path fails at start.
    pub fn validate(
        &self,
        default_listen: SocketAddr,
        default_metrics: SocketAddr,
    ) -> Result<CommonConfig, ConfigError> {
        let metrics_listen = match self.metrics_listen.as_deref() {
            None => Some(default_metrics),
            Some("off") => None,
            Some(s) => Some(s.parse().map_err(|e| {
                ConfigError::new(
                    "--metrics-listen (REDIS_SYNC_METRICS_LISTEN)",
                    format!("{s:?} is not host:port or \"off\": {e}"),
                )
            })?),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    return Err(ConfigError::new(
                        "--tls-client-ca (REDIS_SYNC_TLS_CLIENT_CA)",
                        "mutual TLS needs --tls-cert and --tls-key too",
                    ));
                }
                None
            }
            (Some(cert), Some(key)) => {
                let cert = read_pem("--tls-cert (REDIS_SYNC_TLS_CERT)", cert)?;
                let key = read_pem("--tls-key (REDIS_SYNC_TLS_KEY)", key)?;
                let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
                if let Some(ca) = &self.tls_client_ca {
                    let ca = read_pem("--tls-client-ca (REDIS_SYNC_TLS_CLIENT_CA)", ca)?;
                    tls = tls.client_ca_root(Certificate::from_pem(ca));
                }
                Some(tls)
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--tls-key (REDIS_SYNC_TLS_KEY)",
                    "--tls-cert is set but its key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--tls-cert (REDIS_SYNC_TLS_CERT)",
                    "--tls-key is set but the certificate is not",
                ));
            }
        };
        Ok(CommonConfig {
            listen: self.listen.unwrap_or(default_listen),
            metrics_listen,
            log_format: self.log_format,
            tls,
        })
    }
}

/// Reads a PEM file named by `setting`, failing with a message that names the setting.
pub fn read_pem(setting: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(ConfigError::new(
            setting,
            format!("{} is not PEM", path.display()),
        ));
    }
    Ok(bytes)
}

/// Largest PEM file a request may name (Debian's whole CA bundle is about 220 KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 4 << 20;

/// Checks a PEM file that a request names (`RedisTls.ca_file`, `cert_file`, `key_file`)
/// before it is read: it must be a regular file of 1 byte to [`MAX_PEM_FILE_BYTES`].
///
/// These paths come from the network and are read on this host, so without the check a
/// caller could name `/dev/zero` (a read that never ends and exhausts memory), a FIFO
/// (opening it blocks a runtime thread until a writer comes: two such calls froze a
/// service), or a procfs file (sized 0, unbounded). A path that does not exist passes:
/// the read that follows reports it, and a task may name a file that appears later.
pub fn check_pem_file(path: &str) -> Result<(), String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    match meta.len() {
        0 => Err("is empty".to_owned()),
        n if n > MAX_PEM_FILE_BYTES => Err(format!(
            "is {n} bytes, more than a PEM file can sensibly be ({MAX_PEM_FILE_BYTES})"
        )),
        _ => Ok(()),
    }
}

/// Reads a PEM file named by configuration or a request: a regular file of at most
/// `MAX_PEM_FILE_BYTES`, checked before it is opened (a FIFO would block the open) and
/// read through a cap (a file that grows meanwhile cannot exhaust memory).
pub fn read_pem_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err("does not exist".to_owned());
    }
    check_pem_file(path)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(format!(
            "grew past {MAX_PEM_FILE_BYTES} bytes while being read"
        ));
    }
    Ok(bytes)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// gRPC reflection, v1 and v1alpha (older grpcurl speaks only v1alpha), listing `service`
/// (a full name such as "redis_sync.v1.IngestService"), the health service and the two
/// reflection services themselves.
pub fn reflection(
    service: &'static str,
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(redis_sync_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    // Both builders only fail on a malformed descriptor set, which is generated at build
    // time from our own protos and the health crate's: a failure is a build bug.
    let v1 = builder().build_v1().expect("descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("descriptor sets are valid");
    (v1, v1alpha)
}

/// A tonic server builder with the settings both services use.
///
/// Every call runs in a span named after its method ("redis_sync.v1.TaskService/ListTasks"
/// in OTLP, a server span), so spans a handler opens are its children. Health checks and
/// reflection get a debug-level span: probes every few seconds would bury the real calls.
pub fn server_builder(
    tls: Option<ServerTlsConfig>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let mut b = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .trace_fn(|req| {
            let path = req.uri().path();
            let rpc = path.strip_prefix('/').unwrap_or(path);
            let service = rpc.split_once('/').map_or(rpc, |(s, _)| s);
            if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
                tracing::debug_span!(
                    "rpc",
                    otel.name = rpc,
                    otel.kind = "server",
                    rpc.system = "grpc"
                )
            } else {
                tracing::info_span!(
                    "rpc",
                    otel.name = rpc,
                    otel.kind = "server",
                    rpc.system = "grpc"
                )
            }
        });
    if let Some(tls) = tls {
        b = b.tls_config(tls)?;
    }
    Ok(b)
}

/// How long in-flight calls get to finish after shutdown starts. Streams that never end by
/// themselves (a subscriber that stopped reading, a frozen client) must not keep the
/// process alive past what an orchestrator waits before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight calls
/// for at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = fired_tx.send(true);
    };
    let deadline = async move {
        let _ = fired_rx.wait_for(|fired| *fired).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = router.serve_with_incoming_shutdown(incoming, signal) => result,
        () = deadline => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; closing them");
            Ok(())
        }
    }
}

/// A listener a service could not bind at start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The gRPC listener (`--listen`).
    #[error("binding gRPC listener {addr}: {source}")]
    Grpc {
        /// Address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics listener (`--metrics-listen`).
    #[error("binding the metrics listener {addr}: {source}")]
    Metrics {
        /// Address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Brings up what every service binary has around its gRPC server: binds the gRPC
/// listener, serves `/metrics` when configured, and logs where `service` listens. Returns
/// the listener and the shutdown future to run the server until: it completes on SIGTERM
/// or SIGINT and stops the metrics endpoint with it (which also stops when the future is
/// dropped, as when the server ends on an error).
pub async fn listen(
    service: &str,
    common: &CommonConfig,
    metrics: &redis_sync_telemetry::Metrics,
) -> Result<(TcpListener, impl Future<Output = ()> + Send + 'static), ListenError> {
    let grpc_err = |source| ListenError::Grpc {
        addr: common.listen,
        source,
    };
    let listener = TcpListener::bind(common.listen).await.map_err(grpc_err)?;
    let grpc = listener.local_addr().map_err(grpc_err)?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match common.metrics_listen {
        None => None,
        Some(addr) => {
            let metrics_err = |source| ListenError::Metrics { addr, source };
            let metrics_listener = TcpListener::bind(addr).await.map_err(metrics_err)?;
            let bound = metrics_listener.local_addr().map_err(metrics_err)?;
            tokio::spawn(redis_sync_telemetry::serve_metrics(
                metrics_listener,
                metrics.clone(),
                async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                },
            ));
            Some(bound)
        }
    };
    tracing::info!(%grpc, metrics = ?metrics_addr, "{service} listening");
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    Ok((listener, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_named_by_requests_must_be_small_regular_files() {
        assert_eq!(
            check_pem_file("/dev/zero").unwrap_err(),
            "is not a regular file"
        );
        assert!(check_pem_file("/").is_err());
        assert!(check_pem_file("/nonexistent/ca.pem").is_ok());
        let dir = std::env::temp_dir().join(format!("pem-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            check_pem_file(empty.to_str().unwrap()).unwrap_err(),
            "is empty"
        );
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(check_pem_file(pem.to_str().unwrap()).is_ok());
        assert_eq!(
            read_pem_file(pem.to_str().unwrap()).unwrap(),
            b"-----BEGIN CERTIFICATE-----\n"
        );
        assert_eq!(
            read_pem_file("/dev/zero").unwrap_err(),
            "is not a regular file"
        );
        assert_eq!(
            read_pem_file("/nonexistent/ca.pem").unwrap_err(),
            "does not exist"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
