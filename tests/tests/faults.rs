//! Faults a sync meets in weeks of running, each injected into real processes while a
//! writer keeps changing the source: both services killed with `kill -9` (during the
//! full copy and during the incremental stream), the ingest↔apply link cut, stalled and
//! slowed (through a proxy the test controls), the destination restarted with its data
//! and out of memory, the source's backlog overflowed, the source killed and restarted,
//! and a cluster source failing over.
//!
//! The writer INCRs a few counters and RPUSHes sequence numbers 1, 2, 3… to a list, so
//! a lost write shows as a counter below the source's or a gap in the list, and a
//! repeated one as a counter above it or a duplicate. After every fault the task must
//! come back to SYNCHRONIZING by itself, the destination's counters must equal the
//! source's exactly, the list must be 1..N without gap or duplicate, and VerifyTask must
//! report no difference.
//!
//! Two modes:
//! * CI (default): each fault once (the link test cuts, stalls and slows; the
//!   destination test restarts from an AOF and from an older RDB; the backlog test stops
//!   ingest with SIGTERM, then SIGKILL; the failover test also takes the old master
//!   down); the whole file stays under three minutes.
//! * Soak: `REDIS_SYNC_SOAK_SECS=600` (optionally `REDIS_SYNC_SOAK_SEED=<n>`): each test
//!   gets its share of the time (the total divided by the number of tests) and loops
//!   random variants of its fault with random timings until its share is used, printing
//!   per fault the iterations, differences found, writes lost and writes repeated. A
//!   check that finds differences is counted, the task starts over into a new
//!   destination, the loop goes on, and the test fails at its summary. Run with
//!   `-- --nocapture` to see the lines as they come.
//!
//! On a failure the services' logs are kept in `target/fault-logs/<test>-<pid>/` (and on
//! success too with `REDIS_SYNC_FAULTS_KEEP_LOGS=1`).
//!
//! Tests take a file-wide lock and run one at a time: the machine has two cores, and
//! timings under fault are what is being tested.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis_sync_e2e::proxy::Proxy;
use redis_sync_e2e::sync::{cluster, create_and_start, get, spec, standalone, task_client};
use redis_sync_e2e::{ServiceProcess, target_dir};
use redis_sync_proto::v1::task_service_client::TaskServiceClient;
use redis_sync_proto::v1::{
    RedisEndpoint, ResumeTaskRequest, ShardPhase, Task, TaskState, VerifyTaskRequest,
    VerifyTaskResponse,
};
use redis_sync_testkit::{Client, RedisCluster, RedisServer, RedisVersion, Reply, key_slot};
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------
// Modes, randomness, bookkeeping
// ---------------------------------------------------------------------------------------

/// Number of tests in this file that share the soak time.
const TESTS: u32 = 8;
/// Writer pace, iterations (one INCR + one RPUSH) per second.
const WRITER_RATE: f64 = 250.0;
/// Counters the writer INCRs, round robin.
const COUNTERS: usize = 4;
/// The list of sequence numbers.
const SEQ_KEY: &str = "fault:seq";
/// Keys loaded before the task starts when a test needs a full copy that takes a few
/// seconds (the kill must land in the middle of it).
const BULK_KEYS: u64 = 50_000;
/// Value size of the bulk keys.
const BULK_VALUE: usize = 1024;
/// A full copy, or a return to SYNCHRONIZING after a fault, must happen within this.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// After the writer pauses, the destination must catch up within this.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A heartbeat delay an operator would call healthy (heartbeats go every second).
const HEARTBEAT_DELAY_OK: i64 = 10_000;
/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn counter_key(i: usize) -> String {
    format!("fault:counter:{i}")
}

/// Per-test share of `REDIS_SYNC_SOAK_SECS`, or `None` in CI mode.
fn soak_slice() -> Option<Duration> {
    let secs: u64 = std::env::var("REDIS_SYNC_SOAK_SECS")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| Duration::from_secs(secs) / TESTS)
}

/// xorshift64*: enough randomness for fault timings, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("REDIS_SYNC_SOAK_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ u64::from(std::process::id())
            });
        println!("[{test}] random seed {seed} (REDIS_SYNC_SOAK_SEED={seed} repeats it)");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// What one check after a fault found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    /// Differences VerifyTask reported after the last round.
    differences: u64,
    /// Counter increments and list items the source has and the destination lacks.
    lost: u64,
    /// Counter increments and list items the destination has more than the source.
    repeated: u64,
    /// The destination list holds the same items in another order.
    reordered: bool,
}

#[derive(Debug, Default)]
struct FaultStats {
    iterations: u64,
    differences: u64,
    lost: u64,
    repeated: u64,
}

/// One test's run: its mode, its randomness and its per-fault tallies.
struct Run {
    name: &'static str,
    soak: Option<Duration>,
    started: Instant,
    rng: Rng,
    stats: BTreeMap<&'static str, FaultStats>,
    /// Failed expectations that leave the environment usable (e.g. a wrong status),
    /// reported at the end so the remaining faults still run.
    failures: Vec<String>,
}

