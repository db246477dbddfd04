//! Helpers shared by the writer and end-to-end sync tests: a key-by-key comparison of two
//! Redis deployments, event builders, and polling with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis_sync_proto::v1::{
    ChangeEvent, Command, KeyRecord, Position, SnapshotBegin, SnapshotEnd, SubscribeResponse,
    Transaction, ValueType, change_event, key_record,
};
use redis_sync_testkit::{Client, RedisCluster, RedisServer, Reply};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One side of a comparison: a standalone server or a cluster.
pub enum Side<'a> {
    /// Standalone.
    Server(&'a RedisServer),
    /// Cluster (db 0 only).
    Cluster(&'a RedisCluster),
}

fn bulk(r: &Reply) -> Vec<u8> {
    r.as_bytes().map(<[u8]>::to_vec).unwrap_or_default()
}

/// A connection per node, with a db selected.
struct Reader {
    clients: Vec<Client>,
    cluster: Option<Vec<(u16, u16, usize)>>,
}

impl Reader {
    fn open(side: &Side<'_>, db: u32) -> TestResult<Self> {
        match side {
            Side::Server(s) => {
                let mut c = s.client()?;
                let r = c.cmd_str(&["SELECT", &db.to_string()])?;
                if !r.is_ok() {
                    return Err(format!("SELECT {db}: {r:?}").into());
                }
                Ok(Self {
                    clients: vec![c],
                    cluster: None,
                })
            }
            Side::Cluster(cl) => {
                if db != 0 {
                    return Err("a cluster has only db 0".into());
                }
                let masters = cl.masters();
                let mut clients = Vec::new();
                let mut ranges = Vec::new();
                for (i, m) in masters.iter().enumerate() {
                    clients.push(m.server().client()?);
                    let slots = m.server().cmd_ok(&["CLUSTER", "SLOTS"])?;
                    for r in slots.as_array().unwrap_or_default() {
                        let items = r.as_array().unwrap_or_default();
                        let (Some(a), Some(b)) = (
                            items.first().and_then(Reply::as_int),
                            items.get(1).and_then(Reply::as_int),
                        ) else {
                            continue;
                        };
                        let port = items
                            .get(2)
                            .and_then(Reply::as_array)
                            .and_then(|n| n.get(1))
                            .and_then(Reply::as_int);
                        if port == Some(i64::from(m.server().port())) {
                            ranges.push((a as u16, b as u16, i));
                        }
                    }
                }
                Ok(Self {
                    clients,
                    cluster: Some(ranges),
                })
            }
        }
    }

    fn node(&mut self, key: &[u8]) -> &mut Client {
        let idx = self.index(key);
        &mut self.clients[idx]
    }

    fn index(&self, key: &[u8]) -> usize {
        match &self.cluster {
            None => 0,
            Some(ranges) => {
                let slot = redis_sync_testkit::key_slot(key);
                ranges
                    .iter()
                    .find(|(a, b, _)| slot >= *a && slot <= *b)
                    .map_or(0, |r| r.2)
            }
        }
    }

    /// Pipelines `cmds` (each with the key that routes it) and returns the replies in order.
    fn batch(&mut self, cmds: &[(Vec<u8>, Vec<Vec<u8>>)]) -> TestResult<Vec<Reply>> {
        let mut order = Vec::with_capacity(cmds.len());
        for (key, args) in cmds {
            let i = self.index(key);
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            self.clients[i].send(&refs)?;
            order.push(i);
        }
        // Each node answers in order, so reading node by node in sending order matches.
        let mut out = Vec::with_capacity(cmds.len());
        for i in order {
            out.push(self.clients[i].read_reply()?);
        }
        Ok(out)
    }

    fn cmd(&mut self, key: &[u8], args: &[&[u8]]) -> TestResult<Reply> {
        Ok(self.node(key).command(args)?)
    }

    fn keys(&mut self) -> TestResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for c in &mut self.clients {
            let mut cursor = b"0".to_vec();
            loop {
                let r = c.command(&[b"SCAN", &cursor, b"COUNT", b"1000"])?;
                let items = r.as_array().ok_or_else(|| format!("SCAN: {r:?}"))?;
                cursor = bulk(&items[0]);
                for k in items[1].as_array().unwrap_or_default() {
                    out.push(bulk(k));
                }
                if cursor == b"0" {
                    break;
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn sorted_pairs(r: &Reply) -> Vec<(Vec<u8>, String)> {
    let items = r.as_array().unwrap_or_default();
    let mut v: Vec<(Vec<u8>, String)> = items
        .chunks(2)
        .map(|p| {
            (
                bulk(&p[0]),
                p.get(1).map(|x| x.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

fn sorted_items(r: &Reply) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = r.as_array().unwrap_or_default().iter().map(bulk).collect();
    v.sort();
    v
}

/// A canonical text of the value of `key`, with its type: equal texts mean equal values.
fn value_of(r: &mut Reader, key: &[u8]) -> TestResult<(String, String)> {
    let t = r.cmd(key, &[b"TYPE", key])?;
    let t = t.as_str().unwrap_or_default().to_owned();
    let v = match t.as_str() {
        "string" => format!("{:?}", bulk(&r.cmd(key, &[b"GET", key])?)),
        "list" => format!("{:?}", r.cmd(key, &[b"LRANGE", key, b"0", b"-1"])?),
        "set" => format!("{:?}", sorted_items(&r.cmd(key, &[b"SMEMBERS", key])?)),
        "zset" => format!(
            "{:?}",
            r.cmd(key, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])?
        ),
        "hash" => format!("{:?}", sorted_pairs(&r.cmd(key, &[b"HGETALL", key])?)),
        "stream" => {
            let entries = r.cmd(key, &[b"XRANGE", key, b"-", b"+"])?;
            let info = r.cmd(key, &[b"XINFO", b"STREAM", key])?;
            let info = sorted_pairs(&info);
            let meta: Vec<_> = info
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        &k[..],
                        b"last-generated-id" | b"entries-added" | b"max-deleted-entry-id"
                    )
                })
                .cloned()
                .collect();
            let groups = r.cmd(key, &[b"XINFO", b"GROUPS", key])?;
            let mut gs = Vec::new();
            for g in groups.as_array().unwrap_or_default() {
                let items = g.as_array().unwrap_or_default();
                let mut fields = BTreeMap::new();
                for p in items.chunks(2) {
                    let name = String::from_utf8_lossy(&bulk(&p[0])).into_owned();
                    if matches!(
                        name.as_str(),
                        "name" | "pending" | "last-delivered-id" | "consumers" | "entries-read"
                    ) {
                        fields.insert(name, format!("{}", p[1]));
                    }
                }
                let gname = fields.get("name").cloned().unwrap_or_default();
                let pel = r.cmd(
                    key,
                    &[
                        b"XPENDING",
                        key,
                        gname.trim_matches('"').as_bytes(),
                        b"-",
                        b"+",
                        b"1000",
                    ],
                )?;
                let pel: Vec<String> = pel
                    .as_array()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        let it = e.as_array().unwrap_or_default();
                        // id, consumer, delivery count (idle time differs by nature).
                        format!(
                            "{} {} {}",
                            it.first().map(|x| x.to_string()).unwrap_or_default(),
                            it.get(1).map(|x| x.to_string()).unwrap_or_default(),
                            it.get(3).map(|x| x.to_string()).unwrap_or_default()
                        )
                    })
                    .collect();
                gs.push(format!("{fields:?} pel={pel:?}"));
            }
            gs.sort();
            format!("{entries:?} meta={meta:?} groups={gs:?}")
        }
        other => format!("<{other}>"),
    };
    Ok((t, v))
}

/// (type, canonical value text) of one key.
type TypedValue = (String, String);

/// Type-and-value texts and PTTLs of `keys`, pipelined (streams one by one).
fn values(r: &mut Reader, keys: &[Vec<u8>]) -> TestResult<(Vec<TypedValue>, Vec<i64>)> {
    let types = r.batch(
        &keys
            .iter()
            .map(|k| (k.clone(), vec![b"TYPE".to_vec(), k.clone()]))
            .collect::<Vec<_>>(),
    )?;
    let types: Vec<String> = types
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_owned())
        .collect();
    let mut cmds = Vec::with_capacity(keys.len() * 2);
    for (k, t) in keys.iter().zip(&types) {
        let v: Vec<&[u8]> = match t.as_str() {
            "string" => vec![b"GET", k],
            "list" => vec![b"LRANGE", k, b"0", b"-1"],
            "set" => vec![b"SMEMBERS", k],
            "zset" => vec![b"ZRANGE", k, b"0", b"-1", b"WITHSCORES"],
            "hash" => vec![b"HGETALL", k],
            _ => vec![b"EXISTS", k],
        };
        cmds.push((k.clone(), v.into_iter().map(<[u8]>::to_vec).collect()));
        cmds.push((k.clone(), vec![b"PTTL".to_vec(), k.clone()]));
    }
    let replies = r.batch(&cmds)?;
    let mut vals = Vec::with_capacity(keys.len());
    let mut ttls = Vec::with_capacity(keys.len());
    for (i, (k, t)) in keys.iter().zip(&types).enumerate() {
        let v = &replies[2 * i];
        let text = match t.as_str() {
            "string" => format!("{:?}", bulk(v)),
            "list" | "zset" => format!("{v:?}"),
            "set" => format!("{:?}", sorted_items(v)),
            "hash" => format!("{:?}", sorted_pairs(v)),
            _ => value_of(r, k)?.1,
        };
        vals.push((t.clone(), text));
        ttls.push(replies[2 * i + 1].as_int().unwrap_or(-3));
    }
    Ok((vals, ttls))
}

/// Keys that the sync itself writes and the source does not have.
pub fn is_internal(key: &[u8]) -> bool {
    key.starts_with(b"redis-sync:checkpoint:")
}

/// Compares `src` db `src_db` with `dst` db `dst_db` key by key: same keys, types and
/// values, TTLs within 2 s. Returns the differences (empty when equal).
pub fn differences(
    src: &Side<'_>,
    src_db: u32,
    dst: &Side<'_>,
    dst_db: u32,
    skip: &dyn Fn(&[u8]) -> bool,
) -> TestResult<Vec<String>> {
    let mut a = Reader::open(src, src_db)?;
    let mut b = Reader::open(dst, dst_db)?;
    let ka: Vec<Vec<u8>> = a
        .keys()?
        .into_iter()
        .filter(|k| !is_internal(k) && !skip(k))
        .collect();
    let kb: Vec<Vec<u8>> = b
        .keys()?
        .into_iter()
        .filter(|k| !is_internal(k) && !skip(k))
        .collect();
    let mut diffs = Vec::new();
    for k in &ka {
        if kb.binary_search(k).is_err() {
            diffs.push(format!(
                "missing on destination: {:?}",
                String::from_utf8_lossy(k)
            ));
        }
    }
    for k in &kb {
        if ka.binary_search(k).is_err() {
            diffs.push(format!(
                "extra on destination: {:?}",
                String::from_utf8_lossy(k)
            ));
        }
    }
    let common: Vec<Vec<u8>> = ka
        .iter()
        .filter(|k| kb.binary_search(k).is_ok())
        .cloned()
        .collect();
    for chunk in common.chunks(256) {
        let (va, ta) = values(&mut a, chunk)?;
        let (vb, tb) = values(&mut b, chunk)?;
        for (i, k) in chunk.iter().enumerate() {
            if va[i] != vb[i] {
                diffs.push(format!(
                    "{:?}: source {:?} destination {:?}",
                    String::from_utf8_lossy(k),
                    va[i],
                    vb[i]
                ));
                continue;
            }
            let (ta, tb) = (ta[i], tb[i]);
            let ok =
                (ta < 0 && tb < 0 && ta == tb) || (ta >= 0 && tb >= 0 && (ta - tb).abs() <= 2000);
            if !ok {
                diffs.push(format!(
                    "{:?}: ttl source {ta} destination {tb}",
                    String::from_utf8_lossy(k)
                ));
            }
        }
    }
    Ok(diffs)
}

/// Polls `probe` until it returns Ok or `timeout` passes; the last error is reported.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> TestResult<T> {
    let start = Instant::now();
    let mut wait = Duration::from_millis(10);
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(last) => {
                if start.elapsed() >= timeout {
                    return Err(format!(
                        "timed out after {:?} waiting for {what}: {last}",
                        start.elapsed()
                    )
                    .into());
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Builds the events of one synthetic source shard with consistent positions.
pub struct Stream {
    pub replid: String,
    pub offset: u64,
    pub snapshot_offset: u64,
    pub records: u64,
    pub in_snapshot: bool,
}

impl Stream {
    pub fn new(replid: &str) -> Self {
        Self {
            replid: replid.to_owned(),
            offset: 1000,
            snapshot_offset: 1000,
            records: 0,
            in_snapshot: false,
        }
    }

    fn pos(&self) -> Position {
        if self.in_snapshot {
            Position {
                replid: self.replid.clone(),
                offset: self.snapshot_offset,
                db: 0,
                in_snapshot: true,
                snapshot_records: self.records,
            }
        } else {
            Position {
                replid: self.replid.clone(),
                offset: self.offset,
                db: 0,
                in_snapshot: false,
                snapshot_records: 0,
            }
        }
    }

    pub fn snapshot_begin(&mut self, rdb_version: u32, estimated_keys: u64) -> ChangeEvent {
        self.in_snapshot = true;
        self.snapshot_offset = self.offset;
        self.records = 0;
        ChangeEvent {
            position: Some(self.pos()),
            kind: Some(change_event::Kind::SnapshotBegin(SnapshotBegin {
                replid: self.replid.clone(),
                offset: self.snapshot_offset,
                rdb_version,
                source_version: String::new(),
                estimated_keys,
                estimated_bytes: 0,
                valkey: false,
                reason: "test".into(),
                ..SnapshotBegin::default()
            })),
        }
    }

    pub fn key(&mut self, rec: KeyRecord) -> ChangeEvent {
        self.records += 1;
        ChangeEvent {
            position: Some(self.pos()),
            kind: Some(change_event::Kind::Key(rec)),
        }
    }

    pub fn snapshot_end(&mut self, keys: u64) -> ChangeEvent {
        self.in_snapshot = false;
        ChangeEvent {
            position: Some(self.pos()),
            kind: Some(change_event::Kind::SnapshotEnd(SnapshotEnd {
                keys,
                expired_keys_skipped: 0,
                bytes: 0,
                scripts: Vec::new(),
            })),
        }
    }

    pub fn command(&mut self, db: u32, args: &[&[u8]], keys: &[u32]) -> ChangeEvent {
        self.offset += 50;
        ChangeEvent {
            position: Some(self.pos()),
            kind: Some(change_event::Kind::Command(command(db, args, keys))),
        }
    }

    pub fn transaction(&mut self, commands: Vec<Command>) -> ChangeEvent {
        self.offset += 100;
        ChangeEvent {
            position: Some(self.pos()),
            kind: Some(change_event::Kind::Transaction(Transaction { commands })),
        }
    }

    /// A batch of `events` ending at the current position (plus `extra` bytes of PINGs).
    pub fn batch(
        &mut self,
        shard: &str,
        events: Vec<ChangeEvent>,
        extra: u64,
    ) -> SubscribeResponse {
        if !self.in_snapshot {
            self.offset += extra;
        }
        SubscribeResponse {
            shard_id: shard.to_owned(),
            events,
            end_position: Some(self.pos()),
            received_offset: self.offset,
        }
    }
}

pub fn command(db: u32, args: &[&[u8]], keys: &[u32]) -> Command {
    Command {
        db,
        name: args[0].to_vec(),
        args: args[1..].iter().map(|a| a.to_vec()).collect(),
        key_indexes: keys.to_vec(),
        script_body: Vec::new(),
    }
}

/// The KeyRecord of `key` in `db` on `server`, from DUMP (trailer stripped) and PEXPIRETIME
/// (or PTTL on servers without it).
pub fn dump_record(server: &RedisServer, db: u32, key: &[u8]) -> TestResult<KeyRecord> {
    let mut c = server.client()?;
    c.cmd_str(&["SELECT", &db.to_string()])?;
    let payload = bulk(&c.command(&[b"DUMP", key])?);
    if payload.len() < 10 {
        return Err(format!("DUMP {:?}: no payload", String::from_utf8_lossy(key)).into());
    }
    let body = payload[..payload.len() - 10].to_vec();
    let pttl = c.command(&[b"PTTL", key])?.as_int().unwrap_or(-1);
    let expire_at_ms = if pttl > 0 { now_ms() + pttl } else { 0 };
    let t = c.command(&[b"TYPE", key])?;
    let vt = match t.as_str().unwrap_or_default() {
        "string" => ValueType::String,
        "list" => ValueType::List,
        "set" => ValueType::Set,
        "zset" => ValueType::Zset,
        "hash" => ValueType::Hash,
        "stream" => ValueType::Stream,
        _ => ValueType::Module,
    };
    Ok(KeyRecord {
        db,
        key: key.to_vec(),
        expire_at_ms,
        r#type: vt as i32,
        value: Some(key_record::Value::DumpBody(body)),
        chunk_index: 0,
        last_chunk: true,
        module_type: String::new(),
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `args` on `server` in `db` and fails on an error reply.
pub fn run(server: &RedisServer, db: u32, args: &[&[u8]]) -> TestResult<Reply> {
    let mut c = server.client()?;
    c.cmd_str(&["SELECT", &db.to_string()])?;
    let r = c.command(args)?;
    if let Reply::Error(e) = &r {
        return Err(format!(
            "{:?}: {e}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
        )
        .into());
    }
    Ok(r)
}
