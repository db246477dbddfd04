//! LZF decompression, for strings an RDB stores compressed (`RDB_ENC_LZF`).
//!
//! The stream is a sequence of runs, each introduced by a control byte `c`:
//!
//! * `c < 0x20`: a literal run; the next `c + 1` input bytes are copied out.
//! * otherwise a back-reference: `len = c >> 5`, and if `len == 7` the next
//!   byte is added to it; then one more byte `lo`; the distance back from the
//!   current end of the output is `((c & 0x1f) << 8 | lo) + 1`, and `len + 2`
//!   bytes are copied from there, one at a time (a reference may overlap the
//!   bytes it produces, which is how LZF encodes runs).

use super::{EncodingError, Format};

/// The most output bytes one input byte can produce: a 3-byte back-reference
/// copies at most `7 + 255 + 2 = 264` bytes.
const MAX_EXPANSION: u64 = 88;

/// Decompress `input`, which must produce exactly `expected_len` bytes.
///
/// `expected_len` comes from the snapshot and is not trusted: it must not exceed
/// `max_len` (the caller's limit on one value), nor what `input` could possibly
/// expand to, before anything is allocated. Errors if the output would be longer
/// or shorter than `expected_len`, if the input ends inside a run, or if a
/// back-reference points before the start of the output.
pub fn decompress(
    input: &[u8],
    expected_len: usize,
    max_len: usize,
) -> Result<Vec<u8>, EncodingError> {
    if expected_len > max_len {
        return Err(EncodingError::OutOfRange {
            format: Format::Lzf,
            what: "uncompressed length",
            offset: 0,
            value: expected_len as u64,
            limit: max_len as u64,
        });
    }
    let possible = (input.len() as u64).saturating_mul(MAX_EXPANSION);
    if expected_len as u64 > possible {
        return Err(EncodingError::OutOfRange {
            format: Format::Lzf,
            what: "uncompressed length",
            offset: 0,
            value: expected_len as u64,
            limit: possible,
        });
    }

    let mut out: Vec<u8> = Vec::with_capacity(expected_len);
    let mut ip = 0usize;
    while let Some(&ctrl) = input.get(ip) {
        let run_start = ip;
        ip += 1;
        if ctrl < 0x20 {
            let len = usize::from(ctrl) + 1;
            check_room(&out, len, expected_len, run_start)?;
            let literal = super::bytes_at(input, ip, len as u64, Format::Lzf, "literal run")?;
            out.extend_from_slice(literal);
            ip += len;
        } else {
            let mut len = usize::from(ctrl >> 5);
            if len == 7 {
                len += usize::from(super::byte_at(
                    input,
                    ip,
                    Format::Lzf,
                    "back-reference length",
                )?);
                ip += 1;
            }
            let lo = super::byte_at(input, ip, Format::Lzf, "back-reference offset")?;
            ip += 1;
            let distance = (usize::from(ctrl & 0x1f) << 8 | usize::from(lo)) + 1;
            let len = len + 2;
            check_room(&out, len, expected_len, run_start)?;
            let Some(from) = out.len().checked_sub(distance) else {
                return Err(EncodingError::BackReference {
                    offset: run_start,
                    distance,
                    produced: out.len(),
                });
            };
            if from + len <= out.len() {
                out.extend_from_within(from..from + len);
            } else {
                // Overlapping: each byte copied may be one this reference wrote.
                for i in from..from + len {
                    let b = out.get(i).copied().unwrap_or_default();
                    out.push(b);
                }
            }
        }
    }
    if out.len() != expected_len {
        return Err(EncodingError::Mismatch {
            format: Format::Lzf,
            what: "uncompressed length",
            offset: input.len(),
            expected: expected_len as u64,
            found: out.len() as u64,
        });
    }
    Ok(out)
}

