//! Checkpoints: the position of each source shard, stored in the destination in the same
//! MULTI/EXEC as the writes it covers.
//!
//! Standalone destination: one hash `redis-sync:checkpoint:<task_id>` in db 0, one field
//! per source shard, written in every MULTI. Cluster destination (where a MULTI may only
//! touch one slot): the same hash as the *global* checkpoint, plus one hash per slot
//! written to, `redis-sync:checkpoint:{<tag>}:<task_id>`, whose hash tag puts it in that
//! slot so the slot's MULTI can carry it (see `writer` for how the two combine).
//!
//! The value is a short text line so an operator can read it with `HGETALL`:
//! `1|<seq>|<offset>|<db>|<in_snapshot>|<snapshot_records>|<rdb_version>|<flags>|<replid>`.
//! `seq` counts commits of the shard (so the oldest of several per-master checkpoints is
//! known even across histories), `rdb_version` (of the last full copy, kept while
//! streaming) lets a restart in the middle of a full copy frame DUMP bodies without the
//! `SnapshotBegin` it already applied and tells the source's version after one, and `flags`
//! remembers that the full copy in progress replaces data of an earlier history.

use std::cmp::Ordering;

use redis_sync_proto::v1::Position;

/// Prefix of every checkpoint key.
pub const KEY_PREFIX: &str = "redis-sync:checkpoint:";

/// Why a stored checkpoint cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The stored text is not a checkpoint this version understands.
    #[error("checkpoint {field} of {key}: {value:?} is not a redis-sync checkpoint ({why})")]
    Malformed {
        /// Hash key.
        key: String,
        /// Field (shard id).
        field: String,
        /// The stored text (cut to 200 bytes).
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The checkpoint key of a standalone destination.
pub fn standalone_key(task_id: &str) -> String {
    format!("{KEY_PREFIX}{task_id}")
}

/// The checkpoint key of one slot of a cluster destination (`tag` hashes to the slot).
pub fn slot_key(tag: &str, task_id: &str) -> String {
    format!("{KEY_PREFIX}{{{tag}}}:{task_id}")
}

/// One shard's checkpoint on one destination node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Commit counter of the shard, increasing by one per commit.
    pub seq: u64,
    /// Position applied.
    pub position: Position,
    /// RDB version of the full copy the position is in (0 when unknown).
    pub rdb_version: u32,
    /// The full copy in progress replaces data of an earlier history (REPLACE its keys).
    pub resnapshot: bool,
}

const FLAG_RESNAPSHOT: u32 = 1;

impl Checkpoint {
    /// The stored text form.
    pub fn encode(&self) -> String {
        let p = &self.position;
        let flags = if self.resnapshot { FLAG_RESNAPSHOT } else { 0 };
        format!(
            "1|{}|{}|{}|{}|{}|{}|{}|{}",
            self.seq,
            p.offset,
            p.db,
            u8::from(p.in_snapshot),
            p.snapshot_records,
            self.rdb_version,
            flags,
            p.replid
        )
    }

    /// Parses the stored text form; `key` and `field` only name it in errors.
    pub fn decode(key: &str, field: &str, raw: &[u8]) -> Result<Self, CheckpointError> {
        let bad = |why: &'static str| CheckpointError::Malformed {
            key: key.to_owned(),
            field: field.to_owned(),
            value: String::from_utf8_lossy(raw.get(..200).unwrap_or(raw)).into_owned(),
            why,
        };
        let text = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        // The replid is last and never contains '|', so splitting into 9 parts is exact.
        let parts: Vec<&str> = text.splitn(9, '|').collect();
        let [
            version,
            seq,
            offset,
            db,
            in_snapshot,
            records,
            rdb_version,
            flags,
            replid,
        ] = parts[..]
        else {
            return Err(bad("wrong number of fields"));
        };
        if version != "1" {
            return Err(bad("unknown format version"));
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad("a number field does not parse"))
        };
        let small = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| bad("a number field does not parse"))
        };
        let in_snapshot = match in_snapshot {
            "0" => false,
            "1" => true,
            _ => return Err(bad("in_snapshot is not 0 or 1")),
        };
        Ok(Self {
            seq: num(seq)?,
            position: Position {
                replid: replid.to_owned(),
                offset: num(offset)?,
                db: small(db)?,
                in_snapshot,
                snapshot_records: num(records)?,
            },
            rdb_version: small(rdb_version)?,
            resnapshot: small(flags)? & FLAG_RESNAPSHOT != 0,
        })
    }
}

/// Order of two positions of the same history (same replid); None across histories,
/// which cannot be compared.
///
/// Inside a full copy taken at offset `o`, positions are `(o, in_snapshot, records)`;
/// the copy comes before the command stream that continues from `o`.
pub fn compare(a: &Position, b: &Position) -> Option<Ordering> {
    if a.replid != b.replid {
        return None;
    }
    let key = |p: &Position| {
        (
            p.offset,
            u8::from(!p.in_snapshot),
            if p.in_snapshot { p.snapshot_records } else { 0 },
        )
    };
    Some(key(a).cmp(&key(b)))
}

/// True when the event ending at `event` is already applied under checkpoint `applied`.
pub fn covers(applied: &Position, event: &Position) -> bool {
    matches!(
        compare(event, applied),
        Some(Ordering::Less | Ordering::Equal)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(replid: &str, offset: u64, in_snapshot: bool, records: u64) -> Position {
        Position {
            replid: replid.into(),
            offset,
            db: 0,
            in_snapshot,
            snapshot_records: records,
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let c = Checkpoint {
            seq: 7,
            position: pos("abc", 42, true, 3),
            rdb_version: 10,
            resnapshot: true,
        };
        let text = c.encode();
        assert_eq!(text, "1|7|42|0|1|3|10|1|abc");
        assert_eq!(Checkpoint::decode("k", "f", text.as_bytes()), Ok(c));
        for bad in [
            &b"2|1|1|1|1|1|1|1|x"[..],
            b"1|x|1|1|1|1|1|1|r",
            b"1|1|1",
            b"1|1|1|1|7|1|1|1|r",
            b"\xff",
        ] {
            assert!(Checkpoint::decode("k", "f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn order_within_a_history() {
        let begin = pos("r", 100, true, 0);
        let rec = pos("r", 100, true, 5);
        let end = pos("r", 100, false, 0);
        let cmd = pos("r", 150, false, 0);
        assert_eq!(compare(&begin, &rec), Some(Ordering::Less));
        assert_eq!(compare(&rec, &end), Some(Ordering::Less));
        assert_eq!(compare(&end, &cmd), Some(Ordering::Less));
        assert!(covers(&rec, &begin));
        assert!(covers(&rec, &rec));
        assert!(!covers(&rec, &cmd));
        assert!(!covers(&pos("other", 900, false, 0), &cmd));
    }
}
