//! Feeding the input in any pieces yields the same items, and big keys come as chunks that
//! put back together give the whole value.

mod support;

use proptest::prelude::*;
use redis_sync_rdb::{Item, ParserOptions, RdbParser, Value, decode_value, types as t};
use support::writer::{self, El, GroupSpec, RdbWriter, body, put_len, put_lzf_str, put_str};
use support::*;

/// Items and the error (as text: errors carry no equality) of a run.
fn run(data: &[u8], sizes: &[usize], opts: ParserOptions) -> (Vec<Item>, Result<(), String>) {
    let (items, end) = parse_pieces(data, sizes, opts);
    (items, end.map_err(|e| e.to_string()))
}

#[test]
fn one_byte_at_a_time_gives_the_same_items() {
    for name in all_fixtures() {
        let data = fixture(&name);
        let whole = run(&data, &[data.len()], ParserOptions::default());
        // The 3.7 MB fixture is fed 3 bytes at a time to keep the debug-build test short;
        // every unit still arrives split.
        let step = if data.len() > 1_000_000 { 3 } else { 1 };
        let bytewise = run(&data, &[step], ParserOptions::default());
        assert_eq!(bytewise, whole, "{name}");
    }
}

#[test]
fn tiny_threshold_chunks_reassemble_to_the_whole_values() {
    let tiny = ParserOptions {
        chunk_threshold_bytes: 16,
        chunk_elements: 3,
        ..ParserOptions::default()
    };
    let mut chunked_keys = 0;
    for name in valid_fixtures() {
        let data = fixture(&name);
        let (whole, end) = run(&data, &[data.len()], ParserOptions::default());
        end.unwrap_or_else(|e| panic!("{name}: {e}"));
        for sizes in [vec![data.len()], vec![1], vec![7, 300, 2, 4096]] {
            let (parts, end) = run(&data, &sizes, tiny.clone());
            end.unwrap_or_else(|e| panic!("{name}: {e}"));
            chunked_keys += parts
                .iter()
                .filter(|i| matches!(i, Item::Chunk(c) if c.last))
                .count();
            assert_eq!(
                assembled(&parts, 3),
                assembled(&whole, usize::MAX),
                "{name}"
            );
            // Everything else is unchanged and in the same order.
            let others = |items: &[Item]| -> Vec<Item> {
                items
                    .iter()
                    .filter(|i| !matches!(i, Item::Key(_) | Item::Chunk(_)))
                    .cloned()
                    .collect()
            };
            assert_eq!(others(&parts), others(&whole), "{name}");
        }
    }
    assert!(chunked_keys > 1000, "only {chunked_keys} keys were chunked");
}

fn fixture_and_sizes() -> impl Strategy<Value = (usize, Vec<usize>)> {
    let n = all_fixtures().len();
    (0..n, prop::collection::vec(1usize..2048, 1..16))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_pieces_give_the_same_items((idx, sizes) in fixture_and_sizes()) {
        let name = &all_fixtures()[idx];
        let data = fixture(name);
        let whole = run(&data, &[data.len()], ParserOptions::default());
        let pieces = run(&data, &sizes, ParserOptions::default());
        prop_assert_eq!(pieces, whole, "{}", name);
    }

    #[test]
    fn random_pieces_and_thresholds_reassemble(
        (idx, sizes) in fixture_and_sizes(),
        threshold in 1u64..4096,
        elems in 1usize..50,
    ) {
        let name = &all_fixtures()[idx];
        prop_assume!(!NEGATIVE.contains(&name.as_str()));
        let data = fixture(name);
        let (whole, _) = run(&data, &[data.len()], ParserOptions::default());
        let opts = ParserOptions {
            chunk_threshold_bytes: threshold,
            chunk_elements: elems,
            ..ParserOptions::default()
        };
        let (parts, end) = run(&data, &sizes, opts);
        prop_assert!(end.is_ok(), "{}: {:?}", name, end);
        prop_assert_eq!(assembled(&parts, elems), assembled(&whole, usize::MAX), "{}", name);
    }
}

/// Parses with `opts`, feeding `piece` bytes at a time, and checks the buffer never holds
/// more than `max_buffered` bytes after a feed.
fn parse_bounded(data: &[u8], piece: usize, opts: ParserOptions, max_buffered: usize) -> Vec<Item> {
    let mut p = RdbParser::new(opts);
    let mut items = Vec::new();
    for c in data.chunks(piece) {
        p.feed(c);
        assert!(
            p.buffered() <= max_buffered,
            "buffered {} > {max_buffered}",
            p.buffered()
        );
        while let Some(i) = p.next_item().expect("parse") {
            items.push(i);
        }
    }
    p.finish().expect("complete");
    items
}

