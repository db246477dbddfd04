use std::fmt;

/// Which configured limit a length claim broke; the name matches the [`Limits`](crate::Limits)
/// field so an operator can tell which knob to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    BulkLen,
    ArrayLen,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::BulkLen => "max_bulk_len",
            Limit::ArrayLen => "max_array_len",
        })
    }
}

/// Why bytes could not be decoded. `offset` is always counted from the start of the buffer
/// that was handed to the decoding function, so it can be added to a stream position to find
/// the culprit in a capture. After any of these the stream cannot be resynchronised: the
/// caller should drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("bad length line {line:?} at byte {offset}")]
    BadLength { offset: usize, line: String },

    #[error("negative length {len} at byte {offset} (only -1 is allowed)")]
    NegativeLength { offset: usize, len: i64 },

    #[error("length {claimed} at byte {offset} exceeds {limit} = {max}")]
    TooLong {
        offset: usize,
        limit: Limit,
        claimed: i64,
        max: usize,
    },

    #[error("bad integer {line:?} at byte {offset}")]
    BadInteger { offset: usize, line: String },

    #[error("bulk payload not followed by CRLF at byte {offset}")]
    MissingCrlf { offset: usize },

    #[error("line not terminated by CRLF at byte {offset}")]
    BadLineEnding { offset: usize },

    #[error("line starting at byte {offset} is longer than {max} bytes")]
    LineTooLong { offset: usize, max: usize },

    #[error("array at byte {offset} nested deeper than max_depth = {max}")]
    TooDeep { offset: usize, max: usize },

    #[error("inline command at byte {offset} is longer than max_inline_len = {max}")]
    InlineTooLong { offset: usize, max: usize },

    #[error("unknown type byte {byte:#04x} at byte {offset}")]
    BadTypeByte { offset: usize, byte: u8 },

    #[error("unexpected reply {line:?} at byte {offset}")]
    UnexpectedReply { offset: usize, line: String },
}

impl RespError {
    /// Where in the input the problem was found.
    pub fn offset(&self) -> usize {
        match self {
            RespError::BadLength { offset, .. }
            | RespError::NegativeLength { offset, .. }
            | RespError::TooLong { offset, .. }
            | RespError::BadInteger { offset, .. }
            | RespError::MissingCrlf { offset }
            | RespError::BadLineEnding { offset }
            | RespError::LineTooLong { offset, .. }
            | RespError::TooDeep { offset, .. }
            | RespError::InlineTooLong { offset, .. }
            | RespError::BadTypeByte { offset, .. }
            | RespError::UnexpectedReply { offset, .. } => *offset,
        }
    }
}

/// Error messages quote offending input; cap it so a megabyte of garbage does not end up in
/// a log line.
pub(crate) fn quote(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}
