//! The incremental RDB parser on hostile snapshots.
//!
//! Input: byte 0 picks options, byte 1 seeds the sizes of the pieces the snapshot is fed
//! in, the rest is the snapshot (the seeds are real RDB files with two bytes in front).
//! Each input is parsed three times:
//! - A: default options (checksum check off when byte 0 has bit 1 set), fed whole;
//! - B: the same options, fed in pieces of pseudo-random sizes drawn from byte 1;
//! - C: a tiny chunk threshold (1..512 bytes) and 1 or 3 elements per chunk, fed in pieces,
//!   so that nearly every key goes through the big-key (chunked) path.
//!
//! Each run drains `next_item` after every feed until `Ok(None)` or an error, then calls
//! `finish`. Checked: no panic, hang or huge allocation (libFuzzer's -timeout and
//! -malloc_limit_mb do that part); the Header comes first; after an error the parser stays
//! failed; `finish` is Ok exactly when `is_done`; chunks of a key come together, numbered
//! from 0, ending with `last`, and reassemble with `extend_with`; a whole key's `dump_body`
//! decodes with `decode_value` to the same value and survives `dump::frame` + `unframe`;
//! A and B yield the same items and the same error (the piece sizes change nothing); and
//! where A and C both succeed, every key has the same value whether whole or chunked.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use redis_sync_rdb::{Item, ParserOptions, RdbError, RdbParser, Value, decode_value, dump};

/// Seed export for `dump_payload`: when `REDIS_SYNC_FUZZ_EXPORT_DUMPS` names a folder, the
/// `dump_body` of every whole key parsed is written there (raw, and framed with the DUMP
/// trailer). deploy/local/fuzz.sh runs this binary once over the RDB seeds that way; it
/// plays no part in fuzzing.
fn export_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("REDIS_SYNC_FUZZ_EXPORT_DUMPS").map(PathBuf::from))
        .as_ref()
}

fn export_dump(body: &[u8], version: u32) {
    let Some(dir) = export_dir() else { return };
    let name = format!("{:016x}", fnv1a(body));
    let _ = std::fs::write(dir.join(format!("{name}.body")), body);
    let framed = dump::frame(body, u16::try_from(version).unwrap_or(u16::MAX));
    let _ = std::fs::write(dir.join(format!("{name}.dump")), framed);
}

