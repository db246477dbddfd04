//! RDB snapshot → change events.
//!
//! Every key, key chunk and function library is a *record*; records are counted in the
//! order the RDB holds them, whether delivered or skipped as expired, so that a position
//! "n records into snapshot (replid, offset)" means the same thing every time the spooled
//! snapshot is read, and a restart resumes exactly there.

use redis_sync_proto::v1::{
    self as pb, BytesList, ChangeEvent, FunctionLibrary, HashFields, Position, Script,
    SnapshotBegin, SnapshotEnd, StreamChunk, ValueChunk, ValueType, ZSetMembers,
    change_event::Kind, key_record, value_chunk::Items,
};
use redis_sync_rdb::{Item, ParserOptions, RdbError, RdbParser, Value};

use super::scripts::{ScriptCache, sha1_hex};
use crate::spool::SnapshotInfo;

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The RDB is malformed or cut short.
    #[error("snapshot {replid}:{offset}: {source}")]
    Rdb {
        /// Snapshot replid.
        replid: String,
        /// Snapshot offset.
        offset: u64,
        /// The parser's error.
        #[source]
        source: RdbError,
    },
    /// A module value bigger than the chunk threshold: only its DUMP body could carry it.
    #[error("snapshot {replid}:{offset}: key {key:?} holds a module value too big to send")]
    ChunkedModule {
        /// Snapshot replid.
        replid: String,
        /// Snapshot offset.
        offset: u64,
        /// The key.
        key: String,
    },
}

/// Incremental decoder of one snapshot.
#[derive(Debug)]
pub struct SnapshotDecoder {
    replid: String,
    offset: u64,
    info: SnapshotInfo,
    parser: RdbParser,
    /// Records parsed so far (delivered or not).
    records: u64,
    /// Records already delivered before a restart.
    skip: u64,
    /// A new copy (its SnapshotBegin starts it), or a resume inside one already begun.
    emit_begin: bool,
    begun: bool,
    /// Resuming: the SnapshotBegin marked `resumed` is still to be sent, once the records
    /// delivered before are skipped (it then knows how many keys they held).
    announce_resume: bool,
    header: (u32, bool),
    pending: Option<Item>,
    keys: u64,
    expired: u64,
    /// For the chunked key in progress: whether its chunks are being dropped as expired.
    chunk_expired: Option<bool>,
    ended: bool,
    /// The transfer finished: every byte of the snapshot has been fed.
    input_complete: bool,
    now_ms: fn() -> i64,
}

