//! Every fixture in tests/data parses (or fails as documented in tests/data/SOURCES.md),
//! with its contents checked wherever the source states them.

mod support;

use bytes::Bytes;
use redis_sync_rdb::{
    HashField, Item, ParserOptions, RdbError, StreamId, Value, decode_value, dump, types as t,
};
use support::*;

fn strings(v: &[&str]) -> Vec<Bytes> {
    v.iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

fn sorted(mut v: Vec<Bytes>) -> Vec<Bytes> {
    v.sort();
    v
}

fn list(v: &Value) -> &Vec<Bytes> {
    match v {
        Value::List(l) => l,
        other => panic!("not a list: {other:?}"),
    }
}

fn set(v: &Value) -> Vec<Bytes> {
    match v {
        Value::Set(s) => sorted(s.clone()),
        other => panic!("not a set: {other:?}"),
    }
}

fn hash(v: &Value) -> Vec<(String, String, Option<i64>)> {
    let Value::Hash(h) = v else {
        panic!("not a hash: {v:?}")
    };
    let mut out: Vec<_> = h
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(&f.field).into_owned(),
                String::from_utf8_lossy(&f.value).into_owned(),
                f.expire_at_ms,
            )
        })
        .collect();
    out.sort();
    out
}

fn zset(v: &Value) -> Vec<(String, f64)> {
    let Value::ZSet(z) = v else {
        panic!("not a zset: {v:?}")
    };
    z.iter()
        .map(|(m, s)| (String::from_utf8_lossy(m).into_owned(), *s))
        .collect()
}

