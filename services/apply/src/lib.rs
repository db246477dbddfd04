//! The apply service: it runs next to the destination Redis and owns the tasks.
//!
//! Operators create and drive tasks through `redis_sync.v1.TaskService`. For a running
//! task apply prechecks both ends, opens the change-event stream from ingest, writes the
//! events to the destination in source order with the checkpoint in the same atomic
//! unit, and reports state and lag. It never talks to the source's replication
//! protocol: that is ingest's job.

// Control plane: tasks, their store and state machine, precheck, the gRPC API.
pub mod auth;
pub mod config;
pub mod manager;
pub mod precheck;
mod service;
pub mod store;
pub mod task;

// Data path: runner, writer, checkpoint, routing, verification; connections.
pub mod checkpoint;
pub mod dbmap;
pub mod endpoint;
pub mod ingest_client;
pub mod restore;
pub mod router;
pub mod runner;
pub mod verify;
pub mod writer;

use std::{future::Future, sync::Arc};

use redis_sync_proto::v1::task_service_server::TaskServiceServer;
use redis_sync_telemetry::Metrics;
use tokio::net::TcpListener;

use crate::config::ApplyConfig;
pub use crate::manager::{DefaultSpawner, RunnerHandle, RunnerSpawner, TaskManager};
pub use crate::service::TaskApi;

/// Errors opening the service.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The task store could not be opened.
    #[error("task store {path}: {message}")]
    Store {
        /// Its path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// A configured apply service, ready to serve.
#[derive(Debug)]
pub struct Apply {
    config: ApplyConfig,
    manager: TaskManager,
}

impl Apply {
    /// Opens the task store and prepares the service.
    pub fn open(config: ApplyConfig, metrics: Metrics) -> Result<Self, OpenError> {
        Self::open_with_spawner(config, metrics, Arc::new(DefaultSpawner))
    }

    /// Like [`Apply::open`], with runners started by `spawner` instead of the real data
    /// path (tests of the control plane script their runners with it).
    pub fn open_with_spawner(
        config: ApplyConfig,
        metrics: Metrics,
        spawner: Arc<dyn RunnerSpawner>,
    ) -> Result<Self, OpenError> {
        let store = store::Store::open(&config.store_path).map_err(|e| OpenError::Store {
            path: config.store_path.display().to_string(),
            message: match e {
                // The path is already in the outer message.
                store::StoreError::Io { source, .. } => source.to_string(),
                store::StoreError::Db { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        let manager = TaskManager::new(store, config.clone(), metrics, spawner);
        Ok(Self { config, manager })
    }

    /// The task manager (for embedding apply without gRPC).
    pub fn manager(&self) -> &TaskManager {
        &self.manager
    }

    /// Serves gRPC on `listener` until `shutdown` completes. Tasks that were running
    /// when apply last stopped continue first; on shutdown every runner is stopped
    /// gracefully (their tasks stay running in the store and continue on the next start).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let Self { config, manager } = self;
        manager.recover();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TaskServiceServer<TaskApi>>().await;
        let (reflection_v1, reflection_v1alpha) =
            redis_sync_service::reflection("redis_sync.v1.TaskService");
        let tasks = TaskServiceServer::with_interceptor(
            TaskApi::new(manager.clone()),
            auth::api_token(config.api_token.as_deref()),
        );
        let router = match redis_sync_service::server_builder(config.common.tls.clone()) {
            Ok(b) => b,
            Err(e) => {
                manager.shutdown().await;
                return Err(e);
            }
        }
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tasks);
        let stopping = manager.clone();
        let result = redis_sync_service::serve(router, listener, async move {
            shutdown.await;
            // End WatchTask streams so the graceful drain does not wait for them.
            stopping.begin_shutdown();
        })
        .await;
        manager.shutdown().await;
        result
    }
}
