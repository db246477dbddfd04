//! Test-only encoders: they build the blobs the decoders read, choosing each
//! encoding the way Redis does, so that tests can cover every encoding and
//! then damage the result. Written from the format descriptions in the decoder
//! modules, independently of the decoders (nothing here calls them).
//!
//! Compiled into the crate's unit tests (`#[cfg(test)]`) and, through
//! `#[path]`, into `tests/encodings.rs`; it uses only `std`.
#![allow(dead_code)]

use std::collections::HashMap;

/// A ziplist or listpack element to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Str(Vec<u8>),
    Int(i64),
}

// ---------------------------------------------------------------- ziplist

/// A ziplist of `items`, with the smallest encodings and a correct header.
pub fn ziplist(items: &[Item]) -> Vec<u8> {
    ziplist_with(items, false, None)
}

/// A ziplist of `items`; `big_prevlen` spells every prevlen in 5 bytes, and
/// `count` overrides the zllen header field.
pub fn ziplist_with(items: &[Item], big_prevlen: bool, count: Option<u16>) -> Vec<u8> {
    let mut zl = vec![0u8; 10];
    let mut prev_size = 0usize;
    let mut tail = 10usize;
    for item in items {
        let start = zl.len();
        tail = start;
        if big_prevlen || prev_size >= 254 {
            zl.push(0xfe);
            zl.extend_from_slice(&(prev_size as u32).to_le_bytes());
        } else {
            zl.push(prev_size as u8);
        }
        match item {
            Item::Str(s) => {
                let n = s.len();
                if n <= 63 {
                    zl.push(n as u8);
                } else if n <= 16383 {
                    zl.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
                } else {
                    zl.push(0x80);
                    zl.extend_from_slice(&(n as u32).to_be_bytes());
                }
                zl.extend_from_slice(s);
            }
            Item::Int(v) => {
                let v = *v;
                let le = v.to_le_bytes();
                if (0..=12).contains(&v) {
                    zl.push(0xf1 + v as u8);
                } else if i8::try_from(v).is_ok() {
                    zl.push(0xfe);
                    zl.push(le[0]);
                } else if i16::try_from(v).is_ok() {
                    zl.push(0xc0);
                    zl.extend_from_slice(&le[..2]);
                } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                    zl.push(0xf0);
                    zl.extend_from_slice(&le[..3]);
                } else if i32::try_from(v).is_ok() {
                    zl.push(0xd0);
                    zl.extend_from_slice(&le[..4]);
                } else {
                    zl.push(0xe0);
                    zl.extend_from_slice(&le);
                }
            }
        }
        prev_size = zl.len() - start;
    }
    zl.push(0xff);
    let total = zl.len() as u32;
    let count = count.unwrap_or(items.len().min(65535) as u16);
    zl[0..4].copy_from_slice(&total.to_le_bytes());
    zl[4..8].copy_from_slice(&(tail as u32).to_le_bytes());
    zl[8..10].copy_from_slice(&count.to_le_bytes());
    zl
}

// ---------------------------------------------------------------- listpack

/// A listpack of `items`, with the smallest encodings and a correct header.
pub fn listpack(items: &[Item]) -> Vec<u8> {
    listpack_with(items, None)
}

/// A listpack of `items`; `count` overrides the num-elements header field.
pub fn listpack_with(items: &[Item], count: Option<u16>) -> Vec<u8> {
    let mut lp = vec![0u8; 6];
    for item in items {
        let start = lp.len();
        match item {
            Item::Int(v) => {
                let v = *v;
                let le = v.to_le_bytes();
                if (0..=127).contains(&v) {
                    lp.push(v as u8);
                } else if (-4096..=4095).contains(&v) {
                    let u = (v & 0x1fff) as u16;
                    lp.extend_from_slice(&[0xc0 | (u >> 8) as u8, u as u8]);
                } else if i16::try_from(v).is_ok() {
                    lp.push(0xf1);
                    lp.extend_from_slice(&le[..2]);
                } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                    lp.push(0xf2);
                    lp.extend_from_slice(&le[..3]);
                } else if i32::try_from(v).is_ok() {
                    lp.push(0xf3);
                    lp.extend_from_slice(&le[..4]);
                } else {
                    lp.push(0xf4);
                    lp.extend_from_slice(&le);
                }
            }
            Item::Str(s) => {
                let n = s.len();
                if n < 64 {
                    lp.push(0x80 | n as u8);
                } else if n < 4096 {
                    lp.extend_from_slice(&[0xe0 | (n >> 8) as u8, n as u8]);
                } else {
                    lp.push(0xf0);
                    lp.extend_from_slice(&(n as u32).to_le_bytes());
                }
                lp.extend_from_slice(s);
            }
        }
        let backlen = listpack_backlen(lp.len() - start);
        lp.extend_from_slice(&backlen);
    }
    lp.push(0xff);
    let total = lp.len() as u32;
    let count = count.unwrap_or(items.len().min(65535) as u16);
    lp[0..4].copy_from_slice(&total.to_le_bytes());
    lp[4..6].copy_from_slice(&count.to_le_bytes());
    lp
}

