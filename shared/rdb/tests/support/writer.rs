//! A minimal RDB writer for tests and the benchmark: it produces the byte layouts Redis
//! writes (see `rdbSave*` in Redis's rdb.c) for the types the tests need, so that synthetic
//! snapshots (big keys, exotic scores, millions of keys) can be generated in memory. It is
//! test code: it trusts its input and favours clarity over compactness.

#![allow(dead_code)]

use redis_sync_rdb::encoding::crc64::crc64;
use redis_sync_rdb::types as t;

/// Appends an RDB length prefix (6-bit, 14-bit, 32-bit or 64-bit big endian).
pub fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else if n <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends a raw (length-prefixed) string.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends a string the way Redis does when it looks like a small integer: int8/16/32.
pub fn put_int_str(out: &mut Vec<u8>, v: i32) {
    if let Ok(b) = i8::try_from(v) {
        out.push(0xC0);
        out.extend_from_slice(&b.to_le_bytes());
    } else if let Ok(h) = i16::try_from(v) {
        out.push(0xC1);
        out.extend_from_slice(&h.to_le_bytes());
    } else {
        out.push(0xC2);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A score as RDB type 3 writes it: length byte + text, 253/254/255 for nan/+inf/-inf.
pub fn put_text_double(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.push(253);
    } else if v == f64::INFINITY {
        out.push(254);
    } else if v == f64::NEG_INFINITY {
        out.push(255);
    } else {
        // `{:?}` is Rust's shortest round-trip form, like Redis's fpconv_dtoa.
        let s = format!("{v:?}");
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
}

/// An element of a listpack or ziplist for the encoders below.
#[derive(Debug, Clone)]
pub enum El<'a> {
    Str(&'a [u8]),
    Int(i64),
}

fn lp_backlen(out: &mut Vec<u8>, l: usize) {
    // The entry length, 7 bits per byte, most significant group first; every byte but the
    // first has its top bit set, so the length can be read backwards.
    let mut groups = vec![(l & 127) as u8];
    let mut rest = l >> 7;
    while rest > 0 {
        groups.push((rest & 127) as u8);
        rest >>= 7;
    }
    let n = groups.len();
    for (i, g) in groups.iter().rev().enumerate() {
        if i == n - 1 && n > 1 {
            out.push(g | 128);
        } else if i == 0 {
            out.push(*g);
        } else {
            out.push(g | 128);
        }
    }
}

/// Encodes a listpack.
pub fn listpack(elems: &[El<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in elems {
        let start = body.len();
        match e {
            El::Int(v) if (0..=127).contains(v) => body.push(*v as u8),
            El::Int(v) => {
                body.push(0xF4);
                body.extend_from_slice(&v.to_le_bytes());
            }
            El::Str(s) if s.len() < 64 => {
                body.push(0x80 | s.len() as u8);
                body.extend_from_slice(s);
            }
            El::Str(s) if s.len() < 4096 => {
                body.push(0xE0 | (s.len() >> 8) as u8);
                body.push(s.len() as u8);
                body.extend_from_slice(s);
            }
            El::Str(s) => {
                body.push(0xF0);
                body.extend_from_slice(&(s.len() as u32).to_le_bytes());
                body.extend_from_slice(s);
            }
        }
        let l = body.len() - start;
        lp_backlen(&mut body, l);
    }
    let total = 6 + body.len() + 1;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    let count = if elems.len() < 65535 {
        elems.len() as u16
    } else {
        65535
    };
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xFF);
    out
}

/// Encodes a ziplist.
pub fn ziplist(elems: &[El<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut prevlen = 0usize;
    let mut tail = 10usize;
    for e in elems {
        let start = body.len();
        tail = 10 + start;
        if prevlen < 254 {
            body.push(prevlen as u8);
        } else {
            body.push(0xFE);
            body.extend_from_slice(&(prevlen as u32).to_le_bytes());
        }
        match e {
            El::Int(v) if (0..=12).contains(v) => body.push(0xF1 + *v as u8),
            El::Int(v) => {
                body.push(0xE0);
                body.extend_from_slice(&v.to_le_bytes());
            }
            El::Str(s) if s.len() < 64 => {
                body.push(s.len() as u8);
                body.extend_from_slice(s);
            }
            El::Str(s) if s.len() < 16384 => {
                body.push(0x40 | (s.len() >> 8) as u8);
                body.push(s.len() as u8);
                body.extend_from_slice(s);
            }
            El::Str(s) => {
                body.push(0x80);
                body.extend_from_slice(&(s.len() as u32).to_be_bytes());
                body.extend_from_slice(s);
            }
        }
        prevlen = body.len() - start;
    }
    let total = 10 + body.len() + 1;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(tail as u32).to_le_bytes());
    let count = if elems.len() < 65535 {
        elems.len() as u16
    } else {
        65535
    };
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xFF);
    out
}

/// Encodes an intset of sorted, distinct members with the smallest width that fits.
pub fn intset(members: &[i64]) -> Vec<u8> {
    let width: u32 = if members.iter().all(|&m| i16::try_from(m).is_ok()) {
        2
    } else if members.iter().all(|&m| i32::try_from(m).is_ok()) {
        4
    } else {
        8
    };
    let mut out = Vec::new();
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for &m in members {
        match width {
            2 => out.extend_from_slice(&(m as i16).to_le_bytes()),
            4 => out.extend_from_slice(&(m as i32).to_le_bytes()),
            _ => out.extend_from_slice(&m.to_le_bytes()),
        }
    }
    out
}

/// Value bodies (what follows the key), by type.
pub mod body {
    use super::*;

    pub fn list(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, items.len() as u64);
        for i in items {
            put_str(&mut out, i);
        }
        out
    }

    pub fn set(members: &[&[u8]]) -> Vec<u8> {
        list(members)
    }

    pub fn zset2(members: &[(&[u8], f64)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, members.len() as u64);
        for (m, s) in members {
            put_str(&mut out, m);
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    pub fn zset_text(members: &[(&[u8], f64)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, members.len() as u64);
        for (m, s) in members {
            put_str(&mut out, m);
            put_text_double(&mut out, *s);
        }
        out
    }

    pub fn hash(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, fields.len() as u64);
        for (f, v) in fields {
            put_str(&mut out, f);
            put_str(&mut out, v);
        }
        out
    }

    /// A single encoded blob (listpack, ziplist, intset) as a string.
    pub fn blob(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, data);
        out
    }

    /// Quicklist 2 with packed listpack nodes.
    pub fn quicklist2(nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, nodes.len() as u64);
        for n in nodes {
            put_len(&mut out, 2);
            put_str(&mut out, n);
        }
        out
    }
}