#[test]
fn big_string_is_streamed_in_parts() {
    let value: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = RdbWriter::new(11);
    w.select_db(3)
        .expire_ms(1_900_000_000_000)
        .string(b"big", &value);
    w.string(b"small", b"v");
    let data = w.finish();
    let opts = ParserOptions {
        chunk_threshold_bytes: 64 * 1024,
        ..ParserOptions::default()
    };
    // Fed 32 KiB at a time, the parser never holds more than about a part and a piece.
    let items = parse_bounded(&data, 32 * 1024, opts, 64 * 1024 + 2 * 32 * 1024);
    let chunks: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Item::Chunk(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(chunks.len(), 5_000_000usize.div_ceil(64 * 1024));
    let mut joined = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index as usize, i);
        assert_eq!(c.last, i == chunks.len() - 1);
        assert_eq!(
            (c.db, c.expire_at_ms, c.rdb_type),
            (3, Some(1_900_000_000_000), t::STRING)
        );
        let Value::String(s) = &c.part else { panic!() };
        assert!(s.len() <= 64 * 1024);
        joined.extend_from_slice(s);
    }
    assert_eq!(joined, value);
    assert_eq!(key(&items, "small").value, Value::String("v".into()));
    assert_eq!(key(&items, "small").expire_at_ms, None);
}

#[test]
fn big_lzf_string_is_cut_in_parts() {
    let n = 3_000_000;
    let compressed = writer::lzf_run(b'z', n);
    let mut b = Vec::new();
    put_lzf_str(&mut b, &compressed, n);
    let mut w = RdbWriter::new(9);
    w.key(t::STRING, b"lzf", &b);
    let data = w.finish();
    // Small threshold: the compressed form (about 34 KB) is itself above it.
    let opts = ParserOptions {
        chunk_threshold_bytes: 1000,
        ..ParserOptions::default()
    };
    let items = parse_pieces(&data, &[100], opts).0;
    let got = assembled(&items, usize::MAX);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].3, Value::String(vec![b'z'; n].into()));
    // Whole with the default threshold: a Key with a dump body that decodes the same.
    let items = parse_ok_data(&data);
    let k = key(&items, "lzf");
    assert_eq!(
        decode_value(&k.dump_body, 9, false).expect("decode"),
        k.value
    );
}

fn parse_ok_data(data: &[u8]) -> Vec<Item> {
    let (items, end) = parse_all(data, ParserOptions::default());
    end.expect("complete");
    items
}

/// Builds one RDB holding one big key of every collection encoding.
fn big_collections() -> Vec<u8> {
    let mut w = RdbWriter::new(12);
    w.select_db(0);
    let items: Vec<Vec<u8>> = (0..5000)
        .map(|i| format!("item-{i:05}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = items.iter().map(|v| v.as_slice()).collect();
    w.key(t::LIST, b"list", &body::list(&refs));
    w.key(t::SET, b"set", &body::set(&refs));
    let zs: Vec<(&[u8], f64)> = refs
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, i as f64 / 3.0))
        .collect();
    w.key(t::ZSET_2, b"zset2", &body::zset2(&zs));
    w.key(t::ZSET, b"zset", &body::zset_text(&zs));
    let hs: Vec<(&[u8], &[u8])> = refs.iter().map(|m| (*m, *m)).collect();
    w.key(t::HASH, b"hash", &body::hash(&hs));
    // Quicklist 2: 50 listpack nodes of 100 items, plus a plain node.
    let mut nodes = Vec::new();
    for c in refs.chunks(100) {
        let els: Vec<El<'_>> = c.iter().map(|m| El::Str(m)).collect();
        nodes.push(writer::listpack(&els));
    }
    let mut ql = body::quicklist2(&nodes);
    // Bump the node count and append a plain node.
    let mut fixed = Vec::new();
    put_len(&mut fixed, nodes.len() as u64 + 1);
    let skip = if nodes.len() < 64 { 1 } else { 2 };
    fixed.extend_from_slice(&ql[skip..]);
    put_len(&mut fixed, 1);
    put_str(&mut fixed, &vec![b'P'; 3000]);
    ql = fixed;
    w.key(t::LIST_QUICKLIST_2, b"quicklist", &ql);
    // One big listpack hash and an intset.
    let mut els = Vec::new();
    for m in &refs {
        els.push(El::Str(m));
        els.push(El::Int(7));
    }
    w.key(
        t::HASH_LISTPACK,
        b"hash_lp",
        &body::blob(&writer::listpack(&els)),
    );
    let members: Vec<i64> = (0..5000).map(|i| i * 1_000_003).collect();
    w.key(
        t::SET_INTSET,
        b"intset",
        &body::blob(&writer::intset(&members)),
    );
    // A stream of 20 nodes x 100 entries with a group.
    let mut nodes = Vec::new();
    let mut ms = 1_700_000_000_000u64;
    let mut all_ids = Vec::new();
    for _ in 0..20 {
        let entries: Vec<writer::EntrySpec> = (0..100)
            .map(|i| {
                ms += 1;
                all_ids.push((ms, 0));
                ((ms, 0), vec![format!("v{i}").into_bytes(), b"x".to_vec()])
            })
            .collect();
        nodes.push(writer::stream_node(&[b"f", b"g"], &entries));
    }
    let group = GroupSpec {
        name: b"g1".to_vec(),
        last_id: all_ids[10],
        entries_read: 11,
        pel: vec![
            (all_ids[3], 1_700_000_000_500, 2),
            (all_ids[7], 1_700_000_000_600, 1),
        ],
        consumers: vec![
            (b"alice".to_vec(), 1, 2, vec![all_ids[3]]),
            (b"bob".to_vec(), 3, 4, vec![all_ids[7]]),
            (b"carol".to_vec(), 5, 6, vec![]),
        ],
    };
    let last = *all_ids.last().expect("ids");
    w.key(
        t::STREAM_LISTPACKS_3,
        b"stream",
        &writer::stream3(&nodes, 2000, last, all_ids[0], 2000, &[group]),
    );
    w.string(b"after", b"ok");
    w.finish()
}

