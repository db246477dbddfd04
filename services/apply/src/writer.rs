//! Events to destination writes, applied atomically with the checkpoint.
//!
//! [`ShardWriter`] applies the batches of one source shard in order. Each batch (cut into
//! groups of bounded size at event boundaries) is written per destination node as
//!
//! ```text
//! MULTI
//!   [SELECT n] <the group's commands, in source order> ...
//!   [SELECT 0] HSET <checkpoint key> <shard id> <position after the group>
//! EXEC
//! ```
//!
//! so the writes and the position that covers them commit together or not at all. A
//! `Transaction` event stays inside one group, hence inside one MULTI. The connection is
//! back in db 0 after every EXEC (the checkpoint lives there), so no db state carries
//! over from one MULTI to the next.
//!
//! # Guarantee on a cluster destination
//!
//! Redis Cluster refuses a MULTI whose keys span slots (`CROSSSLOT` at EXEC, even when
//! one master owns them all), so a master cannot take one MULTI with the commands of
//! several slots plus a checkpoint. The unit is therefore the **slot**: each group of
//! events becomes, on every master, one pipeline (masters in parallel) holding one
//! `MULTI ... HSET redis-sync:checkpoint:{<tag>}:<task> <shard> <position> EXEC` per slot
//! written to, the tag hashing into that slot (`router::slot_tag`). Keyless commands
//! (FLUSHDB, FUNCTION, SCRIPT, PUBLISH) go into a MULTI of the master's lowest slot and
//! are cut into groups of their own, so they keep their order against everything else.
//! Once every slot MULTI of the group has committed, the **global** checkpoint
//! `redis-sync:checkpoint:<task>` moves to the group's end.
//!
//! On restart the runner subscribes from the global checkpoint (everything before it is
//! applied in every slot), and a command is skipped when its slot's own checkpoint
//! already covers it. The result is **exactly once per (source shard, destination
//! slot)**: every write reaches its slot once, in source order per slot, across crashes
//! at any instant. Since a slot's checkpoint key lives in that slot, it moves with the
//! slot's keys when the destination reshards, so the guarantee survives slot migration
//! between a crash and the restart. What a cluster cannot give: a source transaction (or
//! a split MSET/DEL) whose keys live in several slots is atomic per slot, not as a whole,
//! and a reader may see slot A ahead of slot B for a moment. `MOVED`/`ASK` abort that
//! slot's MULTI (nothing of it applies); the writer reports a transient error and the
//! runner reloads the slot map and retries, so a migration in progress is waited out.
//! The global checkpoint lives on one master: a failover of *another* master that loses
//! writes it had acknowledged (Redis replicates asynchronously) loses them for good, as
//! the global checkpoint already covers them. (A standalone destination keeps data and
//! checkpoint in one replication stream, so a failover there rolls both back together.)
//!
//! # Keys the destination already expired
//!
//! TTLs are written exactly as the source has them, and the destination, being a master,
//! expires keys by its own clock. A command replayed late can reach a key the destination
//! has already expired while the source still had it. It then either creates a fresh key
//! (`INCR` from 0, `RPUSH` into a new list) or is refused with one of the replies listed
//! in [`missing_key_reply`]. The source expires the key too and replicates a `DEL` that
//! follows in the stream, so the end state converges: those replies are logged at WARN,
//! counted in `redis_sync_apply_missing_key_replies_total` and do not fail the task.
//! (A source command that *extends* the TTL in that window, such as `EXPIRE` or
//! `PERSIST`, cannot be helped: the destination no longer has the value.)
//!
//! # Errors
//!
//! Errors refused while queueing (`EXECABORT`: unknown command, wrong arity, `MOVED`, ...)
//! apply nothing. Errors inside EXEC come after the other commands of the MULTI and the
//! checkpoint have been applied (Redis has no rollback): the task then fails with the
//! command, key, db and reply, and the applied position is already past that command.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Value, aio::MultiplexedConnection};
use redis_sync_proto::v1::{
    ChangeEvent, Command, ConflictMode, KeyRecord, Position, RedisEndpoint, SnapshotBegin,
    SubscribeResponse, change_event,
};
use redis_sync_telemetry::{Counter, Metrics};

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::dbmap::{DbMap, DbMapError};
use crate::endpoint;
use crate::restore::{self, Args, RestoreOptions, ServerVersion};
use crate::router::{self, Topology};

/// Most commands in one MULTI (a larger event still goes whole).
const GROUP_MAX_COMMANDS: usize = 2_000;
/// Most argument bytes in one MULTI (a larger event still goes whole).
const GROUP_MAX_BYTES: usize = 8 * 1024 * 1024;
/// How long one reply may take: a MULTI may hold a FLUSHDB or a big RESTORE.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Current Unix time in ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What went wrong while writing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Worth retrying after a pause: connection loss, LOADING, BUSY, TRYAGAIN,
    /// CLUSTERDOWN, MOVED, ASK, a failover in progress.
    #[error("destination {address}: {message}")]
    Transient {
        /// Node.
        address: String,
        /// What happened.
        message: String,
    },
    /// The destination refused a command in a way that needs the operator.
    #[error(
        "{command} on key {key} in destination db {db} (source db {source_db}) was refused by {address}: {reply}; {applied}"
    )]
    Rejected {
        /// Node.
        address: String,
        /// Command name.
        command: String,
        /// Key (lossy text, cut), or "-" for a command without one.
        key: String,
        /// Destination db.
        db: u32,
        /// Source db.
        source_db: u32,
        /// The error reply.
        reply: String,
        /// Whether the rest of the MULTI (and the checkpoint) was applied.
        applied: &'static str,
    },
    /// A source command this task cannot reproduce on its destination.
    #[error("{command} in source db {db}: {reason}")]
    Unsupported {
        /// Command name (and arguments that matter).
        command: String,
        /// Source db.
        db: u32,
        /// Why.
        reason: String,
    },
    /// The destination cannot be used as configured (authentication, address, TLS).
    #[error("destination {address}: {message}")]
    Fatal {
        /// Node.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint in the destination is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl WriteError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, WriteError::Transient { .. })
    }
}

const NOT_APPLIED: &str = "nothing of that MULTI was applied";
const APPLIED_PAST: &str =
    "the rest of its MULTI and the checkpoint were applied, so the task position is past it";

/// Error codes that mean "later": the server or the cluster is busy or moving.
fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING"
            | "BUSY"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "MOVED"
            | "ASK"
            | "MASTERDOWN"
            | "READONLY"
            | "NOREPLICAS"
    )
}

/// Classifies a client-level error: the connection or the server is away or busy
/// (transient), the credentials are wrong (fatal), or the server refused one of our own
/// control commands (fatal: retrying the same command gives the same answer).
fn from_redis(address: &str, e: &redis::RedisError) -> WriteError {
    let message = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        return WriteError::Fatal {
            address: address.to_owned(),
            message,
        };
    }
    match (e.kind(), e.code()) {
        (redis::ErrorKind::Server(_) | redis::ErrorKind::Extension, Some(code))
            if !transient_code(code) =>
        {
            WriteError::Fatal {
                address: address.to_owned(),
                message,
            }
        }
        _ => WriteError::Transient {
            address: address.to_owned(),
            message,
        },
    }
}

fn endpoint_error(e: endpoint::EndpointError) -> WriteError {
    match e {
        endpoint::EndpointError::Redis { address, source } => from_redis(&address, &source),
        other => WriteError::Fatal {
            address: String::new(),
            message: other.to_string(),
        },
    }
}

