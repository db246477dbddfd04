//! The parts of the replica handshake that are not plain RESP: the PSYNC reply, the header
//! of the snapshot transfer, and the end mark of a diskless snapshot.
//!
//! Redis reads these with its own line reader rather than the RESP parser: a line ends at LF,
//! a CR before it is dropped, and an empty line is a keepalive the master sends while it
//! prepares the snapshot. The functions here read them the same way.

use bytes::{BufMut, BytesMut};

use crate::decode::parse_i64;
use crate::error::{RespError, quote};

/// Length of a replication id (and of a pre-4.0 run id).
pub const REPLID_LEN: usize = 40;

/// Length of the mark that frames a diskless snapshot.
pub const EOF_MARK_LEN: usize = 40;

/// Longest reply line accepted; real ones are under 100 bytes, so more is garbage.
const MAX_REPLY_LINE: usize = 4096;

/// The master's answer to `PSYNC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PsyncReply {
    /// A snapshot follows; the command stream after it starts at `offset` of `replid`.
    FullResync { replid: String, offset: u64 },
    /// The backlog still holds what we asked for; the command stream follows right away.
    /// `new_replid` is set when the master changed history (after a failover) and the replica
    /// declared `capa psync2`; positions from now on belong to that id.
    Continue { new_replid: Option<String> },
    /// An error line, without its leading `-`.
    Error(String),
}

impl PsyncReply {
    /// Whether asking again later can succeed: the master has no link to its own master yet
    /// or is still loading its data. Other errors (an old Redis without PSYNC, a refused
    /// authentication) will not go away by waiting.
    pub fn is_transient(&self) -> bool {
        match self {
            PsyncReply::Error(text) => {
                text.starts_with("NOMASTERLINK") || text.starts_with("LOADING")
            }
            _ => false,
        }
    }
}

/// Reads the reply to `PSYNC` from the front of `buf`, skipping keepalive newlines. Returns
/// the reply and how many bytes it used (keepalives included), or `None` until a whole line
/// is there.
pub fn parse_psync_reply(buf: &[u8]) -> Result<Option<(PsyncReply, usize)>, RespError> {
    let Some(ReplyLine {
        start,
        text: line,
        consumed,
    }) = reply_line(buf)?
    else {
        return Ok(None);
    };
    let unexpected = || RespError::UnexpectedReply {
        offset: start,
        line: quote(line),
    };
    let reply = match line {
        [b'-', text @ ..] => PsyncReply::Error(String::from_utf8_lossy(text).into_owned()),
        [b'+', rest @ ..] => {
            let mut words = rest.split(|&b| b == b' ');
            match words.next() {
                Some(b"FULLRESYNC") => {
                    let replid = words.next().and_then(replid).ok_or_else(unexpected)?;
                    let offset = words
                        .next()
                        .and_then(parse_i64)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(unexpected)?;
                    if words.next().is_some() {
                        return Err(unexpected());
                    }
                    PsyncReply::FullResync { replid, offset }
                }
                Some(b"CONTINUE") => {
                    // Redis ignores a malformed id here; we refuse it, because continuing
                    // under the wrong id would mislabel every position that follows.
                    let new_replid = match words.next() {
                        None => None,
                        Some(word) => Some(replid(word).ok_or_else(unexpected)?),
                    };
                    if words.next().is_some() {
                        return Err(unexpected());
                    }
                    PsyncReply::Continue { new_replid }
                }
                _ => return Err(unexpected()),
            }
        }
        _ => return Err(unexpected()),
    };
    Ok(Some((reply, consumed)))
}

fn replid(word: &[u8]) -> Option<String> {
    if word.len() == REPLID_LEN && word.iter().all(u8::is_ascii_hexdigit) {
        String::from_utf8(word.to_vec()).ok()
    } else {
        None
    }
}

/// How the snapshot after `+FULLRESYNC` is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferHeader {
    /// Exactly `len` bytes of RDB follow, with no CRLF after them.
    Disk { len: u64 },
    /// RDB bytes follow until `mark` appears; see [`EofMarkScanner`].
    Diskless { mark: [u8; EOF_MARK_LEN] },
}

