//! Lua script bodies seen in the stream or the snapshot, by SHA1, so that an `EVALSHA`
//! (sent verbatim by masters before 5.0) can carry the body its destination may lack.
//!
//! A reader keeps them in memory ([`ScriptCache`]); [`ScriptStore`] also keeps them on disk,
//! in a small append-only file in the subscriber's spool directory, so a reader that starts
//! in the middle of the stream (after an ingest restart, after the `EVAL` or `SCRIPT LOAD`
//! that carried the body was acknowledged and trimmed) still knows the body an `EVALSHA`
//! names. A body is written (and synced) before the batch holding the event that revealed it
//! is sent, so nothing the subscriber acknowledges depends on a body not yet on disk.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
    sync::Mutex,
};

/// Most bytes of script bodies kept; the oldest go first beyond it. Scripts are small and
/// few in practice; the cap only keeps a script-generating workload from growing memory.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Scripts by lower-case hex SHA1.
#[derive(Debug, Default)]
pub struct ScriptCache {
    by_sha: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
    /// Bodies remembered since the last [`ScriptCache::take_fresh`], to persist.
    fresh: Vec<Bytes>,
}

/// Lower-case hex SHA1 of `body`, as `SCRIPT LOAD` returns it.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

impl ScriptCache {
    /// Remembers `body`; returns its SHA1.
    pub fn remember(&mut self, body: Bytes) -> String {
        let sha = sha1_hex(&body);
        if self.by_sha.contains_key(&sha) {
            return sha;
        }
        self.bytes += body.len();
        self.fresh.push(body.clone());
        self.by_sha.insert(sha.clone(), body);
        self.order.push_back(sha.clone());
        while self.bytes > MAX_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.by_sha.remove(&old) {
                self.bytes -= b.len();
            }
        }
        sha
    }

    /// Bodies first seen since the last call.
    pub fn take_fresh(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.fresh)
    }

    /// The body whose SHA1 is `sha` (hex, any case).
    pub fn get(&self, sha: &[u8]) -> Option<&Bytes> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.by_sha.get(&sha)
    }
}

const STORE_MAGIC: &[u8; 16] = b"RSSCRIPTS1\0\0\0\0\0\0";
/// Largest script file; beyond it the file is rewritten with the newest bodies only.
const STORE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Largest single body kept on disk (Redis itself has no limit; this only bounds reads).
const STORE_MAX_BODY: usize = 16 * 1024 * 1024;
const RECORD_HEADER: usize = 4 + 20;

/// Why the script file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("script store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// A subscriber's script bodies on disk: records of `u32` LE length, the body's raw SHA1
/// (20 bytes, which also checks the record) and the body, after a 16-byte magic. A torn
/// last record (a crash while appending) is cut off when the file is opened.
#[derive(Debug)]
pub struct ScriptStore {
    path: PathBuf,
    /// File size cap ([`STORE_MAX_BYTES`] but in tests).
    max_bytes: u64,
    inner: Mutex<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    file: File,
    len: u64,
    known: HashSet<[u8; 20]>,
    /// Every body in file order, to seed readers and to compact.
    bodies: Vec<Bytes>,
}

fn sha1_raw(body: &[u8]) -> [u8; 20] {
    sha1_smol::Sha1::from(body).digest().bytes()
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&sha1_raw(body));
    out.extend_from_slice(body);
    out
}

/// The valid records at the start of `data` (after the magic) and where they end.
fn parse_records(data: &[u8]) -> (Vec<Bytes>, usize) {
    let mut bodies = Vec::new();
    let mut at = STORE_MAGIC.len();
    if data.len() < at || &data[..at] != STORE_MAGIC {
        return (bodies, 0);
    }
    while let Some(head) = data.get(at..at + RECORD_HEADER) {
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&head[..4]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > STORE_MAX_BODY {
            break;
        }
        let Some(body) = data.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if sha1_raw(body)[..] != head[4..] {
            break;
        }
        bodies.push(Bytes::copy_from_slice(body));
        at += RECORD_HEADER + len;
    }
    (bodies, at)
}

impl ScriptStore {
    /// Opens (creating if needed) the store at `path`. Unreadable content is dropped: the
    /// file is only a memory of bodies, which the source sends again with its next EVAL.
    pub async fn open(path: PathBuf) -> Result<Arc<ScriptStore>, StoreError> {
        Self::open_capped(path, STORE_MAX_BYTES).await
    }

