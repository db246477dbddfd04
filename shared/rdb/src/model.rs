//! What the parser yields: items, key records, typed values.

use bytes::Bytes;

/// Parser settings. All limits exist because the input is untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParserOptions {
    /// Largest string (or LZF-decompressed string, or module value) accepted. A length
    /// prefix above it is an error before any allocation. Default 512 MiB, Redis's own
    /// `proto-max-bulk-len` default.
    pub max_string_len: u64,
    /// A key whose serialised value is bigger than this is yielded as [`Item::Chunk`]s
    /// instead of one [`Item::Key`]; string values are then cut in parts of at most this
    /// many bytes. Default 1 MiB.
    pub chunk_threshold_bytes: u64,
    /// Most elements in one chunk (list items, set members, zset members, hash fields,
    /// stream entries). Default 10 000.
    pub chunk_elements: usize,
    /// Verify the CRC-64 after the EOF opcode (RDB 5+, when the stored value is not 0).
    /// Default true.
    pub verify_checksum: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        ParserOptions {
            max_string_len: 512 * 1024 * 1024,
            chunk_threshold_bytes: 1024 * 1024,
            chunk_elements: 10_000,
            verify_checksum: true,
        }
    }
}

/// One thing found in the RDB stream, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Always first: the format version and which magic it came with.
    Header {
        /// RDB version (1..=12 for `REDIS`, 80+ for `VALKEY`).
        version: u32,
        /// True for the `VALKEY` magic: type numbers above 21 mean Valkey's types then.
        valkey: bool,
    },
    /// An AUX field (opcode 250). All are kept; see [`AuxFields`] for the known ones.
    Aux {
        /// Field name, e.g. `redis-ver`, `repl-id`, `lua`.
        key: Bytes,
        /// Field value.
        value: Bytes,
    },
    /// The database the following keys belong to (opcode 254).
    SelectDb(u32),
    /// Size hints of the current database (opcode 251).
    ResizeDb {
        /// Keys in the database.
        db_size: u64,
        /// Keys with an expire.
        expires_size: u64,
    },
    /// Per-slot size hints in cluster mode (opcode 244).
    SlotInfo {
        /// Slot number.
        slot: u64,
        /// Keys in the slot.
        size: u64,
        /// Keys with an expire in the slot.
        expires_size: u64,
    },
    /// Module auxiliary data (opcode 247), skipped opaquely.
    ModuleAux {
        /// The raw 64-bit module type id (name and encoding version packed).
        module_id: u64,
        /// The 9-character module type name decoded from the id.
        module_name: String,
    },
    /// A function library (opcode 245): its source code, for `FUNCTION LOAD`.
    Function {
        /// The library source.
        code: Bytes,
    },
    /// A whole key, value at most [`ParserOptions::chunk_threshold_bytes`] serialised.
    Key(KeyRecord),
    /// A part of a key bigger than the threshold.
    Chunk(KeyChunk),
    /// End of the RDB (opcode 255).
    End {
        /// The stored CRC-64 (RDB 5+). Verified when present, non-zero and
        /// [`ParserOptions::verify_checksum`] is set; 0 means the writer disabled it.
        checksum: Option<u64>,
    },
}

/// A whole key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Database number (from the last SELECTDB, 0 before any).
    pub db: u32,
    /// The key name.
    pub key: Bytes,
    /// Absolute expire time in Unix milliseconds, if the key has one.
    pub expire_at_ms: Option<i64>,
    /// LRU idle time in seconds (opcode 248), when the source saved it.
    pub idle: Option<u64>,
    /// LFU log-frequency counter (opcode 249), when the source saved it.
    pub freq: Option<u8>,
    /// The RDB type byte of the value.
    pub rdb_type: u8,
    /// The value, decoded.
    pub value: Value,
    /// The type byte followed by the value exactly as serialised in the RDB: `DUMP key`
    /// minus its 10-byte trailer, which `RESTORE` accepts once framed with
    /// [`crate::dump::frame`].
    pub dump_body: Bytes,
}

