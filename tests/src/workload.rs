//! A seeded random workload over every replicated write command of the Redis versions the
//! project installs, for the end-to-end suites that check a sync stays equal under all of
//! them (`tests/tests/workloads.rs`).
//!
//! [`Workload::seed_data`] fills the source with every type before a task starts;
//! [`Workload::run`] then issues a randomized stream of operations against it. Every
//! operation of the version's catalogue is issued at least once (the catalogue is walked in
//! a shuffled order first, then operations are drawn by weight), each issued operation is
//! counted, and [`Workload::missing`] names any catalogue entry that never ran, so a test
//! can prove the workload covered all of them instead of hoping so.
//!
//! Operations are generated one at a time against the live source rather than as a list
//! prepared in advance: some valid arguments exist only on the server (the ids `XADD *`
//! chose, the pending entries `XCLAIM` needs, the `DUMP` payload a `RESTORE` takes, the
//! members `SPOP` removed), so a generator reads what it needs first (reads are not
//! replicated and change nothing). The decisions are a pure function of the seed and of
//! what the source answered, so a seed replays the same mix of operations.
//!
//! Validity by construction: a key's name encodes its type (`w:{tag}:list:3`), so no
//! command meets a wrong type; commands that move data between keys (`RENAME`, `COPY`,
//! `SMOVE`, `RPOPLPUSH`, `RESTORE`, `MOVE`, ...) stay within one type; every key of a
//! multi-key command shares a hash tag, so a cluster (or a cluster destination) takes it;
//! TTLs are either absent or at least an hour, so the comparison does not race expiry.
//! Any error reply fails the test with the seed, the operation and the reply.
//!
//! Where Redis versions disagree on what a replicated command does (so that a newer
//! destination, or a native replica of a newer version, ends up different), the generator
//! avoids exactly that case and says why at the place it does: INCRBYFLOAT on keys with a
//! TTL before 6.0, PFMERGE of sparse HyperLogLogs before 4.0, and UNLINK of streams on
//! 6.0.9, which crashes the server itself.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_sync_testkit::RedisVersion::{V2_8, V3_2, V5_0, V6_0, V6_2, V7_0};
use redis_sync_testkit::{Client, RedisCluster, RedisServer, RedisVersion, Reply, wait_until};

/// A command: its name and arguments.
pub type Args = Vec<Vec<u8>>;

/// Environment variable that fixes the seed (otherwise each run draws a new one).
pub const SEED_ENV: &str = "REDIS_SYNC_WORKLOAD_SEED";

/// Builds [`Args`] from anything that is bytes (`&str`, `String`, `Vec<u8>`).
macro_rules! cmd {
    ($($x:expr),* $(,)?) => {
        vec![$(Vec::<u8>::from(AsRef::<[u8]>::as_ref(&$x)),)*]
    };
}

/// The seed from [`SEED_ENV`], or a fresh one from the clock.
pub fn seed_from_env() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not an unsigned integer")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    }
}

/// splitmix64: tiny, fast, and good enough to drive a test.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Where the workload runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A standalone source using these databases (SELECT, MOVE, SWAPDB, COPY … DB and
    /// FLUSHDB among them when there are several).
    Standalone {
        /// Databases written to.
        dbs: Vec<u32>,
    },
    /// A cluster source: db 0 only, keys spread over masters by hash tag.
    Cluster,
}

/// Hash tags of a standalone source: a handful, so multi-key commands find company.
const STANDALONE_TAGS: &[&str] = &["a", "b", "c"];
/// Hash tags of a cluster source: these six land on all three masters of a harness
/// cluster (slots 15495, 3300, 7365, 11298, 15363, 3168).
const CLUSTER_TAGS: &[&str] = &["a", "b", "c", "d", "e", "f"];

/// One key type; the name of every key says which, so commands never meet a wrong type.
/// Integers, floats and other strings are kept apart so `INCR` never meets `"abc"` and
/// `HINCRBY` never meets a float field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    Str,
    Int,
    Float,
    List,
    Hash,
    Set,
    Zset,
    Geo,
    Hll,
    Stream,
}

impl Fam {
    const ALL: [Fam; 10] = [
        Fam::Str,
        Fam::Int,
        Fam::Float,
        Fam::List,
        Fam::Hash,
        Fam::Set,
        Fam::Zset,
        Fam::Geo,
        Fam::Hll,
        Fam::Stream,
    ];

    fn code(self) -> &'static str {
        match self {
            Fam::Str => "str",
            Fam::Int => "int",
            Fam::Float => "flt",
            Fam::List => "list",
            Fam::Hash => "hash",
            Fam::Set => "set",
            Fam::Zset => "zset",
            Fam::Geo => "geo",
            Fam::Hll => "hll",
            Fam::Stream => "strm",
        }
    }

    /// Keys per tag and db: small, so commands hit existing keys often.
    fn size(self) -> u64 {
        match self {
            Fam::Str => 8,
            Fam::Int | Fam::List | Fam::Set | Fam::Zset => 6,
            Fam::Hash => 5,
            Fam::Float | Fam::Hll | Fam::Stream => 4,
            Fam::Geo => 3,
        }
    }

    fn since(self) -> RedisVersion {
        match self {
            Fam::Geo => RedisVersion::V3_2,
            Fam::Stream => RedisVersion::V5_0,
            _ => RedisVersion::V2_8,
        }
    }
}

/// One operation as issued: for failure messages and the history of a key.
#[derive(Debug, Clone)]
pub struct Op {
    /// Catalogue name (`"SET KEEPTTL"`, `"XGROUP CREATE"`, …).
    pub name: &'static str,
    /// Database it runs in.
    pub db: u32,
    /// Hash tag of its keys (routes it on a cluster).
    pub tag: &'static str,
    /// What is sent.
    pub kind: OpKind,
}

/// The shapes an operation takes on the wire.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// One command.
    Command(Args),
    /// MULTI, the commands (each with its catalogue name), EXEC.
    Transaction(Vec<(&'static str, Args)>),
    /// One command on every master (functions and scripts live per node).
    EveryMaster(Args),
    /// A blocking command sent on a second connection while its keys are empty, then
    /// served by `push` on the main connection.
    Blocked {
        /// The blocking command.
        block: Args,
        /// The write that serves it.
        push: (&'static str, Args),
    },
}

fn show_args(f: &mut fmt::Formatter<'_>, args: &[Vec<u8>]) -> fmt::Result {
    const SHOWN: usize = 16;
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        if i == SHOWN {
            return write!(f, "… ({} more arguments)", args.len() - SHOWN);
        }
        if a.len() > 64 {
            write!(f, "<{} bytes>", a.len())?;
        } else {
            write!(f, "{}", a.escape_ascii())?;
        }
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[db {}] ", self.db)?;
        match &self.kind {
            OpKind::Command(a) => show_args(f, a),
            OpKind::EveryMaster(a) => {
                f.write_str("(every master) ")?;
                show_args(f, a)
            }
            OpKind::Transaction(cmds) => {
                f.write_str("MULTI; ")?;
                for (_, a) in cmds {
                    show_args(f, a)?;
                    f.write_str("; ")?;
                }
                f.write_str("EXEC")
            }
            OpKind::Blocked { block, push } => {
                f.write_str("(blocked) ")?;
                show_args(f, block)?;
                f.write_str(" <- served by ")?;
                show_args(f, &push.1)
            }
        }
    }
}

/// Connections to the source: one per node, each remembering the db it has selected.
pub struct Target<'a> {
    nodes: Nodes<'a>,
    conns: BTreeMap<usize, (Client, u32)>,
}

#[derive(Clone, Copy)]
enum Nodes<'a> {
    Standalone(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

type Node<'a> = (usize, &'a RedisServer);

impl<'a> Target<'a> {
    /// A standalone server.
    pub fn standalone(server: &'a RedisServer) -> Self {
        Target {
            nodes: Nodes::Standalone(server),
            conns: BTreeMap::new(),
        }
    }

    /// A cluster: each command goes to the master of its tag's slot.
    pub fn cluster(cluster: &'a RedisCluster) -> Self {
        Target {
            nodes: Nodes::Cluster(cluster),
            conns: BTreeMap::new(),
        }
    }

    fn node(&self, tag: &str) -> Node<'a> {
        match self.nodes {
            Nodes::Standalone(s) => (0, s),
            Nodes::Cluster(c) => {
                let n = c.node_for_key(format!("{{{tag}}}").as_bytes());
                (n.index(), n.server())
            }
        }
    }

    fn masters(&self) -> Vec<Node<'a>> {
        match self.nodes {
            Nodes::Standalone(s) => vec![(0, s)],
            Nodes::Cluster(c) => c
                .masters()
                .into_iter()
                .map(|n| (n.index(), n.server()))
                .collect(),
        }
    }

    fn conn(&mut self, node: Node<'a>) -> &mut (Client, u32) {
        self.conns.entry(node.0).or_insert_with(|| {
            let client = node
                .1
                .client()
                .unwrap_or_else(|e| panic!("connect to {}: {e}", node.1.addr()));
            (client, 0)
        })
    }

    /// Makes `db` the selected db of the node of `tag`; true when a SELECT was sent.
    fn select(&mut self, tag: &str, db: u32, always: bool) -> bool {
        let node = self.node(tag);
        let (client, current) = self.conn(node);
        if *current == db && !always {
            return false;
        }
        let reply = client
            .cmd_str(&["SELECT", &db.to_string()])
            .unwrap_or_else(|e| panic!("SELECT {db} on {}: {e}", node.1.addr()));
        assert!(reply.is_ok(), "SELECT {db} on {}: {reply}", node.1.addr());
        *current = db;
        true
    }

    fn call_on(&mut self, node: Node<'a>, args: &[Vec<u8>]) -> Reply {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let (client, _) = self.conn(node);
        client.command(&refs).unwrap_or_else(|e| {
            panic!(
                "{} on {}: {e}",
                String::from_utf8_lossy(&args[0]),
                node.1.addr()
            )
        })
    }

    fn call(&mut self, tag: &str, args: &[Vec<u8>]) -> Reply {
        let node = self.node(tag);
        self.call_on(node, args)
    }

    fn set_db(&mut self, tag: &str, db: u32) {
        let node = self.node(tag);
        self.conn(node).1 = db;
    }

    /// A second connection to the node of `tag`, in `db`.
    fn second_connection(&self, tag: &str, db: u32) -> Client {
        let (_, server) = self.node(tag);
        let mut client = server
            .client()
            .unwrap_or_else(|e| panic!("connect to {}: {e}", server.addr()));
        if db != 0 {
            let reply = client
                .cmd_str(&["SELECT", &db.to_string()])
                .expect("SELECT");
            assert!(reply.is_ok(), "SELECT {db}: {reply}");
        }
        client
    }

    fn blocked_clients(&self, tag: &str) -> Result<i64, String> {
        let (_, server) = self.node(tag);
        server
            .info("clients")
            .map_err(|e| e.to_string())?
            .get_int("blocked_clients")
            .ok_or_else(|| "no blocked_clients in INFO clients".to_owned())
    }
}

/// What a catalogue entry needs of the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Any,
    /// A standalone source (SELECT; FLUSHDB, which on one master of a cluster source the
    /// sync documents as unsupported).
    Standalone,
    /// Several databases (MOVE, SWAPDB, COPY … DB).
    MultiDb,
}

