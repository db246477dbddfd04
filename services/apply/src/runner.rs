//! A running task: subscribe to ingest, apply events to the destination in order,
//! checkpoint, report progress. The control plane starts and stops runners; it never
//! touches the data path.
//!
//! A runner is a loop of *sessions*. A session connects to the destination, closes the
//! connections an earlier session may have left with a MULTI in flight, reads the
//! checkpoints, subscribes to ingest from them, and hands each shard's batches to that
//! shard's writer through a small bounded channel (shards in parallel, each in order;
//! a full channel stops reading the stream, so memory stays bounded). Any transient
//! failure (ingest or the destination away, LOADING, BUSY, TRYAGAIN, CLUSTERDOWN,
//! MOVED/ASK) ends the session; the next one starts after a capped backoff from the
//! checkpoints, which the destination holds, so nothing is lost or repeated. An error
//! that needs the operator ends the runner through `observer.failed`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis_sync_proto::v1::{
    AcknowledgeRequest, ConflictMode, HeartbeatOptions, Position, ProbeSourceRequest, ShardPhase,
    ShardPosition, ShardStatus, SubscribeRequest, SubscribeResponse, TaskSpec, TaskStatus,
};
use redis_sync_telemetry::Metrics;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::ApplyConfig;
use crate::dbmap::DbMap;
use crate::endpoint;
use crate::ingest_client::{IngestClient, ingest_client};
use crate::writer::{self, BatchReport, Destination, ShardWriter, WriteError, WriterOptions};

/// What a runner tells the control plane. Implemented by the task manager.
pub trait RunnerObserver: Send + Sync + 'static {
    /// The full copy of every shard is applied: the task is now SYNCHRONIZING.
    fn initial_sync_done(&self);
    /// A full copy (re)started, e.g. after ingest lost the position: back to INITIAL_SYNC.
    fn initial_sync_started(&self);
    /// An error that needs the operator: the task is FAILED with this reason. The runner
    /// has stopped itself when it calls this.
    fn failed(&self, reason: String);
    /// Latest progress; called often, keep it cheap.
    fn status(&self, status: TaskStatus);
}

/// Everything a runner needs to run one task.
pub struct RunnerContext {
    /// Task id (also the ingest subscriber id and the checkpoint key's suffix).
    pub task_id: String,
    /// The task as stored, passwords included.
    pub spec: TaskSpec,
    /// Service configuration (ingest endpoint default, TLS, tokens).
    pub config: ApplyConfig,
    /// Where progress and state changes go.
    pub observer: Arc<dyn RunnerObserver>,
    /// The service's metrics registry (events, batches, errors, lag, delay per task/shard).
    pub metrics: Metrics,
}

/// Batches queued per shard between the stream reader and the shard's writer.
const QUEUE_PER_SHARD: usize = 2;
/// Status reports at most this often.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// Acknowledgements to ingest at most this often.
const ACK_EVERY: Duration = Duration::from_millis(250);
/// Backoff between sessions: first, and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Handle of a running task. Dropping it aborts the runner at once (like a crash: the
/// destination's checkpoint still says exactly what was applied); [`TaskRunner::stop`]
/// ends it cleanly.
pub struct TaskRunner {
    stop: watch::Sender<bool>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskRunner")
    }
}

impl Drop for TaskRunner {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

impl TaskRunner {
    /// Starts syncing: reads the checkpoint from the destination, subscribes to ingest from
    /// it (or from scratch), applies events until stopped or failed.
    pub fn spawn(ctx: RunnerContext) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let span = tracing::info_span!("task", task_id = %ctx.task_id);
        let join = tokio::spawn(tracing::Instrument::instrument(run(ctx, stop_rx), span));
        Self {
            stop,
            join: Some(join),
        }
    }

