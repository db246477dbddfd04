//! The incremental RDB parser.
//!
//! Input is appended to one buffer and parsed a unit at a time (see [`crate::reader`]);
//! consumed bytes are dropped in slices, after being folded into the running CRC-64.
//!
//! A key is first only *walked*: its value is followed to its end without decoding it,
//! while its bytes stay in the buffer. Most keys are small; when one ends within
//! [`ParserOptions::chunk_threshold_bytes`], its bytes are copied once into `dump_body`
//! and the value is decoded from that copy, every string in it a zero-copy slice of the
//! body. When a key grows past the threshold (or is a string longer than it), the walked
//! prefix, still in the buffer, is decoded once to become the first chunk, and from then
//! on the value is decoded as it arrives and leaves as chunks; its bytes are no longer kept.
//! Each chunk is held back until the next one exists, so that the final one can carry
//! `last`.
//!
//! What is still held whole, by nature of the format: one collection element, one encoded
//! node (a ziplist, listpack, intset or zipmap is decoded in one piece; Redis keeps them a
//! few KiB by default), the compressed form of an LZF string being streamed (LZF cannot be
//! decoded in parts), a module value (it can only travel whole, through `RESTORE`), and a
//! stream's consumer groups (they ride on its last chunk). All but the groups are bounded
//! by [`ParserOptions::max_string_len`].

use std::collections::VecDeque;

use bytes::Bytes;

use crate::encoding::crc64::crc64;
use crate::error::RdbError;
use crate::model::{AuxFields, Item, KeyChunk, KeyRecord, ParserOptions, Value, module_type_name};
use crate::reader::{PResult, Reader, Stop};
use crate::types as t;
use crate::value::{ValueMachine, decode_whole, module_step, resume_decoding};

/// Newest `REDIS`-magic version understood (Redis 7.4+ writes 12).
const MAX_REDIS_VERSION: u32 = 12;
/// Valkey versions understood: 80 (Valkey 9.0) and 81 (9.2).
const VALKEY_VERSIONS: std::ops::RangeInclusive<u32> = 80..=81;
/// Consumed input is dropped from the buffer only in slices at least this big (or half the
/// buffer), so the memmove behind it stays amortised O(1) per byte.
const COMPACT_MIN: usize = 4096;

/// Parses an RDB stream fed in pieces of any size; see the crate documentation.
#[derive(Debug)]
pub struct RdbParser {
    opts: ParserOptions,
    /// Input not yet dropped; `buf[0]` is at absolute offset `base`.
    buf: Vec<u8>,
    base: u64,
    /// Absolute offset of the next unparsed byte.
    pos: u64,
    state: State,
    out: VecDeque<Item>,
    version: u32,
    valkey: bool,
    db: u32,
    /// Key attributes set by opcodes before the next key.
    expire: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
    /// CRC-64 of `[0, base)`, maintained only when it will be checked.
    crc: u64,
    check_crc: bool,
    aux: AuxFields,
    failed: Option<u64>,
    trailing: u64,
}

#[derive(Debug)]
enum State {
    Header,
    Top,
    ModuleAux { module_id: u64 },
    Key(Box<KeyCtx>),
    Done,
}

#[derive(Debug)]
struct KeyCtx {
    db: u32,
    key: Bytes,
    expire: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
    rdb_type: u8,
    /// Absolute offset of the first value byte (after the key).
    value_start: u64,
    /// The value turned out bigger than the threshold: it leaves as chunks and its raw
    /// bytes are no longer kept.
    chunked: bool,
    next_index: u32,
    /// The most recent chunk, held back until we know whether it is the last one.
    held: Option<KeyChunk>,
    machine: ValueMachine,
}

/// One opcode (or key header) parsed at top level.
enum Top {
    Aux(Bytes, Bytes),
    ResizeDb(u64, u64),
    SlotInfo(u64, u64, u64),
    Expire(i64),
    Idle(u64),
    Freq(u8),
    SelectDb(u32),
    ModuleAux(u64),
    Function(Bytes),
    Eof(Option<u64>),
    Key(u8, Bytes, ValueMachine),
}

