//! The replica link: ingest's connection to one source master, as one of its replicas.
//!
//! The link does the replica handshake, asks for a partial resync from the end of its
//! spool (or a full one), receives the snapshot and then the command stream, and writes
//! every byte to the spool before it tells the master it has it (`REPLCONF ACK`). It never
//! waits for a subscriber, so the master's output buffer for us stays small whatever
//! happens downstream. Transient failures (connection loss, `-LOADING`, `-NOMASTERLINK`)
//! are retried with capped exponential backoff and continue with `PSYNC` from the spool's
//! end; failures that waiting will not fix (refused credentials, a rejected TLS
//! certificate, full spool) stop the link and are reported through [`LinkState::Failed`].
//!
//! While it retries, the link says so in [`LinkState::Retrying`] (address, last error,
//! attempts, since when), which readers turn into an `UNAVAILABLE` status for the
//! subscriber once it has lasted long enough; the retries go on regardless, so the link
//! recovers on its own when the master is back.
//!
//! In a cluster the link follows its shard: after every failed attempt it asks the cluster
//! where the shard's slots are served now ([`topology::relocate`]); after a failover that
//! is the promoted replica, which continues the same history with `+CONTINUE`, so the
//! shard keeps its id and its spool. A node that answers as a replica is not used: it may
//! be the old master demoted by a failover.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use redis_sync_resp::handshake::{
    EofMarkScanner, MarkScan, PsyncReply, TransferHeader, parse_psync_reply, parse_transfer_header,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    sync::watch,
    task::JoinHandle,
    time::Instant,
};
use tracing::Instrument;

use crate::{
    conn::{self, AuthError, ConnError, Credentials},
    metrics::ShardMetrics,
    resharding::{SlotHistory, SlotWatcher},
    spool::{SnapshotInfo, Spool, SpoolEnd, SpoolError, SpoolWriter},
    stop::StopSignal,
    tls::{Connector, NodeStream},
    topology::{self, ShardHome, SourceView},
};

type Reader = ReadHalf<NodeStream>;
type Writer = WriteHalf<NodeStream>;

/// How long the master may stay silent before the link is considered dead. The master
/// PINGs every 10 s by default and sends newlines while it prepares a snapshot.
const MASTER_SILENCE: Duration = Duration::from_secs(60);
/// How often the received offset is acknowledged.
const ACK_INTERVAL: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 64 * 1024;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a link is doing, for readers and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting and handshaking.
    Connecting,
    /// Receiving a snapshot.
    Transferring,
    /// Receiving the command stream.
    Streaming,
    /// The last attempt failed; another follows after a backoff. The state stays until an
    /// attempt gets through to a snapshot or the stream.
    Retrying {
        /// The master tried last.
        addr: String,
        /// Why the last attempt failed.
        error: String,
        /// Attempts failed in a row.
        attempt: u32,
        /// When the first of them failed.
        since: Instant,
    },
    /// The link gave up: waiting will not fix this.
    Failed(LinkFailure),
    /// Stopped on request.
    Stopped,
}

/// A subscriber hears that its source is unreachable after this many failed attempts in
/// a row ...
pub const UNAVAILABLE_AFTER_ATTEMPTS: u32 = 5;
/// ... or after failing for this long, whichever comes first.
pub const UNAVAILABLE_AFTER: Duration = Duration::from_secs(30);

impl LinkState {
    /// While retrying: when the failure becomes worth telling the subscriber.
    pub fn unavailable_at(&self) -> Option<Instant> {
        match self {
            LinkState::Retrying { since, .. } => Some(*since + UNAVAILABLE_AFTER),
            _ => None,
        }
    }

    /// The message for the subscriber, once the link has failed long enough (see
    /// [`UNAVAILABLE_AFTER_ATTEMPTS`], [`UNAVAILABLE_AFTER`]).
    pub fn unavailable(&self) -> Option<String> {
        let LinkState::Retrying {
            addr,
            error,
            attempt,
            since,
        } = self
        else {
            return None;
        };
        let failing = since.elapsed();
        (*attempt >= UNAVAILABLE_AFTER_ATTEMPTS || failing >= UNAVAILABLE_AFTER).then(|| {
            format!(
                "source master {addr} is unavailable: {attempt} attempts failed in a row over {}s; \
                 last error: {error} (ingest keeps retrying in the background)",
                failing.as_secs()
            )
        })
    }
}

