//! The task manager: the state machine of every task, the runners of running tasks, and
//! the live status they report.
//!
//! Rules that keep it consistent:
//! * Every state change is a read-modify-write of the stored record in one store write
//!   transaction, made while holding the `live` lock, so a runner's callback and an
//!   operator's call never interleave.
//! * Operator calls on one task are serialised by a per-task async lock held until the
//!   call has finished its side effects (e.g. a paused runner has really stopped), so a
//!   ResumeTask right after a PauseTask never runs two runners at once.
//! * Each runner gets a generation number; callbacks of a runner that was stopped or
//!   replaced are ignored, so a late `failed` cannot overwrite PAUSED or STOPPED.
//! * Mutating calls run in their own tokio task: a client that gives up mid-call cannot
//!   leave a task half-way (e.g. stuck in PRECHECKING).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant, SystemTime},
};

use futures_util::Stream;
use redis_sync_proto::v1::{PrecheckResult, Task, TaskSpec, TaskState, TaskStatus};
use redis_sync_telemetry::Metrics;
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    config::ApplyConfig,
    precheck,
    runner::{RunnerContext, RunnerObserver, TaskRunner},
    store::{Store, StoreError, StoredTask, UpdateError},
    task::{self, FieldError, is_running, state_name, state_of},
};

/// WatchTask sends the task at least this often even when nothing changed.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(2);
/// WatchTask sends at most one update per this interval: runners report status often.
const WATCH_MIN_GAP: Duration = Duration::from_millis(100);
/// ListTasks page size when the request names none, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// A running task's handle, as the manager sees it.
pub trait RunnerHandle: Send {
    /// Stops the runner and waits until its in-flight writes are done.
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl RunnerHandle for TaskRunner {
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(TaskRunner::stop(*self))
    }
}

/// Starts runners. The service uses [`DefaultSpawner`] ([`TaskRunner::spawn`]); tests of
/// the control plane put a scripted runner here to drive state changes on demand.
pub trait RunnerSpawner: Send + Sync + 'static {
    /// Starts a runner for `ctx`; it reports through `ctx.observer`.
    fn spawn(&self, ctx: RunnerContext) -> Box<dyn RunnerHandle>;
}

/// Spawns the real data path.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultSpawner;

impl RunnerSpawner for DefaultSpawner {
    fn spawn(&self, ctx: RunnerContext) -> Box<dyn RunnerHandle> {
        Box::new(TaskRunner::spawn(ctx))
    }
}

/// Why a task operation failed; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(String),
    /// The task's state does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request field is wrong.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service is shutting down.
    #[error("apply is shutting down")]
    ShuttingDown,
    /// A bug: an operation's task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TaskError> for tonic::Status {
    fn from(e: TaskError) -> Self {
        match &e {
            TaskError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            TaskError::FailedPrecondition(_) => tonic::Status::failed_precondition(e.to_string()),
            TaskError::InvalidArgument(_) => tonic::Status::invalid_argument(e.to_string()),
            TaskError::Store(_) => {
                tracing::error!(error = %e, "task store failure");
                tonic::Status::internal(e.to_string())
            }
            TaskError::ShuttingDown => tonic::Status::unavailable(e.to_string()),
            TaskError::Internal(_) => {
                tracing::error!(error = %e, "task operation failed");
                tonic::Status::internal(e.to_string())
            }
        }
    }
}

fn illegal(id: &str, task: &Task, op: &str, allowed: &[TaskState]) -> TaskError {
    let allowed: Vec<String> = allowed.iter().map(|s| state_name(*s as i32)).collect();
    TaskError::FailedPrecondition(format!(
        "task {id} is {}; {op} needs {}",
        state_name(task.state),
        allowed.join(" or ")
    ))
}

