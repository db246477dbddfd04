//! Listpacks: the compact list that replaced the ziplist in Redis 7.0 (small
//! lists, hashes, sorted sets, quicklist nodes), and that every stream node has
//! used since streams appeared in 5.0.
//!
//! Layout:
//!
//! ```text
//! <total bytes u32 LE> <num elements u16 LE> <entry>... <0xFF>
//! entry = <encoding+data> <backlen>
//! encoding = 0xxxxxxx                        7-bit unsigned int
//!            10pppppp <data>                 string, 6-bit length
//!            110xxxxx yyyyyyyy               13-bit signed int (big-endian)
//!            1110pppp qqqqqqqq <data>        string, 12-bit length (big-endian)
//!            0xF0 <u32 LE> <data>            string, 32-bit length
//!            0xF1 / F2 / F3 / F4 <LE bytes>  int16 / int24 / int32 / int64
//! backlen  = size of <encoding+data>, 1..=5 bytes, 7 bits each, written so
//!            that it reads backwards: the last byte has the low 7 bits, every
//!            byte but the first has its high bit set
//! ```
//!
//! `num elements` is 65535 when the count did not fit.

use super::{Element, EncodingError, Format, array_at, byte_at, bytes_at, le_signed};

const HEADER_SIZE: usize = 6;
const END: u8 = 0xFF;
const COUNT_UNKNOWN: u16 = u16::MAX;
const F: Format = Format::Listpack;

/// Decode every element of the listpack `lp`, checking the header, each
/// entry's encoding and backlen, and the end marker as Redis's deep integrity
/// check does. The smallest entry is two bytes, so a blob cannot make this
/// allocate more than `lp.len() / 2` elements.
///
/// Stream nodes are listpacks too: their master entry, flags, ID deltas and
/// field counts come back as [`Element::Int`] and their fields and values as
/// whatever Redis chose for them; [`Element::to_i64`] reads either form.
pub fn entries(lp: &[u8]) -> Result<Vec<Element<'_>>, EncodingError> {
    if lp.len() < HEADER_SIZE + 1 {
        return Err(EncodingError::Truncated {
            format: F,
            what: "header",
            offset: 0,
            needed: (HEADER_SIZE + 1) as u64,
            available: lp.len(),
        });
    }
    let total = u32::from_le_bytes(array_at(lp, 0, F, "total bytes")?);
    if u64::from(total) != lp.len() as u64 {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "total bytes",
            offset: 0,
            expected: lp.len() as u64,
            found: u64::from(total),
        });
    }
    let num_elements = u16::from_le_bytes(array_at(lp, 4, F, "num elements")?);
    let end = lp.len() - 1;
    let last = byte_at(lp, end, F, "end marker")?;
    if last != END {
        return Err(EncodingError::Invalid {
            format: F,
            what: "end marker",
            offset: end,
            value: u64::from(last),
        });
    }

    // Entries live in `body`: no entry may run into the end marker.
    let body = lp.get(..end).unwrap_or_default();
    let mut out =
        Vec::with_capacity(usize::from(num_elements).min(end.saturating_sub(HEADER_SIZE) / 2));
    let mut p = HEADER_SIZE;
    while byte_at(lp, p, F, "entry")? != END {
        let (element, size) = entry(body, p)?;
        out.push(element);
        p += size;
    }
    if p != end {
        return Err(EncodingError::TrailingBytes {
            format: F,
            offset: p,
            count: end - p,
        });
    }
    if num_elements != COUNT_UNKNOWN && usize::from(num_elements) != out.len() {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "num elements",
            offset: 4,
            expected: out.len() as u64,
            found: u64::from(num_elements),
        });
    }
    Ok(out)
}

/// Decode the entry at `p`. Returns the element and the entry's total size,
/// backlen included.
fn entry(body: &[u8], p: usize) -> Result<(Element<'_>, usize), EncodingError> {
    let enc = byte_at(body, p, F, "entry encoding")?;
    let string = |header: usize, len: u64| -> Result<(Element<'_>, usize), EncodingError> {
        let s = bytes_at(body, p + header, len, F, "string")?;
        Ok((Element::Bytes(s), header + s.len()))
    };
    let int = |width: usize| -> Result<(Element<'_>, usize), EncodingError> {
        let bytes = bytes_at(body, p + 1, width as u64, F, "integer")?;
        Ok((Element::Int(le_signed(bytes)), 1 + width))
    };
    let (element, encoded_size) = match enc {
        0x00..=0x7f => (Element::Int(i64::from(enc)), 1),
        0x80..=0xbf => string(1, u64::from(enc & 0x3f))?,
        0xc0..=0xdf => {
            let lo = byte_at(body, p + 1, F, "integer")?;
            let raw = i64::from(enc & 0x1f) << 8 | i64::from(lo);
            // 13-bit two's complement.
            let value = if raw >= 1 << 12 { raw - (1 << 13) } else { raw };
            (Element::Int(value), 2)
        }
        0xe0..=0xef => {
            let lo = byte_at(body, p + 1, F, "string length")?;
            string(2, u64::from(enc & 0x0f) << 8 | u64::from(lo))?
        }
        0xf0 => {
            let len = u32::from_le_bytes(array_at(body, p + 1, F, "string length")?);
            string(5, u64::from(len))?
        }
        0xf1 => int(2)?,
        0xf2 => int(3)?,
        0xf3 => int(4)?,
        0xf4 => int(8)?,
        _ => {
            return Err(EncodingError::Invalid {
                format: F,
                what: "entry encoding",
                offset: p,
                value: u64::from(enc),
            });
        }
    };

    let backlen_at = p + encoded_size;
    let (expected, size) = encode_backlen(encoded_size as u64);
    let stored = bytes_at(body, backlen_at, size as u64, F, "backlen")?;
    if stored != expected.get(..size).unwrap_or_default() {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "backlen",
            offset: backlen_at,
            expected: encoded_size as u64,
            found: decode_backlen(stored),
        });
    }
    Ok((element, encoded_size + size))
}

