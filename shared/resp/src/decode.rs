use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::Frame;
use crate::error::{Limit, RespError, quote};

/// Bounds on what a peer may claim. They exist to turn garbage (a desynchronised stream, a
/// wrong port) into an early, named error; memory is never reserved from a claim anyway, so
/// the defaults follow what Redis itself accepts and a stream Redis took is never refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string. Redis's `proto-max-bulk-len` defaults to 512 MiB; raise this if
    /// the source raised it, or replicated RESTOREs of big keys will be refused.
    pub max_bulk_len: usize,
    /// Most elements in one array. A master replicates client commands verbatim and Redis
    /// accepts up to `INT_MAX` arguments, so a huge MSET is legitimate.
    pub max_array_len: usize,
    /// Longest inline or simple-string line, like Redis's `PROTO_INLINE_MAX_SIZE`.
    pub max_inline_len: usize,
    /// Deepest array nesting; commands are never nested, replies only a little.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
            max_depth: 8,
        }
    }
}

/// A decoded frame and exactly how many bytes of the stream it used, which is what the
/// replication offset advances by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub frame: Frame,
    pub wire_len: usize,
}

/// Incremental decoder for a byte stream that arrives in arbitrary pieces.
///
/// The caller appends whatever it reads to one `BytesMut` and calls [`Decoder::decode`] until
/// it returns `Ok(None)`. Between two calls the caller may only append to the buffer: the
/// decoder remembers how far into an unfinished array it got, and how long the buffer must
/// be before another attempt can succeed, so a frame arriving in many small reads is parsed
/// about once instead of once per read.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    needed: usize,
    partial: Partial,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            needed: 0,
            partial: Partial::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The buffer length below which [`Decoder::decode`] returns `Ok(None)` without looking:
    /// a lower bound on the size of the frame being received, handy for sizing reads.
    pub fn needed_len(&self) -> usize {
        self.needed
    }

    /// Forgets any half-parsed frame, for when the caller starts over on a new buffer.
    pub fn reset(&mut self) {
        self.needed = 0;
        self.partial = Partial::default();
    }

    /// Takes one complete frame off the front of `buf`. The frame's strings are slices of the
    /// bytes split off `buf`, not copies. `Ok(None)` means more bytes are needed and `buf` is
    /// untouched. After an error `buf` is untouched too, and the stream is beyond repair.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, RespError> {
        if buf.len() < self.needed {
            return Ok(None);
        }
        // Only reachable if the caller replaced the buffer (the hint is always past `pos`),
        // but resuming there would index past the end, so it is checked, not assumed.
        if buf.len() < self.partial.pos {
            self.partial = Partial::default();
        }
        match advance(&mut self.partial, buf, &self.limits) {
            Err(e) => {
                self.reset();
                Err(e)
            }
            Ok(Step::NeedAtLeast(n)) => {
                self.needed = n;
                Ok(None)
            }
            Ok(Step::Done(node, wire_len)) => {
                self.reset();
                let bytes = buf.split_to(wire_len).freeze();
                Ok(Some(Decoded {
                    frame: node.into_frame(&bytes),
                    wire_len,
                }))
            }
        }
    }
}

/// Parses one frame from the front of `buf` without keeping any state; the frame's strings
/// are copied out of `buf`. Returns the frame and how many bytes it used, or `None` if `buf`
/// holds only part of a frame.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, RespError> {
    match advance(&mut Partial::default(), buf, limits)? {
        Step::NeedAtLeast(_) => Ok(None),
        Step::Done(node, len) => {
            let bytes = Bytes::copy_from_slice(&buf[..len]);
            Ok(Some((node.into_frame(&bytes), len)))
        }
    }
}

/// The shortest possible array element, `+\r\n`; multiplied by the elements still to come it
/// gives a safe lower bound on how much more an unfinished array needs.
const MIN_FRAME_LEN: usize = 3;

