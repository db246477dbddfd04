//! Decoders for the compact encodings found inside RDB values: LZF-compressed
//! strings, the CRC-64 that guards a snapshot and a DUMP payload, ziplists,
//! listpacks, intsets and zipmaps.
//!
//! Every function here is a pure function over a byte slice. The bytes come off
//! the network, so nothing is trusted: each function either returns what the blob
//! holds or an [`EncodingError`] naming the offset (within the blob it was given)
//! where the blob stopped making sense. Nothing panics, nothing indexes out of
//! bounds, and nothing allocates by a length read from the blob before that
//! length has been checked against the bytes actually present.
//!
//! The decoders check at least what Redis itself checks when it loads a blob
//! with deep sanitisation (`sanitize-dump-payload yes`): header lengths and
//! counts, every entry's encoding, prevlen/backlen, the end marker, intset
//! order. Where Redis is looser than the format it writes (a listpack backlen
//! spelled in more bytes than needed, a zipmap value length byte of 255) they
//! refuse, since no Redis writes such a blob. They do not impose the rules of a
//! particular value type on top (a hash stored as a listpack must have an even
//! number of elements; Redis drops a key whose container is empty, see
//! `corrupt_empty_keys.rdb` in the fixtures): that is the caller's business,
//! because the same container serves several types.

pub mod crc64;
pub mod intset;
pub mod listpack;
pub mod lzf;
pub mod ziplist;
pub mod zipmap;

#[cfg(test)]
mod testutil;

use std::fmt;

use bytes::Bytes;

/// Which encoding an [`EncodingError`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// An LZF-compressed string.
    Lzf,
    /// A ziplist (lists, hashes and sorted sets before Redis 7.0).
    Ziplist,
    /// A listpack (Redis 7.0+ small collections, and stream nodes since 5.0).
    Listpack,
    /// An intset (small sets of integers).
    Intset,
    /// A zipmap (small hashes before Redis 2.6).
    Zipmap,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Lzf => "lzf",
            Format::Ziplist => "ziplist",
            Format::Listpack => "listpack",
            Format::Intset => "intset",
            Format::Zipmap => "zipmap",
        })
    }
}

/// Why a blob could not be decoded.
///
/// `offset` is always a byte offset into the slice that was passed to the
/// decoder (for [`lzf::decompress`], into the compressed input); a caller that
/// knows where that slice sits in a larger file adds its own base. `what` names
/// the field being read, in the words of the Redis source (`zlbytes`,
/// `prevlen`, `backlen`, `entry encoding`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// A field, or the data it announces, runs past the end of the blob.
    #[error("{format}: {what} at offset {offset} needs {needed} bytes, only {available} left")]
    Truncated {
        format: Format,
        what: &'static str,
        offset: usize,
        needed: u64,
        available: usize,
    },
    /// A field disagrees with what the rest of the blob says it must be (a
    /// length in a header, a count, a prevlen or backlen, LZF output length).
    #[error("{format}: {what} at offset {offset} is {found}, expected {expected}")]
    Mismatch {
        format: Format,
        what: &'static str,
        offset: usize,
        expected: u64,
        found: u64,
    },
    /// A value that no valid blob has at this place (an unknown entry
    /// encoding byte, a missing end marker, an unknown intset width).
    #[error("{format}: invalid {what} {value:#04x} at offset {offset}")]
    Invalid {
        format: Format,
        what: &'static str,
        offset: usize,
        value: u64,
    },
    /// A value outside the range the format allows, or above a limit the caller
    /// set (`limit` is the largest acceptable value).
    #[error("{format}: {what} at offset {offset} is {value}, above the limit {limit}")]
    OutOfRange {
        format: Format,
        what: &'static str,
        offset: usize,
        value: u64,
        limit: u64,
    },
    /// An LZF back-reference pointing before the start of the output.
    #[error(
        "lzf: back-reference at offset {offset} reaches {distance} bytes back, only {produced} produced"
    )]
    BackReference {
        offset: usize,
        distance: usize,
        produced: usize,
    },
    /// The blob's content ends at `offset` (an end marker before the last byte,
    /// or an intset shorter than its buffer), leaving `count` bytes unaccounted for.
    #[error("{format}: content ends at offset {offset}, {count} bytes before the end of the blob")]
    TrailingBytes {
        format: Format,
        offset: usize,
        count: usize,
    },
    /// An intset member not strictly greater than the one before it.
    #[error("intset: member {value} at offset {offset} does not follow {previous} in order")]
    Unsorted {
        offset: usize,
        previous: i64,
        value: i64,
    },
    /// A string element that is not a floating-point number as Redis reads one.
    /// An [`Element`] does not know where it sat, so this variant has no offset.
    #[error("score {text:?} is not a number")]
    InvalidScore { text: String },
}

