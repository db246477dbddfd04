use bytes::{BufMut, Bytes, BytesMut};

/// One RESP value, as a replication stream or a handshake reply carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+text\r\n`
    Simple(Bytes),
    /// `-text\r\n`
    Error(Bytes),
    /// `:n\r\n`
    Integer(i64),
    /// `$len\r\n<len bytes>\r\n`
    Bulk(Bytes),
    /// `$-1\r\n`
    NullBulk,
    /// `*n\r\n` followed by n frames.
    Array(Vec<Frame>),
    /// `*-1\r\n`
    NullArray,
    /// A line that does not start with a RESP type byte, split into words. An empty list is
    /// the bare newline a master sends as a keepalive.
    Inline(Vec<Bytes>),
}

impl Frame {
    /// The arguments of a command, whichever of the two forms Redis accepts it in: an array
    /// of bulks or an inline line. `None` for anything else (including an array holding a
    /// non-bulk), since that cannot be a command.
    pub fn into_args(self) -> Option<Vec<Bytes>> {
        match self {
            Frame::Inline(args) => Some(args),
            Frame::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Frame::Bulk(b) => Some(b),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Exactly how many bytes [`encode_frame`] writes for this frame.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Simple(s) | Frame::Error(s) => 1 + s.len() + 2,
            Frame::Integer(n) => 1 + i64_len(*n) + 2,
            Frame::Bulk(b) => bulk_len(b.len()),
            Frame::NullBulk | Frame::NullArray => 5,
            Frame::Array(items) => {
                1 + usize_len(items.len()) + 2 + items.iter().map(Frame::encoded_len).sum::<usize>()
            }
            Frame::Inline(args) => {
                let words: usize = args.iter().map(Bytes::len).sum();
                words + args.len().saturating_sub(1) + 2
            }
        }
    }
}

/// Appends `frame` in wire form. Inline frames are written as words joined by single spaces
/// and a CRLF; words containing whitespace, or a first word starting with a RESP type byte,
/// cannot be told apart on the way back, which is why Redis itself never sends commands
/// inline and neither should we.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    out.reserve(frame.encoded_len());
    write_frame(frame, out);
}

fn write_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Simple(s) => write_line(out, b'+', s),
        Frame::Error(s) => write_line(out, b'-', s),
        Frame::Integer(n) => {
            out.put_u8(b':');
            if *n < 0 {
                out.put_u8(b'-');
            }
            put_decimal(out, n.unsigned_abs());
            out.put_slice(b"\r\n");
        }
        Frame::Bulk(b) => write_bulk(out, b),
        Frame::NullBulk => out.put_slice(b"$-1\r\n"),
        Frame::NullArray => out.put_slice(b"*-1\r\n"),
        Frame::Array(items) => {
            write_header(out, b'*', items.len());
            for item in items {
                write_frame(item, out);
            }
        }
        Frame::Inline(args) => {
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b' ');
                }
                out.put_slice(arg);
            }
            out.put_slice(b"\r\n");
        }
    }
}

/// Appends a command as Redis clients and masters send it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.reserve(command_len(args));
    write_header(out, b'*', args.len());
    for arg in args {
        write_bulk(out, arg.as_ref());
    }
}

/// Exactly how many bytes [`encode_command`] writes for `args`.
pub fn command_len<A: AsRef<[u8]>>(args: &[A]) -> usize {
    1 + usize_len(args.len())
        + 2
        + args
            .iter()
            .map(|a| bulk_len(a.as_ref().len()))
            .sum::<usize>()
}

fn write_line(out: &mut BytesMut, type_byte: u8, body: &[u8]) {
    out.put_u8(type_byte);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

fn write_bulk(out: &mut BytesMut, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn bulk_len(n: usize) -> usize {
    1 + usize_len(n) + 2 + n + 2
}

fn write_header(out: &mut BytesMut, type_byte: u8, n: usize) {
    out.put_u8(type_byte);
    put_decimal(out, n as u64);
    out.put_slice(b"\r\n");
}

// Formatting through `to_string` would allocate once per bulk on the write path.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

fn usize_len(n: usize) -> usize {
    u64_len(n as u64)
}

fn u64_len(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

fn i64_len(n: i64) -> usize {
    usize::from(n < 0) + u64_len(n.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(frame, &mut out);
        assert_eq!(out.len(), frame.encoded_len(), "encoded_len of {frame:?}");
        out.to_vec()
    }

    #[test]
    fn encodes_every_kind() {
        assert_eq!(enc(&Frame::Simple(Bytes::from_static(b"OK"))), b"+OK\r\n");
        assert_eq!(
            enc(&Frame::Error(Bytes::from_static(b"ERR x"))),
            b"-ERR x\r\n"
        );
        assert_eq!(enc(&Frame::Integer(-42)), b":-42\r\n");
        assert_eq!(enc(&Frame::Integer(i64::MIN)), b":-9223372036854775808\r\n");
        assert_eq!(enc(&Frame::Integer(0)), b":0\r\n");
        assert_eq!(enc(&Frame::Bulk(Bytes::from_static(b""))), b"$0\r\n\r\n");
        assert_eq!(
            enc(&Frame::Bulk(Bytes::from_static(b"a\r\nb"))),
            b"$4\r\na\r\nb\r\n"
        );
        assert_eq!(enc(&Frame::NullBulk), b"$-1\r\n");
        assert_eq!(enc(&Frame::NullArray), b"*-1\r\n");
        assert_eq!(enc(&Frame::Array(vec![])), b"*0\r\n");
        assert_eq!(
            enc(&Frame::Array(vec![
                Frame::Integer(1),
                Frame::Array(vec![Frame::NullBulk])
            ])),
            b"*2\r\n:1\r\n*1\r\n$-1\r\n"
        );
        assert_eq!(
            enc(&Frame::Inline(vec![
                Bytes::from_static(b"PING"),
                Bytes::from_static(b"x")
            ])),
            b"PING x\r\n"
        );
        assert_eq!(enc(&Frame::Inline(vec![])), b"\r\n");
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulks() {
        let mut out = BytesMut::new();
        let args: [&[u8]; 3] = [b"SET", b"key", b"va\0lue"];
        encode_command(&args, &mut out);
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$6\r\nva\0lue\r\n"
        );
        assert_eq!(out.len(), command_len(&args));
    }

    #[test]
    fn into_args_accepts_only_command_shapes() {
        let cmd = Frame::Array(vec![Frame::Bulk(Bytes::from_static(b"DEL"))]);
        assert_eq!(cmd.into_args(), Some(vec![Bytes::from_static(b"DEL")]));
        let inline = Frame::Inline(vec![Bytes::from_static(b"PING")]);
        assert_eq!(inline.into_args(), Some(vec![Bytes::from_static(b"PING")]));
        assert_eq!(Frame::Array(vec![Frame::Integer(1)]).into_args(), None);
        assert_eq!(Frame::Simple(Bytes::from_static(b"OK")).into_args(), None);
    }
}