impl RdbParser {
    /// A parser waiting for the first byte of an RDB.
    pub fn new(opts: ParserOptions) -> Self {
        RdbParser {
            opts,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            state: State::Header,
            out: VecDeque::new(),
            version: 0,
            valkey: false,
            db: 0,
            expire: None,
            idle: None,
            freq: None,
            crc: 0,
            check_crc: false,
            aux: AuxFields::new(),
            failed: None,
            trailing: 0,
        }
    }

    /// Appends input as it arrives. Bytes after the end of the RDB are counted (see
    /// [`RdbParser::trailing_bytes`]) and dropped: a diskless transfer's `$EOF:` mark, for
    /// one, is the caller's to check.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if matches!(self.state, State::Done) {
            self.trailing += data.len() as u64;
            return;
        }
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// The next item, `Ok(None)` when more input is needed or the RDB is complete
    /// ([`RdbParser::is_done`] tells which). After an error the parser stays failed.
    pub fn next_item(&mut self) -> Result<Option<Item>, RdbError> {
        loop {
            if let Some(item) = self.out.pop_front() {
                return Ok(Some(item));
            }
            if let Some(offset) = self.failed {
                return Err(RdbError::Failed { offset });
            }
            match self.step() {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    self.failed = Some(e.offset().unwrap_or(self.pos));
                    self.buf = Vec::new();
                    return Err(e);
                }
            }
        }
    }

    /// Declares the end of the input (call it once `next_item` returned `Ok(None)`):
    /// an error unless the whole RDB, EOF opcode and checksum included, was parsed.
    pub fn finish(&mut self) -> Result<(), RdbError> {
        if let Some(offset) = self.failed {
            return Err(RdbError::Failed { offset });
        }
        let context = match &self.state {
            State::Done => return Ok(()),
            State::Header => "the RDB header",
            State::Top => "an opcode or key header",
            State::ModuleAux { .. } => "module auxiliary data",
            State::Key(ctx) => ctx.machine.context(),
        };
        Err(RdbError::Truncated {
            offset: self.pos,
            context,
        })
    }

    /// True once the EOF opcode (and checksum) was parsed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes of RDB consumed so far (items up to here have been, or are ready to be,
    /// yielded).
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// The RDB version, once the header was read.
    pub fn version(&self) -> Option<u32> {
        (!matches!(self.state, State::Header)).then_some(self.version)
    }

    /// True when the header carried the `VALKEY` magic.
    pub fn is_valkey(&self) -> bool {
        self.valkey
    }

    /// AUX fields seen so far (they are also yielded as [`Item::Aux`]).
    pub fn aux(&self) -> &AuxFields {
        &self.aux
    }

    /// Input bytes held in memory right now: the unparsed tail plus, while a key that may
    /// still be yielded whole is being read, its value bytes (at most the chunk threshold).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes fed after the end of the RDB.
    pub fn trailing_bytes(&self) -> u64 {
        self.trailing
    }

    fn idx(&self) -> usize {
        // `pos` never passes the end of `buf` and `base` never passes `pos`, and `buf` is
        // in memory, so the difference fits in usize.
        (self.pos - self.base) as usize
    }

    /// Drops consumed input that nothing refers to any more, folding it into the CRC.
    fn compact(&mut self) {
        let keep_from = match &self.state {
            // A key that may still become a whole `Key` item needs its raw value bytes
            // for `dump_body`; they are at most the chunk threshold.
            State::Key(ctx) if !ctx.chunked => ctx.value_start,
            _ => self.pos,
        };
        let drop = (keep_from - self.base) as usize;
        if drop == 0 || (drop < COMPACT_MIN && drop * 2 < self.buf.len()) {
            return;
        }
        if self.check_crc {
            self.crc = crc64(self.crc, &self.buf[..drop]);
        }
        self.buf.drain(..drop);
        self.base = keep_from;
    }

    /// One unit of progress. Ok(false): nothing more can be done with the input at hand.
    fn step(&mut self) -> Result<bool, RdbError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Header => self.step_header(),
            State::Top => {
                self.state = State::Top;
                self.step_top()
            }
            State::ModuleAux { module_id } => self.step_module_aux(module_id),
            State::Key(ctx) => self.step_key(ctx),
            State::Done => Ok(false),
        }
    }

    fn step_header(&mut self) -> Result<bool, RdbError> {
        let avail = &self.buf[self.idx()..];
        let n = avail.len().min(9);
        let redis = avail[..n.min(5)] == b"REDIS"[..n.min(5)];
        let valkey = avail[..n.min(6)] == b"VALKEY"[..n.min(6)];
        let bad = || RdbError::BadMagic {
            found: String::from_utf8_lossy(&avail[..n]).into_owned(),
        };
        if !redis && !valkey {
            return Err(bad());
        }
        if avail.len() < 9 {
            self.state = State::Header;
            return Ok(false);
        }
        let digits = if valkey { &avail[6..9] } else { &avail[5..9] };
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let version = digits
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        let ok = if valkey {
            VALKEY_VERSIONS.contains(&version)
        } else {
            (1..=MAX_REDIS_VERSION).contains(&version)
        };
        if !ok {
            return Err(RdbError::UnsupportedVersion {
                offset: if valkey { 6 } else { 5 },
                magic: if valkey { "VALKEY" } else { "REDIS" },
                version,
            });
        }
        self.version = version;
        self.valkey = valkey;
        // The checksum trailer exists since RDB 5.
        self.check_crc = self.opts.verify_checksum && version >= 5;
        self.pos += 9;
        self.state = State::Top;
        self.out.push_back(Item::Header { version, valkey });
        Ok(true)
    }

    fn step_top(&mut self) -> Result<bool, RdbError> {
        let start = self.pos;
        let mut r = Reader::new(&self.buf[self.idx()..], start);
        let top = match parse_top(&mut r, self) {
            Ok(top) => top,
            Err(Stop::More) => return Ok(false),
            Err(Stop::Fail(e)) => return Err(e),
        };
        self.pos += r.pos() as u64;
        match top {
            Top::Aux(key, value) => {
                self.aux.push(key.clone(), value.clone());
                self.out.push_back(Item::Aux { key, value });
            }
            Top::ResizeDb(db_size, expires_size) => self.out.push_back(Item::ResizeDb {
                db_size,
                expires_size,
            }),
            Top::SlotInfo(slot, size, expires_size) => self.out.push_back(Item::SlotInfo {
                slot,
                size,
                expires_size,
            }),
            Top::Expire(ms) => self.expire = Some(ms),
            Top::Idle(s) => self.idle = Some(s),
            Top::Freq(f) => self.freq = Some(f),
            Top::SelectDb(db) => {
                self.db = db;
                self.out.push_back(Item::SelectDb(db));
            }
            Top::ModuleAux(module_id) => self.state = State::ModuleAux { module_id },
            Top::Function(code) => self.out.push_back(Item::Function { code }),
            Top::Eof(checksum) => return self.end(start, checksum),
            Top::Key(rdb_type, key, machine) => {
                self.state = State::Key(Box::new(KeyCtx {
                    db: self.db,
                    key,
                    expire: self.expire.take(),
                    idle: self.idle.take(),
                    freq: self.freq.take(),
                    rdb_type,
                    value_start: self.pos,
                    chunked: false,
                    next_index: 0,
                    held: None,
                    machine,
                }));
            }
        }
        Ok(true)
    }

    fn end(&mut self, eof_at: u64, checksum: Option<u64>) -> Result<bool, RdbError> {
        if let (true, Some(found)) = (self.check_crc, checksum) {
            // The CRC covers everything up to and including the EOF opcode.
            let upto = (eof_at + 1 - self.base) as usize;
            let expected = crc64(self.crc, &self.buf[..upto]);
            // A zero checksum means the writer ran with `rdbchecksum no`.
            if found != 0 && found != expected {
                return Err(RdbError::ChecksumMismatch {
                    offset: eof_at + 1,
                    expected,
                    found,
                });
            }
        }
        let rest = self.buf.len() - self.idx();
        self.trailing += rest as u64;
        self.buf = Vec::new();
        self.base = self.pos;
        self.state = State::Done;
        self.out.push_back(Item::End { checksum });
        Ok(true)
    }

    fn step_module_aux(&mut self, module_id: u64) -> Result<bool, RdbError> {
        let mut r = Reader::new(&self.buf[self.idx()..], self.pos);
        match module_step(&mut r, self.opts.max_string_len) {
            Ok(eof) => {
                self.pos += r.pos() as u64;
                if eof {
                    let (module_name, _) = module_type_name(module_id);
                    self.out.push_back(Item::ModuleAux {
                        module_id,
                        module_name,
                    });
                    self.state = State::Top;
                } else {
                    self.state = State::ModuleAux { module_id };
                }
                Ok(true)
            }
            Err(Stop::More) => {
                self.state = State::ModuleAux { module_id };
                Ok(false)
            }
            Err(Stop::Fail(e)) => Err(e),
        }
    }

    fn step_key(&mut self, mut ctx: Box<KeyCtx>) -> Result<bool, RdbError> {
        let mut r = Reader::new(&self.buf[self.idx()..], self.pos);
        let done = match ctx.machine.step(&mut r) {
            Ok(done) => done,
            Err(Stop::More) => {
                self.state = State::Key(ctx);
                return Ok(false);
            }
            Err(Stop::Fail(e)) => return Err(e),
        };
        self.pos += r.pos() as u64;
        let value_bytes = self.pos - ctx.value_start;
        if !ctx.machine.chunkable() {
            // Module values must travel whole; the string limit bounds what we hold.
            if value_bytes > self.opts.max_string_len {
                return Err(RdbError::TooLong {
                    offset: ctx.value_start,
                    what: "module value",
                    len: value_bytes,
                    max: self.opts.max_string_len,
                });
            }
        } else if !ctx.chunked
            && (ctx.machine.streaming() || value_bytes > self.opts.chunk_threshold_bytes)
        {
            // The key is big: decode what was walked so far (at most the threshold plus
            // one unit, still in the buffer) so its first elements become its first chunk,
            // and decode the rest as it arrives.
            let s = (ctx.value_start - self.base) as usize;
            ctx.machine = resume_decoding(
                ctx.rdb_type,
                self.valkey,
                &self.buf[s..self.idx()],
                ctx.value_start,
                self.opts.max_string_len,
                self.opts.chunk_threshold_bytes,
            )?;
            ctx.chunked = true;
        }
        if ctx.chunked {
            self.emit_parts(&mut ctx, done);
        }
        if !done {
            self.state = State::Key(ctx);
            return Ok(true);
        }
        self.state = State::Top;
        if ctx.chunked {
            if let Some(mut last) = ctx.held.take() {
                last.last = true;
                self.out.push_back(Item::Chunk(last));
            }
            return Ok(true);
        }
        let s = (ctx.value_start - self.base) as usize;
        let e = self.idx();
        // The RDB has the key between the type byte and the value; DUMP has not, so the
        // body is assembled: one copy of at most the chunk threshold. The value is then
        // decoded from it, its strings being slices of the body.
        let mut body = Vec::with_capacity(1 + e - s);
        body.push(ctx.rdb_type);
        body.extend_from_slice(&self.buf[s..e]);
        let body = Bytes::from(body);
        let (value, empty) = decode_whole(
            ctx.rdb_type,
            self.valkey,
            &body.slice(1..),
            ctx.value_start,
            self.opts.max_string_len,
        )?;
        if empty {
            // Redis skips empty collections on load (old servers could save them).
            return Ok(true);
        }
        self.out.push_back(Item::Key(KeyRecord {
            db: ctx.db,
            key: ctx.key,
            expire_at_ms: ctx.expire,
            idle: ctx.idle,
            freq: ctx.freq,
            rdb_type: ctx.rdb_type,
            value,
            dump_body: body,
        }));
        Ok(true)
    }

    fn emit_parts(&mut self, ctx: &mut KeyCtx, last: bool) {
        let max_bytes = usize::try_from(self.opts.chunk_threshold_bytes).unwrap_or(usize::MAX);
        while let Some(part) = ctx
            .machine
            .next_part(self.opts.chunk_elements, max_bytes, last)
        {
            let chunk = KeyChunk {
                db: ctx.db,
                key: ctx.key.clone(),
                expire_at_ms: ctx.expire,
                rdb_type: ctx.rdb_type,
                index: ctx.next_index,
                last: false,
                part,
            };
            ctx.next_index = ctx.next_index.saturating_add(1);
            if let Some(prev) = ctx.held.replace(chunk) {
                self.out.push_back(Item::Chunk(prev));
            }
        }
        // An empty string is a key like any other (unlike an empty collection, which Redis
        // drops): when its length prefix alone crossed the threshold, no part carried
        // bytes, so it still needs its one, empty, chunk.
        if last && ctx.next_index == 0 && ctx.rdb_type == t::STRING {
            ctx.held = Some(KeyChunk {
                db: ctx.db,
                key: ctx.key.clone(),
                expire_at_ms: ctx.expire,
                rdb_type: ctx.rdb_type,
                index: 0,
                last: false,
                part: Value::String(Bytes::new()),
            });
            ctx.next_index = 1;
        }
    }
}

