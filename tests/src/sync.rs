//! Driving tasks through the public API in end-to-end tests: create, start, wait for a
//! state, verify.

use std::time::{Duration, Instant};

use redis_sync_proto::v1::{
    ConflictMode, CreateTaskRequest, GetTaskRequest, InstanceMode, RedisEndpoint, StartTaskRequest,
    StopTaskRequest, Task, TaskSpec, TaskState, VerifyTaskRequest, VerifyTaskResponse,
    task_service_client::TaskServiceClient,
};
use tonic::transport::Channel;

use crate::ServiceProcess;

/// Ingest and apply as processes with default settings, apply pointed at ingest, both
/// healthy.
pub async fn start_services() -> (ServiceProcess, ServiceProcess) {
    let ingest = ServiceProcess::ingest(&[]).expect("ingest");
    let apply = ServiceProcess::apply(&ingest.endpoint(), &[]).expect("apply");
    ingest.wait_healthy().await.expect("ingest healthy");
    apply.wait_healthy().await.expect("apply healthy");
    (ingest, apply)
}

/// A TaskService client connected to an apply process.
pub async fn task_client(endpoint: String) -> TaskServiceClient<Channel> {
    TaskServiceClient::connect(endpoint)
        .await
        .expect("connect to apply")
}

/// An endpoint for a standalone server at `addr`.
pub fn standalone(addr: String) -> RedisEndpoint {
    RedisEndpoint {
        mode: InstanceMode::Standalone as i32,
        address: addr,
        ..Default::default()
    }
}

/// An endpoint for a cluster reachable through `addr`.
pub fn cluster(addr: String) -> RedisEndpoint {
    RedisEndpoint {
        mode: InstanceMode::Cluster as i32,
        address: addr,
        ..Default::default()
    }
}

/// A task spec from `source` to `destination`, INTERCEPT, all databases.
pub fn spec(name: &str, source: RedisEndpoint, destination: RedisEndpoint) -> TaskSpec {
    TaskSpec {
        name: name.to_owned(),
        source: Some(source),
        destination: Some(destination),
        conflict_mode: ConflictMode::Intercept as i32,
        ..Default::default()
    }
}

/// Creates and starts a task; panics with the precheck when it does not start.
pub async fn create_and_start(client: &mut TaskServiceClient<Channel>, spec: TaskSpec) -> String {
    let task = client
        .create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .expect("CreateTask")
        .into_inner()
        .task
        .expect("task");
    let started = client
        .start_task(StartTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("StartTask")
        .into_inner()
        .task
        .expect("task");
    assert_ne!(
        started.state,
        TaskState::PrecheckFailed as i32,
        "precheck failed: {:#?}",
        started.precheck
    );
    task.id
}

/// The task as GetTask returns it.
pub async fn get(client: &mut TaskServiceClient<Channel>, id: &str) -> Task {
    client
        .get_task(GetTaskRequest { id: id.to_owned() })
        .await
        .expect("GetTask")
        .into_inner()
        .task
        .expect("task")
}

/// Waits until the task is in `state`; panics on FAILED or after `timeout`.
pub async fn wait_state(
    client: &mut TaskServiceClient<Channel>,
    id: &str,
    state: TaskState,
    timeout: Duration,
) -> Task {
    let deadline = Instant::now() + timeout;
    loop {
        let task = get(client, id).await;
        if task.state == state as i32 {
            return task;
        }
        assert_ne!(
            task.state,
            TaskState::Failed as i32,
            "task failed: {}",
            task.failure_reason
        );
        assert!(
            Instant::now() < deadline,
            "task never reached {state:?}: {task:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs VerifyTask until it reports no difference (writes in flight converge), or
/// returns the last report after `timeout`. A VerifyTask that fails is tried again, as an
/// operator would (each failure is printed); one still failing at `timeout` panics with
/// its status.
pub async fn verify_until_equal(
    client: &mut TaskServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> VerifyTaskResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client
            .verify_task(VerifyTaskRequest {
                id: id.to_owned(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(report) => {
                let report = report.into_inner();
                if report.differences == 0 || Instant::now() >= deadline {
                    return report;
                }
            }
            Err(status) => {
                assert!(Instant::now() < deadline, "VerifyTask: {status:?}");
                eprintln!("VerifyTask failed, trying again: {status:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Stops a task.
pub async fn stop(client: &mut TaskServiceClient<Channel>, id: &str) {
    client
        .stop_task(StopTaskRequest { id: id.to_owned() })
        .await
        .expect("StopTask");
}