/// Current Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SnapshotDecoder {
    /// A decoder for snapshot `(replid, offset)` that skips the first `skip` records.
    pub fn new(
        replid: String,
        offset: u64,
        info: SnapshotInfo,
        chunk_threshold_bytes: u64,
        skip: u64,
        emit_begin: bool,
    ) -> Self {
        let opts = ParserOptions {
            chunk_threshold_bytes,
            ..ParserOptions::default()
        };
        SnapshotDecoder {
            replid,
            offset,
            info,
            parser: RdbParser::new(opts),
            records: 0,
            skip,
            emit_begin,
            begun: false,
            announce_resume: false,
            header: (0, false),
            pending: None,
            keys: 0,
            expired: 0,
            chunk_expired: None,
            ended: false,
            input_complete: false,
            now_ms: unix_ms,
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, now_ms: fn() -> i64) -> Self {
        self.now_ms = now_ms;
        self
    }

    /// Feeds RDB bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
    }

    /// Declares that every byte was fed (the transfer finished). Until then the end of the
    /// RDB is held back: SnapshotEnd promises that the stream continues from here, which
    /// is true only once the link has finished the transfer.
    pub fn input_complete(&mut self) {
        self.input_complete = true;
    }

    /// Whether the RDB's end was decoded (SnapshotEnd was returned).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Call when every byte of a finished transfer was fed and `next_event` returned
    /// `None`: an error when the RDB is incomplete.
    pub fn finish(&mut self) -> Result<(), SnapshotError> {
        self.parser.finish().map_err(|e| self.err(e))
    }

    fn err(&self, source: RdbError) -> SnapshotError {
        SnapshotError::Rdb {
            replid: self.replid.clone(),
            offset: self.offset,
            source,
        }
    }

    /// Where a subscriber resumes from after what was decoded so far.
    pub fn resume_position(&self) -> Position {
        if self.ended {
            Position {
                replid: self.replid.clone(),
                offset: self.offset,
                db: 0,
                in_snapshot: false,
                snapshot_records: 0,
            }
        } else {
            self.snapshot_position()
        }
    }

    fn snapshot_position(&self) -> Position {
        Position {
            replid: self.replid.clone(),
            offset: self.offset,
            db: 0,
            in_snapshot: true,
            snapshot_records: self.records.max(self.skip),
        }
    }

    /// The SnapshotBegin of this copy.
    fn begin(&self) -> SnapshotBegin {
        SnapshotBegin {
            replid: self.replid.clone(),
            offset: self.offset,
            rdb_version: self.header.0,
            source_version: self
                .parser
                .aux()
                .server_version()
                .map(|(_, v)| v.to_owned())
                .unwrap_or_default(),
            estimated_keys: self.info.estimated_keys,
            estimated_bytes: self.info.expected_bytes,
            valkey: self.header.1,
            reason: self.info.reason.clone(),
            resumed: false,
            resumed_keys: 0,
        }
    }

    fn event(&self, kind: Kind) -> ChangeEvent {
        ChangeEvent {
            position: Some(self.snapshot_position()),
            kind: Some(kind),
        }
    }

    /// The next event, or `None` when more bytes are needed (or the snapshot ended).
    pub fn next_event(
        &mut self,
        scripts: &mut ScriptCache,
    ) -> Result<Option<ChangeEvent>, SnapshotError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let item = match self.pending.take() {
                Some(item) => item,
                None => match self.parser.next_item() {
                    Ok(Some(item)) => item,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.err(e)),
                },
            };
            match item {
                Item::Header { version, valkey } => {
                    self.header = (version, valkey);
                    continue;
                }
                Item::Aux { .. } => continue,
                other if !self.begun => {
                    // AUX fields (and the server version among them) come first; anything
                    // else means they are complete.
                    self.begun = true;
                    self.pending = Some(other);
                    if self.emit_begin {
                        let mut event = self.event(Kind::SnapshotBegin(self.begin()));
                        if let Some(p) = &mut event.position {
                            p.snapshot_records = 0;
                        }
                        return Ok(Some(event));
                    }
                    self.announce_resume = true;
                    continue;
                }
                record @ (Item::Key(_)
                | Item::Chunk(_)
                | Item::Function { .. }
                | Item::End { .. })
                    if self.announce_resume && self.records >= self.skip =>
                {
                    // Everything delivered before is skipped: announce the resume at the
                    // resume point, then deliver this record.
                    self.announce_resume = false;
                    self.pending = Some(record);
                    let begin = SnapshotBegin {
                        resumed: true,
                        resumed_keys: self.keys,
                        ..self.begin()
                    };
                    return Ok(Some(self.event(Kind::SnapshotBegin(begin))));
                }
                Item::SelectDb(_)
                | Item::ResizeDb { .. }
                | Item::SlotInfo { .. }
                | Item::ModuleAux { .. } => continue,
                Item::Function { code } => {
                    self.records += 1;
                    if self.records <= self.skip {
                        continue;
                    }
                    return Ok(Some(self.event(Kind::Function(FunctionLibrary {
                        code: code.to_vec(),
                    }))));
                }
                Item::Key(rec) => {
                    self.records += 1;
                    let expired = self.is_expired(rec.expire_at_ms);
                    if expired {
                        self.expired += 1;
                    } else {
                        self.keys += 1;
                    }
                    if expired || self.records <= self.skip {
                        continue;
                    }
                    let (value_type, module_type) = value_type(&rec.value);
                    let key = pb::KeyRecord {
                        db: rec.db,
                        key: rec.key.to_vec(),
                        expire_at_ms: rec.expire_at_ms.unwrap_or(0),
                        r#type: value_type as i32,
                        value: Some(key_record::Value::DumpBody(rec.dump_body.to_vec())),
                        chunk_index: 0,
                        last_chunk: true,
                        module_type,
                    };
                    return Ok(Some(self.event(Kind::Key(key))));
                }
                Item::Chunk(chunk) => {
                    self.records += 1;
                    let resumed = self.records <= self.skip;
                    let expired = match self.chunk_expired {
                        Some(e) if chunk.index > 0 => e,
                        _ => self.is_expired(chunk.expire_at_ms),
                    };
                    self.chunk_expired = if chunk.last { None } else { Some(expired) };
                    if chunk.last {
                        if expired {
                            self.expired += 1;
                        } else {
                            self.keys += 1;
                        }
                    }
                    if resumed || expired {
                        continue;
                    }
                    let (value_type, module_type) = value_type(&chunk.part);
                    let Some(items) = chunk_items(chunk.part) else {
                        return Err(SnapshotError::ChunkedModule {
                            replid: self.replid.clone(),
                            offset: self.offset,
                            key: String::from_utf8_lossy(&chunk.key).into_owned(),
                        });
                    };
                    let key = pb::KeyRecord {
                        db: chunk.db,
                        key: chunk.key.to_vec(),
                        expire_at_ms: chunk.expire_at_ms.unwrap_or(0),
                        r#type: value_type as i32,
                        value: Some(key_record::Value::Chunk(ValueChunk { items: Some(items) })),
                        chunk_index: chunk.index,
                        last_chunk: chunk.last,
                        module_type,
                    };
                    return Ok(Some(self.event(Kind::Key(key))));
                }
                end @ Item::End { .. } if !self.input_complete => {
                    self.pending = Some(end);
                    return Ok(None);
                }
                Item::End { .. } => {
                    self.ended = true;
                    let scripts_out: Vec<Script> = self
                        .parser
                        .aux()
                        .lua_scripts()
                        .map(|body| {
                            scripts.remember(body.clone());
                            Script {
                                sha1: sha1_hex(body),
                                body: body.to_vec(),
                            }
                        })
                        .collect();
                    let end = SnapshotEnd {
                        keys: self.keys,
                        expired_keys_skipped: self.expired,
                        bytes: self.parser.offset(),
                        scripts: scripts_out,
                    };
                    return Ok(Some(ChangeEvent {
                        position: Some(self.resume_position()),
                        kind: Some(Kind::SnapshotEnd(end)),
                    }));
                }
            }
        }
    }

    fn is_expired(&self, expire_at_ms: Option<i64>) -> bool {
        // Redis treats a key as expired once now > its expire time.
        expire_at_ms.is_some_and(|at| (self.now_ms)() > at)
    }
}

