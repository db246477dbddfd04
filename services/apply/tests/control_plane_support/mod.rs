//! Shared fixtures of the control-plane and precheck tests: apply and ingest served
//! in-process, a scripted runner, and polling helpers.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use redis_sync_apply::{
    Apply, RunnerHandle, RunnerSpawner,
    config::{ApplyArgs, ApplyConfig},
    runner::{RunnerContext, RunnerObserver},
};
use redis_sync_proto::v1::{
    CheckStatus, ConflictMode, GetTaskRequest, InstanceMode, PrecheckItem, PrecheckResult,
    RedisEndpoint, Task, TaskSpec, TaskState, task_service_client::TaskServiceClient,
};
use redis_sync_telemetry::Metrics;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Status, transport::Channel};

/// A scratch directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redis-sync-apply-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Apply's configuration for a test: store at `store`, default ingest `ingest`.
pub fn apply_config(store: &Path, ingest: &str, token: Option<&str>) -> ApplyConfig {
    let mut args = vec![
        "redis-sync-apply".to_owned(),
        "--store-path".into(),
        store.display().to_string(),
        "--ingest-endpoint".into(),
        ingest.to_owned(),
        "--metrics-listen".into(),
        "off".into(),
    ];
    if let Some(t) = token {
        args.push("--api-token".into());
        args.push(t.to_owned());
    }
    ApplyArgs::try_parse_from(args)
        .expect("apply args")
        .validate()
        .expect("apply config")
}

/// A loopback address nobody listens on.
pub async fn closed_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

/// Apply served in-process on 127.0.0.1:0.
pub struct TestApply {
    pub addr: String,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestApply {
    /// Serves `config` with the real runner.
    pub async fn start(config: ApplyConfig) -> Self {
        Self::serve(Apply::open(config, Metrics::new()).expect("open apply")).await
    }

    /// Serves `config` with runners from `spawner`.
    pub async fn start_with(config: ApplyConfig, spawner: Arc<dyn RunnerSpawner>) -> Self {
        Self::serve(Apply::open_with_spawner(config, Metrics::new(), spawner).expect("open apply"))
            .await
    }

    async fn serve(apply: Apply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(apply.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// A TaskService client.
    pub async fn client(&self) -> TaskServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TaskServiceClient::connect(self.addr.clone()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("apply at {} not reachable: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Shuts apply down and waits until it has stopped (runners stopped, store closed).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(20), join)
                .await
                .expect("apply did not shut down within 20 s")
                .expect("apply task panicked")
                .expect("apply serve failed");
        }
    }
}

impl Drop for TestApply {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// -------------------------------------------------------------------------------------
// A scripted runner: it does nothing but lets the test call its observer.

/// A scripted run: the observer the control plane gave it and its "stopped" flag.
type ScriptedRun = (Arc<dyn RunnerObserver>, Arc<AtomicBool>);

#[derive(Default)]
pub struct ScriptState {
    runs: Mutex<HashMap<String, ScriptedRun>>,
    spawns: Mutex<Vec<String>>,
    active: AtomicUsize,
}

/// Spawner whose runners stay up until stopped and never write anything.
#[derive(Clone, Default)]
pub struct Scripted(pub Arc<ScriptState>);

struct ScriptedHandle {
    stopped: Arc<AtomicBool>,
    state: Arc<ScriptState>,
}

impl RunnerHandle for ScriptedHandle {
    fn stop(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            self.state.active.fetch_sub(1, Ordering::SeqCst);
        }
        Box::pin(async {})
    }
}

impl RunnerSpawner for Scripted {
    fn spawn(&self, ctx: RunnerContext) -> Box<dyn RunnerHandle> {
        let stopped = Arc::new(AtomicBool::new(false));
        self.0.active.fetch_add(1, Ordering::SeqCst);
        self.0.spawns.lock().unwrap().push(ctx.task_id.clone());
        self.0
            .runs
            .lock()
            .unwrap()
            .insert(ctx.task_id.clone(), (ctx.observer.clone(), stopped.clone()));
        Box::new(ScriptedHandle {
            stopped,
            state: self.0.clone(),
        })
    }
}

impl Scripted {
    pub fn spawner(&self) -> Arc<dyn RunnerSpawner> {
        Arc::new(self.clone())
    }
    /// The observer of the latest runner of `id`.
    pub fn observer(&self, id: &str) -> Arc<dyn RunnerObserver> {
        self.0
            .runs
            .lock()
            .unwrap()
            .get(id)
            .map(|(o, _)| o.clone())
            .expect("no runner for task")
    }
    /// True while the latest runner of `id` has not been stopped.
    pub fn running(&self, id: &str) -> bool {
        self.0
            .runs
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|(_, s)| !s.load(Ordering::SeqCst))
    }
    /// Task ids in spawn order.
    pub fn spawns(&self) -> Vec<String> {
        self.0.spawns.lock().unwrap().clone()
    }
    /// Runners not stopped.
    pub fn active(&self) -> usize {
        self.0.active.load(Ordering::SeqCst)
    }
}

// -------------------------------------------------------------------------------------
// ingest

/// A running ingest; stops when dropped.
pub struct TestIngest {
    pub endpoint: String,
    _shutdown: oneshot::Sender<()>,
}

/// Starts the real ingest in-process.
pub async fn real_ingest(spool: &Path) -> TestIngest {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let config = redis_sync_ingest::config::IngestArgs::try_parse_from([
        "redis-sync-ingest",
        "--spool-dir",
        &spool.display().to_string(),
        "--metrics-listen",
        "off",
    ])
    .expect("ingest args")
    .validate()
    .expect("ingest config");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(
        redis_sync_ingest::Ingest::new(config, Metrics::new()).serve(listener, async move {
            let _ = rx.await;
        }),
    );
    TestIngest {
        endpoint,
        _shutdown: tx,
    }
}

// -------------------------------------------------------------------------------------
// Specs and polling

pub fn endpoint(addr: &str, password: Option<&str>) -> Option<RedisEndpoint> {
    Some(RedisEndpoint {
        mode: InstanceMode::Standalone as i32,
        address: addr.to_owned(),
        password: password.unwrap_or_default().to_owned(),
        ..Default::default()
    })
}

/// A standalone → standalone spec.
pub fn spec(source: &str, destination: &str, conflict: ConflictMode) -> TaskSpec {
    TaskSpec {
        source: endpoint(source, None),
        destination: endpoint(destination, None),
        conflict_mode: conflict as i32,
        ..Default::default()
    }
}

pub fn state(t: &Task) -> TaskState {
    TaskState::try_from(t.state).unwrap()
}

/// Polls GetTask until the task is in `want` (10 s deadline).
pub async fn wait_state(
    client: &mut TaskServiceClient<Channel>,
    id: &str,
    want: TaskState,
) -> Task {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = client
            .get_task(GetTaskRequest { id: id.to_owned() })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        if state(&t) == want {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} stayed {:?}, wanted {want:?}",
            state(&t)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` until true (10 s deadline).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn find<'a>(p: &'a PrecheckResult, name: &str) -> &'a PrecheckItem {
    p.items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no item {name} in {p:#?}"))
}

pub fn status(p: &PrecheckResult, name: &str) -> CheckStatus {
    CheckStatus::try_from(find(p, name).status).unwrap()
}

/// Asserts `result` is an error with `code` whose message contains `text`.
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: tonic::Code, text: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({text}), got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(text),
                "message {:?} lacks {text:?}",
                s.message()
            );
        }
    }
}