/// Longest length or integer line worth scanning: `-9223372036854775808` is 20 bytes.
const MAX_NUMBER_LEN: usize = 32;

/// A frame whose strings are still positions in the buffer, because the bytes can only be
/// frozen (and sliced without copying) once the whole frame is there.
#[derive(Debug)]
enum Node {
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer(i64),
    Bulk(Range<usize>),
    NullBulk,
    Array(Vec<Node>),
    NullArray,
    Inline(Vec<Range<usize>>),
}

impl Node {
    fn into_frame(self, bytes: &Bytes) -> Frame {
        match self {
            Node::Simple(r) => Frame::Simple(bytes.slice(r)),
            Node::Error(r) => Frame::Error(bytes.slice(r)),
            Node::Integer(n) => Frame::Integer(n),
            Node::Bulk(r) => Frame::Bulk(bytes.slice(r)),
            Node::NullBulk => Frame::NullBulk,
            Node::Array(items) => {
                Frame::Array(items.into_iter().map(|n| n.into_frame(bytes)).collect())
            }
            Node::NullArray => Frame::NullArray,
            Node::Inline(words) => {
                Frame::Inline(words.into_iter().map(|r| bytes.slice(r)).collect())
            }
        }
    }
}

/// How far into an unfinished top-level array the decoder got: `pos` is where the next
/// element starts and `open` the arrays it is nested in, innermost last.
#[derive(Debug, Default)]
struct Partial {
    pos: usize,
    open: Vec<OpenArray>,
}

#[derive(Debug)]
struct OpenArray {
    remaining: usize,
    items: Vec<Node>,
}

enum Step {
    Done(Node, usize),
    NeedAtLeast(usize),
}

enum Item {
    Node(Node, usize),
    ArrayHeader(usize, usize),
    NeedAtLeast(usize),
}

fn advance(st: &mut Partial, buf: &[u8], limits: &Limits) -> Result<Step, RespError> {
    loop {
        let mut node = match parse_item(buf, st.pos, st.open.len(), limits)? {
            Item::NeedAtLeast(need) => {
                let later = st.open.iter().fold(0usize, |acc, a| {
                    acc.saturating_add(a.remaining.saturating_sub(1))
                });
                return Ok(Step::NeedAtLeast(
                    need.saturating_add(later.saturating_mul(MIN_FRAME_LEN)),
                ));
            }
            Item::Node(node, end) => {
                st.pos = end;
                node
            }
            Item::ArrayHeader(0, end) => {
                st.pos = end;
                Node::Array(Vec::new())
            }
            Item::ArrayHeader(len, end) => {
                st.pos = end;
                // Reserve only for elements whose bytes could already be here.
                let room = (buf.len() - end) / MIN_FRAME_LEN;
                st.open.push(OpenArray {
                    remaining: len,
                    items: Vec::with_capacity(len.min(room)),
                });
                continue;
            }
        };
        loop {
            let Some(top) = st.open.last_mut() else {
                return Ok(Step::Done(node, st.pos));
            };
            top.items.push(node);
            top.remaining -= 1;
            if top.remaining > 0 {
                break;
            }
            node = Node::Array(std::mem::take(&mut top.items));
            st.open.pop();
        }
    }
}