fn parse_top(r: &mut Reader<'_>, p: &RdbParser) -> PResult<Top> {
    let at = r.offset();
    let max = p.opts.max_string_len;
    let op = r.u8()?;
    Ok(match op {
        t::OPCODE_AUX => {
            let key = r.string(max)?;
            let value = r.string(max)?;
            Top::Aux(key, value)
        }
        t::OPCODE_RESIZEDB => {
            let db = r.len()?;
            let exp = r.len()?;
            Top::ResizeDb(db, exp)
        }
        t::OPCODE_SLOT_INFO => {
            let slot = r.len()?;
            let size = r.len()?;
            let exp = r.len()?;
            Top::SlotInfo(slot, size, exp)
        }
        // Seconds, 4 bytes in the writer's byte order (little endian on every server we
        // support), the format of RDB < 3.
        t::OPCODE_EXPIRETIME => Top::Expire(i64::from(i32::from_le_bytes(r.array()?)) * 1000),
        t::OPCODE_EXPIRETIME_MS => Top::Expire(r.ms_time()?),
        t::OPCODE_IDLE => Top::Idle(r.len()?),
        t::OPCODE_FREQ => Top::Freq(r.u8()?),
        t::OPCODE_SELECTDB => {
            let db = r.len()?;
            let db = u32::try_from(db).map_err(|_| {
                RdbError::corrupt(at, "SELECTDB", format!("database {db} out of range"))
            })?;
            Top::SelectDb(db)
        }
        t::OPCODE_MODULE_AUX => {
            let id = r.len()?;
            let when_at = r.offset();
            let when_opcode = r.len()?;
            // The `when` field is written as a module UINT: opcode 2, then the value.
            if when_opcode != 2 {
                return Err(RdbError::corrupt(
                    when_at,
                    "module aux",
                    format!("bad when opcode {when_opcode}"),
                )
                .into());
            }
            r.len()?;
            Top::ModuleAux(id)
        }
        t::OPCODE_FUNCTION_PRE_GA => return Err(RdbError::FunctionPreGa { offset: at }.into()),
        t::OPCODE_FUNCTION2 => Top::Function(r.string(max)?),
        t::OPCODE_EOF => {
            let checksum = if p.version >= 5 {
                Some(u64::from_le_bytes(r.array()?))
            } else {
                None
            };
            Top::Eof(checksum)
        }
        rdb_type => {
            // Checked before the key is read, so an unknown type is reported at its own
            // offset even when the input stops right after it.
            // A walking machine: most keys are small and are decoded once complete, from
            // their dump body, so that their strings are slices of it rather than copies.
            let machine = ValueMachine::new(
                rdb_type,
                p.valkey,
                at,
                max,
                p.opts.chunk_threshold_bytes,
                false,
            )?;
            let key = r.string(max)?;
            Top::Key(rdb_type, key, machine)
        }
    })
}
