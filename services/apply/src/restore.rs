//! Full-copy records to destination commands: a whole key becomes one `RESTORE` of its
//! DUMP body; a big key arrives as typed chunks and becomes `RPUSH` / `SADD` / `ZADD` /
//! `HSET` / `XADD` / `APPEND`, with its TTL set on the last chunk.
//!
//! Every command built here touches only the record's own key, so on a cluster
//! destination they all route to one slot.

use std::collections::BTreeMap;

use redis_sync_proto::v1::{KeyRecord, StreamChunk, StreamId, key_record, value_chunk};

/// A command as its argument list, name first.
pub type Args = Vec<Vec<u8>>;

/// A destination server version, as `INFO server` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses "7.0.15"; missing parts are 0. None when the major part is not a number.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// True for `major.minor` or later.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a record cannot be turned into commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The record carries neither a DUMP body nor a chunk.
    #[error("key record has no value")]
    NoValue,
    /// The destination lacks a feature this value needs.
    #[error("{what} needs Redis {needs} or later on the destination, which runs {found}")]
    DestinationTooOld {
        /// What is needed.
        what: &'static str,
        /// Minimum version.
        needs: &'static str,
        /// Destination version.
        found: ServerVersion,
    },
    /// The RDB version does not fit a DUMP trailer.
    #[error("RDB version {0} cannot be framed as a DUMP payload")]
    RdbVersion(u32),
    /// A value the writer cannot rebuild.
    #[error("{0}")]
    Invalid(String),
}

/// How records are written.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Destination version (decides ABSTTL, REPLACE, HSET with many fields, ...).
    pub version: ServerVersion,
    /// RDB version of the snapshot the DUMP bodies come from.
    pub rdb_version: u32,
    /// Replace an existing destination key (OVERWRITE, or a re-snapshot).
    pub replace: bool,
    /// Current time, Unix ms (only for destinations that take relative TTLs).
    pub now_ms: i64,
}

/// The commands that write `rec` (already mapped to its destination db by the caller);
/// empty when there is nothing to write (the key has already expired).
pub fn key_record(rec: &KeyRecord, opts: &RestoreOptions) -> Result<Vec<Args>, RestoreError> {
    match &rec.value {
        Some(key_record::Value::DumpBody(body)) => whole_key(rec, body, opts),
        Some(key_record::Value::Chunk(chunk)) => match &chunk.items {
            Some(items) => chunked_key(rec, items, opts),
            None => Err(RestoreError::NoValue),
        },
        None => Err(RestoreError::NoValue),
    }
}

fn whole_key(
    rec: &KeyRecord,
    body: &[u8],
    opts: &RestoreOptions,
) -> Result<Vec<Args>, RestoreError> {
    let key = rec.key.clone();
    let expired = rec.expire_at_ms > 0 && rec.expire_at_ms <= opts.now_ms;
    if expired {
        // Gone on the source by now too; under replace the destination must not keep an
        // older value of it.
        return Ok(if opts.replace {
            vec![vec![b"DEL".to_vec(), key]]
        } else {
            Vec::new()
        });
    }
    let version =
        u16::try_from(opts.rdb_version).map_err(|_| RestoreError::RdbVersion(opts.rdb_version))?;
    let payload = redis_sync_rdb::dump::frame(body, version);
    let mut out = Vec::new();
    let abs_ttl = opts.version.at_least(5, 0);
    let ttl = match (rec.expire_at_ms, abs_ttl) {
        (0, _) => 0,
        (at, true) => at,
        // Before 5.0 RESTORE takes only a relative TTL: convert with our clock, the best
        // estimate of the source's that is available here.
        (at, false) => at - opts.now_ms,
    };
    let mut restore = vec![
        b"RESTORE".to_vec(),
        key.clone(),
        ttl.to_string().into_bytes(),
        payload,
    ];
    if opts.replace {
        if opts.version.at_least(3, 0) {
            restore.push(b"REPLACE".to_vec());
        } else {
            out.push(vec![b"DEL".to_vec(), key]);
        }
    }
    if abs_ttl && rec.expire_at_ms > 0 {
        restore.push(b"ABSTTL".to_vec());
    }
    out.push(restore);
    Ok(out)
}