/// Why a link gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFailure {
    /// The class of failure.
    pub kind: FailureKind,
    /// What happened, for humans.
    pub message: String,
}

/// Classes of permanent link failures, which map to gRPC codes for the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// AUTH was refused or a password is required.
    Authentication,
    /// The spool reached `spool_max_bytes`.
    SpoolFull,
    /// The spool directory could not be written.
    Disk,
    /// The master answered something a replica cannot work with.
    Protocol,
    /// The TLS handshake failed in a way retrying will not fix (certificate rejected).
    Tls,
}

/// Where the link asks the master to continue when its spool is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    /// Replid of the position.
    pub replid: String,
    /// Offset after the last byte the subscriber has.
    pub offset: u64,
}

/// Everything a link needs to run.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// For logs and metrics.
    pub subscriber_id: String,
    /// For logs and metrics.
    pub shard_id: String,
    /// "host:port" of the master. In a cluster the link follows the shard's home in
    /// `view` instead, starting here.
    pub addr: String,
    /// Credentials of the master.
    pub credentials: Credentials,
    /// Opens the connection (TLS or plain).
    pub connector: Connector,
    /// Cluster sources: where the subscriber's shards live now.
    pub view: Option<Arc<SourceView>>,
    /// Cluster sources: where the link's slot watcher records the master's slot states
    /// (see `resharding`).
    pub slots: Option<Arc<SlotHistory>>,
    /// Announced with `REPLCONF listening-port` (shown in the master's INFO replication).
    pub listening_port: u16,
    /// Used while the spool is empty: PSYNC from here instead of a full copy.
    pub resume_from: Option<ResumeFrom>,
    /// Why a full copy happens when neither the spool nor `resume_from` gives a position.
    pub first_sync_reason: String,
}

/// A running link. Dropping it does not stop the task; call [`LinkHandle::stop`].
#[derive(Debug)]
pub struct LinkHandle {
    stop: watch::Sender<bool>,
    state: watch::Receiver<LinkState>,
    task: JoinHandle<()>,
}

impl LinkHandle {
    /// Starts a link that fills `spool`. It stops on [`LinkHandle::stop`], when the handle
    /// is dropped, or when `halt` (the whole service stopping) fires.
    pub fn start(
        config: LinkConfig,
        spool: Arc<Spool>,
        metrics: ShardMetrics,
        halt: watch::Receiver<bool>,
    ) -> LinkHandle {
        let (stop, stop_rx) = watch::channel(false);
        let stop_rx = StopSignal::new(stop_rx, halt);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let span = tracing::info_span!("replica_link", subscriber = %config.subscriber_id, shard = %config.shard_id, master = %config.addr);
        // The slot watcher lives as long as the link: it records slot states for all the
        // stream the link receives, also while no subscriber reads.
        let watcher = match (&config.view, &config.slots) {
            (Some(view), Some(history)) => Some(SlotWatcher {
                view: view.clone(),
                shard_id: config.shard_id.clone(),
                connector: config.connector.clone(),
                credentials: config.credentials.clone(),
                history: history.clone(),
            }),
            _ => None,
        };
        let runner = LinkRunner {
            config,
            spool,
            metrics,
            state: state_tx,
            stop: stop_rx,
            getack: GetAckScanner::lost(),
        };
        let task = tokio::spawn(
            async move {
                match watcher {
                    Some(w) => {
                        tokio::select! {
                            () = runner.run() => {}
                            () = w.run() => {}
                        }
                    }
                    None => runner.run().await,
                }
            }
            .instrument(span),
        );
        LinkHandle { stop, state, task }
    }

    /// The link's state, to watch.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Whether the task has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the link and waits until it has let go of the spool.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Why one session with the master ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("{0}")]
    Auth(String),
    #[error("master {addr} is not ready: {message}")]
    NotReady { addr: String, message: String },
    #[error("master {addr} refused the replica: {message}")]
    Refused { addr: String, message: String },
    #[error("master {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("{addr} is no longer a master (role {role}); looking for the shard's new master")]
    NotMaster { addr: String, role: String },
    #[error("master {addr} sent nothing for {MASTER_SILENCE:?}")]
    Silent { addr: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("stop requested")]
    Stopped,
}