/// Parses the frame (or, for an array, only its header) starting at `pos`, `depth` arrays deep.
fn parse_item(buf: &[u8], pos: usize, depth: usize, limits: &Limits) -> Result<Item, RespError> {
    let Some(&type_byte) = buf.get(pos) else {
        return Ok(Item::NeedAtLeast(pos + 1));
    };
    match type_byte {
        b'+' | b'-' => {
            let (text, end) = match line(buf, pos + 1, limits.max_inline_len)? {
                Line::Complete(text, end) => (text, end),
                Line::NeedAtLeast(n) => return Ok(Item::NeedAtLeast(n)),
            };
            let node = if type_byte == b'+' {
                Node::Simple(text)
            } else {
                Node::Error(text)
            };
            Ok(Item::Node(node, end))
        }
        b':' => {
            let (digits, end) = match number_line(buf, pos + 1, bad_integer)? {
                Line::Complete(digits, end) => (digits, end),
                Line::NeedAtLeast(n) => return Ok(Item::NeedAtLeast(n)),
            };
            let n = parse_i64(&buf[digits.clone()]).ok_or_else(|| bad_integer(buf, digits))?;
            Ok(Item::Node(Node::Integer(n), end))
        }
        b'$' => {
            let (len, end) = match length(buf, pos + 1, Limit::BulkLen, limits.max_bulk_len)? {
                Line::Complete(Some(len), end) => (len, end),
                Line::Complete(None, end) => return Ok(Item::Node(Node::NullBulk, end)),
                Line::NeedAtLeast(n) => return Ok(Item::NeedAtLeast(n)),
            };
            let data_end = end.saturating_add(len);
            let need = data_end.saturating_add(2);
            if buf.len() < need {
                return Ok(Item::NeedAtLeast(need));
            }
            if &buf[data_end..need] != b"\r\n" {
                return Err(RespError::MissingCrlf { offset: data_end });
            }
            Ok(Item::Node(Node::Bulk(end..data_end), need))
        }
        b'*' => {
            if depth >= limits.max_depth {
                return Err(RespError::TooDeep {
                    offset: pos,
                    max: limits.max_depth,
                });
            }
            match length(buf, pos + 1, Limit::ArrayLen, limits.max_array_len)? {
                Line::Complete(Some(len), end) => Ok(Item::ArrayHeader(len, end)),
                Line::Complete(None, end) => Ok(Item::Node(Node::NullArray, end)),
                Line::NeedAtLeast(n) => Ok(Item::NeedAtLeast(n)),
            }
        }
        _ if depth == 0 => inline(buf, pos, limits.max_inline_len),
        byte => Err(RespError::BadTypeByte { offset: pos, byte }),
    }
}

enum Line<T> {
    Complete(T, usize),
    NeedAtLeast(usize),
}

/// Finds the CRLF-terminated line starting at `start`: its content and where the next
/// thing begins. RESP lines cannot hold a bare CR or LF, so either is an error.
fn line(buf: &[u8], start: usize, max: usize) -> Result<Line<Range<usize>>, RespError> {
    let window_end = buf.len().min(start.saturating_add(max).saturating_add(1));
    let window = buf.get(start..window_end).unwrap_or_default();
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) => {
            let cr = start + i;
            if buf[cr] == b'\n' {
                return Err(RespError::BadLineEnding { offset: cr });
            }
            match buf.get(cr + 1) {
                None => Ok(Line::NeedAtLeast(cr + 2)),
                Some(b'\n') => Ok(Line::Complete(start..cr, cr + 2)),
                Some(_) => Err(RespError::BadLineEnding { offset: cr + 1 }),
            }
        }
        None if window.len() > max => Err(RespError::LineTooLong { offset: start, max }),
        None => Ok(Line::NeedAtLeast(buf.len() + 1)),
    }
}

fn number_line(
    buf: &[u8],
    start: usize,
    bad: fn(&[u8], Range<usize>) -> RespError,
) -> Result<Line<Range<usize>>, RespError> {
    match line(buf, start, MAX_NUMBER_LEN) {
        Err(RespError::LineTooLong { .. }) => {
            let end = buf.len().min(start + MAX_NUMBER_LEN + 1);
            Err(bad(buf, start..end))
        }
        other => other,
    }
}

fn bad_integer(buf: &[u8], digits: Range<usize>) -> RespError {
    RespError::BadInteger {
        offset: digits.start,
        line: quote(&buf[digits]),
    }
}

fn bad_length(buf: &[u8], digits: Range<usize>) -> RespError {
    RespError::BadLength {
        offset: digits.start,
        line: quote(&buf[digits]),
    }
}

