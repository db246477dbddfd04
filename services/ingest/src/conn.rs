//! A minimal Redis connection: send a command, read one reply, with timeouts on both.
//!
//! Ingest talks to sources from Redis 2.8 to 8.x, so this speaks only what all of them
//! understand (RESP2, arrays of bulks) and never sends a command on its own (no `HELLO`,
//! no `CLIENT SETINFO`). The replica link starts as one of these and then takes the socket
//! over for the replication stream ([`RedisConn::into_parts`]).

use std::time::Duration;

use bytes::BytesMut;
use redis_sync_resp::{Decoder, Frame, Limits, RespError, encode_command};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::tls::{Connector, NodeStream};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply to an ordinary command may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why talking to a Redis node failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP connect or I/O failed.
    #[error("{addr}: {source}")]
    Io {
        /// The node.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{addr}: no answer to {what} within {timeout:?}")]
    Timeout {
        /// The node.
        addr: String,
        /// What was waited for.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// The node closed the connection.
    #[error("{addr}: connection closed by the server")]
    Closed {
        /// The node.
        addr: String,
    },
    /// The TLS handshake failed.
    #[error("{addr}: {message}")]
    Tls {
        /// The node.
        addr: String,
        /// What went wrong, with a hint at the setting to check.
        message: String,
        /// Retrying will not help (a rejected certificate, a port that does not speak TLS).
        permanent: bool,
    },
    /// The node sent bytes that are not RESP.
    #[error("{addr}: protocol error: {source}")]
    Protocol {
        /// The node.
        addr: String,
        /// The decoding error.
        #[source]
        source: RespError,
    },
}

impl ConnError {
    /// Whether the node could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ConnError::Io { .. } | ConnError::Closed { .. } | ConnError::Tls { .. }
        ) || matches!(self, ConnError::Timeout { what, .. } if what == "connect")
    }

    /// Whether waiting cannot fix this (a TLS certificate the settings reject).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnError::Tls {
                permanent: true,
                ..
            }
        )
    }
}

/// One connection to a Redis node.
#[derive(Debug)]
pub struct RedisConn {
    addr: String,
    stream: NodeStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Connector {
    /// Connects to `addr` ("host:port"), with TLS when configured; TCP connect and TLS
    /// handshake together take at most [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, addr: &str) -> Result<RedisConn, ConnError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(addr)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout {
                addr: addr.to_owned(),
                what: "connect".into(),
                timeout: CONNECT_TIMEOUT,
            }),
        }
    }

    async fn connect_inner(&self, addr: &str) -> Result<RedisConn, ConnError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ConnError::Timeout {
                    addr: addr.to_owned(),
                    what: "connect".into(),
                    timeout: CONNECT_TIMEOUT,
                });
            }
            Ok(Err(source)) => {
                return Err(ConnError::Io {
                    addr: addr.to_owned(),
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        // Small commands (ACKs, heartbeats) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let stream = self.wrap(addr, stream).await.map_err(|e| ConnError::Tls {
            addr: addr.to_owned(),
            message: e.message,
            permanent: e.permanent,
        })?;
        Ok(RedisConn {
            addr: addr.to_owned(),
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder: Decoder::new(Limits::default()),
        })
    }
}

impl RedisConn {
    /// The node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command and returns its reply (error replies are `Frame::Error`, not `Err`).
    pub async fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Frame, ConnError> {
        self.send(args).await?;
        let what = args
            .first()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .unwrap_or_default();
        self.read_reply(&what, REPLY_TIMEOUT).await
    }

