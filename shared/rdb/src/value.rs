//! The resumable value decoder shared by the streaming parser and [`crate::decode_value`].
//!
//! A value is consumed one unit at a time: a header, one element of a hash-table
//! encoding, one quicklist or stream node, one stream group record, one module opcode.
//! Each unit either completes or leaves the machine untouched (see [`crate::reader`]), so
//! the machine's state is always "between units" and a big key never has to be parsed
//! again from its start. Decoded elements collect in an accumulator that the parser drains
//! as chunk parts once it knows the key is big, or takes whole when the value ends.
//!
//! A machine built with `decode = false` only walks: it checks the framing and finds the
//! end of each unit without decoding strings or encoded nodes. The parser walks every key
//! first and decodes small ones once, from their complete `dump_body` ([`decode_whole`]);
//! walking and decoding split a value into the same units, which is what lets
//! [`resume_decoding`] pick up a walk that turned out to be a big key.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::encoding::{self, Element, EncodingError};
use crate::error::RdbError;
use crate::model::{
    HashField, Stream, StreamConsumer, StreamEntry, StreamGroup, StreamId, StreamMeta,
    StreamPendingEntry, Value, module_type_name,
};
use crate::reader::{Data, Length, PResult, Reader, Stop, check_len, lzf_decompress};
use crate::types as t;

/// Largest field expire time Redis accepts (`EB_EXPIRE_TIME_MAX`, 2^48 - 1 ms).
const HFE_MAX: u64 = 0x0000_FFFF_FFFF_FFFF;

/// Stream entry flag: the entry was deleted (kept in the node as a tombstone).
const STREAM_FLAG_DELETED: i64 = 1;
/// Stream entry flag: the entry has the node's master fields, only values are stored.
const STREAM_FLAG_SAMEFIELDS: i64 = 2;

/// Quicklist 2 node containers.
const QUICKLIST_PLAIN: u64 = 1;
const QUICKLIST_PACKED: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    List,
    Set,
    ZSet {
        binary: bool,
    },
    Hash,
    /// Valkey's HASH_2: field, value, absolute expire (8 bytes, -1 = none).
    ValkeyHash2,
    /// Redis 7.4+: `relative` = type 24 (TTLs relative to a min-expire prefix).
    HashMeta {
        relative: bool,
    },
    Quicklist {
        v2: bool,
    },
    Blob(Blob),
    Stream {
        ver: u8,
    },
    Module,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blob {
    Zipmap,
    ListZiplist,
    Intset,
    ZsetZiplist,
    HashZiplist,
    HashListpack,
    ZsetListpack,
    SetListpack,
    /// Listpack of (field, value, ttl) triples; `prefix` = an 8-byte min expire precedes.
    HashListpackEx {
        prefix: bool,
    },
}

#[derive(Debug)]
enum Phase {
    Start,
    Elements {
        remaining: u64,
    },
    StringRaw {
        remaining: u64,
    },
    StringLzf {
        at: u64,
        remaining: usize,
        len: usize,
        compressed: Vec<u8>,
    },
    StreamNodes {
        remaining: u64,
    },
    StreamMeta,
    StreamGroupHeader,
    StreamPel {
        remaining: u64,
    },
    StreamConsumerCount,
    StreamConsumerHeader,
    StreamConsumerPel {
        remaining: u64,
    },
    Module,
    Done,
}

/// A consumer group being read.
#[derive(Debug)]
struct GroupBuild {
    group: StreamGroup,
    /// PEL id -> index in `group.pending`, to attach consumers to their entries.
    pel_index: HashMap<StreamId, usize>,
    consumers_left: u64,
}

#[derive(Debug, Default)]
struct StreamState {
    meta: Option<StreamMeta>,
    groups: Vec<StreamGroup>,
    groups_left: u64,
    current: Option<GroupBuild>,
    /// First live entry id seen, for type 15 where the first id is not stored.
    first_live: Option<StreamId>,
    /// The final part (with meta and groups) was handed out.
    closed: bool,
}

/// Decodes one value, unit by unit.
#[derive(Debug)]
pub(crate) struct ValueMachine {
    kind: Kind,
    phase: Phase,
    /// False: only find the value's end (and check its framing); its elements are decoded
    /// later, once, from the complete bytes (see the module documentation of `parser`).
    decode: bool,
    /// Decoded elements not yet handed out.
    acc: Value,
    /// Approximate payload bytes in `acc`, to cut chunks by size as well as by count.
    acc_bytes: usize,
    /// Elements decoded so far over the whole value.
    produced: u64,
    max: u64,
    /// A string value longer than this is read piecewise into `str_buf` instead of whole.
    stream_above: u64,
    /// Bytes of a string being read piecewise, not yet handed out (at most about a part).
    str_buf: Vec<u8>,
    /// A whole string (decompressed, or read at once) being cut into parts; `Bytes` so
    /// that cutting is O(1) per part whatever its size.
    str_whole: Bytes,
    /// Parts cut and waiting to be handed out.
    ready: VecDeque<Value>,
    streaming: bool,
    min_expire: u64,
    stream: Option<Box<StreamState>>,
    module: Option<(String, u32)>,
}