/// Builds an RDB stream in memory.
pub struct RdbWriter {
    buf: Vec<u8>,
    version: u32,
}

impl RdbWriter {
    /// `REDIS` + 4 digits.
    pub fn new(version: u32) -> Self {
        RdbWriter {
            buf: format!("REDIS{version:04}").into_bytes(),
            version,
        }
    }

    /// `VALKEY` + 3 digits.
    pub fn valkey(version: u32) -> Self {
        RdbWriter {
            buf: format!("VALKEY{version:03}").into_bytes(),
            version,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes so far, without the EOF opcode: an RDB cut short.
    pub fn unfinished(&self) -> Vec<u8> {
        self.buf.clone()
    }

    pub fn aux(&mut self, k: &[u8], v: &[u8]) -> &mut Self {
        self.buf.push(t::OPCODE_AUX);
        put_str(&mut self.buf, k);
        put_str(&mut self.buf, v);
        self
    }

    pub fn select_db(&mut self, db: u64) -> &mut Self {
        self.buf.push(t::OPCODE_SELECTDB);
        put_len(&mut self.buf, db);
        self
    }

    pub fn resize_db(&mut self, size: u64, expires: u64) -> &mut Self {
        self.buf.push(t::OPCODE_RESIZEDB);
        put_len(&mut self.buf, size);
        put_len(&mut self.buf, expires);
        self
    }

    pub fn expire_ms(&mut self, ms: i64) -> &mut Self {
        self.buf.push(t::OPCODE_EXPIRETIME_MS);
        self.buf.extend_from_slice(&ms.to_le_bytes());
        self
    }

    pub fn expire_s(&mut self, s: i32) -> &mut Self {
        self.buf.push(t::OPCODE_EXPIRETIME);
        self.buf.extend_from_slice(&s.to_le_bytes());
        self
    }

    /// A key of any type with its already-encoded value body.
    pub fn key(&mut self, rdb_type: u8, key: &[u8], body: &[u8]) -> &mut Self {
        self.buf.push(rdb_type);
        put_str(&mut self.buf, key);
        self.buf.extend_from_slice(body);
        self
    }

    pub fn string(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        let mut b = Vec::new();
        put_str(&mut b, value);
        self.key(t::STRING, key, &b)
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// EOF opcode and, for RDB 5+, the CRC-64 of everything before it.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.push(t::OPCODE_EOF);
        if self.version >= 5 {
            let crc = crc64(0, &out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }
}

/// An LZF stream (as Redis's lzf_compress could produce) for `n` copies of `byte`: one
/// literal, then back-references of up to 264 bytes at distance 1.
pub fn lzf_run(byte: u8, n: usize) -> Vec<u8> {
    assert!(n >= 1);
    let mut out = vec![0x00, byte];
    let mut left = n - 1;
    while left > 0 {
        if left < 3 {
            // Too short for a back-reference: literals.
            out.push((left - 1) as u8);
            out.extend(std::iter::repeat_n(byte, left));
            break;
        }
        let len = left.min(264);
        if len - 2 < 7 {
            out.push(((len - 2) as u8) << 5);
        } else {
            out.push(7 << 5);
            out.push((len - 2 - 7) as u8);
        }
        out.push(0);
        left -= len;
    }
    out
}

/// An LZF-encoded string: marker, compressed length, original length, data.
pub fn put_lzf_str(out: &mut Vec<u8>, compressed: &[u8], len: usize) {
    out.push(0xC3);
    put_len(out, compressed.len() as u64);
    put_len(out, len as u64);
    out.extend_from_slice(compressed);
}

/// A stream id as (ms, seq).
pub type Id = (u64, u64);
/// A stream entry: id and the values of the node's fields.
pub type EntrySpec = (Id, Vec<Vec<u8>>);
/// A consumer: name, seen time, active time, owned PEL ids.
pub type ConsumerSpec = (Vec<u8>, i64, i64, Vec<Id>);

/// A stream node: the 16-byte big-endian master id and a listpack in which every entry
/// has the master's fields (the SAMEFIELDS flag), ids given as (ms, seq).
pub fn stream_node(fields: &[&[u8]], entries: &[EntrySpec]) -> (Vec<u8>, Vec<u8>) {
    let master = entries[0].0;
    let mut key = Vec::new();
    key.extend_from_slice(&master.0.to_be_bytes());
    key.extend_from_slice(&master.1.to_be_bytes());
    let mut els: Vec<El<'_>> = vec![
        El::Int(entries.len() as i64),
        El::Int(0),
        El::Int(fields.len() as i64),
    ];
    els.extend(fields.iter().map(|f| El::Str(f)));
    els.push(El::Int(0));
    for ((ms, seq), values) in entries {
        els.push(El::Int(2));
        els.push(El::Int((ms - master.0) as i64));
        els.push(El::Int(seq.wrapping_sub(master.1) as i64));
        els.extend(values.iter().map(|v| El::Str(v)));
        els.push(El::Int(fields.len() as i64 + 3));
    }
    (key, listpack(&els))
}

/// A consumer group for [`stream3`]: name, last id, entries read, PEL (id, delivery time,
/// count) and consumers (name, seen, active, owned ids).
pub struct GroupSpec {
    pub name: Vec<u8>,
    pub last_id: (u64, u64),
    pub entries_read: u64,
    pub pel: Vec<((u64, u64), i64, u64)>,
    pub consumers: Vec<ConsumerSpec>,
}

fn raw_id(out: &mut Vec<u8>, id: (u64, u64)) {
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&id.1.to_be_bytes());
}

/// A type-21 stream body.
pub fn stream3(
    nodes: &[(Vec<u8>, Vec<u8>)],
    length: u64,
    last: (u64, u64),
    first: (u64, u64),
    added: u64,
    groups: &[GroupSpec],
) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, nodes.len() as u64);
    for (k, lp) in nodes {
        put_str(&mut out, k);
        put_str(&mut out, lp);
    }
    put_len(&mut out, length);
    put_len(&mut out, last.0);
    put_len(&mut out, last.1);
    put_len(&mut out, first.0);
    put_len(&mut out, first.1);
    put_len(&mut out, 0);
    put_len(&mut out, 0);
    put_len(&mut out, added);
    put_len(&mut out, groups.len() as u64);
    for g in groups {
        put_str(&mut out, &g.name);
        put_len(&mut out, g.last_id.0);
        put_len(&mut out, g.last_id.1);
        put_len(&mut out, g.entries_read);
        put_len(&mut out, g.pel.len() as u64);
        for (id, time, count) in &g.pel {
            raw_id(&mut out, *id);
            out.extend_from_slice(&time.to_le_bytes());
            put_len(&mut out, *count);
        }
        put_len(&mut out, g.consumers.len() as u64);
        for (name, seen, active, ids) in &g.consumers {
            put_str(&mut out, name);
            out.extend_from_slice(&seen.to_le_bytes());
            out.extend_from_slice(&active.to_le_bytes());
            put_len(&mut out, ids.len() as u64);
            for id in ids {
                raw_id(&mut out, *id);
            }
        }
    }
    out
}
