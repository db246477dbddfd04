//! Zipmaps: the small-hash encoding of Redis before 2.6 (RDB type 9).
//!
//! ```text
//! <zmlen u8> (<len> key <len> <free u8> value <free bytes>)... <0xFF>
//! len = 1 byte 0..=253, or 254 followed by a u32 LE
//! ```
//!
//! `zmlen` is the pair count while it is below 254; from 254 on it means
//! "unknown, walk the map".

use super::{EncodingError, Format, array_at, byte_at, bytes_at};

/// A field and its value, borrowed from the zipmap.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

const BIG_LEN: u8 = 254;
const END: u8 = 0xFF;
const F: Format = Format::Zipmap;

/// Decode the key/value pairs of the zipmap `zm`, skipping each value's free
/// bytes and checking lengths, the count and the end marker. An empty zipmap
/// decodes to an empty list; Redis drops a key whose zipmap is empty, and so
/// should the caller.
pub fn pairs(zm: &[u8]) -> Result<Vec<Pair<'_>>, EncodingError> {
    if zm.len() < 2 {
        return Err(EncodingError::Truncated {
            format: F,
            what: "header",
            offset: 0,
            needed: 2,
            available: zm.len(),
        });
    }
    let zmlen = byte_at(zm, 0, F, "zmlen")?;
    let end = zm.len() - 1;
    let last = byte_at(zm, end, F, "end marker")?;
    if last != END {
        return Err(EncodingError::Invalid {
            format: F,
            what: "end marker",
            offset: end,
            value: u64::from(last),
        });
    }

    // Pairs live in `body`: none may run into the end marker. The smallest pair
    // is three bytes.
    let body = zm.get(..end).unwrap_or_default();
    let mut out = Vec::with_capacity(usize::from(zmlen.min(BIG_LEN)).min(end / 3));
    let mut p = 1;
    while byte_at(zm, p, F, "key length")? != END {
        let (key, after_key) = string(body, p, "key")?;
        if byte_at(body, after_key, F, "value length")? == END {
            return Err(EncodingError::Invalid {
                format: F,
                what: "value length",
                offset: after_key,
                value: u64::from(END),
            });
        }
        let (len, free_at) = length(body, after_key, "value length")?;
        let free = byte_at(body, free_at, F, "free")?;
        let value = bytes_at(body, free_at + 1, len, F, "value")?;
        let free_space = free_at + 1 + value.len();
        bytes_at(body, free_space, u64::from(free), F, "free space")?;
        out.push((key, value));
        p = free_space + usize::from(free);
    }
    if p != end {
        return Err(EncodingError::TrailingBytes {
            format: F,
            offset: p,
            count: end - p,
        });
    }
    if zmlen < BIG_LEN && usize::from(zmlen) != out.len() {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "zmlen",
            offset: 0,
            expected: out.len() as u64,
            found: u64::from(zmlen),
        });
    }
    Ok(out)
}

/// The length field at `p`: the length and the offset just after the field.
fn length(body: &[u8], p: usize, what: &'static str) -> Result<(u64, usize), EncodingError> {
    let first = byte_at(body, p, F, what)?;
    if first < BIG_LEN {
        Ok((u64::from(first), p + 1))
    } else {
        let len = u32::from_le_bytes(array_at(body, p + 1, F, what)?);
        Ok((u64::from(len), p + 5))
    }
}

/// A length-prefixed string at `p`, and the offset just after it.
fn string<'a>(
    body: &'a [u8],
    p: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), EncodingError> {
    let (len, at) = length(body, p, "key length")?;
    let s = bytes_at(body, at, len, F, what)?;
    Ok((s, at + s.len()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::zipmap;
    use super::*;

    #[test]
    fn redis_doc_example() {
        // From the zipmap.c header comment: "foo" => "bar", "hello" => "world".
        let zm = b"\x02\x03foo\x03\x00bar\x05hello\x05\x00world\xff";
        assert_eq!(
            pairs(zm).unwrap(),
            vec![(&b"foo"[..], &b"bar"[..]), (&b"hello"[..], &b"world"[..])]
        );
    }

    #[test]
    fn every_encoding() {
        let long: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let edge: Vec<u8> = vec![b'e'; 253];
        let edge2: Vec<u8> = vec![b'f'; 254];
        let input: Vec<(&[u8], &[u8], u8)> = vec![
            (b"", b"", 0),
            (b"k", b"v", 3),
            (&long, b"short", 0),
            (b"big", &long, 1),
            (&edge, &edge2, 0),
            (&edge2, &edge, 4),
        ];
        let expected: Vec<(&[u8], &[u8])> = input.iter().map(|&(k, v, _)| (k, v)).collect();
        assert_eq!(pairs(&zipmap(&input, None)).unwrap(), expected);
        // zmlen 254 and 255: count unknown.
        assert_eq!(pairs(&zipmap(&input, Some(254))).unwrap(), expected);
        assert_eq!(pairs(&zipmap(&input, Some(255))).unwrap(), expected);
        assert_eq!(pairs(&zipmap(&[], None)).unwrap(), vec![]);
    }

    #[test]
    fn every_prefix_fails() {
        let long = vec![b'x'; 260];
        let zm = zipmap(&[(b"a", b"b", 2), (&long, b"c", 0), (b"d", &long, 1)], None);
        for cut in 0..zm.len() {
            assert!(pairs(&zm[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn count_mismatch() {
        let zm = zipmap(&[(b"a", b"b", 0)], Some(2));
        assert_eq!(
            pairs(&zm),
            Err(EncodingError::Mismatch {
                format: F,
                what: "zmlen",
                offset: 0,
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn lying_lengths() {
        // Key length 254 + u32::MAX.
        let zm = b"\x01\xfe\xff\xff\xff\xffab\x01\x00c\xff";
        assert!(matches!(
            pairs(zm),
            Err(EncodingError::Truncated {
                what: "key",
                offset: 6,
                ..
            })
        ));
        // Free bytes running into the end marker.
        let zm = b"\x01\x01a\x01\x02b\x00\xff";
        assert!(matches!(
            pairs(zm),
            Err(EncodingError::Truncated {
                what: "free space",
                offset: 6,
                ..
            })
        ));
        // A value length of 255.
        let zm = b"\x01\x01a\xff\x00b\xff";
        assert!(matches!(
            pairs(zm),
            Err(EncodingError::Invalid {
                what: "value length",
                offset: 3,
                ..
            })
        ));
    }

    #[test]
    fn end_marker() {
        assert!(matches!(
            pairs(b"\x00\x00"),
            Err(EncodingError::Invalid {
                what: "end marker",
                offset: 1,
                ..
            })
        ));
        assert!(matches!(
            pairs(b"\x00"),
            Err(EncodingError::Truncated { .. })
        ));
        assert_eq!(
            pairs(b"\x00\xff\xff"),
            Err(EncodingError::TrailingBytes {
                format: F,
                offset: 1,
                count: 1
            })
        );
    }
}
