//! Replication stream → change events.
//!
//! The stream is RESP commands exactly as the master propagates them. Every byte counts
//! toward the offset, including what produces no event (PING, REPLCONF, SELECT), so the
//! decoder advances its offset by each frame's wire length and stamps events with the
//! offset after their last byte.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use redis_sync_proto::v1::{
    ChangeEvent, Command, Heartbeat, Position, Transaction, change_event::Kind,
};
use redis_sync_resp::{Decoder, Limits, RespError};

use super::scripts::ScriptCache;

/// Why the stream could not be decoded. The stream is then beyond repair for this reader.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Not RESP.
    #[error("replication stream at offset {offset}: {source}")]
    Resp {
        /// Offset of the frame start.
        offset: u64,
        /// Decoder error.
        #[source]
        source: RespError,
    },
    /// A frame that is not a command.
    #[error("replication stream at offset {offset}: a frame that is not a command")]
    NotACommand {
        /// Offset of the frame start.
        offset: u64,
    },
    /// `SELECT` with an argument that is not a database number.
    #[error("replication stream at offset {offset}: SELECT {arg:?} is not a database number")]
    BadSelect {
        /// Offset of the frame start.
        offset: u64,
        /// The argument.
        arg: String,
    },
}

/// Recognises this subscriber's own heartbeat writes.
#[derive(Debug, Clone)]
pub struct HeartbeatMatcher {
    /// `<prefix>:<subscriber id>`.
    key: Vec<u8>,
}

impl HeartbeatMatcher {
    /// The matcher for `prefix` and `subscriber_id`.
    pub fn new(prefix: &str, subscriber_id: &str) -> Self {
        HeartbeatMatcher {
            key: format!("{prefix}:{subscriber_id}").into_bytes(),
        }
    }

    /// Whether `key` is ours: exactly `<prefix>:<id>`, or `<prefix>:<id>:{tag}` as written to
    /// a cluster master. Another task's key (a cascade, or a second task on this source)
    /// differs in the id and stays ordinary data.
    pub fn is_own(&self, key: &[u8]) -> bool {
        match key.strip_prefix(self.key.as_slice()) {
            Some([]) => true,
            Some(rest) => rest.starts_with(b":{") && rest.ends_with(b"}"),
            None => false,
        }
    }
}

#[derive(Debug)]
struct OpenTransaction {
    /// Offset and db before MULTI: the last position a subscriber may stop at.
    start_offset: u64,
    start_db: u32,
    commands: Vec<Command>,
}

/// Incremental decoder of one shard's replication stream.
#[derive(Debug)]
pub struct StreamDecoder {
    replid: String,
    /// Offset after the last decoded byte.
    offset: u64,
    db: u32,
    buf: BytesMut,
    resp: Decoder,
    txn: Option<OpenTransaction>,
    /// Replid changes (`+CONTINUE <new id>`) that take effect at an offset not decoded yet.
    switches: VecDeque<(u64, String)>,
    heartbeat: Option<HeartbeatMatcher>,
}

impl StreamDecoder {
    /// A decoder for bytes starting after `offset` of `replid`, with `db` selected.
    pub fn new(replid: String, offset: u64, db: u32, heartbeat: Option<HeartbeatMatcher>) -> Self {
        StreamDecoder {
            replid,
            offset,
            db,
            buf: BytesMut::new(),
            resp: Decoder::new(Limits::default()),
            txn: None,
            switches: VecDeque::new(),
            heartbeat,
        }
    }

    /// Bytes from offset `at` on belong to `replid`.
    pub fn switch_replid(&mut self, at: u64, replid: String) {
        self.switches.push_back((at, replid));
        self.apply_switches();
    }

    fn apply_switches(&mut self) {
        while let Some((at, _)) = self.switches.front() {
            if *at > self.offset {
                break;
            }
            if let Some((_, id)) = self.switches.pop_front() {
                self.replid = id;
            }
        }
    }

    /// Appends stream bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The position a subscriber may resume from: after everything decoded, except that a
    /// transaction not closed yet is resumed from its MULTI.
    pub fn resume_position(&self) -> Position {
        match &self.txn {
            Some(t) => self.position_at(t.start_offset, t.start_db),
            None => self.position_at(self.offset, self.db),
        }
    }