/// A part of a big key. Parts come in order, `index` 0, 1, 2, ...; the one with `last`
/// set closes the key. Concatenating the parts' elements gives the whole value.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyChunk {
    /// Database number.
    pub db: u32,
    /// The key name (repeated on every chunk so each chunk stands alone).
    pub key: Bytes,
    /// Absolute expire time in Unix milliseconds, if the key has one.
    pub expire_at_ms: Option<i64>,
    /// The RDB type byte of the value.
    pub rdb_type: u8,
    /// Position of this chunk in the key, from 0.
    pub index: u32,
    /// True on the final chunk.
    pub last: bool,
    /// The elements of this chunk, in the same typed form as a whole value. For strings a
    /// byte range of the value; for streams the entries, with `meta` and `groups` only on
    /// the last chunk.
    pub part: Value,
}

/// A decoded value, independent of the encoding it was stored in.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string (integers as their decimal text, as Redis shows them).
    String(Bytes),
    /// List items, head to tail.
    List(Vec<Bytes>),
    /// Set members (integer-set members as decimal text).
    Set(Vec<Bytes>),
    /// Sorted-set members and scores; scores keep their exact f64 bits.
    ZSet(Vec<(Bytes, f64)>),
    /// Hash fields, with per-field expire times (Redis 7.4+ / Valkey 9+).
    Hash(Vec<HashField>),
    /// A stream with its consumer groups.
    Stream(Box<Stream>),
    /// A module value, kept opaque: only `dump_body` can carry it (via `RESTORE`).
    Module {
        /// The 9-character module type name, e.g. `ReJSON-RL`.
        module_type: String,
        /// The module's 10-bit encoding version.
        encoding_version: u32,
    },
}

impl Value {
    /// Number of elements (1 for strings and modules; stream entries for streams).
    pub fn len(&self) -> usize {
        match self {
            Value::String(_) | Value::Module { .. } => 1,
            Value::List(v) | Value::Set(v) => v.len(),
            Value::ZSet(v) => v.len(),
            Value::Hash(v) => v.len(),
            Value::Stream(s) => s.entries.len(),
        }
    }

    /// True when the value holds no elements (an empty string counts as one element).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the elements of `other` (a part of the same key) to `self`. Used to put
    /// chunks back together; returns false when the two are not the same kind of value.
    pub fn extend_with(&mut self, other: Value) -> bool {
        match (self, other) {
            (Value::String(a), Value::String(b)) => {
                let mut v = Vec::with_capacity(a.len() + b.len());
                v.extend_from_slice(a);
                v.extend_from_slice(&b);
                *a = Bytes::from(v);
            }
            (Value::List(a), Value::List(b)) | (Value::Set(a), Value::Set(b)) => a.extend(b),
            (Value::ZSet(a), Value::ZSet(b)) => a.extend(b),
            (Value::Hash(a), Value::Hash(b)) => a.extend(b),
            (Value::Stream(a), Value::Stream(b)) => {
                let b = *b;
                a.entries.extend(b.entries);
                if b.meta.is_some() {
                    a.meta = b.meta;
                }
                a.groups.extend(b.groups);
            }
            _ => return false,
        }
        true
    }
}

/// One hash field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashField {
    /// Field name.
    pub field: Bytes,
    /// Field value.
    pub value: Bytes,
    /// Absolute expire time of this field in Unix milliseconds (hash field expiration).
    pub expire_at_ms: Option<i64>,
}

/// A stream entry or PEL id: milliseconds and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stream: live entries (deleted ones are dropped), metadata and groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    /// Entries in id order.
    pub entries: Vec<StreamEntry>,
    /// Metadata; `None` only on the non-final chunks of a chunked stream.
    pub meta: Option<StreamMeta>,
    /// Consumer groups (on the last chunk of a chunked stream).
    pub groups: Vec<StreamGroup>,
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Entry id.
    pub id: StreamId,
    /// Field/value pairs in insertion order.
    pub fields: Vec<(Bytes, Bytes)>,
}

