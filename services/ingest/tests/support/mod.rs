//! Shared test plumbing: an in-process ingest, a subscription reader that records what
//! arrives, and polling with deadlines.

#![allow(dead_code)]

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use redis_sync_ingest::{Ingest, config::IngestConfig};
use redis_sync_proto::v1::{
    AcknowledgeRequest, ChangeEvent, HeartbeatOptions, InstanceMode, Position, RedisEndpoint,
    ShardPosition, SubscribeRequest, SubscribeResponse, change_event::Kind,
    ingest_service_client::IngestServiceClient,
};
use redis_sync_service::CommonConfig;
use redis_sync_telemetry::{LogFormat, Metrics};
use redis_sync_testkit::{RedisServer, Reply};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Status, Streaming, transport::Channel};

pub type Client = IngestServiceClient<Channel>;

/// The configuration tests use: small batches are not needed, defaults are fine.
pub fn config(spool_dir: &Path, spool_max_bytes: u64) -> IngestConfig {
    IngestConfig {
        common: CommonConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            log_format: LogFormat::Pretty,
            tls: None,
        },
        spool_dir: spool_dir.to_path_buf(),
        spool_max_bytes,
        chunk_threshold_bytes: 1024 * 1024,
        max_batch_events: 512,
        auth_token: None,
    }
}

/// An ingest service running in this process.
pub struct RunningIngest {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    pub metrics: Metrics,
}

impl RunningIngest {
    pub async fn start(spool_dir: &Path) -> Self {
        Self::start_with(config(spool_dir, 1 << 30)).await
    }

    pub async fn start_with(config: IngestConfig) -> Self {
        // RUST_LOG=redis_sync_ingest=debug shows what ingest did, interleaved with the test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Metrics::new();
        let ingest = Ingest::new(config, metrics.clone());
        let task = tokio::spawn(ingest.serve(listener, async move {
            let _ = stopped.await;
        }));
        RunningIngest {
            addr,
            stop: Some(stop),
            task,
            metrics,
        }
    }

    pub async fn client(&self) -> Client {
        IngestServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(256 * 1024 * 1024)
    }

    /// Shuts down and waits until every replica link has let go.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("ingest stops within 30 s")
            .expect("serve task")
            .expect("serve result");
    }
}

/// Polls `check` until it returns `Ok`, failing with its last reason after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(reason) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for {what}: {reason}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        }
    }
}

pub fn endpoint(addr: &str, mode: InstanceMode) -> RedisEndpoint {
    RedisEndpoint {
        mode: mode as i32,
        address: addr.to_owned(),
        ..Default::default()
    }
}

pub fn request(
    subscriber: &str,
    source: RedisEndpoint,
    start: Vec<ShardPosition>,
    heartbeat_ms: Option<u32>,
) -> SubscribeRequest {
    SubscribeRequest {
        subscriber_id: subscriber.to_owned(),
        source: Some(source),
        start,
        heartbeat: Some(match heartbeat_ms {
            Some(ms) => HeartbeatOptions {
                key_prefix: String::new(),
                interval_ms: ms,
                disabled: false,
            },
            None => HeartbeatOptions {
                disabled: true,
                ..Default::default()
            },
        }),
        chunk_threshold_bytes: 0,
    }
}

/// One received event with its shard.
#[derive(Debug, Clone)]
pub struct Got {
    pub shard: String,
    pub event: ChangeEvent,
}

/// A subscription that records everything it receives.
pub struct Subscription {
    stream: Streaming<SubscribeResponse>,
    pub events: Vec<Got>,
    /// Last end_position per shard.
    pub ends: HashMap<String, Position>,
    pub error: Option<Status>,
}

impl Subscription {
    pub async fn open(client: &mut Client, req: SubscribeRequest) -> Self {
        let stream = client.subscribe(req).await.expect("subscribe").into_inner();
        Subscription {
            stream,
            events: Vec::new(),
            ends: HashMap::new(),
            error: None,
        }
    }