impl EncodingError {
    /// The offset into the decoded blob where the problem is, if the error has one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            EncodingError::Truncated { offset, .. }
            | EncodingError::Mismatch { offset, .. }
            | EncodingError::Invalid { offset, .. }
            | EncodingError::OutOfRange { offset, .. }
            | EncodingError::BackReference { offset, .. }
            | EncodingError::TrailingBytes { offset, .. }
            | EncodingError::Unsorted { offset, .. } => Some(*offset),
            EncodingError::InvalidScore { .. } => None,
        }
    }
}

/// An element of a ziplist or listpack: either bytes or an integer (as Redis
/// stores them: a string that reads as an integer is stored as one).
#[derive(Debug, Clone, PartialEq)]
pub enum Element<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// Redis truncates a string score to this many bytes before `strtod`
/// (`zzlStrtod` copies into a 128-byte buffer with a terminating NUL).
const SCORE_MAX_TEXT: usize = 127;

/// The longest string `string2ll` will read (`LONG_STR_SIZE - 1`).
const INT_MAX_TEXT: usize = 20;

impl Element<'_> {
    /// The element as Redis would return it to a client: the bytes, or the
    /// integer in decimal.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Element::Bytes(b) => Bytes::copy_from_slice(b),
            Element::Int(i) => Bytes::from(i.to_string()),
        }
    }

    /// The element read as a sorted-set score, the way Redis reads a score out
    /// of a ziplist or listpack: an integer converts to the nearest double; a
    /// string is parsed as `strtod` would (decimal with optional exponent,
    /// `inf`, `+inf`, `-inf`, `infinity`, `nan`, any case), correctly rounded,
    /// after Redis's own truncation to 127 bytes. Anything else (empty, spaces,
    /// trailing garbage, hexadecimal floats) is an error: Redis never writes such
    /// a score, so one in a snapshot means corruption.
    pub fn to_f64(&self) -> Result<f64, EncodingError> {
        match self {
            // `as` rounds to nearest, ties to even: the C conversion Redis uses.
            Element::Int(i) => Ok(*i as f64),
            Element::Bytes(b) => {
                let text = b.get(..SCORE_MAX_TEXT).unwrap_or(b);
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| EncodingError::InvalidScore {
                        text: String::from_utf8_lossy(b.get(..64).unwrap_or(b)).into_owned(),
                    })
            }
        }
    }

    /// The element as a signed 64-bit integer, the way Redis's `string2ll`
    /// reads one: an integer element as is; a string only if it is the exact
    /// canonical decimal form (optional `-`, no `+`, no leading zeros, no
    /// spaces, in range). Stream nodes keep their counters and flags this way.
    pub fn to_i64(&self) -> Option<i64> {
        match self {
            Element::Int(i) => Some(*i),
            Element::Bytes(b) => parse_canonical_i64(b),
        }
    }
}

/// `string2ll`: strict canonical decimal.
fn parse_canonical_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > INT_MAX_TEXT {
        return None;
    }
    if b == b"0" {
        return Some(0);
    }
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

// ---------------------------------------------------------------------------
// Bounded reads shared by the decoders. Each returns `Truncated` instead of
// reading past the end, and does its arithmetic in u64 so that no length read
// from a blob can overflow.

/// `len` bytes at `offset`, or `Truncated`.
fn bytes_at<'a>(
    buf: &'a [u8],
    offset: usize,
    len: u64,
    format: Format,
    what: &'static str,
) -> Result<&'a [u8], EncodingError> {
    let available = buf.len().saturating_sub(offset);
    let truncated = || EncodingError::Truncated {
        format,
        what,
        offset,
        needed: len,
        available,
    };
    let len = usize::try_from(len).map_err(|_| truncated())?;
    let end = offset.checked_add(len).ok_or_else(truncated)?;
    buf.get(offset..end).ok_or_else(truncated)
}

/// `N` bytes at `offset` as an array, or `Truncated`.
fn array_at<const N: usize>(
    buf: &[u8],
    offset: usize,
    format: Format,
    what: &'static str,
) -> Result<[u8; N], EncodingError> {
    buf.get(offset..)
        .and_then(|rest| rest.first_chunk::<N>())
        .copied()
        .ok_or(EncodingError::Truncated {
            format,
            what,
            offset,
            needed: N as u64,
            available: buf.len().saturating_sub(offset),
        })
}

/// One byte at `offset`, or `Truncated`.
fn byte_at(
    buf: &[u8],
    offset: usize,
    format: Format,
    what: &'static str,
) -> Result<u8, EncodingError> {
    array_at::<1>(buf, offset, format, what).map(|[b]| b)
}