impl Run {
    fn new(name: &'static str) -> Run {
        let soak = soak_slice();
        match soak {
            Some(slice) => println!("[{name}] soak mode: {slice:?} of random faults"),
            None => println!("[{name}] CI mode: each fault once"),
        }
        Run {
            name,
            soak,
            started: Instant::now(),
            rng: Rng::new(name),
            stats: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// True while a soak has time left for another iteration (never in CI mode).
    fn again(&self) -> bool {
        self.soak
            .is_some_and(|slice| self.started.elapsed() < slice)
    }

    fn soak(&self) -> bool {
        self.soak.is_some()
    }

    fn record(&mut self, fault: &'static str, outcome: Outcome) {
        let s = self.stats.entry(fault).or_default();
        s.iterations += 1;
        s.differences += outcome.differences;
        s.lost += outcome.lost;
        s.repeated += outcome.repeated;
        println!(
            "[{}] {:>7.1}s fault {fault}: iteration {}, differences {}, writes lost {}, writes repeated {}{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            s.iterations,
            outcome.differences,
            outcome.lost,
            outcome.repeated,
            if outcome.reordered { ", REORDERED" } else { "" },
        );
    }

    /// Records a failed expectation unless `ok`; the test fails at its summary.
    fn expect(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            let failure = failure();
            println!("[{}] FAILED: {failure}", self.name);
            self.failures.push(failure);
        }
    }

    /// Prints the tallies; fails the test with the recorded failures, if any.
    fn summary(&self) {
        println!(
            "[{}] summary after {:.1}s:",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        for (fault, s) in &self.stats {
            println!(
                "[{}]   fault {fault}: iterations {}, differences found {}, writes lost {}, writes repeated {}",
                self.name, s.iterations, s.differences, s.lost, s.repeated
            );
        }
        assert!(
            self.failures.is_empty(),
            "[{}] {} failed expectation(s):\n{}",
            self.name,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Talking to a standalone server or a cluster (the writer and the checks)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Topology {
    Standalone(String),
    Cluster(Vec<String>),
}

/// Blocking connections to one side, routed by key slot for a cluster (MOVED followed).
struct Conn {
    topology: Topology,
    clients: HashMap<String, Client>,
    slots: HashMap<u16, String>,
    seed: usize,
}

impl Conn {
    fn new(topology: Topology) -> Conn {
        Conn {
            topology,
            clients: HashMap::new(),
            slots: HashMap::new(),
            seed: 0,
        }
    }

    fn addr_for(&self, slot: u16) -> String {
        match &self.topology {
            Topology::Standalone(addr) => addr.clone(),
            Topology::Cluster(seeds) => self
                .slots
                .get(&slot)
                .cloned()
                .unwrap_or_else(|| seeds[self.seed % seeds.len()].clone()),
        }
    }

    /// Runs `args` where `key` lives. Error replies (other than redirects, which are
    /// followed) and connection failures come back as `Err`.
    fn cmd(&mut self, key: &str, args: &[&str]) -> Result<Reply, String> {
        let slot = key_slot(key.as_bytes());
        for _ in 0..5 {
            let addr = self.addr_for(slot);
            if !self.clients.contains_key(&addr) {
                let client =
                    Client::connect(addr.as_str(), None, Duration::from_secs(5)).map_err(|e| {
                        self.slots.remove(&slot);
                        self.seed += 1;
                        format!("{addr}: {e}")
                    })?;
                self.clients.insert(addr.clone(), client);
            }
            let client = self.clients.get_mut(&addr).expect("just inserted");
            let reply = match client.cmd_str(args) {
                Ok(reply) => reply,
                Err(e) => {
                    self.clients.remove(&addr);
                    self.slots.remove(&slot);
                    self.seed += 1;
                    return Err(format!("{addr}: {e}"));
                }
            };
            if let Reply::Error(message) = &reply {
                if let Some((_, to)) = message
                    .strip_prefix("MOVED ")
                    .and_then(|rest| rest.split_once(' '))
                {
                    self.slots.insert(slot, to.to_owned());
                    continue;
                }
                return Err(format!("{addr}: {args:?}: {message}"));
            }
            return Ok(reply);
        }
        Err(format!("{args:?}: too many redirects"))
    }
}

/// The writer's keys as one side holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    counters: [i64; COUNTERS],
    seq: Vec<u64>,
}

fn observe(conn: &mut Conn) -> Result<Observed, String> {
    let mut counters = [0; COUNTERS];
    for (i, c) in counters.iter_mut().enumerate() {
        let key = counter_key(i);
        let reply = conn.cmd(&key, &["GET", &key])?;
        *c = match reply.as_str() {
            None if reply.is_nil() => 0,
            Some(text) => text
                .parse()
                .map_err(|_| format!("{key} holds {text:?}, not a number"))?,
            None => return Err(format!("GET {key}: {reply}")),
        };
    }
    let reply = conn.cmd(SEQ_KEY, &["LRANGE", SEQ_KEY, "0", "-1"])?;
    let seq = reply
        .as_array()
        .ok_or_else(|| format!("LRANGE {SEQ_KEY}: {reply}"))?
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{SEQ_KEY} holds {item}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Observed { counters, seq })
}

/// Lost and repeated writes of `dst` against `src` (the source is the truth).
fn compare(src: &Observed, dst: &Observed) -> Outcome {
    let mut out = Outcome::default();
    for (s, d) in src.counters.iter().zip(&dst.counters) {
        out.lost += s.saturating_sub(*d).max(0) as u64;
        out.repeated += d.saturating_sub(*s).max(0) as u64;
    }
    let mut counts: HashMap<u64, i64> = HashMap::new();
    for v in &src.seq {
        *counts.entry(*v).or_default() += 1;
    }
    for v in &dst.seq {
        *counts.entry(*v).or_default() -= 1;
    }
    for n in counts.values() {
        if *n > 0 {
            out.lost += *n as u64;
        } else {
            out.repeated += n.unsigned_abs();
        }
    }
    out.reordered = out.lost == 0 && out.repeated == 0 && src.seq != dst.seq;
    out
}

/// VerifyTask's first differences, readable.
fn describe_differences(report: &VerifyTaskResponse) -> String {
    report
        .first_differences
        .iter()
        .map(|d| {
            format!(
                "db {} key {:?} {:?} ({})",
                d.db,
                String::from_utf8_lossy(&d.key),
                redis_sync_proto::v1::DifferenceKind::try_from(d.kind)
                    .unwrap_or(redis_sync_proto::v1::DifferenceKind::Unspecified),
                d.detail
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Describes where two lists part, for failure messages.
fn first_divergence(src: &[u64], dst: &[u64]) -> String {
    let at = src.iter().zip(dst).position(|(a, b)| a != b);
    match at {
        Some(i) => format!(
            "first difference at index {i}: source {:?}, destination {:?}",
            &src[i..(i + 5).min(src.len())],
            &dst[i..(i + 5).min(dst.len())]
        ),
        None => format!("source has {} items, destination {}", src.len(), dst.len()),
    }
}

// ---------------------------------------------------------------------------------------
// The background writer
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct WriterShared {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicBool,
    iterations: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<String>,
}

/// A thread that INCRs `fault:counter:<i % 4>` and RPUSHes `i` to `fault:seq` for
/// i = 1, 2, 3… at [`WRITER_RATE`], through every fault. When a write fails (source
/// down, failover) it reads the list's last item from the source to know which number
/// comes next, so the source's list stays 1..N whatever happened.
struct Writer {
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(topology: Topology) -> Writer {
        let shared = Arc::new(WriterShared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("fault-writer".into())
                .spawn(move || writer_loop(&shared, topology))
                .expect("spawn the writer")
        };
        Writer {
            shared,
            thread: Some(thread),
        }
    }

    fn iterations(&self) -> u64 {
        self.shared.iterations.load(Ordering::SeqCst)
    }

    fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::SeqCst)
    }

    fn last_error(&self) -> String {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops writing at a clean point (the source's list and the writer agree) and
    /// waits until it has.
    async fn pause(&self) {
        self.shared.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.shared.paused.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the writer could not pause within 60 s; its last error: {}",
                self.last_error()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn resume(&self) {
        self.shared.pause.store(false, Ordering::SeqCst);
    }

    /// Waits until the writer has done `n` more iterations (writes keep flowing while
    /// a fault lasts); a writer stuck on errors fails the test after `timeout`.
    async fn wait_iterations(&self, n: u64, timeout: Duration) {
        let target = self.iterations() + n;
        let deadline = Instant::now() + timeout;
        while self.iterations() < target {
            assert!(
                Instant::now() < deadline,
                "the writer did not make {n} writes within {timeout:?}; its last error: {}",
                self.last_error()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn last_seq(conn: &mut Conn) -> Result<u64, String> {
    let reply = conn.cmd(SEQ_KEY, &["LINDEX", SEQ_KEY, "-1"])?;
    if reply.is_nil() {
        return Ok(0);
    }
    reply
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("LINDEX {SEQ_KEY} -1: {reply}"))
}

fn writer_loop(shared: &WriterShared, topology: Topology) {
    let mut conn = Conn::new(topology);
    let interval = Duration::from_secs_f64(1.0 / WRITER_RATE);
    let mut next: Option<u64> = None;
    let mut tick = Instant::now();
    let fail = |e: String| {
        shared.errors.fetch_add(1, Ordering::SeqCst);
        *shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
        // Retry pace while the source is away.
        std::thread::sleep(Duration::from_millis(20));
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(i) = next else {
            match last_seq(&mut conn) {
                Ok(last) => next = Some(last + 1),
                Err(e) => fail(e),
            }
            continue;
        };
        if shared.pause.load(Ordering::SeqCst) {
            shared.paused.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            tick = Instant::now();
            continue;
        }
        shared.paused.store(false, Ordering::SeqCst);
        tick += interval;
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else if now - tick > Duration::from_secs(1) {
            tick = now;
        }
        let counter = counter_key(i as usize % COUNTERS);
        let number = i.to_string();
        let result = conn
            .cmd(&counter, &["INCR", &counter])
            .and_then(|_| conn.cmd(SEQ_KEY, &["RPUSH", SEQ_KEY, &number]));
        match result {
            Ok(_) => {
                next = Some(i + 1);
                shared.iterations.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                // Unknown whether it was applied: ask the source.
                next = None;
                fail(e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The environment: source, destination, both services, a task, the writer
// ---------------------------------------------------------------------------------------

enum Side {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Side {
    fn topology(&self) -> Topology {
        match self {
            Side::Server(s) => Topology::Standalone(s.addr()),
            Side::Cluster(c) => Topology::Cluster(c.addrs()),
        }
    }

    fn endpoint(&self) -> RedisEndpoint {
        match self {
            Side::Server(s) => standalone(s.addr()),
            Side::Cluster(c) => cluster(cluster_seed(c)),
        }
    }

    fn server(&self) -> &RedisServer {
        match self {
            Side::Server(s) => s,
            Side::Cluster(_) => panic!("a standalone server was expected"),
        }
    }

    fn cluster(&self) -> &RedisCluster {
        match self {
            Side::Cluster(c) => c,
            Side::Server(_) => panic!("a cluster was expected"),
        }
    }

    fn log_tails(&self) -> String {
        match self {
            Side::Server(s) => s.log_tail(),
            Side::Cluster(c) => c
                .nodes()
                .iter()
                .map(|n| format!("--- node {} ---\n{}", n.addr(), n.log_tail()))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The node a cluster task names as its address: the node of index 0, or the next one
/// when node 0 serves the writer's list (that shard's master is failed over and killed
/// in the failover test, and the task's only address should stay reachable).
fn cluster_seed(c: &RedisCluster) -> String {
    let list_master = c.node_for_key(SEQ_KEY.as_bytes()).index();
    let seed = if list_master == 0 { 1 } else { 0 };
    c.nodes()[seed].addr()
}

#[derive(Default)]
struct Options {
    /// A cluster source (3 masters, 1 replica each) and destination (3 masters).
    cluster: bool,
    source_config: Vec<(&'static str, &'static str)>,
    destination_config: Vec<(&'static str, &'static str)>,
    /// Put a [`Proxy`] between apply and ingest (the task's `ingest_endpoint`).
    proxy: bool,
    /// Keys loaded on the source before the task starts.
    bulk_keys: u64,
}

struct Env {
    name: &'static str,
    source: Side,
    destination: Side,
    ingest: ServiceProcess,
    apply: ServiceProcess,
    proxy: Option<Proxy>,
    client: TaskServiceClient<Channel>,
    task: String,
    /// Full syncs the source had served when the current task was created.
    full_syncs_before_task: i64,
    writer: Writer,
    opts: Options,
    /// The source address the task names.
    seed: String,
}

fn start_side(cluster: bool, masters_replicas: (usize, usize), config: &[(&str, &str)]) -> Side {
    if cluster {
        assert!(
            config.is_empty(),
            "cluster nodes take the harness configuration"
        );
        let (m, r) = masters_replicas;
        Side::Cluster(RedisCluster::start(RedisVersion::V7_0, m, r).expect("start a cluster"))
    } else {
        let mut b = RedisServer::builder(RedisVersion::V7_0);
        for (k, v) in config {
            b = b.config(*k, *v);
        }
        Side::Server(b.start().expect("start redis"))
    }
}

/// Loads `n` small keys (`bulk:<i>`, one in ten a hash) with pipelines of 1000.
fn load_bulk(server: &RedisServer, n: u64) {
    let mut client = server.client().expect("connect");
    let value = "v".repeat(BULK_VALUE);
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        for k in i..end {
            let key = format!("bulk:{k}");
            if k % 10 == 0 {
                client
                    .send(&[b"HSET", key.as_bytes(), b"a", b"1", b"b", value.as_bytes()])
                    .expect("send");
            } else {
                client
                    .send(&[b"SET", key.as_bytes(), value.as_bytes()])
                    .expect("send");
            }
        }
        for _ in i..end {
            let reply = client.read_reply().expect("reply");
            assert!(reply.as_error().is_none(), "loading: {reply}");
        }
        i = end;
    }
}

/// Deletes the keys [`load_bulk`] made, 500 per UNLINK, pipelined.
fn unlink_bulk(server: &RedisServer, n: u64) {
    let mut client = server.client().expect("connect");
    let keys: Vec<String> = (0..n).map(|k| format!("bulk:{k}")).collect();
    let mut sent = 0;
    for chunk in keys.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"UNLINK"];
        args.extend(chunk.iter().map(|k| k.as_bytes()));
        client.send(&args).expect("send");
        sent += 1;
    }
    for _ in 0..sent {
        let reply = client.read_reply().expect("reply");
        assert!(reply.as_error().is_none(), "UNLINK: {reply}");
    }
}

impl Env {
    async fn start(name: &'static str, opts: Options) -> Env {
        let (source, destination) = tokio::task::block_in_place(|| {
            let source = start_side(opts.cluster, (3, 1), &opts.source_config);
            let destination = start_side(opts.cluster, (3, 0), &opts.destination_config);
            if opts.bulk_keys > 0 {
                match &source {
                    Side::Server(s) => load_bulk(s, opts.bulk_keys),
                    Side::Cluster(_) => {
                        let mut conn = Conn::new(source.topology());
                        for i in 0..opts.bulk_keys {
                            let key = format!("bulk:{i}");
                            conn.cmd(&key, &["SET", &key, "v"]).expect("load");
                        }
                    }
                }
            }
            (source, destination)
        });
        let ingest = ServiceProcess::ingest(&[]).expect("start ingest");
        let apply = ServiceProcess::apply(&ingest.endpoint(), &[]).expect("start apply");
        ingest.wait_healthy().await.expect("ingest healthy");
        apply.wait_healthy().await.expect("apply healthy");
        let proxy = if opts.proxy {
            Some(Proxy::start(ingest.grpc).await.expect("start the proxy"))
        } else {
            None
        };
        let client = task_client(apply.endpoint()).await;
        let writer = Writer::start(source.topology());
        let seed = source.endpoint().address;
        let mut env = Env {
            name,
            source,
            destination,
            ingest,
            apply,
            proxy,
            client,
            task: String::new(),
            full_syncs_before_task: 0,
            writer,
            opts,
            seed,
        };
        env.create_task().await;
        env
    }

    async fn create_task(&mut self) {
        let mut s = spec(
            self.name,
            self.source.endpoint(),
            self.destination.endpoint(),
        );
        if let Some(p) = &self.proxy {
            s.ingest_endpoint = p.endpoint();
        }
        self.full_syncs_before_task = self.source_stat_sum("sync_full");
        self.task = create_and_start(&mut self.client, s).await;
    }

    /// Stops the task and starts a new one from the same source into a new, empty
    /// destination (same services): a new full copy to inject faults into.
    async fn replace_task(&mut self) {
        redis_sync_e2e::sync::stop(&mut self.client, &self.task).await;
        let destination = tokio::task::block_in_place(|| {
            start_side(self.opts.cluster, (3, 0), &self.opts.destination_config)
        });
        self.destination = destination;
        self.create_task().await;
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("this environment has a proxy")
    }

    async fn task(&mut self) -> Task {
        get(&mut self.client, &self.task).await
    }

    fn source_stat(&self, field: &str) -> i64 {
        self.source.server().info_stat(field).expect("INFO stats")
    }

    /// Sum over the source's masters of an INFO stats field.
    fn source_stat_sum(&self, field: &str) -> i64 {
        match &self.source {
            Side::Server(s) => s.info_stat(field).expect("INFO stats"),
            Side::Cluster(c) => c
                .nodes()
                .iter()
                .map(|n| n.info_stat(field).unwrap_or(0))
                .sum(),
        }
    }

    async fn restart_apply(&mut self) {
        self.apply.restart().expect("restart apply");
        self.apply
            .wait_healthy()
            .await
            .expect("apply healthy again");
        self.client = task_client(self.apply.endpoint()).await;
    }

    async fn restart_ingest(&mut self) {
        self.ingest.restart().expect("restart ingest");
        self.ingest
            .wait_healthy()
            .await
            .expect("ingest healthy again");
    }

    /// Polls the task until the full copy is under way (INITIAL_SYNC with keys applied,
    /// at least `min_percent` of the estimate) and returns (keys done, keys estimated).
    /// Fails when the copy ends first.
    async fn wait_mid_snapshot(&mut self, min_percent: u64) -> (u64, u64) {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let task = self.task().await;
            let shards = task.status.map(|s| s.shards).unwrap_or_default();
            let done: u64 = shards.iter().map(|s| s.keys_done).sum();
            let estimated: u64 = shards.iter().map(|s| s.keys_estimated).sum();
            assert_ne!(
                task.state,
                TaskState::Failed as i32,
                "task failed: {}",
                task.failure_reason
            );
            assert_ne!(
                task.state,
                TaskState::Synchronizing as i32,
                "the full copy ended before the fault could be injected in its middle (keys done {done}/{estimated}); load more keys"
            );
            if task.state == TaskState::InitialSync as i32
                && done > 0
                && done * 100 >= estimated * min_percent
                && shards
                    .iter()
                    .any(|s| s.phase == ShardPhase::Snapshot as i32)
            {
                assert!(
                    done < estimated || estimated == 0,
                    "keys done {done} of {estimated}"
                );
                return (done, estimated);
            }
            assert!(
                Instant::now() < deadline,
                "the full copy never showed progress: {shards:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_state(&mut self, want: TaskState, timeout: Duration) -> Task {
        redis_sync_e2e::sync::wait_state(&mut self.client, &self.task, want, timeout).await
    }

    /// VerifyTask until no difference, for at most `patience` (one call when zero).
    /// `Err` when the call itself kept failing.
    async fn verify(&mut self, patience: Duration) -> Result<VerifyTaskResponse, String> {
        let deadline = Instant::now() + patience;
        loop {
            let report = self
                .client
                .verify_task(VerifyTaskRequest {
                    id: self.task.clone(),
                    max_differences: 10,
                    rounds: 3,
                    max_keys_per_second: 2_000_000,
                    ttl_tolerance_ms: 0,
                })
                .await;
            match report {
                Ok(report) => {
                    let report = report.into_inner();
                    if report.differences == 0 || Instant::now() >= deadline {
                        return Ok(report);
                    }
                }
                Err(status) if Instant::now() >= deadline => {
                    return Err(format!("VerifyTask failed: {status}"));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The check after a fault: pause the writer, wait until the task is SYNCHRONIZING
    /// and the destination caught up, compare the writer's keys exactly, run
    /// VerifyTask, resume the writer. Records the outcome and fails on any difference.
    async fn check(&mut self, run: &mut Run, fault: &'static str) -> Outcome {
        // Writes go on after the fault (the source takes them) before the comparison.
        self.writer
            .wait_iterations(100, Duration::from_secs(60))
            .await;
        self.writer.pause().await;
        self.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT)
            .await;
        let mut src_conn = Conn::new(self.source.topology());
        let mut dst_conn = Conn::new(self.destination.topology());
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let (src, dst) = loop {
            let src = tokio::task::block_in_place(|| observe(&mut src_conn));
            let dst = tokio::task::block_in_place(|| observe(&mut dst_conn));
            match (src, dst) {
                (Ok(src), Ok(dst)) if src == dst || Instant::now() >= deadline => {
                    break (src, dst);
                }
                (src, dst) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot read the writer's keys: source {:?}, destination {:?}",
                        src.err(),
                        dst.err()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut outcome = compare(&src, &dst);
        // Converged: the stream is applied up to the writer's last write (one shard, in
        // order), so VerifyTask should agree at once; it gets 15 s. Not converged: one
        // report for the record.
        let patience = if src == dst {
            Duration::from_secs(15)
        } else {
            Duration::ZERO
        };
        let verified = self.verify(patience).await;
        let status = self.task().await.status.unwrap_or_default();
        let shards: Vec<String> = status
            .shards
            .iter()
            .map(|s| {
                format!(
                    "{} phase {} applied {:?} lag {} B heartbeat delay {} ms",
                    s.shard_id,
                    s.phase,
                    s.applied.as_ref().map(|p| p.offset),
                    s.lag_bytes,
                    s.heartbeat_delay_ms
                )
            })
            .collect();
        outcome.differences = verified.as_ref().map_or(u64::MAX, |r| r.differences);
        run.record(fault, outcome);
        let n = src.seq.len() as u64;
        assert!(
            src.seq.iter().copied().eq(1..=n),
            "the writer's own list on the source is not 1..{n} (a test bug): {}",
            first_divergence(&(1..=n).collect::<Vec<_>>(), &src.seq)
        );
        let failure = if outcome.lost != 0 || outcome.repeated != 0 || outcome.reordered {
            Some(format!(
                "after {fault}: writes lost {}, writes repeated {}, reordered {}; counters source {:?} destination {:?}; list: {}; VerifyTask differences: {:?}, first: {:?}; task status: {shards:#?}",
                outcome.lost,
                outcome.repeated,
                outcome.reordered,
                src.counters,
                dst.counters,
                first_divergence(&src.seq, &dst.seq),
                verified.as_ref().map(|r| r.differences),
                verified.as_ref().map(describe_differences)
            ))
        } else {
            match &verified {
                Err(e) => Some(format!("after {fault}: {e}")),
                Ok(report) if report.differences != 0 => Some(format!(
                    "after {fault}: VerifyTask found {} differences ({} keys on the source, {} on the destination), first: {}",
                    report.differences,
                    report.source_keys,
                    report.destination_keys,
                    describe_differences(report)
                )),
                Ok(report) if report.source_keys == 0 => {
                    Some(format!("VerifyTask read nothing: {report:?}"))
                }
                Ok(_) => None,
            }
        };
        if let Some(failure) = failure {
            // CI: fail here. Soak: count it, start over with a new task into a new
            // destination (this one is known to differ) and go on with the faults; the
            // test fails at its summary.
            assert!(run.soak(), "{failure}");
            run.expect(false, || failure);
            println!(
                "[{}] soak: starting over with a new task into a new destination",
                self.name
            );
            self.writer.resume();
            self.replace_task().await;
            self.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT)
                .await;
            return outcome;
        }
        let heartbeat = self.wait_heartbeat_fresh(fault).await;
        run.expect(heartbeat.is_ok(), || heartbeat.unwrap_err());
        self.writer.resume();
        outcome
    }

    /// The task's heartbeat delay (what an operator alerts on) is back to normal: known
    /// and below [`HEARTBEAT_DELAY_OK`] on every shard.
    async fn wait_heartbeat_fresh(&mut self, fault: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = self.task().await;
            let status = task.status.unwrap_or_default();
            let ok = |d: i64| (0..=HEARTBEAT_DELAY_OK).contains(&d);
            if ok(status.heartbeat_delay_ms)
                && status.shards.iter().all(|s| ok(s.heartbeat_delay_ms))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "after {fault}: the heartbeat delay did not come back below {HEARTBEAT_DELAY_OK} ms within 30 s (-1: unknown): task {} ms, shards {:?}",
                    status.heartbeat_delay_ms,
                    status
                        .shards
                        .iter()
                        .map(|s| (s.shard_id.clone(), s.heartbeat_delay_ms))
                        .collect::<Vec<_>>()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// On a failure, keeps the services' logs and prints their ends.
    fn keep_logs(&self, print: bool) {
        let dir =
            target_dir()
                .join("fault-logs")
                .join(format!("{}-{}", self.name, std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let tail = |text: &str, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        for (what, log) in [("ingest", self.ingest.log()), ("apply", self.apply.log())] {
            let log = strip_ansi(&log);
            let path = dir.join(format!("{what}.log"));
            let _ = std::fs::write(&path, &log);
            if !print {
                continue;
            }
            eprintln!(
                "===== {what} log (kept in {}), last lines:\n{}",
                path.display(),
                tail(&log, 40)
            );
        }
        let _ = std::fs::write(dir.join("source-redis.log"), self.source.log_tails());
        let _ = std::fs::write(
            dir.join("destination-redis.log"),
            self.destination.log_tails(),
        );
        eprintln!(
            "===== writer: {} iterations, {} errors, last error: {}",
            self.writer.iterations(),
            self.writer.errors(),
            self.writer.last_error()
        );
    }
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in '@'..='~'
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking()
            || std::env::var_os("REDIS_SYNC_FAULTS_KEEP_LOGS").is_some_and(|v| v != "0")
        {
            self.keep_logs(std::thread::panicking());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The faults
// ---------------------------------------------------------------------------------------

/// Which service a kill test kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Ingest,
    Apply,
}

fn kill(env: &mut Env, which: Service) {
    match which {
        Service::Ingest => env.ingest.kill9(),
        Service::Apply => env.apply.kill9(),
    }
}

async fn restart(env: &mut Env, which: Service) {
    match which {
        Service::Ingest => env.restart_ingest().await,
        Service::Apply => env.restart_apply().await,
    }
}

fn service_name(which: Service) -> &'static str {
    match which {
        Service::Ingest => "ingest",
        Service::Apply => "apply",
    }
}

/// Faults 1 and 2: `kill -9` of a service in the middle of the full copy, then while
/// the command stream flows; restarted on the same directory and ports, the task
/// continues by itself. A soak loops both at random moments (a full copy again comes
/// from a new task into a new destination).
async fn kill_service(name: &'static str, which: Service) {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new(name);
    let mut env = Env::start(
        name,
        Options {
            bulk_keys: BULK_KEYS,
            ..Options::default()
        },
    )
    .await;
    let mut iteration = 0u32;
    loop {
        let full = iteration == 0 || (run.soak() && iteration > 1 && run.rng.range(0, 9) < 3);
        if full {
            if iteration > 0 {
                env.replace_task().await;
            }
            kill_during_full_copy(&mut env, &mut run, which, iteration == 0).await;
        } else {
            kill_during_incremental(&mut env, &mut run, which).await;
        }
        if iteration == 0 && !run.soak() {
            // CI: the bulk keys go (their deletions stream while the next fault hits),
            // which keeps the next VerifyTask short.
            let source = env.source.server();
            tokio::task::block_in_place(|| unlink_bulk(source, BULK_KEYS));
        }
        iteration += 1;
        let done = if run.soak() {
            iteration >= 2 && !run.again()
        } else {
            iteration == 2
        };
        if done {
            break;
        }
    }
    run.summary();
}

async fn kill_during_full_copy(env: &mut Env, run: &mut Run, which: Service, first: bool) {
    let name = env.name;
    let what = service_name(which);
    // CI, and the soak's first round: once keys are applied. Later rounds: anywhere from
    // right after StartTask (ingest may still be receiving the snapshot) to halfway.
    let early = !first && run.rng.range(0, 2) == 0;
    let (fault, at_kill) = if early {
        let delay = run.rng.millis(0, 1000);
        tokio::time::sleep(delay).await;
        println!("[{name}] killing {what} {delay:?} after StartTask");
        (
            match which {
                Service::Apply => "apply-kill9-full-sync-start",
                Service::Ingest => "ingest-kill9-full-sync-start",
            },
            None,
        )
    } else {
        let min_percent = if first { 0 } else { run.rng.range(0, 50) };
        let at = env.wait_mid_snapshot(min_percent).await;
        (
            match which {
                Service::Apply => "apply-kill9-full-sync",
                Service::Ingest => "ingest-kill9-full-sync",
            },
            Some(at),
        )
    };
    kill(env, which);
    if let Some((done, estimated)) = at_kill {
        println!("[{name}] {what} killed during the full copy at {done}/{estimated} keys");
    }
    env.writer
        .wait_iterations(100, Duration::from_secs(30))
        .await;
    restart(env, which).await;
    let after = env.copy_progress_after_restart().await;
    println!("[{name}] after the restart the task shows {after:?} (keys done, estimated, %)");
    env.check(run, fault).await;
    let full_syncs = env.source_stat("sync_full") - env.full_syncs_before_task;
    println!("[{name}] full syncs the source served for this task: {full_syncs}");
    if which == Service::Apply {
        run.expect(full_syncs == 1, || format!(
            "apply's crash during the full copy made the source produce {full_syncs} snapshots for the task: the copy should resume from ingest's spool"
        ));
    }
    // The copy resumed where it was (one snapshot): the status says so too. An operator
    // watching the progress must not see it fall back to zero, nor lose the estimate.
    // Whichever service restarted: apply's status comes back from ingest's SnapshotBegin
    // marked `resumed`, which carries the estimate and the keys delivered before.
    if let (Some((done, estimated)), Some((done_after, estimated_after, percent))) =
        (at_kill, after)
        && full_syncs == 1
    {
        run.expect(
            done_after >= done && estimated_after == estimated && percent > 0.0,
            || {
                format!(
                    "after {what} restarted in the middle of the full copy, which resumed \
                     from its checkpoint, the status shows {done_after}/{estimated_after} \
                     keys, progress {percent:.0}%; at the kill it showed \
                     {done}/{estimated}: ShardStatus.keys_done / keys_estimated are those \
                     of the current full copy (task.proto) and should not restart from 0"
                )
            },
        );
    }
}

async fn kill_during_incremental(env: &mut Env, run: &mut Run, which: Service) {
    let full_before = env.source_stat("sync_full");
    let before_kill = run.rng.range(50, 500);
    env.writer
        .wait_iterations(before_kill, Duration::from_secs(30))
        .await;
    kill(env, which);
    let while_down = if run.soak() {
        run.rng.range(0, 1500)
    } else {
        500
    };
    env.writer
        .wait_iterations(while_down, Duration::from_secs(30))
        .await;
    restart(env, which).await;
    let fault = match which {
        Service::Apply => "apply-kill9-incremental",
        Service::Ingest => "ingest-kill9-incremental",
    };
    env.check(run, fault).await;
    let full_after = env.source_stat("sync_full");
    run.expect(full_after == full_before, || format!(
        "a restart of {} during the incremental stream needed a new full sync from the source although its backlog held the position",
        service_name(which)
    ));
}

impl Env {
    /// The full copy's progress as the task shows it first after a restart: (keys done,
    /// keys estimated, progress %), or `None` when it is already SYNCHRONIZING.
    async fn copy_progress_after_restart(&mut self) -> Option<(u64, u64, f64)> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let task = self.task().await;
            assert_ne!(
                task.state,
                TaskState::Failed as i32,
                "task failed: {}",
                task.failure_reason
            );
            if task.state == TaskState::Synchronizing as i32 {
                return None;
            }
            let status = task.status.unwrap_or_default();
            let done: u64 = status.shards.iter().map(|s| s.keys_done).sum();
            let estimated: u64 = status.shards.iter().map(|s| s.keys_estimated).sum();
            if done > 0 {
                return Some((done, estimated, status.progress_percent));
            }
            assert!(
                Instant::now() < deadline,
                "the task made no progress after the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_during_full_sync_and_incremental() {
    kill_service("apply_kill9", Service::Apply).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_during_full_sync_and_incremental() {
    kill_service("ingest_kill9", Service::Ingest).await;
}

/// Fault 3: the ingest↔apply link cut (every connection reset, new ones refused),
/// stalled (no byte moves), slowed (a bandwidth cap), through a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_apply_link_cut_stalled_and_slowed() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("link");
    let mut env = Env::start(
        "link",
        Options {
            proxy: true,
            bulk_keys: 10_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    env.check(&mut run, "none (initial sync through the proxy)")
        .await;
    let order = ["link-cut", "link-stall", "link-slow"];
    let mut round = 0;
    loop {
        let fault = if run.soak() {
            *run.rng.pick(&order)
        } else {
            order[round]
        };
        round += 1;
        let length = if run.soak() {
            run.rng.millis(500, 12_000)
        } else {
            Duration::from_secs(3)
        };
        let llen = |env: &Env| {
            env.destination
                .server()
                .cmd_str(&["LLEN", SEQ_KEY])
                .expect("LLEN")
        };
        match fault {
            "link-cut" => {
                let connections = env.proxy().connections();
                env.proxy().cut();
                tokio::time::sleep(length).await;
                env.proxy().restore();
                println!(
                    "[link] cut for {length:?}: apply tried {} new connections meanwhile",
                    env.proxy().connections() - connections
                );
                env.check(&mut run, fault).await;
            }
            "link-stall" => {
                env.proxy().stall();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let before = llen(&env);
                tokio::time::sleep(length.saturating_sub(Duration::from_millis(300))).await;
                let after = llen(&env);
                env.proxy().restore();
                println!(
                    "[link] stalled for {length:?}: the destination list went {before} -> {after} meanwhile"
                );
                env.check(&mut run, fault).await;
            }
            _ => {
                let rate = if run.soak() {
                    run.rng.range(8, 128) * 1024
                } else {
                    32 * 1024
                };
                let bytes = env.proxy().bytes();
                env.proxy().throttle(rate);
                tokio::time::sleep(length).await;
                println!(
                    "[link] capped at {rate} B/s for {length:?}: {} bytes went through",
                    env.proxy().bytes() - bytes
                );
                // The sync catches up through the slow link, then the cap goes.
                env.check(&mut run, fault).await;
                env.proxy().restore();
            }
        }
        if run.soak() && !run.again() || !run.soak() && round == order.len() {
            break;
        }
    }
    run.summary();
}

/// Fault 4: the destination killed and restarted with its data. First with an AOF
/// fsynced on every write: everything it acknowledged survives, the checkpoint with it.
/// Then with only an RDB saved a moment before the crash: the destination comes back
/// older, its checkpoint exactly as old as its data, and the writes after the SAVE must
/// be applied again (from ingest's spool, the source's backlog or a new full copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_restarted_with_its_data() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("destination_restart");
    let mut env = Env::start(
        "destination_restart",
        Options {
            destination_config: vec![("appendonly", "yes"), ("appendfsync", "always")],
            bulk_keys: 10_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    let half = run.soak.map(|slice| slice / 2);
    loop {
        destination_crash(&mut env, &mut run, false).await;
        if half.is_none_or(|h| run.started.elapsed() >= h) {
            break;
        }
    }
    // The same with RDB snapshots only.
    env.opts.destination_config = Vec::new();
    env.replace_task().await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    loop {
        destination_crash(&mut env, &mut run, true).await;
        if !run.again() {
            break;
        }
    }
    run.summary();
}

/// Kills the destination while writes flow and restarts it with its data; with
/// `from_save`, saves it first and lets writes go on past the save, so it restarts older.
async fn destination_crash(env: &mut Env, run: &mut Run, from_save: bool) {
    env.writer
        .wait_iterations(run.rng.range(50, 500), Duration::from_secs(30))
        .await;
    let fault = if from_save {
        let destination = env.destination.server();
        let saved = tokio::task::block_in_place(|| destination.cmd_ok(&["SAVE"]));
        saved.expect("SAVE");
        let llen_saved = destination
            .cmd_str(&["LLEN", SEQ_KEY])
            .expect("LLEN")
            .as_int()
            .unwrap_or(0);
        // Writes reach the destination after the save; the crash loses them there.
        let after = run.rng.range(100, 1000);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let llen = env
                .destination
                .server()
                .cmd_str(&["LLEN", SEQ_KEY])
                .expect("LLEN")
                .as_int()
                .unwrap_or(0);
            if llen >= llen_saved + after as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes do not reach the destination"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        "destination-kill9-restart-from-older-save"
    } else {
        "destination-kill9-restart-aof"
    };
    let down = if run.soak() {
        run.rng.millis(0, 5000)
    } else {
        Duration::from_secs(1)
    };
    let destination = env.destination.server();
    let llen_before = destination
        .cmd_str(&["LLEN", SEQ_KEY])
        .expect("LLEN")
        .as_int();
    tokio::task::block_in_place(|| destination.kill9()).expect("kill the destination");
    tokio::time::sleep(down).await;
    tokio::task::block_in_place(|| destination.restart()).expect("restart the destination");
    let llen_restarted = destination
        .cmd_str(&["LLEN", SEQ_KEY])
        .expect("LLEN")
        .as_int();
    println!(
        "[{}] destination list: {llen_before:?} at the crash, {llen_restarted:?} after the restart",
        env.name
    );
    env.check(run, fault).await;
}

/// Fault 5: the destination out of memory (`maxmemory` below its usage, `noeviction`):
/// every write is refused with OOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_out_of_memory() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("destination_oom");
    let mut env = Env::start(
        "destination_oom",
        Options {
            destination_config: vec![("maxmemory-policy", "noeviction")],
            bulk_keys: 10_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    env.check(&mut run, "none (initial sync)").await;
    loop {
        let destination = env.destination.server();
        let used: i64 = destination
            .info_field("memory", "used_memory")
            .expect("used_memory")
            .parse()
            .expect("a number");
        destination
            .cmd_ok(&["CONFIG", "SET", "maxmemory", &(used / 2).to_string()])
            .expect("CONFIG SET maxmemory");
        let oom = destination
            .cmd_str(&["SET", "fault:probe", "x"])
            .expect("probe");
        assert!(
            oom.as_error().is_some_and(|e| e.starts_with("OOM")),
            "the destination should refuse writes now: {oom}"
        );
        let llen_before = destination
            .cmd_str(&["LLEN", SEQ_KEY])
            .expect("LLEN")
            .as_int();
        // The behaviour this implementation has, asserted as such: the task fails
        // visibly, naming the refused command, its key and db, the destination and the
        // OOM reply, and says that nothing of that MULTI (so not its checkpoint either)
        // was applied. It does not go on by itself when room appears: the operator
        // resumes it, and it continues from the checkpoint with nothing lost or repeated.
        let oom_at = Instant::now();
        let deadline = oom_at + Duration::from_secs(30);
        let task = loop {
            let task = env.task().await;
            if task.state == TaskState::Failed as i32 {
                break task;
            }
            assert_eq!(
                task.state,
                TaskState::Synchronizing as i32,
                "while the destination refuses writes: {task:#?}"
            );
            assert!(
                Instant::now() < deadline,
                "the task did not fail within 30 s of the destination refusing every write (OOM): {task:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let destination = env.destination.server();
        let reason = &task.failure_reason;
        println!(
            "[destination_oom] FAILED {:?} after OOM began: {reason}",
            oom_at.elapsed()
        );
        for part in [
            "OOM command not allowed".to_owned(),
            format!("refused by {}", destination.addr()),
            "in destination db 0 (source db 0)".to_owned(),
            " on key ".to_owned(),
            "nothing of that MULTI was applied".to_owned(),
        ] {
            assert!(
                reason.contains(&part),
                "the failure reason should contain {part:?}: {reason}"
            );
        }
        let llen_during = destination
            .cmd_str(&["LLEN", SEQ_KEY])
            .expect("LLEN")
            .as_int();
        assert_eq!(
            llen_before, llen_during,
            "writes reached the destination although it refuses them"
        );
        // Writes keep coming on the source while the task is FAILED.
        let failed_for = if run.soak() {
            run.rng.range(0, 2500)
        } else {
            250
        };
        env.writer
            .wait_iterations(failed_for, Duration::from_secs(60))
            .await;
        // Room again: the task stays FAILED until the operator resumes it.
        let destination = env.destination.server();
        destination
            .cmd_ok(&["CONFIG", "SET", "maxmemory", "0"])
            .expect("CONFIG SET maxmemory 0");
        env.writer
            .wait_iterations(50, Duration::from_secs(30))
            .await;
        let task = env.task().await;
        assert_eq!(
            task.state,
            TaskState::Failed as i32,
            "a FAILED task went on by itself: {task:#?}"
        );
        let resumed = env
            .client
            .resume_task(ResumeTaskRequest {
                id: env.task.clone(),
            })
            .await
            .expect("ResumeTask")
            .into_inner()
            .task
            .expect("task");
        assert_ne!(
            resumed.state,
            TaskState::Failed as i32,
            "ResumeTask left the task FAILED: {resumed:#?}"
        );
        env.check(&mut run, "destination-oom").await;
        if !run.again() {
            break;
        }
    }
    run.summary();
}

/// Fault 6: the source's backlog overflowed while ingest was down: an automatic full
/// resync; keys deleted on the source in the gap must not survive on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_backlog_overflowed() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("backlog_overflow");
    let mut env = Env::start(
        "backlog_overflow",
        Options {
            source_config: vec![("repl-backlog-size", "16kb")],
            bulk_keys: 10_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    let mut round = 0u64;
    loop {
        round += 1;
        let source = env.source.server();
        // Keys that exist on both sides, deleted on the source in the gap.
        for i in 0..100 {
            source
                .cmd_ok(&["SET", &format!("gap:{round}:del:{i}"), "doomed"])
                .expect("SET");
        }
        env.check(&mut run, "none (before the gap)").await;
        let source = env.source.server();
        let full_before = source.info_stat("sync_full").expect("sync_full");
        let offset = |s: &RedisServer| -> i64 {
            s.info_field("replication", "master_repl_offset")
                .expect("offset")
                .parse()
                .expect("a number")
        };
        let at_stop = offset(source);
        // CI: SIGTERM in the first round, SIGKILL in the second; a soak picks at random.
        let sigkill = if run.soak() {
            run.rng.range(0, 1) == 0
        } else {
            round == 2
        };
        if sigkill {
            println!("[backlog_overflow] ingest stopped with SIGKILL");
            env.ingest.kill9();
        } else {
            println!("[backlog_overflow] ingest stopped with SIGTERM");
            let stopped = env.ingest.terminate(Duration::from_secs(10));
            run.expect(stopped.is_some(), || {
                "ingest did not exit within 10 s of SIGTERM (it was killed)".to_owned()
            });
        }
        for i in 0..100 {
            source
                .cmd_ok(&["DEL", &format!("gap:{round}:del:{i}")])
                .expect("DEL");
            source
                .cmd_ok(&["SET", &format!("gap:{round}:new:{i}"), &"n".repeat(1024)])
                .expect("SET");
        }
        // Well past the backlog: 16 KiB.
        let deadline = Instant::now() + Duration::from_secs(30);
        while offset(source) - at_stop < 4 * 16 * 1024 {
            assert!(Instant::now() < deadline, "the source offset does not move");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env.writer
            .wait_iterations(run.rng.range(0, 500), Duration::from_secs(30))
            .await;
        env.restart_ingest().await;
        let fault = if sigkill {
            "source-backlog-overflow-ingest-sigkill"
        } else {
            "source-backlog-overflow-ingest-sigterm"
        };
        env.check(&mut run, fault).await;
        let source = env.source.server();
        let full_after = source.info_stat("sync_full").expect("sync_full");
        assert!(
            full_after > full_before,
            "the source served no full sync ({full_before} -> {full_after}): the backlog did not overflow, the fault was not injected"
        );
        let destination = env.destination.server();
        let survivors = destination
            .cmd_str(&["KEYS", &format!("gap:{round}:del:*")])
            .expect("KEYS");
        assert_eq!(
            survivors.as_array().map(<[Reply]>::len),
            Some(0),
            "keys deleted on the source during the gap survive on the destination: {survivors}"
        );
        let new = destination
            .cmd_str(&["EXISTS", &format!("gap:{round}:new:99")])
            .expect("EXISTS");
        assert_eq!(new.as_int(), Some(1), "a key written in the gap is missing");
        if run.soak() && !run.again() || !run.soak() && round == 2 {
            break;
        }
    }
    run.summary();
}

/// Fault 7: the source killed with `kill -9` and restarted with its data (AOF): a new
/// replication id, so a full resync, and the task ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_killed_and_restarted_with_its_data() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("source_restart");
    let mut env = Env::start(
        "source_restart",
        Options {
            source_config: vec![("appendonly", "yes"), ("appendfsync", "always")],
            bulk_keys: 10_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    loop {
        env.writer
            .wait_iterations(run.rng.range(50, 500), Duration::from_secs(30))
            .await;
        let source = env.source.server();
        let replid_before = source
            .info_field("replication", "master_replid")
            .expect("replid");
        let errors_before = env.writer.errors();
        tokio::task::block_in_place(|| source.kill9()).expect("kill the source");
        let down = if run.soak() {
            run.rng.millis(0, 5000)
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(down).await;
        tokio::task::block_in_place(|| source.restart()).expect("restart the source");
        let replid_after = source
            .info_field("replication", "master_replid")
            .expect("replid");
        env.check(&mut run, "source-kill9-restart").await;
        let source = env.source.server();
        let full = source.info_stat("sync_full").expect("sync_full");
        println!(
            "[source_restart] replid {replid_before} -> {replid_after}; full syncs since the restart {full}; writer errors {}",
            env.writer.errors() - errors_before
        );
        if replid_after != replid_before {
            assert!(
                full >= 1,
                "a new replication id, yet no full sync since the restart"
            );
        }
        if !run.again() {
            break;
        }
    }
    run.summary();
}

/// Fault 8: a cluster source failing over (manual failover to a replica): the sync
/// continues on the new master and ends equal, counters exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_source_fails_over() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::new("cluster_failover");
    let mut env = Env::start(
        "cluster_failover",
        Options {
            cluster: true,
            bulk_keys: 3_000,
            ..Options::default()
        },
    )
    .await;
    env.wait_state(TaskState::Synchronizing, SYNC_TIMEOUT).await;
    env.check(&mut run, "none (initial sync)").await;
    let mut first = true;
    loop {
        env.writer
            .wait_iterations(run.rng.range(50, 500), Duration::from_secs(30))
            .await;
        let source = env.source.cluster();
        // First the master holding the list; in a soak, any master.
        let master = if first {
            source.node_for_key(SEQ_KEY.as_bytes())
        } else {
            let masters = source.masters();
            *run.rng.pick(&masters)
        };
        first = false;
        let replica = source.replicas_of(master)[0];
        let (old, new) = (master.addr(), replica.addr());
        let old_index = master.index();
        let full_before = env.source_stat_sum("sync_full");
        tokio::task::block_in_place(|| source.failover(replica)).expect("failover");
        println!("[cluster_failover] {old} failed over to {new}");
        env.check(&mut run, "cluster-source-failover").await;
        let full_after = env.source_stat_sum("sync_full");
        println!(
            "[cluster_failover] full syncs served by the source nodes: {full_before} -> {full_after}"
        );
        // The old master goes away (the usual reason for a failover is maintenance):
        // the sync goes on from the new master only. (Not the node the task names as
        // its source address: the task would then know no live node.)
        let source = env.source.cluster();
        let old_node = &source.nodes()[old_index];
        if old_node.addr() == env.seed {
            println!("[cluster_failover] {old} is the task's source address: kept running");
            if !run.again() {
                break;
            }
            continue;
        }
        tokio::task::block_in_place(|| old_node.kill9()).expect("kill the old master");
        println!("[cluster_failover] the old master {old} is down");
        env.check(&mut run, "cluster-old-master-down").await;
        // It comes back as a replica of the new master (for the next round).
        let source = env.source.cluster();
        let old_node = &source.nodes()[old_index];
        tokio::task::block_in_place(|| {
            old_node.restart().expect("restart the old master");
            redis_sync_testkit::wait_until(
                "the old master to rejoin as a replica",
                Duration::from_secs(60),
                || {
                    let info = old_node.info("replication").map_err(|e| e.to_string())?;
                    match (info.get("role"), info.get("master_link_status")) {
                        (Some("slave"), Some("up")) => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .expect("rejoin");
            source.refresh().expect("refresh the cluster view");
        });
        if !run.again() {
            break;
        }
    }
    let full = env.source_stat_sum("sync_full");
    println!("[cluster_failover] full syncs served by the source nodes: {full}");
    run.summary();
}
