//! Passwords are write-only: absent from every TaskService response and from the logs
//! (captured at TRACE level while every RPC runs, including failing ones).

mod control_plane_support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use control_plane_support::*;
use futures_util::StreamExt;
use redis_sync_proto::v1::*;
use redis_sync_testkit::{RedisServer, RedisVersion};

const SOURCE_PW: &str = "SRC-pass-1f3b9e";
const DEST_PW: &str = "DST-pass-9c2e41";
const WRONG_PW: &str = "WRONG-pass-77aa0d";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn passwords_never_appear_in_responses_or_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // Everything below runs on this thread (current-thread runtime), so the guard sees
    // apply's spawned operations too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let source = RedisServer::builder(RedisVersion::V7_0)
        .password(SOURCE_PW)
        .start()
        .unwrap();
    let destination = RedisServer::builder(RedisVersion::V7_0)
        .password(DEST_PW)
        .start()
        .unwrap();
    let dir = temp_dir("secrets");
    let ingest = real_ingest(&dir.join("spool")).await;
    let runners = Scripted::default();
    let apply = TestApply::start_with(
        apply_config(&dir.join("tasks.redb"), &ingest.endpoint, None),
        runners.spawner(),
    )
    .await;
    let mut c = apply.client().await;
    let mut seen: Vec<String> = Vec::new();

    let mut spec = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    spec.source.as_mut().unwrap().password = SOURCE_PW.into();
    spec.destination.as_mut().unwrap().password = DEST_PW.into();

    let t = c
        .create_task(CreateTaskRequest {
            spec: Some(spec.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    seen.push(format!("{t:?}"));
    let id = t.task.unwrap().id;
    let got = c
        .get_task(GetTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let ep = got
        .task
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .destination
        .clone()
        .unwrap();
    assert!(ep.password.is_empty() && ep.password_set);
    seen.push(format!("{got:?}"));
    seen.push(format!(
        "{:?}",
        c.list_tasks(ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner()
    ));
    let mut watch = c
        .watch_task(WatchTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    seen.push(format!("{first:?}"));

    let started = c
        .start_task(StartTaskRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(started.task.as_ref().unwrap()),
        TaskState::InitialSync,
        "{started:#?}"
    );
    seen.push(format!("{started:?}"));
    // The runner gets the passwords: it needs them.
    let upd = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    seen.push(format!("{upd:?}"));
    seen.push(format!(
        "{:?}",
        c.pause_task(PauseTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    ));
    seen.push(format!(
        "{:?}",
        c.run_precheck(RunPrecheckRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    ));
    seen.push(format!(
        "{:?}",
        c.resume_task(ResumeTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    ));
    runners.observer(&id).failed("runner failed".into());
    wait_state(&mut c, &id, TaskState::Failed).await;
    seen.push(format!(
        "{:?}",
        c.stop_task(StopTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
    ));

    // A wrong destination password: the precheck fails and says why, without the password.
    let mut wrong = spec.clone();
    wrong.destination.as_mut().unwrap().password = WRONG_PW.into();
    let w = c
        .create_task(CreateTaskRequest {
            spec: Some(wrong.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let r = c
        .start_task(StartTaskRequest { id: w.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let task = r.task.clone().unwrap();
    assert_eq!(state(&task), TaskState::PrecheckFailed);
    assert!(
        task.failure_reason.contains("destination_reachable"),
        "{}",
        task.failure_reason
    );
    seen.push(format!("{r:?}"));

    // Rejected requests that carry passwords.
    let mut invalid = wrong.clone();
    invalid.source.as_mut().unwrap().address = "bad address".into();
    let e = c
        .create_task(CreateTaskRequest {
            spec: Some(invalid),
        })
        .await
        .unwrap_err();
    seen.push(format!("{e:?}"));
    let e = c
        .start_task(StartTaskRequest { id: id.clone() })
        .await
        .unwrap_err();
    seen.push(format!("{e:?}"));

    c.delete_task(DeleteTaskRequest { id: id.clone() })
        .await
        .unwrap();
    drop(watch);
    drop(c);
    apply.stop().await;

    for pw in [SOURCE_PW, DEST_PW, WRONG_PW] {
        for s in &seen {
            assert!(!s.contains(pw), "a response contains a password: {s}");
        }
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("task created"),
        "log capture did not work:\n{text}"
    );
    assert!(
        text.contains("task state changed"),
        "log capture did not work:\n{text}"
    );
    for pw in [SOURCE_PW, DEST_PW, WRONG_PW] {
        if let Some(at) = text.find(pw) {
            let from = text[..at].rfind('\n').unwrap_or(0);
            panic!(
                "the logs contain a password: {}",
                &text[from..(at + pw.len() + 80).min(text.len())]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
