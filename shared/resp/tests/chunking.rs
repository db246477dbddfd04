//! However the network cuts a stream into reads, the same frames with the same lengths come
//! out: replication offsets are computed from those lengths.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use redis_sync_resp::handshake::{EOF_MARK_LEN, EofMarkScanner, MarkScan};
use redis_sync_resp::{Decoder, Frame, Limits, encode_frame, parse};

fn line_text() -> impl Strategy<Value = Bytes> {
    // Any byte but CR and LF, which a simple string cannot hold.
    vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..12,
    )
    .prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        line_text().prop_map(Frame::Simple),
        line_text().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        // Binary, including CRLF inside and empty.
        vec(any::<u8>(), 0..40).prop_map(|v| Frame::Bulk(Bytes::from(v))),
        prop_oneof![Just(b"\r\n".to_vec()), Just(Vec::new())]
            .prop_map(|v| Frame::Bulk(Bytes::from(v))),
        Just(Frame::NullBulk),
        Just(Frame::NullArray),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| vec(inner, 0..6).prop_map(Frame::Array))
}

/// What may appear at the top of a stream: frames, inline commands, keepalive newlines.
#[derive(Debug, Clone)]
enum Item {
    Frame(Frame),
    Keepalive,
}

fn item() -> impl Strategy<Value = Item> {
    let word = "[A-Za-z0-9_]{1,8}".prop_map(Bytes::from);
    prop_oneof![
        6 => frame().prop_map(Item::Frame),
        1 => vec(word, 0..4).prop_map(|w| Item::Frame(Frame::Inline(w))),
        1 => Just(Item::Keepalive),
    ]
}

/// The stream bytes and, for each item, the frame and length a decoder must report.
fn wire(items: &[Item]) -> (Vec<u8>, Vec<(Frame, usize)>) {
    let mut bytes = BytesMut::new();
    let mut expected = Vec::new();
    for item in items {
        match item {
            Item::Frame(f) => {
                let before = bytes.len();
                encode_frame(f, &mut bytes);
                assert_eq!(bytes.len() - before, f.encoded_len());
                expected.push((f.clone(), f.encoded_len()));
            }
            Item::Keepalive => {
                bytes.extend_from_slice(b"\n");
                expected.push((Frame::Inline(vec![]), 1));
            }
        }
    }
    (bytes.to_vec(), expected)
}

/// Splits `bytes` at the given cut points (taken modulo its length).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunk_boundaries_never_change_what_is_decoded(
        items in vec(item(), 1..8),
        cuts in vec(any::<usize>(), 0..24),
    ) {
        let (bytes, expected) = wire(&items);
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            buf.extend_from_slice(chunk);
            while let Some(d) = decoder.decode(&mut buf).unwrap() {
                got.push((d.frame, d.wire_len));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&got, &expected);

        // The stateless parser reads the same stream the same way.
        let mut rest = &bytes[..];
        let mut parsed = Vec::new();
        while let Some((f, n)) = parse(rest, &Limits::default()).unwrap() {
            parsed.push((f, n));
            rest = &rest[n..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&parsed, &expected);
    }

    #[test]
    fn eof_mark_is_found_however_the_payload_is_cut(
        // A two-letter alphabet shared with the mark makes near-misses common; the payload
        // may even contain the mark, in which case the snapshot ends at its first occurrence.
        payload in vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..300),
        mark_tail in vec(prop_oneof![Just(b'a'), Just(b'b')], EOF_MARK_LEN - 1),
        trailer in vec(any::<u8>(), 0..20),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut mark = [b'a'; EOF_MARK_LEN];
        mark[1..].copy_from_slice(&mark_tail);
        let stream = [&payload[..], &mark, &trailer].concat();
        let end = stream
            .windows(EOF_MARK_LEN)
            .position(|w| w == mark)
            .expect("the mark is in the stream");

        let mut scanner = EofMarkScanner::new(mark);
        let mut out = BytesMut::new();
        let mut fed = 0;
        let mut consumed_total = None;
        for chunk in chunks(&stream, &cuts) {
            match scanner.feed(chunk, &mut out) {
                MarkScan::NeedMore => {
                    prop_assert!(consumed_total.is_none());
                    fed += chunk.len();
                }
                MarkScan::Finished { consumed } => {
                    if consumed_total.is_none() {
                        prop_assert!(consumed <= chunk.len());
                        consumed_total = Some(fed + consumed);
                    } else {
                        prop_assert_eq!(consumed, 0);
                    }
                }
            }
            // Nothing that could still be the mark is ever let through.
            prop_assert!(out.len() <= end);
        }
        prop_assert_eq!(consumed_total, Some(end + EOF_MARK_LEN));
        prop_assert_eq!(&out[..], &stream[..end]);
        prop_assert_eq!(scanner.payload_len(), end as u64);
    }
}
