//! The incremental RESP decoder against the stateless `parse`, on a stream split in two.
//!
//! Input: byte 0 picks the split point (scaled over the stream), byte 1 picks the limits
//! (even: the defaults; odd: tiny ones, so every limit error path is reachable), the rest is
//! the stream. Checked: no panic; every decoded frame's `wire_len` is exactly what left the
//! buffer; a failed or incomplete `decode` leaves the buffer alone; the split changes
//! nothing (same frames, same final error as `parse` over the whole stream, an error that
//! the decoder defers until `needed_len` bytes are there coming once they are); and a decoded
//! frame re-encoded with `encode_frame` is `encoded_len` bytes long, decodes back to the same
//! frame and, for non-inline frames, is byte for byte the wire form it came from (RESP as
//! this decoder accepts it is canonical, and replication offsets count those bytes).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use redis_sync_resp::{Decoded, Decoder, Frame, Limits, RespError, encode_frame, parse};

fn limits(sel: u8) -> Limits {
    if sel & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_bulk_len: usize::from(sel >> 4),
            max_array_len: usize::from((sel >> 1) & 7) + 1,
            max_inline_len: usize::from(sel >> 3) % 24,
            max_depth: usize::from((sel >> 1) & 3),
        }
    }
}

fn is_type_byte(b: u8) -> bool {
    matches!(b, b'+' | b'-' | b':' | b'$' | b'*')
}

fn check_roundtrip(frame: &Frame, wire: &[u8], limits: &Limits) {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    assert_eq!(out.len(), frame.encoded_len(), "encoded_len of {frame:?}");
    if let Frame::Inline(words) = frame {
        // Words joined by one space decode back unless the line now starts with a type byte.
        if words.first().is_some_and(|w| is_type_byte(w[0])) {
            return;
        }
    } else {
        assert_eq!(
            &out[..],
            wire,
            "re-encoding {frame:?} changed its wire form"
        );
    }
    match parse(&out, limits) {
        Ok(Some((again, used))) => {
            assert_eq!(&again, frame, "re-encoded frame decodes differently");
            assert_eq!(used, out.len(), "re-encoded frame not consumed whole");
        }
        other => panic!("re-encoded {frame:?} ({out:?}) does not decode: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [split_sel, limit_sel, stream @ ..] = data else {
        return;
    };
    let limits = limits(*limit_sel);
    let split = stream.len() * usize::from(*split_sel) / 255;
    let (first, second) = stream.split_at(split);

    // Incremental: two reads appended to one buffer.
    let mut decoder = Decoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut frames: Vec<(Frame, usize)> = Vec::new();
    let mut failed: Option<RespError> = None;
    'reads: for part in [first, second] {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded { frame, wire_len })) => {
                    assert!(wire_len > 0, "empty frame {frame:?}");
                    assert_eq!(before - buf.len(), wire_len, "wire_len vs bytes taken");
                    frames.push((frame, wire_len));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed input");
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before, "an error consumed input");
                    // The stream is beyond repair: stop, as a caller would.
                    failed = Some(e);
                    break 'reads;
                }
            }
        }
    }

    // Stateless reference over the whole stream.
    let mut pos = 0;
    let mut expected: Vec<(Frame, usize)> = Vec::new();
    let expected_end = loop {
        match parse(&stream[pos..], &limits) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= stream.len() - pos, "parse used {used}");
                pos += used;
                expected.push((frame, used));
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(frames, expected, "split at {split} changed the frames");
    if failed.is_none() && expected_end.is_some() && buf.len() < decoder.needed_len() {
        // The decoder does not look again until the buffer reaches `needed_len` (a lower
        // bound on the frame's size if it were valid), so an error in the bytes that came
        // in the meantime is reported once that many bytes are there, not earlier. Check
        // that it is then: any bytes will do, the error is already in the buffer.
        let pad = decoder.needed_len() - buf.len();
        if pad <= 1 << 16 {
            buf.resize(decoder.needed_len(), 0);
            failed = Some(
                decoder
                    .decode(&mut buf)
                    .expect_err("a deferred error was lost"),
            );
        } else {
            failed = expected_end.clone();
        }
    }
    assert_eq!(failed, expected_end, "split at {split} changed the outcome");

    let mut at = 0;
    for (frame, len) in &frames {
        check_roundtrip(frame, &stream[at..at + len], &limits);
        let _ = frame.clone().into_args();
        at += len;
    }
});
