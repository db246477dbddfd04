//! The precheck against real Redis servers of several versions.
//!
//! Destination items are judged by apply itself; source facts come through ingest's
//! ProbeSource, with the real ingest running in-process.

mod control_plane_support;

use std::time::{Duration, Instant};

use control_plane_support::*;
use redis_sync_apply::precheck::items;
use redis_sync_proto::v1::*;
use redis_sync_testkit::{RedisServer, RedisVersion};
use tonic::Code;

struct Fixture {
    _ingest: TestIngest,
    runners: Scripted,
    apply: TestApply,
    dir: std::path::PathBuf,
}

async fn fixture(tag: &str) -> Fixture {
    let dir = temp_dir(tag);
    let ingest = real_ingest(&dir.join("spool")).await;
    let runners = Scripted::default();
    let apply = TestApply::start_with(
        apply_config(&dir.join("tasks.redb"), &ingest.endpoint, None),
        runners.spawner(),
    )
    .await;
    Fixture {
        _ingest: ingest,
        runners,
        apply,
        dir,
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a task for `spec` and runs its precheck.
async fn precheck(f: &Fixture, spec: TaskSpec) -> PrecheckResult {
    let mut c = f.apply.client().await;
    let t = c
        .create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let p = c
        .run_precheck(RunPrecheckRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .precheck
        .unwrap();
    // The result is stored on the task.
    let stored = c
        .get_task(GetTaskRequest { id: t.id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(stored.precheck.as_ref(), Some(&p));
    p
}

fn failed(p: &PrecheckResult) -> Vec<&str> {
    p.items
        .iter()
        .filter(|i| i.status == CheckStatus::Failed as i32)
        .map(|i| i.name.as_str())
        .collect()
}

fn reason<'a>(p: &'a PrecheckResult, name: &str) -> &'a str {
    &find(p, name).reason
}

#[tokio::test]
async fn healthy_pair_passes_with_every_item_named() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let f = fixture("healthy").await;
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert!(p.passed, "{p:#?}");
    let names: Vec<&str> = p.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            items::INGEST_REACHABLE,
            items::SOURCE_REACHABLE,
            items::SOURCE_MODE,
            items::SOURCE_VERSION,
            items::SOURCE_PSYNC,
            items::SOURCE_REPLICATION_SETTINGS,
            items::HEARTBEAT_KEY,
            items::DESTINATION_REACHABLE,
            items::DESTINATION_MODE,
            items::DESTINATION_ROLE,
            items::DESTINATION_VERSION,
            items::DESTINATION_EMPTY,
            items::DESTINATION_EVICTION,
            items::DESTINATION_MEMORY,
            items::DESTINATION_MODULES,
        ]
    );
    for i in &p.items {
        assert_ne!(i.status, CheckStatus::Unspecified as i32, "{i:?}");
        assert!(!i.reason.is_empty(), "{i:?}");
        if i.status != CheckStatus::Passed as i32 {
            assert!(!i.fix.is_empty(), "{i:?}");
        }
    }
    // Default repl-backlog-size is 1 MiB: a warning, not a failure.
    assert_eq!(
        status(&p, items::SOURCE_REPLICATION_SETTINGS),
        CheckStatus::Warning
    );
    assert!(reason(&p, items::SOURCE_REPLICATION_SETTINGS).contains("repl-backlog-size"));
    assert_eq!(status(&p, items::HEARTBEAT_KEY), CheckStatus::Passed);
    assert!(reason(&p, items::HEARTBEAT_KEY).contains("written by ingest"));
    assert_eq!(status(&p, items::DESTINATION_MEMORY), CheckStatus::Passed);

    // Raised settings pass; a disabled heartbeat warns.
    source
        .cmd_ok(&["CONFIG", "SET", "repl-backlog-size", "67108864"])
        .unwrap();
    let mut s = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    s.heartbeat = Some(HeartbeatOptions {
        disabled: true,
        ..Default::default()
    });
    let p = precheck(&f, s).await;
    assert_eq!(
        status(&p, items::SOURCE_REPLICATION_SETTINGS),
        CheckStatus::Passed,
        "{p:#?}"
    );
    assert_eq!(status(&p, items::HEARTBEAT_KEY), CheckStatus::Warning);
    source
        .cmd_ok(&["CONFIG", "SET", "repl-timeout", "10"])
        .unwrap();
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(
        status(&p, items::SOURCE_REPLICATION_SETTINGS),
        CheckStatus::Warning
    );
    assert!(reason(&p, items::SOURCE_REPLICATION_SETTINGS).contains("repl-timeout is 10s"));
}

