//! Subscribers, their shards, links and active subscriptions.
//!
//! A subscriber (an apply task) owns one spool and one replica link per source shard. Its
//! links outlive any one `Subscribe` call, so the source keeps a replica attached while the
//! subscriber reconnects; they stop after [`IDLE_LIMIT`] without a subscription, or when
//! ingest stops. A new `Subscribe` with the same subscriber id replaces the running one.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redis_sync_proto::v1::{
    AcknowledgeRequest, InstanceMode, Position, RedisEndpoint, RedisTls, ShardPosition,
    SubscribeRequest, SubscribeResponse,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::{
    cluster::{self, NodeInfo},
    config::IngestConfig,
    conn::{self, AuthError, ConnError, Credentials},
    decode::{scripts::ScriptStore, stream::HeartbeatMatcher},
    heartbeat::{self, HeartbeatTarget},
    link::{LinkConfig, LinkHandle, ResumeFrom},
    metrics::ShardMetrics,
    probe::STANDALONE_SHARD,
    reader::{self, ReaderConfig, StartAt},
    resharding::SlotHistory,
    spool::{Spool, SpoolBudget},
    stop::StopSignal,
    tls::Connector,
    topology::{self, ShardHome, SourceView},
};

/// Links of a subscriber without a subscription stop after this long.
pub const IDLE_LIMIT: Duration = Duration::from_secs(3600);
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
const MAX_SUBSCRIBER_ID: usize = 128;

/// The stream a Subscribe call returns.
pub type EventStream = ReceiverStream<Result<SubscribeResponse, Status>>;

/// All subscribers of this ingest.
#[derive(Debug)]
pub struct Registry {
    config: IngestConfig,
    metrics: redis_sync_telemetry::Metrics,
    subscribers: Mutex<HashMap<String, Arc<Subscriber>>>,
    halt: watch::Sender<bool>,
}

#[derive(Debug)]
struct Subscriber {
    id: String,
    dir: PathBuf,
    budget: Arc<SpoolBudget>,
    /// Where the shards live now (cluster sources); outlives subscriptions like the links.
    view: Arc<SourceView>,
    state: tokio::sync::Mutex<SubscriberState>,
}

#[derive(Debug, Default)]
struct SubscriberState {
    shards: BTreeMap<String, Shard>,
    /// Script bodies seen in any shard, on disk (opened at the first subscription).
    scripts: Option<Arc<ScriptStore>>,
    active: Option<Active>,
    idle_since: Option<Instant>,
}

#[derive(Debug)]
struct Shard {
    spool: Arc<Spool>,
    metrics: ShardMetrics,
    /// Slot states of the shard's master by offset (cluster), kept across links.
    slots: Arc<SlotHistory>,
    link: Option<(LinkHandle, LinkTarget)>,
}

/// Which master a link talks to, with which credentials and TLS settings: a change means
/// a new link. In a cluster `addr` is empty: the link follows its shard on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkTarget {
    addr: String,
    credentials: Credentials,
    tls: Option<RedisTls>,
}

#[derive(Debug)]
struct Active {
    /// Dropping or setting it stops the subscription's readers and heartbeats.
    cancel: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The subscriber's stream, without keeping it open: it closes when the readers end.
    events: mpsc::WeakSender<Result<SubscribeResponse, Status>>,
}

impl Active {
    /// Ends the subscription, telling its subscriber why when `reason` is given.
    async fn stop_with(self, reason: Option<Status>) {
        if let (Some(status), Some(tx)) = (reason, self.events.upgrade()) {
            // Best effort: a subscriber that stopped reading will notice the closed stream.
            let _ = tx.try_send(Err(status));
        }
        self.stop().await;
    }

    async fn stop(self) {
        let _ = self.cancel.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }
}

/// One shard of the source as discovered now.
#[derive(Debug, Clone)]
struct ShardTarget {
    /// Shard id: the history's name (see `topology`).
    id: String,
    /// "host:port" of the master serving it now.
    addr: String,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Checks a subscriber id: it names a directory, so only a safe alphabet is allowed.
fn validate_subscriber_id(id: &str) -> Result<(), Status> {
    validate_dir_name("subscriber_id", id)
}

/// Checks a request's id that may become a directory name (subscriber and shard ids).
fn validate_dir_name(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_SUBSCRIBER_ID {
        return Err(invalid(format!(
            "{field} must be 1 to {MAX_SUBSCRIBER_ID} characters"
        )));
    }
    if id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(format!(
            "{field} {id:?} may only hold letters, digits, '-', '_' and '.' (not leading)"
        )));
    }
    Ok(())
}

