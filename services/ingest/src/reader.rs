//! The shard reader: follows one shard's spool from a start position, decodes it and sends
//! batches to the subscriber.
//!
//! The reader is the only part that waits for the subscriber: the gRPC stream is a small
//! bounded channel, so a slow subscriber stops its reader while the link keeps draining
//! the source into the spool.

use std::{sync::Arc, time::Duration};

use redis_sync_proto::v1::{ChangeEvent, Position, SubscribeResponse, change_event::Kind};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::{
    decode::{
        scripts::{ScriptCache, ScriptStore, StoreError},
        snapshot::{SnapshotDecoder, SnapshotError},
        stream::{HeartbeatMatcher, StreamDecoder, StreamError},
    },
    link::{FailureKind, LinkState},
    metrics::ShardMetrics,
    resharding::{self, SlotHistory},
    spool::{SegmentKind, SegmentMeta, SegmentState, Spool, SpoolError},
    stop::StopSignal,
};

/// Largest read from a segment file at once.
const READ_CHUNK: usize = 256 * 1024;
/// A batch is sent once its events reach this many encoded bytes, so messages stay below
/// the 4 MiB a default gRPC client accepts (an event bigger than this goes alone).
const BATCH_MAX_BYTES: usize = 2 * 1024 * 1024;
/// A batch is sent at the latest after this long, even if not full, so a busy snapshot
/// still shows progress.
const BATCH_MAX_DELAY: Duration = Duration::from_millis(200);

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartAt {
    /// Segment to start in; `None` waits for the first segment the link writes (after a
    /// spool reset).
    pub segment: Option<u64>,
    /// Stream segment: payload byte to start at.
    pub byte: u64,
    /// Snapshot segment: records already delivered.
    pub skip_records: u64,
    /// Database selected at the start (stream positions carry it).
    pub db: u32,
    /// Snapshot segment: a new copy starts (false when resuming inside it: the
    /// SnapshotBegin is then marked `resumed`).
    pub emit_begin: bool,
}

/// What a reader needs besides the spool.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The shard's id, put in every batch.
    pub shard_id: String,
    /// Most events per batch.
    pub max_batch_events: usize,
    /// Chunk threshold for snapshot keys.
    pub chunk_threshold_bytes: u64,
    /// Recognises this subscriber's heartbeats.
    pub heartbeat: Option<HeartbeatMatcher>,
    /// The subscriber's script bodies on disk.
    pub scripts: Option<Arc<ScriptStore>>,
    /// Cluster sources: the shard's slot states, to recognise the `DEL`s that resharding
    /// produces (see `resharding`).
    pub slots: Option<Arc<SlotHistory>>,
}

/// Sink of a subscription's gRPC stream.
pub type EventSender = mpsc::Sender<Result<SubscribeResponse, Status>>;

#[derive(Debug, thiserror::Error)]
enum ReaderError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Scripts(#[from] StoreError),
    #[error("spooled data at segment {0} was deleted before it was read")]
    Gone(u64),
    #[error("{0}")]
    Link(String, FailureKind),
    #[error("{0}")]
    Unavailable(String),
    #[error("the replica link stopped")]
    LinkStopped,
    #[error("the subscriber went away")]
    Closed,
    #[error("cancelled")]
    Cancelled,
}

impl ReaderError {
    fn status(&self) -> Option<Status> {
        Some(match self {
            ReaderError::Closed | ReaderError::Cancelled => return None,
            ReaderError::LinkStopped | ReaderError::Unavailable(_) => {
                Status::unavailable(self.to_string())
            }
            ReaderError::Spool(SpoolError::Full { .. }) => {
                Status::resource_exhausted(self.to_string())
            }
            ReaderError::Spool(_) | ReaderError::Scripts(_) => Status::internal(self.to_string()),
            ReaderError::Snapshot(_) | ReaderError::Stream(_) | ReaderError::Gone(_) => {
                Status::data_loss(self.to_string())
            }
            ReaderError::Link(msg, kind) => match kind {
                FailureKind::SpoolFull => Status::resource_exhausted(msg.clone()),
                FailureKind::Authentication => Status::permission_denied(msg.clone()),
                FailureKind::Disk => Status::internal(msg.clone()),
                FailureKind::Protocol => Status::failed_precondition(msg.clone()),
                FailureKind::Tls => Status::failed_precondition(msg.clone()),
            },
        })
    }
}