/// A run of `len` bytes must fit in what is left of `expected_len`.
fn check_room(
    out: &[u8],
    len: usize,
    expected_len: usize,
    offset: usize,
) -> Result<(), EncodingError> {
    let total = out.len() + len;
    if total > expected_len {
        return Err(EncodingError::Mismatch {
            format: Format::Lzf,
            what: "uncompressed length",
            offset,
            expected: expected_len as u64,
            found: total as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::lzf_compress;
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn literal_run() {
        assert_eq!(decompress(b"\x02abc", 3, MAX).unwrap(), b"abc");
        let mut long = vec![0x1f];
        long.extend(0..32u8);
        assert_eq!(
            decompress(&long, 32, MAX).unwrap(),
            (0..32u8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn short_back_reference() {
        // "abc", then copy 3 bytes from 3 back.
        assert_eq!(decompress(b"\x02abc\x20\x02", 6, MAX).unwrap(), b"abcabc");
        // len field 6 -> 8 bytes, distance ((1 << 8) | 0) + 1 = 257.
        let mut input = vec![0x1f];
        input.extend(std::iter::repeat_n(b'x', 32));
        let mut expected = vec![b'x'; 32];
        for _ in 0..8 {
            input.extend([0x1f]);
            input.extend((0..32u8).map(|i| i.wrapping_mul(7)));
            expected.extend((0..32u8).map(|i| i.wrapping_mul(7)));
        }
        input.extend([0xc1, 0x00]);
        let start = expected.len() - 257;
        let copied = expected[start..start + 8].to_vec();
        expected.extend(copied);
        assert_eq!(decompress(&input, expected.len(), MAX).unwrap(), expected);
    }

    #[test]
    fn long_back_reference_overlapping() {
        // "a", then len 7 + 200 + 2 = 209 bytes from 1 back: a run of 210 'a'.
        let out = decompress(b"\x00a\xe0\xc8\x00", 210, MAX).unwrap();
        assert_eq!(out, vec![b'a'; 210]);
        // "ab", then 7 + 2 bytes from 2 back: "ababababab" + "a".
        let out = decompress(b"\x01ab\xe0\x00\x01", 11, MAX).unwrap();
        assert_eq!(out, b"abababababa");
    }

    #[test]
    fn empty() {
        assert_eq!(decompress(b"", 0, MAX).unwrap(), b"");
        assert!(decompress(b"", 1, MAX).is_err());
    }

    #[test]
    fn back_reference_before_start() {
        assert_eq!(
            decompress(b"\x02abc\x20\x03", 6, MAX),
            Err(EncodingError::BackReference {
                offset: 4,
                distance: 4,
                produced: 3
            })
        );
        assert!(matches!(
            decompress(b"\x20\x00", 3, MAX),
            Err(EncodingError::BackReference { offset: 0, .. })
        ));
    }

    #[test]
    fn output_length_must_match() {
        // Too short a claim: the run would overflow it.
        assert!(matches!(
            decompress(b"\x02abc\x20\x02", 5, MAX),
            Err(EncodingError::Mismatch {
                offset: 4,
                found: 6,
                ..
            })
        ));
        // Too long a claim: the input ends first.
        assert!(matches!(
            decompress(b"\x02abc\x20\x02", 7, MAX),
            Err(EncodingError::Mismatch {
                offset: 6,
                found: 6,
                ..
            })
        ));
    }

    #[test]
    fn lengths_that_lie_are_refused_before_allocating() {
        assert!(matches!(
            decompress(b"\x02abc", usize::MAX, usize::MAX),
            Err(EncodingError::OutOfRange { limit: 352, .. })
        ));
        assert!(matches!(
            decompress(b"\x02abc", 3, 2),
            Err(EncodingError::OutOfRange { limit: 2, .. })
        ));
    }

    #[test]
    fn truncated_runs() {
        assert!(matches!(
            decompress(b"\x05abc", 6, MAX),
            Err(EncodingError::Truncated {
                offset: 1,
                needed: 6,
                available: 3,
                ..
            })
        ));
        assert!(matches!(
            decompress(b"\x00a\xe0", 10, MAX),
            Err(EncodingError::Truncated { offset: 3, .. })
        ));
        assert!(matches!(
            decompress(b"\x00a\xe0\x01", 10, MAX),
            Err(EncodingError::Truncated { offset: 4, .. })
        ));
    }

    #[test]
    fn round_trip_with_test_compressor() {
        let mut data = Vec::new();
        for i in 0..5000u32 {
            data.extend_from_slice(format!("key:{} ", i % 97).as_bytes());
            if i % 13 == 0 {
                data.extend(std::iter::repeat_n((i % 251) as u8, (i % 300) as usize));
            }
        }
        let packed = lzf_compress(&data);
        assert!(
            packed.len() < data.len() / 2,
            "the compressor should find matches"
        );
        assert_eq!(decompress(&packed, data.len(), MAX).unwrap(), data);
    }

    #[test]
    fn every_prefix_of_a_stream_fails_cleanly() {
        let data: Vec<u8> =
            b"abcabcabcabcabcabcxyzxyzxyzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .to_vec();
        let packed = lzf_compress(&data);
        for cut in 0..packed.len() {
            assert!(
                decompress(&packed[..cut], data.len(), MAX).is_err(),
                "prefix {cut}"
            );
        }
        assert_eq!(decompress(&packed, data.len(), MAX).unwrap(), data);
    }
}