type Generator = fn(&mut Workload, &mut Target<'_>);

/// One operation of the catalogue: a name, the first version that has it, and the
/// generator that issues it (with whatever setup it needs).
struct Entry {
    name: &'static str,
    since: RedisVersion,
    need: Need,
    weight: u64,
    run: Generator,
}

const fn e(
    name: &'static str,
    since: RedisVersion,
    need: Need,
    weight: u64,
    run: Generator,
) -> Entry {
    Entry {
        name,
        since,
        need,
        weight,
        run,
    }
}

/// Availability follows the Redis command reference ("Available since"). Left out: the
/// hash-field TTL commands (HEXPIRE & co., 7.4), since no 7.4 server is installed here.
const CATALOGUE: &[Entry] = &[
    // strings
    e("APPEND", V2_8, Need::Any, 10, Workload::append),
    e("BITOP", V2_8, Need::Any, 6, Workload::bitop),
    e("DECR", V2_8, Need::Any, 6, Workload::decr),
    e("DECRBY", V2_8, Need::Any, 6, Workload::decrby),
    e("INCR", V2_8, Need::Any, 10, Workload::incr),
    e("INCRBY", V2_8, Need::Any, 6, Workload::incrby),
    e("INCRBYFLOAT", V2_8, Need::Any, 6, Workload::incrbyfloat),
    e("GETSET", V2_8, Need::Any, 6, Workload::getset),
    e("MSET", V2_8, Need::Any, 6, Workload::mset),
    e("MSETNX", V2_8, Need::Any, 6, Workload::msetnx),
    e("PSETEX", V2_8, Need::Any, 5, Workload::psetex),
    e("SETEX", V2_8, Need::Any, 5, Workload::setex),
    e("SET", V2_8, Need::Any, 12, Workload::set),
    e("SETNX", V2_8, Need::Any, 5, Workload::setnx),
    e("SETRANGE", V2_8, Need::Any, 5, Workload::setrange),
    e("SETBIT", V2_8, Need::Any, 6, Workload::setbit),
    e("SET KEEPTTL", V6_0, Need::Any, 4, Workload::set_keepttl),
    e("SET GET", V6_2, Need::Any, 4, Workload::set_get),
    e("SET EXAT", V6_2, Need::Any, 3, Workload::set_exat),
    e("SET PXAT", V6_2, Need::Any, 3, Workload::set_pxat),
    e("GETDEL", V6_2, Need::Any, 4, Workload::getdel),
    e("GETEX", V6_2, Need::Any, 5, Workload::getex),
    // keys
    e("DEL", V2_8, Need::Any, 8, Workload::del),
    e("UNLINK", V5_0, Need::Any, 5, Workload::unlink),
    e("EXPIRE", V2_8, Need::Any, 6, Workload::expire),
    e("EXPIREAT", V2_8, Need::Any, 5, Workload::expireat),
    e("PEXPIRE", V2_8, Need::Any, 5, Workload::pexpire),
    e("PEXPIREAT", V2_8, Need::Any, 5, Workload::pexpireat),
    e("PERSIST", V2_8, Need::Any, 5, Workload::persist),
    e("EXPIRE NX", V7_0, Need::Any, 3, Workload::expire_nx),
    e("EXPIRE XX", V7_0, Need::Any, 3, Workload::expire_xx),
    e("EXPIRE GT", V7_0, Need::Any, 3, Workload::expire_gt),
    e("EXPIRE LT", V7_0, Need::Any, 3, Workload::expire_lt),
    e("RENAME", V2_8, Need::Any, 5, Workload::rename),
    e("RENAMENX", V2_8, Need::Any, 5, Workload::renamenx),
    e("RESTORE", V2_8, Need::Any, 5, Workload::restore),
    e("COPY", V6_2, Need::Any, 5, Workload::copy),
    e("COPY DB", V6_2, Need::MultiDb, 3, Workload::copy_db),
    e("MOVE", V2_8, Need::MultiDb, 4, Workload::move_key),
    e("SWAPDB", V5_0, Need::MultiDb, 2, Workload::swapdb),
    e("SELECT", V2_8, Need::Standalone, 3, Workload::select),
    e("FLUSHDB", V2_8, Need::Standalone, 1, Workload::flushdb),
    e("PUBLISH", V2_8, Need::Any, 3, Workload::publish),
    e("MULTI", V2_8, Need::Any, 10, Workload::multi),
    e("EVAL", V2_8, Need::Any, 6, Workload::eval),
    e("EVALSHA", V2_8, Need::Any, 6, Workload::evalsha),
    e("FUNCTION LOAD", V7_0, Need::Any, 2, Workload::function_load),
    e(
        "FUNCTION DELETE",
        V7_0,
        Need::Any,
        1,
        Workload::function_delete,
    ),
    e(
        "FUNCTION FLUSH",
        V7_0,
        Need::Any,
        1,
        Workload::function_flush,
    ),
    e("FCALL", V7_0, Need::Any, 6, Workload::fcall),
    // lists
    e("LPUSH", V2_8, Need::Any, 8, Workload::lpush),
    e("RPUSH", V2_8, Need::Any, 8, Workload::rpush),
    e("LPUSHX", V2_8, Need::Any, 4, Workload::lpushx),
    e("RPUSHX", V2_8, Need::Any, 4, Workload::rpushx),
    e("LPOP", V2_8, Need::Any, 5, Workload::lpop),
    e("RPOP", V2_8, Need::Any, 5, Workload::rpop),
    e("LINSERT", V2_8, Need::Any, 5, Workload::linsert),
    e("LREM", V2_8, Need::Any, 4, Workload::lrem),
    e("LSET", V2_8, Need::Any, 5, Workload::lset),
    e("LTRIM", V2_8, Need::Any, 4, Workload::ltrim),
    e("RPOPLPUSH", V2_8, Need::Any, 4, Workload::rpoplpush),
    e("LMOVE", V6_2, Need::Any, 4, Workload::lmove),
    e("LMPOP", V7_0, Need::Any, 4, Workload::lmpop),
    e("BLPOP", V2_8, Need::Any, 4, Workload::blpop),
    e("BRPOP", V2_8, Need::Any, 4, Workload::brpop),
    e("BRPOPLPUSH", V2_8, Need::Any, 4, Workload::brpoplpush),
    e("BLMOVE", V6_2, Need::Any, 4, Workload::blmove),
    e("BLMPOP", V7_0, Need::Any, 3, Workload::blmpop),
    e("BLPOP blocked", V2_8, Need::Any, 1, Workload::blpop_blocked),
    e("BRPOP blocked", V2_8, Need::Any, 1, Workload::brpop_blocked),
    e(
        "BRPOPLPUSH blocked",
        V2_8,
        Need::Any,
        1,
        Workload::brpoplpush_blocked,
    ),
    e(
        "BLMOVE blocked",
        V6_2,
        Need::Any,
        1,
        Workload::blmove_blocked,
    ),
    e(
        "BLMPOP blocked",
        V7_0,
        Need::Any,
        1,
        Workload::blmpop_blocked,
    ),
    // hashes
    e("HSET", V2_8, Need::Any, 8, Workload::hset),
    e("HMSET", V2_8, Need::Any, 5, Workload::hmset),
    e("HSETNX", V2_8, Need::Any, 4, Workload::hsetnx),
    e("HDEL", V2_8, Need::Any, 5, Workload::hdel),
    e("HINCRBY", V2_8, Need::Any, 5, Workload::hincrby),
    e("HINCRBYFLOAT", V2_8, Need::Any, 5, Workload::hincrbyfloat),
    // sets
    e("SADD", V2_8, Need::Any, 8, Workload::sadd),
    e("SREM", V2_8, Need::Any, 5, Workload::srem),
    e("SPOP", V2_8, Need::Any, 4, Workload::spop),
    e("SMOVE", V2_8, Need::Any, 4, Workload::smove),
    e("SDIFFSTORE", V2_8, Need::Any, 3, Workload::sdiffstore),
    e("SINTERSTORE", V2_8, Need::Any, 3, Workload::sinterstore),
    e("SUNIONSTORE", V2_8, Need::Any, 3, Workload::sunionstore),
    e("SINTERCARD", V7_0, Need::Any, 2, Workload::sintercard),
    // sorted sets
    e("ZADD", V2_8, Need::Any, 8, Workload::zadd),
    e("ZINCRBY", V2_8, Need::Any, 5, Workload::zincrby),
    e("ZREM", V2_8, Need::Any, 4, Workload::zrem),
    e(
        "ZREMRANGEBYLEX",
        V2_8,
        Need::Any,
        3,
        Workload::zremrangebylex,
    ),
    e(
        "ZREMRANGEBYRANK",
        V2_8,
        Need::Any,
        3,
        Workload::zremrangebyrank,
    ),
    e(
        "ZREMRANGEBYSCORE",
        V2_8,
        Need::Any,
        3,
        Workload::zremrangebyscore,
    ),
    e("ZUNIONSTORE", V2_8, Need::Any, 3, Workload::zunionstore),
    e("ZINTERSTORE", V2_8, Need::Any, 3, Workload::zinterstore),
    e("ZPOPMIN", V5_0, Need::Any, 3, Workload::zpopmin),
    e("ZPOPMAX", V5_0, Need::Any, 3, Workload::zpopmax),
    e("BZPOPMIN", V5_0, Need::Any, 3, Workload::bzpopmin),
    e("BZPOPMAX", V5_0, Need::Any, 3, Workload::bzpopmax),
    e(
        "BZPOPMIN blocked",
        V5_0,
        Need::Any,
        1,
        Workload::bzpopmin_blocked,
    ),
    e("ZMPOP", V7_0, Need::Any, 3, Workload::zmpop),
    e("BZMPOP", V7_0, Need::Any, 3, Workload::bzmpop),
    // geo, hyperloglog
    e("GEOADD", V3_2, Need::Any, 5, Workload::geoadd),
    e("PFADD", V2_8, Need::Any, 6, Workload::pfadd),
    e("PFMERGE", V2_8, Need::Any, 3, Workload::pfmerge),
    // streams
    e("XADD", V5_0, Need::Any, 10, Workload::xadd),
    e("XTRIM", V5_0, Need::Any, 3, Workload::xtrim),
    e("XDEL", V5_0, Need::Any, 3, Workload::xdel),
    e("XGROUP CREATE", V5_0, Need::Any, 3, Workload::xgroup_create),
    e("XGROUP SETID", V5_0, Need::Any, 3, Workload::xgroup_setid),
    e(
        "XGROUP DESTROY",
        V5_0,
        Need::Any,
        2,
        Workload::xgroup_destroy,
    ),
    e(
        "XGROUP CREATECONSUMER",
        V6_2,
        Need::Any,
        2,
        Workload::xgroup_createconsumer,
    ),
    e(
        "XGROUP DELCONSUMER",
        V5_0,
        Need::Any,
        2,
        Workload::xgroup_delconsumer,
    ),
    e("XREADGROUP", V5_0, Need::Any, 6, Workload::xreadgroup),
    e("XACK", V5_0, Need::Any, 4, Workload::xack),
    e("XCLAIM", V5_0, Need::Any, 4, Workload::xclaim),
    e("XAUTOCLAIM", V6_2, Need::Any, 3, Workload::xautoclaim),
    e("XSETID", V5_0, Need::Any, 2, Workload::xsetid),
];

/// Names that are not generators of their own but must be issued too.
const ALSO_REQUIRED: &[(&str, RedisVersion)] = &[("EXEC", V2_8)];

/// Lua scripts for EVAL/EVALSHA: deterministic (masters before 5.0 replicate the script
/// itself and the destination runs it again), keys declared, and valid on every version.
/// Each is (body, key types).
const SCRIPTS: &[(&str, &[Fam])] = &[
    (
        "redis.call('INCRBY', KEYS[1], ARGV[1]) \
         redis.call('RPUSH', KEYS[2], ARGV[2]) \
         return redis.call('LLEN', KEYS[2])",
        &[Fam::Int, Fam::List],
    ),
    (
        "redis.call('HSET', KEYS[1], 's0', ARGV[2]) \
         redis.call('SADD', KEYS[2], ARGV[2]) \
         redis.call('ZINCRBY', KEYS[3], 1, ARGV[2]) \
         return 1",
        &[Fam::Hash, Fam::Set, Fam::Zset],
    ),
    (
        "local v = redis.call('LPOP', KEYS[1]) \
         if v then redis.call('SADD', KEYS[2], v) end \
         return v",
        &[Fam::List, Fam::Set],
    ),
    (
        "if redis.call('EXISTS', KEYS[1]) == 1 then \
         return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
         return 0",
        &[Fam::Str],
    ),
];

/// Function libraries (7.0): (name, code, [(function, key types)]).
type Library = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static [Fam])],
);
const LIBRARIES: &[Library] = &[
    (
        "wl",
        "#!lua name=wl\n\
         redis.register_function('wl_push', function(keys, args) \
           redis.call('INCRBY', keys[1], args[1]) \
           return redis.call('RPUSH', keys[2], args[2]) end)\n\
         redis.register_function('wl_tag', function(keys, args) \
           redis.call('HSET', keys[1], 's1', args[2]) \
           return redis.call('SADD', keys[2], args[2]) end)",
        &[
            ("wl_push", &[Fam::Int, Fam::List]),
            ("wl_tag", &[Fam::Hash, Fam::Set]),
        ],
    ),
    (
        "wl2",
        "#!lua name=wl2\n\
         redis.register_function('wl2_zadd', function(keys, args) \
           return redis.call('ZADD', keys[1], args[1], args[2]) end)",
        &[("wl2_zadd", &[Fam::Zset])],
    ),
];