/// A `$` or `*` length: `None` for the -1 that means null.
fn length(
    buf: &[u8],
    start: usize,
    limit: Limit,
    max: usize,
) -> Result<Line<Option<usize>>, RespError> {
    let (digits, end) = match number_line(buf, start, bad_length)? {
        Line::Complete(digits, end) => (digits, end),
        Line::NeedAtLeast(n) => return Ok(Line::NeedAtLeast(n)),
    };
    let claimed = parse_i64(&buf[digits.clone()]).ok_or_else(|| bad_length(buf, digits))?;
    match claimed {
        -1 => Ok(Line::Complete(None, end)),
        len if len < 0 => Err(RespError::NegativeLength { offset: start, len }),
        len => match usize::try_from(len) {
            Ok(len) if len <= max => Ok(Line::Complete(Some(len), end)),
            _ => Err(RespError::TooLong {
                offset: start,
                limit,
                claimed,
                max,
            }),
        },
    }
}

/// A line that is not RESP: Redis reads it up to LF (dropping a CR before it) and splits it
/// on whitespace. Quotes, which Redis would also honour, are not handled: masters send
/// inline only as bare keepalive newlines.
fn inline(buf: &[u8], pos: usize, max: usize) -> Result<Item, RespError> {
    // The content may be `max` long, plus CR and LF.
    let window_end = buf.len().min(pos.saturating_add(max).saturating_add(2));
    let Some(i) = buf[pos..window_end].iter().position(|&b| b == b'\n') else {
        if window_end - pos >= max.saturating_add(2) {
            return Err(RespError::InlineTooLong { offset: pos, max });
        }
        return Ok(Item::NeedAtLeast(buf.len() + 1));
    };
    let lf = pos + i;
    let content_end = if lf > pos && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    if content_end - pos > max {
        return Err(RespError::InlineTooLong { offset: pos, max });
    }
    let mut words = Vec::new();
    let mut word_start = None;
    for (at, &b) in buf.iter().enumerate().take(content_end).skip(pos) {
        // The bytes C's isspace() accepts; LF cannot occur here.
        let space = matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c);
        match (space, word_start) {
            (true, Some(s)) => {
                words.push(s..at);
                word_start = None;
            }
            (false, None) => word_start = Some(at),
            _ => {}
        }
    }
    if let Some(s) = word_start {
        words.push(s..content_end);
    }
    Ok(Item::Node(Node::Inline(words), lf + 1))
}

