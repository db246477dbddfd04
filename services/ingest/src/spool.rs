//! The spool: what a replica link received from one source shard, kept on local disk until
//! the subscriber acknowledges it.
//!
//! A spool is a directory of append-only segment files, numbered in the order they were
//! created. A segment is either a *snapshot* (the RDB bytes of one full resync, tagged
//! with the replid and offset it was taken at) or a *stream* segment (raw replication
//! stream bytes, tagged with the replid and the master offset of the byte before its
//! first byte). Consecutive stream segments continue the same byte stream: a new one
//! starts after a snapshot, when `+CONTINUE` switches to a new replid (at the same offset),
//! or when the current one reaches the rotation size, so acknowledged data can be deleted
//! a segment at a time.
//!
//! The link writes; any number of readers follow, waking on [`Spool::subscribe_changes`].
//! Every number here is derived from the files themselves, so after a restart the spool's
//! end is found again by reading the headers and the file lengths.

use std::{
    collections::VecDeque,
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
    sync::watch,
    task::JoinHandle,
};

/// Size of the fixed header at the start of every segment file.
pub const HEADER_LEN: u64 = 512;
const MAGIC: &[u8; 8] = b"RSSPOOL1";
const KIND_SNAPSHOT: u8 = 1;
const KIND_STREAM: u8 = 2;
/// Where the "snapshot complete" flag lives, rewritten in place when a transfer ends.
const COMPLETE_AT: u64 = 9;
const MAX_REASON: usize = 256;
const SEGMENT_EXT: &str = "seg";

/// Errors of the spool. Paths are included because the operator has to look at them.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing would take the subscriber's spools past `spool_max_bytes`.
    #[error(
        "spool is full: {used} bytes in use, the cap is spool_max_bytes = {max} \
         (acknowledge applied positions sooner or raise --spool-max-bytes)"
    )]
    Full {
        /// Bytes in use by this subscriber's spools.
        used: u64,
        /// The configured cap.
        max: u64,
    },
    /// The writer used the spool against its rules (a bug, reported rather than panicking).
    #[error("spool misuse: {0}")]
    Misuse(&'static str),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The byte budget shared by all spools of one subscriber.
#[derive(Debug)]
pub struct SpoolBudget {
    used: AtomicU64,
    max: u64,
}

impl SpoolBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    fn take(&self, n: u64) -> Result<(), SpoolError> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(n);
            if next > self.max {
                return Err(SpoolError::Full {
                    used: cur,
                    max: self.max,
                });
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    // Existing files are counted even past the cap: they are already on disk.
    fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn give_back(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some(cur.saturating_sub(n))
            });
    }
}

/// What a segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// RDB bytes of a full resync.
    Snapshot(SnapshotInfo),
    /// Replication stream bytes.
    Stream,
}

/// What is known about a snapshot when its transfer starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// Size announced by a disk transfer (`$<len>`); 0 for diskless.
    pub expected_bytes: u64,
    /// Keys the source reported in INFO keyspace before the sync.
    pub estimated_keys: u64,
    /// Why this full resync happened.
    pub reason: String,
}

/// One segment as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Creation order.
    pub id: u64,
    /// Snapshot or stream.
    pub kind: SegmentKind,
    /// Replication id the bytes belong to.
    pub replid: String,
    /// Snapshot: the offset it was taken at. Stream: the offset before its first byte.
    pub offset: u64,
    /// Payload bytes written so far (header excluded).
    pub len: u64,
    /// Snapshot: the transfer finished. Stream: a later segment exists, so no byte will be
    /// added here.
    pub sealed: bool,
}

impl SegmentMeta {
    /// Stream: offset after the last byte written.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.len
    }

    fn is_snapshot(&self) -> bool {
        matches!(self.kind, SegmentKind::Snapshot(_))
    }
}

/// Where the spool ends: where a replica link continues with `PSYNC replid offset+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEnd {
    /// Replid of the last stream segment.
    pub replid: String,
    /// Offset after the last byte received.
    pub offset: u64,
}

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStart {
    /// Segment to start in.
    pub segment: u64,
    /// Stream: payload byte to start at. Snapshot: always 0.
    pub byte: u64,
    /// Snapshot: records to skip (already delivered before a restart).
    pub skip_records: u64,
}