impl SessionError {
    fn permanent(&self) -> Option<FailureKind> {
        match self {
            SessionError::Auth(_) => Some(FailureKind::Authentication),
            SessionError::Refused { .. } => Some(FailureKind::Protocol),
            SessionError::Spool(SpoolError::Full { .. }) => Some(FailureKind::SpoolFull),
            SessionError::Spool(_) => Some(FailureKind::Disk),
            SessionError::Conn(e) if e.is_permanent() => Some(FailureKind::Tls),
            _ => None,
        }
    }
}

struct LinkRunner {
    config: LinkConfig,
    spool: Arc<Spool>,
    metrics: ShardMetrics,
    state: watch::Sender<LinkState>,
    stop: StopSignal,
    /// Kept across reconnects: the byte stream continues where it broke, possibly in the
    /// middle of a command.
    getack: GetAckScanner,
}

impl LinkRunner {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut since = Instant::now();
        loop {
            if self.stop.is_set() {
                break;
            }
            if attempt == 0 {
                self.state.send_replace(LinkState::Connecting);
            }
            let mut reached_stream = false;
            let addr = self.addr();
            let result = self.session(&addr, &mut reached_stream).await;
            self.metrics.link_up.set(0);
            match result {
                Ok(()) | Err(SessionError::Stopped) => break,
                Err(e) => {
                    if let Some(kind) = e.permanent() {
                        tracing::error!(error = %e, "replica link failed");
                        self.state.send_replace(LinkState::Failed(LinkFailure {
                            kind,
                            message: e.to_string(),
                        }));
                        return;
                    }
                    if reached_stream || attempt == 0 {
                        attempt = 1;
                        since = Instant::now();
                    } else {
                        attempt = attempt.saturating_add(1);
                    }
                    let delay = backoff(attempt);
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, "replica link broke, reconnecting");
                    self.metrics.link_errors.inc();
                    self.state.send_replace(LinkState::Retrying {
                        addr,
                        error: e.to_string(),
                        attempt,
                        since,
                    });
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        () = self.relocate() => {}
                        () = stop.requested() => break,
                    }
                    tokio::select! {
                        () = &mut sleep => {}
                        () = stop.requested() => break,
                    }
                }
            }
        }
        self.state.send_replace(LinkState::Stopped);
    }

    /// The master to talk to: the shard's home in a cluster, the configured address else.
    fn addr(&self) -> String {
        self.config
            .view
            .as_ref()
            .and_then(|v| v.home(&self.config.shard_id))
            .map_or_else(|| self.config.addr.clone(), |h| h.addr)
    }

    /// Cluster only: finds out whether the shard is served elsewhere now and moves it.
    async fn relocate(&mut self) {
        let Some(view) = self.config.view.clone() else {
            return;
        };
        let replid = self
            .spool
            .end()
            .map(|e| e.replid)
            .or_else(|| self.config.resume_from.as_ref().map(|r| r.replid.clone()));
        let found = topology::relocate(
            &view,
            &self.config.shard_id,
            &self.config.connector,
            &self.config.credentials,
            replid.as_deref(),
        )
        .await;
        let old = view.home(&self.config.shard_id);
        match found {
            Ok(Some(home)) if old.as_ref() != Some(&home) => {
                let moved: Option<&ShardHome> = old.as_ref().filter(|o| o.node_id != home.node_id);
                if let Some(o) = moved {
                    tracing::warn!(from = %o.addr, from_node = %o.node_id, to = %home.addr, to_node = %home.node_id, "the shard is served by another master now (failover); continuing its history there");
                } else {
                    tracing::info!(addr = %home.addr, slots = home.slots.len(), "shard topology refreshed");
                }
                view.set_home(&self.config.shard_id, home);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot rediscover the cluster topology"),
        }
    }

    /// One connection to the master, until it breaks (`Err`) or a stop is requested (`Ok`).
    async fn session(&mut self, addr: &str, reached_stream: &mut bool) -> Result<(), SessionError> {
        let addr = addr.to_owned();
        let mut conn = self.config.connector.connect(&addr).await?;
        let mut writer = self.spool.writer().await?;

        // PING first, as a Redis replica does: it proves the other end speaks RESP before
        // we send credentials. NOAUTH/NOPERM here only mean AUTH must come first.
        let pong = conn.command(&[b"PING".as_slice()]).await?;
        let mut auth_required = false;
        if let Some(err) = conn::reply_error(&pong) {
            if err.starts_with("NOAUTH")
                || err.starts_with("NOPERM")
                || err.contains("operation not permitted")
            {
                auth_required = true;
            } else if is_not_ready(&err) {
                return Err(SessionError::NotReady { addr, message: err });
            } else {
                return Err(SessionError::Protocol {
                    addr,
                    message: format!("PING answered {err}"),
                });
            }
        }
        if auth_required && self.config.credentials.password.is_empty() {
            return Err(SessionError::Auth(format!(
                "master {addr} requires a password and none is configured"
            )));
        }
        match self.config.credentials.authenticate(&mut conn).await {
            Ok(()) => {}
            Err(AuthError::Conn(e)) => return Err(e.into()),
            Err(e @ AuthError::Refused { .. }) => return Err(SessionError::Auth(e.to_string())),
        }

        if self.config.view.is_some() {
            // In a cluster the shard's master may have been demoted by a failover; a replica
            // would serve us, but only as a detour: find the shard's real master instead.
            match conn::replication_ids(&mut conn).await {
                Ok((role, _, _)) if !role.is_empty() && role != "master" => {
                    return Err(SessionError::NotMaster { addr, role });
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot check the node's role"),
            }
        }

        // The key count is the progress estimate a subscriber sees in SnapshotBegin.
        let estimated_keys = match conn::info(&mut conn, Some("keyspace")).await? {
            Ok(info) => conn::keyspace(&info).iter().map(|(_, n)| n).sum(),
            Err(_) => 0,
        };

        let port = self.config.listening_port.to_string();
        let reply = conn
            .command(&[b"REPLCONF".as_slice(), b"listening-port", port.as_bytes()])
            .await?;
        if let Some(err) = conn::reply_error(&reply) {
            check_handshake_error(&addr, &err)?;
            // A Redis replica only logs this too: the port is informational.
            tracing::debug!(error = %err, "master refused REPLCONF listening-port");
        }
        let reply = conn
            .command(&[b"REPLCONF".as_slice(), b"capa", b"eof", b"capa", b"psync2"])
            .await?;
        if let Some(err) = conn::reply_error(&reply) {
            check_handshake_error(&addr, &err)?;
            // Redis 2.8 does not know capabilities: it then sends disk snapshots and
            // bare +CONTINUE, which we handle anyway.
            tracing::debug!(error = %err, "master does not support REPLCONF capa");
        }

        let end = self.spool.end();
        let (asked, full_reason) = match (&end, self.spool.forced_full_sync()) {
            (_, Some(reason)) => (None, reason),
            (Some(end), None) => (
                Some(ResumeFrom {
                    replid: end.replid.clone(),
                    offset: end.offset,
                }),
                String::new(),
            ),
            (None, None) if self.spool.is_empty() => (
                self.config.resume_from.clone(),
                self.config.first_sync_reason.clone(),
            ),
            (None, None) => (None, self.config.first_sync_reason.clone()),
        };
        match &asked {
            Some(p) => {
                // The offset comes from a subscriber's request: never overflow on it.
                let next = p.offset.saturating_add(1).to_string();
                conn.send(&[b"PSYNC".as_slice(), p.replid.as_bytes(), next.as_bytes()])
                    .await?;
            }
            None => conn.send(&[b"PSYNC".as_slice(), b"?", b"-1"]).await?,
        }
        let (mut socket, mut buf) = conn.into_parts();
        let reply = loop {
            match parse_psync_reply(&buf) {
                Ok(Some((reply, used))) => {
                    let _ = buf.split_to(used);
                    break reply;
                }
                Ok(None) => read_more(&mut socket, &mut buf, &addr, &mut self.stop).await?,
                Err(e) => {
                    return Err(SessionError::Protocol {
                        addr,
                        message: format!("PSYNC reply: {e}"),
                    });
                }
            }
        };
        match reply {
            PsyncReply::Error(err) => {
                if is_not_ready(&err) {
                    return Err(SessionError::NotReady { addr, message: err });
                }
                check_handshake_error(&addr, &err)?;
                Err(SessionError::Refused {
                    addr,
                    message: format!("PSYNC answered -{err}"),
                })
            }
            PsyncReply::FullResync { replid, offset } => {
                let reason = match &asked {
                    Some(p) => format!(
                        "the source could not continue from {}:{} (no longer in its backlog, or a different history)",
                        p.replid, p.offset
                    ),
                    None => full_reason,
                };
                tracing::info!(%replid, offset, %reason, "full resync");
                self.state.send_replace(LinkState::Transferring);
                self.metrics.link_up.set(1);
                let info = SnapshotInfo {
                    expected_bytes: 0,
                    estimated_keys,
                    reason,
                };
                let transferred = self
                    .transfer(&mut socket, &mut buf, &mut writer, &replid, offset, info)
                    .await;
                if let Err(e) = transferred {
                    writer.abandon_snapshot().await?;
                    return Err(e);
                }
                self.getack = GetAckScanner::default();
                // After a diskless transfer the master waits for this first ACK before it
                // sends the stream; after a disk one it does no harm.
                let (mut rd, mut wr) = tokio::io::split(socket);
                send_ack(&mut wr, &mut writer, &addr).await?;
                *reached_stream = true;
                self.stream(&mut rd, &mut wr, &mut writer, buf).await
            }
            PsyncReply::Continue { new_replid } => {
                let Some(asked) = asked else {
                    return Err(SessionError::Protocol {
                        addr,
                        message: "+CONTINUE in reply to PSYNC ? -1".into(),
                    });
                };
                let replid = new_replid.unwrap_or_else(|| asked.replid.clone());
                let spool_end = self.spool.end();
                if !writer.in_stream() || spool_end.as_ref().is_none_or(|e| e.replid != replid) {
                    if replid != asked.replid {
                        tracing::info!(old = %asked.replid, new = %replid, offset = asked.offset, "master continues under a new replication id");
                    }
                    writer.begin_stream(&replid, asked.offset).await?;
                }
                if spool_end.is_none() {
                    // The spool was empty: bytes from before were lost; start a fresh scan.
                    self.getack = GetAckScanner::lost();
                }
                tracing::info!(%replid, offset = asked.offset, "partial resync");
                let (mut rd, mut wr) = tokio::io::split(socket);
                *reached_stream = true;
                self.stream(&mut rd, &mut wr, &mut writer, buf).await
            }
        }
    }

    /// Receives the snapshot into a snapshot segment. `buf` holds what was read past the
    /// PSYNC reply; on return it holds what was read past the snapshot (stream bytes).
    async fn transfer(
        &mut self,
        socket: &mut NodeStream,
        buf: &mut BytesMut,
        writer: &mut SpoolWriter,
        replid: &str,
        offset: u64,
        mut info: SnapshotInfo,
    ) -> Result<(), SessionError> {
        let addr = self.config.addr.clone();
        let header = loop {
            match parse_transfer_header(buf) {
                Ok(Some((header, used))) => {
                    let _ = buf.split_to(used);
                    break header;
                }
                Ok(None) => {
                    // Only keepalive newlines so far: drop them so the buffer stays small.
                    if buf.iter().all(|&b| b == b'\n' || b == b'\r') {
                        buf.clear();
                    }
                    read_more(socket, buf, &addr, &mut self.stop).await?;
                }
                Err(e) => {
                    return Err(SessionError::Protocol {
                        addr,
                        message: format!("snapshot header: {e}"),
                    });
                }
            }
        };
        match header {
            TransferHeader::Disk { len } => {
                info.expected_bytes = len;
                writer.begin_snapshot(replid, offset, info).await?;
                let mut remaining = len;
                loop {
                    let take = remaining.min(buf.len() as u64) as usize;
                    if take > 0 {
                        let chunk = buf.split_to(take);
                        writer.append(&chunk).await?;
                        self.metrics.bytes_received.add(take as u64);
                        remaining -= take as u64;
                    }
                    if remaining == 0 {
                        break;
                    }
                    read_more(socket, buf, &addr, &mut self.stop).await?;
                }
            }
            TransferHeader::Diskless { mark } => {
                writer.begin_snapshot(replid, offset, info).await?;
                let mut scanner = EofMarkScanner::new(mark);
                let mut payload = BytesMut::with_capacity(READ_CHUNK);
                loop {
                    let chunk = buf.split();
                    let scan = scanner.feed(&chunk, &mut payload);
                    if !payload.is_empty() {
                        writer.append(&payload).await?;
                        self.metrics.bytes_received.add(payload.len() as u64);
                        payload.clear();
                    }
                    if let MarkScan::Finished { consumed } = scan {
                        buf.extend_from_slice(&chunk[consumed..]);
                        break;
                    }
                    read_more(socket, buf, &addr, &mut self.stop).await?;
                }
            }
        }
        writer.complete_snapshot().await?;
        tracing::info!(replid, offset, "snapshot received");
        Ok(())
    }

    /// Spools the command stream until the link breaks or is stopped.
    async fn stream(
        &mut self,
        rd: &mut Reader,
        wr: &mut Writer,
        writer: &mut SpoolWriter,
        mut buf: BytesMut,
    ) -> Result<(), SessionError> {
        let addr = self.config.addr.clone();
        self.state.send_replace(LinkState::Streaming);
        self.metrics.link_up.set(1);
        // An ACK is due (every second, and on GETACK). It waits for the spool to be
        // durable up to what it reports, but the socket is read meanwhile: the sync runs
        // in the background and the ACK goes out when it completes.
        let mut ack_due = false;
        let mut syncing: Option<JoinHandle<Result<Option<SpoolEnd>, SpoolError>>> = None;
        if !buf.is_empty() {
            ack_due |= self.received(&buf, writer).await?;
            buf.clear();
        }
        let mut tick = tokio::time::interval(ACK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut stop = self.stop.clone();
        loop {
            if ack_due && syncing.is_none() {
                syncing = Some(writer.sync_in_background().await?);
                ack_due = false;
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                () = stop.requested() => {
                    if let Some(sync) = syncing.take() {
                        let _ = sync.await;
                    }
                    let _ = writer.sync().await;
                    return Ok(());
                }
                read = rd.read_buf(&mut buf) => {
                    let n = read.map_err(|source| ConnError::Io { addr: addr.clone(), source })?;
                    if n == 0 {
                        let _ = writer.sync().await;
                        return Err(ConnError::Closed { addr }.into());
                    }
                    last_heard = Instant::now();
                    let chunk = buf.split();
                    ack_due |= self.received(&chunk, writer).await?;
                }
                synced = async { syncing.as_mut().expect("guarded by the branch condition").await },
                    if syncing.is_some() =>
                {
                    syncing = None;
                    let end = synced.map_err(|e| SpoolError::Misuse(if e.is_panic() {
                        "the spool sync panicked"
                    } else {
                        "the spool sync was cancelled"
                    }))??;
                    if let Some(end) = end {
                        write_ack(wr, end.offset, &addr).await?;
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > MASTER_SILENCE {
                        return Err(SessionError::Silent { addr });
                    }
                    ack_due = true;
                }
            }
        }
    }

    /// Spools stream bytes; true when they held a `REPLCONF GETACK` (an ACK is due).
    async fn received(
        &mut self,
        chunk: &[u8],
        writer: &mut SpoolWriter,
    ) -> Result<bool, SessionError> {
        writer.append(chunk).await?;
        self.metrics.bytes_received.add(chunk.len() as u64);
        self.metrics
            .source_offset
            .set(i64::try_from(self.spool.received_offset()).unwrap_or(i64::MAX));
        self.metrics
            .spool_bytes
            .set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
        Ok(self.getack.feed(chunk) > 0)
    }
}

/// Reads more bytes into `buf`. Fails when a stop was requested, the master closed the
/// connection or it stayed silent too long.
async fn read_more(
    socket: &mut NodeStream,
    buf: &mut BytesMut,
    addr: &str,
    stop: &mut StopSignal,
) -> Result<(), SessionError> {
    buf.reserve(READ_CHUNK);
    tokio::select! {
        () = stop.requested() => Err(SessionError::Stopped),
        read = tokio::time::timeout(MASTER_SILENCE, socket.read_buf(buf)) => match read {
            Err(_) => Err(SessionError::Silent { addr: addr.to_owned() }),
            Ok(Err(source)) => Err(ConnError::Io { addr: addr.to_owned(), source }.into()),
            Ok(Ok(0)) => Err(ConnError::Closed { addr: addr.to_owned() }.into()),
            Ok(Ok(_)) => Ok(()),
        },
    }
}

/// Makes the spooled bytes durable, then tells the master how far we got.
async fn send_ack(
    wr: &mut Writer,
    writer: &mut SpoolWriter,
    addr: &str,
) -> Result<(), SessionError> {
    let Some(end) = writer.sync().await? else {
        return Ok(());
    };
    write_ack(wr, end.offset, addr).await
}

/// Tells the master the replica has everything up to `offset`.
async fn write_ack(wr: &mut Writer, offset: u64, addr: &str) -> Result<(), SessionError> {
    let offset = offset.to_string();
    let mut out = BytesMut::new();
    redis_sync_resp::encode_command(
        &[b"REPLCONF".as_slice(), b"ACK", offset.as_bytes()],
        &mut out,
    );
    let written = async {
        wr.write_all(&out).await?;
        // TLS buffers records; plain TCP flushes nothing.
        wr.flush().await
    };
    written.await.map_err(|source| ConnError::Io {
        addr: addr.to_owned(),
        source,
    })?;
    Ok(())
}

fn is_not_ready(err: &str) -> bool {
    err.starts_with("LOADING")
        || err.starts_with("NOMASTERLINK")
        || err.starts_with("MASTERDOWN")
        || err.contains("not connected with my master")
        || err.starts_with("BUSY")
}

fn check_handshake_error(addr: &str, err: &str) -> Result<(), SessionError> {
    if err.starts_with("NOAUTH")
        || err.starts_with("NOPERM")
        || err.starts_with("WRONGPASS")
        || err.contains("operation not permitted")
    {
        return Err(SessionError::Auth(format!(
            "master {addr} refused the replica handshake: {err}"
        )));
    }
    Ok(())
}

fn backoff(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(10);
    (BACKOFF_START * factor).min(BACKOFF_MAX)
}

/// Finds `REPLCONF GETACK` in the command stream without buffering commands: it follows
/// the RESP framing byte by byte and only keeps the first two arguments' first bytes.
///
/// After a restart the link may resume in the middle of a command, where framing cannot be
/// recovered; the scanner then stays `lost` and the periodic ACK alone answers the master.
#[derive(Debug, Clone)]
struct GetAckScanner {
    state: ScanState,
    line: Vec<u8>,
    args_left: u64,
    bulk_left: u64,
    arg: usize,
    first: [u8; 8],
    first_len: usize,
    second: [u8; 8],
    second_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    Start,
    ArrayLen,
    InlineLine,
    BulkLen,
    BulkBody,
    BulkCr,
    BulkLf,
    Lost,
}

impl Default for GetAckScanner {
    fn default() -> Self {
        GetAckScanner {
            state: ScanState::Start,
            line: Vec::new(),
            args_left: 0,
            bulk_left: 0,
            arg: 0,
            first: [0; 8],
            first_len: 0,
            second: [0; 8],
            second_len: 0,
        }
    }
}

impl GetAckScanner {
    fn lost() -> Self {
        GetAckScanner {
            state: ScanState::Lost,
            ..Default::default()
        }
    }

    /// Scans `bytes`; returns how many GETACK commands ended in them.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut found = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ScanState::Lost => return found,
                ScanState::Start => {
                    self.arg = 0;
                    self.first_len = 0;
                    self.second_len = 0;
                    self.line.clear();
                    self.state = if b == b'*' {
                        ScanState::ArrayLen
                    } else {
                        ScanState::InlineLine
                    };
                    if b == b'\n' {
                        self.state = ScanState::Start;
                    }
                }
                ScanState::ArrayLen | ScanState::BulkLen | ScanState::InlineLine => {
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        let digits = line.strip_suffix(b"\r").unwrap_or(&line);
                        match self.state {
                            ScanState::InlineLine => self.state = ScanState::Start,
                            ScanState::ArrayLen => match parse_len(digits) {
                                Some(0) | None => {
                                    self.state = if digits == b"-1" || digits == b"0" {
                                        ScanState::Start
                                    } else {
                                        ScanState::Lost
                                    }
                                }
                                Some(n) => {
                                    self.args_left = n;
                                    self.state = ScanState::BulkLen;
                                }
                            },
                            _ => match digits.split_first() {
                                Some((b'$', n)) => match parse_len(n) {
                                    Some(n) => {
                                        self.bulk_left = n;
                                        self.state = if n == 0 {
                                            ScanState::BulkCr
                                        } else {
                                            ScanState::BulkBody
                                        };
                                    }
                                    None => self.state = ScanState::Lost,
                                },
                                _ => self.state = ScanState::Lost,
                            },
                        }
                    } else if self.line.len() < 32 {
                        self.line.push(b);
                    } else if self.state != ScanState::InlineLine {
                        self.state = ScanState::Lost;
                    }
                }
                ScanState::BulkBody => {
                    let take = (self.bulk_left.min((bytes.len() - i) as u64)) as usize;
                    let part = &bytes[i..i + take];
                    let (dst, len) = match self.arg {
                        0 => (&mut self.first, &mut self.first_len),
                        1 => (&mut self.second, &mut self.second_len),
                        _ => (&mut [0u8; 8], &mut 0usize),
                    };
                    for &c in part {
                        if *len < dst.len() {
                            dst[*len] = c;
                        }
                        *len += 1;
                    }
                    self.bulk_left -= take as u64;
                    i += take;
                    if self.bulk_left == 0 {
                        self.state = ScanState::BulkCr;
                    }
                    continue;
                }
                ScanState::BulkCr => {
                    self.state = if b == b'\r' {
                        ScanState::BulkLf
                    } else {
                        ScanState::Lost
                    }
                }
                ScanState::BulkLf => {
                    if b != b'\n' {
                        self.state = ScanState::Lost;
                    } else {
                        self.arg += 1;
                        self.args_left -= 1;
                        if self.args_left == 0 {
                            if self.first_len == 8
                                && self.first.eq_ignore_ascii_case(b"REPLCONF")
                                && self.second_len == 6
                                && self.second[..6].eq_ignore_ascii_case(b"GETACK")
                            {
                                found += 1;
                            }
                            self.state = ScanState::Start;
                        } else {
                            self.state = ScanState::BulkLen;
                        }
                    }
                }
            }
            i += 1;
        }
        found
    }
}