/// The workload of one source: its catalogue, its random state, what it issued.
pub struct Workload {
    version: RedisVersion,
    dbs: Vec<u32>,
    cluster: bool,
    tags: &'static [&'static str],
    seed: u64,
    rng: Rng,
    /// Count issued operations (the run, not the seeding).
    recording: bool,
    issued: BTreeMap<&'static str, u64>,
    /// Every operation issued, rendered, in order.
    history: Vec<String>,
    /// SHA1 of each of [`SCRIPTS`], from SCRIPT LOAD.
    shas: Vec<String>,
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("version", &self.version)
            .field("dbs", &self.dbs)
            .field("seed", &self.seed)
            .field("ops", &self.history.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The first error in a reply, looking into arrays (EXEC answers one reply per command).
fn first_error(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Error(e) => Some(e),
        Reply::Array(Some(items)) => items.iter().find_map(first_error),
        _ => None,
    }
}

/// Bulk strings of an array reply (non-bulk items skipped).
fn bulks(reply: &Reply) -> Vec<Vec<u8>> {
    reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_bytes().map(<[u8]>::to_vec))
        .collect()
}

/// The value of `field` in a flat `[name, value, …]` array (XINFO).
fn field<'r>(flat: &'r Reply, name: &str) -> Option<&'r Reply> {
    let items = flat.as_array()?;
    items
        .chunks(2)
        .find(|kv| kv[0].as_str() == Some(name))
        .and_then(|kv| kv.get(1))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses a stream id `ms-seq`.
