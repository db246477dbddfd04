//! `redis-sync-bench`: measures redis-sync against Redis's own replication, in one run, on
//! the same generated data and the same machine, and prints both with their ratio.
//!
//! Phases (each can be skipped):
//! 1. full sync of a mixed dataset: native `REPLICAOF` into a fresh replica vs.
//!    `StartTask` → `SYNCHRONIZING` with every key present; peak RSS of both services;
//! 2. incremental: `redis-benchmark` write load (SET, INCR, LPUSH, HSET) on the source for
//!    a fixed time; applied replication bytes/s of redis-sync vs. the native replica, and
//!    the heartbeat delay p50/p99/max; then the delay at half the native maximum rate;
//! 3. full sync of one big sorted set (peak RSS).
//!
//! Needs release binaries (`cargo build --release --bins`) and Debian's redis-server,
//! redis-cli and redis-benchmark. Run: `cargo run --release -p redis-sync-e2e --bin
//! redis-sync-bench -- --help`.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use redis_sync_e2e::{ServiceProcess, rss};
use redis_sync_proto::v1::{
    ConflictMode, CreateTaskRequest, GetTaskRequest, InstanceMode, RedisEndpoint, StartTaskRequest,
    TaskSpec, TaskState, task_service_client::TaskServiceClient,
};
use redis_sync_testkit::{RedisServer, RedisVersion};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Receives one command (name and arguments) of a generated dataset.
type Sink<'a> = &'a mut dyn FnMut(&[&[u8]]);