/// The reply of a command that only means "this key is missing here" (see the module
/// docs): `ERR no such key` (LSET, RENAME, RENAMENX, XSETID on a missing key),
/// `ERR index out of range` from LSET (the list was re-created shorter after it expired
/// here), and `ERR The XGROUP subcommand requires the key to exist` (XGROUP on a missing
/// stream). `NOGROUP` (XCLAIM, XACK-like effects of XREADGROUP on a stream expired here)
/// only counts when the key is indeed missing, which the writer checks afterwards.
/// Likewise `ERR Library not found` from FUNCTION DELETE: a cluster source's masters
/// each replicate the DELETE a client sends to all of them, and each copy goes to every
/// destination master, so all but the first find the library already gone.
pub fn missing_key_reply(command: &str, code: &str, detail: &str) -> MissingKey {
    match (code, detail) {
        ("ERR", d) if d.starts_with("no such key") => MissingKey::Yes,
        ("ERR", d)
            if d.starts_with("Library not found") && command.eq_ignore_ascii_case("function") =>
        {
            MissingKey::Yes
        }
        ("ERR", d)
            if d.starts_with("index out of range") && command.eq_ignore_ascii_case("lset") =>
        {
            MissingKey::Yes
        }
        ("ERR", d) if d.starts_with("The XGROUP subcommand requires the key to exist") => {
            MissingKey::Yes
        }
        ("NOGROUP", _) => MissingKey::IfAbsent,
        _ => MissingKey::No,
    }
}

/// Whether an error reply is the missing-key kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    /// Yes.
    Yes,
    /// Only when the key does not exist on the destination.
    IfAbsent,
    /// A real error.
    No,
}

/// Client name of a task's destination connections, so a new session can kill the
/// connections of an earlier one whose writes might still be in flight.
pub fn client_name(task_id: &str) -> String {
    let clean: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("redis-sync-apply:{clean}")
}