/// A stable file name for a body (FNV-1a; any hash would do).
fn fnv1a(body: &[u8]) -> u64 {
    body.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What a run yielded, normalised so that runs can be compared.
#[derive(Debug)]
struct Run {
    /// Every item, as Debug text (f64 scores can be NaN, so Debug rather than PartialEq),
    /// chunked keys folded into one entry.
    items: Vec<String>,
    /// Keys only: (db, key, expire, type, value), whole or reassembled.
    keys: Vec<String>,
    /// The error that stopped the run, or `finish`'s verdict.
    end: Result<(), String>,
}

/// A chunked key being put back together.
struct Assembly {
    db: u32,
    key: bytes::Bytes,
    expire: Option<i64>,
    rdb_type: u8,
    next_index: u32,
    value: Value,
    /// String parts are appended here: `Value::extend_with` copies the whole string on
    /// every call, which is quadratic over the thousands of parts a tiny threshold makes.
    string: Vec<u8>,
}

impl Assembly {
    fn add(&mut self, part: Value) {
        match (&self.value, part) {
            (Value::String(_), Value::String(s)) => self.string.extend_from_slice(&s),
            (_, part) => assert!(self.value.extend_with(part), "chunk of another kind"),
        }
    }

    fn finish(mut self) -> Self {
        if let Value::String(first) = &self.value {
            let mut whole = first.to_vec();
            whole.append(&mut self.string);
            self.value = Value::String(whole.into());
        }
        self
    }
}

fn key_text(db: u32, key: &[u8], expire: Option<i64>, rdb_type: u8, value: &Value) -> String {
    format!("db={db} key={key:?} expire={expire:?} type={rdb_type} value={value:?}")
}

/// An error as compared between runs. `BadMagic` quotes the bytes it had seen, which depend
/// on how many had arrived: only its kind counts.
fn error_text(e: &RdbError) -> String {
    match e {
        RdbError::BadMagic { .. } => "BadMagic".into(),
        e => format!("{e:?}"),
    }
}

struct Xorshift(u32);

impl Xorshift {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

fn check_dump_body(body: &[u8], value: &Value, version: u32, valkey: bool) {
    match decode_value(body, version, valkey) {
        Ok(v) => assert_eq!(
            format!("{v:?}"),
            format!("{value:?}"),
            "decode_value(dump_body) differs from the parsed value"
        ),
        Err(e) => panic!("dump_body of a parsed key does not decode: {e:?}"),
    }
    let dump_version = u16::try_from(version).unwrap_or(u16::MAX);
    let framed = dump::frame(body, dump_version);
    match dump::unframe(&framed) {
        Ok((v, b)) => assert!(v == dump_version && b == body, "frame/unframe round trip"),
        Err(e) => panic!("unframe(frame(body)) failed: {e:?}"),
    }
}

fn run(input: &[u8], opts: ParserOptions, pieces: Option<u8>) -> Run {
    let mut parser = RdbParser::new(opts);
    let mut out = Run {
        items: Vec::new(),
        keys: Vec::new(),
        end: Ok(()),
    };
    let mut version = None;
    let mut open: Option<Assembly> = None;
    let mut rng = Xorshift(u32::from(pieces.unwrap_or(0)).wrapping_mul(0x9e37_79b9) | 1);
    let max_piece = 1usize << (pieces.unwrap_or(0) % 14);
    let mut fed = 0;
    let mut failed = false;

    'feed: while fed < input.len() {
        let take = match pieces {
            None => input.len(),
            Some(_) => 1 + rng.next() as usize % max_piece,
        };
        let end = input.len().min(fed + take);
        parser.feed(&input[fed..end]);
        fed = end;
        loop {
            match parser.next_item() {
                Ok(None) => break,
                Ok(Some(item)) => {
                    if version.is_none() {
                        let Item::Header { version: v, valkey } = item else {
                            panic!("first item is not the header: {item:?}");
                        };
                        version = Some((v, valkey));
                    }
                    let (v, valkey) = version.unwrap_or_default();
                    if let Item::Chunk(c) = item {
                        let asm = match open.take() {
                            None => {
                                assert_eq!(c.index, 0, "first chunk of a key");
                                Assembly {
                                    db: c.db,
                                    key: c.key.clone(),
                                    expire: c.expire_at_ms,
                                    rdb_type: c.rdb_type,
                                    next_index: 1,
                                    value: c.part,
                                    string: Vec::new(),
                                }
                            }
                            Some(mut a) => {
                                assert!(
                                    a.key == c.key && a.db == c.db && a.rdb_type == c.rdb_type,
                                    "chunks of two keys interleave"
                                );
                                assert_eq!(c.expire_at_ms, a.expire);
                                assert_eq!(c.index, a.next_index, "chunk numbering");
                                a.next_index += 1;
                                a.add(c.part);
                                a
                            }
                        };
                        if c.last {
                            let asm = asm.finish();
                            let text =
                                key_text(asm.db, &asm.key, asm.expire, asm.rdb_type, &asm.value);
                            out.items.push(format!("Chunked {text}"));
                            out.keys.push(text);
                        } else {
                            open = Some(asm);
                        }
                        continue;
                    }
                    assert!(open.is_none(), "{item:?} inside a chunked key");
                    if let Item::Key(k) = &item {
                        assert_eq!(k.dump_body.first(), Some(&k.rdb_type));
                        check_dump_body(&k.dump_body, &k.value, v, valkey);
                        export_dump(&k.dump_body, v);
                        out.keys
                            .push(key_text(k.db, &k.key, k.expire_at_ms, k.rdb_type, &k.value));
                    }
                    if let Item::End { .. } = item {
                        assert!(parser.is_done(), "End before is_done");
                    }
                    out.items.push(format!("{item:?}"));
                }
                Err(e) => {
                    out.end = Err(error_text(&e));
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if open.is_some() {
        out.items.push("an unfinished chunked key".into());
    }
    if failed {
        assert!(parser.next_item().is_err(), "a failed parser recovered");
        parser.feed(b"more");
        assert!(parser.finish().is_err(), "finish after an error");
        return out;
    }
    let done = parser.is_done();
    let finished = parser.finish();
    assert_eq!(
        done,
        finished.is_ok(),
        "finish {finished:?} vs is_done {done}"
    );
    if let Err(e) = finished {
        out.end = Err(error_text(&e));
    }
    let _ = (
        parser.offset(),
        parser.version(),
        parser.aux().repl_id(),
        parser.buffered(),
    );
    out
}

fuzz_target!(|data: &[u8]| {
    let [opt_sel, piece_sel, rdb @ ..] = data else {
        return;
    };
    let base = ParserOptions {
        verify_checksum: opt_sel & 2 == 0,
        ..ParserOptions::default()
    };
    let a = run(rdb, base.clone(), None);
    let b = run(rdb, base.clone(), Some(*piece_sel));
    assert_eq!(a.items, b.items, "feeding in pieces changed the items");
    assert_eq!(a.end, b.end, "feeding in pieces changed the outcome");

    let tiny = ParserOptions {
        // 1, 2, 4, ... 512 bytes: small enough to chunk nearly every key, not so small
        // that every input is a hundred thousand one-byte chunks of an LZF string.
        chunk_threshold_bytes: 1 << ((opt_sel >> 3) % 10),
        chunk_elements: if opt_sel & 4 == 0 { 3 } else { 1 },
        ..base
    };
    let c = run(rdb, tiny, Some(piece_sel.wrapping_add(1)));
    if a.end.is_ok() && c.end.is_ok() {
        assert_eq!(a.keys, c.keys, "chunked keys differ from whole ones");
    }
});