/// Longest source address (a host name is at most 253 bytes).
const MAX_ADDRESS: usize = 1024;
/// Longest replication id: Redis and Valkey use 40 hex digits (CONFIG_RUN_ID_SIZE).
const MAX_REPLID: usize = 40;
/// Past the largest offset Redis can count to (a signed 64-bit integer); the link asks
/// the source for `offset + 1`.
const MAX_OFFSET: u64 = i64::MAX as u64;
/// Longest heartbeat key prefix, as apply allows.
const MAX_HEARTBEAT_PREFIX: usize = 200;

/// Checks a source address: "host:port" with a real port. A link would otherwise retry an
/// address that can never work, forever and silently.
pub(crate) fn validate_address(field: &str, address: &str) -> Result<(), Status> {
    if address.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if address.len() > MAX_ADDRESS {
        return Err(invalid(format!("{field}: longer than {MAX_ADDRESS} bytes")));
    }
    let port = address
        .rsplit_once(':')
        .filter(|(host, _)| !host.trim_matches(['[', ']']).is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if port.is_none_or(|p| p == 0) {
        return Err(invalid(format!("{field}: {address:?} is not host:port")));
    }
    Ok(())
}

/// Checks what a Subscribe asks for beyond its source: start positions and heartbeat.
fn validate_subscription(req: &SubscribeRequest) -> Result<(), Status> {
    for (i, sp) in req.start.iter().enumerate() {
        // In a cluster a start position's shard id can name the spool directory of a
        // shard whose history moved to another master.
        validate_dir_name(&format!("start[{i}].shard_id"), &sp.shard_id)?;
        let Some(p) = &sp.position else { continue };
        if p.offset >= MAX_OFFSET {
            return Err(invalid(format!(
                "start[{i}].position.offset: {} is beyond any replication offset",
                p.offset
            )));
        }
        if p.replid.len() > MAX_REPLID || !p.replid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "start[{i}].position.replid: a replication id is at most {MAX_REPLID} letters and digits"
            )));
        }
    }
    if let Some(hb) = &req.heartbeat {
        if hb.interval_ms != 0 && !(100..=60_000).contains(&hb.interval_ms) {
            return Err(invalid(format!(
                "heartbeat.interval_ms: {} is outside 100..=60000 (0 means {})",
                hb.interval_ms,
                heartbeat::DEFAULT_INTERVAL_MS
            )));
        }
        if hb.key_prefix.len() > MAX_HEARTBEAT_PREFIX {
            return Err(invalid(format!(
                "heartbeat.key_prefix: longer than {MAX_HEARTBEAT_PREFIX} bytes"
            )));
        }
    }
    Ok(())
}

/// Refuses TLS files that must not be read on a request's word (see
/// [`redis_sync_service::check_pem_file`]) before the connector reads them.
pub(crate) fn check_tls_files(tls: Option<&RedisTls>) -> Result<(), Status> {
    let Some(tls) = tls.filter(|t| t.enabled) else {
        return Ok(());
    };
    for (name, path) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if path.len() > 4096 {
            return Err(invalid(format!(
                "source.tls.{name}: longer than 4096 bytes"
            )));
        }
        if !path.is_empty()
            && let Err(reason) = redis_sync_service::check_pem_file(path)
        {
            return Err(invalid(format!("source.tls.{name}: {path:?} {reason}")));
        }
    }
    Ok(())
}

