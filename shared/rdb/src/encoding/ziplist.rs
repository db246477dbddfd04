//! Ziplists: the compact list that Redis before 7.0 used for small lists (and
//! quicklist nodes), hashes and sorted sets.
//!
//! Layout, all integers little-endian unless said otherwise:
//!
//! ```text
//! <zlbytes u32> <zltail u32> <zllen u16> <entry>... <0xFF>
//! entry = <prevlen> <encoding> <data>
//! prevlen  = 1 byte 0..=253, or 0xFE + u32: the previous entry's total size
//! encoding = 00pppppp                      string, 6-bit length
//!            01pppppp qqqqqqqq             string, 14-bit length (big-endian)
//!            10______ 4 bytes              string, 32-bit length (big-endian)
//!            0xC0 / 0xD0 / 0xE0            int16 / int32 / int64
//!            0xF0 / 0xFE                   int24 / int8
//!            0xF1..=0xFD                   immediate 0..=12 (low nibble - 1)
//! ```
//!
//! `zllen` is the entry count, or 65535 when the count did not fit and the
//! list must be walked. `zltail` is the offset of the last entry.

use super::{Element, EncodingError, Format, array_at, byte_at, bytes_at, le_signed};

const HEADER_SIZE: usize = 10;
const END: u8 = 0xFF;
const BIG_PREVLEN: u8 = 0xFE;
const COUNT_UNKNOWN: u16 = u16::MAX;
const F: Format = Format::Ziplist;

/// Decode every entry of the ziplist `zl`, checking the header, each entry's
/// prevlen and encoding, and the end marker as Redis's deep integrity check
/// does. The smallest entry is two bytes, so a blob cannot make this allocate
/// more than `zl.len() / 2` elements.
pub fn entries(zl: &[u8]) -> Result<Vec<Element<'_>>, EncodingError> {
    if zl.len() < HEADER_SIZE + 1 {
        return Err(EncodingError::Truncated {
            format: F,
            what: "header",
            offset: 0,
            needed: (HEADER_SIZE + 1) as u64,
            available: zl.len(),
        });
    }
    let zlbytes = u32::from_le_bytes(array_at(zl, 0, F, "zlbytes")?);
    if u64::from(zlbytes) != zl.len() as u64 {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "zlbytes",
            offset: 0,
            expected: zl.len() as u64,
            found: u64::from(zlbytes),
        });
    }
    let end = zl.len() - 1;
    let zltail = u32::from_le_bytes(array_at(zl, 4, F, "zltail")?);
    if u64::from(zltail) > end as u64 {
        return Err(EncodingError::OutOfRange {
            format: F,
            what: "zltail",
            offset: 4,
            value: u64::from(zltail),
            limit: end as u64,
        });
    }
    let zllen = u16::from_le_bytes(array_at(zl, 8, F, "zllen")?);
    let last = byte_at(zl, end, F, "end marker")?;
    if last != END {
        return Err(EncodingError::Invalid {
            format: F,
            what: "end marker",
            offset: end,
            value: u64::from(last),
        });
    }

    // Entries live in `body`: no entry may run into the end marker.
    let body = zl.get(..end).unwrap_or_default();
    let mut out = Vec::with_capacity(usize::from(zllen).min(end.saturating_sub(HEADER_SIZE) / 2));
    let mut p = HEADER_SIZE;
    let mut prev_size: u64 = 0;
    let mut last_entry = None;
    while byte_at(zl, p, F, "entry")? != END {
        let (element, size) = entry(body, p, prev_size)?;
        out.push(element);
        last_entry = Some(p);
        prev_size = size as u64;
        p += size;
    }
    if p != end {
        return Err(EncodingError::TrailingBytes {
            format: F,
            offset: p,
            count: end - p,
        });
    }
    if let Some(tail) = last_entry
        && tail as u64 != u64::from(zltail)
    {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "zltail",
            offset: 4,
            expected: tail as u64,
            found: u64::from(zltail),
        });
    }
    if zllen != COUNT_UNKNOWN && usize::from(zllen) != out.len() {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "zllen",
            offset: 8,
            expected: out.len() as u64,
            found: u64::from(zllen),
        });
    }
    Ok(out)
}

