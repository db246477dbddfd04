//! The one error type of the crate.
//!
//! Input arrives from the network, so every failure is a value, never a panic, and every
//! variant that comes from the byte stream names the absolute offset (bytes from the start
//! of the RDB, or of the DUMP body for [`crate::decode_value`]) where the offending item
//! starts. That offset is what an operator needs to look at a spooled snapshot with `xxd`.

use crate::encoding::EncodingError;

/// Everything that can go wrong while parsing an RDB stream or a DUMP payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdbError {
    /// The stream does not start with `REDIS` + 4 digits or `VALKEY` + 3 digits.
    #[error("not an RDB stream: bad magic {found:?} at offset 0")]
    BadMagic {
        /// The bytes found where the magic should be (at most 9), lossily as text.
        found: String,
    },
    /// A well-formed magic with a version this crate does not know how to read.
    #[error("unsupported RDB version {version} (magic {magic}) at offset {offset}")]
    UnsupportedVersion {
        /// Offset of the version digits.
        offset: u64,
        /// `REDIS` or `VALKEY`.
        magic: &'static str,
        /// The version number found.
        version: u32,
    },
    /// The input ended before the RDB did (reported by `finish`, or by
    /// [`crate::decode_value`] for a DUMP body that stops short).
    #[error("truncated input: ended at offset {offset} inside {context}")]
    Truncated {
        /// Offset of the first byte of the item that could not be completed.
        offset: u64,
        /// What was being read.
        context: &'static str,
    },
    /// A length prefix whose first byte matches none of the four length forms.
    #[error("unknown length encoding byte {byte:#04x} at offset {offset}")]
    BadLength {
        /// Offset of the length prefix.
        offset: u64,
        /// Its first byte.
        byte: u8,
    },
    /// A length was expected but an "encoded value" marker (`11xxxxxx`) was found.
    #[error("expected a plain length at offset {offset}, found encoded-value marker {byte:#04x}")]
    UnexpectedEncodedLength {
        /// Offset of the length prefix.
        offset: u64,
        /// Its first byte.
        byte: u8,
    },
    /// A special string encoding other than int8/int16/int32/LZF.
    #[error("unknown string encoding {encoding} at offset {offset}")]
    BadStringEncoding {
        /// Offset of the string prefix.
        offset: u64,
        /// The 6-bit encoding number.
        encoding: u8,
    },
    /// A length (of a string, of an LZF payload, of a module value) above the configured limit.
    #[error("{what} of {len} bytes at offset {offset} exceeds the limit of {max} bytes")]
    TooLong {
        /// Offset of the length prefix (or of the value for module values).
        offset: u64,
        /// What was too long.
        what: &'static str,
        /// The claimed length.
        len: u64,
        /// The configured limit ([`crate::ParserOptions::max_string_len`]).
        max: u64,
    },
    /// A value type byte this crate does not know (or that the magic does not allow).
    #[error("unknown value type or opcode {rdb_type} at offset {offset}")]
    UnknownType {
        /// Offset of the type byte.
        offset: u64,
        /// The type byte.
        rdb_type: u8,
    },
    /// RDB type 6 (modules in Redis 4.0 release candidates) carries no framing: without the
    /// module that wrote it nothing can find its end, so nothing after it can be read.
    #[error(
        "pre-release module value (type 6) at offset {offset}: its end cannot be found without the module; Redis refuses it too"
    )]
    ModulePreGa {
        /// Offset of the type byte.
        offset: u64,
    },
    /// Opcode 246 (functions in Redis 7.0 release candidates).
    #[error(
        "pre-release function format (opcode 246) at offset {offset} is not supported (Redis refuses it too)"
    )]
    FunctionPreGa {
        /// Offset of the opcode.
        offset: u64,
    },
    /// A ziplist/listpack/intset/zipmap/LZF payload that the decoder rejected.
    #[error("invalid {what} at offset {offset}: {source}")]
    Encoding {
        /// Offset of the string that holds the payload.
        offset: u64,
        /// Which payload (e.g. "hash listpack").
        what: &'static str,
        /// The decoder's reason.
        #[source]
        source: EncodingError,
    },
    /// A structural violation of the RDB format (counts that disagree, bad markers, ...).
    #[error("corrupt {what} at offset {offset}: {detail}")]
    Corrupt {
        /// Offset of the item.
        offset: u64,
        /// What was being read.
        what: &'static str,
        /// Why it is wrong.
        detail: String,
    },
    /// The CRC-64 after the EOF opcode does not match the bytes before it.
    #[error(
        "RDB checksum mismatch at offset {offset}: expected {expected:#018x} (computed), found {found:#018x} (stored)"
    )]
    ChecksumMismatch {
        /// Offset of the stored checksum.
        offset: u64,
        /// The CRC-64 computed over the stream up to and including the EOF opcode.
        expected: u64,
        /// The CRC-64 stored in the stream.
        found: u64,
    },
    /// A DUMP payload shorter than its 10-byte trailer.
    #[error("DUMP payload of {len} bytes is shorter than its 10-byte trailer")]
    DumpTooShort {
        /// Length of the payload.
        len: usize,
    },
    /// The CRC-64 in a DUMP trailer does not match the body and version.
    #[error(
        "DUMP payload checksum mismatch: expected {expected:#018x} (computed), found {found:#018x} (stored)"
    )]
    DumpChecksumMismatch {
        /// Computed over body + version.
        expected: u64,
        /// Stored in the trailer.
        found: u64,
    },
    /// [`crate::decode_value`] finished the value before the end of the body.
    #[error("{trailing} unexpected bytes after the value, starting at offset {offset}")]
    TrailingBytes {
        /// Offset of the first unexpected byte.
        offset: u64,
        /// How many bytes follow the value.
        trailing: usize,
    },
    /// The parser already returned an error; its state is unusable.
    #[error("the parser already failed at offset {offset}; start a new one")]
    Failed {
        /// Offset of the original failure.
        offset: u64,
    },
}

impl RdbError {
    /// The offset the error names, when it names one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            RdbError::BadMagic { .. } => Some(0),
            RdbError::DumpTooShort { .. } | RdbError::DumpChecksumMismatch { .. } => None,
            RdbError::UnsupportedVersion { offset, .. }
            | RdbError::Truncated { offset, .. }
            | RdbError::BadLength { offset, .. }
            | RdbError::UnexpectedEncodedLength { offset, .. }
            | RdbError::BadStringEncoding { offset, .. }
            | RdbError::TooLong { offset, .. }
            | RdbError::UnknownType { offset, .. }
            | RdbError::ModulePreGa { offset }
            | RdbError::FunctionPreGa { offset }
            | RdbError::Encoding { offset, .. }
            | RdbError::Corrupt { offset, .. }
            | RdbError::ChecksumMismatch { offset, .. }
            | RdbError::TrailingBytes { offset, .. }
            | RdbError::Failed { offset } => Some(*offset),
        }
    }

    pub(crate) fn corrupt(offset: u64, what: &'static str, detail: impl Into<String>) -> Self {
        RdbError::Corrupt {
            offset,
            what,
            detail: detail.into(),
        }
    }
}