fn credentials(source: &RedisEndpoint) -> Credentials {
    Credentials {
        username: source.username.clone(),
        password: source.password.clone(),
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(config: IngestConfig, metrics: redis_sync_telemetry::Metrics) -> Arc<Self> {
        let (halt, _) = watch::channel(false);
        Arc::new(Registry {
            config,
            metrics,
            subscribers: Mutex::default(),
            halt,
        })
    }

    fn halt_signal(&self, own: watch::Receiver<bool>) -> StopSignal {
        StopSignal::new(own, self.halt.subscribe())
    }

    fn rotate_bytes(&self) -> u64 {
        (self.config.spool_max_bytes / 16).clamp(1 << 20, 64 << 20)
    }

    fn subscriber(&self, id: &str) -> Arc<Subscriber> {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(Subscriber {
                    id: id.to_owned(),
                    dir: self.config.spool_dir.join(id),
                    budget: SpoolBudget::new(self.config.spool_max_bytes),
                    view: Arc::default(),
                    state: tokio::sync::Mutex::default(),
                })
            })
            .clone()
    }

    async fn open_shard(&self, sub: &Subscriber, shard_id: &str) -> Result<Shard, Status> {
        let dir = sub.dir.join(shard_id);
        let spool = Spool::open(dir, sub.budget.clone(), self.rotate_bytes())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let metrics = ShardMetrics::new(&self.metrics, &sub.id, shard_id);
        metrics
            .spool_bytes
            .set(i64::try_from(spool.bytes()).unwrap_or(i64::MAX));
        Ok(Shard {
            spool,
            metrics,
            slots: Arc::default(),
            link: None,
        })
    }

    /// Starts (or takes over) the subscription `req` and returns its event stream.
    pub async fn subscribe(self: &Arc<Self>, req: SubscribeRequest) -> Result<EventStream, Status> {
        validate_subscriber_id(&req.subscriber_id)?;
        let source = req
            .source
            .clone()
            .ok_or_else(|| invalid("source is required"))?;
        validate_address("source.address", &source.address)?;
        validate_subscription(&req)?;
        let tls = source.tls.clone().filter(|t| t.enabled);
        check_tls_files(tls.as_ref())?;
        let connector =
            Connector::from_settings(tls.as_ref()).map_err(|e| invalid(e.to_string()))?;
        let mode = InstanceMode::try_from(source.mode).unwrap_or(InstanceMode::Unspecified);
        if mode == InstanceMode::Unspecified {
            return Err(invalid("source.mode must be STANDALONE or CLUSTER"));
        }
        if *self.halt.borrow() {
            return Err(Status::unavailable("ingest is shutting down"));
        }
        let creds = credentials(&source);
        let sub = self.subscriber(&req.subscriber_id);
        let span = tracing::info_span!("subscription", subscriber = %sub.id);
        let mut st = sub.state.lock().await;
        if let Some(previous) = st.active.take() {
            tracing::info!(parent: &span, "a new subscription replaces the running one");
            previous
                .stop_with(Some(Status::aborted(
                    "replaced by a newer Subscribe of the same subscriber",
                )))
                .await;
        }
        let scripts = match &st.scripts {
            Some(s) => s.clone(),
            None => {
                tokio::fs::create_dir_all(&sub.dir)
                    .await
                    .map_err(|e| Status::internal(format!("{}: {e}", sub.dir.display())))?;
                // A name no shard id can take (ids never start with a dot).
                let store = ScriptStore::open(sub.dir.join(".scripts"))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                st.scripts = Some(store.clone());
                store
            }
        };
        let known: Vec<String> = st.shards.keys().cloned().collect();
        let targets = discover(
            mode,
            &source.address,
            &creds,
            &connector,
            &sub.view,
            &known,
            &req.start,
        )
        .instrument(span.clone())
        .await?;

        // Shards that no longer exist (topology changed): their history cannot continue.
        let gone: Vec<String> = st
            .shards
            .keys()
            .filter(|id| !targets.iter().any(|t| &t.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(shard) = st.shards.remove(&id) {
                tracing::info!(parent: &span, shard = %id, "shard no longer in the source; dropping its spool");
                if let Some((link, _)) = shard.link {
                    link.stop().await;
                }
                let _ = shard.spool.reset().await;
                let _ = tokio::fs::remove_dir_all(shard.spool.dir()).await;
            }
            sub.view.remove(&id);
        }

        let (tx, rx) = mpsc::channel(2 + targets.len());
        let (cancel, cancel_rx) = watch::channel(false);
        let chunk_threshold = if req.chunk_threshold_bytes == 0 {
            self.config.chunk_threshold_bytes
        } else {
            req.chunk_threshold_bytes
        };
        let hb = req.heartbeat.clone().unwrap_or_default();
        let prefix = if hb.key_prefix.is_empty() {
            heartbeat::DEFAULT_PREFIX.to_owned()
        } else {
            hb.key_prefix.clone()
        };
        let interval_ms = if hb.interval_ms == 0 {
            heartbeat::DEFAULT_INTERVAL_MS
        } else {
            hb.interval_ms
        };
        let mut tasks = Vec::new();
        for target in &targets {
            if !st.shards.contains_key(&target.id) {
                let shard = self.open_shard(&sub, &target.id).await?;
                st.shards.insert(target.id.clone(), shard);
            }
            let Some(shard) = st.shards.get_mut(&target.id) else {
                return Err(Status::internal("shard vanished"));
            };
            let position = req
                .start
                .iter()
                .find(|s| s.shard_id == target.id)
                .and_then(|s| s.position.clone());
            let cluster_view = (mode == InstanceMode::Cluster).then(|| sub.view.clone());
            let link_target = LinkTarget {
                addr: if cluster_view.is_some() {
                    String::new()
                } else {
                    target.addr.clone()
                },
                credentials: creds.clone(),
                tls: tls.clone(),
            };
            let slots = cluster_view.as_ref().map(|_| shard.slots.clone());
            let link_setup = LinkSetup {
                addr: target.addr.clone(),
                connector: connector.clone(),
                view: cluster_view.clone(),
                slots: slots.clone(),
            };
            let start = self
                .prepare_shard(
                    &sub.id,
                    &target.id,
                    shard,
                    link_target,
                    link_setup,
                    position,
                )
                .instrument(tracing::info_span!(parent: &span, "shard", shard = %target.id))
                .await?;
            let Some((link, _)) = &shard.link else {
                return Err(Status::internal("link not started"));
            };
            let cfg = ReaderConfig {
                shard_id: target.id.clone(),
                max_batch_events: self.config.max_batch_events,
                chunk_threshold_bytes: chunk_threshold,
                heartbeat: Some(HeartbeatMatcher::new(&prefix, &sub.id)),
                scripts: Some(scripts.clone()),
                slots,
            };
            let reader_span =
                tracing::info_span!("shard_reader", subscriber = %sub.id, shard = %target.id);
            tasks.push(tokio::spawn(
                reader::run(
                    shard.spool.clone(),
                    start,
                    cfg,
                    tx.clone(),
                    link.state(),
                    self.halt_signal(cancel_rx.clone()),
                    shard.metrics.clone(),
                )
                .instrument(reader_span),
            ));
            if !hb.disabled {
                let hb_target = HeartbeatTarget {
                    addr: target.addr.clone(),
                    credentials: creds.clone(),
                    connector: connector.clone(),
                    key_base: format!("{prefix}:{}", sub.id),
                    cluster: cluster_view.map(|v| (v, target.id.clone())),
                    interval: Duration::from_millis(u64::from(interval_ms)),
                };
                let hb_span =
                    tracing::info_span!("heartbeat", subscriber = %sub.id, shard = %target.id);
                let stop = self.halt_signal(cancel_rx.clone());
                let closed = tx.clone();
                tasks.push(tokio::spawn(
                    async move {
                        // The heartbeat serves this subscription only: stop with its stream.
                        tokio::select! {
                            () = heartbeat::run(hb_target, stop) => {}
                            () = closed.closed() => {}
                        }
                    }
                    .instrument(hb_span),
                ));
            }
        }
        if mode == InstanceMode::Cluster {
            let monitor = TopologyMonitor {
                view: sub.view.clone(),
                connector: connector.clone(),
                credentials: creds.clone(),
            };
            let stop = self.halt_signal(cancel_rx.clone());
            let events = tx.clone();
            tasks.push(tokio::spawn(
                monitor
                    .run(events, stop)
                    .instrument(tracing::info_span!("topology", subscriber = %sub.id)),
            ));
        }
        st.active = Some(Active {
            cancel,
            tasks,
            events: tx.downgrade(),
        });
        st.idle_since = None;
        tracing::info!(parent: &span, shards = targets.len(), "subscription started");
        Ok(ReceiverStream::new(rx))
    }

    /// Decides where the shard's reader starts, resetting the spool and (re)starting the
    /// link as the position requires.
    async fn prepare_shard(
        &self,
        subscriber_id: &str,
        shard_id: &str,
        shard: &mut Shard,
        target: LinkTarget,
        setup: LinkSetup,
        position: Option<Position>,
    ) -> Result<StartAt, Status> {
        if shard.link.as_ref().is_some_and(|(_, t)| *t != target) {
            tracing::info!(addr = %target.addr, "source endpoint changed; restarting the replica link");
            if let Some((link, _)) = shard.link.take() {
                link.stop().await;
            }
        }
        let fresh = |resume_from: Option<ResumeFrom>, reason: String| LinkConfig {
            subscriber_id: subscriber_id.to_owned(),
            shard_id: shard_id.to_owned(),
            addr: setup.addr.clone(),
            credentials: target.credentials.clone(),
            connector: setup.connector.clone(),
            view: setup.view.clone(),
            slots: setup.slots.clone(),
            listening_port: self.config.common.listen.port(),
            resume_from,
            first_sync_reason: reason,
        };
        let start = match &position {
            Some(p) => {
                match shard
                    .spool
                    .locate(&p.replid, p.offset, p.in_snapshot, p.snapshot_records)
                {
                    Some(at) => {
                        // Subscribing from a position acknowledges everything before it.
                        shard
                            .spool
                            .trim(&p.replid, p.offset, p.in_snapshot, p.snapshot_records)
                            .await
                            .map_err(|e| Status::internal(e.to_string()))?;
                        shard
                            .metrics
                            .spool_bytes
                            .set(i64::try_from(shard.spool.bytes()).unwrap_or(i64::MAX));
                        self.ensure_link(
                            shard,
                            target.clone(),
                            fresh(
                                None,
                                "ingest's spool no longer continues the source's history".into(),
                            ),
                        );
                        tracing::info!(replid = %p.replid, offset = p.offset, in_snapshot = p.in_snapshot, "resuming from the spool");
                        StartAt {
                            segment: Some(at.segment),
                            byte: at.byte,
                            skip_records: at.skip_records,
                            db: p.db,
                            emit_begin: !p.in_snapshot,
                        }
                    }
                    None if p.in_snapshot => {
                        let reason = format!(
                            "the snapshot {}:{} being copied is no longer in ingest's spool",
                            p.replid, p.offset
                        );
                        self.restart_link(shard, target.clone(), fresh(None, reason))
                            .await?;
                        StartAt {
                            segment: None,
                            byte: 0,
                            skip_records: 0,
                            db: 0,
                            emit_begin: true,
                        }
                    }
                    None => {
                        // Not in the spool (ingest lost it, or never had it): the source's
                        // backlog may still hold it.
                        tracing::info!(replid = %p.replid, offset = p.offset, "position not in the spool; asking the source to continue from it");
                        let resume = ResumeFrom {
                            replid: p.replid.clone(),
                            offset: p.offset,
                        };
                        self.restart_link(
                            shard,
                            target.clone(),
                            fresh(Some(resume), "first sync".into()),
                        )
                        .await?;
                        StartAt {
                            segment: None,
                            byte: 0,
                            skip_records: 0,
                            db: p.db,
                            emit_begin: true,
                        }
                    }
                }
            }
            None if shard.spool.starts_with_snapshot() => {
                self.ensure_link(shard, target.clone(), fresh(None, "first sync".into()));
                let first = shard.spool.first_segment();
                StartAt {
                    segment: first,
                    byte: 0,
                    skip_records: 0,
                    db: 0,
                    emit_begin: true,
                }
            }
            None => {
                self.restart_link(shard, target.clone(), fresh(None, "first sync".into()))
                    .await?;
                StartAt {
                    segment: None,
                    byte: 0,
                    skip_records: 0,
                    db: 0,
                    emit_begin: true,
                }
            }
        };
        Ok(start)
    }

    /// Keeps a running link; starts one when there is none or it gave up.
    fn ensure_link(&self, shard: &mut Shard, target: LinkTarget, config: LinkConfig) {
        if shard.link.as_ref().is_some_and(|(l, _)| !l.is_finished()) {
            return;
        }
        let link = LinkHandle::start(
            config,
            shard.spool.clone(),
            shard.metrics.clone(),
            self.halt.subscribe(),
        );
        shard.link = Some((link, target));
    }

    /// Stops the link, empties the spool and starts a new link.
    async fn restart_link(
        &self,
        shard: &mut Shard,
        target: LinkTarget,
        config: LinkConfig,
    ) -> Result<(), Status> {
        if let Some((link, _)) = shard.link.take() {
            link.stop().await;
        }
        shard
            .spool
            .reset()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.ensure_link(shard, target, config);
        Ok(())
    }

    /// Trims spools up to the acknowledged positions.
    pub async fn acknowledge(&self, req: AcknowledgeRequest) -> Result<(), Status> {
        validate_subscriber_id(&req.subscriber_id)?;
        let known = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&req.subscriber_id);
        if !known
            && !tokio::fs::try_exists(self.config.spool_dir.join(&req.subscriber_id))
                .await
                .unwrap_or(false)
        {
            return Err(Status::not_found(format!(
                "no subscriber {:?} on this ingest",
                req.subscriber_id
            )));
        }
        let sub = self.subscriber(&req.subscriber_id);
        let mut st = sub.state.lock().await;
        for sp in &req.positions {
            let Some(p) = &sp.position else { continue };
            if !st.shards.contains_key(&sp.shard_id) {
                // After a restart, before the first Subscribe: the spool is on disk only.
                if validate_subscriber_id(&sp.shard_id).is_err()
                    || !tokio::fs::try_exists(sub.dir.join(&sp.shard_id))
                        .await
                        .unwrap_or(false)
                {
                    continue;
                }
                let shard = self.open_shard(&sub, &sp.shard_id).await?;
                st.shards.insert(sp.shard_id.clone(), shard);
            }
            let Some(shard) = st.shards.get(&sp.shard_id) else {
                continue;
            };
            shard
                .spool
                .trim(&p.replid, p.offset, p.in_snapshot, p.snapshot_records)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if !p.in_snapshot {
                shard
                    .metrics
                    .acked_offset
                    .set(i64::try_from(p.offset).unwrap_or(i64::MAX));
            }
            shard
                .metrics
                .spool_bytes
                .set(i64::try_from(shard.spool.bytes()).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Ends every subscription stream (the gRPC server can then drain) and stops every
    /// link and heartbeat.
    pub fn halt(&self) {
        self.halt.send_replace(true);
    }

    /// Waits until every task has stopped (after [`Registry::halt`]).
    pub async fn wait_stopped(&self) {
        let subs: Vec<Arc<Subscriber>> = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for sub in subs {
            let mut st = sub.state.lock().await;
            if let Some(active) = st.active.take() {
                active.stop().await;
            }
            for shard in st.shards.values_mut() {
                if let Some((link, _)) = shard.link.take() {
                    link.stop().await;
                }
            }
        }
    }

    /// Stops links of subscribers that have had no subscription for [`IDLE_LIMIT`].
    pub fn spawn_idle_sweeper(self: &Arc<Self>) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        // Only the service's halt stops the sweeper.
        let mut halt = StopSignal::new(self.halt.subscribe(), self.halt.subscribe());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = halt.requested() => return,
                }
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.sweep_idle(IDLE_LIMIT).await;
            }
        })
    }

    async fn sweep_idle(&self, limit: Duration) {
        let subs: Vec<Arc<Subscriber>> = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for sub in subs {
            let Ok(mut st) = sub.state.try_lock() else {
                continue;
            };
            let idle = st.active.as_ref().is_none_or(Active::is_finished);
            if !idle {
                st.idle_since = None;
                continue;
            }
            let since = *st.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < limit {
                continue;
            }
            let mut stopped = false;
            for shard in st.shards.values_mut() {
                if let Some((link, _)) = shard.link.take() {
                    link.stop().await;
                    stopped = true;
                }
            }
            if stopped {
                tracing::info!(subscriber = %sub.id, idle = ?limit, "no subscriber for a long time; replica links stopped");
            }
        }
    }
}