#[tokio::test]
async fn non_empty_destination_fails_intercept_and_warns_overwrite() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    destination.cmd_ok(&["SELECT", "0"]).unwrap();
    destination.cmd_ok(&["SET", "k", "v"]).unwrap();
    let f = fixture("empty").await;

    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert!(!p.passed);
    assert_eq!(failed(&p), [items::DESTINATION_EMPTY]);
    assert!(
        reason(&p, items::DESTINATION_EMPTY).contains("db0 (1 keys)"),
        "{p:#?}"
    );

    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Overwrite),
    )
    .await;
    assert!(p.passed, "{p:#?}");
    assert_eq!(status(&p, items::DESTINATION_EMPTY), CheckStatus::Warning);
    assert!(reason(&p, items::DESTINATION_EMPTY).contains("db0"));

    // Only the selected (mapped) databases count: source db 1 → destination db 2.
    let mut s = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    s.databases = vec![1];
    s.db_mapping.insert(1, 2);
    let p = precheck(&f, s.clone()).await;
    assert_eq!(
        status(&p, items::DESTINATION_EMPTY),
        CheckStatus::Passed,
        "{p:#?}"
    );
    let mut c = destination.client().unwrap();
    c.cmd_str(&["SELECT", "2"]).unwrap();
    c.cmd_str(&["SET", "x", "1"]).unwrap();
    let p = precheck(&f, s).await;
    assert_eq!(status(&p, items::DESTINATION_EMPTY), CheckStatus::Failed);
    assert!(
        reason(&p, items::DESTINATION_EMPTY).contains("db2"),
        "{p:#?}"
    );
}

#[tokio::test]
async fn destination_older_than_source_fails() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V5_0).unwrap();
    let f = fixture("version").await;
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(failed(&p), [items::DESTINATION_VERSION], "{p:#?}");
    let r = reason(&p, items::DESTINATION_VERSION);
    assert!(r.contains("5.0.6") && r.contains("7.0"), "{r}");

    // The other way round is fine.
    let p = precheck(
        &f,
        spec(&destination.addr(), &source.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(
        status(&p, items::DESTINATION_VERSION),
        CheckStatus::Passed,
        "{p:#?}"
    );
}

#[tokio::test]
async fn evicting_destination_warns() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::builder(RedisVersion::V7_0)
        .config("maxmemory-policy", "allkeys-lru")
        .start()
        .unwrap();
    let f = fixture("eviction").await;
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert!(p.passed, "{p:#?}");
    assert_eq!(
        status(&p, items::DESTINATION_EVICTION),
        CheckStatus::Warning
    );
    assert!(reason(&p, items::DESTINATION_EVICTION).contains("allkeys-lru"));
    assert!(
        find(&p, items::DESTINATION_EVICTION)
            .fix
            .contains("noeviction")
    );
}

#[tokio::test]
async fn replica_destination_fails() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let upstream = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    destination
        .replicate_from(&upstream, Duration::from_secs(20))
        .unwrap();
    let f = fixture("replica").await;
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(failed(&p), [items::DESTINATION_ROLE], "{p:#?}");
    assert!(
        reason(&p, items::DESTINATION_ROLE)
            .contains(&format!("replica of 127.0.0.1:{}", upstream.port()))
    );
}