fn string(v: &Value) -> &[u8] {
    match v {
        Value::String(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[test]
fn every_valid_fixture_parses_to_the_end() {
    let names = valid_fixtures();
    assert_eq!(all_fixtures().len(), 70, "all 70 fixtures are present");
    for name in names {
        let items = parse_ok(&name);
        assert!(
            matches!(items.first(), Some(Item::Header { .. })),
            "{name} starts with the header"
        );
        assert!(
            matches!(items.last(), Some(Item::End { .. })),
            "{name} ends with End"
        );
    }
}

#[test]
fn negative_fixtures_fail_with_typed_errors() {
    let (_, e) = parse_all(&fixture("corrupt_ziplist.rdb"), ParserOptions::default());
    let e = e.expect_err("corrupt ziplist must fail");
    assert!(
        matches!(
            e,
            RdbError::Encoding {
                what: "hash ziplist",
                ..
            }
        ),
        "{e}"
    );

    let (_, e) = parse_all(&fixture("replicator_module.rdb"), ParserOptions::default());
    let e = e.expect_err("type 6 must fail");
    assert!(matches!(e, RdbError::ModulePreGa { offset: 1257 }), "{e}");
    assert!(e.to_string().contains("pre-release module"), "{e}");

    let (items, e) = parse_all(
        &fixture("replicator_function.rdb"),
        ParserOptions::default(),
    );
    let e = e.expect_err("opcode 246 must fail");
    assert!(matches!(e, RdbError::FunctionPreGa { .. }), "{e}");
    assert!(e.to_string().contains("pre-release function format"), "{e}");
    // What came before the failure was still yielded.
    assert!(items.iter().any(|i| matches!(i, Item::Aux { .. })));
}

#[test]
fn checksums_are_verified() {
    let mut verified = 0;
    for name in valid_fixtures() {
        let data = fixture(&name);
        let items = parse_ok(&name);
        let Some(Item::Header { version, .. }) = items.first() else {
            panic!()
        };
        let Some(Item::End { checksum }) = items.last() else {
            panic!()
        };
        if *version < 5 {
            assert_eq!(*checksum, None, "{name}");
            continue;
        }
        let stored = checksum.expect("RDB 5+ has a checksum");
        if stored == 0 {
            continue;
        }
        verified += 1;
        // Flip one bit of the stored checksum: the parser must refuse it and say both values.
        let mut bad = data.clone();
        let eof = items_end_offset(&data);
        bad[eof + 1] ^= 0x01;
        let (_, e) = parse_all(&bad, ParserOptions::default());
        match e {
            Err(RdbError::ChecksumMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, stored, "{name}");
                assert_eq!(found, stored ^ 1, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // Unless checking is off.
        let (_, e) = parse_all(
            &bad,
            ParserOptions {
                verify_checksum: false,
                ..ParserOptions::default()
            },
        );
        e.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verified >= 40, "only {verified} fixtures had a checksum");
}

/// Offset of the EOF opcode: the stored checksum is the last 8 bytes of the RDB, except
/// for the one fixture that carries a 40-byte diskless EOF mark after it.
fn items_end_offset(data: &[u8]) -> usize {
    let mut p = redis_sync_rdb::RdbParser::new(ParserOptions::default());
    p.feed(data);
    while p.next_item().expect("parse").is_some() {}
    assert!(p.is_done());
    p.offset() as usize - 9
}

#[test]
fn trailing_eof_mark_is_counted_not_parsed() {
    // redis_40_with_module.rdb was captured from a diskless transfer: checksum 0 and a
    // 40-byte `$EOF:` mark after it.
    let data = fixture("redis_40_with_module.rdb");
    let mut p = redis_sync_rdb::RdbParser::new(ParserOptions::default());
    p.feed(&data);
    let mut items = Vec::new();
    while let Some(i) = p.next_item().expect("parse") {
        items.push(i);
    }
    p.finish().expect("complete");
    assert_eq!(p.trailing_bytes(), 40);
    assert_eq!(items.last(), Some(&Item::End { checksum: Some(0) }));
    let foo = key(&items, "foo");
    assert_eq!(foo.rdb_type, t::MODULE_2);
    assert_eq!(
        foo.value,
        Value::Module {
            module_type: "ReJSON-RL".into(),
            encoding_version: 0
        }
    );
}

#[test]
fn dump_bodies_decode_to_the_same_values_and_frame() {
    for name in valid_fixtures() {
        let items = parse_ok(&name);
        let Some(Item::Header { version, valkey }) = items.first() else {
            panic!()
        };
        for k in keys(&items) {
            assert_eq!(k.dump_body[0], k.rdb_type, "{name}");
            let v = decode_value(&k.dump_body, *version, *valkey)
                .unwrap_or_else(|e| panic!("{name} {:?}: {e}", k.key));
            assert_eq!(v, k.value, "{name} {:?}", k.key);
            let framed = dump::frame(&k.dump_body, *version as u16);
            let (ver, body) = dump::unframe(&framed).expect("unframe");
            assert_eq!((u32::from(ver), body), (*version, &k.dump_body[..]));
        }
    }
}

#[test]
fn empty_keys_are_skipped_like_redis() {
    let items = parse_ok("corrupt_empty_keys.rdb");
    assert_eq!(keys(&items).len(), 0);
    assert!(items.contains(&Item::ResizeDb {
        db_size: 9,
        expires_size: 0
    }));
}

#[test]
fn intsets() {
    let items = parse_ok("intset_16.rdb");
    assert_eq!(
        set(&key(&items, "intset_16").value),
        sorted(strings(&["32764", "32765", "32766"]))
    );
    let items = parse_ok("intset_32.rdb");
    assert_eq!(
        set(&key(&items, "intset_32").value),
        sorted(
            [0x7ffefffc_i64, 0x7ffefffd, 0x7ffefffe]
                .iter()
                .map(|v| Bytes::from(v.to_string()))
                .collect()
        )
    );
    let items = parse_ok("intset_64.rdb");
    assert_eq!(
        set(&key(&items, "intset_64").value),
        sorted(
            [
                0x7ffefffefffefffc_i64,
                0x7ffefffefffefffd,
                0x7ffefffefffefffe
            ]
            .iter()
            .map(|v| Bytes::from(v.to_string()))
            .collect()
        )
    );
}

#[test]
fn expiry_in_milliseconds() {
    let items = parse_ok("keys_with_expiry.rdb");
    let k = key(&items, "expires_ms_precision");
    // 2022-12-25 10:11:12.573 UTC
    assert_eq!(k.expire_at_ms, Some(1_671_963_072_573));
    assert_eq!(string(&k.value), b"2022-12-25 10:11:12.573 UTC");

    let items = parse_ok("expiration.rdb");
    assert_eq!(
        keys(&items)
            .iter()
            .filter(|k| k.expire_at_ms.is_some())
            .count(),
        1
    );
}

#[test]
fn multiple_databases() {
    let items = parse_ok("multiple_databases.rdb");
    let k0 = key(&items, "key_in_zeroth_database");
    assert_eq!((k0.db, string(&k0.value)), (0, &b"zero"[..]));
    let k2 = key(&items, "key_in_second_database");
    assert_eq!((k2.db, string(&k2.value)), (2, &b"second"[..]));
    assert!(items.contains(&Item::SelectDb(2)));
}

#[test]
fn ziplist_with_every_integer_encoding() {
    let items = parse_ok("ziplist_with_integers.rdb");
    let expected: Vec<Bytes> = [
        0i64,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        -2,
        13,
        25,
        -61,
        63,
        16380,
        -16000,
        65535,
        -65523,
        4194304,
        0x7fffffffffffffff,
    ]
    .iter()
    .map(|v| Bytes::from(v.to_string()))
    .collect();
    assert_eq!(list(&key(&items, "ziplist_with_integers").value), &expected);
}

#[test]
fn zipmaps_and_big_ziplist_values() {
    let items = parse_ok("zipmap_with_big_values.rdb");
    let h = hash(&key(&items, "zipmap_with_big_values").value);
    let lens: Vec<(String, usize)> = h.iter().map(|(f, v, _)| (f.clone(), v.len())).collect();
    for (field, len) in [
        ("253bytes", 253),
        ("254bytes", 254),
        ("255bytes", 255),
        ("300bytes", 300),
        ("20kbytes", 20_000),
    ] {
        assert!(
            lens.contains(&(field.to_string(), len)),
            "{field}: {lens:?}"
        );
    }

    let items = parse_ok("zipmap_that_compresses_easily.rdb");
    assert_eq!(
        hash(&key(&items, "zipmap_compresses_easily").value),
        vec![
            ("a".into(), "aa".into(), None),
            ("aa".into(), "aaaa".into(), None),
            ("aaaaa".into(), "aaaaaaaaaaaaaa".into(), None),
        ]
    );
    for name in ["zipmap_that_doesnt_compress.rdb", "zipmap_big_len.rdb"] {
        let items = parse_ok(name);
        assert_eq!(
            hash(&key(&items, "zimap_doesnt_compress").value),
            vec![
                ("MKD1G6".into(), "2".into(), None),
                ("YNNXK".into(), "F7TI".into(), None),
            ],
            "{name}"
        );
    }
    let items = parse_ok("hash-zipmap.rdb");
    assert_eq!(
        hash(&key(&items, "hash").value),
        vec![
            ("f1".into(), "v1".into(), None),
            ("f2".into(), "v2".into(), None)
        ]
    );
    let items = parse_ok("hash-ziplist.rdb");
    assert_eq!(
        hash(&key(&items, "hash").value),
        vec![
            ("f1".into(), "v1".into(), None),
            ("f2".into(), "v2".into(), None)
        ]
    );
}

#[test]
fn sorted_sets() {
    let items = parse_ok("sorted_set_as_ziplist.rdb");
    let scores: Vec<f64> = zset(&key(&items, "sorted_set_as_ziplist").value)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(scores, vec![1.0, 2.37, 3.423]);

    let items = parse_ok("zset-ziplist.rdb");
    assert_eq!(
        zset(&key(&items, "zset").value),
        vec![("one".into(), 1.0), ("two".into(), 2.0)]
    );

    let items = parse_ok("rdb_version_8_with_64b_length_and_scores.rdb");
    assert_eq!(string(&key(&items, "foo").value), b"bar");
    let big = zset(&key(&items, "bigset").value);
    assert_eq!(big.len(), 1000);
    // The stored score is the literal 2.718, not Euler's number.
    let final_score: f64 = "2.718".parse().expect("number");
    assert!(big.contains(&("finalfield".into(), final_score)));
    assert_eq!(key(&items, "bigset").rdb_type, t::ZSET_2);

    let items = parse_ok("regular_sorted_set.rdb");
    assert_eq!(keys(&items)[0].rdb_type, t::ZSET);
    assert!(!zset(&keys(&items)[0].value).is_empty());
}

#[test]
fn listpack_fixture() {
    let items = parse_ok("listpack.rdb");
    assert_eq!(
        list(&key(&items, "l").value),
        &strings(&[
            "1",
            "20000",
            "aaaa",
            "4",
            "16380",
            "-16380",
            "1048576",
            "268435456",
            "8589934592"
        ])
    );
    let z = zset(&key(&items, "z").value);
    assert_eq!(z.len(), 12);
    assert!(z.contains(&("10".into(), 8589934592.0)));
    assert!(z.contains(&("11".into(), -8589934592.0)));
    assert_eq!(key(&items, "h").rdb_type, t::HASH_LISTPACK);

    let items = parse_ok("set_listpack.rdb");
    assert_eq!(set(&key(&items, "s").value), strings(&["a", "b", "c", "d"]));
}

#[test]
fn hash_field_expiration() {
    let items = parse_ok("hash_with_hfe.rdb");
    let k = key(&items, "hash-hfe");
    assert_eq!(k.rdb_type, t::HASH_METADATA);
    let mut expected: Vec<(String, String, Option<i64>)> = (1..=8)
        .map(|i| (format!("F{i}"), format!("V{i}"), None))
        .collect();
    expected[0].2 = Some(2_755_482_424_661);
    expected[1].2 = Some(2_755_483_429_282);
    expected[2].2 = Some(2_755_484_433_842);
    assert_eq!(hash(&k.value), expected);

    {
        let items = parse_ok("hash_as_listpack_with_hfe.rdb");
        let k = key(&items, "listpack-hfe");
        assert_eq!(k.rdb_type, t::HASH_LISTPACK_EX);
        assert_eq!(
            hash(&k.value),
            vec![
                ("F1".into(), "V1".into(), Some(2_755_482_478_325)),
                ("F2".into(), "V2".into(), None),
                ("F3".into(), "V3".into(), Some(2_755_484_483_878)),
            ]
        );
    }

    let items = parse_ok("replicator_dump-ttlhash.rdb");
    let ks = keys(&items);
    assert_eq!(ks.len(), 3);
    assert_eq!(
        hash(&key(&items, "ttlhash").value),
        vec![
            ("f1".into(), "v1".into(), Some(1_749_382_305_204)),
            ("f2".into(), "v2".into(), Some(1_749_482_309_994)),
            ("f3".into(), "v3".into(), None),
        ]
    );
    let meta = key(&items, "ttlhash1");
    assert_eq!(meta.rdb_type, t::HASH_METADATA);
    let Value::Hash(fields) = &meta.value else {
        panic!()
    };
    assert!(fields.iter().any(|f| f.expire_at_ms.is_some()));
}

#[test]
fn valkey_hash2() {
    let items = parse_ok("valkey_hash2_with_hfe.rdb");
    assert_eq!(
        items[0],
        Item::Header {
            version: 80,
            valkey: true
        }
    );
    let k = key(&items, "hash2-hfe");
    assert_eq!(k.rdb_type, t::VALKEY_HASH_2);
    assert_eq!(
        hash(&k.value),
        vec![
            ("F1".into(), "V1".into(), Some(2_715_785_640_000)),
            ("F2".into(), "V2".into(), Some(2_400_425_640_000)),
            ("F3".into(), "V3".into(), None),
        ]
    );
    // The same bytes under a REDIS magic are Redis's pre-GA type 22, not Valkey's: the
    // layout differs, so they must not decode to the same thing.
    let redis = decode_value(&k.dump_body, 12, false);
    assert_ne!(redis.ok(), Some(k.value.clone()));
}

#[test]
fn streams() {
    let items = parse_ok("stream_listoacks_3.rdb");
    let Value::Stream(s) = &key(&items, "mystream").value else {
        panic!()
    };
    assert_eq!(s.entries.len(), 1);
    assert_eq!(
        s.entries[0].fields,
        vec![
            (Bytes::from("name"), Bytes::from("Sara")),
            (Bytes::from("surname"), Bytes::from("OConnor"))
        ]
    );
    let g = &s.groups[0];
    assert_eq!(g.name, "consumer-group-name");
    assert_eq!(g.entries_read, Some(1));
    assert_eq!(g.pending.len(), 1);
    assert_eq!(g.pending[0].id, s.entries[0].id);
    assert_eq!(
        g.pending[0].consumer.as_deref(),
        Some(&b"consumer-name"[..])
    );
    assert_eq!(g.consumers.len(), 1);
    assert_eq!(g.consumers[0].name, "consumer-name");
    assert_eq!(g.consumers[0].seen_time_ms, 1_704_557_998_397);
    assert_eq!(g.consumers[0].active_time_ms, 1_704_557_998_397);
    assert_eq!(g.consumers[0].pending, vec![s.entries[0].id]);

    let items = parse_ok("stream_listpacks_2.rdb");
    let Value::Stream(s) = &key(&items, "astream").value else {
        panic!()
    };
    assert_eq!(s.entries.len(), 2);
    let meta = s.meta.expect("meta");
    assert_eq!(meta.max_deleted_id, StreamId::default());
    assert_eq!(meta.entries_added, 2);
    assert_eq!(meta.length, 2);
    assert_eq!(meta.first_id, s.entries[0].id);
    assert_eq!(meta.last_id, s.entries[1].id);

    let items = parse_ok("redis_50_with_streams.rdb");
    let Value::Stream(s) = &key(&items, "mystream").value else {
        panic!()
    };
    assert_eq!(s.entries.len(), 4);
    assert_eq!(s.meta.expect("meta").length, 4);

    let items = parse_ok("issue27.rdb");
    let Value::Stream(s) = &keys(&items)[0].value else {
        panic!()
    };
    assert_eq!(s.entries.len() as u64, s.meta.expect("meta").length);

    // The "trim" stream of stream_listpacks_1 was written by a pre-release 5.0 build: its
    // nodes hold 23 + 52 + 43 live entries and 32 tombstones, but its stored length still
    // counts the 2 entries deleted from a node that survived, so it says 120.
    let items = parse_ok("stream_listpacks_1.rdb");
    let Value::Stream(s) = &key(&items, "trim").value else {
        panic!()
    };
    assert_eq!((s.entries.len(), s.meta.expect("meta").length), (118, 120));
    assert_eq!(keys(&items).len(), 5);

    for name in ["replicator_stream2.rdb", "replicator_dumpV11.rdb"] {
        for k in keys(&parse_ok(name)) {
            if k.key.as_ref() == b"trim" {
                continue;
            }
            if let Value::Stream(s) = &k.value {
                let meta = s.meta.expect("meta");
                assert_eq!(s.entries.len() as u64, meta.length, "{name}");
                assert!(s.entries.windows(2).all(|w| w[0].id < w[1].id), "{name}");
            }
        }
    }
}

#[test]
fn modules_functions_and_opcodes() {
    let items = parse_ok("replicator_dump-module-2.rdb");
    let k = key(&items, "modulekey");
    assert_eq!(
        k.value,
        Value::Module {
            module_type: "hellotype".into(),
            encoding_version: 0
        }
    );
    assert_eq!(k.idle, Some(2));

    let items = parse_ok("redis_60_with_module_aux.rdb");
    assert!(items.iter().any(|i| matches!(
        i,
        Item::ModuleAux { module_name, .. } if module_name == "test__rdb"
    )));

    for name in ["function.rdb", "replicator_function2.rdb"] {
        let items = parse_ok(name);
        let code = items
            .iter()
            .find_map(|i| match i {
                Item::Function { code } => Some(code.clone()),
                _ => None,
            })
            .expect("a function");
        assert!(code.starts_with(b"#!lua name="), "{name}");
    }
    let items = parse_ok("replicator_listpack-bug.rdb");
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, Item::Function { .. }))
            .count(),
        3
    );
    assert_eq!(keys(&items).len(), 237);

    let items = parse_ok("replicator_dump-lfu.rdb");
    assert_eq!(keys(&items).iter().filter(|k| k.freq.is_some()).count(), 2);
    let items = parse_ok("replicator_dump-lru.rdb");
    assert_eq!(keys(&items).iter().filter(|k| k.idle.is_some()).count(), 2);

    let items = parse_ok("replicator_dump-slot.rdb");
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, Item::SlotInfo { .. }))
            .count(),
        4
    );
    assert_eq!(keys(&items).len(), 5);
}

