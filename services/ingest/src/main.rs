//! `redis-sync-ingest`: runs next to the source Redis. See the crate docs.

use anyhow::Context;
use clap::Parser;
use redis_sync_ingest::{Ingest, config::IngestArgs};

/// mimalloc instead of glibc's malloc: the services allocate and free small buffers for
/// every replicated command, which glibc's allocator makes a large share of their CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = IngestArgs::parse();
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis-sync-ingest: {e}");
            std::process::exit(2);
        }
    };
    let metrics = redis_sync_telemetry::Metrics::new();
    let _telemetry =
        redis_sync_telemetry::init("redis-sync-ingest", config.common.log_format, &metrics)
            .context("setting up telemetry")?;
    let listener = tokio::net::TcpListener::bind(config.common.listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", config.common.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr =
        redis_sync_service::spawn_metrics(config.common.metrics_listen, metrics.clone(), {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        })
        .await
        .context("binding the metrics listener")?;
    tracing::info!(grpc = %listener.local_addr()?, metrics = ?metrics_addr, "redis-sync-ingest listening");
    let ingest = Ingest::new(config, metrics);
    let result = ingest
        .serve(listener, async move {
            redis_sync_service::shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await;
    drop(stop_rx);
    result.context("gRPC server")?;
    tracing::info!("redis-sync-ingest stopped");
    Ok(())
}
