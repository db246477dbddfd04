//! Verification of a task: a key-by-key comparison of the source and the destination for
//! the task's databases, in both directions, without writing anything.
//!
//! Round 1 scans every master of the source (each selected database) and compares each
//! key with the destination (through the task's db mapping): missing on the destination,
//! different type, different value, TTL further apart than the tolerance. It then scans
//! the destination's mapped databases for keys no selected source database holds (extra
//! keys). Writes are in flight while this runs, so a key that differs is not reported at
//! once: after `round_delay` every differing key is compared again, up to `rounds`
//! rounds, and only what still differs after the last round is reported.
//!
//! Production sources must not suffer: each side is read at most `max_keys_per_second`
//! keys per second (a token bucket), values are read in pages (`LRANGE`, `ZRANGE`,
//! `SSCAN`, `HSCAN`, `XRANGE`, `GETRANGE`) so memory stays bounded whatever the key's
//! size, and keys with more than `big_key_elements` elements are compared by length only.
//!
//! Ignored: this task's heartbeat keys (`<prefix>:<task id>` and `<prefix>:<task id>:…`)
//! on both sides, and on the destination every key the tool writes (prefix
//! `redis-sync:`, the checkpoints, and any heartbeat key) that the source does not hold.
//! The tool's keys of *other* tasks that the source does hold — an upstream task's
//! checkpoint and heartbeat in a cascade A → B → C — are data to this task but change
//! every second, so only their presence is compared. Keys of module types are compared
//! by type and TTL only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future;
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind, Value};
use redis_sync_command::cluster::{self, ClusterNode};
use redis_sync_proto::v1::{
    Difference, DifferenceKind, RedisEndpoint, TaskSpec, VerifyTaskRequest, VerifyTaskResponse,
};
use tokio::time::Instant;

use crate::{dbmap::DbMap, endpoint, task};

/// Prefix of every key the tool itself writes to the destination (checkpoints).
pub const OWN_KEY_PREFIX: &[u8] = b"redis-sync:";

/// Hard upper bound of `max_differences`.
pub const MAX_LISTED_DIFFERENCES: usize = 10_000;

/// Differing keys remembered for the next round; more are counted, not rechecked.
const MAX_TRACKED: usize = 100_000;
/// Budget of key and detail bytes in `first_differences`, so a response stays well under
/// gRPC's default 4 MiB message limit even with long keys.
const MAX_LISTED_BYTES: usize = 1024 * 1024;
/// Elements per paged read (LRANGE, ZRANGE, XRANGE, SSCAN/HSCAN COUNT).
const PAGE: i64 = 500;
/// Bytes per GETRANGE of a string.
const STRING_CHUNK: u64 = 64 * 1024;
/// SCAN COUNT.
const SCAN_COUNT: u64 = 500;
/// Keys compared at the same time: requests pipeline on the multiplexed connections, so
/// a WAN round trip is paid once per batch rather than once per key.
const CONCURRENCY: usize = 128;
/// MOVED/ASK redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Bytes of a value shown in a difference's detail.
const PREVIEW_BYTES: usize = 48;

/// Tuning of one verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Differences listed in the response (the count covers all of them).
    pub max_differences: usize,
    /// Rounds; after the first, only keys that differed are compared again.
    pub rounds: u32,
    /// Keys read per second on each side.
    pub max_keys_per_second: u32,
    /// Allowed difference of the two PTTLs, in ms.
    pub ttl_tolerance_ms: u64,
    /// Above this many elements (string: 64 KiB chunks), only lengths are compared.
    pub big_key_elements: u64,
    /// Wait before each round after the first.
    pub round_delay: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            max_differences: 100,
            rounds: 3,
            max_keys_per_second: 10_000,
            ttl_tolerance_ms: 2000,
            big_key_elements: 10_000,
            round_delay: Duration::from_secs(1),
        }
    }
}

impl VerifyOptions {
    /// The options a `VerifyTask` request asks for; 0 means the default.
    pub fn from_request(req: &VerifyTaskRequest) -> Self {
        let d = Self::default();
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        Self {
            max_differences: if req.max_differences == 0 {
                d.max_differences
            } else {
                usize::try_from(req.max_differences)
                    .unwrap_or(usize::MAX)
                    .min(MAX_LISTED_DIFFERENCES)
            },
            rounds: or(req.rounds, d.rounds),
            max_keys_per_second: or(req.max_keys_per_second, d.max_keys_per_second),
            ttl_tolerance_ms: if req.ttl_tolerance_ms == 0 {
                d.ttl_tolerance_ms
            } else {
                u64::from(req.ttl_tolerance_ms)
            },
            big_key_elements: d.big_key_elements,
            round_delay: d.round_delay,
        }
    }
}

/// One end of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source deployment.
    Source,
    /// The destination deployment.
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Why a verification could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The task's spec cannot be verified as written (no endpoint, a db mapping a
    /// cluster cannot hold, TLS not supported by this build, a malformed address).
    #[error("the task cannot be verified: {0}")]
    Spec(String),
    /// A side cannot be reached, dropped the connection, or cannot answer right now
    /// (`LOADING`, `BUSY`, `CLUSTERDOWN`, ...).
    #[error("{side} {address} is unavailable: {message}")]
    Unavailable {
        /// Which side.
        side: Side,
        /// Node address.
        address: String,
        /// What happened.
        message: String,
    },
    /// A side refused the task's credentials or lacks a permission verification needs.
    #[error("{side} {address} refused the task's credentials: {message}")]
    Auth {
        /// Which side.
        side: Side,
        /// Node address.
        address: String,
        /// What the server said.
        message: String,
    },
    /// A side answered something verification cannot work with (a disabled or renamed
    /// command, an unexpected reply, a cluster whose slots are not all served).
    #[error("{side} {address}: {message}")]
    Redis {
        /// Which side.
        side: Side,
        /// Node address.
        address: String,
        /// What happened.
        message: String,
    },
}

impl VerifyError {
    /// The side the error is about, when it is about one.
    pub fn side(&self) -> Option<Side> {
        match self {
            VerifyError::Spec(_) => None,
            VerifyError::Unavailable { side, .. }
            | VerifyError::Auth { side, .. }
            | VerifyError::Redis { side, .. } => Some(*side),
        }
    }

    /// The gRPC code `VerifyTask` answers with.
    pub fn code(&self) -> tonic::Code {
        match self {
            VerifyError::Unavailable { .. } => tonic::Code::Unavailable,
            VerifyError::Spec(_) | VerifyError::Auth { .. } | VerifyError::Redis { .. } => {
                tonic::Code::FailedPrecondition
            }
        }
    }
}

