//! RDB type bytes and opcodes, named as in Redis's `rdb.h` (and Valkey's, where they differ).

/// String.
pub const STRING: u8 = 0;
/// List as a linked list of strings (RDB < 7).
pub const LIST: u8 = 1;
/// Set as a hash table of strings.
pub const SET: u8 = 2;
/// Sorted set with scores as text.
pub const ZSET: u8 = 3;
/// Hash as a hash table of strings.
pub const HASH: u8 = 4;
/// Sorted set with binary double scores.
pub const ZSET_2: u8 = 5;
/// Module value of the Redis 4.0 release candidates (unparseable without the module).
pub const MODULE_PRE_GA: u8 = 6;
/// Module value with self-describing opcodes.
pub const MODULE_2: u8 = 7;
/// Hash as a zipmap (Redis 2.x).
pub const HASH_ZIPMAP: u8 = 9;
/// List as one ziplist.
pub const LIST_ZIPLIST: u8 = 10;
/// Set of integers.
pub const SET_INTSET: u8 = 11;
/// Sorted set as one ziplist.
pub const ZSET_ZIPLIST: u8 = 12;
/// Hash as one ziplist.
pub const HASH_ZIPLIST: u8 = 13;
/// List as a quicklist of ziplists.
pub const LIST_QUICKLIST: u8 = 14;
/// Stream (first format).
pub const STREAM_LISTPACKS: u8 = 15;
/// Hash as one listpack.
pub const HASH_LISTPACK: u8 = 16;
/// Sorted set as one listpack.
pub const ZSET_LISTPACK: u8 = 17;
/// List as a quicklist of listpacks or plain nodes.
pub const LIST_QUICKLIST_2: u8 = 18;
/// Stream with first id, max deleted id, entries added and group read counters.
pub const STREAM_LISTPACKS_2: u8 = 19;
/// Set as one listpack.
pub const SET_LISTPACK: u8 = 20;
/// Stream with consumer active times.
pub const STREAM_LISTPACKS_3: u8 = 21;
/// Redis 7.4 release candidates: hash with field TTLs, absolute. Under the `VALKEY`
/// magic the same number is [`VALKEY_HASH_2`].
pub const HASH_METADATA_PRE_GA: u8 = 22;
/// Redis 7.4 release candidates: listpack hash with field TTLs, no min-expire prefix.
pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
/// Hash with field TTLs stored relative to a min-expire prefix (Redis 7.4+).
pub const HASH_METADATA: u8 = 24;
/// Listpack hash with field TTLs and a min-expire prefix (Redis 7.4+).
pub const HASH_LISTPACK_EX: u8 = 25;
/// Valkey 9 (`VALKEY` magic): hash whose fields carry absolute expire times.
pub const VALKEY_HASH_2: u8 = 22;

/// Opcode: cluster slot size hint (Redis 8).
pub const OPCODE_SLOT_INFO: u8 = 244;
/// Opcode: function library.
pub const OPCODE_FUNCTION2: u8 = 245;
/// Opcode: function library in the 7.0 release-candidate format.
pub const OPCODE_FUNCTION_PRE_GA: u8 = 246;
/// Opcode: module auxiliary data.
pub const OPCODE_MODULE_AUX: u8 = 247;
/// Opcode: LRU idle seconds of the next key.
pub const OPCODE_IDLE: u8 = 248;
/// Opcode: LFU frequency of the next key.
pub const OPCODE_FREQ: u8 = 249;
/// Opcode: AUX field.
pub const OPCODE_AUX: u8 = 250;
/// Opcode: database size hints.
pub const OPCODE_RESIZEDB: u8 = 251;
/// Opcode: expire time of the next key, milliseconds.
pub const OPCODE_EXPIRETIME_MS: u8 = 252;
/// Opcode: expire time of the next key, seconds.
pub const OPCODE_EXPIRETIME: u8 = 253;
/// Opcode: select database.
pub const OPCODE_SELECTDB: u8 = 254;
/// Opcode: end of the RDB.
pub const OPCODE_EOF: u8 = 255;