/// Reads the snapshot header (`$<len>` or `$EOF:<mark>`) from the front of `buf`, skipping
/// the keepalive newlines a master sends while its snapshot is being made. The count
/// returned includes those newlines, so the RDB bytes start right after it.
pub fn parse_transfer_header(buf: &[u8]) -> Result<Option<(TransferHeader, usize)>, RespError> {
    let Some(ReplyLine {
        start,
        text: line,
        consumed,
    }) = reply_line(buf)?
    else {
        return Ok(None);
    };
    let header = match line {
        [b'$', b'E', b'O', b'F', b':', mark @ ..] => {
            let mark =
                <[u8; EOF_MARK_LEN]>::try_from(mark).map_err(|_| RespError::UnexpectedReply {
                    offset: start,
                    line: quote(line),
                })?;
            TransferHeader::Diskless { mark }
        }
        [b'$', digits @ ..] => {
            let len = parse_i64(digits)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| RespError::BadLength {
                    offset: start + 1,
                    line: quote(digits),
                })?;
            TransferHeader::Disk { len }
        }
        // Includes `-ERR ...`: the master gave up on the transfer.
        _ => {
            return Err(RespError::UnexpectedReply {
                offset: start,
                line: quote(line),
            });
        }
    };
    Ok(Some((header, consumed)))
}

/// A non-empty line read the way Redis's `syncReadLine` reads it.
struct ReplyLine<'a> {
    /// Where it starts in the buffer.
    start: usize,
    /// Without its line ending.
    text: &'a [u8],
    /// Bytes up to and including its LF, keepalives before it included.
    consumed: usize,
}

fn reply_line(buf: &[u8]) -> Result<Option<ReplyLine<'_>>, RespError> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let window = &rest[..rest.len().min(MAX_REPLY_LINE + 2)];
        let Some(i) = window.iter().position(|&b| b == b'\n') else {
            if window.len() >= MAX_REPLY_LINE + 2 {
                return Err(RespError::LineTooLong {
                    offset: pos,
                    max: MAX_REPLY_LINE,
                });
            }
            return Ok(None);
        };
        let line = match &window[..i] {
            [line @ .., b'\r'] => line,
            line => line,
        };
        if line.len() > MAX_REPLY_LINE {
            return Err(RespError::LineTooLong {
                offset: pos,
                max: MAX_REPLY_LINE,
            });
        }
        if line.is_empty() {
            pos += i + 1;
            continue;
        }
        return Ok(Some(ReplyLine {
            start: pos,
            text: line,
            consumed: pos + i + 1,
        }));
    }
}

/// What [`EofMarkScanner::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkScan {
    /// The mark has not been seen yet; feed more.
    NeedMore,
    /// The mark ended within this chunk, after its first `consumed` bytes. Anything past
    /// that is not snapshot: it is the start of the command stream.
    Finished { consumed: usize },
}

/// Separates a diskless snapshot from the mark that ends it.
///
/// The payload is passed through as it arrives, except for its last 39 bytes, which are held
/// back until it is known that they are not the start of the mark. The snapshot ends at the
/// first occurrence of the mark, wherever the chunks were cut. (Redis checks only whether a
/// read ended with the mark; since the mark is 160 random bits the two agree on every real
/// stream, and ours does not depend on how the bytes were split.)
#[derive(Debug, Clone)]
pub struct EofMarkScanner {
    mark: [u8; EOF_MARK_LEN],
    held: [u8; EOF_MARK_LEN - 1],
    held_len: usize,
    payload_len: u64,
    finished: bool,
}

impl EofMarkScanner {
    pub fn new(mark: [u8; EOF_MARK_LEN]) -> Self {
        EofMarkScanner {
            mark,
            held: [0; EOF_MARK_LEN - 1],
            held_len: 0,
            payload_len: 0,
            finished: false,
        }
    }

    /// Scans the next chunk, appending to `payload` every byte now known to be snapshot.
    /// After the mark was found, further calls consume nothing.
    pub fn feed(&mut self, chunk: &[u8], payload: &mut BytesMut) -> MarkScan {
        if self.finished {
            return MarkScan::Finished { consumed: 0 };
        }
        let held = self.held_len;

        // A mark that starts in the held bytes ends within the first 39 bytes of the chunk.
        let head = chunk.len().min(EOF_MARK_LEN - 1);
        let mut seam = [0u8; 2 * (EOF_MARK_LEN - 1)];
        seam[..held].copy_from_slice(&self.held[..held]);
        seam[held..held + head].copy_from_slice(&chunk[..head]);
        if let Some(at) = find(&seam[..held + head], &self.mark) {
            self.emit(&seam[..at], payload);
            return self.finish(at + EOF_MARK_LEN - held);
        }
        if let Some(at) = find(chunk, &self.mark) {
            self.emit_held(payload);
            self.emit(&chunk[..at], payload);
            return self.finish(at + EOF_MARK_LEN);
        }

        // No mark yet: release all but the last 39 bytes of held + chunk.
        let keep = EOF_MARK_LEN - 1;
        if held + chunk.len() <= keep {
            self.held[held..held + chunk.len()].copy_from_slice(chunk);
            self.held_len += chunk.len();
        } else if chunk.len() >= keep {
            self.emit_held(payload);
            let split = chunk.len() - keep;
            self.emit(&chunk[..split], payload);
            self.held.copy_from_slice(&chunk[split..]);
            self.held_len = keep;
        } else {
            // The chunk is shorter than what is kept: some held bytes go out, the rest
            // shift down to make room.
            let release = held + chunk.len() - keep;
            let released = self.held;
            self.emit(&released[..release], payload);
            self.held.copy_within(release..held, 0);
            self.held[held - release..].copy_from_slice(chunk);
            self.held_len = keep;
        }
        MarkScan::NeedMore
    }