#[test]
fn aux_fields() {
    let data = fixture("scriptbackup.rdb");
    let mut p = redis_sync_rdb::RdbParser::new(ParserOptions::default());
    p.feed(&data);
    while p.next_item().expect("parse").is_some() {}
    p.finish().expect("complete");
    let scripts: Vec<_> = p.aux().lua_scripts().collect();
    assert_eq!(
        scripts,
        vec![&Bytes::from("return redis.call('set', 'foo', 'bar')")]
    );
    assert_eq!(p.aux().server_version().map(|(s, _)| s), Some("redis"));

    let data = fixture("valkey_hash2_with_hfe.rdb");
    let mut p = redis_sync_rdb::RdbParser::new(ParserOptions::default());
    p.feed(&data);
    while p.next_item().expect("parse").is_some() {}
    assert_eq!(p.aux().server_version(), Some(("valkey", "9.0.1")));
    assert!(p.is_valkey());
}

#[test]
fn old_formats() {
    // RDB 2 with every old encoding.
    let items = parse_ok("parser_filters.rdb");
    assert_eq!(string(&key(&items, "k1").value), b"ssssssss");
    assert_eq!(string(&key(&items, "k3").value), b"wwwwwwww");
    for z in ["z1", "z2", "z3", "z4"] {
        assert_eq!(key(&items, z).rdb_type, t::ZSET_ZIPLIST);
    }

    let items = parse_ok("integer_keys.rdb");
    let names: Vec<String> = keys(&items)
        .iter()
        .map(|k| String::from_utf8_lossy(&k.key).into_owned())
        .collect();
    for v in [125i64, 0xABAB, 0x0AEDD325, -123, -0x7325, -0x0AEDD325] {
        assert!(names.contains(&v.to_string()), "{v}: {names:?}");
    }

    let items = parse_ok("easily_compressible_string_key.rdb");
    let k = keys(&items)[0];
    assert_eq!(k.key.as_ref(), "a".repeat(200).as_bytes());
    assert_eq!(string(&k.value), b"Key that redis should compress easily");

    let items = parse_ok("rdb_version_5_with_checksum.rdb");
    for (k, v) in [
        ("abcd", "efgh"),
        ("foo", "bar"),
        ("bar", "baz"),
        ("abcdef", "abcdef"),
        ("longerstring", "thisisalongerstring.idontknowwhatitmeans"),
    ] {
        assert_eq!(string(&key(&items, k).value), v.as_bytes());
    }

    let items = parse_ok("regular_set.rdb");
    assert_eq!(
        set(&key(&items, "regular_set").value),
        sorted(strings(&[
            "alpha", "beta", "gamma", "delta", "phi", "kappa"
        ]))
    );
    let items = parse_ok("linkedlist.rdb");
    assert_eq!(list(&keys(&items)[0].value).len(), 1000);
    let items = parse_ok("dictionary.rdb");
    assert_eq!(hash(&keys(&items)[0].value).len(), 1000);
    let items = parse_ok("ziplist_that_compresses_easily.rdb");
    assert_eq!(
        list(&key(&items, "ziplist_compresses_easily").value),
        &[6, 12, 18, 24, 30, 36]
            .iter()
            .map(|n| Bytes::from("a".repeat(*n)))
            .collect::<Vec<_>>()
    );
    let items = parse_ok("list-quicklist.rdb");
    assert_eq!(string(&key(&items, "x").value), b"7");
    assert_eq!(list(&key(&items, "list").value)[0], "7");

    let items = parse_ok("replicator_dumpV6.rdb");
    assert_eq!(keys(&items).len(), 132);
    assert!(keys(&items).iter().any(|k| k.db == 1));
    let items = parse_ok("replicator_dumpV8.rdb");
    assert_eq!(keys(&items).len(), 92_499);
    assert_eq!(
        keys(&items)
            .iter()
            .filter(|k| k.expire_at_ms.is_some())
            .count(),
        2
    );
}