fn value_type(v: &Value) -> (ValueType, String) {
    match v {
        Value::String(_) => (ValueType::String, String::new()),
        Value::List(_) => (ValueType::List, String::new()),
        Value::Set(_) => (ValueType::Set, String::new()),
        Value::ZSet(_) => (ValueType::Zset, String::new()),
        Value::Hash(_) => (ValueType::Hash, String::new()),
        Value::Stream(_) => (ValueType::Stream, String::new()),
        Value::Module { module_type, .. } => (ValueType::Module, module_type.clone()),
    }
}

fn stream_id(id: redis_sync_rdb::StreamId) -> pb::StreamId {
    pb::StreamId {
        ms: id.ms,
        seq: id.seq,
    }
}

fn chunk_items(part: Value) -> Option<Items> {
    Some(match part {
        Value::String(s) => Items::StringPart(s.to_vec()),
        Value::List(v) => Items::ListItems(BytesList {
            items: v.into_iter().map(|b| b.to_vec()).collect(),
        }),
        Value::Set(v) => Items::SetMembers(BytesList {
            items: v.into_iter().map(|b| b.to_vec()).collect(),
        }),
        Value::ZSet(v) => Items::ZsetMembers(ZSetMembers {
            members: v
                .into_iter()
                .map(|(m, score)| pb::ZSetMember {
                    member: m.to_vec(),
                    score,
                })
                .collect(),
        }),
        Value::Hash(v) => Items::HashFields(HashFields {
            fields: v
                .into_iter()
                .map(|f| pb::HashField {
                    field: f.field.to_vec(),
                    value: f.value.to_vec(),
                    expire_at_ms: f.expire_at_ms.unwrap_or(0),
                })
                .collect(),
        }),
        Value::Stream(s) => {
            let s = *s;
            Items::Stream(StreamChunk {
                entries: s
                    .entries
                    .into_iter()
                    .map(|e| pb::StreamEntry {
                        id: Some(stream_id(e.id)),
                        fields: e
                            .fields
                            .into_iter()
                            .flat_map(|(f, v)| [f.to_vec(), v.to_vec()])
                            .collect(),
                    })
                    .collect(),
                meta: s.meta.map(|m| pb::StreamMeta {
                    last_id: Some(stream_id(m.last_id)),
                    length: m.length,
                    entries_added: m.entries_added,
                    max_deleted_id: Some(stream_id(m.max_deleted_id)),
                    first_id: Some(stream_id(m.first_id)),
                }),
                groups: s
                    .groups
                    .into_iter()
                    .map(|g| pb::StreamGroup {
                        name: g.name.to_vec(),
                        last_id: Some(stream_id(g.last_id)),
                        entries_read: g
                            .entries_read
                            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                        pending: g
                            .pending
                            .into_iter()
                            .map(|p| pb::StreamPendingEntry {
                                id: Some(stream_id(p.id)),
                                consumer: p.consumer.map(|c| c.to_vec()).unwrap_or_default(),
                                delivery_time_ms: p.delivery_time_ms,
                                delivery_count: p.delivery_count,
                            })
                            .collect(),
                        consumers: g
                            .consumers
                            .into_iter()
                            .map(|c| pb::StreamConsumer {
                                name: c.name.to_vec(),
                                seen_time_ms: c.seen_time_ms,
                                active_time_ms: c.active_time_ms,
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        Value::Module { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal RDB 9 with three strings (one expired in 2001) and a Lua script, built
    /// by hand so the test does not depend on a server.
    fn rdb() -> Vec<u8> {
        let mut r = b"REDIS0009".to_vec();
        let aux = |r: &mut Vec<u8>, k: &[u8], v: &[u8]| {
            r.push(0xFA);
            r.push(k.len() as u8);
            r.extend_from_slice(k);
            r.push(v.len() as u8);
            r.extend_from_slice(v);
        };
        aux(&mut r, b"redis-ver", b"5.0.6");
        aux(&mut r, b"lua", b"return 1");
        r.extend_from_slice(&[0xFE, 0x00, 0xFB, 0x03, 0x01]);
        for (k, v) in [(b"a", b"1"), (b"b", b"2")] {
            r.extend_from_slice(&[0x00, 0x01, k[0], 0x01, v[0]]);
        }
        r.push(0xFC);
        r.extend_from_slice(&1_000_000_000_000i64.to_le_bytes());
        r.extend_from_slice(&[0x00, 0x01, b'x', 0x01, b'9']);
        r.push(0xFF);
        // A zero checksum means "not computed"; the parser accepts it.
        r.extend_from_slice(&[0; 8]);
        r
    }

    fn run(d: &mut SnapshotDecoder) -> Vec<ChangeEvent> {
        let mut s = ScriptCache::default();
        let mut out = Vec::new();
        while let Some(e) = d.next_event(&mut s).unwrap() {
            out.push(e);
        }
        out
    }

    fn info() -> SnapshotInfo {
        SnapshotInfo {
            expected_bytes: 0,
            estimated_keys: 3,
            reason: "first sync".into(),
        }
    }

    #[test]
    fn decodes_keys_skips_expired_and_counts_records() {
        let bytes = rdb();
        let mut d = SnapshotDecoder::new("r".into(), 42, info(), 1 << 20, 0, true)
            .with_clock(|| 2_000_000_000_000);
        for b in &bytes {
            d.feed(&[*b]);
        }
        let mut events = run(&mut d);
        assert_eq!(events.len(), 3, "the end waits for the transfer to finish");
        d.input_complete();
        events.extend(run(&mut d));
        d.finish().unwrap();
        assert_eq!(events.len(), 4, "{events:?}");
        let Some(Kind::SnapshotBegin(b)) = &events[0].kind else {
            panic!()
        };
        assert_eq!(
            (b.rdb_version, b.source_version.as_str(), b.estimated_keys),
            (9, "5.0.6", 3)
        );
        let Some(Kind::Key(k)) = &events[2].kind else {
            panic!()
        };
        assert_eq!(k.key, b"b");
        assert_eq!(k.value, Some(key_record::Value::DumpBody(vec![0, 1, b'2'])));
        assert_eq!(events[2].position.as_ref().unwrap().snapshot_records, 2);
        let Some(Kind::SnapshotEnd(e)) = &events[3].kind else {
            panic!()
        };
        assert_eq!((e.keys, e.expired_keys_skipped), (2, 1));
        assert_eq!(
            e.scripts[0].sha1,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        let end = events[3].position.as_ref().unwrap();
        assert!(!end.in_snapshot);
        assert_eq!(end.offset, 42);
    }

    #[test]
    fn a_resume_announces_itself_at_the_resume_point() {
        // Resuming after one record (key "a"): the SnapshotBegin says so and counts "a" as
        // done, its position is the resume point, and the copy goes on with "b".
        let mut d =
            SnapshotDecoder::new("r".into(), 42, info(), 1 << 20, 1, false).with_clock(|| 0);
        d.feed(&rdb());
        d.input_complete();
        let events = run(&mut d);
        assert_eq!(events.len(), 4, "{events:?}");
        let Some(Kind::SnapshotBegin(b)) = &events[0].kind else {
            panic!("{events:?}")
        };
        assert!(b.resumed);
        assert_eq!((b.resumed_keys, b.estimated_keys, b.rdb_version), (1, 3, 9));
        let at = events[0].position.as_ref().unwrap();
        assert!(at.in_snapshot);
        assert_eq!(at.snapshot_records, 1);
        let Some(Kind::Key(k)) = &events[1].kind else {
            panic!()
        };
        assert_eq!(k.key, b"b");
        let Some(Kind::SnapshotEnd(e)) = &events[3].kind else {
            panic!()
        };
        assert_eq!(e.keys, 3, "keys of the whole copy, before the resume too");
    }

    #[test]
    fn a_resume_at_the_very_end_still_announces_itself() {
        let mut d =
            SnapshotDecoder::new("r".into(), 42, info(), 1 << 20, 3, false).with_clock(|| 0);
        d.feed(&rdb());
        d.input_complete();
        let events = run(&mut d);
        assert_eq!(events.len(), 2, "{events:?}");
        let Some(Kind::SnapshotBegin(b)) = &events[0].kind else {
            panic!("{events:?}")
        };
        assert_eq!((b.resumed, b.resumed_keys), (true, 3));
        assert!(matches!(events[1].kind, Some(Kind::SnapshotEnd(_))));
    }

    #[test]
    fn truncated_snapshot_is_an_error() {
        let bytes = rdb();
        let mut d = SnapshotDecoder::new("r".into(), 42, info(), 1 << 20, 0, true);
        d.feed(&bytes[..bytes.len() - 12]);
        run(&mut d);
        assert!(d.finish().is_err());
    }
}