fn from_update(id: &str, e: UpdateError<TaskError>) -> TaskError {
    match e {
        UpdateError::Store(s) => TaskError::Store(s),
        UpdateError::NotFound => TaskError::NotFound(id.to_owned()),
        UpdateError::Rejected(t) => t,
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// What the manager keeps in memory per task.
struct LiveTask {
    /// Generation of the current runner; 0 when none runs.
    generation: u64,
    runner: Option<Box<dyn RunnerHandle>>,
    /// Latest status reported by a runner.
    status: Option<TaskStatus>,
    /// Bumped on every change; WatchTask streams wait on it. Dropped on delete, which
    /// ends the streams.
    changed: watch::Sender<()>,
    /// Serialises operator calls on this task.
    op: Arc<tokio::sync::Mutex<()>>,
}

impl LiveTask {
    fn new() -> Self {
        Self {
            generation: 0,
            runner: None,
            status: None,
            changed: watch::channel(()).0,
            op: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

#[derive(Default)]
struct Live {
    tasks: HashMap<String, LiveTask>,
    next_generation: u64,
    shutting_down: bool,
}

impl Live {
    fn entry(&mut self, id: &str) -> &mut LiveTask {
        self.tasks
            .entry(id.to_owned())
            .or_insert_with(LiveTask::new)
    }
}

struct Inner {
    store: Store,
    config: ApplyConfig,
    metrics: Metrics,
    spawner: Arc<dyn RunnerSpawner>,
    live: Mutex<Live>,
    /// Set once when the server begins to shut down: WatchTask streams end so the
    /// server's graceful drain does not wait for them.
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(live: &mut Live, id: &str) {
        if let Some(t) = live.tasks.get(id) {
            t.changed.send_replace(());
        }
    }

    /// Recounts tasks per state for the `redis_sync_apply_tasks` gauge.
    fn update_gauges(&self) {
        let Ok(all) = self.store.all() else { return };
        let mut counts: HashMap<i32, i64> = HashMap::new();
        for r in all.into_iter().flatten() {
            *counts.entry(r.task().state).or_default() += 1;
        }
        for s in [
            TaskState::NotStarted,
            TaskState::Prechecking,
            TaskState::PrecheckFailed,
            TaskState::InitialSync,
            TaskState::Synchronizing,
            TaskState::Paused,
            TaskState::Failed,
            TaskState::Stopped,
        ] {
            let name = state_name(s as i32).to_ascii_lowercase();
            self.metrics
                .gauge(
                    "redis_sync_apply_tasks",
                    "Tasks per state.",
                    &[("state", &name)],
                )
                .set(counts.get(&(s as i32)).copied().unwrap_or(0));
        }
    }

    /// Changes the stored state of `id` (caller holds `live`), keeping the latest live
    /// status in the record so it survives the runner and the process.
    fn set_state(
        &self,
        live: &mut Live,
        id: &str,
        change: impl FnOnce(&mut StoredTask) -> Result<(), TaskError>,
    ) -> Result<StoredTask, TaskError> {
        let status = live.tasks.get(id).and_then(|t| t.status.clone());
        let (from, record) = self
            .store
            .update(id, |r| {
                let from = r.task().state;
                change(r)?;
                let t = r.task_mut();
                if t.state != from {
                    t.update_time = Some(now());
                }
                if let Some(s) = status {
                    t.status = Some(s);
                }
                Ok(from)
            })
            .map_err(|e| from_update(id, e))?;
        let to = record.task().state;
        if from != to {
            tracing::info!(task_id = %id, from = %state_name(from), to = %state_name(to), "task state changed");
        }
        Self::notify(live, id);
        Ok(record)
    }

    /// Starts a runner for `id` (the stored state already says it runs). Returns after
    /// the handle is installed.
    fn spawn_runner(self: &Arc<Self>, id: &str, spec: TaskSpec) {
        let generation = {
            let mut live = self.live();
            if live.shutting_down {
                // The stored state says it runs, so the next start of apply resumes it.
                tracing::info!(task_id = %id, "apply is shutting down: the runner starts with the next apply");
                return;
            }
            live.next_generation += 1;
            let generation = live.next_generation;
            let entry = live.entry(id);
            entry.generation = generation;
            entry.status = None;
            generation
        };
        let observer = Arc::new(Observer {
            inner: Arc::downgrade(self),
            task_id: id.to_owned(),
            generation,
        });
        let ctx = RunnerContext {
            task_id: id.to_owned(),
            spec,
            config: self.config.clone(),
            observer,
            metrics: self.metrics.clone(),
        };
        // Spawned outside the lock: a runner may call its observer at once.
        let handle = self.spawner.spawn(ctx);
        let mut live = self.live();
        let shutting_down = live.shutting_down;
        let entry = live.entry(id);
        if entry.generation == generation && !shutting_down {
            entry.runner = Some(handle);
        } else {
            // It failed before the handle was installed (reap it), or shutdown began in
            // between and has already collected the runners it waits for (stop it).
            if entry.generation == generation {
                entry.generation = 0;
            }
            drop(live);
            tokio::spawn(handle.stop());
        }
    }

    /// Takes the runner of `id` out of the live map (caller holds `live`); its later
    /// callbacks are ignored from now on.
    fn take_runner(live: &mut Live, id: &str) -> Option<Box<dyn RunnerHandle>> {
        let entry = live.tasks.get_mut(id)?;
        entry.generation = 0;
        entry.runner.take()
    }

    /// The stored task merged with the live status.
    fn get(&self, id: &str) -> Result<Task, TaskError> {
        let record = self
            .store
            .get(id)?
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))?;
        let mut task = record.task.unwrap_or_default();
        if let Some(status) = self.live().tasks.get(id).and_then(|t| t.status.clone()) {
            task.status = Some(status);
        }
        Ok(task)
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.live().entry(id).op.clone()
    }
}

/// What a runner calls; ignored once the runner is no longer the task's current one.
struct Observer {
    inner: Weak<Inner>,
    task_id: String,
    generation: u64,
}

impl Observer {
    fn with_current(&self, f: impl FnOnce(&Arc<Inner>, &mut Live)) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut live = inner.live();
        if live
            .tasks
            .get(&self.task_id)
            .is_some_and(|t| t.generation == self.generation)
        {
            f(&inner, &mut live);
        }
    }

    fn move_state(&self, from: TaskState, to: TaskState) {
        let id = self.task_id.clone();
        self.with_current(|inner, live| {
            let result = inner.set_state(live, &id, |r| {
                if state_of(r.task()) == from {
                    r.task_mut().state = to as i32;
                    r.resume_state = to as i32;
                }
                Ok(())
            });
            if let Err(e) = result {
                tracing::error!(task_id = %id, error = %e, "cannot record the runner's state change");
            }
        });
        if let Some(inner) = self.inner.upgrade() {
            inner.update_gauges();
        }
    }
}

impl RunnerObserver for Observer {
    fn initial_sync_done(&self) {
        self.move_state(TaskState::InitialSync, TaskState::Synchronizing);
    }

    fn initial_sync_started(&self) {
        self.move_state(TaskState::Synchronizing, TaskState::InitialSync);
    }

    fn failed(&self, reason: String) {
        let reason = bounded_reason(reason);
        let id = self.task_id.clone();
        let mut reaped = None;
        self.with_current(|inner, live| {
            let result = inner.set_state(live, &id, |r| {
                let state = state_of(r.task());
                if is_running(state) {
                    r.resume_state = state as i32;
                    let t = r.task_mut();
                    t.state = TaskState::Failed as i32;
                    t.failure_reason = reason.clone();
                }
                Ok(())
            });
            match result {
                Ok(_) => tracing::warn!(task_id = %id, reason = %reason, "task failed"),
                Err(e) => {
                    tracing::error!(task_id = %id, error = %e, "cannot record the task's failure")
                }
            }
            reaped = Inner::take_runner(live, &id);
        });
        // The runner has stopped itself; joining it only releases its task.
        if let Some(handle) = reaped
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(handle.stop());
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.update_gauges();
        }
    }

    fn status(&self, status: TaskStatus) {
        let id = self.task_id.clone();
        self.with_current(|_, live| {
            if let Some(t) = live.tasks.get_mut(&id) {
                t.status = Some(status);
                t.changed.send_replace(());
            }
        });
    }
}

/// The tasks of one apply process. Cheap to clone.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("store", &self.inner.store.path())
            .finish_non_exhaustive()
    }
}