/// Stream metadata, what `XSETID ... ENTRIESADDED ... MAXDELETEDID ...` restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMeta {
    /// Number of live entries.
    pub length: u64,
    /// Last id ever added.
    pub last_id: StreamId,
    /// First live id. Stored since RDB type 19; for type 15 it is the first live entry's
    /// id (0-0 when empty), as Redis derives it on load.
    pub first_id: StreamId,
    /// Largest deleted id. Stored since type 19; 0-0 for type 15, as Redis loads it.
    pub max_deleted_id: StreamId,
    /// Entries ever added. Stored since type 19; `length` for type 15, as Redis loads it.
    pub entries_added: u64,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGroup {
    /// Group name.
    pub name: Bytes,
    /// Last delivered id.
    pub last_id: StreamId,
    /// Logical read counter (stored since type 19; `None` for type 15, where Redis
    /// estimates it on load).
    pub entries_read: Option<u64>,
    /// The group's pending entries list.
    pub pending: Vec<StreamPendingEntry>,
    /// The group's consumers.
    pub consumers: Vec<StreamConsumer>,
}

/// One entry of a group's PEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPendingEntry {
    /// The pending entry's id.
    pub id: StreamId,
    /// The consumer that owns it (`None` if no consumer lists it, which only a damaged
    /// RDB produces).
    pub consumer: Option<Bytes>,
    /// Last delivery time, Unix milliseconds.
    pub delivery_time_ms: i64,
    /// Number of deliveries.
    pub delivery_count: u64,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Consumer name.
    pub name: Bytes,
    /// Last time the consumer was seen, Unix milliseconds.
    pub seen_time_ms: i64,
    /// Last successful interaction (stored since type 21; equal to `seen_time_ms` before,
    /// as Redis loads it).
    pub active_time_ms: i64,
    /// Ids of the PEL entries this consumer owns.
    pub pending: Vec<StreamId>,
}

/// The AUX fields of an RDB, with readers for the ones the sync needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuxFields {
    fields: Vec<(Bytes, Bytes)>,
}

impl AuxFields {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one field (duplicates are kept: `lua` appears once per script).
    pub fn push(&mut self, key: Bytes, value: Bytes) {
        self.fields.push((key, value));
    }

    /// All fields in stream order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.fields.iter().map(|(k, v)| (k, v))
    }

    /// The first field with this name (ASCII case-insensitive, as Redis compares them).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// `repl-id`: the replication id the snapshot belongs to.
    pub fn repl_id(&self) -> Option<&str> {
        self.get("repl-id")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `repl-offset`: the replication offset the snapshot was taken at.
    pub fn repl_offset(&self) -> Option<i64> {
        self.get_int("repl-offset")
    }

    /// `repl-stream-db`: the db selected in the replication stream at snapshot time.
    pub fn repl_stream_db(&self) -> Option<i64> {
        self.get_int("repl-stream-db")
    }

    /// The server that wrote the RDB: `("valkey", v)` when `valkey-ver` is present (Valkey
    /// writes both), else `("redis", v)` from `redis-ver`.
    pub fn server_version(&self) -> Option<(&'static str, &str)> {
        if let Some(v) = self
            .get("valkey-ver")
            .and_then(|v| std::str::from_utf8(v).ok())
        {
            return Some(("valkey", v));
        }
        self.get("redis-ver")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| ("redis", v))
    }

    /// Bodies of the Lua scripts saved as `lua` fields (pre-5.0 masters replicate
    /// `EVALSHA`, so the destination needs these loaded).
    pub fn lua_scripts(&self) -> impl Iterator<Item = &Bytes> {
        self.fields
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(b"lua"))
            .map(|(_, v)| v)
    }

    fn get_int(&self, name: &str) -> Option<i64> {
        self.get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Splits a 64-bit module type id into its 9-character name and 10-bit encoding version
/// (the packing Redis uses in `moduleTypeEncodeId`: 9 symbols of 6 bits, then 10 bits).
pub fn module_type_name(module_id: u64) -> (String, u32) {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let version = (module_id & 1023) as u32;
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    // Every byte comes from the ASCII charset, so this cannot fail.
    (name.iter().map(|&b| b as char).collect(), version)
}