#[tokio::test]
async fn too_little_memory_fails() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    // About 8 MB of data on the source.
    source.cmd_ok(&["SETRANGE", "big", "8000000", "x"]).unwrap();
    let destination = RedisServer::builder(RedisVersion::V7_0)
        .config("maxmemory", "4mb")
        .start()
        .unwrap();
    let f = fixture("memory").await;
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(failed(&p), [items::DESTINATION_MEMORY], "{p:#?}");
    assert!(
        reason(&p, items::DESTINATION_MEMORY).contains("maxmemory 4194304"),
        "{p:#?}"
    );

    // Enough room passes; no limit passes.
    destination
        .cmd_ok(&["CONFIG", "SET", "maxmemory", "64mb"])
        .unwrap();
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(
        status(&p, items::DESTINATION_MEMORY),
        CheckStatus::Passed,
        "{p:#?}"
    );
    destination
        .cmd_ok(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    let p = precheck(
        &f,
        spec(&source.addr(), &destination.addr(), ConflictMode::Intercept),
    )
    .await;
    assert_eq!(status(&p, items::DESTINATION_MEMORY), CheckStatus::Passed);
    assert!(reason(&p, items::DESTINATION_MEMORY).contains("no maxmemory limit"));
}

#[tokio::test]
async fn wrong_or_missing_destination_password_fails() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::builder(RedisVersion::V7_0)
        .password("right-password")
        .start()
        .unwrap();
    let f = fixture("password").await;

    let mut s = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    s.destination.as_mut().unwrap().password = "wrong-password".into();
    let p = precheck(&f, s.clone()).await;
    assert_eq!(failed(&p), [items::DESTINATION_REACHABLE], "{p:#?}");
    let r = reason(&p, items::DESTINATION_REACHABLE);
    assert!(
        r.contains("authentication failed") && r.contains("password"),
        "{r}"
    );
    assert!(!r.contains("wrong-password"));
    // The items that need the destination are not run rather than guessed.
    assert_eq!(
        status(&p, items::DESTINATION_EMPTY),
        CheckStatus::Unspecified
    );

    s.destination.as_mut().unwrap().password = String::new();
    let p = precheck(&f, s.clone()).await;
    assert_eq!(failed(&p), [items::DESTINATION_REACHABLE], "{p:#?}");
    assert!(
        reason(&p, items::DESTINATION_REACHABLE).contains("authentication failed"),
        "{p:#?}"
    );

    s.destination.as_mut().unwrap().password = "right-password".into();
    let p = precheck(&f, s).await;
    assert!(p.passed, "{p:#?}");
}

#[tokio::test]
async fn unreachable_destination_fails_within_seconds() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let f = fixture("unreachable").await;
    let closed = closed_addr().await;
    let started = Instant::now();
    let p = precheck(&f, spec(&source.addr(), &closed, ConflictMode::Intercept)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failed(&p), [items::DESTINATION_REACHABLE], "{p:#?}");
    assert!(reason(&p, items::DESTINATION_REACHABLE).contains(&closed));

    // An address that drops packets (or has no route): bounded by the connect timeout.
    let started = Instant::now();
    let p = precheck(
        &f,
        spec(&source.addr(), "10.255.255.1:6379", ConflictMode::Intercept),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failed(&p), [items::DESTINATION_REACHABLE], "{p:#?}");
    assert!(reason(&p, items::DESTINATION_REACHABLE).contains("10.255.255.1:6379"));
}

