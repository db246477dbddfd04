//! TLS towards the source (`RedisEndpoint.tls`): rustls with the ring provider.
//!
//! A [`Connector`] is built once per subscription or probe from the endpoint's settings
//! (reading the PEM files then, so a wrong path fails the request at once instead of every
//! connection attempt) and opens every connection to that source: replica links, probes,
//! heartbeats and cluster discovery. Without TLS it opens plain TCP.
//!
//! Server name: `server_name` when set, otherwise the host of the address being
//! connected to (an IP address is checked against the certificate's IP SANs). In a
//! cluster that is each node's own address as `CLUSTER NODES` gives it.

use std::{
    fmt,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use redis_sync_proto::v1::RedisTls;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Why the TLS settings cannot be used. Waiting does not fix these: the request is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("source.tls.{field} {path:?}: {message}")]
    File {
        /// Which setting.
        field: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The settings do not fit together.
    #[error("source.tls: {0}")]
    Invalid(String),
}

/// Opens connections to one source, over TLS or plain TCP.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<Arc<TlsSettings>>,
}

struct TlsSettings {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// For logs and error messages.
    describe: String,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            None => f.write_str("Connector(plain)"),
            Some(t) => write!(f, "Connector(tls: {})", t.describe),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(
    field: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file_err = |message: String| TlsConfigError::File {
        field,
        path: path.to_owned(),
        message,
    };
    let bytes = redis_sync_service::read_pem_file(path).map_err(file_err)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

impl Connector {
    /// A connector for plain TCP.
    pub fn plain() -> Self {
        Connector { tls: None }
    }

    #[cfg(test)]
    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The connector for an endpoint's TLS settings (`None` or `enabled: false`: plain).
    pub fn from_settings(tls: Option<&RedisTls>) -> Result<Self, TlsConfigError> {
        let Some(tls) = tls.filter(|t| t.enabled) else {
            return Ok(Connector::plain());
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Invalid(e.to_string()))?;
        let mut describe = Vec::new();
        let builder = if tls.insecure_skip_verify {
            describe.push("certificate not verified".to_owned());
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
        } else {
            let mut roots = RootCertStore::empty();
            if tls.ca_file.is_empty() {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    // A system bundle may hold a certificate rustls cannot parse; the
                    // others still count.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsConfigError::Invalid(format!(
                        "ca_file is empty and no system CA certificates were found ({})",
                        native
                            .errors
                            .first()
                            .map_or_else(|| "none installed".to_owned(), ToString::to_string)
                    )));
                }
                describe.push("system CAs".to_owned());
            } else {
                for cert in read_certs("ca_file", &tls.ca_file)? {
                    roots.add(cert).map_err(|e| TlsConfigError::File {
                        field: "ca_file",
                        path: tls.ca_file.clone(),
                        message: e.to_string(),
                    })?;
                }
                describe.push(format!("CA {}", tls.ca_file));
            }
            builder.with_root_certificates(roots)
        };
        let config = match (tls.cert_file.is_empty(), tls.key_file.is_empty()) {
            (true, true) => builder.with_no_client_auth(),
            (false, false) => {
                let certs = read_certs("cert_file", &tls.cert_file)?;
                let key_err = |message: String| TlsConfigError::File {
                    field: "key_file",
                    path: tls.key_file.clone(),
                    message,
                };
                let pem = redis_sync_service::read_pem_file(&tls.key_file).map_err(key_err)?;
                let key =
                    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_err(e.to_string()))?;
                describe.push(format!("client certificate {}", tls.cert_file));
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| TlsConfigError::Invalid(format!("cert_file/key_file: {e}")))?
            }
            _ => {
                return Err(TlsConfigError::Invalid(
                    "cert_file and key_file go together: set both or neither".into(),
                ));
            }
        };
        let server_name = if tls.server_name.is_empty() {
            None
        } else {
            describe.push(format!("server name {}", tls.server_name));
            Some(server_name(&tls.server_name).ok_or_else(|| {
                TlsConfigError::Invalid(format!(
                    "server_name {:?} is neither a DNS name nor an IP address",
                    tls.server_name
                ))
            })?)
        };
        Ok(Connector {
            tls: Some(Arc::new(TlsSettings {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
                describe: describe.join(", "),
            })),
        })
    }

    /// Wraps a connected socket to `addr` in TLS when configured.
    pub(crate) async fn wrap(&self, addr: &str, tcp: TcpStream) -> Result<NodeStream, TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(NodeStream::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => {
                let host = host_of(addr);
                server_name(host).ok_or_else(|| TlsError {
                    message: format!(
                        "the host {host:?} of the address is not a valid TLS server name; set source.tls.server_name"
                    ),
                    permanent: true,
                })?
            }
        };
        match tls.connector.connect(name, tcp).await {
            Ok(s) => Ok(NodeStream::Tls(Box::new(s))),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// A failed TLS handshake.
#[derive(Debug)]
pub(crate) struct TlsError {
    pub message: String,
    /// Retrying will not help: the certificate or the peer's protocol is wrong.
    pub permanent: bool,
}

fn classify(e: &std::io::Error) -> TlsError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => TlsError {
            message: format!(
                "TLS handshake failed: the server's certificate was rejected ({cert:?}); \
                 check source.tls.ca_file and source.tls.server_name"
            ),
            permanent: true,
        },
        Some(
            err @ (rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }),
        ) => TlsError {
            message: format!(
                "TLS handshake failed: {err} (is this a TLS port? Redis serves TLS on its tls-port)"
            ),
            permanent: true,
        },
        Some(err @ rustls::Error::AlertReceived(_)) => TlsError {
            message: format!(
                "TLS handshake failed: the server refused it: {err} (a client certificate may be required: source.tls.cert_file/key_file)"
            ),
            permanent: true,
        },
        Some(err) => TlsError {
            message: format!("TLS handshake failed: {err}"),
            permanent: true,
        },
        None => TlsError {
            message: format!("TLS handshake failed: {e}"),
            permanent: false,
        },
    }
}

/// The host of "host:port" or "[v6]:port".
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).ok()
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake signatures are
/// still checked (so the peer at least holds the key of the certificate it shows).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection to a node: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum NodeStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.is_write_vectored(),
            NodeStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_names() {
        assert_eq!(host_of("127.0.0.1:6379"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6379"), "::1");
        assert_eq!(host_of("redis.example:6379"), "redis.example");
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("redis.example"),
            Some(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name!").is_none());
    }

    #[test]
    fn settings_are_checked_up_front() {
        let plain = Connector::from_settings(None).unwrap();
        assert!(!plain.is_tls());
        let off = RedisTls {
            enabled: false,
            ca_file: "/nonexistent".into(),
            ..Default::default()
        };
        assert!(!Connector::from_settings(Some(&off)).unwrap().is_tls());
        let missing = RedisTls {
            enabled: true,
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let e = Connector::from_settings(Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("ca_file"), "{e}");
        let half = RedisTls {
            enabled: true,
            insecure_skip_verify: true,
            cert_file: "/x.pem".into(),
            ..Default::default()
        };
        let e = Connector::from_settings(Some(&half)).unwrap_err();
        assert!(e.to_string().contains("set both"), "{e}");
        let insecure = RedisTls {
            enabled: true,
            insecure_skip_verify: true,
            ..Default::default()
        };
        assert!(Connector::from_settings(Some(&insecure)).unwrap().is_tls());
    }
}