/// Opens one connection to a destination node.
pub async fn connect(
    dest: &RedisEndpoint,
    address: &str,
) -> Result<MultiplexedConnection, WriteError> {
    let info = endpoint::connection_info(dest, address).map_err(endpoint_error)?;
    let client = redis::Client::open(info).map_err(|e| from_redis(address, &e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| from_redis(address, &e))
}

async fn query(
    conn: &mut MultiplexedConnection,
    address: &str,
    args: &[&[u8]],
) -> Result<Value, WriteError> {
    let mut c = redis::Cmd::new();
    for a in args {
        c.arg(*a);
    }
    let v: Value = c
        .query_async(conn)
        .await
        .map_err(|e| from_redis(address, &e))?;
    match v {
        Value::ServerError(e) => {
            let message = format!("{} {}", e.code(), e.details().unwrap_or_default());
            if transient_code(e.code()) {
                Err(WriteError::Transient {
                    address: address.to_owned(),
                    message,
                })
            } else {
                Err(WriteError::Fatal {
                    address: address.to_owned(),
                    message,
                })
            }
        }
        v => Ok(v),
    }
}

/// One destination node this writer sends MULTIs to.
struct Node {
    address: String,
    conn: MultiplexedConnection,
    version: ServerVersion,
    /// SHA1s known to be in this node's script cache.
    scripts: HashSet<String>,
}

impl Node {
    fn new(address: String, conn: MultiplexedConnection) -> Self {
        Self {
            address,
            conn,
            version: ServerVersion {
                major: 2,
                minor: 8,
                patch: 0,
            },
            scripts: HashSet::new(),
        }
    }
}

/// The checkpoints a destination holds, for every shard.
#[derive(Debug, Clone, Default)]
pub struct StoredCheckpoints {
    /// The global checkpoint of each shard (on a standalone destination, the only one):
    /// where to subscribe from.
    pub global: BTreeMap<String, Checkpoint>,
    /// Cluster destination: each shard's checkpoint per slot written to.
    pub slots: BTreeMap<String, HashMap<u16, Checkpoint>>,
}

/// The nodes of a destination: one for a standalone destination, every master of a
/// cluster.
pub struct Destination {
    nodes: Vec<Node>,
    topology: Option<Topology>,
    databases: u32,
    global_key: String,
    task_id: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.address).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn hash_pairs(v: Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let items: Vec<Value> = match v {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        _ => return None,
    };
    Some(
        items
            .chunks(2)
            .filter_map(|pair| match pair {
                [Value::BulkString(f), Value::BulkString(v)] => Some((f.clone(), v.clone())),
                _ => None,
            })
            .collect(),
    )
}

impl Destination {
    /// Connects to the destination: its one node, or the slot map and every master.
    pub async fn open(dest: &RedisEndpoint, task_id: &str) -> Result<Self, WriteError> {
        let mut nodes = Vec::new();
        let topology = if endpoint::is_cluster(dest) {
            let mut seed = connect(dest, &dest.address).await?;
            let reply = query(&mut seed, &dest.address, &[b"CLUSTER", b"SLOTS"]).await?;
            let (seed_host, _) = endpoint::host_port(&dest.address).map_err(endpoint_error)?;
            let topology = Topology::from_cluster_slots(&reply, &seed_host).map_err(|e| {
                WriteError::Transient {
                    address: dest.address.clone(),
                    message: e.to_string(),
                }
            })?;
            for m in &topology.masters {
                nodes.push(Node::new(
                    m.address.clone(),
                    connect(dest, &m.address).await?,
                ));
            }
            Some(topology)
        } else {
            nodes.push(Node::new(
                dest.address.clone(),
                connect(dest, &dest.address).await?,
            ));
            None
        };
        let mut me = Self {
            nodes,
            topology,
            databases: 16,
            global_key: checkpoint::standalone_key(task_id),
            task_id: task_id.to_owned(),
        };
        for n in &mut me.nodes {
            let info = query(&mut n.conn, &n.address, &[b"INFO", b"server"]).await?;
            let text = endpoint::value_text(&info).unwrap_or_default();
            n.version = text
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .and_then(ServerVersion::parse)
                .unwrap_or(ServerVersion {
                    major: 2,
                    minor: 8,
                    patch: 0,
                });
        }
        if me.topology.is_none()
            && let Some(n) = me.nodes.first_mut()
        {
            // Only needed to expand FLUSHALL; a server that refuses CONFIG keeps 16.
            if let Ok(Value::Array(items)) =
                query(&mut n.conn, &n.address, &[b"CONFIG", b"GET", b"databases"]).await
                && let Some(d) = items
                    .get(1)
                    .and_then(endpoint::value_text)
                    .and_then(|t| t.parse().ok())
            {
                me.databases = d;
            }
        }
        Ok(me)
    }

    /// Kills the connections of earlier sessions of this task, so that a MULTI they still
    /// had in flight cannot commit after this session has read the checkpoints, then
    /// names this session's connections. Best effort on servers that refuse CLIENT.
    pub async fn fence(&mut self) -> Result<(), WriteError> {
        let name = client_name(&self.task_id);
        for n in &mut self.nodes {
            // Unnamed yet, so every connection carrying the name belongs to another session.
            match query(&mut n.conn, &n.address, &[b"CLIENT", b"LIST"]).await {
                Ok(v) => {
                    let text = endpoint::value_text(&v).unwrap_or_default();
                    for line in text.lines() {
                        let mut id = None;
                        let mut named = false;
                        for field in line.split(' ') {
                            if let Some(v) = field.strip_prefix("id=") {
                                id = Some(v.to_owned());
                            } else if field.strip_prefix("name=") == Some(name.as_str()) {
                                named = true;
                            }
                        }
                        if let (true, Some(id)) = (named, id) {
                            tracing::info!(node = %n.address, client = %id, "closing a connection of an earlier session of this task");
                            let _ = query(
                                &mut n.conn,
                                &n.address,
                                &[b"CLIENT", b"KILL", b"ID", id.as_bytes()],
                            )
                            .await;
                        }
                    }
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(node = %n.address, error = %e, "CLIENT LIST refused; earlier sessions are not fenced")
                }
            }
        }
        self.set_names().await
    }

    async fn set_names(&mut self) -> Result<(), WriteError> {
        let name = client_name(&self.task_id);
        for n in &mut self.nodes {
            if let Err(e) = query(
                &mut n.conn,
                &n.address,
                &[b"CLIENT", b"SETNAME", name.as_bytes()],
            )
            .await
            {
                if e.is_transient() {
                    return Err(e);
                }
                tracing::warn!(node = %n.address, error = %e, "CLIENT SETNAME refused");
            }
        }
        Ok(())
    }

    fn global_node(&self) -> usize {
        self.topology
            .as_ref()
            .map_or(0, |t| t.owner_of_key(self.global_key.as_bytes()))
    }

    /// Every shard's checkpoints: the global ones and, on a cluster, those of every slot.
    pub async fn read_checkpoints(&mut self) -> Result<StoredCheckpoints, WriteError> {
        let mut out = StoredCheckpoints::default();
        let g = self.global_node();
        let key = self.global_key.clone();
        let node = &mut self.nodes[g];
        let v = query(&mut node.conn, &node.address, &[b"HGETALL", key.as_bytes()]).await?;
        let pairs = hash_pairs(v).ok_or_else(|| WriteError::Fatal {
            address: node.address.clone(),
            message: format!("{key} is not a redis-sync checkpoint hash"),
        })?;
        for (field, value) in pairs {
            let shard = String::from_utf8_lossy(&field).into_owned();
            let c = Checkpoint::decode(&key, &shard, &value)?;
            out.global.insert(shard, c);
        }
        let Some(topology) = &self.topology else {
            return Ok(out);
        };
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let slots: Vec<u16> = topology.slots_of(i).collect();
            // One HGETALL per owned slot, pipelined in bounded chunks.
            for chunk in slots.chunks(1024) {
                let mut p = redis::Pipeline::with_capacity(chunk.len());
                for s in chunk {
                    p.cmd("HGETALL")
                        .arg(checkpoint::slot_key(router::slot_tag(*s), &self.task_id));
                }
                p.ignore_errors();
                let v: Value = p
                    .query_async(&mut node.conn)
                    .await
                    .map_err(|e| from_redis(&node.address, &e))?;
                let Value::Array(replies) = v else { continue };
                for (s, reply) in chunk.iter().zip(replies) {
                    if let Value::ServerError(e) = &reply {
                        let message = format!(
                            "HGETALL of slot {s}'s checkpoint: {} {}",
                            e.code(),
                            e.details().unwrap_or_default()
                        );
                        return Err(if transient_code(e.code()) {
                            WriteError::Transient {
                                address: node.address.clone(),
                                message,
                            }
                        } else {
                            WriteError::Fatal {
                                address: node.address.clone(),
                                message,
                            }
                        });
                    }
                    let slot_key = checkpoint::slot_key(router::slot_tag(*s), &self.task_id);
                    for (field, value) in hash_pairs(reply).unwrap_or_default() {
                        let shard = String::from_utf8_lossy(&field).into_owned();
                        let c = Checkpoint::decode(&slot_key, &shard, &value)?;
                        out.slots.entry(shard).or_default().insert(*s, c);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Node addresses, in routing order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// Lowest server version over the nodes.
    pub fn version(&self) -> ServerVersion {
        self.nodes
            .iter()
            .map(|n| n.version)
            .min()
            .unwrap_or(ServerVersion {
                major: 2,
                minor: 8,
                patch: 0,
            })
    }
}

/// Which nodes a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The owner of this slot (node 0 on a standalone destination).
    Slot(u16),
    /// One node, any (keyless commands such as PUBLISH).
    Any,
    /// Every node (FLUSHDB, SCRIPT, FUNCTION).
    All,
}

/// One destination command with what is needed to route it and to report it.
#[derive(Debug, Clone)]
struct Op {
    args: Args,
    /// Destination db; None when the command does not depend on the db.
    db: Option<u32>,
    target: Target,
    source_db: u32,
    /// Key to name in errors.
    key: Vec<u8>,
    /// EVALSHA: the SHA1 and the body when the source gave it.
    script: Option<(String, Vec<u8>)>,
    /// This command changes the script cache (SCRIPT FLUSH).
    flushes_scripts: bool,
}

impl Op {
    fn bytes(&self) -> usize {
        self.args.iter().map(Vec::len).sum::<usize>() + 16 * self.args.len()
    }
    fn name(&self) -> String {
        self.args
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
            .unwrap_or_default()
    }
}

/// An event as destination commands.
#[derive(Debug)]
struct EventOps {
    position: Position,
    ops: Vec<Op>,
    /// A KeyRecord on its last (or only) chunk: one key done.
    key_done: bool,
    snapshot_begin: Option<SnapshotBegin>,
    snapshot_end: bool,
    heartbeat_ms: Option<i64>,
    /// The full-copy state after this event (what its checkpoint records).
    snapshot: SnapshotState,
}

/// The state of the full copy this shard is in (or was last in).
#[derive(Debug, Clone, Copy, Default)]
struct SnapshotState {
    rdb_version: u32,
    resnapshot: bool,
}

/// How a writer behaves; built by the runner from the task.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Task id.
    pub task_id: String,
    /// Source shard this writer applies.
    pub shard_id: String,
    /// The destination.
    pub destination: RedisEndpoint,
    /// INTERCEPT or OVERWRITE.
    pub conflict: ConflictMode,
    /// Database selection and mapping.
    pub dbmap: DbMap,
    /// The source has several shards (a cluster): a flush in one shard cannot be
    /// reproduced, since the destination cannot tell that shard's keys apart.
    pub multi_shard_source: bool,
    /// Metrics registry.
    pub metrics: Metrics,
}

/// What one applied batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// Events in the batch.
    pub events: u64,
    /// Events skipped because the destination already had them (after a restart).
    pub skipped_events: u64,
    /// Commands sent (without MULTI/EXEC/SELECT/checkpoint).
    pub commands: u64,
    /// Keys of the full copy completed.
    pub keys_done: u64,
    /// A full copy began: its announcement.
    pub snapshot_begin: Option<SnapshotBegin>,
    /// The full copy ended in this batch.
    pub snapshot_end: bool,
    /// Source time of the last heartbeat applied, Unix ms.
    pub heartbeat_source_ms: Option<i64>,
    /// Position now applied and checkpointed.
    pub applied: Option<Position>,
    /// Error replies that only meant "key missing here".
    pub missing_key_replies: u64,
}

struct WriterMetrics {
    events: Counter,
    commands: Counter,
    batches: Counter,
    missing_key: Counter,
    skipped: Counter,
}

/// Applies one source shard's batches to the destination, in order, exactly once.
pub struct ShardWriter {
    opts: WriterOptions,
    dest: Destination,
    seq: u64,
    /// This shard's global checkpoint (standalone: the only one).
    global: Option<Checkpoint>,
    /// Cluster destination: this shard's checkpoint in each slot written to.
    slots: HashMap<u16, Checkpoint>,
    snapshot: SnapshotState,
    /// Position of the last event translated (or applied before this writer started):
    /// tells a new full copy from the resumption of one.
    current: Option<Position>,
    metrics: WriterMetrics,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("shard", &self.opts.shard_id)
            .field("dest", &self.dest)
            .finish()
    }
}

impl ShardWriter {
    /// Connects to the destination and reads this shard's checkpoints.
    pub async fn open(opts: WriterOptions) -> Result<Self, WriteError> {
        let mut dest = Destination::open(&opts.destination, &opts.task_id).await?;
        dest.set_names().await?;
        let mut stored = dest.read_checkpoints().await?;
        let global = stored.global.remove(&opts.shard_id);
        let slots = stored.slots.remove(&opts.shard_id).unwrap_or_default();
        let latest = global
            .iter()
            .chain(slots.values())
            .max_by_key(|c| c.seq)
            .cloned();
        let seq = latest.as_ref().map_or(0, |c| c.seq);
        let current = latest.as_ref().map(|c| c.position.clone());
        // The RDB version of the last full copy tells the source's version, which some
        // commands need (MOVE before 3.2), so checkpoints keep it after the copy too.
        let snapshot = latest
            .map(|c| SnapshotState {
                rdb_version: c.rdb_version,
                resnapshot: c.position.in_snapshot && c.resnapshot,
            })
            .unwrap_or_default();
        let labels = [
            ("task", opts.task_id.as_str()),
            ("shard", opts.shard_id.as_str()),
        ];
        let m = &opts.metrics;
        let metrics = WriterMetrics {
            events: m.counter("redis_sync_apply_events_total", "Change events applied to the destination.", &labels),
            commands: m.counter("redis_sync_apply_commands_total", "Commands written to the destination.", &labels),
            batches: m.counter("redis_sync_apply_batches_total", "Batches applied and checkpointed.", &labels),
            skipped: m.counter(
                "redis_sync_apply_skipped_events_total",
                "Events skipped after a restart because the destination's checkpoint already covered them.",
                &labels,
            ),
            missing_key: m.counter(
                "redis_sync_apply_missing_key_replies_total",
                "Error replies that only meant the destination had already expired the key.",
                &[("task", opts.task_id.as_str())],
            ),
        };
        Ok(Self {
            opts,
            dest,
            seq,
            global,
            slots,
            snapshot,
            current,
            metrics,
        })
    }

    /// The position this shard is applied up to (its global checkpoint); None when
    /// nothing was ever applied.
    pub fn applied(&self) -> Option<Position> {
        self.global.as_ref().map(|c| c.position.clone())
    }

    /// The destination's lowest server version.
    pub fn destination_version(&self) -> ServerVersion {
        self.dest.version()
    }

    /// Applies one batch: every event in order, with the checkpoint, then returns what was
    /// done. On error nothing after the failing MULTI is applied.
    pub async fn apply(&mut self, batch: &SubscribeResponse) -> Result<BatchReport, WriteError> {
        let end = batch
            .end_position
            .clone()
            .or_else(|| batch.events.last().and_then(|e| e.position.clone()));
        let mut report = BatchReport {
            events: batch.events.len() as u64,
            ..BatchReport::default()
        };
        let Some(end) = end else {
            return Ok(report);
        };
        // An empty batch only moves the position forward within the history already being
        // applied. One that points into a snapshot whose SnapshotBegin has not been applied
        // yet must not be checkpointed: the SnapshotBegin would then look like a resumed
        // copy and skip what a new copy does first (emptying the task's dbs under INTERCEPT,
        // so keys deleted on the source during the gap do not survive).
        if batch.events.is_empty() && end.in_snapshot {
            let known = self
                .current
                .as_ref()
                .is_some_and(|p| p.in_snapshot && p.replid == end.replid && p.offset == end.offset);
            if !known {
                return Ok(report);
            }
        }
        let mut translated = Vec::with_capacity(batch.events.len());
        let mut failed = None;
        for e in &batch.events {
            let position = e.position.clone().unwrap_or_else(|| end.clone());
            match self.translate(e, position) {
                Ok(ev) => translated.push(ev),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        // An event that cannot be reproduced fails the task; what precedes it is applied
        // first, so the position stops right before it.
        let end = match (&failed, translated.last()) {
            (None, _) => end,
            (Some(_), Some(last)) if batch.events[translated.len() - 1].position.is_some() => {
                last.position.clone()
            }
            (Some(e), _) => return Err(clone_error(e)),
        };
        // Cut into groups at event boundaries where an event has its own position: when a
        // group is big enough, and on a cluster around every event with a keyless command
        // (FLUSHDB, FUNCTION, ...), since slots are written independently within a group
        // and such a command must stay in order with all of them.
        let cluster = self.dest.topology.is_some();
        let barrier =
            |ev: &EventOps| cluster && ev.ops.iter().any(|o| !matches!(o.target, Target::Slot(_)));
        let mut start = 0;
        let mut count = 0usize;
        let mut bytes = 0usize;
        for i in 0..translated.len() {
            let last = i + 1 == translated.len();
            let can_cut = batch.events[i].position.is_some();
            let prev_can_cut = i > 0 && batch.events[i - 1].position.is_some();
            if barrier(&translated[i]) && i > start && prev_can_cut {
                let pos = translated[i - 1].position.clone();
                self.commit(&translated[start..i], pos, &mut report).await?;
                start = i;
                count = 0;
                bytes = 0;
            }
            count += translated[i].ops.len();
            bytes += translated[i].ops.iter().map(Op::bytes).sum::<usize>();
            let next_is_barrier = !last && barrier(&translated[i + 1]);
            if !last
                && can_cut
                && (count >= GROUP_MAX_COMMANDS
                    || bytes >= GROUP_MAX_BYTES
                    || barrier(&translated[i])
                    || next_is_barrier)
            {
                let pos = translated[i].position.clone();
                self.commit(&translated[start..=i], pos, &mut report)
                    .await?;
                start = i + 1;
                count = 0;
                bytes = 0;
            }
        }
        self.commit(&translated[start..], end, &mut report).await?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.metrics.batches.inc();
        self.metrics.events.add(report.events);
        Ok(report)
    }

    fn replace(&self) -> bool {
        self.opts.conflict == ConflictMode::Overwrite || self.snapshot.resnapshot
    }

    fn translate(&mut self, e: &ChangeEvent, position: Position) -> Result<EventOps, WriteError> {
        let mut ev = EventOps {
            position,
            ops: Vec::new(),
            key_done: false,
            snapshot_begin: None,
            snapshot_end: false,
            heartbeat_ms: None,
            snapshot: self.snapshot,
        };
        match &e.kind {
            None => {}
            Some(change_event::Kind::SnapshotBegin(b)) => {
                ev.snapshot_begin = Some(b.clone());
                self.begin_snapshot(b, &mut ev)?;
            }
            Some(change_event::Kind::Key(rec)) => {
                ev.key_done = rec.last_chunk;
                self.key_record(rec, &mut ev)?;
            }
            Some(change_event::Kind::Function(f)) => {
                if !self.dest.version().at_least(7, 0) {
                    return Err(WriteError::Unsupported {
                        command: "FUNCTION LOAD".into(),
                        db: 0,
                        reason: format!(
                            "the source has functions; the destination runs {}",
                            self.dest.version()
                        ),
                    });
                }
                ev.ops.push(Op {
                    args: vec![
                        b"FUNCTION".to_vec(),
                        b"LOAD".to_vec(),
                        b"REPLACE".to_vec(),
                        f.code.clone(),
                    ],
                    db: None,
                    target: Target::All,
                    source_db: 0,
                    key: Vec::new(),
                    script: None,
                    flushes_scripts: false,
                });
            }
            Some(change_event::Kind::SnapshotEnd(end)) => {
                ev.snapshot_end = true;
                // Scripts of masters before 7.0, for the EVALSHA that the stream may carry.
                for s in &end.scripts {
                    ev.ops.push(Op {
                        args: vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), s.body.clone()],
                        db: None,
                        target: Target::All,
                        source_db: 0,
                        key: Vec::new(),
                        script: None,
                        flushes_scripts: false,
                    });
                }
            }
            Some(change_event::Kind::Command(c)) => ev.ops = self.command(c)?,
            Some(change_event::Kind::Transaction(t)) => {
                for c in &t.commands {
                    ev.ops.extend(self.command(c)?);
                }
            }
            Some(change_event::Kind::Heartbeat(h)) => {
                ev.heartbeat_ms = Some(h.source_ms);
                if let Some(c) = &h.command {
                    ev.ops = self.command(c)?;
                }
            }
        }
        ev.snapshot = self.snapshot;
        self.current = Some(ev.position.clone());
        Ok(ev)
    }

    fn begin_snapshot(&mut self, b: &SnapshotBegin, ev: &mut EventOps) -> Result<(), WriteError> {
        let same = |c: &Checkpoint| {
            c.position.in_snapshot && c.position.replid == b.replid && c.position.offset == b.offset
        };
        let committed: Vec<&Checkpoint> = self.global.iter().chain(self.slots.values()).collect();
        // Data of another history is on the destination: this copy replaces it.
        let same_pos = |p: &Position| p.in_snapshot && p.replid == b.replid && p.offset == b.offset;
        let resnapshot = committed.iter().any(|c| !same(c) || c.resnapshot)
            || self.current.as_ref().is_some_and(|p| !same_pos(p));
        let resume = !committed.is_empty() && committed.iter().all(|c| same(c));
        if b.resumed && !resume {
            // Ingest skips what it believes was applied; starting over here would leave
            // those keys out of the copy.
            return Err(WriteError::Fatal {
                address: self.dest.addresses().join(","),
                message: format!(
                    "ingest resumed the full copy ({}:{}) in the middle, but the destination's checkpoint is not inside that copy",
                    b.replid, b.offset
                ),
            });
        }
        self.snapshot = SnapshotState {
            rdb_version: b.rdb_version,
            resnapshot,
        };
        if resume {
            tracing::info!(shard = %self.opts.shard_id, records = ?committed.iter().map(|c| c.position.snapshot_records).min(), "resuming a full copy in the middle");
            return Ok(());
        }
        tracing::info!(shard = %self.opts.shard_id, replid = %b.replid, offset = b.offset, rdb = b.rdb_version,
            estimated_keys = b.estimated_keys, reason = %b.reason, resnapshot, "full copy begins");
        if !resnapshot {
            return Ok(());
        }
        match self.opts.conflict {
            ConflictMode::Overwrite => {
                tracing::warn!(shard = %self.opts.shard_id,
                    "full copy over data of an earlier history under OVERWRITE: destination keys are kept and replaced key by key; keys deleted on the source meanwhile stay");
            }
            _ if self.opts.multi_shard_source => {
                tracing::warn!(shard = %self.opts.shard_id,
                    "full copy of one shard of a cluster source over data of an earlier history: the destination cannot flush only this shard's keys, so keys are replaced key by key; keys deleted on the source meanwhile stay");
            }
            _ => {
                // INTERCEPT: the selected destination dbs hold only what this task wrote, so
                // they are emptied before the new copy (the checkpoint is rewritten after).
                let dbs = if self.opts.dbmap.cluster_destination() {
                    vec![0]
                } else {
                    self.opts
                        .dbmap
                        .targets(self.dest.databases)
                        .into_iter()
                        .collect()
                };
                tracing::warn!(shard = %self.opts.shard_id, dbs = ?dbs, "full copy over data of an earlier history under INTERCEPT: flushing the task's destination dbs first");
                for db in dbs {
                    ev.ops.push(self.flushdb_op(db, 0, &[]));
                }
            }
        }
        Ok(())
    }

    fn flushdb_op(&self, db: u32, source_db: u32, args: &[Vec<u8>]) -> Op {
        let mut a = vec![b"FLUSHDB".to_vec()];
        if args.is_empty() {
            // Free memory in the background where the server can: the keys are gone at once.
            if self.dest.version().at_least(4, 0) {
                a.push(b"ASYNC".to_vec());
            }
        } else {
            a.extend(args.iter().cloned());
        }
        Op {
            args: a,
            db: Some(db),
            target: Target::All,
            source_db,
            key: Vec::new(),
            script: None,
            flushes_scripts: false,
        }
    }

    fn target_db(&self, db: u32, command: &str) -> Result<Option<u32>, WriteError> {
        self.opts
            .dbmap
            .target(db)
            .map_err(|e: DbMapError| WriteError::Unsupported {
                command: command.to_owned(),
                db,
                reason: e.to_string(),
            })
    }

    fn key_record(&mut self, rec: &KeyRecord, ev: &mut EventOps) -> Result<(), WriteError> {
        let Some(db) = self.target_db(rec.db, "RESTORE")? else {
            return Ok(());
        };
        if self.snapshot.rdb_version == 0 {
            return Err(WriteError::Unsupported {
                command: "RESTORE".into(),
                db: rec.db,
                reason:
                    "a snapshot record came before any SnapshotBegin, so its RDB version is unknown"
                        .into(),
            });
        }
        let opts = RestoreOptions {
            version: self.dest.version(),
            rdb_version: self.snapshot.rdb_version,
            replace: self.replace(),
            now_ms: now_ms(),
        };
        let cmds = restore::key_record(rec, &opts).map_err(|e| WriteError::Unsupported {
            command: format!("RESTORE {}", lossy(&rec.key)),
            db: rec.db,
            reason: e.to_string(),
        })?;
        let slot = router::key_slot(&rec.key);
        for args in cmds {
            ev.ops.push(Op {
                args,
                db: Some(db),
                target: Target::Slot(slot),
                source_db: rec.db,
                key: rec.key.clone(),
                script: None,
                flushes_scripts: false,
            });
        }
        Ok(())
    }

    /// A replicated command as destination commands (none when its db is not copied).
    fn command(&self, c: &Command) -> Result<Vec<Op>, WriteError> {
        let name = String::from_utf8_lossy(&c.name).to_ascii_lowercase();
        let unsupported = |reason: String| WriteError::Unsupported {
            command: name.to_ascii_uppercase(),
            db: c.db,
            reason,
        };
        let cluster = self.opts.dbmap.cluster_destination();
        let mut full: Args = Vec::with_capacity(c.args.len() + 1);
        full.push(c.name.clone());
        full.extend(c.args.iter().cloned());
        let op = |args: Args, db: Option<u32>, target: Target, key: Vec<u8>| Op {
            args,
            db,
            target,
            source_db: c.db,
            key,
            script: None,
            flushes_scripts: false,
        };
        let arg_u32 = |i: usize| -> Result<u32, WriteError> {
            c.args
                .get(i)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| unsupported(format!("argument {} is not a database number", i + 1)))
        };
        match name.as_str() {
            // The stream's db is in Command.db; transactions arrive as Transaction events;
            // PING and REPLCONF carry no data.
            "select" | "multi" | "exec" | "discard" | "ping" | "replconf" => Ok(Vec::new()),
            "publish" => Ok(vec![op(full, None, Target::Any, Vec::new())]),
            "script" => {
                let flush = c
                    .args
                    .first()
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"flush"));
                let mut o = op(full, None, Target::All, Vec::new());
                o.flushes_scripts = flush;
                Ok(vec![o])
            }
            "function" => {
                // Every master of a cluster source replicates the FUNCTION LOAD a client
                // sends to all of them, and each copy goes to every destination master:
                // all but the first would be refused as "already exists".
                let mut full = full;
                if self.opts.multi_shard_source
                    && c.args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"load"))
                    && !c
                        .args
                        .get(1..c.args.len().saturating_sub(1))
                        .unwrap_or_default()
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(b"replace"))
                {
                    full.insert(2, b"REPLACE".to_vec());
                }
                Ok(vec![op(full, None, Target::All, Vec::new())])
            }
            "flushdb" | "flushall" => {
                if self.opts.multi_shard_source {
                    return Err(unsupported(
                        "a flush on one master of a cluster source removes only that master's keys, which the destination cannot tell apart; \
                         flush the destination by hand and restart the task, or resync"
                            .into(),
                    ));
                }
                if name == "flushdb" {
                    return Ok(match self.target_db(c.db, "FLUSHDB")? {
                        Some(db) => vec![self.flushdb_op(db, c.db, &c.args)],
                        None => Vec::new(),
                    });
                }
                if self.opts.dbmap.identity_all() {
                    return Ok(vec![op(full, None, Target::All, Vec::new())]);
                }
                let dbs: Vec<u32> = if cluster {
                    vec![0]
                } else {
                    self.opts
                        .dbmap
                        .targets(self.dest.databases)
                        .into_iter()
                        .collect()
                };
                Ok(dbs
                    .into_iter()
                    .map(|db| self.flushdb_op(db, c.db, &c.args))
                    .collect())
            }
            "swapdb" => {
                let (a, b) = (arg_u32(0)?, arg_u32(1)?);
                let (sa, sb) = (
                    self.opts.dbmap.is_selected(a),
                    self.opts.dbmap.is_selected(b),
                );
                match (sa, sb) {
                    (false, false) => Ok(Vec::new()),
                    (true, true) if !cluster => {
                        let ta = self.target_db(a, "SWAPDB")?.unwrap_or(a);
                        let tb = self.target_db(b, "SWAPDB")?.unwrap_or(b);
                        if ta == tb {
                            if a == b {
                                return Ok(Vec::new());
                            }
                            return Err(unsupported(format!(
                                "source dbs {a} and {b} both map to destination db {ta}"
                            )));
                        }
                        let mut ops = vec![op(
                            vec![
                                b"SWAPDB".to_vec(),
                                ta.to_string().into_bytes(),
                                tb.to_string().into_bytes(),
                            ],
                            None,
                            Target::All,
                            Vec::new(),
                        )];
                        // SWAPDB carries the checkpoint hash out of db 0 with the data; the
                        // MULTI writes it anew in db 0, so drop the copy that left.
                        if ta == 0 || tb == 0 {
                            let other = if ta == 0 { tb } else { ta };
                            let key = checkpoint::standalone_key(&self.opts.task_id).into_bytes();
                            ops.push(op(
                                vec![b"DEL".to_vec(), key.clone()],
                                Some(other),
                                Target::All,
                                key,
                            ));
                        }
                        Ok(ops)
                    }
                    (true, true) => Err(unsupported("a cluster destination has only db 0".into())),
                    _ => Err(unsupported(format!(
                        "SWAPDB {a} {b} swaps a selected db with one that is not copied, whose content is unknown here"
                    ))),
                }
            }
            "move" => {
                let key = c.args.first().cloned().unwrap_or_default();
                let to = arg_u32(1)?;
                let from_t = self.target_db(c.db, "MOVE")?;
                let to_t = if self.opts.dbmap.is_selected(to) {
                    self.target_db(to, "MOVE")?
                } else {
                    None
                };
                let slot = Target::Slot(router::key_slot(&key));
                match (from_t, to_t) {
                    (None, None) => Ok(Vec::new()),
                    (Some(f), None) => Ok(vec![op(
                        vec![b"DEL".to_vec(), key.clone()],
                        Some(f),
                        slot,
                        key,
                    )]),
                    (None, Some(_)) => Err(unsupported(format!(
                        "MOVE of {} from a db that is not copied into copied db {to}: its value is unknown here",
                        lossy(&key)
                    ))),
                    (Some(f), Some(t)) if f == t => Ok(Vec::new()),
                    (Some(f), Some(t)) => {
                        let mut ops = vec![op(
                            vec![b"MOVE".to_vec(), key.clone(), t.to_string().into_bytes()],
                            Some(f),
                            slot,
                            key.clone(),
                        )];
                        // Masters before 3.2 (RDB 6 and older) drop the key's TTL on MOVE and
                        // replicate the MOVE as is; newer destinations keep the TTL.
                        if (1..=6).contains(&self.snapshot.rdb_version) {
                            ops.push(op(
                                vec![b"PERSIST".to_vec(), key.clone()],
                                Some(t),
                                slot,
                                key,
                            ));
                        }
                        Ok(ops)
                    }
                }
            }
            "copy" => self.copy(c, full),
            _ => {
                let Some(db) = self.target_db(c.db, &name)? else {
                    return Ok(Vec::new());
                };
                let mut keys: Vec<usize> = c
                    .key_indexes
                    .iter()
                    .map(|i| *i as usize + 1)
                    .filter(|i| *i < full.len())
                    .collect();
                keys.dedup();
                let first_key = keys.first().map(|i| full[*i].clone()).unwrap_or_default();
                let mut script = None;
                if name == "evalsha" || name == "evalsha_ro" {
                    let sha = c
                        .args
                        .first()
                        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                        .unwrap_or_default();
                    script = Some((sha, c.script_body.clone()));
                }
                if !cluster {
                    let mut o = op(full, Some(db), Target::Slot(0), first_key);
                    o.script = script;
                    return Ok(vec![o]);
                }
                let groups = router::group_by_slot(&full, &keys);
                match groups.len() {
                    0 => {
                        let mut o = op(full, Some(db), Target::Any, first_key);
                        o.script = script;
                        Ok(vec![o])
                    }
                    1 => {
                        let mut o = op(full, Some(db), Target::Slot(groups[0].0), first_key);
                        o.script = script;
                        Ok(vec![o])
                    }
                    _ => match name.as_str() {
                        // Splitting these per slot keeps their meaning.
                        "del" | "unlink" | "mset" => {
                            let pairs = name == "mset";
                            Ok(groups
                                .into_iter()
                                .map(|(slot, idx)| {
                                    let mut args = vec![full[0].clone()];
                                    for i in &idx {
                                        args.push(full[*i].clone());
                                        if pairs && let Some(v) = full.get(i + 1) {
                                            args.push(v.clone());
                                        }
                                    }
                                    let key = full[idx[0]].clone();
                                    op(args, Some(db), Target::Slot(slot), key)
                                })
                                .collect())
                        }
                        _ => Err(unsupported(format!(
                            "its keys ({}) hash to different slots of the cluster destination and splitting it would change its meaning",
                            keys.iter()
                                .take(5)
                                .map(|i| lossy(&full[*i]))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))),
                    },
                }
            }
        }
    }

    /// COPY source destination [DB n] [REPLACE], with the target db mapped.
    fn copy(&self, c: &Command, full: Args) -> Result<Vec<Op>, WriteError> {
        let unsupported = |reason: String| WriteError::Unsupported {
            command: "COPY".into(),
            db: c.db,
            reason,
        };
        let mut args: Args = vec![full[0].clone()];
        let mut to_db = None;
        let mut i = 1;
        while i < full.len() {
            if i >= 3 && full[i].eq_ignore_ascii_case(b"db") && i + 1 < full.len() {
                let n = std::str::from_utf8(&full[i + 1])
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or_else(|| unsupported("DB is not a number".into()))?;
                to_db = Some(n);
                i += 2;
                continue;
            }
            args.push(full[i].clone());
            i += 1;
        }
        let to = to_db.unwrap_or(c.db);
        let from_t = self.target_db(c.db, "COPY")?;
        let to_t = if self.opts.dbmap.is_selected(to) {
            self.target_db(to, "COPY")?
        } else {
            None
        };
        let (src, dst) = (
            full.get(1).cloned().unwrap_or_default(),
            full.get(2).cloned().unwrap_or_default(),
        );
        match (from_t, to_t) {
            (_, None) => Ok(Vec::new()),
            (None, Some(_)) => Err(unsupported(format!(
                "COPY of {} from a db that is not copied into copied db {to}: its value is unknown here",
                lossy(&src)
            ))),
            (Some(f), Some(t)) => {
                if self.opts.dbmap.cluster_destination()
                    && router::key_slot(&src) != router::key_slot(&dst)
                {
                    return Err(unsupported(format!(
                        "{} and {} hash to different slots of the cluster destination",
                        lossy(&src),
                        lossy(&dst)
                    )));
                }
                if t != f {
                    args.push(b"DB".to_vec());
                    args.push(t.to_string().into_bytes());
                }
                Ok(vec![Op {
                    args,
                    db: Some(f),
                    target: Target::Slot(router::key_slot(&src)),
                    source_db: c.db,
                    key: src,
                    script: None,
                    flushes_scripts: false,
                }])
            }
        }
    }

    /// Where an op is written: (node, slot of the MULTI). Standalone: node 0, no slot.
    fn places(&self, target: Target) -> Vec<(usize, Option<u16>)> {
        match &self.dest.topology {
            None => vec![(0, None)],
            Some(t) => match target {
                Target::Slot(s) => vec![(t.owner(s), Some(s))],
                Target::Any => vec![(0, t.masters.first().map(|m| m.home_slot))],
                Target::All => t
                    .masters
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (i, Some(m.home_slot)))
                    .collect(),
            },
        }
    }

    /// True when the destination already has the effect of the event at `position` in
    /// `slot` (standalone: `None`).
    fn covered(&self, slot: Option<u16>, position: &Position) -> bool {
        self.global
            .as_ref()
            .is_some_and(|c| checkpoint::covers(&c.position, position))
            || slot
                .and_then(|s| self.slots.get(&s))
                .is_some_and(|c| checkpoint::covers(&c.position, position))
    }

    /// Writes `events` with the checkpoint `end`. Standalone: one MULTI. Cluster: one
    /// MULTI per slot written to (each with that slot's checkpoint), one pipeline per
    /// master, masters in parallel; then the global checkpoint once all of them committed.
    async fn commit(
        &mut self,
        events: &[EventOps],
        end: Position,
        report: &mut BatchReport,
    ) -> Result<(), WriteError> {
        for ev in events {
            if ev.key_done {
                report.keys_done += 1;
            }
            if ev.snapshot_begin.is_some() {
                report.snapshot_begin.clone_from(&ev.snapshot_begin);
                report.keys_done = 0;
            }
            report.snapshot_end |= ev.snapshot_end;
            if ev.heartbeat_ms.is_some() {
                report.heartbeat_source_ms = ev.heartbeat_ms;
            }
        }
        let cluster = self.dest.topology.is_some();
        let n_nodes = self.dest.nodes.len();
        // Per node, per slot (in order of first use): the ops not applied yet.
        let mut plans: Vec<Vec<(Option<u16>, Vec<&Op>)>> = vec![Vec::new(); n_nodes];
        for ev in events {
            let mut all_covered = true;
            for op in &ev.ops {
                for (n, slot) in self.places(op.target) {
                    if self.covered(slot, &ev.position) {
                        continue;
                    }
                    all_covered = false;
                    let blocks = &mut plans[n];
                    match blocks.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, ops)) => ops.push(op),
                        None => blocks.push((slot, vec![op])),
                    }
                }
            }
            if all_covered && (!ev.ops.is_empty() || self.covered(None, &ev.position)) {
                report.skipped_events += 1;
                self.metrics.skipped.inc();
            }
        }
        let nothing = plans.iter().all(Vec::is_empty);
        if nothing && self.covered(None, &end) {
            report.applied = Some(end);
            return Ok(());
        }
        if !cluster && plans[0].is_empty() {
            // The checkpoint alone still advances (PINGs, skipped dbs).
            plans[0].push((None, Vec::new()));
        }
        let seq = self.seq + 1;
        let snap = events.last().map_or(self.snapshot, |e| e.snapshot);
        let ckpt = Checkpoint {
            seq,
            rdb_version: snap.rdb_version,
            resnapshot: end.in_snapshot && snap.resnapshot,
            position: end.clone(),
        };
        let encoded = ckpt.encode();
        let shard = self.opts.shard_id.clone();
        let task_id = self.opts.task_id.clone();
        let global_key = self.dest.global_key.clone();

        // Scripts: make sure every EVALSHA finds its script, ahead of the MULTI (a NOSCRIPT
        // inside EXEC could not be retried without reordering the stream).
        let mut node_blocks: Vec<Vec<Block<'_>>> = Vec::with_capacity(n_nodes);
        for (i, plan) in plans.into_iter().enumerate() {
            let node = &mut self.dest.nodes[i];
            let mut pending: HashSet<String> = HashSet::new();
            let mut blocks = Vec::with_capacity(plan.len());
            for (slot, ops) in plan {
                let mut loads = Vec::with_capacity(ops.len());
                for op in &ops {
                    let mut load = None;
                    if op.flushes_scripts {
                        pending.clear();
                    }
                    if let Some((sha, body)) = &op.script
                        && !node.scripts.contains(sha)
                        && !pending.contains(sha)
                    {
                        if body.is_empty() {
                            let v = query(
                                &mut node.conn,
                                &node.address,
                                &[b"SCRIPT", b"EXISTS", sha.as_bytes()],
                            )
                            .await?;
                            let exists = matches!(&v, Value::Array(items) if matches!(items.first(), Some(Value::Int(1))));
                            if !exists {
                                return Err(WriteError::Rejected {
                                    address: node.address.clone(),
                                    command: "EVALSHA".into(),
                                    key: lossy(&op.key),
                                    db: op.db.unwrap_or(0),
                                    source_db: op.source_db,
                                    reply: format!(
                                        "NOSCRIPT: script {sha} is not on the destination and the source did not provide its body"
                                    ),
                                    applied: NOT_APPLIED,
                                });
                            }
                            node.scripts.insert(sha.clone());
                        } else {
                            load = Some(body.clone());
                            pending.insert(sha.clone());
                        }
                    }
                    loads.push(load);
                }
                let key = match slot {
                    Some(s) => checkpoint::slot_key(router::slot_tag(s), &task_id),
                    None => global_key.clone(),
                };
                blocks.push(Block {
                    slot,
                    key,
                    ops,
                    loads,
                });
            }
            node_blocks.push(blocks);
        }

        let futures = self
            .dest
            .nodes
            .iter_mut()
            .zip(node_blocks.iter())
            .filter(|(_, b)| !b.is_empty())
            .map(|(node, blocks)| {
                let shard = shard.clone();
                let encoded = encoded.clone();
                async move {
                    let r = exec_blocks(node, blocks, &shard, &encoded).await;
                    (node.address.clone(), r)
                }
            });
        let results = futures_util::future::join_all(futures).await;

        let mut first_error: Option<WriteError> = None;
        let keep = |e: WriteError, first: &mut Option<WriteError>| {
            // A fatal error wins over a transient one.
            let replace = match first {
                None => true,
                Some(prev) => prev.is_transient() && !e.is_transient(),
            };
            if replace {
                *first = Some(e);
            }
        };
        let mut missing_checks: Vec<(String, &Op)> = Vec::new();
        let by_address: HashMap<String, usize> = self
            .dest
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.address.clone(), i))
            .collect();
        for (address, result) in results {
            let i = by_address.get(&address).copied().unwrap_or(0);
            let outcomes = match result {
                Ok(o) => o,
                Err(e) => {
                    keep(e, &mut first_error);
                    continue;
                }
            };
            for (block, outcome) in node_blocks[i].iter().zip(outcomes) {
                let outcome = match outcome {
                    Ok(o) => o,
                    Err(e) => {
                        keep(e, &mut first_error);
                        continue;
                    }
                };
                match block.slot {
                    Some(s) => {
                        self.slots.insert(s, ckpt.clone());
                    }
                    None => self.global = Some(ckpt.clone()),
                }
                let node = &mut self.dest.nodes[i];
                for (flushed, loaded) in outcome.script_changes {
                    if flushed {
                        node.scripts.clear();
                    }
                    if let Some(sha) = loaded {
                        node.scripts.insert(sha);
                    }
                }
                report.commands += block.ops.len() as u64;
                self.metrics.commands.add(block.ops.len() as u64);
                for (idx, code, detail) in outcome.errors {
                    let op = block.ops[idx];
                    let name = op.name();
                    match missing_key_reply(&name, &code, &detail) {
                        MissingKey::Yes => {
                            note_missing(&self.metrics, &address, op, &code, &detail);
                            report.missing_key_replies += 1;
                        }
                        MissingKey::IfAbsent => missing_checks.push((address.clone(), op)),
                        MissingKey::No => keep(
                            WriteError::Rejected {
                                address: address.clone(),
                                command: name,
                                key: lossy(&op.key),
                                db: op.db.unwrap_or(0),
                                source_db: op.source_db,
                                reply: format!("{code} {detail}"),
                                applied: APPLIED_PAST,
                            },
                            &mut first_error,
                        ),
                    }
                }
            }
        }
        for (address, op) in missing_checks {
            let i = by_address.get(&address).copied().unwrap_or(0);
            let node = &mut self.dest.nodes[i];
            let mut p = redis::pipe();
            let db = op.db.unwrap_or(0);
            if db != 0 {
                p.cmd("SELECT").arg(db);
            }
            p.cmd("EXISTS").arg(op.key.as_slice());
            if db != 0 {
                p.cmd("SELECT").arg(0);
            }
            let v: Value = p
                .query_async(&mut node.conn)
                .await
                .map_err(|e| from_redis(&node.address, &e))?;
            let exists_idx = usize::from(db != 0);
            let exists = matches!(&v, Value::Array(items) if matches!(items.get(exists_idx), Some(Value::Int(n)) if *n > 0));
            if exists {
                keep(
                    WriteError::Rejected {
                        address,
                        command: op.name(),
                        key: lossy(&op.key),
                        db,
                        source_db: op.source_db,
                        reply: "NOGROUP on a stream the destination has".into(),
                        applied: APPLIED_PAST,
                    },
                    &mut first_error,
                );
            } else {
                note_missing(&self.metrics, &address, op, "NOGROUP", "(key missing)");
                report.missing_key_replies += 1;
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if cluster {
            // Every slot of the group is applied: the global checkpoint may move.
            let g = self.dest.global_node();
            let node = &mut self.dest.nodes[g];
            query(
                &mut node.conn,
                &node.address,
                &[
                    b"HSET",
                    global_key.as_bytes(),
                    shard.as_bytes(),
                    encoded.as_bytes(),
                ],
            )
            .await?;
            self.global = Some(ckpt);
        }
        self.seq = seq;
        report.applied = Some(end);
        Ok(())
    }
}