/// The backlen Redis writes for an entry of `len` bytes (`lpEncodeBacklen`,
/// same thresholds), and how many bytes of the array it uses.
fn encode_backlen(len: u64) -> ([u8; 5], usize) {
    let size = if len <= 127 {
        1
    } else if len < 16383 {
        2
    } else if len < 2_097_151 {
        3
    } else if len < 268_435_455 {
        4
    } else {
        5
    };
    let mut buf = [0u8; 5];
    for (i, slot) in buf.iter_mut().take(size).enumerate() {
        let shift = 7 * (size - 1 - i);
        let bits = ((len >> shift) & 0x7f) as u8;
        *slot = if i == 0 { bits } else { bits | 0x80 };
    }
    (buf, size)
}

/// Read a backlen the way Redis does, from its last byte backwards, staying
/// within `stored`. Only used to report what a bad backlen says.
fn decode_backlen(stored: &[u8]) -> u64 {
    let mut value = 0u64;
    for (i, &b) in stored.iter().rev().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Item, listpack, listpack_with};
    use super::*;

    fn items_of(lp: &[u8]) -> Vec<Item> {
        entries(lp)
            .unwrap()
            .into_iter()
            .map(|e| match e {
                Element::Bytes(b) => Item::Str(b.to_vec()),
                Element::Int(i) => Item::Int(i),
            })
            .collect()
    }

    fn every_encoding() -> Vec<Item> {
        let mut items = Vec::new();
        for v in [
            0,
            1,
            127,
            128,
            -1,
            -4096,
            4095,
            4096,
            -4097,
            i16::MIN.into(),
            i16::MAX.into(),
            32768,
            -8_388_608,
            8_388_607,
            8_388_608,
            i32::MIN.into(),
            i32::MAX.into(),
            1 << 31,
            i64::MIN,
            i64::MAX,
        ] {
            items.push(Item::Int(v));
        }
        // Lengths chosen around every string-encoding and backlen boundary.
        for len in [
            0, 1, 63, 64, 125, 126, 127, 4095, 4096, 16377, 16378, 16379, 70000,
        ] {
            items.push(Item::Str((0..len).map(|i| (i % 251) as u8).collect()));
        }
        items
    }

    #[test]
    fn every_encoding_round_trips() {
        let items = every_encoding();
        assert_eq!(items_of(&listpack(&items)), items);
        assert_eq!(items_of(&listpack(&[])), vec![]);
    }

    #[test]
    fn encodings_are_the_ones_redis_writes() {
        let lp = listpack(&every_encoding());
        let body = &lp[..lp.len() - 1];
        let mut seen = std::collections::BTreeSet::new();
        let mut p = HEADER_SIZE;
        while lp[p] != END {
            let enc = lp[p];
            seen.insert(match enc {
                0x00..=0x7f => 0x00,
                0x80..=0xbf => 0x80,
                0xc0..=0xdf => 0xc0,
                0xe0..=0xef => 0xe0,
                other => other,
            });
            p += entry(body, p).unwrap().1;
        }
        let expected = [0x00, 0x80, 0xc0, 0xe0, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4].into();
        assert_eq!(seen, expected);
    }

    #[test]
    fn backlen_matches_redis_thresholds() {
        assert_eq!(encode_backlen(0), ([0, 0, 0, 0, 0], 1));
        assert_eq!(encode_backlen(127), ([127, 0, 0, 0, 0], 1));
        assert_eq!(encode_backlen(128), ([1, 0x80, 0, 0, 0], 2));
        assert_eq!(encode_backlen(16382), ([127, 0xfe, 0, 0, 0], 2));
        // 16383 takes three bytes in Redis (a `<`, not a `<=`).
        assert_eq!(encode_backlen(16383), ([0, 0xff, 0xff, 0, 0], 3));
        assert_eq!(encode_backlen(268_435_455).1, 5);
        for len in [
            0,
            1,
            127,
            128,
            300,
            16382,
            16383,
            2_097_150,
            2_097_151,
            1 << 32,
        ] {
            let (buf, size) = encode_backlen(len);
            assert_eq!(decode_backlen(&buf[..size]), len, "{len}");
        }
    }

    #[test]
    fn stream_master_entry_shape() {
        // A stream node's master entry: count, deleted, master field count,
        // fields, then the 0 terminator; then an entry with SAMEFIELDS flags.
        let items = [
            Item::Int(1),
            Item::Int(0),
            Item::Int(2),
            Item::Str(b"f".to_vec()),
            Item::Str(b"n".to_vec()),
            Item::Int(0),
            Item::Int(2),
            Item::Int(0),
            Item::Int(1),
            Item::Str(b"v".to_vec()),
            Item::Int(1),
            Item::Int(4),
        ];
        let lp = listpack(&items);
        let elems = entries(&lp).unwrap();
        assert_eq!(elems[3], Element::Bytes(b"f"));
        assert_eq!(elems.iter().filter_map(Element::to_i64).count(), 9);
    }

    #[test]
    fn unknown_count_is_walked() {
        let items = vec![Item::Int(5); 4];
        let lp = listpack_with(&items, Some(u16::MAX));
        assert_eq!(entries(&lp).unwrap().len(), 4);
    }

    #[test]
    fn every_prefix_fails() {
        let lp = listpack(&every_encoding()[..28]);
        for cut in 0..lp.len() {
            assert!(entries(&lp[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn header_checks() {
        let mut lp = listpack(&[Item::Int(1)]);
        lp[0] += 1;
        assert!(matches!(
            entries(&lp),
            Err(EncodingError::Mismatch {
                what: "total bytes",
                ..
            })
        ));

        let mut lp = listpack(&[Item::Int(1)]);
        lp[4] = 2;
        assert_eq!(
            entries(&lp),
            Err(EncodingError::Mismatch {
                format: F,
                what: "num elements",
                offset: 4,
                expected: 1,
                found: 2
            })
        );

        let mut lp = listpack(&[Item::Int(1)]);
        *lp.last_mut().unwrap() = 0x7f;
        assert!(matches!(
            entries(&lp),
            Err(EncodingError::Invalid {
                what: "end marker",
                ..
            })
        ));
    }

    #[test]
    fn bad_backlen() {
        let mut lp = listpack(&[Item::Str(b"abc".to_vec()), Item::Int(9)]);
        // entry "abc" is 0x83 'a' 'b' 'c' <backlen 4>
        assert_eq!(lp[HEADER_SIZE + 4], 4);
        lp[HEADER_SIZE + 4] = 5;
        assert_eq!(
            entries(&lp),
            Err(EncodingError::Mismatch {
                format: F,
                what: "backlen",
                offset: HEADER_SIZE + 4,
                expected: 4,
                found: 5
            })
        );
        // A non-canonical two-byte spelling of a one-byte backlen is refused.
        let mut lp = listpack(&[Item::Int(9)]);
        lp[HEADER_SIZE + 1] = 0x82;
        assert!(matches!(
            entries(&lp),
            Err(EncodingError::Mismatch {
                what: "backlen",
                ..
            })
        ));
    }

    #[test]
    fn bad_encodings() {
        for enc in 0xf5..=0xfe {
            let mut lp = listpack(&[Item::Int(1)]);
            lp[HEADER_SIZE] = enc;
            assert_eq!(
                entries(&lp),
                Err(EncodingError::Invalid {
                    format: F,
                    what: "entry encoding",
                    offset: HEADER_SIZE,
                    value: u64::from(enc)
                })
            );
        }
    }

    #[test]
    fn lying_string_lengths() {
        // A 32-bit string length of 4 GiB in a small blob.
        let mut lp = listpack(&[Item::Str(b"hello".to_vec())]);
        lp[HEADER_SIZE] = 0xf0;
        lp.splice(HEADER_SIZE + 1..HEADER_SIZE + 1, [0xff, 0xff, 0xff, 0xff]);
        let len = lp.len() as u32;
        lp[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            entries(&lp),
            Err(EncodingError::Truncated {
                what: "string",
                needed: 0xffff_ffff,
                ..
            })
        ));
        // A 6-bit length one too long: the backlen would be the end marker.
        let mut lp = listpack(&[Item::Str(b"hello".to_vec())]);
        lp[HEADER_SIZE] = 0x86;
        assert!(matches!(
            entries(&lp),
            Err(EncodingError::Truncated {
                what: "backlen",
                ..
            })
        ));
    }

    #[test]
    fn early_end_marker() {
        let mut lp = listpack(&[Item::Int(1), Item::Int(2)]);
        lp[HEADER_SIZE + 2] = 0xff;
        assert_eq!(
            entries(&lp),
            Err(EncodingError::TrailingBytes {
                format: F,
                offset: 8,
                count: 2
            })
        );
    }
}