impl From<VerifyError> for tonic::Status {
    fn from(e: VerifyError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Compares source and destination of task `task_id` as described in the module docs.
pub async fn verify(
    task_id: &str,
    spec: &TaskSpec,
    options: VerifyOptions,
) -> Result<VerifyTaskResponse, VerifyError> {
    let defaults = VerifyOptions::default();
    let options = VerifyOptions {
        max_differences: options.max_differences.min(MAX_LISTED_DIFFERENCES),
        rounds: options.rounds.max(1),
        max_keys_per_second: if options.max_keys_per_second == 0 {
            defaults.max_keys_per_second
        } else {
            options.max_keys_per_second
        },
        ..options
    };
    let source_ep = spec
        .source
        .as_ref()
        .ok_or_else(|| VerifyError::Spec("spec.source is not set".into()))?;
    let dest_ep = spec
        .destination
        .as_ref()
        .ok_or_else(|| VerifyError::Spec("spec.destination is not set".into()))?;
    let (source, dest) = tokio::try_join!(
        Deployment::open(Side::Source, source_ep, options.max_keys_per_second),
        Deployment::open(Side::Destination, dest_ep, options.max_keys_per_second),
    )?;
    let plan = Plan::new(spec, &source, &dest)?;
    let prefix = spec
        .heartbeat
        .as_ref()
        .map(|h| h.key_prefix.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(task::DEFAULT_HEARTBEAT_PREFIX);
    let run = Run {
        source,
        dest,
        plan,
        options,
        heartbeat: format!("{prefix}:{task_id}").into_bytes(),
        heartbeat_prefix: format!("{prefix}:").into_bytes(),
        module_keys: AtomicU64::new(0),
    };
    let response = run.run(task_id).await?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Which databases are compared.

/// Source db → destination db pairs to compare.
#[derive(Debug)]
struct Plan {
    /// Every (source db, destination db) of the task, whether or not it holds keys.
    pairs: Vec<(u32, u32)>,
    /// Pairs whose source db holds keys: scanned on the source.
    forward: Vec<(u32, u32)>,
    /// Destination dbs holding keys that some selected source db maps to: scanned on
    /// the destination, with those source dbs.
    backward: Vec<(u32, Vec<u32>)>,
}

impl Plan {
    fn new(spec: &TaskSpec, source: &Deployment, dest: &Deployment) -> Result<Self, VerifyError> {
        let explicit = !spec.databases.is_empty();
        let candidates: BTreeSet<u32> = if explicit {
            spec.databases.iter().copied().collect()
        } else {
            (0..task::DATABASES)
                .chain(source.keyspace.iter().copied())
                .collect()
        };
        let map = DbMap::new(&spec.databases, &spec.db_mapping, dest.is_cluster());
        let mut pairs = Vec::new();
        for s in candidates {
            if source.is_cluster() && s != 0 {
                // A cluster has only db 0; nothing can be in another one.
                continue;
            }
            match map.target(s) {
                Ok(Some(d)) => pairs.push((s, d)),
                Ok(None) => {}
                // Only an error when the database matters: chosen by the operator, or
                // holding keys on the source.
                Err(e) if explicit || source.keyspace.contains(&s) => {
                    return Err(VerifyError::Spec(e.to_string()));
                }
                Err(_) => {}
            }
        }
        let forward = pairs
            .iter()
            .copied()
            .filter(|(s, _)| source.keyspace.contains(s))
            .collect();
        let mut by_target: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for &(s, d) in &pairs {
            by_target.entry(d).or_default().push(s);
        }
        let backward = by_target
            .into_iter()
            .filter(|(d, _)| dest.keyspace.contains(d))
            .collect();
        Ok(Self {
            pairs,
            forward,
            backward,
        })
    }

    /// Source dbs that land in destination db `d`.
    fn sources_of(&self, d: u32) -> impl Iterator<Item = u32> + '_ {
        self.pairs.iter().filter(move |p| p.1 == d).map(|p| p.0)
    }
}

// ---------------------------------------------------------------------------------------
// One side: its nodes, connections, slot map and rate limit.

/// Keys-per-second limit of one side: a token bucket holding at most a tenth of a
/// second's worth, so reads are spread evenly.
struct RateLimiter {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        let capacity = (rate / 10.0).max(1.0);
        Self {
            rate,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let (tokens, last) = *state;
                let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate)
                    .min(self.capacity);
                if tokens >= 1.0 {
                    *state = (tokens - 1.0, now);
                    return;
                }
                *state = (tokens, now);
                Duration::from_secs_f64((1.0 - tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A standalone server or a cluster, as seen by verification.
struct Deployment {
    side: Side,
    endpoint: RedisEndpoint,
    cluster: bool,
    /// Addresses of the masters (one entry for a standalone server).
    nodes: Vec<String>,
    /// Cluster: index into `nodes` of each slot's master.
    owner: Vec<u16>,
    /// Connection of (node, db), opened on first use; None: the db does not exist there.
    conns: tokio::sync::Mutex<HashMap<(usize, u32), Option<MultiplexedConnection>>>,
    /// Connections opened to follow MOVED/ASK, by address.
    redirects: tokio::sync::Mutex<HashMap<String, MultiplexedConnection>>,
    /// Databases holding keys (INFO keyspace, over all masters).
    keyspace: BTreeSet<u32>,
    limiter: RateLimiter,
}

/// A failure while reading one key: the key changed under the read (a difference to
/// check again), or verification cannot go on.
enum Failure {
    Changed(String),
    Stop(VerifyError),
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Self {
        Failure::Stop(e)
    }
}

/// Sorts a client error into unavailable, authentication or other.
fn classify(side: Side, address: &str, e: &redis::RedisError) -> VerifyError {
    let address = address.to_owned();
    let message = e.to_string();
    let code = e.code().unwrap_or("");
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
    {
        VerifyError::Auth {
            side,
            address,
            message,
        }
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            code,
            "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
        )
    {
        VerifyError::Unavailable {
            side,
            address,
            message,
        }
    } else {
        VerifyError::Redis {
            side,
            address,
            message,
        }
    }
}

/// Sorts an error reply the same way; `WRONGTYPE` means the key changed under the read.
fn reply_failure(side: Side, address: &str, e: &redis::ServerError) -> Failure {
    let code = e.code();
    let message = match e.details() {
        Some(d) => format!("{code} {d}"),
        None => code.to_owned(),
    };
    let address = address.to_owned();
    match code {
        "WRONGTYPE" => Failure::Changed(format!("the key changed while it was read ({message})")),
        "NOAUTH" | "WRONGPASS" | "NOPERM" => Failure::Stop(VerifyError::Auth {
            side,
            address,
            message,
        }),
        "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" => {
            Failure::Stop(VerifyError::Unavailable {
                side,
                address,
                message,
            })
        }
        _ => Failure::Stop(VerifyError::Redis {
            side,
            address,
            message,
        }),
    }
}

/// A failure where a changed key cannot be (SCAN, INFO, EXISTS): always an error.
fn stop(side: Side, address: &str, f: Failure) -> VerifyError {
    match f {
        Failure::Stop(e) => e,
        Failure::Changed(message) => VerifyError::Redis {
            side,
            address: address.to_owned(),
            message,
        },
    }
}

/// Runs `cmds` as one pipeline (preceded by ASKING after an ASK redirect); error replies
/// come back as `Value::ServerError` in their place.
async fn pipeline(
    conn: &MultiplexedConnection,
    cmds: &[Cmd],
    asking: bool,
) -> Result<Vec<Value>, redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if asking {
        pipe.cmd("ASKING");
    }
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let mut conn = conn.clone();
    let reply: Value = pipe.query_async(&mut conn).await?;
    let mut values = match reply {
        Value::Array(v) => v,
        other => vec![other],
    };
    if asking && !values.is_empty() {
        values.remove(0);
    }
    Ok(values)
}

/// A MOVED or ASK reply among `values`: (is ASK, address).
fn redirect(values: &[Value]) -> Option<(bool, String)> {
    values.iter().find_map(|v| match v {
        Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK") => {
            let address = e.details()?.split_ascii_whitespace().nth(1)?.to_owned();
            Some((e.code() == "ASK", address))
        }
        _ => None,
    })
}

impl Deployment {
    async fn open(
        side: Side,
        endpoint: &RedisEndpoint,
        keys_per_second: u32,
    ) -> Result<Self, VerifyError> {
        let seed = endpoint.address.clone();
        let cluster = endpoint::is_cluster(endpoint);
        let seed_conn = connect(side, endpoint, &seed).await?;
        let (nodes, owner) = if cluster {
            let reply = one_on(
                side,
                &seed,
                &seed_conn,
                redis::cmd("CLUSTER").arg("NODES").to_owned(),
            )
            .await?;
            let text = into_text(reply).ok_or_else(|| VerifyError::Redis {
                side,
                address: seed.clone(),
                message: "CLUSTER NODES did not answer text".into(),
            })?;
            let (seed_host, _) = endpoint::host_port(&seed)
                .map_err(|e| VerifyError::Spec(format!("{side}: {e}")))?;
            parse_cluster_nodes(&text, &seed_host).map_err(|message| VerifyError::Redis {
                side,
                address: seed.clone(),
                message,
            })?
        } else {
            (vec![seed.clone()], Vec::new())
        };
        let mut conns = HashMap::new();
        let mut keyspace = BTreeSet::new();
        for (i, address) in nodes.iter().enumerate() {
            let conn = if *address == seed {
                seed_conn.clone()
            } else {
                connect(side, endpoint, address).await?
            };
            let info = one_on(
                side,
                address,
                &conn,
                redis::cmd("INFO").arg("keyspace").to_owned(),
            )
            .await?;
            let text = into_text(info).unwrap_or_default();
            keyspace.extend(parse_keyspace(&text));
            conns.insert((i, 0), Some(conn));
        }
        Ok(Self {
            side,
            endpoint: endpoint.clone(),
            cluster,
            nodes,
            owner,
            conns: tokio::sync::Mutex::new(conns),
            redirects: tokio::sync::Mutex::new(HashMap::new()),
            keyspace,
            limiter: RateLimiter::new(keys_per_second),
        })
    }

    fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn node_of(&self, key: &[u8]) -> usize {
        if self.owner.is_empty() {
            return 0;
        }
        self.owner
            .get(usize::from(cluster::key_slot(key)))
            .map_or(0, |o| usize::from(*o))
    }

    /// The connection to `db` on `node`, opened on first use (a connection of its own per
    /// db: SELECT once, never shared), or None when the server has no such db (a cluster
    /// has only db 0; a standalone server has `databases` of them).
    async fn conn(
        &self,
        node: usize,
        db: u32,
    ) -> Result<(&str, Option<MultiplexedConnection>), VerifyError> {
        let address = self
            .nodes
            .get(node)
            .map_or(self.endpoint.address.as_str(), String::as_str);
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&(node, db)) {
            return Ok((address, c.clone()));
        }
        let conn = if self.cluster {
            None
        } else {
            let conn = connect(self.side, &self.endpoint, address).await?;
            let mut values = pipeline(&conn, &[redis::cmd("SELECT").arg(db).to_owned()], false)
                .await
                .map_err(|e| classify(self.side, address, &e))?;
            match values.pop() {
                Some(Value::ServerError(e))
                    if e.details().is_some_and(|d| {
                        d.contains("out of range") || d.contains("invalid DB index")
                    }) =>
                {
                    None
                }
                Some(Value::ServerError(e)) => {
                    return Err(stop(
                        self.side,
                        address,
                        reply_failure(self.side, address, &e),
                    ));
                }
                _ => Some(conn),
            }
        };
        conns.insert((node, db), conn.clone());
        Ok((address, conn))
    }

    /// The connection to `db` on `node`; an error when the db does not exist.
    async fn db_conn(
        &self,
        node: usize,
        db: u32,
    ) -> Result<(&str, MultiplexedConnection), VerifyError> {
        match self.conn(node, db).await? {
            (address, Some(c)) => Ok((address, c)),
            (address, None) => Err(VerifyError::Redis {
                side: self.side,
                address: address.to_owned(),
                message: format!("db {db} does not exist"),
            }),
        }
    }

    /// False when `db` does not exist on the node of `key` (nothing can be in it).
    async fn has_db(&self, db: u32, key: &[u8]) -> Result<bool, VerifyError> {
        Ok(self.conn(self.node_of(key), db).await?.1.is_some())
    }

    fn unexpected(&self, what: &str, v: &Value) -> Failure {
        Failure::Stop(VerifyError::Redis {
            side: self.side,
            address: self.endpoint.address.clone(),
            message: format!("unexpected reply to {what}: {}", describe(v)),
        })
    }

    async fn redirect_conn(&self, address: &str) -> Result<MultiplexedConnection, VerifyError> {
        let mut map = self.redirects.lock().await;
        if let Some(c) = map.get(address) {
            return Ok(c.clone());
        }
        let conn = connect(self.side, &self.endpoint, address).await?;
        map.insert(address.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Runs `cmds` (all about `key`) in `db` on the node that owns `key`, following
    /// MOVED/ASK in a cluster. Error replies become failures.
    async fn exec(&self, db: u32, key: &[u8], cmds: &[Cmd]) -> Result<Vec<Value>, Failure> {
        let (address, mut conn) = self.db_conn(self.node_of(key), db).await?;
        let mut address = address.to_owned();
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let values = pipeline(&conn, cmds, asking)
                .await
                .map_err(|e| classify(self.side, &address, &e))?;
            if let Some((ask, to)) = redirect(&values).filter(|_| self.cluster) {
                conn = self.redirect_conn(&to).await?;
                address = to;
                asking = ask;
                continue;
            }
            if let Some(e) = values.iter().find_map(|v| match v {
                Value::ServerError(e) => Some(e),
                _ => None,
            }) {
                return Err(reply_failure(self.side, &address, e));
            }
            return Ok(values);
        }
        Err(Failure::Stop(VerifyError::Redis {
            side: self.side,
            address,
            message: format!("more than {MAX_REDIRECTS} MOVED/ASK redirects for one key"),
        }))
    }

    async fn one(&self, db: u32, key: &[u8], cmd: Cmd) -> Result<Value, Failure> {
        let mut values = self.exec(db, key, std::slice::from_ref(&cmd)).await?;
        Ok(values.pop().unwrap_or(Value::Nil))
    }

    async fn int(&self, db: u32, key: &[u8], cmd: Cmd, what: &str) -> Result<i64, Failure> {
        let v = self.one(db, key, cmd).await?;
        as_int(&v).ok_or_else(|| self.unexpected(what, &v))
    }

    async fn bytes(&self, db: u32, key: &[u8], cmd: Cmd, what: &str) -> Result<Vec<u8>, Failure> {
        let v = self.one(db, key, cmd).await?;
        match v {
            Value::Nil => Ok(Vec::new()),
            v => into_bytes(v).map_err(|v| self.unexpected(what, &v)),
        }
    }

    async fn array(
        &self,
        db: u32,
        key: &[u8],
        cmd: Cmd,
        what: &str,
    ) -> Result<Vec<Value>, Failure> {
        let v = self.one(db, key, cmd).await?;
        into_array(v).map_err(|v| self.unexpected(what, &v))
    }

    /// (type, PTTL) of `key`, or None when it does not exist.
    async fn head(&self, db: u32, key: &[u8]) -> Result<Option<(String, i64)>, Failure> {
        if !self.has_db(db, key).await? {
            return Ok(None);
        }
        let values = self
            .exec(db, key, &[key_cmd("TYPE", key), key_cmd("PTTL", key)])
            .await?;
        let mut it = values.into_iter();
        let (Some(t), Some(ttl)) = (it.next(), it.next()) else {
            return Err(self.unexpected("TYPE/PTTL", &Value::Nil));
        };
        let kind = match into_text(t) {
            Some(k) => k,
            None => return Err(self.unexpected("TYPE", &Value::Nil)),
        };
        let pttl = as_int(&ttl).ok_or_else(|| self.unexpected("PTTL", &ttl))?;
        // -2: gone between the two commands (expired).
        Ok((kind != "none" && pttl != -2).then_some((kind, pttl)))
    }

    async fn exists(&self, db: u32, key: &[u8]) -> Result<bool, VerifyError> {
        if !self.has_db(db, key).await? {
            return Ok(false);
        }
        match self.int(db, key, key_cmd("EXISTS", key), "EXISTS").await {
            Ok(n) => Ok(n > 0),
            Err(f) => Err(stop(self.side, &self.endpoint.address, f)),
        }
    }

    /// One SCAN step on one node.
    async fn scan(
        &self,
        node: usize,
        db: u32,
        cursor: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), VerifyError> {
        let (address, conn) = self.db_conn(node, db).await?;
        let v = one_on(
            self.side,
            address,
            &conn,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned(),
        )
        .await?;
        parse_scan(v).ok_or_else(|| VerifyError::Redis {
            side: self.side,
            address: address.to_owned(),
            message: "SCAN answered something else than [cursor, keys]".into(),
        })
    }
}

async fn connect(
    side: Side,
    endpoint: &RedisEndpoint,
    address: &str,
) -> Result<MultiplexedConnection, VerifyError> {
    endpoint::connect_node(endpoint, address)
        .await
        .map_err(|e| match e {
            endpoint::EndpointError::Redis { address, source } => classify(side, &address, &source),
            other => VerifyError::Spec(format!("{side}: {other}")),
        })
}

/// One command on one connection, outside key routing (SCAN, INFO, CLUSTER NODES).
async fn one_on(
    side: Side,
    address: &str,
    conn: &MultiplexedConnection,
    cmd: Cmd,
) -> Result<Value, VerifyError> {
    let mut values = pipeline(conn, std::slice::from_ref(&cmd), false)
        .await
        .map_err(|e| classify(side, address, &e))?;
    match values.pop() {
        Some(Value::ServerError(e)) => Err(stop(side, address, reply_failure(side, address, &e))),
        Some(v) => Ok(v),
        None => Ok(Value::Nil),
    }
}

/// Every key of `db` on one node, SCAN page by SCAN page (one page held at a time).
fn scan_keys(
    dep: &Deployment,
    node: usize,
    db: u32,
) -> impl Stream<Item = Result<Vec<u8>, VerifyError>> + '_ {
    stream::try_unfold(Some(0u64), move |cursor| async move {
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        let (next, keys) = dep.scan(node, db, cursor).await?;
        let page = stream::iter(keys.into_iter().map(Ok::<_, VerifyError>));
        Ok(Some((page, (next != 0).then_some(next))))
    })
    .try_flatten()
}

fn key_cmd(name: &str, key: &[u8]) -> Cmd {
    let mut c = redis::cmd(name);
    c.arg(key);
    c
}

// ---------------------------------------------------------------------------------------
// Replies.

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn into_bytes(v: Value) -> Result<Vec<u8>, Value> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(other),
    }
}

fn into_text(v: Value) -> Option<String> {
    into_bytes(v)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// An array, a set, or a map flattened to [k, v, k, v, ...]; nil is empty.
fn into_array(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Nil => Ok(Vec::new()),
        other => Err(other),
    }
}

/// A short description of a reply for error messages (never the whole value).
fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Int(i) => format!("integer {i}"),
        Value::BulkString(b) => format!("bulk string {}", preview(b)),
        Value::SimpleString(s) => format!("status {}", preview(s.as_bytes())),
        Value::Okay => "OK".into(),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::Map(m) => format!("map of {}", m.len()),
        Value::Set(s) => format!("set of {}", s.len()),
        Value::Double(d) => format!("double {d}"),
        Value::ServerError(e) => format!("error {}", e.code()),
        _ => "another reply type".into(),
    }
}