    /// Stops applying and waits until in-flight writes have finished. The position stays
    /// in the destination's checkpoint, so a later spawn continues from it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

/// A background task that ends with its owner, also when the owner is aborted.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// Stopped on request.
    Stopped,
    /// Try again after a pause.
    Transient(String),
    /// Needs the operator.
    Fatal(String),
}

impl From<WriteError> for SessionEnd {
    fn from(e: WriteError) -> Self {
        if e.is_transient() {
            SessionEnd::Transient(e.to_string())
        } else {
            SessionEnd::Fatal(e.to_string())
        }
    }
}

fn from_status(what: &str, s: &tonic::Status) -> SessionEnd {
    use tonic::Code;
    let text = format!("ingest {what}: {}: {}", s.code(), s.message());
    match s.code() {
        // These do not go away by retrying: the task or the deployment needs fixing.
        Code::InvalidArgument
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::DataLoss => SessionEnd::Fatal(text),
        _ => SessionEnd::Transient(text),
    }
}

/// Resolves once stop is requested (or its sender is gone, which only happens when the
/// runner is being torn down anyway). Returns nothing, so no watch guard is held.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn run(ctx: RunnerContext, mut stop: watch::Receiver<bool>) {
    let shared = Arc::new(Shared::new(&ctx));
    let reporter = AbortOnDrop(tokio::spawn(report_status(
        shared.clone(),
        ctx.spec.heartbeat.clone().unwrap_or_default(),
    )));
    let errors_transient = ctx.metrics.counter(
        "redis_sync_apply_errors_total",
        "Errors of the apply data path, by kind (transient: retried; fatal: the task failed).",
        &[("task", ctx.task_id.as_str()), ("kind", "transient")],
    );
    let errors_fatal = ctx.metrics.counter(
        "redis_sync_apply_errors_total",
        "Errors of the apply data path, by kind (transient: retried; fatal: the task failed).",
        &[("task", ctx.task_id.as_str()), ("kind", "fatal")],
    );
    let mut backoff = BACKOFF_MIN;
    let mut failure = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let batches_before = shared.batches();
        match session(&ctx, &shared, &mut stop).await {
            SessionEnd::Stopped => break,
            SessionEnd::Fatal(reason) => {
                errors_fatal.inc();
                tracing::error!(%reason, "task failed");
                failure = Some(reason);
                break;
            }
            SessionEnd::Transient(reason) => {
                errors_transient.inc();
                if shared.batches() > batches_before {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(%reason, retry_in = ?backoff, "sync interrupted; resuming from the destination's checkpoint");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut stop) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // The last status, then (only when failing) the failure: nothing of this runner
    // reports after `failed`.
    drop(reporter);
    shared.publish_status(&ctx.spec.heartbeat.clone().unwrap_or_default());
    if let Some(reason) = failure {
        ctx.observer.failed(reason);
    }
}

fn writer_options(ctx: &RunnerContext, shard_id: &str) -> WriterOptions {
    let dest = ctx.spec.destination.clone().unwrap_or_default();
    WriterOptions {
        task_id: ctx.task_id.clone(),
        shard_id: shard_id.to_owned(),
        conflict: ConflictMode::try_from(ctx.spec.conflict_mode)
            .ok()
            .filter(|m| *m != ConflictMode::Unspecified)
            // The safe default: never replace what the destination holds.
            .unwrap_or(ConflictMode::Intercept),
        dbmap: DbMap::new(
            &ctx.spec.databases,
            &ctx.spec.db_mapping,
            endpoint::is_cluster(&dest),
        ),
        multi_shard_source: ctx.spec.source.as_ref().is_some_and(endpoint::is_cluster),
        destination: dest,
        metrics: ctx.metrics.clone(),
    }
}

/// Connects, reads the checkpoints and subscribes: what a session does before it applies.
async fn open_session(
    ctx: &RunnerContext,
    shared: &Arc<Shared>,
) -> Result<(IngestClient, tonic::Streaming<SubscribeResponse>), SessionEnd> {
    let dest_endpoint = ctx.spec.destination.clone().unwrap_or_default();
    let mut dest = Destination::open(&dest_endpoint, &ctx.task_id).await?;
    dest.fence().await?;
    let checkpoints = dest.read_checkpoints().await?;
    drop(dest);
    // Each shard resumes after its global checkpoint: everything up to it is applied
    // everywhere (on a cluster, the slots' own checkpoints then skip what a slot already
    // has beyond it).
    let start: Vec<ShardPosition> = checkpoints
        .global
        .iter()
        .map(|(shard, c)| ShardPosition {
            shard_id: shard.clone(),
            position: Some(c.position.clone()),
        })
        .collect();
    for s in &start {
        shared.resume_from(&s.shard_id, s.position.clone());
    }
    tracing::info!(start = ?start.iter().map(|s| (&s.shard_id, s.position.as_ref().map(|p| p.offset))).collect::<Vec<_>>(), "subscribing");

    let endpoint = if ctx.spec.ingest_endpoint.is_empty() {
        &ctx.config.ingest_endpoint
    } else {
        &ctx.spec.ingest_endpoint
    };
    let mut client =
        ingest_client(endpoint, &ctx.config).map_err(|e| SessionEnd::Fatal(e.to_string()))?;
    if ctx.spec.source.as_ref().is_some_and(endpoint::is_cluster) {
        if shared.expected_shards().is_none() {
            // With several source shards, "every shard finished its full copy" needs their
            // number; ask once. Without it, only the shards seen so far count.
            match client
                .probe_source(ProbeSourceRequest {
                    source: ctx.spec.source.clone(),
                })
                .await
            {
                Ok(r) if !r.get_ref().masters.is_empty() => {
                    shared.set_expected_shards(r.get_ref().masters.len())
                }
                Ok(_) => {}
                Err(s) => {
                    tracing::warn!(error = %s, "ProbeSource failed; the full copy counts as done once the shards seen so far finish")
                }
            }
        }
    } else {
        shared.set_expected_shards(1);
    }
    shared.evaluate();

    let request = SubscribeRequest {
        subscriber_id: ctx.task_id.clone(),
        source: ctx.spec.source.clone(),
        start,
        heartbeat: ctx.spec.heartbeat.clone(),
        chunk_threshold_bytes: 0,
    };
    let stream = client
        .subscribe(request)
        .await
        .map_err(|s| from_status("Subscribe", &s))?
        .into_inner();
    Ok((client, stream))
}

async fn session(
    ctx: &RunnerContext,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    // Nothing is in flight yet, so a stop may cut the setup short.
    let (mut client, mut stream) = tokio::select! {
        opened = open_session(ctx, shared) => match opened {
            Ok(o) => o,
            Err(end) => return end,
        },
        () = stopped(stop) => return SessionEnd::Stopped,
    };

    let acks = Arc::new(Acks::default());
    let ack_task = AbortOnDrop(tokio::spawn(ack_loop(
        client.clone(),
        ctx.task_id.clone(),
        acks.clone(),
    )));
    let (worker_stop_tx, worker_stop) = watch::channel(false);
    let mut senders: HashMap<String, mpsc::Sender<SubscribeResponse>> = HashMap::new();
    let mut workers: JoinSet<(String, Result<(), WriteError>)> = JoinSet::new();

    let end = loop {
        tokio::select! {
            biased;
            () = stopped(stop) => break SessionEnd::Stopped,
            Some(joined) = workers.join_next(), if !workers.is_empty() => match joined {
                Ok((shard, Ok(()))) => {
                    // A writer only ends on its own when told to stop; treat anything else
                    // as a lost connection and start over.
                    break SessionEnd::Transient(format!("the writer of shard {shard} ended"));
                }
                Ok((_, Err(e))) => break e.into(),
                Err(join) => break SessionEnd::Fatal(format!("a shard writer crashed: {join}")),
            },
            message = stream.message() => match message {
                Ok(Some(batch)) => {
                    shared.received(&batch.shard_id, batch.received_offset);
                    let shard = batch.shard_id.clone();
                    let tx = senders.entry(shard.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(QUEUE_PER_SHARD);
                        let opts = writer_options(ctx, &shard);
                        workers.spawn(shard_worker(opts, rx, shared.clone(), acks.clone(), worker_stop.clone()));
                        tx
                    });
                    // Waits while the shard's queue is full: backpressure on the stream.
                    if tx.send(batch).await.is_err() {
                        // The writer is gone; its result comes from join_next.
                        senders.remove(&shard);
                    }
                }
                Ok(None) => break SessionEnd::Transient("ingest ended the event stream".into()),
                Err(s) => break from_status("Subscribe stream", &s),
            },
        }
    };

    // Writers finish the batch they are applying, then stop; queued batches are dropped
    // (they are not checkpointed, so the next session receives them again).
    let _ = worker_stop_tx.send(true);
    drop(senders);
    let mut end = end;
    while let Some(joined) = workers.join_next().await {
        if let Ok((shard, Err(e))) = joined {
            tracing::warn!(%shard, error = %e, "shard writer ended with an error");
            if matches!(end, SessionEnd::Stopped) && !e.is_transient() {
                end = e.into();
            }
        }
    }
    drop(ack_task);
    // The last positions, so ingest can free its spool without waiting for the next session.
    flush_acks(&mut client, &ctx.task_id, &acks).await;
    end
}

