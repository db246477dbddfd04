//! The CRC-64 Redis puts after an RDB's EOF opcode and at the end of every DUMP
//! payload: CRC-64/Jones, reflected, polynomial `0xad93d23594c935a9`, initial
//! value 0, no final xor; `crc64(0, b"123456789") == 0xe9c6d914c4b8d9ca`.
//! Redis stores it little-endian.
//!
//! Slice-by-8 over tables computed at compile time, since it runs over whole
//! snapshots.

/// The polynomial in the reflected (LSB-first) bit order the tables use.
const POLY_REFLECTED: u64 = 0xad93d23594c935a9u64.reverse_bits();

/// `TABLES[0][b]` is the CRC of the single byte `b`; `TABLES[k][b]` is the
/// same byte followed by `k` zero bytes, so eight table lookups advance the CRC
/// over eight bytes at once.
static TABLES: [[u64; 256]; 8] = make_tables();

const fn make_tables() -> [[u64; 256]; 8] {
    let mut tables = [[0u64; 256]; 8];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][n] = crc;
        n += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut n = 0;
        while n < 256 {
            let prev = tables[k - 1][n];
            tables[k][n] = tables[0][(prev & 0xff) as usize] ^ (prev >> 8);
            n += 1;
        }
        k += 1;
    }
    tables
}

/// Continue the CRC `crc` over `data`. Start with 0; the function is
/// incremental: `crc64(crc64(0, a), b) == crc64(0, a ++ b)`.
pub fn crc64(crc: u64, data: &[u8]) -> u64 {
    let [t0, t1, t2, t3, t4, t5, t6, t7] = &TABLES;
    let mut crc = crc;
    let (chunks, tail) = data.as_chunks::<8>();
    for chunk in chunks {
        let x = crc ^ u64::from_le_bytes(*chunk);
        crc = t7[(x & 0xff) as usize]
            ^ t6[((x >> 8) & 0xff) as usize]
            ^ t5[((x >> 16) & 0xff) as usize]
            ^ t4[((x >> 24) & 0xff) as usize]
            ^ t3[((x >> 32) & 0xff) as usize]
            ^ t2[((x >> 40) & 0xff) as usize]
            ^ t1[((x >> 48) & 0xff) as usize]
            ^ t0[(x >> 56) as usize];
    }
    for &b in tail {
        crc = t0[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::super::testutil::crc64_bitwise;
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
        assert_eq!(crc64_bitwise(0, b"123456789"), 0xe9c6d914c4b8d9ca);
        assert_eq!(crc64(0, b""), 0);
        assert_eq!(crc64(0x1234, b""), 0x1234);
    }

    #[test]
    fn table_matches_bitwise_at_every_length_and_split() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let whole = crc64(0, &data[..len]);
            assert_eq!(whole, crc64_bitwise(0, &data[..len]), "len {len}");
            let split = len / 3;
            assert_eq!(crc64(crc64(0, &data[..split]), &data[split..len]), whole);
        }
    }
}
