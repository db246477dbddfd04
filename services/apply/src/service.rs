//! `redis_sync.v1.TaskService`: the gRPC face of apply. It checks request shapes,
//! delegates to the [`TaskManager`] and blanks passwords on the way out.

use std::pin::Pin;

use futures_util::StreamExt;
use redis_sync_proto::v1::{task_service_server::TaskService, *};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{manager::TaskManager, task::redact};

/// The TaskService implementation.
#[derive(Debug, Clone)]
pub struct TaskApi {
    manager: TaskManager,
}

impl TaskApi {
    /// A service over `manager`.
    pub fn new(manager: TaskManager) -> Self {
        Self { manager }
    }
}

/// The id of a request: required, and short enough to be an id (ids are UUIDs).
fn id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id: required"));
    }
    if id.len() > 128 {
        return Err(Status::invalid_argument("id: longer than 128 bytes"));
    }
    Ok(id)
}

/// Most verification rounds a VerifyTask may ask for. Rounds after the first are a second
/// apart and repeat while any key still differs, so u32::MAX rounds would hold the call,
/// and a connection to each end, for a century.
const MAX_VERIFY_ROUNDS: u32 = 100;

/// A task ready to leave the process: passwords blanked.
fn out(mut task: Task) -> Option<Task> {
    redact(&mut task);
    Some(task)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let task = self.manager.create(request.into_inner().spec)?;
        Ok(Response::new(CreateTaskResponse { task: out(task) }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let task = self.manager.get(id(&request.get_ref().id)?)?;
        Ok(Response::new(GetTaskResponse { task: out(task) }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let r = request.into_inner();
        let (tasks, next_page_token) = self.manager.list(r.state, r.page_size, &r.page_token)?;
        let tasks = tasks
            .into_iter()
            .map(|mut t| {
                redact(&mut t);
                t
            })
            .collect();
        Ok(Response::new(ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn start_task(
        &self,
        request: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let task = self.manager.start(id(&request.get_ref().id)?).await?;
        Ok(Response::new(StartTaskResponse { task: out(task) }))
    }

    async fn pause_task(
        &self,
        request: Request<PauseTaskRequest>,
    ) -> Result<Response<PauseTaskResponse>, Status> {
        let task = self.manager.pause(id(&request.get_ref().id)?).await?;
        Ok(Response::new(PauseTaskResponse { task: out(task) }))
    }

    async fn resume_task(
        &self,
        request: Request<ResumeTaskRequest>,
    ) -> Result<Response<ResumeTaskResponse>, Status> {
        let task = self.manager.resume(id(&request.get_ref().id)?).await?;
        Ok(Response::new(ResumeTaskResponse { task: out(task) }))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let task = self.manager.stop(id(&request.get_ref().id)?).await?;
        Ok(Response::new(StopTaskResponse { task: out(task) }))
    }

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteTaskResponse>, Status> {
        self.manager.delete(id(&request.get_ref().id)?).await?;
        Ok(Response::new(DeleteTaskResponse {}))
    }

    async fn run_precheck(
        &self,
        request: Request<RunPrecheckRequest>,
    ) -> Result<Response<RunPrecheckResponse>, Status> {
        let precheck = self
            .manager
            .run_precheck(id(&request.get_ref().id)?)
            .await?;
        Ok(Response::new(RunPrecheckResponse {
            precheck: Some(precheck),
        }))
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let updates = self.manager.watch(id(&request.get_ref().id)?)?;
        let stream = updates.map(|r| {
            r.map(|t| WatchTaskResponse { task: out(t) })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_task(
        &self,
        request: Request<VerifyTaskRequest>,
    ) -> Result<Response<VerifyTaskResponse>, Status> {
        let r = request.into_inner();
        if r.rounds > MAX_VERIFY_ROUNDS {
            return Err(Status::invalid_argument(format!(
                "rounds: {} is more than {MAX_VERIFY_ROUNDS}",
                r.rounds
            )));
        }
        // The stored spec, passwords included: verification reads both ends.
        let task = self.manager.get(id(&r.id)?)?;
        let spec = task.spec.unwrap_or_default();
        let report = crate::verify::verify(
            &task.id,
            &spec,
            crate::verify::VerifyOptions::from_request(&r),
        )
        .await?;
        Ok(Response::new(report))
    }
}
