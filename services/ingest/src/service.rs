//! `redis_sync.v1.IngestService`: the gRPC face of ingest.

use std::{pin::Pin, sync::Arc};

use redis_sync_proto::v1::{
    AcknowledgeRequest, AcknowledgeResponse, ProbeSourceRequest, ProbeSourceResponse,
    SubscribeRequest, SubscribeResponse, ingest_service_server::IngestService,
};
use redis_sync_telemetry::Metrics;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    config::IngestConfig,
    probe,
    subscription::{self, Registry},
    tls::Connector,
};

/// The IngestService implementation.
#[derive(Debug, Clone)]
pub struct IngestApi {
    registry: Arc<Registry>,
}

impl IngestApi {
    /// A service with `config`, with its own registry of subscribers.
    pub fn new(config: IngestConfig, metrics: Metrics) -> Self {
        Self {
            registry: Registry::new(config, metrics),
        }
    }

    pub(crate) fn with_registry(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn probe_source(
        &self,
        request: Request<ProbeSourceRequest>,
    ) -> Result<Response<ProbeSourceResponse>, Status> {
        let source = request
            .into_inner()
            .source
            .ok_or_else(|| Status::invalid_argument("source is required"))?;
        subscription::validate_address("source.address", &source.address)?;
        subscription::check_tls_files(source.tls.as_ref())?;
        let connector = Connector::from_settings(source.tls.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(probe::probe(&source, &connector).await))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self.registry.subscribe(request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        self.registry.acknowledge(request.into_inner()).await?;
        Ok(Response::new(AcknowledgeResponse {}))
    }
}
