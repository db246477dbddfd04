//! Connections to the Redis deployments a task names (source for verification and
//! precheck, destination for writes), built from the task's `RedisEndpoint`: address,
//! credentials and TLS (`RedisEndpoint.tls`: CA bundle, client certificate for servers
//! with `tls-auth-clients yes`, a server name other than the address's host, and the
//! test-only `insecure_skip_verify`).
//!
//! TLS material is read from the files the task names every time a connection is built,
//! so a rotated certificate is picked up by the next connection without a restart.

use std::net::{IpAddr, SocketAddr};

use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates, Value,
};
use redis_sync_proto::v1::{InstanceMode, RedisEndpoint, RedisTls};

/// Why an endpoint cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The address is not "host:port".
    #[error("address {0:?} is not host:port")]
    BadAddress(String),
    /// A file named in `RedisEndpoint.tls` cannot be used.
    #[error("tls.{field} {path:?}: {message}")]
    TlsFile {
        /// The field of `RedisTls` ("ca_file", "cert_file", "key_file").
        field: &'static str,
        /// The path it names.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// `tls.server_name` differs from the address's host, and the caller built the
    /// connection from [`connection_info`] alone, which cannot carry the name (use
    /// [`connect_with`]).
    #[error(
        "tls.server_name {0:?} differs from the address's host, which this connection path does not support yet"
    )]
    ServerNameUnsupported(String),
    /// The connection failed (TLS handshake failures included: their message names the
    /// certificate problem, e.g. "invalid peer certificate: UnknownIssuer").
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

/// The endpoint's TLS settings when TLS is enabled.
fn tls_of(endpoint: &RedisEndpoint) -> Option<&RedisTls> {
    endpoint.tls.as_ref().filter(|t| t.enabled)
}

/// True when connections to `endpoint` use TLS.
pub fn uses_tls(endpoint: &RedisEndpoint) -> bool {
    tls_of(endpoint).is_some()
}

/// The name the server certificate is checked against when it is not `host`.
fn server_name_override<'a>(tls: &'a RedisTls, host: &str) -> Option<&'a str> {
    let name = tls.server_name.trim();
    (!name.is_empty() && !name.eq_ignore_ascii_case(host)).then_some(name)
}

/// Reads a PEM file named by the `field` of `RedisTls`.
fn read_pem(field: &'static str, path: &str) -> Result<Vec<u8>, EndpointError> {
    let err = |message: String| EndpointError::TlsFile {
        field,
        path: path.to_owned(),
        message,
    };
    let bytes = redis_sync_service::read_pem_file(path).map_err(err)?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(err("is not PEM".to_owned()));
    }
    Ok(bytes)
}

/// The certificates of `tls`: the CA bundle (system roots when empty) and the client
/// certificate with its key, when set.
fn tls_certificates(tls: &RedisTls) -> Result<TlsCertificates, EndpointError> {
    let root_cert = (!tls.ca_file.is_empty())
        .then(|| read_pem("ca_file", &tls.ca_file))
        .transpose()?;
    let client_tls = match (tls.cert_file.is_empty(), tls.key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some(ClientTlsConfig {
            client_cert: read_pem("cert_file", &tls.cert_file)?,
            client_key: read_pem("key_file", &tls.key_file)?,
        }),
        (false, true) => {
            return Err(EndpointError::TlsFile {
                field: "key_file",
                path: String::new(),
                message: "is empty but cert_file is set (they go together)".to_owned(),
            });
        }
        (true, false) => {
            return Err(EndpointError::TlsFile {
                field: "cert_file",
                path: String::new(),
                message: "is empty but key_file is set (they go together)".to_owned(),
            });
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Connection parameters for one node of `endpoint` at `address` (db 0); the TLS host
/// is `tls_host` when given (the certificate is checked against it).
fn build_info(
    endpoint: &RedisEndpoint,
    address: &str,
    tls_host: Option<&str>,
) -> Result<ConnectionInfo, EndpointError> {
    let (host, port) = host_port(address)?;
    let redis_err = |source| EndpointError::Redis {
        address: address.to_owned(),
        source,
    };
    let mut redis = RedisConnectionInfo::default();
    if !endpoint.password.is_empty() {
        redis = redis.set_password(endpoint.password.clone());
    }
    if !endpoint.username.is_empty() {
        redis = redis.set_username(endpoint.username.clone());
    }
    let Some(tls) = tls_of(endpoint) else {
        return Ok(ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(redis_err)?
            .set_redis_settings(redis));
    };
    let certificates = tls_certificates(tls)?;
    let info = ConnectionAddr::TcpTls {
        host: tls_host.map_or(host, str::to_owned),
        port,
        insecure: tls.insecure_skip_verify,
        tls_params: None,
    }
    .into_connection_info()
    .map_err(redis_err)?
    .set_redis_settings(redis);
    // The parsed certificates travel inside the ConnectionInfo, so a plain
    // `Client::open(info)` connects with them.
    let client = redis::Client::build_with_tls(info, certificates).map_err(redis_err)?;
    Ok(client.get_connection_info().clone())
}

/// Connection parameters for one node of `endpoint` at `address` (db 0), TLS included.
///
/// A `tls.server_name` other than the address's host needs the resolver that
/// [`connect_with`] installs; here it is refused with
/// [`EndpointError::ServerNameUnsupported`].
pub fn connection_info(
    endpoint: &RedisEndpoint,
    address: &str,
) -> Result<ConnectionInfo, EndpointError> {
    if let Some(tls) = tls_of(endpoint) {
        let (host, _) = host_port(address)?;
        if let Some(name) = server_name_override(tls, &host) {
            return Err(EndpointError::ServerNameUnsupported(name.to_owned()));
        }
    }
    build_info(endpoint, address, None)
}

/// True when the endpoint is a cluster.
pub fn is_cluster(endpoint: &RedisEndpoint) -> bool {
    endpoint.mode == InstanceMode::Cluster as i32
}

/// Resolves the TLS server name to the address's real host, so the handshake checks
/// the certificate against `tls.server_name` while the TCP connection goes to the
/// address the task names.
struct PinnedName {
    name: String,
    host: String,
}

impl redis::io::AsyncDNSResolver for PinnedName {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let target = if host == self.name {
                self.host.as_str()
            } else {
                host
            };
            if let Ok(ip) = target.parse::<IpAddr>() {
                let one: Box<dyn Iterator<Item = SocketAddr> + Send> =
                    Box::new(std::iter::once(SocketAddr::new(ip, port)));
                return Ok(one);
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target, port)).await?.collect();
            let all: Box<dyn Iterator<Item = SocketAddr> + Send> = Box::new(addrs.into_iter());
            Ok(all)
        })
    }
}

