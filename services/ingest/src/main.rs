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
    let (listener, shutdown) =
        redis_sync_service::listen("redis-sync-ingest", &config.common, &metrics).await?;
    let ingest = Ingest::new(config, metrics);
    ingest
        .serve(listener, shutdown)
        .await
        .context("gRPC server")?;
    tracing::info!("redis-sync-ingest stopped");
    Ok(())
}