fn parse_len(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        redis_sync_resp::encode_command(args, &mut out);
        out.to_vec()
    }

    #[test]
    fn getack_found_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(cmd(&[b"SELECT", b"0"]));
        stream.extend(cmd(&[b"SET", b"REPLCONF", b"GETACK"]));
        stream.extend(cmd(&[b"REPLCONF", b"GETACK", b"*"]));
        stream.extend(cmd(&[b"PING"]));
        stream.extend(cmd(&[b"replconf", b"getack", b"*"]));
        stream.extend(cmd(&[b"SET", b"k", &[b'x'; 300]]));
        for split in [1, 2, 3, 7, 64, stream.len()] {
            let mut s = GetAckScanner::default();
            let found: usize = stream.chunks(split).map(|c| s.feed(c)).sum();
            assert_eq!(found, 2, "split {split}");
            assert_eq!(s.state, ScanState::Start);
        }
    }

    #[test]
    fn garbage_gives_up_quietly() {
        let mut s = GetAckScanner::default();
        assert_eq!(s.feed(b"*2\r\n:1\r\n"), 0);
        assert_eq!(s.state, ScanState::Lost);
        assert_eq!(s.feed(&cmd(&[b"REPLCONF", b"GETACK", b"*"])), 0);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), BACKOFF_START);
        assert_eq!(backoff(2), BACKOFF_START * 2);
        assert_eq!(backoff(50), BACKOFF_MAX);
    }
}