    fn position_at(&self, offset: u64, db: u32) -> Position {
        Position {
            replid: self.replid.clone(),
            offset,
            db,
            in_snapshot: false,
            snapshot_records: 0,
        }
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(
        &mut self,
        scripts: &mut ScriptCache,
    ) -> Result<Option<ChangeEvent>, StreamError> {
        loop {
            let start = self.offset;
            let decoded = match self.resp.decode(&mut self.buf) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(StreamError::Resp {
                        offset: start,
                        source,
                    });
                }
            };
            self.offset += decoded.wire_len as u64;
            self.apply_switches();
            let Some(mut args) = decoded.frame.into_args() else {
                return Err(StreamError::NotACommand { offset: start });
            };
            if args.is_empty() {
                // A bare newline or `*0`: keepalive, counted but meaningless.
                continue;
            }
            let name = args.remove(0);
            let lower = name.to_ascii_lowercase();
            match lower.as_slice() {
                b"ping" | b"replconf" => continue,
                b"select" => {
                    let arg = args.first().cloned().unwrap_or_default();
                    self.db = std::str::from_utf8(&arg)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| StreamError::BadSelect {
                            offset: start,
                            arg: String::from_utf8_lossy(&arg).into_owned(),
                        })?;
                    continue;
                }
                b"multi" => {
                    if self.txn.is_some() {
                        tracing::warn!(offset = start, "MULTI inside a transaction; ignoring it");
                    } else {
                        self.txn = Some(OpenTransaction {
                            start_offset: start,
                            start_db: self.db,
                            commands: Vec::new(),
                        });
                    }
                    continue;
                }
                b"exec" => {
                    let Some(txn) = self.txn.take() else {
                        tracing::warn!(offset = start, "EXEC without MULTI; ignoring it");
                        continue;
                    };
                    return Ok(Some(ChangeEvent {
                        position: Some(self.position_at(self.offset, self.db)),
                        kind: Some(Kind::Transaction(Transaction {
                            commands: txn.commands,
                        })),
                    }));
                }
                _ => {}
            }
            let command = self.command(name, &lower, args, scripts);
            if let Some(txn) = &mut self.txn {
                txn.commands.push(command);
                continue;
            }
            let kind = match self.heartbeat_ms(&lower, &command) {
                Some(source_ms) => Kind::Heartbeat(Heartbeat {
                    source_ms,
                    command: Some(command),
                }),
                None => Kind::Command(command),
            };
            return Ok(Some(ChangeEvent {
                position: Some(self.position_at(self.offset, self.db)),
                kind: Some(kind),
            }));
        }
    }

    fn command(
        &self,
        name: Bytes,
        lower: &[u8],
        args: Vec<Bytes>,
        scripts: &mut ScriptCache,
    ) -> Command {
        let key_indexes = match redis_sync_command::lookup(&name) {
            Some(spec) => match redis_sync_command::key_indexes(spec, &args) {
                Ok(ix) => ix
                    .into_iter()
                    .filter_map(|i| u32::try_from(i).ok())
                    .collect(),
                Err(e) => {
                    // The master ran it, so it is valid for the master; carry it without
                    // keys rather than stop the sync on our own misreading.
                    tracing::warn!(command = %String::from_utf8_lossy(&name), error = %e, "cannot find the keys of a command");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let mut script_body = Vec::new();
        match lower {
            b"eval" | b"eval_ro" => {
                if let Some(body) = args.first() {
                    scripts.remember(body.clone());
                }
            }
            b"script"
                if args
                    .first()
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"load")) =>
            {
                if let Some(body) = args.get(1) {
                    scripts.remember(body.clone());
                }
            }
            b"evalsha" | b"evalsha_ro" => {
                if let Some(body) = args.first().and_then(|sha| scripts.get(sha)) {
                    script_body = body.to_vec();
                }
            }
            _ => {}
        }
        let mut args: Vec<Vec<u8>> = args.into_iter().map(|a| a.to_vec()).collect();
        if lower == b"restore-asking"
            && !args
                .iter()
                .skip(3)
                .any(|a| a.eq_ignore_ascii_case(b"replace"))
        {
            // A key arriving by resharding (see `resharding`): the destination may still
            // hold the copy from the old owner's history; the value restored here wins.
            args.push(b"REPLACE".to_vec());
        }
        Command {
            db: self.db,
            name: name.to_vec(),
            args,
            key_indexes,
            script_body,
        }
    }

    fn heartbeat_ms(&self, lower: &[u8], command: &Command) -> Option<i64> {
        let matcher = self.heartbeat.as_ref()?;
        if lower != b"set" || !command.args.first().is_some_and(|k| matcher.is_own(k)) {
            return None;
        }
        std::str::from_utf8(command.args.get(1)?).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        redis_sync_resp::encode_command(args, &mut out);
        out.to_vec()
    }

    fn all(d: &mut StreamDecoder, s: &mut ScriptCache) -> Vec<ChangeEvent> {
        let mut out = Vec::new();
        while let Some(e) = d.next_event(s).unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn commands_transactions_and_offsets() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        stream.extend(cmd(&[b"SELECT", b"0"]));
        stream.extend(cmd(&[b"SET", b"a", b"1"]));
        ends.push(stream.len());
        stream.extend(cmd(&[b"PING"]));
        stream.extend(cmd(&[b"MULTI"]));
        let multi_at = stream.len() - cmd(&[b"MULTI"]).len();
        stream.extend(cmd(&[b"INCR", b"a"]));
        stream.extend(cmd(&[b"SELECT", b"3"]));
        stream.extend(cmd(&[b"LPUSH", b"l", b"x", b"y"]));
        stream.extend(cmd(&[b"EXEC"]));
        ends.push(stream.len());
        stream.extend(cmd(&[b"REPLCONF", b"GETACK", b"*"]));
        stream.extend(cmd(&[b"MSET", b"k1", b"v", b"k2", b"v"]));
        ends.push(stream.len());

        let base = 1000;
        let mut d = StreamDecoder::new("r".into(), base, 0, None);
        let mut s = ScriptCache::default();
        let mut events = Vec::new();
        // Byte by byte: positions must not depend on how the bytes arrive.
        for (i, b) in stream.iter().enumerate() {
            d.feed(&[*b]);
            events.extend(all(&mut d, &mut s));
            if i + 1 == multi_at + 3 {
                assert_eq!(d.resume_position().offset, base + multi_at as u64);
            }
        }
        assert_eq!(events.len(), 3);
        let offsets: Vec<u64> = events
            .iter()
            .map(|e| e.position.as_ref().unwrap().offset)
            .collect();
        assert_eq!(
            offsets,
            ends.iter().map(|&e| base + e as u64).collect::<Vec<_>>()
        );
        let Some(Kind::Transaction(t)) = &events[1].kind else {
            panic!("{:?}", events[1])
        };
        assert_eq!(t.commands.len(), 2);
        assert_eq!((t.commands[0].db, t.commands[1].db), (0, 3));
        assert_eq!(t.commands[1].key_indexes, vec![0]);
        let Some(Kind::Command(c)) = &events[2].kind else {
            panic!()
        };
        assert_eq!(c.db, 3);
        assert_eq!(c.key_indexes, vec![0, 2]);
        assert_eq!(events[2].position.as_ref().unwrap().db, 3);
        assert_eq!(d.resume_position().offset, base + stream.len() as u64);
    }

    #[test]
    fn heartbeats_and_scripts() {
        let m = HeartbeatMatcher::new("HB", "task1");
        assert!(m.is_own(b"HB:task1"));
        assert!(m.is_own(b"HB:task1:{12}"));
        assert!(!m.is_own(b"HB:task10"));
        assert!(!m.is_own(b"HB:task1:x"));

        let mut stream = Vec::new();
        stream.extend(cmd(&[
            b"SET",
            b"HB:task1",
            b"1700000000123",
            b"PX",
            b"60000",
        ]));
        stream.extend(cmd(&[
            b"SET",
            b"HB:other",
            b"1700000000123",
            b"PX",
            b"60000",
        ]));
        stream.extend(cmd(&[b"EVAL", b"return 1", b"0"]));
        stream.extend(cmd(&[
            b"EVALSHA",
            b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB",
            b"0",
        ]));
        let mut d = StreamDecoder::new("r".into(), 0, 0, Some(m));
        let mut s = ScriptCache::default();
        d.feed(&stream);
        let events = all(&mut d, &mut s);
        let Some(Kind::Heartbeat(h)) = &events[0].kind else {
            panic!()
        };
        assert_eq!(h.source_ms, 1_700_000_000_123);
        assert!(matches!(events[1].kind, Some(Kind::Command(_))));
        let Some(Kind::Command(c)) = &events[3].kind else {
            panic!()
        };
        assert_eq!(c.script_body, b"return 1");
    }

    #[test]
    fn replid_switch_applies_at_its_offset() {
        let a = cmd(&[b"SET", b"a", b"1"]);
        let mut d = StreamDecoder::new("old".into(), 0, 0, None);
        d.feed(&a);
        d.feed(&a);
        // A position exactly at the switch is valid under both ids; the new one is used.
        d.switch_replid(2 * a.len() as u64, "new".into());
        let mut s = ScriptCache::default();
        let events = all(&mut d, &mut s);
        assert_eq!(events[0].position.as_ref().unwrap().replid, "old");
        assert_eq!(events[1].position.as_ref().unwrap().replid, "new");
    }

    #[test]
    fn restore_asking_replaces() {
        let mut stream = cmd(&[b"RESTORE-ASKING", b"k", b"0", b"payload"]);
        stream.extend(cmd(&[
            b"RESTORE-ASKING",
            b"k",
            b"0",
            b"payload",
            b"replace",
        ]));
        let mut d = StreamDecoder::new("r".into(), 0, 0, None);
        d.feed(&stream);
        let events = all(&mut d, &mut ScriptCache::default());
        for e in &events {
            let Some(Kind::Command(c)) = &e.kind else {
                panic!()
            };
            let replaces = c
                .args
                .iter()
                .filter(|a| a.eq_ignore_ascii_case(b"replace"))
                .count();
            assert_eq!((replaces, c.key_indexes.as_slice()), (1, &[0u32][..]));
        }
        assert_eq!(d.resume_position().offset, stream.len() as u64);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = StreamDecoder::new("r".into(), 0, 0, None);
        d.feed(b":12\r\n");
        assert!(d.next_event(&mut ScriptCache::default()).is_err());
        let mut d = StreamDecoder::new("r".into(), 0, 0, None);
        d.feed(&cmd(&[b"SELECT", b"x"]));
        assert!(d.next_event(&mut ScriptCache::default()).is_err());
    }
}
