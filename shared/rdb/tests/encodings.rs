//! The `encoding` module against blobs real Redis servers wrote, and against
//! random and damaged input (proptest): every decoder must return a value or an
//! error, never panic, whatever bytes it is given.
//!
//! Real-server vectors:
//! * `DUMP` payloads from a Redis 7.0.15 server (RDB version 10), taken for this
//!   test from keys written with `RPUSH`, `HSET`, `ZADD`, `SADD`, `SET` and
//!   `XADD`; the blobs below are slices of those payloads.
//! * Ziplists, intsets, a zipmap and an LZF string cut out of the RDB fixtures
//!   in `shared/fixtures/rdb` (see `SOURCES.md` there): `encodings.rdb`
//!   (RDB 4), `hash-ziplist.rdb` (RDB 9), `zset-ziplist.rdb` (RDB 10),
//!   `hash-zipmap.rdb` (RDB 3), `corrupt_ziplist.rdb`.

#[path = "../src/encoding/testutil.rs"]
mod testutil;

use proptest::prelude::*;
use redis_sync_rdb::encoding::{
    Element, EncodingError, crc64::crc64, intset, listpack, lzf, ziplist, zipmap,
};
use testutil::{Item, hex};

const MAX: usize = 64 << 20;

fn b(s: &str) -> Element<'_> {
    Element::Bytes(s.as_bytes())
}

fn i(v: i64) -> Element<'static> {
    Element::Int(v)
}

/// Every strict prefix of a valid blob is refused with an error.
macro_rules! assert_prefixes_fail {
    ($blob:expr, $decode:expr) => {{
        let blob: &[u8] = &$blob;
        for cut in 0..blob.len() {
            let result = $decode(&blob[..cut]);
            assert!(result.is_err(), "prefix of {cut} bytes decoded: {result:?}");
        }
    }};
}