#[tokio::test]
async fn start_refuses_on_a_failed_item() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    destination.cmd_ok(&["SET", "k", "v"]).unwrap();
    let f = fixture("refuse").await;
    let mut c = f.apply.client().await;
    let s = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    let t = c
        .create_task(CreateTaskRequest { spec: Some(s) })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let r = c
        .start_task(StartTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(state(&r), TaskState::PrecheckFailed);
    assert!(
        r.failure_reason
            .starts_with("precheck failed: destination_empty:"),
        "{}",
        r.failure_reason
    );
    assert!(!r.precheck.as_ref().unwrap().passed);
    assert!(
        f.runners.spawns().is_empty(),
        "no runner for a failed precheck"
    );
    let got = c
        .get_task(GetTaskRequest { id: t.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.precheck, r.precheck);
    assert_code(
        c.pause_task(PauseTaskRequest { id: t.id }).await,
        Code::FailedPrecondition,
        "PRECHECK_FAILED",
    );
}

#[tokio::test]
async fn old_destination_servers_are_inspected() {
    let source = RedisServer::start(RedisVersion::V2_8).unwrap();
    let f = fixture("old").await;
    for v in [RedisVersion::V2_8, RedisVersion::V3_2] {
        let destination = RedisServer::builder(v).password("old-pw").start().unwrap();
        destination.cmd_ok(&["SET", "k", "v"]).unwrap();
        let mut s = spec(&source.addr(), &destination.addr(), ConflictMode::Overwrite);
        s.destination.as_mut().unwrap().password = "old-pw".into();
        let p = precheck(&f, s).await;
        assert!(p.passed, "{v}: {p:#?}");
        assert!(
            reason(&p, items::DESTINATION_REACHABLE).contains(v.pinned()),
            "{p:#?}"
        );
        assert_eq!(status(&p, items::DESTINATION_ROLE), CheckStatus::Passed);
        assert_eq!(
            status(&p, items::DESTINATION_EMPTY),
            CheckStatus::Warning,
            "{v}: {p:#?}"
        );
        // 2.8 has no maxmemory fields in INFO (read through CONFIG GET) and its default
        // policy is volatile-lru; 3.0 made noeviction the default.
        if v == RedisVersion::V2_8 {
            assert_eq!(
                status(&p, items::DESTINATION_EVICTION),
                CheckStatus::Warning,
                "{v}: {p:#?}"
            );
            assert!(
                reason(&p, items::DESTINATION_EVICTION).contains("volatile-lru"),
                "{p:#?}"
            );
        } else {
            assert_eq!(
                status(&p, items::DESTINATION_EVICTION),
                CheckStatus::Passed,
                "{v}: {p:#?}"
            );
        }
        assert_eq!(
            status(&p, items::DESTINATION_MEMORY),
            CheckStatus::Passed,
            "{v}: {p:#?}"
        );
        assert_eq!(
            status(&p, items::DESTINATION_MODULES),
            CheckStatus::Passed,
            "{v}: {p:#?}"
        );
    }
}

#[tokio::test]
async fn unreachable_ingest_fails_naming_it() {
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let f = fixture("noingest").await;
    let ingest = format!("http://{}", closed_addr().await);
    let mut s = spec("127.0.0.1:1", &destination.addr(), ConflictMode::Intercept);
    s.ingest_endpoint = ingest.clone();
    let started = Instant::now();
    let p = precheck(&f, s).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failed(&p), [items::INGEST_REACHABLE], "{p:#?}");
    assert!(
        reason(&p, items::INGEST_REACHABLE).contains(&ingest),
        "{p:#?}"
    );
    // The source items cannot be judged; the destination's still are.
    assert_eq!(status(&p, items::SOURCE_VERSION), CheckStatus::Unspecified);
    assert_eq!(status(&p, items::DESTINATION_EMPTY), CheckStatus::Passed);
    assert_eq!(
        status(&p, items::DESTINATION_VERSION),
        CheckStatus::Unspecified
    );
}

