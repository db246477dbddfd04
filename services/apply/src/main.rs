//! `redis-sync-apply`: runs next to the destination Redis. See the crate docs.

use anyhow::Context;
use clap::Parser;
use redis_sync_apply::{Apply, config::ApplyArgs};

/// mimalloc instead of glibc's malloc: the services allocate and free small buffers for
/// every replicated command, which glibc's allocator makes a large share of their CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ApplyArgs::parse();
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis-sync-apply: {e}");
            std::process::exit(2);
        }
    };
    let metrics = redis_sync_telemetry::Metrics::new();
    let _telemetry =
        redis_sync_telemetry::init("redis-sync-apply", config.common.log_format, &metrics)
            .context("setting up telemetry")?;
    let (listener, shutdown) =
        redis_sync_service::listen("redis-sync-apply", &config.common, &metrics).await?;
    let apply = Apply::open(config, metrics).context("opening the task store")?;
    apply
        .serve(listener, shutdown)
        .await
        .context("gRPC server")?;
    tracing::info!("redis-sync-apply stopped");
    Ok(())
}