#[derive(Debug, Clone)]
struct Options {
    strings: u64,
    collections: u64,
    big_keys: u64,
    big_elements: u64,
    load_secs: u64,
    zset_members: u64,
    skip_full: bool,
    skip_incremental: bool,
    skip_zset: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        strings: 900_000,
        collections: 100_000,
        big_keys: 3,
        big_elements: 1_000_000,
        load_secs: 60,
        zset_members: 10_000_000,
        skip_full: false,
        skip_incremental: false,
        skip_zset: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--strings" => o.strings = num("--strings")?,
            "--collections" => o.collections = num("--collections")?,
            "--big-keys" => o.big_keys = num("--big-keys")?,
            "--big-elements" => o.big_elements = num("--big-elements")?,
            "--load-secs" => o.load_secs = num("--load-secs")?,
            "--zset-members" => o.zset_members = num("--zset-members")?,
            "--skip-full" => o.skip_full = true,
            "--skip-incremental" => o.skip_incremental = true,
            "--skip-zset" => o.skip_zset = true,
            "--help" | "-h" => {
                println!(
                    "redis-sync-bench [--strings N (900000)] [--collections N (100000)] \
                     [--big-keys N (3)] [--big-elements N (1000000)] [--load-secs S (60)] \
                     [--zset-members N (10000000)] [--skip-full] [--skip-incremental] [--skip-zset]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// RESP for one command.
fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Pipes generated commands into `redis-cli --pipe` (the fastest standard bulk loader).
fn load(
    server: &RedisServer,
    generate: impl FnOnce(&mut dyn FnMut(&[&[u8]])),
) -> Result<(), BoxError> {
    let mut child = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut write_err = None;
    generate(&mut |args| {
        resp(&mut buf, args);
        if buf.len() > 1 << 20 {
            if let Err(e) = stdin.write_all(&buf) {
                write_err.get_or_insert(e);
            }
            buf.clear();
        }
    });
    stdin.write_all(&buf)?;
    drop(stdin);
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("redis-cli --pipe failed: {status}").into());
    }
    Ok(())
}

fn mixed_dataset(o: &Options) -> impl FnOnce(Sink<'_>) + '_ {
    move |cmd: Sink<'_>| {
        let value = vec![b'v'; 100];
        for i in 0..o.strings {
            cmd(&[b"SET", format!("string:{i}").as_bytes(), &value]);
        }
        for i in 0..o.collections {
            let n = 10 + (i * 37) % 91;
            let key = format!("coll:{i}");
            let kind = i % 4;
            let mut args: Vec<Vec<u8>> = Vec::new();
            args.push(match kind {
                0 => b"HSET".to_vec(),
                1 => b"RPUSH".to_vec(),
                2 => b"SADD".to_vec(),
                _ => b"ZADD".to_vec(),
            });
            args.push(key.into_bytes());
            for e in 0..n {
                match kind {
                    0 => {
                        args.push(format!("field{e}").into_bytes());
                        args.push(format!("value-{e}-{i}").into_bytes());
                    }
                    3 => {
                        args.push(format!("{}.25", e * 3).into_bytes());
                        args.push(format!("member{e}").into_bytes());
                    }
                    _ => args.push(format!("element-{e}-{i}").into_bytes()),
                }
            }
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            cmd(&refs);
        }
        for b in 0..o.big_keys {
            let key = format!("big:{b}");
            let mut done = 0;
            while done < o.big_elements {
                let batch = (o.big_elements - done).min(1000);
                let mut args: Vec<Vec<u8>> = vec![
                    match b % 3 {
                        0 => b"RPUSH".to_vec(),
                        1 => b"ZADD".to_vec(),
                        _ => b"HSET".to_vec(),
                    },
                    key.clone().into_bytes(),
                ];
                for e in done..done + batch {
                    match b % 3 {
                        0 => args.push(format!("item-{e}").into_bytes()),
                        1 => {
                            args.push(format!("{e}").into_bytes());
                            args.push(format!("m{e}").into_bytes());
                        }
                        _ => {
                            args.push(format!("f{e}").into_bytes());
                            args.push(format!("v{e}").into_bytes());
                        }
                    }
                }
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                cmd(&refs);
                done += batch;
            }
        }
    }
}

fn dbsize(server: &RedisServer) -> Result<i64, BoxError> {
    Ok(server.cmd_str(&["DBSIZE"])?.as_int().ok_or("DBSIZE")?)
}

fn info_u64(server: &RedisServer, field: &str) -> Result<u64, BoxError> {
    Ok(server.info_field("replication", field)?.parse()?)
}

/// Native replication: REPLICAOF into a fresh replica until loaded and linked.
fn native_full_sync(source: &RedisServer) -> Result<(Duration, RedisServer), BoxError> {
    let replica = RedisServer::start(RedisVersion::V7_0)?;
    let keys = dbsize(source)?;
    let t0 = Instant::now();
    replica.cmd_ok(&["REPLICAOF", "127.0.0.1", &source.port().to_string()])?;
    loop {
        let info = replica.info("replication")?;
        if info.get("master_link_status") == Some("up")
            && info.get("master_sync_in_progress") == Some("0")
            && dbsize(&replica)? >= keys
        {
            return Ok((t0.elapsed(), replica));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct SyncRun {
    _ingest: ServiceProcess,
    _apply: ServiceProcess,
    ingest_pid: u32,
    apply_pid: u32,
    client: TaskServiceClient<tonic::transport::Channel>,
    task_id: String,
}

#[derive(Default, Clone, Copy)]
struct Peaks {
    ingest: u64,
    apply: u64,
}

impl SyncRun {
    async fn start(source: &RedisServer, destination: &RedisServer) -> Result<Self, BoxError> {
        let ingest = ServiceProcess::ingest(&[])?;
        let apply = ServiceProcess::apply(&ingest.endpoint(), &[])?;
        ingest.wait_healthy().await?;
        apply.wait_healthy().await?;
        let mut client = TaskServiceClient::connect(apply.endpoint()).await?;
        let endpoint = |addr: String| RedisEndpoint {
            mode: InstanceMode::Standalone as i32,
            address: addr,
            ..Default::default()
        };
        let task = client
            .create_task(CreateTaskRequest {
                spec: Some(TaskSpec {
                    name: "bench".into(),
                    source: Some(endpoint(source.addr())),
                    destination: Some(endpoint(destination.addr())),
                    conflict_mode: ConflictMode::Intercept as i32,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .task
            .ok_or("no task")?;
        Ok(Self {
            ingest_pid: ingest.pid().ok_or("ingest pid")?,
            apply_pid: apply.pid().ok_or("apply pid")?,
            _ingest: ingest,
            _apply: apply,
            client,
            task_id: task.id,
        })
    }

    async fn task(&mut self) -> Result<redis_sync_proto::v1::Task, BoxError> {
        Ok(self
            .client
            .get_task(GetTaskRequest {
                id: self.task_id.clone(),
            })
            .await?
            .into_inner()
            .task
            .ok_or("no task")?)
    }

    fn peaks(&self) -> Peaks {
        Peaks {
            ingest: rss(self.ingest_pid).map_or(0, |r| r.1),
            apply: rss(self.apply_pid).map_or(0, |r| r.1),
        }
    }

    /// StartTask, then wait for SYNCHRONIZING.
    async fn full_sync(&mut self) -> Result<Duration, BoxError> {
        let t0 = Instant::now();
        self.client
            .start_task(StartTaskRequest {
                id: self.task_id.clone(),
            })
            .await?;
        loop {
            let task = self.task().await?;
            match TaskState::try_from(task.state) {
                Ok(TaskState::Synchronizing) => return Ok(t0.elapsed()),
                Ok(TaskState::Failed | TaskState::PrecheckFailed) => {
                    return Err(format!("task failed: {}", task.failure_reason).into());
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn applied_offset(&mut self) -> Result<u64, BoxError> {
        let task = self.task().await?;
        Ok(task
            .status
            .map(|s| {
                s.shards
                    .iter()
                    .filter_map(|sh| sh.applied.as_ref())
                    .map(|p| p.offset)
                    .sum()
            })
            .unwrap_or(0))
    }

    async fn heartbeat_delay(&mut self) -> Result<Option<i64>, BoxError> {
        let task = self.task().await?;
        Ok(task
            .status
            .map(|s| s.heartbeat_delay_ms)
            .filter(|d| *d >= 0))
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn phase_full(o: &Options) -> Result<(), BoxError> {
    println!(
        "\n## Full sync: {} strings, {} collections, {} keys of {} elements",
        o.strings, o.collections, o.big_keys, o.big_elements
    );
    let source = RedisServer::start(RedisVersion::V7_0)?;
    let t = Instant::now();
    load(&source, mixed_dataset(o))?;
    let used = source.info_field("memory", "used_memory")?;
    println!(
        "loaded {} keys in {:.1} s, source used_memory {:.0} MiB",
        dbsize(&source)?,
        t.elapsed().as_secs_f64(),
        mb(used.parse()?)
    );

    let (native, replica) = native_full_sync(&source)?;
    drop(replica);
    println!("native REPLICAOF full sync: {:.2} s", native.as_secs_f64());

    let destination = RedisServer::start(RedisVersion::V7_0)?;
    let mut sync = SyncRun::start(&source, &destination).await?;
    let ours = sync.full_sync().await?;
    let peaks = sync.peaks();
    let (src_keys, dst_keys) = (dbsize(&source)?, dbsize(&destination)?);
    println!(
        "redis-sync full sync (StartTask → SYNCHRONIZING): {:.2} s; keys source {src_keys}, destination {dst_keys}",
        ours.as_secs_f64()
    );
    println!(
        "ratio redis-sync / native: {:.2}x (target ≤ 2.0x)",
        ours.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "keys/s applied: {:.0}",
        src_keys as f64 / ours.as_secs_f64()
    );
    println!(
        "peak RSS: ingest {:.0} MiB, apply {:.0} MiB (target ≤ 256 MiB each)",
        mb(peaks.ingest),
        mb(peaks.apply)
    );
    Ok(())
}

fn redis_benchmark(port: u16, test: &str) -> Result<std::process::Child, BoxError> {
    Ok(Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            test,
            "-n",
            "2000000000",
            "-P",
            "16",
            "-c",
            "4",
            "-r",
            "100000",
            "-d",
            "32",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Sends SETs at `rate` per second for `secs` from a background thread.
/// How long the paced load runs before its delay is sampled.
const WARM_UP: Duration = Duration::from_secs(3);

fn paced_load(port: u16, rate: u64, secs: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return 0;
        };
        let Ok(reader) = stream.try_clone() else {
            return 0;
        };
        let drain = std::thread::spawn(move || {
            let mut reader = reader;
            let mut sink = [0u8; 65536];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut sink) {
                if n == 0 {
                    break;
                }
            }
        });
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut buf = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            buf.clear();
            for _ in 0..per_tick {
                resp(
                    &mut buf,
                    &[
                        b"SET",
                        format!("paced:{}", sent % 100_000).as_bytes(),
                        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                    ],
                );
                sent += 1;
            }
            if stream.write_all(&buf).is_err() {
                break;
            }
            let next = start + tick * u32::try_from(sent / per_tick).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = drain.join();
        sent
    })
}

async fn sample_delays(sync: &mut SyncRun, secs: u64) -> Result<Vec<i64>, BoxError> {
    let mut delays = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(d) = sync.heartbeat_delay().await? {
            delays.push(d);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delays.sort_unstable();
    Ok(delays)
}

async fn phase_incremental(o: &Options) -> Result<(), BoxError> {
    println!(
        "\n## Incremental: redis-benchmark SET, INCR, LPUSH, HSET (-P 16) for {} s",
        o.load_secs
    );
    let source = RedisServer::start(RedisVersion::V7_0)?;
    let destination = RedisServer::start(RedisVersion::V7_0)?;
    let replica = RedisServer::start(RedisVersion::V7_0)?;
    replica.replicate_from(&source, Duration::from_secs(30))?;
    let mut sync = SyncRun::start(&source, &destination).await?;
    sync.full_sync().await?;

    let src0 = info_u64(&source, "master_repl_offset")?;
    let rep0 = info_u64(&replica, "slave_repl_offset")?;
    let ours0 = sync.applied_offset().await?;
    let cmds0 = source.info_stat("total_commands_processed")?;
    let mut load = Vec::new();
    for t in ["set", "incr", "lpush", "hset"] {
        load.push(redis_benchmark(source.port(), t)?);
    }
    let delays = sample_delays(&mut sync, o.load_secs).await?;
    let secs = o.load_secs as f64;
    let src1 = info_u64(&source, "master_repl_offset")?;
    let rep1 = info_u64(&replica, "slave_repl_offset")?;
    let ours1 = sync.applied_offset().await?;
    let cmds1 = source.info_stat("total_commands_processed")?;
    for mut c in load {
        let _ = c.kill();
        let _ = c.wait();
    }
    let produced = (src1 - src0) as f64 / secs;
    let native = (rep1 - rep0) as f64 / secs;
    let applied = ours1.saturating_sub(ours0) as f64 / secs;
    let ops = (cmds1 - cmds0) as f64 / secs;
    println!(
        "source: {ops:.0} commands/s, {:.1} MiB/s of replication stream",
        produced / 1048576.0
    );
    println!("native replica applied: {:.1} MiB/s", native / 1048576.0);
    println!("redis-sync applied: {:.1} MiB/s", applied / 1048576.0);
    println!(
        "ratio redis-sync / native: {:.2} (target ≥ 0.7)",
        applied / native
    );
    println!(
        "heartbeat delay under full load: p50 {} ms, p99 {} ms, max {} ms ({} samples)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(-1),
        delays.len()
    );

    // Let it catch up, then half of the native maximum rate.
    let deadline = Instant::now() + Duration::from_secs(600);
    while sync.applied_offset().await?
        < info_u64(&source, "master_repl_offset")?.saturating_sub(1024)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let half = (ops / 2.0) as u64;
    let pacer = paced_load(source.port(), half, o.load_secs + WARM_UP.as_secs());
    // The status shows the delay of the last heartbeat applied, which after the catch-up
    // above is one from the backlog of the full-load phase: sampling starts once the
    // paced load has run for a few heartbeats, so what is measured is this rate's delay.
    tokio::time::sleep(WARM_UP).await;
    let delays = sample_delays(&mut sync, o.load_secs).await?;
    let sent = pacer.join().unwrap_or(0);
    println!(
        "at half the native maximum ({half} SET/s, {sent} sent): heartbeat delay p50 {} ms, p99 {} ms (target ≤ 100 ms), max {} ms",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(-1)
    );
    let peaks = sync.peaks();
    println!(
        "peak RSS: ingest {:.0} MiB, apply {:.0} MiB",
        mb(peaks.ingest),
        mb(peaks.apply)
    );
    Ok(())
}

async fn phase_zset(o: &Options) -> Result<(), BoxError> {
    println!(
        "\n## Full sync of one sorted set of {} members",
        o.zset_members
    );
    let source = RedisServer::start(RedisVersion::V7_0)?;
    let n = o.zset_members;
    load(&source, move |cmd| {
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(1000);
            let mut args: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"bigzset".to_vec()];
            for e in done..done + batch {
                args.push(format!("{}", e as f64 / 7.0).into_bytes());
                args.push(format!("member:{e}").into_bytes());
            }
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            cmd(&refs);
            done += batch;
        }
    })?;
    let (native, replica) = native_full_sync(&source)?;
    drop(replica);
    let destination = RedisServer::start(RedisVersion::V7_0)?;
    let mut sync = SyncRun::start(&source, &destination).await?;
    let ours = sync.full_sync().await?;
    let peaks = sync.peaks();
    let card = destination
        .cmd_str(&["ZCARD", "bigzset"])?
        .as_int()
        .unwrap_or(-1);
    println!(
        "native {:.2} s, redis-sync {:.2} s (ratio {:.2}x); destination ZCARD {card}",
        native.as_secs_f64(),
        ours.as_secs_f64(),
        ours.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "peak RSS: ingest {:.0} MiB, apply {:.0} MiB (target ≤ 256 MiB each)",
        mb(peaks.ingest),
        mb(peaks.apply)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let o = parse_options().map_err(|e| -> BoxError { e.into() })?;
    // Benchmarks measure release builds (REDIS_SYNC_PROFILE overrides).
    redis_sync_e2e::set_default_profile("release");
    println!(
        "# redis-sync benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !o.skip_full {
        phase_full(&o).await?;
    }
    if !o.skip_incremental {
        phase_incremental(&o).await?;
    }
    if !o.skip_zset {
        phase_zset(&o).await?;
    }
    Ok(())
}