#[test]
fn big_collections_come_in_chunks_of_bounded_size() {
    let data = big_collections();
    let whole = parse_ok_data(&data);
    // Default threshold: everything is small enough to be whole; dump bodies decode.
    for k in keys(&whole) {
        assert_eq!(
            decode_value(&k.dump_body, 12, false).expect("decode"),
            k.value
        );
    }
    let opts = ParserOptions {
        chunk_threshold_bytes: 4096,
        chunk_elements: 100,
        ..ParserOptions::default()
    };
    for piece in [1usize, 13, 1000, data.len()] {
        let (parts, end) = parse_pieces(&data, &[piece], opts.clone());
        end.expect("complete");
        let n_chunks = parts.iter().filter(|i| matches!(i, Item::Chunk(_))).count();
        assert!(n_chunks > 400, "{n_chunks} chunks");
        assert_eq!(assembled(&parts, 100), assembled(&whole, usize::MAX));
        // Only the small key after them is whole.
        assert_eq!(keys(&parts).len(), 1);
        // Stream metadata and groups ride on the last chunk only.
        for i in &parts {
            if let Item::Chunk(c) = i
                && let Value::Stream(s) = &c.part
            {
                assert_eq!(s.meta.is_some(), c.last);
                assert_eq!(!s.groups.is_empty(), c.last);
            }
        }
    }
    let Value::Stream(s) = &key(&whole, "stream").value else {
        panic!()
    };
    assert_eq!(s.entries.len(), 2000);
    let g = &s.groups[0];
    assert_eq!(g.pending[0].consumer.as_deref(), Some(&b"alice"[..]));
    assert_eq!(g.pending[1].consumer.as_deref(), Some(&b"bob"[..]));
    assert_eq!(g.consumers[2].pending, vec![]);
    let Value::List(l) = &key(&whole, "quicklist").value else {
        panic!()
    };
    assert_eq!(l.len(), 5001);
    assert_eq!(l[5000].len(), 3000);
}

#[test]
fn buffer_stays_bounded_while_a_big_collection_streams() {
    // A 20 MB list of 200 000 items is never held: the buffer stays near the threshold.
    let items: Vec<Vec<u8>> = (0..200_000)
        .map(|i| format!("{i:0100}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = items.iter().map(|v| v.as_slice()).collect();
    let mut w = RdbWriter::new(9);
    w.key(t::LIST, b"l", &body::list(&refs));
    let data = w.finish();
    let opts = ParserOptions {
        chunk_threshold_bytes: 256 * 1024,
        chunk_elements: 1000,
        ..ParserOptions::default()
    };
    let got = parse_bounded(&data, 64 * 1024, opts, 256 * 1024 + 3 * 64 * 1024);
    let Value::List(l) = &assembled(&got, 1000)[0].3 else {
        panic!()
    };
    assert_eq!(l.len(), 200_000);
    assert_eq!(l[123_456].as_ref(), format!("{:0100}", 123_456).as_bytes());
}
