//! The ingest service: it runs next to the source Redis and looks to it like a replica.
//!
//! For each source master it keeps a replica link (PSYNC), spools what arrives to local
//! disk so the source is drained at wire speed whatever happens downstream, decodes the
//! snapshot and the command stream into typed `ChangeEvent`s and serves them over gRPC
//! (`redis_sync.v1.IngestService`). It does not own tasks or touch the destination: that
//! is apply's job.

mod cluster;
pub mod config;
mod conn;
mod decode;
mod link;
mod metrics;
mod service;
pub mod spool;

use std::future::Future;

use redis_sync_proto::v1::ingest_service_server::IngestServiceServer;
use redis_sync_telemetry::Metrics;
use tokio::net::TcpListener;

pub use crate::service::IngestApi;
use crate::config::IngestConfig;

/// A configured ingest service, ready to serve.
#[derive(Debug)]
pub struct Ingest {
    config: IngestConfig,
    metrics: Metrics,
}

impl Ingest {
    /// A service with `config`, registering its metrics in `metrics`.
    pub fn new(config: IngestConfig, metrics: Metrics) -> Self {
        Self { config, metrics }
    }

    /// Serves gRPC on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let api = IngestApi::new(self.config.clone(), self.metrics.clone());
        health.set_serving::<IngestServiceServer<IngestApi>>().await;
        let (reflection_v1, reflection_v1alpha) = redis_sync_service::reflection("redis_sync.v1.IngestService");
        let router = redis_sync_service::server_builder(self.config.common.tls.clone())?
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(IngestServiceServer::new(api));
        redis_sync_service::serve(router, listener, shutdown).await
    }
}