enum Decoding {
    Snapshot(SnapshotDecoder),
    Stream(StreamDecoder),
}

struct Reader {
    spool: Arc<Spool>,
    cfg: ReaderConfig,
    tx: EventSender,
    link: watch::Receiver<LinkState>,
    cancel: StopSignal,
    metrics: ShardMetrics,
    scripts: ScriptCache,
    batch: Vec<ChangeEvent>,
    batch_bytes: usize,
    last_sent: Option<Position>,
    buf: Vec<u8>,
}

/// Runs a reader until the subscriber goes away, the subscription is cancelled, or an
/// error ends it (sent to the subscriber as the stream's final status).
pub async fn run(
    spool: Arc<Spool>,
    start: StartAt,
    cfg: ReaderConfig,
    tx: EventSender,
    link: watch::Receiver<LinkState>,
    cancel: StopSignal,
    metrics: ShardMetrics,
) {
    let mut reader = Reader {
        spool,
        cfg,
        tx: tx.clone(),
        link,
        cancel,
        metrics,
        scripts: ScriptCache::default(),
        batch: Vec::new(),
        batch_bytes: 0,
        last_sent: None,
        buf: vec![0; READ_CHUNK],
    };
    if let Some(store) = &reader.cfg.scripts {
        store.seed(&mut reader.scripts).await;
    }
    let result = reader.follow(start).await;
    match result {
        Ok(()) => {}
        Err(e) => {
            if let Some(status) = e.status() {
                tracing::warn!(error = %e, "subscription stream ends with an error");
                let _ = tx.send(Err(status)).await;
            } else {
                tracing::debug!(reason = %e, "reader ends");
            }
        }
    }
}

impl Reader {
    async fn follow(&mut self, start: StartAt) -> Result<(), ReaderError> {
        let mut segment = match start.segment {
            Some(id) => self.spool.segment(id).ok_or(ReaderError::Gone(id))?,
            None => self.wait_first_segment().await?,
        };
        let mut pos = start.byte;
        let mut decoding = match &segment.kind {
            SegmentKind::Snapshot(info) => Decoding::Snapshot(SnapshotDecoder::new(
                segment.replid.clone(),
                segment.offset,
                info.clone(),
                self.cfg.chunk_threshold_bytes,
                start.skip_records,
                start.emit_begin,
            )),
            SegmentKind::Stream => {
                Decoding::Stream(self.stream_decoder(&segment, segment.offset + pos, start.db))
            }
        };
        let mut file = self.spool.open_segment(segment.id).await?;
        let mut changes = self.spool.subscribe_changes();
        let mut batch_started = tokio::time::Instant::now();
        loop {
            self.check_link()?;
            changes.borrow_and_update();
            let state = self.spool.segment_state(segment.id);
            let (len, sealed) = match state {
                SegmentState::Present { len, sealed } => (len, sealed),
                SegmentState::Gone => {
                    // Deleted under us. A trimmed segment (a stale acknowledgement can trim
                    // past this reader) is still readable through the open file; only an
                    // abandoned snapshot transfer is really lost.
                    let readable = match decoding {
                        Decoding::Stream(_) => true,
                        Decoding::Snapshot(_) => file.is_complete_snapshot().await?,
                    };
                    if readable {
                        (file.payload_len().await?, true)
                    } else {
                        // The link starts a new full copy, whose SnapshotBegin supersedes
                        // what was sent of this one.
                        self.flush().await?;
                        segment = self.wait_segment_after(segment.id).await?;
                        (decoding, pos) = self.enter(&segment, 0);
                        file = self.spool.open_segment(segment.id).await?;
                        continue;
                    }
                }
            };
            if pos < len {
                let want = ((len - pos) as usize).min(self.buf.len());
                let n = file.read_at(pos, &mut self.buf[..want]).await?;
                if n == 0 {
                    return Err(ReaderError::Gone(segment.id));
                }
                pos += n as u64;
                match &mut decoding {
                    Decoding::Snapshot(d) => {
                        d.feed(&self.buf[..n]);
                        while let Some(e) = d.next_event(&mut self.scripts)? {
                            self.push(e).await?;
                        }
                    }
                    Decoding::Stream(d) => {
                        d.feed(&self.buf[..n]);
                        while let Some(e) = d.next_event(&mut self.scripts)? {
                            if let Some(e) = self.without_moved_keys(e).await? {
                                self.push(e).await?;
                            }
                        }
                    }
                }
                if batch_started.elapsed() >= BATCH_MAX_DELAY {
                    self.flush_with(&decoding).await?;
                    batch_started = tokio::time::Instant::now();
                }
                continue;
            }
            if sealed {
                if let Decoding::Snapshot(d) = &mut decoding {
                    d.input_complete();
                    while let Some(e) = d.next_event(&mut self.scripts)? {
                        self.push(e).await?;
                    }
                    if !d.is_ended() {
                        // Fails: the transfer finished but the RDB did not.
                        d.finish()?;
                    }
                    self.flush_with(&decoding).await?;
                }
                let next = self.wait_segment_after(segment.id).await?;
                let continues =
                    matches!(next.kind, SegmentKind::Stream) && next.offset == segment.end_offset();
                match &mut decoding {
                    Decoding::Stream(d) if continues => {
                        // The byte stream goes on in the next segment, possibly in the middle
                        // of a command; only the replid label may change.
                        if next.replid != segment.replid {
                            d.switch_replid(next.offset, next.replid.clone());
                        }
                        pos = 0;
                    }
                    _ => {
                        self.flush_with(&decoding).await?;
                        // A stream that does not continue the previous bytes follows a
                        // snapshot, whose stream starts with db 0.
                        (decoding, pos) = self.enter(&next, 0);
                    }
                }
                segment = next;
                file = self.spool.open_segment(segment.id).await?;
                continue;
            }
            // Everything available is decoded: hand it over, then wait for more.
            self.flush_with(&decoding).await?;
            batch_started = tokio::time::Instant::now();
            self.wait(&mut changes).await?;
        }
    }

