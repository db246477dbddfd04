//! DUMP framing, CRC-64 and bit-exact scores.

mod support;

use bytes::Bytes;
use redis_sync_rdb::encoding::crc64::crc64;
use redis_sync_rdb::{Item, ParserOptions, RdbError, Value, decode_value, dump, types as t};
use support::writer::{El, RdbWriter, body, listpack, ziplist};
use support::*;

#[test]
fn crc64_is_redis_jones() {
    // The check value in Redis's crc64.c test.
    assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
}

#[test]
fn frame_and_unframe() {
    // `DUMP` of a key holding "bar" on Redis 7.x: type 0, "bar", version 10, CRC.
    let body = [0x00, 0x03, b'b', b'a', b'r'];
    let framed = dump::frame(&body, 10);
    assert_eq!(framed.len(), body.len() + 10);
    assert_eq!(&framed[5..7], &[10, 0]);
    let (ver, b) = dump::unframe(&framed).expect("valid");
    assert_eq!((ver, b), (10, &body[..]));
    assert_eq!(
        decode_value(b, u32::from(ver), false).expect("decode"),
        Value::String(Bytes::from("bar"))
    );

    for cut in 0..10 {
        assert!(matches!(
            dump::unframe(&framed[..cut]),
            Err(RdbError::DumpTooShort { len }) if len == cut
        ));
    }
    for i in 0..framed.len() {
        let mut bad = framed.clone();
        bad[i] ^= 0x10;
        assert!(
            matches!(
                dump::unframe(&bad),
                Err(RdbError::DumpChecksumMismatch { .. })
            ),
            "flip at {i}"
        );
    }
    // A payload of exactly the trailer frames an empty body.
    let empty = dump::frame(&[], 12);
    assert_eq!(dump::unframe(&empty).expect("valid"), (12, &[][..]));
}

#[test]
fn decode_value_errors() {
    assert!(matches!(
        decode_value(&[], 9, false),
        Err(RdbError::Truncated { offset: 0, .. })
    ));
    assert!(matches!(
        decode_value(&[0, 1, b'a', b'b'], 9, false),
        Err(RdbError::TrailingBytes {
            offset: 3,
            trailing: 1
        })
    ));
    assert!(matches!(
        decode_value(&[6, 0], 9, false),
        Err(RdbError::ModulePreGa { offset: 0 })
    ));
    // An empty list body decodes to an empty list (only the parser skips empty keys).
    assert_eq!(
        decode_value(&[1, 0], 6, false).expect("empty"),
        Value::List(vec![])
    );
}

const SCORES: [f64; 10] = [
    7.123456789,
    f64::NEG_INFINITY,
    f64::INFINITY,
    1e-300,
    -0.0,
    0.0,
    5e-324,
    f64::MAX,
    0.1 + 0.2,
    -123456789.25,
];

fn score_bits(v: &Value) -> Vec<(Bytes, u64)> {
    let Value::ZSet(z) = v else { panic!("{v:?}") };
    z.iter().map(|(m, s)| (m.clone(), s.to_bits())).collect()
}

#[test]
fn scores_are_bit_exact_in_every_encoding() {
    let members: Vec<Vec<u8>> = (0..SCORES.len())
        .map(|i| format!("m{i}").into_bytes())
        .collect();
    let pairs: Vec<(&[u8], f64)> = members
        .iter()
        .zip(SCORES)
        .map(|(m, s)| (m.as_slice(), s))
        .collect();
    let expected: Vec<(Bytes, u64)> = pairs
        .iter()
        .map(|(m, s)| (Bytes::copy_from_slice(m), s.to_bits()))
        .collect();
    let texts: Vec<String> = SCORES
        .iter()
        .map(|s| {
            if s.is_infinite() {
                if *s > 0.0 {
                    "inf".into()
                } else {
                    "-inf".into()
                }
            } else {
                format!("{s:?}")
            }
        })
        .collect();
    let mut els = Vec::new();
    for (m, txt) in members.iter().zip(&texts) {
        els.push(El::Str(m));
        els.push(El::Str(txt.as_bytes()));
    }
    let mut w = RdbWriter::new(12);
    w.key(t::ZSET_2, b"binary", &body::zset2(&pairs));
    w.key(t::ZSET, b"text", &body::zset_text(&pairs));
    w.key(t::ZSET_LISTPACK, b"listpack", &body::blob(&listpack(&els)));
    w.key(t::ZSET_ZIPLIST, b"ziplist", &body::blob(&ziplist(&els)));
    let data = w.finish();
    for opts in [
        ParserOptions::default(),
        ParserOptions {
            chunk_threshold_bytes: 10,
            chunk_elements: 3,
            ..ParserOptions::default()
        },
    ] {
        let (items, end) = parse_pieces(&data, &[5], opts);
        end.expect("complete");
        let got = assembled(&items, usize::MAX);
        assert_eq!(got.len(), 4);
        for (_, key, _, value) in &got {
            assert_eq!(
                score_bits(value),
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }
    // And through DUMP bodies.
    let (items, _) = parse_all(&data, ParserOptions::default());
    for i in &items {
        if let Item::Key(k) = i {
            let v = decode_value(&k.dump_body, 12, false).expect("decode");
            assert_eq!(score_bits(&v), expected);
        }
    }
}
