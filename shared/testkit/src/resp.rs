//! A minimal blocking RESP2 client for test setup and assertions.
//!
//! It is deliberately independent of the project's own protocol crates so that a bug
//! there cannot hide itself in the tests that are meant to catch it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{HarnessError, Result};

/// Default time a [`Client`] waits for a connection or a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest bulk string or array the client accepts (sanity bound, not a Redis limit).
const MAX_LEN: i64 = 512 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...` (the text after `-`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo` or the nil bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` or the nil array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    /// A nil bulk or nil array.
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }

    /// The bytes of a bulk string or status.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// A status, or a bulk string that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Status(s) => Some(s),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// An integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of a non-nil array.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// The message of an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Turns an error reply into [`HarnessError::ErrorReply`]; other replies pass.
    pub fn into_result(self) -> Result<Reply> {
        match self {
            Reply::Error(message) => Err(HarnessError::ErrorReply {
                command: String::new(),
                message,
            }),
            other => Ok(other),
        }
    }
}

impl fmt::Display for Reply {
    /// redis-cli-like rendering, for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "{s}"),
            Reply::Error(e) => write!(f, "(error) {e}"),
            Reply::Int(i) => write!(f, "(integer) {i}"),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Bulk(Some(b)) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Array(Some(items)) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub(crate) fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply. An EOF before the first byte is reported as an I/O error of kind
/// `UnexpectedEof`.
pub(crate) fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| HarnessError::Protocol("empty line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Status(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Int(parse_int(rest)?)),
        b'$' => {
            let len = parse_len(rest)?;
            let Some(len) = len else {
                return Ok(Reply::Bulk(None));
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)
                .map_err(|e| HarnessError::io("reading a bulk string", e))?;
            if !buf.ends_with(b"\r\n") {
                return Err(HarnessError::Protocol(
                    "bulk string not terminated by CRLF".into(),
                ));
            }
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let len = parse_len(rest)?;
            let Some(len) = len else {
                return Ok(Reply::Array(None));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(HarnessError::Protocol(format!(
            "unknown reply type byte {:?} in line {:?}",
            char::from(*other),
            String::from_utf8_lossy(&line)
        ))),
    }
}

fn read_line<R: BufRead>(r: &mut R) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = r
        .read_until(b'\n', &mut line)
        .map_err(|e| HarnessError::io("reading a reply", e))?;
    if n == 0 {
        return Err(HarnessError::io(
            "reading a reply",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(HarnessError::Protocol(format!(
            "line not terminated by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(digits: &[u8]) -> Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            HarnessError::Protocol(format!("bad integer {:?}", String::from_utf8_lossy(digits)))
        })
}

/// `-1` → `None`; lengths above [`MAX_LEN`] or below -1 are protocol errors.
fn parse_len(digits: &[u8]) -> Result<Option<usize>> {
    match parse_int(digits)? {
        -1 => Ok(None),
        n if (0..=MAX_LEN).contains(&n) => Ok(Some(n as usize)),
        n => Err(HarnessError::Protocol(format!("bad length {n}"))),
    }
}

/// A blocking connection to one server.
///
/// Server error replies are returned as [`Reply::Error`], not as `Err`; `Err` means
/// the harness could not talk to the server.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.reader.get_ref().peer_addr().ok())
            .finish()
    }
}

impl Client {
    /// Connects (waiting at most `timeout`, which also becomes the read and write
    /// timeout) and sends `AUTH password` when a password is given.
    pub fn connect(
        addr: impl ToSocketAddrs,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Client> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| HarnessError::io("resolving the server address", e))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(stream) => {
                    let mut client = Client::from_stream(stream, timeout)?;
                    if let Some(pw) = password {
                        let reply = client.command(&[b"AUTH", pw.as_bytes()])?;
                        if !reply.is_ok() {
                            return Err(HarnessError::ErrorReply {
                                command: "AUTH".into(),
                                message: reply.to_string(),
                            });
                        }
                    }
                    return Ok(client);
                }
                Err(e) => last = Some(HarnessError::io(format!("connecting to {a}"), e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            HarnessError::io(
                "resolving the server address",
                std::io::Error::other("no address"),
            )
        }))
    }

    fn from_stream(stream: TcpStream, timeout: Duration) -> Result<Client> {
        let io = |e| HarnessError::io("configuring the connection", e);
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Changes how long a read may block (e.g. longer for `DEBUG SLEEP`, `SAVE`).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| HarnessError::io("configuring the connection", e))
    }

    /// Sends a command and reads its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    /// [`Client::command`] with string arguments.
    pub fn cmd_str(&mut self, args: &[&str]) -> Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command(&args)
    }

    /// Sends a command without reading its reply (pipelining: follow with as many
    /// [`Client::read_reply`] calls as commands sent).
    pub fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        if args.is_empty() {
            return Err(HarnessError::InvalidConfig("empty command".into()));
        }
        self.reader
            .get_mut()
            .write_all(&encode_command(args))
            .map_err(|e| HarnessError::io("sending a command", e))
    }

    /// Reads the next reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        read_reply(&mut self.reader)
    }
}

/// The fields of an `INFO` reply (all sections merged; `# Section` headers dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    fields: BTreeMap<String, String>,
}

impl Info {
    /// Parses the text of an `INFO` bulk reply.
    pub fn parse(text: &str) -> Info {
        let fields = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim_end().to_owned()))
            .collect();
        Info { fields }
    }

    /// One field's raw value.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// One field as an integer.
    pub fn get_int(&self, field: &str) -> Option<i64> {
        self.get(field).and_then(|v| v.parse().ok())
    }

    /// Every field.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Reply> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode_command(&[b"SET", b"k", b""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Status("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(parse(b":-7\r\n").unwrap(), Reply::Int(-7));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Array(None));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n").unwrap(),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(
            parse(b"*3\r\n:1\r\n*0\r\n$0\r\n\r\n").unwrap(),
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Array(Some(vec![])),
                Reply::Bulk(Some(vec![]))
            ]))
        );
    }

    #[test]
    fn rejects_malformed_replies() {
        for bad in [
            &b"?x\r\n"[..],
            b"+OK\n",
            b":1x\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let eof = parse(b"").unwrap_err();
        assert!(matches!(eof, HarnessError::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::UnexpectedEof));
        assert!(parse(b"*2\r\n:1\r\n").is_err());
    }

    #[test]
    fn parses_info() {
        let info = Info::parse(
            "# Server\r\nredis_version:7.0.15\r\n\r\n# Stats\r\nsync_full:2\r\nx:a:b\r\n",
        );
        assert_eq!(info.get("redis_version"), Some("7.0.15"));
        assert_eq!(info.get_int("sync_full"), Some(2));
        assert_eq!(info.get("x"), Some("a:b"));
        assert_eq!(info.get("Server"), None);
    }
}