/// Little-endian two's-complement integer of 1..=8 bytes, sign-extended.
fn le_signed(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    for (slot, b) in buf.iter_mut().zip(bytes) {
        *slot = *b;
    }
    let raw = i64::from_le_bytes(buf);
    match bytes.len() {
        0 => 0,
        width @ 1..8 => {
            let unused_bits = 64 - 8 * width as u32;
            (raw << unused_bits) >> unused_bits
        }
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_bytes_renders_integers_in_decimal() {
        assert_eq!(Element::Int(0).to_bytes(), Bytes::from_static(b"0"));
        assert_eq!(Element::Int(-42).to_bytes(), Bytes::from_static(b"-42"));
        assert_eq!(
            Element::Int(i64::MIN).to_bytes(),
            Bytes::from_static(b"-9223372036854775808")
        );
        assert_eq!(
            Element::Bytes(b"x y").to_bytes(),
            Bytes::from_static(b"x y")
        );
    }

    #[test]
    fn to_f64_reads_what_redis_writes() {
        let f = |s: &'static [u8]| Element::Bytes(s).to_f64();
        assert_eq!(f(b"1.5"), Ok(1.5));
        assert_eq!(f(b"0.10000000000000001"), Ok(0.1));
        assert_eq!(f(b"1e+300"), Ok(1e300));
        assert_eq!(f(b"inf"), Ok(f64::INFINITY));
        assert_eq!(f(b"+inf"), Ok(f64::INFINITY));
        assert_eq!(f(b"-inf"), Ok(f64::NEG_INFINITY));
        assert_eq!(f(b"-Infinity"), Ok(f64::NEG_INFINITY));
        assert!(f(b"nan").is_ok_and(f64::is_nan));
        assert_eq!(f(b"-0").map(f64::to_bits), Ok((-0.0f64).to_bits()));
        for bad in [&b""[..], b" 1", b"1 ", b"1x", b"0x10", b"\xff", b"--1"] {
            assert!(
                matches!(
                    Element::Bytes(bad).to_f64(),
                    Err(EncodingError::InvalidScore { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(Element::Int(-3).to_f64(), Ok(-3.0));
        // 2^53 + 1 rounds to even, as C's conversion does.
        assert_eq!(Element::Int((1 << 53) + 1).to_f64(), Ok(9007199254740992.0));
        assert_eq!(Element::Int(i64::MAX).to_f64(), Ok(9223372036854775808.0));
    }

    #[test]
    fn to_f64_is_correctly_rounded() {
        // Halfway between two doubles, decided by a digit far past the 17th.
        let halfway = b"9007199254740993.0000000000000000000001";
        assert_eq!(Element::Bytes(halfway).to_f64(), Ok(9007199254740994.0));
        let below = b"9007199254740993";
        assert_eq!(Element::Bytes(below).to_f64(), Ok(9007199254740992.0));
    }

    #[test]
    fn to_f64_truncates_long_text_like_redis() {
        let mut text = vec![b'1'; SCORE_MAX_TEXT];
        text.extend_from_slice(b"garbage");
        let expected: f64 = std::str::from_utf8(&text[..SCORE_MAX_TEXT])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(Element::Bytes(&text).to_f64(), Ok(expected));
    }

    #[test]
    fn to_i64_is_string2ll() {
        let p = |s: &[u8]| Element::Bytes(s).to_i64();
        assert_eq!(p(b"0"), Some(0));
        assert_eq!(p(b"-1"), Some(-1));
        assert_eq!(p(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(p(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"+1",
            b"01",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"000000000000000000001",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(Element::Int(7).to_i64(), Some(7));
    }

    #[test]
    fn le_signed_sign_extends() {
        assert_eq!(le_signed(&[0xff]), -1);
        assert_eq!(le_signed(&[0x00, 0x00, 0x80]), -8_388_608);
        assert_eq!(le_signed(&[0xff, 0xff, 0x7f]), 8_388_607);
        assert_eq!(le_signed(&[0xff; 8]), -1);
        assert_eq!(le_signed(&[]), 0);
    }

    #[test]
    fn errors_name_their_offset() {
        let e = bytes_at(b"abc", 2, 5, Format::Ziplist, "entry").unwrap_err();
        assert_eq!(e.offset(), Some(2));
        assert_eq!(
            e.to_string(),
            "ziplist: entry at offset 2 needs 5 bytes, only 1 left"
        );
        assert!(bytes_at(b"abc", 4, 0, Format::Ziplist, "entry").is_err());
        assert!(bytes_at(b"abc", 1, u64::MAX, Format::Ziplist, "entry").is_err());
        assert_eq!(
            bytes_at(b"abc", 3, 0, Format::Ziplist, "entry"),
            Ok(&b""[..])
        );
    }
}