fn to_items(elements: &[Element<'_>]) -> Vec<Item> {
    elements
        .iter()
        .map(|e| match e {
            Element::Bytes(b) => Item::Str(b.to_vec()),
            Element::Int(i) => Item::Int(*i),
        })
        .collect()
}

// ------------------------------------------------------------------ crc64

#[test]
fn crc64_check_value() {
    assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
}

#[test]
fn crc64_matches_redis_dump_trailers() {
    // A DUMP payload ends with the RDB version (2 bytes) and the CRC-64 of
    // everything before the CRC, little-endian.
    for payload in [
        DUMP_HASH,
        DUMP_LIST,
        DUMP_STREAM,
        DUMP_INTSET16,
        DUMP_STRING_LZF,
    ] {
        let payload = hex(payload);
        let (body, trailer) = payload.split_at(payload.len() - 8);
        let stored = u64::from_le_bytes(trailer.try_into().unwrap());
        assert_eq!(crc64(0, body), stored);
        let (a, rest) = body.split_at(body.len() / 2);
        assert_eq!(crc64(crc64(0, a), rest), stored);
    }
}

#[test]
fn crc64_over_the_lorem_ipsum_vector() {
    // The second vector Redis checks its implementation against (crc64.c
    // self-test): this text plus its C string terminator.
    let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis \
                nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. \
                Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu \
                fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in \
                culpa qui officia deserunt mollit anim id est laborum.\0";
    assert_eq!(crc64(0, text.as_bytes()), 0xc7794709e69683b3);
}

// ------------------------------------------------------------------ lzf

#[test]
fn lzf_string_from_redis() {
    let expected = [&"abc".repeat(80)[..], "xyz", &"q".repeat(100)].concat();
    let out = lzf::decompress(&hex(LZF_STRING), 343, MAX).unwrap();
    assert_eq!(out, expected.as_bytes());
    assert_prefixes_fail!(hex(LZF_STRING), |p| lzf::decompress(p, 343, MAX));
}

#[test]
fn lzf_string_from_redis_2_era_rdb() {
    // `compressible` in encodings.rdb: 137 times 'a'.
    let out = lzf::decompress(&hex("016161e07c00016161"), 137, MAX).unwrap();
    assert_eq!(out, vec![b'a'; 137]);
}

#[test]
fn lzf_refuses_a_wrong_length_or_limit() {
    let input = hex(LZF_STRING);
    assert!(matches!(
        lzf::decompress(&input, 342, MAX),
        Err(EncodingError::Mismatch { .. })
    ));
    assert!(matches!(
        lzf::decompress(&input, 344, MAX),
        Err(EncodingError::Mismatch { .. })
    ));
    assert!(matches!(
        lzf::decompress(&input, 343, 342),
        Err(EncodingError::OutOfRange { .. })
    ));
    assert!(matches!(
        lzf::decompress(&input, usize::MAX, usize::MAX),
        Err(EncodingError::OutOfRange { .. })
    ));
}

#[test]
fn lzf_back_reference_before_start() {
    // A literal "ab", then a reference 3 bytes back.
    assert!(matches!(
        lzf::decompress(b"\x01ab\x20\x02", 5, MAX),
        Err(EncodingError::BackReference {
            offset: 3,
            distance: 3,
            produced: 2
        })
    ));
}

// ------------------------------------------------------------------ listpack

#[test]
fn listpack_list_from_redis_every_integer_width() {
    let lp = lzf::decompress(&hex(LIST_LISTPACK_LZF), 117, MAX).unwrap();
    let expected = vec![
        i(0),
        i(127),
        i(128),
        i(-1),
        i(-4096),
        i(4095),
        i(4096),
        i(-4097),
        i(-32768),
        i(32767),
        i(32768),
        i(-8_388_608),
        i(8_388_607),
        i(8_388_608),
        i(-2_147_483_648),
        i(2_147_483_647),
        i(2_147_483_648),
        i(i64::MIN),
        i(i64::MAX),
        b(""),
        b("a"),
        b("012"),
        b("1.5"),
    ];
    assert_eq!(listpack::entries(&lp).unwrap(), expected);
    assert_prefixes_fail!(lp, listpack::entries);
}

#[test]
fn listpack_hash_from_redis() {
    let lp = hex(HASH_LISTPACK);
    assert_eq!(
        listpack::entries(&lp).unwrap(),
        vec![
            b("f1"),
            b("v1"),
            b("f2"),
            i(12345),
            b("name"),
            b("redis-sync")
        ]
    );
    assert_eq!(i(12345).to_bytes(), "12345".as_bytes());
    assert_prefixes_fail!(lp, listpack::entries);
}

#[test]
fn listpack_zset_from_redis_scores_bit_exact() {
    let lp = lzf::decompress(&hex(ZSET_LISTPACK_LZF), 114, MAX).unwrap();
    let elements = listpack::entries(&lp).unwrap();
    let pairs: Vec<(Vec<u8>, u64)> = elements
        .chunks_exact(2)
        .map(|pair| {
            (
                pair[0].to_bytes().to_vec(),
                pair[1].to_f64().unwrap().to_bits(),
            )
        })
        .collect();
    let expected: Vec<(Vec<u8>, u64)> = [
        ("small", f64::NEG_INFINITY),
        ("neg", -3.0),
        ("tenth", 0.1),
        ("one", 1.0),
        ("two", 2.5),
        ("huge", 1e300),
        ("big", f64::INFINITY),
    ]
    .into_iter()
    .map(|(m, s)| (m.as_bytes().to_vec(), s.to_bits()))
    .collect();
    assert_eq!(pairs, expected);
    // Redis 7.0 writes 0.1 as "0.10000000000000001" (%.17g).
    assert_eq!(elements[5], b("0.10000000000000001"));
    assert_prefixes_fail!(lp, listpack::entries);
}

#[test]
fn listpack_stream_node_from_redis() {
    // XADD st1 1-1 f v n 1; XADD st1 1-2 f w n 2: the master entry (count,
    // deleted, field count, fields, 0), then per entry flags (2 = same fields),
    // ms and seq deltas, the values, and the entry's element count.
    let lp = hex(STREAM_LISTPACK);
    let elements = listpack::entries(&lp).unwrap();
    let expected = vec![
        i(2),
        i(0),
        i(2),
        b("f"),
        b("n"),
        i(0),
        i(2),
        i(0),
        i(0),
        b("v"),
        i(1),
        i(5),
        i(2),
        i(0),
        i(1),
        b("w"),
        i(2),
        i(5),
    ];
    assert_eq!(elements, expected);
    assert_prefixes_fail!(lp, listpack::entries);
}

// ------------------------------------------------------------------ ziplist

#[test]
fn ziplist_list_from_redis_rdb4() {
    let zl = hex(ZIPLIST_LIST);
    assert_eq!(
        ziplist::entries(&zl).unwrap(),
        vec![
            i(1),
            i(2),
            i(3),
            b("a"),
            b("b"),
            b("c"),
            i(100_000),
            i(6_000_000_000)
        ]
    );
    assert_prefixes_fail!(zl, ziplist::entries);
}

#[test]
fn ziplist_hash_and_zset_from_redis() {
    let hash = hex(ZIPLIST_HASH);
    assert_eq!(
        ziplist::entries(&hash).unwrap(),
        vec![b("f1"), b("v1"), b("f2"), b("v2")]
    );
    assert_prefixes_fail!(hash, ziplist::entries);

    let zset = hex(ZIPLIST_ZSET);
    let elements = ziplist::entries(&zset).unwrap();
    assert_eq!(elements, vec![b("one"), i(1), b("two"), i(2)]);
    assert_eq!(elements[3].to_f64(), Ok(2.0));
    assert_prefixes_fail!(zset, ziplist::entries);

    let immediates = hex(ZIPLIST_HASH_IMMEDIATES);
    assert_eq!(
        ziplist::entries(&immediates).unwrap(),
        vec![b("a"), i(1), b("b"), i(2), b("c"), i(3)]
    );
}

#[test]
fn ziplist_corrupt_fixture_is_refused() {
    // corrupt_ziplist.rdb: a hash_ziplist whose value is "xxxxx".
    assert!(matches!(
        ziplist::entries(b"xxxxx"),
        Err(EncodingError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn ziplist_zlbytes_mismatch() {
    let mut zl = hex(ZIPLIST_LIST);
    zl[0] -= 1;
    assert_eq!(
        ziplist::entries(&zl),
        Err(EncodingError::Mismatch {
            format: redis_sync_rdb::encoding::Format::Ziplist,
            what: "zlbytes",
            offset: 0,
            expected: 48,
            found: 47
        })
    );
}

// ------------------------------------------------------------------ intset

#[test]
fn intsets_from_redis() {
    let cases: [(&str, &[i64]); 6] = [
        (INTSET16, &[-5, 1, 2, 3]),
        (INTSET32, &[-100_000, 1, 100_000]),
        (INTSET64, &[-5_000_000_000, 7, 5_000_000_000]),
        ("02000000040000000100020003000400", &[1, 2, 3, 4]),
        (
            "0400000004000000a0860100400d0300e0930400801a0600",
            &[100_000, 200_000, 300_000, 400_000],
        ),
        (
            "080000000600000000ca9a3b000000000094357700000000005ed0b20000000000286bee0000000000f2052a0100000000bca06501000000",
            &[
                1_000_000_000,
                2_000_000_000,
                3_000_000_000,
                4_000_000_000,
                5_000_000_000,
                6_000_000_000,
            ],
        ),
    ];
    for (blob, expected) in cases {
        let blob = hex(blob);
        assert_eq!(intset::members(&blob).unwrap(), expected);
        assert_prefixes_fail!(blob, intset::members);
    }
}

// ------------------------------------------------------------------ zipmap

#[test]
fn zipmap_from_redis_2_era_rdb() {
    let zm = hex(ZIPMAP_HASH);
    assert_eq!(
        zipmap::pairs(&zm).unwrap(),
        vec![(&b"f1"[..], &b"v1"[..]), (&b"f2"[..], &b"v2"[..])]
    );
    assert_prefixes_fail!(zm, zipmap::pairs);
}

// ------------------------------------------------------------------ properties

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        any::<i64>().prop_map(Item::Int),
        (-5000i64..5000).prop_map(Item::Int),
        (0i64..13).prop_map(Item::Int),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(Item::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Item::Str),
        // Long strings (every length encoding) are cheap to generate as runs.
        (any::<u8>(), 0usize..20_000).prop_map(|(b, n)| Item::Str(vec![b; n])),
    ]
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    proptest::collection::vec(item(), 0..24)
}

/// A valid blob of `kind` (0 ziplist, 1 listpack, 2 intset, 3 zipmap) made of
/// `items`.
fn blob(kind: u8, items: &[Item]) -> Vec<u8> {
    match kind {
        0 => testutil::ziplist(items),
        1 => testutil::listpack(items),
        2 => {
            let mut values: Vec<i64> = items
                .iter()
                .map(|it| match it {
                    Item::Int(v) => *v,
                    Item::Str(s) => s.len() as i64,
                })
                .collect();
            values.sort_unstable();
            values.dedup();
            testutil::intset(8, &values)
        }
        _ => {
            let strings: Vec<Vec<u8>> = items
                .iter()
                .map(|it| match it {
                    Item::Int(v) => v.to_string().into_bytes(),
                    Item::Str(s) => s.clone(),
                })
                .collect();
            let pairs: Vec<(&[u8], &[u8], u8)> = strings
                .chunks_exact(2)
                .map(|kv| (&kv[0][..], &kv[1][..], (kv[0].len() % 5) as u8))
                .collect();
            testutil::zipmap(&pairs, None)
        }
    }
}

/// Run the decoder for `kind`; the result is thrown away: what matters is
/// that it returns.
fn decode_any(kind: u8, data: &[u8]) -> bool {
    match kind {
        0 => ziplist::entries(data).is_ok(),
        1 => listpack::entries(data).is_ok(),
        2 => intset::members(data).is_ok(),
        _ => zipmap::pairs(data).is_ok(),
    }
}

proptest! {
    // 512 cases a property unless PROPTEST_CASES says otherwise (for long fuzzing runs).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600),
                                expected_len in 0usize..5000) {
        for kind in 0..4 {
            decode_any(kind, &data);
        }
        let _ = lzf::decompress(&data, expected_len, MAX);
        let _ = lzf::decompress(&data, data.len() * 3, MAX);
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600),
                                                       count in any::<u16>()) {
        // Headers that pass, so the entry walkers see the random bytes.
        let mut zl = vec![0u8; 10];
        zl.extend_from_slice(&body);
        zl.push(0xff);
        let n = zl.len() as u32;
        zl[0..4].copy_from_slice(&n.to_le_bytes());
        zl[4..8].copy_from_slice(&(n - 1).to_le_bytes());
        zl[8..10].copy_from_slice(&count.to_le_bytes());
        let _ = ziplist::entries(&zl);

        let mut lp = vec![0u8; 6];
        lp.extend_from_slice(&body);
        lp.push(0xff);
        let n = lp.len() as u32;
        lp[0..4].copy_from_slice(&n.to_le_bytes());
        lp[4..6].copy_from_slice(&count.to_le_bytes());
        let _ = listpack::entries(&lp);

        let mut zm = vec![count as u8];
        zm.extend_from_slice(&body);
        zm.push(0xff);
        let _ = zipmap::pairs(&zm);

        let mut is = vec![8, 0, 0, 0];
        is.extend_from_slice(&((body.len() / 8) as u32).to_le_bytes());
        is.extend_from_slice(&body[..body.len() / 8 * 8]);
        let _ = intset::members(&is);
    }

    #[test]
    fn damaged_valid_blobs_never_panic(kind in 0u8..4, items in items(),
                                       edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                                       cut in any::<prop::sample::Index>()) {
        let mut data = blob(kind, &items);
        prop_assert!(decode_any(kind, &data));
        for (at, byte) in edits {
            let at = at.index(data.len());
            data[at] = byte;
            decode_any(kind, &data);
        }
        decode_any(kind, &data[..cut.index(data.len())]);
    }

    #[test]
    fn ziplist_round_trips(items in items(), big_prevlen in any::<bool>(), unknown_count in any::<bool>()) {
        let zl = testutil::ziplist_with(&items, big_prevlen, unknown_count.then_some(u16::MAX));
        prop_assert_eq!(to_items(&ziplist::entries(&zl).unwrap()), items);
    }

    #[test]
    fn listpack_round_trips(items in items(), unknown_count in any::<bool>()) {
        let lp = testutil::listpack_with(&items, unknown_count.then_some(u16::MAX));
        prop_assert_eq!(to_items(&listpack::entries(&lp).unwrap()), items);
    }

    #[test]
    fn intset_round_trips(mut values in proptest::collection::vec(any::<i64>(), 0..64), width in prop_oneof![Just(2u32), Just(4), Just(8)]) {
        let shift = 64 - 8 * width;
        for v in &mut values {
            *v = (*v << shift) >> shift;
        }
        values.sort_unstable();
        values.dedup();
        prop_assert_eq!(intset::members(&testutil::intset(width, &values)).unwrap(), values);
    }

    #[test]
    fn zipmap_round_trips(pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..300),
                                                              proptest::collection::vec(any::<u8>(), 0..300),
                                                              0u8..5), 0..20)) {
        let input: Vec<(&[u8], &[u8], u8)> = pairs.iter().map(|(k, v, f)| (&k[..], &v[..], *f)).collect();
        let zm = testutil::zipmap(&input, None);
        let decoded = zipmap::pairs(&zm).unwrap();
        let expected: Vec<(&[u8], &[u8])> = input.iter().map(|&(k, v, _)| (k, v)).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn lzf_round_trips(chunks in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..40), 1usize..30), 0..40)) {
        // Repeated chunks, so that the compressor finds back-references.
        let data: Vec<u8> = chunks.iter().flat_map(|(c, n)| c.repeat(*n)).collect();
        let packed = testutil::lzf_compress(&data);
        prop_assert_eq!(lzf::decompress(&packed, data.len(), MAX).unwrap(), data);
    }

    #[test]
    fn crc64_is_incremental_and_matches_bitwise(data in proptest::collection::vec(any::<u8>(), 0..300),
                                                split in any::<prop::sample::Index>()) {
        let whole = crc64(0, &data);
        prop_assert_eq!(whole, testutil::crc64_bitwise(0, &data));
        let (a, rest) = data.split_at(split.index(data.len() + 1).min(data.len()));
        prop_assert_eq!(crc64(crc64(0, a), rest), whole);
    }

    #[test]
    fn scores_parse_bit_exact(score in any::<f64>()) {
        // Redis writes scores with %.17g (or a shortest round-trip form);
        // both must come back as the same bits.
        let shortest = format!("{score:e}");
        let parsed = Element::Bytes(shortest.as_bytes()).to_f64().unwrap();
        prop_assert!(parsed.to_bits() == score.to_bits() || (score.is_nan() && parsed.is_nan()));
        let g17 = format!("{score:.16e}");
        let parsed = Element::Bytes(g17.as_bytes()).to_f64().unwrap();
        prop_assert!(parsed.to_bits() == score.to_bits() || (score.is_nan() && parsed.is_nan()));
    }
}

