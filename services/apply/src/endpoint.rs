//! Connections to the Redis deployments a task names (source for verification and
//! precheck, destination for writes), built from the task's `RedisEndpoint`.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use redis_sync_proto::v1::{InstanceMode, RedisEndpoint};

/// Why an endpoint cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The address is not "host:port".
    #[error("address {0:?} is not host:port")]
    BadAddress(String),
    /// TLS towards Redis is not available in this build.
    #[error("TLS to Redis is not supported by this build yet")]
    TlsUnsupported,
    /// The connection failed.
    #[error("{address}: {source}")]
    Redis {
        /// Address tried.
        address: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

/// Splits "host:port", accepting "[v6]:port".
pub fn host_port(address: &str) -> Result<(String, u16), EndpointError> {
    let bad = || EndpointError::BadAddress(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok((host.to_owned(), port))
}

/// Connection parameters for one node of `endpoint` at `address` (db 0).
pub fn connection_info(endpoint: &RedisEndpoint, address: &str) -> Result<ConnectionInfo, EndpointError> {
    if endpoint.tls.as_ref().is_some_and(|t| t.enabled) {
        return Err(EndpointError::TlsUnsupported);
    }
    let (host, port) = host_port(address)?;
    let mut redis = RedisConnectionInfo::default();
    if !endpoint.password.is_empty() {
        redis = redis.set_password(endpoint.password.clone());
    }
    if !endpoint.username.is_empty() {
        redis = redis.set_username(endpoint.username.clone());
    }
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|source| EndpointError::Redis { address: address.to_owned(), source })?
        .set_redis_settings(redis);
    Ok(info)
}

/// True when the endpoint is a cluster.
pub fn is_cluster(endpoint: &RedisEndpoint) -> bool {
    endpoint.mode == InstanceMode::Cluster as i32
}

/// A multiplexed connection to one node.
pub async fn connect_node(
    endpoint: &RedisEndpoint,
    address: &str,
) -> Result<redis::aio::MultiplexedConnection, EndpointError> {
    let info = connection_info(endpoint, address)?;
    let client = redis::Client::open(info)
        .map_err(|source| EndpointError::Redis { address: address.to_owned(), source })?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|source| EndpointError::Redis { address: address.to_owned(), source })
}