impl ValueMachine {
    /// `at` is the offset of the type byte (for errors). `stream_above` is the size above
    /// which a string value is consumed piecewise (`u64::MAX`: never). `decode` false
    /// makes a machine that only walks the value to its end.
    pub(crate) fn new(
        rdb_type: u8,
        valkey: bool,
        at: u64,
        max: u64,
        stream_above: u64,
        decode: bool,
    ) -> Result<Self, RdbError> {
        let kind = match rdb_type {
            t::STRING => Kind::String,
            t::LIST => Kind::List,
            t::SET => Kind::Set,
            t::ZSET => Kind::ZSet { binary: false },
            t::HASH => Kind::Hash,
            t::ZSET_2 => Kind::ZSet { binary: true },
            t::MODULE_PRE_GA => return Err(RdbError::ModulePreGa { offset: at }),
            t::MODULE_2 => Kind::Module,
            t::HASH_ZIPMAP => Kind::Blob(Blob::Zipmap),
            t::LIST_ZIPLIST => Kind::Blob(Blob::ListZiplist),
            t::SET_INTSET => Kind::Blob(Blob::Intset),
            t::ZSET_ZIPLIST => Kind::Blob(Blob::ZsetZiplist),
            t::HASH_ZIPLIST => Kind::Blob(Blob::HashZiplist),
            t::LIST_QUICKLIST => Kind::Quicklist { v2: false },
            t::STREAM_LISTPACKS => Kind::Stream { ver: 1 },
            t::HASH_LISTPACK => Kind::Blob(Blob::HashListpack),
            t::ZSET_LISTPACK => Kind::Blob(Blob::ZsetListpack),
            t::LIST_QUICKLIST_2 => Kind::Quicklist { v2: true },
            t::STREAM_LISTPACKS_2 => Kind::Stream { ver: 2 },
            t::SET_LISTPACK => Kind::Blob(Blob::SetListpack),
            t::STREAM_LISTPACKS_3 => Kind::Stream { ver: 3 },
            // The same number means different things to Redis and Valkey: the magic decides.
            22 if valkey => Kind::ValkeyHash2,
            t::HASH_METADATA_PRE_GA => Kind::HashMeta { relative: false },
            t::HASH_LISTPACK_EX_PRE_GA if !valkey => {
                Kind::Blob(Blob::HashListpackEx { prefix: false })
            }
            t::HASH_METADATA if !valkey => Kind::HashMeta { relative: true },
            t::HASH_LISTPACK_EX if !valkey => Kind::Blob(Blob::HashListpackEx { prefix: true }),
            _ => {
                return Err(RdbError::UnknownType {
                    offset: at,
                    rdb_type,
                });
            }
        };
        let acc = match kind {
            Kind::String => Value::String(Bytes::new()),
            Kind::List | Kind::Quicklist { .. } | Kind::Blob(Blob::ListZiplist) => {
                Value::List(Vec::new())
            }
            Kind::Set | Kind::Blob(Blob::Intset | Blob::SetListpack) => Value::Set(Vec::new()),
            Kind::ZSet { .. } | Kind::Blob(Blob::ZsetZiplist | Blob::ZsetListpack) => {
                Value::ZSet(Vec::new())
            }
            Kind::Hash
            | Kind::ValkeyHash2
            | Kind::HashMeta { .. }
            | Kind::Blob(
                Blob::Zipmap | Blob::HashZiplist | Blob::HashListpack | Blob::HashListpackEx { .. },
            ) => Value::Hash(Vec::new()),
            Kind::Stream { .. } => Value::Stream(Box::default()),
            Kind::Module => Value::Module {
                module_type: String::new(),
                encoding_version: 0,
            },
        };
        Ok(ValueMachine {
            kind,
            phase: Phase::Start,
            decode,
            acc,
            acc_bytes: 0,
            produced: 0,
            max,
            stream_above,
            str_buf: Vec::new(),
            str_whole: Bytes::new(),
            ready: VecDeque::new(),
            streaming: false,
            min_expire: 0,
            stream: matches!(kind, Kind::Stream { .. }).then(Box::default),
            module: None,
        })
    }

    /// Module values cannot be cut: only `RESTORE` of the whole serialisation moves them.
    pub(crate) fn chunkable(&self) -> bool {
        self.kind != Kind::Module
    }

    /// The value is a string being read piecewise: the key is big by definition.
    pub(crate) fn streaming(&self) -> bool {
        self.streaming
    }

    /// A collection that ended with no elements: Redis skips such keys on load.
    pub(crate) fn is_empty_key(&self) -> bool {
        !matches!(self.kind, Kind::String | Kind::Stream { .. } | Kind::Module)
            && self.produced == 0
    }

