//! `redis_sync.v1.IngestService`: the gRPC face of ingest.

use std::pin::Pin;

use redis_sync_proto::v1::{
    AcknowledgeRequest, AcknowledgeResponse, ProbeSourceRequest, ProbeSourceResponse,
    SubscribeRequest, SubscribeResponse, ingest_service_server::IngestService,
};
use redis_sync_telemetry::Metrics;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::IngestConfig;

/// The IngestService implementation.
#[derive(Debug, Clone)]
pub struct IngestApi {
    #[allow(dead_code)]
    config: IngestConfig,
    #[allow(dead_code)]
    metrics: Metrics,
}

impl IngestApi {
    /// A service with `config`.
    pub fn new(config: IngestConfig, metrics: Metrics) -> Self {
        Self { config, metrics }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn probe_source(
        &self,
        _request: Request<ProbeSourceRequest>,
    ) -> Result<Response<ProbeSourceResponse>, Status> {
        Err(Status::unimplemented("ProbeSource is not built yet"))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("Subscribe is not built yet"))
    }

    async fn acknowledge(
        &self,
        _request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        Err(Status::unimplemented("Acknowledge is not built yet"))
    }
}