    /// Whether the mark has been seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Snapshot bytes passed through so far.
    pub fn payload_len(&self) -> u64 {
        self.payload_len
    }

    fn emit(&mut self, bytes: &[u8], payload: &mut BytesMut) {
        payload.put_slice(bytes);
        self.payload_len += bytes.len() as u64;
    }

    fn emit_held(&mut self, payload: &mut BytesMut) {
        let held = self.held;
        self.emit(&held[..self.held_len], payload);
        self.held_len = 0;
    }

    fn finish(&mut self, consumed: usize) -> MarkScan {
        self.finished = true;
        self.held_len = 0;
        MarkScan::Finished { consumed }
    }
}

fn find(haystack: &[u8], needle: &[u8; EOF_MARK_LEN]) -> Option<usize> {
    let last_start = haystack.len().checked_sub(EOF_MARK_LEN)?;
    let mut from = 0;
    while from <= last_start {
        let at = from
            + haystack[from..=last_start]
                .iter()
                .position(|&b| b == needle[0])?;
        if &haystack[at..at + EOF_MARK_LEN] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8f0b7c5d0d1c6f3a1e2b4c5d6e7f8091a2b3c4d5";

    fn psync(input: &[u8]) -> Result<Option<(PsyncReply, usize)>, RespError> {
        parse_psync_reply(input)
    }

    #[test]
    fn full_resync_after_keepalives() {
        let input = format!("\n\r\n+FULLRESYNC {ID} 1234567\r\n$EOF:");
        let (reply, used) = psync(input.as_bytes()).unwrap().unwrap();
        assert_eq!(
            reply,
            PsyncReply::FullResync {
                replid: ID.into(),
                offset: 1_234_567
            }
        );
        assert_eq!(&input.as_bytes()[used..], b"$EOF:");
    }

    #[test]
    fn continue_with_and_without_new_replid() {
        let (reply, used) = psync(b"+CONTINUE\r\n*1\r\n").unwrap().unwrap();
        assert_eq!(reply, PsyncReply::Continue { new_replid: None });
        assert_eq!(used, 11);

        let input = format!("+CONTINUE {ID}\r\n");
        let (reply, used) = psync(input.as_bytes()).unwrap().unwrap();
        assert_eq!(
            reply,
            PsyncReply::Continue {
                new_replid: Some(ID.into())
            }
        );
        assert_eq!(used, input.len());
    }

    #[test]
    fn transient_and_permanent_errors() {
        let (reply, _) = psync(b"-NOMASTERLINK Can't SYNC while not connected with my master\r\n")
            .unwrap()
            .unwrap();
        assert!(reply.is_transient());
        let (reply, _) = psync(b"-LOADING Redis is loading the dataset in memory\r\n")
            .unwrap()
            .unwrap();
        assert!(reply.is_transient());
        let (reply, _) = psync(b"-ERR unknown command 'PSYNC'\r\n").unwrap().unwrap();
        assert_eq!(
            reply,
            PsyncReply::Error("ERR unknown command 'PSYNC'".into())
        );
        assert!(!reply.is_transient());
        assert!(
            !PsyncReply::Continue { new_replid: None }.is_transient(),
            "only errors are transient"
        );
    }

    #[test]
    fn psync_reply_waits_for_the_whole_line() {
        assert_eq!(psync(b""), Ok(None));
        assert_eq!(psync(b"\n\n"), Ok(None));
        assert_eq!(psync(b"+FULLRESYNC 8f0b"), Ok(None));
    }

    #[test]
    fn malformed_psync_replies() {
        for bad in [
            "+FULLRESYNC abc 1\r\n".to_string(),
            format!("+FULLRESYNC {ID}\r\n"),
            format!("+FULLRESYNC {ID} -1\r\n"),
            format!("+FULLRESYNC {ID} 12x\r\n"),
            format!("+FULLRESYNC {ID} 1 2\r\n"),
            "+CONTINUE short\r\n".to_string(),
            "+OK\r\n".to_string(),
            "$5\r\n".to_string(),
        ] {
            assert!(
                matches!(
                    psync(bad.as_bytes()),
                    Err(RespError::UnexpectedReply { .. })
                ),
                "{bad:?}"
            );
        }
        let e = psync(b"\n+OK\r\n").unwrap_err();
        assert_eq!(e.offset(), 1);
        let endless = vec![b'+'; MAX_REPLY_LINE + 2];
        assert!(matches!(
            psync(&endless),
            Err(RespError::LineTooLong { .. })
        ));
    }

    #[test]
    fn disk_transfer_header_after_keepalives() {
        let input = b"\n\n\n$1234\r\nREDIS0011";
        let (header, used) = parse_transfer_header(input).unwrap().unwrap();
        assert_eq!(header, TransferHeader::Disk { len: 1234 });
        assert_eq!(&input[used..], b"REDIS0011");
    }

    #[test]
    fn diskless_transfer_header() {
        let mark = *b"0123456789abcdef0123456789abcdef01234567";
        let input = [&b"\n$EOF:"[..], &mark, b"\r\nREDIS"].concat();
        let (header, used) = parse_transfer_header(&input).unwrap().unwrap();
        assert_eq!(header, TransferHeader::Diskless { mark });
        assert_eq!(&input[used..], b"REDIS");
    }

    #[test]
    fn transfer_header_waits_and_rejects() {
        assert_eq!(parse_transfer_header(b"\n\n$12"), Ok(None));
        assert!(matches!(
            parse_transfer_header(b"\n$-1\r\n"),
            Err(RespError::BadLength { offset: 2, .. })
        ));
        assert!(matches!(
            parse_transfer_header(b"$EOF:tooshort\r\n"),
            Err(RespError::UnexpectedReply { offset: 0, .. })
        ));
        let e = parse_transfer_header(b"\n-ERR can't BGSAVE\r\n").unwrap_err();
        assert_eq!(
            e,
            RespError::UnexpectedReply {
                offset: 1,
                line: "-ERR can't BGSAVE".into()
            }
        );
    }

    const MARK: [u8; EOF_MARK_LEN] = *b"ffffffffffffffffffffffffffffffffffffffff";

    fn scan(chunks: &[&[u8]]) -> (BytesMut, Vec<MarkScan>) {
        let mut scanner = EofMarkScanner::new(MARK);
        let mut out = BytesMut::new();
        let results = chunks.iter().map(|c| scanner.feed(c, &mut out)).collect();
        assert_eq!(scanner.payload_len(), out.len() as u64);
        (out, results)
    }

    #[test]
    fn mark_in_one_chunk() {
        let input = [&b"REDIS0011payload"[..], &MARK].concat();
        let (out, results) = scan(&[&input]);
        assert_eq!(&out[..], b"REDIS0011payload");
        assert_eq!(
            results,
            [MarkScan::Finished {
                consumed: input.len()
            }]
        );
    }

    #[test]
    fn last_39_bytes_are_held_back_until_known() {
        let payload = [b'x'; 100];
        let mut scanner = EofMarkScanner::new(MARK);
        let mut out = BytesMut::new();
        assert_eq!(scanner.feed(&payload, &mut out), MarkScan::NeedMore);
        assert_eq!(out.len(), 100 - 39);
        // Bytes that look like the start of the mark, then turn out not to be.
        assert_eq!(scanner.feed(&MARK[..30], &mut out), MarkScan::NeedMore);
        assert_eq!(scanner.feed(b"x", &mut out), MarkScan::NeedMore);
        assert_eq!(
            scanner.feed(&MARK, &mut out),
            MarkScan::Finished { consumed: 40 }
        );
        assert_eq!(out.len(), 100 + 30 + 1);
        assert!(scanner.is_finished());
    }

    #[test]
    fn mark_split_across_chunks_with_the_command_stream_behind_it() {
        let (out, results) = scan(&[
            b"abc",
            &MARK[..1],
            &MARK[1..20],
            &[&MARK[20..], &b"*1\r\n"[..]].concat(),
        ]);
        assert_eq!(&out[..], b"abc");
        assert_eq!(
            results,
            [
                MarkScan::NeedMore,
                MarkScan::NeedMore,
                MarkScan::NeedMore,
                MarkScan::Finished { consumed: 20 }
            ]
        );
    }

    #[test]
    fn empty_payload_and_feeding_after_the_end() {
        let (out, results) = scan(&[&MARK, b"more"]);
        assert!(out.is_empty());
        assert_eq!(
            results,
            [
                MarkScan::Finished { consumed: 40 },
                MarkScan::Finished { consumed: 0 }
            ]
        );
    }
}