/// How often a cluster subscription checks for masters it does not follow.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(3);

/// Watches a cluster subscription's source for masters that own slots but are no shard's
/// home: a master added by scaling out and given slots by resharding. Its writes would
/// be missed (and the keys migrated to it are kept by dropping the old owner's `DEL`s,
/// see `resharding`, but not updated), so the subscription ends with `UNAVAILABLE`
/// naming it; the next `Subscribe` discovers it as a new shard. A master seen only once
/// is given one more check: after a failover the link moves its shard to the promoted
/// replica within seconds, which is not a new shard.
struct TopologyMonitor {
    view: Arc<SourceView>,
    connector: Connector,
    credentials: Credentials,
}

impl TopologyMonitor {
    async fn run(
        self,
        events: mpsc::Sender<Result<SubscribeResponse, Status>>,
        mut stop: StopSignal,
    ) {
        let mut seen_before: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(TOPOLOGY_CHECK) => {}
                () = stop.requested() => return,
                () = events.closed() => return,
            }
            let unfollowed = self.unfollowed().await;
            if unfollowed.is_empty() {
                seen_before.clear();
                continue;
            }
            let ids: Vec<String> = unfollowed.iter().map(|m| m.id.clone()).collect();
            if ids.iter().any(|id| !seen_before.contains(id)) {
                seen_before = ids;
                continue;
            }
            let names: Vec<String> = unfollowed
                .iter()
                .map(|m| format!("{} at {} ({} slot ranges)", m.id, m.addr, m.slots.len()))
                .collect();
            let message = format!(
                "the source cluster has masters this subscription does not follow yet: {}; \
                 subscribe again to add them as shards",
                names.join(", ")
            );
            tracing::warn!(%message, "topology changed");
            tokio::select! {
                _ = events.send(Err(Status::unavailable(message))) => {}
                () = stop.requested() => {}
            }
            return;
        }
    }

    /// Masters owning slots that are no shard's home (empty when no node answers).
    async fn unfollowed(&self) -> Vec<cluster::ClusterMaster> {
        let seeds = self.view.seeds();
        let answers = topology::survey(
            &self.connector,
            &self.credentials,
            &seeds[..seeds.len().min(2)],
        )
        .await;
        let Some(nodes) = answers.first() else {
            return Vec::new();
        };
        cluster::masters(nodes)
            .into_iter()
            .filter(|m| self.view.shard_of_node(&m.id).is_none())
            .collect()
    }
}

