//! TaskService against real Redis servers: CRUD, every state transition (legal and
//! not), validation, paging, WatchTask, restarts on the same store, and the API token.
//!
//! The runner is scripted (it stays up until stopped and lets the test report progress,
//! completion and failure) so every state is reachable on demand; the precheck runs for
//! real, with the real ingest in-process probing the source.

mod control_plane_support;

use std::time::{Duration, Instant};

use control_plane_support::*;
use futures_util::StreamExt;
use redis_sync_apply::store::{Store, StoredTask};
use redis_sync_proto::v1::*;
use redis_sync_testkit::{RedisServer, RedisVersion};
use tonic::Code;

struct Env {
    source: RedisServer,
    destination: RedisServer,
    ingest: TestIngest,
    runners: Scripted,
    apply: TestApply,
    dir: std::path::PathBuf,
}

async fn env(tag: &str) -> Env {
    let source = RedisServer::start(RedisVersion::V7_0).expect("source");
    let destination = RedisServer::start(RedisVersion::V7_0).expect("destination");
    let dir = temp_dir(tag);
    let ingest = real_ingest(&dir.join("spool")).await;
    let runners = Scripted::default();
    let apply = TestApply::start_with(
        apply_config(&dir.join("tasks.redb"), &ingest.endpoint, None),
        runners.spawner(),
    )
    .await;
    Env {
        source,
        destination,
        ingest,
        runners,
        apply,
        dir,
    }
}

impl Env {
    fn spec(&self) -> TaskSpec {
        spec(
            &self.source.addr(),
            &self.destination.addr(),
            ConflictMode::Intercept,
        )
    }
}

