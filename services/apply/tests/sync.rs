//! End to end: a real source Redis, the real ingest service in this process, the runner,
//! a real destination Redis. Every test compares the two sides key by key.

mod sync_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use redis_sync_apply::config::{ApplyArgs, ApplyConfig};
use redis_sync_apply::runner::{RunnerContext, RunnerObserver, TaskRunner};
use redis_sync_ingest::{Ingest, config::IngestConfig};
use redis_sync_proto::v1::{
    ConflictMode, HeartbeatOptions, InstanceMode, RedisEndpoint, ShardPhase, SyncType, TaskSpec,
    TaskStatus,
};
use redis_sync_service::CommonConfig;
use redis_sync_telemetry::{LogFormat, Metrics};
use redis_sync_testkit::{RedisCluster, RedisServer, RedisVersion};
use sync_support::{Side, TestResult, differences, eventually, run};
use tokio::sync::oneshot;

/// Everything the runner reported.
#[derive(Default)]
struct Recorder {
    started: AtomicUsize,
    done: AtomicUsize,
    failed: Mutex<Option<String>>,
    last: Mutex<Option<TaskStatus>>,
}

impl RunnerObserver for Recorder {
    fn initial_sync_done(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
    fn initial_sync_started(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn failed(&self, reason: String) {
        *self.failed.lock().unwrap() = Some(reason);
    }
    fn status(&self, status: TaskStatus) {
        *self.last.lock().unwrap() = Some(status);
    }
}

impl Recorder {
    fn check(&self) -> Result<(), String> {
        match &*self.failed.lock().unwrap() {
            Some(r) => Err(format!("the task FAILED: {r}")),
            None => Ok(()),
        }
    }
}

/// An ingest service in this process, and apply's configuration pointing at it.
struct Env {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ingest_config: IngestConfig,
    addr: SocketAddr,
    config: ApplyConfig,
    dir: PathBuf,
    metrics: Metrics,
}

impl Env {
    async fn start(chunk_threshold_bytes: u64) -> TestResult<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = std::env::temp_dir().join(format!(
            "redis-sync-apply-sync-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = IngestConfig {
            common: CommonConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: None,
                log_format: LogFormat::Pretty,
                tls: None,
            },
            spool_dir: dir.join("spool"),
            spool_max_bytes: 1 << 30,
            chunk_threshold_bytes,
            max_batch_events: 512,
            auth_token: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ingest_config = config.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Ingest::new(config, Metrics::new()).serve(listener, async move {
                let _ = stopped.await;
            }),
        );
        let config = ApplyArgs::try_parse_from([
            "redis-sync-apply",
            "--store-path",
            &dir.join("store.redb").display().to_string(),
            "--ingest-endpoint",
            &format!("http://{addr}"),
            "--metrics-listen",
            "off",
        ])?
        .validate()?;
        Ok(Self {
            stop: Some(stop),
            task,
            ingest_config,
            addr,
            config,
            dir,
            metrics: Metrics::new(),
        })
    }

    fn spawn(&self, task_id: &str, spec: &TaskSpec, rec: &Arc<Recorder>) -> TaskRunner {
        TaskRunner::spawn(RunnerContext {
            task_id: task_id.to_owned(),
            spec: spec.clone(),
            config: self.config.clone(),
            observer: rec.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Stops ingest and starts a new one on the same address and spool.
    async fn restart_ingest(&mut self) -> TestResult {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .is_err()
        {
            // Not drained in time: cancel it and wait until its listener is closed.
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        let addr = self.addr;
        let listener = eventually(
            "the ingest port to be free again",
            Duration::from_secs(10),
            || std::net::TcpListener::bind(addr).map_err(|e| e.to_string()),
        )
        .await?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = tokio::spawn(
            Ingest::new(self.ingest_config.clone(), Metrics::new()).serve(listener, async move {
                let _ = stopped.await;
            }),
        );
        self.stop = Some(stop);
        Ok(())
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn endpoint(addr: &str, mode: InstanceMode) -> RedisEndpoint {
    RedisEndpoint {
        mode: mode as i32,
        address: addr.to_owned(),
        ..RedisEndpoint::default()
    }
}

fn spec(
    source: &str,
    dest: RedisEndpoint,
    conflict: ConflictMode,
    dbs: &[u32],
    mapping: &[(u32, u32)],
) -> TaskSpec {
    TaskSpec {
        name: "test".into(),
        source: Some(endpoint(source, InstanceMode::Standalone)),
        destination: Some(dest),
        conflict_mode: conflict as i32,
        databases: dbs.to_vec(),
        db_mapping: mapping.iter().copied().collect::<HashMap<_, _>>(),
        sync_type: SyncType::FullAndIncremental as i32,
        heartbeat: Some(HeartbeatOptions {
            key_prefix: String::new(),
            interval_ms: 200,
            disabled: false,
        }),
        ingest_endpoint: String::new(),
    }
}

fn heartbeat_key(k: &[u8]) -> bool {
    k.starts_with(b"DTS_REDIS_TIMESTAMP_HEARTBEAT")
}

async fn initial_sync_done(rec: &Recorder, timeout: Duration) -> TestResult {
    eventually("the initial sync to finish", timeout, || {
        rec.check()?;
        if rec.done.load(Ordering::SeqCst) > 0 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

/// Waits until `pairs` of (source db, destination db) are equal.
async fn converged(
    rec: &Recorder,
    src: &RedisServer,
    dst: &Side<'_>,
    pairs: &[(u32, u32)],
    timeout: Duration,
) -> TestResult {
    eventually("the destination to equal the source", timeout, || {
        rec.check()?;
        let mut all = Vec::new();
        for (s, d) in pairs {
            let diffs = differences(&Side::Server(src), *s, dst, *d, &heartbeat_key)
                .map_err(|e| e.to_string())?;
            all.extend(diffs.into_iter().map(|x| format!("db {s}->{d}: {x}")));
        }
        if all.is_empty() {
            Ok(())
        } else {
            Err(all.into_iter().take(10).collect::<Vec<_>>().join("\n"))
        }
    })
    .await
}

fn cmd(server: &RedisServer, db: u32, args: &[&str]) -> TestResult {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    run(server, db, &a).map(|_| ())
}

/// A function library (loaded on the destination before the keys).
const LIBRARY: &str = "#!lua name=synclib\nredis.register_function('setit', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";

/// Every type, several dbs with a mapping, big keys in chunks, then a broad mix of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_every_type_then_a_mix_of_writes() -> TestResult {
    let started = std::time::Instant::now();
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(4096).await?;
    let big_items: Vec<String> = (0..1500).map(|i| format!("item-{i}")).collect();
    let mut big_list = vec!["RPUSH", "big:list"];
    big_list.extend(big_items.iter().map(String::as_str));
    let mut big_set = vec!["SADD", "big:set"];
    big_set.extend(big_items.iter().map(String::as_str));
    let mut big_hash = vec!["HSET", "big:hash"];
    for i in &big_items {
        big_hash.push(i);
        big_hash.push("some value");
    }
    let scores: Vec<String> = (0..1500)
        .map(|i| format!("{}", f64::from(i) * 1.000_000_1 - 700.0))
        .collect();
    let mut big_zset = vec![
        "ZADD",
        "big:zset",
        "-inf",
        "ninf",
        "+inf",
        "pinf",
        "1e-300",
        "tiny",
        "-0.0",
        "negzero",
        "7.123456789",
        "seven",
    ];
    for (s, m) in scores.iter().zip(&big_items) {
        big_zset.push(s);
        big_zset.push(m);
    }
    let big_string = "s".repeat(20_000);
    for c in [
        &["FUNCTION", "LOAD", LIBRARY][..],
        &["SET", "str", "hello"],
        &["SET", "int", "12345"],
        &["SET", "big:string", &big_string],
        &["RPUSH", "list", "a", "b", "c"],
        &["SADD", "set", "x", "y", "1", "2"],
        &[
            "ZADD",
            "zset",
            "7.123456789",
            "a",
            "-inf",
            "b",
            "+inf",
            "c",
            "1e-300",
            "d",
            "-0.0",
            "e",
        ],
        &["HSET", "hash", "f1", "v1", "f2", "v2"],
        &["XADD", "stream", "1-1", "f", "v"],
        &["XADD", "stream", "2-1", "f", "w"],
        &["XGROUP", "CREATE", "stream", "g1", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "1",
            "STREAMS",
            "stream",
            ">",
        ],
        &["SET", "ttl:str", "v", "EX", "3000"],
        &["RPUSH", "ttl:list", "v"],
        &["PEXPIRE", "ttl:list", "4000000"],
        &big_list,
        &big_set,
        &big_hash,
        &big_zset,
    ] {
        cmd(&src, 0, c)?;
    }
    for i in 0..200 {
        cmd(
            &src,
            0,
            &[
                "XADD",
                "big:stream",
                "*",
                "n",
                &i.to_string(),
                "pad",
                &"p".repeat(40),
            ],
        )?;
    }
    cmd(&src, 0, &["XGROUP", "CREATE", "big:stream", "grp", "0"])?;
    cmd(
        &src,
        0,
        &[
            "XREADGROUP",
            "GROUP",
            "grp",
            "bob",
            "COUNT",
            "3",
            "STREAMS",
            "big:stream",
            ">",
        ],
    )?;
    cmd(&src, 1, &["SET", "not-selected", "1"])?;
    cmd(&src, 2, &["SET", "in-two", "2"])?;
    cmd(&src, 2, &["HSET", "hash-two", "a", "b"])?;

    let rec = Arc::new(Recorder::default());
    let spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[0, 2],
        &[(2, 5)],
    );
    let runner = env.spawn("every-type", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(60)).await?;
    let dst_side = Side::Server(&dst);
    converged(
        &rec,
        &src,
        &dst_side,
        &[(0, 0), (2, 5)],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        run(&dst, 1, &[b"DBSIZE"])?.as_int(),
        Some(0),
        "db 1 is not selected"
    );
    assert!(rec.started.load(Ordering::SeqCst) >= 1);
    let functions = run(&dst, 0, &[b"FUNCTION", b"LIST"])?;
    let names: Vec<Vec<u8>> = functions
        .as_array()
        .unwrap_or_default()
        .iter()
        .flat_map(|lib| {
            lib.as_array()
                .unwrap_or_default()
                .iter()
                .filter_map(|x| x.as_bytes().map(<[u8]>::to_vec))
        })
        .collect();
    assert!(names.iter().any(|n| n == b"synclib"), "{functions:?}");

    // Incremental: a broad mix.
    let far = (sync_support::now_ms() + 3_600_000).to_string();
    for (db, c) in [
        (0, &["SET", "new", "1"][..]),
        (0, &["INCR", "int"]),
        (0, &["INCRBYFLOAT", "int", "0.5"]),
        (0, &["APPEND", "str", " world"]),
        (0, &["LPUSH", "list", "z"]),
        (0, &["LSET", "list", "1", "changed"]),
        (0, &["HSET", "hash", "f3", "v3"]),
        (0, &["SADD", "set", "q"]),
        (0, &["ZADD", "zset", "1.5", "new"]),
        (0, &["ZINCRBY", "zset", "2.25", "new"]),
        (0, &["EXPIRE", "str", "5000"]),
        (0, &["PEXPIREAT", "hash", &far]),
        (0, &["SETEX", "setex", "3000", "v"]),
        (0, &["DEL", "set"]),
        (0, &["RENAME", "list", "list2"]),
        (0, &["XADD", "stream", "*", "f", "new"]),
        (0, &["XACK", "stream", "g1", "1-1"]),
        (0, &["RPOP", "big:list"]),
        (0, &["ZREM", "big:zset", "item-3"]),
        (2, &["SET", "in-two", "changed"]),
        (1, &["SET", "not-selected-2", "1"]),
        (0, &["MOVE", "new", "1"]),
        (0, &["COPY", "str", "str-copy", "DB", "2"]),
        (0, &["FCALL", "setit", "1", "by-function", "v"]),
        (0, &["PUBLISH", "channel", "message"]),
    ] {
        cmd(&src, db, c)?;
    }
    // A MULTI/EXEC unit.
    {
        let mut c = src.client()?;
        for a in [
            &["MULTI"][..],
            &["INCR", "tx-counter"],
            &["SET", "tx-key", "v"],
            &["LPUSH", "tx-list", "1", "2"],
            &["EXEC"],
        ] {
            c.cmd_str(a)?;
        }
    }
    converged(
        &rec,
        &src,
        &dst_side,
        &[(0, 0), (2, 5)],
        Duration::from_secs(30),
    )
    .await?;
    // Databases move as a whole.
    cmd(&src, 0, &["SWAPDB", "0", "2"])?;
    cmd(&src, 2, &["SET", "after-swap", "1"])?;
    converged(
        &rec,
        &src,
        &dst_side,
        &[(0, 0), (2, 5)],
        Duration::from_secs(30),
    )
    .await?;
    cmd(&src, 2, &["FLUSHDB"])?;
    cmd(&src, 0, &["SET", "after-flushdb", "1"])?;
    converged(
        &rec,
        &src,
        &dst_side,
        &[(0, 0), (2, 5)],
        Duration::from_secs(30),
    )
    .await?;
    cmd(&src, 0, &["FLUSHALL"])?;
    cmd(&src, 0, &["SET", "after-flushall", "1"])?;
    cmd(&src, 2, &["SET", "after-flushall", "2"])?;
    converged(
        &rec,
        &src,
        &dst_side,
        &[(0, 0), (2, 5)],
        Duration::from_secs(30),
    )
    .await?;

    // Status: streaming, with a heartbeat delay measured.
    eventually(
        "a status with a heartbeat delay",
        Duration::from_secs(10),
        || {
            let s = rec.last.lock().unwrap().clone().ok_or("no status yet")?;
            let shard = s.shards.first().ok_or("no shard")?;
            if shard.phase == ShardPhase::Streaming as i32
                && s.heartbeat_delay_ms >= 0
                && s.progress_percent == 100.0
            {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await?;
    runner.stop().await;
    rec.check()?;
    let text = env.metrics.render();
    assert!(
        text.contains("redis_sync_apply_batches_total{task=\"every-type\""),
        "{text}"
    );
    env.stop().await;
    eprintln!(
        "standalone_every_type_then_a_mix_of_writes: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// INCR, LPUSH, APPEND run on the source while the runner is killed (dropped mid-batch)
/// and restarted again and again: the destination ends with exactly the source's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_abrupt_restarts() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(1024 * 1024).await?;
    let mut spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[],
        &[],
    );
    spec.heartbeat = Some(HeartbeatOptions {
        disabled: true,
        ..HeartbeatOptions::default()
    });
    let rec = Arc::new(Recorder::default());

    const ROUNDS: usize = 4000;
    let done = Arc::new(AtomicBool::new(false));
    let writes = {
        let mut c = src.client()?;
        let done = done.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0..ROUNDS {
                // Pipelined in small bursts so batches hold many events.
                for a in [
                    &["INCR", "counter"][..],
                    &["LPUSH", "list", "x"],
                    &["APPEND", "text", "a"],
                ] {
                    c.send(&a.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())
                        .map_err(|e| e.to_string())?;
                }
                if i % 3 == 0 {
                    // A transaction now and then.
                    for a in [
                        &["MULTI"][..],
                        &["INCR", "counter"],
                        &["INCR", "tx"],
                        &["EXEC"],
                    ] {
                        c.send(&a.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())
                            .map_err(|e| e.to_string())?;
                    }
                    for _ in 0..4 {
                        c.read_reply().map_err(|e| e.to_string())?;
                    }
                }
                for _ in 0..3 {
                    c.read_reply().map_err(|e| e.to_string())?;
                }
                // Spread the writes over the seconds in which the runner is killed.
                if i % 8 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
    };
    // Kill the runner at varied moments, including during the full copy.
    let mut kills = 0;
    for round in 0..8u64 {
        let runner = env.spawn("once", &spec, &rec);
        tokio::time::sleep(Duration::from_millis(150 + 97 * round)).await;
        let at_kill = run(&dst, 0, &[b"GET", b"counter"])?;
        eprintln!(
            "round {round}: destination counter {at_kill}, source writes done: {}",
            done.load(Ordering::SeqCst)
        );
        if round == 3 {
            runner.stop().await; // one clean stop among the crashes
        } else {
            drop(runner); // abrupt: the in-flight MULTI either committed or did not
            kills += 1;
        }
        rec.check()?;
    }
    let runner = env.spawn("once", &spec, &rec);
    eventually(
        "the source writes to finish",
        Duration::from_secs(60),
        || {
            if done.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("writing".into())
            }
        },
    )
    .await?;
    writes.join().map_err(|_| "writer thread panicked")??;
    let dst_side = Side::Server(&dst);
    converged(&rec, &src, &dst_side, &[(0, 0)], Duration::from_secs(60)).await?;
    let counter = ROUNDS + ROUNDS.div_ceil(3);
    assert_eq!(
        run(&dst, 0, &[b"GET", b"counter"])?.as_str(),
        Some(counter.to_string().as_str())
    );
    assert_eq!(
        run(&dst, 0, &[b"LLEN", b"list"])?.as_int(),
        Some(ROUNDS as i64)
    );
    assert_eq!(
        run(&dst, 0, &[b"STRLEN", b"text"])?.as_int(),
        Some(ROUNDS as i64)
    );
    assert!(kills >= 6);
    runner.stop().await;
    rec.check()?;
    env.stop().await;
    Ok(())
}

/// OVERWRITE into a destination that already holds keys of the same names: each is
/// replaced whole (a list never ends up with its items twice), big ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_existing_keys_whole() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(2048).await?;
    let items: Vec<String> = (0..600).map(|i| format!("element-{i}")).collect();
    for server in [&src, &dst] {
        cmd(server, 0, &["RPUSH", "list", "a", "b"])?;
        cmd(server, 0, &["SADD", "set", "a", "b"])?;
        cmd(server, 0, &["XADD", "stream", "1-1", "f", "v"])?;
        let mut big = vec!["RPUSH", "big:list"];
        big.extend(items.iter().map(String::as_str));
        cmd(server, 0, &big)?;
    }
    cmd(&dst, 0, &["RPUSH", "list", "only-on-destination"])?;
    cmd(&dst, 0, &["SET", "dest-only", "stays"])?;
    let rec = Arc::new(Recorder::default());
    let spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Overwrite,
        &[],
        &[],
    );
    let runner = env.spawn("overwrite", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(60)).await?;
    let d = differences(
        &Side::Server(&src),
        0,
        &Side::Server(&dst),
        0,
        &|k: &[u8]| heartbeat_key(k) || k == b"dest-only",
    )?;
    assert!(d.is_empty(), "{}", d.join("\n"));
    assert_eq!(run(&dst, 0, &[b"LLEN", b"big:list"])?.as_int(), Some(600));
    assert_eq!(run(&dst, 0, &[b"XLEN", b"stream"])?.as_int(), Some(1));
    assert_eq!(
        run(&dst, 0, &[b"GET", b"dest-only"])?.as_str(),
        Some("stays")
    );
    runner.stop().await;
    env.stop().await;
    Ok(())
}

/// Keys with 1-2 s TTLs written on the source while the destination is held behind (its
/// writes paused): replayed commands meet keys the destination already expired, which
/// must neither fail the task nor leave a wrong value once the source's DELs arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expiring_while_the_destination_is_behind_converge() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(1024 * 1024).await?;
    let stop_writes = Arc::new(AtomicBool::new(false));
    let generations = Arc::new(AtomicUsize::new(0));
    // Generations of short-lived keys, written to until (and after) they expire.
    let writer = {
        let mut c = src.client()?;
        let stop = stop_writes.clone();
        let generations = generations.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut g = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (l, n) = (format!("list:{g}"), format!("ctr:{g}"));
                let ttl = (1000 + (g % 2) * 1000).to_string();
                for a in [
                    vec!["RPUSH", l.as_str(), "a", "b", "c"],
                    vec!["PEXPIRE", &l, &ttl],
                    vec!["SET", &n, "0", "PX", &ttl],
                ] {
                    c.cmd_str(&a).map_err(|e| e.to_string())?;
                }
                let until =
                    std::time::Instant::now() + Duration::from_millis(1000 + (g % 2) * 1000 + 300);
                while std::time::Instant::now() < until {
                    // Errors are expected once the key is gone on the source too.
                    let _ = c.cmd_str(&["LSET", &l, "0", "v"]);
                    let _ = c.cmd_str(&["INCR", &n]);
                    let _ = c.cmd_str(&["RPUSH", &l, "x"]);
                    std::thread::sleep(Duration::from_millis(40));
                }
                g += 1;
                generations.store(g as usize, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    // Volatile keys exist (so the full copy carries some) before the sync starts.
    eventually(
        "the first short-lived keys",
        Duration::from_secs(10),
        || match run(&src, 0, &[b"EXISTS", b"list:0"])
            .map_err(|e| e.to_string())?
            .as_int()
        {
            Some(1) => Ok(()),
            n => Err(format!("{n:?}")),
        },
    )
    .await?;
    // The destination accepts no writes for 3 s: the full copy and everything after it
    // wait, so every key of those seconds has expired there before its writes arrive.
    cmd(&dst, 0, &["CLIENT", "PAUSE", "3000", "WRITE"])?;
    let rec = Arc::new(Recorder::default());
    let mut spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[],
        &[],
    );
    spec.heartbeat = Some(HeartbeatOptions {
        disabled: true,
        ..HeartbeatOptions::default()
    });
    let runner = env.spawn("expiry", &spec, &rec);
    // Keep writing through the pause and a little beyond it.
    eventually(
        "three generations of keys",
        Duration::from_secs(30),
        || match generations.load(Ordering::SeqCst) {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} generations")),
        },
    )
    .await?;
    stop_writes.store(true, Ordering::SeqCst);
    writer.join().map_err(|_| "writer panicked")??;
    initial_sync_done(&rec, Duration::from_secs(30)).await?;
    // Every short-lived key has expired on the source (what remains was re-created by
    // writes after the expiry, without a TTL); the destination must agree.
    eventually(
        "the source to expire every volatile key",
        Duration::from_secs(10),
        || {
            let info = src.info("keyspace").map_err(|e| e.to_string())?;
            match info.get("db0") {
                Some(v) if v.contains("expires=0,") => Ok(()),
                None => Ok(()),
                v => Err(format!("{v:?}")),
            }
        },
    )
    .await?;
    converged(
        &rec,
        &src,
        &Side::Server(&dst),
        &[(0, 0)],
        Duration::from_secs(30),
    )
    .await?;
    let text = env.metrics.render();
    let missing: u64 = text
        .lines()
        .find(|l| l.starts_with("redis_sync_apply_missing_key_replies_total{task=\"expiry\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        missing > 0,
        "no missing-key replies were seen; the test did not put the destination behind:\n{text}"
    );
    runner.stop().await;
    rec.check()?;
    env.stop().await;
    Ok(())
}

/// Old sources: scripts replicated verbatim (EVAL / EVALSHA), relative TTLs, RDB 6 and 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_sources_2_8_and_3_2_into_7_0() -> TestResult {
    for version in [RedisVersion::V2_8, RedisVersion::V3_2] {
        let src = RedisServer::start(version)?;
        let dst = RedisServer::start(RedisVersion::V7_0)?;
        let env = Env::start(1024 * 1024).await?;
        let script =
            "redis.call('INCRBY', KEYS[1], ARGV[1]) return redis.call('RPUSH', KEYS[2], ARGV[1])";
        let sha = src
            .cmd_ok(&["SCRIPT", "LOAD", script])?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for c in [
            &["SET", "str", "v"][..],
            &["RPUSH", "list", "1", "2"],
            &["HMSET", "hash", "a", "1", "b", "2"],
            &["ZADD", "zset", "1.5", "a", "-inf", "b", "1e-300", "c"],
            &["SADD", "set", "m", "n"],
            &["SETEX", "ttl", "5000", "v"],
            &["EVALSHA", &sha, "2", "n", "l", "3"],
        ] {
            cmd(&src, 0, c)?;
        }
        cmd(&src, 3, &["SET", "db3", "x"])?;
        let rec = Arc::new(Recorder::default());
        let mut spec = spec(
            &src.addr(),
            endpoint(&dst.addr(), InstanceMode::Standalone),
            ConflictMode::Intercept,
            &[],
            &[],
        );
        spec.heartbeat = Some(HeartbeatOptions {
            disabled: true,
            ..HeartbeatOptions::default()
        });
        let runner = env.spawn(&format!("old-{}", version.label()), &spec, &rec);
        initial_sync_done(&rec, Duration::from_secs(60)).await?;
        for c in [
            &["EVALSHA", &sha, "2", "n", "l", "4"][..],
            &[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                "evald",
                "yes",
            ],
            &["EXPIRE", "str", "6000"],
            &["INCR", "counter"],
            &["LPUSH", "list", "0"],
            &["DEL", "set"],
        ] {
            cmd(&src, 0, c)?;
        }
        cmd(&src, 3, &["SET", "db3-later", "y"])?;
        converged(
            &rec,
            &src,
            &Side::Server(&dst),
            &[(0, 0), (3, 3)],
            Duration::from_secs(30),
        )
        .await?;
        assert_eq!(run(&dst, 0, &[b"GET", b"n"])?.as_str(), Some("7"));
        runner.stop().await;
        rec.check()?;
        env.stop().await;
    }
    Ok(())
}

/// A standalone source into a 3-master cluster, db 0 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_source_into_a_cluster() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let cluster = RedisCluster::start(RedisVersion::V7_0, 3, 0)?;
    let env = Env::start(4096).await?;
    for i in 0..300 {
        cmd(&src, 0, &["SET", &format!("key:{i}"), &i.to_string()])?;
    }
    let items: Vec<String> = (0..1000).map(|i| format!("i{i}")).collect();
    let mut big = vec!["RPUSH", "big:list"];
    big.extend(items.iter().map(String::as_str));
    cmd(&src, 0, &big)?;
    cmd(&src, 0, &["HSET", "hash", "a", "b"])?;
    cmd(&src, 0, &["SET", "ttl", "v", "EX", "5000"])?;
    cmd(&src, 1, &["SET", "db1-not-selected", "v"])?;
    let rec = Arc::new(Recorder::default());
    let seed = cluster.masters()[1].server().addr();
    let spec = spec(
        &src.addr(),
        endpoint(&seed, InstanceMode::Cluster),
        ConflictMode::Intercept,
        &[0],
        &[(0, 0)],
    );
    let runner = env.spawn("to-cluster", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(60)).await?;
    let side = Side::Cluster(&cluster);
    converged(&rec, &src, &side, &[(0, 0)], Duration::from_secs(30)).await?;
    for c in [
        &["MSET", "a", "1", "b", "2", "c", "3", "d", "4"][..],
        &["DEL", "key:1", "key:2", "key:3", "key:4", "key:5"],
        &["UNLINK", "key:6", "key:7"],
        &["INCR", "key:10"],
        &["LPUSH", "big:list", "head"],
        &["RENAME", "{t}a", "{t}b"],
    ] {
        // RENAME of a missing key fails on the source too and is not replicated.
        let _ = cmd(&src, 0, c);
    }
    {
        let mut c = src.client()?;
        for a in [
            &["MULTI"][..],
            &["INCR", "{x}1"],
            &["INCR", "{y}2"],
            &["EXEC"],
        ] {
            c.cmd_str(a)?;
        }
    }
    cmd(&src, 1, &["SET", "db1-later", "v"])?;
    converged(&rec, &src, &side, &[(0, 0)], Duration::from_secs(30)).await?;
    runner.stop().await;
    rec.check()?;
    // A restart continues from the checkpoints without a new full copy.
    let rec2 = Arc::new(Recorder::default());
    let runner = env.spawn("to-cluster", &spec, &rec2);
    cmd(&src, 0, &["SET", "after-restart", "1"])?;
    converged(&rec2, &src, &side, &[(0, 0)], Duration::from_secs(30)).await?;
    assert!(
        rec2.done.load(Ordering::SeqCst) >= 1,
        "resumed in the stream: synchronizing"
    );
    assert_eq!(
        rec2.started.load(Ordering::SeqCst),
        0,
        "no new full copy after a restart"
    );
    runner.stop().await;
    env.stop().await;
    Ok(())
}

/// The destination drops every connection several times and ingest restarts while the
/// source keeps writing: the runner retries (never FAILED) and every write lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_an_ingest_restart_are_retried() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let mut env = Env::start(1024 * 1024).await?;
    let mut spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[],
        &[],
    );
    spec.heartbeat = Some(HeartbeatOptions {
        disabled: true,
        ..HeartbeatOptions::default()
    });
    let rec = Arc::new(Recorder::default());
    const ROUNDS: usize = 3000;
    let done = Arc::new(AtomicBool::new(false));
    let writes = {
        let mut c = src.client()?;
        let done = done.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0..ROUNDS {
                c.cmd_str(&["INCR", "counter"]).map_err(|e| e.to_string())?;
                c.cmd_str(&["RPUSH", "list", &i.to_string()])
                    .map_err(|e| e.to_string())?;
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
    };
    let runner = env.spawn("retry", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(60)).await?;
    let counter = |dst: &RedisServer| -> Result<i64, String> {
        let r = run(dst, 0, &[b"GET", b"counter"]).map_err(|e| e.to_string())?;
        Ok(r.as_str().and_then(|s| s.parse().ok()).unwrap_or(0))
    };
    for round in 0..3 {
        let before = counter(&dst)?;
        // Every client connection goes, the runner's included.
        cmd(&dst, 0, &["CLIENT", "KILL", "TYPE", "normal"])?;
        eventually(
            "progress after the disconnect",
            Duration::from_secs(30),
            || {
                rec.check()?;
                let now = counter(&dst)?;
                if now > before || done.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(format!("round {round}: still {now}"))
                }
            },
        )
        .await?;
    }
    env.restart_ingest().await?;
    eventually(
        "the source writes to finish",
        Duration::from_secs(60),
        || {
            rec.check()?;
            if done.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("writing".into())
            }
        },
    )
    .await?;
    writes.join().map_err(|_| "writer panicked")??;
    converged(
        &rec,
        &src,
        &Side::Server(&dst),
        &[(0, 0)],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(counter(&dst)?, ROUNDS as i64);
    assert_eq!(
        run(&dst, 0, &[b"LLEN", b"list"])?.as_int(),
        Some(ROUNDS as i64)
    );
    let text = env.metrics.render();
    assert!(
        text.lines().any(|l| l
            .starts_with("redis_sync_apply_errors_total{task=\"retry\",kind=\"transient\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );
    runner.stop().await;
    rec.check()?;
    env.stop().await;
    Ok(())
}

/// A destination that diverged (a key of another type) fails the task, naming the
/// command, the key, the db and the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_fails_the_task_with_its_context() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(1024 * 1024).await?;
    let spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[0, 4],
        &[(4, 6)],
    );
    let rec = Arc::new(Recorder::default());
    let runner = env.spawn("refused", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(60)).await?;
    cmd(&dst, 6, &["SET", "victim", "a string"])?;
    cmd(&src, 4, &["LPUSH", "victim", "x"])?;
    let reason = eventually("the task to fail", Duration::from_secs(30), || {
        rec.failed
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| "still running".to_owned())
    })
    .await?;
    for part in [
        "LPUSH",
        "\"victim\"",
        "destination db 6",
        "source db 4",
        "WRONGTYPE",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    runner.stop().await;
    env.stop().await;
    Ok(())
}

/// The runner dies in the middle of a full copy; the next one resumes it from the
/// checkpoint inside the snapshot: no key twice (INTERCEPT would refuse a second RESTORE
/// with BUSYKEY), none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_the_full_copy_resumes_it() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let env = Env::start(1024 * 1024).await?;
    const KEYS: i64 = 100_000;
    cmd(
        &src,
        0,
        &["DEBUG", "POPULATE", &KEYS.to_string(), "key", "32"],
    )?;
    let mut spec = spec(
        &src.addr(),
        endpoint(&dst.addr(), InstanceMode::Standalone),
        ConflictMode::Intercept,
        &[],
        &[],
    );
    spec.heartbeat = Some(HeartbeatOptions {
        disabled: true,
        ..HeartbeatOptions::default()
    });
    let rec = Arc::new(Recorder::default());
    let runner = env.spawn("mid-copy", &spec, &rec);
    let at_kill = eventually("part of the full copy", Duration::from_secs(60), || {
        rec.check()?;
        let n = run(&dst, 0, &[b"DBSIZE"])
            .map_err(|e| e.to_string())?
            .as_int()
            .unwrap_or(0);
        if n > 5_000 {
            Ok(n)
        } else {
            Err(format!("{n} keys"))
        }
    })
    .await?;
    drop(runner);
    assert!(
        at_kill < KEYS,
        "the copy finished before the crash ({at_kill} keys)"
    );
    let ckpt = run(
        &dst,
        0,
        &[b"HGET", b"redis-sync:checkpoint:mid-copy", b"standalone"],
    )?;
    let ckpt = ckpt.as_str().unwrap_or_default().to_owned();
    assert!(
        ckpt.split('|').nth(4) == Some("1"),
        "the checkpoint is inside the snapshot: {ckpt}"
    );
    let runner = env.spawn("mid-copy", &spec, &rec);
    initial_sync_done(&rec, Duration::from_secs(120)).await?;
    cmd(&src, 0, &["SET", "after", "1"])?;
    converged(
        &rec,
        &src,
        &Side::Server(&dst),
        &[(0, 0)],
        Duration::from_secs(60),
    )
    .await?;
    runner.stop().await;
    rec.check()?;
    env.stop().await;
    Ok(())
}
