//! Hostile input: truncated, corrupted and lying streams end in typed errors, never in a
//! panic or a huge allocation.

mod support;

use proptest::prelude::*;
use redis_sync_rdb::{Item, ParserOptions, RdbError, RdbParser, decode_value, types as t};
use support::writer::{RdbWriter, body, put_len};
use support::*;

const TRUNCATED: &[&str] = &[
    "encodings.rdb",
    "listpack.rdb",
    "hash_with_hfe.rdb",
    "hash_as_listpack_with_hfe.rdb",
    "valkey_hash2_with_hfe.rdb",
    "stream_listoacks_3.rdb",
    "redis_50_with_streams.rdb",
    "replicator_dump-module-2.rdb",
    "redis_60_with_module_aux.rdb",
    "replicator_function2.rdb",
    "zipmap_big_len.rdb",
    "quicklist.rdb",
    "replicator_dump-lfu.rdb",
];

#[test]
fn every_truncation_is_an_error_at_finish() {
    for name in TRUNCATED {
        let data = fixture(name);
        for len in 0..data.len() {
            for opts in [
                ParserOptions::default(),
                ParserOptions {
                    chunk_threshold_bytes: 8,
                    chunk_elements: 2,
                    ..ParserOptions::default()
                },
            ] {
                let (_, end) = parse_pieces(&data[..len], &[len.max(1)], opts);
                let e = end.expect_err("a truncated RDB must not finish");
                assert!(
                    matches!(e, RdbError::Truncated { .. }),
                    "{name} cut at {len}: {e}"
                );
                assert!(
                    e.offset().expect("offset") <= len as u64,
                    "{name} at {len}: {e}"
                );
            }
        }
    }
}

#[test]
fn truncated_dump_bodies_are_errors() {
    for name in TRUNCATED {
        let items = parse_ok(name);
        let Some(Item::Header { version, valkey }) = items.first() else {
            panic!()
        };
        for k in keys(&items) {
            for len in 0..k.dump_body.len() {
                let r = decode_value(&k.dump_body[..len], *version, *valkey);
                assert!(r.is_err(), "{name} {:?} cut at {len}", k.key);
            }
        }
    }
}

fn mutate(data: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut d = data.to_vec();
    for (pos, x) in flips {
        let n = d.len();
        d[pos % n] ^= x | 1;
    }
    d
}

/// Cases per fuzz property: 400 by default, more with `RDB_FUZZ_CASES=n` for a long run.
fn fuzz_cases() -> u32 {
    std::env::var("RDB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn flipped_bytes_never_panic(
        idx in 0usize..10_000,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        piece in 1usize..512,
        verify in any::<bool>(),
    ) {
        let names = all_fixtures();
        let name = &names[idx % names.len()];
        let data = fixture(name);
        // Keep the big fixtures short: the first 64 KiB exercise plenty.
        let data = &data[..data.len().min(64 * 1024)];
        let bad = mutate(data, &flips);
        for opts in [
            ParserOptions { verify_checksum: verify, ..ParserOptions::default() },
            ParserOptions {
                chunk_threshold_bytes: 32,
                chunk_elements: 3,
                verify_checksum: verify,
                ..ParserOptions::default()
            },
        ] {
            let (_, end) = parse_pieces(&bad, &[piece], opts);
            // Either outcome is fine; an error must name an offset inside the input.
            if let Err(e) = end
                && let Some(off) = e.offset()
            {
                prop_assert!(off <= bad.len() as u64 + 8, "{}: {}", name, e);
            }
        }
    }

    #[test]
    fn flipped_dump_bodies_never_panic(
        idx in 0usize..10_000,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let names = valid_fixtures();
        let name = &names[idx % names.len()];
        let data = fixture(name);
        if data.len() > 64 * 1024 {
            return Ok(());
        }
        let items = parse_ok(name);
        for k in keys(&items).into_iter().take(8) {
            let bad = mutate(&k.dump_body, &flips);
            let _ = decode_value(&bad, 12, false);
            let _ = decode_value(&bad, 80, true);
        }
    }

    #[test]
    fn random_bytes_after_a_header_never_panic(tail in prop::collection::vec(any::<u8>(), 0..2048)) {
        for magic in [&b"REDIS0012"[..], b"REDIS0003", b"VALKEY080"] {
            let mut data = magic.to_vec();
            data.extend_from_slice(&tail);
            let _ = parse_pieces(&data, &[3], ParserOptions::default());
            let _ = decode_value(&tail, 12, false);
        }
    }
}