/// Position in the newest-first order: (create seconds, nanos, id), compared descending.
type SortKey = (i64, i32, String);

fn sort_key(t: &Task) -> SortKey {
    let c = t.create_time.unwrap_or_default();
    (c.seconds, c.nanos, t.id.clone())
}

fn encode_token(state: i32, key: &SortKey) -> String {
    let raw = format!("v1|{state}|{}|{}|{}", key.0, key.1, key.2);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str, state: i32) -> Result<SortKey, FieldError> {
    let bad = || FieldError {
        field: "page_token".into(),
        reason: "not a token from a previous ListTasks".into(),
    };
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .ok_or(())
                .and_then(|h| u8::from_str_radix(h, 16).map_err(|_| ()))
        })
        .collect();
    let raw = String::from_utf8(bytes.map_err(|()| bad())?).map_err(|_| bad())?;
    let parts: Vec<&str> = raw.splitn(5, '|').collect();
    let [version, s, secs, nanos, id] = parts[..] else {
        return Err(bad());
    };
    if version != "v1" {
        return Err(bad());
    }
    if s.parse::<i32>().map_err(|_| bad())? != state {
        return Err(FieldError {
            field: "page_token".into(),
            reason: "was issued for a different state filter".into(),
        });
    }
    Ok((
        secs.parse().map_err(|_| bad())?,
        nanos.parse().map_err(|_| bad())?,
        id.to_owned(),
    ))
}