fn note_missing(metrics: &WriterMetrics, address: &str, op: &Op, code: &str, detail: &str) {
    metrics.missing_key.inc();
    tracing::warn!(
        node = %address,
        command = %op.name(),
        key = %lossy(&op.key),
        db = op.db.unwrap_or(0),
        reply = %format!("{code} {detail}"),
        "the destination had already expired this key; the source's DEL for it follows in the stream"
    );
}

/// One MULTI: the ops of one slot (or of the whole standalone destination) and the
/// checkpoint key written with them.
struct Block<'a> {
    slot: Option<u16>,
    key: String,
    ops: Vec<&'a Op>,
    /// Per op: a script body to SCRIPT LOAD right before it.
    loads: Vec<Option<Vec<u8>>>,
}

/// Script cache changes of one MULTI, in order: (SCRIPT FLUSH, SHA1 loaded).
type ScriptChanges = Vec<(bool, Option<String>)>;

/// What one MULTI did.
struct ExecOutcome {
    /// (index into the block's ops, error code, detail) for every command that failed in EXEC.
    errors: Vec<(usize, String, String)>,
    /// Script cache changes to record.
    script_changes: ScriptChanges,
}

/// What a queued command of the MULTI is, to read its reply.
enum Queued {
    Op(usize),
    Internal,
}