/// A header and a string key whose length prefix is the 64-bit form claiming 2^60 bytes.
fn huge_string_key() -> Vec<u8> {
    let mut w = RdbWriter::new(9);
    w.raw(&[t::STRING]);
    w.raw(&[0x03, b'k', b'e', b'y']);
    let mut len = Vec::new();
    put_len(&mut len, 1 << 60);
    w.raw(&len);
    w.raw(b"only a few bytes");
    w.finish()
}

#[test]
fn a_length_of_two_to_the_sixty_is_refused_before_allocating() {
    let data = huge_string_key();
    let mut p = RdbParser::new(ParserOptions::default());
    p.feed(&data);
    assert!(matches!(p.next_item(), Ok(Some(Item::Header { .. }))));
    let e = p.next_item().expect_err("huge string");
    assert!(
        matches!(e, RdbError::TooLong { len, offset: 14, .. } if len == 1 << 60),
        "{e}"
    );
    // The parser stays failed.
    assert!(matches!(
        p.next_item(),
        Err(RdbError::Failed { offset: 14 })
    ));
    assert!(matches!(p.finish(), Err(RdbError::Failed { .. })));

    // Chunked mode refuses it too (a string that long would be streamed otherwise).
    let opts = ParserOptions {
        chunk_threshold_bytes: 16,
        ..ParserOptions::default()
    };
    let (_, end) = parse_all(&data, opts);
    assert!(matches!(end, Err(RdbError::TooLong { .. })));

    // In a DUMP body there is no limit to exceed, but nothing is allocated either: the
    // body simply ends first.
    let mut dump = vec![t::STRING];
    put_len(&mut dump, 1 << 60);
    dump.extend_from_slice(b"abc");
    assert!(matches!(
        decode_value(&dump, 9, false),
        Err(RdbError::Truncated { offset: 1, .. })
    ));

    // An LZF string claiming 2^60 bytes once decompressed.
    let mut dump = vec![t::STRING, 0xC3];
    put_len(&mut dump, 4);
    put_len(&mut dump, 1 << 60);
    dump.extend_from_slice(&[0, b'a', 0, b'a']);
    assert!(decode_value(&dump, 9, false).is_err());

    // A collection claiming 2^60 elements: counted down as elements arrive, never
    // preallocated; the input ends first.
    let mut w = RdbWriter::new(9);
    let mut b = Vec::new();
    put_len(&mut b, 1 << 60);
    b.extend_from_slice(&body::list(&[b"a"])[1..]);
    w.key(t::LIST, b"l", &b);
    let (_, end) = parse_all(&w.unfinished(), ParserOptions::default());
    assert!(matches!(end, Err(RdbError::Truncated { .. })), "{end:?}");
}

#[test]
fn limits_are_enforced() {
    let mut w = RdbWriter::new(9);
    w.string(b"k", &[b'x'; 1000]);
    let data = w.finish();
    let opts = ParserOptions {
        max_string_len: 999,
        ..ParserOptions::default()
    };
    let (_, end) = parse_all(&data, opts);
    assert!(
        matches!(
            end,
            Err(RdbError::TooLong {
                len: 1000,
                max: 999,
                ..
            })
        ),
        "{end:?}"
    );
}