fn parse_id(id: &[u8]) -> Option<(u64, u64)> {
    let (ms, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Workload {
    /// A workload of `version` on `shape`, drawing from `seed`.
    pub fn new(version: RedisVersion, shape: Shape, seed: u64) -> Self {
        let (dbs, cluster, tags) = match shape {
            Shape::Standalone { dbs } => {
                assert!(!dbs.is_empty(), "a standalone workload needs a database");
                (dbs, false, STANDALONE_TAGS)
            }
            Shape::Cluster => {
                assert!(version.supports_cluster(), "no cluster before 3.0");
                (vec![0], true, CLUSTER_TAGS)
            }
        };
        Workload {
            version,
            dbs,
            cluster,
            tags,
            seed,
            rng: Rng::new(seed),
            recording: false,
            issued: BTreeMap::new(),
            history: Vec::new(),
            shas: Vec::new(),
        }
    }

    /// The seed this workload draws from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn applies(&self, e: &Entry) -> bool {
        self.version >= e.since
            && match e.need {
                Need::Any => true,
                Need::Standalone => !self.cluster,
                Need::MultiDb => !self.cluster && self.dbs.len() > 1,
            }
    }

    fn entries(&self) -> Vec<&'static Entry> {
        CATALOGUE.iter().filter(|e| self.applies(e)).collect()
    }

    /// Every operation this version and shape must issue.
    pub fn catalogue(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.entries().iter().map(|e| e.name).collect();
        names.extend(
            ALSO_REQUIRED
                .iter()
                .filter(|(_, since)| self.version >= *since)
                .map(|(n, _)| *n),
        );
        names
    }

    /// Operations issued by [`Workload::run`], with how often.
    pub fn issued(&self) -> &BTreeMap<&'static str, u64> {
        &self.issued
    }

    /// Catalogue operations never issued by [`Workload::run`].
    pub fn missing(&self) -> Vec<&'static str> {
        self.catalogue()
            .into_iter()
            .filter(|n| !self.issued.contains_key(n))
            .collect()
    }

    /// Operations issued so far (seeding included).
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether nothing was issued yet.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// The operations that may have changed `key` in `db`, in order (for the message of a
    /// failed comparison): those naming it in that db, those naming it with a db switch
    /// (MOVE, COPY … DB, a transaction with SELECT), and flushes and swaps of that db.
    pub fn history_of(&self, db: u32, key: &[u8]) -> Vec<&str> {
        let key = key.escape_ascii().to_string();
        let in_db = format!("[db {db}] ");
        let db_word = db.to_string();
        self.history
            .iter()
            .map(String::as_str)
            .filter(|l| {
                let words: Vec<&str> = l.split([' ', ';']).collect();
                let names_key = words.contains(&key.as_str());
                let crosses = words
                    .iter()
                    .any(|w| ["MOVE", "SELECT", "DB", "SWAPDB"].contains(w));
                (names_key && (l.starts_with(&in_db) || crosses))
                    || (l.starts_with(&in_db) && l.contains("FLUSHDB"))
                    || (l.contains("SWAPDB") && words.contains(&db_word.as_str()))
            })
            .collect()
    }

    fn fail(&self, op: &Op, what: &str) -> ! {
        panic!(
            "workload on redis {} (seed {seed}; {SEED_ENV}={seed} replays it), operation #{}: {op}\n  {what}",
            self.version,
            self.history.len(),
            seed = self.seed,
        )
    }

    fn record(&mut self, name: &'static str) {
        if self.recording {
            *self.issued.entry(name).or_default() += 1;
        }
    }

    fn select_for(&mut self, t: &mut Target<'_>, tag: &'static str, db: u32) {
        if t.select(tag, db, false) {
            self.record("SELECT");
            self.history.push(format!("[db {db}] SELECT {db}"));
        }
    }

    /// Issues `op`; any error reply fails the test.
    fn exec(&mut self, t: &mut Target<'_>, op: Op) -> Reply {
        self.history.push(op.to_string());
        let reply = match &op.kind {
            OpKind::Command(args) => {
                self.select_for(t, op.tag, op.db);
                t.call(op.tag, args)
            }
            OpKind::EveryMaster(args) => {
                let mut last = Reply::Status("OK".into());
                for node in t.masters() {
                    let r = t.call_on(node, args);
                    if let Some(err) = first_error(&r) {
                        self.fail(&op, &format!("{} answered: {err}", node.1.addr()));
                    }
                    last = r;
                }
                last
            }
            OpKind::Transaction(cmds) => {
                self.select_for(t, op.tag, op.db);
                let r = t.call(op.tag, &[b"MULTI".to_vec()]);
                if !r.is_ok() {
                    self.fail(&op, &format!("MULTI answered {r}"));
                }
                let mut db = op.db;
                for (_, args) in cmds {
                    let r = t.call(op.tag, args);
                    if r != Reply::Status("QUEUED".into()) {
                        let _ = t.call(op.tag, &[b"DISCARD".to_vec()]);
                        self.fail(&op, &format!("{} answered {r}", text(&args[0])));
                    }
                    if args[0].eq_ignore_ascii_case(b"SELECT") {
                        db = text(&args[1]).parse().expect("SELECT argument");
                    }
                }
                let r = t.call(op.tag, &[b"EXEC".to_vec()]);
                t.set_db(op.tag, db);
                r
            }
            OpKind::Blocked { block, push } => {
                let mut second = t.second_connection(op.tag, op.db);
                let before = t.blocked_clients(op.tag).unwrap_or(0);
                let refs: Vec<&[u8]> = block.iter().map(Vec::as_slice).collect();
                second.send(&refs).expect("send the blocking command");
                if let Err(e) = wait_until(
                    "the blocking command to block",
                    Duration::from_secs(5),
                    || match t.blocked_clients(op.tag)? {
                        n if n > before => Ok(()),
                        n => Err(format!("blocked_clients={n}")),
                    },
                ) {
                    self.fail(&op, &e.to_string());
                }
                self.select_for(t, op.tag, op.db);
                let pushed = t.call(op.tag, &push.1);
                if let Some(err) = first_error(&pushed) {
                    self.fail(&op, &format!("the push answered {err}"));
                }
                self.record(push.0);
                let served = second.read_reply().expect("the blocked command's reply");
                if served.is_nil() {
                    self.fail(&op, "the blocked command was not served by the push");
                }
                served
            }
        };
        if let Some(err) = first_error(&reply) {
            self.fail(&op, &format!("answered: {err}"));
        }
        self.record(op.name);
        if let OpKind::Transaction(cmds) = &op.kind {
            self.record("EXEC");
            for (name, args) in cmds {
                if args[0].eq_ignore_ascii_case(b"SELECT") {
                    self.record("SELECT");
                } else {
                    self.record(name);
                }
            }
        }
        reply
    }

    fn command(
        &mut self,
        t: &mut Target<'_>,
        name: &'static str,
        db: u32,
        tag: &'static str,
        args: Args,
    ) -> Reply {
        self.exec(
            t,
            Op {
                name,
                db,
                tag,
                kind: OpKind::Command(args),
            },
        )
    }

    fn every_master(&mut self, t: &mut Target<'_>, name: &'static str, args: Args) -> Reply {
        let tag = self.tags[0];
        self.exec(
            t,
            Op {
                name,
                db: 0,
                tag,
                kind: OpKind::EveryMaster(args),
            },
        )
    }

    /// A read (not replicated); an error reply fails the test like a write's would.
    fn probe(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, args: Args) -> Reply {
        self.select_for(t, tag, db);
        let reply = t.call(tag, &args);
        if let Some(err) = first_error(&reply) {
            let op = Op {
                name: "probe",
                db,
                tag,
                kind: OpKind::Command(args),
            };
            self.fail(&op, &format!("answered: {err}"));
        }
        reply
    }

    // ----- choices -----

    fn place(&mut self) -> (u32, &'static str) {
        let db = *self.rng.pick(&self.dbs);
        let tag = *self.rng.pick(self.tags);
        (db, tag)
    }

    fn key(&mut self, tag: &str, fam: Fam) -> String {
        format!("w:{{{tag}}}:{}:{}", fam.code(), self.rng.below(fam.size()))
    }

    fn other_key(&mut self, tag: &str, fam: Fam, not: &str) -> String {
        loop {
            let k = self.key(tag, fam);
            if k != not {
                return k;
            }
        }
    }

    fn keys(&mut self, tag: &str, fam: Fam, n: u64) -> Vec<String> {
        (0..n).map(|_| self.key(tag, fam)).collect()
    }

    fn fams(&self) -> Vec<Fam> {
        Fam::ALL
            .into_iter()
            .filter(|f| self.version >= f.since())
            .collect()
    }

    fn any_fam(&mut self) -> Fam {
        let fams = self.fams();
        *self.rng.pick(&fams)
    }

    /// Whether keys of `fam` may carry a TTL. Before 6.0 a master replicates INCRBYFLOAT
    /// as a plain `SET key value`, which drops the key's TTL on whoever applies it (Redis
    /// issue #5256, fixed in 6.0 with SET KEEPTTL): a native replica diverges the same way,
    /// so float keys never get a TTL on those versions.
    fn ttl_ok(&self, fam: Fam) -> bool {
        fam != Fam::Float || self.version >= V6_0
    }

    fn ttl_fam(&mut self) -> Fam {
        let fams: Vec<Fam> = self
            .fams()
            .into_iter()
            .filter(|f| self.ttl_ok(*f))
            .collect();
        *self.rng.pick(&fams)
    }

    /// A string family: plain, integer or float.
    fn string_fam(&mut self) -> Fam {
        *self.rng.pick(&[Fam::Str, Fam::Int, Fam::Float])
    }

    fn long_secs(&mut self) -> i64 {
        self.rng.range(3_600, 86_400)
    }

    fn long_ms(&mut self) -> i64 {
        self.rng.range(3_600_000, 86_400_000)
    }

    fn word(&mut self) -> Vec<u8> {
        match self.rng.below(10) {
            0 => {
                // Binary-safe values: NUL, CR LF, high bytes.
                let n = self.rng.range(1, 8) as usize;
                (0..n).map(|_| self.rng.next_u64() as u8).collect()
            }
            1 => {
                let n = self.rng.range(20, 120) as usize;
                (0..n).map(|_| b'a' + self.rng.below(26) as u8).collect()
            }
            _ => format!("v{}", self.rng.below(40)).into_bytes(),
        }
    }

    fn int_value(&mut self) -> String {
        self.rng.range(-1000, 1000).to_string()
    }

    fn float_value(&mut self) -> String {
        self.rng
            .pick(&["0.1", "1.5", "-2.25", "3", "10.75", "-0.5", "1e2", "0.001"])
            .to_string()
    }

    /// A value that suits keys of `fam` (a string family).
    fn value_for(&mut self, fam: Fam) -> Vec<u8> {
        match fam {
            Fam::Int => self.int_value().into_bytes(),
            Fam::Float => self.float_value().into_bytes(),
            _ => self.word(),
        }
    }

    fn member(&mut self) -> String {
        format!("m{:02}", self.rng.below(30))
    }

    fn score(&mut self) -> String {
        match self.rng.below(4) {
            0 => format!("{}.5", self.rng.range(-50, 50)),
            1 => self
                .rng
                .pick(&["0.1", "-0.25", "1e3", "3.14159"])
                .to_string(),
            _ => self.rng.range(-50, 50).to_string(),
        }
    }

    /// A hash field and a value of its kind: `s*` strings, `n*` integers, `f*` floats.
    fn hash_pair(&mut self) -> (String, Vec<u8>) {
        match self.rng.below(3) {
            0 => (
                format!("n{}", self.rng.below(4)),
                self.int_value().into_bytes(),
            ),
            1 => (
                format!("f{}", self.rng.below(3)),
                self.float_value().into_bytes(),
            ),
            _ => (format!("s{}", self.rng.below(6)), self.word()),
        }
    }

    fn geo_point(&mut self) -> (String, String) {
        let lon = self.rng.range(-1799, 1799) as f64 / 10.0;
        let lat = self.rng.range(-850, 850) as f64 / 10.0;
        (lon.to_string(), lat.to_string())
    }

    // ----- setup helpers -----

    /// A write that makes `key` (of `fam`) exist with some content.
    fn create(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, fam: Fam, key: &str) {
        let (name, args): (&'static str, Args) = match fam {
            Fam::Str => ("SET", cmd!["SET", key, self.word()]),
            Fam::Int => ("SET", cmd!["SET", key, self.int_value()]),
            Fam::Float => ("SET", cmd!["SET", key, self.float_value()]),
            Fam::List => (
                "RPUSH",
                cmd!["RPUSH", key, self.word(), self.word(), self.word()],
            ),
            Fam::Hash => (
                "HMSET",
                cmd![
                    "HMSET",
                    key,
                    "s0",
                    self.word(),
                    "n0",
                    self.int_value(),
                    "f0",
                    self.float_value()
                ],
            ),
            Fam::Set => (
                "SADD",
                cmd!["SADD", key, self.member(), self.member(), self.member()],
            ),
            Fam::Zset => (
                "ZADD",
                cmd![
                    "ZADD",
                    key,
                    self.score(),
                    self.member(),
                    self.score(),
                    self.member()
                ],
            ),
            Fam::Geo => {
                let (lon, lat) = self.geo_point();
                ("GEOADD", cmd!["GEOADD", key, lon, lat, self.member()])
            }
            Fam::Hll => (
                "PFADD",
                cmd![
                    "PFADD",
                    key,
                    format!("e{}", self.rng.below(5000)),
                    format!("e{}", self.rng.below(5000))
                ],
            ),
            Fam::Stream => ("XADD", cmd!["XADD", key, "*", "f", self.word()]),
        };
        self.command(t, name, db, tag, args);
    }

    fn exists(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) -> bool {
        self.probe(t, db, tag, cmd!["EXISTS", key]).as_int() == Some(1)
    }

    fn ensure(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, fam: Fam, key: &str) {
        if !self.exists(t, db, tag, key) {
            self.create(t, db, tag, fam, key);
        }
    }

    fn llen(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) -> i64 {
        self.probe(t, db, tag, cmd!["LLEN", key])
            .as_int()
            .unwrap_or(0)
    }

    /// Makes the list non-empty.
    fn ensure_list(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) -> i64 {
        let n = self.llen(t, db, tag, key);
        if n > 0 {
            return n;
        }
        self.create(t, db, tag, Fam::List, key);
        self.llen(t, db, tag, key)
    }

    fn ensure_zset(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) {
        let n = self.probe(t, db, tag, cmd!["ZCARD", key]).as_int();
        if n == Some(0) {
            self.create(t, db, tag, Fam::Zset, key);
        }
    }

    // ----- strings -----

    fn append(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let v = self.word();
        self.command(t, "APPEND", db, tag, cmd!["APPEND", k, v]);
    }

    fn bitop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let dest = self.key(tag, Fam::Str);
        let op = *self.rng.pick(&["AND", "OR", "XOR", "NOT"]);
        let n = if op == "NOT" {
            1
        } else {
            self.rng.range(1, 3) as u64
        };
        let mut args = cmd!["BITOP", op, dest];
        args.extend(
            self.keys(tag, Fam::Str, n)
                .into_iter()
                .map(String::into_bytes),
        );
        self.command(t, "BITOP", db, tag, args);
    }

    fn decr(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Int);
        self.command(t, "DECR", db, tag, cmd!["DECR", k]);
    }

    fn decrby(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Int);
        let by = self.rng.range(-20, 20).to_string();
        self.command(t, "DECRBY", db, tag, cmd!["DECRBY", k, by]);
    }

    fn incr(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Int);
        self.command(t, "INCR", db, tag, cmd!["INCR", k]);
    }

    fn incrby(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Int);
        let by = self.rng.range(-20, 20).to_string();
        self.command(t, "INCRBY", db, tag, cmd!["INCRBY", k, by]);
    }

    fn incrbyfloat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Float);
        let by = self.float_value();
        self.command(t, "INCRBYFLOAT", db, tag, cmd!["INCRBYFLOAT", k, by]);
    }

    fn getset(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = *self.rng.pick(&[Fam::Str, Fam::Int]);
        let k = self.key(tag, fam);
        let v = self.value_for(fam);
        self.command(t, "GETSET", db, tag, cmd!["GETSET", k, v]);
    }

    fn pairs(&mut self, tag: &str) -> Args {
        let mut args = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let fam = self.string_fam();
            args.push(self.key(tag, fam).into_bytes());
            args.push(self.value_for(fam));
        }
        args
    }

    fn mset(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let mut args = cmd!["MSET"];
        args.extend(self.pairs(tag));
        self.command(t, "MSET", db, tag, args);
    }

    fn msetnx(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let pairs = self.pairs(tag);
        // Half the time, clear the keys first so that MSETNX writes something.
        if self.rng.chance(50) {
            let mut del = cmd!["DEL"];
            del.extend(pairs.iter().step_by(2).cloned());
            self.command(t, "DEL", db, tag, del);
        }
        let mut args = cmd!["MSETNX"];
        args.extend(pairs);
        self.command(t, "MSETNX", db, tag, args);
    }

    fn psetex(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let (ms, v) = (self.long_ms().to_string(), self.word());
        self.command(t, "PSETEX", db, tag, cmd!["PSETEX", k, ms, v]);
    }

    fn setex(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = *self.rng.pick(&[Fam::Str, Fam::Int]);
        let k = self.key(tag, fam);
        let (s, v) = (self.long_secs().to_string(), self.value_for(fam));
        self.command(t, "SETEX", db, tag, cmd!["SETEX", k, s, v]);
    }

    fn set(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.string_fam();
        let k = self.key(tag, fam);
        let v = self.value_for(fam);
        let mut args = cmd!["SET", k, v];
        let ttl = self.ttl_ok(fam) && self.rng.chance(40);
        if ttl {
            if self.rng.chance(50) {
                args.extend(cmd!["EX", self.long_secs().to_string()]);
            } else {
                args.extend(cmd!["PX", self.long_ms().to_string()]);
            }
        }
        match self.rng.below(4) {
            0 => args.extend(cmd!["NX"]),
            1 => args.extend(cmd!["XX"]),
            _ => {}
        }
        self.command(t, "SET", db, tag, args);
    }

    fn setnx(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let v = self.word();
        self.command(t, "SETNX", db, tag, cmd!["SETNX", k, v]);
    }

    fn setrange(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let (at, v) = (self.rng.below(64).to_string(), self.word());
        self.command(t, "SETRANGE", db, tag, cmd!["SETRANGE", k, at, v]);
    }

    fn setbit(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let (at, bit) = (
            self.rng.below(512).to_string(),
            self.rng.below(2).to_string(),
        );
        self.command(t, "SETBIT", db, tag, cmd!["SETBIT", k, at, bit]);
    }

    fn set_keepttl(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.string_fam();
        let k = self.key(tag, fam);
        let v = self.value_for(fam);
        self.command(t, "SET KEEPTTL", db, tag, cmd!["SET", k, v, "KEEPTTL"]);
    }

    fn set_get(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.string_fam();
        let k = self.key(tag, fam);
        let v = self.value_for(fam);
        self.command(t, "SET GET", db, tag, cmd!["SET", k, v, "GET"]);
    }

    fn set_exat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let v = self.word();
        let at = (now_ms() / 1000 + self.long_secs()).to_string();
        self.command(t, "SET EXAT", db, tag, cmd!["SET", k, v, "EXAT", at]);
    }

    fn set_pxat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Str);
        let v = self.word();
        let at = (now_ms() + self.long_ms()).to_string();
        self.command(t, "SET PXAT", db, tag, cmd!["SET", k, v, "PXAT", at]);
    }

    fn getdel(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.string_fam();
        let k = self.key(tag, fam);
        self.command(t, "GETDEL", db, tag, cmd!["GETDEL", k]);
    }

    fn getex(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.string_fam();
        let k = self.key(tag, fam);
        let mut args = cmd!["GETEX", k];
        match self.rng.below(6) {
            0 => args.extend(cmd!["EX", self.long_secs().to_string()]),
            1 => args.extend(cmd!["PX", self.long_ms().to_string()]),
            2 => args.extend(cmd![
                "EXAT",
                (now_ms() / 1000 + self.long_secs()).to_string()
            ]),
            3 => args.extend(cmd!["PXAT", (now_ms() + self.long_ms()).to_string()]),
            4 => args.extend(cmd!["PERSIST"]),
            _ => {}
        }
        self.command(t, "GETEX", db, tag, args);
    }

    // ----- keys -----

    fn some_keys(&mut self, tag: &str) -> Args {
        (0..self.rng.range(1, 3))
            .map(|_| {
                let fam = self.any_fam();
                self.key(tag, fam).into_bytes()
            })
            .collect()
    }

    fn del(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let mut args = cmd!["DEL"];
        args.extend(self.some_keys(tag));
        self.command(t, "DEL", db, tag, args);
    }

    /// UNLINK of a stream whose consumer groups were all destroyed crashes Redis 6.0.7 to
    /// 6.0.13 (an assertion in lazyfree.c; redis/redis#8932, fixed in 6.0.14 and 6.2.4), so
    /// on the 6.0.9 installed here UNLINK leaves streams alone.
    fn unlink(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let mut keys = self.some_keys(tag);
        if self.version == V6_0 {
            let stream = format!(":{}:", Fam::Stream.code());
            keys.retain(|k| !text(k).contains(&stream));
            if keys.is_empty() {
                keys.push(self.key(tag, Fam::Str).into_bytes());
            }
        }
        let mut args = cmd!["UNLINK"];
        args.extend(keys);
        self.command(t, "UNLINK", db, tag, args);
    }

    fn ttl_key(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str) -> String {
        let fam = self.ttl_fam();
        let k = self.key(tag, fam);
        // Mostly on keys that exist, so the TTL lands somewhere.
        if self.rng.chance(80) {
            self.ensure(t, db, tag, fam, &k);
        }
        k
    }

    fn expire(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.ttl_key(t, db, tag);
        let s = self.long_secs().to_string();
        self.command(t, "EXPIRE", db, tag, cmd!["EXPIRE", k, s]);
    }

    fn expireat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.ttl_key(t, db, tag);
        let at = (now_ms() / 1000 + self.long_secs()).to_string();
        self.command(t, "EXPIREAT", db, tag, cmd!["EXPIREAT", k, at]);
    }

    fn pexpire(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.ttl_key(t, db, tag);
        let ms = self.long_ms().to_string();
        self.command(t, "PEXPIRE", db, tag, cmd!["PEXPIRE", k, ms]);
    }

    fn pexpireat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.ttl_key(t, db, tag);
        let at = (now_ms() + self.long_ms()).to_string();
        self.command(t, "PEXPIREAT", db, tag, cmd!["PEXPIREAT", k, at]);
    }

    fn persist(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.any_fam();
        let k = self.key(tag, fam);
        self.command(t, "PERSIST", db, tag, cmd!["PERSIST", k]);
    }

    fn expire_with(&mut self, t: &mut Target<'_>, name: &'static str, flag: &str) {
        let (db, tag) = self.place();
        let k = self.ttl_key(t, db, tag);
        let s = self.long_secs().to_string();
        self.command(t, name, db, tag, cmd!["EXPIRE", k, s, flag]);
    }

    fn expire_nx(&mut self, t: &mut Target<'_>) {
        self.expire_with(t, "EXPIRE NX", "NX");
    }

    fn expire_xx(&mut self, t: &mut Target<'_>) {
        self.expire_with(t, "EXPIRE XX", "XX");
    }

    fn expire_gt(&mut self, t: &mut Target<'_>) {
        self.expire_with(t, "EXPIRE GT", "GT");
    }

    fn expire_lt(&mut self, t: &mut Target<'_>) {
        self.expire_with(t, "EXPIRE LT", "LT");
    }

    /// An existing key and another key of the same type and tag.
    fn source_and_dest(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
    ) -> (Fam, String, String) {
        let fam = self.any_fam();
        let src = self.key(tag, fam);
        self.ensure(t, db, tag, fam, &src);
        let dst = self.other_key(tag, fam, &src);
        (fam, src, dst)
    }

    fn rename(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (_, src, dst) = self.source_and_dest(t, db, tag);
        self.command(t, "RENAME", db, tag, cmd!["RENAME", src, dst]);
    }

    fn renamenx(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (_, src, dst) = self.source_and_dest(t, db, tag);
        if self.rng.chance(50) {
            self.command(t, "DEL", db, tag, cmd!["DEL", dst.clone()]);
        }
        self.command(t, "RENAMENX", db, tag, cmd!["RENAMENX", src, dst]);
    }

    fn restore(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (fam, src, dst) = self.source_and_dest(t, db, tag);
        let payload = self.probe(t, db, tag, cmd!["DUMP", src]);
        let payload = payload
            .as_bytes()
            .expect("DUMP of an existing key")
            .to_vec();
        let ttl = if self.ttl_ok(fam) && self.rng.chance(40) {
            self.long_ms()
        } else {
            0
        };
        let mut args = cmd!["RESTORE", dst.clone()];
        // REPLACE is 3.0+; without it the destination key must not exist.
        let replace = self.version >= V3_2 && self.rng.chance(60);
        if !replace {
            self.command(t, "DEL", db, tag, cmd!["DEL", dst]);
        }
        let abs = ttl > 0 && self.version >= V5_0 && self.rng.chance(50);
        args.push(
            if abs { now_ms() + ttl } else { ttl }
                .to_string()
                .into_bytes(),
        );
        args.push(payload);
        if replace {
            args.extend(cmd!["REPLACE"]);
        }
        if abs {
            args.extend(cmd!["ABSTTL"]);
        }
        self.command(t, "RESTORE", db, tag, args);
    }

    fn copy(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (_, src, dst) = self.source_and_dest(t, db, tag);
        let mut args = cmd!["COPY", src, dst];
        if self.rng.chance(50) {
            args.extend(cmd!["REPLACE"]);
        }
        self.command(t, "COPY", db, tag, args);
    }

    fn other_db(&mut self, db: u32) -> u32 {
        loop {
            let d = *self.rng.pick(&self.dbs);
            if d != db {
                return d;
            }
        }
    }

    fn copy_db(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.any_fam();
        let src = self.key(tag, fam);
        self.ensure(t, db, tag, fam, &src);
        let dst = self.key(tag, fam);
        let to = self.other_db(db).to_string();
        let mut args = cmd!["COPY", src, dst, "DB", to];
        if self.rng.chance(50) {
            args.extend(cmd!["REPLACE"]);
        }
        self.command(t, "COPY DB", db, tag, args);
    }

    /// Before 3.2, MOVE drops the key's TTL (redis/redis#2765) and is replicated as is; a
    /// newer destination keeps the TTL unless the sync compensates, so keys with a TTL are
    /// moved too.
    fn move_key(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let fam = self.any_fam();
        let k = self.key(tag, fam);
        if self.rng.chance(70) {
            self.ensure(t, db, tag, fam, &k);
        }
        let to = self.other_db(db).to_string();
        self.command(t, "MOVE", db, tag, cmd!["MOVE", k, to]);
    }

    fn swapdb(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let other = self.other_db(db);
        let (a, b) = (db.to_string(), other.to_string());
        self.command(t, "SWAPDB", db, tag, cmd!["SWAPDB", a, b]);
    }

    fn select(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        t.select(tag, db, true);
        self.record("SELECT");
        self.history.push(format!("[db {db}] SELECT {db}"));
    }

    fn flushdb(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let mut args = cmd!["FLUSHDB"];
        if self.version >= V5_0 && self.rng.chance(50) {
            args.extend(cmd!["ASYNC"]);
        }
        self.command(t, "FLUSHDB", db, tag, args);
    }

    fn publish(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let msg = self.word();
        self.command(
            t,
            "PUBLISH",
            db,
            tag,
            cmd!["PUBLISH", format!("w:{{{tag}}}:channel"), msg],
        );
    }

    // ----- transactions, scripts, functions -----

    /// A write that is valid whatever the state of its key (for MULTI).
    fn simple(&mut self, tag: &str) -> (&'static str, Args) {
        loop {
            let k = |w: &mut Workload, fam| w.key(tag, fam);
            let pick = self.rng.below(17);
            let c: (&'static str, Args) = match pick {
                0 => ("INCR", cmd!["INCR", k(self, Fam::Int)]),
                1 => (
                    "INCRBY",
                    cmd!["INCRBY", k(self, Fam::Int), self.int_value()],
                ),
                2 => ("RPUSH", cmd!["RPUSH", k(self, Fam::List), self.word()]),
                3 => ("LPUSH", cmd!["LPUSH", k(self, Fam::List), self.word()]),
                4 => ("SADD", cmd!["SADD", k(self, Fam::Set), self.member()]),
                5 => ("SREM", cmd!["SREM", k(self, Fam::Set), self.member()]),
                6 => {
                    let (f, v) = self.hash_pair();
                    ("HSET", cmd!["HSET", k(self, Fam::Hash), f, v])
                }
                7 => (
                    "ZADD",
                    cmd!["ZADD", k(self, Fam::Zset), self.score(), self.member()],
                ),
                8 => (
                    "ZINCRBY",
                    cmd!["ZINCRBY", k(self, Fam::Zset), "0.1", self.member()],
                ),
                9 => ("APPEND", cmd!["APPEND", k(self, Fam::Str), self.word()]),
                10 => (
                    "SETBIT",
                    cmd![
                        "SETBIT",
                        k(self, Fam::Str),
                        self.rng.below(256).to_string(),
                        "1"
                    ],
                ),
                11 => (
                    "PFADD",
                    cmd![
                        "PFADD",
                        k(self, Fam::Hll),
                        format!("e{}", self.rng.below(5000))
                    ],
                ),
                12 => {
                    let fam = self.ttl_fam();
                    (
                        "EXPIRE",
                        cmd!["EXPIRE", k(self, fam), self.long_secs().to_string()],
                    )
                }
                13 => {
                    let fam = self.any_fam();
                    ("PERSIST", cmd!["PERSIST", k(self, fam)])
                }
                14 => {
                    let fam = self.any_fam();
                    ("DEL", cmd!["DEL", k(self, fam)])
                }
                15 if self.version >= V5_0 => (
                    "XADD",
                    cmd!["XADD", k(self, Fam::Stream), "*", "f", self.word()],
                ),
                16 => (
                    "INCRBYFLOAT",
                    cmd!["INCRBYFLOAT", k(self, Fam::Float), self.float_value()],
                ),
                _ => continue,
            };
            return c;
        }
    }

    fn multi(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let mut cmds: Vec<(&'static str, Args)> = (0..self.rng.range(2, 5))
            .map(|_| self.simple(tag))
            .collect();
        // A transaction may switch databases half-way; the rest of it runs there.
        if !self.cluster && self.dbs.len() > 1 && self.rng.chance(30) {
            let to = self.other_db(db);
            cmds.push(("SELECT", cmd!["SELECT", to.to_string()]));
            for _ in 0..self.rng.range(1, 3) {
                cmds.push(self.simple(tag));
            }
        }
        self.exec(
            t,
            Op {
                name: "MULTI",
                db,
                tag,
                kind: OpKind::Transaction(cmds),
            },
        );
    }

    /// NUMKEYS, keys of `fams` on one tag, then ARGV for [`SCRIPTS`] and [`LIBRARIES`]:
    /// a small integer (INCRBY, ZADD score) and a member. `Fam::Str` among the types stands
    /// for a key of any type that may carry a TTL, and makes ARGV[1] a TTL in ms (the
    /// PEXPIRE script).
    fn script_call(&mut self, tag: &str, fams: &[Fam]) -> Args {
        let expires = fams.contains(&Fam::Str);
        let mut args = vec![fams.len().to_string().into_bytes()];
        for &fam in fams {
            let fam = if fam == Fam::Str { self.ttl_fam() } else { fam };
            args.push(self.key(tag, fam).into_bytes());
        }
        let first = if expires {
            self.long_ms()
        } else {
            self.rng.range(1, 20)
        };
        args.push(first.to_string().into_bytes());
        args.push(self.member().into_bytes());
        args
    }

    fn eval(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (body, fams) = *self.rng.pick(SCRIPTS);
        let mut args = cmd!["EVAL", body];
        args.extend(self.script_call(tag, fams));
        self.command(t, "EVAL", db, tag, args);
    }

    fn evalsha(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let i = self.rng.below(SCRIPTS.len() as u64) as usize;
        let (body, fams) = SCRIPTS[i];
        // Scripts were loaded while seeding; loading again now and then puts SCRIPT LOAD
        // in the stream too.
        if self.rng.chance(20) {
            self.command(t, "SCRIPT LOAD", db, tag, cmd!["SCRIPT", "LOAD", body]);
        }
        let mut args = cmd!["EVALSHA", self.shas[i].clone()];
        args.extend(self.script_call(tag, fams));
        self.command(t, "EVALSHA", db, tag, args);
    }

    fn library_loaded(&mut self, t: &mut Target<'_>, tag: &'static str, lib: &str) -> bool {
        let r = self.probe(t, 0, tag, cmd!["FUNCTION", "LIST", "LIBRARYNAME", lib]);
        r.as_array().is_some_and(|libs| {
            libs.iter()
                .any(|l| field(l, "library_name").and_then(Reply::as_str) == Some(lib))
        })
    }

    fn function_load(&mut self, t: &mut Target<'_>) {
        let tag = self.tags[0];
        let (name, code, _) = *self.rng.pick(LIBRARIES);
        let mut args = cmd!["FUNCTION", "LOAD"];
        if self.library_loaded(t, tag, name) || self.rng.chance(50) {
            args.extend(cmd!["REPLACE"]);
        }
        args.extend(cmd![code]);
        self.every_master(t, "FUNCTION LOAD", args);
    }

    fn function_delete(&mut self, t: &mut Target<'_>) {
        let tag = self.tags[0];
        let (name, code, _) = *self.rng.pick(LIBRARIES);
        if !self.library_loaded(t, tag, name) {
            self.every_master(t, "FUNCTION LOAD", cmd!["FUNCTION", "LOAD", code]);
        }
        self.every_master(t, "FUNCTION DELETE", cmd!["FUNCTION", "DELETE", name]);
    }

    fn function_flush(&mut self, t: &mut Target<'_>) {
        let mut args = cmd!["FUNCTION", "FLUSH"];
        match self.rng.below(3) {
            0 => args.extend(cmd!["ASYNC"]),
            1 => args.extend(cmd!["SYNC"]),
            _ => {}
        }
        self.every_master(t, "FUNCTION FLUSH", args);
    }

    fn fcall(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (lib, code, functions) = *self.rng.pick(LIBRARIES);
        if !self.library_loaded(t, tag, lib) {
            self.every_master(t, "FUNCTION LOAD", cmd!["FUNCTION", "LOAD", code]);
        }
        let (function, fams) = *self.rng.pick(functions);
        let mut args = cmd!["FCALL", function];
        args.extend(self.script_call(tag, fams));
        self.command(t, "FCALL", db, tag, args);
    }

    // ----- lists -----

    fn push(&mut self, t: &mut Target<'_>, name: &'static str, multi_since: RedisVersion) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        // Keep lists short so LRANGE-based choices stay cheap.
        if self.rng.chance(50) && self.llen(t, db, tag, &k) > 40 {
            self.command(t, "LTRIM", db, tag, cmd!["LTRIM", k.clone(), "0", "19"]);
        }
        let n = if self.version >= multi_since {
            self.rng.range(1, 3)
        } else {
            1
        };
        let mut args = cmd![name, k];
        for _ in 0..n {
            args.push(self.word());
        }
        self.command(t, name, db, tag, args);
    }

    fn lpush(&mut self, t: &mut Target<'_>) {
        self.push(t, "LPUSH", V2_8);
    }

    fn rpush(&mut self, t: &mut Target<'_>) {
        self.push(t, "RPUSH", V2_8);
    }

    fn lpushx(&mut self, t: &mut Target<'_>) {
        self.push(t, "LPUSHX", V5_0);
    }

    fn rpushx(&mut self, t: &mut Target<'_>) {
        self.push(t, "RPUSHX", V5_0);
    }

    fn pop(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        let mut args = cmd![name, k];
        if self.version >= V6_2 && self.rng.chance(30) {
            args.push(self.rng.range(1, 3).to_string().into_bytes());
        }
        self.command(t, name, db, tag, args);
    }

    fn lpop(&mut self, t: &mut Target<'_>) {
        self.pop(t, "LPOP");
    }

    fn rpop(&mut self, t: &mut Target<'_>) {
        self.pop(t, "RPOP");
    }

    fn list_sample(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
        key: &str,
    ) -> Vec<Vec<u8>> {
        bulks(&self.probe(t, db, tag, cmd!["LRANGE", key, "0", "19"]))
    }

    fn linsert(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        self.ensure_list(t, db, tag, &k);
        let sample = self.list_sample(t, db, tag, &k);
        let pivot = if self.rng.chance(85) {
            self.rng.pick(&sample).clone()
        } else {
            b"no-such-pivot".to_vec()
        };
        let side = *self.rng.pick(&["BEFORE", "AFTER"]);
        let v = self.word();
        self.command(t, "LINSERT", db, tag, cmd!["LINSERT", k, side, pivot, v]);
    }

    fn lrem(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        let sample = self.list_sample(t, db, tag, &k);
        let v = if !sample.is_empty() && self.rng.chance(80) {
            self.rng.pick(&sample).clone()
        } else {
            self.word()
        };
        let count = self.rng.range(-2, 2).to_string();
        self.command(t, "LREM", db, tag, cmd!["LREM", k, count, v]);
    }

    fn lset(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        let n = self.ensure_list(t, db, tag, &k);
        let i = self.rng.range(-n, n - 1).to_string();
        let v = self.word();
        self.command(t, "LSET", db, tag, cmd!["LSET", k, i, v]);
    }

    fn ltrim(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::List);
        let start = self.rng.range(0, 2).to_string();
        let stop = self.rng.pick(&["-1", "-2", "5", "10", "20"]).to_string();
        self.command(t, "LTRIM", db, tag, cmd!["LTRIM", k, start, stop]);
    }

    fn rpoplpush(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (src, dst) = (self.key(tag, Fam::List), self.key(tag, Fam::List));
        self.command(t, "RPOPLPUSH", db, tag, cmd!["RPOPLPUSH", src, dst]);
    }

    fn side(&mut self) -> &'static str {
        ["LEFT", "RIGHT"][self.rng.below(2) as usize]
    }

    fn lmove(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (src, dst) = (self.key(tag, Fam::List), self.key(tag, Fam::List));
        let (a, b) = (self.side(), self.side());
        self.command(t, "LMOVE", db, tag, cmd!["LMOVE", src, dst, a, b]);
    }

    fn lmpop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::List, n);
        let mut args = cmd!["LMPOP", keys.len().to_string()];
        args.extend(keys.into_iter().map(String::into_bytes));
        args.extend(cmd![self.side()]);
        if self.rng.chance(50) {
            args.extend(cmd!["COUNT", self.rng.range(1, 3).to_string()]);
        }
        self.command(t, "LMPOP", db, tag, args);
    }

    /// Blocking pops on keys of which the first is not empty, so they return at once.
    fn blocking_list_keys(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
    ) -> Vec<String> {
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::List, n);
        self.ensure_list(t, db, tag, &keys[0]);
        keys
    }

    fn bpop(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let mut args = cmd![name];
        args.extend(
            self.blocking_list_keys(t, db, tag)
                .into_iter()
                .map(String::into_bytes),
        );
        args.extend(cmd!["1"]);
        self.command(t, name, db, tag, args);
    }

    fn blpop(&mut self, t: &mut Target<'_>) {
        self.bpop(t, "BLPOP");
    }

    fn brpop(&mut self, t: &mut Target<'_>) {
        self.bpop(t, "BRPOP");
    }

    fn brpoplpush(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (src, dst) = (self.key(tag, Fam::List), self.key(tag, Fam::List));
        self.ensure_list(t, db, tag, &src);
        self.command(t, "BRPOPLPUSH", db, tag, cmd!["BRPOPLPUSH", src, dst, "1"]);
    }

    fn blmove(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (src, dst) = (self.key(tag, Fam::List), self.key(tag, Fam::List));
        self.ensure_list(t, db, tag, &src);
        let (a, b) = (self.side(), self.side());
        self.command(t, "BLMOVE", db, tag, cmd!["BLMOVE", src, dst, a, b, "1"]);
    }

    fn blmpop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let keys = self.blocking_list_keys(t, db, tag);
        let mut args = cmd!["BLMPOP", "1", keys.len().to_string()];
        args.extend(keys.into_iter().map(String::into_bytes));
        args.extend(cmd![self.side()]);
        if self.rng.chance(50) {
            args.extend(cmd!["COUNT", self.rng.range(1, 3).to_string()]);
        }
        self.command(t, "BLMPOP", db, tag, args);
    }

    /// Empties `keys`, blocks `block` on them from a second connection, then serves it
    /// with a push to the first key. Its timeout (5 s) bounds the wait if anything goes
    /// wrong: the test then fails rather than hangs.
    fn blocked(
        &mut self,
        t: &mut Target<'_>,
        name: &'static str,
        (db, tag): (u32, &'static str),
        keys: &[String],
        block: Args,
        fam: Fam,
    ) {
        let mut del = cmd!["DEL"];
        del.extend(keys.iter().map(|k| k.clone().into_bytes()));
        self.command(t, "DEL", db, tag, del);
        let push = match fam {
            Fam::Zset => (
                "ZADD",
                cmd!["ZADD", keys[0].clone(), self.score(), self.member()],
            ),
            _ => (
                "RPUSH",
                cmd!["RPUSH", keys[0].clone(), self.word(), self.word()],
            ),
        };
        self.exec(
            t,
            Op {
                name,
                db,
                tag,
                kind: OpKind::Blocked { block, push },
            },
        );
    }

    fn bpop_blocked(&mut self, t: &mut Target<'_>, name: &'static str, command: &str) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::List, n);
        let mut block = cmd![command];
        block.extend(keys.iter().map(|k| k.clone().into_bytes()));
        block.extend(cmd!["5"]);
        self.blocked(t, name, (db, tag), &keys, block, Fam::List);
    }

    fn blpop_blocked(&mut self, t: &mut Target<'_>) {
        self.bpop_blocked(t, "BLPOP blocked", "BLPOP");
    }

    fn brpop_blocked(&mut self, t: &mut Target<'_>) {
        self.bpop_blocked(t, "BRPOP blocked", "BRPOP");
    }

    fn brpoplpush_blocked(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let src = self.key(tag, Fam::List);
        let dst = self.other_key(tag, Fam::List, &src);
        let block = cmd!["BRPOPLPUSH", src.clone(), dst, "5"];
        self.blocked(t, "BRPOPLPUSH blocked", (db, tag), &[src], block, Fam::List);
    }

    fn blmove_blocked(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let src = self.key(tag, Fam::List);
        let dst = self.other_key(tag, Fam::List, &src);
        let (a, b) = (self.side(), self.side());
        let block = cmd!["BLMOVE", src.clone(), dst, a, b, "5"];
        self.blocked(t, "BLMOVE blocked", (db, tag), &[src], block, Fam::List);
    }

    fn blmpop_blocked(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::List, n);
        let mut block = cmd!["BLMPOP", "5", keys.len().to_string()];
        block.extend(keys.iter().map(|k| k.clone().into_bytes()));
        block.extend(cmd![self.side()]);
        self.blocked(t, "BLMPOP blocked", (db, tag), &keys, block, Fam::List);
    }

    // ----- hashes -----

    fn hset(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        // Several pairs per HSET are 4.0+.
        let n = if self.version >= V5_0 {
            self.rng.range(1, 3)
        } else {
            1
        };
        let mut args = cmd!["HSET", k];
        for _ in 0..n {
            let (f, v) = self.hash_pair();
            args.extend([f.into_bytes(), v]);
        }
        self.command(t, "HSET", db, tag, args);
    }

    fn hmset(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        let mut args = cmd!["HMSET", k];
        for _ in 0..self.rng.range(1, 3) {
            let (f, v) = self.hash_pair();
            args.extend([f.into_bytes(), v]);
        }
        self.command(t, "HMSET", db, tag, args);
    }

    fn hsetnx(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        let (f, v) = self.hash_pair();
        self.command(t, "HSETNX", db, tag, cmd!["HSETNX", k, f, v]);
    }

    fn hdel(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        let mut args = cmd!["HDEL", k];
        for _ in 0..self.rng.range(1, 2) {
            let (f, _) = self.hash_pair();
            args.push(f.into_bytes());
        }
        self.command(t, "HDEL", db, tag, args);
    }

    fn hincrby(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        let f = format!("n{}", self.rng.below(4));
        let by = self.rng.range(-20, 20).to_string();
        self.command(t, "HINCRBY", db, tag, cmd!["HINCRBY", k, f, by]);
    }

    fn hincrbyfloat(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hash);
        let f = format!("f{}", self.rng.below(3));
        let by = self.float_value();
        self.command(t, "HINCRBYFLOAT", db, tag, cmd!["HINCRBYFLOAT", k, f, by]);
    }

    // ----- sets -----

    fn sadd(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Set);
        let mut args = cmd!["SADD", k];
        for _ in 0..self.rng.range(1, 3) {
            args.push(self.member().into_bytes());
        }
        self.command(t, "SADD", db, tag, args);
    }

    fn srem(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Set);
        let mut args = cmd!["SREM", k];
        for _ in 0..self.rng.range(1, 2) {
            args.push(self.member().into_bytes());
        }
        self.command(t, "SREM", db, tag, args);
    }

    fn spop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Set);
        let mut args = cmd!["SPOP", k];
        if self.version >= V3_2 && self.rng.chance(40) {
            args.push(self.rng.range(1, 4).to_string().into_bytes());
        }
        self.command(t, "SPOP", db, tag, args);
    }

    fn smove(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let src = self.key(tag, Fam::Set);
        let dst = self.other_key(tag, Fam::Set, &src);
        let m = self.member();
        self.command(t, "SMOVE", db, tag, cmd!["SMOVE", src, dst, m]);
    }

    fn set_store(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let mut args = cmd![name];
        let n = self.rng.range(2, 4) as u64;
        args.extend(
            self.keys(tag, Fam::Set, n)
                .into_iter()
                .map(String::into_bytes),
        );
        self.command(t, name, db, tag, args);
    }

    fn sdiffstore(&mut self, t: &mut Target<'_>) {
        self.set_store(t, "SDIFFSTORE");
    }

    fn sinterstore(&mut self, t: &mut Target<'_>) {
        self.set_store(t, "SINTERSTORE");
    }

    fn sunionstore(&mut self, t: &mut Target<'_>) {
        self.set_store(t, "SUNIONSTORE");
    }

    fn sintercard(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let keys = self.keys(tag, Fam::Set, 2);
        let mut args = cmd!["SINTERCARD", "2", keys[0].clone(), keys[1].clone()];
        if self.rng.chance(50) {
            args.extend(cmd!["LIMIT", "3"]);
        }
        self.command(t, "SINTERCARD", db, tag, args);
    }

    // ----- sorted sets -----

    fn zadd(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let mut args = cmd!["ZADD", k];
        // Options are 3.0+ (NX/XX/CH/INCR) and 6.2+ (GT/LT, not with NX).
        let mut options: Vec<&[&str]> = vec![&[]];
        if self.version >= V3_2 {
            options.push(&["NX"]);
            options.push(&["XX"]);
            options.push(&["CH"]);
            options.push(&["XX", "CH"]);
            options.push(&["INCR"]);
        }
        if self.version >= V6_2 {
            options.push(&["GT"]);
            options.push(&["LT", "CH"]);
            options.push(&["XX", "GT"]);
        }
        let chosen = *self.rng.pick(&options);
        args.extend(chosen.iter().map(|o| o.as_bytes().to_vec()));
        let pairs = if chosen.contains(&"INCR") {
            1
        } else {
            self.rng.range(1, 3)
        };
        for _ in 0..pairs {
            args.extend([self.score().into_bytes(), self.member().into_bytes()]);
        }
        self.command(t, "ZADD", db, tag, args);
    }

    fn zincrby(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let (by, m) = (self.score(), self.member());
        self.command(t, "ZINCRBY", db, tag, cmd!["ZINCRBY", k, by, m]);
    }

    fn zrem(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let mut args = cmd!["ZREM", k];
        for _ in 0..self.rng.range(1, 2) {
            args.push(self.member().into_bytes());
        }
        self.command(t, "ZREM", db, tag, args);
    }

    fn lex_bound(&mut self) -> String {
        match self.rng.below(5) {
            0 => "-".into(),
            1 => "+".into(),
            2 => format!("({}", self.member()),
            _ => format!("[{}", self.member()),
        }
    }

    fn zremrangebylex(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let (a, b) = (self.lex_bound(), self.lex_bound());
        self.command(
            t,
            "ZREMRANGEBYLEX",
            db,
            tag,
            cmd!["ZREMRANGEBYLEX", k, a, b],
        );
    }

    fn zremrangebyrank(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let (a, b) = *self
            .rng
            .pick(&[("0", "0"), ("-1", "-1"), ("0", "1"), ("2", "4")]);
        self.command(
            t,
            "ZREMRANGEBYRANK",
            db,
            tag,
            cmd!["ZREMRANGEBYRANK", k, a, b],
        );
    }

    fn zremrangebyscore(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let lo = self.rng.range(-50, 40);
        let hi = lo + self.rng.range(0, 10);
        let lo = if self.rng.chance(30) {
            format!("({lo}")
        } else {
            lo.to_string()
        };
        self.command(
            t,
            "ZREMRANGEBYSCORE",
            db,
            tag,
            cmd!["ZREMRANGEBYSCORE", k, lo, hi.to_string()],
        );
    }

    fn zstore(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let dest = self.key(tag, Fam::Zset);
        let n = self.rng.range(1, 3) as usize;
        let mut args = cmd![name, dest, n.to_string()];
        args.extend(
            self.keys(tag, Fam::Zset, n as u64)
                .into_iter()
                .map(String::into_bytes),
        );
        if self.rng.chance(40) {
            args.extend(cmd!["WEIGHTS"]);
            for _ in 0..n {
                args.push(self.rng.pick(&["1", "2", "0.5", "-1"]).as_bytes().to_vec());
            }
        }
        if self.rng.chance(40) {
            args.extend(cmd!["AGGREGATE", self.rng.pick(&["SUM", "MIN", "MAX"])]);
        }
        self.command(t, name, db, tag, args);
    }

    fn zunionstore(&mut self, t: &mut Target<'_>) {
        self.zstore(t, "ZUNIONSTORE");
    }

    fn zinterstore(&mut self, t: &mut Target<'_>) {
        self.zstore(t, "ZINTERSTORE");
    }

    fn zpop(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Zset);
        let mut args = cmd![name, k];
        if self.rng.chance(40) {
            args.push(self.rng.range(1, 3).to_string().into_bytes());
        }
        self.command(t, name, db, tag, args);
    }

    fn zpopmin(&mut self, t: &mut Target<'_>) {
        self.zpop(t, "ZPOPMIN");
    }

    fn zpopmax(&mut self, t: &mut Target<'_>) {
        self.zpop(t, "ZPOPMAX");
    }

    fn bzpop(&mut self, t: &mut Target<'_>, name: &'static str) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::Zset, n);
        self.ensure_zset(t, db, tag, &keys[0]);
        let mut args = cmd![name];
        args.extend(keys.into_iter().map(String::into_bytes));
        args.extend(cmd!["1"]);
        self.command(t, name, db, tag, args);
    }

    fn bzpopmin(&mut self, t: &mut Target<'_>) {
        self.bzpop(t, "BZPOPMIN");
    }

    fn bzpopmax(&mut self, t: &mut Target<'_>) {
        self.bzpop(t, "BZPOPMAX");
    }

    fn bzpopmin_blocked(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::Zset, n);
        let mut block = cmd!["BZPOPMIN"];
        block.extend(keys.iter().map(|k| k.clone().into_bytes()));
        block.extend(cmd!["5"]);
        self.blocked(t, "BZPOPMIN blocked", (db, tag), &keys, block, Fam::Zset);
    }

    fn zmpop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::Zset, n);
        let mut args = cmd!["ZMPOP", keys.len().to_string()];
        args.extend(keys.into_iter().map(String::into_bytes));
        args.extend(cmd![self.rng.pick(&["MIN", "MAX"])]);
        if self.rng.chance(50) {
            args.extend(cmd!["COUNT", self.rng.range(1, 3).to_string()]);
        }
        self.command(t, "ZMPOP", db, tag, args);
    }

    fn bzmpop(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(1, 2) as u64;
        let keys = self.keys(tag, Fam::Zset, n);
        self.ensure_zset(t, db, tag, &keys[0]);
        let mut args = cmd!["BZMPOP", "1", keys.len().to_string()];
        args.extend(keys.into_iter().map(String::into_bytes));
        args.extend(cmd![self.rng.pick(&["MIN", "MAX"])]);
        if self.rng.chance(50) {
            args.extend(cmd!["COUNT", self.rng.range(1, 3).to_string()]);
        }
        self.command(t, "BZMPOP", db, tag, args);
    }

    // ----- geo, hyperloglog -----

    fn geoadd(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Geo);
        let mut args = cmd!["GEOADD", k];
        if self.version >= V6_2 {
            match self.rng.below(5) {
                0 => args.extend(cmd!["NX"]),
                1 => args.extend(cmd!["XX", "CH"]),
                2 => args.extend(cmd!["CH"]),
                _ => {}
            }
        }
        for _ in 0..self.rng.range(1, 2) {
            let (lon, lat) = self.geo_point();
            args.extend(cmd![lon, lat, self.member()]);
        }
        self.command(t, "GEOADD", db, tag, args);
    }

    fn pfadd(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Hll);
        let mut args = cmd!["PFADD", k];
        for _ in 0..self.rng.range(1, 4) {
            args.push(format!("e{}", self.rng.below(5000)).into_bytes());
        }
        self.command(t, "PFADD", db, tag, args);
    }

    /// PFMERGE of HyperLogLogs that are all sparse writes a dense result on 2.8 and 3.2
    /// but keeps it sparse from 4.0 on. Those masters replicate PFMERGE as is, so a newer
    /// destination stores the same registers in another encoding, and the byte-wise
    /// comparison reports a value difference (a native replica of a newer version would
    /// hold the same bytes as this destination). With any input dense every version
    /// writes the same dense bytes, so on those sources one input is made dense first.
    fn pfmerge(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let n = self.rng.range(2, 3) as u64;
        let keys = self.keys(tag, Fam::Hll, n);
        if self.version < V5_0 {
            let mut dense = false;
            for k in &keys {
                let encoding = self.probe(t, db, tag, cmd!["GETRANGE", k, "4", "4"]);
                dense |= encoding.as_bytes() == Some(&[0][..]);
            }
            if !dense {
                // About 2,000 registers set outgrow the sparse encoding's 3,000 bytes.
                let mut args = cmd!["PFADD", keys[1].clone()];
                args.extend((0..2_000).map(|i| format!("e{i}").into_bytes()));
                self.command(t, "PFADD", db, tag, args);
            }
        }
        let mut args = cmd!["PFMERGE"];
        args.extend(keys.into_iter().map(String::into_bytes));
        self.command(t, "PFMERGE", db, tag, args);
    }

    // ----- streams -----

    fn xadd(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Stream);
        let mut args = cmd!["XADD", k];
        if self.version >= V6_2 && self.rng.chance(15) {
            args.extend(cmd!["NOMKSTREAM"]);
        }
        // Exact trimming only: `~` trims whole nodes, whose size is a server setting.
        if self.rng.chance(25) {
            args.extend(cmd!["MAXLEN", self.rng.range(5, 30).to_string()]);
        }
        args.extend(cmd!["*"]);
        for _ in 0..self.rng.range(1, 2) {
            args.extend(cmd![format!("f{}", self.rng.below(3)), self.word()]);
        }
        self.command(t, "XADD", db, tag, args);
    }

    fn add_entry(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) {
        let v = self.word();
        self.command(t, "XADD", db, tag, cmd!["XADD", key, "*", "f", v]);
    }

    fn stream_ids(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
        key: &str,
    ) -> Vec<Vec<u8>> {
        let r = self.probe(t, db, tag, cmd!["XRANGE", key, "-", "+", "COUNT", "20"]);
        r.as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.as_array()?.first()?.as_bytes().map(<[u8]>::to_vec))
            .collect()
    }

    /// An existing stream with at least one entry.
    fn stream_with_entries(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
    ) -> (String, Vec<Vec<u8>>) {
        let k = self.key(tag, Fam::Stream);
        let ids = self.stream_ids(t, db, tag, &k);
        if !ids.is_empty() {
            return (k, ids);
        }
        self.add_entry(t, db, tag, &k);
        let ids = self.stream_ids(t, db, tag, &k);
        (k, ids)
    }

    fn xtrim(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, ids) = self.stream_with_entries(t, db, tag);
        let mut args = cmd!["XTRIM", k];
        if self.version >= V6_2 && self.rng.chance(40) {
            args.extend(cmd!["MINID", self.rng.pick(&ids).clone()]);
        } else {
            args.extend(cmd!["MAXLEN", self.rng.range(0, 20).to_string()]);
        }
        self.command(t, "XTRIM", db, tag, args);
    }

    fn xdel(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, ids) = self.stream_with_entries(t, db, tag);
        let mut args = cmd!["XDEL", k];
        for _ in 0..self.rng.range(1, 2) {
            args.push(self.rng.pick(&ids).clone());
        }
        self.command(t, "XDEL", db, tag, args);
    }

    fn groups(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, key: &str) -> Vec<String> {
        if !self.exists(t, db, tag, key) {
            return Vec::new();
        }
        let r = self.probe(t, db, tag, cmd!["XINFO", "GROUPS", key]);
        r.as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|g| field(g, "name")?.as_str().map(str::to_owned))
            .collect()
    }

    /// A stream with a consumer group: (key, group).
    fn stream_group(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str) -> (String, String) {
        let k = self.key(tag, Fam::Stream);
        let groups = self.groups(t, db, tag, &k);
        if !groups.is_empty() {
            let g = self.rng.pick(&groups).clone();
            return (k, g);
        }
        let g = format!("g{}", self.rng.below(3));
        self.command(
            t,
            "XGROUP CREATE",
            db,
            tag,
            cmd!["XGROUP", "CREATE", k.clone(), g.clone(), "0", "MKSTREAM"],
        );
        (k, g)
    }

    fn consumer(&mut self) -> String {
        format!("c{}", self.rng.below(4))
    }

    fn xgroup_create(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Stream);
        let groups = self.groups(t, db, tag, &k);
        let free: Vec<String> = (0..3)
            .map(|i| format!("g{i}"))
            .filter(|g| !groups.contains(g))
            .collect();
        let g = if free.is_empty() {
            let g = self.rng.pick(&groups).clone();
            self.command(
                t,
                "XGROUP DESTROY",
                db,
                tag,
                cmd!["XGROUP", "DESTROY", k.clone(), g.clone()],
            );
            g
        } else {
            self.rng.pick(&free).clone()
        };
        let id = *self.rng.pick(&["$", "0"]);
        let mut args = cmd!["XGROUP", "CREATE", k.clone(), g, id];
        // Without MKSTREAM the stream must exist.
        if self.rng.chance(50) {
            args.extend(cmd!["MKSTREAM"]);
        } else {
            self.ensure(t, db, tag, Fam::Stream, &k);
        }
        self.command(t, "XGROUP CREATE", db, tag, args);
    }

    fn xgroup_setid(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g) = self.stream_group(t, db, tag);
        let ids = self.stream_ids(t, db, tag, &k);
        let id = match self.rng.below(3) {
            0 => b"$".to_vec(),
            1 if !ids.is_empty() => self.rng.pick(&ids).clone(),
            _ => b"0".to_vec(),
        };
        self.command(
            t,
            "XGROUP SETID",
            db,
            tag,
            cmd!["XGROUP", "SETID", k, g, id],
        );
    }

    fn xgroup_destroy(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g) = self.stream_group(t, db, tag);
        self.command(
            t,
            "XGROUP DESTROY",
            db,
            tag,
            cmd!["XGROUP", "DESTROY", k, g],
        );
    }

    fn xgroup_createconsumer(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g) = self.stream_group(t, db, tag);
        let c = self.consumer();
        self.command(
            t,
            "XGROUP CREATECONSUMER",
            db,
            tag,
            cmd!["XGROUP", "CREATECONSUMER", k, g, c],
        );
    }

    fn xgroup_delconsumer(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g) = self.stream_group(t, db, tag);
        let r = self.probe(t, db, tag, cmd!["XINFO", "CONSUMERS", k.clone(), g.clone()]);
        let consumers: Vec<String> = r
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| field(c, "name")?.as_str().map(str::to_owned))
            .collect();
        let c = if consumers.is_empty() || self.rng.chance(10) {
            self.consumer()
        } else {
            self.rng.pick(&consumers).clone()
        };
        self.command(
            t,
            "XGROUP DELCONSUMER",
            db,
            tag,
            cmd!["XGROUP", "DELCONSUMER", k, g, c],
        );
    }

    fn read_group(&mut self, t: &mut Target<'_>, db: u32, tag: &'static str, k: &str, g: &str) {
        let c = self.consumer();
        let mut args = cmd![
            "XREADGROUP",
            "GROUP",
            g,
            c,
            "COUNT",
            self.rng.range(1, 4).to_string()
        ];
        if self.rng.chance(15) {
            args.extend(cmd!["NOACK"]);
        }
        // Mostly new entries; sometimes the consumer's own history again.
        let from = if self.rng.chance(20) { "0" } else { ">" };
        args.extend(cmd!["STREAMS", k, from]);
        self.command(t, "XREADGROUP", db, tag, args);
    }

    fn xreadgroup(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g) = self.stream_group(t, db, tag);
        if self.rng.chance(50) {
            self.add_entry(t, db, tag, &k);
        }
        self.read_group(t, db, tag, &k, &g);
    }

    /// A stream, a group and some of its pending entry ids (delivering entries first if
    /// none are pending).
    fn pending(
        &mut self,
        t: &mut Target<'_>,
        db: u32,
        tag: &'static str,
    ) -> (String, String, Vec<Vec<u8>>) {
        let (k, g) = self.stream_group(t, db, tag);
        for _ in 0..3 {
            let r = self.probe(
                t,
                db,
                tag,
                cmd!["XPENDING", k.clone(), g.clone(), "-", "+", "10"],
            );
            let ids: Vec<Vec<u8>> = r
                .as_array()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.as_array()?.first()?.as_bytes().map(<[u8]>::to_vec))
                .collect();
            if !ids.is_empty() {
                return (k, g, ids);
            }
            self.add_entry(t, db, tag, &k);
            let c = self.consumer();
            self.command(
                t,
                "XREADGROUP",
                db,
                tag,
                cmd![
                    "XREADGROUP",
                    "GROUP",
                    g.clone(),
                    c,
                    "COUNT",
                    "3",
                    "STREAMS",
                    k.clone(),
                    ">"
                ],
            );
        }
        panic!("no pending entries in {k} group {g} after delivering some");
    }

    fn xack(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g, ids) = self.pending(t, db, tag);
        let mut args = cmd!["XACK", k, g];
        for _ in 0..self.rng.range(1, 2) {
            args.push(self.rng.pick(&ids).clone());
        }
        self.command(t, "XACK", db, tag, args);
    }

    fn xclaim(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g, ids) = self.pending(t, db, tag);
        let c = self.consumer();
        let mut args = cmd!["XCLAIM", k, g, c, "0"];
        for _ in 0..self.rng.range(1, 2) {
            args.push(self.rng.pick(&ids).clone());
        }
        if self.rng.chance(40) {
            args.extend(cmd!["JUSTID"]);
        }
        self.command(t, "XCLAIM", db, tag, args);
    }

    fn xautoclaim(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let (k, g, _) = self.pending(t, db, tag);
        let c = self.consumer();
        let mut args = cmd![
            "XAUTOCLAIM",
            k,
            g,
            c,
            "0",
            "0-0",
            "COUNT",
            self.rng.range(1, 5).to_string()
        ];
        if self.rng.chance(40) {
            args.extend(cmd!["JUSTID"]);
        }
        self.command(t, "XAUTOCLAIM", db, tag, args);
    }

    fn xsetid(&mut self, t: &mut Target<'_>) {
        let (db, tag) = self.place();
        let k = self.key(tag, Fam::Stream);
        self.ensure(t, db, tag, Fam::Stream, &k);
        let info = self.probe(t, db, tag, cmd!["XINFO", "STREAM", k.clone()]);
        let last = field(&info, "last-generated-id")
            .and_then(Reply::as_bytes)
            .and_then(parse_id)
            .unwrap_or_else(|| panic!("XINFO STREAM {k} has no last-generated-id: {info}"));
        // At or past the last id, so never below the top entry.
        let id = match self.rng.below(3) {
            0 => format!("{}-{}", last.0, last.1),
            1 => format!("{}-{}", last.0, last.1 + self.rng.range(1, 5) as u64),
            _ => format!("{}-0", last.0 + self.rng.range(1, 1000) as u64),
        };
        self.command(t, "XSETID", db, tag, cmd!["XSETID", k, id]);
    }

    // ----- seeding and the run -----

    /// Fills every db and tag with keys of every type the version has (streams with
    /// consumer groups and pending entries on 5.0+), some with TTLs; loads the scripts and
    /// (7.0) the function libraries. Not counted in [`Workload::issued`].
    pub fn seed_data(&mut self, t: &mut Target<'_>) {
        self.recording = false;
        for (i, (body, _)) in SCRIPTS.iter().enumerate() {
            let r = self.every_master(t, "SCRIPT LOAD", cmd!["SCRIPT", "LOAD", body]);
            let sha = r.as_str().expect("SCRIPT LOAD answers the SHA1").to_owned();
            if self.shas.len() == i {
                self.shas.push(sha);
            }
        }
        if self.version >= V7_0 {
            for (_, code, _) in LIBRARIES {
                self.every_master(
                    t,
                    "FUNCTION LOAD",
                    cmd!["FUNCTION", "LOAD", "REPLACE", code],
                );
            }
        }
        let dbs = self.dbs.clone();
        for db in dbs {
            for &tag in self.tags {
                for fam in self.fams() {
                    for i in 0..fam.size() {
                        if !self.rng.chance(75) {
                            continue;
                        }
                        let k = format!("w:{{{tag}}}:{}:{i}", fam.code());
                        self.create(t, db, tag, fam, &k);
                        if fam == Fam::Stream {
                            for _ in 0..3 {
                                self.add_entry(t, db, tag, &k);
                            }
                            self.command(
                                t,
                                "XGROUP CREATE",
                                db,
                                tag,
                                cmd!["XGROUP", "CREATE", k.clone(), "g0", "0"],
                            );
                            self.command(
                                t,
                                "XREADGROUP",
                                db,
                                tag,
                                cmd![
                                    "XREADGROUP",
                                    "GROUP",
                                    "g0",
                                    "c0",
                                    "COUNT",
                                    "2",
                                    "STREAMS",
                                    k.clone(),
                                    ">"
                                ],
                            );
                        }
                        if self.ttl_ok(fam) && self.rng.chance(25) {
                            let secs = self.long_secs().to_string();
                            self.command(t, "EXPIRE", db, tag, cmd!["EXPIRE", k, secs]);
                        }
                    }
                }
            }
        }
    }

    /// Issues `ops` operations (at least one of each in the catalogue): the catalogue in
    /// a shuffled order first, then draws by weight.
    pub fn run(&mut self, t: &mut Target<'_>, ops: usize) {
        assert_eq!(
            self.shas.len(),
            SCRIPTS.len(),
            "seed_data loads the scripts EVALSHA uses: call it first"
        );
        self.recording = true;
        let entries = self.entries();
        let mut order: Vec<usize> = (0..entries.len()).collect();
        self.rng.shuffle(&mut order);
        let total: u64 = entries.iter().map(|e| e.weight).sum();
        for i in 0..ops.max(entries.len()) {
            let entry = match order.get(i) {
                Some(&j) => entries[j],
                None => {
                    let mut x = self.rng.below(total);
                    let mut chosen = entries[0];
                    for e in &entries {
                        if x < e.weight {
                            chosen = e;
                            break;
                        }
                        x -= e.weight;
                    }
                    chosen
                }
            };
            (entry.run)(self, t);
        }
        self.recording = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..100).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(43).next_u64(), Rng::new(42).next_u64());
        let mut v: Vec<u32> = (0..50).collect();
        a.shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn catalogue_names_are_unique_and_grow_with_the_version() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|e| e.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate catalogue names");
        let sizes: Vec<usize> = RedisVersion::ALL
            .iter()
            .map(|v| {
                Workload::new(*v, Shape::Standalone { dbs: vec![0, 1] }, 1)
                    .catalogue()
                    .len()
            })
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
        let cluster = Workload::new(V7_0, Shape::Cluster, 1).catalogue();
        for name in ["SELECT", "MOVE", "SWAPDB", "FLUSHDB", "COPY DB"] {
            assert!(!cluster.contains(&name), "{name} on a cluster");
        }
        let one_db = Workload::new(V7_0, Shape::Standalone { dbs: vec![2] }, 1).catalogue();
        assert!(one_db.contains(&"SELECT") && !one_db.contains(&"MOVE"));
    }

    #[test]
    fn history_finds_a_key_by_its_whole_name() {
        let mut w = Workload::new(V7_0, Shape::Standalone { dbs: vec![0] }, 1);
        w.history.push("[db 0] SET w:{a}:str:1 x".into());
        w.history.push("[db 0] SET w:{a}:str:10 x".into());
        w.history.push("[db 1] SET w:{a}:str:1 y".into());
        w.history.push("[db 1] MOVE w:{a}:str:1 0".into());
        w.history.push("[db 2] SWAPDB 2 0".into());
        w.history.push("[db 2] SWAPDB 2 3".into());
        assert_eq!(w.history_of(0, b"w:{a}:str:1").len(), 3);
    }
}