/// The state of one segment for a reader at some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentState {
    /// Present: `len` payload bytes readable, `sealed` when no more will come.
    Present { len: u64, sealed: bool },
    /// Deleted (trimmed, abandoned or reset): the reader cannot continue here.
    Gone,
}

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<SegmentMeta>,
    next_id: u64,
    /// Set when a snapshot transfer was interrupted: a reader may have delivered part of
    /// it, so only a new full copy keeps the subscriber consistent.
    force_full_sync: Option<String>,
}

/// One shard's spool. Shared by its link (the writer) and its readers.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    budget: Arc<SpoolBudget>,
    rotate_bytes: u64,
    state: Mutex<State>,
    /// Bumped on every change (bytes appended, segments added or removed).
    changes: watch::Sender<u64>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, reading back every segment. An
    /// unfinished snapshot (ingest died during the transfer) is deleted and a full resync
    /// is requested; unreadable segment files make the whole spool start over empty,
    /// since a spool is only a cache of what the source can send again.
    pub async fn open(
        dir: PathBuf,
        budget: Arc<SpoolBudget>,
        rotate_bytes: u64,
    ) -> Result<Arc<Spool>, SpoolError> {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        let mut files = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io_err(&dir))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            match id {
                Some(id) => files.push((id, path)),
                None => {
                    tracing::warn!(path = %path.display(), "ignoring a file with a foreign name in the spool")
                }
            }
        }
        files.sort_unstable_by_key(|(id, _)| *id);

        let mut state = State::default();
        let mut broken = None;
        for (id, path) in &files {
            match read_segment(*id, path).await {
                Ok(meta) => state.segments.push_back(meta),
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = broken {
            tracing::warn!(dir = %dir.display(), error = %e, "spool unreadable, starting it over");
            for (_, path) in &files {
                remove_file(path).await?;
            }
            state.segments.clear();
        }
        // Seal every segment but the last; the last stream segment is where writing resumes.
        let count = state.segments.len();
        for (i, seg) in state.segments.iter_mut().enumerate() {
            if i + 1 < count && !seg.is_snapshot() {
                seg.sealed = true;
            }
        }
        if let Some(last) = state.segments.back()
            && last.is_snapshot()
            && !last.sealed
        {
            let path = segment_path(&dir, last.id);
            tracing::warn!(path = %path.display(), "deleting a snapshot whose transfer was interrupted");
            remove_file(&path).await?;
            state.segments.pop_back();
            state.force_full_sync =
                Some("the previous snapshot transfer was interrupted".to_owned());
        }
        state.next_id = files.last().map_or(1, |(id, _)| id + 1);
        for seg in &state.segments {
            budget.force_take(seg.len + HEADER_LEN);
        }
        let (changes, _) = watch::channel(0);
        Ok(Arc::new(Spool {
            dir,
            budget,
            rotate_bytes: rotate_bytes.max(1),
            state: Mutex::new(state),
            changes,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The directory of this spool.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A receiver that changes whenever the spool does.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Where the link should continue, if anywhere: `None` when the spool holds no stream
    /// or a full resync is required.
    pub fn end(&self) -> Option<SpoolEnd> {
        let st = self.state();
        if st.force_full_sync.is_some() {
            return None;
        }
        st.segments
            .back()
            .filter(|s| !s.is_snapshot())
            .map(|s| SpoolEnd {
                replid: s.replid.clone(),
                offset: s.end_offset(),
            })
    }

    /// Why the next sync must be a full one, when it must.
    pub fn forced_full_sync(&self) -> Option<String> {
        self.state().force_full_sync.clone()
    }

    /// Latest offset received, in the offset space of the newest segment (for a snapshot
    /// in transfer: the offset it was taken at).
    pub fn received_offset(&self) -> u64 {
        self.state().segments.back().map_or(0, |s| match s.kind {
            SegmentKind::Snapshot(_) => s.offset,
            SegmentKind::Stream => s.end_offset(),
        })
    }

    /// Whether the oldest segment is a snapshot: then the spool alone is a full copy.
    pub fn starts_with_snapshot(&self) -> bool {
        self.state()
            .segments
            .front()
            .is_some_and(SegmentMeta::is_snapshot)
    }

    /// Whether the spool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.state().segments.is_empty()
    }

    /// The oldest segment's id, if any.
    pub fn first_segment(&self) -> Option<u64> {
        self.state().segments.front().map(|s| s.id)
    }

    /// The segment that follows `id`, if it exists yet.
    pub fn segment_after(&self, id: u64) -> Option<SegmentMeta> {
        self.state().segments.iter().find(|s| s.id > id).cloned()
    }

    /// Metadata of segment `id`.
    pub fn segment(&self, id: u64) -> Option<SegmentMeta> {
        self.state().segments.iter().find(|s| s.id == id).cloned()
    }

    /// How much of segment `id` a reader can read now.
    pub fn segment_state(&self, id: u64) -> SegmentState {
        match self.state().segments.iter().find(|s| s.id == id) {
            Some(s) => SegmentState::Present {
                len: s.len,
                sealed: s.sealed,
            },
            None => SegmentState::Gone,
        }
    }

    /// Finds where a position lies in the spool, if the spool holds it.
    ///
    /// A stream position `(replid, offset)` lies in the newest stream segment of that replid
    /// covering the offset (the newest, because an offset that ends one segment also starts
    /// the next one, and reading on from the next one skips nothing). A snapshot position
    /// names the snapshot by its replid and offset.
    pub fn locate(
        &self,
        replid: &str,
        offset: u64,
        in_snapshot: bool,
        records: u64,
    ) -> Option<ReadStart> {
        let st = self.state();
        if in_snapshot {
            return st
                .segments
                .iter()
                .find(|s| s.is_snapshot() && s.replid == replid && s.offset == offset)
                .map(|s| ReadStart {
                    segment: s.id,
                    byte: 0,
                    skip_records: records,
                });
        }
        st.segments
            .iter()
            .rev()
            .find(|s| {
                !s.is_snapshot()
                    && s.replid == replid
                    && s.offset <= offset
                    && offset <= s.end_offset()
            })
            .map(|s| ReadStart {
                segment: s.id,
                byte: offset - s.offset,
                skip_records: 0,
            })
    }

    /// Deletes every segment that lies entirely before the given position. A position the
    /// spool does not hold trims nothing.
    pub async fn trim(
        &self,
        replid: &str,
        offset: u64,
        in_snapshot: bool,
        records: u64,
    ) -> Result<u64, SpoolError> {
        let Some(start) = self.locate(replid, offset, in_snapshot, records) else {
            return Ok(0);
        };
        let doomed: Vec<SegmentMeta> = {
            let mut st = self.state();
            let mut out = Vec::new();
            while st.segments.front().is_some_and(|s| s.id < start.segment) {
                if let Some(s) = st.segments.pop_front() {
                    out.push(s);
                }
            }
            out
        };
        let mut freed = 0;
        for seg in &doomed {
            remove_file(&segment_path(&self.dir, seg.id)).await?;
            freed += seg.len + HEADER_LEN;
        }
        self.budget.give_back(freed);
        if !doomed.is_empty() {
            self.changed();
        }
        Ok(freed)
    }

    /// Deletes everything. Only for when no link writes and no reader reads this spool.
    pub async fn reset(&self) -> Result<(), SpoolError> {
        let doomed: Vec<SegmentMeta> = {
            let mut st = self.state();
            st.force_full_sync = None;
            st.segments.drain(..).collect()
        };
        let mut freed = 0;
        for seg in &doomed {
            remove_file(&segment_path(&self.dir, seg.id)).await?;
            freed += seg.len + HEADER_LEN;
        }
        self.budget.give_back(freed);
        self.changed();
        Ok(())
    }

    /// Bytes on disk in this spool.
    pub fn bytes(&self) -> u64 {
        self.state()
            .segments
            .iter()
            .map(|s| s.len + HEADER_LEN)
            .sum()
    }

    /// The writer side, for the one link that fills this spool. Abandons a snapshot left
    /// unfinished by an earlier writer (see [`State::force_full_sync`]).
    pub async fn writer(self: &Arc<Self>) -> Result<SpoolWriter, SpoolError> {
        let last = self.state().segments.back().cloned();
        let mut w = SpoolWriter {
            spool: self.clone(),
            current: None,
        };
        match last {
            Some(seg) if seg.is_snapshot() && !seg.sealed => {
                w.abandon_snapshot_segment(seg.id).await?;
            }
            Some(seg) if seg.is_snapshot() => {
                // Ingest stopped between finishing a snapshot and starting its stream.
                w.new_segment(SegmentKind::Stream, &seg.replid, seg.offset)
                    .await?;
            }
            Some(seg) if !seg.is_snapshot() => {
                let path = segment_path(&self.dir, seg.id);
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .await
                    .map_err(io_err(&path))?;
                file.seek(SeekFrom::Start(HEADER_LEN + seg.len))
                    .await
                    .map_err(io_err(&path))?;
                // Bytes beyond what we counted (a write cut short) are dropped: the source
                // resends everything after our end.
                file.set_len(HEADER_LEN + seg.len)
                    .await
                    .map_err(io_err(&path))?;
                w.current = Some(Current {
                    id: seg.id,
                    file,
                    path,
                    snapshot: false,
                    unsynced: false,
                });
            }
            _ => {}
        }
        Ok(w)
    }

    /// Opens segment `id` for reading.
    pub async fn open_segment(&self, id: u64) -> Result<SegmentReader, SpoolError> {
        let path = segment_path(&self.dir, id);
        let file = File::open(&path).await.map_err(io_err(&path))?;
        Ok(SegmentReader {
            file,
            path,
            pos: None,
        })
    }
}

/// Reads payload bytes of one segment. The file handle stays valid after the segment is
/// deleted, so a reader in the middle of a trimmed segment finishes what it started.
#[derive(Debug)]
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    pos: Option<u64>,
}

impl SegmentReader {
    /// Payload bytes in the file now; for a deleted segment, all it will ever have.
    pub async fn payload_len(&self) -> Result<u64, SpoolError> {
        let meta = self.file.metadata().await.map_err(io_err(&self.path))?;
        Ok(meta.len().saturating_sub(HEADER_LEN))
    }

    /// Whether the header says this is a snapshot whose transfer finished.
    pub async fn is_complete_snapshot(&mut self) -> Result<bool, SpoolError> {
        let mut h = [0u8; COMPLETE_AT as usize + 1];
        self.file
            .seek(SeekFrom::Start(0))
            .await
            .map_err(io_err(&self.path))?;
        self.file
            .read_exact(&mut h)
            .await
            .map_err(io_err(&self.path))?;
        self.pos = None;
        Ok(h[8] == KIND_SNAPSHOT && h[COMPLETE_AT as usize] == 1)
    }

    /// Reads up to `buf.len()` payload bytes at payload offset `at`.
    pub async fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<usize, SpoolError> {
        if self.pos != Some(at) {
            self.file
                .seek(SeekFrom::Start(HEADER_LEN + at))
                .await
                .map_err(io_err(&self.path))?;
        }
        let n = self.file.read(buf).await.map_err(io_err(&self.path))?;
        self.pos = Some(at + n as u64);
        Ok(n)
    }
}

#[derive(Debug)]
struct Current {
    id: u64,
    file: File,
    path: PathBuf,
    snapshot: bool,
    unsynced: bool,
}

/// The append side of a spool, owned by the link.
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Arc<Spool>,
    current: Option<Current>,
}

impl SpoolWriter {
    /// The spool written to.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Starts a snapshot segment for a full resync at `(replid, offset)`.
    pub async fn begin_snapshot(
        &mut self,
        replid: &str,
        offset: u64,
        info: SnapshotInfo,
    ) -> Result<(), SpoolError> {
        if let Some(cur) = &self.current
            && cur.snapshot
        {
            let id = cur.id;
            self.abandon_snapshot_segment(id).await?;
        }
        self.new_segment(SegmentKind::Snapshot(info), replid, offset)
            .await?;
        self.spool.state().force_full_sync = None;
        Ok(())
    }

    /// Starts a stream segment whose first byte is at `offset + 1` of `replid`.
    pub async fn begin_stream(&mut self, replid: &str, offset: u64) -> Result<(), SpoolError> {
        if self.current.as_ref().is_some_and(|c| c.snapshot) {
            return Err(SpoolError::Misuse(
                "a stream segment cannot start during a snapshot",
            ));
        }
        self.new_segment(SegmentKind::Stream, replid, offset).await
    }

    /// Whether a stream segment is open for appending.
    pub fn in_stream(&self) -> bool {
        self.current.as_ref().is_some_and(|c| !c.snapshot)
    }

    /// Appends bytes to the current segment. Stream segments rotate at the rotation size
    /// (between two appends, so a segment may end in the middle of a command: readers join
    /// consecutive stream segments into one byte stream).
    pub async fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let rotate = {
            let Some(cur) = &self.current else {
                return Err(SpoolError::Misuse("append without a segment"));
            };
            let st = self.spool.state();
            let seg = st.segments.iter().find(|s| s.id == cur.id);
            match seg {
                Some(s) if !cur.snapshot && s.len >= self.spool.rotate_bytes => {
                    Some((s.replid.clone(), s.end_offset()))
                }
                _ => None,
            }
        };
        if let Some((replid, offset)) = rotate {
            self.begin_stream(&replid, offset).await?;
        }
        self.spool.budget.take(bytes.len() as u64)?;
        let Some(cur) = &mut self.current else {
            return Err(SpoolError::Misuse("append without a segment"));
        };
        if let Err(e) = cur.file.write_all(bytes).await.map_err(io_err(&cur.path)) {
            self.spool.budget.give_back(bytes.len() as u64);
            return Err(e);
        }
        // tokio's File completes writes in the background; readers must find the bytes in
        // the file once the length below says they are there.
        cur.file.flush().await.map_err(io_err(&cur.path))?;
        cur.unsynced = true;
        let id = cur.id;
        {
            let mut st = self.spool.state();
            if let Some(seg) = st.segments.iter_mut().find(|s| s.id == id) {
                seg.len += bytes.len() as u64;
            }
        }
        self.spool.changed();
        Ok(())
    }

    /// Marks the current snapshot finished and starts the stream segment after it.
    pub async fn complete_snapshot(&mut self) -> Result<(), SpoolError> {
        let Some(cur) = &mut self.current else {
            return Err(SpoolError::Misuse("no snapshot to complete"));
        };
        if !cur.snapshot {
            return Err(SpoolError::Misuse("the current segment is not a snapshot"));
        }
        cur.file.flush().await.map_err(io_err(&cur.path))?;
        cur.file.sync_data().await.map_err(io_err(&cur.path))?;
        cur.file
            .seek(SeekFrom::Start(COMPLETE_AT))
            .await
            .map_err(io_err(&cur.path))?;
        cur.file.write_all(&[1]).await.map_err(io_err(&cur.path))?;
        cur.file.flush().await.map_err(io_err(&cur.path))?;
        cur.file.sync_data().await.map_err(io_err(&cur.path))?;
        let id = cur.id;
        let (replid, offset) = {
            let st = self.spool.state();
            let Some(seg) = st.segments.iter().find(|s| s.id == id) else {
                return Err(SpoolError::Misuse("the snapshot segment vanished"));
            };
            (seg.replid.clone(), seg.offset)
        };
        self.current = None;
        // `new_segment` seals the snapshot in the same step as it adds the stream segment,
        // so whoever sees the snapshot finished also finds where its stream starts.
        self.new_segment(SegmentKind::Stream, &replid, offset).await
    }

    /// Gives up the snapshot being written (the transfer broke). A full resync must follow.
    pub async fn abandon_snapshot(&mut self) -> Result<(), SpoolError> {
        match &self.current {
            Some(cur) if cur.snapshot => {
                let id = cur.id;
                self.abandon_snapshot_segment(id).await
            }
            _ => Ok(()),
        }
    }

    async fn abandon_snapshot_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        self.current = None;
        let removed = {
            let mut st = self.spool.state();
            st.force_full_sync = Some("the previous snapshot transfer was interrupted".to_owned());
            let idx = st.segments.iter().position(|s| s.id == id);
            idx.and_then(|i| st.segments.remove(i))
        };
        if let Some(seg) = removed {
            remove_file(&segment_path(&self.spool.dir, id)).await?;
            self.spool.budget.give_back(seg.len + HEADER_LEN);
        }
        self.spool.changed();
        Ok(())
    }

    /// Makes everything appended so far durable. Returns the stream end that is now safe
    /// to acknowledge to the source, if a stream segment is being written.
    pub async fn sync(&mut self) -> Result<Option<SpoolEnd>, SpoolError> {
        if let Some(cur) = &mut self.current
            && cur.unsynced
        {
            cur.file.sync_data().await.map_err(io_err(&cur.path))?;
            cur.unsynced = false;
        }
        Ok(match &self.current {
            Some(cur) if !cur.snapshot => self.spool.segment(cur.id).map(|s| SpoolEnd {
                offset: s.end_offset(),
                replid: s.replid,
            }),
            _ => None,
        })
    }

    /// Starts making everything appended so far durable and returns at once; the task
    /// yields the stream end that is safe to acknowledge once the disk has it. The link
    /// keeps reading from the master meanwhile: an fdatasync of a second's worth of
    /// stream takes hundreds of milliseconds on a slow disk, and a link waiting for it
    /// delays every write behind it.
    pub async fn sync_in_background(
        &mut self,
    ) -> Result<JoinHandle<Result<Option<SpoolEnd>, SpoolError>>, SpoolError> {
        let file = match &mut self.current {
            Some(cur) if cur.unsynced => {
                let file = cur.file.try_clone().await.map_err(io_err(&cur.path))?;
                cur.unsynced = false;
                Some((file, cur.path.clone()))
            }
            _ => None,
        };
        let end = match &self.current {
            Some(cur) if !cur.snapshot => self.spool.segment(cur.id).map(|s| SpoolEnd {
                offset: s.end_offset(),
                replid: s.replid,
            }),
            _ => None,
        };
        Ok(tokio::spawn(async move {
            if let Some((file, path)) = file {
                file.sync_data().await.map_err(io_err(&path))?;
            }
            Ok(end)
        }))
    }

    async fn new_segment(
        &mut self,
        kind: SegmentKind,
        replid: &str,
        offset: u64,
    ) -> Result<(), SpoolError> {
        // The previous segment is finished: make it durable before anything depends on it.
        if let Some(mut cur) = self.current.take()
            && cur.unsynced
        {
            cur.file.flush().await.map_err(io_err(&cur.path))?;
            cur.file.sync_data().await.map_err(io_err(&cur.path))?;
        }
        self.spool.budget.take(HEADER_LEN)?;
        let id = {
            let mut st = self.spool.state();
            let id = st.next_id;
            st.next_id += 1;
            id
        };
        let path = segment_path(&self.spool.dir, id);
        let header = encode_header(&kind, replid, offset);
        let created = async {
            let mut file = tokio::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .await?;
            file.write_all(&header).await?;
            file.flush().await?;
            file.sync_data().await?;
            Ok::<_, std::io::Error>(file)
        }
        .await;
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                self.spool.budget.give_back(HEADER_LEN);
                return Err(SpoolError::Io { path, source: e });
            }
        };
        sync_dir(&self.spool.dir).await?;
        let snapshot = matches!(kind, SegmentKind::Snapshot(_));
        {
            let mut st = self.spool.state();
            // Only the newest segment is ever written: everything before it is final.
            // (An unfinished snapshot was abandoned before a new segment starts.)
            for seg in st.segments.iter_mut() {
                seg.sealed = true;
            }
            st.segments.push_back(SegmentMeta {
                id,
                kind,
                replid: replid.to_owned(),
                offset,
                len: 0,
                sealed: false,
            });
        }
        self.current = Some(Current {
            id,
            file,
            path,
            snapshot,
            unsynced: false,
        });
        self.spool.changed();
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.{SEGMENT_EXT}"))
}

async fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

// A new segment must survive a crash together with its directory entry, or the spool
// could come back with a hole.
async fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    let d = File::open(dir).await.map_err(io_err(dir))?;
    d.sync_all().await.map_err(io_err(dir))
}

/// Header layout (little endian): magic[8], kind u8, complete u8, reserved[2],
/// replid[40] (zero padded), offset u64, expected_bytes u64, estimated_keys u64,
/// reason_len u16, reason[reason_len].
fn encode_header(kind: &SegmentKind, replid: &str, offset: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    let replid = replid.as_bytes();
    let rlen = replid.len().min(40);
    h[12..12 + rlen].copy_from_slice(&replid[..rlen]);
    h[52..60].copy_from_slice(&offset.to_le_bytes());
    match kind {
        SegmentKind::Stream => h[8] = KIND_STREAM,
        SegmentKind::Snapshot(info) => {
            h[8] = KIND_SNAPSHOT;
            h[60..68].copy_from_slice(&info.expected_bytes.to_le_bytes());
            h[68..76].copy_from_slice(&info.estimated_keys.to_le_bytes());
            let reason = truncate_utf8(&info.reason, MAX_REASON).as_bytes();
            h[76..78].copy_from_slice(&(reason.len() as u16).to_le_bytes());
            h[78..78 + reason.len()].copy_from_slice(reason);
        }
    }
    h
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a spool segment (bad header)")]
    Bad(PathBuf),
}