#[test]
fn bad_checksum_names_expected_and_found() {
    let mut w = RdbWriter::new(10);
    w.string(b"a", b"b");
    let mut data = w.finish();
    let n = data.len();
    data[n - 1] ^= 0x80;
    let (items, end) = parse_all(&data, ParserOptions::default());
    let e = end.expect_err("bad crc");
    let RdbError::ChecksumMismatch {
        offset,
        expected,
        found,
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(offset, n as u64 - 8);
    assert_eq!(found ^ expected, 0x80 << 56);
    let text = e.to_string();
    assert!(
        text.contains(&format!("{expected:#018x}")) && text.contains(&format!("{found:#018x}"))
    );
    // The key was yielded before the end was reached; the End item was not.
    assert_eq!(keys(&items).len(), 1);
    assert!(!items.iter().any(|i| matches!(i, Item::End { .. })));
}

#[test]
fn bad_headers() {
    for (data, ok) in [
        (&b"REDIS0012"[..], true),
        (b"REDIS0001", true),
        (b"VALKEY080", true),
        (b"REDIS0000", false),
        (b"REDIS0013", false),
        (b"REDIS0080", false),
        (b"VALKEY012", false),
        (b"REDIX0009", false),
        (b"RED1S0009", false),
        (b"REDIS00x9", false),
        (b"*3\r\n$3\r\nSET", false),
    ] {
        let mut p = RdbParser::new(ParserOptions::default());
        p.feed(data);
        let r = p.next_item();
        assert_eq!(r.is_ok(), ok, "{:?}: {r:?}", String::from_utf8_lossy(data));
    }
    // A wrong magic is reported as soon as the first bytes show it, not after 9 bytes.
    let mut p = RdbParser::new(ParserOptions::default());
    p.feed(b"+");
    assert!(matches!(p.next_item(), Err(RdbError::BadMagic { .. })));
    let mut p = RdbParser::new(ParserOptions::default());
    p.feed(b"RED");
    assert!(matches!(p.next_item(), Ok(None)));
    assert!(matches!(
        p.finish(),
        Err(RdbError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn unknown_types_and_opcodes() {
    for ty in [8u8, 26, 100, 242, 243] {
        let mut w = RdbWriter::new(12);
        w.key(ty, b"k", b"\x00");
        let (_, end) = parse_all(&w.finish(), ParserOptions::default());
        assert!(
            matches!(end, Err(RdbError::UnknownType { rdb_type, offset: 9 }) if rdb_type == ty),
            "{ty}: {end:?}"
        );
    }
    // Redis's 7.4 types 23..25 do not exist under the VALKEY magic (23 is Valkey's path hash).
    for ty in [23u8, 24, 25] {
        let mut w = RdbWriter::valkey(80);
        w.key(ty, b"k", b"\x00");
        let (_, end) = parse_all(&w.finish(), ParserOptions::default());
        assert!(
            matches!(end, Err(RdbError::UnknownType { .. })),
            "{ty}: {end:?}"
        );
    }
}

#[test]
fn expire_in_seconds_and_negative_zset_nan() {
    let mut w = RdbWriter::new(2);
    w.expire_s(1_000_000_000).string(b"k", b"v");
    let items = parse_ok_data(&w.finish());
    assert_eq!(key(&items, "k").expire_at_ms, Some(1_000_000_000_000));

    // Redis refuses NaN scores; so do we.
    let mut w = RdbWriter::new(9);
    w.key(t::ZSET_2, b"z", &body::zset2(&[(b"m", f64::NAN)]));
    let (_, end) = parse_all(&w.finish(), ParserOptions::default());
    assert!(
        matches!(
            end,
            Err(RdbError::Corrupt {
                what: "sorted set",
                ..
            })
        ),
        "{end:?}"
    );
    let mut w = RdbWriter::new(9);
    w.key(t::ZSET, b"z", &body::zset_text(&[(b"m", f64::NAN)]));
    let (_, end) = parse_all(&w.finish(), ParserOptions::default());
    assert!(matches!(end, Err(RdbError::Corrupt { .. })), "{end:?}");
}

fn parse_ok_data(data: &[u8]) -> Vec<Item> {
    let (items, end) = parse_all(data, ParserOptions::default());
    end.expect("complete");
    items
}

/// Found by the `rdb_parser` fuzz target: an empty string whose length prefix alone is
/// bigger than the chunk threshold must still come out as a key (one empty chunk).
#[test]
fn empty_string_over_a_tiny_threshold_is_not_lost() {
    let rdb: &[u8] = b"REDIS0008\x00\x00\x80\x00\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00\x00";
    let mut parser = redis_sync_rdb::RdbParser::new(redis_sync_rdb::ParserOptions {
        chunk_threshold_bytes: 4,
        ..Default::default()
    });
    parser.feed(rdb);
    let mut chunks = Vec::new();
    while let Some(item) = parser.next_item().expect("valid RDB") {
        if let redis_sync_rdb::Item::Chunk(c) = item {
            chunks.push(c);
        }
    }
    parser.finish().expect("complete");
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert!(chunks[0].last && chunks[0].key.is_empty());
    assert_eq!(
        chunks[0].part,
        redis_sync_rdb::Value::String(bytes::Bytes::new())
    );
}
