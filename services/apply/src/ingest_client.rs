//! The gRPC client apply uses to reach ingest, with TLS and the optional token.

use redis_sync_proto::v1::ingest_service_client::IngestServiceClient;
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::config::ApplyConfig;

/// Adds `authorization: Bearer <token>` when a token is configured.
#[derive(Clone, Debug)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// An IngestService client.
pub type IngestClient = IngestServiceClient<InterceptedService<Channel, BearerToken>>;

/// Why ingest cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum IngestConnectError {
    /// The endpoint string is not a valid URI or TLS setup failed.
    #[error("ingest endpoint {endpoint}: {message}")]
    Config {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
}

/// A lazily connecting client for `endpoint` (it connects on first use and reconnects
/// after failures, so a restarting ingest is not an error here).
pub fn ingest_client(
    endpoint: &str,
    config: &ApplyConfig,
) -> Result<IngestClient, IngestConnectError> {
    let err = |message: String| IngestConnectError::Config {
        endpoint: endpoint.to_owned(),
        message,
    };
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(t) = &config.ingest_tls {
            if let Some(ca) = &t.ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &t.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
        }
        ep = ep.tls_config(tls).map_err(|e| err(e.to_string()))?;
    }
    let token = match &config.ingest_token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| err("the ingest token is not valid header text".to_owned()))?,
        ),
        None => None,
    };
    Ok(
        IngestServiceClient::with_interceptor(ep.connect_lazy(), BearerToken(token))
            .max_decoding_message_size(256 * 1024 * 1024),
    )
}