async fn read_segment(id: u64, path: &Path) -> Result<SegmentMeta, HeaderError> {
    let mut file = File::open(path)
        .await
        .map_err(|e| HeaderError::Io(path.to_path_buf(), e))?;
    let file_len = file
        .metadata()
        .await
        .map_err(|e| HeaderError::Io(path.to_path_buf(), e))?
        .len();
    if file_len < HEADER_LEN {
        return Err(HeaderError::Bad(path.to_path_buf()));
    }
    let mut h = vec![0u8; HEADER_LEN as usize];
    file.read_exact(&mut h)
        .await
        .map_err(|e| HeaderError::Io(path.to_path_buf(), e))?;
    decode_header(id, &h, file_len - HEADER_LEN).ok_or_else(|| HeaderError::Bad(path.to_path_buf()))
}

fn decode_header(id: u64, h: &[u8], len: u64) -> Option<SegmentMeta> {
    if h.get(..8)? != MAGIC {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(h.get(at..at + 8)?.try_into().ok()?))
    };
    let replid_raw = h.get(12..52)?;
    let rlen = replid_raw.iter().position(|&b| b == 0).unwrap_or(40);
    let replid = std::str::from_utf8(&replid_raw[..rlen]).ok()?.to_owned();
    let offset = u64_at(52)?;
    let (kind, sealed) = match h[8] {
        KIND_STREAM => (SegmentKind::Stream, false),
        KIND_SNAPSHOT => {
            let reason_len = u16::from_le_bytes(h.get(76..78)?.try_into().ok()?) as usize;
            let reason =
                String::from_utf8_lossy(h.get(78..78 + reason_len.min(MAX_REASON))?).into_owned();
            let info = SnapshotInfo {
                expected_bytes: u64_at(60)?,
                estimated_keys: u64_at(68)?,
                reason,
            };
            (SegmentKind::Snapshot(info), h[COMPLETE_AT as usize] == 1)
        }
        _ => return None,
    };
    Some(SegmentMeta {
        id,
        kind,
        replid,
        offset,
        len,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "1111111111111111111111111111111111111111";
    const R2: &str = "2222222222222222222222222222222222222222";

    async fn read_all(spool: &Spool, id: u64) -> Vec<u8> {
        let mut r = spool.open_segment(id).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = r.read_at(out.len() as u64, &mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn info(reason: &str) -> SnapshotInfo {
        SnapshotInfo {
            expected_bytes: 5,
            estimated_keys: 3,
            reason: reason.into(),
        }
    }

    #[tokio::test]
    async fn write_reopen_locate_trim() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(1 << 20);
        let spool = Spool::open(dir.path().join("s"), budget.clone(), 10)
            .await
            .unwrap();
        let mut w = spool.writer().await.unwrap();
        w.begin_snapshot(R1, 100, info("first sync")).await.unwrap();
        w.append(b"RDB..").await.unwrap();
        assert_eq!(spool.end(), None);
        w.complete_snapshot().await.unwrap();
        w.append(b"0123456789").await.unwrap();
        // Rotation happens before the next append.
        w.append(b"abc").await.unwrap();
        w.begin_stream(R2, 113).await.unwrap();
        w.append(b"xy").await.unwrap();
        assert_eq!(
            spool.end(),
            Some(SpoolEnd {
                replid: R2.into(),
                offset: 115
            })
        );
        assert_eq!(
            w.sync().await.unwrap(),
            Some(SpoolEnd {
                replid: R2.into(),
                offset: 115
            })
        );
        drop(w);

        let reopened = Spool::open(dir.path().join("s"), SpoolBudget::new(1 << 20), 10)
            .await
            .unwrap();
        assert_eq!(
            reopened.end(),
            Some(SpoolEnd {
                replid: R2.into(),
                offset: 115
            })
        );
        let segs: Vec<_> = (0..6).filter_map(|i| reopened.segment(i)).collect();
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[0].kind, SegmentKind::Snapshot(info("first sync")));
        assert!(segs[0].sealed);
        assert_eq!(read_all(&reopened, segs[0].id).await, b"RDB..");
        assert_eq!(read_all(&reopened, segs[1].id).await, b"0123456789");
        assert_eq!((segs[2].offset, segs[2].len), (110, 3));
        assert!(segs[2].sealed && !segs[3].sealed);

        assert_eq!(
            reopened.locate(R1, 100, true, 7),
            Some(ReadStart {
                segment: segs[0].id,
                byte: 0,
                skip_records: 7
            })
        );
        assert_eq!(
            reopened.locate(R1, 100, false, 0).map(|s| s.segment),
            Some(segs[1].id)
        );
        // 110 ends segment 1 and starts segment 2: the later one is chosen.
        assert_eq!(
            reopened.locate(R1, 110, false, 0),
            Some(ReadStart {
                segment: segs[2].id,
                byte: 0,
                skip_records: 0
            })
        );
        assert_eq!(
            reopened.locate(R2, 114, false, 0),
            Some(ReadStart {
                segment: segs[3].id,
                byte: 1,
                skip_records: 0
            })
        );
        assert_eq!(reopened.locate(R2, 116, false, 0), None);
        assert_eq!(reopened.locate(R1, 99, false, 0), None);

        let before = reopened.bytes();
        let freed = reopened.trim(R1, 111, false, 0).await.unwrap();
        assert_eq!(freed, 5 + 10 + 2 * HEADER_LEN);
        assert_eq!(reopened.bytes(), before - freed);
        assert!(!reopened.starts_with_snapshot());
        assert_eq!(reopened.segment_state(segs[0].id), SegmentState::Gone);

        // Appending resumes at the end after a restart.
        let mut w = reopened.writer().await.unwrap();
        w.append(b"z").await.unwrap();
        assert_eq!(reopened.end().unwrap().offset, 116);
    }

    #[tokio::test]
    async fn interrupted_snapshot_forces_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().to_path_buf(), SpoolBudget::new(1 << 20), 1 << 20)
            .await
            .unwrap();
        let mut w = spool.writer().await.unwrap();
        w.begin_stream(R1, 0).await.unwrap();
        w.append(b"abc").await.unwrap();
        w.begin_snapshot(R1, 50, info("x")).await.unwrap();
        w.append(b"partial").await.unwrap();
        drop(w);
        let reopened = Spool::open(dir.path().to_path_buf(), SpoolBudget::new(1 << 20), 1 << 20)
            .await
            .unwrap();
        assert_eq!(reopened.end(), None);
        assert!(reopened.forced_full_sync().is_some());
        assert_eq!(reopened.locate(R1, 3, false, 0).map(|s| s.byte), Some(3));
        let mut w = reopened.writer().await.unwrap();
        w.begin_snapshot(R1, 60, info("again")).await.unwrap();
        assert!(reopened.forced_full_sync().is_none());
    }

    #[tokio::test]
    async fn cap_is_enforced_and_released_by_trim() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(2 * HEADER_LEN + 20);
        let spool = Spool::open(dir.path().to_path_buf(), budget.clone(), 1 << 20)
            .await
            .unwrap();
        let mut w = spool.writer().await.unwrap();
        w.begin_stream(R1, 0).await.unwrap();
        w.append(&[b'a'; 16]).await.unwrap();
        w.begin_stream(R1, 16).await.unwrap();
        let err = w.append(&[b'b'; 8]).await.unwrap_err();
        assert!(err.to_string().contains("spool_max_bytes"), "{err}");
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        spool.trim(R1, 16, false, 0).await.unwrap();
        assert_eq!(budget.used(), HEADER_LEN);
        w.append(&[b'b'; 8]).await.unwrap();
        assert_eq!(budget.used(), HEADER_LEN + 8);
    }

    #[tokio::test]
    async fn garbage_files_start_the_spool_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000001.seg"), b"nonsense").unwrap();
        let spool = Spool::open(dir.path().to_path_buf(), SpoolBudget::new(1 << 20), 1 << 20)
            .await
            .unwrap();
        assert!(spool.is_empty());
        assert!(!dir.path().join("0000000000000001.seg").exists());
    }
}
