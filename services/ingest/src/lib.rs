//! The ingest service: it runs next to the source Redis and looks to it like a replica.
//!
//! For each source master it keeps a replica link (PSYNC), spools what arrives to local
//! disk so the source is drained at wire speed whatever happens downstream, decodes the
//! snapshot and the command stream into typed `ChangeEvent`s and serves them over gRPC
//! (`redis_sync.v1.IngestService`). It does not own tasks or touch the destination: that
//! is apply's job.
//!
//! How the parts fit, following a byte from the source:
//! * `link`: the replica link (handshake, PSYNC, snapshot transfer, ACKs, reconnects);
//! * `spool`: segment files on disk, written by the link before anything else sees them;
//! * `reader`: follows a spool from a position, runs the `decode` modules (RDB snapshot,
//!   RESP stream) and sends batches on the subscriber's bounded stream;
//! * `subscription`: subscribers, shard discovery, which position reads from where, and
//!   when a link must resume, restart or copy in full; `heartbeat` and `probe` talk to the
//!   source as an ordinary client;
//! * `tls`: every connection to the source, plain or TLS (`RedisEndpoint.tls`);
//! * `topology`: where each shard of a cluster lives now, and how a link finds its shard
//!   again after a failover (same shard id, same history, `+CONTINUE`);
//! * `resharding`: keys moved between cluster masters — why the old owner's `DEL` is not
//!   forwarded, and the window that remains;
//! * `decode::scripts`: Lua script bodies, also kept on disk per subscriber for `EVALSHA`.

mod cluster;
pub mod config;
mod conn;
mod decode;
mod heartbeat;
mod link;
mod metrics;
mod probe;
mod reader;
mod resharding;
mod service;
pub mod spool;
mod stop;
mod subscription;
mod tls;
mod topology;

use std::{future::Future, sync::Arc};

use redis_sync_proto::v1::ingest_service_server::IngestServiceServer;
use redis_sync_telemetry::Metrics;
use tokio::net::TcpListener;

pub use crate::service::IngestApi;
use crate::{config::IngestConfig, subscription::Registry};

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

    /// Serves gRPC on `listener` until `shutdown` completes, then stops every replica link
    /// (the spools stay on disk for the next start). Dropping the returned future stops
    /// the links too.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let registry = Registry::new(self.config.clone(), self.metrics.clone());
        let guard = HaltOnDrop(registry.clone());
        let sweeper = registry.spawn_idle_sweeper();
        let (health, health_service) = tonic_health::server::health_reporter();
        let api = IngestApi::with_registry(registry.clone());
        health.set_serving::<IngestServiceServer<IngestApi>>().await;
        let (reflection_v1, reflection_v1alpha) =
            redis_sync_service::reflection("redis_sync.v1.IngestService");
        let router = redis_sync_service::server_builder(self.config.common.tls.clone())?
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                IngestServiceServer::new(api),
                redis_sync_service::require_token(self.config.auth_token.clone())
                    .described_as("ingest token"),
            ));
        let halting = registry.clone();
        let result = redis_sync_service::serve(router, listener, async move {
            shutdown.await;
            // Subscription streams never end on their own; end them so the server's
            // graceful shutdown can finish.
            halting.halt();
        })
        .await;
        registry.halt();
        registry.wait_stopped().await;
        let _ = sweeper.await;
        drop(guard);
        result
    }
}

/// Halts every task of the registry when `serve` ends in any way, including being dropped.
struct HaltOnDrop(Arc<Registry>);

impl Drop for HaltOnDrop {
    fn drop(&mut self) {
        self.0.halt();
    }
}