/// A multiplexed connection to one node of `endpoint` at `address` with `config`
/// (timeouts and the like), TLS included, `tls.server_name` too.
pub async fn connect_with(
    endpoint: &RedisEndpoint,
    address: &str,
    config: redis::AsyncConnectionConfig,
) -> Result<redis::aio::MultiplexedConnection, EndpointError> {
    let redis_err = |source| EndpointError::Redis {
        address: address.to_owned(),
        source,
    };
    let (host, _) = host_port(address)?;
    let name = tls_of(endpoint)
        .and_then(|tls| server_name_override(tls, &host))
        .map(str::to_owned);
    let info = build_info(endpoint, address, name.as_deref())?;
    let config = match name {
        Some(name) => config.set_dns_resolver(PinnedName { name, host }),
        None => config,
    };
    let client = redis::Client::open(info).map_err(redis_err)?;
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(redis_err)
}

/// A multiplexed connection to one node (5 s to connect, 30 s per reply).
pub async fn connect_node(
    endpoint: &RedisEndpoint,
    address: &str,
) -> Result<redis::aio::MultiplexedConnection, EndpointError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    connect_with(endpoint, address, config).await
}

/// A reply as text, whichever way the server sent it (bulk, simple, verbatim or `+OK`).
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_endpoint(tls: RedisTls) -> RedisEndpoint {
        RedisEndpoint {
            mode: InstanceMode::Standalone as i32,
            address: "127.0.0.1:6380".into(),
            password: "hunter2-password".into(),
            tls: Some(RedisTls {
                enabled: true,
                ..tls
            }),
            ..Default::default()
        }
    }

    #[test]
    fn plain_and_tls_addresses() {
        let plain = RedisEndpoint {
            address: "127.0.0.1:6379".into(),
            tls: Some(RedisTls::default()),
            ..Default::default()
        };
        let info = connection_info(&plain, &plain.address).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(h, 6379) if h == "127.0.0.1"));

        let ep = tls_endpoint(RedisTls::default());
        let info = connection_info(&ep, &ep.address).unwrap();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { host, port: 6380, insecure: false, tls_params: Some(_) } if host == "127.0.0.1"
        ));
        assert!(!format!("{info:?}").contains("hunter2"));

        let ep = tls_endpoint(RedisTls {
            insecure_skip_verify: true,
            ..Default::default()
        });
        let info = connection_info(&ep, &ep.address).unwrap();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
    }

    #[test]
    fn bad_tls_files_name_the_field() {
        let ep = tls_endpoint(RedisTls {
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        });
        let e = connection_info(&ep, &ep.address).unwrap_err().to_string();
        assert!(
            e.contains("tls.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );

        let not_pem = std::env::temp_dir().join(format!("endpoint-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let ep = tls_endpoint(RedisTls {
            ca_file: not_pem.display().to_string(),
            ..Default::default()
        });
        let e = connection_info(&ep, &ep.address).unwrap_err().to_string();
        assert!(e.contains("is not PEM"), "{e}");
        let _ = std::fs::remove_file(&not_pem);

        let ep = tls_endpoint(RedisTls {
            cert_file: "/x/cert.pem".into(),
            ..Default::default()
        });
        let e = connection_info(&ep, &ep.address).unwrap_err().to_string();
        assert!(e.contains("key_file"), "{e}");
    }

    #[test]
    fn server_name_override_needs_connect_with() {
        let ep = tls_endpoint(RedisTls {
            server_name: "redis.internal".into(),
            ..Default::default()
        });
        assert!(matches!(
            connection_info(&ep, &ep.address),
            Err(EndpointError::ServerNameUnsupported(n)) if n == "redis.internal"
        ));
        // The same name as the host is no override.
        let ep = tls_endpoint(RedisTls {
            server_name: "127.0.0.1".into(),
            ..Default::default()
        });
        assert!(connection_info(&ep, &ep.address).is_ok());
        let info = build_info(&ep, &ep.address, Some("redis.internal")).unwrap();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { host, .. } if host == "redis.internal"
        ));
    }
}
