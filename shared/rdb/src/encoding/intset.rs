//! Intsets: small sets of integers, stored sorted.
//!
//! ```text
//! <encoding u32 LE: 2, 4 or 8> <length u32 LE> <length members, each `encoding` bytes, LE, signed, ascending>
//! ```

use super::{EncodingError, Format, array_at, bytes_at, le_signed};

const HEADER_SIZE: usize = 8;
const F: Format = Format::Intset;

/// Decode the members of the intset `is`, checking the width, that the length
/// accounts for every byte of the blob, and that the members are strictly
/// ascending (as Redis's deep integrity check does). An empty intset decodes to
/// an empty list; Redis drops a key whose intset is empty, and so should the
/// caller.
pub fn members(is: &[u8]) -> Result<Vec<i64>, EncodingError> {
    let encoding = u32::from_le_bytes(array_at(is, 0, F, "encoding")?);
    let width: usize = match encoding {
        2 => 2,
        4 => 4,
        8 => 8,
        other => {
            return Err(EncodingError::Invalid {
                format: F,
                what: "encoding",
                offset: 0,
                value: u64::from(other),
            });
        }
    };
    let length = u32::from_le_bytes(array_at(is, 4, F, "length")?);
    let size = u64::from(length) * width as u64;
    let data = bytes_at(is, HEADER_SIZE, size, F, "members")?;
    let end = HEADER_SIZE + data.len();
    if end != is.len() {
        return Err(EncodingError::TrailingBytes {
            format: F,
            offset: end,
            count: is.len() - end,
        });
    }

    let mut out: Vec<i64> = Vec::with_capacity(data.len() / width);
    for (i, chunk) in data.chunks_exact(width).enumerate() {
        let value = le_signed(chunk);
        if let Some(&previous) = out.last()
            && value <= previous
        {
            return Err(EncodingError::Unsorted {
                offset: HEADER_SIZE + i * width,
                previous,
                value,
            });
        }
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::intset;
    use super::*;

    #[test]
    fn every_width() {
        let v16 = [i64::from(i16::MIN), -1, 0, 1, i64::from(i16::MAX)];
        let v32 = [i64::from(i32::MIN), -70000, 5, 70000, i64::from(i32::MAX)];
        let v64 = [i64::MIN, -(1 << 40), 0, 1 << 40, i64::MAX];
        assert_eq!(members(&intset(2, &v16)).unwrap(), v16);
        assert_eq!(members(&intset(4, &v32)).unwrap(), v32);
        assert_eq!(members(&intset(8, &v64)).unwrap(), v64);
        assert_eq!(members(&intset(4, &[])).unwrap(), Vec::<i64>::new());
        // Narrow values in a wide encoding are fine (an intset never shrinks).
        assert_eq!(members(&intset(8, &[1, 2])).unwrap(), [1, 2]);
    }

    #[test]
    fn every_prefix_fails() {
        let is = intset(4, &[-3, 1, 100_000]);
        for cut in 0..is.len() {
            assert!(members(&is[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn bad_encoding() {
        let mut is = intset(2, &[1]);
        is[0] = 3;
        assert_eq!(
            members(&is),
            Err(EncodingError::Invalid {
                format: F,
                what: "encoding",
                offset: 0,
                value: 3
            })
        );
    }

    #[test]
    fn lying_length() {
        let mut is = intset(8, &[1, 2]);
        is[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            members(&is),
            Err(EncodingError::Truncated {
                format: F,
                what: "members",
                offset: 8,
                needed: u64::from(u32::MAX) * 8,
                available: 16
            })
        );
        let mut is = intset(2, &[1, 2, 3]);
        is[4] = 2;
        assert_eq!(
            members(&is),
            Err(EncodingError::TrailingBytes {
                format: F,
                offset: 12,
                count: 2
            })
        );
    }

    #[test]
    fn unsorted_or_duplicate() {
        let mut is = intset(2, &[1, 2, 3]);
        is[10] = 5;
        assert_eq!(
            members(&is),
            Err(EncodingError::Unsorted {
                offset: 12,
                previous: 5,
                value: 3
            })
        );
        let mut is = intset(2, &[1, 2]);
        is[10] = 1;
        assert!(matches!(members(&is), Err(EncodingError::Unsorted { .. })));
    }
}