/// Strict decimal, as Redis's `string2ll`: no sign but `-`, no leading zeros, no `-0`, no
/// spaces, no overflow.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    /// Decodes everything in `input` with default limits and checks nothing is left.
    fn decode_all(input: &[u8]) -> Vec<Decoded> {
        decode_all_with(input, Limits::default()).expect("valid input")
    }

    fn decode_all_with(input: &[u8], limits: Limits) -> Result<Vec<Decoded>, RespError> {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = decoder.decode(&mut buf)? {
            out.push(d);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn one(input: &[u8]) -> Frame {
        let mut all = decode_all(input);
        assert_eq!(all.len(), 1);
        let d = all.remove(0);
        assert_eq!(d.wire_len, input.len());
        d.frame
    }

    fn err(input: &[u8]) -> RespError {
        err_with(input, Limits::default())
    }

    fn err_with(input: &[u8], limits: Limits) -> RespError {
        let mut buf = BytesMut::from(input);
        let e = Decoder::new(limits.clone())
            .decode(&mut buf)
            .expect_err("should fail");
        assert_eq!(&buf[..], input, "an error must leave the buffer alone");
        assert_eq!(parse(input, &limits).expect_err("parse should fail too"), e);
        e
    }

    #[test]
    fn simple_and_error_strings() {
        assert_eq!(one(b"+OK\r\n"), Frame::Simple(b(b"OK")));
        assert_eq!(one(b"+\r\n"), Frame::Simple(b(b"")));
        assert_eq!(one(b"-ERR no\r\n"), Frame::Error(b(b"ERR no")));
    }

    #[test]
    fn integers() {
        assert_eq!(one(b":0\r\n"), Frame::Integer(0));
        assert_eq!(one(b":-17\r\n"), Frame::Integer(-17));
        assert_eq!(one(b":9223372036854775807\r\n"), Frame::Integer(i64::MAX));
        assert_eq!(one(b":-9223372036854775808\r\n"), Frame::Integer(i64::MIN));
    }

    #[test]
    fn bulks_are_binary_safe() {
        assert_eq!(one(b"$0\r\n\r\n"), Frame::Bulk(b(b"")));
        assert_eq!(one(b"$5\r\na\r\n\0b\r\n"), Frame::Bulk(b(b"a\r\n\0b")));
        assert_eq!(one(b"$-1\r\n"), Frame::NullBulk);
    }

    #[test]
    fn arrays() {
        assert_eq!(one(b"*0\r\n"), Frame::Array(vec![]));
        assert_eq!(one(b"*-1\r\n"), Frame::NullArray);
        assert_eq!(
            one(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"),
            Frame::Array(vec![
                Frame::Bulk(b(b"SET")),
                Frame::Bulk(b(b"k")),
                Frame::Bulk(b(b""))
            ])
        );
        assert_eq!(
            one(b"*2\r\n*1\r\n:1\r\n*2\r\n$-1\r\n*0\r\n"),
            Frame::Array(vec![
                Frame::Array(vec![Frame::Integer(1)]),
                Frame::Array(vec![Frame::NullBulk, Frame::Array(vec![])]),
            ])
        );
    }

    #[test]
    fn inline_commands_split_on_whitespace_and_count_their_line_ending() {
        assert_eq!(one(b"PING\r\n"), Frame::Inline(vec![b(b"PING")]));
        assert_eq!(one(b"PING\n"), Frame::Inline(vec![b(b"PING")]));
        assert_eq!(
            one(b"  set\tk \x0b v  \r\n"),
            Frame::Inline(vec![b(b"set"), b(b"k"), b(b"v")])
        );
        assert_eq!(one(b"   \r\n"), Frame::Inline(vec![]));
    }

    #[test]
    fn keepalive_newlines_are_empty_inline_frames_of_exact_length() {
        let all = decode_all(b"\n\r\n\n");
        let lens: Vec<usize> = all.iter().map(|d| d.wire_len).collect();
        assert_eq!(lens, [1, 2, 1]);
        assert!(all.iter().all(|d| d.frame == Frame::Inline(vec![])));
    }

    #[test]
    fn consecutive_frames_account_for_every_byte() {
        let input = b"*1\r\n$4\r\nPING\r\n\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n+OK\r\n";
        let all = decode_all(input);
        let lens: Vec<usize> = all.iter().map(|d| d.wire_len).collect();
        assert_eq!(lens, [14, 1, 23, 5]);
        assert_eq!(lens.iter().sum::<usize>(), input.len());
    }

    #[test]
    fn decoded_strings_share_the_received_buffer() {
        let mut buf = BytesMut::from(&b"*1\r\n$5\r\nhello\r\n"[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let d = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let Frame::Array(items) = d.frame else {
            panic!()
        };
        let Frame::Bulk(hello) = &items[0] else {
            panic!()
        };
        assert_eq!(&hello[..], b"hello");
        assert!(range.contains(&(hello.as_ptr() as usize)));
    }

    #[test]
    fn every_prefix_is_incomplete_and_untouched() {
        let input = b"*2\r\n$3\r\nDEL\r\n*1\r\n:12\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(
                Decoder::default().decode(&mut buf),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(&buf[..], &input[..cut]);
            assert_eq!(parse(&input[..cut], &Limits::default()), Ok(None));
        }
    }

    #[test]
    fn waits_for_the_announced_length_before_looking_again() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"$10\r\nab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.needed_len(), 5 + 10 + 2);

        // In an array, each element still to come needs at least 3 bytes.
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*3\r\n$1\r\na\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.needed_len(), 11 + 1 + 3);

        buf.extend_from_slice(b"+x\r\n+y\r\n");
        let d = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(d.wire_len, 19);
        assert_eq!(decoder.needed_len(), 0);
    }

    #[test]
    fn an_array_arriving_byte_by_byte_decodes_once() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &byte) in input.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            if let Some(d) = decoder.decode(&mut buf).unwrap() {
                assert_eq!(i, input.len() - 1, "decoded early");
                got = Some(d);
            }
        }
        let d = got.expect("decoded");
        assert_eq!(d.wire_len, input.len());
        assert_eq!(
            d.frame.into_args().unwrap(),
            [b(b"SET"), b(b"k"), b(b"value")]
        );
    }

    #[test]
    fn a_replaced_shorter_buffer_does_not_confuse_the_decoder() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nfoo\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let mut other = BytesMut::from(&b"+OK\r\n"[..]);
        decoder.reset();
        let d = decoder.decode(&mut other).unwrap().unwrap();
        assert_eq!(d.frame, Frame::Simple(b(b"OK")));

        // Without reset, a shorter buffer is a broken contract, but still not a panic.
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nfoo\r\n$"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let mut other = BytesMut::from(&b"*1\r\n:1\r\n"[..]);
        assert_eq!(decoder.decode(&mut other), Ok(None));
    }

    #[test]
    fn bad_length_lines() {
        for (input, line) in [
            (&b"$abc\r\n"[..], "abc"),
            (b"$01\r\n", "01"),
            (b"$\r\n", ""),
            (b"$ 1\r\n", " 1"),
            (b"*1x\r\n", "1x"),
            (b"*-0\r\n", "-0"),
        ] {
            assert_eq!(
                err(input),
                RespError::BadLength {
                    offset: 1,
                    line: line.into()
                },
                "{input:?}"
            );
        }
        let long = [&b"$"[..], &[b'1'; 40], b"\r\n"].concat();
        assert!(matches!(err(&long), RespError::BadLength { offset: 1, .. }));
    }

    #[test]
    fn negative_lengths_other_than_minus_one() {
        assert_eq!(
            err(b"$-2\r\n"),
            RespError::NegativeLength { offset: 1, len: -2 }
        );
        assert_eq!(
            err(b"*-5\r\n"),
            RespError::NegativeLength { offset: 1, len: -5 }
        );
    }

    #[test]
    fn lengths_over_the_limit_name_the_limit_and_the_claim() {
        let e = err(b"$9999999999\r\n");
        assert_eq!(
            e,
            RespError::TooLong {
                offset: 1,
                limit: Limit::BulkLen,
                claimed: 9_999_999_999,
                max: 512 * 1024 * 1024
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("max_bulk_len") && msg.contains("9999999999"),
            "{msg}"
        );

        let limits = Limits {
            max_array_len: 2,
            ..Limits::default()
        };
        let e = err_with(b"*1\r\n*3\r\n", limits);
        assert_eq!(
            e,
            RespError::TooLong {
                offset: 5,
                limit: Limit::ArrayLen,
                claimed: 3,
                max: 2
            }
        );
        assert!(e.to_string().contains("max_array_len"));
    }

    #[test]
    fn lying_lengths_reserve_nothing() {
        // With the limits out of the way, a claim of eight exabytes must simply wait for
        // bytes; reserving for it would abort the process.
        let limits = Limits {
            max_bulk_len: usize::MAX,
            max_array_len: usize::MAX,
            ..Limits::default()
        };
        for input in [
            &b"$9223372036854775807\r\n"[..],
            b"*9223372036854775807\r\n:1\r\n",
        ] {
            let mut decoder = Decoder::new(limits.clone());
            let mut buf = BytesMut::from(input);
            let capacity = buf.capacity();
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert_eq!(buf.capacity(), capacity);
            assert!(decoder.needed_len() > input.len());
        }
    }

    #[test]
    fn bad_integers() {
        for (input, line) in [
            (&b":12a\r\n"[..], "12a"),
            (b":-0\r\n", "-0"),
            (b":\r\n", ""),
            (b":+1\r\n", "+1"),
            (b":9223372036854775808\r\n", "9223372036854775808"),
        ] {
            assert_eq!(
                err(input),
                RespError::BadInteger {
                    offset: 1,
                    line: line.into()
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn bulk_must_end_with_crlf() {
        assert_eq!(err(b"$3\r\nabcX\r\n"), RespError::MissingCrlf { offset: 7 });
        assert_eq!(
            err(b"*2\r\n$1\r\na\r\n$1\r\nb\n\r"),
            RespError::MissingCrlf { offset: 16 }
        );
    }

    #[test]
    fn typed_lines_need_crlf() {
        assert_eq!(err(b"+OK\rX"), RespError::BadLineEnding { offset: 4 });
        assert_eq!(err(b"+OK\n"), RespError::BadLineEnding { offset: 3 });
        assert_eq!(err(b"$3\nabc\r\n"), RespError::BadLineEnding { offset: 2 });
    }

    #[test]
    fn simple_strings_are_bounded() {
        let limits = Limits {
            max_inline_len: 4,
            ..Limits::default()
        };
        assert_eq!(
            decode_all_with(b"+abcd\r\n", limits.clone()).unwrap()[0].frame,
            Frame::Simple(b(b"abcd"))
        );
        assert_eq!(
            err_with(b"+abcde", limits),
            RespError::LineTooLong { offset: 1, max: 4 }
        );
    }

    #[test]
    fn arrays_deeper_than_the_limit() {
        let limits = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        assert!(decode_all_with(b"*1\r\n*1\r\n:1\r\n", limits.clone()).is_ok());
        assert_eq!(
            err_with(b"*1\r\n*1\r\n*1\r\n:1\r\n", limits),
            RespError::TooDeep { offset: 8, max: 2 }
        );
    }

    #[test]
    fn inline_lines_are_bounded() {
        let limits = Limits {
            max_inline_len: 8,
            ..Limits::default()
        };
        for ok in [&b"PING 123\r\n"[..], b"PING 123\n"] {
            assert!(decode_all_with(ok, limits.clone()).is_ok(), "{ok:?}");
        }
        for bad in [
            &b"PING 1234\n"[..],
            b"PING 1234\r\n",
            b"PING 12345",
            b"PING PING PING\r\n",
        ] {
            assert_eq!(
                err_with(bad, limits.clone()),
                RespError::InlineTooLong { offset: 0, max: 8 },
                "{bad:?}"
            );
        }
        // Shorter than the limit and no newline yet: wait.
        let mut buf = BytesMut::from(&b"PING 123"[..]);
        assert_eq!(Decoder::new(limits).decode(&mut buf), Ok(None));
    }

    #[test]
    fn inline_is_only_allowed_at_the_top() {
        assert_eq!(
            err(b"*2\r\n$1\r\na\r\nfoo\r\n"),
            RespError::BadTypeByte {
                offset: 11,
                byte: b'f'
            }
        );
    }

    #[test]
    fn errors_report_their_offset() {
        let e = err(b"*2\r\n$1\r\na\r\n$x\r\n");
        assert_eq!(e.offset(), 12);
        assert!(e.to_string().contains("at byte 12"), "{e}");
    }

    #[test]
    fn parse_agrees_with_decoder() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\ntrailing";
        let (frame, len) = parse(input, &Limits::default()).unwrap().unwrap();
        assert_eq!(len, 20);
        let mut buf = BytesMut::from(&input[..]);
        let d = Decoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!((d.frame, d.wire_len), (frame, len));
        assert_eq!(&buf[..], b"trailing");
    }
}