async fn shard_worker(
    opts: WriterOptions,
    mut rx: mpsc::Receiver<SubscribeResponse>,
    shared: Arc<Shared>,
    acks: Arc<Acks>,
    mut stop: watch::Receiver<bool>,
) -> (String, Result<(), WriteError>) {
    let shard = opts.shard_id.clone();
    let result = async {
        let mut writer = ShardWriter::open(opts).await?;
        loop {
            let batch = tokio::select! {
                biased;
                () = stopped(&mut stop) => return Ok(()),
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => return Ok(()),
                },
            };
            let report = writer.apply(&batch).await?;
            shared.applied(&batch.shard_id, &report);
            if let Some(p) = &report.applied {
                acks.set(&batch.shard_id, p.clone());
            }
        }
    }
    .await;
    (shard, result)
}

/// Positions to acknowledge, latest per shard.
#[derive(Default)]
struct Acks {
    inner: Mutex<(BTreeMap<String, Position>, bool)>,
}

impl Acks {
    fn set(&self, shard: &str, p: Position) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.insert(shard.to_owned(), p);
        g.1 = true;
    }
    fn take_if_changed(&self) -> Option<Vec<ShardPosition>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !g.1 {
            return None;
        }
        g.1 = false;
        Some(
            g.0.iter()
                .map(|(s, p)| ShardPosition {
                    shard_id: s.clone(),
                    position: Some(p.clone()),
                })
                .collect(),
        )
    }
    fn mark_changed(&self) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
    }
}