    /// Reads batches until `done` holds, failing after `timeout`.
    pub async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.stream.message()).await;
            match next {
                Err(_) => panic!(
                    "timed out waiting for {what}; got {} events: {:#?}",
                    self.events.len(),
                    self.summary()
                ),
                Ok(Ok(Some(batch))) => self.record(batch),
                Ok(Ok(None)) => panic!("stream ended while waiting for {what}"),
                Ok(Err(status)) => {
                    self.error = Some(status.clone());
                    if done(self) {
                        return;
                    }
                    panic!("stream failed while waiting for {what}: {status:?}");
                }
            }
        }
    }

    fn record(&mut self, batch: SubscribeResponse) {
        for e in batch.events {
            self.events.push(Got {
                shard: batch.shard_id.clone(),
                event: e,
            });
        }
        if let Some(p) = batch.end_position {
            self.ends.insert(batch.shard_id, p);
        }
    }

    pub fn count(&self, pred: impl Fn(&Kind) -> bool) -> usize {
        self.events
            .iter()
            .filter(|g| g.event.kind.as_ref().is_some_and(&pred))
            .count()
    }

    /// A short description of each event, for failure messages.
    pub fn summary(&self) -> Vec<String> {
        self.events.iter().map(|g| describe(&g.event)).collect()
    }

    /// Index of the last event of `kind`.
    pub fn last_index(&self, pred: impl Fn(&Kind) -> bool) -> Option<usize> {
        self.events
            .iter()
            .rposition(|g| g.event.kind.as_ref().is_some_and(&pred))
    }
}

pub fn is_begin(k: &Kind) -> bool {
    matches!(k, Kind::SnapshotBegin(_))
}

pub fn is_end(k: &Kind) -> bool {
    matches!(k, Kind::SnapshotEnd(_))
}

pub fn describe(e: &ChangeEvent) -> String {
    let p = e.position.clone().unwrap_or_default();
    let what = match &e.kind {
        Some(Kind::SnapshotBegin(b)) => format!("SnapshotBegin({})", b.reason),
        Some(Kind::Key(k)) => format!("Key(db{} {})", k.db, String::from_utf8_lossy(&k.key)),
        Some(Kind::Function(_)) => "Function".into(),
        Some(Kind::SnapshotEnd(e)) => format!("SnapshotEnd(keys {})", e.keys),
        Some(Kind::Command(c)) => format!("Command(db{} {})", c.db, command_text(c)),
        Some(Kind::Transaction(t)) => {
            format!(
                "Transaction[{}]",
                t.commands
                    .iter()
                    .map(command_text)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
        Some(Kind::Heartbeat(h)) => format!("Heartbeat({})", h.source_ms),
        None => "?".into(),
    };
    format!(
        "{what} @{}:{}{}",
        &p.replid.get(..8).unwrap_or(""),
        p.offset,
        if p.in_snapshot { " (snapshot)" } else { "" }
    )
}

pub fn command_text(c: &redis_sync_proto::v1::Command) -> String {
    let mut words = vec![String::from_utf8_lossy(&c.name).to_lowercase()];
    words.extend(
        c.args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    words.join(" ")
}

/// Keys the snapshot events delivered, as (db, key).
pub fn snapshot_keys(sub: &Subscription) -> BTreeSet<(u32, Vec<u8>)> {
    sub.events
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::Key(k)) => Some((k.db, k.key.clone())),
            _ => None,
        })
        .collect()
}

/// Keys the server holds in dbs 0..16, as (db, key).
pub fn server_keys(server: &RedisServer) -> BTreeSet<(u32, Vec<u8>)> {
    let mut c = server.client().unwrap();
    let mut out = BTreeSet::new();
    for db in 0..16u32 {
        c.cmd_str(&["SELECT", &db.to_string()]).unwrap();
        if let Reply::Array(Some(keys)) = c.cmd_str(&["KEYS", "*"]).unwrap() {
            for k in keys {
                out.insert((db, k.as_bytes().unwrap().to_vec()));
            }
        }
    }
    out
}

pub fn master_offset(server: &RedisServer) -> u64 {
    server
        .info_field("replication", "master_repl_offset")
        .unwrap()
        .parse()
        .unwrap()
}

pub fn cmd(server: &RedisServer, args: &[&str]) -> Reply {
    let r = server.cmd_str(args).unwrap();
    assert!(r.as_error().is_none(), "{args:?}: {r:?}");
    r
}

pub async fn acknowledge(client: &mut Client, subscriber: &str, shard: &str, position: Position) {
    client
        .acknowledge(AcknowledgeRequest {
            subscriber_id: subscriber.to_owned(),
            positions: vec![ShardPosition {
                shard_id: shard.to_owned(),
                position: Some(position),
            }],
        })
        .await
        .expect("acknowledge");
}