    async fn open_capped(path: PathBuf, max_bytes: u64) -> Result<Arc<ScriptStore>, StoreError> {
        let err = |source| StoreError {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(err)?;
        let size = file.metadata().await.map_err(err)?.len();
        let mut data = Vec::new();
        if size <= max_bytes + STORE_MAX_BODY as u64 {
            file.read_to_end(&mut data).await.map_err(err)?;
        }
        let (bodies, valid) = parse_records(&data);
        let len = if valid == 0 {
            if size > 0 {
                tracing::warn!(path = %path.display(), "script store unreadable, starting it over");
            }
            file.set_len(0).await.map_err(err)?;
            file.seek(SeekFrom::Start(0)).await.map_err(err)?;
            file.write_all(STORE_MAGIC).await.map_err(err)?;
            file.sync_data().await.map_err(err)?;
            STORE_MAGIC.len() as u64
        } else {
            if (valid as u64) < size {
                tracing::warn!(path = %path.display(), kept = valid, size, "cutting a torn record off the script store");
                file.set_len(valid as u64).await.map_err(err)?;
                file.sync_data().await.map_err(err)?;
            }
            valid as u64
        };
        file.seek(SeekFrom::Start(len)).await.map_err(err)?;
        let known = bodies.iter().map(|b| sha1_raw(b)).collect();
        Ok(Arc::new(ScriptStore {
            path,
            max_bytes,
            inner: Mutex::new(StoreInner {
                file,
                len,
                known,
                bodies,
            }),
        }))
    }

    /// Puts every stored body into `cache` (not as fresh: they are on disk already).
    pub async fn seed(&self, cache: &mut ScriptCache) {
        let inner = self.inner.lock().await;
        for body in &inner.bodies {
            cache.remember(body.clone());
        }
        cache.fresh.clear();
    }

    /// Appends the bodies not stored yet and syncs them to disk.
    pub async fn persist(&self, bodies: Vec<Bytes>) -> Result<(), StoreError> {
        let err = |source| StoreError {
            path: self.path.clone(),
            source,
        };
        let mut inner = self.inner.lock().await;
        let mut out = Vec::new();
        let mut added = Vec::new();
        for body in bodies {
            if body.len() > STORE_MAX_BODY || (body.len() as u64) > self.max_bytes / 4 {
                tracing::warn!(bytes = body.len(), "a script body too big to keep on disk");
                continue;
            }
            let sha = sha1_raw(&body);
            if inner.known.insert(sha) {
                out.extend_from_slice(&record(&body));
                added.push(body);
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        inner.bodies.extend(added);
        if inner.len + out.len() as u64 > self.max_bytes {
            return self.compact(&mut inner).await;
        }
        inner.file.write_all(&out).await.map_err(err)?;
        inner.file.flush().await.map_err(err)?;
        inner.file.sync_data().await.map_err(err)?;
        inner.len += out.len() as u64;
        Ok(())
    }

    /// Rewrites the file with the newest bodies that fit in half the cap (the oldest are
    /// the least likely to be named again), through a temporary file and a rename.
    async fn compact(&self, inner: &mut StoreInner) -> Result<(), StoreError> {
        let err = |source| StoreError {
            path: self.path.clone(),
            source,
        };
        let mut keep = Vec::new();
        let mut size = STORE_MAGIC.len() as u64;
        for body in inner.bodies.iter().rev() {
            let rec = (RECORD_HEADER + body.len()) as u64;
            if size + rec > self.max_bytes / 2 {
                break;
            }
            size += rec;
            keep.push(body.clone());
        }
        keep.reverse();
        let mut data = STORE_MAGIC.to_vec();
        for body in &keep {
            data.extend_from_slice(&record(body));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).await.map_err(err)?;
        f.write_all(&data).await.map_err(err)?;
        f.sync_all().await.map_err(err)?;
        drop(f);
        tokio::fs::rename(&tmp, &self.path).await.map_err(err)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir).await.map_err(err)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .await
            .map_err(err)?;
        file.seek(SeekFrom::Start(size)).await.map_err(err)?;
        inner.file = file;
        inner.len = size;
        inner.known = keep.iter().map(|b| sha1_raw(b)).collect();
        inner.bodies = keep;
        Ok(())
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).await?.sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_redis() {
        // `SCRIPT LOAD "return 1"` answers this.
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        let mut c = ScriptCache::default();
        c.remember(Bytes::from_static(b"return 1"));
        assert!(c.get(b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB").is_some());
        assert_eq!(c.take_fresh().len(), 1);
        c.remember(Bytes::from_static(b"return 1"));
        assert!(
            c.take_fresh().is_empty(),
            "known bodies are not fresh again"
        );
    }

    #[tokio::test]
    async fn the_store_survives_reopening_and_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".scripts");
        let store = ScriptStore::open(path.clone()).await.unwrap();
        store
            .persist(vec![
                Bytes::from_static(b"return 1"),
                Bytes::from_static(b"return 2"),
                Bytes::from_static(b"return 1"),
            ])
            .await
            .unwrap();
        drop(store);
        // A crash in the middle of the next append.
        let mut data = std::fs::read(&path).unwrap();
        let good = data.len();
        data.extend_from_slice(&record(b"return 3")[..10]);
        std::fs::write(&path, &data).unwrap();

        let store = ScriptStore::open(path.clone()).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good as u64);
        let mut cache = ScriptCache::default();
        store.seed(&mut cache).await;
        assert!(cache.take_fresh().is_empty());
        assert_eq!(
            cache
                .get(sha1_hex(b"return 2").as_bytes())
                .unwrap()
                .as_ref(),
            b"return 2"
        );
        store
            .persist(vec![Bytes::from_static(b"return 3")])
            .await
            .unwrap();
        drop(store);
        let store = ScriptStore::open(path.clone()).await.unwrap();
        let mut cache = ScriptCache::default();
        store.seed(&mut cache).await;
        assert!(cache.get(sha1_hex(b"return 3").as_bytes()).is_some());

        std::fs::write(&path, b"garbage").unwrap();
        let store = ScriptStore::open(path.clone()).await.unwrap();
        let mut cache = ScriptCache::default();
        store.seed(&mut cache).await;
        assert!(cache.get(sha1_hex(b"return 1").as_bytes()).is_none());
    }

    #[tokio::test]
    async fn compaction_keeps_the_newest_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".scripts");
        let cap = 40_000;
        let store = ScriptStore::open_capped(path.clone(), cap).await.unwrap();
        let big = |i: u8| Bytes::from(vec![i; 9_000]);
        for i in 0..5u8 {
            store.persist(vec![big(i)]).await.unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= cap, "{len}");
        let mut cache = ScriptCache::default();
        store.seed(&mut cache).await;
        assert!(cache.get(sha1_hex(&big(4)).as_bytes()).is_some());
        assert!(cache.get(sha1_hex(&big(0)).as_bytes()).is_none());
    }
}