impl TaskManager {
    /// A manager over `store`, starting runners with `spawner`.
    pub fn new(
        store: Store,
        config: ApplyConfig,
        metrics: Metrics,
        spawner: Arc<dyn RunnerSpawner>,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            config,
            metrics,
            spawner,
            live: Mutex::new(Live::default()),
            shutdown: watch::channel(false).0,
        });
        inner.update_gauges();
        Self { inner }
    }

    /// Brings the stored tasks back after a restart: running tasks get their runner
    /// again and continue from the destination's checkpoint; a precheck cut short goes
    /// back to NOT_STARTED (its result was never recorded).
    pub fn recover(&self) {
        let all = match self.inner.store.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the task store to resume tasks");
                return;
            }
        };
        for record in all {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable task");
                    continue;
                }
            };
            let task = record.task();
            let id = task.id.clone();
            match state_of(task) {
                TaskState::Prechecking => {
                    let mut live = self.inner.live();
                    let result = self.inner.set_state(&mut live, &id, |r| {
                        r.task_mut().state = TaskState::NotStarted as i32;
                        Ok(())
                    });
                    if let Err(e) = result {
                        tracing::error!(task_id = %id, error = %e, "cannot reset an interrupted precheck");
                    }
                }
                s if is_running(s) => {
                    tracing::info!(task_id = %id, state = %state_name(s as i32), "resuming task after restart");
                    let spec = task.spec.clone().unwrap_or_default();
                    self.inner.spawn_runner(&id, spec);
                }
                _ => {}
            }
        }
        self.inner.update_gauges();
    }

    /// Marks the beginning of shutdown: WatchTask streams end, no runner starts.
    pub fn begin_shutdown(&self) {
        self.inner.live().shutting_down = true;
        self.inner.shutdown.send_replace(true);
    }

    /// Stops every runner and waits for them. Their tasks keep their running state in
    /// the store, so the next start resumes them.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let runners: Vec<(String, Box<dyn RunnerHandle>)> = {
            let mut live = self.inner.live();
            let ids: Vec<String> = live.tasks.keys().cloned().collect();
            ids.into_iter()
                .filter_map(|id| Inner::take_runner(&mut live, &id).map(|r| (id, r)))
                .collect()
        };
        if !runners.is_empty() {
            tracing::info!(runners = runners.len(), "stopping task runners");
        }
        futures_util::future::join_all(runners.into_iter().map(|(id, r)| {
            r.stop()
                .instrument(tracing::info_span!("task", task_id = %id))
        }))
        .await;
    }

    /// Creates a task in NOT_STARTED.
    pub fn create(&self, spec: Option<TaskSpec>) -> Result<Task, TaskError> {
        let id = uuid::Uuid::new_v4().to_string();
        let spec = task::validate_spec(spec, &self.inner.config.ingest_endpoint, &id)?;
        let ts = now();
        let task = Task {
            id: id.clone(),
            spec: Some(spec),
            state: TaskState::NotStarted as i32,
            create_time: Some(ts),
            update_time: Some(ts),
            ..Task::default()
        };
        self.inner.store.insert(&StoredTask {
            task: Some(task.clone()),
            resume_state: 0,
        })?;
        tracing::info!(task_id = %id, "task created");
        self.inner.update_gauges();
        Ok(task)
    }

    /// One task with its live status (passwords included: redact before returning it).
    pub fn get(&self, id: &str) -> Result<Task, TaskError> {
        self.inner.get(id)
    }

    /// A page of tasks, newest first, optionally in one state; returns the next token.
    pub fn list(
        &self,
        state: i32,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Task>, String), TaskError> {
        if TaskState::try_from(state).is_err() {
            return Err(FieldError {
                field: "state".into(),
                reason: format!("unknown state {state}"),
            }
            .into());
        }
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_token(page_token, state)?)
        };
        let size = match page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut tasks: Vec<Task> = Vec::new();
        for record in self.inner.store.all()? {
            match record {
                Ok(r) => {
                    let t = r.task.unwrap_or_default();
                    if state == TaskState::Unspecified as i32 || t.state == state {
                        tasks.push(t);
                    }
                }
                // One damaged record must not hide the others; it is logged instead.
                Err(e) => tracing::error!(error = %e, "skipping an unreadable task"),
            }
        }
        tasks.sort_by_key(|t| std::cmp::Reverse(sort_key(t)));
        let mut page: Vec<Task> = tasks
            .into_iter()
            .filter(|t| after.as_ref().is_none_or(|a| sort_key(t) < *a))
            .take(size + 1)
            .collect();
        let next = if page.len() > size {
            page.truncate(size);
            page.last()
                .map(|t| encode_token(state, &sort_key(t)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let live = self.inner.live();
        for t in &mut page {
            if let Some(s) = live.tasks.get(&t.id).and_then(|l| l.status.clone()) {
                t.status = Some(s);
            }
        }
        Ok((page, next))
    }

    /// Runs `op` on its own tokio task under the task's operation lock, so the caller
    /// going away does not cut it short.
    async fn run_op<T, F>(
        &self,
        id: &str,
        op: impl FnOnce(Arc<Inner>, String) -> F + Send + 'static,
    ) -> Result<T, TaskError>
    where
        F: Future<Output = Result<T, TaskError>> + Send + 'static,
        T: Send + 'static,
    {
        // Fail fast on unknown ids without creating live entries for them.
        if self.inner.store.get(id)?.is_none() {
            return Err(TaskError::NotFound(id.to_owned()));
        }
        let inner = self.inner.clone();
        let id = id.to_owned();
        let span = tracing::info_span!("task", task_id = %id);
        let join = tokio::spawn(
            async move {
                let lock = inner.op_lock(&id);
                let _guard = lock.lock().await;
                op(inner.clone(), id).await
            }
            .instrument(span),
        );
        match join.await {
            Ok(r) => r,
            Err(e) => Err(TaskError::Internal(format!(
                "the operation did not complete: {e}"
            ))),
        }
    }

    /// NOT_STARTED | PRECHECK_FAILED → PRECHECKING → INITIAL_SYNC (runner started) or
    /// PRECHECK_FAILED (with the precheck and the failed items as the reason).
    pub async fn start(&self, id: &str) -> Result<Task, TaskError> {
        self.run_op(id, |inner, id| async move {
            const FROM: [TaskState; 2] = [TaskState::NotStarted, TaskState::PrecheckFailed];
            let record = {
                let mut live = inner.live();
                if live.shutting_down {
                    return Err(TaskError::ShuttingDown);
                }
                inner.set_state(&mut live, &id, |r| {
                    if !FROM.contains(&state_of(r.task())) {
                        return Err(illegal(&id, r.task(), "StartTask", &FROM));
                    }
                    let t = r.task_mut();
                    t.state = TaskState::Prechecking as i32;
                    t.failure_reason.clear();
                    Ok(())
                })?
            };
            inner.update_gauges();
            let spec = record.task().spec.clone().unwrap_or_default();
            let result = precheck::run(&spec, &inner.config).await;
            let passed = result.passed;
            let record = {
                let mut live = inner.live();
                inner.set_state(&mut live, &id, |r| {
                    let t = r.task_mut();
                    if passed {
                        t.state = TaskState::InitialSync as i32;
                        r.resume_state = TaskState::InitialSync as i32;
                    } else {
                        t.state = TaskState::PrecheckFailed as i32;
                        t.failure_reason = failed_items(&result);
                    }
                    r.task_mut().precheck = Some(result);
                    Ok(())
                })?
            };
            if passed {
                inner.spawn_runner(&id, spec);
            } else {
                tracing::info!(task_id = %id, reason = %record.task().failure_reason, "precheck failed");
            }
            inner.update_gauges();
            inner.get(&id)
        })
        .await
    }

    /// INITIAL_SYNC | SYNCHRONIZING → PAUSED; returns after the runner has stopped.
    pub async fn pause(&self, id: &str) -> Result<Task, TaskError> {
        self.run_op(id, |inner, id| async move {
            const FROM: [TaskState; 2] = [TaskState::InitialSync, TaskState::Synchronizing];
            let runner = {
                let mut live = inner.live();
                inner.set_state(&mut live, &id, |r| {
                    let state = state_of(r.task());
                    if !FROM.contains(&state) {
                        return Err(illegal(&id, r.task(), "PauseTask", &FROM));
                    }
                    r.resume_state = state as i32;
                    r.task_mut().state = TaskState::Paused as i32;
                    Ok(())
                })?;
                Inner::take_runner(&mut live, &id)
            };
            if let Some(r) = runner {
                r.stop().await;
            }
            inner.update_gauges();
            inner.get(&id)
        })
        .await
    }

    /// PAUSED (or FAILED, once the operator fixed the cause) → the running state it had,
    /// with a new runner that continues from the destination's checkpoint.
    pub async fn resume(&self, id: &str) -> Result<Task, TaskError> {
        self.run_op(id, |inner, id| async move {
            const FROM: [TaskState; 2] = [TaskState::Paused, TaskState::Failed];
            let record = {
                let mut live = inner.live();
                if live.shutting_down {
                    return Err(TaskError::ShuttingDown);
                }
                inner.set_state(&mut live, &id, |r| {
                    if !FROM.contains(&state_of(r.task())) {
                        return Err(illegal(&id, r.task(), "ResumeTask", &FROM));
                    }
                    // A task that failed before it ever ran (cannot happen today) or a
                    // record without the field resumes in INITIAL_SYNC: the runner finds
                    // out from the checkpoint whether the full copy is done.
                    let to = match TaskState::try_from(r.resume_state) {
                        Ok(s @ TaskState::Synchronizing) => s,
                        _ => TaskState::InitialSync,
                    };
                    let t = r.task_mut();
                    t.state = to as i32;
                    t.failure_reason.clear();
                    Ok(())
                })?
            };
            inner.spawn_runner(&id, record.task().spec.clone().unwrap_or_default());
            inner.update_gauges();
            inner.get(&id)
        })
        .await
    }

    /// INITIAL_SYNC | SYNCHRONIZING | PAUSED | FAILED → STOPPED; returns after the runner
    /// has stopped.
    pub async fn stop(&self, id: &str) -> Result<Task, TaskError> {
        self.run_op(id, |inner, id| async move {
            const FROM: [TaskState; 4] = [
                TaskState::InitialSync,
                TaskState::Synchronizing,
                TaskState::Paused,
                TaskState::Failed,
            ];
            let runner = {
                let mut live = inner.live();
                inner.set_state(&mut live, &id, |r| {
                    if !FROM.contains(&state_of(r.task())) {
                        return Err(illegal(&id, r.task(), "StopTask", &FROM));
                    }
                    r.task_mut().state = TaskState::Stopped as i32;
                    Ok(())
                })?;
                Inner::take_runner(&mut live, &id)
            };
            if let Some(r) = runner {
                r.stop().await;
            }
            inner.update_gauges();
            inner.get(&id)
        })
        .await
    }

    /// Deletes a task that does not run: NOT_STARTED, PRECHECK_FAILED, FAILED, STOPPED.
    pub async fn delete(&self, id: &str) -> Result<(), TaskError> {
        self.run_op(id, |inner, id| async move {
            const FROM: [TaskState; 4] = [
                TaskState::NotStarted,
                TaskState::PrecheckFailed,
                TaskState::Failed,
                TaskState::Stopped,
            ];
            let runner = {
                let mut live = inner.live();
                inner
                    .store
                    .delete_if(&id, |r| {
                        if FROM.contains(&state_of(r.task())) {
                            Ok(())
                        } else {
                            Err(illegal(&id, r.task(), "DeleteTask", &FROM))
                        }
                    })
                    .map_err(|e| from_update(&id, e))?;
                // Dropping the entry drops its watch sender, which ends WatchTask streams.
                live.tasks.remove(&id).and_then(|mut t| t.runner.take())
            };
            if let Some(r) = runner {
                r.stop().await;
            }
            tracing::info!(task_id = %id, "task deleted");
            inner.update_gauges();
            Ok(())
        })
        .await
    }

    /// Runs the precheck of a task that does not run and stores the result.
    pub async fn run_precheck(&self, id: &str) -> Result<PrecheckResult, TaskError> {
        let inner = self.inner.clone();
        let id = id.to_owned();
        let span = tracing::info_span!("task", task_id = %id);
        let join = tokio::spawn(
            async move {
                let record = inner
                    .store
                    .get(&id)?
                    .ok_or_else(|| TaskError::NotFound(id.clone()))?;
                let state = state_of(record.task());
                if is_running(state) || state == TaskState::Prechecking {
                    return Err(TaskError::FailedPrecondition(format!(
                        "task {id} is {}; RunPrecheck needs a task that is not running",
                        state_name(state as i32)
                    )));
                }
                let spec = record.task().spec.clone().unwrap_or_default();
                let result = precheck::run(&spec, &inner.config).await;
                let mut live = inner.live();
                inner.set_state(&mut live, &id, |r| {
                    r.task_mut().precheck = Some(result.clone());
                    Ok(())
                })?;
                Ok(result)
            }
            .instrument(span),
        );
        match join.await {
            Ok(r) => r,
            Err(e) => Err(TaskError::Internal(format!(
                "the precheck did not complete: {e}"
            ))),
        }
    }

    /// The task now, then on every change (at most every 100 ms) and at least every 2 s;
    /// ends when the task is deleted or the service shuts down.
    pub fn watch(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<Task, TaskError>> + Send + 'static, TaskError> {
        let changed = {
            let mut live = self.inner.live();
            // Checked under the lock (deletes take it too), so no entry is created for a
            // task that is gone.
            if self.inner.store.get(id)?.is_none() {
                return Err(TaskError::NotFound(id.to_owned()));
            }
            let mut rx = live.entry(id).changed.subscribe();
            rx.borrow_and_update();
            rx
        };
        // Read after subscribing, so a change in between is sent again rather than lost.
        let first = self.inner.get(id)?;
        struct State {
            inner: Arc<Inner>,
            id: String,
            changed: watch::Receiver<()>,
            shutdown: watch::Receiver<bool>,
            first: Option<Task>,
            last_sent: Instant,
        }
        let state = State {
            inner: self.inner.clone(),
            id: id.to_owned(),
            changed,
            shutdown: self.inner.shutdown.subscribe(),
            first: Some(first),
            last_sent: Instant::now(),
        };
        Ok(futures_util::stream::unfold(
            Some(state),
            |state| async move {
                let mut s = state?;
                if let Some(first) = s.first.take() {
                    s.last_sent = Instant::now();
                    return Some((Ok(first), Some(s)));
                }
                tokio::select! {
                    r = s.changed.changed() => if r.is_err() { return None },
                    () = tokio::time::sleep(WATCH_KEEPALIVE) => {}
                    _ = s.shutdown.wait_for(|v| *v) => return None,
                }
                let since = s.last_sent.elapsed();
                if since < WATCH_MIN_GAP {
                    tokio::time::sleep(WATCH_MIN_GAP - since).await;
                }
                // Changes during the gap are included in this update.
                s.changed.borrow_and_update();
                match s.inner.get(&s.id) {
                    Ok(t) => {
                        s.last_sent = Instant::now();
                        Some((Ok(t), Some(s)))
                    }
                    Err(TaskError::NotFound(_)) => None,
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }
}

/// Longest failure reason kept: a reason may quote a destination reply, which must not
/// make every GetTask and the stored record arbitrarily large.
const MAX_REASON: usize = 4096;

fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("… (truncated)");
    }
    reason
}

/// "precheck failed: name: reason; ..." for the FAILED items.
fn failed_items(result: &PrecheckResult) -> String {
    let failed: Vec<String> = result
        .items
        .iter()
        .filter(|i| i.status == redis_sync_proto::v1::CheckStatus::Failed as i32)
        .map(|i| format!("{}: {}", i.name, i.reason))
        .collect();
    format!("precheck failed: {}", failed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let r = bounded_reason("é".repeat(5000));
        assert!(r.len() <= MAX_REASON + 20 && r.ends_with("(truncated)"));
        assert_eq!(bounded_reason("short".into()), "short");
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let key = (1_700_000_000, 42, "abc-def".to_owned());
        let token = encode_token(0, &key);
        assert_eq!(decode_token(&token, 0).unwrap(), key);
        assert_eq!(decode_token(&token, 3).unwrap_err().field, "page_token");
        for bad in ["zz", "abc", "", "7631"] {
            assert!(decode_token(bad, 0).is_err(), "{bad}");
        }
    }
}