/// A score as text that parses back to the same double (`inf`/`-inf` for infinities;
/// Rust prints the shortest text that round-trips, exponent form when that is shorter).
pub fn format_score(score: f64) -> Result<String, RestoreError> {
    if score.is_nan() {
        return Err(RestoreError::Invalid("a sorted-set score is NaN".into()));
    }
    if score.is_infinite() {
        return Ok(if score > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        });
    }
    let plain = format!("{score}");
    let exp = format!("{score:e}");
    Ok(if plain.len() <= exp.len() { plain } else { exp })
}

fn stream_id(id: Option<&StreamId>) -> Vec<u8> {
    let id = id.copied().unwrap_or_default();
    format!("{}-{}", id.ms, id.seq).into_bytes()
}

fn chunked_key(
    rec: &KeyRecord,
    items: &value_chunk::Items,
    opts: &RestoreOptions,
) -> Result<Vec<Args>, RestoreError> {
    let key = rec.key.clone();
    let first = rec.chunk_index == 0;
    let mut out: Vec<Args> = Vec::new();
    // A big key is built by appending; the first chunk must start from nothing so a key
    // the destination already holds never ends up with its items twice.
    if first && opts.replace && !matches!(items, value_chunk::Items::StringPart(_)) {
        out.push(vec![b"DEL".to_vec(), key.clone()]);
    }
    let cmd = |name: &str, rest: Vec<Vec<u8>>| -> Args {
        let mut a = Vec::with_capacity(rest.len() + 2);
        a.push(name.as_bytes().to_vec());
        a.push(key.clone());
        a.extend(rest);
        a
    };
    match items {
        value_chunk::Items::StringPart(part) => {
            out.push(cmd(
                if first { "SET" } else { "APPEND" },
                vec![part.clone()],
            ));
        }
        value_chunk::Items::ListItems(list) => {
            if !list.items.is_empty() {
                out.push(cmd("RPUSH", list.items.clone()));
            }
        }
        value_chunk::Items::SetMembers(set) => {
            if !set.items.is_empty() {
                out.push(cmd("SADD", set.items.clone()));
            }
        }
        value_chunk::Items::ZsetMembers(z) => {
            if !z.members.is_empty() {
                let mut rest = Vec::with_capacity(z.members.len() * 2);
                for m in &z.members {
                    rest.push(format_score(m.score)?.into_bytes());
                    rest.push(m.member.clone());
                }
                out.push(cmd("ZADD", rest));
            }
        }
        value_chunk::Items::HashFields(h) => {
            if !h.fields.is_empty() {
                let mut rest = Vec::with_capacity(h.fields.len() * 2);
                let mut ttls: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
                for f in &h.fields {
                    rest.push(f.field.clone());
                    rest.push(f.value.clone());
                    if f.expire_at_ms > 0 {
                        ttls.entry(f.expire_at_ms)
                            .or_default()
                            .push(f.field.clone());
                    }
                }
                // HSET takes many fields since 4.0; HMSET does the same before.
                out.push(cmd(
                    if opts.version.at_least(4, 0) {
                        "HSET"
                    } else {
                        "HMSET"
                    },
                    rest,
                ));
                if !ttls.is_empty() && !opts.version.at_least(7, 4) {
                    return Err(RestoreError::DestinationTooOld {
                        what: "hash field TTLs (HPEXPIREAT)",
                        needs: "7.4",
                        found: opts.version,
                    });
                }
                for (at, fields) in ttls {
                    let mut rest = vec![
                        at.to_string().into_bytes(),
                        b"FIELDS".to_vec(),
                        fields.len().to_string().into_bytes(),
                    ];
                    rest.extend(fields);
                    out.push(cmd("HPEXPIREAT", rest));
                }
            }
        }
        value_chunk::Items::Stream(s) => stream_chunk(&key, s, rec.last_chunk, opts, &mut out)?,
    }
    if rec.last_chunk && rec.expire_at_ms > 0 {
        // An expiry already in the past deletes the key, as on the source.
        out.push(vec![
            b"PEXPIREAT".to_vec(),
            key,
            rec.expire_at_ms.to_string().into_bytes(),
        ]);
    }
    Ok(out)
}