#[tokio::test]
async fn source_side_items_through_ingest() {
    let source = RedisServer::builder(RedisVersion::V7_0)
        .password("source-pw")
        .start()
        .unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let f = fixture("source").await;
    let mut s = spec(&source.addr(), &destination.addr(), ConflictMode::Intercept);
    s.source.as_mut().unwrap().password = "source-pw".into();
    let p = precheck(&f, s.clone()).await;
    assert!(p.passed, "{p:#?}");
    assert_eq!(status(&p, items::SOURCE_REACHABLE), CheckStatus::Passed);
    assert_eq!(status(&p, items::SOURCE_PSYNC), CheckStatus::Passed);
    assert!(reason(&p, items::SOURCE_VERSION).contains("7.0"), "{p:#?}");

    // Wrong source password: ingest reports it, the source items are not run.
    let mut wrong = s.clone();
    wrong.source.as_mut().unwrap().password = "not-the-source-pw".into();
    let p = precheck(&f, wrong).await;
    assert_eq!(failed(&p), [items::SOURCE_REACHABLE], "{p:#?}");
    assert!(
        reason(&p, items::SOURCE_REACHABLE).contains("credentials"),
        "{p:#?}"
    );
    assert_eq!(status(&p, items::SOURCE_VERSION), CheckStatus::Unspecified);
    assert_eq!(status(&p, items::DESTINATION_EMPTY), CheckStatus::Passed);

    // The task says CLUSTER, the source is standalone.
    let mut cluster = s.clone();
    cluster.source.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
    let p = precheck(&f, cluster).await;
    assert_eq!(failed(&p), [items::SOURCE_MODE], "{p:#?}");
    assert!(
        reason(&p, items::SOURCE_MODE)
            .contains("the task says CLUSTER but the source is STANDALONE"),
        "{p:#?}"
    );

    // Source not reachable from ingest.
    let mut gone = s;
    gone.source.as_mut().unwrap().address = closed_addr().await;
    let started = Instant::now();
    let p = precheck(&f, gone).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failed(&p), [items::SOURCE_REACHABLE], "{p:#?}");
}

#[tokio::test]
async fn cluster_destination_mode_and_slots() {
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let cluster = redis_sync_testkit::RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    let f = fixture("cluster").await;
    let entry = cluster.addrs()[0].clone();
    let mut s = spec(&source.addr(), &entry, ConflictMode::Intercept);
    s.destination.as_mut().unwrap().mode = InstanceMode::Cluster as i32;
    s.databases = vec![0];
    let p = precheck(&f, s.clone()).await;
    assert!(p.passed, "{p:#?}");
    assert!(
        reason(&p, items::DESTINATION_MODE).contains("3 master(s) covering all 16384 slots"),
        "{p:#?}"
    );

    // A key on any master makes db 0 non-empty.
    let master = cluster.node_for_key(b"somekey");
    master.server().cmd_ok(&["SET", "somekey", "1"]).unwrap();
    let p = precheck(&f, s.clone()).await;
    assert_eq!(failed(&p), [items::DESTINATION_EMPTY], "{p:#?}");

    // The task says STANDALONE for a cluster node.
    let mut standalone = s;
    standalone.destination.as_mut().unwrap().mode = InstanceMode::Standalone as i32;
    standalone.databases = vec![];
    let p = precheck(&f, standalone).await;
    assert!(failed(&p).contains(&items::DESTINATION_MODE), "{p:#?}");
    assert!(
        reason(&p, items::DESTINATION_MODE).contains("is a cluster node"),
        "{p:#?}"
    );
}

#[tokio::test]
async fn ingest_without_probe_source_fails_clearly() {
    // apply's own server does not serve IngestService: it answers UNIMPLEMENTED.
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let f = fixture("unimplemented").await;
    let mut s = spec("127.0.0.1:1", &destination.addr(), ConflictMode::Intercept);
    s.ingest_endpoint = f.apply.addr.clone();
    let p = precheck(&f, s).await;
    assert_eq!(failed(&p), [items::INGEST_REACHABLE], "{p:#?}");
    let r = reason(&p, items::INGEST_REACHABLE);
    assert!(
        r.contains("does not implement ProbeSource") && r.contains(&f.apply.addr),
        "{r}"
    );
    assert_eq!(
        status(&p, items::SOURCE_REACHABLE),
        CheckStatus::Unspecified
    );
}