// ------------------------------------------------------------------ vectors

/// `DUMP l1` (Redis 7.0.15): quicklist with one packed node, LZF-compressed.
const DUMP_LIST: &str = "120102c3407040751f75000000170000017f01c08002dfff02d00002cfff02f1001003f1ffef03f1\
0000802007117f03f200800004f200008004f2ffff7f04f32009010005200504008005f3ff20110105f4400b200301000940\
094000028009f420194000117f098001816102833031320483312e3504ff0a008dbe265a27faa79e";
/// The LZF stream inside `DUMP_LIST` (117 bytes uncompressed: a listpack).
const LIST_LISTPACK_LZF: &str = "1f75000000170000017f01c08002dfff02d00002cfff02f1001003f1ffef03f10000802007117f\
03f200800004f200008004f2ffff7f04f32009010005200504008005f3ff20110105f4400b200301000940094000028009f4201940\
00117f098001816102833031320483312e3504ff";
/// `DUMP h1`: a hash listpack.
const DUMP_HASH: &str = "1029290000000600826631038276310382663203f1393003846e616d65058a72656469732d73796e630bff0a009dc44d7c72cd049a";
/// The listpack inside `DUMP_HASH`.
const HASH_LISTPACK: &str =
    "290000000600826631038276310382663203f1393003846e616d65058a72656469732d73796e630bff";