/// A listpack backlen for an entry of `len` bytes: 7-bit groups, most
/// significant first, every group but the first flagged with 0x80, with
/// Redis's byte-count thresholds.
pub fn listpack_backlen(len: usize) -> Vec<u8> {
    let groups = match len {
        0..=127 => 1,
        128..16383 => 2,
        16383..2_097_151 => 3,
        2_097_151..268_435_455 => 4,
        _ => 5,
    };
    let mut out: Vec<u8> = (0..groups)
        .rev()
        .map(|g| ((len >> (7 * g)) & 0x7f) as u8 | 0x80)
        .collect();
    out[0] &= 0x7f;
    out
}

// ---------------------------------------------------------------- intset

/// An intset of `values` (given in the order to store) at `width` bytes each.
pub fn intset(width: u32, values: &[i64]) -> Vec<u8> {
    let mut is = Vec::new();
    is.extend_from_slice(&width.to_le_bytes());
    is.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        is.extend_from_slice(&v.to_le_bytes()[..width as usize]);
    }
    is
}

// ---------------------------------------------------------------- zipmap

/// A zipmap of `(key, value, free)` triples (free bytes are zeros); `count`
/// overrides the zmlen byte.
pub fn zipmap(pairs: &[(&[u8], &[u8], u8)], count: Option<u8>) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 254 {
            out.push(n as u8);
        } else {
            out.push(254);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
    let mut zm = vec![count.unwrap_or(pairs.len().min(254) as u8)];
    for &(k, v, free) in pairs {
        len(&mut zm, k.len());
        zm.extend_from_slice(k);
        len(&mut zm, v.len());
        zm.push(free);
        zm.extend_from_slice(v);
        zm.extend(std::iter::repeat_n(0, usize::from(free)));
    }
    zm.push(0xff);
    zm
}

// ---------------------------------------------------------------- lzf

/// A small greedy LZF compressor: literal runs of up to 32 bytes, and
/// back-references of 3..=264 bytes up to 8192 bytes back (overlapping ones
/// included), found through a table of the last position of each 3-byte
/// sequence.
pub fn lzf_compress(data: &[u8]) -> Vec<u8> {
    const MAX_DISTANCE: usize = 8192;
    const MAX_MATCH: usize = 264;
    let mut out = Vec::new();
    let mut literals: Vec<u8> = Vec::new();
    let mut last_seen: HashMap<&[u8], usize> = HashMap::new();
    let flush = |out: &mut Vec<u8>, literals: &mut Vec<u8>| {
        for run in literals.chunks(32) {
            out.push((run.len() - 1) as u8);
            out.extend_from_slice(run);
        }
        literals.clear();
    };
    let mut i = 0;
    while i < data.len() {
        let mut matched = 0;
        let mut distance = 0;
        if let Some(key) = data.get(i..i + 3) {
            if let Some(&j) = last_seen.get(key)
                && i - j <= MAX_DISTANCE
            {
                let limit = MAX_MATCH.min(data.len() - i);
                matched = (0..limit)
                    .take_while(|&k| data[j + k] == data[i + k])
                    .count();
                distance = i - j;
            }
            last_seen.insert(key, i);
        }
        if matched >= 3 {
            flush(&mut out, &mut literals);
            let len = matched - 2;
            let off = distance - 1;
            if len < 7 {
                out.push(((len << 5) | (off >> 8)) as u8);
            } else {
                out.push(((7 << 5) | (off >> 8)) as u8);
                out.push((len - 7) as u8);
            }
            out.push(off as u8);
            for k in i + 1..i + matched {
                if let Some(key) = data.get(k..k + 3) {
                    last_seen.insert(key, k);
                }
            }
            i += matched;
        } else {
            literals.push(data[i]);
            i += 1;
        }
    }
    flush(&mut out, &mut literals);
    out
}

// ---------------------------------------------------------------- crc64

/// CRC-64/Jones computed one bit at a time in the polynomial's own (MSB-first)
/// order, reflecting the register in and out, as a reference for the
/// table-driven, reflected implementation.
pub fn crc64_bitwise(crc: u64, data: &[u8]) -> u64 {
    const POLY: u64 = 0xad93d23594c935a9;
    let mut reg = crc.reverse_bits();
    for &byte in data {
        for bit in 0..8 {
            let mut top = reg >> 63 == 1;
            if byte >> bit & 1 == 1 {
                top = !top;
            }
            reg <<= 1;
            if top {
                reg ^= POLY;
            }
        }
    }
    reg.reverse_bits()
}

// ---------------------------------------------------------------- hex

/// Bytes from a hex string (test vectors), ignoring whitespace.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(text, 16).expect("hex digit pair")
        })
        .collect()
}
