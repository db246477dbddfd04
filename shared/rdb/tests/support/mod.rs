//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod writer;

use std::path::PathBuf;

use redis_sync_rdb::{Item, KeyRecord, ParserOptions, RdbError, RdbParser, Value};

/// The fixtures that must fail, with the reason they fail.
pub const NEGATIVE: &[&str] = &[
    "corrupt_ziplist.rdb",
    "replicator_module.rdb",
    "replicator_function.rdb",
];

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// Every `.rdb` fixture, sorted by name.
pub fn all_fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .expect("tests/data")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rdb"))
        .collect();
    names.sort();
    names
}

pub fn valid_fixtures() -> Vec<String> {
    all_fixtures()
        .into_iter()
        .filter(|n| !NEGATIVE.contains(&n.as_str()))
        .collect()
}

/// Feeds `data` in pieces whose sizes cycle through `sizes`, collecting every item; the
/// error, if any, ends the run.
pub fn parse_pieces(
    data: &[u8],
    sizes: &[usize],
    opts: ParserOptions,
) -> (Vec<Item>, Result<(), RdbError>) {
    let mut p = RdbParser::new(opts);
    let mut items = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - at);
        i += 1;
        p.feed(&data[at..at + n]);
        at += n;
        loop {
            match p.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Err(e)),
            }
        }
    }
    let end = p.finish();
    (items, end)
}

pub fn parse_all(data: &[u8], opts: ParserOptions) -> (Vec<Item>, Result<(), RdbError>) {
    parse_pieces(data, &[data.len().max(1)], opts)
}

/// Parses a fixture whole with default options; panics on error.
pub fn parse_ok(name: &str) -> Vec<Item> {
    let (items, end) = parse_all(&fixture(name), ParserOptions::default());
    end.unwrap_or_else(|e| panic!("{name}: {e}"));
    items
}

pub fn keys(items: &[Item]) -> Vec<&KeyRecord> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Key(k) => Some(k),
            _ => None,
        })
        .collect()
}

pub fn key<'a>(items: &'a [Item], name: &str) -> &'a KeyRecord {
    keys(items)
        .into_iter()
        .find(|k| k.key.as_ref() == name.as_bytes())
        .unwrap_or_else(|| panic!("no key {name}"))
}

/// A key put back together: db, name, expire, value.
pub type Assembled = (u32, Vec<u8>, Option<i64>, Value);

/// (db, key, expire, value) for every key, putting chunked keys back together and checking the
/// chunk sequence (indexes from 0, `last` only on the final chunk, the same key and
/// metadata on all, at most `max_elems` elements each).
pub fn assembled(items: &[Item], max_elems: usize) -> Vec<Assembled> {
    let mut out: Vec<Assembled> = Vec::new();
    // The key being reassembled and the index of its last chunk.
    let mut open: Option<(Assembled, u32)> = None;
    for item in items {
        match item {
            Item::Key(k) => {
                assert!(open.is_none(), "whole key inside a chunked key");
                out.push((k.db, k.key.to_vec(), k.expire_at_ms, k.value.clone()));
            }
            Item::Chunk(c) => {
                if !matches!(c.part, Value::String(_)) {
                    assert!(
                        c.part.len() <= max_elems,
                        "chunk of {} elements",
                        c.part.len()
                    );
                }
                match open.as_mut() {
                    None => {
                        assert_eq!(c.index, 0, "first chunk index");
                        open = Some(((c.db, c.key.to_vec(), c.expire_at_ms, c.part.clone()), 0));
                    }
                    Some(((db, key, exp, value), idx)) => {
                        assert_eq!(c.index, *idx + 1, "chunk index sequence");
                        assert_eq!(
                            (*db, key.as_slice(), *exp),
                            (c.db, c.key.as_ref(), c.expire_at_ms)
                        );
                        assert!(value.extend_with(c.part.clone()), "chunk of another type");
                        *idx = c.index;
                    }
                }
                if c.last {
                    let (done, _) = open.take().expect("open chunked key");
                    out.push(done);
                }
            }
            _ => assert!(open.is_none(), "item inside a chunked key: {item:?}"),
        }
    }
    assert!(open.is_none(), "chunked key without its last chunk");
    out
}