    /// Starts decoding `segment` from its beginning.
    fn enter(&self, segment: &SegmentMeta, db: u32) -> (Decoding, u64) {
        let decoding = match &segment.kind {
            SegmentKind::Snapshot(info) => Decoding::Snapshot(SnapshotDecoder::new(
                segment.replid.clone(),
                segment.offset,
                info.clone(),
                self.cfg.chunk_threshold_bytes,
                0,
                true,
            )),
            SegmentKind::Stream => {
                Decoding::Stream(self.stream_decoder(segment, segment.offset, db))
            }
        };
        (decoding, 0)
    }

    fn stream_decoder(&self, segment: &SegmentMeta, offset: u64, db: u32) -> StreamDecoder {
        StreamDecoder::new(
            segment.replid.clone(),
            offset,
            db,
            self.cfg.heartbeat.clone(),
        )
    }

    async fn wait_first_segment(&mut self) -> Result<SegmentMeta, ReaderError> {
        let mut changes = self.spool.subscribe_changes();
        loop {
            changes.borrow_and_update();
            if let Some(id) = self.spool.first_segment()
                && let Some(seg) = self.spool.segment(id)
            {
                return Ok(seg);
            }
            self.check_link()?;
            self.wait(&mut changes).await?;
        }
    }

    async fn wait_segment_after(&mut self, id: u64) -> Result<SegmentMeta, ReaderError> {
        let mut changes = self.spool.subscribe_changes();
        loop {
            changes.borrow_and_update();
            if let Some(seg) = self.spool.segment_after(id) {
                return Ok(seg);
            }
            self.check_link()?;
            self.wait(&mut changes).await?;
        }
    }

    fn check_link(&mut self) -> Result<(), ReaderError> {
        if let LinkState::Failed(f) = &*self.link.borrow() {
            return Err(ReaderError::Link(f.message.clone(), f.kind));
        }
        Ok(())
    }

