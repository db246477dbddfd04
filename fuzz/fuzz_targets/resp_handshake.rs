//! The non-RESP parts of the replica handshake: the PSYNC reply, the snapshot transfer
//! header and the scanner for the end mark of a diskless snapshot.
//!
//! Input: byte 0 picks a split point, byte 1 how the EOF mark is made (even: the next 40
//! bytes; odd: a pattern of the next 1..8 bytes repeated, so that partial matches overlap
//! the way they do in the worst case), then the mark bytes, then the stream, which is both
//! the reply text for the two line parsers and what the scanner is fed. Checked: no panic; the line
//! parsers never report more bytes than they were given and answer a prefix consistently
//! (nothing, or the same answer once the line is whole); the scanner, fed in two chunks,
//! passes through exactly the bytes before the first occurrence of the mark and reports
//! consuming exactly up to its end, or holds back exactly the last 39 bytes if the mark is
//! not there.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use redis_sync_resp::RespError;
use redis_sync_resp::handshake::{
    EOF_MARK_LEN, EofMarkScanner, MarkScan, PsyncReply, REPLID_LEN, parse_psync_reply,
    parse_transfer_header,
};

type Parsed<T> = Result<Option<(T, usize)>, RespError>;

/// A line parser on the whole input, and on a prefix of it.
fn check_line_parser<T: PartialEq + std::fmt::Debug>(
    input: &[u8],
    split: usize,
    parse: fn(&[u8]) -> Parsed<T>,
) -> Parsed<T> {
    let whole = parse(input);
    if let Ok(Some((_, used))) = &whole {
        assert!(
            *used > 0 && *used <= input.len(),
            "used {used} of {}",
            input.len()
        );
    }
    let prefix = parse(&input[..split]);
    match (&whole, &prefix) {
        (_, Ok(None)) => {}
        (Ok(Some((_, used))), _) if split < *used => {
            panic!("a prefix of {split} bytes gave {prefix:?}, the whole {whole:?}")
        }
        _ => assert_eq!(prefix, whole, "prefix of {split} bytes vs the whole input"),
    }
    whole
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let [split_sel, mark_sel, rest @ ..] = data else {
        return;
    };

    let period = if mark_sel & 1 == 0 {
        EOF_MARK_LEN
    } else {
        usize::from(mark_sel >> 1) % 8 + 1
    };
    let pattern = &rest[..rest.len().min(period)];
    let stream = &rest[pattern.len()..];
    let split = stream.len() * usize::from(*split_sel) / 255;

    // The line parsers, on the stream.
    if let Ok(Some((reply, _))) = check_line_parser(stream, split, parse_psync_reply) {
        match &reply {
            PsyncReply::FullResync { replid, .. } => assert_eq!(replid.len(), REPLID_LEN),
            PsyncReply::Continue {
                new_replid: Some(replid),
            } => assert_eq!(replid.len(), REPLID_LEN),
            _ => {}
        }
        let _ = reply.is_transient();
    }
    let _ = check_line_parser(stream, split, parse_transfer_header);

    // The EOF mark scanner, on the same stream.
    let mut mark = [0u8; EOF_MARK_LEN];
    if !pattern.is_empty() {
        for (i, b) in mark.iter_mut().enumerate() {
            *b = pattern[i % pattern.len()];
        }
    }
    let (first, second) = stream.split_at(split);

    let mut scanner = EofMarkScanner::new(mark);
    let mut payload = BytesMut::new();
    let r1 = scanner.feed(first, &mut payload);
    let after_first = payload.len();
    let r2 = scanner.feed(second, &mut payload);
    assert_eq!(scanner.payload_len(), payload.len() as u64);

    match find(stream, &mark) {
        Some(at) => {
            let end = at + EOF_MARK_LEN;
            assert_eq!(&payload[..], &stream[..at], "payload before a mark at {at}");
            assert!(scanner.is_finished());
            if end <= split {
                assert_eq!(r1, MarkScan::Finished { consumed: end });
                assert_eq!(r2, MarkScan::Finished { consumed: 0 });
                assert_eq!(after_first, payload.len(), "payload after the mark");
            } else {
                assert_eq!(r1, MarkScan::NeedMore);
                assert_eq!(
                    r2,
                    MarkScan::Finished {
                        consumed: end - split
                    }
                );
            }
        }
        None => {
            assert_eq!((r1, r2), (MarkScan::NeedMore, MarkScan::NeedMore));
            assert!(!scanner.is_finished());
            let released = stream.len().saturating_sub(EOF_MARK_LEN - 1);
            assert_eq!(
                &payload[..],
                &stream[..released],
                "held back the wrong bytes"
            );
        }
    }
    if scanner.is_finished() {
        let before = payload.len();
        assert_eq!(
            scanner.feed(stream, &mut payload),
            MarkScan::Finished { consumed: 0 }
        );
        assert_eq!(payload.len(), before);
    }
});