/// Decode the entry at `p`, whose predecessor was `prev_size` bytes long
/// (0 for the first). Returns the element and the entry's total size.
fn entry(body: &[u8], p: usize, prev_size: u64) -> Result<(Element<'_>, usize), EncodingError> {
    let first = byte_at(body, p, F, "prevlen")?;
    let (prevlen, prevlen_size) = if first < BIG_PREVLEN {
        (u64::from(first), 1)
    } else {
        // 0xFF here is the end marker, which the caller has ruled out.
        let raw = array_at::<4>(body, p + 1, F, "prevlen")?;
        (u64::from(u32::from_le_bytes(raw)), 5)
    };
    if prevlen != prev_size {
        return Err(EncodingError::Mismatch {
            format: F,
            what: "prevlen",
            offset: p,
            expected: prev_size,
            found: prevlen,
        });
    }

    let enc_at = p + prevlen_size;
    let enc = byte_at(body, enc_at, F, "entry encoding")?;
    let data_at = |header: usize| enc_at + header;
    let (element, header, data_len) = match enc >> 6 {
        0b00 => {
            let len = usize::from(enc & 0x3f);
            let s = bytes_at(body, data_at(1), len as u64, F, "string")?;
            (Element::Bytes(s), 1, len)
        }
        0b01 => {
            let lo = byte_at(body, enc_at + 1, F, "string length")?;
            let len = usize::from(enc & 0x3f) << 8 | usize::from(lo);
            let s = bytes_at(body, data_at(2), len as u64, F, "string")?;
            (Element::Bytes(s), 2, len)
        }
        0b10 => {
            let len = u32::from_be_bytes(array_at(body, enc_at + 1, F, "string length")?);
            let s = bytes_at(body, data_at(5), u64::from(len), F, "string")?;
            (Element::Bytes(s), 5, s.len())
        }
        _ => {
            let width = match enc {
                0xFE => 1,
                0xC0 => 2,
                0xF0 => 3,
                0xD0 => 4,
                0xE0 => 8,
                0xF1..=0xFD => 0,
                _ => {
                    return Err(EncodingError::Invalid {
                        format: F,
                        what: "entry encoding",
                        offset: enc_at,
                        value: u64::from(enc),
                    });
                }
            };
            let value = if width == 0 {
                i64::from(enc & 0x0f) - 1
            } else {
                le_signed(bytes_at(body, data_at(1), width as u64, F, "integer")?)
            };
            (Element::Int(value), 1, width)
        }
    };
    Ok((element, prevlen_size + header + data_len))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Item, ziplist, ziplist_with};
    use super::*;

    fn decode(items: &[Item]) -> Vec<Item> {
        entries(&ziplist(items))
            .unwrap()
            .into_iter()
            .map(|e| match e {
                Element::Bytes(b) => Item::Str(b.to_vec()),
                Element::Int(i) => Item::Int(i),
            })
            .collect()
    }

    fn every_encoding() -> Vec<Item> {
        let mut items: Vec<Item> = (0..=12).map(Item::Int).collect();
        for v in [
            -1,
            13,
            -128,
            127,
            128,
            -129,
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
        for len in [0, 1, 63, 64, 300, 16383, 16384, 70000] {
            items.push(Item::Str((0..len).map(|i| (i % 251) as u8).collect()));
        }
        items
    }

    #[test]
    fn redis_doc_example() {
        // The two-element example from the ziplist.c header comment: "2", "5".
        let zl = [
            0x0f, 0, 0, 0, 0x0c, 0, 0, 0, 0x02, 0, 0x00, 0xf3, 0x02, 0xf6, 0xff,
        ];
        assert_eq!(
            entries(&zl).unwrap(),
            vec![Element::Int(2), Element::Int(5)]
        );
    }

    #[test]
    fn every_encoding_round_trips() {
        let items = every_encoding();
        assert_eq!(decode(&items), items);
        assert_eq!(decode(&[]), vec![]);
    }

    #[test]
    fn encodings_are_the_ones_redis_writes() {
        let zl = ziplist(&every_encoding());
        let body = &zl[..zl.len() - 1];
        let mut encodings = std::collections::BTreeSet::new();
        let (mut p, mut prev) = (HEADER_SIZE, 0);
        while zl[p] != END {
            let prevlen_size = if zl[p] < BIG_PREVLEN { 1 } else { 5 };
            let enc = zl[p + prevlen_size];
            encodings.insert(if enc < 0xc0 { enc & 0xc0 } else { enc });
            let (_, size) = entry(body, p, prev).unwrap();
            prev = size as u64;
            p += size;
        }
        let mut expected: std::collections::BTreeSet<u8> = (0xf1..=0xfd).collect();
        expected.extend([0x00, 0x40, 0x80, 0xc0, 0xd0, 0xe0, 0xf0, 0xfe]);
        assert_eq!(encodings, expected);
    }

    #[test]
    fn big_prevlen_for_a_small_entry_is_accepted() {
        // Redis's cascade update may leave a 5-byte prevlen holding a small length.
        let items = [Item::Str(b"ab".to_vec()), Item::Int(7)];
        let zl = ziplist_with(&items, true, None);
        assert_eq!(zl[HEADER_SIZE], 0xfe);
        assert_eq!(
            entries(&zl).unwrap(),
            vec![Element::Bytes(b"ab"), Element::Int(7)]
        );
    }

    #[test]
    fn unknown_count_is_walked() {
        let items = vec![Item::Int(1); 3];
        let zl = ziplist_with(&items, false, Some(u16::MAX));
        assert_eq!(entries(&zl).unwrap().len(), 3);
    }

    #[test]
    fn every_prefix_fails() {
        let zl = ziplist(&every_encoding()[..30]);
        for cut in 0..zl.len() {
            assert!(entries(&zl[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn zlbytes_mismatch() {
        let mut zl = ziplist(&[Item::Int(1)]);
        zl[0] += 1;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Mismatch {
                what: "zlbytes",
                offset: 0,
                ..
            })
        ));
        // A correct header over a buffer with extra bytes is a mismatch too.
        let mut zl = ziplist(&[Item::Int(1)]);
        zl.push(0xff);
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Mismatch {
                what: "zlbytes",
                ..
            })
        ));
    }

    #[test]
    fn lying_string_length() {
        // A 32-bit string length of 4 GiB in a 20-byte blob.
        let mut zl = ziplist(&[Item::Str(b"hello".to_vec())]);
        let enc_at = HEADER_SIZE + 1;
        zl[enc_at] = 0x80;
        zl.splice(enc_at + 1..enc_at + 1, [0xff, 0xff, 0xff, 0xff]);
        let len = zl.len() as u32;
        zl[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Truncated {
                what: "string",
                needed: 0xffff_ffff,
                ..
            })
        ));
        // A 6-bit length that reaches exactly onto the end marker.
        let mut zl = ziplist(&[Item::Str(b"hello".to_vec())]);
        zl[enc_at] = 6;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Truncated { offset: 12, .. })
        ));
    }

    #[test]
    fn bad_prevlen() {
        let mut zl = ziplist(&[Item::Int(1), Item::Int(2)]);
        zl[HEADER_SIZE + 2] = 3;
        assert_eq!(
            entries(&zl),
            Err(EncodingError::Mismatch {
                format: F,
                what: "prevlen",
                offset: HEADER_SIZE + 2,
                expected: 2,
                found: 3
            })
        );
        let mut zl = ziplist(&[Item::Int(1)]);
        zl[HEADER_SIZE] = 1;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Mismatch {
                what: "prevlen",
                ..
            })
        ));
    }

    #[test]
    fn bad_encodings() {
        for enc in [0xc1, 0xcf, 0xd5, 0xe1, 0xf0 - 1, 0xff] {
            let mut zl = ziplist(&[Item::Int(100)]);
            zl[HEADER_SIZE + 1] = enc;
            assert!(
                matches!(
                    entries(&zl),
                    Err(EncodingError::Invalid {
                        what: "entry encoding",
                        offset: 11,
                        ..
                    })
                ),
                "{enc:#x}"
            );
        }
    }

    #[test]
    fn header_checks() {
        let mut zl = ziplist(&[Item::Int(1), Item::Int(2)]);
        zl[8] = 3;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Mismatch { what: "zllen", .. })
        ));

        let mut zl = ziplist(&[Item::Int(1), Item::Int(2)]);
        zl[4] = 10;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Mismatch { what: "zltail", .. })
        ));
        zl[4] = 200;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::OutOfRange { what: "zltail", .. })
        ));

        let mut zl = ziplist(&[Item::Int(1)]);
        *zl.last_mut().unwrap() = 0;
        assert!(matches!(
            entries(&zl),
            Err(EncodingError::Invalid {
                what: "end marker",
                ..
            })
        ));
    }

    #[test]
    fn early_end_marker() {
        let mut zl = ziplist(&[Item::Int(1), Item::Int(2)]);
        zl[HEADER_SIZE + 2] = 0xff;
        assert_eq!(
            entries(&zl),
            Err(EncodingError::TrailingBytes {
                format: F,
                offset: 12,
                count: 2
            })
        );
    }
}