    /// Short description of where the machine is, for truncation errors.
    pub(crate) fn context(&self) -> &'static str {
        match self.phase {
            Phase::Start => "a value header",
            Phase::Elements { .. } => "a collection element",
            Phase::StringRaw { .. } | Phase::StringLzf { .. } => "a string value",
            Phase::StreamNodes { .. } => "a stream node",
            Phase::StreamMeta => "stream metadata",
            Phase::StreamGroupHeader
            | Phase::StreamPel { .. }
            | Phase::StreamConsumerCount
            | Phase::StreamConsumerHeader
            | Phase::StreamConsumerPel { .. } => "a stream consumer group",
            Phase::Module => "a module value",
            Phase::Done => "a value",
        }
    }

    /// Consumes one unit. Returns true when the value is complete. On `Stop::More` the
    /// machine is unchanged, so the caller can retry with more input.
    pub(crate) fn step(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        match self.phase {
            Phase::Start => self.start(r),
            Phase::Elements { remaining } => self.element(r, remaining),
            Phase::StringRaw { remaining } => self.string_raw(r, remaining),
            Phase::StringLzf { .. } => self.string_lzf(r),
            Phase::StreamNodes { remaining } => self.stream_node(r, remaining),
            Phase::StreamMeta => self.stream_meta(r),
            Phase::StreamGroupHeader => self.stream_group_header(r),
            Phase::StreamPel { remaining } => self.stream_pel(r, remaining),
            Phase::StreamConsumerCount => self.stream_consumer_count(r),
            Phase::StreamConsumerHeader => self.stream_consumer_header(r),
            Phase::StreamConsumerPel { remaining } => self.stream_consumer_pel(r, remaining),
            Phase::Module => {
                if module_step(r, self.max)? {
                    Ok(self.set_done())
                } else {
                    Ok(false)
                }
            }
            Phase::Done => Ok(true),
        }
    }

    fn set_done(&mut self) -> bool {
        self.phase = Phase::Done;
        true
    }

    fn counted(&mut self, remaining: u64) -> bool {
        if remaining == 0 {
            self.set_done()
        } else {
            self.phase = Phase::Elements { remaining };
            false
        }
    }

    fn start(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        match self.kind {
            Kind::String => self.string_start(r),
            Kind::List
            | Kind::Set
            | Kind::ZSet { .. }
            | Kind::Hash
            | Kind::ValkeyHash2
            | Kind::HashMeta { relative: false }
            | Kind::Quicklist { .. } => {
                let n = r.len()?;
                Ok(self.counted(n))
            }
            Kind::HashMeta { relative: true } => {
                let min = r.ms_time()? as u64;
                let n = r.len()?;
                self.min_expire = min;
                Ok(self.counted(n))
            }
            Kind::Blob(blob) => {
                if let Blob::HashListpackEx { prefix: true } = blob {
                    // The min expire only serves Redis's own bookkeeping; each field
                    // carries its absolute time inside the listpack.
                    r.ms_time()?;
                }
                let data_at = r.offset();
                if !self.decode {
                    r.skip_string(self.max)?;
                    return Ok(self.set_done());
                }
                let data = r.blob(self.max)?;
                self.decode_blob(blob, data_at, &data)?;
                Ok(self.set_done())
            }
            Kind::Stream { .. } => {
                let n = r.len()?;
                self.phase = if n == 0 {
                    Phase::StreamMeta
                } else {
                    Phase::StreamNodes { remaining: n }
                };
                Ok(false)
            }
            Kind::Module => {
                let id = r.len()?;
                let (name, ver) = module_type_name(id);
                self.module = Some((name, ver));
                self.phase = Phase::Module;
                Ok(false)
            }
        }
    }

    fn string_start(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let at = r.offset();
        match r.length()? {
            Length::Len(n) => {
                let n_us = check_len(at, "string", n, self.max)?;
                if n > self.stream_above {
                    self.streaming = true;
                    self.phase = Phase::StringRaw { remaining: n };
                    return Ok(false);
                }
                if !self.decode {
                    r.take(n_us)?;
                    return Ok(self.set_done());
                }
                let s = r.bytes(n_us)?;
                self.acc = Value::String(s);
                self.acc_bytes = n_us;
            }
            Length::Encoded(3) => {
                let (clen, len) = r.lzf_header(at, self.max)?;
                if clen as u64 > self.stream_above {
                    // Too big to wait for in the input buffer: collect the compressed bytes
                    // as they arrive and decompress once (LZF cannot be decoded in parts).
                    self.streaming = true;
                    self.phase = Phase::StringLzf {
                        at,
                        remaining: clen,
                        len,
                        compressed: Vec::new(),
                    };
                    return Ok(false);
                }
                let input = r.take(clen)?;
                if !self.decode {
                    return Ok(self.set_done());
                }
                let out = lzf_decompress(at, input, len, self.max)?;
                self.acc_bytes = out.len();
                self.acc = Value::String(Bytes::from(out));
            }
            Length::Encoded(enc) => {
                // An integer: a few bytes, decoded in either mode.
                let v = r.encoded_string(at, enc, self.max)?;
                self.acc_bytes = v.len();
                self.acc = Value::String(v);
            }
        }
        self.produced = 1;
        Ok(self.set_done())
    }

    fn string_raw(&mut self, r: &mut Reader<'_>, remaining: u64) -> PResult<bool> {
        // Never take more than one part at a time, so the buffer of pending string bytes
        // stays at most one part however much input is already there.
        let cap = usize::try_from(remaining.min(self.stream_above.max(1))).unwrap_or(usize::MAX);
        let got = r.take_some(cap)?;
        self.str_buf.extend_from_slice(got);
        let remaining = remaining - got.len() as u64;
        if remaining == 0 {
            self.produced = 1;
            return Ok(self.set_done());
        }
        self.phase = Phase::StringRaw { remaining };
        Ok(false)
    }

    fn string_lzf(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let Phase::StringLzf {
            at,
            remaining,
            len,
            compressed,
        } = &mut self.phase
        else {
            return Ok(false);
        };
        let got = r.take_some(*remaining)?;
        // Grows with the bytes that actually arrived, never by the declared length.
        compressed.extend_from_slice(got);
        *remaining -= got.len();
        if *remaining > 0 {
            return Ok(false);
        }
        let out = lzf_decompress(*at, compressed, *len, self.max)?;
        self.str_whole = Bytes::from(out);
        self.produced = 1;
        Ok(self.set_done())
    }

    /// Walks one element without decoding it.
    fn skip_element(&self, r: &mut Reader<'_>) -> PResult<()> {
        let max = self.max;
        match self.kind {
            Kind::List | Kind::Set => r.skip_string(max)?,
            Kind::ZSet { binary } => {
                r.skip_string(max)?;
                if binary {
                    r.take(8)?;
                } else {
                    r.skip_text_double()?;
                }
            }
            Kind::Hash | Kind::ValkeyHash2 | Kind::HashMeta { .. } => {
                if let Kind::HashMeta { .. } = self.kind {
                    r.len()?;
                }
                r.skip_string(max)?;
                r.skip_string(max)?;
                if self.kind == Kind::ValkeyHash2 {
                    r.take(8)?;
                }
            }
            Kind::Quicklist { v2 } => {
                if v2 {
                    r.len()?;
                }
                r.skip_string(max)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn element(&mut self, r: &mut Reader<'_>, remaining: u64) -> PResult<bool> {
        let max = self.max;
        if !self.decode {
            self.skip_element(r)?;
            return Ok(self.counted(remaining - 1));
        }
        match self.kind {
            Kind::List | Kind::Set => {
                let s = r.string(max)?;
                self.acc_bytes += s.len();
                match &mut self.acc {
                    Value::List(v) | Value::Set(v) => v.push(s),
                    _ => return Err(internal(r.offset()).into()),
                }
                self.produced += 1;
            }
            Kind::ZSet { binary } => {
                let m = r.string(max)?;
                let at = r.offset();
                let score = if binary {
                    r.f64_le()?
                } else {
                    r.text_double()?
                };
                check_score(at, score)?;
                self.acc_bytes += m.len() + 8;
                if let Value::ZSet(v) = &mut self.acc {
                    v.push((m, score));
                }
                self.produced += 1;
            }
            Kind::Hash | Kind::ValkeyHash2 => {
                let field = r.string(max)?;
                let value = r.string(max)?;
                let mut expire_at_ms = None;
                if self.kind == Kind::ValkeyHash2 {
                    let at = r.offset();
                    let e = r.ms_time()?;
                    // Valkey writes -1 for "no expiry"; 0 is a real (past) time.
                    if e < -1 {
                        return Err(RdbError::corrupt(
                            at,
                            "hash field expire",
                            format!("{e} is not a time"),
                        )
                        .into());
                    }
                    expire_at_ms = (e != -1).then_some(e);
                }
                self.push_field(field, value, expire_at_ms);
            }
            Kind::HashMeta { relative } => {
                let at = r.offset();
                let ttl = r.len()?;
                let field = r.string(max)?;
                let value = r.string(max)?;
                // 0 = no TTL. Type 24 stores ttl = expire - min_expire + 1 (so that 0 stays
                // free); the 7.4 release candidates stored the absolute time.
                let expire = if ttl == 0 {
                    None
                } else if relative {
                    Some(ttl.wrapping_add(self.min_expire).wrapping_sub(1))
                } else {
                    Some(ttl)
                };
                if let Some(e) = expire
                    && e > HFE_MAX
                {
                    return Err(RdbError::corrupt(
                        at,
                        "hash field expire",
                        format!("{e} is beyond the largest expire time"),
                    )
                    .into());
                }
                self.push_field(field, value, expire.map(|e| e as i64));
            }
            Kind::Quicklist { v2 } => {
                let at = r.offset();
                let container = if v2 { r.len()? } else { QUICKLIST_PACKED };
                if container != QUICKLIST_PLAIN && container != QUICKLIST_PACKED {
                    return Err(RdbError::corrupt(
                        at,
                        "quicklist node",
                        format!("unknown container {container}"),
                    )
                    .into());
                }
                let data_at = r.offset();
                let data = r.blob(max)?;
                if data.as_slice().is_empty() {
                    return Err(RdbError::corrupt(data_at, "quicklist node", "empty node").into());
                }
                self.decode_quicklist_node(v2, container, data_at, data)?;
            }
            _ => return Ok(self.set_done()),
        }
        Ok(self.counted(remaining - 1))
    }

    fn push_field(&mut self, field: Bytes, value: Bytes, expire_at_ms: Option<i64>) {
        self.acc_bytes += field.len() + value.len();
        if let Value::Hash(v) = &mut self.acc {
            v.push(HashField {
                field,
                value,
                expire_at_ms,
            });
        }
        self.produced += 1;
    }

    fn decode_quicklist_node(
        &mut self,
        v2: bool,
        container: u64,
        at: u64,
        data: Data<'_>,
    ) -> Result<(), RdbError> {
        let Value::List(list) = &mut self.acc else {
            return Err(internal(at));
        };
        if container == QUICKLIST_PLAIN {
            // A plain node is one big list element stored as is.
            let b = match data {
                Data::Shared(b) => b,
                Data::Slice(s) => Bytes::copy_from_slice(s),
            };
            self.acc_bytes += b.len();
            list.push(b);
            self.produced += 1;
            return Ok(());
        }
        let raw = data.as_slice();
        let elems = if v2 {
            encoding::listpack::entries(raw).map_err(enc_err(at, "quicklist listpack node"))?
        } else {
            encoding::ziplist::entries(raw).map_err(enc_err(at, "quicklist ziplist node"))?
        };
        // Empty nodes are skipped, as Redis does; a list of only empty nodes is an empty key.
        for e in &elems {
            let b = elem(&data, e);
            self.acc_bytes += b.len();
            list.push(b);
        }
        self.produced += elems.len() as u64;
        Ok(())
    }

    fn decode_blob(&mut self, blob: Blob, at: u64, shared: &Data<'_>) -> Result<(), RdbError> {
        let data = shared.as_slice();
        match blob {
            Blob::Zipmap => {
                let pairs = encoding::zipmap::pairs(data).map_err(enc_err(at, "zipmap"))?;
                for (f, v) in pairs {
                    self.push_field(shared.sub(f), shared.sub(v), None);
                }
            }
            Blob::ListZiplist | Blob::SetListpack => {
                let elems = if blob == Blob::ListZiplist {
                    encoding::ziplist::entries(data).map_err(enc_err(at, "list ziplist"))?
                } else {
                    encoding::listpack::entries(data).map_err(enc_err(at, "set listpack"))?
                };
                let (Value::List(v) | Value::Set(v)) = &mut self.acc else {
                    return Err(internal(at));
                };
                for e in &elems {
                    let b = elem(shared, e);
                    self.acc_bytes += b.len();
                    v.push(b);
                }
                self.produced += elems.len() as u64;
            }
            Blob::Intset => {
                let members = encoding::intset::members(data).map_err(enc_err(at, "intset"))?;
                let Value::Set(v) = &mut self.acc else {
                    return Err(internal(at));
                };
                for m in &members {
                    let b = Bytes::from(m.to_string());
                    self.acc_bytes += b.len();
                    v.push(b);
                }
                self.produced += members.len() as u64;
            }
            Blob::ZsetZiplist | Blob::ZsetListpack => {
                let elems = if blob == Blob::ZsetZiplist {
                    encoding::ziplist::entries(data).map_err(enc_err(at, "zset ziplist"))?
                } else {
                    encoding::listpack::entries(data).map_err(enc_err(at, "zset listpack"))?
                };
                if elems.len() % 2 != 0 {
                    return Err(RdbError::corrupt(
                        at,
                        "sorted set",
                        format!("{} entries do not make member/score pairs", elems.len()),
                    ));
                }
                let Value::ZSet(v) = &mut self.acc else {
                    return Err(internal(at));
                };
                for pair in elems.chunks_exact(2) {
                    let score = pair[1].to_f64().map_err(enc_err(at, "zset score"))?;
                    check_score(at, score)?;
                    let m = elem(shared, &pair[0]);
                    self.acc_bytes += m.len() + 8;
                    v.push((m, score));
                }
                self.produced += (elems.len() / 2) as u64;
            }
            Blob::HashZiplist | Blob::HashListpack => {
                let elems = if blob == Blob::HashZiplist {
                    encoding::ziplist::entries(data).map_err(enc_err(at, "hash ziplist"))?
                } else {
                    encoding::listpack::entries(data).map_err(enc_err(at, "hash listpack"))?
                };
                if elems.len() % 2 != 0 {
                    return Err(RdbError::corrupt(
                        at,
                        "hash",
                        format!("{} entries do not make field/value pairs", elems.len()),
                    ));
                }
                for pair in elems.chunks_exact(2) {
                    self.push_field(elem(shared, &pair[0]), elem(shared, &pair[1]), None);
                }
            }
            Blob::HashListpackEx { .. } => {
                let elems = encoding::listpack::entries(data)
                    .map_err(enc_err(at, "hash listpack with field TTLs"))?;
                if elems.len() % 3 != 0 {
                    return Err(RdbError::corrupt(
                        at,
                        "hash",
                        format!(
                            "{} entries do not make field/value/ttl triples",
                            elems.len()
                        ),
                    ));
                }
                for triple in elems.chunks_exact(3) {
                    let ttl = element_int(&triple[2]).ok_or_else(|| {
                        RdbError::corrupt(at, "hash field expire", "TTL entry is not an integer")
                    })?;
                    // 0 is "no TTL" in this encoding (HASH_LP_NO_TTL).
                    if ttl < 0 || ttl as u64 > HFE_MAX {
                        return Err(RdbError::corrupt(
                            at,
                            "hash field expire",
                            format!("{ttl} is not a valid expire time"),
                        ));
                    }
                    let expire = (ttl != 0).then_some(ttl);
                    self.push_field(elem(shared, &triple[0]), elem(shared, &triple[1]), expire);
                }
            }
        }
        Ok(())
    }

    fn stream_state(&mut self) -> &mut StreamState {
        self.stream.get_or_insert_with(Box::default)
    }

    fn stream_node(&mut self, r: &mut Reader<'_>, remaining: u64) -> PResult<bool> {
        let next = if remaining > 1 {
            Phase::StreamNodes {
                remaining: remaining - 1,
            }
        } else {
            Phase::StreamMeta
        };
        if !self.decode {
            r.skip_string(self.max)?;
            r.skip_string(self.max)?;
            self.phase = next;
            return Ok(false);
        }
        let key_at = r.offset();
        let node_key = r.blob(self.max)?;
        let lp_at = r.offset();
        let lp = r.blob(self.max)?;
        let Ok(raw) = <[u8; 16]>::try_from(node_key.as_slice()) else {
            return Err(RdbError::corrupt(
                key_at,
                "stream node",
                format!(
                    "node key of {} bytes is not a 16-byte id",
                    node_key.as_slice().len()
                ),
            )
            .into());
        };
        let master = decode_raw_id(&raw);
        let elems = encoding::listpack::entries(lp.as_slice())
            .map_err(enc_err(lp_at, "stream listpack"))?;
        let Value::Stream(s) = &mut self.acc else {
            return Err(internal(key_at).into());
        };
        let before = s.entries.len();
        let bytes = decode_stream_node(lp_at, master, &lp, &elems, &mut s.entries)?;
        let added = s.entries.len() - before;
        let first = s.entries.get(before).map(|e| e.id);
        self.acc_bytes += bytes;
        self.produced += added as u64;
        let st = self.stream_state();
        if st.first_live.is_none() {
            st.first_live = first;
        }
        self.phase = next;
        Ok(false)
    }

    fn stream_meta(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let Kind::Stream { ver } = self.kind else {
            return Ok(self.set_done());
        };
        let length = r.len()?;
        let last_id = read_id(r)?;
        let (first_id, max_deleted_id, entries_added) = if ver >= 2 {
            let first = read_id(r)?;
            let max_del = read_id(r)?;
            let added = r.len()?;
            (Some(first), max_del, added)
        } else {
            // Type 15 does not store these; Redis derives them on load exactly so.
            (None, StreamId::default(), length)
        };
        let groups = r.len()?;
        let st = self.stream_state();
        let first_id = first_id.unwrap_or_else(|| st.first_live.unwrap_or_default());
        st.meta = Some(StreamMeta {
            length,
            last_id,
            first_id,
            max_deleted_id,
            entries_added,
        });
        st.groups_left = groups;
        if groups == 0 {
            return Ok(self.set_done());
        }
        self.phase = Phase::StreamGroupHeader;
        Ok(false)
    }

    fn stream_group_header(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let Kind::Stream { ver } = self.kind else {
            return Ok(self.set_done());
        };
        let name = r.string(self.max)?;
        let last_id = read_id(r)?;
        let entries_read = if ver >= 2 { Some(r.len()?) } else { None };
        let pel = r.len()?;
        self.stream_state().current = Some(GroupBuild {
            group: StreamGroup {
                name,
                last_id,
                entries_read,
                pending: Vec::new(),
                consumers: Vec::new(),
            },
            pel_index: HashMap::new(),
            consumers_left: 0,
        });
        self.phase = if pel == 0 {
            Phase::StreamConsumerCount
        } else {
            Phase::StreamPel { remaining: pel }
        };
        Ok(false)
    }

    fn stream_pel(&mut self, r: &mut Reader<'_>, remaining: u64) -> PResult<bool> {
        let at = r.offset();
        let id = decode_raw_id(&r.array::<16>()?);
        let delivery_time_ms = r.ms_time()?;
        let delivery_count = r.len()?;
        let g = self.current_group(at)?;
        let idx = g.group.pending.len();
        if g.pel_index.insert(id, idx).is_some() {
            return Err(RdbError::corrupt(at, "stream PEL", format!("duplicate id {id}")).into());
        }
        g.group.pending.push(StreamPendingEntry {
            id,
            consumer: None,
            delivery_time_ms,
            delivery_count,
        });
        self.phase = if remaining > 1 {
            Phase::StreamPel {
                remaining: remaining - 1,
            }
        } else {
            Phase::StreamConsumerCount
        };
        Ok(false)
    }

    fn stream_consumer_count(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let at = r.offset();
        let n = r.len()?;
        self.current_group(at)?.consumers_left = n;
        Ok(self.next_consumer_or_group())
    }

    fn stream_consumer_header(&mut self, r: &mut Reader<'_>) -> PResult<bool> {
        let Kind::Stream { ver } = self.kind else {
            return Ok(self.set_done());
        };
        let at = r.offset();
        let name = r.string(self.max)?;
        let seen_time_ms = r.ms_time()?;
        let active_time_ms = if ver >= 3 { r.ms_time()? } else { seen_time_ms };
        let pel = r.len()?;
        let g = self.current_group(at)?;
        if g.group.consumers.iter().any(|c| c.name == name) {
            return Err(RdbError::corrupt(at, "stream consumer", "duplicate consumer").into());
        }
        g.consumers_left -= 1;
        g.group.consumers.push(StreamConsumer {
            name,
            seen_time_ms,
            active_time_ms,
            pending: Vec::new(),
        });
        if pel == 0 {
            return Ok(self.next_consumer_or_group());
        }
        self.phase = Phase::StreamConsumerPel { remaining: pel };
        Ok(false)
    }

    fn stream_consumer_pel(&mut self, r: &mut Reader<'_>, remaining: u64) -> PResult<bool> {
        let at = r.offset();
        let id = decode_raw_id(&r.array::<16>()?);
        let g = self.current_group(at)?;
        let Some(&idx) = g.pel_index.get(&id) else {
            return Err(RdbError::corrupt(
                at,
                "stream consumer PEL",
                format!("id {id} is not in the group PEL"),
            )
            .into());
        };
        let Some(consumer) = g.group.consumers.last_mut() else {
            return Err(RdbError::corrupt(at, "stream consumer PEL", "no consumer").into());
        };
        let entry = &mut g.group.pending[idx];
        if entry.consumer.is_some() {
            return Err(RdbError::corrupt(
                at,
                "stream consumer PEL",
                format!("id {id} owned twice"),
            )
            .into());
        }
        entry.consumer = Some(consumer.name.clone());
        consumer.pending.push(id);
        if remaining > 1 {
            self.phase = Phase::StreamConsumerPel {
                remaining: remaining - 1,
            };
            return Ok(false);
        }
        Ok(self.next_consumer_or_group())
    }

    fn current_group(&mut self, at: u64) -> Result<&mut GroupBuild, RdbError> {
        self.stream_state()
            .current
            .as_mut()
            .ok_or_else(|| RdbError::corrupt(at, "stream consumer group", "no open group"))
    }

    /// After a consumer (or the consumer count): the next consumer, or close the group and
    /// go to the next group, or finish the value.
    fn next_consumer_or_group(&mut self) -> bool {
        let st = self.stream_state();
        let Some(g) = st.current.as_ref() else {
            return self.set_done();
        };
        if g.consumers_left > 0 {
            self.phase = Phase::StreamConsumerHeader;
            return false;
        }
        if let Some(g) = st.current.take() {
            st.groups.push(g.group);
        }
        st.groups_left = st.groups_left.saturating_sub(1);
        if st.groups_left == 0 {
            return self.set_done();
        }
        self.phase = Phase::StreamGroupHeader;
        false
    }

    /// Hands out the next chunk part when one is due: `max_elems` elements, or at least
    /// `max_bytes` of payload (strings: exactly `max_bytes`). With `last`, hands out what
    /// is left (for streams, always once, with the metadata and groups).
    pub(crate) fn next_part(
        &mut self,
        max_elems: usize,
        max_bytes: usize,
        last: bool,
    ) -> Option<Value> {
        let max_elems = max_elems.max(1);
        let max_bytes = max_bytes.max(1);
        if self.kind == Kind::String {
            // A string read whole can still make a big key: its length prefix may push the
            // value past the threshold, or LZF may have expanded it. Cut it like a
            // streamed one.
            if let Value::String(s) = &mut self.acc
                && !s.is_empty()
            {
                self.str_whole = std::mem::take(s);
            }
            if self.str_whole.len() >= max_bytes {
                return Some(Value::String(self.str_whole.split_to(max_bytes)));
            }
            if last && !self.str_whole.is_empty() {
                return Some(Value::String(std::mem::take(&mut self.str_whole)));
            }
            if self.str_buf.len() >= max_bytes {
                let rest = self.str_buf.split_off(max_bytes);
                let part = std::mem::replace(&mut self.str_buf, rest);
                return Some(Value::String(Bytes::from(part)));
            }
            if last && !self.str_buf.is_empty() {
                return Some(Value::String(Bytes::from(std::mem::take(
                    &mut self.str_buf,
                ))));
            }
            return None;
        }
        if let Some(p) = self.ready.pop_front() {
            return Some(p);
        }
        let n = self.acc.len();
        if n >= max_elems {
            self.cut_parts(max_elems);
            return self.ready.pop_front();
        }
        if self.acc_bytes >= max_bytes && n > 0 {
            // Fewer elements than a part, but big ones: they go now, so that a part stays
            // near the byte threshold too.
            return Some(self.take_all());
        }
        if last {
            if let Some(st) = self.stream.as_mut() {
                if st.closed {
                    return None;
                }
                st.closed = true;
                let meta = st.meta.take();
                let groups = std::mem::take(&mut st.groups);
                let entries = match &mut self.acc {
                    Value::Stream(s) => std::mem::take(&mut s.entries),
                    _ => Vec::new(),
                };
                self.acc_bytes = 0;
                return Some(Value::Stream(Box::new(Stream {
                    entries,
                    meta,
                    groups,
                })));
            }
            if n > 0 {
                return Some(self.take_all());
            }
        }
        None
    }

    /// Moves every full part of `n` elements out of the accumulator into `ready`, leaving
    /// the remainder (fewer than `n`). One pass over the elements, however many parts:
    /// cutting them off the front one by one would move the rest each time.
    fn cut_parts(&mut self, n: usize) {
        fn cut<T>(v: &mut Vec<T>, n: usize) -> Vec<Vec<T>> {
            let full = v.len() / n * n;
            let rest = v.split_off(full);
            let mut it = std::mem::replace(v, rest).into_iter();
            let mut parts = Vec::with_capacity(full / n);
            for _ in 0..full / n {
                parts.push(it.by_ref().take(n).collect());
            }
            parts
        }
        let parts: Vec<Value> = match &mut self.acc {
            Value::List(v) => cut(v, n).into_iter().map(Value::List).collect(),
            Value::Set(v) => cut(v, n).into_iter().map(Value::Set).collect(),
            Value::ZSet(v) => cut(v, n).into_iter().map(Value::ZSet).collect(),
            Value::Hash(v) => cut(v, n).into_iter().map(Value::Hash).collect(),
            Value::Stream(s) => cut(&mut s.entries, n)
                .into_iter()
                .map(|entries| {
                    Value::Stream(Box::new(Stream {
                        entries,
                        meta: None,
                        groups: Vec::new(),
                    }))
                })
                .collect(),
            // Strings are cut through `str_buf`/`str_whole`; modules are never cut.
            Value::String(_) | Value::Module { .. } => Vec::new(),
        };
        for p in parts {
            self.acc_bytes = self.acc_bytes.saturating_sub(value_bytes(&p));
            self.ready.push_back(p);
        }
    }

    /// Everything in the accumulator as one part.
    fn take_all(&mut self) -> Value {
        let part = match &mut self.acc {
            Value::List(v) => Value::List(std::mem::take(v)),
            Value::Set(v) => Value::Set(std::mem::take(v)),
            Value::ZSet(v) => Value::ZSet(std::mem::take(v)),
            Value::Hash(v) => Value::Hash(std::mem::take(v)),
            Value::Stream(s) => Value::Stream(Box::new(Stream {
                entries: std::mem::take(&mut s.entries),
                meta: None,
                groups: Vec::new(),
            })),
            Value::String(_) | Value::Module { .. } => Value::List(Vec::new()),
        };
        self.acc_bytes = 0;
        part
    }

    /// The whole value (for keys that were not chunked).
    pub(crate) fn finish(&mut self) -> Value {
        if self.kind == Kind::Module {
            let (module_type, encoding_version) = self.module.take().unwrap_or_default();
            return Value::Module {
                module_type,
                encoding_version,
            };
        }
        if self.kind == Kind::String && self.streaming {
            // Not reached by the parser (a streamed string is always chunked); kept whole
            // for completeness.
            if !self.str_whole.is_empty() {
                return Value::String(std::mem::take(&mut self.str_whole));
            }
            return Value::String(Bytes::from(std::mem::take(&mut self.str_buf)));
        }
        let mut v = std::mem::replace(&mut self.acc, Value::List(Vec::new()));
        if let (Value::Stream(s), Some(st)) = (&mut v, self.stream.as_mut()) {
            s.meta = st.meta.take();
            s.groups = std::mem::take(&mut st.groups);
        }
        v
    }
}

/// Walks one module opcode and its operand; true at the module EOF marker. Used for
/// module values (type 7) and module AUX data, which are kept opaque: only their end
/// matters, as in Redis's own `rdbLoadCheckModuleValue`.
pub(crate) fn module_step(r: &mut Reader<'_>, max: u64) -> PResult<bool> {
    let at = r.offset();
    match r.len()? {
        0 => return Ok(true),
        // signed / unsigned integer
        1 | 2 => {
            r.len()?;
        }
        // float
        3 => {
            r.take(4)?;
        }
        // double
        4 => {
            r.take(8)?;
        }
        // string
        5 => r.skip_string(max)?,
        op => {
            return Err(RdbError::corrupt(
                at,
                "module value",
                format!("unknown module opcode {op}"),
            )
            .into());
        }
    }
    Ok(false)
}

fn read_id(r: &mut Reader<'_>) -> PResult<StreamId> {
    let ms = r.len()?;
    let seq = r.len()?;
    Ok(StreamId { ms, seq })
}

/// Stream ids in node keys and PELs are 16 bytes: ms and seq, both big endian (so that
/// the radix tree sorts them numerically).
fn decode_raw_id(raw: &[u8; 16]) -> StreamId {
    let mut ms = [0u8; 8];
    let mut seq = [0u8; 8];
    ms.copy_from_slice(&raw[..8]);
    seq.copy_from_slice(&raw[8..]);
    StreamId {
        ms: u64::from_be_bytes(ms),
        seq: u64::from_be_bytes(seq),
    }
}

/// An element as `Bytes`: a slice of the shared blob when possible, the decimal text of
/// an integer otherwise (that is how Redis returns it to clients).
fn elem(data: &Data<'_>, e: &Element<'_>) -> Bytes {
    match e {
        Element::Bytes(b) => data.sub(b),
        Element::Int(i) => Bytes::from(i.to_string()),
    }
}

/// Integers inside listpacks are read the way Redis's `string2ll` reads them.
fn element_int(e: &Element<'_>) -> Option<i64> {
    e.to_i64()
}

/// Decodes one stream listpack node (layout in Redis's `t_stream.c`): a master entry
/// `count, deleted, n, field_1..field_n, 0`, then per entry
/// `flags, ms-diff, seq-diff, [n, field/value pairs | values only if SAMEFIELDS], lp-count`.
/// Live entries are appended to `out`; returns their payload bytes.
fn decode_stream_node(
    at: u64,
    master: StreamId,
    data: &Data<'_>,
    elems: &[Element<'_>],
    out: &mut Vec<StreamEntry>,
) -> Result<usize, RdbError> {
    let bad = |detail: &str| RdbError::corrupt(at, "stream listpack", detail.to_string());
    let mut pos = 0usize;
    let take = |pos: &mut usize, what: &str| -> Result<&Element<'_>, RdbError> {
        let e = elems.get(*pos).ok_or_else(|| {
            RdbError::corrupt(at, "stream listpack", format!("ends before {what}"))
        })?;
        *pos += 1;
        Ok(e)
    };
    let take_int = |pos: &mut usize, what: &str| -> Result<i64, RdbError> {
        let e = take(pos, what)?;
        element_int(e).ok_or_else(|| {
            RdbError::corrupt(at, "stream listpack", format!("{what} is not an integer"))
        })
    };
    if elems.is_empty() {
        return Err(bad("empty node"));
    }
    let count = take_int(&mut pos, "the entry count")?;
    let deleted = take_int(&mut pos, "the deleted count")?;
    let nfields = take_int(&mut pos, "the master field count")?;
    if count < 0 || deleted < 0 || nfields < 0 {
        return Err(bad("negative count"));
    }
    let nfields_us = usize::try_from(nfields).map_err(|_| bad("field count too large"))?;
    if nfields_us > elems.len() {
        return Err(bad("master field count exceeds the node"));
    }
    let mut master_fields = Vec::with_capacity(nfields_us);
    for _ in 0..nfields_us {
        master_fields.push(elem(data, take(&mut pos, "a master field")?));
    }
    if take_int(&mut pos, "the master terminator")? != 0 {
        return Err(bad("master entry not terminated by 0"));
    }
    let total = count
        .checked_add(deleted)
        .ok_or_else(|| bad("entry count overflows"))?;
    let mut bytes = 0usize;
    for _ in 0..total {
        let flags = take_int(&mut pos, "entry flags")?;
        let ms_diff = take_int(&mut pos, "entry ms")?;
        let seq_diff = take_int(&mut pos, "entry seq")?;
        // Ids are stored as differences from the master id, in 64-bit two's complement.
        let id = StreamId {
            ms: master.ms.wrapping_add(ms_diff as u64),
            seq: master.seq.wrapping_add(seq_diff as u64),
        };
        let same = flags & STREAM_FLAG_SAMEFIELDS != 0;
        let mut fields = Vec::new();
        let expected_lp_count = if same {
            for f in &master_fields {
                let v = elem(data, take(&mut pos, "an entry value")?);
                bytes += f.len() + v.len();
                fields.push((f.clone(), v));
            }
            // flags, ms, seq, the values
            nfields + 3
        } else {
            let n = take_int(&mut pos, "the entry field count")?;
            let n_us = usize::try_from(n).map_err(|_| bad("negative field count"))?;
            if n_us > elems.len() {
                return Err(bad("entry field count exceeds the node"));
            }
            for _ in 0..n_us {
                let f = elem(data, take(&mut pos, "an entry field")?);
                let v = elem(data, take(&mut pos, "an entry value")?);
                bytes += f.len() + v.len();
                fields.push((f, v));
            }
            // flags, ms, seq, count, the pairs
            n * 2 + 4
        };
        let lp_count = take_int(&mut pos, "the entry lp-count")?;
        if lp_count != expected_lp_count {
            return Err(bad(&format!(
                "entry lp-count {lp_count}, expected {expected_lp_count}"
            )));
        }
        if flags & STREAM_FLAG_DELETED == 0 {
            out.push(StreamEntry { id, fields });
        }
    }
    if pos != elems.len() {
        return Err(bad(&format!(
            "{} entries left after the last stream entry",
            elems.len() - pos
        )));
    }
    Ok(bytes)
}

/// Redis refuses NaN scores when loading (a NaN breaks the skiplist order), and so do we:
/// a NaN could not be restored on the destination either.
fn check_score(at: u64, score: f64) -> Result<(), RdbError> {
    if score.is_nan() {
        return Err(RdbError::corrupt(at, "sorted set", "NaN score"));
    }
    Ok(())
}

fn enc_err(at: u64, what: &'static str) -> impl Fn(EncodingError) -> RdbError {
    move |source| RdbError::Encoding {
        offset: at,
        what,
        source,
    }
}

/// Approximate payload size of a value, for cutting chunks by bytes.
pub(crate) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::List(v) | Value::Set(v) => v.iter().map(Bytes::len).sum(),
        Value::ZSet(v) => v.iter().map(|(m, _)| m.len() + 8).sum(),
        Value::Hash(v) => v.iter().map(|f| f.field.len() + f.value.len()).sum(),
        Value::Stream(s) => s
            .entries
            .iter()
            .flat_map(|e| e.fields.iter())
            .map(|(f, v)| f.len() + v.len())
            .sum(),
        Value::Module { .. } => 0,
    }
}