/// The LZF stream inside `DUMP z1` (114 bytes uncompressed: a zset listpack).
const ZSET_LISTPACK_LZF: &str = "1f720000000e0085736d616c6c06842d696e6605836e656704dffd028574656e7406680693302e31\
30e005001b3114836f6e650401018374776f0483322e350484687567650597312ee005290d3031652b33303018836269670483205d0104ff";
/// `DUMP s16`: an intset of 16-bit members.
const DUMP_INTSET16: &str = "0b100200000004000000fbff0100020003000a00c8e4dfb66f7396f0";
const INTSET16: &str = "0200000004000000fbff010002000300";
const INTSET32: &str = "04000000030000006079feff01000000a0860100";
const INTSET64: &str = "0800000003000000000efad5feffffff070000000000000000f2052a01000000";
/// `DUMP str1`: a string stored LZF-compressed.
const DUMP_STRING_LZF: &str =
    "00c31341570361626361e0e3020378797a71e058000171710a00a66ccbf3eb85f5e2";
const LZF_STRING: &str = "0361626361e0e3020378797a71e05800017171";
/// `DUMP st1`: a stream with one listpack node.
const DUMP_STREAM: &str = "130110000000000000000100000000000000012f2f0000001200020100010201816602816e020001020100\
0100018176020101050102010001010181770202010501ff0201020101000002000a004677e9fe61abc816";
const STREAM_LISTPACK: &str = "2f0000001200020100010201816602816e02000102010001000181760201010501020100010101817702\
02010501ff";
/// `list_zipped` in encodings.rdb.
const ZIPLIST_LIST: &str = "3000000025000000080000c0010004c0020004c0030004016103016203016303d0a086010006e000bca06501000000ff";
/// `hash` in hash-ziplist.rdb.
const ZIPLIST_HASH: &str = "1b00000016000000040000026631040276310402663204027632ff";
/// `zset` in zset-ziplist.rdb.
const ZIPLIST_ZSET: &str = "1900000016000000040000036f6e6505f2020374776f05f3ff";
/// `hash_zipped` in encodings.rdb.
const ZIPLIST_HASH_IMMEDIATES: &str =
    "200000001b000000060000016103c0010004016203c0020004016303c00300ff";
/// `hash` in hash-zipmap.rdb.
const ZIPMAP_HASH: &str = "020266310200763102663202007632ff";