/// How a shard's link connects, besides what [`LinkTarget`] compares.
#[derive(Debug, Clone)]
struct LinkSetup {
    addr: String,
    connector: Connector,
    view: Option<Arc<SourceView>>,
    slots: Option<Arc<SlotHistory>>,
}

fn unavailable(e: &ConnError) -> Status {
    if e.is_permanent() {
        Status::failed_precondition(e.to_string())
    } else {
        Status::unavailable(e.to_string())
    }
}

/// Most nodes tried, one after the other, to read a cluster's topology at subscribe time.
const DISCOVER_TRIES: usize = 4;

/// The source's shards: the node itself, or the cluster's masters that own slots, each
/// under the shard id of the history it serves (see `topology`): a master keeps the id of
/// the shard it serves already (also after a failover moved the shard to it), or takes the
/// id of a start position whose replid it continues (a failover while ingest was down),
/// or else is a new shard named after its node id.
async fn discover(
    mode: InstanceMode,
    address: &str,
    creds: &Credentials,
    connector: &Connector,
    view: &SourceView,
    known_shards: &[String],
    start: &[ShardPosition],
) -> Result<Vec<ShardTarget>, Status> {
    if mode != InstanceMode::Cluster {
        return Ok(vec![ShardTarget {
            id: STANDALONE_SHARD.to_owned(),
            addr: address.to_owned(),
        }]);
    }
    let nodes = cluster_topology(address, creds, connector, view).await?;
    view.learn(&nodes);
    view.add_seed(address);
    let masters = cluster::masters(&nodes);
    if masters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "cluster at {address} has no master that owns slots"
        )));
    }
    let mut used: Vec<String> = Vec::new();
    let mut assigned: Vec<Option<String>> = vec![None; masters.len()];
    for (i, m) in masters.iter().enumerate() {
        let id = match view.shard_of_node(&m.id) {
            Some(shard) => Some(shard),
            None if known_shards.contains(&m.id) || start.iter().any(|p| p.shard_id == m.id) => {
                Some(m.id.clone())
            }
            None => None,
        };
        if let Some(id) = id.filter(|id| !used.contains(id)) {
            used.push(id.clone());
            assigned[i] = Some(id);
        }
    }
    // Start positions of shards no master is known for: the history may go on at a master
    // that was a replica when the position was taken.
    let orphans: Vec<&ShardPosition> = start
        .iter()
        .filter(|p| !used.contains(&p.shard_id) && p.position.is_some())
        .collect();
    if !orphans.is_empty() {
        for (i, m) in masters.iter().enumerate() {
            if assigned[i].is_some() {
                continue;
            }
            let ids = match topology::open(connector, creds, &m.addr).await {
                Ok(mut c) => conn::replication_ids(&mut c).await.ok(),
                Err(_) => None,
            };
            let Some((_, replid, replid2)) = ids else {
                continue;
            };
            let found = orphans.iter().find(|p| {
                !used.contains(&p.shard_id)
                    && p.position.as_ref().is_some_and(|pos| {
                        !pos.replid.is_empty() && (pos.replid == replid || pos.replid == replid2)
                    })
            });
            if let Some(p) = found {
                tracing::info!(shard = %p.shard_id, node = %m.id, addr = %m.addr, "the shard's history continues at another master (failover)");
                used.push(p.shard_id.clone());
                assigned[i] = Some(p.shard_id.clone());
            }
        }
    }
    let mut out = Vec::new();
    for (m, id) in masters.into_iter().zip(assigned) {
        let id = match id {
            Some(id) => id,
            None => {
                // A new shard, named after its node, unless that name already belongs to
                // another history (the node served a shard that has moved on since).
                let mut id = m.id.clone();
                let mut n = 1;
                while used.contains(&id) {
                    n += 1;
                    id = format!("{}.{n}", m.id);
                }
                used.push(id.clone());
                id
            }
        };
        view.set_home(
            &id,
            ShardHome {
                node_id: m.id.clone(),
                addr: m.addr.clone(),
                slots: m.slots.clone(),
            },
        );
        out.push(ShardTarget { id, addr: m.addr });
    }
    Ok(out)
}

