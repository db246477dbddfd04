//! The durable task store: one embedded `redb` file that holds every task, secrets
//! included, so a task outlives every process.
//!
//! A record is the proto `Task` (prost-encoded, passwords kept: the runner needs them
//! after a restart) wrapped with the control plane's private bookkeeping. The file is
//! created readable by its owner only because it holds Redis passwords.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{ReadableTable, TableDefinition};
use redis_sync_proto::v1::Task;

/// Task id → prost-encoded [`StoredTask`].
const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");

/// One task as kept on disk. Proto encoding keeps old records readable when fields are
/// added: unknown tags are skipped and missing ones take their defaults.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredTask {
    /// The task with its spec, passwords included.
    #[prost(message, optional, tag = "1")]
    pub task: Option<Task>,
    /// The running state (`INITIAL_SYNC` or `SYNCHRONIZING`) the task was in when it was
    /// paused or failed, so ResumeTask returns to it. The proto `Task` has no field for it.
    #[prost(enumeration = "redis_sync_proto::v1::TaskState", tag = "2")]
    pub resume_state: i32,
}

impl StoredTask {
    /// The task; a record without one decodes as an empty task rather than panicking.
    pub fn task(&self) -> &Task {
        static EMPTY: std::sync::OnceLock<Task> = std::sync::OnceLock::new();
        self.task
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Task::default))
    }

    /// The task, mutably (created when absent).
    pub fn task_mut(&mut self) -> &mut Task {
        self.task.get_or_insert_with(Task::default)
    }
}

/// Errors of the task store. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be created, opened or given its permissions.
    #[error("task store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The database refused an operation.
    #[error("task store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A record does not decode (a damaged file or a record of an incompatible build).
    #[error("task store {path}: record of task {id} is unreadable: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The task id of the record.
        id: String,
        /// What prost said.
        #[source]
        source: prost::DecodeError,
    },
}

/// What a read-modify-write returns: the store failed, the task is missing, or the
/// caller's closure refused the change.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// The store failed.
    Store(StoreError),
    /// No task has this id.
    NotFound,
    /// The closure refused; nothing was written.
    Rejected(E),
}

impl<E> From<StoreError> for UpdateError<E> {
    fn from(e: StoreError) -> Self {
        UpdateError::Store(e)
    }
}

/// The task store.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl Store {
    /// Opens `path`, creating it (mode 0600) when missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(io)?;
        // The mode above only applies when the file is new; tighten an existing file too,
        // since it holds passwords.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        let db = redb::Builder::new()
            .create_file(file)
            .map_err(|e| StoreError::Db {
                path: path.to_owned(),
                source: e.into(),
            })?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        // Create the table up front so that reads never meet a missing table.
        let txn = store.db.begin_write().map_err(|e| store.db_err(e))?;
        txn.open_table(TASKS).map_err(|e| store.db_err(e))?;
        txn.commit().map_err(|e| store.db_err(e))?;
        Ok(store)
    }

    /// The file of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<StoredTask, StoreError> {
        StoredTask::decode(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            id: id.to_owned(),
            source,
        })
    }

    /// The task `id`, if any.
    pub fn get(&self, id: &str) -> Result<Option<StoredTask>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(TASKS).map_err(|e| self.db_err(e))?;
        let value = table.get(id).map_err(|e| self.db_err(e))?;
        value.map(|v| self.decode(id, v.value())).transpose()
    }

    /// Every task, in no particular order. Unreadable records are returned as errors
    /// next to the good ones so one damaged record does not hide the others.
    pub fn all(&self) -> Result<Vec<Result<StoredTask, StoreError>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(TASKS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(self.decode(k.value(), v.value()));
        }
        Ok(out)
    }

    /// Stores a new task under its id.
    pub fn insert(&self, record: &StoredTask) -> Result<(), StoreError> {
        let id = record.task().id.clone();
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.db_err(e))?;
            table
                .insert(id.as_str(), record.encode_to_vec().as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Reads task `id`, lets `change` modify it and writes it back, all in one write
    /// transaction: concurrent changes of one task are serialised, never interleaved.
    /// When `change` returns an error nothing is written.
    pub fn update<T, E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut StoredTask) -> Result<T, E>,
    ) -> Result<(T, StoredTask), UpdateError<E>> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let (out, record) = {
            let mut table = txn.open_table(TASKS).map_err(|e| self.db_err(e))?;
            let mut record = match table.get(id).map_err(|e| self.db_err(e))? {
                Some(current) => self.decode(id, current.value())?,
                None => return Err(UpdateError::NotFound),
            };
            let out = change(&mut record).map_err(UpdateError::Rejected)?;
            table
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(|e| self.db_err(e))?;
            (out, record)
        };
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok((out, record))
    }

    /// Deletes task `id` when `allow` accepts its current record, in one transaction.
    pub fn delete_if<E>(
        &self,
        id: &str,
        allow: impl FnOnce(&StoredTask) -> Result<(), E>,
    ) -> Result<(), UpdateError<E>> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.db_err(e))?;
            let record = match table.get(id).map_err(|e| self.db_err(e))? {
                Some(current) => self.decode(id, current.value())?,
                None => return Err(UpdateError::NotFound),
            };
            allow(&record).map_err(UpdateError::Rejected)?;
            table.remove(id).map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("redis-sync-store-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("tasks.redb")
    }

    fn record(id: &str) -> StoredTask {
        StoredTask {
            task: Some(Task {
                id: id.to_owned(),
                ..Task::default()
            }),
            resume_state: 0,
        }
    }

    #[test]
    fn round_trip_update_delete_and_reopen() {
        let path = temp_path("rt");
        {
            let store = Store::open(&path).unwrap();
            store.insert(&record("a")).unwrap();
            store.insert(&record("b")).unwrap();
            let ((), r) = store
                .update::<(), ()>("a", |r| {
                    r.task_mut().failure_reason = "x".into();
                    Ok(())
                })
                .unwrap();
            assert_eq!(r.task().failure_reason, "x");
            assert!(matches!(
                store.update::<(), ()>("zz", |_| Ok(())),
                Err(UpdateError::NotFound)
            ));
            assert!(matches!(
                store.update::<(), &str>("a", |_| Err("no")),
                Err(UpdateError::Rejected("no"))
            ));
            store.delete_if::<()>("b", |_| Ok(())).unwrap();
            assert!(store.get("b").unwrap().is_none());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().task().failure_reason, "x");
        assert_eq!(store.all().unwrap().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn open_error_names_the_path() {
        let path = Path::new("/nonexistent-dir-redis-sync/tasks.redb");
        let err = Store::open(path).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent-dir-redis-sync/tasks.redb"),
            "{err}"
        );
    }
}