/// Sends every block as MULTI ... HSET checkpoint ... EXEC in one pipeline and reads
/// each block's outcome. The outer error is a connection failure (nothing known).
async fn exec_blocks(
    node: &mut Node,
    blocks: &[Block<'_>],
    shard: &str,
    encoded: &str,
) -> Result<Vec<Result<ExecOutcome, WriteError>>, WriteError> {
    let total: usize = blocks.iter().map(|b| b.ops.len() + 4).sum();
    let mut p = redis::Pipeline::with_capacity(total);
    let mut layouts: Vec<(Vec<Queued>, ScriptChanges)> = Vec::with_capacity(blocks.len());
    for block in blocks {
        let mut queued: Vec<Queued> = Vec::with_capacity(block.ops.len() + 4);
        let mut script_changes = Vec::new();
        p.cmd("MULTI");
        let mut db = 0u32;
        for (i, op) in block.ops.iter().enumerate() {
            if let Some(want) = op.db
                && want != db
            {
                p.cmd("SELECT").arg(want);
                queued.push(Queued::Internal);
                db = want;
            }
            if let Some(Some(body)) = block.loads.get(i) {
                p.cmd("SCRIPT").arg("LOAD").arg(body.as_slice());
                queued.push(Queued::Internal);
                script_changes.push((false, op.script.as_ref().map(|(s, _)| s.clone())));
            }
            if op.flushes_scripts {
                script_changes.push((true, None));
            }
            let mut c = redis::Cmd::new();
            for a in &op.args {
                c.arg(a.as_slice());
            }
            p.add_command(c);
            queued.push(Queued::Op(i));
        }
        // Back to db 0, where the checkpoint lives; the connection is then in db 0 after
        // every EXEC, so no db state carries over.
        if db != 0 {
            p.cmd("SELECT").arg(0);
            queued.push(Queued::Internal);
        }
        p.cmd("HSET")
            .arg(block.key.as_str())
            .arg(shard)
            .arg(encoded);
        queued.push(Queued::Internal);
        p.cmd("EXEC");
        layouts.push((queued, script_changes));
    }
    p.ignore_errors();
    let v: Value = p
        .query_async(&mut node.conn)
        .await
        .map_err(|e| from_redis(&node.address, &e))?;
    let Value::Array(replies) = v else {
        return Err(WriteError::Transient {
            address: node.address.clone(),
            message: format!("unexpected pipeline reply {v:?}"),
        });
    };
    let expected: usize = layouts.iter().map(|(q, _)| q.len() + 2).sum();
    if replies.len() != expected {
        return Err(WriteError::Transient {
            address: node.address.clone(),
            message: format!("{} replies to {expected} commands", replies.len()),
        });
    }
    let mut out = Vec::with_capacity(blocks.len());
    let mut at = 0;
    for (block, (queued, script_changes)) in blocks.iter().zip(layouts) {
        let n = queued.len() + 2;
        let r =
            read_block(&node.address, &block.ops, &queued, &replies[at..at + n]).map(|errors| {
                ExecOutcome {
                    errors,
                    script_changes,
                }
            });
        out.push(r);
        at += n;
    }
    Ok(out)
}

/// Reads the replies of one MULTI block: `[MULTI, queued..., EXEC]`.
fn read_block(
    address: &str,
    ops: &[&Op],
    queued: &[Queued],
    replies: &[Value],
) -> Result<Vec<(usize, String, String)>, WriteError> {
    if let Some(Value::ServerError(e)) = replies.first() {
        return Err(WriteError::Transient {
            address: address.to_owned(),
            message: format!(
                "MULTI refused: {} {}",
                e.code(),
                e.details().unwrap_or_default()
            ),
        });
    }
    // Refused while queueing: EXEC discards the whole MULTI.
    for (q, reply) in queued.iter().zip(&replies[1..]) {
        if let Value::ServerError(e) = reply {
            let code = e.code().to_owned();
            let detail = e.details().unwrap_or_default().to_owned();
            if transient_code(&code) {
                return Err(WriteError::Transient {
                    address: address.to_owned(),
                    message: format!("{code} {detail}"),
                });
            }
            let (command, key, db, source_db) = match q {
                Queued::Op(i) => {
                    let op = ops[*i];
                    (op.name(), lossy(&op.key), op.db.unwrap_or(0), op.source_db)
                }
                Queued::Internal => (
                    "SELECT/SCRIPT/HSET (checkpoint)".to_owned(),
                    "-".to_owned(),
                    0,
                    0,
                ),
            };
            if matches!(code.as_str(), "NOAUTH" | "NOPERM" | "WRONGPASS") {
                return Err(WriteError::Fatal {
                    address: address.to_owned(),
                    message: format!("{command}: {code} {detail}"),
                });
            }
            return Err(WriteError::Rejected {
                address: address.to_owned(),
                command,
                key,
                db,
                source_db,
                reply: format!("{code} {detail}"),
                applied: NOT_APPLIED,
            });
        }
    }
    let results = match replies.last() {
        Some(Value::Array(r)) => r,
        Some(Value::ServerError(e)) => {
            let message = format!("EXEC: {} {}", e.code(), e.details().unwrap_or_default());
            return Err(WriteError::Transient {
                address: address.to_owned(),
                message,
            });
        }
        other => {
            return Err(WriteError::Transient {
                address: address.to_owned(),
                message: format!("EXEC answered {other:?}"),
            });
        }
    };
    let mut errors = Vec::new();
    for (q, r) in queued.iter().zip(results) {
        if let Value::ServerError(e) = r {
            match q {
                Queued::Op(i) => errors.push((
                    *i,
                    e.code().to_owned(),
                    e.details().unwrap_or_default().to_owned(),
                )),
                Queued::Internal => {
                    return Err(WriteError::Fatal {
                        address: address.to_owned(),
                        message: format!(
                            "a SELECT, SCRIPT LOAD or the checkpoint write failed inside EXEC: {} {}",
                            e.code(),
                            e.details().unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
    Ok(errors)
}

fn clone_error(e: &WriteError) -> WriteError {
    match e {
        WriteError::Unsupported {
            command,
            db,
            reason,
        } => WriteError::Unsupported {
            command: command.clone(),
            db: *db,
            reason: reason.clone(),
        },
        other => WriteError::Fatal {
            address: String::new(),
            message: other.to_string(),
        },
    }
}

/// Key bytes as text for messages, cut to 200 bytes.
pub fn lossy(key: &[u8]) -> String {
    let cut = key.get(..200).unwrap_or(key);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if key.len() > 200 {
        s.push('…');
    }
    format!("{s:?}")
}