    /// Waits for more data. Only called with everything available delivered, so this is
    /// where a link that keeps failing is reported: the subscriber gets all that was
    /// spooled first, then `UNAVAILABLE` naming the master and the last error (the link
    /// goes on retrying; the subscriber subscribes again when it wants to).
    async fn wait(&mut self, changes: &mut watch::Receiver<u64>) -> Result<(), ReaderError> {
        let unavailable_at = {
            let state = self.link.borrow();
            if let Some(msg) = state.unavailable() {
                return Err(ReaderError::Unavailable(msg));
            }
            state.unavailable_at()
        };
        let report = async {
            match unavailable_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = report => Ok(()),
            r = changes.changed() => r.map_err(|_| ReaderError::Cancelled),
            r = self.link.changed() => match r {
                Ok(()) => Ok(()),
                // The link task ended; a failure is reported by `check_link`, anything else
                // means nobody fills this spool any more.
                Err(_) => {
                    self.check_link()?;
                    Err(ReaderError::LinkStopped)
                }
            },
            () = self.cancel.requested() => Err(ReaderError::Cancelled),
            () = self.tx.closed() => Err(ReaderError::Closed),
        }
    }

    /// Cluster sources: drops what a `DEL` says about keys that moved to another master
    /// rather than went away (see `resharding`). The event's position is still covered by
    /// the batch's end position, so acknowledging goes on as if it had been sent.
    async fn without_moved_keys(
        &mut self,
        event: ChangeEvent,
    ) -> Result<Option<ChangeEvent>, ReaderError> {
        let Some(slots) = self.cfg.slots.clone() else {
            return Ok(Some(event));
        };
        if !resharding::has_del(&event) {
            return Ok(Some(event));
        }
        let (replid, offset) = event
            .position
            .as_ref()
            .map(|p| (p.replid.clone(), p.offset))
            .unwrap_or_default();
        let state = slots.state_after(&replid, offset, &mut self.cancel).await;
        if self.cancel.is_set() {
            return Err(ReaderError::Cancelled);
        }
        let Some(state) = state else {
            return Ok(Some(event));
        };
        let (event, dropped) = resharding::drop_moved_keys(event, &state);
        if dropped > 0 {
            tracing::debug!(
                offset,
                keys = dropped,
                "DEL of keys that moved to another master (resharding) not forwarded"
            );
        }
        Ok(event)
    }

    async fn push(&mut self, event: ChangeEvent) -> Result<(), ReaderError> {
        if let Some(Kind::SnapshotEnd(end)) = &event.kind {
            self.metrics
                .expired_keys_skipped
                .add(end.expired_keys_skipped);
        }
        let size = prost::Message::encoded_len(&event);
        if !self.batch.is_empty() && self.batch_bytes + size > BATCH_MAX_BYTES {
            let end = self.batch.last().and_then(|e| e.position.clone());
            self.send(end).await?;
        }
        self.batch_bytes += size;
        self.batch.push(event);
        if self.batch.len() >= self.cfg.max_batch_events || self.batch_bytes >= BATCH_MAX_BYTES {
            let end = self.batch.last().and_then(|e| e.position.clone());
            self.send(end).await?;
        }
        Ok(())
    }

    async fn flush_with(&mut self, decoding: &Decoding) -> Result<(), ReaderError> {
        let end = match decoding {
            Decoding::Snapshot(d) => d.resume_position(),
            Decoding::Stream(d) => d.resume_position(),
        };
        if self.batch.is_empty() && self.last_sent.as_ref() == Some(&end) {
            return Ok(());
        }
        self.send(Some(end)).await
    }

    async fn flush(&mut self) -> Result<(), ReaderError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let end = self.batch.last().and_then(|e| e.position.clone());
        self.send(end).await
    }

    async fn send(&mut self, end: Option<Position>) -> Result<(), ReaderError> {
        // Script bodies this batch revealed go to disk first: once the subscriber has
        // acknowledged the batch, a later EVALSHA may only find its body there.
        let fresh = self.scripts.take_fresh();
        if let Some(store) = &self.cfg.scripts
            && !fresh.is_empty()
        {
            store.persist(fresh).await?;
        }
        let events = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let n = events.len() as u64;
        let response = SubscribeResponse {
            shard_id: self.cfg.shard_id.clone(),
            events,
            end_position: end.clone(),
            received_offset: self.spool.received_offset(),
        };
        tokio::select! {
            r = self.tx.send(Ok(response)) => r.map_err(|_| ReaderError::Closed)?,
            () = self.cancel.requested() => return Err(ReaderError::Cancelled),
        }
        self.metrics.events_sent.add(n);
        self.last_sent = end;
        Ok(())
    }
}