/// `CLUSTER NODES` from `address`, or from another node this subscriber knows when that
/// one does not answer.
async fn cluster_topology(
    address: &str,
    creds: &Credentials,
    connector: &Connector,
    view: &SourceView,
) -> Result<Vec<NodeInfo>, Status> {
    let mut first_error = None;
    let mut tried = vec![address.to_owned()];
    tried.extend(view.seeds().into_iter().filter(|s| s != address));
    for addr in tried.iter().take(DISCOVER_TRIES) {
        let attempt = async {
            let mut c = connector.connect(addr).await.map_err(|e| unavailable(&e))?;
            creds.authenticate(&mut c).await.map_err(|e| match e {
                AuthError::Conn(c) => unavailable(&c),
                e @ AuthError::Refused { .. } => Status::permission_denied(e.to_string()),
            })?;
            topology::cluster_nodes(&mut c)
                .await
                .map_err(Status::failed_precondition)
        };
        match attempt.await {
            Ok(nodes) => return Ok(nodes),
            // Wrong credentials or settings are the same on every node.
            Err(s) if s.code() != tonic::Code::Unavailable => return Err(s),
            Err(s) => {
                first_error.get_or_insert(s);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| Status::unavailable(format!("{address}: unreachable"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(dir: &std::path::Path) -> IngestConfig {
        IngestConfig {
            common: redis_sync_service::CommonConfig {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: None,
                log_format: redis_sync_telemetry::LogFormat::Pretty,
                tls: None,
            },
            spool_dir: dir.to_path_buf(),
            spool_max_bytes: 1 << 30,
            chunk_threshold_bytes: 1 << 20,
            max_batch_events: 16,
            auth_token: None,
        }
    }

    #[tokio::test]
    async fn idle_links_are_stopped_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(
            test_config(dir.path()),
            redis_sync_telemetry::Metrics::new(),
        );
        let sub = registry.subscriber("idle");
        {
            let mut st = sub.state.lock().await;
            let mut shard = registry.open_shard(&sub, "standalone").await.unwrap();
            let target = LinkTarget {
                addr: "127.0.0.1:1".into(),
                credentials: Credentials::default(),
                tls: None,
            };
            let config = LinkConfig {
                subscriber_id: "idle".into(),
                shard_id: "standalone".into(),
                addr: target.addr.clone(),
                credentials: Credentials::default(),
                connector: Connector::plain(),
                view: None,
                slots: None,
                listening_port: 0,
                resume_from: None,
                first_sync_reason: "first sync".into(),
            };
            let link = LinkHandle::start(
                config,
                shard.spool.clone(),
                shard.metrics.clone(),
                registry.halt.subscribe(),
            );
            shard.link = Some((link, target));
            st.shards.insert("standalone".into(), shard);
        }
        registry.sweep_idle(Duration::from_secs(3600)).await;
        assert!(
            sub.state.lock().await.shards["standalone"].link.is_some(),
            "not idle long enough"
        );
        registry.sweep_idle(Duration::ZERO).await;
        assert!(
            sub.state.lock().await.shards["standalone"].link.is_none(),
            "stopped once idle past the limit"
        );
    }

    #[test]
    fn subscriber_ids_are_safe_directory_names() {
        assert!(validate_subscriber_id("task-1_a.b").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(200)] {
            assert!(validate_subscriber_id(bad).is_err(), "{bad:?}");
        }
    }
}