    /// Writes one command without waiting for the reply.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        encode_command(args, &mut out);
        let written = async {
            self.stream.write_all(&out).await?;
            // TLS buffers records; plain TCP flushes nothing.
            self.stream.flush().await
        };
        written.await.map_err(|source| ConnError::Io {
            addr: self.addr.clone(),
            source,
        })
    }

    /// Reads one reply, waiting at most `timeout` in total.
    pub async fn read_reply(&mut self, what: &str, timeout: Duration) -> Result<Frame, ConnError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(decoded)) => return Ok(decoded.frame),
                Ok(None) => {}
                Err(source) => {
                    return Err(ConnError::Protocol {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
            self.buf.reserve(16 * 1024);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => {
                    return Err(ConnError::Timeout {
                        addr: self.addr.clone(),
                        what: what.to_owned(),
                        timeout,
                    });
                }
                Ok(Err(source)) => {
                    return Err(ConnError::Io {
                        addr: self.addr.clone(),
                        source,
                    });
                }
                Ok(Ok(0)) => {
                    return Err(ConnError::Closed {
                        addr: self.addr.clone(),
                    });
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The socket and whatever was read past the last reply.
    pub fn into_parts(self) -> (NodeStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// Credentials for a source node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user; empty for the default user.
    pub username: String,
    /// Password; empty for none.
    pub password: String,
}

/// How an AUTH attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server refused the credentials.
    #[error("{addr}: authentication refused: {message}")]
    Refused {
        /// The node.
        addr: String,
        /// The server's error text.
        message: String,
    },
}

impl Credentials {
    /// Authenticates `conn` when a password is set. Without a user this is `AUTH pass`,
    /// the only form Redis before 6.0 understands.
    pub async fn authenticate(&self, conn: &mut RedisConn) -> Result<(), AuthError> {
        if self.password.is_empty() {
            return Ok(());
        }
        let reply = if self.username.is_empty() {
            conn.command(&[b"AUTH".as_slice(), self.password.as_bytes()])
                .await?
        } else {
            conn.command(&[
                b"AUTH".as_slice(),
                self.username.as_bytes(),
                self.password.as_bytes(),
            ])
            .await?
        };
        match reply {
            Frame::Simple(_) => Ok(()),
            Frame::Error(e) => Err(AuthError::Refused {
                addr: conn.addr().to_owned(),
                message: String::from_utf8_lossy(&e).into_owned(),
            }),
            other => Err(AuthError::Refused {
                addr: conn.addr().to_owned(),
                message: format!("unexpected reply {other:?}"),
            }),
        }
    }
}

/// The text of a bulk or simple reply.
pub fn reply_text(frame: &Frame) -> Option<String> {
    match frame {
        Frame::Bulk(b) | Frame::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The message of an error reply.
pub fn reply_error(frame: &Frame) -> Option<String> {
    match frame {
        Frame::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
        _ => None,
    }
}

/// `INFO` text as `field → value` pairs (sections flattened; `# ...` headers skipped).
pub fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Field `name` of parsed INFO.
pub fn info_field<'a>(info: &'a [(String, String)], name: &str) -> Option<&'a str> {
    info.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Keys per database from INFO keyspace lines (`db3:keys=10,expires=0,avg_ttl=0`).
pub fn keyspace(info: &[(String, String)]) -> Vec<(u32, u64)> {
    info.iter()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse::<u32>().ok()?;
            let keys = v
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse::<u64>()
                .ok()?;
            Some((db, keys))
        })
        .collect()
}

/// `role`, `master_replid` and `master_replid2` from INFO replication (empty when absent:
/// before 4.0 there are no replication ids).
pub async fn replication_ids(conn: &mut RedisConn) -> Result<(String, String, String), String> {
    match info(conn, Some("replication")).await {
        Ok(Ok(i)) => {
            let field = |n: &str| info_field(&i, n).unwrap_or_default().to_owned();
            Ok((
                field("role"),
                field("master_replid"),
                field("master_replid2"),
            ))
        }
        Ok(Err(e)) => Err(format!("{}: INFO replication answered {e}", conn.addr())),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `INFO [section]` and parses it.
pub async fn info(
    conn: &mut RedisConn,
    section: Option<&str>,
) -> Result<Result<Vec<(String, String)>, String>, ConnError> {
    let reply = match section {
        Some(s) => conn.command(&[b"INFO".as_slice(), s.as_bytes()]).await?,
        None => conn.command(&[b"INFO".as_slice()]).await?,
    };
    Ok(match reply {
        Frame::Bulk(b) => Ok(parse_info(&String::from_utf8_lossy(&b))),
        Frame::Error(e) => Err(String::from_utf8_lossy(&e).into_owned()),
        other => Err(format!("unexpected INFO reply {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_and_keyspace() {
        let text = "# Server\r\nredis_version:7.0.15\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\ndb12:keys=40,expires=0,avg_ttl=0\r\n";
        let info = parse_info(text);
        assert_eq!(info_field(&info, "redis_version"), Some("7.0.15"));
        assert_eq!(keyspace(&info), vec![(0, 3), (12, 40)]);
    }
}