async fn flush_acks(client: &mut IngestClient, task_id: &str, acks: &Acks) {
    if let Some(positions) = acks.take_if_changed() {
        let req = AcknowledgeRequest {
            subscriber_id: task_id.to_owned(),
            positions,
        };
        // The checkpoint in the destination is what counts; a lost acknowledgement only
        // keeps ingest's spool a little longer.
        if let Err(s) = tokio::time::timeout(Duration::from_secs(2), client.acknowledge(req))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("acknowledge timed out")))
        {
            tracing::debug!(error = %s, "Acknowledge failed; retrying with the next one");
            acks.mark_changed();
        }
    }
}

async fn ack_loop(mut client: IngestClient, task_id: String, acks: Arc<Acks>) {
    let mut tick = tokio::time::interval(ACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_acks(&mut client, &task_id, &acks).await;
    }
}

/// Progress of one shard as the status shows it.
#[derive(Debug, Clone, Default)]
struct ShardProgress {
    phase: i32,
    keys_done: u64,
    keys_estimated: u64,
    bytes_estimated: u64,
    applied: Option<Position>,
    received_offset: u64,
    heartbeat_source_ms: Option<i64>,
    heartbeat_delay_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Nothing,
    Started,
    Done,
}

struct SharedState {
    shards: BTreeMap<String, ShardProgress>,
    expected_shards: Option<usize>,
    reported: Reported,
    batches: u64,
}