/// Up to PREVIEW_BYTES of `b`, quoted, with the full length when cut.
fn preview(b: &[u8]) -> String {
    if b.len() <= PREVIEW_BYTES {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!(
            "{:?}… ({} bytes)",
            String::from_utf8_lossy(b.get(..PREVIEW_BYTES).unwrap_or(b)),
            b.len()
        )
    }
}

fn parse_scan(v: Value) -> Option<(u64, Vec<Vec<u8>>)> {
    let mut items = into_array(v).ok()?.into_iter();
    let cursor = match items.next()? {
        Value::Int(i) => u64::try_from(i).ok()?,
        v => std::str::from_utf8(&into_bytes(v).ok()?)
            .ok()?
            .trim()
            .parse()
            .ok()?,
    };
    let keys = into_array(items.next()?)
        .ok()?
        .into_iter()
        .filter_map(|k| into_bytes(k).ok())
        .collect();
    Some((cursor, keys))
}

/// Databases with keys in an `INFO keyspace` text (`db3:keys=12,expires=0,...`).
fn parse_keyspace(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|line| {
            let (db, rest) = line.trim().strip_prefix("db")?.split_once(':')?;
            let keys = rest.split(',').find_map(|kv| kv.strip_prefix("keys="))?;
            if keys.parse::<u64>().ok()? == 0 {
                return None;
            }
            db.parse().ok()
        })
        .collect()
}