async fn create(
    c: &mut task_service_client::TaskServiceClient<tonic::transport::Channel>,
    spec: TaskSpec,
) -> Task {
    c.create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

fn id(id: &str) -> String {
    id.to_owned()
}

#[tokio::test]
async fn create_get_delete_and_validation() {
    let e = env("crud").await;
    let mut c = e.apply.client().await;

    let mut s = e.spec();
    s.source.as_mut().unwrap().password = "src-secret".into();
    s.databases = vec![0, 3];
    s.db_mapping.insert(3, 4);
    let t = create(&mut c, s).await;
    assert_eq!(state(&t), TaskState::NotStarted);
    assert!(uuid::Uuid::parse_str(&t.id).is_ok(), "{}", t.id);
    let spec = t.spec.clone().unwrap();
    assert_eq!(spec.name, format!("task-{}", &t.id[..8]));
    assert_eq!(
        spec.ingest_endpoint, e.ingest.endpoint,
        "empty endpoint takes apply's default"
    );
    assert_eq!(spec.sync_type, SyncType::FullAndIncremental as i32);
    assert_eq!(
        spec.heartbeat.as_ref().unwrap().key_prefix,
        "DTS_REDIS_TIMESTAMP_HEARTBEAT"
    );
    assert_eq!(spec.databases, vec![0, 3]);
    assert_eq!(spec.db_mapping.get(&3), Some(&4));
    let src = spec.source.unwrap();
    assert!(src.password.is_empty() && src.password_set);
    assert!(!spec.destination.unwrap().password_set);
    assert!(t.create_time.is_some() && t.update_time.is_some());

    let got = c
        .get_task(GetTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.id, t.id);
    assert_eq!(got.spec, t.spec);

    let mut named = e.spec();
    named.name = "nightly copy".into();
    named.ingest_endpoint = "https://ingest.example:443".into();
    let n = create(&mut c, named).await;
    assert_eq!(n.spec.as_ref().unwrap().name, "nightly copy");
    assert_eq!(
        n.spec.as_ref().unwrap().ingest_endpoint,
        "https://ingest.example:443"
    );

    // Bad fields are named.
    type Edit = Box<dyn Fn(&mut TaskSpec)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|s| s.source = None), "spec.source: required"),
        (
            Box::new(|s| s.source.as_mut().unwrap().address = "localhost".into()),
            "spec.source.address:",
        ),
        (
            Box::new(|s| s.destination.as_mut().unwrap().address = "h:99999".into()),
            "spec.destination.address:",
        ),
        (
            Box::new(|s| s.source.as_mut().unwrap().mode = 0),
            "spec.source.mode:",
        ),
        (
            Box::new(|s| s.destination.as_mut().unwrap().mode = 7),
            "spec.destination.mode:",
        ),
        (Box::new(|s| s.conflict_mode = 0), "spec.conflict_mode:"),
        (
            Box::new(|s| s.databases = vec![0, 16]),
            "spec.databases[1]:",
        ),
        (Box::new(|s| s.databases = vec![2, 2]), "spec.databases[1]:"),
        (
            Box::new(|s| {
                s.databases = vec![1];
                s.db_mapping.insert(1, 20);
            }),
            "spec.db_mapping[1]:",
        ),
        (
            Box::new(|s| {
                s.heartbeat = Some(HeartbeatOptions {
                    interval_ms: 60_001,
                    ..Default::default()
                })
            }),
            "spec.heartbeat.interval_ms:",
        ),
        (
            Box::new(|s| {
                s.heartbeat = Some(HeartbeatOptions {
                    interval_ms: 99,
                    ..Default::default()
                })
            }),
            "spec.heartbeat.interval_ms:",
        ),
        (
            Box::new(|s| s.ingest_endpoint = "127.0.0.1:50051".into()),
            "spec.ingest_endpoint:",
        ),
        (Box::new(|s| s.sync_type = 9), "spec.sync_type:"),
        (
            Box::new(|s| {
                s.source.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
                s.databases = vec![1];
            }),
            "spec.databases[0]:",
        ),
        (
            Box::new(|s| {
                s.destination.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
                s.databases = vec![2];
                s.db_mapping.insert(2, 1);
            }),
            "spec.db_mapping[2]:",
        ),
    ];
    for (edit, field) in cases {
        let mut s = e.spec();
        edit(&mut s);
        assert_code(
            c.create_task(CreateTaskRequest { spec: Some(s) }).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_code(
        c.create_task(CreateTaskRequest { spec: None }).await,
        Code::InvalidArgument,
        "spec: required",
    );
    // Heartbeat interval 0 (default) and the bounds are accepted.
    for ms in [0, 100, 60_000] {
        let mut s = e.spec();
        s.heartbeat = Some(HeartbeatOptions {
            interval_ms: ms,
            ..Default::default()
        });
        create(&mut c, s).await;
    }

    // Unknown ids and empty ids.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_code(
        c.get_task(GetTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.start_task(StartTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.pause_task(PauseTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.resume_task(ResumeTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.stop_task(StopTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.delete_task(DeleteTaskRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.run_precheck(RunPrecheckRequest {
            id: unknown.clone(),
        })
        .await,
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.watch_task(WatchTaskRequest {
            id: unknown.clone(),
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        &unknown,
    );
    assert_code(
        c.get_task(GetTaskRequest { id: String::new() }).await,
        Code::InvalidArgument,
        "id: required",
    );

    // Delete a NOT_STARTED task.
    c.delete_task(DeleteTaskRequest { id: id(&t.id) })
        .await
        .unwrap();
    assert_code(
        c.get_task(GetTaskRequest { id: t.id.clone() }).await,
        Code::NotFound,
        &t.id,
    );
    assert_code(
        c.delete_task(DeleteTaskRequest { id: id(&t.id) }).await,
        Code::NotFound,
        &t.id,
    );
}

#[tokio::test]
async fn every_transition_legal_and_illegal() {
    let e = env("states").await;
    let mut c = e.apply.client().await;
    let t = create(&mut c, e.spec()).await;
    let tid = t.id.clone();

    // From NOT_STARTED only Start, RunPrecheck and Delete are allowed.
    assert_code(
        c.pause_task(PauseTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is NOT_STARTED",
    );
    assert_code(
        c.resume_task(ResumeTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is NOT_STARTED",
    );
    assert_code(
        c.stop_task(StopTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is NOT_STARTED",
    );

    // Start: the precheck passes on an empty destination → INITIAL_SYNC with a runner.
    let started = c
        .start_task(StartTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        state(&started),
        TaskState::InitialSync,
        "{:#?}",
        started.precheck
    );
    let pre = started.precheck.as_ref().unwrap();
    assert!(pre.passed, "{pre:#?}");
    assert!(pre.time.is_some());
    assert!(e.runners.running(&tid));
    assert_eq!(e.runners.spawns(), vec![tid.clone()]);

    // Running: Start, Delete and RunPrecheck refuse, naming the state.
    assert_code(
        c.start_task(StartTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is INITIAL_SYNC",
    );
    assert_code(
        c.delete_task(DeleteTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is INITIAL_SYNC",
    );
    assert_code(
        c.run_precheck(RunPrecheckRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is INITIAL_SYNC",
    );
    assert_code(
        c.resume_task(ResumeTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is INITIAL_SYNC",
    );

    // The runner reports progress: GetTask shows it.
    let obs = e.runners.observer(&tid);
    obs.status(TaskStatus {
        progress_percent: 42.5,
        shards: vec![ShardStatus {
            shard_id: "standalone".into(),
            phase: ShardPhase::Snapshot as i32,
            keys_done: 425,
            keys_estimated: 1000,
            ..Default::default()
        }],
        heartbeat_delay_ms: -1,
    });
    let got = c
        .get_task(GetTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let st = got.status.unwrap();
    assert_eq!(st.progress_percent, 42.5);
    assert_eq!(st.shards[0].keys_done, 425);

    // Full copy done → SYNCHRONIZING; a new full copy → INITIAL_SYNC; done again.
    obs.initial_sync_done();
    wait_state(&mut c, &tid, TaskState::Synchronizing).await;
    obs.initial_sync_started();
    wait_state(&mut c, &tid, TaskState::InitialSync).await;
    obs.initial_sync_done();
    wait_state(&mut c, &tid, TaskState::Synchronizing).await;

    // Pause stops the runner; a late callback of the stopped runner changes nothing.
    let paused = c
        .pause_task(PauseTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&paused), TaskState::Paused);
    assert!(!e.runners.running(&tid));
    assert_eq!(
        paused.status.unwrap().progress_percent,
        42.5,
        "the last status is kept"
    );
    obs.failed("late failure of a stopped runner".into());
    obs.initial_sync_started();
    let still = c
        .get_task(GetTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&still), TaskState::Paused);
    assert!(still.failure_reason.is_empty());
    assert_code(
        c.pause_task(PauseTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is PAUSED",
    );
    assert_code(
        c.start_task(StartTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is PAUSED",
    );
    assert_code(
        c.delete_task(DeleteTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is PAUSED",
    );
    // RunPrecheck works while paused and is stored on the task.
    let pre = c
        .run_precheck(RunPrecheckRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .precheck
        .unwrap();
    let stored = c
        .get_task(GetTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(stored.precheck.as_ref().unwrap().time, pre.time);
    assert_eq!(state(&stored), TaskState::Paused);

    // Resume returns to the state before the pause, with a new runner.
    let resumed = c
        .resume_task(ResumeTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&resumed), TaskState::Synchronizing);
    assert!(e.runners.running(&tid));
    assert_eq!(e.runners.spawns().len(), 2);

    // The runner fails → FAILED with the reason; Resume (after a fix) continues.
    e.runners
        .observer(&tid)
        .failed("destination answered OOM for SET k".into());
    let failed = wait_state(&mut c, &tid, TaskState::Failed).await;
    assert_eq!(failed.failure_reason, "destination answered OOM for SET k");
    assert_code(
        c.pause_task(PauseTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is FAILED",
    );
    assert_code(
        c.start_task(StartTaskRequest { id: id(&tid) }).await,
        Code::FailedPrecondition,
        "is FAILED",
    );
    let again = c
        .resume_task(ResumeTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&again), TaskState::Synchronizing);
    assert!(again.failure_reason.is_empty());
    assert_eq!(e.runners.spawns().len(), 3);

    // Stop ends it for good.
    let stopped = c
        .stop_task(StopTaskRequest { id: id(&tid) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&stopped), TaskState::Stopped);
    assert!(!e.runners.running(&tid));
    for r in [
        c.start_task(StartTaskRequest { id: id(&tid) })
            .await
            .map(|_| ()),
        c.pause_task(PauseTaskRequest { id: id(&tid) })
            .await
            .map(|_| ()),
        c.resume_task(ResumeTaskRequest { id: id(&tid) })
            .await
            .map(|_| ()),
        c.stop_task(StopTaskRequest { id: id(&tid) })
            .await
            .map(|_| ()),
    ] {
        assert_code(r, Code::FailedPrecondition, "is STOPPED");
    }
    c.run_precheck(RunPrecheckRequest { id: id(&tid) })
        .await
        .unwrap();
    c.delete_task(DeleteTaskRequest { id: id(&tid) })
        .await
        .unwrap();

    // Stop from PAUSED and from FAILED, Delete from FAILED.
    let p = create(&mut c, e.spec()).await;
    c.start_task(StartTaskRequest { id: id(&p.id) })
        .await
        .unwrap();
    c.pause_task(PauseTaskRequest { id: id(&p.id) })
        .await
        .unwrap();
    let s = c
        .stop_task(StopTaskRequest { id: id(&p.id) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&s), TaskState::Stopped);
    let f = create(&mut c, e.spec()).await;
    c.start_task(StartTaskRequest { id: id(&f.id) })
        .await
        .unwrap();
    e.runners.observer(&f.id).failed("boom".into());
    wait_state(&mut c, &f.id, TaskState::Failed).await;
    c.delete_task(DeleteTaskRequest { id: id(&f.id) })
        .await
        .unwrap();
    let f2 = create(&mut c, e.spec()).await;
    c.start_task(StartTaskRequest { id: id(&f2.id) })
        .await
        .unwrap();
    e.runners.observer(&f2.id).failed("boom".into());
    wait_state(&mut c, &f2.id, TaskState::Failed).await;
    let s = c
        .stop_task(StopTaskRequest { id: id(&f2.id) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&s), TaskState::Stopped);

    // A precheck failure: PRECHECK_FAILED, then Start again once fixed.
    e.destination.cmd_ok(&["SET", "in-the-way", "1"]).unwrap();
    let pf = create(&mut c, e.spec()).await;
    let r = c
        .start_task(StartTaskRequest { id: id(&pf.id) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&r), TaskState::PrecheckFailed);
    assert!(
        r.failure_reason.contains("destination_empty"),
        "{}",
        r.failure_reason
    );
    for r in [
        c.pause_task(PauseTaskRequest { id: id(&pf.id) })
            .await
            .map(|_| ()),
        c.resume_task(ResumeTaskRequest { id: id(&pf.id) })
            .await
            .map(|_| ()),
        c.stop_task(StopTaskRequest { id: id(&pf.id) })
            .await
            .map(|_| ()),
    ] {
        assert_code(r, Code::FailedPrecondition, "is PRECHECK_FAILED");
    }
    e.destination.cmd_ok(&["FLUSHALL"]).unwrap();
    let r = c
        .start_task(StartTaskRequest { id: id(&pf.id) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&r), TaskState::InitialSync);
    assert!(r.failure_reason.is_empty());
    e.apply.stop().await;
    assert_eq!(e.runners.active(), 0, "shutdown stops every runner");
    let _ = std::fs::remove_dir_all(&e.dir);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_state() {
    let e = env("list").await;
    let mut c = e.apply.client().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(create(&mut c, e.spec()).await.id);
    }
    ids.reverse(); // newest first

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_tasks(ListTasksRequest {
                state: 0,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(r.tasks.len() <= 3);
        seen.extend(r.tasks.iter().map(|t| t.id.clone()));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // Default and capped page sizes.
    let all = c
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.tasks.len(), 7);
    assert!(all.next_page_token.is_empty());
    let big = c
        .list_tasks(ListTasksRequest {
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.tasks.len(), 7);

    // State filter: two go to PRECHECK_FAILED (destination unreachable), one STOPPED.
    let mut bad = e.spec();
    bad.destination.as_mut().unwrap().address = closed_addr().await;
    let pf1 = create(&mut c, bad.clone()).await.id;
    let pf2 = create(&mut c, bad).await.id;
    for id in [&pf1, &pf2] {
        let t = c
            .start_task(StartTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        assert_eq!(state(&t), TaskState::PrecheckFailed);
    }
    c.start_task(StartTaskRequest { id: ids[0].clone() })
        .await
        .unwrap();
    c.stop_task(StopTaskRequest { id: ids[0].clone() })
        .await
        .unwrap();

    let list = |state: TaskState, page_size: u32, page_token: String| ListTasksRequest {
        state: state as i32,
        page_size,
        page_token,
    };
    let r = c
        .list_tasks(list(TaskState::PrecheckFailed, 1, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![pf2.clone()]
    );
    let r2 = c
        .list_tasks(list(
            TaskState::PrecheckFailed,
            1,
            r.next_page_token.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r2.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![pf1.clone()]
    );
    assert!(r2.next_page_token.is_empty());
    let stopped = c
        .list_tasks(list(TaskState::Stopped, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.tasks.len(), 1);
    assert_eq!(stopped.tasks[0].id, ids[0]);
    let not_started = c
        .list_tasks(list(TaskState::NotStarted, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(not_started.tasks.len(), 6);
    assert!(
        not_started
            .tasks
            .iter()
            .all(|t| state(t) == TaskState::NotStarted)
    );

    // Bad tokens and filters.
    assert_code(
        c.list_tasks(list(TaskState::Unspecified, 0, "garbage".into()))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_code(
        c.list_tasks(list(TaskState::Stopped, 1, r.next_page_token))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_code(
        c.list_tasks(ListTasksRequest {
            state: 42,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "state",
    );
}

async fn next(s: &mut tonic::Streaming<WatchTaskResponse>) -> Option<Task> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("no watch update within 5 s")
        .map(|r| r.expect("watch error").task.unwrap())
}

#[tokio::test]
async fn watch_sends_now_on_change_periodically_and_ends_on_delete() {
    let e = env("watch").await;
    let mut c = e.apply.client().await;
    let t = create(&mut c, e.spec()).await;
    let mut stream = c
        .watch_task(WatchTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.unwrap();
    assert_eq!(state(&first), TaskState::NotStarted);

    // A change arrives promptly (the precheck state or the final one).
    let mut c2 = e.apply.client().await;
    let started = Instant::now();
    c2.start_task(StartTaskRequest { id: t.id.clone() })
        .await
        .unwrap();
    let mut last = next(&mut stream).await.unwrap();
    while state(&last) != TaskState::InitialSync {
        last = next(&mut stream).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Runner status updates are streamed.
    e.runners.observer(&t.id).status(TaskStatus {
        progress_percent: 77.0,
        heartbeat_delay_ms: 12,
        ..Default::default()
    });
    let mut got = next(&mut stream).await.unwrap();
    while got.status.as_ref().map(|s| s.progress_percent) != Some(77.0) {
        got = next(&mut stream).await.unwrap();
    }

    // Nothing changes: still an update within ~2 s.
    let quiet = Instant::now();
    let idle = next(&mut stream).await.unwrap();
    assert_eq!(idle.id, t.id);
    assert!(
        quiet.elapsed() >= Duration::from_millis(1500),
        "keepalive came too early: {:?}",
        quiet.elapsed()
    );
    assert!(
        quiet.elapsed() < Duration::from_millis(3500),
        "keepalive came too late: {:?}",
        quiet.elapsed()
    );

    // Stop, delete: the stream ends.
    c2.stop_task(StopTaskRequest { id: t.id.clone() })
        .await
        .unwrap();
    c2.delete_task(DeleteTaskRequest { id: t.id.clone() })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match next(&mut stream).await {
            None => break,
            Some(_) => assert!(Instant::now() < deadline, "stream did not end after delete"),
        }
    }
}

#[tokio::test]
async fn restart_keeps_every_state_and_resumes_running_tasks() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let dir = temp_dir("restart");
    let ingest = real_ingest(&dir.join("spool")).await;
    let store = dir.join("tasks.redb");
    let config = apply_config(&store, &ingest.endpoint, None);
    let spec = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    let mut unreachable = spec.clone();
    unreachable.destination.as_mut().unwrap().address = closed_addr().await;

    let first = Scripted::default();
    let apply = TestApply::start_with(config.clone(), first.spawner()).await;
    let mut c = apply.client().await;
    let not_started = create(&mut c, spec.clone()).await.id;
    let precheck_failed = create(&mut c, unreachable).await.id;
    c.start_task(StartTaskRequest {
        id: precheck_failed.clone(),
    })
    .await
    .unwrap();
    let stopped = create(&mut c, spec.clone()).await.id;
    c.start_task(StartTaskRequest {
        id: stopped.clone(),
    })
    .await
    .unwrap();
    c.stop_task(StopTaskRequest {
        id: stopped.clone(),
    })
    .await
    .unwrap();
    let paused = create(&mut c, spec.clone()).await.id;
    c.start_task(StartTaskRequest { id: paused.clone() })
        .await
        .unwrap();
    first.observer(&paused).initial_sync_done();
    wait_state(&mut c, &paused, TaskState::Synchronizing).await;
    c.pause_task(PauseTaskRequest { id: paused.clone() })
        .await
        .unwrap();
    let initial = create(&mut c, spec.clone()).await.id;
    c.start_task(StartTaskRequest {
        id: initial.clone(),
    })
    .await
    .unwrap();
    let syncing = create(&mut c, spec.clone()).await.id;
    c.start_task(StartTaskRequest {
        id: syncing.clone(),
    })
    .await
    .unwrap();
    first.observer(&syncing).initial_sync_done();
    wait_state(&mut c, &syncing, TaskState::Synchronizing).await;
    let failed = create(&mut c, spec.clone()).await.id;
    c.start_task(StartTaskRequest { id: failed.clone() })
        .await
        .unwrap();
    first.observer(&failed).failed("disk on fire".into());
    wait_state(&mut c, &failed, TaskState::Failed).await;

    let expected = [
        (&not_started, TaskState::NotStarted),
        (&precheck_failed, TaskState::PrecheckFailed),
        (&stopped, TaskState::Stopped),
        (&paused, TaskState::Paused),
        (&initial, TaskState::InitialSync),
        (&syncing, TaskState::Synchronizing),
        (&failed, TaskState::Failed),
    ];
    let before: Vec<Task> = {
        let mut v = Vec::new();
        for (id, _) in &expected {
            v.push(
                c.get_task(GetTaskRequest { id: (*id).clone() })
                    .await
                    .unwrap()
                    .into_inner()
                    .task
                    .unwrap(),
            );
        }
        v
    };
    drop(c);
    apply.stop().await;
    assert_eq!(first.active(), 0, "shutdown stops the runners");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the store holds passwords");
    }

    // A precheck cut short by a crash: simulate the record it leaves behind.
    let interrupted = {
        let s = Store::open(&store).unwrap();
        let mut rec = s.get(&not_started).unwrap().unwrap();
        let t = rec.task.as_mut().unwrap();
        t.id = uuid::Uuid::new_v4().to_string();
        t.state = TaskState::Prechecking as i32;
        let id = t.id.clone();
        s.insert(&StoredTask {
            task: rec.task.clone(),
            resume_state: 0,
        })
        .unwrap();
        id
    };

    let second = Scripted::default();
    let apply = TestApply::start_with(config, second.spawner()).await;
    let mut c = apply.client().await;
    for ((id, want), old) in expected.iter().zip(&before) {
        let t = c
            .get_task(GetTaskRequest { id: (*id).clone() })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        assert_eq!(state(&t), *want, "task {id}");
        assert_eq!(t.spec, old.spec);
        assert_eq!(t.create_time, old.create_time);
        assert_eq!(t.failure_reason, old.failure_reason);
        assert_eq!(t.precheck, old.precheck);
    }
    let pf = c
        .get_task(GetTaskRequest {
            id: precheck_failed.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert!(
        pf.failure_reason.contains("destination_reachable"),
        "{}",
        pf.failure_reason
    );
    let f = c
        .get_task(GetTaskRequest { id: failed.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(f.failure_reason, "disk on fire");
    let i = c
        .get_task(GetTaskRequest { id: interrupted })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&i), TaskState::NotStarted);

    // Exactly the running tasks got a runner again.
    let mut spawned = second.spawns();
    spawned.sort();
    let mut want = vec![initial.clone(), syncing.clone()];
    want.sort();
    assert_eq!(spawned, want);
    assert!(second.running(&initial) && second.running(&syncing));

    // The paused task resumes where it was (SYNCHRONIZING) after the restart too.
    let r = c
        .resume_task(ResumeTaskRequest { id: paused.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&r), TaskState::Synchronizing);
    drop(c);
    apply.stop().await;
    assert_eq!(second.active(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn store_errors_name_the_path() {
    let dir = temp_dir("badstore");
    let path = dir.join("missing-subdir").join("tasks.redb");
    let config = apply_config(&path, "http://127.0.0.1:1", None);
    let err = redis_sync_apply::Apply::open(config, redis_sync_telemetry::Metrics::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn api_token_guards_the_task_service_only() {
    const TOKEN: &str = "s3cr3t-token-0123456789";
    let dir = temp_dir("token");
    let apply = TestApply::start(apply_config(
        &dir.join("tasks.redb"),
        "http://127.0.0.1:1",
        Some(TOKEN),
    ))
    .await;
    let mut c = apply.client().await;

    assert_code(
        c.list_tasks(ListTasksRequest::default()).await,
        Code::Unauthenticated,
        "authorization",
    );
    let with = |value: &str| {
        let mut r = tonic::Request::new(ListTasksRequest::default());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        r
    };
    assert_code(
        c.list_tasks(with("Bearer wrong-token-0123456789")).await,
        Code::Unauthenticated,
        "wrong API token",
    );
    assert_code(
        c.list_tasks(with(TOKEN)).await,
        Code::Unauthenticated,
        "Bearer",
    );
    c.list_tasks(with(&format!("Bearer {TOKEN}")))
        .await
        .unwrap();

    // Health stays open.
    let channel = tonic::transport::Endpoint::from_shared(apply.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "redis_sync.v1.TaskService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(c);
    apply.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn verify_task_reads_the_stored_spec() {
    let e = env("verify").await;
    let mut c = e.apply.client().await;
    e.source.cmd_ok(&["SET", "only-on-source", "1"]).unwrap();
    let t = create(&mut c, e.spec()).await;
    let r = c
        .verify_task(VerifyTaskRequest {
            id: t.id.clone(),
            rounds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.differences, 1, "{r:#?}");
    let d = &r.first_differences[0];
    assert_eq!(d.key, b"only-on-source");
    assert_eq!(d.kind, DifferenceKind::Missing as i32);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_code(
        c.verify_task(VerifyTaskRequest {
            id: unknown.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &unknown,
    );
}