#[test]
fn encodings_rdb_matches_the_redis_test_suite() {
    // tests/integration/rdb.tcl "RDB encoding loading test" (csvdump: keys, hash fields and
    // set members sorted, zsets by score).
    let items = parse_ok("encodings.rdb");
    assert_eq!(keys(&items).len(), 13);
    assert_eq!(
        string(&key(&items, "compressible").value),
        "a".repeat(137).as_bytes()
    );
    assert_eq!(string(&key(&items, "number").value), b"10");
    assert_eq!(string(&key(&items, "string").value), b"Hello World");
    let hash_expected: Vec<(String, String, Option<i64>)> = [
        ("a", "1"),
        ("aa", "10"),
        ("aaa", "100"),
        ("b", "2"),
        ("bb", "20"),
        ("bbb", "200"),
        ("c", "3"),
        ("cc", "30"),
        ("ccc", "300"),
        ("ddd", "400"),
        ("eee", "5000000000"),
    ]
    .iter()
    .map(|(f, v)| (f.to_string(), v.to_string(), None))
    .collect();
    assert_eq!(hash(&key(&items, "hash").value), hash_expected);
    assert_eq!(
        hash(&key(&items, "hash_zipped").value),
        [("a", "1"), ("b", "2"), ("c", "3")]
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string(), None))
            .collect::<Vec<_>>()
    );
    let one = ["1", "2", "3", "a", "b", "c", "100000", "6000000000"];
    let three: Vec<&str> = one.iter().chain(&one).chain(&one).copied().collect();
    assert_eq!(list(&key(&items, "list").value), &strings(&three));
    assert_eq!(list(&key(&items, "list_zipped").value), &strings(&one));
    assert_eq!(
        set(&key(&items, "set").value),
        sorted(strings(&[
            "1",
            "100000",
            "2",
            "3",
            "6000000000",
            "a",
            "b",
            "c"
        ]))
    );
    assert_eq!(
        set(&key(&items, "set_zipped_1").value),
        strings(&["1", "2", "3", "4"])
    );
    assert_eq!(
        set(&key(&items, "set_zipped_2").value),
        strings(&["100000", "200000", "300000", "400000"])
    );
    assert_eq!(
        set(&key(&items, "set_zipped_3").value),
        strings(&[
            "1000000000",
            "2000000000",
            "3000000000",
            "4000000000",
            "5000000000",
            "6000000000"
        ])
    );
    let mut z = zset(&key(&items, "zset").value);
    z.sort_by(|a, b| a.1.total_cmp(&b.1));
    let expected: Vec<(String, f64)> = [
        ("a", 1.0),
        ("b", 2.0),
        ("c", 3.0),
        ("aa", 10.0),
        ("bb", 20.0),
        ("cc", 30.0),
        ("aaa", 100.0),
        ("bbb", 200.0),
        ("ccc", 300.0),
        ("aaaa", 1000.0),
        ("cccc", 123_456_789.0),
        ("bbbb", 5_000_000_000.0),
    ]
    .iter()
    .map(|(m, s)| (m.to_string(), *s))
    .collect();
    assert_eq!(z, expected);
    assert_eq!(
        zset(&key(&items, "zset_zipped").value),
        vec![("a".into(), 1.0), ("b".into(), 2.0), ("c".into(), 3.0)]
    );
}

#[test]
fn hash_fields_have_no_expiry_in_plain_hashes() {
    for name in valid_fixtures() {
        for k in keys(&parse_ok(&name)) {
            if let Value::Hash(fields) = &k.value {
                let with_ttl = fields
                    .iter()
                    .filter(|f: &&HashField| f.expire_at_ms.is_some())
                    .count();
                let ttl_types = [
                    t::HASH_METADATA,
                    t::HASH_LISTPACK_EX,
                    t::HASH_METADATA_PRE_GA,
                    t::HASH_LISTPACK_EX_PRE_GA,
                ];
                if !ttl_types.contains(&k.rdb_type) {
                    assert_eq!(with_ttl, 0, "{name}");
                }
            }
        }
    }
}
