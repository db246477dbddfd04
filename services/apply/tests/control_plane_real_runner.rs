//! The control plane driving the real data path: StartTask copies the source, the
//! runner's reports move the task to SYNCHRONIZING, Pause/Resume continue from the
//! checkpoint, a restart of apply resumes the task, Stop ends it.

mod control_plane_support;

use std::time::{Duration, Instant};

use control_plane_support::*;
use redis_sync_proto::v1::*;
use redis_sync_testkit::{RedisServer, RedisVersion};

/// Polls until the destination holds `key` = `value` (30 s deadline).
async fn wait_key(destination: &RedisServer, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = destination.cmd_str(&["GET", key]).unwrap();
        if v.as_str() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached the destination (last {v:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state_long(
    c: &mut task_service_client::TaskServiceClient<tonic::transport::Channel>,
    id: &str,
    want: TaskState,
) -> Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = c
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
            "task stayed {:?} ({}), wanted {want:?}",
            state(&t),
            t.failure_reason
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_pause_resume_restart_stop_with_the_real_runner() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    for i in 0..100 {
        source
            .cmd_ok(&["SET", &format!("k{i}"), &format!("v{i}")])
            .unwrap();
    }
    let dir = temp_dir("real-runner");
    let ingest = real_ingest(&dir.join("spool")).await;
    let config = apply_config(&dir.join("tasks.redb"), &ingest.endpoint, None);
    let apply = TestApply::start(config.clone()).await;
    let mut c = apply.client().await;

    let t = c
        .create_task(CreateTaskRequest {
            spec: Some(spec(
                &source.addr(),
                &destination.addr(),
                ConflictMode::Intercept,
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let started = c
        .start_task(StartTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&started), TaskState::InitialSync, "{started:#?}");
    wait_state_long(&mut c, &t.id, TaskState::Synchronizing).await;
    wait_key(&destination, "k99", "v99").await;
    // GetTask shows the runner's per-shard status.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = c
            .get_task(GetTaskRequest { id: t.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        let shards = t.status.map(|s| s.shards).unwrap_or_default();
        if shards
            .iter()
            .any(|s| s.phase == ShardPhase::Streaming as i32)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no streaming shard in the status: {shards:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Writes flow; pause stops them; resume catches up from the checkpoint.
    source.cmd_ok(&["SET", "live", "1"]).unwrap();
    wait_key(&destination, "live", "1").await;
    let paused = c
        .pause_task(PauseTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&paused), TaskState::Paused);
    source.cmd_ok(&["SET", "while-paused", "2"]).unwrap();
    let resumed = c
        .resume_task(ResumeTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&resumed), TaskState::Synchronizing);
    wait_key(&destination, "while-paused", "2").await;

    // apply restarts: the task continues on its own.
    drop(c);
    apply.stop().await;
    source
        .cmd_ok(&["SET", "while-apply-was-down", "3"])
        .unwrap();
    let apply = TestApply::start(config).await;
    let mut c = apply.client().await;
    wait_state_long(&mut c, &t.id, TaskState::Synchronizing).await;
    wait_key(&destination, "while-apply-was-down", "3").await;

    let stopped = c
        .stop_task(StopTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&stopped), TaskState::Stopped);
    source.cmd_ok(&["SET", "after-stop", "4"]).unwrap();
    c.delete_task(DeleteTaskRequest { id: t.id.clone() })
        .await
        .unwrap();
    drop(c);
    apply.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