/// The accumulator is created with the variant that matches the kind, so a mismatch is a
/// bug in this file, not bad input; it is still reported as an error, never a panic.
#[cold]
fn internal(at: u64) -> RdbError {
    RdbError::corrupt(
        at,
        "value",
        "internal error: accumulator does not match the type",
    )
}

/// Decodes a complete value (`data` = the serialisation after the type byte, whose first
/// byte is at offset `base`), handing out its strings as slices of `data`. Returns the
/// value and whether it is an empty collection.
pub(crate) fn decode_whole(
    rdb_type: u8,
    valkey: bool,
    data: &Bytes,
    base: u64,
    max: u64,
) -> Result<(Value, bool), RdbError> {
    let mut m = ValueMachine::new(
        rdb_type,
        valkey,
        base.saturating_sub(1),
        max,
        u64::MAX,
        true,
    )?;
    let mut r = Reader::shared(data, base);
    loop {
        let unit_start = r.pos();
        match m.step(&mut r) {
            Ok(true) => break,
            Ok(false) => {}
            Err(Stop::More) => {
                r.rewind(unit_start);
                return Err(RdbError::Truncated {
                    offset: r.offset(),
                    context: m.context(),
                });
            }
            Err(Stop::Fail(e)) => return Err(e),
        }
    }
    if r.remaining() > 0 {
        return Err(RdbError::TrailingBytes {
            offset: r.offset(),
            trailing: r.remaining(),
        });
    }
    let empty = m.is_empty_key();
    Ok((m.finish(), empty))
}

/// A decoding machine positioned after `region`, the bytes a walking machine (decode =
/// false) has already consumed: used when a key turns out big and its first elements must
/// become its first chunk. The walk ended on a unit boundary, so replaying it unit by unit
/// ends exactly at the end of `region`.
pub(crate) fn resume_decoding(
    rdb_type: u8,
    valkey: bool,
    region: &[u8],
    base: u64,
    max: u64,
    stream_above: u64,
) -> Result<ValueMachine, RdbError> {
    let mut m = ValueMachine::new(
        rdb_type,
        valkey,
        base.saturating_sub(1),
        max,
        stream_above,
        true,
    )?;
    let mut r = Reader::new(region, base);
    while r.remaining() > 0 {
        let at = r.offset();
        match m.step(&mut r) {
            Ok(true) if r.remaining() > 0 => return Err(internal(at)),
            Ok(_) => {}
            Err(Stop::More) => return Err(internal(at)),
            Err(Stop::Fail(e)) => return Err(e),
        }
    }
    Ok(m)
}