/// Masters and slot owners from a `CLUSTER NODES` text: (addresses, owner of each slot).
/// `seed_host` stands in for a master announced without a host. Every key read is routed
/// by this table, so a slot without a master is an error rather than a hole.
fn parse_cluster_nodes(text: &str, seed_host: &str) -> Result<(Vec<String>, Vec<u16>), String> {
    let nodes = cluster::parse_nodes(text, seed_host).map_err(|e| e.to_string())?;
    let mut masters: Vec<String> = Vec::new();
    let mut owner = vec![u16::MAX; usize::from(cluster::SLOTS)];
    for node in nodes.into_iter().filter(ClusterNode::serves_slots) {
        let index = u16::try_from(masters.len()).map_err(|_| "too many masters".to_owned())?;
        for range in &node.slots {
            owner[usize::from(range.start)..=usize::from(range.end)].fill(index);
        }
        masters.push(node.addr);
    }
    if let Some(slot) = owner.iter().position(|o| *o == u16::MAX) {
        return Err(format!(
            "slot {slot} is not served by any master (the cluster is not fully covered)"
        ));
    }
    Ok((masters, owner))
}

/// The stream id right after `id` ("ms-seq"), for an XRANGE page start before 6.2's `(`.
fn next_stream_id(id: &[u8]) -> Option<String> {
    let (ms, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
    let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
    match seq.checked_add(1) {
        Some(seq) => Some(format!("{ms}-{seq}")),
        None => Some(format!("{}-0", ms.checked_add(1)?)),
    }
}

/// A zset score as the exact double Redis holds (text reply: Rust's parse, `inf`/`-inf`).
fn score(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::SimpleString(s) => s.trim().parse().ok(),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// Member/score pairs of a ZRANGE WITHSCORES reply (flat in RESP2, nested in RESP3).
fn score_pairs(items: Vec<Value>) -> Option<Vec<(Vec<u8>, f64)>> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter().peekable();
    while let Some(first) = it.next() {
        let (member, s) = match first {
            Value::Array(pair) => {
                let mut p = pair.into_iter();
                (p.next()?, p.next()?)
            }
            member => (member, it.next()?),
        };
        out.push((into_bytes(member).ok()?, score(&s)?));
    }
    Some(out)
}

/// True when the two PTTLs (-1: none) differ by more than `tolerance` ms.
pub fn ttl_differs(source: i64, destination: i64, tolerance: u64) -> bool {
    match (source >= 0, destination >= 0) {
        (false, false) => false,
        (true, true) => source.abs_diff(destination) > tolerance,
        _ => true,
    }
}

fn pttl_text(pttl: i64) -> String {
    if pttl < 0 {
        "-1 (no TTL)".into()
    } else {
        format!("{pttl} ms")
    }
}

fn first_mismatch(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

// ---------------------------------------------------------------------------------------
// The comparison.

/// A difference with the destination db it was found in, for the next round.
struct Found {
    dest_db: u32,
    diff: Difference,
}

/// Differences of one round, bounded.
#[derive(Default)]
struct Tracker {
    found: Vec<Found>,
    seen: HashSet<(u32, Vec<u8>)>,
    /// Differences beyond MAX_TRACKED: counted, not rechecked nor listed.
    overflow: u64,
}

impl Tracker {
    fn add(&mut self, f: Found) {
        if self.found.len() >= MAX_TRACKED {
            self.overflow += 1;
        } else if self.seen.insert((f.diff.db, f.diff.key.clone())) {
            self.found.push(f);
        }
    }
}

struct Run {
    source: Deployment,
    dest: Deployment,
    plan: Plan,
    options: VerifyOptions,
    /// `<prefix>:<task id>`.
    heartbeat: Vec<u8>,
    /// `<prefix>:`, common to the heartbeats of every task.
    heartbeat_prefix: Vec<u8>,
    module_keys: AtomicU64,
}

type Outcome = Result<Option<String>, Failure>;

impl Run {
    fn is_heartbeat(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.heartbeat.as_slice())
            .is_some_and(|rest| rest.is_empty() || rest.first() == Some(&b':'))
    }

    /// A key the tool writes (checkpoint or heartbeat), for whichever task.
    fn is_tool_key(&self, key: &[u8]) -> bool {
        key.starts_with(OWN_KEY_PREFIX) || key.starts_with(&self.heartbeat_prefix)
    }

    fn is_big(&self, elements: i64) -> bool {
        u64::try_from(elements).unwrap_or(0) > self.options.big_key_elements
    }

    async fn run(&self, task_id: &str) -> Result<VerifyTaskResponse, VerifyError> {
        let started = Instant::now();
        let mut tracker = Tracker::default();
        let mut source_keys = 0u64;
        let mut destination_keys = 0u64;

        for &(s, d) in &self.plan.forward {
            for node in 0..self.source.nodes.len() {
                let mut results = std::pin::pin!(
                    scan_keys(&self.source, node, s)
                        .try_filter(|k| future::ready(!self.is_heartbeat(k)))
                        .map(|key| async move {
                            let key = key?;
                            self.source.limiter.acquire().await;
                            self.dest.limiter.acquire().await;
                            self.compare(s, d, key).await
                        })
                        .buffer_unordered(CONCURRENCY)
                );
                while let Some(r) = results.next().await {
                    source_keys += 1;
                    if let Some(f) = r? {
                        tracker.add(f);
                    }
                }
            }
        }

        for (d, sources) in &self.plan.backward {
            let d = *d;
            let Some(&first) = sources.first() else {
                continue;
            };
            for node in 0..self.dest.nodes.len() {
                let mut results = std::pin::pin!(
                    scan_keys(&self.dest, node, d)
                        .try_filter(|k| { future::ready(!self.is_tool_key(k)) })
                        .map(|key| async move {
                            let key = key?;
                            self.dest.limiter.acquire().await;
                            self.source.limiter.acquire().await;
                            for s in sources {
                                if self.source.exists(*s, &key).await? {
                                    return Ok(None);
                                }
                            }
                            let detail = "on the destination, not on the source".to_owned();
                            Ok::<_, VerifyError>(Some(Found {
                                dest_db: d,
                                diff: difference(first, key, DifferenceKind::Extra, detail),
                            }))
                        })
                        .buffer_unordered(CONCURRENCY)
                );
                while let Some(r) = results.next().await {
                    destination_keys += 1;
                    if let Some(f) = r? {
                        tracker.add(f);
                    }
                }
            }
        }
        tracing::info!(
            task = task_id,
            source_keys,
            destination_keys,
            differing = tracker.found.len() as u64 + tracker.overflow,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "verification round 1 done"
        );

        for round in 2..=self.options.rounds {
            if tracker.found.is_empty() {
                break;
            }
            tokio::time::sleep(self.options.round_delay).await;
            let previous = std::mem::take(&mut tracker.found);
            tracker.seen.clear();
            let results: Vec<_> = stream::iter(previous)
                .map(|f| async move {
                    self.source.limiter.acquire().await;
                    self.dest.limiter.acquire().await;
                    self.compare(f.diff.db, f.dest_db, f.diff.key).await
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for r in results {
                if let Some(f) = r? {
                    tracker.add(f);
                }
            }
            tracing::info!(
                task = task_id,
                round,
                differing = tracker.found.len() as u64 + tracker.overflow,
                "verification round done"
            );
        }

        let modules = self.module_keys.load(Ordering::Relaxed);
        if modules > 0 {
            tracing::warn!(
                task = task_id,
                keys = modules,
                "keys of module types were compared by type and TTL only"
            );
        }
        let differences = tracker.found.len() as u64 + tracker.overflow;
        let mut found: Vec<Difference> = tracker.found.into_iter().map(|f| f.diff).collect();
        found.sort_by(|a, b| (a.db, &a.key, a.kind).cmp(&(b.db, &b.key, b.kind)));
        let mut budget = MAX_LISTED_BYTES;
        let mut first_differences = Vec::new();
        for d in found.into_iter().take(self.options.max_differences) {
            let size = d.key.len() + d.detail.len();
            if size > budget {
                break;
            }
            budget -= size;
            first_differences.push(d);
        }
        tracing::info!(
            task = task_id,
            differences,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "verification done"
        );
        Ok(VerifyTaskResponse {
            source_keys,
            destination_keys,
            differences,
            first_differences,
        })
    }

    /// Compares `key` of source db `s` with destination db `d`, both ways.
    async fn compare(&self, s: u32, d: u32, key: Vec<u8>) -> Result<Option<Found>, VerifyError> {
        let found = |kind, detail: String| {
            Some(Found {
                dest_db: d,
                diff: difference(s, key.clone(), kind, detail),
            })
        };
        if self.is_tool_key(&key) {
            return Ok(match self.dest.exists(d, &key).await? {
                true => None,
                false => found(
                    DifferenceKind::Missing,
                    "the tool's key of another task, on the source only".to_owned(),
                ),
            });
        }
        let heads = tokio::try_join!(self.source.head(s, &key), self.dest.head(d, &key));
        let (src, dst) = match heads {
            Ok(h) => h,
            Err(Failure::Changed(m)) => return Ok(found(DifferenceKind::Value, m)),
            Err(Failure::Stop(e)) => return Err(e),
        };
        match (src, dst) {
            (None, None) => Ok(None),
            (Some((kind, _)), None) => Ok(found(
                DifferenceKind::Missing,
                format!("{kind} on the source, not on the destination"),
            )),
            (None, Some((kind, _))) => {
                // Another selected source db landing in `d` may hold it.
                for other in self.plan.sources_of(d).filter(|o| *o != s) {
                    if self.source.exists(other, &key).await? {
                        return Ok(None);
                    }
                }
                Ok(found(
                    DifferenceKind::Extra,
                    format!("{kind} on the destination, not on the source"),
                ))
            }
            (Some((a, _)), Some((b, _))) if a != b => Ok(found(
                DifferenceKind::Type,
                format!("source {a}, destination {b}"),
            )),
            (Some((kind, ttl_a)), Some((_, ttl_b))) => {
                let outcome = match kind.as_str() {
                    "string" => self.compare_string(s, d, &key).await,
                    "list" => self.compare_list(s, d, &key).await,
                    "set" => self.compare_set(s, d, &key).await,
                    "hash" => self.compare_hash(s, d, &key).await,
                    "zset" => self.compare_zset(s, d, &key).await,
                    "stream" => self.compare_stream(s, d, &key).await,
                    module => {
                        self.module_keys.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(key = %String::from_utf8_lossy(&key), kind = module, "module type: value not compared");
                        Ok(None)
                    }
                };
                match outcome {
                    Ok(Some(detail)) | Err(Failure::Changed(detail)) => {
                        Ok(found(DifferenceKind::Value, detail))
                    }
                    Err(Failure::Stop(e)) => Err(e),
                    Ok(None) if ttl_differs(ttl_a, ttl_b, self.options.ttl_tolerance_ms) => {
                        Ok(found(
                            DifferenceKind::Ttl,
                            format!(
                                "source PTTL {}, destination PTTL {}",
                                pttl_text(ttl_a),
                                pttl_text(ttl_b)
                            ),
                        ))
                    }
                    Ok(None) => Ok(None),
                }
            }
        }
    }

    /// Lengths of `key` on both sides with `cmd` (STRLEN, LLEN, ...).
    async fn lengths(&self, s: u32, d: u32, key: &[u8], cmd: &str) -> Result<(i64, i64), Failure> {
        tokio::try_join!(
            self.source.int(s, key, key_cmd(cmd, key), cmd),
            self.dest.int(d, key, key_cmd(cmd, key), cmd)
        )
    }

    async fn compare_string(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "STRLEN").await?;
        if la != lb {
            return Ok(Some(format!("length {la} vs {lb} bytes")));
        }
        let len = u64::try_from(la).unwrap_or(0);
        if len.div_ceil(STRING_CHUNK) > self.options.big_key_elements {
            return Ok(None);
        }
        let mut start = 0u64;
        while start < len {
            let end = (start + STRING_CHUNK).min(len) - 1;
            let range = |k: &[u8]| redis::cmd("GETRANGE").arg(k).arg(start).arg(end).to_owned();
            let (a, b) = tokio::try_join!(
                self.source.bytes(s, key, range(key), "GETRANGE"),
                self.dest.bytes(d, key, range(key), "GETRANGE")
            )?;
            if a != b {
                let at = first_mismatch(&a, &b);
                return Ok(Some(if len as usize <= PREVIEW_BYTES {
                    format!("source {}, destination {}", preview(&a), preview(&b))
                } else {
                    format!(
                        "bytes differ from offset {}: source {}, destination {}",
                        start + at as u64,
                        preview(a.get(at..).unwrap_or_default()),
                        preview(b.get(at..).unwrap_or_default())
                    )
                }));
            }
            if a.is_empty() {
                break;
            }
            start = end + 1;
        }
        Ok(None)
    }

    async fn compare_list(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "LLEN").await?;
        if la != lb {
            return Ok(Some(format!("length {la} vs {lb}")));
        }
        if self.is_big(la) {
            return Ok(None);
        }
        let mut index = 0i64;
        while index < la {
            let range = |k: &[u8]| {
                redis::cmd("LRANGE")
                    .arg(k)
                    .arg(index)
                    .arg(index.saturating_add(PAGE - 1))
                    .to_owned()
            };
            let (a, b) = tokio::try_join!(
                self.source.array(s, key, range(key), "LRANGE"),
                self.dest.array(d, key, range(key), "LRANGE")
            )?;
            let n = a.len();
            if n != b.len() {
                return Err(Failure::Changed(
                    "the list changed while it was read".into(),
                ));
            }
            for (i, (x, y)) in a.into_iter().zip(b).enumerate() {
                if x != y {
                    let show = |v: Value| {
                        into_bytes(v)
                            .map(|b| preview(&b))
                            .unwrap_or_else(|v| describe(&v))
                    };
                    return Ok(Some(format!(
                        "element {}: source {}, destination {}",
                        index + i as i64,
                        show(x),
                        show(y)
                    )));
                }
            }
            if n == 0 {
                break;
            }
            index += n as i64;
        }
        Ok(None)
    }

    async fn compare_set(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "SCARD").await?;
        if la != lb {
            return Ok(Some(format!("{la} vs {lb} members")));
        }
        if self.is_big(la) {
            return Ok(None);
        }
        // Same size and every source member on the destination: the same set.
        let mut cursor = 0u64;
        loop {
            let page = self
                .source
                .one(
                    s,
                    key,
                    redis::cmd("SSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PAGE)
                        .to_owned(),
                )
                .await?;
            let (next, members) =
                parse_scan(page).ok_or_else(|| self.source.unexpected("SSCAN", &Value::Nil))?;
            if !members.is_empty() {
                let checks: Vec<Cmd> = members
                    .iter()
                    .map(|m| {
                        redis::cmd("SISMEMBER")
                            .arg(key)
                            .arg(m.as_slice())
                            .to_owned()
                    })
                    .collect();
                let answers = self.dest.exec(d, key, &checks).await?;
                for (m, v) in members.iter().zip(answers) {
                    if as_int(&v) != Some(1) {
                        return Ok(Some(format!(
                            "member {} is not on the destination",
                            preview(m)
                        )));
                    }
                }
            }
            if next == 0 {
                return Ok(None);
            }
            cursor = next;
        }
    }

    async fn compare_hash(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "HLEN").await?;
        if la != lb {
            return Ok(Some(format!("{la} vs {lb} fields")));
        }
        if self.is_big(la) {
            return Ok(None);
        }
        let mut cursor = 0u64;
        loop {
            let page = self
                .source
                .one(
                    s,
                    key,
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PAGE)
                        .to_owned(),
                )
                .await?;
            let (next, flat) =
                parse_scan(page).ok_or_else(|| self.source.unexpected("HSCAN", &Value::Nil))?;
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = {
                let mut it = flat.into_iter();
                std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
            };
            if !pairs.is_empty() {
                let mut get = redis::cmd("HMGET");
                get.arg(key);
                for (f, _) in &pairs {
                    get.arg(f.as_slice());
                }
                let values = self.dest.array(d, key, get, "HMGET").await?;
                if values.len() != pairs.len() {
                    return Err(self.dest.unexpected("HMGET", &Value::Array(values)));
                }
                for ((field, a), b) in pairs.iter().zip(values) {
                    match b {
                        Value::Nil => {
                            return Ok(Some(format!(
                                "field {} is not on the destination",
                                preview(field)
                            )));
                        }
                        b => {
                            let b = into_bytes(b).map_err(|v| self.dest.unexpected("HMGET", &v))?;
                            if *a != b {
                                return Ok(Some(format!(
                                    "field {}: source {}, destination {}",
                                    preview(field),
                                    preview(a),
                                    preview(&b)
                                )));
                            }
                        }
                    }
                }
            }
            if next == 0 {
                return Ok(None);
            }
            cursor = next;
        }
    }

    async fn compare_zset(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "ZCARD").await?;
        if la != lb {
            return Ok(Some(format!("{la} vs {lb} members")));
        }
        if self.is_big(la) {
            return Ok(None);
        }
        // Both sides are ordered by (score, member): equal sets give equal pages.
        let mut rank = 0i64;
        while rank < la {
            let range = |k: &[u8]| {
                redis::cmd("ZRANGE")
                    .arg(k)
                    .arg(rank)
                    .arg(rank.saturating_add(PAGE - 1))
                    .arg("WITHSCORES")
                    .to_owned()
            };
            let (a, b) = tokio::try_join!(
                self.source.array(s, key, range(key), "ZRANGE"),
                self.dest.array(d, key, range(key), "ZRANGE")
            )?;
            let a = score_pairs(a)
                .ok_or_else(|| self.source.unexpected("ZRANGE WITHSCORES", &Value::Nil))?;
            let b = score_pairs(b)
                .ok_or_else(|| self.dest.unexpected("ZRANGE WITHSCORES", &Value::Nil))?;
            let n = a.len();
            if n != b.len() {
                return Err(Failure::Changed(
                    "the sorted set changed while it was read".into(),
                ));
            }
            for (i, ((ma, sa), (mb, sb))) in a.into_iter().zip(b).enumerate() {
                if ma != mb {
                    return Ok(Some(format!(
                        "rank {}: source member {} (score {sa}), destination member {} (score {sb})",
                        rank + i as i64,
                        preview(&ma),
                        preview(&mb)
                    )));
                }
                if sa.to_bits() != sb.to_bits() {
                    return Ok(Some(format!(
                        "member {}: score {sa:?} vs {sb:?}",
                        preview(&ma)
                    )));
                }
            }
            if n == 0 {
                break;
            }
            rank += n as i64;
        }
        Ok(None)
    }

    async fn compare_stream(&self, s: u32, d: u32, key: &[u8]) -> Outcome {
        let (la, lb) = self.lengths(s, d, key, "XLEN").await?;
        if la != lb {
            return Ok(Some(format!("{la} vs {lb} entries")));
        }
        let info = |k: &[u8]| redis::cmd("XINFO").arg("STREAM").arg(k).to_owned();
        let (ia, ib) = tokio::try_join!(
            self.source.array(s, key, info(key), "XINFO STREAM"),
            self.dest.array(d, key, info(key), "XINFO STREAM")
        )?;
        let (last_a, last_b) = (
            field_of(ia, "last-generated-id"),
            field_of(ib, "last-generated-id"),
        );
        if last_a != last_b {
            return Ok(Some(format!(
                "last generated id {} vs {}",
                show_opt(&last_a),
                show_opt(&last_b)
            )));
        }
        let groups = |k: &[u8]| redis::cmd("XINFO").arg("GROUPS").arg(k).to_owned();
        let (ga, gb) = tokio::try_join!(
            self.source.array(s, key, groups(key), "XINFO GROUPS"),
            self.dest.array(d, key, groups(key), "XINFO GROUPS")
        )?;
        let (ga, gb) = (group_ids(ga), group_ids(gb));
        if ga != gb {
            let show = |g: &[(Vec<u8>, Vec<u8>)]| {
                g.iter()
                    .map(|(n, id)| {
                        format!(
                            "{}@{}",
                            String::from_utf8_lossy(n),
                            String::from_utf8_lossy(id)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Ok(Some(format!(
                "consumer groups [{}] vs [{}]",
                show(&ga),
                show(&gb)
            )));
        }
        if self.is_big(la) {
            return Ok(None);
        }
        let mut start = "-".to_owned();
        loop {
            let range = |k: &[u8]| {
                redis::cmd("XRANGE")
                    .arg(k)
                    .arg(start.as_str())
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .to_owned()
            };
            let (a, b) = tokio::try_join!(
                self.source.array(s, key, range(key), "XRANGE"),
                self.dest.array(d, key, range(key), "XRANGE")
            )?;
            if a.len() != b.len() {
                return Err(Failure::Changed(
                    "the stream changed while it was read".into(),
                ));
            }
            let mut last_id: Option<Vec<u8>> = None;
            for (x, y) in a.into_iter().zip(b) {
                let (ida, fa) =
                    stream_entry(x).ok_or_else(|| self.source.unexpected("XRANGE", &Value::Nil))?;
                let (idb, fb) =
                    stream_entry(y).ok_or_else(|| self.dest.unexpected("XRANGE", &Value::Nil))?;
                if ida != idb {
                    return Ok(Some(format!(
                        "entry id {} vs {}",
                        String::from_utf8_lossy(&ida),
                        String::from_utf8_lossy(&idb)
                    )));
                }
                if fa != fb {
                    return Ok(Some(format!(
                        "entry {}: fields differ",
                        String::from_utf8_lossy(&ida)
                    )));
                }
                last_id = Some(ida);
            }
            match last_id.and_then(|id| next_stream_id(&id)) {
                Some(next) => start = next,
                None => return Ok(None),
            }
        }
    }
}

fn difference(db: u32, key: Vec<u8>, kind: DifferenceKind, detail: String) -> Difference {
    Difference {
        db,
        key,
        kind: kind as i32,
        detail,
    }
}

fn show_opt(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map_or_else(
        || "none".into(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

/// The value of `name` in a flat [k, v, k, v, ...] reply.
fn field_of(flat: Vec<Value>, name: &str) -> Option<Vec<u8>> {
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if into_text(k).as_deref() == Some(name) {
            return into_bytes(v).ok();
        }
    }
    None
}

/// (name, last-delivered-id) of each group in an XINFO GROUPS reply, sorted.
fn group_ids(groups: Vec<Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = groups
        .into_iter()
        .filter_map(|g| {
            let flat = into_array(g).ok()?;
            let name = field_of(flat.clone(), "name")?;
            let last = field_of(flat, "last-delivered-id").unwrap_or_default();
            Some((name, last))
        })
        .collect();
    out.sort();
    out
}

/// (id, flat fields) of one XRANGE entry.
fn stream_entry(v: Value) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut it = into_array(v).ok()?.into_iter();
    let id = into_bytes(it.next()?).ok()?;
    let fields = into_array(it.next().unwrap_or(Value::Nil))
        .ok()?
        .into_iter()
        .filter_map(|f| into_bytes(f).ok())
        .collect();
    Some((id, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_request() {
        let o = VerifyOptions::from_request(&VerifyTaskRequest::default());
        assert_eq!(o, VerifyOptions::default());
        let o = VerifyOptions::from_request(&VerifyTaskRequest {
            id: "t".into(),
            max_differences: 5,
            rounds: 1,
            max_keys_per_second: 50,
            ttl_tolerance_ms: 10,
        });
        assert_eq!(
            (
                o.max_differences,
                o.rounds,
                o.max_keys_per_second,
                o.ttl_tolerance_ms
            ),
            (5, 1, 50, 10)
        );
        let o = VerifyOptions::from_request(&VerifyTaskRequest {
            max_differences: u32::MAX,
            ..Default::default()
        });
        assert_eq!(o.max_differences, MAX_LISTED_DIFFERENCES);
    }

    #[test]
    fn keyspace_and_cluster_nodes() {
        let ks = parse_keyspace(
            "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb5:keys=1,expires=0,avg_ttl=0\r\ndb7:keys=0,expires=0\r\n",
        );
        assert_eq!(ks, BTreeSet::from([0, 5]));

        let text = "\
a 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
b 127.0.0.1:7000@17000,host myself,master - 0 0 1 connected 0-5460 [5461->-a]
c :7002@17002 master - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave b 0 0 1 connected
";
        let (masters, owner) = parse_cluster_nodes(text, "10.0.0.1").unwrap();
        assert_eq!(
            masters,
            vec!["127.0.0.1:7001", "127.0.0.1:7000", "10.0.0.1:7002"]
        );
        assert_eq!((owner[0], owner[5461], owner[16383]), (1, 0, 2));
        assert!(
            parse_cluster_nodes("a 127.0.0.1:7000 master - 0 0 1 connected 0-100\n", "h")
                .unwrap_err()
                .contains("slot 101")
        );
        assert!(
            parse_cluster_nodes("a 127.0.0.1:7000 master - 0 0 1 connected 0-99999\n", "h")
                .is_err()
        );
    }

    #[test]
    fn small_helpers() {
        assert_eq!(next_stream_id(b"5-3").as_deref(), Some("5-4"));
        assert_eq!(
            next_stream_id(b"5-18446744073709551615").as_deref(),
            Some("6-0")
        );
        assert_eq!(next_stream_id(b"x"), None);
        assert!(!ttl_differs(-1, -1, 0));
        assert!(ttl_differs(-1, 5, 2000));
        assert!(!ttl_differs(10_000, 11_000, 2000));
        assert!(ttl_differs(600_000, 1_200_000, 2000));
        let pairs = score_pairs(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"inf".to_vec()),
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(b"-inf".to_vec()),
        ])
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                (b"a".to_vec(), f64::INFINITY),
                (b"b".to_vec(), f64::NEG_INFINITY)
            ]
        );
        assert_ne!(
            score(&Value::BulkString(b"0.1".to_vec())).map(f64::to_bits),
            score(&Value::BulkString(b"0.10000000000000002".to_vec())).map(f64::to_bits)
        );
        assert_eq!(preview(b"ab"), "\"ab\"");
        assert!(preview(&[b'x'; 100]).ends_with("(100 bytes)"));
    }

    #[tokio::test]
    async fn rate_limiter_spreads_reads() {
        let limiter = RateLimiter::new(200);
        let start = Instant::now();
        for _ in 0..60 {
            limiter.acquire().await;
        }
        // A burst of 20, then 40 more at 200/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(190) && elapsed <= Duration::from_millis(1000),
            "{elapsed:?}"
        );
    }
}