/// What the runner's sessions and writers share: progress and what was reported.
struct Shared {
    observer: Arc<dyn RunnerObserver>,
    task_id: String,
    metrics: Metrics,
    state: Mutex<SharedState>,
}

impl Shared {
    fn new(ctx: &RunnerContext) -> Self {
        Self {
            observer: ctx.observer.clone(),
            task_id: ctx.task_id.clone(),
            metrics: ctx.metrics.clone(),
            state: Mutex::new(SharedState {
                shards: BTreeMap::new(),
                expected_shards: None,
                reported: Reported::Nothing,
                batches: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn batches(&self) -> u64 {
        self.lock().batches
    }

    fn expected_shards(&self) -> Option<usize> {
        self.lock().expected_shards
    }

    fn set_expected_shards(&self, n: usize) {
        self.lock().expected_shards = Some(n);
    }

    fn resume_from(&self, shard: &str, position: Option<Position>) {
        let mut g = self.lock();
        let s = g.shards.entry(shard.to_owned()).or_default();
        if let Some(p) = &position {
            s.phase = if p.in_snapshot {
                ShardPhase::Snapshot as i32
            } else {
                ShardPhase::Streaming as i32
            };
        }
        s.applied = position;
    }

    fn received(&self, shard: &str, offset: u64) {
        let mut g = self.lock();
        let s = g.shards.entry(shard.to_owned()).or_default();
        s.received_offset = s.received_offset.max(offset);
        let lag = s
            .applied
            .as_ref()
            .map_or(0, |p| offset.saturating_sub(p.offset));
        drop(g);
        self.metrics
            .gauge(
                "redis_sync_apply_lag_bytes",
                "Replication bytes received by ingest but not yet applied.",
                &[("task", &self.task_id), ("shard", shard)],
            )
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    fn applied(&self, shard: &str, report: &BatchReport) {
        let mut started = false;
        {
            let mut g = self.lock();
            g.batches += 1;
            let s = g.shards.entry(shard.to_owned()).or_default();
            if let Some(b) = &report.snapshot_begin {
                started = true;
                s.phase = ShardPhase::Snapshot as i32;
                // A resumed copy counts what was applied before the restart.
                s.keys_done = if b.resumed { b.resumed_keys } else { 0 };
                s.keys_estimated = b.estimated_keys;
                s.bytes_estimated = b.estimated_bytes;
            }
            s.keys_done += report.keys_done;
            if report.snapshot_end {
                s.phase = ShardPhase::Streaming as i32;
            }
            if report.applied.is_some() {
                s.applied.clone_from(&report.applied);
                if s.phase == ShardPhase::Unspecified as i32 {
                    s.phase = if report.applied.as_ref().is_some_and(|p| p.in_snapshot) {
                        ShardPhase::Snapshot as i32
                    } else {
                        ShardPhase::Streaming as i32
                    };
                }
            }
            if let Some(ms) = report.heartbeat_source_ms {
                let delay = (writer::now_ms() - ms).max(0);
                s.heartbeat_source_ms = Some(ms);
                s.heartbeat_delay_ms = Some(delay);
                self.metrics
                    .gauge(
                        "redis_sync_apply_heartbeat_delay_ms",
                        "Now minus the source time of the last heartbeat applied.",
                        &[("task", &self.task_id), ("shard", shard)],
                    )
                    .set(delay);
            }
            let lag = s
                .applied
                .as_ref()
                .map_or(0, |p| s.received_offset.saturating_sub(p.offset));
            self.metrics
                .gauge(
                    "redis_sync_apply_lag_bytes",
                    "Replication bytes received by ingest but not yet applied.",
                    &[("task", &self.task_id), ("shard", shard)],
                )
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            if started && g.reported != Reported::Started {
                g.reported = Reported::Started;
            } else {
                started = false;
            }
        }
        if started {
            self.observer.initial_sync_started();
        }
        self.evaluate();
    }

    /// Reports INITIAL_SYNC / SYNCHRONIZING when the shards' phases call for it.
    fn evaluate(&self) {
        let call = {
            let mut g = self.lock();
            let phases: Vec<i32> = g.shards.values().map(|s| s.phase).collect();
            let enough = g.expected_shards.is_none_or(|n| phases.len() >= n);
            let want = if phases.contains(&(ShardPhase::Snapshot as i32)) {
                Some(Reported::Started)
            } else if enough
                && !phases.is_empty()
                && phases.iter().all(|p| *p == ShardPhase::Streaming as i32)
            {
                Some(Reported::Done)
            } else {
                None
            };
            match want {
                Some(w) if w != g.reported => {
                    g.reported = w;
                    Some(w)
                }
                _ => None,
            }
        };
        match call {
            Some(Reported::Started) => self.observer.initial_sync_started(),
            Some(Reported::Done) => {
                tracing::info!("full copy done on every shard; synchronizing");
                self.observer.initial_sync_done();
            }
            _ => {}
        }
    }

    fn status(&self, heartbeat: &HeartbeatOptions) -> TaskStatus {
        let g = self.lock();
        let now = writer::now_ms();
        let interval = i64::from(if heartbeat.interval_ms == 0 {
            1000
        } else {
            heartbeat.interval_ms
        });
        let mut shards = Vec::new();
        let mut fraction_sum = 0.0;
        let mut max_delay = -1i64;
        for (id, s) in &g.shards {
            let fraction = if s.phase == ShardPhase::Streaming as i32 {
                1.0
            } else if s.phase == ShardPhase::Snapshot as i32 && s.keys_estimated > 0 {
                (s.keys_done as f64 / s.keys_estimated as f64).min(0.99)
            } else {
                0.0
            };
            fraction_sum += fraction;
            // A delay that only grows while no heartbeat arrives: a stalled stream shows.
            let delay = match (s.heartbeat_delay_ms, s.heartbeat_source_ms) {
                (Some(d), Some(src)) if !heartbeat.disabled => d.max(now - src - interval).max(0),
                _ => -1,
            };
            max_delay = max_delay.max(delay);
            shards.push(ShardStatus {
                shard_id: id.clone(),
                phase: s.phase,
                keys_done: s.keys_done,
                keys_estimated: s.keys_estimated,
                bytes_done: 0,
                bytes_estimated: s.bytes_estimated,
                applied: s.applied.clone(),
                lag_bytes: s
                    .applied
                    .as_ref()
                    .map_or(0, |p| s.received_offset.saturating_sub(p.offset)),
                heartbeat_delay_ms: delay,
            });
        }
        let count = g.expected_shards.unwrap_or(0).max(g.shards.len()).max(1);
        TaskStatus {
            progress_percent: (fraction_sum / count as f64 * 100.0).clamp(0.0, 100.0),
            shards,
            heartbeat_delay_ms: max_delay,
        }
    }

    fn publish_status(&self, heartbeat: &HeartbeatOptions) {
        let status = self.status(heartbeat);
        self.observer.status(status);
    }
}

async fn report_status(shared: Arc<Shared>, heartbeat: HeartbeatOptions) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.publish_status(&heartbeat);
    }
}