fn stream_chunk(
    key: &[u8],
    s: &StreamChunk,
    last: bool,
    opts: &RestoreOptions,
    out: &mut Vec<Args>,
) -> Result<(), RestoreError> {
    if !opts.version.at_least(5, 0) {
        return Err(RestoreError::DestinationTooOld {
            what: "streams",
            needs: "5.0",
            found: opts.version,
        });
    }
    let k = || key.to_vec();
    for e in &s.entries {
        if e.fields.is_empty() || e.fields.len() % 2 != 0 {
            return Err(RestoreError::Invalid(format!(
                "stream entry {} has {} field/value items",
                String::from_utf8_lossy(&stream_id(e.id.as_ref())),
                e.fields.len()
            )));
        }
        let mut a = vec![b"XADD".to_vec(), k(), stream_id(e.id.as_ref())];
        a.extend(e.fields.iter().cloned());
        out.push(a);
    }
    if !last {
        return Ok(());
    }
    let v7 = opts.version.at_least(7, 0);
    if let Some(meta) = &s.meta {
        if meta.length == 0 {
            // An empty stream has no entry to XADD; creating and dropping a group makes
            // the key exist so that XSETID (and the groups) can follow.
            out.push(vec![
                b"XGROUP".to_vec(),
                b"CREATE".to_vec(),
                k(),
                b"redis-sync-tmp".to_vec(),
                b"0".to_vec(),
                b"MKSTREAM".to_vec(),
            ]);
            out.push(vec![
                b"XGROUP".to_vec(),
                b"DESTROY".to_vec(),
                k(),
                b"redis-sync-tmp".to_vec(),
            ]);
        }
        let mut a = vec![b"XSETID".to_vec(), k(), stream_id(meta.last_id.as_ref())];
        if v7 && meta.entries_added > 0 {
            a.push(b"ENTRIESADDED".to_vec());
            a.push(meta.entries_added.to_string().into_bytes());
            a.push(b"MAXDELETEDID".to_vec());
            a.push(stream_id(meta.max_deleted_id.as_ref()));
        }
        out.push(a);
    }
    for g in &s.groups {
        let mut a = vec![
            b"XGROUP".to_vec(),
            b"CREATE".to_vec(),
            k(),
            g.name.clone(),
            stream_id(g.last_id.as_ref()),
            b"MKSTREAM".to_vec(),
        ];
        if v7 && g.entries_read >= 0 {
            a.push(b"ENTRIESREAD".to_vec());
            a.push(g.entries_read.to_string().into_bytes());
        }
        out.push(a);
        if opts.version.at_least(6, 2) {
            for c in &g.consumers {
                out.push(vec![
                    b"XGROUP".to_vec(),
                    b"CREATECONSUMER".to_vec(),
                    k(),
                    g.name.clone(),
                    c.name.clone(),
                ]);
            }
        }
        // XCLAIM ... FORCE puts an entry into the group's pending list with its owner,
        // delivery time and count (JUSTID keeps the count as given). Entries deleted from
        // the stream while still pending cannot be recreated this way: XCLAIM skips them.
        for p in &g.pending {
            out.push(vec![
                b"XCLAIM".to_vec(),
                k(),
                g.name.clone(),
                p.consumer.clone(),
                b"0".to_vec(),
                stream_id(p.id.as_ref()),
                b"TIME".to_vec(),
                p.delivery_time_ms.to_string().into_bytes(),
                b"RETRYCOUNT".to_vec(),
                p.delivery_count.to_string().into_bytes(),
                b"FORCE".to_vec(),
                b"JUSTID".to_vec(),
            ]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip() {
        for s in [
            7.123456789,
            1e-300,
            -0.0,
            0.1,
            1e300,
            -3.5,
            5e-324,
            f64::MAX,
            12345678901234567.0,
        ] {
            let text = format_score(s).unwrap();
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), s.to_bits(), "{s} -> {text}");
            assert!(text.len() < 30, "{text}");
        }
        assert_eq!(format_score(f64::INFINITY).unwrap(), "inf");
        assert_eq!(format_score(f64::NEG_INFINITY).unwrap(), "-inf");
        assert!(format_score(f64::NAN).is_err());
    }

    #[test]
    fn versions() {
        let v = ServerVersion::parse("7.0.15").unwrap();
        assert!(v.at_least(7, 0) && v.at_least(5, 0) && !v.at_least(7, 4));
        assert_eq!(
            ServerVersion::parse("2.8.17").unwrap().to_string(),
            "2.8.17"
        );
        assert_eq!(ServerVersion::parse("255.255.255-rc1").unwrap().major, 255);
        assert!(ServerVersion::parse("x").is_none());
    }
}
